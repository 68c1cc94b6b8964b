#!/usr/bin/env bash
# `make run`: Envoy with callback-guard in front of the demo receiver, on this machine.
# Prints ready-to-paste curl commands; Ctrl-C stops everything started here.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_BIN="${ENVOY_BIN:-$PWD/.venv/bin/envoy}"
# NATIVE=1 (`make run-native`): the same demo on the native module (Envoy >= 1.38).
if [ "${NATIVE:-0}" = 1 ]; then
  CONFIG=envoy/envoy-native.yaml
  export ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$PWD/target/native"
else
  CONFIG=envoy/envoy.yaml
fi
CLI=target/release/callback-guard
RECEIVER=target/release/callback-receiver
# The demo key; set your own with CALLBACK_GUARD_PUSH_KEY=... make run
DEMO_KEY=demo0key0123456789
export CALLBACK_GUARD_PUSH_KEY="${CALLBACK_GUARD_PUSH_KEY:-$DEMO_KEY}"

command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }

for port in 8080 9901 10000; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port on 127.0.0.1 is busy; stop what uses it and retry" >&2
    exit 1
  fi
done

pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped."
}
trap cleanup INT TERM EXIT

"$RECEIVER" --listen 127.0.0.1:8080 &
pids+=($!)
"$ENVOY_BIN" -c "$CONFIG" --concurrency 2 -l info --disable-hot-restart \
  --log-path /tmp/callback-guard-envoy.log --file-flush-interval-msec 100 &
pids+=($!)

for _ in $(seq 1 100); do
  if curl -fs http://127.0.0.1:9901/ready >/dev/null 2>&1; then break; fi
  sleep 0.2
done
curl -fs http://127.0.0.1:9901/ready >/dev/null || { echo "Envoy did not become ready; see /tmp/callback-guard-envoy.log" >&2; exit 1; }

stream="cam$RANDOM"
# The event time is taken when the command is pasted (max_event_age_s is 10 minutes;
# the token itself is valid for an hour).
now="'\"\$(date +%s)\"'"
query=$("$CLI" sign --scheme ks_md5 --key-env CALLBACK_GUARD_PUSH_KEY --app live --stream "$stream" --expires-in 3600)
t=${query#t=}; t=${t%%&*}; k=${query##*k=}
# The sign command as the user pastes it, into a shell that may not have the key: the
# demo key is public, so it is spelled out; a key of your own is not printed.
sign_cmd="$CLI sign --scheme ks_md5 --key-env CALLBACK_GUARD_PUSH_KEY --app live --stream $stream --expires-at $t"
if [ "$CALLBACK_GUARD_PUSH_KEY" = "$DEMO_KEY" ]; then
  sign_line="CALLBACK_GUARD_PUSH_KEY=$DEMO_KEY $sign_cmd"
else
  sign_line="$sign_cmd    # with your CALLBACK_GUARD_PUSH_KEY exported"
fi
body() { printf '{"Version":"1.0","App":"live","Pubdomain":"push.example.com","Stream":"%s","PubStartUnixTime":%s000,"NotifyType":"PubStart","ClientIp":" ","ClientPort":" ","Node":" ","PubParam":{"t":"%s","k":"%s"}}' "$stream" "$now" "$t" "$1"; }

cat <<MSG

callback-guard ($CONFIG) is running: Envoy on http://127.0.0.1:10000 (admin :9901), receiver on :8080.
Envoy log: /tmp/callback-guard-envoy.log

A valid new-version PubStart:

  curl -i http://127.0.0.1:10000/callback -H 'content-type: application/json' -d '$(body "$k")'

Its push token t=$t&k=$k was minted by (use --expires-in 3600 for a fresh one):

  $sign_line

The same callback with a forged token (answered 403 AuthencationFailed by Envoy; the receiver sees nothing):

  curl -i http://127.0.0.1:10000/callback -H 'content-type: application/json' -d '$(body 0123456789abcdef)'

Counters: curl -s http://127.0.0.1:9901/stats/prometheus | grep callback_guard
Press Ctrl-C to stop.
MSG

wait -n "${pids[@]}"
