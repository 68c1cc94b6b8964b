"""`make test-ecds`: callback-guard delivered by ECDS, checked against real Envoy processes.

Run as `harness.py --envoy BIN ci` (needs PyYAML: `make pytools`, `.venv-tools/bin/python`).
Every check prints one line (`ok`, `FAIL`, or `info` for what is reported but not gated),
then "N passed, N failed" and the wall time; the exit status is 1 on any failure.

The filter config is the shipped one: the Wasm filter of envoy/envoy.yaml, the only place
the filter chain is written. Envoys:

  S  envoy/envoy.yaml as shipped (code.local), on free ports: the reference.
  E  the same listener with the Wasm filter replaced by ECDS (`callback-guard`, from a
     watched file), the module as `code.remote` + sha256 from a local HTTP server, plus
     "filter_state_mark": true and the defence (RBAC after the filter, requiring filter
     state wasm.x-callback-guard-checked == 1).
  N  as E without the RBAC filter: shows whether Envoy's fail-open still happens.
  W1, W2  as E, but the first resource already has a wrong sha256 / a junk module.
  U  E's listener and N's (two listeners, one ECDS subscription), started with the
     previous release (git commit PREV_COMMIT, built in a temporary git worktree, cached
     under target/ecds-prev/), then upgraded to the current module.

N is a separate Envoy on purpose: when two listeners share the ECDS resource, one of them
gets no filter for a module Envoy does not hold, but the other finds the fetch "in
progress" and gets a VM-less plugin that its failure_policy answers (503). One listener per
Envoy shows what a single-listener deployment gets.

Requirements (the numbers of the project's issue): 1 decisions as static, 2 config swap
keeps reservations and in-flight requests checked, 3 wrong sha / failing module refused
with the defence, 4 bad config rejected, 5 upgrades keep reservations.
"""

import copy
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness as lab

SHIPPED_YAML = lab.REPO / "envoy" / "envoy.yaml"
WASM_FILTER = "envoy.filters.http.wasm"      # the Wasm filter's name in envoy/envoy.yaml
RBAC_NAME = "require-callback-guard-mark"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
NEXT_KEY = "ecds0next0key0987654321"         # the key the config swap rotates to
NEXT_ENV = "CALLBACK_GUARD_PUSH_KEY_NEXT"    # pre-provisioned in Envoy's environment
PREV_COMMIT = "a3b12e8"                      # the previous release (registry layout v2)
PREV_DIR = lab.REPO / "target" / "ecds-prev"
REGISTRY_PREFIX = b"callback_guard.registry.v2."
CLI = lab.REPO / "target" / "release" / "callback-guard"
DEADLINE_S = 600                             # the whole run, previous-release build included
ACCESS_FORMAT = ("probe=%REQ(X-LAB-PROBE)% code=%RESPONSE_CODE% "
                 "flags=%RESPONSE_FLAGS% details=%RESPONSE_CODE_DETAILS% "
                 "mark=%FILTER_STATE(" + lab.MARK_KEY + ":PLAIN)%\n")

# The defence: a stock RBAC filter after callback-guard (docs/ecds.md shows the same YAML,
# and check_docs() keeps the two equal).
RBAC_FILTER = {
    "name": RBAC_NAME,
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "ALLOW", "policies": {"checked-by-callback-guard": {
            "permissions": [{"any": True}],
            "principals": [{"filter_state": {"key": lab.MARK_KEY,
                                             "string_match": {"exact": "1"}}}]}}},
    },
}


# ---------------------------------------------------------------------------- report

class Report:
    def __init__(self):
        self.passed = self.failed = 0
        self.skipped = []
        self.t0 = time.time()

    def check(self, name, ok, detail=""):
        self.passed += bool(ok)
        self.failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f" -- {detail}" if detail else ""), flush=True)
        return ok

    def info(self, name, detail):
        print(f"info {name} -- {detail}", flush=True)

    def skip(self, name, why):
        """What cannot run here: a failure with CI=true, else a loud SKIP, repeated at the end."""
        if os.environ.get("CI") == "true":
            return self.check(name, False, f"CI=true and {why}")
        print(f"############ SKIP {name} -- {why}", flush=True)
        self.skipped.append(f"{name} -- {why}")
        return False

    def summary(self):
        for s in self.skipped:
            print(f"############ SKIPPED {s}", flush=True)
        skipped = f", {len(self.skipped)} SKIPPED (CI=true makes them failures)" if self.skipped else ""
        print(f"{self.passed} passed, {self.failed} failed{skipped} ({time.time() - self.t0:.0f} s)", flush=True)

    def log(self, lines, limit=3):
        for line in lines[:limit]:
            print(f"       log: {line[:220]}", flush=True)

    def section(self, title):
        print(f"== {title} ({time.time() - self.t0:.0f} s)", flush=True)


# -------------------------------------------------------------- the shipped config

