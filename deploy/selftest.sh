#!/usr/bin/env bash
# The manifests of deploy/istio, deploy/envoy-gateway and deploy/envoy-gateway-native,
# tested in a real Envoy (`make test-deploy`).
#
# No Kubernetes here: deploy/extract.py takes the Wasm filter out of each set of manifests
# (as istio-agent / Envoy Gateway would hand it to Envoy, code made local: a copy of the
# built module) and writes a static bootstrap. This script then, for each mesh:
#   1. `envoy --mode validate` with Envoy 1.40.0 and 1.36.2 (ENVOY_OLD)
#      (istio: with the ConfigMap's bootstrap override given as --config-yaml, as pilot-agent
#      does, over a bootstrap that has Istio's stats inclusion list);
#   2. `callback-guard check-config` on the plugin JSON taken from the manifest;
# and with each of those Envoys, live, in front of callback-receiver:
#   3. a forged callback -> 403 AuthencationFailed (so the body reached the filter: the flag
#      is in force), a signed one -> 200 from the receiver, /stats/prometheus shows
#      callback_guard_requests_rejected{code="AuthencationFailed"} 1, the play refusal
#      counters with the same code label (callback_guard_plays_rejected{code=...}) and the
#      store_errors counters with a kind label; envoy-gateway: a route of another HTTPRoute on the same
#      listener -> 200 (the RBAC filter is scoped to the callback routes);
#   4. the manifest's own sender CIDRs (placeholders, not 127.0.0.1): 403, sender refused;
#   5. allow_on_headers_stop_iteration removed: 500 InternalError and Envoy's critical line;
#      with the test-only module of `make wasm-crash-test`: FAIL_RELOAD as the
#      manifest writes it, a crashed VM answers 503 and is back after the backoff;
#   6. envoy-gateway (RBAC defence) and istio with the optional RBAC file: the Wasm filter
#      taken out of the chain (what Envoy runs when it could not create it) -> forged and
#      signed callbacks 403 "RBAC: access denied", the receiver gets nothing, rbac.denied
#      counts; envoy-gateway: filter_state_mark removed from the plugin config -> a signed
#      callback 403 RBAC;
# and, against edited copies of the manifests (extract.py must refuse them):
#   7. istio: proxyStatsMatcher prefix "callback_guard" (without "wasmcustom.") keeps no counter;
#   8. envoy-gateway: a wrong filter, listener or route name in the EnvoyPatchPolicy, the
#      RBAC patch left out, failure_policy left out, a stats tag left out, the code tag's
#      regex without plays_rejected (istio too).
#
# envoy-gateway-native (callback-guard's native module, EnvoyExtensionPolicy dynamicModules):
# extract.py builds the DynamicModuleFilter Envoy Gateway would (module.local.filename = a
# copy of target/native/libcallback_guard.so), then 1-4 and 6 as for envoy-gateway on the
# Envoys that load the module, 1.40.0 and 1.38.3 (ENVOY_NATIVE_OLD); the counters must have
# the wasm's Prometheus names (the manifest's runtime flag). 5 does not apply (no flag, no
# VM, no FAIL_RELOAD). 8: a module missing from the EnvoyProxy allowlist, doNotClose, the
# runtime flag or a stats tag left out, the RBAC patch enabled listener-wide.
#
# Needs: make wasm wasm-crash-test native bins pytools envoy envoy-oldest, and Envoy 1.38.3
# (`make test-deploy` builds and installs them). Free ports on 127.0.0.1 only; every process it starts is stopped; every
# wait is bounded, and the whole run is stopped after SELFTEST_TIMEOUT seconds (default
# 600). ENVOY_BIN names the 1.40.0 Envoy (default .venv/bin/envoy), ENVOY_OLD the 1.36.2
# one (default .venv-envoy-1.36.2/bin/envoy). Whatever is missing (an Envoy, the crash
# module) is a loud SKIP, counted and repeated at the end, or a FAILURE when CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${SELFTEST_UNDER_TIMEOUT:-}" ]; then
  export SELFTEST_UNDER_TIMEOUT=1
  exec timeout --kill-after=10 "${SELFTEST_TIMEOUT:-600}" bash "$0" "$@"
