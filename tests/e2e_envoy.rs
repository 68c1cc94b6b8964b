//! End-to-end: the built filter in a real Envoy, real HTTP, the recording receiver upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

fn start(config: serde_json::Value, rx: &Receiver) -> Option<Envoy> {
    Envoy::start(EnvoyOpts::new(config, rx.port))
}

/// Asserts a rejection: status, the KLS error body, and the request id echoed.
fn assert_rejected(r: &Response, status: u16, code: &str) {
    assert_eq!(
        r.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    assert_eq!(v["Error"]["Type"], "Sender");
    assert_eq!(v["Error"]["Code"], code);
    assert!(!v["Error"]["Message"].as_str().unwrap().is_empty());
    assert!(v["RequestId"].is_string());
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn forwards_both_formats_byte_identical_with_guard_headers_and_strips_spoofs() {
    let rx = Receiver::start();
    let Some(envoy) = start(base_config(), &rx) else {
        return;
    };
    let spoof = [
        ("content-type", "application/json"),
        ("x-callback-guard-key-id", "spoofed"),
        ("x-callback-guard-verified", "everything"),
        ("X-Callback-Guard-Extra", "1"),
    ];
    let v2_body = v2("PubStart", "fwd-json", Some("seq-1"), KS_KEY);
    let r = http1(envoy.port, "POST", "/callback", &spoof, v2_body.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v1_body = v1("user_publish", "fwd-form", "vd-1", KS_KEY);
    let r = envoy.post("application/x-www-form-urlencoded", v1_body.as_bytes());
    assert_eq!(r.status, 200);

    let got = rx.received();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].body,
        v2_body.as_bytes(),
        "JSON body forwarded byte for byte"
    );
    assert_eq!(got[0].header("x-callback-guard-format"), Some("kls_v2"));
    assert_eq!(got[0].header("x-callback-guard-event"), Some("start"));
    assert_eq!(
        got[0].header("x-callback-guard-key-id"),
        Some("main"),
        "spoofed key id replaced"
    );
    assert_eq!(
        got[0].header("x-callback-guard-verified"),
        Some("format,app,push_token,stream_registry")
    );
    assert_eq!(
        got[0].header("x-callback-guard-extra"),
        None,
        "unknown guard header stripped"
    );
    assert_eq!(
        got[1].body,
        v1_body.as_bytes(),
        "form body forwarded byte for byte"
    );
    assert_eq!(got[1].header("x-callback-guard-format"), Some("kls_v1"));
    assert_eq!(
        got.iter()
            .filter(|r| r
                .headers
                .iter()
                .any(|(k, v)| k.starts_with("x-callback-guard") && v == "spoofed"))
            .count(),
        0
    );
}

#[test]
fn every_reject_code_is_answered_at_the_edge() {
    let rx = Receiver::start();
    let mut cfg = base_config();
    cfg["max_body_bytes"] = json!(2048);
    let Some(envoy) = start(cfg, &rx) else { return };
    let json_ct = [
        ("content-type", "application/json"),
        ("x-request-id", "req-42"),
    ];

    let r = http1(
        envoy.port,
        "GET",
        "/callback",
        &[("x-request-id", "req-42")],
        b"",
    );
    assert_rejected(&r, 405, "MethodNotAllowed");
    assert_eq!(r.json()["RequestId"], "req-42");

    let r = http1(
        envoy.port,
        "POST",
        "/callback",
        &[("content-type", "text/plain")],
        v2("PubStart", "s", None, KS_KEY).as_bytes(),
    );
    assert_rejected(&r, 415, "UnsupportedMediaType");

    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(4000));
    assert_rejected(
        &http1(envoy.port, "POST", "/callback", &json_ct, big.as_bytes()),
        413,
        "PayloadTooLarge",
    );

    let missing = v2("PubStart", "s", None, KS_KEY).replace("\"App\":\"live\",", "");
    assert_rejected(
        &http1(
            envoy.port,
            "POST",
            "/callback",
            &json_ct,
            missing.as_bytes(),
        ),
        400,
        "MissingParameter",
    );

    assert_rejected(
        &http1(envoy.port, "POST", "/callback", &json_ct, b"{\"App\":"),
        400,
        "InvalidParameterValue",
    );

    let forged = v2("PubStart", "s", None, "someOtherKey");
    assert_rejected(
        &http1(envoy.port, "POST", "/callback", &json_ct, forged.as_bytes()),
        403,
        "AuthencationFailed",
    );

    let unknown_app =
        v2("PubStart", "s", None, KS_KEY).replace("\"App\":\"live\"", "\"App\":\"vod\"");
    assert_rejected(
        &http1(
            envoy.port,
            "POST",
            "/callback",
            &json_ct,
            unknown_app.as_bytes(),
        ),
        404,
        "NonExistApplication",
    );

    let first = v2("PubStart", "dup", Some("a"), KS_KEY);
    assert_eq!(
        http1(envoy.port, "POST", "/callback", &json_ct, first.as_bytes()).status,
        200
    );
    let second = v2("PubStart", "dup", Some("b"), KS_KEY);
    assert_rejected(
        &http1(envoy.port, "POST", "/callback", &json_ct, second.as_bytes()),
        409,
        "ExistStreamName",
    );

    let got = rx.received();
    assert_eq!(
        got.len(),
        1,
        "only the one valid start reached the upstream: {got:?}"
    );
    assert_eq!(got[0].body, first.as_bytes());
}

