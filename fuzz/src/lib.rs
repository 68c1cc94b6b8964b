//! Shared oracles for the fuzz targets over `callback_guard::decide()`.
//!
//! Beyond "never panics", every verdict is checked against what must hold:
//! - a rejection has a message without control characters that names no
//!   secret, and its reply body is JSON carrying the code;
//! - a forward is a POST within `max_body_bytes`, for an allowed app, with a
//!   matching key id, verification headers that are valid header values, and
//!   the same app, stream and event that a standard parser of the body sees
//!   (serde_json / form_urlencoded, and Go's case-insensitive JSON field
//!   matching) — two readers must never disagree on a forwarded callback;
//! - deciding the same request again on the same registry gives the same
//!   verdict (a CDN retry is idempotent).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt;

use callback_guard::callback::{check_name, Event, Format};
use callback_guard::config::Config;
use callback_guard::registry::MemoryStore;
use callback_guard::reply;
use callback_guard::{decide, Request, Verdict};
use serde::de::{Deserializer, MapAccess, Visitor};

/// The fixed "now" of the body targets (2023-11-14).
pub const NOW: u64 = 1_700_000_000;
/// ks_md5 key of the fixed configurations.
pub const KS_KEY: &str = "fuzzKs0123456789";
/// Shared key of the fixed configurations.
pub const SHARED: &str = "fuzzSharedKey-77";

/// The core fields of a KLS new-version body, written out here rather than
/// taken from the parser, so that the oracle does not inherit its mistakes.
pub const CORE_JSON_FIELDS: &[&str] = &[
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

/// The fixed configurations the body targets run every input against.
pub fn fixed_configs() -> &'static [Config] {
    static CONFIGS: std::sync::OnceLock<Vec<Config>> = std::sync::OnceLock::new();
    CONFIGS.get_or_init(build_fixed_configs)
}

fn build_fixed_configs() -> Vec<Config> {
    let env = |_: &str| None;
    [
        // defaults: any app, no auth, registry on
        "{}".to_string(),
        // everything on that a body alone can reach
        format!(
            r#"{{"apps":["live","直播"],"formats":["kls_v2","kls_v1","nginx_rtmp","srs"],"max_event_age_s":600,
               "push_auth":{{"scheme":"ks_md5","clock_skew_s":60,"keys":[{{"id":"main","secret":"{KS_KEY}"}},
                 {{"id":"scoped","secret":"other0key","apps":["live"],"domains":["push.example.com"]}}]}}}}"#
        ),
        // all dialects, registry off, a small body limit
        r#"{"formats":["kls_v1","nginx_rtmp","kls_v2","srs"],"max_body_bytes":2048,"duplicate_streams":{"reject":false}}"#
            .to_string(),
        // a tiny registry: buckets fill up
        r#"{"formats":["nginx_rtmp","kls_v2"],"duplicate_streams":{"max_streams":1,"ttl_s":1}}"#.to_string(),
        // SRS as the only JSON dialect (a body without NotifyType is SRS), a tiny registry
        r#"{"formats":["srs","kls_v1"],"duplicate_streams":{"max_streams":2,"ttl_s":1}}"#.to_string(),
    ]
    .iter()
    .map(|j| {
        let c = Config::from_json(j.as_bytes(), &env).expect("fixed fuzz configuration is valid");
        check_debug(&c, &[KS_KEY.as_bytes(), b"other0key"]);
        c
    })
    .collect()
}

/// A request as the fuzz targets build it (owned).
#[derive(Debug, Clone)]
pub struct OwnedRequest {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub source: Option<std::net::IpAddr>,
}

impl OwnedRequest {
    pub fn post(content_type: &str, body: &[u8]) -> Self {
        OwnedRequest {
            method: "POST".into(),
            path: "/callback".into(),
            content_type: Some(content_type.into()),
            headers: Vec::new(),
            body: body.to_vec(),
            source: Some("127.0.0.1".parse().unwrap()),
        }
    }

