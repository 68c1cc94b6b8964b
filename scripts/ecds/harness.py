#!/usr/bin/env python3
"""ECDS lab for callback-guard: real Envoy processes on 127.0.0.1, stdlib only.

What it runs (all on free loopback ports, every run bounded by timeouts):
  - a wasm server: serves modules over HTTP and counts fetches per path (can 404 or stop);
  - a recording upstream: answers 200 and records every request it receives;
  - Envoy: one listener whose HTTP filter chain is
        [defence pre-filter] -> envoy.filters.http.wasm via config_discovery (ECDS from a
        watched file) -> [defence post-filter] -> router
    plus a cluster for the wasm server and one for the upstream;
  - the ECDS resource (a TypedExtensionConfig "callback-guard" wrapping the Wasm filter
    config), swapped atomically: written to a temp file inside the watched directory,
    then rename()d over ecds.yaml (path_config_source + watched_directory reloads `path`
    when an entry is moved into the directory).

Sub-commands:
  case NAME      one scenario (see CASES), prints JSON
  matrix         every case x policy x defence for one Envoy, prints a markdown table
                 (and --json FILE for the raw results)
  inflight       requests in flight during a config swap
  report FILE..  condensed markdown from matrix --json files
  ci             make test-ecds: the project's ECDS requirements as checks against the
                 shipped filter config (envoy/envoy.yaml; needs PyYAML), see ci.py;
                 prints "N passed, N failed", exits 1 on any failure

Defences: "header" strips x-callback-guard-format before the filter and has RBAC require
it after; "filter_state" turns on callback-guard's filter_state_mark and has RBAC require
the filter state wasm.x-callback-guard-checked == 1 (what docs/ecds.md recommends).

Environment: ENVOY_BIN (default: the project's .venv Envoy), WASM (default: the project's
target/wasm32-wasip1/release/callback_guard.wasm, copied to a temp dir before use).
"""

import argparse
import hashlib
import http.client
import http.server
import json
import os
import shutil
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_ENVOY = REPO / ".venv" / "bin" / "envoy"
DEFAULT_WASM = REPO / "target" / "wasm32-wasip1" / "release" / "callback_guard.wasm"

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
TEC_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
ECDS_NAME = "callback-guard"
PUSH_KEY = "ecds0lab0key0123456789"
MARK_KEY = "wasm.x-callback-guard-checked"   # filter state callback-guard sets (filter_state_mark)
MARK_HEADER = "x-callback-guard-format"      # header callback-guard adds on every forward
ACCESS_FORMAT = ("probe=%REQ(X-LAB-PROBE)% code=%RESPONSE_CODE% flags=%RESPONSE_FLAGS% "
                 "details=%RESPONSE_CODE_DETAILS% mark=%FILTER_STATE(" + MARK_KEY + ":PLAIN)%\n")

GOOD_CONFIG = json.dumps({
    "apps": ["live"],
    "push_auth": {"scheme": "ks_md5",
                  "keys": [{"id": "primary", "secret_env": "CALLBACK_GUARD_PUSH_KEY"}]},
})
OTHER_CONFIG = json.dumps({
    "apps": ["live", "live2"],
    "push_auth": {"scheme": "ks_md5",
                  "keys": [{"id": "primary", "secret_env": "CALLBACK_GUARD_PUSH_KEY"}]},
})
BAD_CONFIG = json.dumps({"nonsense": 1})

POLICIES = {
    # name -> fields merged into PluginConfig
    "fail_open=false": {"fail_open": False},
    "fail_open=true": {"fail_open": True},
    "FAIL_CLOSED": {"failure_policy": "FAIL_CLOSED"},
    # the shipped policy (envoy/envoy.yaml)
    "FAIL_RELOAD": {"failure_policy": "FAIL_RELOAD",
                    "reload_config": {"backoff": {"base_interval": "1s", "max_interval": "30s"}}},
    # vm_config.nack_on_code_cache_miss: a remote module that is not in Envoy's code cache
    # makes the update itself fail (NACK) while a background fetch fills the cache.
    "nack+fail_open=false": {"fail_open": False, "_nack": True},
}
DEFENCES = ("none", "header", "filter_state", "header_nostrip")


# ---------------------------------------------------------------------------- utils

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def upgraded(module):
    """The same module with a custom section appended: another sha256, same behaviour."""
    name = b"ecds-lab-upgrade"
    payload = bytes([len(name)]) + name + os.urandom(8)
    size = len(payload)
    leb = bytearray()
    while True:
        b = size & 0x7F
        size >>= 7
        if size:
            leb.append(b | 0x80)
        else:
            leb.append(b)
            break
    return module + b"\x00" + bytes(leb) + payload


def sign(stream, expires_in=600, key=PUSH_KEY, now=None):
    t = str(int(now or time.time()) + expires_in)
    k = hashlib.md5((key + stream + t).encode()).hexdigest()[8:24]
    return t, k


