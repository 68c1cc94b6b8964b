#!/usr/bin/env python3
"""Turn the Wasm filter embedded in deploy/istio or deploy/envoy-gateway into a static
Envoy bootstrap that a real Envoy can load, so the manifests are tested, not just read.

    python deploy/extract.py istio         --wasm PATH [options] -o bootstrap.yaml
    python deploy/extract.py envoy-gateway --wasm PATH [options] -o bootstrap.yaml
    python deploy/extract.py envoy-gateway-native --module PATH [options] -o bootstrap.yaml

Needs PyYAML: `make pytools` makes .venv-tools/bin/python with it (the project's Python for
scripts that read YAML); any Python with `pip install pyyaml` does too.

istio: takes the EnvoyFilter EXTENSION_CONFIG value (the TypedExtensionConfig istiod serves
    over ECDS) and does to it what istio-agent does before Envoy sees it
    (pkg/wasm/convert.go rewriteVMConfig): vm_config.code becomes a local file, ISTIO_META_*
    key_values are dropped (and key_values itself when only host_env_keys remain). The filter
    goes where the HTTP_FILTER patch puts it: before the router, under the ECDS name. With
    --istio-rbac the optional EnvoyFilter of deploy/istio/optional/ is read too and its RBAC
    filter goes right after it. The stats tags of the bootstrap-override ConfigMap and an
    inclusion list like the one Istio's bootstrap builds from proxyStatsMatcher are added,
    so a run shows which counters survive it.

envoy-gateway: builds what Envoy Gateway 1.6-1.9 generates from the EnvoyExtensionPolicy and
    the HTTPRoute (internal/xds/translator/wasm.go wasmConfig, buildHCMWasmFilter, patchRoute):
    a Listener document whose HCM has the Wasm filter (named
    envoy.filters.http.wasm/envoyextensionpolicy/<ns>/<name>/wasm/<i>, disabled) and the
    router, and a RouteConfiguration document whose routes (named
    httproute/<ns>/<name>/rule/<i>/match/<j>/<host or *>) enable the filter with
    FilterConfig{config: {}}; proto field names, as Envoy Gateway marshals them. It applies
    the EnvoyPatchPolicy JSON patches to both (jsonPath + path, add with missing parents
    created, add at an array index inserting before it) and builds the HCM from the result.
    Only the jsonPath forms used here are understood ("..field[?(@.key == 'value')]");
    another form is an error, never a silent pass. The EnvoyProxy bootstrap Merge stats_tags
    are added. --extra-route PATH adds a route of another HTTPRoute (not targeted by the
    policy) to the same listener, to show the RBAC filter leaves it alone.

envoy-gateway-native: the same for deploy/envoy-gateway-native, callback-guard's native module
    (an Envoy dynamic module) delivered with EnvoyExtensionPolicy.spec.dynamicModules, allowed
    by EnvoyProxy.spec.dynamicModules (Envoy Gateway >= 1.8; internal/xds/translator/
    dynamicmodule.go): a DynamicModuleFilter named envoy.filters.http.dynamic_modules/
    envoyextensionpolicy/<ns>/<name>/dynamic-module/<i>, disabled, enabled per route as
    above, with dynamic_module_config.module.local.filename (the EnvoyProxy entry's
    source.local.path, made --module here), do_not_close, filter_name, and filter_config =
    the policy's config as compact JSON in a StringValue. Its checks: the module is in the
    EnvoyProxy's allowlist with a Local source and doNotClose (the stream registry lives in
    the module), the push key reaches Envoy's environment from a Secret (secret_env reads
    it there), the stats tags are envoy/envoy-native.yaml's, the bootstrap Merge adds a
    runtime layer with envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix
    (the wasm's Prometheus names), and the RBAC defence as for envoy-gateway. No flag, no
    failure_policy: the wasm's checks of those do not apply.

All: the plugin configuration must not have been lost on the way, the Secret -> env ->
host_env_keys chain must be whole, the filter must fail closed and recover
(failure_policy FAIL_RELOAD with reload_config, no fail_open), the stats tags must be the ones
of envoy/envoy.yaml, and where an RBAC filter requires callback-guard's mark it must come
after the Wasm filter, be enabled on exactly the routes that run callback-guard, and the
plugin configuration must set filter_state_mark (for Envoy Gateway the RBAC defence is
required). A problem stops the script with a message (exit 1).

Negative-test switches (each reported): --drop-stop-iteration removes
allow_on_headers_stop_iteration, --drop-filter-state-mark removes filter_state_mark from the
plugin configuration, --simulate-missing-wasm takes the Wasm filter out of the chain (what
Envoy runs when the filter could not be created: scripts/ecds/FINDINGS.md).

The bootstrap: one listener on 127.0.0.1:--port, cluster "upstream" (--upstream), admin on
--admin-port. istio: route prefix /callback -> upstream, every other path 404 (the filter
runs on all of them). envoy-gateway: the patched routes, each to upstream; Envoy answers 404
itself for other paths. --add-allow-cidr appends a CIDR to callback_auth.allow_cidrs (the
manifests hold placeholder CDN ranges, so a local curl would be refused as a sender before
its token is even read); it is reported. --plugin-config-out writes the plugin JSON for
`callback-guard check-config`.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the interpreter
    sys.exit(
        "extract.py needs PyYAML: run `make pytools` and use .venv-tools/bin/python, "
        "or `pip install pyyaml` into the Python you use"
    )

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
# The one place the filter chain is written; the manifests' stats tags must match its own.
ENVOY_YAML = REPO / "envoy" / "envoy.yaml"
ENVOY_NATIVE_YAML = REPO / "envoy" / "envoy-native.yaml"

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
STRING_VALUE_TYPE = "type.googleapis.com/google.protobuf.StringValue"
DYNAMIC_MODULE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
# The runtime flag that gives the module's counters the wasm's Prometheus names.
STRIP_PREFIX_FLAG = "envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILTER_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
HCM_NAME = "envoy.filters.network.http_connection_manager"
ROUTER_NAME = "envoy.filters.http.router"
PUSH_KEY_ENV = "CALLBACK_GUARD_PUSH_KEY"
ISTIO_META_PREFIX = "ISTIO_META_"
# The filter state callback-guard sets with filter_state_mark (src/filter/mod.rs CHECKED_MARK,
# stored by Envoy under the "wasm." prefix).
MARK_KEY = "wasm.x-callback-guard-checked"
# Prefixes Istio's bootstrap always keeps (tools/packaging/common/envoy_bootstrap.json,
# stats_matcher.inclusion_list), besides those proxyStatsMatcher adds.
ISTIO_ALWAYS_INCLUDED = ["reporter=", "component", "istio"]
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ExtractError(Exception):
    pass


def fail(msg: str):
    raise ExtractError(msg)


def note(msg: str):
    print(f"extract: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- manifests


def load_docs(directory: Path, extra: list[Path] = ()) -> list[dict]:
    docs = []
    for path in sorted(directory.glob("*.yaml")) + list(extra):
        with path.open() as f:
            for doc in yaml.safe_load_all(f):
                if isinstance(doc, dict):
                    doc["__file__"] = path.name
                    docs.append(doc)
    if not docs:
        fail(f"no YAML documents in {directory}")
    return docs


def of_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(items, what):
    if len(items) != 1:
        fail(f"expected exactly one {what}, found {len(items)}")
    return items[0]


def meta(doc):
    m = doc.get("metadata") or {}
    return m.get("namespace", "default"), m.get("name")


def find_secret(docs, namespace, name, key):
    for s in of_kind(docs, "Secret"):
        if meta(s) == (namespace, name):
            data = {**(s.get("data") or {}), **(s.get("stringData") or {})}
            if key not in data:
                fail(f"Secret {namespace}/{name} ({s['__file__']}) has no key {key!r}")
            return s
    fail(f"no Secret {namespace}/{name} in the manifests (needed for {PUSH_KEY_ENV})")


def env_from_secret(env_list, where):
    for e in env_list or []:
        if e.get("name") == PUSH_KEY_ENV:
            ref = ((e.get("valueFrom") or {}).get("secretKeyRef")) or {}
            if not ref.get("name") or not ref.get("key"):
                fail(f"{where}: {PUSH_KEY_ENV} is not taken from a Secret (valueFrom.secretKeyRef)")
            return ref["name"], ref["key"]
    fail(f"{where}: no {PUSH_KEY_ENV} env entry")


# ----------------------------------------------------------------------------- checks


def reference_stats_tags(source: Path = ENVOY_YAML) -> list[dict]:
    boot = yaml.safe_load(source.read_text())
    tags = ((boot.get("stats_config") or {}).get("stats_tags")) or []
    if not tags:
        fail(f"{source} has no stats_config.stats_tags to compare with")
    return tags


def check_stats_tags(tags: list[dict], where: str, source: Path = ENVOY_YAML):
    """The manifest's tags must be the shipped config's, every one of them, regexes included."""
    have = {(t.get("tag_name"), t.get("regex")) for t in tags}
    shown = source.relative_to(REPO)
    for ref in reference_stats_tags(source):
        if (ref["tag_name"], ref["regex"]) not in have:
            fail(f"{where}: stats tag {ref['tag_name']!r} with regex {ref['regex']!r} ({shown}) is missing")
    note(f"{where}: stats tags {sorted(t for t, _ in have)} match {shown}")


def plugin_holder(cfg: dict) -> dict:
    """The StringValue with the plugin JSON: the Wasm PluginConfig's configuration, or a
    DynamicModuleFilter's filter_config."""
    return cfg["configuration"] if "configuration" in cfg else cfg["filter_config"]


