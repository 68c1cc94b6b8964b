#!/usr/bin/env python3
"""`make bench-envoy`: bare Envoy vs Envoy + callback-guard vs Envoy + a Lua check.

All three Envoys (--concurrency 1) share one fast upstream: a fourth Envoy whose
listener answers every request with a `direct_response`. wrk drives each in
alternating rounds (A B C A B C ...), with the same connection count and the
same body: the seed's PubStart with a valid ks_md5 token. Requests alternate
between that start and its end (same session), so the registry forwards all of
them. A last run measures the reject path (forged token).

Bounded: ROUNDS x 3 x ROUND_SECONDS plus the reject run (default under 2 minutes).
Everything listens and sends on 127.0.0.1 only.
"""

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVOY = os.environ.get("ENVOY_BIN", os.path.join(ROOT, ".venv/bin/envoy"))
WASM = os.path.join(ROOT, "target/wasm32-wasip1/release/callback_guard.wasm")
CLI = os.path.join(ROOT, "target/release/callback-guard")
ROUNDS = int(os.environ.get("ROUNDS", "5"))
ROUND_SECONDS = int(os.environ.get("ROUND_SECONDS", "6"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "16"))
KEY = "benchKey0123456789"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def hcm(port, filters, route, stat="bench"):
    return f"""
  - name: l{port}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {stat}
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                {route}
          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


UPSTREAM_BUFFER = """          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 65536
"""


def config(admin, listener, upstream_port=None, filters=""):
    if upstream_port is None:
        # The upstream reads the whole request before answering; a direct
        # response sent after the headers alone would make every proxy close
        # its upstream connection and reconnect for each request.
        route = 'direct_response: { status: 200, body: { inline_string: "{\\"ok\\":true}" } }'
        filters = UPSTREAM_BUFFER
        clusters = ""
    else:
        route = "route: { cluster: upstream }"
        clusters = f"""
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }} }} }}
"""
    return f"""admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:{hcm(listener, filters, route)}{clusters}"""


PLUGIN = json.dumps(
    {
        "apps": ["live"],
        "push_auth": {"scheme": "ks_md5", "keys": [{"id": "main", "secret": KEY}]},
        "callback_auth": {"allow_cidrs": ["127.0.0.0/8"]},
        "duplicate_streams": {"reject": True, "ttl_s": 86400},
    }
)


def guard_filters():
    mutations = "".join(
        f"""                - append:
                    header: {{ key: {h}, value: "%FILTER_STATE(wasm.{h}:PLAIN)%" }}
                    append_action: OVERWRITE_IF_EXISTS_OR_ADD
"""
        for h in [
            "x-callback-guard-format",
            "x-callback-guard-event",
            "x-callback-guard-verified",
            "x-callback-guard-key-id",
        ]
    )
    return f"""          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: callback_guard
                root_id: callback_guard
                fail_open: false
                vm_config:
                  vm_id: callback_guard
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: "{WASM}" }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {json.dumps(PLUGIN)}
          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 65536
          - name: envoy.filters.http.header_mutation
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
              mutations:
                request_mutations:
{mutations}"""


LUA_FILTERS = """          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(handle)
                    local body = handle:body()
                    if body == nil or not string.find(body:getBytes(0, body:length()), "NotifyType", 1, true) then
                      handle:respond({[":status"] = "403"}, "forbidden")
                    end
                  end
"""


class EnvoyProc:
    def __init__(self, name, yaml, tmp):
        self.name = name
        path = os.path.join(tmp, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(yaml)
        self.log = open(os.path.join(tmp, f"{name}.log"), "w")
        self.admin = int(re.search(r"port_value: (\d+)", yaml).group(1))
        self.proc = subprocess.Popen(
            [ENVOY, "-c", path, "--concurrency", "1", "--disable-hot-restart", "-l", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def wait_ready(self):
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except Exception:
                time.sleep(0.1)
        sys.exit(f"{self.name}: Envoy not ready, see its log")

    def cpu_seconds(self):
        """User + system CPU time of this Envoy so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def bodies(valid=True):
    now = int(time.time())
    stream = "test"
    q = subprocess.check_output(
        [CLI, "sign", "--scheme", "ks_md5", "--key", KEY, "--app", "live", "--stream", stream, "--expires-in", "3600"],
        text=True,
    ).strip()
    t, k = q.split("&")
    t, k = t[2:], k[2:]
    if not valid:
        k = "0123456789abcdef"

    def body(event, field):
        return (
            '{"Version":"1.0","App":"live","Pubdomain":"xxx.xxx.com","Stream":"%s","%s":"%d000",'
            '"NotifyType":"%s","ClientIp":" ","ClientPort":" ","Node":" ","Sequence":"bench-1",'
            '"PubParam":{"t":"%s","k":"%s"}}' % (stream, field, now, event, t, k)
        )

    return body("PubStart", "PubStartUnixTime"), body("PubEnd", "PubEndUnixTime")


