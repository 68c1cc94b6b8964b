//! Plugin configuration: the JSON a user puts in the wasm filter's `configuration`.
//!
//! Parsing is two steps. Serde reads the shape (unknown keys are refused and the
//! error names the key path), then [`Config::validate`] checks meaning and collects
//! every problem it finds, each naming its key. Secrets are resolved here, once,
//! from the inline value or from an environment variable (`secret_env`), so the
//! request path never touches configuration text.

use std::collections::HashSet;
use std::net::IpAddr;

use base64::Engine as _;
use ipnet::IpNet;

use crate::callback::Format;
use crate::secret::Secret;

/// Default `max_body_bytes`: callbacks are small; 64 KiB is generous.
pub const DEFAULT_MAX_BODY_BYTES: usize = 65536;
/// Envoy's default `per_connection_buffer_limit_bytes`: what a filter may
/// buffer of a body before Envoy answers 413 itself.
pub const ENVOY_DEFAULT_BUFFER_LIMIT: usize = 1 << 20;
/// Default reservation lifetime of a live stream in the registry (one day).
pub const DEFAULT_TTL_S: u64 = 86400;
/// Default bound on the number of live streams held in the registry.
pub const DEFAULT_MAX_STREAMS: usize = 100_000;
/// Default Standard Webhooks timestamp tolerance.
pub const DEFAULT_WEBHOOK_TOLERANCE_S: u64 = 300;
/// Default query parameter that carries the callback shared key.
pub const DEFAULT_SHARED_KEY_PARAM: &str = "auth_key";

/// One configuration problem, naming the key it is about. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// Dotted path of the key, e.g. `push_auth.keys[1].secret`.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            key: one_line(key.into()),
            problem: one_line(problem.into()),
        }
    }
}

/// Messages quote configuration text (key ids, names, serde's view of a
/// value); control characters become `?` so that the problem list stays one
/// log line whatever the configuration holds.
fn one_line(s: String) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    } else {
        s
    }
}

/// Push-token scheme (see the `token` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// KLS "simple authentication": `t` expiry and `k` = md5(key+stream+t)[8..24].
    KsMd5,
    /// `t` expiry and `sign` = hex HMAC-SHA256(key, app\nstream\nt), optional `kid`.
    HmacSha256,
}

/// A validated, ready-to-use configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bodies larger than this get `PayloadTooLarge`.
    pub max_body_bytes: usize,
    /// Known apps; `None` accepts any app.
    pub apps: Option<HashSet<String>>,
    /// Callback dialects accepted.
    pub formats: Formats,
    /// Push-token check; `None` leaves push params unchecked.
    pub push_auth: Option<PushAuth>,
    /// Checks on who sent the callback.
    pub callback_auth: CallbackAuth,
    /// The one-live-push-per-stream rule.
    pub duplicate_streams: DuplicateStreams,
    /// Replay guard on the event timestamp, in seconds; 0 = off.
    pub max_event_age_s: u64,
    /// Enforce refusals, or only report them.
    pub mode: Mode,
    /// Set filter state `wasm.x-callback-guard-checked` = `1` on every
    /// callback let through, so a stock RBAC filter after this one can refuse
    /// any request callback-guard did not check (docs/deployment.md: ECDS).
    pub filter_state_mark: bool,
}

/// Which callback dialects are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    /// KLS new version (JSON).
    pub kls_v2: bool,
    /// KLS old version (form, `call=user_publish…`).
    pub kls_v1: bool,
    /// nginx-rtmp `on_publish` form (`call=publish…`).
    pub nginx_rtmp: bool,
}

impl Formats {
    /// True when the given dialect is switched on.
    pub fn allows(&self, f: Format) -> bool {
        match f {
            Format::KlsV2 => self.kls_v2,
            Format::KlsV1 => self.kls_v1,
            Format::NginxRtmp => self.nginx_rtmp,
        }
    }
}

/// Push-token verification settings.
#[derive(Debug, Clone)]
pub struct PushAuth {
    /// The token scheme.
    pub scheme: Scheme,
    /// Keys in configuration order; any that applies and matches accepts.
    pub keys: Vec<PushKey>,
    /// Grace after the expiry `t`, in seconds.
    pub clock_skew_s: u64,
}

/// One push-token key, possibly limited to some apps or ingest domains.
#[derive(Debug, Clone)]
pub struct PushKey {
    /// Key id: reported in `x-callback-guard-key-id`, selectable by `kid`.
    pub id: String,
    /// The key itself.
    pub secret: Secret,
    /// Apps the key applies to; `None` = all.
    pub apps: Option<Vec<String>>,
    /// Ingest domains (lowercase) the key applies to; `None` = all.
    pub domains: Option<Vec<String>>,
}

impl PushKey {
    /// True when this key may be used for a callback about `app` on `domain`.
    pub fn applies_to(&self, app: &str, domain: Option<&str>) -> bool {
        let app_ok = self
            .apps
            .as_ref()
            .is_none_or(|apps| apps.iter().any(|a| a == app));
        let domain_ok = self
            .domains
            .as_ref()
            .is_none_or(|ds| domain.is_some_and(|d| ds.iter().any(|x| x.eq_ignore_ascii_case(d))));
        app_ok && domain_ok
    }
}

/// Sender checks; every configured one must pass.
#[derive(Debug, Clone, Default)]
pub struct CallbackAuth {
    /// Allowed sender networks; `None` = any sender.
    pub allow_cidrs: Option<Vec<IpNet>>,
    /// How many `X-Forwarded-For` hops (from the right) to trust; 0 = ignore the header.
    pub trusted_xff_hops: usize,
    /// Shared key in the callback URL's query or a header.
    pub shared_key: Option<SharedKey>,
    /// Standard Webhooks signature.
    pub webhook_signature: Option<WebhookSignature>,
}

/// A named secret (shared keys, webhook secrets).
#[derive(Debug, Clone)]
pub struct NamedSecret {
    /// Id of the key, for logs and headers.
    pub id: String,
    /// The secret bytes.
    pub secret: Secret,
}

/// The shared-key sender check.
#[derive(Debug, Clone)]
pub struct SharedKey {
    /// Query parameter of the callback URL that carries the key, if any.
    pub query_param: Option<String>,
    /// Header (lowercase) that carries the key, if any.
    pub header: Option<String>,
    /// Accepted keys (rotation list).
    pub keys: Vec<NamedSecret>,
}

