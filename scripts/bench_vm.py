#!/usr/bin/env python3
"""`make bench-vm`: decide() timed inside Envoy's V8, against the native bench.

Builds the module with the cargo feature `vm-bench` (never in `make wasm`), once
per build setting below, into target/vm-bench/. Each build times decide() on
the seed PubStart with a valid ks_md5 token when Envoy configures it (20,000
calls after 20,000 warm-up calls, in-memory registry, so no hostcall is
timed), plus the glue's header decoding, and logs the result. One Envoy
(--concurrency 1) per build, on 127.0.0.1; nothing is sent to it.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVOY = os.environ.get("ENVOY_BIN", os.path.join(ROOT, ".venv/bin/envoy"))
OUT = os.path.join(ROOT, "target/vm-bench")
WASM_OPT = ["--strip-debug", "--strip-producers", "--enable-bulk-memory", "--enable-sign-ext",
            "--enable-nontrapping-float-to-int", "--enable-mutable-globals"]
# (name, cargo opt-level, wasm-opt level or None); the first is what `make wasm` ships.
BUILDS = [("s+Oz (shipped)", "s", "-Oz"), ("3+O3", "3", "-O3"), ("s, no wasm-opt", "s", None)]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def build(opt, wasm_opt, dest):
    env = dict(os.environ, CARGO_PROFILE_RELEASE_OPT_LEVEL=opt)
    tdir = os.path.join(OUT, f"target-{opt}")
    subprocess.run(["cargo", "build", "-q", "--release", "--target", "wasm32-wasip1", "--lib",
                    "--features", "vm-bench", "--target-dir", tdir], check=True, env=env, cwd=ROOT)
    built = os.path.join(tdir, "wasm32-wasip1/release/callback_guard.wasm")
    if wasm_opt:
        subprocess.run(["wasm-opt", wasm_opt, *WASM_OPT, built, "-o", dest], check=True)
    else:
        shutil.copy(built, dest)
    return os.path.getsize(dest)


def run(wasm):
    admin, port = free_port(), free_port()
    addr = lambda p: {"socket_address": {"address": "127.0.0.1", "port_value": p}}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "vm",
        "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
        "http_filters": [
            {"name": "envoy.filters.http.wasm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {"name": "cg", "root_id": "callback_guard",
                           "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": wasm}}},
                           "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{}"}}}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    cfg = {"admin": {"address": addr(admin)}, "static_resources": {"listeners": [{
        "name": "vm", "address": addr(port),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}]}}
    path = os.path.join(OUT, "envoy.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    p = subprocess.Popen([ENVOY, "-c", path, "--concurrency", "1", "--disable-hot-restart", "-l", "warning"],
                         stderr=subprocess.PIPE, text=True)
    found, deadline = {}, time.time() + 120
    try:
        while time.time() < deadline and len(found) < 2:
            line = p.stderr.readline()
            if not line:
                break
            for what, ns in re.findall(r"vm-bench: (\S+) (\d+) ns", line):
                found[what] = int(ns)
    finally:
        p.kill()
        p.wait()
    if len(found) < 2:
        sys.exit(f"no vm-bench lines from Envoy for {wasm}")
    return found


def main():
    os.makedirs(OUT, exist_ok=True)
    print("| build | bytes | decide() ns in V8 | decode_map() ns in V8 |")
    print("|---|---|---|---|")
    for name, opt, wasm_opt in BUILDS:
        dest = os.path.join(OUT, f"vm-bench-{opt}-{wasm_opt or 'none'}.wasm")
        size = build(opt, wasm_opt, dest)
        r = run(dest)
        print(f"| {name} | {size} | {r['decide()']} | {r['decode_map()']} |", flush=True)
    print("(the vm-bench feature adds the timing code: the shipped module is smaller)")


if __name__ == "__main__":
    main()