def callback_body(stream, forged=False, app="live"):
    t, k = sign(stream)
    if forged:
        k = "0123456789abcdef"
    return json.dumps({
        "App": app, "Pubdomain": "push.example.com", "Stream": stream,
        "PubStartUnixTime": int(time.time() * 1000), "NotifyType": "PubStart",
        "Sequence": "s-" + stream, "PubParam": {"t": t, "k": k},
    }).encode()


# ---------------------------------------------------------------------- wasm server

class _WasmHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.fetches[self.path] = srv.fetches.get(self.path, 0) + 1
            data = srv.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", "application/wasm")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class WasmServer:
    """Serves modules at /<name>; counts GETs per path (404s included)."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.httpd = None
        self.files = {}
        self.fetches = {}
        self.lock = threading.Lock()

    def start(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _WasmHandler)
        self.httpd.daemon_threads = True
        self.httpd.files, self.httpd.fetches, self.httpd.lock = self.files, self.fetches, self.lock
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def put(self, name, data):
        with self.lock:
            self.files["/" + name] = data
        return f"http://127.0.0.1:{self.port}/{name}"

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def total_fetches(self):
        with self.lock:
            return sum(self.fetches.values())

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


# ------------------------------------------------------------------------ upstream

class _UpstreamHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _read_body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                line = self.rfile.readline()
                n = int(line.split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(n)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def do_POST(self):
        body = self._read_body()
        rec = {"method": self.command, "path": self.path,
               "headers": {k.lower(): v for k, v in self.headers.items()},
               "body": body.decode("utf-8", "replace"), "time": time.time()}
        with self.server.lock:
            self.server.records.append(rec)
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", "9")
        self.end_headers()
        self.wfile.write(b"upstream\n")

    do_GET = do_POST


class Upstream:
    def __init__(self):
        self.port = free_port()
        self.records = []
        self.lock = threading.Lock()
        self.httpd = None

    def start(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _UpstreamHandler)
        self.httpd.daemon_threads = True
        self.httpd.records, self.httpd.lock = self.records, self.lock
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def find(self, marker):
        with self.lock:
            return [r for r in self.records if marker in r["body"]]

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


# ------------------------------------------------------------------------- configs

def remote_code(url, sha):
    return {"remote": {"http_uri": {"uri": url, "cluster": "wasm_server", "timeout": "5s"},
                       "sha256": sha}}


def local_code(path):
    return {"local": {"filename": str(path)}}


def wasm_config(code, configuration=GOOD_CONFIG, policy="fail_open=false",
                root_id="callback_guard"):
    cfg = {
        "name": "callback_guard",
        "root_id": root_id,
        "allow_on_headers_stop_iteration": True,
        "vm_config": {
            "vm_id": "callback_guard",
            "runtime": "envoy.wasm.runtime.v8",
            "code": code,
            "environment_variables": {"host_env_keys": ["CALLBACK_GUARD_PUSH_KEY"]},
        },
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": configuration},
    }
    for k, v in POLICIES[policy].items():
        if k == "_nack":
            cfg["vm_config"]["nack_on_code_cache_miss"] = v
        else:
            cfg[k] = v
    return {"@type": WASM_TYPE, "config": cfg}


def ecds_filter(ecds_dir, default_config=None, without_warming=False):
    f = {
        "name": ECDS_NAME,
        "config_discovery": {
            "config_source": {
                "path_config_source": {"path": str(ecds_dir / "ecds.yaml"),
                                       "watched_directory": {"path": str(ecds_dir)}},
                "resource_api_version": "V3",
            },
            "type_urls": [WASM_TYPE],
        },
    }
    if default_config is not None:
        f["config_discovery"]["default_config"] = default_config
    if without_warming:
        f["config_discovery"]["apply_default_config_without_warming"] = True
    return f


def defence_filters(defence):
    """(filters before the ECDS wasm filter, filters after it) for a defence."""
    if defence == "none":
        return [], []
    if defence in ("header", "header_nostrip"):
        # callback-guard adds x-callback-guard-format to every request it forwards (and
        # strips client copies itself). A stock filter strips client copies BEFORE it, so
        # the header can only come from callback-guard; RBAC after it requires it.
        pre = [{
            "name": "strip-callback-guard-mark",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": [{"remove": MARK_HEADER}]},
            },
        }]
        principal = {"header": {"name": MARK_HEADER, "present_match": True}}
        if defence == "header_nostrip":   # ablation: without the strip a client forges the mark
            pre = []
    elif defence == "filter_state":
        # callback-guard with "filter_state_mark": true sets filter state
        # wasm.x-callback-guard-checked (proxy_set_property) on every callback it lets
        # through; no client input can create a filter state object, so nothing needs
        # stripping.
        pre = []
        principal = {"filter_state": {"key": MARK_KEY, "string_match": {"exact": "1"}}}
    else:
        raise ValueError(defence)
    post = [{
        "name": "require-callback-guard-mark",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {"checked-by-callback-guard": {
                "permissions": [{"any": True}], "principals": [principal]}}},
        },
    }]
    return pre, post


def bootstrap(ports, ecds_dir, defence, ecds_opts=None):
    pre, post = defence_filters(defence)
    http_filters = pre + [ecds_filter(ecds_dir, **(ecds_opts or {}))] + post + [{
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }]

    def cluster(name, port):
        return {"name": name, "type": "STATIC", "connect_timeout": "2s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": port}}}}]}]}}

    return {
        "node": {"id": "ecds-lab", "cluster": "ecds-lab"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": ports["admin"]}}},
        "static_resources": {
            "listeners": [{
                "name": "callbacks",
                "address": {"socket_address": {"address": "127.0.0.1",
                                               "port_value": ports["listener"]}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "callbacks",
                        "codec_type": "AUTO",
                        "http_protocol_options": {"accept_http_10": True},
                        "route_config": {"name": "callbacks", "virtual_hosts": [{
                            "name": "callbacks", "domains": ["*"],
                            "routes": [
                                # as in envoy/envoy.yaml: health checks skip the filter, and
                                # so must the defence's filters (RBAC would refuse them)
                                {"match": {"path": "/healthz"},
                                 "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
                                 "typed_per_filter_config": {
                                     f["name"]: {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                                                 "disabled": True}
                                     for f in http_filters if f["name"] != "envoy.filters.http.router"}},
                                {"match": {"prefix": "/callback"},
                                 "route": {"cluster": "upstream", "timeout": "10s"}}]}]},
                        "http_filters": http_filters,
                        "access_log": [{
                            "name": "envoy.access_loggers.file",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                                "path": str(ecds_dir.parent / "access.log"),
                                "log_format": {"text_format_source": {"inline_string": ACCESS_FORMAT}},
                            },
                        }],
                    },
                }]}],
            }],
            "clusters": [cluster("upstream", ports["upstream"]),
                         cluster("wasm_server", ports["wasm"])],
        },
    }


def write_ecds(ecds_dir, typed_config, version):
    """Atomic swap: temp file in the watched directory, then rename over ecds.yaml."""
    doc = {"version_info": str(version),
           "resources": [{"@type": TEC_TYPE, "name": ECDS_NAME, "typed_config": typed_config}]}
    tmp = ecds_dir / f".ecds-{version}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)   # JSON is YAML
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, ecds_dir / "ecds.yaml")


# --------------------------------------------------------------------------- Envoy

class Envoy:
    def __init__(self, binary, workdir, ports, config, concurrency=2, env=None, name="envoy"):
        self.binary = str(binary)
        self.workdir = workdir
        self.ports = ports
        self.cfg_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.proc = None
        self.cfg_path.write_text(json.dumps(config, indent=1))   # JSON is YAML
        self.concurrency = concurrency
        self.env = dict(os.environ, CALLBACK_GUARD_PUSH_KEY=PUSH_KEY, **(env or {}))

    def start(self, timeout=30):
        env = self.env
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.cfg_path), "--concurrency", str(self.concurrency),
             "--disable-hot-restart", "-l", "info", "--file-flush-interval-msec", "100",
             "--component-log-level", "wasm:trace,init:debug,filter:debug,config:debug"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited {self.proc.returncode}: " + self.tail(30))
            try:
                if self.admin("/ready", timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("envoy not ready in time: " + self.tail(30))

    def admin(self, path, timeout=3):
        c = http.client.HTTPConnection("127.0.0.1", self.ports["admin"], timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode("utf-8", "replace")
        finally:
            c.close()

    def stats(self):
        out = {}
        _, text = self.admin("/stats")
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def tail(self, n=40):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_size(self):
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset):
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "log", None):
            self.log.close()


ECDS_STATS = ("update_attempt", "update_success", "update_rejected", "update_failure",
              "config_reload", "config_fail", "config_conflict")


def pick_stats(stats):
    """The ECDS subscription's counters (short names) and the wasm ones (full names)."""
    ecds, wasm = {}, {}
    for name, v in stats.items():
        if name.startswith("extension_config_discovery.") and f".{ECDS_NAME}." in name:
            short = name.rsplit(".", 1)[1]
            if short in ECDS_STATS:
                ecds[short] = v
        elif name.startswith(("wasm.", "wasm_vm.")) or ".wasm." in name:
            wasm[name] = v
    return ecds, wasm