def plugin_json(cfg: dict) -> dict:
    return json.loads(plugin_holder(cfg)["value"])


def set_plugin_json(cfg: dict, plugin: dict):
    plugin_holder(cfg)["value"] = json.dumps(plugin, indent=2) + "\n"


def check_wasm(wasm: dict, where: str, args) -> dict:
    """Checks on a Wasm filter message (proto field names); returns its PluginConfig."""
    cfg = wasm.get("config") or fail(f"{where}: Wasm filter without config")
    if cfg.get("allow_on_headers_stop_iteration") is not True and not args.drop_stop_iteration:
        fail(f"{where}: allow_on_headers_stop_iteration is not true")
    if cfg.get("fail_open") is True:
        fail(f"{where}: fail_open is true (and Envoy refuses it next to a failure_policy)")
    if cfg.get("failure_policy") != "FAIL_RELOAD":
        fail(f"{where}: failure_policy is {cfg.get('failure_policy')!r}, not FAIL_RELOAD")
    backoff = (cfg.get("reload_config") or {}).get("backoff") or {}
    if not backoff.get("base_interval") or not backoff.get("max_interval"):
        fail(f"{where}: reload_config.backoff (base_interval, max_interval) is missing")
    vm = cfg.get("vm_config") or fail(f"{where}: no vm_config")
    if vm.get("runtime") != "envoy.wasm.runtime.v8":
        fail(f"{where}: runtime is {vm.get('runtime')!r}, not envoy.wasm.runtime.v8")
    keys = ((vm.get("environment_variables") or {}).get("host_env_keys")) or []
    if PUSH_KEY_ENV not in keys:
        fail(f"{where}: host_env_keys lacks {PUSH_KEY_ENV}")
    conf = cfg.get("configuration") or {}
    if conf.get("@type") != STRING_VALUE_TYPE:
        fail(f"{where}: configuration is not a google.protobuf.StringValue")
    try:
        plugin = json.loads(conf.get("value", ""))
    except json.JSONDecodeError as e:
        fail(f"{where}: the plugin configuration is not JSON: {e}")
    envs = [k.get("secret_env") for k in (plugin.get("push_auth") or {}).get("keys", [])]
    if PUSH_KEY_ENV not in envs:
        fail(f"{where}: no push_auth key reads secret_env {PUSH_KEY_ENV}")
    note(f"{where}: failure_policy FAIL_RELOAD, reload backoff {backoff['base_interval']}..{backoff['max_interval']}, "
         f"filter_state_mark {plugin.get('filter_state_mark', False)}")
    return cfg


