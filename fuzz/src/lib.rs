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
//! - a forwarded play (nginx-rtmp `play`, `play_done`, `update_play`; SRS
//!   `on_play`, `on_stop`) needs `play_auth`: its key id is a play key's,
//!   `verified` names `play_token` (never `push_token` nor the registry), and
//!   it holds no reservation; a refusal that names a push or play token is
//!   about a callback of that purpose;
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
/// ks_md5 play key (`viewer`) of the fixed play configuration; its push key
/// is [`KS_KEY`] (`main`).
pub const PLAY_KEY: &str = "fuzzPlay01234567";
/// A second ks_md5 play key (`viewer-scoped`), for app `live` on host
/// `127.0.0.1` only.
pub const PLAY_SCOPED_KEY: &str = "play0scoped";
/// hmac_sha256 play key (`hviewer`) of the fixed configuration without push_auth.
pub const PLAY_HMAC_KEY: &str = "fuzzPlayHmac-0123456789";
/// Every secret of the fixed configurations, watched in messages and Debug.
pub const FIXED_SECRETS: [&str; 6] = [
    KS_KEY,
    "other0key",
    SHARED,
    PLAY_KEY,
    PLAY_SCOPED_KEY,
    PLAY_HMAC_KEY,
];

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
        // plays: nginx-rtmp and SRS, push and play keys apart (ks_md5 both),
        // a scoped play key, the registry on (plays must never touch it)
        format!(
            r#"{{"formats":["nginx_rtmp","srs"],
               "push_auth":{{"scheme":"ks_md5","keys":[{{"id":"main","secret":"{KS_KEY}"}}]}},
               "play_auth":{{"scheme":"ks_md5","clock_skew_s":30,"keys":[{{"id":"viewer","secret":"{PLAY_KEY}"}},
                 {{"id":"viewer-scoped","secret":"{PLAY_SCOPED_KEY}","apps":["live"],"domains":["127.0.0.1"]}}]}}}}"#
        ),
        // plays checked with hmac_sha256 keys, pushes not token-checked, KLS
        // JSON beside SRS, apps, the registry off
        format!(
            r#"{{"formats":["kls_v2","nginx_rtmp","srs"],"apps":["live"],"duplicate_streams":{{"reject":false}},
               "play_auth":{{"scheme":"hmac_sha256","keys":[{{"id":"hviewer","secret":"{PLAY_HMAC_KEY}"}}]}}}}"#
        ),
    ]
    .iter()
    .map(|j| {
        let c = Config::from_json(j.as_bytes(), &env).expect("fixed fuzz configuration is valid");
        let secrets: Vec<&[u8]> = FIXED_SECRETS.iter().map(|s| s.as_bytes()).collect();
        check_debug(&c, &secrets);
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
    // The first byte before the slice compare: every `==` on slices is a
    // memcmp that libFuzzer intercepts and profiles, which made this scan
    // the targets' hottest spot.
    let Some(&first) = needle.first() else {
        return false;
    };
    hay.windows(needle.len())
        .any(|w| w[0] == first && w == needle)
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
            check_purpose(config, r);
            // A secret may show only as an echo of what the sender sent
            // (the short message is searched first, the request only then).
            for s in secrets {
                if s.len() >= 6 && contains(r.message.as_bytes(), s) {
                    assert!(
                        contains(&req.all_bytes(), s),
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
            // The key that opened it is of the callback's own purpose: a play
            // is checked with play_auth, anything else with push_auth.
            let play = is_play_event(f.event);
            assert!(
                !play || config.play_auth.is_some(),
                "a {:?} was forwarded without play_auth",
                f.event
            );
            let (auth, section) = if play {
                (&config.play_auth, "play_auth")
            } else {
                (&config.push_auth, "push_auth")
            };
            match (auth, &f.key_id) {
                (None, None) => {}
                (Some(a), Some(id)) => assert!(
                    a.keys.iter().any(|k| &k.id == id),
                    "key id {id:?} of a forwarded {:?} is not a {section} key",
                    f.event
                ),
                (a, id) => panic!("{section} {} but key id {id:?}", a.is_some()),
            }
            let ca = &config.callback_auth;
            for (on, name) in [
                (ca.allow_cidrs.is_some(), "sender_cidr"),
                (ca.shared_key.is_some(), "shared_key"),
                (ca.webhook_signature.is_some(), "webhook_signature"),
                (!play && config.push_auth.is_some(), "push_token"),
                (play, "play_token"),
                // SRS's on_hls is forwarded before the registry answers
                // (SRS queues its hooks), so it never claims the registry;
                // plays never touch it.
                (
                    config.duplicate_streams.reject
                        && !play
                        && !(f.format == Format::Srs && f.event == Event::Update),
                    "stream_registry",
                ),
                (config.apps.is_some(), "app"),
            ] {
                assert_eq!(f.verified.contains(&name), on, "verified {:?}", f.verified);
            }
            // A forwarded start holds a claim on its stream, to give back if
            // the upstream refuses it; an end, a play, or the registry off, none.
            assert_eq!(
                f.reservation.is_some(),
                config.duplicate_streams.reject && f.event == Event::Start,
                "reservation {:?} for a forwarded {:?}",
                f.reservation,
                f.event
            );
            if play {
                assert!(f.reservation.is_none() && f.registry_error.is_none());
            }
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

/// Whether an event is a viewer's (nginx-rtmp `play`, `play_done`,
/// `update_play`; SRS `on_play`, `on_stop`), written out here rather than
/// taken from `Event::is_play`.
pub fn is_play_event(event: Event) -> bool {
    match event {
        Event::Start | Event::End | Event::Update => false,
        Event::Play | Event::PlayEnd | Event::PlayUpdate => true,
    }
}

/// A refusal about a token is about a callback of that token's purpose, and
/// says "it is a push token" (or play) only when the other purpose's check is
/// configured; without play_auth a play never gets as far as a token check.
fn check_purpose(config: &Config, r: &callback_guard::verdict::Rejection) {
    let play = r.event.is_some_and(is_play_event);
    assert_eq!(play, r.is_play(), "Rejection::is_play for {:?}", r.event);
    let m = &r.message;
    if m.starts_with("play token") {
        assert!(play, "a play token refusal about {:?}: {m:?}", r.event);
        assert!(
            config.play_auth.is_some(),
            "play token checked without play_auth"
        );
    }
    if m.starts_with("push token") {
        assert!(
            r.event.is_some() && !play,
            "a push token refusal about {:?}: {m:?}",
            r.event
        );
        assert!(
            config.push_auth.is_some(),
            "push token checked without push_auth"
        );
    }
    // (Matched from the start: a message may echo a field's name, which
    // the sender chooses.)
    if m.starts_with("play token signature does not match: it is a push token") {
        assert!(play && config.push_auth.is_some(), "{m:?}");
    }
    if m.starts_with("push token signature does not match: it is a play token") {
        assert!(!play && config.play_auth.is_some(), "{m:?}");
    }
    if play && config.play_auth.is_none() {
        assert!(
            matches!(
                r.code,
                reply::Code::InvalidParameterValue | reply::Code::UnsupportedMediaType
            ),
            "a play without play_auth refused {:?}: {m:?}",
            r.code
        );
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
        Event::Update => panic!("a KLS JSON callback has no update event"),
        Event::Play | Event::PlayEnd | Event::PlayUpdate => {
            panic!("a KLS JSON callback has no play event ({event:?})")
        }
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
    "pageUrl",
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
        Event::Play => "on_play",
        Event::PlayEnd => "on_stop",
        Event::PlayUpdate => panic!("SRS has no play update hook"),
    };
    assert_eq!(v["action"], action);
    if event == Event::Play {
        // SRS's on_play carries the player's page URL, as a string.
        assert!(v["pageUrl"].is_string(), "an on_play without pageUrl");
    }
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

/// The fields of a KLS old-version form, written out here.
pub const KLS_FORM_FIELDS: &[&str] = &[
    "app",
    "name",
    "tcurl",
    "call",
    "vdoid",
    "close_mode",
    "swfurl",
    "flashver",
];
/// nginx-rtmp's own fields of `on_publish` / `on_update` forms.
pub const NGINX_PUSH_FIELDS: &[&str] = &[
    "app",
    "name",
    "tcurl",
    "call",
    "addr",
    "clientid",
    "type",
    "flashver",
    "swfurl",
    "pageurl",
    "time",
    "timestamp",
];
/// nginx-rtmp's own fields of `on_play` / `on_play_done` / `update_play`
/// forms (a play carries the player's `start`, `duration` and `reset`).
pub const NGINX_PLAY_FIELDS: &[&str] = &[
    "app",
    "name",
    "tcurl",
    "call",
    "addr",
    "clientid",
    "flashver",
    "swfurl",
    "pageurl",
    "time",
    "timestamp",
    "start",
    "duration",
    "reset",
];

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
        (Format::NginxRtmp, Event::Play) => "play",
        (Format::NginxRtmp, Event::PlayEnd) => "play_done",
        (Format::NginxRtmp, Event::PlayUpdate) => "update_play",
        (Format::KlsV1, Event::Update) => panic!("a KLS form has no update event"),
        (Format::KlsV1, Event::Play | Event::PlayEnd | Event::PlayUpdate) => {
            panic!("a KLS form has no play event")
        }
        (Format::KlsV2 | Format::Srs, _) => unreachable!(),
    };
    assert_eq!(call, expected);
    // The dialect's own fields are given at most once: a second one would
    // be read by some other reader instead (a player's `start` arg beside
    // nginx-rtmp's, say).
    let own: &[&str] = match (format, is_play_event(event)) {
        (Format::KlsV1, _) => KLS_FORM_FIELDS,
        (_, false) => NGINX_PUSH_FIELDS,
        (_, true) => NGINX_PLAY_FIELDS,
    };
    for f in own {
        let n = pairs.iter().filter(|(k, _)| k == f).count();
        assert!(n <= 1, "`{f}` given {n} times in a forwarded {call} form");
    }
}

/// Runs one body through every fixed configuration (a fresh registry each),
/// labelled with `content_type` and again with no `content-type` at all, as
/// KLS's old-version sender posts. Each is decided twice: at once (a retry)
/// and later, after its reservation may have expired.
pub fn run_body(content_type: &str, body: &[u8]) {
    let secrets: Vec<&[u8]> = FIXED_SECRETS.iter().map(|s| s.as_bytes()).collect();
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
