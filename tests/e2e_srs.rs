//! End-to-end, SRS `http_hooks` (issue 21): every capture of a real SRS
//! 6.0.157 (tests/fixtures/srs, copied byte for byte from the spec) sent to a
//! real Envoy over a raw socket; SRS's answer rule with an upstream that
//! answers each form; envoy/srs.yaml's no-backend route; on_hls renewals.
//! Issue 22: on_play and on_stop, as captured and signed, with `play_auth`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const CAPTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/srs");

fn capture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{CAPTURES}/{name}")).unwrap()
}

/// The capture's request line target and body.
fn target_and_body(raw: &[u8]) -> (String, Vec<u8>) {
    let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
    let line = String::from_utf8(raw[..line_end].to_vec()).unwrap();
    let target = line.split(' ').nth(1).unwrap().to_string();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (target, raw[at + 4..].to_vec())
}

/// The answer this issue defines for each capture, with SRS on, no push
/// tokens, no `play_auth` and no registry: `None` = forwarded (the
/// upstream's `0`), else the status and code of the refusal.
fn expected_open(name: &str) -> Option<(u16, &'static str)> {
    let n = name.trim_end_matches(".http");
    if n == "on_hls_notify" {
        return Some((405, "MethodNotAllowed"));
    }
    // Raw non-ASCII: the query stayed in `stream` (no token can be read).
    if n.contains("q2_") || n.contains("q3b_") {
        return Some((400, "InvalidParameterValue"));
    }
    // `?key=s2?token=tc1?token=tc1`: not a doubling, ambiguous.
    if n.contains("q6_") {
        return Some((400, "InvalidParameterValue"));
    }
    let push = n.contains("on_publish") || n.contains("on_unpublish") || n == "on_hls";
    if push {
        None
    } else {
        Some((400, "InvalidParameterValue"))
    }
}

fn capture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(CAPTURES)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".http"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 29, "every capture of the spec: {names:?}");
    names
}

/// The generated config of the build under test, SRS on, with envoy/srs.yaml's
/// no-backend route (`/gate`) in front of the catch-all that forwards.
fn opts(plugin: Value, rx: &Receiver) -> EnvoyOpts {
    let mut o = EnvoyOpts::new(plugin, rx.port);
    o.routes_before.push(json!({
        "match": {"prefix": "/gate"},
        "direct_response": {"status": 200, "body": {"inline_string": "0"}}
    }));
    o
}

fn srs_only(registry: bool) -> Value {
    json!({"formats": ["srs"], "duplicate_streams": {"reject": registry}})
}

#[test]
fn every_capture_gets_its_answer_and_forwarded_ones_reach_the_upstream_unchanged() {
    let rx = Receiver::start_with(&["--answer-body", "0"]);
    let Some(envoy) = Envoy::start(opts(srs_only(false), &rx)) else {
        return;
    };
    let mut forwarded = 0;
    for name in capture_names() {
        rx.clear();
        let raw = capture(&name);
        let r = srs_raw(envoy.port, &raw);
        let got = rx.received();
        match expected_open(&name) {
            None => {
                assert_eq!(
                    r.status,
                    200,
                    "{name}: {}",
                    String::from_utf8_lossy(&r.body)
                );
                assert_eq!(r.body, b"0", "{name}: the upstream's answer, unchanged");
                assert_eq!(got.len(), 1, "{name}");
                let (target, body) = target_and_body(&raw);
                assert_eq!(got[0].body, body, "{name}: the body byte for byte");
                assert_eq!(got[0].path, target, "{name}: the hook URL, query verbatim");
                assert_eq!(got[0].method, "POST");
                for (h, v) in [
                    ("content-type", "application/json"),
                    ("user-agent", "SRS/6.0.157(Hang)"),
                    ("content-length", body.len().to_string().as_str()),
                ] {
                    assert_eq!(got[0].header(h), Some(v), "{name}: {h}");
                }
                assert_eq!(got[0].header("x-callback-guard-format"), Some("srs"));
                let event = if name.contains("on_unpublish") {
                    "end"
                } else if name == "on_hls.http" {
                    "update"
                } else {
                    "start"
                };
                assert_eq!(
                    got[0].header("x-callback-guard-event"),
                    Some(event),
                    "{name}"
                );
                forwarded += 1;
            }
            Some((status, code)) => {
                assert_eq!(
                    r.status_and_code(),
                    (status, code.to_string()),
                    "{name}: {}",
                    String::from_utf8_lossy(&r.body)
                );
                assert!(got.is_empty(), "{name} must not reach the upstream");
                if status == 400 && !name.contains("param_q") {
                    let msg = r.json()["Error"]["Message"].as_str().unwrap().to_string();
                    let why = if name == "on_play.http" || name == "on_stop.http" {
                        "play callbacks are refused until `play_auth` is configured"
                    } else {
                        "push or play hook"
                    };
                    assert!(msg.contains(why), "{name}: {msg}");
                }
            }
        }
    }
    assert_eq!(forwarded, 15, "on_publish x12, on_unpublish x2, on_hls");
}