INTERESTING = ("wasm", "ecds", "config update", "filter config", "Wasm", "remote data", "Retry limit", "critical",
               "error", "fail", "Unable", "rejected", "sha256", "RemoteAsyncDataProvider",
               "attempted to add")


def interesting_lines(text, limit=25):
    out = []
    for line in text.splitlines():
        if "callback-guard forwarded" in line or "wasm_vm.cc" in line or not line.startswith("[20"):
            continue   # hostcall traces and the continuation lines of proto dumps
        if any(k in line for k in INTERESTING):
            # drop the "[time][pid][level][logger] [file:line]" prefix's time and thread id
            parts = line.split("]", 2)
            out.append(parts[2].strip() if len(parts) == 3 else line)
    # keep distinct lines, most informative last ones
    seen, uniq = set(), []
    for line in out:
        key = line[:160]
        if key not in seen:
            seen.add(key)
            uniq.append(line[:300])
    return uniq[-limit:]


def push_ecds(envoy, ecds_dir, version, typed_config, fetches=lambda: 0, timeout=20,
              settle=1.5):
    """Swap the ECDS resource (write_ecds) and wait until Envoy accepted, rejected or failed
    it. Returns the outcome ("accepted", "accepted, not applied", "rejected", "failure",
    "timeout"), the wasm-server GETs meanwhile and the telling log lines."""
    before = pick_stats(envoy.stats())[0]
    fetch0 = fetches()
    log0 = envoy.log_size()
    write_ecds(ecds_dir, typed_config, version)
    deadline = time.time() + timeout
    outcome = "timeout"
    while time.time() < deadline:
        now = pick_stats(envoy.stats())[0]
        if now.get("update_rejected", 0) > before.get("update_rejected", 0):
            outcome = "rejected"
            break
        if now.get("update_failure", 0) > before.get("update_failure", 0):
            outcome = "failure"
            break
        if now.get("update_success", 0) > before.get("update_success", 0):
            outcome = "accepted"
            # wait (bounded) for the workers: config_reload counts applied updates; an
            # update whose hash equals the last one Envoy saw is acknowledged, not applied
            until = min(deadline, time.time() + 4)
            while time.time() < until and \
                    pick_stats(envoy.stats())[0].get("config_reload", 0) <= before.get("config_reload", 0):
                time.sleep(0.05)
            if pick_stats(envoy.stats())[0].get("config_reload", 0) <= before.get("config_reload", 0):
                outcome = "accepted, not applied"
            break
        time.sleep(0.05)
    time.sleep(settle)   # let async fetches/retries (if any) happen before probing
    return {"outcome": outcome, "fetches": fetches() - fetch0,
            "log": interesting_lines(envoy.log_since(log0))}


