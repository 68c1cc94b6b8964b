#!/usr/bin/env bash
# `make test-rtmp`: callback-guard in front of two real nginx-rtmp ingest servers,
# with ffmpeg pushing a generated stream. Everything runs on 127.0.0.1.
#
#   ffmpeg --rtmp--> nginx-rtmp A / B --on_publish(_done), on_update--> Envoy + callback-guard
#   ffmpeg <--rtmp-- (players)         --on_play(_done)-->   (envoy/nginx-rtmp.yaml) --> callback-receiver
#
# Cases (a)-(e) run envoy/nginx-rtmp.yaml as shipped; so do the playback cases (k)-(n),
# with ffmpeg as the player and URLs minted by `callback-guard sign --for play`. The liveness cases (f)-(j) run
# two more Envoys with the same filter chain but `duplicate_streams.ttl_s` 6 s: one
# on the shared-data store, one on an etcd store (a single etcd member started
# here). Each nginx also listens on extra ports whose `application live` posts
# on_update to them every 2 s, ports that do not (the negative controls), and one
# that posts it every 12 s (more than ttl_s). They take about 20 s.
#
# Installs nginx, libnginx-mod-rtmp, ffmpeg and etcd-server with apt-get when they
# are missing.
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
  for f in "$TMP"/envoy-*.log; do [ -f "$f" ] && { echo "---- $f"; tail -n 150 "$f"; }; done
  [ -f "$TMP/etcd.log" ] && { echo "---- etcd log"; tail -n 30 "$TMP/etcd.log"; }
  for f in "$TMP"/ffmpeg-*.log; do [ -f "$f" ] && { echo "---- $f"; tail -n 20 "$f"; }; done
  return 0
}
die() { echo "test-rtmp: $*" >&2; show_logs; exit 1; }

# ---- tools ----------------------------------------------------------------------
ETCD_BIN="${ETCD_BIN:-$(command -v etcd || echo /usr/bin/etcd)}"
if ! command -v nginx >/dev/null || [ ! -f "$RTMP_MODULE" ] || ! command -v ffmpeg >/dev/null ||
  [ ! -x "$ETCD_BIN" ]; then
  echo "== installing nginx, libnginx-mod-rtmp, ffmpeg and etcd-server (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq >/dev/null &&
    apt-get install -y -qq --no-install-recommends nginx libnginx-mod-rtmp ffmpeg etcd-server >/dev/null; }; then
    die "apt-get could not install nginx libnginx-mod-rtmp ffmpeg etcd-server"
  fi
  ETCD_BIN=$(command -v etcd || echo /usr/bin/etcd)
fi
[ -f "$RTMP_MODULE" ] || die "no nginx-rtmp module at $RTMP_MODULE (set RTMP_MODULE)"
[ -x "$ETCD_BIN" ] || die "no etcd at $ETCD_BIN (set ETCD_BIN)"
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

# Every Envoy of this run loads the same module, even if target/ is rebuilt meanwhile.
cp "$WASM" "$TMP/callback_guard.wasm" || die "cannot copy $WASM"
WASM=$TMP/callback_guard.wasm

# Distinct free ports. The receiver; three Envoys (listener, admin): `main` runs
# envoy/nginx-rtmp.yaml as shipped, `live` the same with a short ttl_s (shared-data
# store), `etcd` the same on the etcd store; etcd (client, peer); and the ingest
# ports, each nginx (A, B) listening on:
#   P_A   P_B    -> main: on_publish, on_publish_done (cases a-e)
#   P_AU  P_BU   -> live: the same, plus on_update every 2 s
#   P_AN  P_BN   -> live: no on_update (negative control)
#   P_AS         -> live: on_update every 12 s, longer than ttl_s (A only)
#   P_AE  P_BE   -> etcd: plus on_update every 2 s
#   P_AEN P_BEN  -> etcd: no on_update (negative control)
read -r P_RX P_ENVOY P_ADMIN P_LIVE P_LIVE_ADMIN P_ETCD_ENVOY P_ETCD_ADMIN P_ETCD P_ETCD_PEER \
  P_A P_B P_AU P_BU P_AN P_BN P_AS P_AE P_BE P_AEN P_BEN < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(20)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

