//! KLS new-version callbacks: a JSON object with `NotifyType` `PubStart`/`PubEnd`.
//!
//! Both documented shapes are read: the 2020 one (string start time, `PubParam`
//! as an object with mixed value types, integer `ClientPort`) and the 2024 one
//! (integer times, `PubParam` as a JSON-encoded string, string `ClientPort`,
//! `UniqueName`/`Sequence`). Serde only collects raw values here; the typing
//! rules live in [`build`], so every message can name its field. A core field
//! given twice is refused: serde_json alone would silently keep the last one.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{
    client_ip, domain, named, port, timestamp_ms, Callback, CallbackError, Event, Format, Params,
};

/// Parses a KLS new-version callback body.
pub fn parse_json(body: &[u8]) -> Result<Callback, CallbackError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = de.deserialize_map(RawVisitor).map_err(json_error)?;
    de.end().map_err(json_error)?;
    build(raw)
}

/// Turns serde_json's error into a message without positions of secrets: the
/// message names the syntax problem and where, never a value. (serde_json's
/// own messages are not formatted: that would pull float formatting into the
/// module, and its "data" errors here can only be a body that is not an
/// object, which the visitor refuses.)
pub(super) fn json_error(e: serde_json::Error) -> CallbackError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => CallbackError::Body("is truncated JSON".into()),
        Category::Syntax => CallbackError::Body(format!(
            "is not valid JSON (line {} column {})",
            e.line(),
            e.column()
        )),
        Category::Data => CallbackError::Body("must be a JSON object".into()),
        Category::Io => CallbackError::Body("could not be read".into()),
    }
}

/// A JSON value as far as the rules need it. Nested compound values inside
/// `PubParam` are only remembered as such, never built.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar {
    Str(String),
    UInt(u64),
    /// Negative integers, kept as their text.
    OtherNum(String),
    /// Floats (never printed: the module carries no float formatting).
    Float,
    Bool,
    Null,
    Compound,
}

#[derive(Debug, Default)]
struct Raw {
    version: Option<Scalar>,
    app: Option<Scalar>,
    pubdomain: Option<Scalar>,
    stream: Option<Scalar>,
    start_time: Option<Scalar>,
    end_time: Option<Scalar>,
    notify_type: Option<Scalar>,
    pub_param: Option<ParamValue>,
    client_ip: Option<Scalar>,
    client_port: Option<Scalar>,
    node: Option<Scalar>,
    end_message: Option<Scalar>,
    unique_name: Option<Scalar>,
    sequence: Option<Scalar>,
    /// The first core field seen twice.
    duplicate: Option<&'static str>,
    /// Core fields also named by a key that differs only in case.
    variants: Vec<&'static str>,
}

impl Raw {
    fn has(&self, name: &str) -> bool {
        match name {
            "Version" => self.version.is_some(),
            "App" => self.app.is_some(),
            "Pubdomain" => self.pubdomain.is_some(),
            "Stream" => self.stream.is_some(),
            "PubStartUnixTime" => self.start_time.is_some(),
            "PubEndUnixTime" => self.end_time.is_some(),
            "NotifyType" => self.notify_type.is_some(),
            "PubParam" => self.pub_param.is_some(),
            "ClientIp" => self.client_ip.is_some(),
            "ClientPort" => self.client_port.is_some(),
            "Node" => self.node.is_some(),
            "PubEndMessage" => self.end_message.is_some(),
            "UniqueName" => self.unique_name.is_some(),
            "Sequence" => self.sequence.is_some(),
            _ => false,
        }
    }
}

/// `PubParam`: an object, or a JSON-encoded string holding one. Object
/// values are kept as raw JSON text, so a number param keeps the exact digits
/// it was sent with (`1.50`, or a 20-digit integer, survive unchanged).
#[derive(Debug)]
enum ParamValue {
    Object(Vec<(String, Box<RawValue>)>),
    Other(Scalar),
}