class Shipped:
    """envoy/envoy.yaml: its Wasm filter (the ECDS resource is built from it) and the
    bootstraps derived from it (static reference, ECDS with and without the defence)."""

    def __init__(self, path=SHIPPED_YAML):
        import yaml   # PyYAML (make pytools)
        self.doc = yaml.safe_load(path.read_text())
        listeners = self.doc["static_resources"]["listeners"]
        assert len(listeners) == 1, "envoy/envoy.yaml: expected one listener"
        wasm = [f for f in self._hcm(self.doc)["http_filters"]
                if f.get("typed_config", {}).get("@type") == lab.WASM_TYPE]
        assert len(wasm) == 1 and wasm[0]["name"] == WASM_FILTER, "expected one Wasm filter"
        self.wasm = wasm[0]["typed_config"]
        self.plugin = json.loads(self.wasm["config"]["configuration"]["value"])

    @staticmethod
    def _hcm(doc, i=0):
        return doc["static_resources"]["listeners"][i]["filter_chains"][0]["filters"][0]["typed_config"]

    def resource(self, code, plugin=None, nack=False, **overrides):
        """The ECDS resource: the shipped Wasm filter config with another code source and
        plugin configuration (the shipped one, or `plugin`, updated with `overrides`)."""
        tc = copy.deepcopy(self.wasm)
        tc["config"]["vm_config"]["code"] = code
        cfg = dict(self.plugin if plugin is None else plugin, **overrides)
        tc["config"]["configuration"]["value"] = json.dumps(cfg, indent=1)
        if nack:
            tc["config"]["vm_config"]["nack_on_code_cache_miss"] = True
        return tc

    def _common(self, ports, access_log):
        doc = copy.deepcopy(self.doc)
        doc["admin"]["address"]["socket_address"]["port_value"] = ports["admin"]
        for c in doc["static_resources"]["clusters"]:
            if c["name"] == "upstream":
                ep = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ep["address"]["socket_address"]["port_value"] = ports["upstream"]
        hcm = self._hcm(doc)
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(access_log),
            "log_format": {"text_format_source": {"inline_string": ACCESS_FORMAT}}}}]
        listener = doc["static_resources"]["listeners"][0]
        listener["address"]["socket_address"]["port_value"] = ports["listener"]
        return doc, listener, hcm

    def static_bootstrap(self, ports, module, access_log):
        doc, _, hcm = self._common(ports, access_log)
        for f in hcm["http_filters"]:
            if f["name"] == WASM_FILTER:
                f["typed_config"]["config"]["vm_config"]["code"] = lab.local_code(module)
        return doc

    def ecds_bootstrap(self, ports, ecds_dir, access_log, listeners):
        """Listener `callbacks` (with the defence) on ports["listener"] and/or
        `callbacks-nodefence` on ports["nodefence"], as `listeners` names them ("defended",
        "bare"); both take the Wasm filter from one ECDS subscription."""
        doc, listener, hcm = self._common(ports, access_log)
        doc["node"] = {"id": "ecds-ci", "cluster": "ecds-ci"}   # xDS (ECDS) needs both
        ecds = lab.ecds_filter(ecds_dir)        # name: callback-guard
        filters = []
        for f in hcm["http_filters"]:
            filters += [ecds, copy.deepcopy(RBAC_FILTER)] if f["name"] == WASM_FILTER else [f]
        hcm["http_filters"] = filters
        for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
            per = route.get("typed_per_filter_config", {})
            if WASM_FILTER in per:              # routes that skip the guard skip RBAC too
                off = per.pop(WASM_FILTER)
                per[lab.ECDS_NAME] = off
                per[RBAC_NAME] = copy.deepcopy(off)
        bare = copy.deepcopy(listener)
        bare["name"] = "callbacks-nodefence"
        bare["address"]["socket_address"]["port_value"] = ports["nodefence"]
        bhcm = bare["filter_chains"][0]["filters"][0]["typed_config"]
        bhcm["stat_prefix"] = "callbacks_nodefence"
        bhcm["http_filters"] = [f for f in bhcm["http_filters"] if f["name"] != RBAC_NAME]
        for route in bhcm["route_config"]["virtual_hosts"][0]["routes"]:
            route.get("typed_per_filter_config", {}).pop(RBAC_NAME, None)
        doc["static_resources"]["listeners"] = (([listener] if "defended" in listeners else []) +
                                                ([bare] if "bare" in listeners else []))
        doc["static_resources"]["clusters"].append({
            "name": "wasm_server", "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": {"cluster_name": "wasm_server", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": ports["wasm"]}}}}]}]}})
        return doc


# ------------------------------------------------------------------------- callbacks

def ks_sign(stream, key=lab.PUSH_KEY, expires_in=600):
    return lab.sign(stream, expires_in, key)


def v2(stream, session, event="PubStart", key=lab.PUSH_KEY, app="live", forged=False,
       expires_in=600, age_s=0):
    """A KLS new-version JSON callback, signed (ks_md5) for `stream`."""
    t, k = ks_sign(stream, key, expires_in)
    when = "PubStartUnixTime" if event == "PubStart" else "PubEndUnixTime"
    body = {"Version": "1.0", "App": app, "Pubdomain": "push.example.com", "Stream": stream,
            when: int(time.time() - age_s) * 1000, "NotifyType": event,
            "ClientIp": " ", "ClientPort": " ", "Node": " ", "Sequence": session,
            "PubParam": {"t": t, "k": "0123456789abcdef" if forged else k}}
    return json.dumps(body).encode()


def v1(stream, vdoid, call="user_publish", key=lab.PUSH_KEY):
    """A KLS old-version form callback with the token as extra fields."""
    t, k = ks_sign(stream, key)
    return (f"app=live&name={stream}&swfurl=nil&flashver=nil&tcurl=rtmp://push.example.com/live"
            f"&call={call}&vdoid={vdoid}&t={t}&k={k}").encode()


class Target:
    """One listener of one Envoy, with the upstream behind it and the access log."""

    def __init__(self, name, port, upstream, access_log):
        self.name, self.port, self.upstream, self.access_log = name, port, upstream, access_log
        self.seq = 0

    def probe_id(self):
        self.seq += 1
        return f"{self.name}-{self.seq}-{os.getpid()}"

    def send(self, body, ctype=JSON, path="/callback", method="POST", headers=None):
        """Returns {status, code, error, forwarded, up, up_body, mark, details}: `code` is
        the guard's Error.Code, "rbac" or the first words of another answer; `up` the
        x-callback-guard-* headers the upstream got; `mark` the filter state and `details`
        the response code details of the access log line."""
        pid = self.probe_id()
        h = {"x-lab-probe": pid}
        if ctype:
            h["content-type"] = ctype
        h.update(headers or {})
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=8)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            status, text = r.status, r.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as e:
            status, text = 0, f"client error: {e!r}"
        finally:
            c.close()
        return self.outcome(pid, status, text)

    def outcome(self, pid, status, text):
        res = {"probe": pid, "status": status, "code": lab.who_answered(status, text), "error": None}
        if res["code"].startswith("guard:"):
            res["code"] = res["code"][6:]
            res["error"] = {k: v for k, v in json.loads(text)["Error"].items()}
        recs = self.forwarded(pid)
        res["forwarded"] = bool(recs)
        res["up"] = {k: v for k, v in recs[0]["headers"].items()
                     if k.startswith("x-callback-guard-")} if recs else {}
        res["up_body"] = recs[0]["body"] if recs else None
        fields = self.access(pid)
        res["mark"], res["details"] = fields.get("mark"), fields.get("details")
        return res

    def forwarded(self, pid):
        with self.upstream.lock:
            return [r for r in self.upstream.records if r["headers"].get("x-lab-probe") == pid]

    def access(self, pid, timeout=3.0):
        """This probe's access log line as fields (mark: "1" or "-"); {} if none came."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                for line in self.access_log.read_text(errors="replace").splitlines():
                    if line.startswith(f"probe={pid} "):
                        return dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
            except OSError:
                pass
            time.sleep(0.05)
        return {}

    def slow(self, body, gate, first=20):
        """A chunked callback whose body stops after `first` bytes until `gate` is set;
        returns a function that joins it and gives its outcome."""
        pid = self.probe_id()
        box = {}
        th = threading.Thread(target=lambda: box.update(r=lab.slow_post(
            self.port, body, first, gate, headers={"x-lab-probe": pid})), daemon=True)
        th.start()

        def join():
            th.join(20)
            status, text = box.get("r", (0, "no answer"))
            return self.outcome(pid, status, text)
        return join


def unchecked(r):
    """Forwarded without callback-guard's mark: nothing checked it."""
    return r["forwarded"] and r["mark"] != "1"


def show(r):
    """status, who answered (the guard's code, rbac, upstream, or Envoy's response code
    details), and for a forwarded callback whether callback-guard marked it."""
    by = r["code"] if r["code"] not in ("-", "") else (r.get("details") or "-")
    s = f"{r['status']} {by}"
    if r["forwarded"]:
        s += " mark=1" if r["mark"] == "1" else " no-mark"
    return s


# ----------------------------------------------------------------------- processes

class Stack:
    """Upstream (+ wasm server for ECDS) + one Envoy, in its own temp dir."""

    def __init__(self, envoy_bin, name, tmp):
        self.envoy_bin, self.name = envoy_bin, name
        self.dir = tmp / name
        self.dir.mkdir()
        self.upstream = lab.Upstream().start()
        self.wasm = lab.WasmServer().start()
        self.ports = {"admin": lab.free_port(), "listener": lab.free_port(),
                      "nodefence": lab.free_port(), "upstream": self.upstream.port,
                      "wasm": self.wasm.port}
        self.access_log = self.dir / "access.log"
        self.ecds_dir = self.dir / "ecds"
        self.ecds_dir.mkdir()
        self.version = 0
        self.envoy = None

    def start_static(self, shipped, module):
        cfg = shipped.static_bootstrap(self.ports, module, self.access_log)
        return self._start(cfg)

    def start_ecds(self, shipped, resource, listeners=("defended",)):
        self.version += 1
        lab.write_ecds(self.ecds_dir, resource, self.version)
        return self._start(shipped.ecds_bootstrap(self.ports, self.ecds_dir, self.access_log,
                                                  listeners))

    def _start(self, cfg):
        self.envoy = lab.Envoy(self.envoy_bin, self.dir, self.ports, cfg,
                               env={NEXT_ENV: NEXT_KEY}, name="envoy")
        t0 = time.time()
        self.envoy.start(timeout=60)
        self.ready_s = time.time() - t0
        self.defended = Target(self.name, self.ports["listener"], self.upstream, self.access_log)
        self.bare = Target(self.name + "-bare", self.ports["nodefence"], self.upstream, self.access_log)
        return self

    def push(self, resource, settle=0.5):
        self.version += 1
        return lab.push_ecds(self.envoy, self.ecds_dir, self.version, resource,
                             self.wasm.total_fetches, settle=settle)

    def remote(self, name, data, sha=None):
        return lab.remote_code(self.wasm.put(name, data), sha or lab.sha256(data))

    def stat(self, name):
        return self.envoy.stats().get(name, 0)

    def alive(self):
        return self.envoy.proc.poll() is None

    def close(self):
        if self.envoy:
            self.envoy.stop()
        self.upstream.stop()
        self.wasm.stop()


def log_lines(stack, offset, needles):
    """For each of `needles`, in order, the first line of Envoy's log since `offset` that
    contains it, as "[level] message"."""
    lines = stack.envoy.log_since(offset).splitlines()
    out = []
    for needle in needles:
        for line in lines:
            if needle in line:
                parts = line.split("] ", 2)
                text = (f"[{parts[0].rsplit('[', 2)[-2].rstrip(']')}] {parts[2]}"
                        if line.startswith("[20") and len(parts) == 3 else line)
                if text not in out:
                    out.append(text)
                break
    return out


# ---------------------------------------------------------------- previous release

def prev_module(report, require_git):
    """The module of PREV_COMMIT, built once in a temporary git worktree and cached."""
    cached = PREV_DIR / f"callback_guard-{PREV_COMMIT}.wasm"
    if cached.exists():
        return cached, "cached"
    git = ["git", "-C", str(lab.REPO)]
    if not shutil.which("git") or subprocess.run(
            git + ["rev-parse", "--verify", "--quiet", PREV_COMMIT + "^{commit}"],
            capture_output=True).returncode:
        why = f"git not found, or no commit {PREV_COMMIT} here"
        if require_git:
            report.check("5 the previous release can be built", False, why)
        else:
            report.skip("5 upgrades from the previous release", why)
        return None, "no git"
    PREV_DIR.mkdir(parents=True, exist_ok=True)
    wt = PREV_DIR / "worktree"
    subprocess.run(git + ["worktree", "remove", "--force", str(wt)], capture_output=True)
    subprocess.run(git + ["worktree", "prune"], capture_output=True)
    try:
        subprocess.run(git + ["worktree", "add", "--detach", str(wt), PREV_COMMIT],
                       check=True, capture_output=True, timeout=120)
        env = dict(os.environ, CARGO_PROFILE_RELEASE_OPT_LEVEL="s")
        r = subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1", "--lib",
                            "--target-dir", str(PREV_DIR / "target")],
                           cwd=wt, env=env, capture_output=True, text=True, timeout=480)
        if r.returncode:
            report.check(f"5 the previous release ({PREV_COMMIT}) builds", False, r.stderr[-800:])
            return None, "build failed"
        tmp = cached.with_suffix(".tmp")
        shutil.copyfile(PREV_DIR / "target" / "wasm32-wasip1" / "release" / "callback_guard.wasm", tmp)
        os.replace(tmp, cached)
        shutil.rmtree(PREV_DIR / "target", ignore_errors=True)   # the module is all we keep
        return cached, "built"
    except (subprocess.SubprocessError, OSError) as e:
        report.check(f"5 the previous release ({PREV_COMMIT}) builds", False, repr(e)[-400:])
        return None, "build failed"
    finally:
        subprocess.run(git + ["worktree", "remove", "--force", str(wt)], capture_output=True)
        subprocess.run(git + ["worktree", "prune"], capture_output=True)


