//! SRS `http_hooks`: a compact JSON object with an `action`
//! (`../shared/spec/srs/`, measured on SRS 6.0.157).
//!
//! - `on_publish` is a start, `on_unpublish` an end, `on_hls` (once per HLS
//!   segment) a live push's sign of life; `on_play` a viewer's play and
//!   `on_stop` its end. Every other action is refused: only the push and
//!   play hooks are guarded.
//! - The stream is (`vhost`, `app`, `stream`); the session is
//!   (`server_id`, `client_id`). `stream_id` is shared by a second publisher
//!   of the same stream, so it is never the session.
//! - The token comes from `param`: the push (or play) query with its leading `?`
//!   (or `""`), read with nginx-rtmp's query rules (percent-decoding, a name
//!   repeated with another value refused). SRS doubles a query given on the
//!   server URL (`?a=b?a=b`): that is read as one query; any other second `?`
//!   is ambiguous and refused.
//! - When SRS cannot parse the push URL (raw non-ASCII in its query) it
//!   leaves the query in `stream` and sends `"param":""`: refused
//!   ([`CallbackError::QueryInStream`]), never a stream named `test1?u=…`.
//! - `ip` is the publisher's address, not the hook sender's.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::form::decode_pairs;
use super::json::{folds_to, json_error, type_name, Scalar, ScalarVisitor, Skip};
use super::{client_ip, domain, named, Callback, CallbackError, Event, Format, Params};

/// The fields this dialect reads, in SRS's order.
const FIELDS: [&str; 20] = [
    "server_id",
    "service_id",
    "action",
    "client_id",
    "ip",
    "vhost",
    "app",
    "tcUrl",
    "stream",
    "param",
    "stream_url",
    "stream_id",
    "duration",
    "cwd",
    "file",
    "url",
    "m3u8",
    "m3u8_url",
    "seq_no",
    "pageUrl",
];

const SERVER_ID: usize = 0;
const SERVICE_ID: usize = 1;
const ACTION: usize = 2;
const CLIENT_ID: usize = 3;
const IP: usize = 4;
const VHOST: usize = 5;
const APP: usize = 6;
const TC_URL: usize = 7;
const STREAM: usize = 8;
const PARAM: usize = 9;
const STREAM_URL: usize = 10;
const STREAM_ID: usize = 11;
const DURATION: usize = 12;
const SEQ_NO: usize = 18;
const PAGE_URL: usize = 19;

/// String fields every push and play hook carries.
const PUSH_STRINGS: [usize; 10] = [
    SERVER_ID, SERVICE_ID, CLIENT_ID, IP, VHOST, APP, TC_URL, STREAM, PARAM, STREAM_URL,
];
/// String fields `on_hls` carries besides those (`cwd` … `m3u8_url`).
const HLS_STRINGS: [usize; 5] = [13, 14, 15, 16, 17];

/// SRS hooks that are neither push nor play hooks, named in the refusal.
const OTHER_HOOKS: [&str; 5] = [
    "on_connect",
    "on_close",
    "on_dvr",
    "on_hls_notify",
    "on_forward",
];

#[derive(Clone, Copy)]
enum Key {
    Field(usize),
    /// A key that matches a field's name only when case is folded (Go's
    /// encoding/json, which SRS's own example hook server uses, folds case).
    Variant(usize),
    /// KLS's `NotifyType`: the body is a KLS callback.
    NotifyType,
    Other,
}

