#!/usr/bin/env python3
"""`make bench-envoy`: bare Envoy vs Envoy + callback-guard vs its alternatives.

Five Envoys (--concurrency 1), side by side, share one fast upstream: a sixth
Envoy whose listener answers every request with a `direct_response`:
- bare: no HTTP filter;
- floor: the least a wasm filter doing this job must do (bench/floor: hold the
  headers, read the body once, set one header);
- guard: callback-guard exactly as envoy/envoy.yaml ships its filter (read from
  that file), with the bench's plugin configuration;
- lua-kls: what a user would write instead: bench/kls_token.lua checks the
  KLS token itself (JSON fields by pattern, pure-Lua MD5, expiry, app);
- lua: a Lua filter that only checks the body contains `NotifyType`;
- guard+etcd: callback-guard with its registry on etcd (one local member, the
  JSON gateway over HTTP/1.1): every start and end waits for etcd. It and
  guard-64 (the same guard on shared data) get the callbacks of 64 streams in
  turn instead of one stream: 16 connections on one etcd key would be 16
  writers on one key, which no real platform does.
wrk drives each in alternating rounds (A B C D E A B ...), with the same
connection count and body: the seed's PubStart with a valid ks_md5 token,
alternating with its end (same session), so the registry forwards all of them.
A last run measures the guard's reject path (forged token).

Bounded: ROUNDS x 5 x ROUND_SECONDS plus warm-up and the reject run (about 3
minutes by default). Everything listens and sends on 127.0.0.1 only.
Run with a Python that has PyYAML (`make bench-envoy` uses .venv's).
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

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVOY = os.environ.get("ENVOY_BIN", os.path.join(ROOT, ".venv/bin/envoy"))
WASM = os.environ.get("CALLBACK_GUARD_WASM", os.path.join(ROOT, "target/wasm32-wasip1/release/callback_guard.wasm"))
# Another build of the module, benched as a row of its own ("guard-b") in the
# same run: how a change is measured before/after on a noisy machine.
WASM_B = os.environ.get("BENCH_GUARD_B")
FLOOR_WASM = os.path.join(ROOT, "bench/floor/target/wasm32-wasip1/release/floor.wasm")
# The native builds (Envoy >= 1.38): callback-guard's module and the native floor.
NATIVE_DIR = os.path.join(ROOT, "target/native")
NATIVE_FLOOR_DIR = os.path.join(ROOT, "bench/native-floor/target/release")
LUA_KLS = os.path.join(ROOT, "bench/kls_token.lua")
CLI = os.path.join(ROOT, "target/release/callback-guard")
ROUNDS = int(os.environ.get("ROUNDS", "5"))
ROUND_SECONDS = int(os.environ.get("ROUND_SECONDS", "6"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "16"))
# bench/kls_token.lua has the same key.
KEY = "benchKey0123456789"
ETCD = os.environ.get("ETCD_BIN", "/usr/bin/etcd")
NAMES = ["bare", "floor", "guard", "native-floor", "native", "lua-kls", "lua", "guard-64", "guard+etcd"] + (
    ["guard-b"] if WASM_B else []
)
# Where each native row's Envoy finds its module (ENVOY_DYNAMIC_MODULES_SEARCH_PATH).
MODULE_DIRS = {"native": NATIVE_DIR, "native-floor": NATIVE_FLOOR_DIR}
# These rows spread the callbacks over 64 streams (STREAMS_64): with etcd, one
# stream hammered from 16 connections is 16 writers on one key, which no real
# platform does. guard-64 is the shared-data guard on the same traffic.
MULTI = {"guard-64", "guard+etcd"}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def addr(port):
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def config(admin, listener, upstream_port=None, filters=(), etcd_port=None):
    """A whole Envoy config (JSON): one listener with `filters` before the router."""
    if upstream_port is None:
        # The upstream reads the whole request before answering; a direct
        # response sent after the headers alone would make every proxy close
        # its upstream connection and reconnect for each request.
        route = {"direct_response": {"status": 200, "body": {"inline_string": '{"ok":true}'}}}
        filters = [
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": 65536,
                },
            }
        ]
    else:
        route = {"route": {"cluster": "upstream"}}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [dict(match={"prefix": "/"}, **route)]}]
        },
        "http_filters": list(filters) + [ROUTER],
    }
    cfg = {
        "admin": {"address": addr(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": addr(listener),
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ]
        },
    }
    if upstream_port is not None:
        cfg["static_resources"]["clusters"] = [
            {
                "name": "upstream",
                "type": "STATIC",
                "connect_timeout": "2s",
                "load_assignment": {
                    "cluster_name": "upstream",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr(upstream_port)}}]}],
                },
            }
        ]
    if etcd_port is not None:
        cfg["static_resources"]["clusters"].append(
            {
                "name": "etcd",
                "type": "STATIC",
                "connect_timeout": "0.25s",
                "load_assignment": {
                    "cluster_name": "etcd",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr(etcd_port)}}]}],
                },
            }
        )
    return cfg


PLUGIN = json.dumps(
    {
        "apps": ["live"],
        "push_auth": {"scheme": "ks_md5", "keys": [{"id": "main", "secret": KEY}]},
        "callback_auth": {"allow_cidrs": ["127.0.0.0/8"]},
        "duplicate_streams": {"reject": True, "ttl_s": 86400},
    }
)


def shipped_guard_filter():
    """callback-guard's HTTP filter exactly as envoy/envoy.yaml ships it."""
    with open(os.path.join(ROOT, "envoy/envoy.yaml")) as f:
        doc = yaml.safe_load(f)
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    chain = hcm["http_filters"]
    if [f["name"] for f in chain] != ["envoy.filters.http.wasm", "envoy.filters.http.router"]:
        sys.exit("envoy/envoy.yaml: expected callback-guard then the router")
    return chain[0]