def check_native(dm: dict, where: str) -> dict:
    """Checks on a DynamicModuleFilter message (proto field names); returns it."""
    module = ((dm.get("dynamic_module_config") or {}).get("module") or {}).get("local") or {}
    if not module.get("filename"):
        fail(f"{where}: no dynamic_module_config.module.local.filename")
    if (dm.get("dynamic_module_config") or {}).get("do_not_close") is not True:
        fail(f"{where}: do_not_close is not true: the stream registry would go with the module when Envoy unloads it")
    if dm.get("filter_name") != "callback_guard":
        fail(f"{where}: filter_name is {dm.get('filter_name')!r}, not callback_guard (the filter in libcallback_guard.so)")
    if dm.get("terminal_filter"):
        fail(f"{where}: terminal_filter is set: callback-guard forwards to the upstream")
    conf = dm.get("filter_config") or {}
    if conf.get("@type") != STRING_VALUE_TYPE:
        fail(f"{where}: filter_config is not a google.protobuf.StringValue (no config in the policy?)")
    try:
        plugin = json.loads(conf.get("value", ""))
    except json.JSONDecodeError as e:
        fail(f"{where}: the plugin configuration is not JSON: {e}")
    envs = [k.get("secret_env") for k in (plugin.get("push_auth") or {}).get("keys", [])]
    if PUSH_KEY_ENV not in envs:
        fail(f"{where}: no push_auth key reads secret_env {PUSH_KEY_ENV}")
    note(f"{where}: module {module['filename']}, do_not_close, filter_state_mark {plugin.get('filter_state_mark', False)}")
    return dm


def is_mark_rbac(f: dict) -> bool:
    """An RBAC HTTP filter whose ALLOW policy needs callback-guard's filter state mark."""
    tc = f.get("typed_config") or {}
    if tc.get("@type") != RBAC_TYPE:
        return False
    rules = tc.get("rules") or {}
    if rules.get("action", "ALLOW") != "ALLOW":
        return False
    for pol in (rules.get("policies") or {}).values():
        for pr in pol.get("principals") or []:
            fs = pr.get("filter_state") or {}
            if fs.get("key") == MARK_KEY and (fs.get("string_match") or {}).get("exact") == "1":
                return True
    return False


def check_rbac_defence(filters: list[dict], wasm_name: str, plugin_cfg: dict, routes: list[dict] | None,
                       where: str, required: bool, args) -> str | None:
    """The RBAC defence: present (when required), after the Wasm filter, and, when routes
    are given (per-route enabling, Envoy Gateway's layout), enabled on exactly the routes
    that enable the Wasm filter. Returns the RBAC filter's name or None."""
    names = [f.get("name") for f in filters]
    rbacs = [f for f in filters if is_mark_rbac(f)]
    if not rbacs:
        if required:
            fail(f"{where}: no RBAC filter requiring filter state {MARK_KEY} = 1 after the Wasm filter: "
                 "the RBAC defence is missing (a missing Wasm filter would pass callbacks unchecked)")
        return None
    rbac = one(rbacs, f"RBAC filter requiring {MARK_KEY}")
    rname = rbac["name"]
    if names.index(rname) < names.index(wasm_name):
        fail(f"{where}: the RBAC filter {rname!r} comes before the Wasm filter: it would refuse every request")
    if names[-1] != ROUTER_NAME or names.index(rname) > names.index(ROUTER_NAME):
        fail(f"{where}: the RBAC filter {rname!r} is not before the router")
    if plugin_json(plugin_cfg).get("filter_state_mark") is not True and not args.drop_filter_state_mark:
        fail(f"{where}: the RBAC filter {rname!r} requires the mark, but the plugin configuration does not "
             "set \"filter_state_mark\": true: every callback would get 403")
    if routes is not None:
        wasm_disabled = next(f for f in filters if f["name"] == wasm_name).get("disabled") is True
        if wasm_disabled and rbac.get("disabled") is not True:
            fail(f"{where}: the Wasm filter is enabled per route but {rname!r} is enabled listener-wide: "
                 "every route that does not run callback-guard would answer 403")
        for r in routes:
            per = r.get("typed_per_filter_config") or {}
            runs_wasm = wasm_name in per if wasm_disabled else True
            runs_rbac = rname in per if rbac.get("disabled") is True else True
            if runs_wasm and not runs_rbac:
                fail(f"{where}: route {r.get('name')!r} runs callback-guard but not {rname!r}: no RBAC defence there")
            if runs_rbac and not runs_wasm:
                fail(f"{where}: route {r.get('name')!r} enables {rname!r} without callback-guard: it would answer 403 to everything")
    order = " -> ".join(names)
    note(f"{where}: RBAC defence {rname!r} after callback-guard's filter ({order})")
    return rname


def check_sha256(value, where):
    if not isinstance(value, str) or not HEX64.match(value):
        fail(f"{where}: sha256 {value!r} is not 64 lowercase hex digits (the manifest digest without 'sha256:')")


def local_code(wasm_path: Path) -> dict:
    return {"local": {"filename": str(wasm_path)}}


def add_allow_cidrs(cfg: dict, cidrs: list[str]):
    if not cidrs:
        return
    plugin = plugin_json(cfg)
    auth = plugin.setdefault("callback_auth", {})
    auth["allow_cidrs"] = list(auth.get("allow_cidrs", [])) + cidrs
    set_plugin_json(cfg, plugin)
    note(f"appended {cidrs} to callback_auth.allow_cidrs (local test only; the manifest is unchanged)")


def apply_negative_switches(cfg: dict, args):
    if args.drop_stop_iteration:
        cfg.pop("allow_on_headers_stop_iteration", None)
        note("dropped allow_on_headers_stop_iteration on request (negative test)")
    if args.drop_filter_state_mark:
        plugin = plugin_json(cfg)
        plugin.pop("filter_state_mark", None)
        set_plugin_json(cfg, plugin)
        note("dropped filter_state_mark from the plugin configuration on request (negative test)")


def simulate_missing_wasm(filters: list[dict], routes: list[dict], wasm_name: str) -> list[dict]:
    note(f"took the Wasm filter {wasm_name!r} out of the chain on request (negative test: Envoy without the filter)")
    for r in routes:
        (r.get("typed_per_filter_config") or {}).pop(wasm_name, None)
    return [f for f in filters if f.get("name") != wasm_name]


# ----------------------------------------------------------------------------- istio