fi

T0=$(date +%s)
PY="${PYTHON:-.venv-tools/bin/python}"
ENVOY_BIN="${ENVOY_BIN:-$PWD/.venv/bin/envoy}"
ENVOY_OLD="${ENVOY_OLD:-$PWD/.venv-envoy-1.36.2/bin/envoy}"
# The oldest Envoy that loads the native module (dynamic modules ABI of 1.38).
ENVOY_NATIVE_OLD="${ENVOY_NATIVE_OLD:-$PWD/.venv-envoy-1.38.3/bin/envoy}"
NATIVE_SRC=target/native/libcallback_guard.so
CLI=target/release/callback-guard
RECEIVER=target/release/callback-receiver
WASM_SRC=target/wasm32-wasip1/release/callback_guard.wasm
CRASH_WASM=target/crash-test/wasm32-wasip1/release/callback_guard.wasm
export CALLBACK_GUARD_PUSH_KEY="${CALLBACK_GUARD_PUSH_KEY:-demo0key0123456789}"

for f in "$PY" "$CLI" "$RECEIVER" "$WASM_SRC"; do
  [ -e "$f" ] || { echo "selftest: FAIL: missing $f (make wasm bins pytools)" >&2; exit 2; }
done

tmp="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "selftest: FAIL: stopped (timeout or signal)"; exit 124' TERM INT
cp "$WASM_SRC" "$tmp/callback_guard.wasm"   # a rebuild meanwhile cannot change it under us
[ -f "$CRASH_WASM" ] && cp "$CRASH_WASM" "$tmp/crash.wasm"
[ -f "$NATIVE_SRC" ] && cp "$NATIVE_SRC" "$tmp/libcallback_guard.so"

passed=0
failed=0
skipped=0
skips=()
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAIL: $*"; failed=$((failed + 1)); }
# What cannot run here: a failure with CI=true, else a loud SKIP (repeated at the end).
skip() { # what
  if [ "${CI:-}" = "true" ]; then bad "CI=true and $1"; return; fi
  echo "############ SKIP: $1"
  skipped=$((skipped + 1)); skips+=("$1")
}

envoy_version() { "$1" --version | grep -o '/[0-9]*\.[0-9]*\.[0-9]*/' | head -1 | tr -d /; }
envoys=()
if [ -x "$ENVOY_BIN" ]; then envoys+=("$ENVOY_BIN"); fi
if [ -x "$ENVOY_OLD" ] && [ "$ENVOY_OLD" != "$ENVOY_BIN" ]; then envoys+=("$ENVOY_OLD"); fi
if [ ! -x "$ENVOY_BIN" ] && [ "${CI:-}" = "true" ]; then
  echo "selftest: FAIL: CI=true and no Envoy at $ENVOY_BIN (make envoy)"; exit 1
fi
if [ "${#envoys[@]}" = 0 ]; then
  skip "no Envoy at $ENVOY_BIN (make envoy): only extract.py and check-config run"
fi
if [ ! -x "$ENVOY_OLD" ]; then
  skip "no Envoy 1.36.2 at $ENVOY_OLD (make envoy-oldest): validate and live parts on 1.40.0 only"
fi
if [ ! -f "$CRASH_WASM" ]; then
  skip "no crash module at $CRASH_WASM (make wasm-crash-test): the FAIL_RELOAD crash tests do not run"
fi
# The Envoys that load the native module: 1.40.0 and 1.38.3 (1.36.2 has another ABI).
native_envoys=()
meshes=(istio envoy-gateway)
if [ ! -f "$NATIVE_SRC" ]; then
  skip "no native module at $NATIVE_SRC (make native): deploy/envoy-gateway-native does not run"