/// The Standard Webhooks sender check.
#[derive(Debug, Clone)]
pub struct WebhookSignature {
    /// Accepted secrets, already base64-decoded from `whsec_…`.
    pub keys: Vec<NamedSecret>,
    /// Allowed distance between `webhook-timestamp` and now, both directions.
    pub tolerance_s: u64,
}

/// The duplicate-stream rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateStreams {
    /// Refuse a second live push of a stream.
    pub reject: bool,
    /// How long a reservation lives without an end event.
    pub ttl_s: u64,
    /// Bound on the number of live streams remembered (shared-data store).
    pub max_streams: usize,
    /// Where the registry lives: `None` is Proxy-Wasm shared data (one Envoy).
    pub etcd: Option<EtcdStore>,
}

/// `duplicate_streams.store.etcd`: the registry on etcd, shared by a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdStore {
    /// The Envoy cluster that reaches etcd's client port (HTTP/1.1).
    pub cluster: String,
    /// Prefix of every key the registry writes.
    pub key_prefix: String,
    /// How long a registry op may take, all round trips included.
    pub timeout_ms: u64,
    /// The `:authority` of the requests to etcd.
    pub authority: String,
}

/// Default `duplicate_streams.store.etcd.key_prefix`.
pub const DEFAULT_ETCD_KEY_PREFIX: &str = "/callback-guard/";
/// Default `duplicate_streams.store.etcd.timeout_ms`.
pub const DEFAULT_ETCD_TIMEOUT_MS: u64 = 1500;

/// `mode`: whether refusals are enforced or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refused callbacks are answered at the edge (the default).
    Enforce,
    /// Every callback is forwarded; one that would have been refused carries
    /// `x-callback-guard-would-reject`, and is counted and logged as refused.
    Observe,
}

// ---- the raw shape, read by `read` ---------------------------------------------------

struct RawConfig {
    max_body_bytes: Option<u64>,
    apps: Option<Vec<String>>,
    formats: Option<Vec<String>>,
    push_auth: Option<RawPushAuth>,
    callback_auth: Option<RawCallbackAuth>,
    duplicate_streams: Option<RawDuplicateStreams>,
    max_event_age_s: Option<u64>,
    mode: Option<String>,
    filter_state_mark: Option<bool>,
}

struct RawPushAuth {
    scheme: Scheme,
    keys: Vec<RawKey>,
    clock_skew_s: Option<u64>,
}

struct RawKey {
    id: String,
    secret: Option<String>,
    secret_env: Option<String>,
    apps: Option<Vec<String>>,
    domains: Option<Vec<String>>,
}

struct RawCallbackAuth {
    allow_cidrs: Option<Vec<String>>,
    trusted_xff_hops: Option<usize>,
    shared_key: Option<RawSharedKey>,
    webhook_signature: Option<RawWebhook>,
}

struct RawSharedKey {
    query_param: Option<String>,
    header: Option<String>,
    keys: Vec<RawKey>,
}

struct RawWebhook {
    keys: Vec<RawKey>,
    tolerance_s: Option<u64>,
}

struct RawDuplicateStreams {
    reject: Option<bool>,
    ttl_s: Option<u64>,
    max_streams: Option<usize>,
    etcd: Option<RawEtcd>,
}

struct RawEtcd {
    cluster: String,
    key_prefix: Option<String>,
    timeout_ms: Option<u64>,
    authority: Option<String>,
}

/// Reads the raw configuration out of parsed JSON. Every problem names its
/// key path (`push_auth.keys[1].secret_env`) and the kind of value found,
/// never the value itself: a secret put in the wrong place must not reach a
/// log line. Unknown keys are refused. Written by hand rather than with
/// serde's derive: the derive's path tracking and error formatting made up
/// more than a tenth of the module.
mod read {
    use serde_json::{Map, Value};

    use super::{
        ConfigError, RawCallbackAuth, RawConfig, RawDuplicateStreams, RawEtcd, RawKey, RawPushAuth,
        RawSharedKey, RawWebhook, Scheme,
    };

    type R<T> = Result<T, ConfigError>;

    /// What a value is, for messages.
    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
            Value::Number(_) => "number with a fraction or an exponent",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    fn invalid_type(path: &str, v: &Value, expected: &str) -> ConfigError {
        ConfigError::new(
            path,
            format!("invalid type: {}, expected {expected}", kind(v)),
        )
    }