# ------------------------------------------------------------------------ the checks

def catalogue():
    """(label, request kwargs, expected status) for requirement 1. Built once, so both
    Envoys get the same bytes; the order matters (registry)."""
    n = f"{os.getpid()}"
    big = json.dumps({"App": "live", "pad": "x" * 70000}).encode()
    return [
        ("valid start (s1)", dict(body=v2(f"cat{n}a", "s1")), 200),
        ("CDN retry of it (s1)", dict(body=v2(f"cat{n}a", "s1")), 200),
        ("start by another session (s2)", dict(body=v2(f"cat{n}a", "s2")), 409),
        ("end (s1)", dict(body=v2(f"cat{n}a", "s1", "PubEnd")), 200),
        ("start (s2) after the end", dict(body=v2(f"cat{n}a", "s2")), 200),
        ("forged token", dict(body=v2(f"cat{n}b", "s1", forged=True)), 403),
        ("forged token + spoofed guard headers", dict(
            body=v2(f"cat{n}b2", "s1", forged=True),
            headers={"x-callback-guard-verified": "push_token", "x-callback-guard-format": "kls_v2",
                     "x-callback-guard-checked": "1"}), 403),
        ("valid + spoofed guard headers", dict(
            body=v2(f"cat{n}c", "s1"),
            headers={"x-callback-guard-verified": "spoofed", "x-callback-guard-key-id": "spoofed"}), 200),
        ("expired token", dict(body=v2(f"cat{n}d", "s1", expires_in=-300)), 403),
        ("token for another key", dict(body=v2(f"cat{n}e", "s1", key=NEXT_KEY)), 403),
        ("unknown app", dict(body=v2(f"cat{n}f", "s1", app="other")), 404),
        ("event an hour old", dict(body=v2(f"cat{n}g", "s1", age_s=3600)), None),
        ("form (KLS old version) start", dict(body=v1(f"cat{n}h", "v1"), ctype=FORM), 200),
        ("form start, other vdoid", dict(body=v1(f"cat{n}h", "v2"), ctype=FORM), 409),
        ("unlabelled JSON", dict(body=v2(f"cat{n}i", "s1"), ctype=None), 200),
        ("text/plain label", dict(body=v2(f"cat{n}j", "s1"), ctype="text/plain"), 415),
        ("broken JSON", dict(body=b'{"App": "live",'), 400),
        ("GET /callback", dict(body=None, method="GET", ctype=None), 405),
        ("body over max_body_bytes", dict(body=big), 413),
        ("/healthz", dict(body=None, method="GET", path="/healthz", ctype=None), 200),
        ("other path", dict(body=None, method="GET", path="/admin", ctype=None), 404),
    ]


