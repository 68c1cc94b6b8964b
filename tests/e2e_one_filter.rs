//! callback-guard as the one HTTP filter before the router: it holds the
//! request headers itself (`allow_on_headers_stop_iteration`), so what reaches
//! the upstream is checked at the upstream's socket; a config without the flag
//! fails closed and says why; body limits meet Envoy's own buffer limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const JSON: &str = "application/json";

/// The upstream socket sees no byte of a refused callback, whatever the
/// transport: HTTP/1.1 with a length, chunked, h2c with trailers, and a slow
/// chunked body; then a valid callback on each transport does reach it.
#[test]
fn a_refused_callback_never_reaches_the_upstream_socket() {
    let spy = SocketSpy::start();
    let Some(envoy) = Envoy::start(EnvoyOpts::new(base_config(), spy.port)) else {
        return;
    };
    let forged = |stream: &str| v2("PubStart", stream, Some("s1"), "someOtherKey");
    let ct = [("content-type", JSON)];

    let r = http1(
        envoy.port,
        "POST",
        "/callback",
        &ct,
        forged("sock-cl").as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let b = forged("sock-chunked");
    let (a, z) = b.as_bytes().split_at(30);
    let r = http1_chunked(envoy.port, "/callback", &ct, &[a, z], Duration::ZERO);
    assert_eq!(r.status, 403);
    let b = forged("sock-h2");
    let (a, z) = b.as_bytes().split_at(25);
    let r = http2(
        envoy.port,
        "/callback",
        &ct,
        &[a, z],
        Some(&[("x-trailer", "1")]),
    );
    assert_eq!(r.status, 403);
    let b = forged("sock-slow");
    let pieces: Vec<&[u8]> = b.as_bytes().chunks(40).collect();
    let r = http1_chunked(
        envoy.port,
        "/callback",
        &ct,
        &pieces,
        Duration::from_millis(150),
    );
    assert_eq!(r.status, 403);
    // Not even a connection was opened to the upstream.
    assert_eq!(
        spy.seen(),
        (0, Vec::new()),
        "the upstream saw a refused callback"
    );

    let ok = |stream: &str| v2("PubStart", stream, Some(&format!("s-{stream}")), KS_KEY);
    let r = http1(
        envoy.port,
        "POST",
        "/callback",
        &ct,
        ok("sock-ok-cl").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let b = ok("sock-ok-chunked");
    let (a, z) = b.as_bytes().split_at(30);
    let r = http1_chunked(
        envoy.port,
        "/callback",
        &ct,
        &[a, z],
        Duration::from_millis(150),
    );
    assert_eq!(r.status, 200);
    let b = ok("sock-ok-h2");
    let (a, z) = b.as_bytes().split_at(25);
    let r = http2(
        envoy.port,
        "/callback",
        &ct,
        &[a, z],
        Some(&[("x-trailer", "1")]),
    );
    assert_eq!(r.status, 200);
    let seen = String::from_utf8_lossy(&spy.seen().1).into_owned();
    for stream in ["sock-ok-cl", "sock-ok-chunked", "sock-ok-h2"] {
        assert!(seen.contains(stream), "{stream} reached the upstream");
    }
    for stream in ["sock-cl\"", "sock-chunked\"", "sock-h2\"", "sock-slow\""] {
        assert!(!seen.contains(stream), "{stream} must not have reached it");
    }
    // The guard headers were written by the filter itself, before the router.
    assert_eq!(
        seen.matches("x-callback-guard-format: kls_v2").count(),
        3,
        "{seen}"
    );
}

/// Without `allow_on_headers_stop_iteration` Envoy withholds the body from a
/// filter that holds the headers. A callback must then neither hang until a
/// timeout nor pass unchecked: it is answered within 2 s with InternalError,
/// the log names the flag, later callbacks are refused too, and a request
/// without a body is still decided.
#[test]
fn a_config_without_the_flag_fails_closed_and_says_why() {
    if !only_for(Build::Wasm, "allow_on_headers_stop_iteration flag") {
        return;
    }
    let rx = Receiver::start();
    let mut opts = EnvoyOpts::new(base_config(), rx.port);
    opts.without_stop_iteration_flag = true;
    let Some(envoy) = Envoy::start(opts) else {
        return;
    };
    let body = v2("PubStart", "noflag", Some("s1"), KS_KEY);
    let t0 = Instant::now();
    let r = http1(
        envoy.port,
        "POST",
        "/callback",
        &[("content-type", JSON)],
        body.as_bytes(),
    );
    let took = t0.elapsed();
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "InternalError");
    assert_eq!(r.json()["Error"]["Type"], "Receiver");
    assert!(r.json()["Error"]["Message"]
        .as_str()
        .unwrap()
        .contains("allow_on_headers_stop_iteration"));
    assert!(took < Duration::from_secs(2), "answered after {took:?}");

    // Later ones are refused too, at their headers once their worker knows.
    // (Not timed: Envoy then waits up to its delayed_close_timeout, 1 s, for
    // the client to close a connection whose body it did not read.)
    let r = http1(
        envoy.port,
        "POST",
        "/callback",
        &[("content-type", JSON)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 500);
    let r = http2(
        envoy.port,
        "/callback",
        &[("content-type", JSON)],
        &[body.as_bytes()],
        None,
    );
    assert_eq!(r.status, 500);
    // A request with no body needs no body callback: it is decided as usual.
    let r = http1(envoy.port, "GET", "/callback", &[], b"");
    assert_eq!(r.status, 405);

    assert!(rx.received().is_empty(), "nothing reached the upstream");
    let log = envoy.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("allow_on_headers_stop_iteration") && l.contains("critical"))
        .collect();
    assert!(!lines.is_empty(), "no log line names the flag:\n{log}");
    assert!(lines.len() <= 2, "one line per worker at most: {lines:?}");
    assert_eq!(
        envoy.counter("callback_guard_requests_rejected_InternalError"),
        3
    );
}

/// A sender that holds its body back on a correct config is not mistaken for
/// a missing flag: it waits for its body, then is decided as usual.
#[test]
fn a_slow_first_body_byte_is_not_a_missing_flag() {
    let rx = Receiver::start();
    let Some(envoy) = Envoy::start(EnvoyOpts::new(base_config(), rx.port)) else {
        return;
    };
    let body = v2("PubStart", "late-body", Some("s1"), KS_KEY);
    let mut s = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    write!(
        s,
        "POST /callback HTTP/1.1\r\nhost: x\r\ncontent-type: {JSON}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    s.write_all(body.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let head = String::from_utf8_lossy(&out);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(rx.received().len(), 1);
    assert!(!envoy.log().contains("allow_on_headers_stop_iteration"));
}

/// The filter's `max_body_bytes` and Envoy's buffer limit: a declared length
/// over the limit is refused before any body byte is read; a chunked or h2
/// body is refused with 413 as soon as it crosses the limit; a body over
/// Envoy's `per_connection_buffer_limit_bytes` but within `max_body_bytes`
/// gets Envoy's own 413, not the filter's JSON, and never reaches the upstream.
#[test]
fn body_limits_and_envoys_buffer_limit() {
    let spy = SocketSpy::start();
    let mut cfg = base_config();
    cfg["max_body_bytes"] = json!(32768);
    let mut opts = EnvoyOpts::new(cfg, spy.port);
    opts.buffer_limit_bytes = Some(16384);
    let Some(envoy) = Envoy::start(opts) else {
        return;
    };
    let ct = [("content-type", JSON)];
    let pad = |n: usize| {
        let b = v2("PubStart", "limits", Some("s1"), KS_KEY);
        let filler = format!(
            ",\"Pad\":\"{}\"}}",
            "x".repeat(n.saturating_sub(b.len() + 10))
        );
        let mut b = b[..b.len() - 1].to_string();
        b.push_str(&filler);
        b
    };

    // Declared too large: refused with only the headers sent.
    let mut s = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    write!(
        s,
        "POST /callback HTTP/1.1\r\nhost: x\r\ncontent-type: {JSON}\r\ncontent-length: 40000\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("PayloadTooLarge"), "{head}");

    // Chunked past the limit: 413 once it crosses, before the rest is sent.
    let big = pad(40000);
    let pieces: Vec<&[u8]> = big.as_bytes().chunks(8000).collect();
    let mut s = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    write!(s, "POST /callback HTTP/1.1\r\nhost: x\r\ncontent-type: {JSON}\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
    for p in &pieces[..2] {
        write!(s, "{:x}\r\n", p.len()).unwrap();
        s.write_all(p).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    // 16000 bytes sent: under both limits, so no answer yet.
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        s.read(&mut buf).is_err(),
        "answered before the body crossed any limit"
    );

    // Envoy's own limit (16 KiB here) is below max_body_bytes (32 KiB):
    // crossing it gets Envoy's 413, with its plain-text body.
    let p = pieces[2];
    write!(s, "{:x}\r\n", p.len()).unwrap();
    s.write_all(p).unwrap();
    s.write_all(b"\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        !head.contains("PayloadTooLarge"),
        "Envoy's answer, not the filter's: {head}"
    );

    // h2c frames growing past Envoy's limit: the same 413.
    let frames: Vec<&[u8]> = big.as_bytes().chunks(4000).collect();
    let r = http2(envoy.port, "/callback", &ct, &frames, None);
    assert_eq!(r.status, 413);

    // Within both limits it passes.
    let fits = pad(12000);
    let r = http1(envoy.port, "POST", "/callback", &ct, fits.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = spy.seen();
    assert_eq!(
        seen.0, 1,
        "only the callback that fits reached the upstream"
    );
    assert!(String::from_utf8_lossy(&seen.1).contains("\"Pad\""));
}

/// With `max_body_bytes` below Envoy's buffer limit, the filter's own 413
/// (its JSON, the spec code) answers a chunked body as soon as it crosses.
#[test]
fn a_growing_body_gets_the_filters_413_as_it_crosses_max_body_bytes() {
    let spy = SocketSpy::start();
    let mut cfg = base_config();
    cfg["max_body_bytes"] = json!(4096);
    let Some(envoy) = Envoy::start(EnvoyOpts::new(cfg, spy.port)) else {
        return;
    };
    let mut s = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    write!(s, "POST /callback HTTP/1.1\r\nhost: x\r\ncontent-type: {JSON}\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
    let chunk = [b'x'; 3000];
    let mut buf = [0u8; 2048];
    write!(s, "{:x}\r\n", chunk.len()).unwrap();
    s.write_all(&chunk).unwrap();
    s.write_all(b"\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(s.read(&mut buf).is_err(), "3000 bytes are within the limit");
    write!(s, "{:x}\r\n", chunk.len()).unwrap();
    s.write_all(&chunk).unwrap();
    s.write_all(b"\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"Code\":\"PayloadTooLarge\""), "{text}");
    assert_eq!(spy.seen(), (0, Vec::new()));
}

/// With `filter_state_mark`, callback-guard sets filter state that only it
/// can set on what it lets through; a stock RBAC filter after it then refuses
/// any request callback-guard did not check (here: a route where the filter
/// is disabled, as when Envoy installs no filter for a module it could not
/// fetch; docs/deployment.md). A client cannot forge filter state.
#[test]
fn the_filter_state_mark_lets_a_stock_rbac_filter_refuse_unchecked_requests() {
    let rx = Receiver::start();
    let mut cfg = base_config();
    cfg["filter_state_mark"] = json!(true);
    let mut opts = EnvoyOpts::new(cfg, rx.port);
    opts.filters_after = vec![json!({
        "name": "require-callback-guard-mark",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {"checked-by-callback-guard": {
                "permissions": [{"any": true}],
                "principals": [{"filter_state": {"key": "wasm.x-callback-guard-checked", "string_match": {"exact": "1"}}}]
            }}}
        }
    })];
    opts.routes_before = vec![json!({
        "match": {"prefix": "/unguarded"},
        "route": {"cluster": "upstream"},
        "typed_per_filter_config": {support::guard_filter_name(): {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            "disabled": true
        }}
    })];
    let Some(envoy) = Envoy::start(opts) else {
        return;
    };
    let ct = [("content-type", JSON)];
    let ok = v2("PubStart", "mark", Some("s1"), KS_KEY);
    let r = http1(envoy.port, "POST", "/callback", &ct, ok.as_bytes());
    assert_eq!(
        r.status,
        200,
        "checked, marked, let through: {}",
        String::from_utf8_lossy(&r.body)
    );
    let forged = v2("PubStart", "mark2", Some("s1"), "forged");
    assert_eq!(
        http1(envoy.port, "POST", "/callback", &ct, forged.as_bytes()).status,
        403
    );
    // Without callback-guard in the chain, RBAC refuses even a valid callback,
    // and a client-sent header cannot stand in for the mark.
    let ok2 = v2("PubStart", "mark3", Some("s1"), KS_KEY);
    let r = http1(
        envoy.port,
        "POST",
        "/unguarded/callback",
        &[("content-type", JSON), ("x-callback-guard-checked", "1")],
        ok2.as_bytes(),
    );
    assert_eq!(r.status, 403);
    assert!(
        String::from_utf8_lossy(&r.body).contains("RBAC"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        rx.received().len(),
        1,
        "only the checked callback reached the upstream"
    );
}