fn index(s: &str) -> Option<usize> {
    Some(match s {
        "server_id" => SERVER_ID,
        "service_id" => SERVICE_ID,
        "action" => ACTION,
        "client_id" => CLIENT_ID,
        "ip" => IP,
        "vhost" => VHOST,
        "app" => APP,
        "tcUrl" => TC_URL,
        "stream" => STREAM,
        "param" => PARAM,
        "stream_url" => STREAM_URL,
        "stream_id" => STREAM_ID,
        "duration" => DURATION,
        "cwd" => 13,
        "file" => 14,
        "url" => 15,
        "m3u8" => 16,
        "m3u8_url" => 17,
        "seq_no" => SEQ_NO,
        "pageUrl" => PAGE_URL,
        _ => return None,
    })
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match index(v) {
                    Some(i) => Key::Field(i),
                    None if v == "NotifyType" => Key::NotifyType,
                    None => FIELDS
                        .iter()
                        .position(|f| folds_to(v, f))
                        .map_or(Key::Other, Key::Variant),
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// The fields whose values the rules read (the others only need their type).
const USED: [usize; 8] = [SERVER_ID, ACTION, CLIENT_ID, IP, VHOST, APP, STREAM, PARAM];

/// A value whose type is kept, and a string's text dropped without a copy.
struct TypeOnly(Scalar);

impl<'de> de::Deserialize<'de> for TypeOnly {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(String::new()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                ScalarVisitor.visit_u64(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                ScalarVisitor.visit_i64(v)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                ScalarVisitor.visit_f64(v)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                ScalarVisitor.visit_bool(v)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                ScalarVisitor.visit_unit()
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
                ScalarVisitor.visit_seq(seq)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar, A::Error> {
                ScalarVisitor.visit_map(map)
            }
        }
        d.deserialize_any(V).map(TypeOnly)
    }
}

#[derive(Debug, Default)]
struct Raw {
    slots: [Option<Scalar>; 20],
    duplicate: Option<&'static str>,
    variants: Vec<usize>,
    notify_type: bool,
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a hook object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut raw = Raw::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Field(i) => {
                    // Fields only checked for their type are not copied.
                    let v = if USED.contains(&i) {
                        map.next_value::<Scalar>()?
                    } else {
                        map.next_value::<TypeOnly>()?.0
                    };
                    match raw.slots.get_mut(i) {
                        Some(slot @ None) => *slot = Some(v),
                        _ => {
                            raw.duplicate.get_or_insert(FIELDS[i % FIELDS.len()]);
                        }
                    }
                }
                Key::Variant(i) => {
                    map.next_value::<Skip>()?;
                    raw.variants.push(i);
                }
                Key::NotifyType => {
                    map.next_value::<Skip>()?;
                    raw.notify_type = true;
                }
                Key::Other => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        // `stream` and `Stream` in one body: a reader that folds case may
        // take the other one. Refused like a duplicate.
        if let Some(&i) = raw
            .variants
            .iter()
            .find(|i| raw.slots.get(**i).is_some_and(Option::is_some))
        {
            raw.duplicate.get_or_insert(FIELDS[i % FIELDS.len()]);
        }
        Ok(raw)
    }
}

/// Parses an SRS hook body (with `srs` the only JSON dialect on).
pub fn parse_srs(body: &[u8]) -> Result<Callback, CallbackError> {
    match parse_srs_or_kls(body)? {
        Some(cb) => Ok(cb),
        None => Err(CallbackError::Missing("action".into())),
    }
}

/// Parses a JSON body as an SRS hook, or says it is a KLS callback: `None`
/// when it has KLS's `NotifyType` and no `action` (the caller then reads it
/// as KLS JSON). A body with both is refused as ambiguous.
pub fn parse_srs_or_kls(body: &[u8]) -> Result<Option<Callback>, CallbackError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = de.deserialize_map(RawVisitor).map_err(json_error)?;
    de.end().map_err(json_error)?;
    let has_action = raw.slots[ACTION].is_some();
    match (has_action, raw.notify_type) {
        (false, true) => Ok(None),
        (true, true) => Err(CallbackError::Body(
            "has both `action` (SRS) and `NotifyType` (KLS): its dialect is ambiguous".into(),
        )),
        _ => build(raw).map(Some),
    }
}

fn take(raw: &mut Raw, i: usize) -> Option<Scalar> {
    raw.slots.get_mut(i).and_then(Option::take)
}