wait_port() { # port what
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  die "$2 did not listen on 127.0.0.1:$1"
}

# A fresh push key and play key for this run; Envoy reads them from its environment.
CALLBACK_GUARD_PUSH_KEY="rtmp$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
CALLBACK_GUARD_PLAY_KEY="view$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export CALLBACK_GUARD_PUSH_KEY CALLBACK_GUARD_PLAY_KEY

"$RECEIVER" --listen "127.0.0.1:$P_RX" --quiet >"$TMP/receiver.log" 2>&1 &
pids+=($!)

# One etcd member, the store of the `etcd` Envoy.
"$ETCD_BIN" --name cg-rtmp --data-dir "$TMP/etcd" \
  --listen-client-urls "http://127.0.0.1:$P_ETCD" --advertise-client-urls "http://127.0.0.1:$P_ETCD" \
  --listen-peer-urls "http://127.0.0.1:$P_ETCD_PEER" \
  --initial-advertise-peer-urls "http://127.0.0.1:$P_ETCD_PEER" \
  --initial-cluster "cg-rtmp=http://127.0.0.1:$P_ETCD_PEER" --initial-cluster-state new \
  --initial-cluster-token cg-rtmp --logger zap --log-level error </dev/null >"$TMP/etcd.log" 2>&1 &
pids+=($!)
wait_port "$P_RX" receiver

# start_envoy NAME LISTEN ADMIN [DUPLICATE_STREAMS [ETCD_PORT]]: envoy/nginx-rtmp.yaml
# as shipped, with this run's ports and wasm path; its filter chain is not touched.
# DUPLICATE_STREAMS (JSON) replaces the plugin configuration's `duplicate_streams`;
# ETCD_PORT adds a cluster `etcd` for it. Log: $TMP/envoy-NAME.log.
declare -A envoy_pid
start_envoy() {
  local cfg=$TMP/envoy-$1.yaml
  sed -e "s/port_value: 10000/port_value: $2/" \
      -e "s/port_value: 9901/port_value: $3/" \
      -e "s/port_value: 8080/port_value: $P_RX/" \
      -e "s#filename: target/wasm32-wasip1/release/callback_guard.wasm#filename: $WASM#" \
      envoy/nginx-rtmp.yaml >"$cfg"
  local want=("port_value: $2" "port_value: $3" "port_value: $P_RX" "filename: $WASM")
  if [ -n "${4:-}" ]; then
    sed -i -E "s#\"duplicate_streams\": \{[^}]*\}#\"duplicate_streams\": $4#" "$cfg"
    want+=("\"duplicate_streams\": $4")
  fi
  if [ -n "${5:-}" ]; then
    # The shape of etcd_cluster_config in tests/support/mod.rs (HTTP/1.1, /health checked;
    # `clusters` is the last list of the shipped file), plus no_traffic_interval: the
    # first health check often fails while Envoy's main thread compiles the module, and
    # a cluster without traffic is checked again only after no_traffic_interval (60 s).
    cat >>"$cfg" <<YAML
  - name: etcd
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: etcd
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: $5 }
    health_checks:
    - timeout: 0.5s
      interval: 0.5s
      no_traffic_interval: 0.5s
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: { path: /health }
    common_lb_config: { healthy_panic_threshold: { value: 0 } }