    /// An object being read: each key asked for is marked as known.
    pub(super) struct Obj<'a> {
        map: &'a Map<String, Value>,
        path: String,
        known: Vec<&'static str>,
    }

    impl<'a> Obj<'a> {
        fn new(v: &'a Value, path: &str) -> R<Obj<'a>> {
            match v {
                Value::Object(map) => Ok(Obj {
                    map,
                    path: path.to_string(),
                    known: Vec::new(),
                }),
                other => Err(invalid_type(path, other, "an object")),
            }
        }

        fn at(&self, key: &str) -> String {
            if self.path.is_empty() {
                key.to_string()
            } else {
                format!("{}.{key}", self.path)
            }
        }

        /// The value of `key` and its path, unless absent (null counts as absent).
        fn get(&mut self, key: &'static str) -> Option<(&'a Value, String)> {
            self.known.push(key);
            match self.map.get(key) {
                None | Some(Value::Null) => None,
                Some(v) => Some((v, self.at(key))),
            }
        }

        fn u64(&mut self, key: &'static str) -> R<Option<u64>> {
            self.get(key).map(|(v, p)| as_u64(v, &p)).transpose()
        }

        fn usize(&mut self, key: &'static str) -> R<Option<usize>> {
            self.get(key)
                .map(|(v, p)| {
                    as_u64(v, &p).and_then(|n| {
                        usize::try_from(n)
                            .map_err(|_| ConfigError::new(&p, "invalid value: integer too large"))
                    })
                })
                .transpose()
        }

        fn bool(&mut self, key: &'static str) -> R<Option<bool>> {
            self.get(key)
                .map(|(v, p)| v.as_bool().ok_or_else(|| invalid_type(&p, v, "a boolean")))
                .transpose()
        }

        fn string(&mut self, key: &'static str) -> R<Option<String>> {
            self.get(key).map(|(v, p)| as_string(v, &p)).transpose()
        }

        fn required_string(&mut self, key: &'static str) -> R<String> {
            self.string(key)?.ok_or_else(|| {
                ConfigError::new(self.path_or_root(), format!("missing field `{key}`"))
            })
        }

        fn strings(&mut self, key: &'static str) -> R<Option<Vec<String>>> {
            self.get(key)
                .map(|(v, p)| {
                    list(v, &p, "an array of strings")?
                        .iter()
                        .enumerate()
                        .map(|(i, x)| as_string(x, &format!("{p}[{i}]")))
                        .collect()
                })
                .transpose()
        }

        fn object(&mut self, key: &'static str) -> R<Option<Obj<'a>>> {
            self.get(key).map(|(v, p)| Obj::new(v, &p)).transpose()
        }

        fn keys(&mut self, key: &'static str) -> R<Vec<RawKey>> {
            let (v, p) = self.get(key).ok_or_else(|| {
                ConfigError::new(self.path_or_root(), format!("missing field `{key}`"))
            })?;
            list(v, &p, "an array of key objects")?
                .iter()
                .enumerate()
                .map(|(i, k)| raw_key(k, &format!("{p}[{i}]")))
                .collect()
        }

        fn path_or_root(&self) -> &str {
            if self.path.is_empty() {
                "configuration"
            } else {
                &self.path
            }
        }

        /// Refuses keys that were not asked for.
        fn done(self) -> R<()> {
            match self.map.keys().find(|k| !self.known.contains(&k.as_str())) {
                None => Ok(()),
                Some(k) => {
                    let expected: Vec<String> =
                        self.known.iter().map(|k| format!("`{k}`")).collect();
                    Err(ConfigError::new(
                        self.path_or_root(),
                        format!(
                            "unknown field `{}`, expected one of {}",
                            crate::callback::printable(k),
                            expected.join(", ")
                        ),
                    ))
                }
            }
        }
    }

    fn as_u64(v: &Value, path: &str) -> R<u64> {
        match v {
            Value::Number(n) if n.is_u64() => n
                .as_u64()
                .ok_or_else(|| invalid_type(path, v, "an integer")),
            Value::Number(n) if n.is_i64() => Err(ConfigError::new(
                path,
                "invalid value: negative integer, expected a non-negative integer",
            )),
            other => Err(invalid_type(path, other, "a non-negative integer")),
        }
    }

    fn as_string(v: &Value, path: &str) -> R<String> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| invalid_type(path, v, "a string"))
    }

    fn list<'v>(v: &'v Value, path: &str, expected: &str) -> R<&'v Vec<Value>> {
        v.as_array().ok_or_else(|| invalid_type(path, v, expected))
    }

    fn raw_key(v: &Value, path: &str) -> R<RawKey> {
        let mut o = Obj::new(v, path)?;
        let key = RawKey {
            id: o.required_string("id")?,
            secret: o.string("secret")?,
            secret_env: o.string("secret_env")?,
            apps: o.strings("apps")?,
            domains: o.strings("domains")?,
        };
        o.done()?;
        Ok(key)
    }

    fn push_auth(mut o: Obj<'_>) -> R<RawPushAuth> {
        let scheme = match o.get("scheme") {
            None => return Err(ConfigError::new(o.path_or_root(), "missing field `scheme`")),
            Some((v, p)) => match as_string(v, &p)?.as_str() {
                "ks_md5" => Scheme::KsMd5,
                "hmac_sha256" => Scheme::HmacSha256,
                _ => {
                    return Err(ConfigError::new(
                        p,
                        "unknown variant, expected `ks_md5` or `hmac_sha256`",
                    ))
                }
            },
        };
        let pa = RawPushAuth {
            scheme,
            keys: o.keys("keys")?,
            clock_skew_s: o.u64("clock_skew_s")?,
        };
        o.done()?;
        Ok(pa)
    }

    fn callback_auth(mut o: Obj<'_>) -> R<RawCallbackAuth> {
        let shared_key = match o.object("shared_key")? {
            None => None,
            Some(mut sk) => {
                let r = RawSharedKey {
                    query_param: sk.string("query_param")?,
                    header: sk.string("header")?,
                    keys: sk.keys("keys")?,
                };
                sk.done()?;
                Some(r)
            }
        };
        let webhook_signature = match o.object("webhook_signature")? {
            None => None,
            Some(mut ws) => {
                let r = RawWebhook {
                    keys: ws.keys("keys")?,
                    tolerance_s: ws.u64("tolerance_s")?,
                };
                ws.done()?;
                Some(r)
            }
        };
        let ca = RawCallbackAuth {
            allow_cidrs: o.strings("allow_cidrs")?,
            trusted_xff_hops: o.usize("trusted_xff_hops")?,
            shared_key,
            webhook_signature,
        };
        o.done()?;
        Ok(ca)
    }

    fn duplicate_streams(mut o: Obj<'_>) -> R<RawDuplicateStreams> {
        let etcd = match o.object("store")? {
            None => None,
            Some(mut store) => {
                let etcd =
                    match store.object("etcd")? {
                        None => return Err(ConfigError::new(
                            store.path_or_root(),
                            "missing field `etcd` (the only store besides the default shared data)",
                        )),
                        Some(mut e) => {
                            let r = RawEtcd {
                                cluster: e.required_string("cluster")?,
                                key_prefix: e.string("key_prefix")?,
                                timeout_ms: e.u64("timeout_ms")?,
                                authority: e.string("authority")?,
                            };
                            e.done()?;
                            r
                        }
                    };
                store.done()?;
                Some(etcd)
            }
        };
        let ds = RawDuplicateStreams {
            reject: o.bool("reject")?,
            ttl_s: o.u64("ttl_s")?,
            max_streams: o.usize("max_streams")?,
            etcd,
        };
        o.done()?;
        Ok(ds)
    }

    /// The whole configuration.
    pub(super) fn config(v: &Value) -> R<RawConfig> {
        let mut o = Obj::new(v, "").map_err(|_| invalid_type("configuration", v, "an object"))?;
        let raw = RawConfig {
            max_body_bytes: o.u64("max_body_bytes")?,
            apps: o.strings("apps")?,
            formats: o.strings("formats")?,
            push_auth: o.object("push_auth")?.map(push_auth).transpose()?,
            callback_auth: o.object("callback_auth")?.map(callback_auth).transpose()?,
            duplicate_streams: o
                .object("duplicate_streams")?
                .map(duplicate_streams)
                .transpose()?,
            max_event_age_s: o.u64("max_event_age_s")?,
            mode: o.string("mode")?,
            filter_state_mark: o.bool("filter_state_mark")?,
        };
        o.done()?;
        Ok(raw)
    }
}

