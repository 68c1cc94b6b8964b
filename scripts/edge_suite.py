#!/usr/bin/env python3
"""`make test-edge`: hostile clients against a real Envoy running envoy/envoy.yaml.

The config Envoy runs is envoy/envoy.yaml as shipped, with only its three ports and the
module path replaced (the same substitution as tests/support's shipped_yaml()); every
timeout and limit is the shipped one. Behind it an upstream spy records what reaches it.
All traffic goes to 127.0.0.1; every case is bounded in count and time.

Cases (each prints its figures; any failed expectation fails the run):
- idle connections that never send a byte, closed by the connection idle_timeout;
- slow body: N requests declare a Content-Length they never finish sending (twice);
  all are answered 408 and closed by request_timeout (+ margin), Envoy's heap comes back
  to its baseline and the second round needs no more RSS, valid callbacks sent meanwhile
  are all answered 200 (p50/p99). Envoy's CPU over a quiet window with 0 and N held.
- held without a body: N requests with complete headers and no body byte (what the
  filter's tick visits): Envoy's CPU per tick and per held request, then 408s.
- slow headers: requests whose headers never finish, closed by request_headers_timeout.
- connection flood past the overload manager's connection limit: refused, recovery,
  no crash, what valid callbacks saw.
- odd headers: too many, too large, underscores (HTTP/1 and HTTP/2): Envoy's refusal,
  nothing at the upstream; a client's X-Forwarded-For is not taken as the sender;
  normalize_path and merge_slashes; bodies past max_body_bytes (declared and chunked).
- HTTP/2: 100 callbacks at once on one connection; streams that never send their body;
  a client past max_concurrent_streams.
- X-Forwarded-For: use_remote_address / xff_num_trusted_hops against the filter's
  trusted_xff_hops, five combinations, with a client claiming to be the allowed sender.
- the CDN's own filter chain (docs/operations.md's recipe, built from envoy/envoy.yaml): a
  flood from 127.0.0.2 is cut by connection_limit, callbacks from 127.0.0.1 still pass.
- heap action: the same config with a tiny max_heap_size_bytes: stop_accepting_requests
  answers 503 and forwards nothing.
At the end: every request the upstream saw is a valid callback of this run with the
filter's x-callback-guard-verified header, and every callback answered 200 is there.

Usage: edge_suite.py --envoy PATH --wasm PATH [--held N] [--flood-extra N] [--quiet SECONDS]
Needs the h2 and PyYAML packages (`make test-edge` installs them in .venv-edge).
"""

import argparse
import collections
import copy
import hashlib
import http.server
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import h2.config
import h2.connection
import h2.events
import h2.settings
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "edge" + secrets.token_hex(8)
CLK_TCK = os.sysconf("SC_CLK_TCK")
FAILURES = []


def check(cond, what):
    print(f"  {'ok  ' if cond else 'FAIL'} {what}", flush=True)
    if not cond:
        FAILURES.append(what)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


# ---- the shipped config ------------------------------------------------------------------


def shipped_value(text, pattern):
    m = re.search(pattern, text, re.M)
    if not m:
        sys.exit(f"envoy/envoy.yaml: no match for {pattern!r}: the suite reads its limits from there")
    return m.group(1)


def derive_config(text, port, admin, upstream, wasm, heap_bytes=None):
    """envoy/envoy.yaml with the ports and the module path replaced, nothing else
    (heap_bytes: the heap-action case also replaces max_heap_size_bytes)."""
    subs = [
        ("port_value: 10000", f"port_value: {port}"),
        ("port_value: 9901", f"port_value: {admin}"),
        ("port_value: 8080", f"port_value: {upstream}"),
        ("target/wasm32-wasip1/release/callback_guard.wasm", wasm),
    ]
    for old, new in subs:
        if text.count(old) != 1:
            sys.exit(f"envoy/envoy.yaml: expected `{old}` once, found {text.count(old)}")
        text = text.replace(old, new)
    if heap_bytes is not None:
        text, n = re.subn(r"max_heap_size_bytes: \d+", f"max_heap_size_bytes: {heap_bytes}", text)
        if n != 1:
            sys.exit("envoy/envoy.yaml: expected one max_heap_size_bytes")
    return text


# ---- the upstream spy --------------------------------------------------------------------


class Spy:
    """Records every request that reaches the upstream; answers 200 {"ok":true}."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = []
        spy = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                with spy.lock:
                    spy.seen.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                out = b'{"ok":true}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self):
        with self.lock:
            return len(self.seen)

    def records(self):
        with self.lock:
            return list(self.seen)


# ---- Envoy -------------------------------------------------------------------------------


class Envoy:
    def __init__(self, binary, yaml_text, port, admin, tag):
        self.dir = tempfile.mkdtemp(prefix=f"edge-{tag}-")
        self.port, self.admin = port, admin
        cfg = os.path.join(self.dir, "envoy.yaml")
        with open(cfg, "w") as f:
            f.write(yaml_text)
        self.log_path = os.path.join(self.dir, "envoy.log")
        env = dict(os.environ, CALLBACK_GUARD_PUSH_KEY=KEY)
        self.proc = subprocess.Popen(
            [binary, "-c", cfg, "--concurrency", "2", "-l", "info", "--disable-hot-restart"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "w"), env=env, start_new_session=True,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"Envoy exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if self.get("/ready").strip() == "LIVE":
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        sys.exit("Envoy did not become ready in 60 s")

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=5) as r:
            return r.read().decode()

    def stats(self):
        out = {}
        for line in self.get("/stats").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def memory(self):
        return json.loads(self.get("/memory"))

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self):
        """CPU time of all of Envoy's threads: schedstat's run time (ns), or utime+stime
        of /proc/<pid>/stat (10 ms ticks) where schedstat is missing."""
        total = 0
        try:
            for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
                with open(f"/proc/{self.proc.pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            return total / 1e9
        except (OSError, ValueError, IndexError):
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def alive(self):
        return self.proc.poll() is None

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def diff(before, after, pattern):
    rx = re.compile(pattern)
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if rx.search(k) and after[k] - before.get(k, 0)}


def show(d):
    for k, v in d.items():
        print(f"       {k} +{v}")


# ---- callbacks ---------------------------------------------------------------------------


class Ledger:
    """The valid callbacks this run sent, and which were answered 200."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = set()
        self.ok = set()
        self.n = 0

    def stream(self, tag):
        with self.lock:
            self.n += 1
            s = f"edge-{tag}-{self.n}-{secrets.token_hex(3)}"
            self.sent.add(s)
            return s

    def answered(self, stream, status):
        if status == 200:
            with self.lock:
                self.ok.add(stream)


