#!/usr/bin/env bash
# Capture what etcd's JSON gRPC-gateway really puts on the wire, as fixtures for the
# registry client's parser tests (tests/fixtures/etcd/, spec in its README.md).
#
#   scripts/etcd-capture.sh            # writes tests/fixtures/etcd/{single,cluster3}/*.json, timings.json
#
# Starts its own etcd members (Debian's etcd-server, /usr/bin/etcd) on 127.0.0.1 ports
# from ETCD_CAPTURE_PORT_BASE (default 24370: single member +1/+2, 3-member cluster
# +11..13 client, +21..23 peer), data dirs under a fresh /tmp directory, and kills
# them when it ends (also on error or Ctrl-C). Every request is curl over HTTP/1.1.
# Rerunnable; bounded (each request --max-time 20 s, the whole run ETCD_CAPTURE_BUDGET
# seconds, default 420; a run takes about 90 s). Fixtures are written to a staging
# directory and replace the old ones only when the run completes.
#
# Ports and cluster tokens are fixed, so member_id/cluster_id and (fresh data dirs, a
# fixed sequence of requests) revisions come out the same on every run. What still
# varies is timing, raft_term in cluster3 (usually 2), server-chosen lease IDs
# (lease_grant_auto_id, lease_leases) and the outcome-timing fixtures of the failure
# scenarios; all timings go to timings.json, not into the fixtures.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${ETCD_CAPTURE_OUT:-$ROOT/tests/fixtures/etcd}
B=${ETCD_CAPTURE_PORT_BASE:-24370}
BUDGET=${ETCD_CAPTURE_BUDGET:-420}
ETCD=${ETCD_BIN:-etcd}