/// Where secrets named by `secret_env` are looked up.
pub trait Env {
    /// The variable's value, or `None` when it is not set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment (in the wasm VM: what Envoy passes via `host_env_keys`).
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

impl Config {
    /// Parses and validates configuration JSON. An empty input gives the defaults.
    /// Returns every problem found (at least one) on failure.
    pub fn from_json(bytes: &[u8], env: &dyn Env) -> Result<Config, Vec<ConfigError>> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| vec![ConfigError::new("configuration", "is not valid UTF-8")])?;
        let text = if text.trim().is_empty() { "{}" } else { text };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            vec![ConfigError::new(
                "configuration",
                format!(
                    "is not valid JSON (line {} column {})",
                    e.line(),
                    e.column()
                ),
            )]
        })?;
        let raw = read::config(&value).map_err(|e| vec![e])?;
        Self::validate(raw, env)
    }

    /// Valid settings that do less than they may seem to: logged once when
    /// the filter is configured and printed by `check-config`, so nobody
    /// relies on a check that cannot run.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.max_event_age_s > 0 {
            let forms: Vec<&str> = [Format::KlsV1, Format::NginxRtmp]
                .into_iter()
                .filter(|f| self.formats.allows(*f))
                .map(Format::as_str)
                .collect();
            if !forms.is_empty() {
                w.push(format!(
                    "max_event_age_s: {} callbacks carry no event time, so they get no replay guard",
                    forms.join(" and ")
                ));
            }
        }
        if !self.duplicate_streams.reject && self.duplicate_streams.etcd.is_some() {
            w.push(
                "duplicate_streams.store: unused, since duplicate_streams.reject is false"
                    .to_string(),
            );
        }
        if self.max_body_bytes > ENVOY_DEFAULT_BUFFER_LIMIT {
            w.push(format!(
                "max_body_bytes: {} is over Envoy's default per_connection_buffer_limit_bytes (1 MiB); \
                 larger bodies get Envoy's own 413 unless the listener's limit is raised",
                self.max_body_bytes
            ));
        }
        w
    }

    /// A configuration with every default (any app, no auth, registry on).
    pub fn default_config() -> Config {
        Config {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            apps: None,
            formats: Formats {
                kls_v2: true,
                kls_v1: true,
                nginx_rtmp: false,
            },
            push_auth: None,
            callback_auth: CallbackAuth::default(),
            duplicate_streams: DuplicateStreams {
                reject: true,
                ttl_s: DEFAULT_TTL_S,
                max_streams: DEFAULT_MAX_STREAMS,
                etcd: None,
            },
            max_event_age_s: 0,
            mode: Mode::Enforce,
            filter_state_mark: false,
        }
    }

    fn validate(raw: RawConfig, env: &dyn Env) -> Result<Config, Vec<ConfigError>> {
        let mut errs = Vec::new();
        let mut cfg = Config::default_config();

        if let Some(n) = raw.max_body_bytes {
            if n == 0 || n > 16 * 1024 * 1024 {
                errs.push(ConfigError::new(
                    "max_body_bytes",
                    "must be between 1 and 16777216",
                ));
            } else {
                cfg.max_body_bytes = n as usize;
            }
        }

        if let Some(apps) = raw.apps {
            if apps.is_empty() {
                errs.push(ConfigError::new(
                    "apps",
                    "is empty, which would refuse every app; omit it to accept any app",
                ));
            }
            for (i, a) in apps.iter().enumerate() {
                if let Err(p) = crate::callback::check_name(a) {
                    errs.push(ConfigError::new(format!("apps[{i}]"), p));
                }
            }
            cfg.apps = Some(apps.into_iter().collect());
        }

        if let Some(formats) = raw.formats {
            let mut f = Formats {
                kls_v2: false,
                kls_v1: false,
                nginx_rtmp: false,
            };
            if formats.is_empty() {
                errs.push(ConfigError::new("formats", "must list at least one format"));
            }
            for (i, name) in formats.iter().enumerate() {
                match name.as_str() {
                    "kls_v2" => f.kls_v2 = true,
                    "kls_v1" => f.kls_v1 = true,
                    "nginx_rtmp" => f.nginx_rtmp = true,
                    other => errs.push(ConfigError::new(
                        format!("formats[{i}]"),
                        format!(
                            "unknown format `{other}`, expected one of kls_v2, kls_v1, nginx_rtmp"
                        ),
                    )),
                }
            }
            cfg.formats = f;
        }

        if let Some(pa) = raw.push_auth {
            cfg.push_auth = validate_push_auth(pa, env, &mut errs);
        }

        if let Some(ca) = raw.callback_auth {
            cfg.callback_auth = validate_callback_auth(ca, env, &mut errs);
        }

        if let Some(ds) = raw.duplicate_streams {
            if let Some(r) = ds.reject {
                cfg.duplicate_streams.reject = r;
            }
            if let Some(t) = ds.ttl_s {
                if t == 0 || t > 30 * 86400 {
                    errs.push(ConfigError::new(
                        "duplicate_streams.ttl_s",
                        "must be between 1 and 2592000 (30 days)",
                    ));
                } else {
                    cfg.duplicate_streams.ttl_s = t;
                }
            }
            if let Some(m) = ds.max_streams {
                if m == 0 || m > 10_000_000 {
                    errs.push(ConfigError::new(
                        "duplicate_streams.max_streams",
                        "must be between 1 and 10000000",
                    ));
                } else {
                    cfg.duplicate_streams.max_streams = m;
                }
            }
            if let Some(e) = ds.etcd {
                cfg.duplicate_streams.etcd = validate_etcd(e, &mut errs);
            }
        }

        cfg.filter_state_mark = raw.filter_state_mark.unwrap_or(false);

        if let Some(m) = raw.mode {
            match m.as_str() {
                "enforce" => cfg.mode = Mode::Enforce,
                "observe" => cfg.mode = Mode::Observe,
                _ => errs.push(ConfigError::new(
                    "mode",
                    "unknown mode, expected `enforce` or `observe`",
                )),
            }
        }

        if let Some(age) = raw.max_event_age_s {
            if age > 30 * 86400 {
                errs.push(ConfigError::new(
                    "max_event_age_s",
                    "must be at most 2592000 (30 days); 0 turns the check off",
                ));
            } else {
                cfg.max_event_age_s = age;
            }
        }

        if errs.is_empty() {
            Ok(cfg)
        } else {
            Err(errs)
        }
    }
}