#[derive(Clone, Copy)]
enum Field {
    Version,
    App,
    Pubdomain,
    Stream,
    StartTime,
    EndTime,
    NotifyType,
    PubParam,
    ClientIp,
    ClientPort,
    Node,
    EndMessage,
    UniqueName,
    Sequence,
    /// A key that is not a core field's name but matches one when case is
    /// folded, as Go's encoding/json (and other case-insensitive readers) do.
    Variant(&'static str),
    Other,
}

/// The core fields' names.
const CORE_FIELDS: [&str; 14] = [
    "Version",
    "App",
    "Pubdomain",
    "Stream",
    "PubStartUnixTime",
    "PubEndUnixTime",
    "NotifyType",
    "PubParam",
    "ClientIp",
    "ClientPort",
    "Node",
    "PubEndMessage",
    "UniqueName",
    "Sequence",
];

/// True when `key` equals the ASCII name `field` under case folding, with the
/// two non-ASCII letters that fold onto ASCII (`ſ` → s, Kelvin `K` → k).
pub(super) fn folds_to(key: &str, field: &str) -> bool {
    let mut a = key.chars();
    let mut b = field.bytes();
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(c), Some(f)) => {
                let c = match c {
                    '\u{17F}' => 's',
                    '\u{212A}' => 'k',
                    c => c.to_ascii_lowercase(),
                };
                if c != char::from(f.to_ascii_lowercase()) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

impl Field {
    fn from_name(s: &str) -> Field {
        match s {
            "Version" => Field::Version,
            "App" => Field::App,
            "Pubdomain" => Field::Pubdomain,
            "Stream" => Field::Stream,
            "PubStartUnixTime" => Field::StartTime,
            "PubEndUnixTime" => Field::EndTime,
            "NotifyType" => Field::NotifyType,
            "PubParam" => Field::PubParam,
            "ClientIp" => Field::ClientIp,
            "ClientPort" => Field::ClientPort,
            "Node" => Field::Node,
            "PubEndMessage" => Field::EndMessage,
            "UniqueName" => Field::UniqueName,
            "Sequence" => Field::Sequence,
            _ => CORE_FIELDS
                .iter()
                .find(|f| folds_to(s, f))
                .map_or(Field::Other, |f| Field::Variant(f)),
        }
    }
}

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(Field::from_name(v))
            }
        }
        d.deserialize_str(V)
    }
}

/// Consumes any value without building it. Unlike serde's `IgnoredAny` it
/// goes through serde_json's depth limit (128), so a body nested 10,000 deep
/// is refused wherever the nesting sits, instead of being passed upstream.
pub(super) struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor).map(|_| Skip)
    }
}

pub(super) struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::UInt(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::OtherNum(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Scalar::Compound)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Scalar::Compound)
    }
}

impl<'de> de::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ParamVisitor;