YAML
  fi
  for s in "${want[@]}"; do
    grep -qF -- "$s" "$cfg" || die "envoy/nginx-rtmp.yaml changed shape: could not set \`$s\`"
  done
  "$ENVOY_BIN" -c "$cfg" --concurrency 2 -l info --disable-hot-restart \
    </dev/null >/dev/null 2>"$TMP/envoy-$1.log" &
  pids+=($!)
  envoy_pid[$1]=$!
}
wait_envoy() { # NAME ADMIN
  for _ in $(seq 1 200); do
    curl -fs "http://127.0.0.1:$2/ready" >/dev/null 2>&1 && return 0
    kill -0 "${envoy_pid[$1]}" 2>/dev/null || break
    sleep 0.1
  done
  cat "$TMP/envoy-$1.log"
  die "Envoy $1 did not become ready"
}
TTL_S=6
start_envoy main "$P_ENVOY" "$P_ADMIN"
start_envoy live "$P_LIVE" "$P_LIVE_ADMIN" "{ \"reject\": true, \"ttl_s\": $TTL_S }"
# etcd answers before its Envoy starts (else the first health check fails).
etcd_up=
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$P_ETCD/health" 2>/dev/null | grep -q '"health":"true"' && { etcd_up=1; break; }
  sleep 0.1
done
[ -n "$etcd_up" ] || die "etcd did not become healthy on 127.0.0.1:$P_ETCD"
start_envoy etcd "$P_ETCD_ENVOY" "$P_ETCD_ADMIN" "{ \"reject\": true, \"ttl_s\": $TTL_S, \
\"store\": { \"etcd\": { \"cluster\": \"etcd\", \"key_prefix\": \"/cg-rtmp/\", \"timeout_ms\": 1500 } } }" \
  "$P_ETCD"
wait_envoy main "$P_ADMIN"
wait_envoy live "$P_LIVE_ADMIN"
wait_envoy etcd "$P_ETCD_ADMIN"