def comparable(r):
    return {k: r[k] for k in ("status", "code", "error", "forwarded", "up", "up_body")}


def req1_same_decisions(report, static, ecds):
    cases = catalogue()
    diffs, wrong, unmarked = [], [], []
    for label, kw, want in cases:
        a = static.defended.send(**kw)
        b = ecds.defended.send(**kw)
        if comparable(a) != comparable(b):
            diffs.append(f"{label}: static {show(a)} {a['error']}, ECDS {show(b)} {b['error']}")
        if want is not None and a["status"] != want:
            wrong.append(f"{label}: {a['status']} {a['code']} (expected {want})")
        if "spoofed" in a["up"].values():
            wrong.append(f"{label}: a client's x-callback-guard-* header reached the upstream")
        if b["forwarded"] and b["mark"] != "1":
            unmarked.append(label)
    report.check(f"1 ECDS (code.remote + sha256) decides {len(cases)} callbacks as envoy/envoy.yaml "
                 "does (status, error, forwarded, headers and body upstream)", not diffs,
                 "; ".join(diffs[:4]))
    report.check("1 the reference decisions are the expected ones (200/409/403/404/415/400/405/413; "
                 "no client x-callback-guard-* header upstream)",
                 not wrong, "; ".join(wrong[:4]))
    report.check("1 every callback ECDS forwarded carries the filter state mark", not unmarked,
                 ", ".join(unmarked))


