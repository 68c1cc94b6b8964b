//! `check-config` on an Envoy YAML: a bootstrap, ECDS resources, or Kubernetes
//! manifests (Istio `EnvoyFilter` / `WasmPlugin`, Envoy Gateway
//! `EnvoyExtensionPolicy`), one or many documents. Finds each callback-guard
//! filter and the plugin configuration the filter would get:
//!
//! - a Wasm filter (`@type` `envoy.extensions.filters.http.wasm.v3.Wasm`, or a
//!   `TypedStruct` of it) whose plugin `name`, `root_id`, `vm_id` or code names
//!   callback-guard: its `config.configuration`, a `google.protobuf.StringValue`
//!   whose `value` is the JSON (absent: every default);
//! - the native module (`@type`
//!   `envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter`,
//!   `dynamic_module_config.name` or `filter_name` `callback_guard`): its
//!   `filter_config`, a StringValue likewise;
//! - Envoy Gateway's `EnvoyExtensionPolicy` `spec.wasm[i].config` (and
//!   `spec.dynamicModules[i].config`, the native module) and Istio's
//!   `WasmPlugin` `spec.pluginConfig`: YAML objects, turned into the JSON the
//!   controllers hand to the filter.
//!
//! Only the CLI links this (and `yaml_serde`); the wasm module never does.

use yaml_serde::Value;

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const DYNAMIC_MODULE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
const TYPED_STRUCT_TYPES: [&str; 2] = [
    "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type.googleapis.com/xds.type.v3.TypedStruct",
];
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// One callback-guard filter found in the file.
pub struct Found {
    /// 1-based index of the YAML document.
    pub document: usize,
    /// Where the filter entry sits, e.g.
    /// `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]`.
    pub path: String,
    /// The plugin configuration text (JSON; empty = every default), or why
    /// it cannot be read.
    pub config: Result<String, String>,
}

/// Every callback-guard filter of a YAML text, in document order. `Err` when
/// the text is not YAML.
pub fn find(text: &str) -> Result<Vec<Found>, String> {
    let mut out = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let mut value: Value =
            serde::Deserialize::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        value
            .apply_merge()
            .map_err(|e| format!("document {}: {e}", i + 1))?;
        let mut found = Vec::new();
        walk(&value, "", false, &mut found);
        out.extend(found.into_iter().map(|(path, config)| Found {
            document: i + 1,
            path,
            config,
        }));
    }
    Ok(out)
}

type Hits = Vec<(String, Result<String, String>)>;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn get<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    v.as_mapping()?.get(key)
}

fn get_str<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    get(v, key)?.as_str()
}

/// Names that say callback-guard.
fn names_callback_guard(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    s.contains("callback_guard") || s.contains("callback-guard")
}

/// `named`: the filter entry this is the `typed_config` of is named
/// callback-guard (`name: callback-guard`).
fn walk(v: &Value, path: &str, named: bool, out: &mut Hits) {
    match v {
        Value::Mapping(m) => {
            if let Some(hit) = filter_at(v, named) {
                if let Some(config) = hit {
                    // The place of the filter entry: the object whose
                    // `typed_config` this is.
                    let place = match path {
                        "typed_config" => "",
                        p => p.strip_suffix(".typed_config").unwrap_or(p),
                    };
                    out.push((place.to_string(), config));
                }
                return;
            }
            if let Some(found) = manifest_at(v, path) {
                out.extend(found);
                return;
            }
            let entry_named = get_str(v, "name").is_some_and(names_callback_guard);
            for (k, child) in m {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => yaml_serde::to_string(other)
                        .map(|s| s.trim_end().to_string())
                        .unwrap_or_else(|_| "?".to_string()),
                };
                let named = entry_named && key == "typed_config";
                walk(child, &join(path, &key), named, out);
            }
        }
        Value::Sequence(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(child, &format!("{path}[{i}]"), false, out);
            }
        }
        Value::Tagged(t) => walk(&t.value, path, named, out),
        _ => {}
    }
}

/// `Some(Some(config))`: a callback-guard filter; `Some(None)`: a filter of
/// the same kind that is not callback-guard (not searched further); `None`:
/// no filter here.
fn filter_at(v: &Value, named: bool) -> Option<Option<Result<String, String>>> {
    let ty = get_str(v, "@type")?;
    if ty == WASM_TYPE {
        return Some(wasm_config(get(v, "config"), named));
    }
    if TYPED_STRUCT_TYPES.contains(&ty) && get_str(v, "type_url") == Some(WASM_TYPE) {
        return Some(wasm_config(
            get(v, "value").and_then(|s| get(s, "config")),
            named,
        ));
    }
    if ty == DYNAMIC_MODULE_TYPE {
        let module = get(v, "dynamic_module_config").and_then(|c| get_str(c, "name"));
        let ours = named
            || [module, get_str(v, "filter_name")]
                .into_iter()
                .flatten()
                .any(names_callback_guard);
        return Some(ours.then(|| string_value(get(v, "filter_config"), "filter_config")));
    }
    None
}