# Two nginx-rtmp ingest servers, each with its own prefix, each listening on the
# ports listed above. `other` is an application nginx serves but callback-guard does
# not know. rtmp_server PORT ENVOY_PORT [UPDATE_EVERY]: one `server` block; with
# UPDATE_EVERY, `application live` also posts on_update to that Envoy that often.
# `application live` posts on_play and on_play_done too (playback is protected).
rtmp_server() {
  local update=""
  [ -n "${3:-}" ] && update="
      on_update http://127.0.0.1:$2/callback;
      notify_update_timeout $3;"
  cat <<CONF
  server {
    listen 127.0.0.1:$1;
    application live {
      live on;
      on_publish http://127.0.0.1:$2/callback;
      on_publish_done http://127.0.0.1:$2/callback;
      on_play http://127.0.0.1:$2/callback;
      on_play_done http://127.0.0.1:$2/callback;$update
    }
    application other {
      live on;
      on_publish http://127.0.0.1:$2/callback;
      on_publish_done http://127.0.0.1:$2/callback;
    }
  }
CONF
}
start_nginx() { # name "port envoy-port [update-every]"...
  local name=$1 dir=$TMP/nginx-$1 spec
  shift
  mkdir -p "$dir/logs"
  {
    cat <<CONF
load_module $RTMP_MODULE;
daemon off;
master_process off;
worker_processes 1;
error_log $dir/logs/error.log info;
pid $dir/nginx.pid;
events { worker_connections 64; }
rtmp {
CONF
    for spec in "$@"; do
      # shellcheck disable=SC2086 # split on purpose
      rtmp_server $spec
    done
    echo "}"
  } >"$dir/nginx.conf"
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" </dev/null >"$dir/logs/stdout.log" 2>&1 &
  pids+=($!)
  for spec in "$@"; do
    wait_port "${spec%% *}" "nginx-rtmp $name"
  done
}
start_nginx A "$P_A $P_ENVOY" "$P_AU $P_LIVE 2s" "$P_AN $P_LIVE" "$P_AS $P_LIVE 12s" \
  "$P_AE $P_ETCD_ENVOY 2s" "$P_AEN $P_ETCD_ENVOY"
start_nginx B "$P_B $P_ENVOY" "$P_BU $P_LIVE 2s" "$P_BN $P_LIVE" \
  "$P_BE $P_ETCD_ENVOY 2s" "$P_BEN $P_ETCD_ENVOY"
echo "== receiver :$P_RX, Envoy :$P_ENVOY (admin :$P_ADMIN), nginx-rtmp A :$P_A, B :$P_B ($(($(date +%s) - T0)) s)"

# ---- helpers ----------------------------------------------------------------------
sign() { # app stream port [expires-at]
  local exp=(--expires-in 300)
  [ -n "${4:-}" ] && exp=(--expires-at "$4")
  "$CLI" sign --scheme ks_md5 --key-env CALLBACK_GUARD_PUSH_KEY --app "$1" --stream "$2" \
    "${exp[@]}" --url "rtmp://127.0.0.1:$3/$1"
}
sign_play() { # app stream port [expires-at]: a play URL, with the play key
  local exp=(--expires-in 300)
  [ -n "${4:-}" ] && exp=(--expires-at "$4")
  "$CLI" sign --for play --scheme ks_md5 --key-env CALLBACK_GUARD_PLAY_KEY --app "$1" \
    --stream "$2" "${exp[@]}" --url "rtmp://127.0.0.1:$3/$1"
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

# play NAME URL [SECONDS]: ffmpeg as a player for 2 s (or SECONDS) of the stream, bounded;
# returns ffmpeg's exit status (124 when it was still waiting after 15 s); output in
# $TMP/ffmpeg-NAME.log.
play() {
  timeout 15 ffmpeg -hide_banner -nostdin -loglevel warning -i "$2" -t "${3:-2}" -f null - \
    >"$TMP/ffmpeg-$1.log" 2>&1
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

# envoy_codes CODE [ENVOY]: refusals with CODE in that Envoy's log (default: main).
envoy_codes() { grep -c "callback-guard rejected: code=$1" "$TMP/envoy-${2:-main}.log"; }

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
grep -q 'code=AuthencationFailed.*stream="cam3".*expired' "$TMP/envoy-main.log" \
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

# ---- playback: on_play / on_play_done with play tokens -----------------------------
# cam10 is pushed on A for PUSH_S while viewers play it with URLs minted by
# `sign --for play`; cam12 is pushed by nobody.
clear_received
PUSH_S=16
url=$(sign live cam10 "$P_A")
push_bg k-pusher "$url" "$PUSH_S"
pusher=$!
pids+=("$pusher")
p_why=""
wait_received '^start primary .*call=publish&name=cam10&' 1 ||
  p_why+="  - the pusher's start for cam10 was not forwarded"$'\n'
sleep 1 # a keyframe or two in nginx before the first viewer

# (k) Two viewers at once, each with a signed play URL.
view=$(sign_play live cam10 "$P_A")
play k-viewer1 "$view" &
v1=$!
play k-viewer2 "$view" &
v2=$!
wait "$v1"
rc1=$?
wait "$v2"
rc2=$?
check "viewer 1's ffmpeg exited $rc1, want 0" test "$rc1" -eq 0
check "viewer 2's ffmpeg exited $rc2, want 0" test "$rc2" -eq 0
check "not two plays of cam10 forwarded (event play, key viewers)" \
  wait_received '^play viewers .*call=play&name=cam10&.*t=[0-9]{10}&k=[0-9a-f]{16}' 2
check "not two play_done of cam10 forwarded (event play_end)" \
  wait_received '^play_end viewers .*call=play_done&name=cam10&' 2
check "the two plays of cam10 did not come from two nginx clients" \
  test "$(received | grep -E '^play viewers .*name=cam10&' | grep -oE 'clientid=[0-9]+' | sort -u | wc -l)" -eq 2
check "the pusher stopped while viewers played" kill -0 "$pusher"
[ -z "$why" ] && { echo "  nginx-rtmp posted for a viewer:"; received | grep -E '^play' | head -n 2 | sed 's/^/    /'; }
result "(k) signed play URL plays, a second viewer of the same stream too: both ffmpeg exit 0, play and play_done forwarded"

# (l) Forged, expired, wrong-stream and push-key tokens: each player is refused.
clear_received
before=$(grep -c 'code=AuthencationFailed .*stream="cam10" event=play ' "$TMP/envoy-main.log")
forged="${view%k=*}k=0123456789abcdef"
expired=$(sign_play live cam10 "$P_A" "$(($(date +%s) - 3600))")
other=$(sign_play live cam11 "$P_A")
other="${view%%\?*}?${other#*\?}" # cam11's token on cam10's URL
pushkey=$(sign live cam10 "$P_A")
for spec in "forged $forged" "expired $expired" "wrong-stream $other" "push-key $pushkey"; do
  read -r what u <<<"$spec"
  play "l-$what" "$u"
  rc=$?
  check "the $what player's ffmpeg exited $rc, want a prompt failure (not 0, not 124)" \
    test "$rc" -ne 0 -a "$rc" -ne 124
  check "the pusher stopped after the $what play" kill -0 "$pusher"
done
after=$(grep -c 'code=AuthencationFailed .*stream="cam10" event=play ' "$TMP/envoy-main.log")
check "Envoy refused $((after - before)) plays of cam10 with AuthencationFailed, want 4" \
  test "$((after - before))" -eq 4
grep -q 'stream="cam10" event=play reason=play token expired' "$TMP/envoy-main.log" ||
  why+="  - Envoy's log does not say the cam10 play token expired"$'\n'
grep -q 'stream="cam10" event=play reason=play token signature does not match: it is a push token' \
  "$TMP/envoy-main.log" || why+="  - Envoy's log does not name the push token played"$'\n'
check "a refused play reached the receiver" test "$(received | grep -c '^play')" -eq 0
result "(l) forged, expired, wrong-stream and push-key play tokens refused: ffmpeg fails for each, nothing forwarded"

# (m) cam12: nobody pushes it. A signed play is let through (nginx-rtmp then keeps the
# player waiting for a stream: ffmpeg is still there when its 3 s are up), a forged one
# is refused at once.
clear_received
timeout 3 ffmpeg -hide_banner -nostdin -loglevel warning -i "$(sign_play live cam12 "$P_A")" \
  -t 2 -f null - >"$TMP/ffmpeg-m-signed.log" 2>&1
rc=$?
check "the signed cam12 player's ffmpeg exited $rc, want 124 (still waiting, not refused)" test "$rc" -eq 124
check "the signed play of cam12 was not forwarded" wait_received '^play viewers .*call=play&name=cam12&' 1
u=$(sign_play live cam12 "$P_A")
play n-forged "${u%k=*}k=fedcba9876543210"
rc=$?
check "the forged cam12 player's ffmpeg exited $rc, want a prompt failure" test "$rc" -ne 0 -a "$rc" -ne 124
grep -q 'code=AuthencationFailed .*stream="cam12" event=play ' "$TMP/envoy-main.log" ||
  why+="  - no AuthencationFailed for the forged cam12 play in Envoy's log"$'\n'
check "the forged play of cam12 was forwarded" test "$(received | grep -c '^play viewers .*call=play&name=cam12&')" -eq 1
result "(m) a play of a stream nobody pushes is decided by the token alone"

# (n) The publisher ran its whole time: exit 0, its start and end forwarded, never a duplicate.
wait "$pusher"
rc=$?
keep=()
for q in "${pids[@]}"; do [ "$q" = "$pusher" ] || keep+=("$q"); done
pids=("${keep[@]}")
why=$p_why
check "the pusher's ffmpeg exited $rc, want 0 (its push was cut)" test "$rc" -eq 0
check "the pusher's publish_done for cam10 was not forwarded" \
  wait_received '^end primary .*call=publish_done&name=cam10&' 1
refused_cam10=$(grep -c 'code=[A-Za-z]* .*stream="cam10" reason=' "$TMP/envoy-main.log")
check "Envoy refused $refused_cam10 push callbacks of cam10, want 0" test "$refused_cam10" -eq 0
result "(n) the publisher is unaffected by viewers, allowed or refused: its $PUSH_S s push ran whole, start and end forwarded"

# ---- liveness: on_update renews a live push's reservation --------------------------
# The `live` (shared-data) and `etcd` Envoys keep a reservation ttl_s (6 s) after the
# last start or update. Five pushes start on ingest A at once, each its own stream,
# and last LIVE_S (15 s):
#   cam5 on A:P_AU  -> live, on_update every 2 s          case (f)
#   cam6 on A:P_AN  -> live, no on_update (control)         case (g)
#   cam9 on A:P_AS  -> live, on_update every 12 s > ttl_s   case (h)
#   cam7 on A:P_AE  -> etcd, on_update every 2 s            case (i)
#   cam8 on A:P_AEN -> etcd, no on_update (control)         case (j)
# At 9 s cam9 is pushed on B:P_BN (A's reservation lapsed at ~7 s at the latest, and
# A's first update comes at ~12 s at the earliest); at 10 s, well past ttl_s, each
# other stream is pushed on B (P_BU, P_BN, P_BE, P_BEN). Each case keeps its
# failures in lwhy[case] until its result.
LIVE_S=15
declare -A bg lwhy
bg_push() { # name url seconds: push_bg, remembered by name
  push_bg "$@"
  bg[$1]=$!
  pids+=("$!")
}
bg_wait() { # name: waits for that push; returns ffmpeg's exit status
  local p=${bg[$1]} rc keep=() q
  wait "$p"
  rc=$?
  for q in "${pids[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  pids=("${keep[@]}")
  return "$rc"
}
lcheck() { # case description command...: check, for case
  local c=$1 d=$2
  shift 2
  "$@" || lwhy[$c]+="  - $d"$'\n'
}
lresult() { # case name
  why=${lwhy[$1]:-}
  result "$2"
}
at() { # SECONDS after L0
  sleep "$(awk -v t="$L0" -v s="$1" -v n="$(date +%s.%N)" 'BEGIN { d = t + s - n; print (d > 0 ? d : 0) }')"
}
since() { awk -v t="$L0" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - t }'; }
started() { # port stream: the pattern of that push's forwarded start
  echo "^start primary .*tcurl=rtmp://127.0.0.1:$1/live&.*call=publish&name=$2&"
}
updates() { # port stream: how many of that push's updates reached the receiver
  received | grep -cE "^update primary .*tcurl=rtmp://127.0.0.1:$1/live&.*call=update_publish&.*name=$2&"
}
refused_in() { # envoy stream: that Envoy refused a callback of stream with ExistStreamName
  grep -q "callback-guard rejected: code=ExistStreamName .*stream=\"$2\"" "$TMP/envoy-$1.log"
}

# The etcd Envoy's cluster is healthy before its pushes start.
healthy=
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$P_ETCD_ADMIN/stats?filter=^cluster\.etcd\.membership_healthy$" 2>/dev/null |
    grep -q ': 1$' && { healthy=1; break; }
  sleep 0.1
done
[ -n "$healthy" ] || die "Envoy's etcd cluster never became healthy"

clear_received
L0=$(date +%s.%N)
for spec in "cam5 $P_AU" "cam6 $P_AN" "cam9 $P_AS" "cam7 $P_AE" "cam8 $P_AEN"; do
  read -r name port <<<"$spec"
  bg_push "live-A-$name" "$(sign live "$name" "$port")" "$LIVE_S"
done
for spec in "f cam5 $P_AU" "g cam6 $P_AN" "h cam9 $P_AS" "i cam7 $P_AE" "j cam8 $P_AEN"; do
  read -r c name port <<<"$spec"
  lcheck "$c" "A's start for $name was not forwarded" wait_received "$(started "$port" "$name")" 1
done
echo "  liveness pushes on A started ($(since) s); ttl_s $TTL_S, B pushes at 9 s and 10 s"
# (o) A viewer of cam5 on A:P_AU, where on_update comes every 2 s: nginx-rtmp posts
# update_play for it, checked like a play's end and forwarded as play_update.
play o-viewer "$(sign_play live cam5 "$P_AU")" 5 &
o_viewer=$!

# (h) At 9 s, cam9 on B. B's push lasts past A's first update, so that B holds the
# stream then (its publish_done would free it).
at 9
bg_push live-B-cam9 "$(sign live cam9 "$P_BN")" 6
lcheck h "B's start for cam9 was not forwarded (the lapsed stream should be free)" \
  wait_received "$(started "$P_BN" cam9)" 1 3

# At 10 s, the same streams on B.
at 10
bg_push live-B-cam5 "$(sign live cam5 "$P_BU")" 3
bg_push live-B-cam6 "$(sign live cam6 "$P_BN")" 3
bg_push live-B-cam7 "$(sign live cam7 "$P_BE")" 3
bg_push live-B-cam8 "$(sign live cam8 "$P_BEN")" 3
# (g) and (j): B got in while A's push of the same stream is still live.
lcheck g "B's start for cam6 was not forwarded (the reservation should have lapsed)" \
  wait_received "$(started "$P_BN" cam6)" 1 3
lcheck g "A's push of cam6 was not live any more when B's started" kill -0 "${bg[live-A-cam6]}"
lcheck j "B's start for cam8 was not forwarded (the reservation should have lapsed)" \
  wait_received "$(started "$P_BEN" cam8)" 1 3
lcheck j "A's push of cam8 was not live any more when B's started" kill -0 "${bg[live-A-cam8]}"
for spec in "f cam5 $P_AU" "i cam7 $P_AE"; do
  read -r c name port <<<"$spec"
  lcheck "$c" "A's push of $name was not live any more when B's was refused" kill -0 "${bg[live-A-$name]}"
done
# (h) A's first update, after B took cam9, is refused (409) and nginx ends A's push:
# its ffmpeg fails before its LIVE_S are over.
bg_wait live-A-cam9
h_rc=$?
h_done=$(since)
lcheck h "ffmpeg on A (cam9) exited 0, want a failure (nginx should have ended the push)" test "$h_rc" -ne 0
lcheck h "no ExistStreamName for cam9 in the live Envoy's log" refused_in live cam9
lcheck h "A's first update for cam9 reached the receiver (it should have been refused)" \
  test "$(updates "$P_AS" cam9)" -eq 0

for spec in "f cam5 1" "i cam7 1" "g cam6 0" "j cam8 0" "h cam9 0"; do
  read -r c name want <<<"$spec"
  bg_wait "live-B-$name"
  rc=$?
  lcheck "$c" "ffmpeg on B ($name) exited $rc, want $want" test "$rc" -eq "$want"
done
b_done=$(since)
lcheck f "no ExistStreamName for cam5 in the live Envoy's log" refused_in live cam5
lcheck i "no ExistStreamName for cam7 in the etcd Envoy's log" refused_in etcd cam7
lcheck f "B's start for cam5 reached the receiver" test "$(received | grep -cE "$(started "$P_BU" cam5)")" -eq 0
lcheck i "B's start for cam7 reached the receiver" test "$(received | grep -cE "$(started "$P_BE" cam7)")" -eq 0

# A's pushes of cam5, cam6, cam7, cam8 ran their whole LIVE_S.
for spec in "f cam5" "g cam6" "i cam7" "j cam8"; do
  read -r c name <<<"$spec"
  bg_wait "live-A-$name"
  rc=$?
  lcheck "$c" "ffmpeg on A ($name) exited $rc, want 0 (the push was cut)" test "$rc" -eq 0
done
a_done=$(since)
lcheck f "A's publish_done for cam5 was not forwarded" \
  wait_received "^end primary .*tcurl=rtmp://127.0.0.1:$P_AU/live&.*call=publish_done&name=cam5&" 1
lcheck i "A's publish_done for cam7 was not forwarded" \
  wait_received "^end primary .*tcurl=rtmp://127.0.0.1:$P_AE/live&.*call=publish_done&name=cam7&" 1
n5=$(updates "$P_AU" cam5)
n7=$(updates "$P_AE" cam7)
lcheck f "only $n5 updates of cam5 reached the receiver, want >= 5" test "$n5" -ge 5
lcheck i "only $n7 updates of cam7 reached the receiver, want >= 5" test "$n7" -ge 5
lcheck g "updates of cam6 reached the receiver (no on_update there)" test "$(updates "$P_AN" cam6)" -eq 0
lcheck j "updates of cam8 reached the receiver (no on_update there)" test "$(updates "$P_AEN" cam8)" -eq 0
cadence=$(received | grep -E "^update primary .*tcurl=rtmp://127.0.0.1:$P_AU/live&.*name=cam5&" |
  grep -oE '&time=[0-9]+' | cut -d= -f2 | tr '\n' ' ')

# (f), (i): once A's push has ended, B pushes the stream.
bg_push live-B2-cam5 "$(sign live cam5 "$P_BU")" 2
bg_push live-B2-cam7 "$(sign live cam7 "$P_BE")" 2
for spec in "f cam5 $P_BU" "i cam7 $P_BE"; do
  read -r c name port <<<"$spec"
  bg_wait "live-B2-$name"
  rc=$?
  lcheck "$c" "ffmpeg on B ($name, after A's end) exited $rc, want 0" test "$rc" -eq 0
  lcheck "$c" "B's start for $name (after A's end) was not forwarded" wait_received "$(started "$port" "$name")" 1
done

echo "  B pushed at 10 s; B's pushes done at $b_done s, A's at $a_done s ($LIVE_S s pushes)"
echo "  cam5 update_publish forwarded: $n5, at time= $cadence(s since publish); cam7 (etcd): $n7"
echo "  cam9: A's ffmpeg exited $h_rc at $h_done s, after nginx ended the push; its last lines:"
tail -n 3 "$TMP/ffmpeg-live-A-cam9.log" | sed 's/^/    /'
received | grep -E "^update primary .*name=cam5&" | head -n 1 | sed 's/^/    first update: /'
wait "$o_viewer"
o_rc=$?
why=""
check "the cam5 viewer's ffmpeg exited $o_rc, want 0" test "$o_rc" -eq 0
check "no update_play of the cam5 viewer was forwarded as play_update" \
  wait_received "^play_update viewers .*tcurl=rtmp://127.0.0.1:$P_AU/live&.*call=update_play&time=[0-9]+&timestamp=[0-9]+&name=cam5&" 1
check "the cam5 viewer's play or play_done was not forwarded" \
  wait_received "^play(_end)? viewers .*tcurl=rtmp://127.0.0.1:$P_AU/live&.*call=play(_done)?&name=cam5&" 2
lwhy[o]=$why
lresult f "(f) shared-data, on_update every 2 s: A's 15 s push stays reserved past ttl_s 6 s (B at 10 s refused, ExistStreamName), updates forwarded, B pushes after A's end"
lresult g "(g) control, shared-data, no on_update: B at 10 s admitted while A is still live (the reservation lapsed)"
lresult h "(h) shared-data, on_update every 12 s > ttl_s: B at 9 s admitted (lapsed), A's first update refused (ExistStreamName) and nginx ends A's push"
lresult i "(i) etcd store, on_update every 2 s: A's 15 s push stays reserved past ttl_s 6 s, B at 10 s refused, B pushes after A's end"
lresult j "(j) control, etcd store, no on_update: B at 10 s admitted while A is still live"
lresult o "(o) a viewer of a live push with on_update: its update_play are forwarded as play_update, the viewer plays on"

# ---- summary ----------------------------------------------------------------------
if [ "$failed" -gt 0 ]; then
  show_logs
fi
echo "== $(($(date +%s) - T0)) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
