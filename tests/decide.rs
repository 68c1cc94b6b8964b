//! `decide()` end to end in plain Rust: one passing and one failing case per
//! rule, the seed samples, and property tests that arbitrary input never
//! panics and always gets a verdict.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use callback_guard::auth::{token, webhook};
use callback_guard::config::Scheme;
use callback_guard::registry::MemoryStore;
use callback_guard::reply::{self, Code};
use callback_guard::{decide, Config, Request, Verdict};
use proptest::prelude::*;

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";
const NOW: u64 = 1_700_000_000;
const KS_KEY: &str = "123456";
const HMAC_KEY: &str = "0123456789abcdef0123456789abcdef";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn config(json: &str) -> Config {
    Config::from_json(json.as_bytes(), &|_: &str| None).unwrap()
}

struct Req<'a> {
    method: &'a str,
    path: &'a str,
    content_type: Option<&'a str>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    source: Option<std::net::IpAddr>,
}

impl<'a> Req<'a> {
    fn post(content_type: &'a str, body: impl Into<Vec<u8>>) -> Self {
        Req {
            method: "POST",
            path: "/callback",
            content_type: Some(content_type),
            headers: Vec::new(),
            body: body.into(),
            source: Some("127.0.0.1".parse().unwrap()),
        }
    }

    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    fn run_with(&self, c: &Config, now: u64, store: &MemoryStore) -> Verdict {
        let r = Request {
            method: self.method,
            path: self.path,
            content_type: self.content_type,
            headers: &self.headers,
            body: &self.body,
            source: self.source,
        };
        decide(c, &r, now, store)
    }

    fn run(&self, c: &Config) -> Verdict {
        self.run_with(c, NOW, &MemoryStore::new())
    }
}

fn rejected(v: &Verdict) -> (Code, String) {
    match v {
        Verdict::Reject(r) => (r.code, r.message.clone()),
        Verdict::Forward(f) => panic!("expected a rejection, got {f:?}"),
    }
}

fn assert_forward(v: &Verdict) -> &callback_guard::Forward {
    match v {
        Verdict::Forward(f) => f,
        Verdict::Reject(r) => panic!("expected forward, got {r:?}"),
    }
}

fn assert_code(v: &Verdict, code: Code, needle: &str) {
    let (c, msg) = rejected(v);
    assert_eq!(c, code, "{msg}");
    assert!(
        msg.contains(needle),
        "message {msg:?} should mention {needle:?}"
    );
}

/// The seed's start sample, with the times and params made current.
fn v2_start(stream: &str, params: &str) -> String {
    format!(
        r#"{{"Version":"1.0","App":"live","Pubdomain":"push.example.com","Stream":"{stream}","PubStartUnixTime":"{}000","NotifyType":"PubStart","ClientIp":" ","ClientPort":" ","Node":" ","PubParam":{params}}}"#,
        NOW
    )
}

fn v2_end(stream: &str, params: &str) -> String {
    format!(
        r#"{{"Version":"1.0","App":"live","Pubdomain":"push.example.com","Stream":"{stream}","PubEndUnixTime":{}000,"NotifyType":"PubEnd","ClientIp":" ","ClientPort":" ","Node":" ","PubEndMessage":" ","PubParam":{params}}}"#,
        NOW + 60
    )
}