LEDGER = Ledger()


def callback_body(stream):
    t = str(int(time.time()) + 600)
    k = hashlib.md5((KEY + stream + t).encode()).hexdigest()[8:24]
    now = int(time.time())
    return json.dumps({
        "Version": "1.0", "App": "live", "Pubdomain": "push.example.com", "Stream": stream,
        "PubStartUnixTime": now * 1000, "NotifyType": "PubStart", "ClientIp": " ",
        "ClientPort": " ", "Node": " ", "PubParam": {"t": t, "k": k},
    }, separators=(",", ":")).encode()


def request_bytes(body, extra_headers=(), content_length=None):
    head = [
        "POST /callback HTTP/1.1", "host: 127.0.0.1", "content-type: application/json",
        f"content-length: {len(body) if content_length is None else content_length}",
    ]
    head += [f"{k}: {v}" for k, v in extra_headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_answer(s, timeout):
    """The status of an HTTP/1 answer on `s` (0: closed without one), reading until close."""
    s.settimeout(timeout)
    buf = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if b"\r\n\r\n" in buf:
                head, _, rest = buf.partition(b"\r\n\r\n")
                m = re.search(rb"content-length: *(\d+)", head, re.I)
                if m and len(rest) >= int(m.group(1)):
                    break
    except (socket.timeout, ConnectionResetError):
        pass
    m = re.match(rb"HTTP/1\.[01] (\d{3})", buf)
    return (int(m.group(1)) if m else 0), buf


def send_valid(port, tag, extra_headers=(), timeout=10):
    """One valid signed callback on a new connection: (status, seconds, stream)."""
    stream = LEDGER.stream(tag)
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(request_bytes(callback_body(stream), extra_headers))
            status, _ = read_answer(s, timeout)
    except OSError:
        status = 0
    LEDGER.answered(stream, status)
    return status, time.monotonic() - t0, stream


class ValidLoad:
    """Valid callbacks at `rate` per second in the background, until stopped."""

    def __init__(self, port, tag, rate):
        self.results = []
        self.stop_ev = threading.Event()

        def run():
            while not self.stop_ev.is_set():
                t = time.monotonic()
                self.results.append(send_valid(port, tag, timeout=5)[:2])
                self.stop_ev.wait(max(0.0, 1 / rate - (time.monotonic() - t)))

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def stop(self):
        self.stop_ev.set()
        self.thread.join()
        return self.results


def summary(results):
    lat = [d * 1000 for st, d in results if st == 200]
    codes = {}
    for st, _ in results:
        codes[st] = codes.get(st, 0) + 1
    return codes, lat


class Watch:
    """Watches sockets for their answer and their close; records the times."""

    def __init__(self, socks, opened=None):
        self.socks = socks
        self.opened = opened or {s: time.monotonic() for s in socks}
        self.answer_at, self.closed_at, self.status, self.buf = {}, {}, {}, {}
        self.sel = selectors.DefaultSelector()
        for s in socks:
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ)
            self.buf[s] = b""

    def run(self, until):
        while self.sel.get_map() and time.monotonic() < until:
            for key, _ in self.sel.select(timeout=0.2):
                s = key.fileobj
                try:
                    chunk = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                now = time.monotonic()
                if chunk:
                    if s not in self.answer_at:
                        self.answer_at[s] = now
                    self.buf[s] += chunk
                else:
                    self.closed_at[s] = now
                    m = re.match(rb"HTTP/1\.[01] (\d{3})", self.buf[s])
                    self.status[s] = int(m.group(1)) if m else 0
                    self.sel.unregister(s)
                    s.close()
        for s in list(self.sel.get_map().values()):
            self.sel.unregister(s.fileobj)
            s.fileobj.close()

    def answers(self):
        """Seconds from open to the first byte of the answer, per answered socket."""
        return [self.answer_at[s] - self.opened[s] for s in self.answer_at]

    def ends(self):
        """Seconds from open to close, per closed socket."""
        return [self.closed_at[s] - self.opened[s] for s in self.closed_at]

    def statuses(self):
        out = {}
        for st in self.status.values():
            out[st] = out.get(st, 0) + 1
        return out


# ---- the cases ---------------------------------------------------------------------------


def quiet_cpu(envoy, seconds):
    c0 = envoy.cpu_s()
    time.sleep(seconds)
    return envoy.cpu_s() - c0


