//! The SRS `http_hooks` dialect through `decide()` (issue 21): the captures'
//! bodies, the `param` rules, the registry's stream and session, `on_hls`
//! renewals, and SRS's answer rule. tests/decide.rs style: one passing and
//! one failing case per rule.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use callback_guard::auth::token;
use callback_guard::config::Scheme;
use callback_guard::registry::{self, MemoryStore};
use callback_guard::reply::Code;
use callback_guard::{decide, Config, Request, Verdict};
use serde_json::{json, Value};

const NOW: u64 = 1_700_000_000;
const KS_KEY: &str = "123456";
const CAPTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/srs");

fn config(json: &str) -> Config {
    Config::from_json(json.as_bytes(), &|_: &str| None).unwrap()
}

fn ks_config(extra: &str) -> Config {
    config(&format!(
        r#"{{"formats":["srs"]{extra},
            "push_auth":{{"scheme":"ks_md5","keys":[{{"id":"main","secret":"{KS_KEY}"}}]}}}}"#
    ))
}

/// A captured on_publish body, with fields replaced.
fn hook(action: &str, client_id: &str, param: &str, changes: Value) -> String {
    let mut v = json!({"server_id":"vid-i562442","service_id":"41vb31bg","action":action,
        "client_id":client_id,"ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live",
        "tcUrl":"rtmp://127.0.0.1:19350/live","stream":"test1","param":param,
        "stream_url":"/live/test1","stream_id":"vid-2hx6744"});
    if action == "on_hls" {
        let m = v.as_object_mut().unwrap();
        for (k, x) in [
            ("duration", json!(2.02)),
            ("cwd", json!("/tmp/srs")),
            ("file", json!("/tmp/srs/live/test1-0.ts")),
            ("url", json!("live/test1-0.ts")),
            ("m3u8", json!("/tmp/srs/live/test1.m3u8")),
            ("m3u8_url", json!("live/test1.m3u8")),
            ("seq_no", json!(0)),
        ] {
            m.insert(k.into(), x);
        }
    }
    if let (Some(m), Some(c)) = (v.as_object_mut(), changes.as_object()) {
        for (k, x) in c {
            if x.is_null() {
                m.remove(k);
            } else {
                m.insert(k.clone(), x.clone());
            }
        }
    }
    v.to_string()
}

/// `?t=…&k=…` for live/test1, expiring at `t`.
fn ks_param(t: u64) -> String {
    format!(
        "?{}",
        token::sign(Scheme::KsMd5, KS_KEY.as_bytes(), "live", "test1", t)
    )
}

fn run_at(c: &Config, body: &str, now: u64, store: &MemoryStore) -> Verdict {
    let r = Request {
        method: "POST",
        path: "/hook",
        content_type: Some("application/json"),
        headers: &[],
        body: body.as_bytes(),
        source: Some("127.0.0.1".parse().unwrap()),
    };
    decide(c, &r, now, store)
}

fn run(c: &Config, body: &str) -> Verdict {
    run_at(c, body, NOW, &MemoryStore::new())
}

fn forwarded(v: &Verdict) -> &callback_guard::Forward {
    match v {
        Verdict::Forward(f) => f,
        Verdict::Reject(r) => panic!("expected forward, got {r:?}"),
    }
}

fn assert_code(v: &Verdict, code: Code, needle: &str) {
    match v {
        Verdict::Reject(r) => {
            assert_eq!(r.code, code, "{}", r.message);
            assert!(
                r.message.contains(needle),
                "{:?} lacks {needle:?}",
                r.message
            );
        }
        Verdict::Forward(f) => panic!("expected {code:?}, got forward {f:?}"),
    }
}

fn capture_body(name: &str) -> String {
    let raw = std::fs::read(format!("{CAPTURES}/{name}")).unwrap();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    String::from_utf8(raw[at + 4..].to_vec()).unwrap()
}