/// The shipped envoy/srs.yaml as is (push tokens, senders, registry): the
/// captures' tokens are not ks_md5 tokens, so every push hook is refused, and
/// nothing reaches the upstream; then the no-backend route answers a valid
/// on_publish with exactly `0`, and a second session gets ExistStreamName.
#[test]
fn shipped_srs_yaml_refuses_the_captures_and_its_gate_answers_exactly_0() {
    if !only_for(Build::Wasm, "envoy/srs.yaml (a wasm config)") {
        return;
    }
    let rx = Receiver::start_with(&["--answer-body", "0"]);
    let yaml = std::fs::read_to_string(repo().join("envoy/srs.yaml"))
        .unwrap()
        .replace("port_value: 10000", "port_value: {{LISTENER_PORT}}")
        .replace("port_value: 9901", "port_value: {{ADMIN_PORT}}")
        .replace("port_value: 8080", "port_value: {{UPSTREAM_PORT}}")
        .replace(
            "target/wasm32-wasip1/release/callback_guard.wasm",
            "{{WASM}}",
        );
    let mut o = EnvoyOpts::new(json!({}), rx.port);
    o.raw_yaml = Some(yaml);
    o.env
        .push(("CALLBACK_GUARD_PUSH_KEY".into(), KS_KEY.into()));
    o.env
        .push(("CALLBACK_GUARD_PLAY_KEY".into(), PLAY_KEY.into()));
    let Some(envoy) = Envoy::start(o) else {
        return;
    };
    for name in capture_names() {
        let raw = capture(&name);
        // Sent to the shipped paths: the forwarding route and the gate.
        for prefix in ["/api/v1", "/gate"] {
            let (target, _) = target_and_body(&raw);
            let text = String::from_utf8_lossy(&raw).into_owned();
            let moved = text.replacen(&target, &format!("{prefix}{target}"), 1);
            let r = srs_raw(envoy.port, moved.as_bytes());
            let want = match expected_open(&name) {
                None => (403, "AuthencationFailed".to_string()),
                // play_auth is on: the captures' `token=play1` is no play token.
                Some(_) if name == "on_play.http" || name == "on_stop.http" => {
                    (403, "AuthencationFailed".to_string())
                }
                Some((405, c)) => (405, c.to_string()),
                Some((s, c)) if name.contains("param_q") => {
                    // q2/q3b: a missing token (push_auth is on); q6: ambiguous.
                    if name.contains("q6_") {
                        (s, c.to_string())
                    } else {
                        (403, "AuthencationFailed".to_string())
                    }
                }
                Some((s, c)) => (s, c.to_string()),
            };
            assert_eq!(r.status_and_code(), want, "{prefix} {name}");
        }
    }
    assert!(rx.received().is_empty(), "no capture reached the upstream");

    let stream = unique_stream("gate");
    let (t, k) = ks_token(KS_KEY, &stream, now_s() + 600);
    let body = |client: &str| {
        json!({"server_id":"vid-a","service_id":"s1","action":"on_publish","client_id":client,
            "ip":"203.0.113.7","vhost":"__defaultVhost__","app":"live",
            "tcUrl":"rtmp://127.0.0.1:1935/live","stream":stream,
            "param":format!("?t={t}&k={k}"),"stream_url":format!("/live/{stream}"),"stream_id":"vid-x"})
        .to_string()
    };
    let r = srs_post(envoy.port, "/gate", &body("c1"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"0", "exactly 0, no newline");
    // The gate's `0` passed SRS's answer rule: the reservation holds.
    let r = srs_post(envoy.port, "/gate", &body("c2"));
    assert_eq!(r.status_and_code(), (409, "ExistStreamName".into()));
    // Viewers of the live stream, with a play URL minted with the play key:
    // each gets exactly `0`, and their stops too; the push key plays nothing.
    let (pt, pk) = ks_token(PLAY_KEY, &stream, now_s() + 600);
    for (i, viewer) in ["v1", "v2"].iter().enumerate() {
        let play = play_body("on_play", viewer, &stream, &format!("?t={pt}&k={pk}"));
        let r = srs_post(envoy.port, "/gate", &play);
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"0"[..]),
            "viewer {i}"
        );
    }
    let stop = play_body("on_stop", "v1", &stream, &format!("?t={pt}&k={pk}"));
    let r = srs_post(envoy.port, "/gate", &stop);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"0"[..]));
    let with_push_key = play_body("on_play", "v3", &stream, &format!("?t={t}&k={k}"));
    let r = srs_post(envoy.port, "/gate", &with_push_key);
    assert_eq!(r.status_and_code(), (403, "AuthencationFailed".into()));
    let msg = r.json()["Error"]["Message"].as_str().unwrap().to_string();
    assert!(msg.contains("it is a push token"), "{msg}");
    // The viewers changed nothing of the push's reservation.
    let r = srs_post(envoy.port, "/gate", &body("c3"));
    assert_eq!(r.status_and_code(), (409, "ExistStreamName".into()));
    assert!(rx.received().is_empty(), "the gate has no upstream");
}

