#!/usr/bin/env python3
"""Proof, through a real Envoy, that the benchmark's two comparison filters work.

  bench/floor/      the floor Proxy-Wasm filter (hold, read body once, set x-floor)
  bench/kls_token.lua  a Lua filter that checks the KLS push token itself

One Envoy (--concurrency 1, --disable-hot-restart, 127.0.0.1 only, free ports)
with these listeners, all routing to a recording Python upstream on 127.0.0.1:

  floor      floor filter, allow_on_headers_stop_iteration: true
  noflag     floor filter without the flag (default timeouts)
  noflag2s   floor filter without the flag, stream_idle_timeout: 2s
  lua        bench/kls_token.lua (by filename)
  md5        kls_token.lua with envoy_on_request replaced by "answer md5_hex(body)",
             to test the pure-Lua MD5 inside Envoy's own LuaJIT

Tokens are computed here with hashlib.md5. Exit status 0 only if every check
passes. Bounded: about 15 s (the no-flag checks wait 6 s and 2 s on purpose).

Run from anywhere:  python3 bench/check_filters.py
(builds bench/floor first if its wasm is missing; ENVOY_BIN overrides the Envoy).
"""

import hashlib
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
ENVOY = os.environ.get("ENVOY_BIN", os.path.join(ROOT, ".venv/bin/envoy"))
FLOOR_WASM = os.path.join(BENCH, "floor/target/wasm32-wasip1/release/floor.wasm")
LUA_FILE = os.path.join(BENCH, "kls_token.lua")
KEY = "benchKey0123456789"  # must match `local KEY` in kls_token.lua
DENY_BODY = b'{"Error":{"Code":"AuthencationFailed"}}'
HANG_WAIT_S = 6  # how long the no-flag (default timeouts) request is given


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# Recording upstream: answers 200 "ok" and keeps (path, headers, body).
# ---------------------------------------------------------------------------

SEEN = []
SEEN_LOCK = threading.Lock()


class Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _handle(self):
        body = self._read_body()
        with SEEN_LOCK:
            SEEN.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, *args):
        pass


def seen(path):
    with SEEN_LOCK:
        return [r for r in SEEN if r[0] == path]


# ---------------------------------------------------------------------------
# Envoy configuration. The two http_filters entries below are the ones to copy.
# ---------------------------------------------------------------------------

def floor_filter(wasm, flag=True):
    line = "      allow_on_headers_stop_iteration: true\n" if flag else ""
    return f"""- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: floor
      root_id: floor
{line}      vm_config:
        vm_id: floor
        runtime: envoy.wasm.runtime.v8
        code:
          local: {{ filename: {json.dumps(wasm)} }}
"""


def lua_filter(source):
    return f"""- name: envoy.filters.http.lua
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
    default_source_code:
      {source}
"""


def indent(text, n):
    pad = " " * n
    return "".join(pad + line if line.strip() else line for line in text.splitlines(True))


def listener(name, port, upstream_filter, extra_hcm=""):
    return f"""
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: AUTO
{extra_hcm}          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: upstream }}
          http_filters:
{indent(upstream_filter, 10)}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


def md5_probe_source():
    # Same chunk as kls_token.lua, so its top-level local md5_hex is in scope;
    # the later global envoy_on_request definition replaces the filter's.
    with open(LUA_FILE) as f:
        src = f.read()
    return src + """
function envoy_on_request(h)
  local b = h:body()
  local s = b and b:getBytes(0, b:length()) or ""
  h:respond({[":status"] = "200"}, md5_hex(s))
end
"""


def envoy_config(admin, ports, upstream_port):
    md5_inline = "inline_string: " + json.dumps(md5_probe_source())
    listeners = "".join([
        listener("floor", ports["floor"], floor_filter(FLOOR_WASM, True)),
        listener("noflag", ports["noflag"], floor_filter(FLOOR_WASM, False)),
        listener("noflag2s", ports["noflag2s"], floor_filter(FLOOR_WASM, False),
                 "          stream_idle_timeout: 2s\n"),
        listener("lua", ports["lua"], lua_filter("filename: " + json.dumps(LUA_FILE))),
        listener("md5", ports["md5"], lua_filter(md5_inline)),
    ])
    return f"""admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:{listeners}
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


# ---------------------------------------------------------------------------
# Client helpers and checks.
# ---------------------------------------------------------------------------