/// `duplicate_streams.store.etcd`, with its defaults.
fn validate_etcd(e: RawEtcd, errs: &mut Vec<ConfigError>) -> Option<EtcdStore> {
    let path = "duplicate_streams.store.etcd";
    let before = errs.len();
    let token =
        |v: &str| !v.is_empty() && v.len() <= 256 && v.bytes().all(|b| b.is_ascii_graphic());
    if !token(&e.cluster) {
        errs.push(ConfigError::new(
            format!("{path}.cluster"),
            "must name the Envoy cluster that reaches etcd (1 to 256 printable characters, no spaces)",
        ));
    }
    let key_prefix = e
        .key_prefix
        .unwrap_or_else(|| DEFAULT_ETCD_KEY_PREFIX.to_string());
    if !token(&key_prefix) {
        errs.push(ConfigError::new(
            format!("{path}.key_prefix"),
            "must be 1 to 256 printable characters, no spaces",
        ));
    }
    let timeout_ms = e.timeout_ms.unwrap_or(DEFAULT_ETCD_TIMEOUT_MS);
    if !(1..=60_000).contains(&timeout_ms) {
        errs.push(ConfigError::new(
            format!("{path}.timeout_ms"),
            "must be between 1 and 60000",
        ));
    }
    let authority = e.authority.unwrap_or_else(|| e.cluster.clone());
    if !token(&authority) {
        errs.push(ConfigError::new(
            format!("{path}.authority"),
            "must be a host name (1 to 256 printable characters, no spaces)",
        ));
    }
    (errs.len() == before).then_some(EtcdStore {
        cluster: e.cluster,
        key_prefix,
        timeout_ms,
        authority,
    })
}

/// Resolves `secret` / `secret_env` of one key into bytes.
fn resolve_secret(
    key: &RawKey,
    path: &str,
    env: &dyn Env,
    errs: &mut Vec<ConfigError>,
) -> Option<Secret> {
    match (&key.secret, &key.secret_env) {
        (Some(_), Some(_)) => {
            errs.push(ConfigError::new(
                path,
                format!(
                    "key `{}` sets both `secret` and `secret_env`; set exactly one",
                    key.id
                ),
            ));
            None
        }
        (None, None) => {
            errs.push(ConfigError::new(
                path,
                format!(
                    "key `{}` sets neither `secret` nor `secret_env`; set exactly one",
                    key.id
                ),
            ));
            None
        }
        (Some(s), None) => {
            if s.is_empty() {
                errs.push(ConfigError::new(
                    format!("{path}.secret"),
                    format!("key `{}` has an empty secret", key.id),
                ));
                None
            } else {
                Some(Secret::new(s.as_bytes()))
            }
        }
        (None, Some(var)) => match env.var(var) {
            None => {
                errs.push(ConfigError::new(
                    format!("{path}.secret_env"),
                    format!(
                        "key `{}`: environment variable `{var}` is not set (pass it with vm_config.environment_variables.host_env_keys)",
                        key.id
                    ),
                ));
                None
            }
            Some(v) if v.is_empty() => {
                errs.push(ConfigError::new(
                    format!("{path}.secret_env"),
                    format!("key `{}`: environment variable `{var}` is empty", key.id),
                ));
                None
            }
            Some(v) => Some(Secret::new(v.into_bytes())),
        },
    }
}

/// Checks the ids of a key list: non-empty, unique, printable (they go into a header).
fn check_key_ids(keys: &[RawKey], path: &str, errs: &mut Vec<ConfigError>) {
    if keys.is_empty() {
        errs.push(ConfigError::new(path, "must list at least one key"));
    }
    let mut seen = HashSet::new();
    for (i, k) in keys.iter().enumerate() {
        let valid = !k.id.is_empty()
            && k.id.len() <= 64
            && k.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            errs.push(ConfigError::new(
                format!("{path}[{i}].id"),
                "must be 1 to 64 characters of letters, digits, `-`, `_` or `.`",
            ));
        } else if !seen.insert(k.id.as_str()) {
            errs.push(ConfigError::new(
                format!("{path}[{i}].id"),
                format!("duplicate key id `{}`", k.id),
            ));
        }
    }
}

fn validate_push_auth(
    pa: RawPushAuth,
    env: &dyn Env,
    errs: &mut Vec<ConfigError>,
) -> Option<PushAuth> {
    check_key_ids(&pa.keys, "push_auth.keys", errs);
    let clock_skew_s = pa.clock_skew_s.unwrap_or(0);
    if clock_skew_s > 86400 {
        errs.push(ConfigError::new(
            "push_auth.clock_skew_s",
            "must be at most 86400",
        ));
    }
    let mut keys = Vec::new();
    for (i, k) in pa.keys.iter().enumerate() {
        let path = format!("push_auth.keys[{i}]");
        let Some(secret) = resolve_secret(k, &path, env, errs) else {
            continue;
        };
        match pa.scheme {
            Scheme::KsMd5 => {
                let ok =
                    secret.len() <= 32 && secret.expose().iter().all(u8::is_ascii_alphanumeric);
                if !ok {
                    errs.push(ConfigError::new(
                        secret_path(k, &path),
                        format!(
                            "key `{}` breaks the KLS rule for ks_md5 keys: at most 32 letters or digits",
                            k.id
                        ),
                    ));
                }
            }
            Scheme::HmacSha256 => {
                if secret.len() < 16 {
                    errs.push(ConfigError::new(
                        secret_path(k, &path),
                        format!(
                            "key `{}` is too short for hmac_sha256: at least 16 bytes",
                            k.id
                        ),
                    ));
                }
            }
        }
        if let Some(apps) = &k.apps {
            if apps.is_empty() {
                errs.push(ConfigError::new(
                    format!("{path}.apps"),
                    "is empty, so the key would never apply; omit it to allow all apps",
                ));
            }
        }
        if let Some(domains) = &k.domains {
            if domains.is_empty() {
                errs.push(ConfigError::new(
                    format!("{path}.domains"),
                    "is empty, so the key would never apply; omit it to allow all domains",
                ));
            }
        }
        keys.push(PushKey {
            id: k.id.clone(),
            secret,
            apps: k.apps.clone(),
            domains: k
                .domains
                .as_ref()
                .map(|ds| ds.iter().map(|d| d.to_ascii_lowercase()).collect()),
        });
    }
    Some(PushAuth {
        scheme: pa.scheme,
        keys,
        clock_skew_s,
    })
}

