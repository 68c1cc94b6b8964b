#!/usr/bin/env bash
# `make test-rtmp`: callback-guard in front of two real nginx-rtmp ingest servers,
# with ffmpeg pushing a generated stream. Everything runs on 127.0.0.1.
#
#   ffmpeg --rtmp--> nginx-rtmp A / B --on_publish(_done)--> Envoy + callback-guard
#                                         (envoy/nginx-rtmp.yaml) --> callback-receiver
#
# Installs nginx, libnginx-mod-rtmp and ffmpeg with apt-get when they are missing.
# Needs `make wasm bins envoy` first (the make target does that). Prints one
# PASS/FAIL line per case and `N passed, M failed` last; exits 1 on any failure,
# after printing the nginx, Envoy and ffmpeg logs.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD

ENVOY_BIN="${ENVOY_BIN:-$REPO/.venv/bin/envoy}"
RTMP_MODULE="${RTMP_MODULE:-/usr/lib/nginx/modules/ngx_rtmp_module.so}"
CLI=$REPO/target/release/callback-guard
RECEIVER=$REPO/target/release/callback-receiver
WASM=$REPO/target/wasm32-wasip1/release/callback_guard.wasm
T0=$(date +%s)

# The nginx, Envoy and ffmpeg logs of this run (on any failure, before $TMP is removed).
show_logs() {
  [ -n "${TMP:-}" ] && [ -d "$TMP" ] || return 0
  for f in "$TMP"/nginx-*/logs/error.log; do [ -f "$f" ] && { echo "---- $f"; tail -n 60 "$f"; }; done
  [ -f "$TMP/envoy.log" ] && { echo "---- Envoy log"; tail -n 150 "$TMP/envoy.log"; }
  for f in "$TMP"/ffmpeg-*.log; do [ -f "$f" ] && { echo "---- $f"; tail -n 20 "$f"; }; done
  return 0
}
die() { echo "test-rtmp: $*" >&2; show_logs; exit 1; }

# ---- tools ----------------------------------------------------------------------
if ! command -v nginx >/dev/null || [ ! -f "$RTMP_MODULE" ] || ! command -v ffmpeg >/dev/null; then
  echo "== installing nginx, libnginx-mod-rtmp and ffmpeg (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq >/dev/null &&
    apt-get install -y -qq --no-install-recommends nginx libnginx-mod-rtmp ffmpeg >/dev/null; }; then
    die "apt-get could not install nginx libnginx-mod-rtmp ffmpeg"
  fi
fi
[ -f "$RTMP_MODULE" ] || die "no nginx-rtmp module at $RTMP_MODULE (set RTMP_MODULE)"
for f in "$ENVOY_BIN" "$CLI" "$RECEIVER" "$WASM"; do
  [ -x "$f" ] || [ -f "$f" ] || die "$f is missing: run \`make wasm bins envoy\`"
done
command -v python3 >/dev/null || die "python3 is needed to read the receiver's JSON"

# ---- processes and cleanup --------------------------------------------------------
TMP=$(mktemp -d /tmp/cg-rtmp.XXXXXX)
pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${KEEP_TMP:-}" ]; then echo "logs kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Five distinct free ports: receiver, Envoy listener, Envoy admin, ingest A, ingest B.
read -r P_RX P_ENVOY P_ADMIN P_A P_B < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

wait_port() { # port what
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  die "$2 did not listen on 127.0.0.1:$1"
}

# A fresh push key for this run; Envoy reads it from its environment.
CALLBACK_GUARD_PUSH_KEY="rtmp$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export CALLBACK_GUARD_PUSH_KEY

"$RECEIVER" --listen "127.0.0.1:$P_RX" --quiet >"$TMP/receiver.log" 2>&1 &
pids+=($!)
wait_port "$P_RX" receiver

# Envoy: envoy/nginx-rtmp.yaml as shipped, with this run's ports and wasm path.
sed -e "s/port_value: 10000/port_value: $P_ENVOY/" \
    -e "s/port_value: 9901/port_value: $P_ADMIN/" \
    -e "s/port_value: 8080/port_value: $P_RX/" \
    -e "s#filename: target/wasm32-wasip1/release/callback_guard.wasm#filename: $WASM#" \
    envoy/nginx-rtmp.yaml >"$TMP/envoy.yaml"
for s in "port_value: $P_ENVOY" "port_value: $P_ADMIN" "port_value: $P_RX" "filename: $WASM"; do
  grep -qF "$s" "$TMP/envoy.yaml" || die "envoy/nginx-rtmp.yaml changed shape: could not set \`$s\`"
done
"$ENVOY_BIN" -c "$TMP/envoy.yaml" --concurrency 2 -l info --disable-hot-restart \
  </dev/null >/dev/null 2>"$TMP/envoy.log" &
pids+=($!)
ready=
for _ in $(seq 1 200); do
  if curl -fs "http://127.0.0.1:$P_ADMIN/ready" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "${pids[-1]}" 2>/dev/null || break
  sleep 0.1