fn string(raw: &mut Raw, i: usize) -> Result<String, CallbackError> {
    let name = FIELDS[i % FIELDS.len()];
    match take(raw, i) {
        None => Err(CallbackError::Missing(name.into())),
        Some(Scalar::Str(s)) => Ok(s),
        Some(other) => Err(CallbackError::field(
            name,
            format!("must be a string, not {}", type_name(&other)),
        )),
    }
}

fn build(mut raw: Raw) -> Result<Callback, CallbackError> {
    if let Some(name) = raw.duplicate {
        return Err(CallbackError::field(name, "is given more than once"));
    }
    let action = string(&mut raw, ACTION)?;
    let event = match action.as_str() {
        "on_publish" => Event::Start,
        "on_unpublish" => Event::End,
        "on_hls" => Event::Update,
        "on_play" => Event::Play,
        "on_stop" => Event::PlayEnd,
        a => {
            let problem = match OTHER_HOOKS.iter().find(|h| **h == a) {
                Some(h) => format!(
                    "`{h}` is not a push or play hook: point only on_publish, on_unpublish, on_hls, on_play and on_stop at callback-guard"
                ),
                None => "must be on_publish, on_unpublish, on_hls, on_play or on_stop".to_string(),
            };
            return Err(CallbackError::field("action", problem));
        }
    };
    // Every field SRS always sends for this hook, with its type, in SRS's order.
    let mut s: [String; 20] = Default::default();
    for i in PUSH_STRINGS {
        s[i] = string(&mut raw, i)?;
    }
    if event == Event::Play {
        string(&mut raw, PAGE_URL)?;
    }
    if event == Event::Update {
        match take(&mut raw, DURATION) {
            None => return Err(CallbackError::Missing("duration".into())),
            Some(Scalar::UInt(_) | Scalar::Float | Scalar::OtherNum(_)) => {}
            Some(other) => {
                return Err(CallbackError::field(
                    "duration",
                    format!("must be a number, not {}", type_name(&other)),
                ))
            }
        }
        for i in HLS_STRINGS {
            string(&mut raw, i)?;
        }
        match take(&mut raw, SEQ_NO) {
            None => return Err(CallbackError::Missing("seq_no".into())),
            Some(Scalar::UInt(_)) => {}
            Some(_) => {
                return Err(CallbackError::field(
                    "seq_no",
                    "must be a non-negative integer",
                ))
            }
        }
    }
    // Omitted when SRS's statistics do not know the stream.
    match take(&mut raw, STREAM_ID) {
        None | Some(Scalar::Str(_)) => {}
        Some(other) => {
            return Err(CallbackError::field(
                "stream_id",
                format!("must be a string, not {}", type_name(&other)),
            ))
        }
    }

    let stream = std::mem::take(&mut s[STREAM]);
    if stream.contains('?') {
        return Err(CallbackError::QueryInStream(event));
    }
    let stream = named("stream", stream)?;
    let app = named("app", std::mem::take(&mut s[APP]))?;
    let vhost = domain("vhost", &s[VHOST])?;
    let server_id = named("server_id", std::mem::take(&mut s[SERVER_ID]))?;
    let client_id = named("client_id", std::mem::take(&mut s[CLIENT_ID]))?;
    let session = format!("{server_id}/{client_id}");
    super::check_name(&session).map_err(|p| CallbackError::field("session identity", p))?;
    let ip = client_ip("ip", &s[IP])?;
    let params = param(&s[PARAM])?;

    Ok(Callback {
        format: Format::Srs,
        event,
        app,
        stream,
        domain: Some(vhost),
        event_time_ms: None,
        session: Some(session),
        params,
        client_ip: ip,
        client_port: None,
        node: None,
        close_mode: None,
    })
}