else
  meshes+=(envoy-gateway-native)
  if [ -x "$ENVOY_BIN" ]; then native_envoys+=("$ENVOY_BIN"); fi
  if [ -x "$ENVOY_NATIVE_OLD" ] && [ "$ENVOY_NATIVE_OLD" != "$ENVOY_BIN" ]; then
    native_envoys+=("$ENVOY_NATIVE_OLD")
  else
    skip "no Envoy 1.38.3 at $ENVOY_NATIVE_OLD (make envoy ENVOY_VERSION=1.38.3): the native manifests on 1.40.0 only"
  fi
fi

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); ADMIN=$(free_port); UPSTREAM=$(free_port)

# What extract.py loads: the wasm, or for envoy-gateway-native the module.
code_args() { # mesh
  if [ "$1" = envoy-gateway-native ]; then echo --module "$tmp/libcallback_guard.so"; else echo --wasm "$tmp/callback_guard.wasm"; fi
}
# The Envoys a mesh's manifests run on.
envoys_for() { # mesh -> sets run_envoys
  if [ "$1" = envoy-gateway-native ]; then run_envoys=("${native_envoys[@]}"); else run_envoys=("${envoys[@]}"); fi
}
extract() { # mesh out [extra args...]
  local mesh=$1 out=$2; shift 2
  local over=(); [ "$mesh" = istio ] && over=(--override-out "$out.override")
  # shellcheck disable=SC2046 # two words: the option and the path
  "$PY" deploy/extract.py "$mesh" $(code_args "$mesh") --port "$PORT" \
    --admin-port "$ADMIN" --upstream "127.0.0.1:$UPSTREAM" -o "$out" "${over[@]}" "$@"
}

envoy_pid=""
ENVOY=""
start_envoy() { # config log [concurrency]
  # Istio: the ConfigMap's bootstrap override, merged by Envoy as pilot-agent has it merged.
  local over=(); [ -s "$1.override" ] && over=(--config-yaml "$(cat "$1.override")")
  "$ENVOY" -c "$1" "${over[@]}" --disable-hot-restart --concurrency "${3:-2}" -l info >"$2" 2>&1 &
  envoy_pid=$!
  pids+=("$envoy_pid")
  for _ in $(seq 150); do
    curl -fs --max-time 2 "http://127.0.0.1:$ADMIN/ready" >/dev/null 2>&1 && return 0
    kill -0 "$envoy_pid" 2>/dev/null || { tail -5 "$2"; return 1; }
    sleep 0.1
  done
  return 1
}
stop_envoy() { kill "$envoy_pid" 2>/dev/null || true; wait "$envoy_pid" 2>/dev/null || true; }