fn ks_params(stream: &str, expires: u64) -> String {
    let q = token::sign(Scheme::KsMd5, KS_KEY.as_bytes(), "live", stream, expires);
    let (t, k) = q.split_once("&k=").unwrap();
    format!(r#"{{"t":"{}","k":"{k}"}}"#, &t[2..])
}

const SEED_START: &str = include_str!("fixtures/kls_v2_start.json");
const SEED_END: &str = include_str!("fixtures/kls_v2_end.json");
const SEED_V1_START: &str = "app=live&name=asdf&swfurl=nil&flashver=nil&tcurl=rtmp://test.uplive.ks-cdn.com/live&call=user_publish&vdoid=123456";
const SEED_V1_END: &str = "app=live&name=asdf&swfurl=nil&flashver=nil&tcurl=rtmp://test.uplive.ks-cdn.com/live&call=user_publish_done&close_mode=nil&vdoid=123456";

// ---- the seed samples and the defaults ------------------------------------------

#[test]
fn seed_samples_are_forwarded_with_the_default_config() {
    let c = config("");
    for (ct, body) in [
        (JSON, SEED_START),
        (JSON, SEED_END),
        (FORM, SEED_V1_START),
        (FORM, SEED_V1_END),
    ] {
        let f = assert_forward(&Req::post(ct, body).run(&c)).clone();
        assert!(f.verified.contains(&"format"));
    }
}

#[test]
fn forward_headers_say_what_was_verified() {
    let c = config(&format!(
        r#"{{"apps":["live"],"push_auth":{{"scheme":"ks_md5","keys":[{{"id":"main","secret":"{KS_KEY}"}}]}}}}"#
    ));
    let v = Req::post(JSON, v2_start("s", &ks_params("s", NOW + 60))).run(&c);
    let h = assert_forward(&v).headers();
    let get = |n: &str| {
        h.iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("x-callback-guard-format"), "kls_v2");
    assert_eq!(get("x-callback-guard-event"), "start");
    assert_eq!(get("x-callback-guard-key-id"), "main");
    assert_eq!(
        get("x-callback-guard-verified"),
        "format,app,push_token,stream_registry"
    );
}

// ---- method, size, media type ----------------------------------------------------

#[test]
fn method_must_be_post() {
    let c = config("");
    for m in ["GET", "HEAD", "PUT", "post"] {
        let mut r = Req::post(JSON, SEED_START);
        r.method = m;
        assert_code(&r.run(&c), Code::MethodNotAllowed, "POST");
    }
}

#[test]
fn body_size_limit() {
    let c = config(r#"{"max_body_bytes": 400}"#);
    assert_forward(&Req::post(JSON, SEED_START).run(&c));
    let big = SEED_START.replace(
        "\"Node\":\" \"",
        &format!("\"Node\":\" \",\"Pad\":\"{}\"", "x".repeat(400)),
    );
    assert_code(
        &Req::post(JSON, big).run(&c),
        Code::PayloadTooLarge,
        "max_body_bytes",
    );
}

#[test]
fn media_type_picks_the_format() {
    let c = config("");
    assert_forward(&Req::post("Application/JSON; charset=utf-8", SEED_START).run(&c));
    assert_forward(
        &Req::post(
            "application/x-www-form-urlencoded;charset=UTF-8",
            SEED_V1_START,
        )
        .run(&c),
    );
    for ct in [
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/json, text/plain",
    ] {
        for body in [SEED_START, SEED_V1_START] {
            assert_code(
                &Req::post(ct, body).run(&c),
                Code::UnsupportedMediaType,
                "content-type",
            );
        }
    }
    // a JSON body sent as a form is not guessed at: a label wins over the body
    assert_code(
        &Req::post(FORM, SEED_START).run(&c),
        Code::MissingParameter,
        "call",
    );
    assert_code(
        &Req::post(JSON, SEED_V1_START).run(&c),
        Code::InvalidParameterValue,
        "JSON",
    );
}

/// `Req` without a `content-type` header (KLS's old-version sender sends none).
fn unlabelled(body: impl Into<Vec<u8>>) -> Req<'static> {
    let mut r = Req::post(JSON, body);
    r.content_type = None;
    r
}

/// The spec's old-version samples come with no content-type: the body picks
/// the parser, and the detected dialect is what the forward says.
#[test]
fn unlabelled_callbacks_are_read_by_their_body() {
    let c = config(r#"{"formats":["kls_v2","kls_v1","nginx_rtmp"]}"#);
    for (body, format) in [
        (SEED_V1_START, "kls_v1"),
        (SEED_V1_END, "kls_v1"),
        (SEED_START, "kls_v2"),
        (SEED_END, "kls_v2"),
    ] {
        let f = assert_forward(&unlabelled(body).run(&c)).clone();
        assert_eq!(f.format.as_str(), format);
        let h = f.headers();
        assert!(h.contains(&("x-callback-guard-format", format.to_string())));
        // An empty header value labels nothing either.
        let mut r = unlabelled(body);
        r.content_type = Some("");
        assert_eq!(r.run(&c), unlabelled(body).run(&c));
    }
    let nginx = nginx_form("publish", "live", "cam1", 1935, 1, NOW + 60, "k");
    let f = assert_forward(&unlabelled(nginx).run(&c)).clone();
    assert_eq!(f.format.as_str(), "nginx_rtmp");
    // Leading JSON whitespace before the object is skipped.
    let f = assert_forward(&unlabelled(format!(" \r\n\t{SEED_START}")).run(&c)).clone();
    assert_eq!(f.format.as_str(), "kls_v2");
}

/// Without a label, a body that is neither a KLS JSON callback nor a form
/// callback is refused by the strict parsers with their 400 codes, never 415.
#[test]
fn unlabelled_garbage_gets_the_parsers_codes() {
    let c = config("");
    for (body, code, needle) in [
        ("", Code::MissingParameter, "call"),
        ("hello world", Code::MissingParameter, "call"),
        ("[1,2]", Code::MissingParameter, "call"),
        ("{\"App\":", Code::InvalidParameterValue, "truncated"),
        ("{}", Code::MissingParameter, "NotifyType"),
        ("app=live&call=user_publish", Code::MissingParameter, "name"),
        (
            "app=%FF&name=a&tcurl=rtmp://h/live&call=user_publish",
            Code::InvalidParameterValue,
            "UTF-8",
        ),
        // A BOM before the object marks JSON: refused as under application/json.
        (
            "\u{feff}{\"App\":\"live\"}",
            Code::InvalidParameterValue,
            "JSON",
        ),
    ] {
        let v = unlabelled(body).run(&c);
        assert_code(&v, code, needle);
    }
    let bom = format!("\u{feff}{SEED_START}");
    assert_eq!(
        rejected(&unlabelled(bom.clone()).run(&c)),
        rejected(&Req::post(JSON, bom).run(&c)),
        "a BOM is refused the same with or without the label"
    );
}

/// A dialect switched off stays off when it arrives unlabelled.
#[test]
fn unlabelled_callbacks_respect_formats() {
    let c = config(r#"{"formats":["kls_v2"]}"#);
    assert_code(
        &unlabelled(SEED_V1_START).run(&c),
        Code::UnsupportedMediaType,
        "form",
    );
    let c = config(r#"{"formats":["kls_v1"]}"#);
    assert_code(
        &unlabelled(SEED_START).run(&c),
        Code::UnsupportedMediaType,
        "kls_v2",
    );
    let c = config(r#"{"formats":["nginx_rtmp"]}"#);
    assert_code(
        &unlabelled(SEED_V1_START).run(&c),
        Code::InvalidParameterValue,
        "call",
    );
}

/// Token, apps and registry rules apply to a sniffed callback exactly as to a
/// labelled one: the same requests on the same registry, with and without
/// the label, get the same verdicts step by step.
#[test]
fn sniffed_callbacks_get_the_same_rules_as_labelled_ones() {
    let c = config(&format!(
        r#"{{"apps":["live"],"push_auth":{{"scheme":"ks_md5","keys":[{{"id":"main","secret":"{KS_KEY}"}}]}}}}"#
    ));
    let q = token::sign(Scheme::KsMd5, KS_KEY.as_bytes(), "live", "asdf", NOW + 60);
    let forged = q.replace(&q[q.len() - 4..], "0000");
    let steps: Vec<(&str, String)> = vec![
        (FORM, format!("{SEED_V1_START}&{q}")),
        (FORM, format!("{SEED_V1_START}&{forged}")),
        (
            FORM,
            format!("{}&{q}", SEED_V1_START.replace("vdoid=123456", "vdoid=999")),
        ),
        (
            FORM,
            format!("{}&{q}", SEED_V1_START.replace("app=live", "app=vod")),
        ),
        (FORM, format!("{SEED_V1_END}&{q}")),
        (
            FORM,
            format!("{}&{q}", SEED_V1_START.replace("vdoid=123456", "vdoid=999")),
        ),
        (JSON, v2_start("s", &ks_params("s", NOW + 60))),
        (JSON, v2_start("s", &ks_params("s", NOW - 1))),
        (JSON, v2_start("s", &ks_params("other", NOW + 60))),
        (JSON, v2_end("s", &ks_params("s", NOW + 60))),
    ];
    let labelled_store = MemoryStore::new();
    let sniffed_store = MemoryStore::new();
    let mut codes = Vec::new();
    for (ct, body) in &steps {
        let labelled = Req::post(ct, body.clone()).run_with(&c, NOW, &labelled_store);
        let sniffed = unlabelled(body.clone()).run_with(&c, NOW, &sniffed_store);
        assert_eq!(labelled, sniffed, "{body}");
        codes.push(match sniffed {
            Verdict::Forward(_) => None,
            Verdict::Reject(r) => Some(r.code),
        });
    }
    // The steps exercise each rule, not only forwards.
    assert_eq!(
        codes,
        [
            None,
            Some(Code::AuthencationFailed),
            Some(Code::ExistStreamName),
            Some(Code::NonExistApplication),
            None,
            None,
            None,
            Some(Code::AuthencationFailed),
            Some(Code::AuthencationFailed),
            None,
        ]
    );
}

// ---- parsing and validation ------------------------------------------------------

#[test]
fn missing_and_invalid_fields_name_the_field() {
    let c = config("");
    assert_code(
        &Req::post(JSON, SEED_START.replace("\"App\":\"live\",", "")).run(&c),
        Code::MissingParameter,
        "App",
    );
    assert_code(
        &Req::post(JSON, SEED_START.replace("PubStart\"", "Started\"")).run(&c),
        Code::InvalidParameterValue,
        "NotifyType",
    );
    assert_code(
        &Req::post(JSON, SEED_START.replace("1456800010000", "145680001000")).run(&c),
        Code::InvalidParameterValue,
        "PubStartUnixTime",
    );
    assert_code(
        &Req::post(JSON, "[1,2]").run(&c),
        Code::InvalidParameterValue,
        "JSON object",
    );
    assert_code(
        &Req::post(JSON, "{\"App\":").run(&c),
        Code::InvalidParameterValue,
        "truncated",
    );
    assert_code(
        &Req::post(
            FORM,
            SEED_V1_START.replace("call=user_publish", "call=publish"),
        )
        .run(&c),
        Code::InvalidParameterValue,
        "call",
    );
    assert_code(
        &Req::post(FORM, SEED_V1_END.replace("close_mode=nil", "close_mode=9")).run(&c),
        Code::InvalidParameterValue,
        "close_mode",
    );
    assert_code(
        &Req::post(FORM, format!("{SEED_V1_START}&app=vod")).run(&c),
        Code::InvalidParameterValue,
        "app",
    );
}

#[test]
fn formats_switch_dialects() {
    let nginx = "app=live&flashver=FMLE/3.0%20(compatible%3B%20Lavf59.27&swfurl=&tcurl=rtmp://127.0.0.1:19350/live&pageurl=&addr=127.0.0.1&clientid=1&call=publish&name=cam1&type=live&t=123&k=good";
    let c = config(r#"{"formats":["kls_v1","nginx_rtmp"]}"#);
    let f = assert_forward(&Req::post(FORM, nginx).run(&c)).clone();
    assert_eq!(f.format.as_str(), "nginx_rtmp");
    assert_forward(&Req::post(FORM, SEED_V1_START).run(&c));
    assert_code(
        &Req::post(JSON, SEED_START).run(&c),
        Code::UnsupportedMediaType,
        "kls_v2",
    );
    let c = config(r#"{"formats":["kls_v2"]}"#);
    assert_code(
        &Req::post(FORM, SEED_V1_START).run(&c),
        Code::UnsupportedMediaType,
        "form",
    );
}

/// An nginx-rtmp `on_publish` form as nginx-rtmp posts it, from ingest
/// `port`, with the push URL's `t` and `k` as extra fields.
fn nginx_form(
    call: &str,
    app: &str,
    stream: &str,
    port: u16,
    clientid: u32,
    t: u64,
    k: &str,
) -> String {
    format!(
        "app={app}&flashver=FMLE/3.0%20(compatible%3B%20Lavf59.27&swfurl=&tcurl=rtmp://127.0.0.1:{port}/{app}&pageurl=&addr=127.0.0.1&clientid={clientid}&call={call}&name={stream}&type=live&t={t}&k={k}"
    )
}

/// The nginx-rtmp dialect gets the same token, `apps` and `ExistStreamName`
/// rules as KLS callbacks.
#[test]
fn nginx_rtmp_callbacks_get_the_same_rules() {
    let c = config(&format!(
        r#"{{"formats":["nginx_rtmp"],"apps":["live"],
            "push_auth":{{"scheme":"ks_md5","keys":[{{"id":"main","secret":"{KS_KEY}"}}]}}}}"#
    ));
    let store = MemoryStore::new();
    let t = NOW + 600;
    let k = |stream: &str, t: u64| {
        let q = token::sign(Scheme::KsMd5, KS_KEY.as_bytes(), "live", stream, t);
        q.rsplit("k=").next().unwrap().to_string()
    };
    let run = |body: String| Req::post(FORM, body).run_with(&c, NOW, &store);

    // A signed push from ingest A is forwarded and reserves the stream.
    let f = assert_forward(&run(nginx_form(
        "publish",
        "live",
        "cam1",
        19350,
        1,
        t,
        &k("cam1", t),
    )))
    .clone();
    assert_eq!(
        (f.format.as_str(), f.key_id.as_deref()),
        ("nginx_rtmp", Some("main"))
    );
    assert!(f.reservation.is_some());
    // Ingest B numbers its clients from 1 too: same clientid, other ingest, other session.
    assert_code(
        &run(nginx_form(
            "publish",
            "live",
            "cam1",
            19351,
            1,
            t,
            &k("cam1", t),
        )),
        Code::ExistStreamName,
        "another session",
    );
    // A's publish_done frees the stream; then B may push it.
    assert_forward(&run(nginx_form(
        "publish_done",
        "live",
        "cam1",
        19350,
        1,
        t,
        &k("cam1", t),
    )));
    assert_forward(&run(nginx_form(
        "publish",
        "live",
        "cam1",
        19351,
        1,
        t,
        &k("cam1", t),
    )));

    // Forged and expired tokens, and an app not in `apps`.
    assert_code(
        &run(nginx_form(
            "publish",
            "live",
            "cam2",
            19350,
            2,
            t,
            "0123456789abcdef",
        )),
        Code::AuthencationFailed,
        "signature",
    );
    let old = NOW - 3600;
    assert_code(
        &run(nginx_form(
            "publish",
            "live",
            "cam3",
            19350,
            3,
            old,
            &k("cam3", old),
        )),
        Code::AuthencationFailed,
        "expired",
    );
    assert_code(
        &run(nginx_form(
            "publish",
            "vod",
            "cam4",
            19350,
            4,
            t,
            &k("cam4", t),
        )),
        Code::NonExistApplication,
        "apps",
    );
    // A KLS call is refused, naming nginx's values.
    let v = run(nginx_form(
        "user_publish",
        "live",
        "cam5",
        19350,
        5,
        t,
        &k("cam5", t),
    ));
    assert_code(
        &v,
        Code::InvalidParameterValue,
        "publish, publish_done or update_publish",
    );
    // nginx-rtmp's on_play without `play_auth`: refused, naming it.
    for call in ["play", "play_done", "update_play"] {
        let v = run(nginx_form(call, "live", "cam5", 19350, 5, t, &k("cam5", t)));
        assert_code(&v, Code::InvalidParameterValue, "`play_auth`");
        assert_code(
            &v,
            Code::InvalidParameterValue,
            &format!("`{call}` is a play callback"),
        );
    }
}

/// nginx-rtmp's `on_update` (`call=update_publish`) renews the reservation of
/// the session that holds the stream, so a short `ttl_s` keeps a live push
/// reserved; another session's update is refused as a duplicate; the token's
/// signature is checked but not its expiry (the push is already live).
#[test]
fn nginx_rtmp_updates_renew_the_holders_reservation() {
    let c = config(&format!(
        r#"{{"formats":["nginx_rtmp"],"duplicate_streams":{{"ttl_s":60}},
            "push_auth":{{"scheme":"ks_md5","keys":[{{"id":"main","secret":"{KS_KEY}"}}]}}}}"#
    ));
    let store = MemoryStore::new();
    // Session 1 pushes with a token that expires 30 s in; session 2's is fresh.
    let t_of = |clientid: u32| {
        if clientid == 1 {
            NOW + 30
        } else {
            NOW + 10_000
        }
    };
    let k = |t: u64| {
        let q = token::sign(Scheme::KsMd5, KS_KEY.as_bytes(), "live", "cam", t);
        q.split_once("&k=").unwrap().1.to_string()
    };
    let at = |body: String, now: u64| Req::post(FORM, body).run_with(&c, now, &store);
    let form = |call: &str, clientid: u32| {
        let t = t_of(clientid);
        nginx_form(call, "live", "cam", 19350, clientid, t, &k(t))
    };
    let publish = |clientid, now| at(form("publish", clientid), now);
    let update = |clientid, now| at(form("update_publish", clientid), now);

    let f = assert_forward(&publish(1, NOW)).clone();
    assert!(f.reservation.is_some());
    // Updates every 50 s keep it held well past ttl_s, even after the token's expiry.
    for i in 1..=4 {
        let f = assert_forward(&update(1, NOW + 50 * i)).clone();
        assert_eq!(f.event.as_str(), "update");
        assert!(
            f.reservation.is_none(),
            "an update holds no attempt to give back"
        );
        assert!(f.verified.contains(&"stream_registry"));
        assert_code(
            &publish(2, NOW + 50 * i + 1),
            Code::ExistStreamName,
            "another session",
        );
    }
    // Another session's update is a duplicate push.
    assert_code(
        &update(2, NOW + 201),
        Code::ExistStreamName,
        "another session",
    );
    // Without updates the reservation lapses after ttl_s.
    assert_forward(&publish(2, NOW + 200 + 61));
    // A forged token on an update is refused.
    let forged = nginx_form(
        "update_publish",
        "live",
        "cam",
        19350,
        2,
        t_of(2),
        "0123456789abcdef",
    );
    assert_code(
        &at(forged, NOW + 262),
        Code::AuthencationFailed,
        "does not match",
    );
}

// ---- apps ------------------------------------------------------------------------

#[test]
fn apps_refuse_unknown_apps() {
    let c = config(r#"{"apps":["live","edu"]}"#);
    assert_forward(&Req::post(JSON, SEED_START).run(&c));
    let v = Req::post(
        JSON,
        SEED_START.replace("\"App\":\"live\"", "\"App\":\"vod\""),
    )
    .run(&c);
    assert_code(&v, Code::NonExistApplication, "apps");
    assert_code(
        &Req::post(FORM, SEED_V1_START.replace("app=live", "app=Live")).run(&c),
        Code::NonExistApplication,
        "apps",
    );
}

// ---- push tokens -----------------------------------------------------------------

fn ks_config() -> Config {
    config(&format!(
        r#"{{"push_auth":{{"scheme":"ks_md5","keys":[{{"id":"main","secret":"{KS_KEY}"}}]}}}}"#
    ))
}

#[test]
fn ks_md5_token_in_pub_param_object_and_string() {
    let c = ks_config();
    let p = ks_params("s", NOW + 60);
    assert_forward(&Req::post(JSON, v2_start("s", &p)).run(&c));
    let as_string = serde_json::to_string(&p).unwrap();
    assert_forward(&Req::post(JSON, v2_start("s", &as_string)).run(&c));
    assert_code(
        &Req::post(JSON, v2_start("other", &p)).run(&c),
        Code::AuthencationFailed,
        "does not match",
    );
    assert_code(
        &Req::post(JSON, v2_start("s", "{}")).run(&c),
        Code::AuthencationFailed,
        "missing parameter `t`",
    );
}

#[test]
fn ks_md5_token_in_v1_form_places() {
    let c = ks_config();
    let q = token::sign(Scheme::KsMd5, KS_KEY.as_bytes(), "live", "asdf", NOW + 60);
    let extra = format!("{SEED_V1_START}&{q}");
    assert_forward(&Req::post(FORM, extra).run(&c));
    let enc = q.replace('=', "%3D").replace('&', "%26");
    let in_tcurl = SEED_V1_START.replace("/live&call", &format!("/live%3F{enc}&call"));
    assert_forward(&Req::post(FORM, in_tcurl).run(&c));
    let in_name = SEED_V1_START.replace("name=asdf", &format!("name=asdf%3F{enc}"));
    assert_forward(&Req::post(FORM, in_name).run(&c));
    assert_code(
        &Req::post(FORM, SEED_V1_START).run(&c),
        Code::AuthencationFailed,
        "missing",
    );
}

#[test]
fn token_expiry_on_start_but_not_on_end() {
    let c = ks_config();
    let p = ks_params("s", NOW - 1);
    assert_code(
        &Req::post(JSON, v2_start("s", &p)).run(&c),
        Code::AuthencationFailed,
        "expired",
    );
    assert_forward(&Req::post(JSON, v2_end("s", &p)).run(&c));
    let k = p.split("\"k\":\"").nth(1).unwrap()[..16].to_string();
    let forged = p.replace(&k, "ffffffffffffffff");
    assert_code(
        &Req::post(JSON, v2_end("s", &forged)).run(&c),
        Code::AuthencationFailed,
        "does not match",
    );
}

#[test]
fn hmac_tokens_with_kid_and_scoping() {
    let c = config(&format!(
        r#"{{"push_auth":{{"scheme":"hmac_sha256","keys":[
            {{"id":"edu","secret":"{HMAC_KEY}","apps":["edu"]}},
            {{"id":"live-a","secret":"{HMAC_KEY}-live","apps":["live"],"domains":["push.example.com"]}}]}}}}"#
    ));
    let q = token::sign(
        Scheme::HmacSha256,
        format!("{HMAC_KEY}-live").as_bytes(),
        "live",
        "s",
        NOW + 60,
    );
    let (t, sign) = q.split_once("&sign=").unwrap();
    let params = format!(r#"{{"t":"{}","sign":"{sign}"}}"#, &t[2..]);
    let f = assert_forward(&Req::post(JSON, v2_start("s", &params)).run(&c)).clone();
    assert_eq!(f.key_id.as_deref(), Some("live-a"));
    let with_kid = format!(r#"{{"t":"{}","sign":"{sign}","kid":"live-a"}}"#, &t[2..]);
    assert_forward(&Req::post(JSON, v2_start("s", &with_kid)).run(&c));
    let wrong_kid = format!(r#"{{"t":"{}","sign":"{sign}","kid":"edu"}}"#, &t[2..]);
    assert_code(
        &Req::post(JSON, v2_start("s", &wrong_kid)).run(&c),
        Code::AuthencationFailed,
        "kid",
    );
    let other_domain = v2_start("s", &params).replace("push.example.com", "other.example.com");
    assert_code(
        &Req::post(JSON, other_domain).run(&c),
        Code::AuthencationFailed,
        "no key",
    );
}

// ---- sender checks -----------------------------------------------------------------

#[test]
fn allow_cidrs_and_forwarded_for() {
    let c = config(r#"{"callback_auth":{"allow_cidrs":["10.0.0.0/8","::1/128"]}}"#);
    let mut r = Req::post(JSON, SEED_START);
    r.source = Some("10.1.1.1".parse().unwrap());
    assert_forward(&r.run(&c));
    r.source = Some("::1".parse().unwrap());
    assert_forward(&r.run(&c));
    r.source = Some("192.0.2.1".parse().unwrap());
    assert_code(
        &r.run(&c),
        Code::AuthencationFailed,
        "sender address not allowed",
    );
    let spoofed = Req::post(JSON, SEED_START).header("x-forwarded-for", "10.0.0.1");
    assert_code(&spoofed.run(&c), Code::AuthencationFailed, "not allowed");
    let c = config(r#"{"callback_auth":{"allow_cidrs":["10.0.0.0/8"],"trusted_xff_hops":1}}"#);
    assert_forward(
        &Req::post(JSON, SEED_START)
            .header("x-forwarded-for", "1.1.1.1, 10.0.0.1")
            .run(&c),
    );
    assert_code(
        &Req::post(JSON, SEED_START).run(&c),
        Code::AuthencationFailed,
        "X-Forwarded-For",
    );
}

#[test]
fn shared_key_in_query_or_header() {
    let c = config(
        r#"{"callback_auth":{"shared_key":{"query_param":"auth_key","header":"x-cdn-key","keys":[{"id":"a","secret":"k-one"},{"id":"b","secret":"k-two"}]}}}"#,
    );
    let mut r = Req::post(JSON, SEED_START);
    r.path = "/callback?auth_key=k-two";
    assert_forward(&r.run(&c));
    r.path = "/callback?auth_key=k-three";
    assert_code(
        &r.run(&c),
        Code::AuthencationFailed,
        "shared key does not match",
    );
    assert_forward(
        &Req::post(JSON, SEED_START)
            .header("x-cdn-key", "k-one")
            .run(&c),
    );
    assert_code(
        &Req::post(JSON, SEED_START).run(&c),
        Code::AuthencationFailed,
        "shared key missing",
    );
}

#[test]
fn webhook_signature_over_the_body() {
    let c = config(&format!(
        r#"{{"callback_auth":{{"webhook_signature":{{"keys":[{{"id":"w","secret":"{WHSEC}"}}],"tolerance_s":60}}}}}}"#
    ));
    let key = base64_decode(&WHSEC[6..]);
    let sig = webhook::sign(&key, "msg_1", NOW, SEED_START.as_bytes());
    let r = Req::post(JSON, SEED_START)
        .header("webhook-id", "msg_1")
        .header("webhook-timestamp", &NOW.to_string())
        .header("webhook-signature", &sig);
    assert_forward(&r.run(&c));
    assert_code(
        &r.run_with(&c, NOW + 61, &MemoryStore::new()),
        Code::AuthencationFailed,
        "window",
    );
    let mut tampered = r;
    tampered.body = SEED_START.replace("test", "tesT").into_bytes();
    assert_code(
        &tampered.run(&c),
        Code::AuthencationFailed,
        "does not match",
    );
    assert_code(
        &Req::post(JSON, SEED_START).run(&c),
        Code::AuthencationFailed,
        "webhook-id",
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn sender_checks_run_before_the_body_is_read() {
    let c = config(r#"{"callback_auth":{"allow_cidrs":["10.0.0.0/8"]}}"#);
    let v = Req::post("text/plain", "garbage").run(&c);
    assert_code(&v, Code::AuthencationFailed, "sender");
}

#[test]
fn max_event_age_both_directions() {
    let c = config(r#"{"max_event_age_s":300}"#);
    let body = v2_start("s", "{}");
    assert_forward(&Req::post(JSON, body.clone()).run_with(&c, NOW + 300, &MemoryStore::new()));
    assert_code(
        &Req::post(JSON, body.clone()).run_with(&c, NOW + 301, &MemoryStore::new()),
        Code::AuthencationFailed,
        "max_event_age_s",
    );
    assert_code(
        &Req::post(JSON, body).run_with(&c, NOW - 301, &MemoryStore::new()),
        Code::AuthencationFailed,
        "max_event_age_s",
    );
    // forms carry no event time: the rule does not apply to them
    assert_forward(&Req::post(FORM, SEED_V1_START).run(&c));
}

// ---- the stream registry ------------------------------------------------------------

#[test]
fn exist_stream_name_and_release() {
    let c = config("");
    let store = MemoryStore::new();
    let start = |session: &str| {
        let body = SEED_START.replace(
            "\"Node\":\" \"",
            &format!("\"Node\":\" \",\"Sequence\":\"{session}\""),
        );
        Req::post(JSON, body).run_with(&c, NOW, &store)
    };
    let end = |session: &str| {
        let body = SEED_END.replace(
            "\"Node\":\" \"",
            &format!("\"Node\":\" \",\"Sequence\":\"{session}\""),
        );
        Req::post(JSON, body).run_with(&c, NOW, &store)
    };
    assert!(assert_forward(&start("a")).reservation.is_some());
    assert_code(&start("b"), Code::ExistStreamName, "another session");
    // A retry is forwarded as one more attempt of the session, to give back
    // if the upstream refuses it (the stream is freed only when every attempt
    // failed).
    assert!(assert_forward(&start("a")).reservation.is_some());
    assert_forward(&end("b"));
    assert_code(&start("b"), Code::ExistStreamName, "another session");
    assert_forward(&end("a"));
    assert_forward(&start("b"));
}

/// KLS old-version forms with an empty `vdoid` (a shape real senders use)
/// carry no identity, no client address and no time: a second start cannot be
/// told from a retry, so both are forwarded (documented in the README).
#[test]
fn old_version_starts_without_vdoid_cannot_be_told_apart() {
    let c = config(r#"{}"#);
    let store = MemoryStore::new();
    let body = SEED_V1_START.replace("vdoid=123456", "vdoid=");
    let first = Req::post(FORM, body.clone()).run_with(&c, NOW, &store);
    assert!(assert_forward(&first).reservation.is_some());
    let second = Req::post(FORM, body.clone()).run_with(&c, NOW + 5, &store);
    assert_forward(&second);
    let third = Req::post(FORM, body).run_with(&c, NOW + 9, &store);
    assert_forward(&third);
    // With a vdoid, the second push is refused.
    let a = SEED_V1_START.replace("name=asdf", "name=other");
    assert_forward(&Req::post(FORM, a.clone()).run_with(&c, NOW, &store));
    let b = a.replace("vdoid=123456", "vdoid=654321");
    assert_code(
        &Req::post(FORM, b).run_with(&c, NOW, &store),
        Code::ExistStreamName,
        "another session",
    );
}

/// A registry that cannot answer.
struct Broken(callback_guard::registry::StoreError);

impl callback_guard::registry::SharedStore for Broken {
    fn get(
        &self,
        _: &str,
    ) -> Result<(Option<Vec<u8>>, Option<u32>), callback_guard::registry::StoreError> {
        match &self.0 {
            callback_guard::registry::StoreError::CasMismatch => Ok((Some(Vec::new()), Some(1))),
            e => Err(e.clone()),
        }
    }
    fn set(
        &self,
        _: &str,
        _: &[u8],
        _: Option<u32>,
    ) -> Result<(), callback_guard::registry::StoreError> {
        Err(self.0.clone())
    }
}

/// When the registry cannot answer, a start is refused with 503
/// `ServiceUnavailable` (never mistaken for a duplicate's 409) and an end is
/// forwarded anyway, marked with the error: the backend must learn that a
/// push stopped.
#[test]
fn a_registry_that_cannot_answer_refuses_starts_and_forwards_ends() {
    use callback_guard::registry::StoreError;
    let c = config("");
    for store in [
        Broken(StoreError::Host("status 9".into())),
        Broken(StoreError::CasMismatch),
    ] {
        let start = Req::post(JSON, SEED_START).run_with(&c, NOW, &MemoryStore::new());
        assert_forward(&start);
        let v = decide(&c, &as_request(&Req::post(JSON, SEED_START)), NOW, &store);
        let (code, msg) = rejected(&v);
        assert_eq!(code, Code::ServiceUnavailable, "{msg}");
        assert_eq!(code.status(), 503);
        assert!(msg.contains("stream registry"), "{msg}");
        // An end is forwarded either way: marked when the store failed; a
        // contended store had nothing to write (no entry of this session).
        let v = decide(&c, &as_request(&Req::post(JSON, SEED_END)), NOW, &store);
        let f = assert_forward(&v);
        let failed = matches!(store.0, StoreError::Host(_));
        assert_eq!(f.registry_error.is_some(), failed);
        assert_eq!(
            f.verified.contains(&"stream_registry"),
            !failed,
            "{:?}",
            f.verified
        );
    }
}

fn as_request<'a>(r: &'a Req<'a>) -> Request<'a> {
    Request {
        method: r.method,
        path: r.path,
        content_type: r.content_type,
        headers: &r.headers,
        body: &r.body,
        source: r.source,
    }
}

#[test]
fn duplicate_check_can_be_switched_off() {
    let c = config(r#"{"duplicate_streams":{"reject":false}}"#);
    let store = MemoryStore::new();
    for v in ["1", "2"] {
        let body = SEED_V1_START.replace("vdoid=123456", &format!("vdoid={v}"));
        let f = assert_forward(&Req::post(FORM, body).run_with(&c, NOW, &store)).clone();
        assert!(f.reservation.is_none());
        assert!(!f.verified.contains(&"stream_registry"));
    }
}

// ---- nothing secret leaks -----------------------------------------------------------

#[test]
fn no_secret_or_token_in_any_reply_or_log_line() {
    let c = config(&format!(
        r#"{{"push_auth":{{"scheme":"ks_md5","keys":[{{"id":"main","secret":"{KS_KEY}"}}]}},
            "callback_auth":{{"shared_key":{{"keys":[{{"id":"s","secret":"sharedsecret77"}}]}},
            "webhook_signature":{{"keys":[{{"id":"w","secret":"{WHSEC}"}}]}}}}}}"#
    ));
    let good = ks_params("s", NOW + 60);
    let k = good.split("\"k\":\"").nth(1).unwrap()[..16].to_string();
    let full_md5 = {
        use md5::{Digest, Md5};
        hex::encode(Md5::digest(format!("{KS_KEY}s{}", NOW + 60)))
    };
    let cases: Vec<Req> = vec![
        Req::post(JSON, v2_start("s", &good)),
        Req::post(JSON, v2_start("s", &good)).header("webhook-id", "x"),
        {
            let mut r = Req::post(JSON, v2_start("s", &good.replace(&k, "0123456789abcdef")));
            r.path = "/callback?auth_key=wrongshared";
            r
        },
        {
            let mut r = Req::post(JSON, v2_start("s", &good));
            r.path = "/callback?auth_key=sharedsecret77";
            r.header("webhook-id", "m")
                .header("webhook-timestamp", &NOW.to_string())
                .header("webhook-signature", "v1,AAAA")
        },
    ];
    let secrets = [
        KS_KEY,
        "sharedsecret77",
        "wrongshared",
        &WHSEC[6..],
        &k,
        &full_md5[8..24],
        "0123456789abcdef",
        "v1,AAAA",
    ];
    for r in cases {
        let v = r.run(&c);
        let (code, msg) = rejected(&v);
        let body = reply::body(code, &msg, "rid");
        let log = match &v {
            Verdict::Reject(r) => r.log_line(),
            Verdict::Forward(_) => unreachable!(),
        };
        for s in secrets {
            assert!(!body.contains(s), "reply {body} contains a secret");
            assert!(!log.contains(s), "log {log} contains a secret");
        }
    }
    // and the configuration's Debug form shows no secret either
    let dbg = format!("{c:?}");
    for s in [KS_KEY, "sharedsecret77", &WHSEC[6..]] {
        assert!(!dbg.contains(s), "Debug of the config shows a secret");
    }
}

// ---- property tests -----------------------------------------------------------------

fn any_config() -> Config {
    config(&format!(
        r#"{{"apps":["live"],"formats":["kls_v1","kls_v2","nginx_rtmp"],"max_event_age_s":600,
            "push_auth":{{"scheme":"ks_md5","keys":[{{"id":"main","secret":"{KS_KEY}"}}]}}}}"#
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_always_get_a_verdict(body in proptest::collection::vec(any::<u8>(), 0..600), json in any::<bool>()) {
        let c = any_config();
        let v = Req::post(if json { JSON } else { FORM }, body).run(&c);
        if let Verdict::Reject(r) = &v {
            prop_assert!(!r.message.is_empty());
        }
    }

    #[test]
    fn mutated_seed_samples_always_get_a_verdict(
        idx in 0usize..4, pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()
    ) {
        let (ct, seed) = [(JSON, SEED_START), (JSON, SEED_END), (FORM, SEED_V1_START), (FORM, SEED_V1_END)][idx];
        let mut b = seed.as_bytes().to_vec();
        let i = pos.index(b.len());
        b[i] = byte;
        b.truncate(cut.index(b.len() + 1).max(1));
        let _ = Req::post(ct, b).run(&any_config());
    }

    #[test]
    fn arbitrary_form_text_always_gets_a_verdict(s in "[a-z_=&%+?:/0-9]{0,200}") {
        let _ = Req::post(FORM, s).run(&any_config());
    }

    /// Unlabelled bytes get the verdict of the label their first byte picks
    /// (JSON for `{` after whitespace, else a form), and never a 415.
    #[test]
    fn unlabelled_bytes_get_the_verdict_of_the_sniffed_label(
        lead in "[ \t\r\n]{0,3}", body in proptest::collection::vec(any::<u8>(), 0..300), object in any::<bool>()
    ) {
        let mut b = lead.into_bytes();
        if object {
            b.push(b'{');
        }
        b.extend_from_slice(&body);
        let c = any_config();
        let first = b.iter().find(|x| !b" \t\r\n".contains(x));
        let label = if first == Some(&b'{') { JSON } else { FORM };
        let sniffed = unlabelled(b.clone()).run(&c);
        prop_assert_eq!(&sniffed, &Req::post(label, b).run(&c));
        if let Verdict::Reject(r) = &sniffed {
            prop_assert_ne!(r.code, Code::UnsupportedMediaType);
        }
    }
}

// ---- log lines ----------------------------------------------------------------------

#[test]
fn log_lines_quote_app_and_stream() {
    let c = Config::default_config();
    // A stream name that imitates the fields after it, and one with a newline.
    let v = Req::post(
        FORM,
        SEED_V1_START.replace("name=asdf", "name=a%22%20reason%3D%22ok"),
    )
    .run(&c);
    let Verdict::Forward(f) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(
        f.log_line(),
        r#"callback-guard forwarded: format=kls_v1 event=start app="live" stream="a\" reason=\"ok""#
    );
    let c = config(r#"{"apps":["other"]}"#);
    let v = Req::post(FORM, SEED_V1_START.replace("name=asdf", "name=a%22%20b")).run(&c);
    let Verdict::Reject(r) = &v else {
        panic!("{v:?}")
    };
    assert!(
        r.log_line().starts_with(
            r#"callback-guard rejected: code=NonExistApplication status=404 app="live" stream="a\" b" reason="#
        ),
        "{}",
        r.log_line()
    );
    // Before the body is parsed there is no app or stream to show.
    let Verdict::Reject(r) = Req::post(JSON, "[]").run(&c) else {
        panic!("[] forwarded")
    };
    assert!(r
        .log_line()
        .contains(" app=- stream=- reason=body must be a JSON object"));
}

/// End times come as a 13-digit string or integer, like start times; anything
/// else is refused with the field's name.
#[test]
fn end_times_as_string_or_integer() {
    let c = Config::default_config();
    for t in ["1456800010000", "\"1456800010000\""] {
        let body = SEED_END
            .replace("1456800010000", t.trim_matches('"'))
            .replace(
                "\"PubEndUnixTime\":1456800010000",
                &format!("\"PubEndUnixTime\":{t}"),
            );
        let f = assert_forward(&Req::post(JSON, body).run(&c)).clone();
        assert_eq!(f.event.as_str(), "end");
    }
    for bad in [
        "\"145680001000\"",
        "1456800010000.5",
        "-1456800010000",
        "\"abc\"",
        "[]",
    ] {
        let body = SEED_END.replace("1456800010000", bad);
        assert_code(
            &Req::post(JSON, body).run(&c),
            Code::InvalidParameterValue,
            "PubEndUnixTime",
        );
    }
}

/// The push-token rules (which run after the sender checks) and a CIDR
/// failure: no reply or log line shows a key, the expected signature or the
/// presented one, whichever way the token is wrong.
#[test]
fn no_token_value_in_push_token_or_cidr_rejections() {
    use hmac::{Hmac, Mac};
    let hmac_sig = |key: &str, stream: &str, t: u64| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(format!("live\n{stream}\n{t}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    };
    let t = NOW + 60;
    let old = NOW - 3600;
    let ks = config(&format!(
        r#"{{"push_auth":{{"scheme":"ks_md5","keys":[{{"id":"main","secret":"{KS_KEY}"}}]}},
            "callback_auth":{{"allow_cidrs":["10.0.0.0/8"]}}}}"#
    ));
    let hm = config(&format!(
        r#"{{"push_auth":{{"scheme":"hmac_sha256","keys":[{{"id":"h1","secret":"{HMAC_KEY}"}}]}}}}"#
    ));
    let k_good = ks_params("s", t).split("\"k\":\"").nth(1).unwrap()[..16].to_string();
    let k_old = ks_params("s", old).split("\"k\":\"").nth(1).unwrap()[..16].to_string();
    let h_good = hmac_sig(HMAC_KEY, "s", t);
    let h_wrong = hmac_sig("another-key-0123456789", "s", t);
    let from = |ip: &str, c: &Config, params: String| {
        let mut r = Req::post(JSON, v2_start("s", &params));
        r.source = Some(ip.parse().unwrap());
        r.run(c)
    };
    let cases = [
        (
            from(
                "10.0.0.1",
                &ks,
                format!(r#"{{"t":"{t}","k":"0123456789abcdef"}}"#),
            ),
            "does not match",
        ),
        (
            from(
                "10.0.0.1",
                &ks,
                format!(r#"{{"t":"{t}","k":"{}"}}"#, k_good.to_uppercase()),
            ),
            "lowercase hex",
        ),
        (
            from(
                "10.0.0.1",
                &ks,
                format!(r#"{{"t":"{t}","k":"{}"}}"#, &k_good[..15]),
            ),
            "16 hex characters",
        ),
        (
            from("10.0.0.1", &ks, format!(r#"{{"t":"{old}","k":"{k_old}"}}"#)),
            "expired",
        ),
        (
            from("192.0.2.7", &ks, format!(r#"{{"t":"{t}","k":"{k_good}"}}"#)),
            "sender address not allowed",
        ),
        (
            from(
                "10.0.0.1",
                &hm,
                format!(r#"{{"t":"{t}","sign":"{h_wrong}"}}"#),
            ),
            "does not match",
        ),
        (
            from(
                "10.0.0.1",
                &hm,
                format!(r#"{{"t":"{t}","sign":"{}"}}"#, h_good.to_uppercase()),
            ),
            "lowercase hex",
        ),
        (
            from(
                "10.0.0.1",
                &hm,
                format!(r#"{{"t":"{t}","sign":"{h_good}","kid":"nope"}}"#),
            ),
            "kid",
        ),
    ];
    let values = [
        KS_KEY,
        HMAC_KEY,
        &k_good,
        &k_good.to_uppercase(),
        &k_old,
        &h_good,
        &h_good.to_uppercase(),
        &h_wrong,
        &h_good[..16],
        "0123456789abcdef",
    ];
    for (v, needle) in &cases {
        let Verdict::Reject(r) = v else {
            panic!("forwarded: {v:?}")
        };
        assert_eq!(r.code, Code::AuthencationFailed, "{}", r.message);
        assert!(
            r.message.contains(needle),
            "{:?} should mention {needle}",
            r.message
        );
        let body = reply::body(r.code, &r.message, "rid");
        let line = r.log_line();
        for s in values {
            assert!(
                !body.contains(s) && !line.contains(s),
                "{s} shows in {body} / {line}"
            );
        }
    }
}