def swapped_resource(shipped, code):
    """The configuration swap of requirement 2: another key (pre-provisioned in Envoy's
    environment, now listed in host_env_keys) replaces the old one, and app live2 joins."""
    plugin = dict(shipped.plugin, filter_state_mark=True, apps=["live", "live2"])
    plugin["push_auth"] = dict(plugin["push_auth"], keys=[{"id": "next", "secret_env": NEXT_ENV}])
    res = shipped.resource(code, plugin)
    res["config"]["vm_config"]["environment_variables"]["host_env_keys"].append(NEXT_ENV)
    return res


def in_flight(targets, gate, key=lab.PUSH_KEY):
    """A valid and a forged chunked callback on each target, bodies held until `gate`."""
    tag = f"{time.time():.3f}".replace(".", "")
    return {(t.name, kind): t.slow(v2(f"fly{t.name}{kind}{tag}", "s1", key=key,
                                      forged=kind == "forged"), gate)
            for t in targets for kind in ("valid", "forged")}


def landed_safely(flights):
    """Joins in-flight callbacks: (all safe?, summary). Safe: no forged one forwarded, no
    valid one forwarded without callback-guard's mark."""
    landed = {k: j() for k, j in flights.items()}
    bad = [k for k, r in landed.items() if unchecked(r) or (k[1] == "forged" and r["forwarded"])]
    return not bad, "; ".join(f"{k[0]} {k[1]}: {show(r)}" for k, r in landed.items())


def req2_swap(report, shipped, e, n):
    """Config swap (new key, new app list) without restart; reservation and in-flight."""
    pid = e.envoy.proc.pid
    x = f"held{os.getpid()}"
    before = e.defended.send(body=v2(x, "s1"))
    live2_before = e.defended.send(body=v2(f"l2a{os.getpid()}", "s1", app="live2", key=NEXT_KEY))
    report.check("2 before the swap: stream X started by session s1", before["status"] == 200, show(before))
    gate = threading.Event()
    flights = in_flight([e.defended, n.bare], gate)
    time.sleep(0.5)       # every stream is in Envoy, its body incomplete
    new = swapped_resource(shipped, e.good_code)
    pushed = e.push(new)
    pushed_n = n.push(swapped_resource(shipped, n.good_code))
    gate.set()
    safe, summary = landed_safely(flights)
    report.check("2 swap to a new key and app list: accepted and applied (update_success, "
                 "config_reload)", pushed["outcome"] == pushed_n["outcome"] == "accepted",
                 f"{pushed['outcome']} (without the defence: {pushed_n['outcome']})")
    report.check("2 callbacks in flight during the swap (chunked, body finished after it) are never "
                 "forwarded unchecked, with or without the defence", safe and len(flights) == 4, summary)
    after_new = e.defended.send(body=v2(f"nk{os.getpid()}", "s1", key=NEXT_KEY))
    after_old = e.defended.send(body=v2(f"ok{os.getpid()}", "s1"))
    live2 = e.defended.send(body=v2(f"l2b{os.getpid()}", "s1", app="live2", key=NEXT_KEY))
    report.check("2 the new config is live without a restart: new key 200, old key 403, "
                 "app live2 404 before and 200 after, same Envoy process",
                 after_new["status"] == 200 and after_old["status"] == 403
                 and live2_before["status"] == 404 and live2["status"] == 200
                 and e.alive() and e.envoy.proc.pid == pid,
                 f"new key {show(after_new)}, old key {show(after_old)}, live2 {show(live2_before)} "
                 f"-> {show(live2)}")
    dup = e.defended.send(body=v2(x, "s2", key=NEXT_KEY))
    report.check("2 stream X reserved before the swap is still reserved: start by s2 gets 409 "
                 "ExistStreamName", dup["status"] == 409 and dup["code"] == "ExistStreamName", show(dup))
    return x, new