# --------------------------------------------------------------------------- client

def post(port, body, headers=None, timeout=8):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {"content-type": "application/json"}
        h.update(headers or {})
        c.request("POST", "/callback", body=body, headers=h)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as e:
        return 0, f"client error: {e!r}"
    finally:
        c.close()


def who_answered(status, text):
    if status == 0:
        return text[:60]
    if "RBAC: access denied" in text:
        return "rbac"
    if '"Error"' in text and '"Code"' in text:
        try:
            return "guard:" + json.loads(text)["Error"]["Code"]
        except (ValueError, KeyError, TypeError):
            return "guard"
    if text.startswith("upstream"):
        return "upstream"
    return text.strip().replace("\n", " ")[:60] or "-"


class Lab:
    """Wasm server + upstream + Envoy with the ECDS wasm filter; one per scenario."""

    def __init__(self, envoy_bin, defence="none", ecds_opts=None, keep=False, module=None):
        self.envoy_bin = envoy_bin
        self.defence = defence
        self.ecds_opts = ecds_opts
        self.keep = keep
        self.dir = Path(tempfile.mkdtemp(prefix="ecds-lab-"))
        self.ecds_dir = self.dir / "ecds"
        self.ecds_dir.mkdir()
        self.wasm = WasmServer()
        self.upstream = Upstream()
        self.envoy = None
        self.version = 0
        self.seq = 0
        src = Path(module or os.environ.get("WASM") or DEFAULT_WASM)
        self.module = (self.dir / src.name)
        shutil.copyfile(src, self.module)       # another engineer rebuilds the original
        self.good = self.module.read_bytes()
        self.root_id = "callback_guard"

    # -- lifecycle
    def start(self, typed_config, timeout=40):
        self.wasm.start()
        self.upstream.start()
        ports = {"admin": free_port(), "listener": free_port(), "upstream": self.upstream.port,
                 "wasm": self.wasm.port}
        self.ports = ports
        self.version += 1
        write_ecds(self.ecds_dir, typed_config, self.version)
        self.envoy = Envoy(self.envoy_bin, self.dir, ports,
                           bootstrap(ports, self.ecds_dir, self.defence, self.ecds_opts))
        t0 = time.time()
        self.envoy.start(timeout)
        self.ready_s = round(time.time() - t0, 2)
        time.sleep(0.3)
        return self

    def close(self):
        if self.envoy:
            self.envoy.stop()
        self.wasm.stop()
        self.upstream.stop()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- configs
    def cfg(self, code, configuration=GOOD_CONFIG, policy="fail_open=false"):
        if self.defence == "filter_state":   # the RBAC after the filter needs the mark
            configuration = json.dumps({**json.loads(configuration), "filter_state_mark": True})
        return wasm_config(code, configuration, policy, self.root_id)

    def remote(self, name, data, sha=None):
        url = self.wasm.put(name, data)
        return remote_code(url, sha or sha256(data))

    def local(self, name, data):
        p = self.dir / name
        if data is not None:
            p.write_bytes(data)
        return local_code(p)

    # -- swap
    def push(self, typed_config, timeout=20):
        """Swap the ECDS resource; wait until Envoy accepted, rejected or failed it."""
        self.version += 1
        return push_ecds(self.envoy, self.ecds_dir, self.version, typed_config,
                         self.wasm.total_fetches, timeout)

    # -- probes
    def probe(self):
        """One forged and one valid callback: status, who answered, forwarded?, checked?"""
        out = {}
        for kind in ("forged", "valid"):
            self.seq += 1
            stream = f"cam{self.seq}x{int(time.time()*1000) % 100000}"
            headers = {"x-lab-probe": stream}
            if kind == "forged":
                # a forger also sends the marks callback-guard would add
                headers.update({MARK_HEADER: "kls_v2", "x-callback-guard-verified": "push_token"})
            status, text = post(self.ports["listener"], callback_body(stream, kind == "forged"),
                                headers)
            time.sleep(0.05)
            recs = self.upstream.find(f'"{stream}"')
            fwd = bool(recs)
            access = self.access_line(stream)
            if self.defence == "filter_state":      # the filter state mark, as RBAC sees it
                checked = fwd and "mark=1" in access
            else:                                     # callback-guard's own header
                checked = fwd and any(r["headers"].get(MARK_HEADER) for r in recs) and kind == "valid"
            res = {"status": status, "by": who_answered(status, text), "forwarded": fwd,
                   "access": access}
            if fwd:
                res["checked"] = checked
            out[kind] = res
        return out

    def healthz(self):
        c = http.client.HTTPConnection("127.0.0.1", self.ports["listener"], timeout=5)
        try:
            c.request("GET", "/healthz")
            return c.getresponse().status
        except (OSError, http.client.HTTPException):
            return 0
        finally:
            c.close()

    def access_line(self, probe, timeout=2.0):
        """The access log line of a probe (flags, response code details, filter-state mark)."""
        path = self.dir / "access.log"
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                for line in path.read_text(errors="replace").splitlines():
                    if line.startswith(f"probe={probe} "):
                        return line.split(" ", 1)[1]
            except OSError:
                pass
            time.sleep(0.1)
        return ""

    def snapshot(self):
        ecds, wasm = pick_stats(self.envoy.stats())
        return {"ecds": ecds, "wasm": wasm}