#[test]
fn srs_is_opt_in_and_told_apart_from_kls_json_by_its_keys() {
    let body = hook("on_publish", "c1", "?token=abc", json!({}));
    // Default formats: no SRS; the body reads as a KLS body without NotifyType.
    assert_code(
        &run(&Config::default_config(), &body),
        Code::MissingParameter,
        "NotifyType",
    );
    let srs = config(r#"{"formats":["srs"]}"#);
    let v = run(&srs, &body);
    let f = forwarded(&v);
    assert_eq!((f.format.as_str(), f.event.as_str()), ("srs", "start"));
    assert!(f
        .headers()
        .contains(&("x-callback-guard-format", "srs".to_string())));
    // With srs alone a KLS body is a dialect that is off.
    let kls = include_str!("fixtures/kls_v2_start.json");
    assert_code(&run(&srs, kls), Code::UnsupportedMediaType, "kls_v2");
    // Both on: each body is read in its own dialect.
    let both = config(r#"{"formats":["kls_v2","srs"]}"#);
    assert_eq!(forwarded(&run(&both, kls)).format.as_str(), "kls_v2");
    assert_eq!(forwarded(&run(&both, &body)).format.as_str(), "srs");
    // Neither key: KLS's message, as before srs existed.
    assert_code(&run(&both, "{}"), Code::MissingParameter, "NotifyType");
    assert_code(&run(&srs, "{}"), Code::MissingParameter, "action");
    // Both keys: ambiguous.
    let mixed = hook("on_publish", "c1", "", json!({"NotifyType":"PubStart"}));
    assert_code(
        &run(&both, &mixed),
        Code::InvalidParameterValue,
        "ambiguous",
    );
}

#[test]
fn every_other_hook_is_refused_with_a_pointer_to_the_push_and_play_hooks() {
    let c = config(r#"{"formats":["srs"]}"#);
    for name in ["on_connect.http", "on_close.http", "on_dvr.http"] {
        assert_code(
            &run(&c, &capture_body(name)),
            Code::InvalidParameterValue,
            "point only on_publish, on_unpublish, on_hls, on_play and on_stop at callback-guard",
        );
    }
    // Without `play_auth`, on_play and on_stop are refused, naming it.
    for (name, action) in [("on_play.http", "on_play"), ("on_stop.http", "on_stop")] {
        let v = run(&c, &capture_body(name));
        assert_code(&v, Code::InvalidParameterValue, "`play_auth`");
        assert_code(
            &v,
            Code::InvalidParameterValue,
            &format!("`{action}` is a play callback"),
        );
    }
}

#[test]
fn required_fields_get_the_same_codes_as_the_other_dialects() {
    let c = config(r#"{"formats":["srs"]}"#);
    for f in ["server_id", "client_id", "vhost", "app", "stream", "param"] {
        let missing = hook("on_publish", "c1", "", json!({ f: null }));
        assert_code(&run(&c, &missing), Code::MissingParameter, f);
        let mistyped = hook("on_publish", "c1", "", json!({ f: 1 }));
        assert_code(&run(&c, &mistyped), Code::InvalidParameterValue, f);
    }
    let hls = hook("on_hls", "c1", "", json!({"seq_no": "1"}));
    assert_code(&run(&c, &hls), Code::InvalidParameterValue, "seq_no");
}

#[test]
fn the_push_token_comes_from_param() {
    let c = ks_config("");
    let good = ks_param(NOW + 600);
    let v = run(&c, &hook("on_publish", "c1", &good, json!({})));
    let f = forwarded(&v);
    assert_eq!(f.key_id.as_deref(), Some("main"));
    assert!(f.verified.contains(&"push_token"));
    // The OBS-style doubling is one query.
    let doubled = format!("{good}{good}");
    forwarded(&run(&c, &hook("on_publish", "c1", &doubled, json!({}))));
    // Any other second `?` is ambiguous.
    let two = format!("{good}?x=1");
    assert_code(
        &run(&c, &hook("on_publish", "c1", &two, json!({}))),
        Code::InvalidParameterValue,
        "ambiguous",
    );
    // Repeated names with another value are refused.
    let rep = format!("{good}&k=00000000000000000000000000000000");
    assert_code(
        &run(&c, &hook("on_publish", "c1", &rep, json!({}))),
        Code::InvalidParameterValue,
        "more than once",
    );
    // No token, a bad one, an expired one.
    assert_code(
        &run(&c, &hook("on_publish", "c1", "", json!({}))),
        Code::AuthencationFailed,
        "",
    );
    let bad = good.replace("k=", "k=0");
    assert_code(
        &run(&c, &hook("on_publish", "c1", &bad, json!({}))),
        Code::AuthencationFailed,
        "",
    );
    let old = ks_param(NOW - 10);
    assert_code(
        &run(&c, &hook("on_publish", "c1", &old, json!({}))),
        Code::AuthencationFailed,
        "expired",
    );
    // An end is not bound by the expiry: a long push outlives its token.
    forwarded(&run(&c, &hook("on_unpublish", "c1", &old, json!({}))));
    // The token is scoped to (app, stream).
    let other = hook("on_publish", "c1", &good, json!({"stream": "test2"}));
    assert_code(&run(&c, &other), Code::AuthencationFailed, "");
}

#[test]
fn the_non_ascii_trap_is_a_missing_token_never_a_stream_with_a_query() {
    let body = capture_body("on_publish_param_q3b_utf8.http");
    assert_code(
        &run(&ks_config(""), &body),
        Code::AuthencationFailed,
        "token is missing",
    );
    let body = capture_body("on_publish_param_q2_quotes_utf8.http");
    assert_code(
        &run(&ks_config(""), &body),
        Code::AuthencationFailed,
        "token is missing",
    );
    // Without push_auth it is still refused: no stream named `test1?u=…`.
    assert_code(
        &run(&config(r#"{"formats":["srs"]}"#), &body),
        Code::InvalidParameterValue,
        "stream",
    );
}

#[test]
fn a_second_session_of_a_live_stream_gets_exist_stream_name() {
    let c = config(r#"{"formats":["srs"]}"#);
    let store = MemoryStore::new();
    // The captures: two client_ids, one stream_id.
    let first = capture_body("conflict_156_on_publish.http");
    let second = capture_body("conflict_158_on_publish.http");
    let f = forwarded(&run_at(&c, &first, NOW, &store)).clone();
    assert!(f.reservation.is_some());
    assert_code(
        &run_at(&c, &second, NOW + 1, &store),
        Code::ExistStreamName,
        "another session",
    );
    // The same session again is a retry, not a duplicate.
    forwarded(&run_at(&c, &first, NOW + 2, &store));
    // The holder's on_unpublish frees the stream; another session's does not.
    let other_end = hook("on_unpublish", "y708hn83", "?token=second", json!({}));
    forwarded(&run_at(&c, &other_end, NOW + 3, &store));
    assert_code(
        &run_at(&c, &second, NOW + 4, &store),
        Code::ExistStreamName,
        "",
    );
    forwarded(&run_at(
        &c,
        &capture_body("conflict_160_on_unpublish.http"),
        NOW + 5,
        &store,
    ));
    forwarded(&run_at(&c, &second, NOW + 6, &store));
    // Another vhost is another stream.
    let c2 = hook("on_publish", "zz", "", json!({"vhost": "example.com"}));
    forwarded(&run_at(&c, &c2, NOW + 7, &store));
}

#[test]
fn on_hls_renews_the_holders_reservation_and_changes_nothing_for_others() {
    let c = ks_config(r#","duplicate_streams":{"ttl_s":6}"#);
    let store = MemoryStore::new();
    // The token expires 3 s in: renewals are not bound by it.
    let p1 = ks_param(NOW + 3);
    let p2 = ks_param(NOW + 10_000);
    let at = |body: String, now: u64| run_at(&c, &body, now, &store);
    forwarded(&at(hook("on_publish", "c1", &p1, json!({})), NOW));
    for i in 1..=7 {
        let now = NOW + 2 * i;
        let f = forwarded(&at(hook("on_hls", "c1", &p1, json!({"seq_no": i})), now)).clone();
        assert_eq!(f.event.as_str(), "update");
        assert!(f.reservation.is_none(), "a renewal holds no attempt");
        assert_code(
            &at(hook("on_publish", "c2", &p2, json!({})), now + 1),
            Code::ExistStreamName,
            "",
        );
        // Another session's on_hls is answered (SRS ignores it) and changes nothing.
        forwarded(&at(hook("on_hls", "c2", &p2, json!({})), now + 1));
    }
    // A forged token on on_hls is refused.
    let forged = ks_param(NOW + 3).replace("k=", "k=f");
    assert_code(
        &at(hook("on_hls", "c1", &forged, json!({})), NOW + 15),
        Code::AuthencationFailed,
        "",
    );
    // Without renewals the reservation lapses after ttl_s.
    forwarded(&at(hook("on_publish", "c2", &p2, json!({})), NOW + 14 + 7));
}

#[test]
fn srs_answer_rule() {
    use callback_guard::callback::Format;
    let ok =
        |status: i64, body: &[u8]| registry::answer_accepted(Format::Srs, Some(status), Some(body));
    for body in [
        &b"0"[..],
        b"{\"code\":0}",
        b"{\"code\":0}\n",
        b" { \"code\" : 0 , \"data\":{}}",
    ] {
        assert!(ok(200, body), "{:?}", String::from_utf8_lossy(body));
        assert!(ok(201, body));
        assert!(!ok(204, body));
        assert!(!ok(403, body));
        assert!(!ok(500, body));
    }
    for body in [
        &b"0\n"[..],
        b" 0",
        b"\"0\"",
        b"{\"code\":1}",
        b"{}",
        b"{\"code\":\"0\"}",
        b"{\"code\":0.0}",
        b"",
        b"[0]",
    ] {
        assert!(!ok(200, body), "{:?}", String::from_utf8_lossy(body));
    }
    assert!(
        !registry::answer_accepted(Format::Srs, Some(200), None),
        "body not read"
    );
    assert!(
        !registry::answer_accepted(Format::Srs, None, Some(b"0")),
        "no answer"
    );
    // The other dialects go by the status alone.
    assert!(registry::answer_accepted(Format::KlsV2, Some(204), None));
}

/// SRS keeps the hook URL's query verbatim: a shared key there works.
#[test]
fn a_shared_key_in_the_hook_urls_query() {
    let c = config(
        r#"{"formats":["srs"],"callback_auth":{"shared_key":{"query_param":"secret",
            "keys":[{"id":"srs","secret":"s1"}]}}}"#,
    );
    let body = capture_body("on_publish_hookurl_with_query.http");
    let at = |path: &str| {
        let r = Request {
            method: "POST",
            path,
            content_type: Some("application/json"),
            headers: &[],
            body: body.as_bytes(),
            source: Some("127.0.0.1".parse().unwrap()),
        };
        decide(&c, &r, NOW, &MemoryStore::new())
    };
    let v = at("/api/v1/streams?secret=s1&x=%20");
    assert!(forwarded(&v).verified.contains(&"shared_key"));
    assert_code(
        &at("/api/v1/streams?secret=s2"),
        Code::AuthencationFailed,
        "",
    );
    assert_code(&at("/api/v1/streams"), Code::AuthencationFailed, "");
}

/// `callback-guard check` decides SRS bodies as the filter does: every
/// capture's body gets the status `decide()` gives it.
#[test]
fn callback_guard_check_decides_srs_bodies_as_the_filter_does() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let json = r#"{"formats":["srs"],"duplicate_streams":{"reject":false}}"#;
    let dir = std::env::temp_dir().join(format!("cg-srs-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg_path = dir.join("cfg.json");
    std::fs::write(&cfg_path, json).unwrap();
    let c = config(json);
    let mut names: Vec<_> = std::fs::read_dir(CAPTURES)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".http") && n != "on_hls_notify.http")
        .collect();
    names.sort();
    assert_eq!(names.len(), 28);
    let mut forwarded = 0;
    for name in names {
        let body = capture_body(&name);
        let want = match run(&c, &body) {
            Verdict::Forward(_) => 200,
            Verdict::Reject(r) => r.code.status(),
        };
        forwarded += usize::from(want == 200);
        let mut child = Command::new(env!("CARGO_BIN_EXE_callback-guard"))
            .args([
                "check",
                "--config",
                cfg_path.to_str().unwrap(),
                "--path",
                "/hook",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["status"], want, "{name}: {v}");
        if want == 200 {
            assert_eq!(v["headers"]["x-callback-guard-format"], "srs", "{name}");
        }
    }
    assert_eq!(forwarded, 15);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With both JSON dialects on, a KLS body is read once when its keys are
/// written literally; an escaped `action` key still makes it ambiguous.
#[test]
fn the_kls_first_look_does_not_skip_an_escaped_action_key() {
    let both = config(r#"{"formats":["kls_v2","srs"]}"#);
    let kls = include_str!("fixtures/kls_v2_start.json");
    assert_eq!(forwarded(&run(&both, kls)).format.as_str(), "kls_v2");
    let escaped = kls.replacen('{', r#"{"\u0061ction":"on_publish","#, 1);
    assert_code(
        &run(&both, &escaped),
        Code::InvalidParameterValue,
        "ambiguous",
    );
    let plain = kls.replacen('{', r#"{"action":"on_publish","#, 1);
    assert_code(
        &run(&both, &plain),
        Code::InvalidParameterValue,
        "ambiguous",
    );
    // `"action"` only as a value: still KLS.
    let value = kls.replacen('{', r#"{"Note":"action","#, 1);
    assert_eq!(forwarded(&run(&both, &value)).format.as_str(), "kls_v2");
}