def req4_bad_config(report, e, serving, x):
    """A configuration callback-guard refuses, and a module that does not load from
    code.local: both rejected, the previous config keeps serving."""
    rows = []
    bad_plugin = dict(json.loads(serving["config"]["configuration"]["value"]), max_body_bytes=0)
    bad = copy.deepcopy(serving)
    bad["config"]["configuration"]["value"] = json.dumps(bad_plugin)
    junk = e.dir / "junk.wasm"
    junk.write_bytes(lab.bad_bytes())
    local_junk = with_code(serving, lab.local_code(junk))
    for label, res in (("a plugin configuration callback-guard refuses (max_body_bytes 0)", bad),
                       ("a code.local module that does not load", local_junk)):
        rej0 = e.stat(f"extension_config_discovery.http_filter.{lab.ECDS_NAME}.update_rejected")
        off = e.envoy.log_size()
        pushed = e.push(res)
        rej1 = e.stat(f"extension_config_discovery.http_filter.{lab.ECDS_NAME}.update_rejected")
        ok_new = e.defended.send(body=v2(f"bk{len(rows)}{os.getpid()}", "s1", key=NEXT_KEY))
        old_key = e.defended.send(body=v2(f"bo{len(rows)}{os.getpid()}", "s1"))
        dup = e.defended.send(body=v2(x, "s3", key=NEXT_KEY))
        report.check(f"4 {label}: update_rejected {rej0}->{rej1}, the previous config keeps serving "
                     "(its key 200, the older key 403, X still 409)",
                     pushed["outcome"] == "rejected" and rej1 == rej0 + 1 and ok_new["status"] == 200
                     and ok_new["mark"] == "1" and old_key["status"] == 403 and dup["status"] == 409,
                     f"{pushed['outcome']}; {show(ok_new)}, {show(old_key)}, {show(dup)}")
        report.log(log_lines(e, off, ("invalid configuration", "config update rejected",
                                      "Failed to load")))
        rows.append(pushed)


WHY_NEEDLES = ("data is invalid", "Retry limit exceeded", "failed to load", "Failed to load",
               "fetch remote data", "config update rejected", "Unable to create Wasm")
STARTUP_NEEDLES = ("data is invalid", "Retry limit exceeded", "Failed to load Wasm",
                   "Plugin configured to fail closed failed to load")


def req3_no_filter(report, e, n, serving, x, up_code):
    """Updates whose remote module Envoy does not have: refused with the defence (E),
    forwarded without it (N; reported, not gated). In-flight callbacks across the first."""
    junk = lab.bad_bytes()
    cases = [
        ("wrong sha256 (same URL)",
         lambda st: lab.remote_code(st.good_code["remote"]["http_uri"]["uri"], "0" * 64)),
        ("junk module, its correct sha256", lambda st: st.remote("junk.wasm", junk)),
        ("URL that 404s", lambda st: lab.remote_code(st.wasm.url("missing.wasm"), lab.sha256(b"x"))),
        ("legitimate upgrade (a new module, plain code.remote)",
         lambda st: st.remote("callback_guard-up.wasm", up_code)),
    ]
    denied_name = "http.callbacks.rbac.denied"
    open_repro = []
    for i, (label, code) in enumerate(cases):
        gate = threading.Event()
        flights = in_flight([e.defended, n.bare], gate, key=NEXT_KEY) if i == 0 else {}
        if flights:
            time.sleep(0.5)
        denied0 = e.stat(denied_name)
        off = e.envoy.log_size()
        pushed = e.push(with_code(serving, code(e)))
        pushed_n = n.push(with_code(serving, code(n)))
        gate.set()
        valid = e.defended.send(body=v2(f"h{i}v{os.getpid()}", "s1", key=NEXT_KEY))
        forged = e.defended.send(body=v2(f"h{i}f{os.getpid()}", "s1", forged=True),
                                 headers={"x-callback-guard-checked": "1"})
        denied = e.stat(denied_name) - denied0
        report.check(f"3 {label}: with the defence callbacks are refused, never forwarded "
                     f"(rbac.denied +{denied})",
                     not valid["forwarded"] and not forged["forwarded"]
                     and valid["status"] in (403, 503) and forged["status"] in (403, 503),
                     f"ECDS {pushed['outcome']}, {pushed['fetches']} fetches; valid {show(valid)}, "
                     f"forged {show(forged)}")
        why = log_lines(e, off, WHY_NEEDLES)
        print(f"       log: {why[0][:200] if why else 'nothing about it (ECDS counts a success)'}",
              flush=True)
        if flights:
            safe, summary = landed_safely(flights)
            report.check("3 callbacks in flight across that swap are decided by the old filter, "
                         "never forwarded unchecked (with or without the defence)", safe, summary)
        bare = n.bare.send(body=v2(f"h{i}b{os.getpid()}", "s1", forged=True))
        wasm_stats = sum(1 for name in n.envoy.stats() if name.startswith("wasmcustom."))
        report.info(f"3 {label}, without the defence",
                    f"ECDS {pushed_n['outcome']}; forged callback {show(bare)}; "
                    f"wasmcustom.* stats left: {wasm_stats}")
        if bare["forwarded"]:
            open_repro.append(label)
    report.info("3 Envoy fail-open without the defence (not gated)",
                f"still reproduces: {', '.join(open_repro)}" if open_repro else
                "NOT reproduced any more: Envoy may have fixed the hole; revisit docs/ecds.md")
    # Back to the cached module: the filter serves again.
    pushed = e.push(serving_perturbed(serving))
    back = e.defended.send(body=v2(f"back{os.getpid()}", "s1", key=NEXT_KEY))
    report.check("3 pushing the cached module again restores the filter",
                 back["status"] == 200 and back["mark"] == "1", f"{pushed['outcome']}; {show(back)}")
    dup = e.defended.send(body=v2(x, "s4", key=NEXT_KEY))
    report.info("3 reservation of stream X across the no-filter interval",
                "kept (409)" if dup["status"] == 409 else
                f"LOST: a start of X by another session now gets {show(dup)} (the last VM of vm_id "
                "callback_guard ended, and Proxy-Wasm shared data ends with it)")