# -------------------------------------------------------------------------- cases

def bad_bytes():
    return os.urandom(4096)


def case_steps(lab, case, policy):
    """(initial config, [(label, make_config, pre_action or None), ...]) for a case."""
    g = lab.good
    up = upgraded(g)
    P = policy

    def good_remote(configuration=GOOD_CONFIG):
        return lab.cfg(lab.remote("cg-good.wasm", g), configuration, policy=P)

    if case == "a":       # good from the start
        return good_remote(), []
    if case == "b":       # wrong sha256 from the start
        return lab.cfg(lab.remote("cg-good.wasm", g, sha="0" * 64), policy=P), [
            ("then good", lambda: good_remote(), None)]
    if case == "c":       # good, then the same URL with a wrong sha256
        return good_remote(), [
            ("wrong sha", lambda: lab.cfg(lab.remote("cg-good.wasm", g, sha="0" * 64), policy=P), None),
            ("good again", lambda: good_remote(), None)]
    if case == "d404":    # good, then a new URL that 404s
        return good_remote(), [
            ("404 url", lambda: lab.cfg(remote_code(lab.wasm.url("missing.wasm"), sha256(up)), policy=P), None)]
    if case == "ddown":   # good, then a new module while the wasm server is down
        return good_remote(), [
            ("server down", lambda: lab.cfg(remote_code(lab.wasm.url("cg-v2.wasm"), sha256(up)), policy=P),
             lab.wasm.stop)]
    if case == "e":       # good, then a module that does not load (right sha of random bytes)
        junk = bad_bytes()
        return good_remote(), [
            ("junk module", lambda: lab.cfg(lab.remote("junk.wasm", junk), policy=P), None)]
    if case == "f":       # good, then a plugin configuration the filter refuses
        return good_remote(), [
            ("bad plugin config", lambda: good_remote(BAD_CONFIG), None)]
    if case == "g":       # good, then good with another configuration
        return good_remote(), [
            ("other config", lambda: good_remote(OTHER_CONFIG), None)]
    if case == "u":       # good, then a legitimate upgrade (another valid module, new sha)
        return good_remote(), [
            ("upgrade v2", lambda: lab.cfg(lab.remote("cg-v2.wasm", up), policy=P), None),
            ("v2 + other config", lambda: lab.cfg(lab.remote("cg-v2.wasm", up), OTHER_CONFIG, policy=P), None)]
    if case == "w":       # default_config + apply_default_config_without_warming (see run_case)
        return good_remote(OTHER_CONFIG), [
            ("upgrade v2", lambda: lab.cfg(lab.remote("cg-v2.wasm", up), policy=P), None)]
    if case == "i":       # code.local through ECDS
        return lab.cfg(lab.local("cg-good.wasm", g), policy=P), [
            ("local junk", lambda: lab.cfg(lab.local("junk.wasm", bad_bytes()), policy=P), None),
            ("local missing file", lambda: lab.cfg(lab.local("absent.wasm", None), policy=P), None),
            ("local bad plugin config", lambda: lab.cfg(lab.local("cg-good.wasm", g), BAD_CONFIG, policy=P), None),
            ("local upgrade v2", lambda: lab.cfg(lab.local("cg-v2.wasm", up), policy=P), None)]
    raise ValueError(case)