/// A Wasm `PluginConfig` that is callback-guard's (or of a filter entry
/// named so): its configuration.
fn wasm_config(config: Option<&Value>, named: bool) -> Option<Result<String, String>> {
    let Some(config) = config else {
        return named.then(|| Ok(String::new()));
    };
    let vm = get(config, "vm_config");
    let code = vm.and_then(|vm| get(vm, "code"));
    let names = [
        get_str(config, "name"),
        get_str(config, "root_id"),
        vm.and_then(|vm| get_str(vm, "vm_id")),
        code.and_then(|c| get(c, "local"))
            .and_then(|l| get_str(l, "filename")),
        code.and_then(|c| get(c, "remote"))
            .and_then(|r| get(r, "http_uri"))
            .and_then(|h| get_str(h, "uri")),
    ];
    (named || names.into_iter().flatten().any(names_callback_guard))
        .then(|| string_value(get(config, "configuration"), "configuration"))
}

/// The JSON text of a `google.protobuf.StringValue` (absent: empty, the defaults).
fn string_value(v: Option<&Value>, key: &str) -> Result<String, String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(v) => match get_str(v, "@type") {
            Some(STRING_VALUE_TYPE) => match get(v, "value") {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(format!("{key}.value: not a string")),
            },
            Some(other) => Err(format!(
                "{key}: a `{other}`; callback-guard reads a {STRING_VALUE_TYPE} holding the JSON"
            )),
            None => Err(format!(
                "{key}: expected an object with \"@type\": {STRING_VALUE_TYPE} and the JSON in `value`"
            )),
        },
    }
}

/// Kubernetes kinds whose plugin configuration is a YAML object.
fn manifest_at(v: &Value, path: &str) -> Option<Hits> {
    let kind = get_str(v, "kind")?;
    let spec = get(v, "spec")?;
    match kind {
        "EnvoyExtensionPolicy" => {
            let mut hits = Vec::new();
            // The native module (Envoy Gateway >= 1.8): `spec.dynamicModules[i].config`.
            let modules = get(spec, "dynamicModules").and_then(Value::as_sequence);
            for (i, m) in modules.into_iter().flatten().enumerate() {
                let names = [get_str(m, "name"), get_str(m, "filterName")];
                if names.into_iter().flatten().any(names_callback_guard) {
                    hits.push((
                        join(path, &format!("spec.dynamicModules[{i}]")),
                        object_json(get(m, "config"), "config"),
                    ));
                }
            }
            let wasm = get(spec, "wasm").and_then(Value::as_sequence);
            for (i, w) in wasm.into_iter().flatten().enumerate() {
                let code = get(w, "code");
                let names = [
                    get_str(w, "name"),
                    get_str(w, "rootID"),
                    code.and_then(|c| get(c, "image"))
                        .and_then(|i| get_str(i, "url")),
                    code.and_then(|c| get(c, "http"))
                        .and_then(|h| get_str(h, "url")),
                ];
                if names.into_iter().flatten().any(names_callback_guard) {
                    hits.push((
                        join(path, &format!("spec.wasm[{i}]")),
                        object_json(get(w, "config"), "config"),
                    ));
                }
            }
            Some(hits)
        }
        "WasmPlugin" => {
            let names = [
                get_str(spec, "url"),
                get_str(spec, "pluginName"),
                get(v, "metadata").and_then(|m| get_str(m, "name")),
            ];
            let ours = names.into_iter().flatten().any(names_callback_guard);
            Some(if ours {
                vec![(
                    join(path, "spec"),
                    object_json(get(spec, "pluginConfig"), "pluginConfig"),
                )]
            } else {
                Vec::new()
            })
        }
        _ => None,
    }
}

/// A YAML object as the JSON a controller passes on (absent: empty).
fn object_json(v: Option<&Value>, key: &str) -> Result<String, String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(v @ Value::Mapping(_)) => {
            serde_json::to_string(v).map_err(|e| format!("{key}: not expressible as JSON: {e}"))
        }
        Some(_) => Err(format!("{key}: expected an object")),
    }
}
