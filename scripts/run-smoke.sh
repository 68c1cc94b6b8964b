#!/usr/bin/env bash
# Checks the `make run` demo as a user would use it: starts scripts/run.sh, pastes the
# two curl commands it prints, expects 200 for the valid one and 403 AuthencationFailed
# for the forged one, then stops everything. Used by `make run-smoke` (in .ci/run).
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

for _ in $(seq 1 150); do
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
# Each command as printed, with curl told to append the status after the body.
with_status='curl -s -w status=%{http_code} '
paste_cmd() { eval "${1/curl -i /$with_status}"; }

fail=0
valid=$(paste_cmd "${cmds[0]}")
forged=$(paste_cmd "${cmds[1]}")
case "$valid" in
  *"}status=200") echo "PASS valid callback forwarded: $valid" ;;
  *) echo "FAIL valid callback: $valid" >&2; fail=1 ;;
esac
case "$forged" in
  *'"Code":"AuthencationFailed"'*"}status=403") echo "PASS forged token refused: $forged" ;;
  *) echo "FAIL forged token: $forged" >&2; fail=1 ;;
esac
if [ "$fail" -ne 0 ]; then
  cat "$out"
  tail -n 30 /tmp/callback-guard-envoy.log 2>/dev/null || true
fi
exit "$fail"