fn secret_path(k: &RawKey, path: &str) -> String {
    if k.secret_env.is_some() {
        format!("{path}.secret_env")
    } else {
        format!("{path}.secret")
    }
}

/// Keys with no scoping (shared keys, webhook secrets).
fn plain_keys(
    keys: &[RawKey],
    path: &str,
    env: &dyn Env,
    errs: &mut Vec<ConfigError>,
) -> Vec<NamedSecret> {
    check_key_ids(keys, path, errs);
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if k.apps.is_some() || k.domains.is_some() {
            errs.push(ConfigError::new(
                p.clone(),
                "`apps` and `domains` apply to push_auth keys only",
            ));
        }
        if let Some(secret) = resolve_secret(k, &p, env, errs) {
            out.push(NamedSecret {
                id: k.id.clone(),
                secret,
            });
        }
    }
    out
}

fn validate_callback_auth(
    ca: RawCallbackAuth,
    env: &dyn Env,
    errs: &mut Vec<ConfigError>,
) -> CallbackAuth {
    let mut out = CallbackAuth::default();
    if let Some(cidrs) = ca.allow_cidrs {
        if cidrs.is_empty() {
            errs.push(ConfigError::new(
                "callback_auth.allow_cidrs",
                "is empty, which would refuse every sender; omit it to allow any",
            ));
        }
        let mut nets = Vec::new();
        for (i, c) in cidrs.iter().enumerate() {
            match parse_cidr(c) {
                Some(n) => nets.push(n),
                None => errs.push(ConfigError::new(
                    format!("callback_auth.allow_cidrs[{i}]"),
                    format!("`{c}` is not an IPv4/IPv6 address or CIDR"),
                )),
            }
        }
        out.allow_cidrs = Some(nets);
    }
    if let Some(h) = ca.trusted_xff_hops {
        if h > 10 {
            errs.push(ConfigError::new(
                "callback_auth.trusted_xff_hops",
                "must be at most 10",
            ));
        }
        if out.allow_cidrs.is_none() && h > 0 {
            errs.push(ConfigError::new(
                "callback_auth.trusted_xff_hops",
                "only matters with allow_cidrs; set allow_cidrs or remove it",
            ));
        }
        out.trusted_xff_hops = h;
    }
    if let Some(sk) = ca.shared_key {
        let header = sk.header.map(|h| h.to_ascii_lowercase());
        if let Some(h) = &header {
            let ok = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !h.starts_with("x-callback-guard-");
            if !ok {
                errs.push(ConfigError::new(
                    "callback_auth.shared_key.header",
                    "must be a plain header name (letters, digits, `-`, `_`), not x-callback-guard-*",
                ));
            }
        }
        let query_param = match (&sk.query_param, &header) {
            (None, None) => Some(DEFAULT_SHARED_KEY_PARAM.to_string()),
            (q, _) => q.clone(),
        };
        if let Some(q) = &query_param {
            if q.is_empty() {
                errs.push(ConfigError::new(
                    "callback_auth.shared_key.query_param",
                    "must not be empty",
                ));
            }
        }
        let keys = plain_keys(&sk.keys, "callback_auth.shared_key.keys", env, errs);
        out.shared_key = Some(SharedKey {
            query_param,
            header,
            keys,
        });
    }
    if let Some(ws) = ca.webhook_signature {
        let tolerance_s = ws.tolerance_s.unwrap_or(DEFAULT_WEBHOOK_TOLERANCE_S);
        if tolerance_s == 0 || tolerance_s > 3600 {
            errs.push(ConfigError::new(
                "callback_auth.webhook_signature.tolerance_s",
                "must be between 1 and 3600",
            ));
        }
        let path = "callback_auth.webhook_signature.keys";
        let raw_keys = plain_keys(&ws.keys, path, env, errs);
        let mut keys = Vec::new();
        for (i, k) in raw_keys.into_iter().enumerate() {
            match decode_whsec(k.secret.expose()) {
                Some(bytes) => keys.push(NamedSecret {
                    id: k.id,
                    secret: Secret::new(bytes),
                }),
                None => errs.push(ConfigError::new(
                    format!("{path}[{i}]"),
                    format!(
                        "key `{}` is not a Standard Webhooks secret (`whsec_` followed by base64)",
                        k.id
                    ),
                )),
            }
        }
        out.webhook_signature = Some(WebhookSignature { keys, tolerance_s });
    }
    out
}

/// `whsec_<base64>` → key bytes.
fn decode_whsec(s: &[u8]) -> Option<Vec<u8>> {
    let rest = s.strip_prefix(b"whsec_")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    (!bytes.is_empty()).then_some(bytes)
}