impl<'de> Visitor<'de> for ParamVisitor {
    type Value = ParamValue;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ParamValue, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
            out.push((k, v));
        }
        Ok(ParamValue::Object(out))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<ParamValue, E> {
        ScalarVisitor.visit_str(v).map(ParamValue::Other)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<ParamValue, E> {
        Ok(ParamValue::Other(Scalar::Str(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ParamValue, E> {
        Ok(ParamValue::Other(Scalar::UInt(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ParamValue, E> {
        ScalarVisitor.visit_i64(v).map(ParamValue::Other)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ParamValue, E> {
        ScalarVisitor.visit_f64(v).map(ParamValue::Other)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<ParamValue, E> {
        Ok(ParamValue::Other(Scalar::Bool))
    }
    fn visit_unit<E: de::Error>(self) -> Result<ParamValue, E> {
        Ok(ParamValue::Other(Scalar::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ParamValue, A::Error> {
        ScalarVisitor.visit_seq(seq).map(ParamValue::Other)
    }
}

impl<'de> de::Deserialize<'de> for ParamValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ParamVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a callback object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut raw = Raw::default();
        while let Some(field) = map.next_key::<Field>()? {
            // A repeated core field is remembered; the value is still consumed
            // so that the body's syntax is checked to the end.
            macro_rules! slot {
                ($slot:ident, $name:literal, $ty:ty) => {{
                    let v = map.next_value::<$ty>()?;
                    if raw.$slot.is_some() {
                        raw.duplicate.get_or_insert($name);
                    } else {
                        raw.$slot = Some(v);
                    }
                }};
            }
            match field {
                Field::Version => slot!(version, "Version", Scalar),
                Field::App => slot!(app, "App", Scalar),
                Field::Pubdomain => slot!(pubdomain, "Pubdomain", Scalar),
                Field::Stream => slot!(stream, "Stream", Scalar),
                Field::StartTime => slot!(start_time, "PubStartUnixTime", Scalar),
                Field::EndTime => slot!(end_time, "PubEndUnixTime", Scalar),
                Field::NotifyType => slot!(notify_type, "NotifyType", Scalar),
                Field::PubParam => slot!(pub_param, "PubParam", ParamValue),
                Field::ClientIp => slot!(client_ip, "ClientIp", Scalar),
                Field::ClientPort => slot!(client_port, "ClientPort", Scalar),
                Field::Node => slot!(node, "Node", Scalar),
                Field::EndMessage => slot!(end_message, "PubEndMessage", Scalar),
                Field::UniqueName => slot!(unique_name, "UniqueName", Scalar),
                Field::Sequence => slot!(sequence, "Sequence", Scalar),
                Field::Variant(name) => {
                    map.next_value::<Skip>()?;
                    raw.variants.push(name);
                }
                Field::Other => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        // `Stream` and `stream` in one body: exact readers take one, readers
        // that fold case may take the other. Refuse like a duplicate.
        if let Some(v) = raw.variants.iter().copied().find(|v| raw.has(v)) {
            raw.duplicate.get_or_insert(v);
        }
        Ok(raw)
    }
}

pub(super) fn type_name(v: &Scalar) -> &'static str {
    match v {
        Scalar::Str(_) => "a string",
        Scalar::UInt(_) | Scalar::OtherNum(_) | Scalar::Float => "a number",
        Scalar::Bool => "a boolean",
        Scalar::Null => "null",
        Scalar::Compound => "an object or array",
    }
}

fn required(v: Option<Scalar>, name: &str) -> Result<Scalar, CallbackError> {
    v.ok_or_else(|| CallbackError::Missing(name.to_string()))
}

fn string(v: Scalar, name: &str) -> Result<String, CallbackError> {
    match v {
        Scalar::Str(s) => Ok(s),
        other => Err(CallbackError::field(
            name,
            format!("must be a string, not {}", type_name(&other)),
        )),
    }
}

/// A 13-digit millisecond time given as an integer or as digits in a string.
fn time(v: Scalar, name: &str) -> Result<u64, CallbackError> {
    match v {
        Scalar::Str(s) => timestamp_ms(name, &s),
        Scalar::UInt(n) => timestamp_ms(name, &n.to_string()),
        Scalar::OtherNum(_) => Err(CallbackError::field(
            name,
            "must be a 13-digit Unix timestamp in milliseconds",
        )),
        other => Err(CallbackError::field(
            name,
            format!("must be a string or an integer, not {}", type_name(&other)),
        )),
    }
}

/// Optional free text: string, number or null; blank counts as absent.
fn opt_text(v: Option<Scalar>, name: &str) -> Result<Option<String>, CallbackError> {
    let s = match v {
        None | Some(Scalar::Null) => return Ok(None),
        Some(Scalar::Str(s)) => s,
        Some(Scalar::UInt(n)) => n.to_string(),
        Some(Scalar::OtherNum(s)) => s,
        Some(other) => {
            return Err(CallbackError::field(
                name,
                format!("must be a string, not {}", type_name(&other)),
            ))
        }
    };
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    named(name, t.to_string()).map(Some)
}

/// A `PubParam` value as text: strings unescaped, numbers exactly as written.
fn param_text(name: &str, v: &RawValue) -> Result<String, CallbackError> {
    let raw = v.get();
    let kind = match raw.as_bytes().first() {
        Some(b'"') => {
            // Without escapes the text between the quotes is the value itself.
            if raw.len() >= 2 && !raw.contains('\\') {
                return Ok(raw[1..raw.len() - 1].to_string());
            }
            return serde_json::from_str::<String>(raw).map_err(|_| {
                CallbackError::invalid(
                    format!("field `PubParam.{}`", super::printable(name)),
                    "is not a valid string",
                )
            });
        }
        Some(b'-' | b'0'..=b'9') => return Ok(raw.to_string()),
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "an object or array",
    };
    Err(CallbackError::invalid(
        format!("field `PubParam.{}`", super::printable(name)),
        format!("must be a string or a number, not {kind}"),
    ))
}

fn params(v: Option<ParamValue>) -> Result<Params, CallbackError> {
    let entries = match v {
        None | Some(ParamValue::Other(Scalar::Null)) => return Ok(Params::default()),
        Some(ParamValue::Object(entries)) => entries,
        Some(ParamValue::Other(Scalar::Str(s))) => {
            if s.trim().is_empty() {
                return Ok(Params::default());
            }
            // The 2024 shape: the object is JSON-encoded inside a string.
            let mut de = serde_json::Deserializer::from_str(&s);
            let inner = de::Deserializer::deserialize_map(&mut de, ParamVisitor)
                .and_then(|v| de.end().map(|_| v));
            match inner {
                Ok(ParamValue::Object(entries)) => entries,
                _ => {
                    return Err(CallbackError::field(
                        "PubParam",
                        "must be an object or a string holding a JSON object",
                    ))
                }
            }
        }
        Some(ParamValue::Other(other)) => {
            return Err(CallbackError::field(
                "PubParam",
                format!(
                    "must be an object or a string holding a JSON object, not {}",
                    type_name(&other)
                ),
            ))
        }
    };
    let mut p = Params::default();
    for (k, v) in entries {
        let text = param_text(&k, &v)?;
        p.insert(k, text)?;
    }
    Ok(p)
}

fn build(raw: Raw) -> Result<Callback, CallbackError> {
    if let Some(name) = raw.duplicate {
        return Err(CallbackError::field(name, "is given more than once"));
    }
    let notify = string(required(raw.notify_type, "NotifyType")?, "NotifyType")?;
    let event = match notify.as_str() {
        "PubStart" => Event::Start,
        "PubEnd" => Event::End,
        _ => {
            return Err(CallbackError::field(
                "NotifyType",
                "must be PubStart or PubEnd",
            ))
        }
    };
    if let Some(v) = raw.version {
        string(v, "Version")?;
    }
    let app = named("App", string(required(raw.app, "App")?, "App")?)?;
    let stream = named("Stream", string(required(raw.stream, "Stream")?, "Stream")?)?;
    let pubdomain = string(required(raw.pubdomain, "Pubdomain")?, "Pubdomain")?;
    let domain = domain("Pubdomain", &pubdomain)?;

    // Check whichever times are present; the event decides which one is required.
    let start = raw
        .start_time
        .map(|v| time(v, "PubStartUnixTime"))
        .transpose()?;
    let end = raw
        .end_time
        .map(|v| time(v, "PubEndUnixTime"))
        .transpose()?;
    // The 2020 table labels the end time PubStartUnixTime; its sample and
    // the Chinese page say PubEndUnixTime. Prefer the latter, accept both.
    let event_time_ms = if event == Event::Start {
        start.ok_or_else(|| CallbackError::Missing("PubStartUnixTime".into()))?
    } else {
        end.or(start)
            .ok_or_else(|| CallbackError::Missing("PubEndUnixTime".into()))?
    };

    let client_ip = match raw.client_ip {
        None | Some(Scalar::Null) => None,
        Some(v) => client_ip("ClientIp", &string(v, "ClientIp")?)?,
    };
    let client_port = match raw.client_port {
        None | Some(Scalar::Null) => None,
        Some(Scalar::UInt(n)) => Some(
            u16::try_from(n)
                .map_err(|_| CallbackError::field("ClientPort", "must be a port number 0-65535"))?,
        ),
        Some(Scalar::Str(s)) => port("ClientPort", &s)?,
        Some(other) => {
            return Err(CallbackError::field(
                "ClientPort",
                format!("must be an integer or a string, not {}", type_name(&other)),
            ))
        }
    };
    let node = opt_text(raw.node, "Node")?;
    if let Some(v) = raw.end_message {
        // Values are undocumented; only the type is checked.
        if matches!(v, Scalar::Compound | Scalar::Bool) {
            return Err(CallbackError::field("PubEndMessage", "must be a string"));
        }
    }
    let sequence = opt_text(raw.sequence, "Sequence")?;
    let unique_name = opt_text(raw.unique_name, "UniqueName")?;
    let params = params(raw.pub_param)?;

    Ok(Callback {
        format: Format::KlsV2,
        event,
        app,
        stream,
        domain: Some(domain),
        event_time_ms: Some(event_time_ms),
        session: sequence.or(unique_name),
        params,
        client_ip,
        client_port,
        node,
        close_mode: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_START: &str = include_str!("../../tests/fixtures/kls_v2_start.json");

    const SEED_END: &str = include_str!("../../tests/fixtures/kls_v2_end.json");

    fn err(body: &str) -> CallbackError {
        parse_json(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn seed_start_sample_parses() {
        let c = parse_json(SEED_START.as_bytes()).unwrap();
        assert_eq!(c.format, Format::KlsV2);
        assert_eq!(c.event, Event::Start);
        assert_eq!(c.app, "live");
        assert_eq!(c.stream, "test");
        assert_eq!(c.domain.as_deref(), Some("xxx.xxx.com"));
        assert_eq!(c.event_time_ms, Some(1456800010000));
        assert_eq!(c.params.get("param1"), Some("123456"));
        assert_eq!(c.params.get("param2"), Some("11"));
        assert_eq!(c.client_ip, None);
        assert_eq!(c.client_port, None);
        assert_eq!(c.node, None);
        assert_eq!(c.session, None);
    }

    #[test]
    fn seed_end_sample_parses() {
        let c = parse_json(SEED_END.as_bytes()).unwrap();
        assert_eq!(c.event, Event::End);
        assert_eq!(c.event_time_ms, Some(1456800010000));
        assert_eq!(c.params.len(), 2);
    }

    #[test]
    fn shape_2024_parses() {
        let body = r#"{"Version":"1.0","App":"live","Pubdomain":"Push.Example.com","Stream":"s1",
            "PubStartUnixTime":1700000000000,"NotifyType":"PubStart",
            "PubParam":"{\"k\":\"1\",\"t\":2}","ClientIp":"1.2.3.4","ClientPort":"17102",
            "Node":"node-7","UniqueName":"u-1","Sequence":"seq-9"}"#;
        let c = parse_json(body.as_bytes()).unwrap();
        assert_eq!(c.domain.as_deref(), Some("push.example.com"));
        assert_eq!(c.params.get("k"), Some("1"));
        assert_eq!(c.params.get("t"), Some("2"));
        assert_eq!(c.client_ip.as_deref(), Some("1.2.3.4"));
        assert_eq!(c.client_port, Some(17102));
        assert_eq!(c.node.as_deref(), Some("node-7"));
        assert_eq!(
            c.session.as_deref(),
            Some("seq-9"),
            "Sequence wins over UniqueName"
        );
    }

    #[test]
    fn unique_name_is_the_session_without_sequence() {
        let body = r#"{"App":"live","Pubdomain":"d","Stream":"s","PubStartUnixTime":1700000000000,
            "NotifyType":"PubStart","UniqueName":"u-1"}"#;
        assert_eq!(
            parse_json(body.as_bytes()).unwrap().session.as_deref(),
            Some("u-1")
        );
    }

    #[test]
    fn client_port_as_integer() {
        let body = r#"{"App":"live","Pubdomain":"d","Stream":"s","PubStartUnixTime":1700000000000,
            "NotifyType":"PubStart","ClientPort":1935}"#;
        assert_eq!(parse_json(body.as_bytes()).unwrap().client_port, Some(1935));
        let body = body.replace("1935", "70000");
        assert!(err(&body).to_string().contains("ClientPort"));
    }

    #[test]
    fn required_fields_per_event() {
        for f in [
            "App",
            "Stream",
            "Pubdomain",
            "NotifyType",
            "PubStartUnixTime",
        ] {
            let v: serde_json::Value = serde_json::from_str(SEED_START).unwrap();
            let mut m = v.as_object().unwrap().clone();
            m.remove(f);
            let e = err(&serde_json::to_string(&m).unwrap());
            assert_eq!(e, CallbackError::Missing(f.to_string()), "{f}");
        }
        let v: serde_json::Value = serde_json::from_str(SEED_END).unwrap();
        let mut m = v.as_object().unwrap().clone();
        m.remove("PubEndUnixTime");
        assert_eq!(
            err(&serde_json::to_string(&m).unwrap()),
            CallbackError::Missing("PubEndUnixTime".into())
        );
    }

    #[test]
    fn end_accepts_the_2020_table_label_for_its_time() {
        let body = SEED_END.replace("PubEndUnixTime", "PubStartUnixTime");
        assert_eq!(parse_json(body.as_bytes()).unwrap().event, Event::End);
    }

    #[test]
    fn notify_type_must_be_known() {
        let e = err(&SEED_START.replace("\"PubStart\"", "\"PubPause\""));
        assert!(e.to_string().contains("NotifyType"), "{e}");
        let e = err(&SEED_START.replace("\"PubStart\"", "\"pubstart\""));
        assert!(e.to_string().contains("NotifyType"), "{e}");
    }

    #[test]
    fn timestamps_must_be_13_digits_string_or_integer() {
        for bad in [
            "\"145680001000\"",
            "145680001000",
            "1456800010000.5",
            "-1456800010000",
            "true",
            "null",
            "\"abc\"",
        ] {
            let e = err(&SEED_START.replace("\"1456800010000\"", bad));
            assert!(e.to_string().contains("PubStartUnixTime"), "{bad}: {e}");
        }
        let c = parse_json(
            SEED_START
                .replace("\"1456800010000\"", "1456800010000")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.event_time_ms, Some(1456800010000));
    }

    #[test]
    fn wrong_types_name_the_field() {
        for (from, to, field) in [
            ("\"App\":\"live\"", "\"App\":5", "App"),
            ("\"Stream\":\"test\"", "\"Stream\":[\"x\"]", "Stream"),
            (
                "\"Pubdomain\":\"xxx.xxx.com\"",
                "\"Pubdomain\":{}",
                "Pubdomain",
            ),
            ("\"Version\":\"1.0\"", "\"Version\":1.0", "Version"),
            (
                "\"ClientIp\":\" \"",
                "\"ClientIp\":\"999.1.1.1\"",
                "ClientIp",
            ),
            ("\"ClientPort\":\" \"", "\"ClientPort\":true", "ClientPort"),
            ("\"Node\":\" \"", "\"Node\":{}", "Node"),
        ] {
            let e = err(&SEED_START.replace(from, to));
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn pub_param_values_must_be_scalars() {
        let e = err(&SEED_START.replace("\"param2\":11", "\"param2\":{\"x\":1}"));
        assert!(e.to_string().contains("PubParam.param2"), "{e}");
        let e = err(&SEED_START.replace("\"param2\":11", "\"param2\":null"));
        assert!(e.to_string().contains("PubParam.param2"), "{e}");
        let e = err(&SEED_START.replace(
            "{\n        \"param1\": \"123456\",\n        \"param2\":11\n    }",
            "\"not json\"",
        ));
        assert!(e.to_string().contains("PubParam"), "{e}");
        let e = err(&SEED_START.replace(
            "{\n        \"param1\": \"123456\",\n        \"param2\":11\n    }",
            "[1]",
        ));
        assert!(e.to_string().contains("PubParam"), "{e}");
    }

    #[test]
    fn pub_param_numbers_keep_their_exact_digits() {
        let body = r#"{"App":"live","Pubdomain":"d","Stream":"s","PubStartUnixTime":1700000000000,"NotifyType":"PubStart",
            "PubParam":{"a":   12 , "b": 1.50, "c": 123456789012345678901234567890, "d":"x\u0041"}}"#;
        let c = parse_json(body.as_bytes()).unwrap();
        assert_eq!(c.params.get("a"), Some("12"));
        assert_eq!(c.params.get("b"), Some("1.50"));
        assert_eq!(c.params.get("c"), Some("123456789012345678901234567890"));
        assert_eq!(c.params.get("d"), Some("xA"));
    }

    #[test]
    fn pub_param_float_and_negative_values_are_text() {
        let c = parse_json(
            SEED_START
                .replace("\"param2\":11", "\"param2\":-1.5")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.params.get("param2"), Some("-1.5"));
    }

    #[test]
    fn names_are_checked() {
        let e = err(&SEED_START.replace("\"Stream\":\"test\"", "\"Stream\":\"\""));
        assert!(
            e.to_string().contains("Stream") && e.to_string().contains("empty"),
            "{e}"
        );
        let e = err(&SEED_START.replace("\"App\":\"live\"", "\"App\":\"li\\u0000ve\""));
        assert!(
            e.to_string().contains("App") && e.to_string().contains("control"),
            "{e}"
        );
        let long = "s".repeat(257);
        let e = err(&SEED_START.replace("\"Stream\":\"test\"", &format!("\"Stream\":\"{long}\"")));
        assert!(e.to_string().contains("256"), "{e}");
    }

    #[test]
    fn duplicate_core_field_is_refused() {
        let e = err(&SEED_START.replace(
            "\"Stream\":\"test\"",
            "\"Stream\":\"test\",\"Stream\":\"other\"",
        ));
        assert_eq!(e, CallbackError::field("Stream", "is given more than once"));
    }

    #[test]
    fn a_core_field_named_again_in_another_case_is_refused() {
        // Go's encoding/json would read the last of these (case-insensitive,
        // with `ſ` = s and Kelvin `K` = k); serde reads the exact one.
        for other in [r#""stream":"b""#, r#""STREAM":"b""#, r#""ſtream":"b""#] {
            let body = SEED_START.replace(r#""Node":" ","#, &format!(r#""Node":" ",{other},"#));
            assert_eq!(
                err(&body),
                CallbackError::field("Stream", "is given more than once"),
                "{other}"
            );
        }
        let body = SEED_START.replace(r#""Node":" ","#, r#""Node":" ","pubparam":{},"#);
        assert_eq!(
            err(&body),
            CallbackError::field("PubParam", "is given more than once")
        );
        let longer = SEED_START.replace(r#""Node":" ","#, r#""Node":" ","Streams":"b","#);
        assert!(
            parse_json(longer.as_bytes()).is_ok(),
            "not a variant: another name"
        );
        // A variant alone is just an unknown field; the exact name is still required.
        let alone = SEED_START.replace(r#""Stream":"test""#, r#""stream":"test""#);
        assert_eq!(err(&alone), CallbackError::Missing("Stream".into()));
        let node = SEED_START.replace(r#""Node":" ","#, r#""node":"x","#);
        assert!(parse_json(node.as_bytes()).is_ok());
    }

    #[test]
    fn duplicate_param_with_other_value_is_refused() {
        let e = err(&SEED_START.replace("\"param2\":11", "\"param2\":11,\"param2\":12"));
        assert!(e.to_string().contains("param2"), "{e}");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let c = parse_json(
            SEED_START
                .replace(
                    "\"Node\":\" \"",
                    "\"Node\":\" \",\"Extra\":{\"deep\":[1,2,{\"x\":null}]}",
                )
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.stream, "test");
    }

    #[test]
    fn non_objects_and_broken_json_are_invalid_bodies() {
        for body in [
            "[]",
            "1",
            "\"x\"",
            "null",
            "",
            "{",
            "{\"App\":",
            "{} {}",
            "{\"a\":1,}",
        ] {
            let e = err(body);
            assert!(matches!(e, CallbackError::Body(_)), "{body:?}: {e:?}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let deep = format!("{{\"X\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(err(&deep), CallbackError::Body(_)));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(err(&deep), CallbackError::Body(_)));
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let mut body = SEED_START.as_bytes().to_vec();
        let at = SEED_START.find("test").unwrap();
        body[at] = 0xff;
        assert!(matches!(
            parse_json(&body).unwrap_err(),
            CallbackError::Body(_)
        ));
    }
}