done
[ -n "$ready" ] || { cat "$TMP/envoy.log"; die "Envoy did not become ready"; }

# Two nginx-rtmp ingest servers, each with its own prefix, both calling Envoy.
# `other` is an application nginx serves but callback-guard does not know.
start_nginx() { # name port
  local dir=$TMP/nginx-$1
  mkdir -p "$dir/logs"
  cat >"$dir/nginx.conf" <<EOF
load_module $RTMP_MODULE;
daemon off;
master_process off;
worker_processes 1;
error_log $dir/logs/error.log info;
pid $dir/nginx.pid;
events { worker_connections 64; }
rtmp {
  server {
    listen 127.0.0.1:$2;
    application live {
      live on;
      on_publish http://127.0.0.1:$P_ENVOY/callback;
      on_publish_done http://127.0.0.1:$P_ENVOY/callback;
    }
    application other {
      live on;
      on_publish http://127.0.0.1:$P_ENVOY/callback;
      on_publish_done http://127.0.0.1:$P_ENVOY/callback;
    }
  }
}
EOF
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" </dev/null >"$dir/logs/stdout.log" 2>&1 &
  pids+=($!)
  wait_port "$2" "nginx-rtmp $1"
}
start_nginx A "$P_A"
start_nginx B "$P_B"
echo "== receiver :$P_RX, Envoy :$P_ENVOY (admin :$P_ADMIN), nginx-rtmp A :$P_A, B :$P_B ($(($(date +%s) - T0)) s)"

# ---- helpers ----------------------------------------------------------------------
sign() { # app stream port [expires-at]
  local exp=(--expires-in 300)
  [ -n "${4:-}" ] && exp=(--expires-at "$4")
  "$CLI" sign --scheme ks_md5 --key-env CALLBACK_GUARD_PUSH_KEY --app "$1" --stream "$2" \
    "${exp[@]}" --url "rtmp://127.0.0.1:$3/$1"
}

# push NAME URL SECONDS: a generated stream, bounded; output in $TMP/ffmpeg-NAME.log.
ffmpeg_args() { # URL SECONDS
  ffargs=(-hide_banner -nostdin -loglevel warning -re
    -f lavfi -i "testsrc=size=320x240:rate=10" -t "$2"
    -c:v libx264 -preset ultrafast -tune zerolatency -g 10 -pix_fmt yuv420p -f flv "$1")
}
push() {
  ffmpeg_args "$2" "$3"
  timeout "$(($3 + 15))" ffmpeg "${ffargs[@]}" >"$TMP/ffmpeg-$1.log" 2>&1
}
# Same, in the background; $! is timeout's pid (it passes a TERM on to ffmpeg).
push_bg() {
  ffmpeg_args "$2" "$3"
  timeout "$(($3 + 15))" ffmpeg "${ffargs[@]}" >"$TMP/ffmpeg-$1.log" 2>&1 &
}

# What reached the receiver: one line per callback,
# "<x-callback-guard-event> <x-callback-guard-key-id> <body>".
received() {
  curl -fs "http://127.0.0.1:$P_RX/__received" | python3 -c '
import base64, json, sys
for r in json.load(sys.stdin):
    h = dict(r["headers"])
    body = base64.b64decode(r["body_b64"]).decode("utf-8", "replace")
    print(h.get("x-callback-guard-event", "-"), h.get("x-callback-guard-key-id", "-"), body)'
}
clear_received() { curl -fs -X DELETE "http://127.0.0.1:$P_RX/__received" >/dev/null; }

# wait_received PATTERN COUNT [SECONDS]: until COUNT callbacks match PATTERN (ERE).
wait_received() {
  local deadline=$((SECONDS + ${3:-10}))
  while [ "$SECONDS" -le "$deadline" ]; do
    [ "$(received | grep -cE -- "$1")" -ge "$2" ] && return 0
    sleep 0.1
  done
  return 1
}

envoy_codes() { grep -c "callback-guard rejected: code=$1" "$TMP/envoy.log"; }

passed=0
failed=0
why=""
check() { # description, then a command that must succeed
  local d=$1; shift
  "$@" || why+="  - $d"$'\n'
}
result() { # case name
  if [ -z "$why" ]; then
    echo "PASS $1"
    passed=$((passed + 1))
  else
    echo "FAIL $1"
    printf '%s' "$why"
    echo "  receiver got:"; received | sed 's/^/    /'
    failed=$((failed + 1))
  fi
  why=""
}

# The forms nginx-rtmp posts (exact bodies), for the record.
show_bodies() { received | sed 's/^/    /'; }

# ---- cases ------------------------------------------------------------------------