def extract_istio(docs, args) -> dict:
    filters = of_kind(docs, "EnvoyFilter")
    ext_patches, http_patches = [], []
    for ef in filters:
        for cp in (ef.get("spec") or {}).get("configPatches", []):
            if cp.get("applyTo") == "EXTENSION_CONFIG":
                ext_patches.append((ef, cp))
            elif cp.get("applyTo") == "HTTP_FILTER":
                http_patches.append((ef, cp))
    ef_ext, cp_ext = one(ext_patches, "EnvoyFilter EXTENSION_CONFIG patch")
    if cp_ext["patch"].get("operation") != "ADD":
        fail("the EXTENSION_CONFIG patch must be operation ADD (only ADD patches are served over ECDS)")
    ec = copy.deepcopy(cp_ext["patch"]["value"])
    name = ec.get("name") or fail("the EXTENSION_CONFIG value has no name")
    wasm = ec.get("typed_config") or {}
    if wasm.get("@type") != WASM_TYPE:
        fail(f"EXTENSION_CONFIG {name}: typed_config is {wasm.get('@type')!r}, not the Wasm HTTP filter")

    def sub_filter(cp):
        fm = ((cp.get("match") or {}).get("listener") or {}).get("filterChain", {}).get("filter", {})
        if fm.get("name") != HCM_NAME:
            fail("an HTTP_FILTER patch does not match the HTTP connection manager")
        return (fm.get("subFilter") or {}).get("name")

    guard = [(ef, cp) for ef, cp in http_patches if sub_filter(cp) == ROUTER_NAME]
    after = [(ef, cp) for ef, cp in http_patches if sub_filter(cp) == name]
    other = [(ef, cp) for ef, cp in http_patches if sub_filter(cp) not in (ROUTER_NAME, name)]
    if other:
        fail(f"unexpected HTTP_FILTER patches matching {[sub_filter(cp) for _, cp in other]}")
    ef_http, cp_http = one(guard, "EnvoyFilter HTTP_FILTER patch before the router")

    # All halves must land on the same gateway pods, in the gateway context.
    sel_ext = (ef_ext["spec"].get("workloadSelector") or {}).get("labels")
    for ef, cp in [(ef_http, cp_http)] + after:
        sel = (ef["spec"].get("workloadSelector") or {}).get("labels")
        if not sel_ext or sel_ext != sel:
            fail(f"EnvoyFilters {meta(ef_ext)[1]} and {meta(ef)[1]} select different workloads: {sel_ext} vs {sel}")
        if meta(ef_ext)[0] != meta(ef)[0]:
            fail(f"EnvoyFilters {meta(ef_ext)[1]} and {meta(ef)[1]} are in different namespaces")
    for cp in [cp_ext, cp_http] + [cp for _, cp in after]:
        if (cp.get("match") or {}).get("context") != "GATEWAY":
            fail("every patch must match context GATEWAY")

    # The HTTP filter: before the router, by ECDS name, Wasm type allowed.
    if cp_http["patch"].get("operation") != "INSERT_BEFORE":
        fail("the HTTP_FILTER patch must be INSERT_BEFORE (the router)")
    hf = cp_http["patch"]["value"]
    if hf.get("name") != name:
        fail(f"the HTTP filter asks for {hf.get('name')!r}, the EXTENSION_CONFIG is named {name!r}")
    cd = hf.get("config_discovery") or fail("the HTTP filter has no config_discovery")
    if WASM_TYPE not in (cd.get("type_urls") or []):
        fail("config_discovery.type_urls lacks the Wasm type")
    if RBAC_TYPE not in (cd.get("type_urls") or []):
        fail("config_discovery.type_urls lacks the RBAC type istio-agent serves when the pull fails")
    if "ads" not in (cd.get("config_source") or {}):
        fail("config_discovery.config_source is not ads")

    cfg = check_wasm(wasm, f"EXTENSION_CONFIG {name}", args)
    vm = cfg["vm_config"]
    remote = (vm.get("code") or {}).get("remote") or fail("vm_config.code is not remote")
    uri = (remote.get("http_uri") or {}).get("uri", "")
    if not uri.startswith("oci://"):
        fail(f"remote code uri {uri!r} is not oci://")
    check_sha256(remote.get("sha256"), "vm_config.code.remote")
    note(f"istio: ECDS {name!r}, module {uri} pinned to manifest digest {remote['sha256'][:12]}...")

    # What istio-agent does (pkg/wasm/convert.go rewriteVMConfig): local file, no ISTIO_META_*.
    vm["code"] = local_code(args.wasm)
    envs = vm.get("environment_variables") or {}
    kv = {k: v for k, v in (envs.get("key_values") or {}).items() if not k.startswith(ISTIO_META_PREFIX)}
    if kv:
        envs["key_values"] = kv
    else:
        envs.pop("key_values", None)

    http_filters = [{"name": name, "typed_config": wasm}]
    for ef, cp in after:
        if cp["patch"].get("operation") != "INSERT_AFTER":
            fail(f"EnvoyFilter {meta(ef)[1]}: a patch matching {name!r} must be INSERT_AFTER")
        if (ef["spec"].get("priority") or 0) <= (ef_http["spec"].get("priority") or 0):
            fail(f"EnvoyFilter {meta(ef)[1]}: its priority must be higher than {meta(ef_http)[1]}'s, so istiod "
                 f"applies it after {name!r} is in the chain")
        http_filters.append(copy.deepcopy(cp["patch"]["value"]))
    http_filters.append({"name": ROUTER_NAME, "typed_config": {"@type": ROUTER_TYPE}})
    check_rbac_defence(http_filters, name, cfg, None, "istio", False, args)

    apply_negative_switches(cfg, args)
    add_allow_cidrs(cfg, args.add_allow_cidr)
    if args.simulate_missing_wasm:
        http_filters = simulate_missing_wasm(http_filters, [], name)

    # The gateway pod: push key from a Secret, stats inclusion, bootstrap override.
    ns = meta(ef_ext)[0]
    patch = one(
        [d for d in docs if "kind" not in d and (d.get("spec") or {}).get("template")],
        "gateway Deployment patch (a document with spec.template and no kind)",
    )
    pod = patch["spec"]["template"]
    proxy = one([c for c in pod["spec"].get("containers", []) if c.get("name") == "istio-proxy"],
                "istio-proxy container in the Deployment patch")
    sname, skey = env_from_secret(proxy.get("env"), "gateway Deployment patch, istio-proxy")
    find_secret(docs, ns, sname, skey)
    pc = yaml.safe_load((pod.get("metadata", {}).get("annotations") or {}).get("proxy.istio.io/config", "") or "{}")
    psm = (pc or {}).get("proxyStatsMatcher") or {}
    prefixes = psm.get("inclusionPrefixes") or []
    suffixes = psm.get("inclusionSuffixes") or []
    if "wasmcustom.callback_guard" not in prefixes and not any("wasmcustom" in p for p in prefixes):
        note("istio: WARNING: proxyStatsMatcher keeps no wasmcustom.callback_guard prefix: the counters are dropped")
    override = next((e.get("value") for e in proxy.get("env", []) if e.get("name") == "ISTIO_BOOTSTRAP_OVERRIDE"), None)
    if not override:
        fail("the gateway Deployment patch sets no ISTIO_BOOTSTRAP_OVERRIDE (the stats tags come from it)")
    mount_dir, fname = override.rsplit("/", 1)
    vol = next((m["name"] for m in proxy.get("volumeMounts", []) if m.get("mountPath") == mount_dir), None)
    cm_name = next((v["configMap"]["name"] for v in pod["spec"].get("volumes", [])
                    if v.get("name") == vol and v.get("configMap")), None)
    cm = one([c for c in of_kind(docs, "ConfigMap") if meta(c) == (ns, cm_name)],
             f"ConfigMap {ns}/{cm_name} behind ISTIO_BOOTSTRAP_OVERRIDE")
    override_text = cm["data"][fname]
    override_doc = yaml.safe_load(override_text)
    stats_tags = (override_doc.get("stats_config") or {}).get("stats_tags", [])
    check_stats_tags(stats_tags, f"ConfigMap {ns}/{cm_name}")
    note(f"istio: {PUSH_KEY_ENV} from Secret {ns}/{sname}[{skey}]; proxyStatsMatcher prefixes {prefixes}, "
         f"suffixes {suffixes}")

    if args.override_out:
        # pilot-agent passes ISTIO_BOOTSTRAP_OVERRIDE's file to Envoy as --config-yaml
        # (pkg/envoy/proxy.go); Envoy merges it into the bootstrap. Leave the tags to it.
        args.override_out.write_text(override_text)
        note(f"istio: wrote the bootstrap override to {args.override_out} (pass it to Envoy with --config-yaml)")
    stats = {
        "stats_tags": [] if args.override_out else stats_tags,
        # Istio's inclusion list: its fixed prefixes plus proxyStatsMatcher's prefixes and suffixes.
        "stats_matcher": {"inclusion_list": {"patterns": [{"prefix": p} for p in ISTIO_ALWAYS_INCLUDED + prefixes]
                                             + [{"suffix": x} for x in suffixes]}},
    }
    route_config = {
        "name": "callbacks",
        "virtual_hosts": [{
            "name": "callbacks",
            "domains": ["*"],
            "routes": [
                {"match": {"prefix": "/callback"}, "route": {"cluster": "upstream", "timeout": "10s"}},
                {"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": "not found\n"}}},
            ],
        }],
    }
    return {"http_filters": http_filters, "route_config": route_config, "stats_config": stats, "plugin_cfg": cfg}