def case_slow_body(envoy, spy, limits, n, quiet_s, first=None):
    print(f"\n== slow body{' (second round)' if first else ''}: {n} requests declare {limits['max_body']} bytes, send "
          f"{limits['max_body'] - 2768} and stall (request_timeout {limits['request_timeout']} s)")
    time.sleep(1)
    base_rss = envoy.rss_mib()
    base_heap = int(envoy.memory()["allocated"]) / 2**20
    cpu0 = quiet_cpu(envoy, quiet_s)
    before = envoy.stats()
    at_upstream = spy.count()
    declared = limits["max_body"]
    body = b"x" * (declared - 2768)
    socks, opened = [], {}
    t_open = time.monotonic()
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", envoy.port), timeout=5)
        s.sendall(request_bytes(body, content_length=declared))
        socks.append(s)
        opened[s] = time.monotonic()
    opened_s = time.monotonic() - t_open
    watch = Watch(socks, opened)
    # Held: the quiet window first (no other traffic; after Envoy has read what was sent
    # and faulted in its memory), then valid callbacks meanwhile.
    time.sleep(1.5)
    cpu_n = quiet_cpu(envoy, quiet_s)
    held_rss = envoy.rss_mib()
    held_heap = int(envoy.memory()["allocated"]) / 2**20
    mid = envoy.stats()
    held_now = mid.get("http.callbacks.downstream_rq_active", 0)
    load = ValidLoad(envoy.port, "slowbody", rate=20)
    deadline = t_open + limits["request_timeout"] + 3 + opened_s
    watch.run(until=deadline)
    results = load.stop()
    ends = watch.ends()
    print(f"  opened {n} in {opened_s:.1f} s; held while measured: {held_now} (downstream_rq_active)")
    check(held_now >= n * 0.95, f"Envoy held the stalled requests ({held_now} of {n})")
    check(len(ends) == n, f"all {n} closed by {limits['request_timeout']} s + 3 s (closed: {len(ends)}, "
          f"open to close: min {min(ends, default=0):.1f} s, max {max(ends, default=0):.1f} s)")
    st = watch.statuses()
    ans = watch.answers()
    check(st.get(408, 0) == n, f"each answered 408 by Envoy before the close: {st}, answered "
          f"{min(ans, default=0):.1f}-{max(ans, default=0):.1f} s after it was opened (then Envoy's "
          "delayed_close_timeout, 1 s, before the close)")
    rss_grow = held_rss - base_rss
    print(f"  Envoy RSS: baseline {base_rss:.0f} MiB, held {held_rss:.0f} MiB: "
          f"{rss_grow * 1024 / n:.1f} KiB per held request; heap (tcmalloc allocated) "
          f"{base_heap:.0f} -> {held_heap:.0f} MiB: {(held_heap - base_heap) * 1024 / n:.1f} KiB per held request")
    time.sleep(2)
    after_rss = envoy.rss_mib()
    after_heap = int(envoy.memory()["allocated"]) / 2**20
    print(f"  2 s after the last close: RSS {after_rss:.0f} MiB, heap allocated {after_heap:.0f} MiB")
    check(after_heap - base_heap <= 8, f"heap back within 8 MiB of its baseline ({after_heap - base_heap:+.1f} MiB)")
    if first is None:
        print(f"  RSS stays {after_rss - base_rss:+.0f} MiB over its baseline: tcmalloc keeps the freed pages "
              "(pageheap_free in /memory) for reuse; the next round shows they are reused")
    else:
        check(held_rss <= first["held_rss"] + 10,
              f"a second round reuses that memory: RSS while held {held_rss:.0f} MiB <= first round's "
              f"{first['held_rss']:.0f} MiB + 10 MiB; after {after_rss:.0f} MiB")
    codes, lat = summary(results)
    check(codes.get(200, 0) == len(results) and results,
          f"valid callbacks during the flood: {len(results)} sent, answers {codes}, "
          f"p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, max {max(lat, default=0):.1f} ms")
    after = envoy.stats()
    show(diff(before, after, r"^http\.callbacks\.downstream_rq_(timeout|idle_timeout|header_timeout|4xx|408)$|"
              r"^http\.callbacks\.downstream_cx_(destroy_remote|destroy_local)$"))
    check(spy.count() - at_upstream == codes.get(200, 0),
          f"the upstream saw only the valid ones ({spy.count() - at_upstream})")
    # Item 4: the filter's tick walks the requests it holds; Envoy's CPU, quiet window.
    print("  " + cpu_line(cpu0, cpu_n, n, quiet_s))
    return {"held_rss": held_rss}


def cpu_line(cpu0, cpu_n, n, quiet_s, workers=2):
    """Envoy's extra CPU with n held requests, per tick: each worker's VM ticks every 250 ms
    and walks the requests of its worker (about n / workers)."""
    ticks = 4 * quiet_s * workers
    per_tick = (cpu_n - cpu0) / ticks
    return (f"Envoy CPU over a quiet {quiet_s} s window: {cpu0 * 1000:.1f} ms with 0 held, {cpu_n * 1000:.1f} ms "
            f"with {n} held: +{per_tick * 1000:.3f} ms per tick of a worker ({ticks} ticks, ~{n // workers} held "
            f"per worker), {per_tick * 1e6 / (n / workers):.2f} us per held request per tick, "
            f"{(cpu_n - cpu0) / quiet_s * 100:.2f} % of a core")


def case_held_headers_only(envoy, spy, limits, n, quiet_s):
    """Item 4: requests whose headers are complete (content-length declared) and whose body
    never starts wait in the filter's AwaitingBody phase, the one its 250 ms tick visits
    with two hostcalls each (set_effective_context, request.total_size)."""
    print(f"\n== held in the filter's tick: {n} requests send complete headers "
          f"(content-length: 500) and no body byte")
    time.sleep(1)
    cpu0 = quiet_cpu(envoy, quiet_s)
    at_upstream = spy.count()
    socks, opened = [], {}
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", envoy.port), timeout=5)
        s.sendall(request_bytes(b"", content_length=500))
        socks.append(s)
        opened[s] = time.monotonic()
    watch = Watch(socks, opened)
    time.sleep(1.5)
    held = envoy.stats().get("http.callbacks.downstream_rq_active", 0)
    cpu_n = quiet_cpu(envoy, quiet_s)
    load = ValidLoad(envoy.port, "tick", rate=20)
    time.sleep(3)
    results = load.stop()
    watch.run(until=time.monotonic() + limits["request_timeout"] + 3)
    ends = watch.ends()
    print(f"  held while measured: {held}; " + cpu_line(cpu0, cpu_n, n, quiet_s))
    codes, lat = summary(results)
    check(codes.get(200, 0) == len(results) and results,
          f"valid callbacks meanwhile: {len(results)}, answers {codes}, p50 {pct(lat, 50):.1f} ms, "
          f"p99 {pct(lat, 99):.1f} ms, max {max(lat, default=0):.1f} ms")
    at_upstream += codes.get(200, 0)
    check(held >= n * 0.95, f"Envoy held them ({held} of {n})")
    # A generous bound, not a target: a tick that stalls on what it holds (say, quadratic
    # in it) would blow through it; the figure itself is printed above.
    check((cpu_n - cpu0) / quiet_s <= 0.20,
          f"holding them costs Envoy at most 20 % of a core ({(cpu_n - cpu0) / quiet_s * 100:.2f} %)")
    check(len(ends) == n and watch.statuses().get(408, 0) == n,
          f"all answered 408 and closed by request_timeout + 3 s ({watch.statuses()}, max {max(ends, default=0):.1f} s)")
    check(spy.count() == at_upstream, "nothing reached the upstream")