/// The play key of the play tests (apart from the push key, KS_KEY).
const PLAY_KEY: &str = "e2ePlayKey0123456";

/// An on_play or on_stop body in SRS's field order (as captured).
fn play_body(action: &str, client: &str, stream: &str, param: &str) -> String {
    let page = if action == "on_play" {
        r#","pageUrl":"""#
    } else {
        ""
    };
    format!(
        r#"{{"server_id":"vid-i562442","service_id":"41vb31bg","action":"{action}","client_id":"{client}","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","stream":"{stream}","tcUrl":"rtmp://127.0.0.1:19350/live","param":"{param}"{page},"stream_url":"/live/{stream}","stream_id":"vid-91o0auf"}}"#
    )
}

/// A capture with its `param` replaced and its Content-Length set to the new
/// body's: the rest of the request byte for byte as SRS sent it.
fn with_param(raw: &[u8], param: &str) -> Vec<u8> {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let old = body
        .split(r#""param":""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let new_body = body.replacen(
        &format!(r#""param":"{old}""#),
        &format!(r#""param":"{param}""#),
        1,
    );
    let head = head.replacen(
        &format!("Content-Length: {}", body.len()),
        &format!("Content-Length: {}", new_body.len()),
        1,
    );
    format!("{head}\r\n\r\n{new_body}").into_bytes()
}

/// SRS's captured on_play and on_stop through a real Envoy with `play_auth`:
/// as captured (its `token=play1` is no play token: refused, nothing
/// upstream), then with a play URL's token in `param` (forwarded byte for
/// byte, marked as a play), a push token (refused), and an expired play
/// token (the play refused, its on_stop forwarded).
#[test]
fn captured_on_play_and_on_stop_with_play_auth() {
    let rx = Receiver::start_with(&["--answer-body", "0"]);
    let plugin = json!({"formats": ["srs"], "apps": ["live"],
        "push_auth": {"scheme": "ks_md5", "keys": [{"id": "pushers", "secret": KS_KEY}]},
        "play_auth": {"scheme": "ks_md5", "keys": [{"id": "viewers", "secret": PLAY_KEY}]}});
    let Some(envoy) = Envoy::start(opts(plugin, &rx)) else {
        return;
    };
    for name in ["on_play.http", "on_stop.http"] {
        let raw = capture(name);
        let r = srs_raw(envoy.port, &raw);
        assert_eq!(
            r.status_and_code(),
            (403, "AuthencationFailed".into()),
            "{name}"
        );
        let msg = r.json()["Error"]["Message"].as_str().unwrap().to_string();
        assert_eq!(msg, "play token: missing parameter `t`", "{name}");
    }
    assert!(rx.received().is_empty(), "a refused play reaches nobody");

    let (t, k) = ks_token(PLAY_KEY, "test1", now_s() + 600);
    for (name, event) in [("on_play.http", "play"), ("on_stop.http", "play_end")] {
        rx.clear();
        let raw = with_param(&capture(name), &format!("?t={t}&k={k}&x=y"));
        let r = srs_raw(envoy.port, &raw);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"0"[..]), "{name}");
        let got = rx.received();
        assert_eq!(got.len(), 1, "{name}");
        let (target, body) = target_and_body(&raw);
        assert_eq!(got[0].body, body, "{name}: byte for byte");
        assert_eq!(got[0].path, target);
        assert_eq!(got[0].header("user-agent"), Some("SRS/6.0.157(Hang)"));
        assert_eq!(got[0].header("x-callback-guard-format"), Some("srs"));
        assert_eq!(
            got[0].header("x-callback-guard-event"),
            Some(event),
            "{name}"
        );
        assert_eq!(got[0].header("x-callback-guard-key-id"), Some("viewers"));
        assert!(got[0]
            .header("x-callback-guard-verified")
            .unwrap()
            .ends_with("play_token"));
    }
    // A push token on a play, an expired play token.
    rx.clear();
    let (pt, pk) = ks_token(KS_KEY, "test1", now_s() + 600);
    let r = srs_raw(
        envoy.port,
        &with_param(&capture("on_play.http"), &format!("?t={pt}&k={pk}")),
    );
    assert_eq!(r.status_and_code(), (403, "AuthencationFailed".into()));
    let (et, ek) = ks_token(PLAY_KEY, "test1", now_s() - 3600);
    let expired = format!("?t={et}&k={ek}");
    let r = srs_raw(envoy.port, &with_param(&capture("on_play.http"), &expired));
    assert_eq!(r.status_and_code(), (403, "AuthencationFailed".into()));
    assert_eq!(r.json()["Error"]["Message"], "play token expired");
    assert!(rx.received().is_empty());
    let r = srs_raw(envoy.port, &with_param(&capture("on_stop.http"), &expired));
    assert_eq!(r.status, 200, "a play's end is not bound by the expiry");
    assert_eq!(rx.received().len(), 1);
}