def perturbed(typed_config, n=1):
    """The same config with n trailing spaces in the plugin configuration: another hash,
    so Envoy's ECDS subscription does not skip it as unchanged."""
    tc = json.loads(json.dumps(typed_config))
    tc["config"]["configuration"]["value"] += " " * n
    return tc


CASES = {
    "a": "good config from the start",
    "b": "wrong sha256 from the start (then the good one)",
    "c": "good, then same URL with wrong sha256 (then good again)",
    "d404": "good, then a new module URL that 404s",
    "ddown": "good, then a new module while the wasm server is down",
    "e": "good, then junk bytes with their correct sha256",
    "f": "good, then plugin configuration {\"nonsense\":1}",
    "g": "good, then good with another plugin configuration",
    "u": "good, then a legitimate upgrade (new module, new sha256)",
    "i": "code.local via ECDS: good, junk, missing file, bad config, upgrade",
    "w": "default_config (good, remote) + apply_default_config_without_warming, then ECDS",
}


def run_case(envoy_bin, case, policy="fail_open=false", defence="none", keep=False):
    """Start with the case's initial config, probe; then each step: push, probe.
    With a nack policy, each push that Envoy rejects is pushed a second time (perturbed so
    its hash differs), as a control plane would retry after a NACK."""
    lab = Lab(envoy_bin, defence=defence, keep=keep)
    nack = POLICIES[policy].get("_nack", False)
    result = {"case": case, "policy": policy, "defence": defence, "steps": []}
    if case == "w":
        lab.ecds_opts = {"default_config": lab.cfg(lab.remote("cg-good.wasm", lab.good), policy=policy),
                         "without_warming": True}
    try:
        initial, steps = case_steps(lab, case, policy)
        try:
            lab.start(initial)
        except RuntimeError as e:
            result["steps"].append({"step": "start", "error": str(e)[-800:]})
            return result
        st = {"step": "start", "ready_s": lab.ready_s, "fetches": lab.wasm.total_fetches(),
              "healthz": lab.healthz(),
              **lab.probe(), **lab.snapshot(), "log": interesting_lines(lab.envoy.log_since(0))}
        result["steps"].append(st)
        if nack and st["ecds"].get("update_rejected"):
            time.sleep(1)
            pushed = lab.push(perturbed(initial))
            result["steps"].append({"step": "start (2nd push)", **pushed, **lab.probe(), **lab.snapshot()})
        for label, make, pre in steps:
            if pre:
                pre()
            cfg = make()
            pushed = lab.push(cfg)
            result["steps"].append({"step": label, **pushed, **lab.probe(), **lab.snapshot()})
            if nack and pushed["outcome"] == "rejected":
                time.sleep(1)
                pushed = lab.push(perturbed(cfg))
                result["steps"].append({"step": label + " (2nd push)", **pushed, **lab.probe(),
                                        **lab.snapshot()})
        if keep:
            result["dir"] = str(lab.dir)
        return result
    finally:
        lab.close()


# ------------------------------------------------------------------------ in flight