class IdleConnections:
    """Connections that never send a byte, watched in the background while the other cases
    run: each must be closed by the connection idle_timeout."""

    def __init__(self, envoy, limits, n):
        self.limits, self.n, self.envoy = limits, n, envoy
        self.before = envoy.stats()
        socks = [socket.create_connection(("127.0.0.1", envoy.port), timeout=5) for _ in range(n)]
        self.watch = Watch(socks)
        until = time.monotonic() + limits["idle_timeout"] + 5
        self.thread = threading.Thread(target=self.watch.run, args=(until,), daemon=True)
        self.thread.start()

    def check(self):
        print(f"\n== idle connections: {self.n} opened at the start that never sent a byte "
              f"(idle_timeout {self.limits['idle_timeout']} s)")
        self.thread.join()
        ends = self.watch.ends()
        t = self.limits["idle_timeout"]
        check(len(ends) == self.n and min(ends) >= t - 0.5 and max(ends) <= t + 3,
              f"all closed by Envoy {min(ends, default=0):.1f}-{max(ends, default=0):.1f} s after they opened "
              f"({len(ends)} of {self.n}; answers {self.watch.statuses()}, 0 = none)")
        d = diff(self.before, self.envoy.stats(), r"^http\.callbacks\.downstream_cx_idle_timeout$")
        show(d)
        check(d.get("http.callbacks.downstream_cx_idle_timeout", 0) >= self.n, "counted as downstream_cx_idle_timeout")