#[test]
fn chunked_http1_and_h2c_with_frames_and_trailers() {
    let rx = Receiver::start();
    let Some(envoy) = start(base_config(), &rx) else {
        return;
    };
    let ct = [("content-type", "application/json")];

    let body = v2("PubStart", "chunked", None, KS_KEY);
    let (a, b) = body.as_bytes().split_at(body.len() / 2);
    let r = http1_chunked(
        envoy.port,
        "/callback",
        &ct,
        &[a, b],
        Duration::from_millis(50),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let body2 = v2("PubStart", "h2-frames", None, KS_KEY);
    let p = body2.as_bytes();
    let r = http2(
        envoy.port,
        "/callback",
        &ct,
        &[&p[..10], &p[10..40], &p[40..]],
        None,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let body3 = v2("PubStart", "h2-trailers", None, KS_KEY);
    let p3 = body3.as_bytes();
    let r = http2(
        envoy.port,
        "/callback",
        &ct,
        &[&p3[..20], &p3[20..]],
        Some(&[("x-trailer", "1")]),
    );
    assert_eq!(
        r.status,
        200,
        "trailers end the body: {}",
        String::from_utf8_lossy(&r.body)
    );

    let forged = v2("PubStart", "h2-forged", None, "wrongKey");
    let r = http2(
        envoy.port,
        "/callback",
        &ct,
        &[forged.as_bytes()],
        Some(&[("x-trailer", "1")]),
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "AuthencationFailed");

    let got = rx.received();
    let bodies: Vec<&[u8]> = got.iter().map(|r| r.body.as_slice()).collect();
    assert_eq!(
        bodies,
        vec![body.as_bytes(), body2.as_bytes(), body3.as_bytes()]
    );
}

#[test]
fn http_1_0_senders_are_served() {
    // The seed's old-version end sample arrives as `POST /callback HTTP/1.0`.
    let rx = Receiver::start();
    let Some(envoy) = start(base_config(), &rx) else {
        return;
    };
    let body = v1("user_publish", "http10", "vd-10", KS_KEY);
    let req = format!(
        "POST /callback HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = http1_raw(envoy.port, req.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let bad = v1("user_publish", "http10b", "vd-11", "wrongKey");
    let req = format!(
        "POST /callback HTTP/1.0\r\nHost: 127.0.0.1\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{bad}",
        bad.len()
    );
    let r = http1_raw(envoy.port, req.as_bytes());
    assert_eq!(r.status, 403);
    assert_eq!(rx.received().len(), 1);
}

/// The spec's callbacks exactly as KLS sends them: `POST /callback HTTP/1.0`,
/// `Host`, `Connection: close`, `Content-Length` and the body, with no
/// `Content-Type` (written to a raw socket so no client adds one). They are
/// forwarded with the body unchanged and the detected dialect named; an
/// explicit `text/plain` label is still refused.
#[test]
fn unlabelled_kls_samples_pass_byte_for_byte() {
    let rx = Receiver::start();
    let Some(envoy) = start(json!({}), &rx) else {
        return;
    };
    let raw = |body: &[u8], extra: &str| {
        let mut req = format!(
            "POST /callback HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
            envoy.port,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        http1_raw(envoy.port, &req)
    };
    let samples: [(&[u8], &str, &str); 4] = [
        (b"app=live&name=asdf&swfurl=nil&flashver=nil&tcurl=rtmp://test.uplive.ks-cdn.com/live&call=user_publish&vdoid=123456", "kls_v1", "start"),
        (b"app=live&name=asdf&swfurl=nil&flashver=nil&tcurl=rtmp://test.uplive.ks-cdn.com/live&call=user_publish_done&close_mode=nil&vdoid=123456", "kls_v1", "end"),
        (include_bytes!("fixtures/kls_v2_start.json"), "kls_v2", "start"),
        (include_bytes!("fixtures/kls_v2_end.json"), "kls_v2", "end"),
    ];
    for (body, format, event) in samples {
        let r = raw(body, "");
        assert_eq!(
            r.status,
            200,
            "{format} {event}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let got = rx.received();
        let last = got.last().expect("the callback reached the upstream");
        assert_eq!(last.body, body, "{format} {event}: body unchanged");
        assert_eq!(last.header("content-type"), None, "no label was added");
        assert_eq!(last.header("x-callback-guard-format"), Some(format));
        assert_eq!(last.header("x-callback-guard-event"), Some(event));
    }
    assert_eq!(rx.received().len(), 4);
    let r = raw(samples[0].0, "Content-Type: text/plain\r\n");
    assert_rejected(&r, 415, "UnsupportedMediaType");
    assert_eq!(
        rx.received().len(),
        4,
        "the refused one never reached the upstream"
    );
}

#[test]
fn body_limit_with_and_without_content_length() {
    let rx = Receiver::start();
    let mut cfg = base_config();
    cfg["max_body_bytes"] = json!(1024);
    let Some(envoy) = start(cfg, &rx) else { return };
    // A declared length over the limit is refused from the headers alone:
    // no byte of the body is ever sent here.
    let r = http1_raw(
        envoy.port,
        b"POST /callback HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 10000000\r\n\r\n",
    );
    assert_eq!((r.status, r.code()), (413, "PayloadTooLarge".to_string()));
    let big = vec![b'x'; 5000];
    let r = http1(
        envoy.port,
        "POST",
        "/callback",
        &[("content-type", "application/json")],
        &big,
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.code(), "PayloadTooLarge");
    let pieces: Vec<&[u8]> = big.chunks(700).collect();
    let r = http1_chunked(
        envoy.port,
        "/callback",
        &[("content-type", "application/json")],
        &pieces,
        Duration::from_millis(10),
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.code(), "PayloadTooLarge");
    let r = http2(
        envoy.port,
        "/callback",
        &[("content-type", "application/json")],
        &pieces,
        None,
    );
    assert_eq!(r.status, 413);
    assert!(rx.received().is_empty());
}

#[test]
fn push_key_from_the_environment() {
    let rx = Receiver::start();
    let cfg = json!({"push_auth": {"scheme": "ks_md5", "keys": [{"id": "env-key", "secret_env": "CG_E2E_PUSH_KEY"}]}});
    let mut opts = EnvoyOpts::new(cfg, rx.port);
    opts.env
        .push(("CG_E2E_PUSH_KEY".into(), "fromEnv42".into()));
    opts.host_env_keys.push("CG_E2E_PUSH_KEY".into());
    let Some(envoy) = Envoy::start(opts) else {
        return;
    };
    let r = envoy.post(
        "application/json",
        v2("PubStart", "env", None, "fromEnv42").as_bytes(),
    );
    assert_eq!(r.status, 200);
    let r = envoy.post(
        "application/json",
        v2("PubStart", "env2", None, KS_KEY).as_bytes(),
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        rx.received()[0].header("x-callback-guard-key-id"),
        Some("env-key")
    );
}

#[test]
fn counters_move() {
    let rx = Receiver::start();
    let Some(envoy) = start(base_config(), &rx) else {
        return;
    };
    assert_eq!(envoy.counter("callback_guard_requests_received"), 0);
    envoy.post(
        "application/json",
        v2("PubStart", "m1", None, KS_KEY).as_bytes(),
    );
    envoy.post(
        "application/json",
        v2("PubStart", "m2", None, "bad").as_bytes(),
    );
    envoy.post("application/json", b"[]");
    assert_eq!(envoy.counter("callback_guard_requests_received"), 3);
    assert_eq!(envoy.counter("callback_guard_requests_forwarded"), 1);
    assert_eq!(
        envoy.counter("callback_guard_requests_rejected_AuthencationFailed"),
        1
    );
    assert_eq!(
        envoy.counter("callback_guard_requests_rejected_InvalidParameterValue"),
        1
    );
    let log = envoy.log();
    assert!(
        log.contains(
            r#"callback-guard rejected: code=AuthencationFailed status=403 app="live" stream="m2""#
        ),
        "{log}"
    );
    assert!(log.contains(&format!(
        "callback-guard {} starting",
        env!("CARGO_PKG_VERSION")
    )));
    // Forwards are logged at debug only: nothing at info.
    assert!(!log.contains("callback-guard forwarded:"), "{log}");
    // A stream name that imitates the log's fields stays inside its quotes.
    let r = envoy.post(
        "application/x-www-form-urlencoded",
        v1("user_publish", "m3%22%20reason%3D%22ok", "9", "bad").as_bytes(),
    );
    assert_eq!(r.status, 403);
    let log = envoy.log();
    assert!(
        log.contains(r#"app="live" stream="m3\" reason=\"ok" reason="#),
        "{log}"
    );
}

#[test]
fn bad_configurations_stop_envoy_with_the_filter_message() {
    let rx = Receiver::start();
    let cases = [
        (json!({"max_body_byte": 1}), "max_body_byte"),
        (
            json!({"push_auth": {"scheme": "md5", "keys": []}}),
            "push_auth.scheme",
        ),
        (
            json!({"push_auth": {"scheme": "ks_md5", "keys": [{"id": "k", "secret": "not-alnum!"}]}}),
            "push_auth.keys[0].secret",
        ),
        (
            json!({"push_auth": {"scheme": "ks_md5", "keys": [{"id": "k", "secret_env": "CG_NOT_SET"}]}}),
            "CG_NOT_SET",
        ),
        (
            json!({"push_auth": {"scheme": "hmac_sha256", "keys": [{"id": "k", "secret": "short"}]}}),
            "16 bytes",
        ),
        (
            json!({"callback_auth": {"allow_cidrs": ["10.0.0.0/33"]}}),
            "callback_auth.allow_cidrs[0]",
        ),
        (json!({"apps": []}), "apps"),
    ];
    for (cfg, needle) in cases {
        let Some((status, log)) = Envoy::expect_failure(EnvoyOpts::new(cfg.clone(), rx.port))
        else {
            return;
        };
        assert!(!status.success(), "{cfg}: Envoy exited 0");
        let line = log
            .lines()
            .find(|l| l.contains("callback-guard: invalid configuration"))
            .unwrap_or_else(|| panic!("{cfg}: no filter message in log:\n{log}"));
        assert!(line.contains(needle), "{cfg}: {line}");
    }
}