/// Whether SRS takes an answer body for success: exactly `0`, or a JSON
/// object whose `"code"` is the integer 0 (whitespace and other keys are
/// fine; a `"code"` given twice is not success).
pub fn answer_is_success(body: &[u8]) -> bool {
    if body == b"0" {
        return true;
    }
    struct IsCode(bool);
    impl<'de> de::Deserialize<'de> for IsCode {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = IsCode;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a key")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<IsCode, E> {
                    Ok(IsCode(v == "code"))
                }
            }
            d.deserialize_str(V)
        }
    }
    struct Answer;
    impl<'de> Visitor<'de> for Answer {
        type Value = Option<Scalar>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Scalar>, A::Error> {
            let mut code = None;
            let mut twice = false;
            while let Some(IsCode(is)) = map.next_key::<IsCode>()? {
                if is {
                    twice |= code.is_some();
                    code = Some(map.next_value::<Scalar>()?);
                } else {
                    map.next_value::<Skip>()?;
                }
            }
            Ok(if twice { None } else { code })
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let Ok(code) = de.deserialize_map(Answer) else {
        return false;
    };
    de.end().is_ok() && code == Some(Scalar::UInt(0))
}

/// Reads `param`: `""`, or `?` and the push query (see the module docs).
pub(crate) fn param(p: &str) -> Result<Params, CallbackError> {
    if p.is_empty() {
        return Ok(Params::default());
    }
    let Some(q) = p.strip_prefix('?') else {
        return Err(CallbackError::field(
            "param",
            "must be empty or start with `?`",
        ));
    };
    let q = match q.split_once('?') {
        None => q,
        // SRS's doubling of a query given on the server URL (OBS style):
        // the same query twice is one query.
        Some((a, b)) if a == b => a,
        Some(_) => {
            return Err(CallbackError::field(
                "param",
                "holds a second `?` that is not SRS's doubling of one query, so which part is the push query is ambiguous; give the query in one place (the stream key or the server URL)",
            ))
        }
    };
    let mut params = Params::default();
    for (k, v) in decode_pairs(q.as_bytes(), "param query parameter")? {
        params.insert(k, v)?;
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLISH: &str = r#"{"server_id":"vid-i562442","service_id":"41vb31bg","action":"on_publish","client_id":"9ln112g1","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","tcUrl":"rtmp://127.0.0.1:19350/live","stream":"test1","param":"?token=abc&t=123","stream_url":"/live/test1","stream_id":"vid-mo60970"}"#;
    const HLS: &str = r#"{"server_id":"vid-54x7p64","service_id":"6045qk1w","action":"on_hls","client_id":"2r947403","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","tcUrl":"rtmp://127.0.0.1:19350/live","stream":"test1","param":"?token=abc&t=123","duration":2.02,"cwd":"/tmp/srs/src/trunk","file":"/tmp/srs/hls/html/live/test1-0.ts","url":"live/test1-0.ts","m3u8":"/tmp/srs/hls/html/live/test1.m3u8","m3u8_url":"live/test1.m3u8","seq_no":0,"stream_url":"/live/test1","stream_id":"vid-594g122"}"#;

    fn with(field: &str, value: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(PUBLISH).unwrap();
        let mut m = v.as_object().unwrap().clone();
        m.insert(field.into(), serde_json::from_str(value).unwrap());
        serde_json::Value::Object(m).to_string()
    }

    fn err(body: &str) -> CallbackError {
        parse_srs(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_captured_publish_parses() {
        let c = parse_srs(PUBLISH.as_bytes()).unwrap();
        assert_eq!(c.format, Format::Srs);
        assert_eq!(c.event, Event::Start);
        assert_eq!((c.app.as_str(), c.stream.as_str()), ("live", "test1"));
        assert_eq!(c.domain.as_deref(), Some("__defaultvhost__"));
        assert_eq!(c.session.as_deref(), Some("vid-i562442/9ln112g1"));
        assert_eq!(c.params.get("token"), Some("abc"));
        assert_eq!(c.params.get("t"), Some("123"));
        assert_eq!(c.client_ip.as_deref(), Some("127.0.0.1"));
        let end = PUBLISH.replace("on_publish", "on_unpublish");
        assert_eq!(parse_srs(end.as_bytes()).unwrap().event, Event::End);
        let hls = parse_srs(HLS.as_bytes()).unwrap();
        assert_eq!(hls.event, Event::Update);
        assert_eq!(hls.session.as_deref(), Some("vid-54x7p64/2r947403"));
    }

    #[test]
    fn the_session_is_server_and_client_never_stream_id() {
        let a = parse_srs(PUBLISH.as_bytes()).unwrap();
        let b = parse_srs(with("client_id", r#""y708hn83""#).as_bytes()).unwrap();
        assert_ne!(a.session, b.session, "same stream_id, another client");
        let c = parse_srs(with("stream_id", r#""vid-other""#).as_bytes()).unwrap();
        assert_eq!(a.session, c.session, "stream_id plays no part");
        let d = parse_srs(with("server_id", r#""vid-2""#).as_bytes()).unwrap();
        assert_ne!(a.session, d.session, "the same client id on another server");
    }

    /// `on_play` and `on_stop` as captured from SRS 6.0.157
    /// (`../shared/spec/srs/captures/on_play.http`, `on_stop.http`).
    #[test]
    fn captured_play_and_stop_parse() {
        const PLAY: &str = r#"{"server_id":"vid-i562442","service_id":"41vb31bg","action":"on_play","client_id":"5643425w","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","stream":"test1","tcUrl":"rtmp://127.0.0.1:19350/live","param":"?token=play1&x=y","pageUrl":"","stream_url":"/live/test1","stream_id":"vid-91o0auf"}"#;
        const STOP: &str = r#"{"server_id":"vid-i562442","service_id":"41vb31bg","action":"on_stop","client_id":"5643425w","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","tcUrl":"rtmp://127.0.0.1:19350/live","stream":"test1","param":"?token=play1&x=y","stream_url":"/live/test1","stream_id":"vid-91o0auf"}"#;
        let c = parse_srs(PLAY.as_bytes()).unwrap();
        assert_eq!((c.format, c.event), (Format::Srs, Event::Play));
        assert_eq!((c.app.as_str(), c.stream.as_str()), ("live", "test1"));
        assert_eq!(c.params.get("token"), Some("play1"));
        assert_eq!(c.params.get("x"), Some("y"));
        assert_eq!(c.domain.as_deref(), Some("__defaultvhost__"));
        let c = parse_srs(STOP.as_bytes()).unwrap();
        assert_eq!(c.event, Event::PlayEnd);
        assert_eq!(c.params.get("token"), Some("play1"));
        // on_play always carries pageUrl, a string.
        let no_page = PLAY.replace(r#""pageUrl":"","#, "");
        assert_eq!(err(&no_page), CallbackError::Missing("pageUrl".into()));
        let bad = PLAY.replace(r#""pageUrl":"""#, r#""pageUrl":1"#);
        assert!(err(&bad).to_string().contains("pageUrl"));
        // The non-ASCII trap on a play names the play token.
        let trap = PLAY
            .replace(r#""stream":"test1""#, r#""stream":"test1?u=é&t=1""#)
            .replace(r#""?token=play1&x=y""#, r#""""#);
        assert_eq!(err(&trap), CallbackError::QueryInStream(Event::Play));
        assert!(err(&trap).to_string().contains("play token is missing"));
    }

    #[test]
    fn other_hooks_are_refused_by_name() {
        for a in ["on_connect", "on_close", "on_dvr"] {
            let e = err(&with("action", &format!("{a:?}")));
            assert!(e.to_string().contains(a), "{e}");
            assert!(e.to_string().contains("push or play hook"), "{e}");
        }
        let e = err(&with("action", r#""whatever""#));
        assert!(!e.to_string().contains("whatever"), "{e}");
        assert!(matches!(
            err(&with("action", "1")),
            CallbackError::Invalid { .. }
        ));
    }

    #[test]
    fn required_fields_and_types() {
        for f in [
            "server_id",
            "service_id",
            "client_id",
            "ip",
            "vhost",
            "app",
            "tcUrl",
            "stream",
            "param",
            "stream_url",
        ] {
            let v: serde_json::Value = serde_json::from_str(PUBLISH).unwrap();
            let mut m = v.as_object().unwrap().clone();
            m.remove(f);
            let body = serde_json::Value::Object(m).to_string();
            assert_eq!(err(&body), CallbackError::Missing(f.into()), "{f}");
            let e = err(&with(f, "7"));
            assert!(e.to_string().contains("must be a string"), "{f}: {e}");
        }
        // stream_id may be omitted, but not mistyped.
        let v: serde_json::Value = serde_json::from_str(PUBLISH).unwrap();
        let mut m = v.as_object().unwrap().clone();
        m.remove("stream_id");
        assert!(parse_srs(serde_json::Value::Object(m).to_string().as_bytes()).is_ok());
        assert!(err(&with("stream_id", "1"))
            .to_string()
            .contains("stream_id"));
        // on_hls: duration a number, seq_no an integer.
        let h = HLS.replace(r#""seq_no":0"#, r#""seq_no":"0""#);
        assert!(err(&h).to_string().contains("seq_no"));
        let h = HLS.replace(r#""duration":2.02"#, r#""duration":"2.02""#);
        assert!(err(&h).to_string().contains("duration"));
        let h = HLS.replace(r#""seq_no":0,"#, "");
        assert_eq!(err(&h), CallbackError::Missing("seq_no".into()));
        assert!(err(&with("ip", r#""not-an-ip""#))
            .to_string()
            .contains("`ip`"));
    }

    #[test]
    fn duplicates_and_case_variants_are_refused() {
        let body = PUBLISH.replace(r#""app":"live""#, r#""app":"live","app":"other""#);
        assert!(err(&body).to_string().contains("more than once"));
        let body = PUBLISH.replace(r#""app":"live""#, r#""app":"live","App":"other""#);
        assert!(err(&body).to_string().contains("`app`"));
    }

    #[test]
    fn kls_bodies_are_told_apart_by_their_keys() {
        let kls = r#"{"NotifyType":"PubStart","App":"live","Stream":"s"}"#;
        assert_eq!(parse_srs_or_kls(kls.as_bytes()).unwrap(), None);
        let both = PUBLISH.replace(r#""app":"live""#, r#""app":"live","NotifyType":"PubStart""#);
        assert!(parse_srs_or_kls(both.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("ambiguous"));
        assert_eq!(err("{}"), CallbackError::Missing("action".into()));
    }

    #[test]
    fn param_rules() {
        assert!(param("").unwrap().is_empty());
        let p = param("?token=a%20b%2Fc%3D&e=%E2%82%AC&plus=a+b").unwrap();
        assert_eq!(p.get("token"), Some("a b/c="));
        assert_eq!(p.get("e"), Some("€"));
        assert_eq!(p.get("plus"), Some("a b"));
        // OBS-style doubling: one query.
        let p = param("?token=tc1&a=b?token=tc1&a=b").unwrap();
        assert_eq!((p.len(), p.get("token")), (2, Some("tc1")));
        // Any other second `?` is ambiguous.
        for bad in ["?key=s2?token=tc1?token=tc1", "?a=1?a=2", "?a=1?b=1"] {
            let e = param(bad).unwrap_err();
            assert!(e.to_string().contains("ambiguous"), "{bad}: {e}");
        }
        // Repeated names with other values are refused; no leading `?` is refused.
        assert!(param("?t=1&t=2").is_err());
        assert!(param("t=1").unwrap_err().to_string().contains("start with"));
        // `?vhost=` stays a param.
        assert_eq!(
            param("?vhost=example.com&token=abc").unwrap().get("vhost"),
            Some("example.com")
        );
    }

    #[test]
    fn the_non_ascii_trap_is_refused_never_a_stream_with_a_query() {
        let body = with("stream", r#""test1?u=é&t=1""#).replace(r#""?token=abc&t=123""#, r#""""#);
        assert_eq!(err(&body), CallbackError::QueryInStream(Event::Start));
        assert!(err(&body).to_string().contains("push token is missing"));
    }
}