# ----------------------------------------------------------------------------- envoy gateway


def eg_filter_name(ns, policy, index):
    # internal/xds/translator/wasm.go wasmFilterName = perRouteFilterName(EnvoyFilterWasm, wasm.Name);
    # internal/gatewayapi: wasm.Name = irConfigNameForWasm = "<kind lower>/<ns>/<name>/wasm/<i>".
    return f"envoy.filters.http.wasm/envoyextensionpolicy/{ns}/{policy}/wasm/{index}"


def eg_routes(route: dict, listener: dict) -> list[tuple[str, dict]]:
    """(xDS name, match) of every route Envoy Gateway makes of an HTTPRoute. Names:
    gatewayapi helpers.go irRouteName ("httproute/<ns>/<name>/rule/<i>/match/<j>", j = -1
    for a rule without matches) plus "/<host>" per computed host (route.go, dots as "_";
    computeHosts gives "*" when neither the route nor the listener names one)."""
    ns, name = meta(route)
    hosts = route["spec"].get("hostnames") or ([listener["hostname"]] if listener.get("hostname") else ["*"])
    out = []
    for i, rule in enumerate(route["spec"].get("rules") or [{}]):
        matches = rule.get("matches")
        for j, m in (enumerate(matches) if matches else [(-1, {})]):
            path = (m or {}).get("path") or {"type": "PathPrefix", "value": "/"}
            ptype = path.get("type", "PathPrefix")
            if ptype == "Exact":
                match = {"path": path["value"]}
            elif ptype == "PathPrefix":
                # A prefix other than "/" becomes path_separated_prefix (translator route.go).
                v = path["value"]
                match = {"prefix": "/"} if v == "/" else {"path_separated_prefix": v.rstrip("/")}
            else:
                fail(f"HTTPRoute {name}: only PathPrefix and Exact matches are modelled here")
            out += [(f"httproute/{ns}/{name}/rule/{i}/match/{j}/{h.replace('.', '_')}", match) for h in hosts]
    return out


def eg_native_filter(ns, policy, index, d, proxy_entries, args) -> dict:
    """The HCM http filter Envoy Gateway builds for a dynamicModules entry
    (dynamicModuleConfig + buildHCMDynamicModuleFilter), the module path made --module."""
    where = f"EnvoyExtensionPolicy {ns}/{policy} dynamicModules[{index}]"
    entry = [e for e in proxy_entries if e.get("name") == d.get("name")]
    if not entry:
        fail(f"{where}: module {d.get('name')!r} is not in the EnvoyProxy's dynamicModules "
             f"({[e.get('name') for e in proxy_entries]}): Envoy Gateway rejects the policy")
    entry = one(entry, f"EnvoyProxy dynamicModules entry {d.get('name')!r}")
    src = entry.get("source") or {}
    if src.get("type", "Local") != "Local":
        fail(f"{where}: source type {src.get('type')!r}: this script handles Local modules (the file in the Envoy image)")
    path = (src.get("local") or {}).get("path") or fail(f"{where}: the EnvoyProxy entry has no source.local.path")
    if not path.startswith("/"):
        fail(f"{where}: source.local.path {path!r} is not absolute")
    dmc = {"module": {"local": {"filename": str(args.module)}}}
    # Proto3 bools: false is not marshalled (protojson omits defaults).
    if entry.get("doNotClose"):
        dmc["do_not_close"] = True
    if entry.get("loadGlobally"):
        dmc["load_globally"] = True
    filt = {"@type": DYNAMIC_MODULE_TYPE, "dynamic_module_config": dmc}
    if d.get("filterName"):
        filt["filter_name"] = d["filterName"]
    if d.get("config") is not None:
        # apiextensionsv1.JSON: Kubernetes hands Envoy Gateway the object as JSON.
        # Kubernetes stores it as JSON with sorted keys; the module does not care about order.
        filt["filter_config"] = {"@type": STRING_VALUE_TYPE,
                                 "value": json.dumps(d["config"], separators=(",", ":"), sort_keys=True)}
    if d.get("terminalFilter"):
        filt["terminal_filter"] = True
    note(f"envoy-gateway-native: {where}: module {d['name']!r} from {path} (here {args.module})")
    return {"name": f"envoy.filters.http.dynamic_modules/envoyextensionpolicy/{ns}/{policy}/dynamic-module/{index}",
            "disabled": True, "typed_config": filt}


