//! Plugin configuration: the JSON a user puts in the wasm filter's `configuration`.
//!
//! Parsing is two steps. Serde's derive reads the shape (unknown keys and keys
//! given twice are refused, and `serde_path_to_error` names the key path), then
//! [`Config::validate`] checks meaning and collects every problem it finds, each
//! naming its key. Secrets are resolved here, once,
//! from the inline value or from an environment variable (`secret_env`), so the
//! request path never touches configuration text.

use std::collections::HashSet;
use std::net::IpAddr;

use base64::Engine as _;
use ipnet::IpNet;
use serde::Deserialize;

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

/// Token scheme of push and play tokens (see the `token` module).
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
    pub push_auth: Option<TokenAuth>,
    /// Play-token check, with keys apart from the push keys; `None` refuses
    /// every play callback.
    pub play_auth: Option<TokenAuth>,
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
    /// SRS `http_hooks` JSON (`action` `on_publish` / `on_unpublish` / `on_hls`).
    pub srs: bool,
}

impl Formats {
    /// True when the given dialect is switched on.
    pub fn allows(&self, f: Format) -> bool {
        match f {
            Format::KlsV2 => self.kls_v2,
            Format::KlsV1 => self.kls_v1,
            Format::NginxRtmp => self.nginx_rtmp,
            Format::Srs => self.srs,
        }
    }
}

/// Token verification settings: `push_auth` or `play_auth`.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// The token scheme.
    pub scheme: Scheme,
    /// Keys in configuration order; any that applies and matches accepts.
    pub keys: Vec<TokenKey>,
    /// Grace after the expiry `t`, in seconds.
    pub clock_skew_s: u64,
}

/// One push- or play-token key, possibly limited to some apps or ingest domains.
#[derive(Debug, Clone)]
pub struct TokenKey {
    /// Key id: reported in `x-callback-guard-key-id`, selectable by `kid`.
    pub id: String,
    /// The key itself.
    pub secret: Secret,
    /// Apps the key applies to; `None` = all.
    pub apps: Option<Vec<String>>,
    /// Ingest domains (lowercase) the key applies to; `None` = all.
    pub domains: Option<Vec<String>>,
}