def post(port, path, body, chunks=None, timeout=5, headers=None):
    """POST body (or the list `chunks`, chunked, 20 ms apart). Returns (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if chunks is not None:
            def gen():
                for c in chunks:
                    yield c
                    time.sleep(0.02)
            conn.request("POST", path, body=gen(), encode_chunked=True,
                         headers={"Transfer-Encoding": "chunked", **(headers or {})})
        elif body is None:
            conn.request("GET", path, headers=headers or {})
        else:
            conn.request("POST", path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


RESULTS = []


def check(name, ok, detail=""):
    RESULTS.append(ok)
    print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""))


def kls_body(app="live", stream="cam1", event="PubStart", t=None, k=None, key=KEY):
    now = int(time.time())
    t = str(now + 600) if t is None else str(t)
    if k is None:
        k = hashlib.md5((key + stream + t).encode()).hexdigest()[8:24]
    when = "PubStartUnixTime" if event == "PubStart" else "PubEndUnixTime"
    return (
        f'{{"Version":"1.0","App":"{app}","Pubdomain":"push.example.com","Stream":"{stream}",'
        f'"{when}":{now * 1000},"NotifyType":"{event}","ClientIp":" ","ClientPort":" ",'
        f'"Node":" ","Sequence":"s1","PubParam":{{"t":"{t}","k":"{k}"}}}}'
    ).encode()


def floor_checks(port):
    body = b'{"App":"live","Stream":"cam1"}' + bytes(range(256)) * 4
    st, _ = post(port, "/f1", body)
    got = seen("/f1")
    check("floor: POST with body -> 200, upstream saw x-floor: 1 and the body unchanged",
          st == 200 and len(got) == 1 and got[0][1].get("x-floor") == "1" and got[0][2] == body,
          f"status {st}, upstream x-floor={got[0][1].get('x-floor') if got else None}, "
          f"{len(got[0][2]) if got else 0}/{len(body)} bytes")

    chunks = [b"chunk-%d|" % i * 50 for i in range(8)]
    st, _ = post(port, "/f2", None, chunks=chunks)
    got = seen("/f2")
    check("floor: chunked body (8 chunks, 20 ms apart) -> 200, x-floor: 1, body unchanged",
          st == 200 and len(got) == 1 and got[0][1].get("x-floor") == "1"
          and got[0][2] == b"".join(chunks),
          f"status {st}, upstream got {len(got[0][2]) if got else 0} bytes")

    big = os.urandom(200_000)
    st, _ = post(port, "/f3", big)
    got = seen("/f3")
    check("floor: 200 kB random body -> 200, x-floor: 1, body unchanged",
          st == 200 and len(got) == 1 and got[0][1].get("x-floor") == "1" and got[0][2] == big,
          f"status {st}")

    st, _ = post(port, "/f4", None)
    got = seen("/f4")
    check("floor: GET without body -> 200, passed at once (no x-floor: no body callback)",
          st == 200 and len(got) == 1 and "x-floor" not in got[0][1], f"status {st}")


def noflag_checks(port, port2s):
    body = kls_body()
    t0 = time.monotonic()
    try:
        st, _ = post(port, "/n1", body, timeout=HANG_WAIT_S)
        outcome = f"answered {st}"
    except (socket.timeout, TimeoutError):
        outcome = "hung"
    waited = time.monotonic() - t0
    check(f"no flag, default timeouts: request hangs (no answer in {HANG_WAIT_S} s), upstream sees nothing",
          outcome == "hung" and not seen("/n1"), f"{outcome} after {waited:.1f} s")

    t0 = time.monotonic()
    try:
        st, resp = post(port2s, "/n2", body, timeout=10)
    except (socket.timeout, TimeoutError):
        st, resp = None, b""
    waited = time.monotonic() - t0
    # 504, not 408: Envoy has the whole request (end_stream), so it blames the upstream side.
    check("no flag, stream_idle_timeout 2s: 504 'stream timeout' after ~2 s, upstream sees nothing",
          st == 504 and resp == b"stream timeout" and 1.5 < waited < 4 and not seen("/n2"),
          f"status {st} {resp[:40]!r} after {waited:.1f} s")


def lua_checks(port):
    now = int(time.time())

    def case(name, path, body, want_forward, chunks=None, headers=None):
        st, resp = post(port, path, body, chunks=chunks, headers=headers)
        got = seen(path)
        if want_forward:
            full = body if chunks is None else b"".join(chunks)
            ok = (st == 200 and len(got) == 1 and got[0][1].get("x-lua-verified") == "1"
                  and got[0][2] == full)
            detail = f"status {st}, upstream x-lua-verified={got[0][1].get('x-lua-verified') if got else None}"
        else:
            ok = st == 403 and resp == DENY_BODY and not got
            detail = f"status {st} {resp.decode(errors='replace')}, upstream saw {len(got)}"
        check("lua: " + name, ok, detail)

    case("valid PubStart -> forwarded with x-lua-verified: 1", "/l1", kls_body(), True)
    good = kls_body(stream="cam7")
    case("valid PubStart, chunked (4 chunks) -> forwarded", "/l2", None, True,
         chunks=[good[i:i + 60] for i in range(0, len(good), 60)])
    case("forged k -> 403, upstream saw nothing", "/l3", kls_body(k="0123456789abcdef"), False,
         headers={"x-lua-verified": "1"})
    case("token for another key -> 403", "/l4", kls_body(key="otherKey"), False)
    case("expired PubStart (t = now - 600) -> 403", "/l5", kls_body(t=now - 600), False)
    case("expired PubEnd (t = now - 600) -> forwarded", "/l6", kls_body(event="PubEnd", t=now - 600), True)
    case("App vod -> 403", "/l7", kls_body(app="vod"), False)
    case("NotifyType PubEdit -> 403", "/l8", kls_body(event="PubEdit"), False)
    case("t of 9 digits -> 403", "/l9", kls_body(t=123456789), False)
    case("no body (GET) -> 403", "/l10", None, False)


def md5_checks(port):
    rnd = os.urandom(200)
    vectors = [
        ("KLS example md5('123456stream1560096712')", b"123456stream1560096712",
         "c628321f4f88e741140240e2e5c5bd90"),
        ("md5('')", b"", "d41d8cd98f00b204e9800998ecf8427e"),
    ]
    md5sum = shutil.which("md5sum")
    want_rnd = (subprocess.run([md5sum], input=rnd, capture_output=True, check=True).stdout.split()[0].decode()
                if md5sum else hashlib.md5(rnd).hexdigest())
    vectors.append((f"200 random bytes vs {'md5sum' if md5sum else 'hashlib'}", rnd, want_rnd))
    for name, data, want in vectors:
        st, got = post(port, "/md5", data)
        check(f"lua md5 in Envoy's LuaJIT: {name}", st == 200 and got.decode() == want, got.decode())
    st, got = post(port, "/md5", b"123456stream1560096712")
    check("lua md5: KLS example k = chars 9..24 = 4f88e741140240e2",
          got.decode()[8:24] == "4f88e741140240e2")
    # Every padding boundary (one and two final blocks).
    bad = [n for n in range(0, 130)
           if post(port, "/md5", b"x" * n)[1].decode() != hashlib.md5(b"x" * n).hexdigest()]
    check("lua md5: lengths 0..129 match hashlib", not bad, f"mismatch at {bad}" if bad else "")


def main():
    if not os.path.exists(FLOOR_WASM):
        print("building bench/floor ...", flush=True)
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1",
                        "--manifest-path", os.path.join(BENCH, "floor/Cargo.toml")], check=True)

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()

    admin = free_port()
    ports = {n: free_port() for n in ("floor", "noflag", "noflag2s", "lua", "md5")}
    tmp = tempfile.mkdtemp(prefix="check-filters-")
    cfg = os.path.join(tmp, "envoy.yaml")
    with open(cfg, "w") as f:
        f.write(envoy_config(admin, ports, upstream.server_address[1]))
    log_path = os.path.join(tmp, "envoy.log")
    log = open(log_path, "w")
    envoy = subprocess.Popen(
        [ENVOY, "-c", cfg, "--concurrency", "1", "--disable-hot-restart", "-l", "warning"],
        stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            if envoy.poll() is not None or time.monotonic() > deadline:
                log.flush()
                sys.stdout.write(open(log_path).read()[-4000:])
                sys.exit("Envoy did not become ready")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        out = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout.strip()
        print(f"envoy: {out.split('version: ')[-1]}")

        floor_checks(ports["floor"])
        lua_checks(ports["lua"])
        md5_checks(ports["md5"])
        noflag_checks(ports["noflag"], ports["noflag2s"])

        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=idle_timeout", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("http.noflag"):
                    print(f"      stat {line}")
    finally:
        envoy.terminate()
        try:
            envoy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            envoy.kill()
        upstream.shutdown()
        log.close()
        if all(RESULTS):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"Envoy config and log kept in {tmp}")

    passed = sum(RESULTS)
    print(f"{passed} passed, {len(RESULTS) - passed} failed")
    sys.exit(0 if RESULTS and all(RESULTS) else 1)


if __name__ == "__main__":
    main()