def eg_wasm_filter(ns, policy, index, w, args) -> dict:
    """The HCM http filter Envoy Gateway builds (wasmConfig + buildHCMWasmFilter), with the
    code made local (Envoy Gateway serves it over HTTP from its own cache instead)."""
    where = f"EnvoyExtensionPolicy {ns}/{policy} wasm[{index}]"
    code = w.get("code") or {}
    if code.get("type") != "Image" or not (code.get("image") or {}).get("url"):
        fail(f"{where}: code is not type Image with image.url")
    check_sha256(code["image"].get("sha256"), f"{where} image")
    if w.get("failOpen") is True:
        fail(f"{where}: failOpen is true")
    ir_name = f"envoyextensionpolicy/{ns}/{policy}/wasm/{index}"
    plugin_text = json.dumps(w.get("config") or {}, separators=(",", ":"))
    vm = {
        "vm_id": ir_name,  # "Do not share VMs across different filters"
        "runtime": "envoy.wasm.runtime.v8",
        "code": local_code(args.wasm),
    }
    host_keys = (w.get("env") or {}).get("hostKeys")
    if host_keys is not None:
        vm["environment_variables"] = {"host_env_keys": list(host_keys)}
    # fail_open is a proto3 bool: false is not marshalled (protojson omits defaults).
    cfg = {"name": w.get("name") or ir_name, "vm_config": vm,
           "configuration": {"@type": STRING_VALUE_TYPE, "value": plugin_text}}
    if w.get("failOpen"):
        cfg["fail_open"] = True
    if w.get("rootID"):
        cfg["root_id"] = w["rootID"]
    note(f"envoy-gateway: {where}: image {code['image']['url']} pinned to manifest digest "
         f"{code['image']['sha256'][:12]}...")
    return {"name": eg_filter_name(ns, policy, index), "disabled": True,
            "typed_config": {"@type": WASM_TYPE, "config": cfg}}


def json_pointer_tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        pointer = "/" + pointer
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def pointer_add(doc, pointer: str, value):
    """RFC 6902 add, creating missing object parents (EnsurePathExistsOnAdd); at an array
    index it inserts before the element there."""
    toks = json_pointer_tokens(pointer)
    if not toks:
        fail("a patch that replaces the whole resource is not supported here")
    cur = doc
    for t in toks[:-1]:
        if isinstance(cur, list):
            cur = cur[int(t)]
        else:
            cur = cur.setdefault(t, {})
    last = toks[-1]
    if isinstance(cur, list):
        cur.insert(len(cur) if last == "-" else int(last), value)
    else:
        cur[last] = value


FILTER_EXPR = re.compile(r"^\.\.([A-Za-z_][A-Za-z0-9_]*)\[\?\(?\s*@\.([A-Za-z_][A-Za-z0-9_]*)\s*==\s*'([^']*)'\s*\)?\]$")


def jsonpath_pointers(doc, expr: str) -> list[str]:
    """The one JSONPath form this script understands: ..<field>[?(@.<key> == '<value>')],
    every element of every list named <field>, at any depth, whose <key> equals <value>."""
    m = FILTER_EXPR.match(expr.strip())
    if not m:
        fail(f"jsonPath {expr!r}: only the form ..field[?(@.key == 'value')] is understood here")
    field, key, value = m.groups()
    out = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                p = f"{path}/{k.replace('~', '~0').replace('/', '~1')}"
                if k == field and isinstance(v, list):
                    out.extend(f"{p}/{i}" for i, item in enumerate(v) if isinstance(item, dict) and item.get(key) == value)
                walk(v, p)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(doc, "")
    return out


def apply_patch(doc: dict, p: dict):
    op = p["operation"]
    if op.get("op") != "add":
        fail("only add operations are expected here")
    if op.get("jsonPath"):
        pointers = jsonpath_pointers(doc, op["jsonPath"])
        if not pointers:
            fail(f"jsonPath {op['jsonPath']!r} finds nothing in {p['type'].rsplit('.', 1)[-1]} {p['name']!r}: "
                 "Envoy Gateway would report 'no jsonPointers were found' and skip this patch")
        sub = op.get("path", "")
        pointers = [ptr + ("" if not sub else (sub if sub.startswith("/") else "/" + sub)) for ptr in pointers]
    else:
        pointers = [op["path"]]
    # Last match first, so an insert does not shift the pointers still to apply.
    for ptr in reversed(pointers):
        pointer_add(doc, ptr, copy.deepcopy(op.get("value")))
        shown = json.dumps(op.get("value")) if not isinstance(op.get("value"), dict) else \
            "{" + ", ".join(f"{k}: ..." for k in op["value"]) + "}"
        note(f"envoy-gateway: EnvoyPatchPolicy add {ptr} = {shown}")