def guard_filters(wasm=WASM, plugin=PLUGIN):
    f = shipped_guard_filter()
    cfg = f["typed_config"]["config"]
    cfg["configuration"]["value"] = plugin
    cfg["vm_config"]["code"]["local"]["filename"] = wasm
    cfg["vm_config"]["environment_variables"]["host_env_keys"] = []
    return [f]


def native_guard_filters(plugin=PLUGIN):
    """callback-guard's module entry exactly as envoy/envoy-native.yaml ships it."""
    with open(os.path.join(ROOT, "envoy/envoy-native.yaml")) as f:
        doc = yaml.safe_load(f)
    chain = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    if [f["name"] for f in chain] != ["envoy.filters.http.dynamic_modules", "envoy.filters.http.router"]:
        sys.exit("envoy/envoy-native.yaml: expected callback-guard then the router")
    chain[0]["typed_config"]["filter_config"]["value"] = plugin
    return [chain[0]]


def native_floor_filters():
    return [
        {
            "name": "envoy.filters.http.dynamic_modules",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                "dynamic_module_config": {"name": "native_floor"},
                "filter_name": "floor",
                "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": ""},
            },
        }
    ]


def floor_filters():
    return [
        {
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "floor",
                    "root_id": "floor",
                    "allow_on_headers_stop_iteration": True,
                    "vm_config": {
                        "vm_id": "floor",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": FLOOR_WASM}},
                    },
                },
            },
        }
    ]


def lua_filters(source):
    return [
        {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": source,
            },
        }
    ]


LUA_SUBSTRING = {
    "inline_string": """function envoy_on_request(handle)
  local body = handle:body()
  if body == nil or not string.find(body:getBytes(0, body:length()), "NotifyType", 1, true) then
    handle:respond({[":status"] = "403"}, "forbidden")
  end
end
"""
}


ETCD_PLUGIN = json.dumps(
    dict(
        json.loads(PLUGIN),
        duplicate_streams={
            "reject": True,
            "ttl_s": 86400,
            "store": {"etcd": {"cluster": "etcd", "key_prefix": "/cg-bench/", "timeout_ms": 1500}},
        },
    )
)