    pub fn as_request(&self) -> Request<'_> {
        Request {
            method: &self.method,
            path: &self.path,
            content_type: self.content_type.as_deref(),
            headers: &self.headers,
            body: &self.body,
            source: self.source,
        }
    }

    /// Every byte the sender controls, to tell an echo from a leak.
    fn all_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for s in [&self.method, &self.path] {
            v.extend_from_slice(s.as_bytes());
            v.push(0);
        }
        if let Some(c) = &self.content_type {
            v.extend_from_slice(c.as_bytes());
        }
        for (k, x) in &self.headers {
            v.extend_from_slice(k.as_bytes());
            v.push(0);
            v.extend_from_slice(x.as_bytes());
        }
        v.extend_from_slice(&self.body);
        v
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The configuration's `Debug` output shows none of `secrets`.
pub fn check_debug(config: &Config, secrets: &[&[u8]]) {
    let dbg = format!("{config:?}");
    for s in secrets {
        if s.len() >= 6 {
            assert!(!contains(dbg.as_bytes(), s), "a secret shows in Debug");
        }
    }
}

/// Decides `req`, checks every oracle, decides it again on the same store and
/// checks the verdict is the same. `secrets` must never show in a message
/// unless the request itself carries them.
pub fn check(
    config: &Config,
    req: &OwnedRequest,
    now: u64,
    store: &MemoryStore,
    secrets: &[&[u8]],
) -> Verdict {
    let r = req.as_request();
    let v = decide(config, &r, now, store);
    check_verdict(config, req, &v, secrets);
    let again = decide(config, &r, now, store);
    // A repeat is a retry: the same verdict, including the claim it holds on
    // the stream (each start is one attempt to give back if it fails).
    assert_eq!(v, again, "the same request decided twice differs");
    v
}

/// The oracles on one verdict.
pub fn check_verdict(config: &Config, req: &OwnedRequest, v: &Verdict, secrets: &[&[u8]]) {
    match v {
        Verdict::Reject(r) => {
            assert!(!r.message.is_empty(), "empty rejection message");
            assert!(
                !r.message.chars().any(char::is_control),
                "control character in a rejection message (log injection): {:?}",
                r.message
            );
            for s in [&r.app, &r.stream].into_iter().flatten() {
                assert!(!s.chars().any(char::is_control), "control char in {s:?}");
            }
            let body = reply::body(r.code, &r.message, "rid-1");
            let j: serde_json::Value = serde_json::from_str(&body).expect("reply body is JSON");
            assert_eq!(j["Error"]["Code"], r.code.as_str());
            assert_eq!(j["Error"]["Message"], r.message.as_str());
            assert_eq!(j["RequestId"], "rid-1");
            let sent = req.all_bytes();
            for s in secrets {
                if s.len() >= 6 && !contains(&sent, s) {
                    assert!(
                        !contains(r.message.as_bytes(), s),
                        "a secret shows in the message {:?}",
                        r.message
                    );
                }
            }
        }
        Verdict::Forward(f) => {
            assert_eq!(req.method, "POST", "a non-POST was forwarded");
            assert!(
                req.body.len() <= config.max_body_bytes,
                "over max_body_bytes"
            );
            assert!(check_name(&f.app).is_ok() && check_name(&f.stream).is_ok());
            if let Some(apps) = &config.apps {
                assert!(apps.contains(&f.app), "app not in `apps` forwarded");
            }
            match (&config.push_auth, &f.key_id) {
                (None, None) => {}
                (Some(pa), Some(id)) => assert!(pa.keys.iter().any(|k| &k.id == id)),
                (pa, id) => panic!("push_auth {} but key id {id:?}", pa.is_some()),
            }
            let ca = &config.callback_auth;
            for (on, name) in [
                (ca.allow_cidrs.is_some(), "sender_cidr"),
                (ca.shared_key.is_some(), "shared_key"),
                (ca.webhook_signature.is_some(), "webhook_signature"),
                (config.push_auth.is_some(), "push_token"),
                // SRS's on_hls is forwarded before the registry answers
                // (SRS queues its hooks), so it never claims the registry.
                (
                    config.duplicate_streams.reject
                        && !(f.format == Format::Srs && f.event == Event::Update),
                    "stream_registry",
                ),
                (config.apps.is_some(), "app"),
            ] {
                assert_eq!(f.verified.contains(&name), on, "verified {:?}", f.verified);
            }
            // A forwarded start holds a claim on its stream, to give back if
            // the upstream refuses it; an end, or the registry off, none.
            assert_eq!(
                f.reservation.is_some(),
                config.duplicate_streams.reject && f.event == Event::Start,
                "reservation {:?} for a forwarded {:?}",
                f.reservation,
                f.event
            );
            for (name, value) in f.headers() {
                assert!(
                    value.bytes().all(|b| (0x21..0x7f).contains(&b)),
                    "{name} is not a safe header value: {value:?}"
                );
            }
            let media = expected_media(req);
            match f.format {
                Format::KlsV2 => {
                    assert_eq!(media, Some(callback_guard::callback::MediaType::Json));
                    json_agrees(&req.body, &f.app, &f.stream, f.event);
                }
                Format::Srs => {
                    assert_eq!(media, Some(callback_guard::callback::MediaType::Json));
                    assert!(config.formats.srs);
                    srs_agrees(&req.body, &f.app, &f.stream, f.event);
                }
                Format::KlsV1 | Format::NginxRtmp => {
                    assert_eq!(media, Some(callback_guard::callback::MediaType::Form));
                    assert!(config.formats.allows(f.format));
                    form_agrees(&req.body, f.format, &f.app, &f.stream, f.event);
                }
            }
        }
    }
}