/// A CIDR, or a bare address meaning a single host.
fn parse_cidr(s: &str) -> Option<IpNet> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(n.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn errs(json: &str) -> Vec<ConfigError> {
        Config::from_json(json.as_bytes(), &no_env).unwrap_err()
    }

    #[test]
    fn empty_config_gives_defaults() {
        let c = Config::from_json(b"", &no_env).unwrap();
        assert_eq!(c.max_body_bytes, 65536);
        assert!(c.apps.is_none());
        assert!(c.formats.kls_v1 && c.formats.kls_v2 && !c.formats.nginx_rtmp);
        assert!(c.duplicate_streams.reject);
        assert_eq!(c.duplicate_streams.ttl_s, 86400);
        assert_eq!(c.max_event_age_s, 0);
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let e = errs(r#"{"max_body_byte": 10}"#);
        assert_eq!(e.len(), 1);
        assert!(e[0].to_string().contains("max_body_byte"), "{}", e[0]);
    }

    #[test]
    fn unknown_nested_key_names_its_path() {
        let e = errs(
            r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"a","secret":"x","sekret":1}]}}"#,
        );
        let s = e[0].to_string();
        assert!(s.starts_with("push_auth.keys[0]"), "{s}");
        assert!(s.contains("sekret"), "{s}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = errs(r#"{"max_body_bytes":"big"}"#);
        assert_eq!(e[0].key, "max_body_bytes");
    }

    #[test]
    fn unknown_scheme_is_named() {
        let e = errs(r#"{"push_auth":{"scheme":"md5","keys":[]}}"#);
        assert_eq!(e[0].key, "push_auth.scheme");
    }

    #[test]
    fn all_semantic_problems_are_reported_together() {
        let e = errs(
            r#"{"max_body_bytes":0,"apps":[],"formats":["rtmp"],
                "duplicate_streams":{"ttl_s":0},
                "push_auth":{"scheme":"ks_md5","keys":[]}}"#,
        );
        let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "max_body_bytes",
            "apps",
            "formats[0]",
            "duplicate_streams.ttl_s",
            "push_auth.keys",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn ks_md5_key_must_follow_the_kls_rule() {
        let e =
            errs(r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"a","secret":"has space"}]}}"#);
        assert_eq!(e[0].key, "push_auth.keys[0].secret");
        assert!(!e[0].to_string().contains("has space"));
        let long = "a".repeat(33);
        let e = errs(&format!(
            r#"{{"push_auth":{{"scheme":"ks_md5","keys":[{{"id":"a","secret":"{long}"}}]}}}}"#
        ));
        assert_eq!(e[0].key, "push_auth.keys[0].secret");
        let ok = "A".repeat(32);
        Config::from_json(
            format!(
                r#"{{"push_auth":{{"scheme":"ks_md5","keys":[{{"id":"a","secret":"{ok}"}}]}}}}"#
            )
            .as_bytes(),
            &no_env,
        )
        .unwrap();
    }

    #[test]
    fn hmac_key_must_be_16_bytes() {
        let e =
            errs(r#"{"push_auth":{"scheme":"hmac_sha256","keys":[{"id":"a","secret":"short"}]}}"#);
        assert!(e[0].problem.contains("16 bytes"), "{}", e[0]);
    }

    #[test]
    fn secret_env_is_resolved() {
        let env = |n: &str| (n == "CG_KEY").then(|| "0123456789abcdef".to_string());
        let c = Config::from_json(
            br#"{"push_auth":{"scheme":"hmac_sha256","keys":[{"id":"k1","secret_env":"CG_KEY"}]}}"#,
            &env,
        )
        .unwrap();
        assert_eq!(
            c.push_auth.unwrap().keys[0].secret.expose(),
            b"0123456789abcdef"
        );
    }

    #[test]
    fn missing_or_empty_env_names_the_key_id_not_the_value() {
        let e = errs(
            r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"k-main","secret_env":"NOPE"}]}}"#,
        );
        assert_eq!(e[0].key, "push_auth.keys[0].secret_env");
        assert!(e[0].problem.contains("k-main") && e[0].problem.contains("NOPE"));
        let env = |_: &str| Some(String::new());
        let e = Config::from_json(
            br#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"k-main","secret_env":"E"}]}}"#,
            &env,
        )
        .unwrap_err();
        assert!(e[0].problem.contains("empty") && e[0].problem.contains("k-main"));
    }

    #[test]
    fn both_or_neither_secret_is_an_error() {
        let e = errs(
            r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"a","secret":"x","secret_env":"Y"}]}}"#,
        );
        assert!(e[0].problem.contains("both"));
        let e = errs(r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"a"}]}}"#);
        assert!(e[0].problem.contains("neither"));
    }

    #[test]
    fn duplicate_key_ids_are_refused() {
        let e = errs(
            r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"a","secret":"x"},{"id":"a","secret":"y"}]}}"#,
        );
        assert_eq!(e[0].key, "push_auth.keys[1].id");
    }

    #[test]
    fn cidrs_parse_v4_v6_and_bare_addresses() {
        let c = Config::from_json(
            br#"{"callback_auth":{"allow_cidrs":["10.0.0.0/8","2001:db8::/32","127.0.0.1"]}}"#,
            &no_env,
        )
        .unwrap();
        assert_eq!(c.callback_auth.allow_cidrs.unwrap().len(), 3);
        let e = errs(r#"{"callback_auth":{"allow_cidrs":["10.0.0.0/33"]}}"#);
        assert_eq!(e[0].key, "callback_auth.allow_cidrs[0]");
    }

    #[test]
    fn webhook_secret_must_be_whsec() {
        let e = errs(
            r#"{"callback_auth":{"webhook_signature":{"keys":[{"id":"w","secret":"plain"}]}}}"#,
        );
        assert_eq!(e[0].key, "callback_auth.webhook_signature.keys[0]");
        Config::from_json(
            br#"{"callback_auth":{"webhook_signature":{"keys":[{"id":"w","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]}}}"#,
            &no_env,
        )
        .unwrap();
    }

    #[test]
    fn shared_key_defaults_to_query_param() {
        let c = Config::from_json(
            br#"{"callback_auth":{"shared_key":{"keys":[{"id":"s","secret":"abc"}]}}}"#,
            &no_env,
        )
        .unwrap();
        let sk = c.callback_auth.shared_key.unwrap();
        assert_eq!(sk.query_param.as_deref(), Some("auth_key"));
        assert!(sk.header.is_none());
    }

    #[test]
    fn misplaced_secrets_are_not_quoted_in_errors() {
        for json in [
            r#"{"callback_auth":{"shared_key":"sup3r-s3cret-value"}}"#,
            r#"{"callback_auth":{"webhook_signature":{"keys":["whsec_c3VwM3Itc2VjcmV0"]}}}"#,
            r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"a","secret":123456789}]}}"#,
            r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"a","secret":true}]}}"#,
        ] {
            let e = errs(json);
            let shown = e[0].to_string();
            for secret in ["sup3r-s3cret-value", "whsec_c3VwM3Itc2VjcmV0", "123456789"] {
                assert!(!shown.contains(secret), "{shown}");
            }
            assert!(
                shown.contains("invalid type") && shown.contains("expected"),
                "{shown}"
            );
        }
    }

    #[test]
    fn trailing_garbage_is_refused() {
        let e = errs(r#"{} x"#);
        assert_eq!(e[0].key, "configuration");
    }

    #[test]
    fn key_scoping() {
        let k = PushKey {
            id: "a".into(),
            secret: Secret::new("x"),
            apps: Some(vec!["live".into()]),
            domains: Some(vec!["push.example.com".into()]),
        };
        assert!(k.applies_to("live", Some("PUSH.example.com")));
        assert!(!k.applies_to("vod", Some("push.example.com")));
        assert!(!k.applies_to("live", Some("other.example.com")));
        assert!(!k.applies_to("live", None));
    }

    #[test]
    fn warns_when_a_replay_guard_cannot_apply_to_forms() {
        let parse = |j: &str| Config::from_json(j.as_bytes(), &no_env).unwrap();
        assert!(parse("{}").warnings().is_empty());
        assert!(parse(r#"{"max_event_age_s":300,"formats":["kls_v2"]}"#)
            .warnings()
            .is_empty());
        let w = parse(r#"{"max_event_age_s":300}"#).warnings();
        assert_eq!(
            w,
            ["max_event_age_s: kls_v1 callbacks carry no event time, so they get no replay guard"]
        );
        let w = parse(r#"{"max_event_age_s":300,"formats":["kls_v2","kls_v1","nginx_rtmp"]}"#)
            .warnings();
        assert!(w[0].contains("kls_v1 and nginx_rtmp"), "{w:?}");
    }

    #[test]
    fn etcd_store_with_defaults_and_checks() {
        let parse = |j: &str| Config::from_json(j.as_bytes(), &no_env);
        let c = parse(r#"{"duplicate_streams":{"store":{"etcd":{"cluster":"etcd"}}}}"#).unwrap();
        assert_eq!(
            c.duplicate_streams.etcd,
            Some(EtcdStore {
                cluster: "etcd".into(),
                key_prefix: "/callback-guard/".into(),
                timeout_ms: 1500,
                authority: "etcd".into(),
            })
        );
        let c = parse(
            r#"{"duplicate_streams":{"ttl_s":60,"store":{"etcd":{"cluster":"e","key_prefix":"/cg/a/","timeout_ms":300,"authority":"etcd.internal"}}}}"#,
        )
        .unwrap();
        let e = c.duplicate_streams.etcd.unwrap();
        assert_eq!(
            (e.key_prefix.as_str(), e.timeout_ms, e.authority.as_str()),
            ("/cg/a/", 300, "etcd.internal")
        );
        assert!(
            parse("{}").unwrap().duplicate_streams.etcd.is_none(),
            "shared data by default"
        );

        for (json, key) in [
            (
                r#"{"duplicate_streams":{"store":{"etcd":{}}}}"#,
                "duplicate_streams.store.etcd",
            ),
            (
                r#"{"duplicate_streams":{"store":{"etcd":{"cluster":""}}}}"#,
                "duplicate_streams.store.etcd.cluster",
            ),
            (
                r#"{"duplicate_streams":{"store":{"etcd":{"cluster":"a b"}}}}"#,
                "duplicate_streams.store.etcd.cluster",
            ),
            (
                r#"{"duplicate_streams":{"store":{"etcd":{"cluster":"e","timeout_ms":0}}}}"#,
                "duplicate_streams.store.etcd.timeout_ms",
            ),
            (
                r#"{"duplicate_streams":{"store":{"etcd":{"cluster":"e","key_prefix":""}}}}"#,
                "duplicate_streams.store.etcd.key_prefix",
            ),
            (
                r#"{"duplicate_streams":{"store":{"redis":{}}}}"#,
                "duplicate_streams.store",
            ),
            (
                r#"{"duplicate_streams":{"store":{}}}"#,
                "duplicate_streams.store",
            ),
            (
                r#"{"duplicate_streams":{"store":{"etcd":{"cluster":"e","tls":true}}}}"#,
                "duplicate_streams.store.etcd",
            ),
        ] {
            let e = errs(json);
            assert_eq!(e[0].key, key, "{json}: {}", e[0]);
        }
        let w = parse(r#"{"duplicate_streams":{"reject":false,"store":{"etcd":{"cluster":"e"}}}}"#)
            .unwrap()
            .warnings();
        assert!(w[0].contains("unused"), "{w:?}");
    }

    #[test]
    fn mode_is_enforce_or_observe() {
        let parse = |j: &str| Config::from_json(j.as_bytes(), &no_env);
        assert_eq!(parse("{}").unwrap().mode, Mode::Enforce);
        assert_eq!(parse(r#"{"mode":"observe"}"#).unwrap().mode, Mode::Observe);
        assert_eq!(parse(r#"{"mode":"enforce"}"#).unwrap().mode, Mode::Enforce);
        assert_eq!(errs(r#"{"mode":"audit"}"#)[0].key, "mode");
        assert_eq!(errs(r#"{"mode":1}"#)[0].key, "mode");
        assert!(!parse("{}").unwrap().filter_state_mark);
        assert!(
            parse(r#"{"filter_state_mark":true}"#)
                .unwrap()
                .filter_state_mark
        );
        assert_eq!(
            errs(r#"{"filter_state_mark":"yes"}"#)[0].key,
            "filter_state_mark"
        );
    }

    #[test]
    fn type_errors_name_the_kind_never_the_value() {
        for (json, key, kind) in [
            (
                r#"{"max_body_bytes":1.5}"#,
                "max_body_bytes",
                "number with a fraction",
            ),
            (
                r#"{"max_body_bytes":-1}"#,
                "max_body_bytes",
                "negative integer",
            ),
            (r#"{"apps":["live",7]}"#, "apps[1]", "integer"),
            (r#"{"apps":"live"}"#, "apps", "string"),
            (r#"{"push_auth":[]}"#, "push_auth", "array"),
            (
                r#"{"duplicate_streams":{"reject":"yes"}}"#,
                "duplicate_streams.reject",
                "string",
            ),
            (r#"[]"#, "configuration", "array"),
        ] {
            let e = errs(json);
            assert_eq!(e[0].key, key, "{json}");
            assert!(e[0].problem.contains(kind), "{json}: {}", e[0]);
            assert!(
                !e[0].problem.contains("live") && !e[0].problem.contains("yes"),
                "{}",
                e[0]
            );
        }
    }

    #[test]
    fn warns_when_max_body_bytes_is_over_envoys_buffer_limit() {
        let parse = |j: &str| Config::from_json(j.as_bytes(), &no_env).unwrap();
        assert!(parse(r#"{"max_body_bytes":1048576}"#).warnings().is_empty());
        let w = parse(r#"{"max_body_bytes":1048577}"#).warnings();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("per_connection_buffer_limit_bytes"), "{w:?}");
    }
}