class Proc:
    """A process of the bench: its CPU time, and stopping it."""

    def cpu_seconds(self):
        """User + system CPU time of this process so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Etcd(Proc):
    """One etcd member on free 127.0.0.1 ports, its own data dir."""

    def __init__(self, tmp):
        self.port, peer = free_port(), free_port()
        self.proc = subprocess.Popen(
            [ETCD, "--name", "bench", "--data-dir", os.path.join(tmp, "etcd"),
             "--listen-client-urls", f"http://127.0.0.1:{self.port}",
             "--advertise-client-urls", f"http://127.0.0.1:{self.port}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"bench=http://127.0.0.1:{peer}",
             "--logger", "zap", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "etcd.log"), "w"))
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                    if b'"true"' in r.read():
                        return
            except Exception:
                pass
            time.sleep(0.1)
        sys.exit("etcd did not become healthy, see its log")

class EnvoyProc(Proc):
    def __init__(self, name, cfg, tmp, module_dir=None):
        self.name = name
        path = os.path.join(tmp, f"{name}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.log = open(os.path.join(tmp, f"{name}.log"), "w")
        self.admin = cfg["admin"]["address"]["socket_address"]["port_value"]
        self.proc = subprocess.Popen(
            [ENVOY, "-c", path, "--concurrency", "1", "--disable-hot-restart", "-l", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env=dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=module_dir or NATIVE_DIR),
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



def bodies(valid=True, stream="test"):
    now = int(time.time())
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


def wrk_script(tmp, start, end, name, pairs=None):
    """wrk sends start, end, start, end... of one stream; with `pairs`, it
    walks a list of (start, end) of several streams instead."""
    pairs = pairs or [(start, end)]
    path = os.path.join(tmp, f"{name}.lua")
    bodies = ",\n  ".join(f"{json.dumps(a)}, {json.dumps(b)}" for a, b in pairs)
    with open(path, "w") as f:
        f.write(
            f"""
local reqs = {{}}
local bodies = {{
  {bodies}
}}
local n = 0
function init(args)
  local h = {{ ["content-type"] = "application/json" }}
  for i, b in ipairs(bodies) do
    reqs[i] = wrk.format("POST", "/callback", h, b)
  end