/// The parser a forwarded request must have gone through, written out here
/// rather than taken from the library: a non-blank `content-type` names it;
/// without one (KLS's old-version sender sends none) a body whose first byte
/// after one optional UTF-8 BOM and JSON whitespace is `{` is JSON, anything
/// else a form.
fn expected_media(req: &OwnedRequest) -> Option<callback_guard::callback::MediaType> {
    use callback_guard::callback::MediaType;
    match req.content_type.as_deref() {
        Some(ct) if !ct.trim().is_empty() => callback_guard::callback::media_type(Some(ct)),
        _ => {
            let b = req.body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&req.body);
            let first = b
                .iter()
                .find(|c| !matches!(c, b' ' | b'\t' | b'\r' | b'\n'));
            Some(if first == Some(&b'{') {
                MediaType::Json
            } else {
                MediaType::Form
            })
        }
    }
}

// ---- what other readers of a forwarded body see ------------------------------------

/// Top-level members of a JSON object in order, duplicates kept.
struct Members(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Go's encoding/json matches struct fields case-insensitively, with the
/// Unicode folds `ſ`→`s` and `K` (Kelvin)→`k`.
pub fn go_fold_eq(key: &str, field: &str) -> bool {
    let mut a = key.chars();
    let mut b = field.chars();
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) => {
                let x = match x {
                    '\u{17F}' => 's',
                    '\u{212A}' => 'k',
                    c => c.to_ascii_lowercase(),
                };
                if x != y.to_ascii_lowercase() {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

fn json_agrees(body: &[u8], app: &str, stream: &str, event: Event) {
    // serde_json's own Value reader (last duplicate wins) must accept it.
    let v: serde_json::Value =
        serde_json::from_slice(body).expect("a forwarded JSON body parses as a serde_json Value");
    assert_eq!(v["App"], app);
    assert_eq!(v["Stream"], stream);
    let notify = match event {
        Event::Start => "PubStart",
        Event::End => "PubEnd",
        Event::Update => panic!("a JSON callback has no update event"),
    };
    assert_eq!(v["NotifyType"], notify);
    // Every core field is named by exactly one member, whoever reads it:
    // exact-match (serde, Python) and case-folding (Go) readers agree.
    let members: Members = serde_json::from_slice(body).expect("members");
    for field in CORE_JSON_FIELDS {
        let n = members
            .0
            .iter()
            .filter(|(k, _)| go_fold_eq(k, field))
            .count();
        assert!(
            n <= 1,
            "`{field}` is named by {n} members of a forwarded body"
        );
    }
}

/// The SRS hook fields, written out here (not taken from the parser).
pub const SRS_FIELDS: &[&str] = &[
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
];

fn srs_agrees(body: &[u8], app: &str, stream: &str, event: Event) {
    let v: serde_json::Value =
        serde_json::from_slice(body).expect("a forwarded JSON body parses as a serde_json Value");
    assert_eq!(v["app"], app);
    assert_eq!(v["stream"], stream);
    assert!(!stream.contains('?'), "a stream with a query was forwarded");
    let action = match event {
        Event::Start => "on_publish",
        Event::End => "on_unpublish",
        Event::Update => "on_hls",
    };
    assert_eq!(v["action"], action);
    assert!(v.get("NotifyType").is_none(), "an SRS body with NotifyType");
    // The session's parts are strings SRS sent.
    assert!(v["server_id"].is_string() && v["client_id"].is_string());
    // Every field is named by at most one member, whoever reads it.
    let members: Members = serde_json::from_slice(body).expect("members");
    for field in SRS_FIELDS {
        let n = members
            .0
            .iter()
            .filter(|(k, _)| go_fold_eq(k, field))
            .count();
        assert!(
            n <= 1,
            "`{field}` is named by {n} members of a forwarded body"
        );
    }
}

fn form_agrees(body: &[u8], format: Format, app: &str, stream: &str, event: Event) {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let one = |name: &str| -> String {
        let vals: Vec<&String> = pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(
            vals.len(),
            1,
            "`{name}` given {} times in a forwarded form",
            vals.len()
        );
        vals[0].clone()
    };
    assert_eq!(one("app"), app);
    let name = one("name");
    assert_eq!(
        name.split_once('?').map_or(name.as_str(), |(s, _)| s),
        stream
    );
    let call = one("call");
    let expected = match (format, event) {
        (Format::KlsV1, Event::Start) => "user_publish",
        (Format::KlsV1, Event::End) => "user_publish_done",
        (Format::NginxRtmp, Event::Start) => "publish",
        (Format::NginxRtmp, Event::End) => "publish_done",
        (Format::NginxRtmp, Event::Update) => "update_publish",
        (Format::KlsV1, Event::Update) => panic!("a KLS form has no update event"),
        (Format::KlsV2 | Format::Srs, _) => unreachable!(),
    };
    assert_eq!(call, expected);
}

/// Runs one body through every fixed configuration (a fresh registry each),
/// labelled with `content_type` and again with no `content-type` at all, as
/// KLS's old-version sender posts. Each is decided twice: at once (a retry)
/// and later, after its reservation may have expired.
pub fn run_body(content_type: &str, body: &[u8]) {
    let secrets: [&[u8]; 3] = [KS_KEY.as_bytes(), b"other0key", SHARED.as_bytes()];
    let labelled = OwnedRequest::post(content_type, body);
    let mut unlabelled = labelled.clone();
    unlabelled.content_type = None;
    for req in [&labelled, &unlabelled] {
        for (i, c) in fixed_configs().iter().enumerate() {
            let store = MemoryStore::new();
            let now = NOW + i as u64;
            let v = check(c, req, now, &store, &secrets);
            // (The SRS configuration has no kls_v2: a KLS JSON body is 415 there.)
            if req.content_type.is_none() && c.formats.kls_v2 {
                if let Verdict::Reject(r) = &v {
                    assert_ne!(
                        r.code,
                        reply::Code::UnsupportedMediaType,
                        "an unlabelled body got 415, but every fixed configuration takes JSON and forms: {:?}",
                        r.message
                    );
                }
            }
            check(c, req, now + 2, &store, &secrets);
        }
    }
}
