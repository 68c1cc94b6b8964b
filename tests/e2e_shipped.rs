//! End-to-end: envoy/envoy.yaml as shipped, on a native Envoy in front of the recording
//! receiver, or, with `CALLBACK_GUARD_E2E_EXTERNAL=LISTENER:ADMIN:RECEIVER`, on a stack
//! that already runs: `make docker-test` points these same tests at the compose stack
//! (envoy/docker-compose.yaml, with envoy/envoy.docker.yaml generated from envoy.yaml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// Asserts a rejection answered by callback-guard: status and the KLS error body.
fn assert_rejected(r: &Response, status: u16, code: &str) {
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, status, "body: {body}");
    let v = r.json();
    assert_eq!(v["Error"]["Type"], "Sender", "{body}");
    assert_eq!(v["Error"]["Code"], code, "{body}");
    assert!(v["RequestId"].is_string(), "{body}");
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn the_provided_envoy_yaml_runs_as_shipped() {
    let Some(stack) = Shipped::start() else {
        return;
    };
    assert_eq!(http1(stack.port, "GET", "/healthz", &[], b"").status, 200);
    let ok = v2("PubStart", &unique_stream("shipped"), None, &stack.push_key);
    assert_eq!(stack.post(JSON, ok.as_bytes()).status, 200);
    let r = stack.post(
        JSON,
        v2("PubStart", &unique_stream("shipped2"), None, "forged").as_bytes(),
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "AuthencationFailed");
    assert_eq!(http1(stack.port, "POST", "/other", &[], b"x").status, 404);
    let got = stack.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x-callback-guard-key-id"), Some("primary"));
    assert_eq!(got[0].body, ok.as_bytes());
}

#[test]
fn kls_v1_form_is_forwarded_with_what_was_verified() {
    let Some(stack) = Shipped::start() else {
        return;
    };
    let stream = unique_stream("form");
    let start = v1("user_publish", &stream, "vd-1", &stack.push_key);
    let r = stack.post(FORM, start.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let end = v1("user_publish_done", &stream, "vd-1", &stack.push_key);
    assert_eq!(stack.post(FORM, end.as_bytes()).status, 200);

    let got = stack.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/callback");
    assert_eq!(
        got[0].body,
        start.as_bytes(),
        "form forwarded byte for byte"
    );
    assert_eq!(got[0].header("x-callback-guard-format"), Some("kls_v1"));
    assert_eq!(got[0].header("x-callback-guard-event"), Some("start"));
    assert_eq!(got[0].header("x-callback-guard-key-id"), Some("primary"));
    assert_eq!(
        got[0].header("x-callback-guard-verified"),
        Some("sender_cidr,format,app,push_token,stream_registry")
    );
    assert_eq!(got[1].body, end.as_bytes());
    assert_eq!(got[1].header("x-callback-guard-event"), Some("end"));
}

#[test]
fn spoofed_guard_headers_never_reach_the_upstream() {
    let Some(stack) = Shipped::start() else {
        return;
    };
    let body = v2(
        "PubStart",
        &unique_stream("spoof"),
        Some("s-1"),
        &stack.push_key,
    );
    let r = http1(
        stack.port,
        "POST",
        "/callback",
        &[
            ("content-type", JSON),
            ("x-callback-guard-key-id", "spoofed"),
            ("x-callback-guard-verified", "everything"),
            ("X-Callback-Guard-Extra", "1"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let got = stack.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body, body.as_bytes());
    assert_eq!(got[0].header("x-callback-guard-format"), Some("kls_v2"));
    assert_eq!(got[0].header("x-callback-guard-key-id"), Some("primary"));
    assert_eq!(
        got[0].header("x-callback-guard-verified"),
        Some("sender_cidr,format,app,event_age,push_token,stream_registry")
    );
    assert_eq!(got[0].header("x-callback-guard-extra"), None);
    assert!(
        !got[0]
            .headers
            .iter()
            .any(|(_, v)| v == "spoofed" || v == "everything"),
        "{:?}",
        got[0].headers
    );
}

#[test]
fn the_edge_answers_what_is_not_a_callback() {
    let Some(stack) = Shipped::start() else {
        return;
    };
    let r = http1(
        stack.port,
        "GET",
        "/callback",
        &[("x-request-id", "shipped-405")],
        b"",
    );
    assert_rejected(&r, 405, "MethodNotAllowed");
    assert_eq!(r.json()["RequestId"], "shipped-405");

    let valid = v2("PubStart", &unique_stream("edge"), None, &stack.push_key);
    let r = stack.post("text/plain", valid.as_bytes());
    assert_rejected(&r, 415, "UnsupportedMediaType");

    let r = http1(
        stack.port,
        "POST",
        "/other",
        &[("content-type", JSON)],
        valid.as_bytes(),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.body, b"not found\n");

    let r = http1(stack.port, "GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok\n");

    assert!(stack.received().is_empty(), "{:?}", stack.received());
}

#[test]
fn unknown_app_and_a_second_live_push_are_refused() {
    let Some(stack) = Shipped::start() else {
        return;
    };
    let forwarded = stack.counter("callback_guard_requests_forwarded");
    let refused = stack.counter(&rejected_series("ExistStreamName"));

    let stream = unique_stream("dup");
    let vod = v2("PubStart", &stream, Some("a"), &stack.push_key)
        .replace("\"App\":\"live\"", "\"App\":\"vod\"");
    assert_rejected(
        &stack.post(JSON, vod.as_bytes()),
        404,
        "NonExistApplication",
    );

    let first = v2("PubStart", &stream, Some("a"), &stack.push_key);
    assert_eq!(stack.post(JSON, first.as_bytes()).status, 200);
    let second = v2("PubStart", &stream, Some("b"), &stack.push_key);
    assert_rejected(&stack.post(JSON, second.as_bytes()), 409, "ExistStreamName");
    let end = v2("PubEnd", &stream, Some("a"), &stack.push_key);
    assert_eq!(stack.post(JSON, end.as_bytes()).status, 200);
    assert_eq!(
        stack.post(JSON, second.as_bytes()).status,
        200,
        "free again once the first push ended"
    );

    let bodies: Vec<Vec<u8>> = stack.received().into_iter().map(|r| r.body).collect();
    assert_eq!(
        bodies,
        vec![first.into_bytes(), end.into_bytes(), second.into_bytes()]
    );
    assert_eq!(
        stack.counter("callback_guard_requests_forwarded") - forwarded,
        3
    );
    assert_eq!(
        stack.counter(&rejected_series("ExistStreamName")) - refused,
        1
    );
}