callback() { # k-value stream t [path [header]] -> prints body, then "status=NNN"
  local now; now=$(date +%s)
  curl -s --max-time 10 -X POST "http://127.0.0.1:$PORT${4:-/callback}" -H 'content-type: application/json' ${5:+-H "$5"} \
    -d '{"App":"live","Pubdomain":"p.example.com","Stream":"'"$2"'","PubStartUnixTime":'"$now"'000,"NotifyType":"PubStart","PubParam":{"t":"'"$3"'","k":"'"$1"'"}}' \
    -w '\nstatus=%{http_code}' || echo "status=000"
}
forged() { callback 0123456789abcdef "s$RANDOM$RANDOM" "$(($(date +%s) + 600))" "${1:-}"; }
signed() { # [path [header]]
  local stream="cam$RANDOM$RANDOM" q t k
  q=$("$CLI" sign --scheme ks_md5 --key-env CALLBACK_GUARD_PUSH_KEY --app live --stream "$stream" --expires-in 3600)
  t=${q#t=}; t=${t%%&*}; k=${q##*k=}
  callback "$k" "$stream" "$t" "${1:-}" "${2:-}"
}
received() { curl -s --max-time 5 "http://127.0.0.1:$UPSTREAM/__count"; }
stat_sum() { curl -s --max-time 5 "http://127.0.0.1:$ADMIN/stats?filter=$1" | awk -F': ' -v n="$1" '$1 ~ n {s += $2} END {print s + 0}'; }
status_of() { grep -o 'status=[0-9]*' <<<"$1" | cut -d= -f2; }

"$RECEIVER" --listen "127.0.0.1:$UPSTREAM" --quiet >"$tmp/receiver.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -fs --max-time 1 "http://127.0.0.1:$UPSTREAM/__health" >/dev/null 2>&1 && break; sleep 0.1; done

# -------------------------------------------------------------------------- static parts
for mesh in "${meshes[@]}"; do
  echo "== $mesh: extract.py, check-config, envoy --mode validate"
  if extract "$mesh" "$tmp/$mesh.yaml" --add-allow-cidr 127.0.0.0/8 2>"$tmp/extract.log"; then
    ok "$mesh: extract.py took the filter out of deploy/$mesh ($(grep -c . "$tmp/extract.log") checks/notes)"
  else
    bad "$mesh: extract.py: $(cat "$tmp/extract.log")"; continue
  fi
  # shellcheck disable=SC2046
  if "$PY" deploy/extract.py "$mesh" $(code_args "$mesh") -o /dev/null \
       --plugin-config-out "$tmp/$mesh-plugin.json" 2>/dev/null &&
     out=$("$CLI" check-config "$tmp/$mesh-plugin.json" 2>&1) && grep -qx ok <<<"$out"; then
    ok "$mesh: callback-guard check-config on the manifest's plugin JSON: $(tr '\n' ' ' <<<"$out" | cut -c1-160)"
  else
    bad "$mesh: check-config: ${out:-extract failed}"
  fi
  envoys_for "$mesh"
  for e in "${run_envoys[@]}"; do
    v=$(envoy_version "$e")
    over=(); [ -s "$tmp/$mesh.yaml.override" ] && over=(--config-yaml "$(cat "$tmp/$mesh.yaml.override")")
    if out=$("$e" --mode validate -c "$tmp/$mesh.yaml" "${over[@]}" -l error 2>&1) && grep -q "OK" <<<"$out"; then
      ok "$mesh: envoy $v --mode validate: $(tail -1 <<<"$out")"
    else
      bad "$mesh: envoy $v --mode validate: $out"
    fi
  done
done
if extract istio "$tmp/istio-rbac.yaml" --istio-rbac --add-allow-cidr 127.0.0.0/8 2>"$tmp/extract.log"; then
  ok "istio + optional/require-mark-rbac.yaml: $(grep -o 'RBAC defence.*' "$tmp/extract.log")"
else
  bad "istio + optional RBAC: $(cat "$tmp/extract.log")"
fi

# -------------------------------------------------------------------------- live parts
live_suite() { # mesh
  local mesh=$1 cfg="$tmp/$1.yaml" v r m n before
  v=$(envoy_version "$ENVOY")
  echo "== $mesh: live, Envoy $v"

  # 3. forged -> 403, signed -> 200, labelled counters
  case $mesh in envoy-gateway*) extract "$mesh" "$cfg" --add-allow-cidr 127.0.0.0/8 --extra-route /other 2>/dev/null ;; esac
  if ! start_envoy "$cfg" "$tmp/$mesh-$v.log"; then bad "$mesh/$v: Envoy did not become ready"; return; fi
  r=$(forged)
  if [ "$(status_of "$r")" = 403 ] && grep -q '"AuthencationFailed"' <<<"$r" && grep -q 'signature does not match' <<<"$r"; then
    ok "$mesh/$v: forged callback -> 403 $(head -1 <<<"$r" | cut -c1-150)"
  else
    bad "$mesh/$v: forged callback -> $r"
  fi
  before=$(received)
  r=$(signed)
  if [ "$(status_of "$r")" = 200 ] && [ "$(received)" = $((before + 1)) ]; then
    ok "$mesh/$v: signed callback -> 200 $(head -1 <<<"$r") (the receiver got it)"
  else
    bad "$mesh/$v: signed callback -> $r"
  fi
  # callback-guard batches its counters per tick: poll (bounded) until the rejection shows.
  for _ in $(seq 30); do
    m=$(curl -s --max-time 5 "http://127.0.0.1:$ADMIN/stats/prometheus")
    n=$(grep '^callback_guard_requests_rejected{code="AuthencationFailed"}' <<<"$m" || true)
    [ "$n" = 'callback_guard_requests_rejected{code="AuthencationFailed"} 1' ] && break
    sleep 0.1
  done
  if [ "$n" = 'callback_guard_requests_rejected{code="AuthencationFailed"} 1' ]; then
    ok "$mesh/$v: /stats/prometheus: $n"
  else
    bad "$mesh/$v: code-labelled counter: '$n'"
  fi
  n=$(grep -c '^callback_guard_store_errors{kind="' <<<"$m" || true)
  if [ "$n" -gt 0 ] && ! grep -q '^callback_guard_store_errors_' <<<"$m"; then
    ok "$mesh/$v: /stats/prometheus: $n callback_guard_store_errors{kind=...} series, e.g. $(grep -m1 '^callback_guard_store_errors{' <<<"$m")"
  else
    bad "$mesh/$v: kind-labelled counter: $(grep '^callback_guard_store_errors' <<<"$m" | head -3 | tr '\n' ' ')"
  fi
  # Plays are counted apart (callback_guard_plays_*), their refusals under the same code tag.
  n=$(grep -c '^callback_guard_plays_rejected{code="' <<<"$m" || true)
  if [ "$n" -gt 0 ] && ! grep -q '^callback_guard_plays_rejected_' <<<"$m" && grep -q '^callback_guard_plays_forwarded{} ' <<<"$m"; then
    ok "$mesh/$v: /stats/prometheus: callback_guard_plays_forwarded and $n callback_guard_plays_rejected{code=...} series, e.g. $(grep -m1 '^callback_guard_plays_rejected{' <<<"$m")"
  else
    bad "$mesh/$v: play counters: $(grep '^callback_guard_plays_' <<<"$m" | head -3 | tr '\n' ' ')"
  fi
  if [ "$mesh" != istio ]; then
    before=$(received)
    r=$(forged /other)
    if [ "$(status_of "$r")" = 200 ] && [ "$(received)" = $((before + 1)) ]; then
      ok "$mesh/$v: route /other of another HTTPRoute -> 200 from the receiver (neither callback-guard nor the RBAC filter runs there)"
    else
      bad "$mesh/$v: route /other -> $r"
    fi
  fi
  stop_envoy

  # 4. the manifest's own allow_cidrs: a local sender is refused before its token is read
  extract "$mesh" "$tmp/$mesh-cidr.yaml" 2>/dev/null
  if start_envoy "$tmp/$mesh-cidr.yaml" "$tmp/$mesh-cidr-$v.log"; then
    r=$(forged)
    if [ "$(status_of "$r")" = 403 ] && grep -qi 'sender' <<<"$r"; then ok "$mesh/$v: manifest allow_cidrs in force -> 403 $(head -1 <<<"$r" | cut -c1-140)"; else bad "$mesh/$v: manifest CIDRs -> $r"; fi
  else
    bad "$mesh/$v: Envoy (manifest CIDRs) did not start"
  fi
  stop_envoy

  # 5. without allow_on_headers_stop_iteration (the wasm only: the module holds the
  # headers itself, and has no VM to crash and reload)
  if [ "$mesh" != envoy-gateway-native ]; then
  extract "$mesh" "$tmp/$mesh-noflag.yaml" --add-allow-cidr 127.0.0.0/8 --drop-stop-iteration 2>/dev/null
  if start_envoy "$tmp/$mesh-noflag.yaml" "$tmp/$mesh-noflag-$v.log"; then
    r=$(forged)
    local crit=""
    for _ in $(seq 20); do
      crit=$(grep -m1 'critical' "$tmp/$mesh-noflag-$v.log" | grep 'allow_on_headers_stop_iteration' || true)
      [ -n "$crit" ] && break; sleep 0.1
    done
    if [ "$(status_of "$r")" = 500 ] && grep -q '"InternalError"' <<<"$r" && [ -n "$crit" ]; then
      ok "$mesh/$v: flag removed -> 500 $(head -1 <<<"$r" | cut -c1-120)"
      echo "    log: ${crit:0:220}"
    else
      bad "$mesh/$v: flag removed -> $r / log: ${crit:-no critical line}"
    fi
  else
    bad "$mesh/$v: Envoy (no flag) did not start"
  fi
  stop_envoy

  # 5b. FAIL_RELOAD as the manifest writes it: a crashed VM refuses (503) and comes back.
  # Needs the test-only module of `make wasm-crash-test` (aborts its VM on a marker header).
  if [ -f "$CRASH_WASM" ]; then
    extract "$mesh" "$tmp/$mesh-crash.yaml" --wasm "$tmp/crash.wasm" --add-allow-cidr 127.0.0.0/8 2>/dev/null
    if start_envoy "$tmp/$mesh-crash.yaml" "$tmp/$mesh-crash-$v.log" 1; then
      before=$(received)
      r=$(signed /callback 'x-callback-guard-test-crash: abort')
      local t0 refused=0 waited
      t0=$(date +%s%N)
      while r2=$(forged) && [ "$(status_of "$r2")" = 503 ]; do
        refused=$((refused + 1))
        [ $(( ($(date +%s%N) - t0) / 1000000 )) -lt 15000 ] || break
        sleep 0.1
      done
      waited=$(( ($(date +%s%N) - t0) / 1000000 ))
      n=$(stat_sum 'vm_reload_success')
      if [ "$(status_of "$r")" = 503 ] && [ "$(status_of "$r2")" = 403 ] && grep -q AuthencationFailed <<<"$r2" &&
         [ "$(received)" = "$before" ] && [ "$n" -ge 1 ]; then
        ok "$mesh/$v: FAIL_RELOAD: the crashing callback -> 503, $refused more refused (503) for ${waited} ms, then decided again (forged -> 403), vm_reload_success $n, nothing forwarded"
      else
        bad "$mesh/$v: FAIL_RELOAD: crash -> $(status_of "$r"), then $(head -c 200 <<<"$r2") after ${waited} ms, vm_reload_success $n, received $before -> $(received)"
      fi
    else
      bad "$mesh/$v: Envoy (crash module) did not start"
    fi
    stop_envoy
  fi
  fi

  # 6. the RBAC defence
  local rbac_args=()
  [ "$mesh" = istio ] && rbac_args=(--istio-rbac)
  if [ "$mesh" = istio ]; then
    extract istio "$tmp/istio-rbac.yaml" --istio-rbac --add-allow-cidr 127.0.0.0/8 2>/dev/null
    if start_envoy "$tmp/istio-rbac.yaml" "$tmp/istio-rbac-$v.log"; then
      r=$(forged); local r2; r2=$(signed)
      if [ "$(status_of "$r")" = 403 ] && grep -q AuthencationFailed <<<"$r" && [ "$(status_of "$r2")" = 200 ]; then
        ok "$mesh/$v: with the optional RBAC filter: forged -> 403 AuthencationFailed, signed -> 200 (the mark lets it through)"
      else
        bad "$mesh/$v: with the optional RBAC filter: forged $(status_of "$r"), signed $r2"
      fi
    else
      bad "$mesh/$v: Envoy (istio + RBAC) did not start"
    fi
    stop_envoy
  fi
  extract "$mesh" "$tmp/$mesh-nowasm.yaml" "${rbac_args[@]}" --add-allow-cidr 127.0.0.0/8 --simulate-missing-wasm 2>/dev/null
  if start_envoy "$tmp/$mesh-nowasm.yaml" "$tmp/$mesh-nowasm-$v.log"; then
    before=$(received)
    r=$(forged); local r2; r2=$(signed)
    n=$(stat_sum 'rbac.denied')
    local want=2
    if [ "$(status_of "$r")" = 403 ] && grep -q 'RBAC: access denied' <<<"$r" && [ "$(status_of "$r2")" = 403 ] &&
       grep -q 'RBAC: access denied' <<<"$r2" && [ "$(received)" = "$before" ] && [ "$n" -ge "$want" ]; then
      ok "$mesh/$v: callback-guard's filter missing -> forged and signed 403 '$(head -1 <<<"$r")', receiver got nothing, rbac.denied $n"
    else
      bad "$mesh/$v: callback-guard's filter missing -> forged: $r / signed: $r2 / received $before -> $(received) / rbac.denied $n"
    fi
  else
    bad "$mesh/$v: Envoy (no Wasm filter) did not start"
  fi
  stop_envoy
  if [ "$mesh" != istio ]; then
    extract "$mesh" "$tmp/$mesh-nomark.yaml" --add-allow-cidr 127.0.0.0/8 --drop-filter-state-mark 2>/dev/null
    if start_envoy "$tmp/$mesh-nomark.yaml" "$tmp/$mesh-nomark-$v.log"; then
      before=$(received)
      r=$(signed)
      if [ "$(status_of "$r")" = 403 ] && grep -q 'RBAC: access denied' <<<"$r" && [ "$(received)" = "$before" ]; then
        ok "$mesh/$v: filter_state_mark removed -> a signed callback gets 403 '$(head -1 <<<"$r")' (no mark, RBAC refuses)"
      else
        bad "$mesh/$v: filter_state_mark removed -> $r"
      fi
    else
      bad "$mesh/$v: Envoy (no mark) did not start"
    fi
    stop_envoy
  fi
}