def wrk_script(tmp, start, end, name):
    path = os.path.join(tmp, f"{name}.lua")
    with open(path, "w") as f:
        f.write(
            f"""
local reqs = {{}}
local n = 0
function init(args)
  local h = {{ ["content-type"] = "application/json" }}
  reqs[1] = wrk.format("POST", "/callback", h, {json.dumps(start)})
  reqs[2] = wrk.format("POST", "/callback", h, {json.dumps(end)})
end
function request()
  n = n + 1
  return reqs[(n % 2) + 1]
end
done = function(summary, latency, requests)
  local s = summary
  io.write(string.format("JSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"non2xx\\":%d,\\"errors\\":%d,\\"p50_us\\":%d,\\"p99_us\\":%d}}\\n",
    s.requests, s.duration, s.errors.status, s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
        )
    return path


def run_wrk(port, script, seconds):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", script, f"http://127.0.0.1:{port}/callback"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    m = re.search(r"^JSON (.*)$", out, re.M)
    if not m:
        sys.exit(f"wrk output not understood:\n{out}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def main():
    for path, how in [(ENVOY, "make envoy"), (WASM, "make wasm"), (CLI, "make bins")]:
        if not os.path.exists(path):
            sys.exit(f"{path} missing: run `{how}`")
    if not shutil.which("wrk"):
        sys.exit("wrk missing: apt-get install wrk")
    tmp = tempfile.mkdtemp(prefix="cg-bench-")
    up_port = free_port()
    upstream = EnvoyProc("upstream", config(free_port(), up_port), tmp)
    ports = {name: free_port() for name in ["bare", "guard", "lua"]}
    envoys = {
        "bare": EnvoyProc("bare", config(free_port(), ports["bare"], up_port), tmp),
        "guard": EnvoyProc("guard", config(free_port(), ports["guard"], up_port, guard_filters()), tmp),
        "lua": EnvoyProc("lua", config(free_port(), ports["lua"], up_port, LUA_FILTERS), tmp),
    }
    try:
        upstream.wait_ready()
        for e in envoys.values():
            e.wait_ready()
        start, end = bodies()
        script = wrk_script(tmp, start, end, "valid")
        bad_start, bad_end = bodies(valid=False)
        reject_script = wrk_script(tmp, bad_start, bad_end, "reject")
        # warm up every Envoy (and the wasm VM's JIT)
        for name, e in envoys.items():
            run_wrk(ports[name], script, 2)
        results = {name: [] for name in envoys}
        for rnd in range(ROUNDS):
            for name in ["bare", "guard", "lua"]:
                cpu0 = envoys[name].cpu_seconds()
                r = run_wrk(ports[name], script, ROUND_SECONDS)
                r["cpu_us"] = (envoys[name].cpu_seconds() - cpu0) * 1e6 / max(r["requests"], 1)
                results[name].append(r)
                print(
                    f"round {rnd + 1} {name:5s} {r['rps']:9.0f} req/s  p50 {r['p50_us'] / 1000:.3f} ms  p99 {r['p99_us'] / 1000:.3f} ms  Envoy CPU {r['cpu_us']:.1f} us/req  non-2xx {r['non2xx']}",
                    flush=True,
                )
        reject = run_wrk(ports["guard"], reject_script, ROUND_SECONDS)
    finally:
        for e in list(envoys.values()) + [upstream]:
            e.stop()

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    print()
    version = re.search(r"/(\d+\.\d+\.\d+)/", subprocess.check_output([ENVOY, "--version"], text=True)).group(1)
    print(f"Envoy {version}, --concurrency 1, wrk -t1 -c{CONNECTIONS}, {ROUNDS} rounds x {ROUND_SECONDS}s")
    print("| configuration | median req/s | p50 ms | p99 ms | Envoy CPU us/req | non-2xx |")
    print("|---|---|---|---|---|---|")
    for name in ["bare", "guard", "lua"]:
        non2xx = sum(r["non2xx"] for r in results[name])
        print(f"| {name} | {med(name, 'rps'):.0f} | {med(name, 'p50_us') / 1000:.3f} | {med(name, 'p99_us') / 1000:.3f} | {med(name, 'cpu_us'):.1f} | {non2xx} |")
    print(f"| guard, reject path (forged token) | {reject['rps']:.0f} | {reject['p50_us'] / 1000:.3f} | {reject['p99_us'] / 1000:.3f} | - | {reject['non2xx']} (all 403 expected) |")
    print()
    print(f"guard/bare throughput: {med('guard', 'rps') / med('bare', 'rps'):.3f}")
    print(f"guard/lua  throughput: {med('guard', 'rps') / med('lua', 'rps'):.3f}")
    print(f"guard p99 - bare p99: {(med('guard', 'p99_us') - med('bare', 'p99_us')) / 1000:+.3f} ms")
    print(f"Envoy CPU per request, guard - bare: {med('guard', 'cpu_us') - med('bare', 'cpu_us'):+.1f} us")
    bad = sum(r["non2xx"] + r["errors"] for n in ["bare", "guard", "lua"] for r in results[n])
    if bad:
        sys.exit(f"{bad} non-2xx or errors on valid callbacks: the benchmark is invalid")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