command -v "$ETCD" >/dev/null || { echo "etcd-capture: no etcd binary (apt-get install etcd-server)" >&2; exit 1; }
command -v curl >/dev/null || { echo "etcd-capture: curl is needed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "etcd-capture: python3 is needed" >&2; exit 1; }

WORK=$(mktemp -d /tmp/etcd-capture.XXXXXX)
STAGE=$WORK/out
mkdir -p "$STAGE/single" "$STAGE/cluster3" "$WORK/probes" "$WORK/data"
FX=$WORK/fx.py
WATCHDOG=
BG=()   # background curl jobs of the failure scenarios (never a bare `wait`: members are jobs too)

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
  local f pid
  for f in "$WORK"/pid.*; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
  done
  for f in "$WORK"/pid.*; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [ ${#BG[@]} -gt 0 ] && wait "${BG[@]}" 2>/dev/null
  if [ "$rc" -ne 0 ]; then
    echo "etcd-capture: FAILED (rc=$rc); member logs:" >&2
    for f in "$WORK"/*.log; do [ -e "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
  fi
  if [ -n "${KEEP_WORK:-}" ]; then echo "etcd-capture: work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
( end=$(( SECONDS + BUDGET )); while [ $SECONDS -lt $end ]; do sleep 1; done
  echo "etcd-capture: time budget of ${BUDGET}s exceeded" >&2; kill -TERM $$ ) 2>/dev/null &
WATCHDOG=$!

# ---------------------------------------------------------------- python helper
cat > "$FX" <<'PY'
import json, os, subprocess, sys, time

DROP = {"date", "access-control-allow-headers", "access-control-allow-methods",
        "access-control-allow-origin"}

def parse_dump(path):
    """curl -D file: possibly several header blocks (100 Continue), then trailers."""
    status = reason = version = None
    headers, trailers = {}, {}
    state = None
    try:
        lines = open(path, "rb").read().decode("latin-1").split("\n")
    except FileNotFoundError:
        lines = []
    for raw in lines:
        line = raw.rstrip("\r")
        if line.startswith("HTTP/"):
            parts = line.split(" ", 2)
            version, status = parts[0], int(parts[1])
            reason = parts[2] if len(parts) > 2 else ""
            headers, trailers, state = {}, {}, "h"
            continue
        if line == "":
            if state == "h":
                state = "t"
            continue
        if ":" in line and state in ("h", "t"):
            k, v = line.split(":", 1)
            if k.lower() in DROP:
                continue
            (headers if state == "h" else trailers)[k] = v.strip()
    return version, status, reason, headers, trailers

def parse_sent(err_path):
    """Request line and headers as curl -v printed them ('> ' lines), first request only."""
    method = target = None
    hdrs = {}
    for raw in open(err_path, "rb").read().decode("latin-1").split("\n"):
        line = raw.rstrip("\r")
        if not line.startswith("> "):
            if method and line.startswith("< "):
                break
            continue
        line = line[2:]
        if method is None:
            method, target = line.split(" ")[0], line.split(" ")[1]
            continue
        if line == "":
            break
        if ":" in line:
            k, v = line.split(":", 1)
            hdrs[k] = v.strip()
    return method, target, hdrs

def curl_error(err_path):
    for raw in open(err_path, "rb").read().decode("latin-1").split("\n"):
        if raw.startswith("curl: ("):
            return raw.strip()
    return None

def cmd_fixture(out, case, topo, path, tdir, w, rc, note, sent_us, extra=None):
    body = open(os.path.join(tdir, "body"), "rb").read().decode("utf-8")
    method, target, sent = parse_sent(os.path.join(tdir, "err"))
    version, status, reason, headers, trailers = parse_dump(os.path.join(tdir, "hdr"))
    rbody = None
    rp = os.path.join(tdir, "resp")
    if os.path.exists(rp):
        rbody = open(rp, "rb").read().decode("utf-8", "replace")
    fx = {"case": case, "topology": topo}
    if note:
        fx["note"] = note
    fx["request"] = {"method": method or "POST", "path": target or path,
                     "headers": sent, "body": body}
    rc = int(rc)
    if status is None:
        fx["response"] = None
        fx["transport_error"] = {"curl_exit": rc, "message": curl_error(os.path.join(tdir, "err"))}
    else:
        resp = {"status": status, "reason": reason, "http_version": version, "headers": headers}
        if trailers:
            resp["trailers"] = trailers
        resp["body"] = rbody if rbody is not None else ""
        fx["response"] = resp
        if rc != 0:
            fx["transport_error"] = {"curl_exit": rc, "message": curl_error(os.path.join(tdir, "err"))}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(fx, f, indent=2, ensure_ascii=False)
        f.write("\n")
    code, tt = (w.split() + ["0", "0"])[:2]
    rec = {"fixture": out, "case": case, "topology": topo, "status": status,
           "time_total_s": float(tt), "sent_us": int(sent_us), "curl_exit": rc}
    with open(os.environ["TIMINGS_JSONL"], "a") as f:
        f.write(json.dumps(rec) + "\n")

def get(path, expr):
    v = json.load(open(path))
    for part in expr.split("."):
        if isinstance(v, list):
            v = v[int(part)]
        elif isinstance(v, dict):
            v = v.get(part)
        if v is None:
            return ""
    return v

def cmd_get(path, expr):
    print(get(path, expr))

def cmd_rget(path, expr):
    """field of the JSON response body inside a fixture"""
    fx = json.load(open(path))
    v = json.loads(fx["response"]["body"])
    for part in expr.split("."):
        if isinstance(v, list):
            v = v[int(part)]
        elif isinstance(v, dict):
            v = v.get(part)
        if v is None:
            print("")
            return
    print(v)

def cmd_raw(out, case, topo, note, rawfile, errfile, bodyfile):
    raw = open(rawfile, "rb").read().decode("latin-1")
    lines = [l for l in raw.split("\r\n") if not l.lower().startswith(("date:", "access-control-"))]
    method, target, sent = parse_sent(errfile)
    fx = {"case": case, "topology": topo, "note": note,
          "request": {"method": method, "path": target, "headers": sent,
                      "body": open(bodyfile).read()},
          "response_raw": "\r\n".join(lines)}
    with open(out, "w") as f:
        json.dump(fx, f, indent=2, ensure_ascii=False)
        f.write("\n")

def cmd_json(out, text):
    with open(out, "w") as f:
        json.dump(json.loads(text), f, indent=2, ensure_ascii=False)
        f.write("\n")

def curl_json(port, path, body, timeout=5):
    p = subprocess.run(["curl", "-sS", "--max-time", str(timeout), "-X", "POST",
                        "-H", "Content-Type: application/json", "--data-binary", body,
                        "http://127.0.0.1:%s%s" % (port, path)], capture_output=True, text=True)
    try:
        return json.loads(p.stdout)
    except Exception:
        return None

def cmd_timeline(name, t0_us, check_port, files_json):
    """Summarise probe fixtures of a failure scenario; check which probe writes landed."""
    import base64
    files = json.loads(files_json)
    recs = {}
    for line in open(os.environ["TIMINGS_JSONL"]):
        r = json.loads(line)
        recs[r["fixture"]] = r
    rows = []
    for f in files:
        fx = json.load(open(f))
        r = recs.get(f, {})
        body = fx["response"]["body"] if fx.get("response") else None
        msg = None
        if body:
            try:
                j = json.loads(body)
                msg = j.get("message") or ("succeeded" if j.get("succeeded") else "compare failed")
            except Exception:
                msg = body[:80]
        key = json.loads(fx["request"]["body"])["compare"][0]["key"]
        applied = None
        if check_port != "-":
            j = curl_json(check_port, "/v3/kv/range", json.dumps({"key": key, "count_only": True}))
            applied = None if j is None else (j.get("count", "0") != "0")
        rows.append({"probe": fx["case"],
                     "hasleader_header": "Grpc-Metadata-hasleader" in fx["request"]["headers"],
                     "sent_after_kill_s": round((r.get("sent_us", 0) - int(t0_us)) / 1e6, 3),
                     "elapsed_s": r.get("time_total_s"),
                     "status": fx["response"]["status"] if fx.get("response") else None,
                     "grpc_code": (json.loads(body).get("code") if body and body.startswith("{") else None),
                     "message": msg,
                     "write_applied_after_recovery": applied})
    rows.sort(key=lambda x: (x["sent_after_kill_s"], not x["hasleader_header"]))
    path = os.path.join(os.environ["WORK"], "timeline.%s.json" % name)
    json.dump(rows, open(path, "w"), indent=1)
    for r in rows:
        print("  %-44s hdr=%-5s sent=+%5.2fs took=%6.3fs status=%s code=%s %s applied=%s" % (
            r["probe"], r["hasleader_header"], r["sent_after_kill_s"], r["elapsed_s"] or 0,
            r["status"], r["grpc_code"], r["message"], r["write_applied_after_recovery"]))

def cmd_latency(port, n, prefix, label):
    import http.client, base64, math
    n = int(n)
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
    socks = set()
    def txn(i):
        k = base64.b64encode(("%s/%d" % (prefix, i)).encode()).decode()
        v = base64.b64encode(b"holder-A").decode()
        return json.dumps({"compare": [{"target": "CREATE", "key": k, "create_revision": "0"}],
                           "success": [{"request_put": {"key": k, "value": v, "lease": "0"}}],
                           "failure": [{"request_range": {"key": k}}]}, separators=(",", ":"))
    def one(body, want):
        t = time.perf_counter()
        conn.request("POST", "/v3/kv/txn", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        dt = time.perf_counter() - t
        socks.add(id(conn.sock))
        if r.status != 200 or (want in data) is False:
            raise SystemExit("latency: unexpected answer %s %r" % (r.status, data[:200]))
        return dt
    for i in range(20):  # warm-up
        one(txn(-1 - i), b'"succeeded":true')
    res = {}
    for label2, mk, want in (("create_absent", lambda i: txn(i), b'"succeeded":true'),
                             ("create_present", lambda i: txn(i), b'"response_range"')):
        lat = sorted(one(mk(i), want) for i in range(n))
        pct = lambda p: lat[max(0, math.ceil(p * n) - 1)] * 1000
        res[label2] = {"n": n, "p50_ms": round(pct(0.50), 3), "p90_ms": round(pct(0.90), 3),
                       "p99_ms": round(pct(0.99), 3), "max_ms": round(lat[-1] * 1000, 3),
                       "mean_ms": round(sum(lat) / n * 1000, 3)}
    res["tcp_connections_used"] = len(socks)
    conn.close()
    print(json.dumps({label: res}))

def cmd_timings(out, latency_jsonl, versions, lease_expiry_jsonl):
    recs = [json.loads(l) for l in open(os.environ["TIMINGS_JSONL"])]
    stage = os.environ["STAGE"]
    per_case = {}
    for r in recs:
        if r["fixture"].startswith(stage):
            rel = os.path.relpath(r["fixture"], stage)
            per_case[rel] = {"status": r["status"], "time_total_s": r["time_total_s"]}
    lat = {}
    if os.path.exists(latency_jsonl):
        for l in open(latency_jsonl):
            lat.update(json.loads(l))
    tl = {}
    for f in sorted(os.listdir(os.environ["WORK"])):
        if f.startswith("timeline.") and f.endswith(".json"):
            tl[f[len("timeline."):-len(".json")]] = json.load(open(os.path.join(os.environ["WORK"], f)))
    exp = {}
    if os.path.exists(lease_expiry_jsonl):
        for l in open(lease_expiry_jsonl):
            exp.update(json.loads(l))
    doc = {"etcd_version": versions, "generated_unix": int(time.time()),
           "latency_keepalive_txn": lat, "lease_expiry": exp,
           "failure_timelines": tl, "per_fixture_curl_time_total": per_case}
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")

if __name__ == "__main__":
    c, a = sys.argv[1], sys.argv[2:]
    {"fixture": cmd_fixture, "get": cmd_get, "rget": cmd_rget, "raw": cmd_raw,
     "json": cmd_json, "timeline": cmd_timeline, "latency": cmd_latency,
     "timings": cmd_timings}[c](*a)
PY
export TIMINGS_JSONL=$WORK/timings.jsonl WORK STAGE
: > "$TIMINGS_JSONL"

# ---------------------------------------------------------------- helpers
b64() { printf '%s' "$1" | base64 -w0; }
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
log() { printf 'etcd-capture: %s\n' "$*" >&2; }

# cap OUTFILE CASE TOPO PORT PATH BODY [extra curl args...]
# env: CT (request Content-Type, default application/json, "none" = no header),
#      HV (curl HTTP version flag, default --http1.1), METHOD (POST), MAXT (20), NOTE
cap() {
  local out=$1 case=$2 topo=$3 port=$4 path=$5 body=$6; shift 6
  local t rc=0 w sent
  t=$(mktemp -d "$WORK/cap.XXXXXX")
  printf '%s' "$body" > "$t/body"
  local cth=(-H "Content-Type: ${CT:-application/json}")
  [ "${CT:-}" = none ] && cth=(-H 'Content-Type:')
  sent=$(now_us)
  w=$(curl -sS -v "${HV:---http1.1}" --max-time "${MAXT:-20}" -X "${METHOD:-POST}" \
        -H 'User-Agent:' -H 'Accept:' "${cth[@]}" "$@" \
        --data-binary "@$t/body" -o "$t/resp" -D "$t/hdr" \
        -w '%{http_code} %{time_total}' "http://127.0.0.1:$port$path" 2>"$t/err") || rc=$?
  python3 "$FX" fixture "$out" "$case" "$topo" "$path" "$t" "$w" "$rc" "${NOTE:-}" "$sent"
}

# request bodies (compact, field order as the client is expected to write them)
txn_create() { # key value lease
  printf '{"compare":[{"target":"CREATE","key":"%s","create_revision":"0"}],"success":[{"request_put":{"key":"%s","value":"%s","lease":"%s"}}],"failure":[{"request_range":{"key":"%s"}}]}' "$1" "$1" "$2" "$3" "$1"
}
txn_cas_put() { # key modrev newvalue
  printf '{"compare":[{"target":"MOD","key":"%s","mod_revision":"%s"}],"success":[{"request_put":{"key":"%s","value":"%s"}}],"failure":[{"request_range":{"key":"%s"}}]}' "$1" "$2" "$1" "$3" "$1"
}
txn_cas_value_put() { # key expectedvalue newvalue
  printf '{"compare":[{"target":"VALUE","key":"%s","value":"%s"}],"success":[{"request_put":{"key":"%s","value":"%s"}}],"failure":[{"request_range":{"key":"%s"}}]}' "$1" "$2" "$1" "$3" "$1"
}
txn_cas_delete() { # key modrev
  printf '{"compare":[{"target":"MOD","key":"%s","mod_revision":"%s"}],"success":[{"request_delete_range":{"key":"%s"}}],"failure":[{"request_range":{"key":"%s"}}]}' "$1" "$2" "$1" "$1"
}

member_status() { # port -> prints "member_id leader" or nothing
  curl -sS --max-time 2 -X POST -H 'Content-Type: application/json' --data-binary '{}' \
    "http://127.0.0.1:$1/v3/maintenance/status" 2>/dev/null \
  | python3 -c 'import json,sys
try:
    j=json.load(sys.stdin); print(j["header"]["member_id"], j.get("leader","0"))
except Exception: pass' || true
}

# wait_healthy PORT... : all members agree on one leader and answer a linearizable read
wait_healthy() {
  local deadline=$(( SECONDS + 40 )) p s lead ok
  while [ $SECONDS -lt $deadline ]; do
    ok=1; lead=
    for p in "$@"; do
      s=$(member_status "$p")
      [ -n "$s" ] || { ok=0; break; }
      [ "${s#* }" != 0 ] || { ok=0; break; }
      if [ -z "$lead" ]; then lead=${s#* }; elif [ "$lead" != "${s#* }" ]; then ok=0; break; fi
      curl -sS -f --max-time 3 -o /dev/null -X POST -H 'Grpc-Metadata-hasleader: true' \
        --data-binary '{"key":"aGVhbHRo"}' "http://127.0.0.1:$p/v3/kv/range" 2>/dev/null || { ok=0; break; }
    done
    [ $ok = 1 ] && return 0
    sleep 0.2
  done
  log "members $* did not become healthy"; return 1
}

leader_port() { # PORT... -> the port of the current leader
  local p s
  for p in "$@"; do
    s=$(member_status "$p")
    [ -n "$s" ] && [ "${s% *}" = "${s#* }" ] && { echo "$p"; return 0; }
  done
  return 1
}

start_member() { # name cport pport initial-cluster token
  "$ETCD" --name "$1" --data-dir "$WORK/data/$1" \
    --listen-client-urls "http://127.0.0.1:$2" --advertise-client-urls "http://127.0.0.1:$2" \
    --listen-peer-urls "http://127.0.0.1:$3" --initial-advertise-peer-urls "http://127.0.0.1:$3" \
    --initial-cluster "$4" --initial-cluster-state new --initial-cluster-token "$5" \
    --heartbeat-interval 100 --election-timeout 1000 >>"$WORK/$1.log" 2>&1 &
  echo $! > "$WORK/pid.$1"
}
kill_member() { # name signal
  local pid; pid=$(cat "$WORK/pid.$1")
  kill "-$2" "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

check_ports_free() {
  python3 - "$@" <<'PY' || { log "a port in $* is in use: set ETCD_CAPTURE_PORT_BASE"; exit 1; }
import socket, sys
for p in sys.argv[1:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(p))); s.close()
PY
}

# ---------------------------------------------------------------- keys and values
K_A=$(b64 cg/stream/live/a)          # create, CAS, delete
K_L=$(b64 cg/stream/live/leased)     # create with a granted lease
K_U=$(b64 cg/stream/live/unknown-lease)
K_SIDE=$(b64 cg/stream/live/side)    # second put of the rejected txn
K_E=$(b64 cg/stream/live/expiring)
K_X=$(b64 cg/stream/live/absent)     # never written
K_P=$(b64 cg/stream/live/plain)
K_Z=$(b64 cg/stream/live/empty-value)
V_A=$(b64 holder-A)
V_B=$(b64 holder-B)

# ---------------------------------------------------------------- cases 1-5, 7
run_common() { # topo port
  local topo=$1 port=$2 d=$STAGE/$1 r r2 r3 rl
  local HL=(-H 'Grpc-Metadata-hasleader: true')
  log "[$topo] kv cases"
  # 1. create-if-absent
  NOTE="create-if-absent on an absent key, lease 0: succeeded=true, responses[0].response_put (header.revision only)" \
    cap "$d/txn_create_absent_lease0.json" txn_create_absent_lease0 "$topo" "$port" /v3/kv/txn "$(txn_create "$K_A" "$V_A" 0)"
  r=$(python3 "$FX" rget "$d/txn_create_absent_lease0.json" header.revision)
  NOTE="grant with a client-chosen ID: ID and TTL come back as JSON strings" \
    cap "$d/lease_grant_new.json" lease_grant_new "$topo" "$port" /v3/lease/grant '{"TTL":"60","ID":"12345"}'
  NOTE="granting an ID that exists: HTTP 412, grpc code 9 (FailedPrecondition)" \
    cap "$d/lease_grant_exists.json" lease_grant_exists "$topo" "$port" /v3/lease/grant '{"TTL":"60","ID":"12345"}'
  NOTE="create-if-absent with the granted lease 12345" \
    cap "$d/txn_create_absent_leased.json" txn_create_absent_leased "$topo" "$port" /v3/kv/txn "$(txn_create "$K_L" "$V_A" 12345)"
  rl=$(python3 "$FX" rget "$d/txn_create_absent_leased.json" header.revision)
  # 2. present -> failure branch
  NOTE="create-if-absent on a present key: no \"succeeded\" field (false is omitted); holder in responses[0].response_range.kvs[0]; kv.lease omitted because it is 0" \
    cap "$d/txn_create_present.json" txn_create_present "$topo" "$port" /v3/kv/txn "$(txn_create "$K_A" "$V_B" 0)"
  NOTE="create-if-absent on a present key that holds lease 12345: kvs[0].lease is present" \
    cap "$d/txn_create_present_leased.json" txn_create_present_leased "$topo" "$port" /v3/kv/txn "$(txn_create "$K_L" "$V_B" 12345)"
  NOTE="create-if-absent on a present key with a never-granted lease: the lease is only checked on the branch taken, so this is a normal failed compare (200)" \
    cap "$d/txn_create_present_unknown_lease.json" txn_create_present_unknown_lease "$topo" "$port" /v3/kv/txn "$(txn_create "$K_A" "$V_B" 999999)"
  # 3. compare-and-swap
  NOTE="CAS put, mod_revision matches" \
    cap "$d/txn_cas_put_match.json" txn_cas_put_match "$topo" "$port" /v3/kv/txn "$(txn_cas_put "$K_A" "$r" "$V_B")"
  r2=$(python3 "$FX" rget "$d/txn_cas_put_match.json" header.revision)
  NOTE="CAS put, stale mod_revision: failure branch, kvs[0] shows the current mod_revision and version 2" \
    cap "$d/txn_cas_put_stale.json" txn_cas_put_stale "$topo" "$port" /v3/kv/txn "$(txn_cas_put "$K_A" "$r" "$V_A")"
  NOTE="CAS on VALUE (\"value\": base64), matches" \
    cap "$d/txn_cas_value_match.json" txn_cas_value_match "$topo" "$port" /v3/kv/txn "$(txn_cas_value_put "$K_A" "$V_B" "$V_A")"
  r3=$(python3 "$FX" rget "$d/txn_cas_value_match.json" header.revision)
  NOTE="CAS on VALUE, value differs: failure branch" \
    cap "$d/txn_cas_value_stale.json" txn_cas_value_stale "$topo" "$port" /v3/kv/txn "$(txn_cas_value_put "$K_A" "$V_B" "$V_A")"
  NOTE="CAS delete, stale mod_revision: failure branch with the holder" \
    cap "$d/txn_cas_delete_stale.json" txn_cas_delete_stale "$topo" "$port" /v3/kv/txn "$(txn_cas_delete "$K_A" "$r2")"
  NOTE="CAS delete, mod_revision matches: response_delete_range.deleted = \"1\"" \
    cap "$d/txn_cas_delete_match.json" txn_cas_delete_match "$topo" "$port" /v3/kv/txn "$(txn_cas_delete "$K_A" "$r3")"
  NOTE="CAS delete of a key that is gone: failure branch, response_range has only its header (no kvs, no count)" \
    cap "$d/txn_cas_delete_absent.json" txn_cas_delete_absent "$topo" "$port" /v3/kv/txn "$(txn_cas_delete "$K_A" "$r3")"
  NOTE="compare MOD \"0\" on an absent key SUCCEEDS: an absent key has mod_revision 0 (also create_revision 0, version 0)" \
    cap "$d/txn_cas_mod_zero_absent.json" txn_cas_mod_zero_absent "$topo" "$port" /v3/kv/txn \
    "$(printf '{"compare":[{"target":"MOD","key":"%s","mod_revision":"0"}],"success":[{"request_range":{"key":"%s"}}]}' "$K_X" "$K_X")"
  NOTE="PITFALL: target MOD with the create_revision field (the value field must match the target): compares mod_revision with 0, so it fails although the key's mod_revision equals the number sent" \
    cap "$d/txn_pitfall_mod_target_create_revision_field.json" txn_pitfall_mod_target_create_revision_field "$topo" "$port" /v3/kv/txn \
    "$(printf '{"compare":[{"target":"MOD","key":"%s","create_revision":"%s"}],"success":[{"request_range":{"key":"%s"}}],"failure":[{"request_range":{"key":"%s"}}]}' "$K_L" "$rl" "$K_L" "$K_L")"
  # 4. reads
  NOTE="plain range, present key" \
    cap "$d/range_present.json" range_present "$topo" "$port" /v3/kv/range "{\"key\":\"$K_L\"}"
  NOTE="plain range, absent key: only the header (kvs and count omitted)" \
    cap "$d/range_absent.json" range_absent "$topo" "$port" /v3/kv/range "{\"key\":\"$K_X\"}"
  NOTE="txn without compare, request_range in success: succeeded=true, the RangeResponse is nested in responses[0].response_range" \
    cap "$d/txn_range_only_present.json" txn_range_only_present "$topo" "$port" /v3/kv/txn "{\"success\":[{\"request_range\":{\"key\":\"$K_L\"}}]}"
  NOTE="txn without compare, range of an absent key" \
    cap "$d/txn_range_only_absent.json" txn_range_only_absent "$topo" "$port" /v3/kv/txn "{\"success\":[{\"request_range\":{\"key\":\"$K_X\"}}]}"
  NOTE="plain put (no lease): only the header" \
    cap "$d/put_plain.json" put_plain "$topo" "$port" /v3/kv/put "{\"key\":\"$K_P\",\"value\":\"$V_A\"}"
  NOTE="put with an empty value" \
    cap "$d/put_empty_value.json" put_empty_value "$topo" "$port" /v3/kv/put "{\"key\":\"$K_Z\",\"value\":\"\"}"
  NOTE="create-if-absent on a present key whose value is empty: kvs[0] has NO \"value\" field (empty bytes are omitted like zeros)" \
    cap "$d/txn_create_present_empty_value.json" txn_create_present_empty_value "$topo" "$port" /v3/kv/txn "$(txn_create "$K_Z" "$V_A" 0)"
  # 5. leases
  log "[$topo] lease cases"
  NOTE="grant without ID: the server picks one (this fixture's ID changes from run to run)" \
    cap "$d/lease_grant_auto_id.json" lease_grant_auto_id "$topo" "$port" /v3/lease/grant '{"TTL":"60"}'
  NOTE="TTL 0 is raised to the minimum TTL (2 s with the default 100 ms heartbeat / 1000 ms election timeout)" \
    cap "$d/lease_grant_ttl0.json" lease_grant_ttl0 "$topo" "$port" /v3/lease/grant '{"TTL":"0","ID":"7003"}'
  NOTE="int64 fields sent as JSON numbers are accepted too; the reply still uses strings" \
    cap "$d/lease_grant_numbers.json" lease_grant_numbers "$topo" "$port" /v3/lease/grant '{"TTL":60,"ID":7005}'
  NOTE="TTL above 9000000000: HTTP 400, grpc code 11 (OutOfRange)" \
    cap "$d/lease_grant_ttl_too_large.json" lease_grant_ttl_too_large "$topo" "$port" /v3/lease/grant '{"TTL":"9000000001","ID":"7004"}'
  NOTE="put with a never-granted lease: HTTP 404, grpc code 5 (NotFound)" \
    cap "$d/put_unknown_lease.json" put_unknown_lease "$topo" "$port" /v3/kv/put "{\"key\":\"$K_U\",\"value\":\"$V_A\",\"lease\":\"999999\"}"
  NOTE="create-if-absent on an absent key whose success branch has a put without lease and then a put with a never-granted lease: the whole txn is rejected (404, code 5), nothing is written (see range_after_rejected_txn)" \
    cap "$d/txn_create_absent_unknown_lease.json" txn_create_absent_unknown_lease "$topo" "$port" /v3/kv/txn \
    "$(printf '{"compare":[{"target":"CREATE","key":"%s","create_revision":"0"}],"success":[{"request_put":{"key":"%s","value":"%s"}},{"request_put":{"key":"%s","value":"%s","lease":"999999"}}],"failure":[{"request_range":{"key":"%s"}}]}' "$K_U" "$K_SIDE" "$V_A" "$K_U" "$V_A" "$K_U")"
  NOTE="the lease-less put of the rejected txn did not happen" \
    cap "$d/range_after_rejected_txn.json" range_after_rejected_txn "$topo" "$port" /v3/kv/range "{\"key\":\"$K_SIDE\"}"
  NOTE="timetolive with keys: TTL = remaining seconds, grantedTTL, keys = base64 keys attached" \
    cap "$d/lease_timetolive.json" lease_timetolive "$topo" "$port" /v3/lease/timetolive '{"ID":"12345","keys":true}'
  NOTE="timetolive of an unknown lease is NOT an error: 200 with TTL \"-1\" (grantedTTL omitted)" \
    cap "$d/lease_timetolive_unknown.json" lease_timetolive_unknown "$topo" "$port" /v3/lease/timetolive '{"ID":"999999"}'
  NOTE="keepalive (a bidi stream over the gateway): one JSON object per request object, each wrapped in {\"result\": ...}, newline-delimited, chunked" \
    cap "$d/lease_keepalive.json" lease_keepalive "$topo" "$port" /v3/lease/keepalive '{"ID":"12345"}'
  NOTE="keepalive of an unknown lease: 200, result without TTL (TTL 0 omitted) means the lease is gone" \
    cap "$d/lease_keepalive_unknown.json" lease_keepalive_unknown "$topo" "$port" /v3/lease/keepalive '{"ID":"999999"}'
  NOTE="list of leases (order unspecified; contains the server-chosen ID of lease_grant_auto_id)" \
    cap "$d/lease_leases.json" lease_leases "$topo" "$port" /v3/lease/leases '{}'
  NOTE="revoke: header only; keys attached to the lease are deleted" \
    cap "$d/lease_revoke.json" lease_revoke "$topo" "$port" /v3/lease/revoke '{"ID":"12345"}'
  NOTE="the key that held the revoked lease is gone" \
    cap "$d/range_after_lease_revoke.json" range_after_lease_revoke "$topo" "$port" /v3/kv/range "{\"key\":\"$K_L\"}"
  NOTE="revoke of an unknown (here: already revoked) lease: HTTP 404, grpc code 5" \
    cap "$d/lease_revoke_unknown.json" lease_revoke_unknown "$topo" "$port" /v3/lease/revoke '{"ID":"12345"}'
  # expiry: TTL 1 (raised to 2), a key on it, wait until it is gone
  NOTE="TTL 1 is silently raised to the minimum, 2" \
    cap "$d/lease_grant_ttl1.json" lease_grant_ttl1 "$topo" "$port" /v3/lease/grant '{"TTL":"1","ID":"7002"}'
  local g0; g0=$(now_us)
  NOTE="create-if-absent with the short lease 7002" \
    cap "$d/txn_create_absent_short_lease.json" txn_create_absent_short_lease "$topo" "$port" /v3/kv/txn "$(txn_create "$K_E" "$V_A" 7002)"
  local gone= dl=$(( SECONDS + 15 )) ttl
  while [ $SECONDS -lt $dl ]; do
    ttl=$(curl -sS --max-time 3 -X POST --data-binary '{"ID":"7002"}' "http://127.0.0.1:$port/v3/lease/timetolive" \
          | python3 -c 'import json,sys; print(json.load(sys.stdin).get("TTL",""))' 2>/dev/null || true)
    if [ "$ttl" = -1 ]; then gone=$(now_us); break; fi
    sleep 0.1
  done
  [ -n "$gone" ] || { log "lease 7002 did not expire in 15 s"; return 1; }
  printf '{"%s": {"granted_ttl_s": 2, "expired_after_s": %s}}\n' "$topo" \
    "$(python3 -c "print(round(($gone-$g0)/1e6,2))")" >> "$WORK/lease_expiry.jsonl"
  NOTE="timetolive of the expired lease: TTL \"-1\"" \
    cap "$d/lease_timetolive_expired.json" lease_timetolive_expired "$topo" "$port" /v3/lease/timetolive '{"ID":"7002"}'
  NOTE="put with an expired lease: same as never granted (404, code 5)" \
    cap "$d/put_expired_lease.json" put_expired_lease "$topo" "$port" /v3/kv/put "{\"key\":\"$K_E\",\"value\":\"$V_B\",\"lease\":\"7002\"}"
  NOTE="create-if-absent with an expired lease on the (now absent) key: rejected, 404 code 5" \
    cap "$d/txn_create_absent_expired_lease.json" txn_create_absent_expired_lease "$topo" "$port" /v3/kv/txn "$(txn_create "$K_E" "$V_B" 7002)"
  NOTE="the key of the expired lease was deleted" \
    cap "$d/range_after_lease_expiry.json" range_after_lease_expiry "$topo" "$port" /v3/kv/range "{\"key\":\"$K_E\"}"

  # 7. garbage and edges
  log "[$topo] garbage and HTTP edge cases"
  NOTE="not JSON: rejected by the gateway (Content-Length, no trailer), HTTP 400, code 3" \
    cap "$d/txn_not_json.json" txn_not_json "$topo" "$port" /v3/kv/txn 'not json'
  NOTE="truncated JSON" \
    cap "$d/txn_truncated_json.json" txn_truncated_json "$topo" "$port" /v3/kv/txn '{"compare":['
  NOTE="SURPRISE: an empty body is an empty txn and succeeds (200, succeeded true, no responses)" \
    cap "$d/txn_empty_body.json" txn_empty_body "$topo" "$port" /v3/kv/txn ''
  NOTE="key that is not base64: HTTP 400, code 3" \
    cap "$d/txn_key_not_base64.json" txn_key_not_base64 "$topo" "$port" /v3/kv/txn "$(txn_create '!!not-base64' "$V_A" 0)"
  NOTE="unpadded base64 is rejected too (\"Zm9vYg\" for foob): keys and values need standard, padded base64" \
    cap "$d/range_key_unpadded_base64.json" range_key_unpadded_base64 "$topo" "$port" /v3/kv/range '{"key":"Zm9vYg"}'
  NOTE="int64 field that is not a number" \
    cap "$d/txn_int64_not_numeric.json" txn_int64_not_numeric "$topo" "$port" /v3/kv/txn "$(txn_cas_put "$K_X" abc "$V_A")"
  NOTE="unknown enum value for target" \
    cap "$d/txn_bad_enum.json" txn_bad_enum "$topo" "$port" /v3/kv/txn "{\"compare\":[{\"target\":\"BOGUS\",\"key\":\"$K_X\"}]}"
  NOTE="unknown fields are ignored silently (200), at top level and inside compare/ops" \
    cap "$d/txn_unknown_fields.json" txn_unknown_fields "$topo" "$port" /v3/kv/txn \
    "$(printf '{"compare":[{"target":"CREATE","key":"%s","create_revision":"0","bogus":1}],"success":[{"request_range":{"key":"%s","x":true}}],"extra":"x"}' "$K_X" "$K_X")"
  NOTE="a request op with an unknown (misspelled) field name is an empty op: etcd says 400 code 3 'key not found'" \
    cap "$d/txn_unknown_op.json" txn_unknown_op "$topo" "$port" /v3/kv/txn "{\"success\":[{\"request_putt\":{\"key\":\"$K_X\",\"value\":\"$V_A\"}}]}"
  NOTE="range without key: rejected by etcdserver (chunked + Grpc-Trailer), 400 code 3" \
    cap "$d/range_no_key.json" range_no_key "$topo" "$port" /v3/kv/range '{}'
  NOTE="unknown path: Go's text/plain 404, not JSON" \
    cap "$d/unknown_path.json" unknown_path "$topo" "$port" /v3/kv/nothere '{}'
  NOTE="GET on a POST endpoint: text/plain 405" \
    METHOD=GET cap "$d/get_method.json" get_method "$topo" "$port" /v3/kv/txn ''
  NOTE="no Content-Type header: accepted (the gateway does not look at it)" \
    CT=none cap "$d/content_type_none.json" content_type_none "$topo" "$port" /v3/kv/range "{\"key\":\"$K_P\"}"
  NOTE="Content-Type text/plain: accepted" \
    CT=text/plain cap "$d/content_type_text_plain.json" content_type_text_plain "$topo" "$port" /v3/kv/range "{\"key\":\"$K_P\"}"
  NOTE="Content-Type application/x-www-form-urlencoded (curl -d's default): accepted" \
    CT=application/x-www-form-urlencoded cap "$d/content_type_form.json" content_type_form "$topo" "$port" /v3/kv/range "{\"key\":\"$K_P\"}"
  NOTE="Grpc-Metadata-hasleader: true on a healthy member: normal answer" \
    cap "$d/txn_hasleader_healthy.json" txn_hasleader_healthy "$topo" "$port" /v3/kv/txn "$(txn_create "$K_P" "$V_B" 0)" "${HL[@]}"
  NOTE="Connection: close is honoured (Connection: close in the reply); without it nothing is said and the connection stays open (HTTP/1.1 default keep-alive)" \
    cap "$d/connection_close.json" connection_close "$topo" "$port" /v3/kv/range "{\"key\":\"$K_P\"}" -H 'Connection: close'
  NOTE="HTTP/1.0 error: no chunking, so the body is delimited by the connection close; the Trailer header is announced but no trailer is sent" \
    HV=--http1.0 cap "$d/http10_error.json" http10_error "$topo" "$port" /v3/kv/put "{\"key\":\"$K_U\",\"value\":\"$V_A\",\"lease\":\"999999\"}"
  NOTE="h2c upgrade request (Upgrade: h2c): ignored, the answer is plain HTTP/1.1 (no 101)" \
    HV=--http2 cap "$d/http2_upgrade_ignored.json" http2_upgrade_ignored "$topo" "$port" /v3/kv/range "{\"key\":\"$K_P\"}"
  NOTE="HTTP/2 prior knowledge (h2c) with a JSON request: cmux hands HTTP/2 to the native gRPC server, which resets the stream (RST_STREAM PROTOCOL_ERROR); no HTTP response" \
    HV=--http2-prior-knowledge MAXT=5 cap "$d/http2_prior_knowledge.json" http2_prior_knowledge "$topo" "$port" /v3/kv/range "{\"key\":\"$K_P\"}"
  # raw bytes of a gRPC-status error (chunked + trailer) and of a success
  local t; t=$(mktemp -d "$WORK/raw.XXXXXX")
  printf '%s' "{\"key\":\"$K_U\",\"value\":\"$V_A\",\"lease\":\"999999\"}" > "$t/body"
  curl -sS -v --http1.1 --raw -i --max-time 10 -X POST -H 'User-Agent:' -H 'Accept:' -H 'Content-Type: application/json' \
    --data-binary "@$t/body" -o "$t/raw" "http://127.0.0.1:$port/v3/kv/put" 2>"$t/err" || true
  python3 "$FX" raw "$d/raw_error_chunked_trailer.json" raw_error_chunked_trailer "$topo" \
    "bytes on the wire of an error from etcdserver (put_unknown_lease), Date and Access-Control-* lines removed: Transfer-Encoding chunked, body in one chunk, then the last chunk and the Grpc-Trailer-Content-Type trailer" \
    "$t/raw" "$t/err" "$t/body"
  printf '%s' "{\"key\":\"$K_P\"}" > "$t/body"
  curl -sS -v --http1.1 --raw -i --max-time 10 -X POST -H 'User-Agent:' -H 'Accept:' -H 'Content-Type: application/json' \
    --data-binary "@$t/body" -o "$t/raw" "http://127.0.0.1:$port/v3/kv/range" 2>"$t/err" || true
  python3 "$FX" raw "$d/raw_success.json" raw_success "$topo" \
    "bytes on the wire of a success (range_present-like), Date and Access-Control-* lines removed: Content-Length, no chunking, no trailer" \
    "$t/raw" "$t/err" "$t/body"
  # keep-alive: two requests in one curl run; num_connects 0 on the second = reused
  local ka
  ka=$(curl -sS -v --http1.1 -X POST -H 'User-Agent:' -H 'Accept:' -H 'Content-Type: application/json' \
         --data-binary "{\"key\":\"$K_P\"}" -o /dev/null -w '%{http_code} %{num_connects}\n' "http://127.0.0.1:$port/v3/kv/range" \
       --next --http1.1 -X POST -H 'User-Agent:' -H 'Accept:' -H 'Content-Type: application/json' \
         --data-binary "$(txn_create "$K_P" "$V_B" 0)" -o /dev/null -w '%{http_code} %{num_connects}\n' "http://127.0.0.1:$port/v3/kv/txn" \
       --next --http1.1 -X POST -H 'User-Agent:' -H 'Accept:' -H 'Content-Type: application/json' \
         --data-binary "{\"key\":\"$K_U\",\"value\":\"$V_A\",\"lease\":\"999999\"}" -o /dev/null -w '%{http_code} %{num_connects}\n' "http://127.0.0.1:$port/v3/kv/put" \
       --next --http1.1 -X POST -H 'User-Agent:' -H 'Accept:' -H 'Content-Type: application/json' \
         --data-binary "{\"key\":\"$K_P\"}" -o /dev/null -w '%{http_code} %{num_connects}\n' "http://127.0.0.1:$port/v3/kv/range" \
       2>"$WORK/ka.err")
  local reused; reused=$(grep -c 'Re-using existing connection' "$WORK/ka.err" || true)
  local conn_hdr; conn_hdr=$(grep -ci '^< connection:' "$WORK/ka.err" || true)
  python3 "$FX" json "$d/http11_keepalive.json" "$(python3 -c '
import json,sys
rows=[l.split() for l in sys.argv[1].strip().split("\n")]
print(json.dumps({"case":"http11_keepalive","topology":sys.argv[2],
 "note":"four requests on one HTTP/1.1 connection (range 200, txn 200, put with unknown lease 404 chunked+trailer, range 200): the connection survives the error reply; the server sends no Connection header at all",
 "requests":["POST /v3/kv/range","POST /v3/kv/txn","POST /v3/kv/put (lease 999999)","POST /v3/kv/range"],
 "statuses":[int(r[0]) for r in rows],
 "new_connections_per_request":[int(r[1]) for r in rows],
 "curl_reused_connection_count":int(sys.argv[3]),
 "connection_headers_in_replies":int(sys.argv[4])}))' "$ka" "$topo" "$reused" "$conn_hdr")"
}

# ---------------------------------------------------------------- failure scenarios (cluster)
CP=( $((B+11)) $((B+12)) $((B+13)) )
PP=( $((B+21)) $((B+22)) $((B+23)) )
IC3="c1=http://127.0.0.1:${PP[0]},c2=http://127.0.0.1:${PP[1]},c3=http://127.0.0.1:${PP[2]}"
name_of_port() { local i; for i in 0 1 2; do [ "${CP[$i]}" = "$1" ] && echo "c$((i+1))"; done; }

# probes SCENARIO PORT SECONDS STEP : txn probes (with and without hasleader) every STEP s
PROBE_FILES=()
probes() {
  local sc=$1 port=$2 secs=$3 step=$4 n=0 end k
  PROBE_FILES=()
  end=$(python3 -c "print(int($secs/$step))")
  for n in $(seq 0 "$end"); do
    k=$(b64 "cg/probe/$sc/$n")
    NOTE="probe $n of $sc, with Grpc-Metadata-hasleader: true" \
      cap "$WORK/probes/$sc/h$n.json" "${sc}_probe_${n}_hasleader" cluster3 "$port" /v3/kv/txn "$(txn_create "$k" "$V_A" 0)" -H 'Grpc-Metadata-hasleader: true' &
    BG+=($!)
    PROBE_FILES+=("$WORK/probes/$sc/h$n.json")
    k=$(b64 "cg/probe/$sc/n$n")
    NOTE="probe $n of $sc, without Grpc-Metadata-hasleader" \
      cap "$WORK/probes/$sc/n$n.json" "${sc}_probe_${n}_no_header" cluster3 "$port" /v3/kv/txn "$(txn_create "$k" "$V_A" 0)" &
    BG+=($!)
    PROBE_FILES+=("$WORK/probes/$sc/n$n.json")
    sleep "$step"
  done
}
files_json() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "$@"; }
# keep a probe as a fixture under a stable name
keep_probe() { # src case note
  python3 - "$1" "$STAGE/cluster3/$2.json" "$2" "$3" <<'PY'
import json, sys
fx = json.load(open(sys.argv[1])); fx["case"] = sys.argv[3]; fx["note"] = sys.argv[4]
json.dump(fx, open(sys.argv[2], "w"), indent=2, ensure_ascii=False); open(sys.argv[2], "a").write("\n")
PY
}

scenario_leader_kill() {
  local d=$STAGE/cluster3 lp sp t0 last
  lp=$(leader_port "${CP[@]}"); sp=
  for p in "${CP[@]}"; do [ "$p" != "$lp" ] && { sp=$p; break; }; done
  log "[cluster3] leader kill: SIGKILL $(name_of_port "$lp") (leader), probing $(name_of_port "$sp") (follower)"
  mkdir -p "$WORK/probes/leader_kill"
  # a request in flight on the leader when it dies: a watch stream (the only request
  # that stays open on a healthy member) opened half a second before the kill
  NOTE="a request in flight on the leader when it is SIGKILLed (a /v3/watch stream, opened 0.5 s before): the stream's first message arrived, then the kernel closes the socket; curl reports the unfinished chunked body (no HTTP error status, no JSON error)" MAXT=5 \
    cap "$d/leader_kill_inflight_on_dead_member.json" leader_kill_inflight_on_dead_member cluster3 "$lp" /v3/watch "{\"create_request\":{\"key\":\"$K_X\"}}" &
  BG+=($!)
  sleep 0.5
  t0=$(now_us); kill_member "$(name_of_port "$lp")" KILL
  probes leader_kill "$sp" 2.5 0.1
  NOTE="a new request to the SIGKILLed leader: connection refused, no HTTP answer" MAXT=3 \
    cap "$d/leader_kill_dead_member.json" leader_kill_dead_member cluster3 "$lp" /v3/kv/txn "$(txn_create "$K_X" "$V_A" 0)"
  wait "${BG[@]}"; BG=()
  last=$(( ${#PROBE_FILES[@]} - 2 ))
  keep_probe "${PROBE_FILES[0]}" leader_kill_follower_early_hasleader "txn sent to a follower right after the leader was SIGKILLed, with hasleader: the follower still believes in the dead leader, so the header does not help; the proposal is lost and the request hangs until the 7 s request timeout (5 s + 2 x election timeout)"
  keep_probe "${PROBE_FILES[1]}" leader_kill_follower_early_no_header "the same without the header: same answer, same 7 s"
  keep_probe "${PROBE_FILES[$last]}" leader_kill_follower_late_hasleader "about 2.5 s after the kill: the new leader answers normally"
  keep_probe "${PROBE_FILES[$((last+1))]}" leader_kill_follower_late_no_header "about 2.5 s after the kill, without the header"
  start_member "$(name_of_port "$lp")" "$lp" "$(( lp + 10 ))" "$IC3" cg-capture-3
  wait_healthy "${CP[@]}"
  python3 "$FX" timeline leader_kill "$t0" "$sp" "$(files_json "${PROBE_FILES[@]}")"
}

scenario_quorum_lost() { # which: leader (survivor is the old leader) | follower
  local which=$1 d=$STAGE/cluster3 lp sp t0 last k0 sc victims=() p
  lp=$(leader_port "${CP[@]}")
  if [ "$which" = leader ]; then
    sp=$lp; for p in "${CP[@]}"; do [ "$p" != "$lp" ] && victims+=("$p"); done
  else
    for p in "${CP[@]}"; do [ "$p" != "$lp" ] && { sp=$p; break; }; done
    victims=("$lp"); for p in "${CP[@]}"; do [ "$p" != "$lp" ] && [ "$p" != "$sp" ] && victims+=("$p"); done
  fi
  sc=quorum_lost_at_$which
  log "[cluster3] quorum loss: SIGKILL $(name_of_port "${victims[0]}") $(name_of_port "${victims[1]}"), survivor $(name_of_port "$sp") (was $which)"
  mkdir -p "$WORK/probes/$sc"
  t0=$(now_us)
  kill_member "$(name_of_port "${victims[0]}")" KILL; kill_member "$(name_of_port "${victims[1]}")" KILL
  probes "$sc" "$sp" 3 0.2
  # now the survivor knows there is no leader
  NOTE="quorum lost, txn WITHOUT hasleader: hangs for the 7 s request timeout, then HTTP 500 grpc code 2 'context deadline exceeded' (raft refuses proposals while there is no leader)" \
    cap "$d/${sc}_txn_no_header.json" "${sc}_txn_no_header" cluster3 "$sp" /v3/kv/txn "$(txn_create "$K_X" "$V_A" 0)" &
  BG+=($!)
  NOTE="quorum lost, linearizable range WITHOUT hasleader: 7 s, then 503 code 14 'request timed out' (ReadIndex timeout)" \
    cap "$d/${sc}_range_no_header.json" "${sc}_range_no_header" cluster3 "$sp" /v3/kv/range "{\"key\":\"$K_P\"}" &
  BG+=($!)
  NOTE="quorum lost, put WITHOUT hasleader: like the txn (500, code 2, 7 s)" \
    cap "$d/${sc}_put_no_header.json" "${sc}_put_no_header" cluster3 "$sp" /v3/kv/put "{\"key\":\"$K_X\",\"value\":\"$V_A\"}" &
  BG+=($!)
  NOTE="quorum lost, txn with hasleader: immediate 503, grpc code 14 'etcdserver: no leader'" \
    cap "$d/${sc}_txn_hasleader.json" "${sc}_txn_hasleader" cluster3 "$sp" /v3/kv/txn "$(txn_create "$K_X" "$V_A" 0)" -H 'Grpc-Metadata-hasleader: true'
  NOTE="quorum lost, range with hasleader: immediate 503 code 14 'no leader'" \
    cap "$d/${sc}_range_hasleader.json" "${sc}_range_hasleader" cluster3 "$sp" /v3/kv/range "{\"key\":\"$K_P\"}" -H 'Grpc-Metadata-hasleader: true'
  NOTE="quorum lost, lease grant with hasleader: immediate 503 code 14 'no leader'" \
    cap "$d/${sc}_lease_grant_hasleader.json" "${sc}_lease_grant_hasleader" cluster3 "$sp" /v3/lease/grant '{"TTL":"60","ID":"8001"}' -H 'Grpc-Metadata-hasleader: true'
  NOTE="quorum lost, serializable range (local, possibly stale read): still answers 200 at once" \
    cap "$d/${sc}_range_serializable.json" "${sc}_range_serializable" cluster3 "$sp" /v3/kv/range "{\"key\":\"$K_P\",\"serializable\":true}"
  wait "${BG[@]}"; BG=()
  last=$(( ${#PROBE_FILES[@]} - 2 ))
  if [ "$which" = leader ]; then
    keep_probe "${PROBE_FILES[0]}" "${sc}_early_hasleader" "txn with hasleader sent to the old leader right after both followers were SIGKILLed: it still believes it leads (until check-quorum steps it down after about one election timeout), so the header does not help: the entry is appended to its own log and the request hangs 7 s, then 503 code 14 'request timed out'. The outcome is UNKNOWN: if this member wins the next election the write is committed later, else it is discarded (both seen; see ${sc}_restored_range_early_key)"
    keep_probe "${PROBE_FILES[1]}" "${sc}_early_no_header" "the same without the header"
  else
    keep_probe "${PROBE_FILES[0]}" "${sc}_early_hasleader" "txn with hasleader sent to the surviving follower right after the leader and the other follower were SIGKILLed: it still believes in the dead leader until its election timeout, so the header does not help: the proposal is lost and the request hangs 7 s, then 503 code 14"
    keep_probe "${PROBE_FILES[1]}" "${sc}_early_no_header" "the same without the header"
  fi
  keep_probe "${PROBE_FILES[$last]}" "${sc}_late_hasleader" "3 s after the quorum was lost, with hasleader: immediate 503 code 14 'etcdserver: no leader'"
  keep_probe "${PROBE_FILES[$((last+1))]}" "${sc}_late_no_header" "3 s after the quorum was lost, without hasleader: 7 s, then 500 code 2 'context deadline exceeded'"
  for p in "${victims[@]}"; do start_member "$(name_of_port "$p")" "$p" "$(( p + 10 ))" "$IC3" cg-capture-3; done
  wait_healthy "${CP[@]}"
  k0=$(python3 "$FX" get "${PROBE_FILES[0]}" request.body | python3 -c 'import json,sys; print(json.load(sys.stdin)["compare"][0]["key"])')
  NOTE="after the quorum came back: range of the key of the first (503 'request timed out') probe of $sc. kvs present = that write was applied after all, absent = discarded; which one depends on who wins the election after the restart, so this fixture varies" \
    cap "$d/${sc}_restored_range_early_key.json" "${sc}_restored_range_early_key" cluster3 "$sp" /v3/kv/range "{\"key\":\"$k0\"}"
  python3 "$FX" timeline "$sc" "$t0" "$sp" "$(files_json "${PROBE_FILES[@]}")"
}

# ---------------------------------------------------------------- main
VERSIONS=$("$ETCD" --version | tr '\n' ';' ; echo)
log "$($ETCD --version | head -1); work dir $WORK"
check_ports_free $((B+1)) $((B+2)) "${CP[@]}" "${PP[@]}"

# single member
start_member s1 $((B+1)) $((B+2)) "s1=http://127.0.0.1:$((B+2))" cg-capture-single
wait_healthy $((B+1))
run_common single $((B+1))
log "[single] latency: 200 create-if-absent txns over one keep-alive connection"
python3 "$FX" latency $((B+1)) 200 cg/lat/single single >> "$WORK/latency.jsonl"
kill_member s1 TERM

# 3-member cluster
for i in 0 1 2; do start_member "c$((i+1))" "${CP[$i]}" "${PP[$i]}" "$IC3" cg-capture-3; done
wait_healthy "${CP[@]}"
run_common cluster3 "${CP[0]}"
LP=$(leader_port "${CP[@]}")
for p in "${CP[@]}"; do [ "$p" != "$LP" ] && { FP=$p; break; }; done
log "[cluster3] latency: leader $(name_of_port "$LP"), follower $(name_of_port "$FP")"
python3 "$FX" latency "$LP" 200 cg/lat/leader cluster3_to_leader >> "$WORK/latency.jsonl"
python3 "$FX" latency "$FP" 200 cg/lat/follower cluster3_to_follower >> "$WORK/latency.jsonl"
scenario_leader_kill
scenario_quorum_lost leader
scenario_quorum_lost follower

python3 "$FX" timings "$STAGE/timings.json" "$WORK/latency.jsonl" "$VERSIONS" "$WORK/lease_expiry.jsonl"
"$ETCD" --version > "$STAGE/etcd-version.txt"

# replace the old fixtures (README.md is kept)
mkdir -p "$OUT"
rm -rf "$OUT/single" "$OUT/cluster3"
cp -r "$STAGE/single" "$STAGE/cluster3" "$OUT/"
cp "$STAGE/timings.json" "$STAGE/etcd-version.txt" "$OUT/"
log "latency (ms):"
python3 -c 'import json,sys
for k,v in json.load(open(sys.argv[1]))["latency_keepalive_txn"].items():
    print("  %-22s absent p50 %.3f p99 %.3f | present p50 %.3f p99 %.3f | conns %d" % (k, v["create_absent"]["p50_ms"], v["create_absent"]["p99_ms"], v["create_present"]["p50_ms"], v["create_present"]["p99_ms"], v["tcp_connections_used"]))' "$OUT/timings.json" >&2
echo "etcd-capture: wrote $(find "$OUT/single" "$OUT/cluster3" -name '*.json' | wc -l) fixtures to $OUT/{single,cluster3}, plus $OUT/timings.json and $OUT/etcd-version.txt"