for e in "${envoys[@]}"; do
  ENVOY=$e
  for mesh in istio envoy-gateway; do live_suite "$mesh"; done
done
for e in "${native_envoys[@]}"; do
  ENVOY=$e
  live_suite envoy-gateway-native
done

# 7. istio: the stats inclusion prefix must include "wasmcustom."
echo "== edited copies"
if [ "${#envoys[@]}" -gt 0 ]; then
  ENVOY=${envoys[0]}
  cp -r deploy/istio "$tmp/istio-bad"
  sed -i 's/- wasmcustom.callback_guard$/- callback_guard/' "$tmp/istio-bad/gateway-deployment-patch.yaml"
  extract istio "$tmp/istio-bad.yaml" --manifests "$tmp/istio-bad" --add-allow-cidr 127.0.0.0/8 2>/dev/null
  if start_envoy "$tmp/istio-bad.yaml" "$tmp/istio-bad.log"; then
    forged >/dev/null
    n=$(curl -s --max-time 5 "http://127.0.0.1:$ADMIN/stats/prometheus" | grep -c '^callback_guard' || true)
    if [ "$n" = 0 ]; then ok "istio: proxyStatsMatcher prefix 'callback_guard' (no 'wasmcustom.') keeps 0 callback_guard counters"; else bad "istio: prefix callback_guard kept $n counters"; fi
  else
    bad "istio (prefix callback_guard): Envoy did not start"
  fi
  stop_envoy