def with_code(res, code):
    r = copy.deepcopy(res)
    r["config"]["vm_config"]["code"] = code
    return r


def serving_perturbed(res):
    r = copy.deepcopy(res)
    r["config"]["configuration"]["value"] += "\n"
    return r


def req3_at_startup(report, envoy_bin, shipped, module, tmp):
    """The first resource Envoy gets already names a module it cannot load."""
    for name, label, code in (
            ("W1", "wrong sha256", lambda st: st.remote("cg.wasm", module.read_bytes(), sha="0" * 64)),
            ("W2", "junk module, its correct sha256", lambda st: st.remote("junk.wasm", lab.bad_bytes()))):
        w = Stack(envoy_bin, name, tmp)
        try:
            w.start_ecds(shipped, shipped.resource(code(w), filter_state_mark=True))
            valid = w.defended.send(body=v2(f"w{os.getpid()}", "s1"))
            forged = w.defended.send(body=v2(f"wf{os.getpid()}", "s1", forged=True))
            report.check(f"3 {label} at startup: callbacks refused, never forwarded",
                         not valid["forwarded"] and not forged["forwarded"] and valid["status"] >= 400,
                         f"ready in {w.ready_s:.1f} s, {w.wasm.total_fetches()} fetches; valid "
                         f"{show(valid)}, forged {show(forged)}")
            report.log(log_lines(w, 0, STARTUP_NEEDLES), limit=4)
        finally:
            w.close()


def req5_upgrade(report, envoy_bin, shipped, module, prev, tmp):
    """The previous release delivered by ECDS writes a reservation; the current module,
    delivered so that Envoy really installs it, still sees it."""
    u = Stack(envoy_bin, "U", tmp)
    try:
        prev_bytes = prev.read_bytes()
        cur_local = lab.local_code(module)
        report.check(f"5 both modules use the registry layout {REGISTRY_PREFIX.decode()}",
                     REGISTRY_PREFIX in prev_bytes and REGISTRY_PREFIX in module.read_bytes())
        old_remote = shipped.resource(u.remote("prev.wasm", prev_bytes))   # no filter_state_mark
        u.start_ecds(shipped, old_remote, ("defended", "bare"))
        current = shipped.resource(cur_local, filter_state_mark=True)

        def is_prev():   # the previous release forwards without a mark
            r = u.bare.send(body=v2(f"which{u.bare.seq}x{os.getpid()}", "s1"))
            return r["forwarded"] and r["mark"] == "-"

        y = f"upY{os.getpid()}"
        y1 = u.bare.send(body=v2(y, "s1"))
        report.check(f"5 previous release ({PREV_COMMIT}) by ECDS (code.remote): start of Y by s1 "
                     "forwarded", y1["status"] == 200 and is_prev(), show(y1))
        rbac = u.defended.send(body=v2(f"upR{os.getpid()}", "s1"))
        report.info("5 the previous release behind the RBAC defence",
                    f"valid callback {show(rbac)}: it sets no mark, so add the RBAC filter only "
                    "once a module with filter_state_mark serves")
        pushed = u.push(current)
        y2 = u.defended.send(body=v2(y, "s2"))
        fresh = u.defended.send(body=v2(f"upF{os.getpid()}", "s1"))
        report.check("5 upgrade by code.local: the current module serves and a start of Y by s2 "
                     "gets 409 ExistStreamName",
                     pushed["outcome"] == "accepted" and fresh["mark"] == "1"
                     and y2["status"] == 409 and y2["code"] == "ExistStreamName",
                     f"{pushed['outcome']}; fresh stream {show(fresh)}; Y by s2 {show(y2)}")
        # Back to the previous release (code.local), then up by code.remote +
        # nack_on_code_cache_miss: a new module (not in Envoy's code cache) is NACKed first,
        # fetched in the background, and installed by the next (changed) push.
        old_local = shipped.resource(lab.local_code(prev))
        pushed = u.push(old_local)
        z = f"upZ{os.getpid()}"
        z1 = u.bare.send(body=v2(z, "s1"))
        report.check("5 downgrade to the previous release by code.local: start of Z by s1 forwarded",
                     pushed["outcome"] == "accepted" and z1["status"] == 200 and is_prev(),
                     f"{pushed['outcome']}; {show(z1)}")
        marked = shipped.resource(lab.local_code(prev), filter_state_mark=True)
        off = u.envoy.log_size()
        pushed = u.push(marked)
        report.check("5 the previous release refuses filter_state_mark: update rejected, it keeps "
                     "serving", pushed["outcome"] == "rejected" and is_prev(), pushed["outcome"])
        report.log(log_lines(u, off, ("invalid configuration",)))
        newer = lab.upgraded(module.read_bytes())        # same code, another sha256
        nack = shipped.resource(u.remote("cg-next.wasm", newer), nack=True, filter_state_mark=True)
        off = u.envoy.log_size()
        first = u.push(nack, settle=1.5)
        nack_log = log_lines(u, off, ("config update rejected",))
        still_prev = is_prev()
        second = u.push(serving_perturbed(nack))
        z2 = u.defended.send(body=v2(z, "s2"))
        y3 = u.defended.send(body=v2(y, "s3"))
        fresh = u.defended.send(body=v2(f"upG{os.getpid()}", "s1"))
        report.check("5 upgrade by code.remote + nack_on_code_cache_miss: 1st push NACKed (previous "
                     "module serves), 2nd installs it; Z and Y by other sessions get 409",
                     first["outcome"] == "rejected" and still_prev and second["outcome"] == "accepted"
                     and fresh["mark"] == "1" and z2["status"] == 409 and y3["status"] == 409,
                     f"push 1 {first['outcome']} ({first['fetches']} fetch), push 2 {second['outcome']}; "
                     f"fresh {show(fresh)}; Z by s2 {show(z2)}; Y by s3 {show(y3)}")
        report.log(nack_log)
        # The current module, from the build the nack path installed (another sha256) to
        # the one at code.local, with another configuration.
        other = shipped.resource(cur_local, filter_state_mark=True, apps=["live", "live2"])
        pushed = u.push(other)
        live2 = u.defended.send(body=v2(f"upL{os.getpid()}", "s1", app="live2"))
        y4 = u.defended.send(body=v2(y, "s4"))
        z3 = u.defended.send(body=v2(z, "s3"))
        report.check("5 the current module to another build of itself (code.local) with another "
                     "configuration: the new config serves, Y and Z still 409",
                     pushed["outcome"] == "accepted" and live2["status"] == 200
                     and y4["status"] == 409 and z3["status"] == 409,
                     f"{pushed['outcome']}; app live2 {show(live2)}; Y {show(y4)}; Z {show(z3)}")
    finally:
        u.close()