def extract_envoy_gateway(docs, args, native: bool = False) -> dict:
    mesh = "envoy-gateway-native" if native else "envoy-gateway"
    eep = one(of_kind(docs, "EnvoyExtensionPolicy"), "EnvoyExtensionPolicy")
    ns, policy = meta(eep)
    spec = eep.get("spec") or {}
    if native:
        if spec.get("wasm"):
            fail("the EnvoyExtensionPolicy has wasm entries too: this script handles callback-guard alone")
        wasms = spec.get("dynamicModules") or fail("the EnvoyExtensionPolicy has no dynamicModules entries")
    else:
        wasms = spec.get("wasm") or fail("the EnvoyExtensionPolicy has no wasm entries")

    # targetRefs -> HTTPRoute -> Gateway -> EnvoyProxy -> Secret
    refs = spec.get("targetRefs") or ([spec["targetRef"]] if spec.get("targetRef") else [])
    route_ref = one([r for r in refs if r.get("kind") == "HTTPRoute"], "HTTPRoute targetRef")
    route = one([r for r in of_kind(docs, "HTTPRoute") if meta(r) == (ns, route_ref["name"])],
                f"HTTPRoute {ns}/{route_ref['name']}")
    parent = one(route["spec"].get("parentRefs", []), "parentRef of the HTTPRoute")
    gw_ns = parent.get("namespace", ns)
    gw = one([g for g in of_kind(docs, "Gateway") if meta(g) == (gw_ns, parent["name"])],
             f"Gateway {gw_ns}/{parent['name']}")
    listeners = gw["spec"].get("listeners", [])
    if parent.get("sectionName"):
        listeners = [lst for lst in listeners if lst.get("name") == parent["sectionName"]]
    listener = one(listeners, "Gateway listener the HTTPRoute attaches to")
    pref = (gw["spec"].get("infrastructure") or {}).get("parametersRef") or fail(
        "the Gateway has no infrastructure.parametersRef (the EnvoyProxy with the push key)")
    ep = one([e for e in of_kind(docs, "EnvoyProxy") if meta(e) == (gw_ns, pref.get("name")) and pref.get("kind") == "EnvoyProxy"],
             f"EnvoyProxy {gw_ns}/{pref.get('name')} (parametersRef is local to the Gateway's namespace)")
    container = (((ep["spec"].get("provider") or {}).get("kubernetes") or {}).get("envoyDeployment") or {}).get("container") or {}
    sname, skey = env_from_secret(container.get("env"), f"EnvoyProxy {gw_ns}/{pref['name']}")
    secret = one([s for s in of_kind(docs, "Secret") if meta(s)[1] == sname], f"Secret {sname}")
    find_secret(docs, meta(secret)[0], sname, skey)
    note(f"envoy-gateway: {PUSH_KEY_ENV} from Secret {meta(secret)[0]}/{sname}[{skey}] "
         f"(must be the namespace the Envoy pods run in)")

    if len(wasms) != 1:
        fail(f"this script handles one {'dynamicModules' if native else 'Wasm'} entry (callback-guard) per policy")
    if native:
        # The module must be in the Envoy container: an image that carries it, or a volume.
        path = next((((e.get("source") or {}).get("local") or {}).get("path") for e in ep["spec"].get("dynamicModules") or []
                     if e.get("name") == wasms[0].get("name")), None) or ""
        mounts = [m.get("mountPath", "") for m in container.get("volumeMounts") or []]
        if not container.get("image") and not any(path.startswith(m.rstrip("/") + "/") for m in mounts if m):
            fail(f"EnvoyProxy {gw_ns}/{pref['name']}: neither a container image nor a volumeMount provides {path or 'the module'}: "
                 "the stock Envoy image has no libcallback_guard.so")
        note(f"envoy-gateway-native: {path} from {container.get('image') or 'a volume'}")
        wasm_filter = eg_native_filter(ns, policy, 0, wasms[0], ep["spec"].get("dynamicModules") or [], args)
    else:
        wasm_filter = eg_wasm_filter(ns, policy, 0, wasms[0], args)
    wasm_name = wasm_filter["name"]

    # The Listener and its RouteConfiguration as Envoy Gateway marshals them (protojson,
    # proto field names). Both are named after the Gateway listener (XDSNameSchemeV2: port-based).
    xds_name = f"{gw_ns}/{gw['metadata']['name']}/{listener['name']}"
    accepted_names = {xds_name, f"tcp-{listener['port']}", f"http-{listener['port']}"}
    listener_doc = {
        "name": xds_name,
        "default_filter_chain": {"filters": [{
            "name": HCM_NAME,
            "typed_config": {"@type": HCM_TYPE, "stat_prefix": f"http-{listener['port']}",
                             "rds": {"route_config_name": xds_name},
                             "http_filters": [wasm_filter, {"name": ROUTER_NAME, "typed_config": {"@type": ROUTER_TYPE}}]},
        }]},
    }
    routes = [{
        "name": rname,
        "match": match,
        "route": {"cluster": "upstream", "timeout": "10s"},
        # patchRoute -> enableFilterOnRoute: FilterConfig{Config: &anypb.Any{}}.
        "typed_per_filter_config": {wasm_name: {"@type": FILTER_CONFIG_TYPE, "config": {}}},
    } for rname, match in eg_routes(route, listener)]
    for path in args.extra_route:
        # A route of another HTTPRoute on the same listener, not targeted by the policy.
        routes.append({"name": f"httproute/{ns}/other{path.replace('/', '-')}/rule/0/match/0/*",
                       "match": {"path_separated_prefix": path}, "route": {"cluster": "upstream", "timeout": "10s"}})
        note(f"envoy-gateway: added route {path} of another HTTPRoute (no EnvoyExtensionPolicy) on the same listener")
    route_doc = {"name": xds_name, "virtual_hosts": [{"name": f"{xds_name}/*", "domains": ["*"], "routes": routes}]}

    epp = one(of_kind(docs, "EnvoyPatchPolicy"), "EnvoyPatchPolicy")
    eps = epp.get("spec") or {}
    tref = eps.get("targetRef") or {}
    if (tref.get("kind"), tref.get("name"), meta(epp)[0]) != ("Gateway", gw["metadata"]["name"], gw_ns):
        fail(f"the EnvoyPatchPolicy targets {tref}, not Gateway {gw_ns}/{gw['metadata']['name']} in its own namespace")
    if eps.get("type") != "JSONPatch":
        fail("the EnvoyPatchPolicy type must be JSONPatch")
    targets = {LISTENER_TYPE: listener_doc, ROUTE_CONFIG_TYPE: route_doc}
    for p in eps.get("jsonPatches", []):
        if p.get("type") not in targets:
            fail(f"patch of {p.get('type')}: only Listener and RouteConfiguration patches are expected here")
        if p.get("name") not in accepted_names:
            fail(f"patch targets {p['type'].rsplit('.', 1)[-1]} {p.get('name')!r}; Envoy Gateway names this "
                 f"Gateway listener's resources {xds_name!r} (or port-based with XDSNameSchemeV2)")
        apply_patch(targets[p["type"]], p)

    hcm = listener_doc["default_filter_chain"]["filters"][0]["typed_config"]
    filters = hcm["http_filters"]
    patched = next((f for f in filters if f.get("name") == wasm_name), None) or fail(f"the filter {wasm_name} is gone")
    if native:
        cfg = check_native(patched["typed_config"], f"filter {wasm_name}")
    else:
        cfg = check_wasm(patched["typed_config"], f"filter {wasm_name}", args)
    check_rbac_defence(filters, wasm_name, cfg, routes, mesh, True, args)
    apply_negative_switches(cfg, args)
    add_allow_cidrs(cfg, args.add_allow_cidr)
    if args.simulate_missing_wasm:
        filters = simulate_missing_wasm(filters, routes, wasm_name)

    stats_tags = []
    merged = {}
    boot = ep["spec"].get("bootstrap") or {}
    if boot:
        if boot.get("type") != "Merge":
            fail("EnvoyProxy bootstrap: only type Merge is expected here")
        merged = yaml.safe_load(boot["value"]) or {}
        stats_tags = (merged.get("stats_config") or {}).get("stats_tags", [])
    where = f"EnvoyProxy {gw_ns}/{pref['name']} bootstrap"
    check_stats_tags(stats_tags, where, ENVOY_NATIVE_YAML if native else ENVOY_YAML)
    runtime = None
    if native:
        runtime = merged.get("layered_runtime") or fail(
            f"{where}: no layered_runtime: without {STRIP_PREFIX_FLAG} the module's counters are "
            "envoy_dynamicmodulescustom_callback_guard_*, not the wasm's names (deploy/grafana)")
        if not any((layer.get("static_layer") or {}).get(STRIP_PREFIX_FLAG) is True for layer in runtime.get("layers") or []):
            fail(f"{where}: no static runtime layer sets {STRIP_PREFIX_FLAG}: true (the wasm's Prometheus names)")
        note(f"{where}: runtime layer with {STRIP_PREFIX_FLAG}: true (merged: one more layer after Envoy Gateway's)")

    route_config = {"name": route_doc["name"], "virtual_hosts": route_doc["virtual_hosts"]}
    return {"http_filters": filters, "route_config": route_config,
            "stats_config": {"stats_tags": stats_tags}, "plugin_cfg": cfg, "layered_runtime": runtime}