fi

# 8. extract.py must refuse manifests that lost what this depends on
refuse() { # mesh file sed-or-python description
  local mesh=$1 file=$2 edit=$3 what=$4
  rm -rf "$tmp/bad"; cp -r "deploy/$mesh" "$tmp/bad"
  "$PY" - "$tmp/bad/$file" "$edit" <<'EOF'
import re, sys
path, edit = sys.argv[1], sys.argv[2]
text = open(path).read()
old, new = edit.split("=>", 1)
if old not in text:
    sys.exit(f"edit: {old!r} not in {path}")
open(path, "w").write(text.replace(old, new))
EOF
  # shellcheck disable=SC2046
  if "$PY" deploy/extract.py "$mesh" --manifests "$tmp/bad" $(code_args "$mesh") -o /dev/null 2>"$tmp/bad.err"; then
    bad "$mesh: $what: accepted"
  else
    ok "$mesh: $what: refused: $(grep -o 'FAILED.*' "$tmp/bad.err" | cut -c1-170)"
  fi
}
refuse envoy-gateway envoypatchpolicy.yaml "/wasm/0')]=>/wasm/1')]" "Wasm filter name wrong in the patch"
refuse envoy-gateway envoypatchpolicy.yaml "name: callbacks/callbacks/http
    operation:
      op: add
      jsonPath: \"..http_filters[?(@.name=='envoy.filters.http.router')]\"=>name: callbacks/callbacks/https
    operation:
      op: add
      jsonPath: \"..http_filters[?(@.name=='envoy.filters.http.router')]\"" "listener name wrong in the RBAC patch"