def slow_post(port, body, first, gap_event, timeout=15, headers=None):
    """Chunked POST: headers + `first` bytes, then wait for gap_event, then the rest."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode()
    try:
        s.sendall(b"POST /callback HTTP/1.1\r\nhost: lab\r\ncontent-type: application/json\r\n"
                  b"transfer-encoding: chunked\r\n" + extra + b"\r\n")
        a, b = body[:first], body[first:]
        s.sendall(b"%x\r\n%s\r\n" % (len(a), a))
        gap_event.wait(timeout)
        s.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(b), b))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
        # read a little of the body for who_answered
        s.settimeout(1)
        try:
            while len(rest) < 400:
                chunk = s.recv(65536)
                if not chunk:
                    break
                rest += chunk
        except OSError:
            pass
        text = rest.decode("utf-8", "replace")
        if b"chunked" in head.lower():
            text = text.split("\r\n", 1)[-1]
        return status, text
    except OSError as e:
        return 0, f"client error: {e!r}"
    finally:
        s.close()


def run_inflight(envoy_bin, defence="none"):
    """A slow valid and a slow forged callback (chunked; headers and 20 body bytes sent) are
    in flight while the ECDS config is swapped; then their bodies are completed. A new
    callback after the swap shows what the new config does."""
    results = []
    other_apps = json.dumps({"apps": ["other"], "push_auth": json.loads(GOOD_CONFIG)["push_auth"]})
    scenarios = [
        ("good -> wrong sha (no filter after the swap)",
         lambda lab: lab.cfg(lab.remote("cg-good.wasm", lab.good, sha="0" * 64))),
        ("good -> junk module (no filter after the swap)",
         lambda lab: lab.cfg(lab.remote("junk.wasm", bad_bytes()))),
        ("good -> apps [other] (valid becomes NonExistApplication)",
         lambda lab: lab.cfg(lab.remote("cg-good.wasm", lab.good), other_apps)),
    ]
    for label, make in scenarios:
        with Lab(envoy_bin, defence=defence) as lab:
            lab.start(lab.cfg(lab.remote("cg-good.wasm", lab.good)))
            row = {"swap": label, "defence": defence}
            ev = threading.Event()
            flights = {}
            for kind in ("valid", "forged"):
                stream = f"fly{kind}{int(time.time()*1000) % 100000}"
                box = {}
                th = threading.Thread(target=lambda b=box, body=callback_body(stream, kind == "forged"):
                                      b.update(r=slow_post(lab.ports["listener"], body, 20, ev)))
                th.start()
                flights[kind] = (stream, box, th)
            time.sleep(0.5)                        # both streams exist in Envoy, bodies incomplete
            row["swap_outcome"] = lab.push(make(lab))["outcome"]
            ev.set()
            for kind, (stream, box, th) in flights.items():
                th.join(20)
                status, text = box.get("r", (0, "no answer"))
                time.sleep(0.1)
                recs = lab.upstream.find(f'"{stream}"')
                row[f"in-flight {kind}"] = {
                    "status": status, "by": who_answered(status, text), "forwarded": bool(recs),
                    "checked": bool(recs) and kind == "valid" and any(
                        r["headers"].get(MARK_HEADER) for r in recs)}
            row["new request after swap"] = lab.probe()
            results.append(row)
    return results


# -------------------------------------------------------------------------- report

def cell(p):
    if p.get("forwarded"):
        if p.get("checked") is False:
            return f"**{p['status']} FORWARDED UNCHECKED**"
        return f"{p['status']} fwd"
    return f"{p['status']} {p['by']}"


def short_stats(step):
    e = step.get("ecds", {})
    s = f"ok={e.get('update_success', 0)} rej={e.get('update_rejected', 0)} reload={e.get('config_reload', 0)}"
    if "fetches" in step:
        s += f" fetch={step['fetches']}"
    if "outcome" in step:
        s = step["outcome"] + "; " + s
    return s


KEY_LOG_PRIORITY = (
    "config update rejected", "Retry limit exceeded", "createWasm: failed to load",
    "Plugin configured to fail closed failed to load", "failed to load", "data is invalid",
    "Unable to create Wasm", "Failed to load Wasm", "fetch remote data", "critical", "error")


def key_log(step):
    """The most telling log line of a step (by KEY_LOG_PRIORITY)."""
    lines = step.get("log", [])
    for needle in KEY_LOG_PRIORITY:
        for line in reversed(lines):
            if needle in line:
                return line.split("] ", 1)[-1][:150]
    return "(no wasm/ECDS warning)" if lines or "outcome" in step else ""


def markdown(results, version):
    rows = ["| Envoy | case | policy | defence | step | forged | valid | ECDS stats (cumulative) | log |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for st in r["steps"]:
            if "error" in st:
                rows.append(f"| {version} | {r['case']} | {r['policy']} | {r['defence']} | {st['step']} | "
                            f"- | - | start failed | {st['error'][-120:]} |")
                continue
            rows.append(f"| {version} | {r['case']} | {r['policy']} | {r['defence']} | {st['step']} | "
                        f"{cell(st['forged'])} | {cell(st['valid'])} | {short_stats(st)} | "
                        f"{key_log(st).replace('|', '/')} |")
    return "\n".join(rows)


def brief(p):
    """A probe as a short table cell."""
    if p.get("forwarded"):
        return f"{p['status']} fwd" if p.get("checked") else f"**{p['status']} FWD UNCHECKED**"
    by = p.get("by", "")
    access = p.get("access", "")
    fields = dict(f.split("=", 1) for f in access.split(" ") if "=" in f)
    if by.startswith("guard:"):
        return f"{p['status']} guard"
    if by == "rbac":
        return f"{p['status']} {by}"
    if fields.get("details"):
        return f"{p['status']} {fields['details']}"
    if fields.get("flags", "-") != "-":
        return f"{p['status']} {fields['flags']}"
    return f"{p['status']} {by}"


def report(files):
    """Condensed markdown: one table per Envoy version; per case, the policies whose rows are
    identical are merged; columns = forged / valid per defence, plus the ECDS counters and
    the telling log line of the run without defence."""
    out = []
    for f in files:
        data = json.loads(Path(f).read_text())
        version = data["envoy"]
        defences, cases, runs = [], [], {}
        for r in data["results"]:
            if r["defence"] not in defences:
                defences.append(r["defence"])
            if r["case"] not in cases:
                cases.append(r["case"])
            runs.setdefault((r["case"], r["policy"]), {})[r["defence"]] = r
        out.append(f"### Envoy {version}\n")
        ref_name = "none" if "none" in defences else defences[0]
        out.append("| case | step | policy | " + " | ".join(f"{d}: forged / valid" for d in defences) +
                   f" | ECDS counters after the step ({ref_name}) | log ({ref_name}) |")
        out.append("|" + "---|" * (5 + len(defences)))
        for case in cases:
            groups = []   # [(rows, [policies])]
            for (c, policy), by_def in runs.items():
                if c != case:
                    continue
                ref = by_def.get("none") or next(iter(by_def.values()))
                rows = []
                for i, st in enumerate(ref["steps"]):
                    cells = []
                    for d in defences:
                        sd = by_def.get(d, {}).get("steps", [])
                        sd = sd[i] if i < len(sd) else {"error": "missing"}
                        cells.append("-" if "error" in sd else
                                     brief(sd["forged"]) + " / " + brief(sd["valid"]))
                    stats = "start failed" if "error" in st else short_stats(st)
                    rows.append((st["step"], tuple(cells), stats, key_log(st).replace("|", "/")))
                sig = [(r[0], r[1]) for r in rows]
                for g in groups:
                    if [(r[0], r[1]) for r in g[0]] == sig:
                        g[1].append(policy)
                        break
                else:
                    groups.append((rows, [policy]))
            for rows, policies in groups:
                for step, cells, stats, log in rows:
                    out.append(f"| {case} | {step} | {', '.join(policies)} | " + " | ".join(cells) +
                               f" | {stats} | {log} |")
        out.append("")
    return "\n".join(out)


def unsafe_steps(result):
    """Steps where a forged callback was forwarded, or a valid one forwarded unchecked."""
    bad = []
    for st in result["steps"]:
        if "error" in st:
            continue
        if st["forged"]["forwarded"]:
            bad.append((st["step"], "forged forwarded"))
        if st["valid"]["forwarded"] and st["valid"].get("checked") is False:
            bad.append((st["step"], "valid forwarded unchecked"))
    return bad


def envoy_version(binary):
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout
    for tok in out.split("/"):
        if tok.count(".") == 2 and tok.replace(".", "").isdigit():
            return tok
    return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envoy", default=os.environ.get("ENVOY_BIN") or str(DEFAULT_ENVOY))
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("case")
    c.add_argument("name", choices=sorted(CASES))
    c.add_argument("--policy", default="fail_open=false", choices=sorted(POLICIES))
    c.add_argument("--defence", default="none", choices=DEFENCES)
    c.add_argument("--keep", action="store_true", help="keep the temp dir (envoy.log, configs)")
    m = sub.add_parser("matrix")
    m.add_argument("--cases", default=",".join(CASES))
    m.add_argument("--policies", default=",".join(POLICIES))
    m.add_argument("--defences", default=",".join(DEFENCES))
    m.add_argument("--json")
    f = sub.add_parser("inflight")
    f.add_argument("--defence", default="none", choices=DEFENCES)
    rp = sub.add_parser("report", help="condensed markdown from matrix --json files")
    rp.add_argument("files", nargs="+")
    sub.add_parser("ci", help="make test-ecds: the requirement checks (ci.py)")
    args = ap.parse_args()

    if args.cmd == "case":
        print(json.dumps(run_case(args.envoy, args.name, args.policy, args.defence, args.keep), indent=1))
    elif args.cmd == "matrix":
        version = envoy_version(args.envoy)
        results = []
        for d in args.defences.split(","):
            for case in args.cases.split(","):
                for p in args.policies.split(","):
                    if case in ("a", "g") and p != "fail_open=false":
                        continue   # nothing fails: the policy cannot matter
                    t0 = time.time()
                    r = run_case(args.envoy, case, p, d)
                    r["seconds"] = round(time.time() - t0, 1)
                    results.append(r)
                    print(f"# {version} {case} {p} {d}: {r['seconds']} s, unsafe={unsafe_steps(r)}",
                          file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"envoy": version, "results": results}, indent=1))
        print(markdown(results, version))
    elif args.cmd == "report":
        print(report(args.files))
    elif args.cmd == "inflight":
        print(json.dumps(run_inflight(args.envoy, args.defence), indent=1))
    elif args.cmd == "ci":
        try:
            import yaml  # noqa: F401  (ci.py reads envoy/envoy.yaml)
        except ImportError:
            sys.exit("harness.py ci needs PyYAML: `make pytools`, then run it with .venv-tools/bin/python")
        sys.path.insert(0, str(HERE))
        sys.dont_write_bytecode = True   # no __pycache__ in the source tree
        import ci
        sys.exit(ci.run(args.envoy))


if __name__ == "__main__":
    main()