/// Sends a request as SRS does (a new connection, `Connection: Keep-Alive`)
/// and reads one answer by its content-length, then closes the connection
/// (as SRS does right after reading the answer).
fn srs_raw(port: u16, bytes: &[u8]) -> Response {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((status, headers, at)) = parse_head(&buf) {
            let len = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= at + len {
                return Response {
                    status,
                    headers,
                    body: buf[at..at + len].to_vec(),
                };
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => panic!("connection ended before a whole answer: {buf:?}"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A hook as SRS frames it: five headers, a new connection.
fn srs_post(port: u16, path: &str, body: &str) -> Response {
    srs_post_with(port, path, body, &[])
}

fn srs_post_with(port: u16, path: &str, body: &str, extra: &[(&str, &str)]) -> Response {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nConnection: Keep-Alive\r\nContent-Length: {}\r\nContent-Type: application/json\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: SRS/6.0.157(Hang)\r\n",
        body.len()
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    srs_raw(port, req.as_bytes())
}

/// The conflict captures in SRS's order, on one Envoy with the registry on:
/// a second session of a live stream (same stream_id) gets 409 until the
/// holder's on_unpublish.
#[test]
fn the_conflict_captures_in_order() {
    let rx = Receiver::start_with(&["--answer-body", "0"]);
    let Some(envoy) = Envoy::start(opts(srs_only(true), &rx)) else {
        return;
    };
    let send = |n: &str| srs_raw(envoy.port, &capture(n)).status_and_code();
    let bad = (400, "InvalidParameterValue".to_string());
    let ok = (200, String::new());
    assert_eq!(send("conflict_155_on_connect.http"), bad);
    assert_eq!(send("conflict_156_on_publish.http"), ok);
    assert_eq!(send("conflict_157_on_connect.http"), bad);
    assert_eq!(
        send("conflict_158_on_publish.http"),
        (409, "ExistStreamName".to_string())
    );
    assert_eq!(send("conflict_159_on_close.http"), bad);
    assert_eq!(send("conflict_160_on_unpublish.http"), ok);
    assert_eq!(send("conflict_161_on_close.http"), bad);
    // The stream is free: the second publisher may push now.
    assert_eq!(send("conflict_158_on_publish.http"), ok);
    assert_eq!(send("conflict_156_on_publish.http").1, "ExistStreamName");
}

/// SRS's answer rule is the upstream's acceptance rule: after an answer SRS
/// refuses, the reservation is freed (a second session then gets in); after
/// one it accepts, the second session gets 409.
#[test]
fn the_upstreams_answer_decides_whether_the_reservation_holds() {
    let rx = Receiver::start_with(&["--answer-body", "0"]);
    let Some(envoy) = Envoy::start(opts(srs_only(true), &rx)) else {
        return;
    };
    // (status, body, SRS accepts)
    let forms: &[(u16, &str, bool)] = &[
        (200, "0", true),
        (201, "0", true),
        (200, r#"{"code":0}"#, true),
        (200, "{\"code\":0}\n", true),
        (200, r#"{"code":0,"data":{}}"#, true),
        (200, r#" { "code" : 0 } "#, true),
        (200, r#"{"code":1}"#, false),
        (200, "0\n", false),
        (200, " 0", false),
        (200, r#""0""#, false),
        (200, "{}", false),
        (200, r#"{"code":"0"}"#, false),
        (200, "", false),
        (204, "", false),
        (403, "0", false),
        (500, "0", false),
    ];
    let hook = |client: &str, stream: &str| {
        json!({"server_id":"vid-a","service_id":"s1","action":"on_publish","client_id":client,
            "ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live",
            "tcUrl":"rtmp://127.0.0.1:1935/live","stream":stream,"param":"",
            "stream_url":format!("/live/{stream}"),"stream_id":"vid-x"})
        .to_string()
    };
    for (i, (status, body, accepted)) in forms.iter().enumerate() {
        let stream = format!("{}-{i}", unique_stream("answer"));
        let encoded: String = body.bytes().map(|b| format!("%{b:02X}")).collect();
        let st = status.to_string();
        let r = srs_post_with(
            envoy.port,
            "/api/v1/streams",
            &hook("c1", &stream),
            &[("x-receiver-status", &st), ("x-receiver-body", &encoded)],
        );
        assert_eq!(r.status, *status, "form {i}");
        assert_eq!(
            r.body,
            body.as_bytes(),
            "form {i}: SRS gets the upstream's answer"
        );
        // The second session: 409 only if the first one's reservation held.
        let r = srs_post(envoy.port, "/api/v1/streams", &hook("c2", &stream));
        if *accepted {
            assert_eq!(
                r.status_and_code(),
                (409, "ExistStreamName".into()),
                "form {i} {status} {body:?}: SRS accepted, so the stream is held"
            );
        } else {
            assert_eq!(
                r.status,
                200,
                "form {i} {status} {body:?}: SRS refused, so the stream was freed: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    // Freed reservations are counted.
    let refused = forms.iter().filter(|f| !f.2).count() as u64;
    assert_eq!(
        envoy.counter("callback_guard_reservations_released"),
        refused
    );
}

/// A 15 s push held past a 6 s ttl_s by on_hls renewals every 2 s (the
/// capture, replayed with the push's fields), against a control push that
/// sends none: the control's stream is free after ttl_s, the renewed one is
/// not. The renewals are answered at once.
#[test]
fn on_hls_renewals_hold_a_push_past_ttl() {
    let rx = Receiver::start_with(&["--answer-body", "0"]);
    let plugin = json!({"formats": ["srs"], "duplicate_streams": {"ttl_s": 6}});
    let Some(envoy) = Envoy::start(opts(plugin, &rx)) else {
        return;
    };
    let hls_capture = capture("on_hls.http");
    let (_, hls_body) = target_and_body(&hls_capture);
    let hls_template: Value = serde_json::from_slice(&hls_body).unwrap();
    let publish = |client: &str, stream: &str| {
        json!({"server_id":"vid-54x7p64","service_id":"6045qk1w","action":"on_publish",
            "client_id":client,"ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live",
            "tcUrl":"rtmp://127.0.0.1:19350/live","stream":stream,"param":"?token=abc&t=123",
            "stream_url":format!("/live/{stream}"),"stream_id":"vid-594g122"})
        .to_string()
    };
    let hls = |client: &str, stream: &str, seq: u64| {
        let mut v = hls_template.clone();
        v["client_id"] = client.into();
        v["stream"] = stream.into();
        v["seq_no"] = seq.into();
        v["stream_url"] = format!("/live/{stream}").into();
        v["url"] = format!("live/{stream}-{seq}.ts").into();
        v.to_string()
    };
    let live = unique_stream("hls-live");
    let control = unique_stream("hls-ctl");
    let gate = |b: &str| srs_post(envoy.port, "/gate", b).status_and_code();
    let ok = (200, String::new());
    assert_eq!(gate(&publish("2r947403", &live)), ok);
    assert_eq!(gate(&publish("2r947403", &control)), ok);
    let start = Instant::now();
    let mut seq = 0;
    let mut slowest = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_secs(2));
        seq += 1;
        let t = Instant::now();
        assert_eq!(gate(&hls("2r947403", &live, seq)), ok, "renewal {seq}");
        slowest = slowest.max(t.elapsed());
        // Another session's on_hls is answered too, and changes nothing.
        assert_eq!(gate(&hls("other001", &live, seq)), ok);
        if start.elapsed() > Duration::from_secs(8) {
            assert_eq!(
                gate(&publish("second01", &live)).1,
                "ExistStreamName",
                "renewed push held at {:?}",
                start.elapsed()
            );
        }
    }
    assert!(seq >= 6, "{seq} renewals");
    assert!(
        slowest < Duration::from_secs(1),
        "renewals answered at once: {slowest:?}"
    );
    // The control sent no renewals: its reservation lapsed after ttl_s.
    assert_eq!(gate(&publish("second01", &control)), ok);
    assert_eq!(gate(&publish("second01", &live)).1, "ExistStreamName");
}