refuse envoy-gateway envoypatchpolicy.yaml "rule/0/match/0/*=>rule/1/match/0/*" "route name wrong (RBAC not enabled on the callback route)"
refuse envoy-gateway envoypatchpolicy.yaml "        name: require-callback-guard-mark
        disabled: true=>        name: require-callback-guard-mark" "RBAC filter enabled listener-wide"
refuse envoy-gateway envoypatchpolicy.yaml "            action: ALLOW=>            action: DENY" "RBAC patch not the mark check (no RBAC defence)"
refuse envoy-gateway envoypatchpolicy.yaml "value: FAIL_RELOAD=>value: FAIL_CLOSED" "failure_policy FAIL_CLOSED"
refuse envoy-gateway envoyextensionpolicy.yaml "      filter_state_mark: true=>      filter_state_mark: false" "filter_state_mark off with the RBAC defence"
refuse envoy-gateway envoyproxy.yaml "        - tag_name: kind=>        - tag_name: kinds" "stats tag kind missing"
refuse istio envoyfilter.yaml "failure_policy: FAIL_RELOAD=>fail_open: false" "failure_policy left out"
if [ -f "$NATIVE_SRC" ]; then
  refuse envoy-gateway-native envoyextensionpolicy.yaml "  - name: callback-guard          #=>  - name: callback-guard-v2       #" "module not in the EnvoyProxy's dynamicModules allowlist"
  refuse envoy-gateway-native envoyproxy.yaml "    doNotClose: true=>    doNotClose: false" "doNotClose off (the registry would go with an unload)"
  refuse envoy-gateway-native envoyproxy.yaml "envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix: true=>envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix: false" "runtime flag for the wasm's Prometheus names off"
  refuse envoy-gateway-native envoyproxy.yaml "        - tag_name: kind=>        - tag_name: kinds" "stats tag kind missing"
  refuse envoy-gateway-native envoyproxy.yaml "          image: registry.example.com/callback-guard-envoy-native:1.40.0=>" "no image or volume with the module"
  refuse envoy-gateway-native envoypatchpolicy.yaml "        name: require-callback-guard-mark
        disabled: true=>        name: require-callback-guard-mark" "RBAC filter enabled listener-wide"
  refuse envoy-gateway-native envoypatchpolicy.yaml "rule/0/match/0/*=>rule/1/match/0/*" "route name wrong (RBAC not enabled on the callback route)"
  refuse envoy-gateway-native envoyextensionpolicy.yaml "    filterName: callback_guard    #=>    filterName: guard             #" "filterName not the module's filter"
fi
refuse istio stats-bootstrap-configmap.yaml "store_errors=>store_error" "stats tag kind regex changed"
refuse istio stats-bootstrap-configmap.yaml "(?:requests|plays)_rejected=>requests_rejected" "stats tag code regex without plays_rejected"
refuse envoy-gateway envoyproxy.yaml "(?:requests|plays)_rejected=>requests_rejected" "stats tag code regex without plays_rejected"

echo
echo "selftest: wall time $(( $(date +%s) - T0 )) s, Envoys: $(for e in "${envoys[@]}"; do printf '%s ' "$(envoy_version "$e")"; done)(native module: $(for e in "${native_envoys[@]}"; do printf '%s ' "$(envoy_version "$e")"; done))"
for s in "${skips[@]}"; do echo "############ selftest: SKIPPED $s"; done
echo "selftest: $passed passed, $failed failed$([ "$skipped" = 0 ] || echo ", $skipped parts SKIPPED (see above; CI=true makes them failures)")"
[ "$failed" = 0 ]
