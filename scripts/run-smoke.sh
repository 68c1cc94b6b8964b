#!/usr/bin/env bash
# Checks the `make run` demo as a user would use it: starts scripts/run.sh, pastes the
# two curl commands it prints, expects 200 for the valid one and 403 AuthencationFailed
# for the forged one, then 409 ExistStreamName for the valid one pasted again a second
# later (another push of a live stream, as the README says). It also pastes the printed
# `callback-guard sign` line, in a shell without CALLBACK_GUARD_PUSH_KEY (a fresh
# terminal), and expects exactly the token of the valid command. Then it stops everything.
# Used by `make run-smoke` (in .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

out=$(mktemp)
setsid ./scripts/run.sh >"$out" 2>&1 &
pid=$!
stop() {
  kill -TERM -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$out"
}
trap stop EXIT

# Up to 2 minutes: run.sh may first install curl on a fresh machine.
for _ in $(seq 1 600); do
  grep -q "Press Ctrl-C" "$out" && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
if ! grep -q "Press Ctrl-C" "$out"; then
  cat "$out"
  echo "FAIL: make run did not start" >&2
  exit 1
fi

mapfile -t cmds < <(grep '^  curl -i ' "$out")
if [ "${#cmds[@]}" -ne 2 ]; then
  cat "$out"
  echo "FAIL: expected two curl commands in the output of make run" >&2
  exit 1
fi
# The event time must be taken when the command is pasted, not when make run started:
# max_event_age_s would refuse the command ten minutes later.
for c in "${cmds[@]}"; do
  case "$c" in
    *"'\"\$(date +%s)\"'000"*) ;;
    *) echo "FAIL: a printed command carries a fixed event time: $c" >&2; exit 1 ;;
  esac
done
# The sign line as printed, pasted into a shell without the key in its environment: it
# must succeed and mint exactly the token of the valid command.
mapfile -t signs < <(grep -E '^  (CALLBACK_GUARD_PUSH_KEY=[^ ]+ )?target/release/callback-guard sign ' "$out")
if [ "${#signs[@]}" -ne 1 ]; then
  cat "$out"
  echo "FAIL: expected one callback-guard sign line in the output of make run" >&2
  exit 1
fi
want=$(grep -o '"PubParam":{"t":"[0-9]*","k":"[0-9a-f]*"}' <<<"${cmds[0]}" | sed -E 's/.*"t":"([0-9]+)","k":"([0-9a-f]+)".*/t=\1\&k=\2/')
sign_fail=0
if minted=$(env -u CALLBACK_GUARD_PUSH_KEY bash -c "${signs[0]}" 2>&1) && [ -n "$want" ] && [ "$minted" = "$want" ]; then
  echo "PASS printed sign line pasted: $minted, the token of the valid command"
else
  echo "FAIL printed sign line: ${signs[0]} -> $minted (the valid command carries ${want:-no token})" >&2
  sign_fail=1
fi
# Each command as printed, with curl told to append the status after the body.
with_status='curl -s -w status=%{http_code} '
paste_cmd() { eval "${1/curl -i /$with_status}"; }

fail=$sign_fail
valid=$(paste_cmd "${cmds[0]}") || true
forged=$(paste_cmd "${cmds[1]}") || true
sleep 1.1
again=$(paste_cmd "${cmds[0]}") || true
case "$valid" in
  *"}status=200") echo "PASS valid callback forwarded: $valid" ;;
  *) echo "FAIL valid callback: $valid" >&2; fail=1 ;;
esac
case "$forged" in
  *'"Code":"AuthencationFailed"'*"}status=403") echo "PASS forged token refused: $forged" ;;
  *) echo "FAIL forged token: $forged" >&2; fail=1 ;;
esac
case "$again" in
  *'"Code":"ExistStreamName"'*"}status=409") echo "PASS valid callback pasted again: another push of a live stream, refused" ;;
  *) echo "FAIL valid callback pasted again: $again" >&2; fail=1 ;;
esac
if [ "$fail" -ne 0 ]; then
  cat "$out"
  tail -n 30 /tmp/callback-guard-envoy.log 2>/dev/null || true
fi
exit "$fail"