def case_slow_headers(envoy, spy, limits, n):
    print(f"\n== slow headers: {n} requests trickle their headers, one line a second "
          f"(request_headers_timeout {limits['headers_timeout']} s)")
    before = envoy.stats()
    at_upstream = spy.count()
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", envoy.port), timeout=5)
        s.sendall(b"POST /callback HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        socks.append(s)
    watch = Watch(socks)
    stop = threading.Event()

    def trickle():
        i = 0
        while not stop.wait(1.0):
            i += 1
            for s in list(watch.opened):
                if s not in watch.closed_at:
                    try:
                        s.send(f"x-slow-{i}: {i}\r\n".encode())
                    except OSError:
                        pass

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    watch.run(until=time.monotonic() + limits["headers_timeout"] + 3)
    stop.set()
    t.join()
    ends = watch.ends()
    check(len(ends) == n, f"all {n} closed by {limits['headers_timeout']} s + 3 s (closed {len(ends)}; "
          f"min {min(ends, default=0):.1f} s, max {max(ends, default=0):.1f} s)")
    check(min(ends, default=0) >= limits["headers_timeout"] - 0.5,
          "none closed long before request_headers_timeout (so the trickle kept them alive until then)")
    print(f"  answers: {watch.statuses()}")
    show(diff(before, envoy.stats(), r"^http\.callbacks\.downstream_rq_(header_timeout|timeout|4xx)$"))
    check(diff(before, envoy.stats(), r"^http\.callbacks\.downstream_rq_header_timeout$").get(
        "http.callbacks.downstream_rq_header_timeout", 0) == n, "counted as downstream_rq_header_timeout")
    check(spy.count() == at_upstream, "nothing reached the upstream")


def case_flood(envoy, spy, limits, extra):
    limit = limits["max_connections"]
    total = limit + extra
    print(f"\n== connection flood: {total} idle connections, limit {limit} "
          f"(global_downstream_max_connections)")
    before = envoy.stats()
    at_upstream = spy.count()
    load = ValidLoad(envoy.port, "flood", rate=10)
    time.sleep(0.5)
    socks = []
    t0 = time.monotonic()
    failed_connect = 0
    for i in range(total):
        try:
            socks.append(socket.create_connection(("127.0.0.1", envoy.port), timeout=5))
        except OSError:
            failed_connect += 1
    opened_s = time.monotonic() - t0
    time.sleep(2)
    # Which of ours did Envoy close? (a closed one reads EOF or a reset at once)
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    during = envoy.stats()
    active = during.get("http.callbacks.downstream_cx_active", 0)
    listener_rx = re.compile(r"^listener\.127\.0\.0\.1_%d\." % envoy.port)
    show({k: v for k, v in diff(before, during, r"overload|global_cx|cx_overflow").items()})
    print(f"  opened {total - failed_connect} in {opened_s:.1f} s ({failed_connect} connect() failures); "
          f"Envoy closed {closed} of them; downstream_cx_active {active}")
    overflow = sum(v for k, v in diff(before, during, r"downstream_global_cx_overflow|downstream_cx_overload_reject").items()
                   if listener_rx.search(k))
    check(active <= limit, f"Envoy kept at most the limit open ({active} <= {limit})")
    check(closed >= extra * 0.9 and overflow >= extra * 0.9,
          f"the connections past the limit were refused: {closed} closed by Envoy, listener counted {overflow}")
    try:
        ready = envoy.get("/ready").strip()
    except OSError as e:
        ready = str(e)
    check(ready == "LIVE", f"the admin answers during the flood (ignore_global_conn_limit): {ready}")
    mid_results = list(load.results)
    for s in socks:
        s.close()
    t_closed = time.monotonic()
    # Recovery: the first 200 after the flood ends.
    recovered = None
    while time.monotonic() - t_closed < 10:
        st, _, _ = send_valid(envoy.port, "recover", timeout=3)
        if st == 200:
            recovered = time.monotonic() - t_closed
            break
        time.sleep(0.05)
    time.sleep(1)
    results = load.stop()
    check(recovered is not None, f"a valid callback is answered 200 {recovered if recovered is None else round(recovered, 2)} s after the flood ends")
    held = mid_results[len(mid_results) // 3:]
    codes, lat = summary(held)
    print(f"  valid callbacks while the flood held the slots: {len(held)}, answers {codes} "
          "(0 = connection closed by Envoy without an answer)")
    codes_all, lat_all = summary(results)
    print(f"  valid callbacks over the whole case: {len(results)}, answers {codes_all}, "
          f"p99 of the 200s {pct(lat_all, 99):.1f} ms")
    check(envoy.alive(), "Envoy is still running")
    check(all(st in (200, 0) for st, _ in results), "valid callbacks got 200 or a closed connection, nothing else")
    check(spy.count() - at_upstream == codes_all.get(200, 0) + 1, "the upstream saw exactly the ones answered 200")


def h2_exchange(port, streams, timeout, ignore_limit=False):
    """One h2c connection. `streams`: list of (headers, body or None = never sent). Returns
    {index: (status or 'reset', seconds)}; streams without body still open at the end are
    'open'. Also returns the server's SETTINGS."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    settings = {}
    ids = {}
    out = {}
    status = {}
    t0 = time.monotonic()
    s.settimeout(0.2)
    pending = list(enumerate(streams))
    got_settings = False
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if got_settings and pending:
            if ignore_limit:
                # A hostile client does not respect the server's MAX_CONCURRENT_STREAMS.
                conn.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = \
                    collections.deque([1 << 20])
            while pending and conn.open_outbound_streams < conn.remote_settings.max_concurrent_streams:
                i, (headers, body) = pending.pop(0)
                sid = conn.get_next_available_stream_id()
                ids[sid] = i
                conn.send_headers(sid, headers, end_stream=False)
                if body is not None:
                    conn.send_data(sid, body, end_stream=True)
            s.sendall(conn.data_to_send())
        if len(out) == len(streams):
            break
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        except OSError as e:
            settings["CLOSED"] = f"{type(e).__name__} at {time.monotonic() - t0:.2f} s"
            break
        if not data:
            settings["CLOSED"] = f"by Envoy at {time.monotonic() - t0:.2f} s"
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                settings = {k.name if hasattr(k, "name") else k: v.new_value for k, v in ev.changed_settings.items()}
                got_settings = True
            elif isinstance(ev, h2.events.ResponseReceived):
                status[ev.stream_id] = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                out[ids[ev.stream_id]] = (status.get(ev.stream_id), time.monotonic() - t0)
            elif isinstance(ev, h2.events.StreamReset):
                what = f"reset after {status[ev.stream_id]}" if ev.stream_id in status else "reset"
                out.setdefault(ids[ev.stream_id], (what, time.monotonic() - t0))
            elif isinstance(ev, h2.events.ConnectionTerminated):
                settings["GOAWAY"] = getattr(ev.error_code, "name", ev.error_code)
                settings["GOAWAY_AT"] = time.monotonic() - t0
                deadline = 0
        s.sendall(conn.data_to_send())
    s.close()
    return out, settings


def h2_headers(body_len, extra=()):
    return [(":method", "POST"), (":path", "/callback"), (":scheme", "http"), (":authority", "127.0.0.1"),
            ("content-type", "application/json"), ("content-length", str(body_len))] + list(extra)


def case_http2(envoy, spy, limits):
    print("\n== HTTP/2 (h2c): 100 callbacks at once on one connection; streams that never send their body")
    before = envoy.stats()
    at_upstream = spy.count()
    streams, names = [], []
    for i in range(100):
        name = LEDGER.stream("h2")
        body = callback_body(name)
        streams.append((h2_headers(len(body)), body))
        names.append(name)
    t = time.monotonic()
    out, settings = h2_exchange(envoy.port, streams, timeout=20)
    took = time.monotonic() - t
    for i, (st, _) in out.items():
        LEDGER.answered(names[i], st)
    lat = [d * 1000 for st, d in out.values() if st == 200]
    print(f"  server SETTINGS: {settings}")
    check(settings.get("MAX_CONCURRENT_STREAMS") == limits["h2_streams"]
          and settings.get("INITIAL_WINDOW_SIZE") == limits["h2_window"],
          f"Envoy announces max_concurrent_streams {limits['h2_streams']} and a stream window of {limits['h2_window']}")
    check(sum(1 for st, _ in out.values() if st == 200) == 100,
          f"100 of 100 answered 200 in {took:.2f} s (p99 {pct(lat, 99):.0f} ms)")

    # 50 stalled streams (headers, never the body) and 50 valid ones on the same connection.
    streams, names = [], []
    for i in range(50):
        streams.append((h2_headers(500), None))
        names.append(None)
    for i in range(50):
        name = LEDGER.stream("h2mix")
        body = callback_body(name)
        streams.append((h2_headers(len(body)), body))
        names.append(name)
    # Meanwhile on another connection: 100 stalled streams (the limit), then 10 valid
    # callbacks past the limit, sent anyway.
    over = {}
    over_streams, over_names = [(h2_headers(500), None) for _ in range(limits["h2_streams"])], []
    for i in range(10):
        name = LEDGER.stream("h2over")
        body = callback_body(name)
        over_streams.append((h2_headers(len(body)), body))
        over_names.append(name)
    t_over = threading.Thread(target=lambda: over.update(zip(("out", "info"), h2_exchange(
        envoy.port, over_streams, timeout=limits["request_timeout"] + 4, ignore_limit=True))))
    t_over.start()
    out, _ = h2_exchange(envoy.port, streams, timeout=limits["request_timeout"] + 4)
    t_over.join()
    for i, (st, _) in out.items():
        if names[i]:
            LEDGER.answered(names[i], st)
    o, info = over.get("out", {}), over.get("info", {})
    for i, name in enumerate(over_names):
        v = o.get(limits["h2_streams"] + i)
        if v:
            LEDGER.answered(name, v[0])
    closed = info.get("CLOSED") or info.get("GOAWAY")
    answered = sum(1 for v in o.values() if v and v[0] == 200)
    check(closed is not None and answered == 0,
          f"a client that opens 10 streams past max_concurrent_streams {limits['h2_streams']}: Envoy ends "
          f"the whole connection ({closed}; GOAWAY {info.get('GOAWAY')}), none of its callbacks answered")
    valid = [out.get(i) for i in range(50, 100)]
    stalled = [out.get(i) for i in range(50)]
    check(all(v and v[0] == 200 for v in valid),
          f"50 valid callbacks next to 50 stalled streams: all 200, slowest {max((v[1] for v in valid if v), default=0) * 1000:.0f} ms")
    ends = [v[1] for v in stalled if v]
    kinds = {}
    for v in stalled:
        kinds[v[0] if v else "open"] = kinds.get(v[0] if v else "open", 0) + 1
    check(len(ends) == 50 and max(ends) <= limits["request_timeout"] + 3,
          f"the 50 stalled streams ended by request_timeout + 3 s: {kinds}, "
          f"min {min(ends, default=0):.1f} s, max {max(ends, default=0):.1f} s")

    # Underscores on h2: the stream is refused, the connection goes on.
    name = LEDGER.stream("h2underscore")
    body = callback_body(name)
    LEDGER.sent.discard(name)
    out, _ = h2_exchange(envoy.port, [(h2_headers(len(body), [("x_api_key", "1")]), body)], timeout=5)
    got = out.get(0, ("none",))[0]
    check(got == 400 or str(got).startswith("reset"), f"h2 header with an underscore refused: {out.get(0)}")
    show(diff(before, envoy.stats(), r"^http\.callbacks\.downstream_rq_(timeout|2xx|4xx|rx_reset)$|^http\.callbacks\.downstream_cx_protocol_error$|^http2\.(rx_reset|tx_reset|requests_rejected_with_underscores_in_headers)$"))
    check(spy.count() - at_upstream == 150, f"the upstream saw the 150 valid ones only ({spy.count() - at_upstream})")


def case_headers(envoy, spy, limits):
    print(f"\n== odd headers (max_request_headers_kb {limits['headers_kb']}, max_headers_count "
          f"{limits['headers_count']}, headers_with_underscores_action REJECT_REQUEST)")
    before = envoy.stats()
    at_upstream = spy.count()
    cases = [
        ("too many headers", [(f"x-h{i}", "1") for i in range(limits["headers_count"] + 5)], 431),
        ("headers too large", [("x-big", "a" * (limits["headers_kb"] * 1024 + 100))], 431),
        ("a header name with an underscore", [("x_api_key", "secret")], 400),
        ("a request line too long", None, 431),
    ]
    for what, headers, expected in cases:
        name = LEDGER.stream("odd")
        LEDGER.sent.discard(name)  # must never arrive
        body = callback_body(name)
        if headers is None:
            raw = request_bytes(body).replace(b"POST /callback", b"POST /callback?x=" + b"a" * (limits["headers_kb"] * 1024), 1)
        else:
            raw = request_bytes(body, headers)
        with socket.create_connection(("127.0.0.1", envoy.port), timeout=5) as s:
            try:
                s.sendall(raw)
            except OSError:
                pass
            st, buf = read_answer(s, 5)
        text = buf.split(b"\r\n\r\n", 1)[-1][:60].decode(errors="replace")
        check(st == expected, f"{what}: {st} {text!r} (expected {expected})")
    # At the limit, not over it: still a callback.
    st, _, _ = send_valid(envoy.port, "odd-fits", [(f"x-h{i}", "1") for i in range(limits["headers_count"] - 10)])
    check(st == 200, f"{limits['headers_count'] - 10} extra headers still fit: {st}")
    # A client's X-Forwarded-For is not the sender (use_remote_address: true).
    name_st = send_valid(envoy.port, "xff", [("x-forwarded-for", "203.0.113.9")])
    rec = [r for r in spy.records() if name_st[2].encode() in r["body"]]
    h = rec[0]["headers"] if rec else {}
    check(name_st[0] == 200 and h.get("x-envoy-external-address") == "127.0.0.1",
          f"a client's X-Forwarded-For 203.0.113.9 is not its address: allowed as 127.0.0.1 ({name_st[0]}); "
          f"upstream got x-envoy-external-address {h.get('x-envoy-external-address')!r}, "
          f"x-forwarded-for {h.get('x-forwarded-for')!r} (Envoy appends the peer, or its own address for loopback)")
    # Paths (normalize_path, merge_slashes) and bodies past the limits.
    def raw(path, body, extra=(), chunked=False):
        head = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json"]
        head += [f"{k}: {v}" for k, v in extra]
        if chunked:
            pieces = [body[i:i + 8000] for i in range(0, len(body), 8000)]
            data = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
            head.append("transfer-encoding: chunked")
        else:
            data = body
            head.append(f"content-length: {len(body)}")
        with socket.create_connection(("127.0.0.1", envoy.port), timeout=5) as s:
            try:
                s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
            except OSError:
                pass
            return read_answer(s, 5)

    name = LEDGER.stream("dotdot")
    LEDGER.sent.discard(name)
    st, buf = raw("/callback/../admin", callback_body(name))
    check(st == 404 and buf.endswith(b"not found\n"),
          f"/callback/../admin is routed as /admin (normalize_path): {st}, not a callback")
    name = LEDGER.stream("slashes")
    st, _ = raw("//callback", callback_body(name))
    LEDGER.answered(name, st)
    check(st == 200, f"//callback is /callback (merge_slashes): {st}")
    big = callback_body(LEDGER.stream("big"))[:-1] + b',"Pad":"' + b"x" * (limits["max_body"] + 1000) + b'"}'
    for chunked in (False, True):
        st, buf = raw("/callback", big, chunked=chunked)
        body = buf.split(b"\r\n\r\n", 1)[-1][:80].decode(errors="replace")
        check(st == 413, f"a {len(big)}-byte body ({'chunked' if chunked else 'content-length'}) over "
              f"max_body_bytes and the buffer limit: {st} {body!r}")
    show(diff(before, envoy.stats(), r"^http\.callbacks\.downstream_rq_4xx$|^http1\.|rq_too_large|header"))
    check(spy.count() - at_upstream == 3, f"only the three valid ones reached the upstream ({spy.count() - at_upstream})")


def case_xff(binary, text, wasm):
    """use_remote_address / xff_num_trusted_hops against callback_auth.trusted_xff_hops, with
    allow_cidrs = 203.0.113.9/32 and the client (127.0.0.1) sending X-Forwarded-For: 203.0.113.9,
    i.e. claiming to be the one allowed sender. Only a config that trusts a proxy in front
    may let it in; the shipped one must not."""
    print("\n== X-Forwarded-For and the sender check (allow_cidrs 203.0.113.9/32; the client is 127.0.0.1 "
          "and sends X-Forwarded-For: 203.0.113.9)")
    cidrs = '"allow_cidrs": ["127.0.0.0/8", "::1/128"]'
    variants = [
        # (what, envoy xff_num_trusted_hops, filter trusted_xff_hops, use_remote_address, expected)
        ("as shipped: use_remote_address true, xff_num_trusted_hops 0, trusted_xff_hops 0", 0, 0, True, 403),
        ("one trusted proxy, done by Envoy: xff_num_trusted_hops 1, trusted_xff_hops 0", 1, 0, True, 200),
        ("one trusted proxy, done by the filter: xff_num_trusted_hops 0, trusted_xff_hops 2 (Envoy's entry + 1)", 0, 2, True, 200),
        ("trusted_xff_hops 1 with use_remote_address true: the filter takes Envoy's own entry", 0, 1, True, 403),
        ("the old shipped config: use_remote_address unset (false), trusted_xff_hops 0", 0, 0, False, 200),
    ]
    for what, envoy_hops, filter_hops, remote, expected in variants:
        t = text.replace(cidrs, f'"allow_cidrs": ["203.0.113.9/32"], "trusted_xff_hops": {filter_hops}' if filter_hops
                         else '"allow_cidrs": ["203.0.113.9/32"]')
        t = t.replace("xff_num_trusted_hops: 0", f"xff_num_trusted_hops: {envoy_hops}")
        if not remote:
            t = t.replace("use_remote_address: true", "use_remote_address: false")
        spy = Spy()
        port, admin = free_port(), free_port()
        envoy = Envoy(binary, derive_config(t, port, admin, spy.port, wasm), port, admin, "xff")
        try:
            name = LEDGER.stream("xff")
            LEDGER.sent.discard(name)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(request_bytes(callback_body(name), [("x-forwarded-for", "203.0.113.9")]))
                st, _ = read_answer(s, 5)
            check(st == expected and spy.count() == (1 if st == 200 else 0),
                  f"{what}: {st} (expected {expected}), at the upstream {spy.count()}")
        finally:
            envoy.stop()
            spy.server.shutdown()


def cdn_chain_config(text, cdn_cidr, others_limit):
    """The recipe of docs/operations.md ("A flood must not take the CDN's slots"): the
    listener's one filter chain twice, the CDN's ranges first, everyone else behind
    envoy.filters.network.connection_limit."""
    doc = yaml.safe_load(text)
    listener = doc["static_resources"]["listeners"][0]
    (chain,) = listener["filter_chains"]
    addr, plen = cdn_cidr.split("/")
    cdn = dict(copy.deepcopy(chain), filter_chain_match={
        "source_prefix_ranges": [{"address_prefix": addr, "prefix_len": int(plen)}]})
    others = copy.deepcopy(chain)
    others["filters"].insert(0, {
        "name": "envoy.filters.network.connection_limit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
            "stat_prefix": "not_cdn", "max_connections": others_limit}})
    listener["filter_chains"] = [cdn, others]
    return yaml.safe_dump(doc, sort_keys=False)


def case_cdn_chain(binary, text, wasm, limits, extra):
    """A flood from an address outside the CDN's ranges, with the recipe: the CDN's
    callbacks are still answered. (The flood comes from 127.0.0.2, the CDN from 127.0.0.1.)"""
    limit = limits["max_connections"]
    others_limit = limit - 1000
    print(f"\n== the CDN's own filter chain (the recipe in docs/operations.md): CDN 127.0.0.1/32, "
          f"everyone else at most {others_limit} connections; a flood of {limit + extra} from 127.0.0.2")
    spy = Spy()
    port, admin = free_port(), free_port()
    envoy = Envoy(binary, cdn_chain_config(derive_config(text, port, admin, spy.port, wasm), "127.0.0.1/32",
                                           others_limit), port, admin, "cdn")
    socks = []
    try:
        before = envoy.stats()
        for i in range(limit + extra):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", port))
                socks.append(s)
            except OSError:
                s.close()
        time.sleep(1.5)
        results = [send_valid(port, "cdnchain", timeout=5)[:2] for _ in range(20)]
        codes, lat = summary(results)
        during = envoy.stats()
        d = diff(before, during, r"not_cdn|global_cx_overflow")
        show(d)
        active = during.get("http.callbacks.downstream_cx_active", 0)
        check(codes.get(200, 0) == len(results),
              f"valid callbacks from the CDN during the flood: {codes}, p99 {pct(lat, 99):.1f} ms "
              f"(Envoy holds {active} connections)")
        check(any(k.endswith("limited_connections") and v >= limit + extra - others_limit - 50 for k, v in d.items()),
              "the flood was cut at the non-CDN limit (connection_limit's limited_connections)")
        check(spy.count() == codes.get(200, 0), "the upstream saw exactly those")
    finally:
        for s in socks:
            s.close()
        envoy.stop()
        spy.server.shutdown()


def case_heap_action(binary, text, wasm):
    print("\n== heap action: the shipped config with max_heap_size_bytes 8 MiB (below Envoy's heap at rest)")
    spy = Spy()
    port, admin = free_port(), free_port()
    envoy = Envoy(binary, derive_config(text, port, admin, spy.port, wasm, heap_bytes=8 * 2**20), port, admin, "heap")
    try:
        time.sleep(1)  # refresh_interval 0.25s: the monitor has run
        st = envoy.stats()
        active = st.get("overload.envoy.overload_actions.stop_accepting_requests.active", -1)
        shrink = st.get("overload.envoy.overload_actions.shrink_heap.active", -1)
        name = LEDGER.stream("heap")
        LEDGER.sent.discard(name)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(request_bytes(callback_body(name)))
            code, buf = read_answer(s, 5)
        text_body = buf.split(b"\r\n\r\n", 1)[-1][:40].decode(errors="replace")
        print(f"  heap allocated {int(envoy.memory()['allocated']) / 2**20:.0f} MiB; "
              f"stop_accepting_requests.active {active}, shrink_heap.active {shrink}")
        check(active == 1 and shrink == 1, "both heap actions active")
        check(code == 503 and "overload" in text_body, f"a callback gets {code} {text_body!r}")
        after = envoy.stats()
        show(diff(st, after, r"overload.*(rq_|shrink)|downstream_rq_5xx|overload_stop_accepting"))
        check(spy.count() == 0, "nothing reached the upstream")
    finally:
        envoy.stop()


def final_accounting(spy):
    print("\n== accounting at the upstream")
    recs = spy.records()
    streams = []
    unverified = 0
    for r in recs:
        try:
            streams.append(json.loads(r["body"])["Stream"])
        except (ValueError, KeyError):
            streams.append(None)
        v = r["headers"].get("x-callback-guard-verified", "")
        if "push_token" not in v or r["headers"].get("x-callback-guard-format") != "kls_v2":
            unverified += 1
    strangers = [s for s in streams if s not in LEDGER.sent]
    lost = LEDGER.ok - set(streams)
    dup = len(streams) - len(set(streams))
    check(unverified == 0 and not strangers,
          f"{len(recs)} requests at the upstream, every one a valid callback of this run with "
          f"x-callback-guard-verified (unverified {unverified}, not ours {len(strangers)}, twice {dup})")
    check(not lost, f"{len(LEDGER.ok)} callbacks answered 200, none lost (missing at the upstream: {len(lost)})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--held", type=int, default=2000, help="stalled requests in the slow-body case")
    ap.add_argument("--flood-extra", type=int, default=300, help="connections past the limit")
    ap.add_argument("--quiet", type=int, default=4, help="seconds of each CPU window")
    a = ap.parse_args()
    t_start = time.monotonic()
    with open(os.path.join(REPO, "envoy/envoy.yaml")) as f:
        text = f.read()
    dur = lambda pat: float(shipped_value(text, pat))
    limits = {
        "request_timeout": dur(r"^\s+request_timeout: (\d+)s"),
        "headers_timeout": dur(r"^\s+request_headers_timeout: (\d+)s"),
        "idle_timeout": dur(r"^\s+idle_timeout: (\d+)s"),
        "max_body": int(shipped_value(text, r'"max_body_bytes": (\d+)')),
        "max_connections": int(shipped_value(text, r"max_active_downstream_connections: (\d+)")),
        "headers_kb": int(shipped_value(text, r"max_request_headers_kb: (\d+)")),
        "headers_count": int(shipped_value(text, r"max_headers_count: (\d+)")),
        "h2_streams": int(shipped_value(text, r"max_concurrent_streams: (\d+)")),
        "h2_window": int(shipped_value(text, r"initial_stream_window_size: (\d+)")),
    }
    version = subprocess.run([a.envoy, "--version"], capture_output=True, text=True).stdout
    version = (re.search(r"/(\d+\.\d+\.\d+)/", version) or re.search(r"(.*)", version)).group(1)
    print(f"edge suite: Envoy {version}, envoy/envoy.yaml as shipped (ports and module path replaced); {limits}")
    spy = Spy()
    port, admin = free_port(), free_port()
    envoy = Envoy(a.envoy, derive_config(text, port, admin, spy.port, a.wasm), port, admin, "main")
    try:
        st, _, _ = send_valid(port, "warmup")
        check(st == 200, f"a valid callback through the shipped config: {st}")
        idle = IdleConnections(envoy, limits, 50)
        case_headers(envoy, spy, limits)
        case_slow_headers(envoy, spy, limits, 200)
        first = case_slow_body(envoy, spy, limits, a.held, a.quiet)
        case_slow_body(envoy, spy, limits, a.held, a.quiet, first)
        case_held_headers_only(envoy, spy, limits, a.held, a.quiet)
        idle.check()
        case_flood(envoy, spy, limits, a.flood_extra)
        case_http2(envoy, spy, limits)
        check(envoy.alive(), "Envoy is still running after every case")
        final_accounting(spy)
        # What an operator would find in Envoy's log (level info) after all of this.
        lines = envoy.log().splitlines()
        by_level = {}
        for l in lines:
            m = re.match(r"\[[^\]]*\]\[\d+\]\[(\w+)\]", l)
            if m:
                by_level.setdefault(m.group(1), []).append(l)
        print(f"\n== Envoy's log at level info: {len(lines)} lines, by level "
              f"{ {k: len(v) for k, v in by_level.items()} }")
        for level in ("warning", "error", "critical"):
            for l in by_level.get(level, [])[:3]:
                print(f"  {level}: {l[:220]}")
    finally:
        envoy.stop()
    case_xff(a.envoy, text, a.wasm)
    case_cdn_chain(a.envoy, text, a.wasm, limits, a.flood_extra)
    case_heap_action(a.envoy, text, a.wasm)
    took = time.monotonic() - t_start
    print(f"\nedge suite: {len(FAILURES)} failure(s) in {took:.0f} s")
    for f in FAILURES:
        print(f"  FAIL {f}")
    if not FAILURES:
        shutil.rmtree(envoy.dir, ignore_errors=True)
    else:
        print(f"  Envoy log: {envoy.log_path}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