end
function request()
  n = n + 1
  return reqs[(n % #reqs) + 1]
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
    for path, how in [
        (ENVOY, "make envoy"),
        (WASM, "make wasm"),
        (CLI, "make bins"),
        (FLOOR_WASM, "make bench-floor"),
        (os.path.join(NATIVE_DIR, "libcallback_guard.so"), "make native"),
        (os.path.join(NATIVE_FLOOR_DIR, "libnative_floor.so"), "make bench-floor"),
        (ETCD, "apt-get install etcd-server"),
    ]:
        if not os.path.exists(path):
            sys.exit(f"{path} missing: run `{how}`")
    if not shutil.which("wrk"):
        sys.exit("wrk missing: apt-get install wrk")
    tmp = tempfile.mkdtemp(prefix="cg-bench-")
    up_port = free_port()
    upstream = EnvoyProc("upstream", config(free_port(), up_port), tmp)
    filters = {
        "bare": [],
        "floor": floor_filters(),
        "guard": guard_filters(),
        "native-floor": native_floor_filters(),
        "native": native_guard_filters(),
        "lua-kls": lua_filters({"filename": LUA_KLS}),
        "lua": lua_filters(LUA_SUBSTRING),
    }
    if WASM_B:
        filters["guard-b"] = guard_filters(WASM_B)
    filters["guard-64"] = guard_filters()
    filters["guard+etcd"] = guard_filters(plugin=ETCD_PLUGIN)
    etcd = Etcd(tmp)
    ports = {name: free_port() for name in NAMES}
    envoys = {
        name: EnvoyProc(
            name,
            config(free_port(), ports[name], up_port, filters[name], etcd.port if name == "guard+etcd" else None),
            tmp,
            MODULE_DIRS.get(name),
        )
        for name in NAMES
    }
    try:
        upstream.wait_ready()
        for e in envoys.values():
            e.wait_ready()
        start, end = bodies()
        script = wrk_script(tmp, start, end, "valid")
        multi = wrk_script(tmp, None, None, "valid64", pairs=[bodies(stream=f"test-{i}") for i in range(64)])
        bad_start, bad_end = bodies(valid=False)
        reject_script = wrk_script(tmp, bad_start, bad_end, "reject")
        # warm up every Envoy (and the wasm VMs' JIT)
        for name in NAMES:
            run_wrk(ports[name], multi if name in MULTI else script, 2)
        results = {name: [] for name in NAMES}
        for rnd in range(ROUNDS):
            for name in NAMES:
                cpu0 = envoys[name].cpu_seconds()
                etcd0 = etcd.cpu_seconds()
                r = run_wrk(ports[name], multi if name in MULTI else script, ROUND_SECONDS)
                r["cpu_us"] = (envoys[name].cpu_seconds() - cpu0) * 1e6 / max(r["requests"], 1)
                r["etcd_cpu_us"] = (etcd.cpu_seconds() - etcd0) * 1e6 / max(r["requests"], 1)
                results[name].append(r)
                print(
                    f"round {rnd + 1} {name:7s} {r['rps']:9.0f} req/s  p50 {r['p50_us'] / 1000:.3f} ms  p99 {r['p99_us'] / 1000:.3f} ms  Envoy CPU {r['cpu_us']:.1f} us/req  non-2xx {r['non2xx']}",
                    flush=True,
                )
        reject = run_wrk(ports["guard"], reject_script, ROUND_SECONDS)
    finally:
        for e in list(envoys.values()) + [upstream, etcd]:
            e.stop()

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    print()
    version = re.search(r"/(\d+\.\d+\.\d+)/", subprocess.check_output([ENVOY, "--version"], text=True)).group(1)
    print(f"Envoy {version}, --concurrency 1, wrk -t1 -c{CONNECTIONS}, {ROUNDS} rounds x {ROUND_SECONDS}s")
    print("| configuration | median req/s | x bare | p50 ms | p99 ms | Envoy CPU us/req | non-2xx |")
    print("|---|---|---|---|---|---|---|")
    bare_rps = med("bare", "rps")
    for name in NAMES:
        non2xx = sum(r["non2xx"] for r in results[name])
        print(
            f"| {name} | {med(name, 'rps'):.0f} | {med(name, 'rps') / bare_rps:.3f} | {med(name, 'p50_us') / 1000:.3f} | "
            f"{med(name, 'p99_us') / 1000:.3f} | {med(name, 'cpu_us'):.1f} | {non2xx} |"
        )
    print(
        f"| guard, reject path (forged token) | {reject['rps']:.0f} | {reject['rps'] / bare_rps:.3f} | {reject['p50_us'] / 1000:.3f} | "
        f"{reject['p99_us'] / 1000:.3f} | - | {reject['non2xx']} (all 403 expected) |"
    )
    print()
    for other in ["floor", "lua-kls", "lua"] + (["guard-b"] if WASM_B else []):
        print(f"guard/{other} throughput: {med('guard', 'rps') / med(other, 'rps'):.3f}")
    print(f"guard p99 - bare p99: {(med('guard', 'p99_us') - med('bare', 'p99_us')) / 1000:+.3f} ms")
    print(f"guard+etcd/guard-64 throughput: {med('guard+etcd', 'rps') / med('guard-64', 'rps'):.3f}")
    print(
        f"guard+etcd: p50 {med('guard+etcd', 'p50_us') / 1000:.3f} ms ({(med('guard+etcd', 'p50_us') - med('guard-64', 'p50_us')) / 1000:+.3f} ms "
        f"over the shared-data registry), etcd CPU {med('guard+etcd', 'etcd_cpu_us'):.1f} us per callback"
    )
    for other in ["bare", "floor"] + (["guard-b"] if WASM_B else []):
        print(f"Envoy CPU per request, guard - {other}: {med('guard', 'cpu_us') - med(other, 'cpu_us'):+.1f} us")
    for other in ["bare", "native-floor", "lua-kls", "lua", "guard"]:
        print(f"native/{other} throughput: {med('native', 'rps') / med(other, 'rps'):.3f}")
    for other in ["bare", "native-floor"]:
        print(f"Envoy CPU per request, native - {other}: {med('native', 'cpu_us') - med(other, 'cpu_us'):+.1f} us")
    bad = sum(r["non2xx"] + r["errors"] for n in NAMES for r in results[n])
    if bad:
        sys.exit(f"{bad} non-2xx or errors on valid callbacks: the benchmark is invalid")
    if reject["non2xx"] != reject["requests"]:
        sys.exit("the reject run got some 2xx: the benchmark is invalid")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