# (a) A push URL minted by `callback-guard sign` is accepted: start and end reach the receiver.
clear_received
url=$(sign live cam1 "$P_A")
push a-signed "$url" 3
rc=$?
check "ffmpeg exited $rc, want 0" test "$rc" -eq 0
check "no forwarded call=publish for cam1" wait_received '^start primary .*call=publish&name=cam1&.*t=[0-9]{10}&k=[0-9a-f]{16}' 1
check "no forwarded call=publish_done for cam1 (with its token)" \
  wait_received '^end primary .*call=publish_done&name=cam1&.*t=[0-9]{10}&k=[0-9a-f]{16}' 1
n=$(received | wc -l)
check "receiver got $n callbacks, want 2" test "$n" -eq 2
[ -z "$why" ] && { echo "  nginx-rtmp posted:"; show_bodies; }
result "(a) signed push accepted: ffmpeg exit 0, publish and publish_done forwarded"

# (b1) A forged token is refused.
clear_received
before=$(envoy_codes AuthencationFailed)
url=$(sign live cam2 "$P_A")
push b-forged "${url%k=*}k=0123456789abcdef" 3
rc=$?
sleep 1
check "ffmpeg exited $rc, want 1 (publish refused)" test "$rc" -eq 1
check "receiver got callbacks" test "$(received | wc -l)" -eq 0
check "no AuthencationFailed in Envoy's log" test "$(envoy_codes AuthencationFailed)" -gt "$before"
result "(b) forged token refused: ffmpeg fails, receiver got nothing"

# (b2) An expired token (an hour ago, beyond clock_skew_s) is refused.
clear_received
before=$(envoy_codes AuthencationFailed)
url=$(sign live cam3 "$P_A" "$(($(date +%s) - 3600))")
push b-expired "$url" 3
rc=$?
sleep 1
check "ffmpeg exited $rc, want 1 (publish refused)" test "$rc" -eq 1
check "receiver got callbacks" test "$(received | wc -l)" -eq 0
check "no AuthencationFailed in Envoy's log" test "$(envoy_codes AuthencationFailed)" -gt "$before"
grep -q 'code=AuthencationFailed.*stream="cam3".*expired' "$TMP/envoy.log" \
  || why+="  - Envoy's log does not say the cam3 token expired"$'\n'
result "(b) expired token refused: ffmpeg fails, receiver got nothing"

# (c) An app nginx serves but callback-guard does not know is refused (the token is valid).
clear_received
before=$(envoy_codes NonExistApplication)
url=$(sign other cam1 "$P_A")
push c-app "$url" 3
rc=$?
sleep 1
check "ffmpeg exited $rc, want 1 (publish refused)" test "$rc" -eq 1
check "receiver got callbacks" test "$(received | wc -l)" -eq 0
check "no NonExistApplication in Envoy's log" test "$(envoy_codes NonExistApplication)" -gt "$before"
result "(c) app not in apps refused: NonExistApplication, receiver got nothing"

# (d) While cam4 is live on ingest A, a push of cam4 to ingest B is refused.
clear_received
before=$(envoy_codes ExistStreamName)
url_a=$(sign live cam4 "$P_A")
push_bg d-ingest-A "$url_a" 8
a_pid=$!
pids+=("$a_pid")
check "A's start for cam4 did not arrive" wait_received "^start primary .*tcurl=rtmp://127.0.0.1:$P_A/live&.*call=publish&name=cam4&" 1
url_b=$(sign live cam4 "$P_B")
push d-ingest-B "$url_b" 3
rc=$?
sleep 0.5
check "ffmpeg on B exited $rc, want 1 (publish refused)" test "$rc" -eq 1
check "no ExistStreamName in Envoy's log" test "$(envoy_codes ExistStreamName)" -gt "$before"
check "a callback from B reached the receiver" test "$(received | grep -c "tcurl=rtmp://127.0.0.1:$P_B/")" -eq 0
check "A's push stopped while B was refused" kill -0 "$a_pid"
result "(d) same stream on ingest B while live on A: ExistStreamName, ffmpeg on B fails"

# (e) After A's push ends (publish_done frees the stream), B can push it.
wait "$a_pid"
rc=$?
unset 'pids[-1]'
check "ffmpeg on A exited $rc, want 0" test "$rc" -eq 0
check "A's publish_done for cam4 did not arrive" wait_received "^end primary .*tcurl=rtmp://127.0.0.1:$P_A/live&.*call=publish_done&name=cam4&" 1
clear_received
push e-ingest-B "$url_b" 2
rc=$?
check "ffmpeg on B exited $rc, want 0" test "$rc" -eq 0
check "B's start for cam4 was not forwarded" wait_received "^start primary .*tcurl=rtmp://127.0.0.1:$P_B/live&.*call=publish&name=cam4&" 1
check "B's end for cam4 was not forwarded" wait_received "^end primary .*tcurl=rtmp://127.0.0.1:$P_B/live&.*call=publish_done&name=cam4&" 1
result "(e) after A's push ended, B pushes the same stream"

# ---- summary ----------------------------------------------------------------------
if [ "$failed" -gt 0 ]; then
  show_logs
fi
echo "== $(($(date +%s) - T0)) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