# ----------------------------------------------------------------------------- bootstrap


def build_bootstrap(x: dict, args) -> dict:
    host, _, port = args.upstream.rpartition(":")
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "callbacks",
        "codec_type": "AUTO",
        "http_protocol_options": {"accept_http_10": True},
        "route_config": x["route_config"],
        "http_filters": x["http_filters"],
    }
    stats = {k: v for k, v in x["stats_config"].items() if v}
    boot = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": args.admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "callbacks",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": args.port}},
                "filter_chains": [{"filters": [{"name": HCM_NAME, "typed_config": hcm}]}],
            }],
            "clusters": [{
                "name": "upstream",
                "type": "STATIC",
                "connect_timeout": "2s",
                "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": host, "port_value": int(port)}}}}]}]},
            }],
        },
    }
    if stats:
        boot["stats_config"] = stats
    if x.get("layered_runtime"):
        boot["layered_runtime"] = x["layered_runtime"]
    return boot


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mesh", choices=["istio", "envoy-gateway", "envoy-gateway-native"])
    ap.add_argument("--manifests", type=Path, help="directory of the manifests (default: deploy/<mesh>)")
    ap.add_argument("--istio-rbac", action="store_true",
                    help="istio: also read optional/require-mark-rbac.yaml (the optional RBAC defence)")
    ap.add_argument("--wasm", type=Path, help="istio, envoy-gateway: the Wasm module to load (code.local)")
    ap.add_argument("--module", type=Path,
                    help="envoy-gateway-native: libcallback_guard.so to load (module.local.filename)")
    ap.add_argument("--port", type=int, default=10000)
    ap.add_argument("--admin-port", type=int, default=9901)
    ap.add_argument("--upstream", default="127.0.0.1:8080", help="HOST:PORT of the callback receiver")
    ap.add_argument("--add-allow-cidr", action="append", default=[], metavar="CIDR")
    ap.add_argument("--extra-route", action="append", default=[], metavar="PATH",
                    help="envoy-gateway: a route of another HTTPRoute on the same listener (no policy)")
    ap.add_argument("--drop-stop-iteration", action="store_true",
                    help="remove allow_on_headers_stop_iteration (to see the failure it causes)")
    ap.add_argument("--drop-filter-state-mark", action="store_true",
                    help="remove filter_state_mark from the plugin configuration (to see the RBAC refuse)")
    ap.add_argument("--simulate-missing-wasm", action="store_true",
                    help="take the Wasm filter out of the chain (what Envoy runs when it could not create it)")
    ap.add_argument("--override-out", type=Path,
                    help="istio: write the ConfigMap's bootstrap override here and leave its stats tags out of "
                         "the bootstrap (give the file to Envoy with --config-yaml, as pilot-agent does)")
    ap.add_argument("-o", "--out", type=Path, help="write the bootstrap here (default: stdout)")
    ap.add_argument("--plugin-config-out", type=Path, help="write the plugin configuration JSON here")
    args = ap.parse_args(argv)
    native = args.mesh == "envoy-gateway-native"
    code = args.module if native else args.wasm
    if code is None:
        print(f"extract: {args.mesh} needs {'--module' if native else '--wasm'}", file=sys.stderr)
        return 1
    code = code.resolve()
    if not code.is_file():
        print(f"extract: {code}: no such file", file=sys.stderr)
        return 1
    if native:
        args.module = code
        if args.drop_stop_iteration:
            print("extract: --drop-stop-iteration is for the Wasm filter", file=sys.stderr)
            return 1
    else:
        args.wasm = code
    directory = args.manifests or DEPLOY / args.mesh
    extra = []
    if args.istio_rbac:
        if args.mesh != "istio":
            print("extract: --istio-rbac is for istio", file=sys.stderr)
            return 1
        extra = sorted((directory / "optional").glob("*.yaml"))
    try:
        docs = load_docs(directory, extra)
        x = extract_istio(docs, args) if args.mesh == "istio" else extract_envoy_gateway(docs, args, native)
        boot = build_bootstrap(x, args)
    except ExtractError as e:
        print(f"extract: FAILED ({args.mesh}): {e}", file=sys.stderr)
        return 1
    text = f"# Generated by deploy/extract.py {args.mesh} from {directory}. Do not edit.\n"
    text += yaml.safe_dump(boot, sort_keys=False, width=120)
    if args.out:
        args.out.write_text(text)
        note(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    if args.plugin_config_out:
        args.plugin_config_out.write_text(plugin_holder(x["plugin_cfg"])["value"])
        note(f"wrote {args.plugin_config_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