def check_docs(report):
    """docs/ecds.md shows the RBAC filter this harness tests (compared as YAML data)."""
    import yaml
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") == RBAC_NAME and "typed_config" in node:
                found.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    doc = lab.REPO / "docs" / "ecds.md"
    for block in (doc.read_text().split("```yaml")[1:] if doc.exists() else []):
        try:
            walk(yaml.safe_load(block.split("```", 1)[0]))
        except yaml.YAMLError:
            pass
    report.check("docs/ecds.md shows exactly the RBAC filter tested here",
                 bool(found) and all(f == RBAC_FILTER for f in found),
                 "" if found else f"no YAML filter named {RBAC_NAME} in {doc}")


def check_signer(report):
    """The harness signs tokens itself; the project's CLI must agree."""
    if not CLI.exists():
        report.skip("callback-guard sign agrees with the harness's signer", f"{CLI} missing (make bins)")
        return
    t = int(time.time()) + 600
    out = subprocess.run([str(CLI), "sign", "--scheme", "ks_md5", "--key", lab.PUSH_KEY, "--app", "live",
                          "--stream", "cam1", "--expires-at", str(t)],
                         capture_output=True, text=True, timeout=30).stdout.strip()
    ours = "t={}&k={}".format(*lab.sign("cam1", 0, now=t))
    report.check("callback-guard sign agrees with the harness's signer", out == ours, f"{out} vs {ours}")


def run(envoy_bin):
    report = Report()
    ci = os.environ.get("CI") == "true"
    envoy_bin = shutil.which(envoy_bin) or envoy_bin
    if not Path(envoy_bin).exists():
        report.skip("every check", f"no Envoy at {envoy_bin} (set ENVOY_BIN or `make envoy`)")
        report.summary()
        return 1 if report.failed else 0
    print(f"== Envoy {lab.envoy_version(envoy_bin)} at {envoy_bin}", flush=True)

    def overdue(*_):
        raise TimeoutError(f"the run took more than {DEADLINE_S} s")
    signal.signal(signal.SIGALRM, overdue)
    signal.alarm(DEADLINE_S)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # still stop every Envoy
    shipped = Shipped()
    tmp = Path(tempfile.mkdtemp(prefix="ecds-ci-"))
    stacks = []
    try:
        src = Path(os.environ.get("WASM") or lab.DEFAULT_WASM)
        module = tmp / "callback_guard.wasm"
        shutil.copyfile(src, module)             # another engineer may rebuild the original
        data = module.read_bytes()
        check_signer(report)
        check_docs(report)

        report.section("1: decisions through ECDS vs the static config")
        s = Stack(envoy_bin, "S", tmp)
        e = Stack(envoy_bin, "E", tmp)
        n = Stack(envoy_bin, "N", tmp)
        stacks += [s, e, n]
        s.start_static(shipped, module)
        for st, listeners in ((e, ("defended",)), (n, ("bare",))):
            st.good_code = st.remote("callback_guard.wasm", data)
            st.start_ecds(shipped, shipped.resource(st.good_code, filter_state_mark=True), listeners)
        print(f"       ready: static {s.ready_s:.1f} s, ECDS {e.ready_s:.1f} s "
              f"({e.wasm.total_fetches()} fetch)", flush=True)
        req1_same_decisions(report, s, e)
        s.close()
        stacks.remove(s)

        report.section("2: configuration swap while Envoy runs")
        x, serving = req2_swap(report, shipped, e, n)

        report.section("4: bad updates are rejected")
        req4_bad_config(report, e, serving, x)

        report.section("3: modules Envoy cannot load")
        req3_no_filter(report, e, n, serving, x, lab.upgraded(data))
        for st in (e, n):
            st.close()
            stacks.remove(st)
        req3_at_startup(report, envoy_bin, shipped, module, tmp)

        report.section("5: upgrades keep live reservations")
        prev, how = prev_module(report, ci)
        if prev:
            print(f"       previous release module: {prev} ({how})", flush=True)
            req5_upgrade(report, envoy_bin, shipped, module, prev, tmp)
    except Exception as ex:   # a crash of the harness is a failure, with its reason
        import traceback
        traceback.print_exc()
        report.check("harness ran to the end", False, repr(ex)[:300])
    finally:
        signal.alarm(0)
        for st in stacks:
            st.close()
        shutil.rmtree(tmp, ignore_errors=True)
    report.summary()
    return 1 if report.failed else 0