impl TokenKey {
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

// ---- the raw shape, read by serde's derive (see `read`) ------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawConfig {
    max_body_bytes: Option<u64>,
    apps: Option<Vec<String>>,
    formats: Option<Vec<String>>,
    push_auth: Option<RawTokenAuth>,
    play_auth: Option<RawTokenAuth>,
    callback_auth: Option<RawCallbackAuth>,
    duplicate_streams: Option<RawDuplicateStreams>,
    max_event_age_s: Option<u64>,
    mode: Option<String>,
    filter_state_mark: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawTokenAuth {
    scheme: String,
    keys: Vec<RawKey>,
    clock_skew_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawKey {
    id: String,
    secret: Option<String>,
    secret_env: Option<String>,
    apps: Option<Vec<String>>,
    domains: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawCallbackAuth {
    allow_cidrs: Option<Vec<String>>,
    trusted_xff_hops: Option<usize>,
    shared_key: Option<RawSharedKey>,
    webhook_signature: Option<RawWebhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawSharedKey {
    query_param: Option<String>,
    header: Option<String>,
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawWebhook {
    keys: Vec<RawKey>,
    tolerance_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawDuplicateStreams {
    reject: Option<bool>,
    ttl_s: Option<u64>,
    max_streams: Option<usize>,
    store: Option<RawStore>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawStore {
    etcd: Option<RawEtcd>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
struct RawEtcd {
    cluster: String,
    key_prefix: Option<String>,
    timeout_ms: Option<u64>,
    authority: Option<String>,
}

/// Reads the raw shape with serde's derive: unknown keys and keys given twice
/// are refused, and `serde_path_to_error` names the key path
/// (`push_auth.keys[1].secret_env`). The JSON is first parsed into [`Doc`],
/// which keeps every key of an object in order (so the derive sees a key given
/// twice) and whose error type records the kind of value found, never the
/// value: a secret put in the wrong place must not reach a log line (serde_json's
/// own messages quote strings).
mod read {
    use std::fmt;

    use serde::de::value::{MapDeserializer, SeqDeserializer};
    use serde::de::{self, Deserialize, Expected, IntoDeserializer, Unexpected, Visitor};
    use serde_path_to_error::Segment;

    use super::{ConfigError, RawConfig};
    use crate::callback::printable;

    /// A parsed JSON value; objects keep their keys in order, repeats included.
    pub(super) enum Doc {
        Null,
        Bool(bool),
        U64(u64),
        I64(i64),
        F64(f64),
        Str(String),
        Array(Vec<Doc>),
        Object(Vec<(String, Doc)>),
    }

    impl<'de> Deserialize<'de> for Doc {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
            d.deserialize_any(DocVisitor)
        }
    }

    struct DocVisitor;

    impl<'de> Visitor<'de> for DocVisitor {
        type Value = Doc;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_unit<E>(self) -> Result<Doc, E> {
            Ok(Doc::Null)
        }
        fn visit_bool<E>(self, v: bool) -> Result<Doc, E> {
            Ok(Doc::Bool(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Doc, E> {
            Ok(Doc::U64(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Doc, E> {
            Ok(Doc::I64(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Doc, E> {
            Ok(Doc::F64(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Doc, E> {
            Ok(Doc::Str(v.to_string()))
        }
        fn visit_string<E>(self, v: String) -> Result<Doc, E> {
            Ok(Doc::Str(v))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(Doc::Array(items))
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
            let mut pairs = Vec::new();
            while let Some(pair) = map.next_entry::<String, Doc>()? {
                pairs.push(pair);
            }
            Ok(Doc::Object(pairs))
        }
    }

    impl Doc {
        fn unexpected(&self) -> Unexpected<'_> {
            match self {
                Doc::Null => Unexpected::Unit,
                Doc::Bool(b) => Unexpected::Bool(*b),
                Doc::U64(n) => Unexpected::Unsigned(*n),
                Doc::I64(n) => Unexpected::Signed(*n),
                Doc::F64(n) => Unexpected::Float(*n),
                Doc::Str(s) => Unexpected::Str(s),
                Doc::Array(_) => Unexpected::Seq,
                Doc::Object(_) => Unexpected::Map,
            }
        }
    }

    impl<'de> de::Deserializer<'de> for Doc {
        type Error = Problem;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
            match self {
                Doc::Null => visitor.visit_unit(),
                Doc::Bool(b) => visitor.visit_bool(b),
                Doc::U64(n) => visitor.visit_u64(n),
                Doc::I64(n) => visitor.visit_i64(n),
                Doc::F64(n) => visitor.visit_f64(n),
                Doc::Str(s) => visitor.visit_string(s),
                Doc::Array(items) => visit_array(items, visitor),
                Doc::Object(pairs) => visit_object(pairs, visitor),
            }
        }

        /// null is an absent value.
        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
            match self {
                Doc::Null => visitor.visit_none(),
                other => visitor.visit_some(other),
            }
        }

        /// Only an object: the derive would also read a struct from an array,
        /// by position.
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Problem> {
            match self {
                Doc::Object(pairs) => visit_object(pairs, visitor),
                other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
            }
        }

        // The types of the shape, each taking its own kind of value only: so
        // that each visitor is not handed every kind (less code in the module).
        fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
            match self {
                Doc::Bool(b) => visitor.visit_bool(b),
                other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
            }
        }

        fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
            match self {
                Doc::U64(n) => visitor.visit_u64(n),
                Doc::I64(n) => visitor.visit_i64(n),
                other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
            }
        }

        fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
            match self {
                Doc::Str(s) => visitor.visit_string(s),
                other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
            }
        }

        fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
            self.deserialize_string(visitor)
        }

        fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
            self.deserialize_string(visitor)
        }

        fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
            match self {
                Doc::Array(items) => visit_array(items, visitor),
                other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
            }
        }

        serde::forward_to_deserialize_any! {
            i8 i16 i32 i64 i128 u8 u16 u32 u128 f32 f64 char
            bytes byte_buf unit unit_struct newtype_struct tuple
            tuple_struct map enum ignored_any
        }
    }

    fn visit_array<'de, V: Visitor<'de>>(items: Vec<Doc>, visitor: V) -> Result<V::Value, Problem> {
        let mut seq = SeqDeserializer::new(items.into_iter());
        let v = visitor.visit_seq(&mut seq)?;
        seq.end()?;
        Ok(v)
    }

    fn visit_object<'de, V: Visitor<'de>>(
        pairs: Vec<(String, Doc)>,
        visitor: V,
    ) -> Result<V::Value, Problem> {
        let mut map = MapDeserializer::new(pairs.into_iter());
        let v = visitor.visit_map(&mut map)?;
        map.end()?;
        Ok(v)
    }

    impl<'de> IntoDeserializer<'de, Problem> for Doc {
        type Deserializer = Doc;
        fn into_deserializer(self) -> Doc {
            self
        }
    }

    /// What serde found wrong, with the kind of value but never the value.
    #[derive(Debug)]
    pub(super) enum Problem {
        Type {
            found: &'static str,
            expected: String,
        },
        Value {
            found: &'static str,
            expected: String,
        },
        UnknownField {
            field: String,
            expected: &'static [&'static str],
        },
        Missing(&'static str),
        Duplicate(&'static str),
        Other(String),
    }

    /// The kind of a value, for messages.
    fn kind(u: &Unexpected<'_>) -> &'static str {
        match u {
            Unexpected::Bool(_) => "boolean",
            Unexpected::Unsigned(_) | Unexpected::Signed(_) => "integer",
            Unexpected::Float(_) => "number with a fraction or an exponent",
            Unexpected::Char(_) | Unexpected::Str(_) => "string",
            Unexpected::Unit => "null",
            Unexpected::Seq => "array",
            Unexpected::Map => "object",
            _ => "value",
        }
    }

    /// serde's names of the expected types, in the words of the docs.
    fn expected(e: &dyn Expected) -> String {
        let e = e.to_string();
        match e.as_str() {
            "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer".to_string(),
            "a sequence" => "an array".to_string(),
            _ => e,
        }
    }

    impl de::Error for Problem {
        fn custom<T: fmt::Display>(msg: T) -> Self {
            Problem::Other(msg.to_string())
        }
        fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
            Problem::Type {
                found: kind(&unexp),
                expected: expected(exp),
            }
        }
        fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
            let found = match unexp {
                Unexpected::Signed(n) if n < 0 => "negative integer",
                Unexpected::Unsigned(_) | Unexpected::Signed(_) => "integer too large",
                other => kind(&other),
            };
            Problem::Value {
                found,
                expected: expected(exp),
            }
        }
        fn invalid_length(len: usize, exp: &dyn Expected) -> Self {
            Problem::Other(format!("invalid length {len}, expected {}", expected(exp)))
        }
        fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> Self {
            // No enum in the shape (names are checked by `validate`, which
            // quotes them); never the value here.
            Problem::Other(format!(
                "unknown variant, expected {}",
                alternatives(expected)
            ))
        }
        fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
            Problem::UnknownField {
                field: printable(field),
                expected,
            }
        }
        fn missing_field(field: &'static str) -> Self {
            Problem::Missing(field)
        }
        fn duplicate_field(field: &'static str) -> Self {
            Problem::Duplicate(field)
        }
    }

    impl fmt::Display for Problem {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Problem::Type { found, expected } => {
                    write!(f, "invalid type: {found}, expected {expected}")
                }
                Problem::Value { found, expected } => {
                    write!(f, "invalid value: {found}, expected {expected}")
                }
                Problem::UnknownField { field, expected } => write!(
                    f,
                    "unknown field `{field}`, expected {}",
                    alternatives(expected)
                ),
                Problem::Missing(field) => write!(f, "missing field `{field}`"),
                Problem::Duplicate(_) => {
                    f.write_str("duplicate key: given more than once; set it once")
                }
                Problem::Other(m) => f.write_str(m),
            }
        }
    }

    impl std::error::Error for Problem {}

    /// `` `a` ``, `` `a` or `b` ``, `` one of `a`, `b`, `c` ``.
    pub(super) fn alternatives(names: &[&str]) -> String {
        let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        match quoted.as_slice() {
            [] => "nothing here".to_string(),
            [one] => one.clone(),
            [a, b] => format!("{a} or {b}"),
            all => format!("one of {}", all.join(", ")),
        }
    }

    /// The raw configuration out of JSON text (not empty). One problem: the
    /// first structural one.
    pub(super) fn config(text: &str) -> Result<RawConfig, ConfigError> {
        let doc: Doc = serde_json::from_str(text).map_err(|e| {
            ConfigError::new(
                "configuration",
                format!(
                    "is not valid JSON (line {} column {})",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        serde_path_to_error::deserialize(doc).map_err(|e| {
            let mut segments: Vec<&Segment> = e.path().iter().collect();
            // serde_path_to_error ends the path of an unknown key with the
            // key itself: the message names it, the path is its object's.
            if let Problem::UnknownField { .. } = e.inner() {
                if let Some(Segment::Map { .. }) = segments.last() {
                    segments.pop();
                }
            }
            let mut path = String::new();
            for s in segments {
                match s {
                    Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                    Segment::Map { key } | Segment::Enum { variant: key } => {
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(key);
                    }
                    Segment::Unknown => path.push_str(".?"),
                }
            }
            let mut problem = e.into_inner();
            // Every array of the shape holds strings, but `keys`.
            if let Problem::Type { expected, .. } = &mut problem {
                if expected == "an array" {
                    *expected = if path.ends_with("keys") {
                        "an array of key objects"
                    } else {
                        "an array of strings"
                    }
                    .to_string();
                }
            }
            // A key given twice is named itself; other problems name the
            // value's key, or the object for unknown and missing keys.
            let path = match (&problem, path.is_empty()) {
                (Problem::Duplicate(field), true) => (*field).to_string(),
                (Problem::Duplicate(field), false) => format!("{path}.{field}"),
                (_, true) => "configuration".to_string(),
                (_, false) => path,
            };
            ConfigError::new(path, problem.to_string())
        })
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
        let raw = read::config(text).map_err(|e| vec![e])?;
        Self::validate(raw, env)
    }

    /// Valid settings that do less than they may seem to: logged once when
    /// the filter is configured and printed by `check-config`, so nobody
    /// relies on a check that cannot run.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.max_event_age_s > 0 {
            let forms: Vec<&str> = [Format::KlsV1, Format::NginxRtmp, Format::Srs]
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
        if self.play_auth.is_some() && !self.formats.nginx_rtmp && !self.formats.srs {
            w.push(
                "play_auth: unused, since no format in `formats` has play callbacks (nginx_rtmp, srs)"
                    .to_string(),
            );
        }
        if self.play_auth.is_some() && self.push_auth.is_none() {
            w.push(
                "push_auth: not set while play_auth is, so viewers need a signed play URL \
                 but publishers need no push token"
                    .to_string(),
            );
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
        let ca = &self.callback_auth;
        let senders_checked =
            ca.allow_cidrs.is_some() || ca.shared_key.is_some() || ca.webhook_signature.is_some();
        if self.push_auth.is_none() && !senders_checked {
            w.push(
                "push_auth, callback_auth: neither is set, so only the callbacks' format and fields \
                 (and apps, event age and duplicate streams when configured) are checked: \
                 any sender's callback with any push token is let through"
                    .to_string(),
            );
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
                srs: false,
            },
            push_auth: None,
            play_auth: None,
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
                    format!("must be between 1 and 16777216, not `{n}`"),
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
                    let problem = if a.is_empty() {
                        p.to_string()
                    } else {
                        format!("{p}: {}", shown(a))
                    };
                    errs.push(ConfigError::new(format!("apps[{i}]"), problem));
                }
            }
            cfg.apps = Some(apps.into_iter().collect());
        }

        if let Some(formats) = raw.formats {
            let mut f = Formats {
                kls_v2: false,
                kls_v1: false,
                nginx_rtmp: false,
                srs: false,
            };
            if formats.is_empty() {
                errs.push(ConfigError::new("formats", "must list at least one format"));
            }
            for (i, name) in formats.iter().enumerate() {
                match name.as_str() {
                    "kls_v2" => f.kls_v2 = true,
                    "kls_v1" => f.kls_v1 = true,
                    "nginx_rtmp" => f.nginx_rtmp = true,
                    "srs" => f.srs = true,
                    other => errs.push(ConfigError::new(
                        format!("formats[{i}]"),
                        format!(
                            "unknown format `{other}`, expected one of kls_v2, kls_v1, nginx_rtmp, srs"
                        ),
                    )),
                }
            }
            cfg.formats = f;
        }

        if let Some(pa) = raw.push_auth {
            cfg.push_auth = validate_token_auth(pa, "push_auth", env, &mut errs);
        }
        if let Some(pa) = raw.play_auth {
            cfg.play_auth = validate_token_auth(pa, "play_auth", env, &mut errs);
        }
        if let (Some(push), Some(play)) = (&cfg.push_auth, &cfg.play_auth) {
            keep_apart(push, play, &mut errs);
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
                        format!("must be between 1 and 2592000 (30 days), not `{t}`"),
                    ));
                } else {
                    cfg.duplicate_streams.ttl_s = t;
                }
            }
            if let Some(m) = ds.max_streams {
                if m == 0 || m > 10_000_000 {
                    errs.push(ConfigError::new(
                        "duplicate_streams.max_streams",
                        format!("must be between 1 and 10000000, not `{m}`"),
                    ));
                } else {
                    cfg.duplicate_streams.max_streams = m;
                }
            }
            match ds.store {
                None => {}
                Some(RawStore { etcd: None }) => errs.push(ConfigError::new(
                    "duplicate_streams.store",
                    "missing field `etcd` (the only store besides the default shared data)",
                )),
                Some(RawStore { etcd: Some(e) }) => {
                    cfg.duplicate_streams.etcd = validate_etcd(e, &mut errs);
                }
            }
        }

        cfg.filter_state_mark = raw.filter_state_mark.unwrap_or(false);

        if let Some(m) = raw.mode {
            match m.as_str() {
                "enforce" => cfg.mode = Mode::Enforce,
                "observe" => cfg.mode = Mode::Observe,
                other => errs.push(ConfigError::new(
                    "mode",
                    format!(
                        "unknown mode `{}`, expected `enforce` or `observe`",
                        crate::callback::printable(other)
                    ),
                )),
            }
        }

        if let Some(age) = raw.max_event_age_s {
            if age > 30 * 86400 {
                errs.push(ConfigError::new(
                    "max_event_age_s",
                    format!(
                        "must be at most 2592000 (30 days), not `{age}`; 0 turns the check off"
                    ),
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
            format!(
                "must name the Envoy cluster that reaches etcd (1 to 256 printable characters, no spaces), not {}",
                shown(&e.cluster)
            ),
        ));
    }
    let key_prefix = e
        .key_prefix
        .unwrap_or_else(|| DEFAULT_ETCD_KEY_PREFIX.to_string());
    if !token(&key_prefix) {
        errs.push(ConfigError::new(
            format!("{path}.key_prefix"),
            format!(
                "must be 1 to 256 printable characters, no spaces, not {}",
                shown(&key_prefix)
            ),
        ));
    }
    let timeout_ms = e.timeout_ms.unwrap_or(DEFAULT_ETCD_TIMEOUT_MS);
    if !(1..=60_000).contains(&timeout_ms) {
        errs.push(ConfigError::new(
            format!("{path}.timeout_ms"),
            format!("must be between 1 and 60000, not `{timeout_ms}`"),
        ));
    }
    // Unset, it is the cluster's name, whose problems are reported above.
    if let Some(a) = e.authority.as_deref().filter(|a| !token(a)) {
        errs.push(ConfigError::new(
            format!("{path}.authority"),
            format!(
                "must be a host name (1 to 256 printable characters, no spaces), not {}",
                shown(a)
            ),
        ));
    }
    let authority = e.authority.unwrap_or_else(|| e.cluster.clone());
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
                format!(
                    "must be 1 to 64 characters of letters, digits, `-`, `_` or `.`, not {}",
                    shown(&k.id)
                ),
            ));
        } else if !seen.insert(k.id.as_str()) {
            errs.push(ConfigError::new(
                format!("{path}[{i}].id"),
                format!("duplicate key id `{}`", k.id),
            ));
        }
    }
}

/// `push_auth` or `play_auth` (`at`): the same shape and rules.
fn validate_token_auth(
    pa: RawTokenAuth,
    at: &str,
    env: &dyn Env,
    errs: &mut Vec<ConfigError>,
) -> Option<TokenAuth> {
    let scheme = match pa.scheme.as_str() {
        "ks_md5" => Some(Scheme::KsMd5),
        "hmac_sha256" => Some(Scheme::HmacSha256),
        other => {
            errs.push(ConfigError::new(
                format!("{at}.scheme"),
                format!(
                    "unknown scheme `{}`, expected `ks_md5` or `hmac_sha256`",
                    crate::callback::printable(other)
                ),
            ));
            None
        }
    };
    check_key_ids(&pa.keys, &format!("{at}.keys"), errs);
    let clock_skew_s = pa.clock_skew_s.unwrap_or(0);
    if clock_skew_s > 86400 {
        errs.push(ConfigError::new(
            format!("{at}.clock_skew_s"),
            format!("must be at most 86400, not `{clock_skew_s}`"),
        ));
    }
    let mut keys = Vec::new();
    for (i, k) in pa.keys.iter().enumerate() {
        let path = format!("{at}.keys[{i}]");
        let Some(secret) = resolve_secret(k, &path, env, errs) else {
            continue;
        };
        match scheme {
            None => {}
            Some(Scheme::KsMd5) => {
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
            Some(Scheme::HmacSha256) if secret.len() < 16 => {
                errs.push(ConfigError::new(
                    secret_path(k, &path),
                    format!(
                        "key `{}` is too short for hmac_sha256: at least 16 bytes",
                        k.id
                    ),
                ));
            }
            Some(Scheme::HmacSha256) => {}
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
        keys.push(TokenKey {
            id: k.id.clone(),
            secret,
            apps: k.apps.clone(),
            domains: k
                .domains
                .as_ref()
                .map(|ds| ds.iter().map(|d| d.to_ascii_lowercase()).collect()),
        });
    }
    Some(TokenAuth {
        scheme: scheme?,
        keys,
        clock_skew_s,
    })
}

/// Play keys must be apart from push keys: a key that signs what a push key
/// signs ([`crate::auth::token::signs_alike`]: the same secret, a `ks_md5`
/// secret that begins with the other, one HMAC key in two spellings) would
/// let a play token open a push (and a push token play), and an id in both
/// would make `x-callback-guard-key-id` say nothing about which was used.
/// Checked once, when the configuration loads; the message names ids, never
/// secrets.
fn keep_apart(push: &TokenAuth, play: &TokenAuth, errs: &mut Vec<ConfigError>) {
    use crate::auth::token::{signs_alike, Alike};
    for (i, k) in play.keys.iter().enumerate() {
        if push.keys.iter().any(|p| p.id == k.id) {
            errs.push(ConfigError::new(
                format!("play_auth.keys[{i}].id"),
                format!(
                    "key id `{}` is also a push_auth key id; give play keys their own ids",
                    k.id
                ),
            ));
        }
        let alike = push.keys.iter().find_map(|p| {
            signs_alike(
                push.scheme,
                p.secret.expose(),
                play.scheme,
                k.secret.expose(),
            )
            .map(|a| (p, a))
        });
        if let Some((p, alike)) = alike {
            let (how, why) = match alike {
                Alike::Same => ("has the same secret as", "a play token could open a push"),
                Alike::Prefix => (
                    "has a secret that begins with, or is the beginning of, the secret of",
                    "ks_md5 signs md5(key + stream + t), so a play token for one stream would be a push token for another",
                ),
                Alike::SameHmacKey => (
                    "is the same HMAC key (but for zero bytes at its end, or hashed) as",
                    "a play token could open a push",
                ),
            };
            errs.push(ConfigError::new(
                format!("play_auth.keys[{i}]"),
                format!(
                    "key `{}` {how} push_auth key `{}`: {why}; give play keys their own secrets",
                    k.id, p.id
                ),
            ));
        }
    }
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
                "`apps` and `domains` apply to push_auth and play_auth keys only",
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
                format!("must be at most 10, not `{h}`"),
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
                    format!(
                        "must be a plain header name (letters, digits, `-`, `_`), not x-callback-guard-*; found {}",
                        shown(h)
                    ),
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
                format!("must be between 1 and 3600, not `{tolerance_s}`"),
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

/// A configuration value (never a secret) quoted for a message.
fn shown(v: &str) -> String {
    if v.is_empty() {
        "empty".to_string()
    } else {
        format!("`{}`", crate::callback::printable(v))
    }
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
        let k = TokenKey {
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
        let auth = r#""callback_auth":{"allow_cidrs":["10.0.0.0/8"]}"#;
        assert!(parse(&format!("{{{auth}}}")).warnings().is_empty());
        assert!(parse(&format!(
            r#"{{"max_event_age_s":300,"formats":["kls_v2"],{auth}}}"#
        ))
        .warnings()
        .is_empty());
        let w = parse(&format!(r#"{{"max_event_age_s":300,{auth}}}"#)).warnings();
        assert_eq!(
            w,
            ["max_event_age_s: kls_v1 callbacks carry no event time, so they get no replay guard"]
        );
        let w = parse(r#"{"max_event_age_s":300,"formats":["kls_v2","kls_v1","nginx_rtmp"]}"#)
            .warnings();
        assert_eq!(w.len(), 2, "and no sender or token check: {w:?}");
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
    fn keys_given_twice_are_refused_by_their_path() {
        for (json, key) in [
            (r#"{"apps":["a"],"apps":["b"]}"#, "apps"),
            (r#"{"apps":null,"apps":["b"]}"#, "apps"),
            (
                r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"a","secret":"x"}]},
                    "push_auth":{"scheme":"ks_md5","keys":[{"id":"b","secret":"y"}]}}"#,
                "push_auth",
            ),
            (
                r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"a","secret":"s3cretA","secret":"s3cretB"}]}}"#,
                "push_auth.keys[0].secret",
            ),
            (
                r#"{"duplicate_streams":{"store":{"etcd":{"cluster":"a","cluster":"b"}}}}"#,
                "duplicate_streams.store.etcd.cluster",
            ),
            (r#"{"mode":"observe","mode":"enforce"}"#, "mode"),
        ] {
            let e = errs(json);
            assert_eq!(e.len(), 1, "{json}: {e:?}");
            assert_eq!(e[0].key, key, "{json}: {}", e[0]);
            assert!(e[0].problem.contains("duplicate key"), "{}", e[0]);
            assert!(!e[0].to_string().contains("s3cret"), "{}", e[0]);
        }
    }

    #[test]
    fn an_object_is_never_read_from_an_array() {
        // serde's derive reads a struct from an array by position; the shape
        // takes objects only.
        let e = errs(r#"{"push_auth":["ks_md5",[{"id":"a","secret":"x"}]]}"#);
        assert_eq!(e[0].key, "push_auth");
        assert_eq!(e[0].problem, "invalid type: array, expected an object");
        let e = errs(r#"{"duplicate_streams":{"store":{"etcd":["etcd"]}}}"#);
        assert_eq!(e[0].key, "duplicate_streams.store.etcd");
    }

    #[test]
    fn messages_quote_the_bad_value_unless_secret() {
        let first = |j: &str| errs(j)[0].to_string();
        assert_eq!(
            first(r#"{"push_auth":{"scheme":"ks-md5","keys":[{"id":"a","secret":"x"}]}}"#),
            "push_auth.scheme: unknown scheme `ks-md5`, expected `ks_md5` or `hmac_sha256`"
        );
        assert_eq!(
            first(r#"{"mode":"observ"}"#),
            "mode: unknown mode `observ`, expected `enforce` or `observe`"
        );
        assert_eq!(
            first(r#"{"max_body_bytes":0}"#),
            "max_body_bytes: must be between 1 and 16777216, not `0`"
        );
        assert!(
            first(r#"{"duplicate_streams":{"store":{"etcd":{"cluster":"a b"}}}}"#)
                .ends_with("not `a b`")
        );
        assert_eq!(
            first(r#"{"apps":["li\u0007ve"]}"#),
            "apps[0]: contains a control character: `li?ve`"
        );
        assert!(
            first(r#"{"callback_auth":{"shared_key":{"keys":[{"id":"a/b","secret":"x"}]}}}"#)
                .ends_with("not `a/b`")
        );
        // An unknown scheme is reported with the other problems, and no
        // secret check runs against a scheme nobody asked for.
        let e =
            errs(r#"{"push_auth":{"scheme":"md5","keys":[{"id":"a b","secret":"has space"}]}}"#);
        let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["push_auth.scheme", "push_auth.keys[0].id"]);
        assert!(!format!("{e:?}").contains("has space"));
        // Arrays say what they hold.
        assert_eq!(
            first(r#"{"apps":"live"}"#),
            "apps: invalid type: string, expected an array of strings"
        );
        assert_eq!(
            first(r#"{"push_auth":{"scheme":"ks_md5","keys":{}}}"#),
            "push_auth.keys: invalid type: object, expected an array of key objects"
        );
    }

    #[test]
    fn an_empty_etcd_cluster_is_one_problem() {
        // `authority` defaults to the cluster: the user never set it, so it
        // is not reported as well.
        let e = errs(r#"{"duplicate_streams":{"store":{"etcd":{"cluster":""}}}}"#);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "duplicate_streams.store.etcd.cluster");
        assert!(e[0].problem.ends_with("not empty"), "{}", e[0]);
        // A bad authority the user did set is still reported.
        let e = errs(
            r#"{"duplicate_streams":{"store":{"etcd":{"cluster":"etcd","authority":"a b"}}}}"#,
        );
        assert_eq!(e[0].key, "duplicate_streams.store.etcd.authority");
        assert!(e[0].problem.ends_with("not `a b`"), "{}", e[0]);
    }

    #[test]
    fn warns_when_neither_tokens_nor_senders_are_checked() {
        let parse = |j: &str| Config::from_json(j.as_bytes(), &no_env).unwrap();
        for weak in ["{}", "", r#"{"callback_auth":{}}"#, r#"{"apps":["live"]}"#] {
            let w = parse(weak).warnings();
            assert_eq!(w.len(), 1, "{weak}: {w:?}");
            assert!(
                w[0].starts_with("push_auth, callback_auth: neither is set")
                    && w[0].contains("only the callbacks' format and fields"),
                "{w:?}"
            );
        }
        for checked in [
            r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"a","secret":"x"}]}}"#,
            r#"{"callback_auth":{"allow_cidrs":["10.0.0.0/8"]}}"#,
            r#"{"callback_auth":{"shared_key":{"keys":[{"id":"a","secret":"x"}]}}}"#,
            r#"{"callback_auth":{"webhook_signature":{"keys":[{"id":"w","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]}}}"#,
        ] {
            assert!(parse(checked).warnings().is_empty(), "{checked}");
        }
    }

    const PUSH_KS: &str =
        r#""push_auth":{"scheme":"ks_md5","keys":[{"id":"pusher","secret":"pushkey1"}]}"#;

    #[test]
    fn play_auth_has_the_shape_of_push_auth() {
        let env = |n: &str| (n == "PLAY_KEY").then(|| "0123456789abcdef0123".to_string());
        let c = Config::from_json(
            br#"{"formats":["nginx_rtmp"],"play_auth":{"scheme":"hmac_sha256","clock_skew_s":30,
                "keys":[{"id":"viewer","secret_env":"PLAY_KEY","apps":["live"],"domains":["Edge.Example.com"]}]}}"#,
            &env,
        )
        .unwrap();
        let pa = c.play_auth.unwrap();
        assert_eq!((pa.scheme, pa.clock_skew_s), (Scheme::HmacSha256, 30));
        assert_eq!(pa.keys[0].id, "viewer");
        assert_eq!(pa.keys[0].secret.expose(), b"0123456789abcdef0123");
        assert_eq!(pa.keys[0].apps.as_deref(), Some(&["live".to_string()][..]));
        assert_eq!(
            pa.keys[0].domains.as_deref(),
            Some(&["edge.example.com".to_string()][..])
        );
        assert!(c.push_auth.is_none());
        assert!(parse_ok("{}").play_auth.is_none(), "absent by default");
        // Its problems are named under play_auth, as push_auth's are under push_auth.
        for (json, key) in [
            (
                r#"{"play_auth":{"scheme":"md5","keys":[{"id":"a","secret":"x"}]}}"#,
                "play_auth.scheme",
            ),
            (
                r#"{"play_auth":{"scheme":"ks_md5","keys":[]}}"#,
                "play_auth.keys",
            ),
            (
                r#"{"play_auth":{"scheme":"ks_md5","keys":[{"id":"a","secret":"has space"}]}}"#,
                "play_auth.keys[0].secret",
            ),
            (
                r#"{"play_auth":{"scheme":"hmac_sha256","keys":[{"id":"a","secret":"short"}]}}"#,
                "play_auth.keys[0].secret",
            ),
            (
                r#"{"play_auth":{"scheme":"ks_md5","clock_skew_s":86401,"keys":[{"id":"a","secret":"x"}]}}"#,
                "play_auth.clock_skew_s",
            ),
            (
                r#"{"play_auth":{"scheme":"ks_md5","keys":[{"id":"a","secret":"x","apps":[]}]}}"#,
                "play_auth.keys[0].apps",
            ),
            (
                r#"{"play_auth":{"scheme":"ks_md5","keys":[{"id":"a","secret_env":"NOPE"}]}}"#,
                "play_auth.keys[0].secret_env",
            ),
            (
                r#"{"play_auth":{"scheme":"ks_md5","keys":[{"id":"a","secret":"x","sekret":1}]}}"#,
                "play_auth.keys[0]",
            ),
        ] {
            let e = errs(json);
            assert_eq!(e[0].key, key, "{json}: {}", e[0]);
        }
    }

    fn parse_ok(json: &str) -> Config {
        Config::from_json(json.as_bytes(), &no_env).unwrap()
    }

    #[test]
    fn play_keys_are_apart_from_push_keys() {
        // The same secret under another id: refused, named by ids only.
        let e = errs(&format!(
            r#"{{{PUSH_KS},"play_auth":{{"scheme":"ks_md5","keys":[{{"id":"viewer","secret":"pushkey1"}}]}}}}"#
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "play_auth.keys[0]");
        assert!(
            e[0].problem.contains("`viewer`") && e[0].problem.contains("`pusher`"),
            "{}",
            e[0]
        );
        assert!(!e[0].to_string().contains("pushkey1"), "{}", e[0]);
        // The same secret through the environment, and in another scheme.
        let env = |n: &str| (n == "SAME").then(|| "pushkey1pushkey1".to_string());
        let e = Config::from_json(
            br#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"a","secret":"pushkey1pushkey1"}]},
                "play_auth":{"scheme":"hmac_sha256","keys":[{"id":"b","secret_env":"SAME"}]}}"#,
            &env,
        )
        .unwrap_err();
        assert_eq!(e[0].key, "play_auth.keys[0]", "{e:?}");
        // The same id with another secret: refused too.
        let e = errs(&format!(
            r#"{{{PUSH_KS},"play_auth":{{"scheme":"ks_md5","keys":[{{"id":"ok","secret":"other1"}},{{"id":"pusher","secret":"other2"}}]}}}}"#
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "play_auth.keys[1].id");
        // Apart: fine.
        let c = parse_ok(&format!(
            r#"{{"formats":["nginx_rtmp"],{PUSH_KS},"play_auth":{{"scheme":"ks_md5","keys":[{{"id":"viewer","secret":"playkey1"}}]}}}}"#
        ));
        assert!(c.push_auth.is_some() && c.play_auth.is_some());
    }

    #[test]
    fn warns_when_no_format_has_play_callbacks() {
        let play = r#""play_auth":{"scheme":"ks_md5","keys":[{"id":"v","secret":"playkey1"}]}"#;
        let w = parse_ok(&format!("{{{PUSH_KS},{play}}}")).warnings();
        assert_eq!(
            w,
            ["play_auth: unused, since no format in `formats` has play callbacks (nginx_rtmp, srs)"]
        );
        for f in ["nginx_rtmp", "srs"] {
            let w = parse_ok(&format!(r#"{{"formats":["{f}"],{PUSH_KS},{play}}}"#)).warnings();
            assert!(w.is_empty(), "{f}: {w:?}");
        }
    }

    #[test]
    fn warns_when_plays_are_signed_and_pushes_are_not() {
        let play = r#""play_auth":{"scheme":"ks_md5","keys":[{"id":"v","secret":"playkey1"}]}"#;
        let auth = r#""callback_auth":{"allow_cidrs":["10.0.0.0/8"]}"#;
        let w = parse_ok(&format!(r#"{{"formats":["nginx_rtmp"],{auth},{play}}}"#)).warnings();
        assert_eq!(
            w,
            ["push_auth: not set while play_auth is, so viewers need a signed play URL but publishers need no push token"]
        );
        let w = parse_ok(&format!(
            r#"{{"formats":["nginx_rtmp"],{auth},{PUSH_KS},{play}}}"#
        ))
        .warnings();
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn warns_when_max_body_bytes_is_over_envoys_buffer_limit() {
        let parse = |j: &str| Config::from_json(j.as_bytes(), &no_env).unwrap();
        let auth = r#""callback_auth":{"allow_cidrs":["10.0.0.0/8"]}"#;
        assert!(parse(&format!(r#"{{"max_body_bytes":1048576,{auth}}}"#))
            .warnings()
            .is_empty());
        let w = parse(&format!(r#"{{"max_body_bytes":1048577,{auth}}}"#)).warnings();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("per_connection_buffer_limit_bytes"), "{w:?}");
    }
}
