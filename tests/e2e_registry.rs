//! End-to-end: `ExistStreamName` across the workers of one Envoy (`--concurrency 2`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde_json::json;
use support::*;

const JSON: &str = "application/json";

fn start_envoy(rx_port: u16, ttl_s: u64) -> Option<Envoy> {
    let mut cfg = base_config();
    cfg["duplicate_streams"] = json!({"reject": true, "ttl_s": ttl_s});
    let mut opts = EnvoyOpts::new(cfg, rx_port);
    opts.concurrency = 2;
    Envoy::start(opts)
}

#[test]
fn two_hundred_concurrent_starts_admit_exactly_one() {
    let rx = Receiver::start();
    let Some(envoy) = start_envoy(rx.port, 3600) else {
        return;
    };
    let n = 200;
    let barrier = Arc::new(Barrier::new(n));
    let port = envoy.port;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let body = v2(
                    "PubStart",
                    "contended",
                    Some(&format!("session-{i}")),
                    KS_KEY,
                );
                barrier.wait();
                http1(
                    port,
                    "POST",
                    "/callback",
                    &[("content-type", JSON)],
                    body.as_bytes(),
                )
            })
        })
        .collect();
    let responses: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let conflict = responses
        .iter()
        .filter(|r| r.status == 409 && r.code() == "ExistStreamName")
        .count();
    assert_eq!(
        (ok, conflict),
        (1, n - 1),
        "statuses: {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(rx.received().len(), 1);
    // Every refusal is the live-stream rule, not a contended or full registry
    // (those answer the same code with another message).
    for r in responses.iter().filter(|r| r.status == 409) {
        assert_eq!(
            r.json()["Error"]["Message"],
            "a push of this stream by another session is live"
        );
    }
    let log = envoy.log();
    assert_eq!(
        log.matches("callback-guard rejected: code=ExistStreamName")
            .count(),
        n - 1
    );
    // Both workers took connections, so the registry was shared between them.
    let stats = http1(
        envoy.admin,
        "GET",
        "/stats?filter=worker_[0-9]+.downstream_cx_total",
        &[],
        b"",
    );
    let per_worker: Vec<u64> = String::from_utf8_lossy(&stats.body)
        .lines()
        .filter(|l| l.starts_with("listener.127.0.0.1_"))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse().ok())
        .collect();
    assert_eq!(
        per_worker.len(),
        2,
        "{}",
        String::from_utf8_lossy(&stats.body)
    );
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "connections per worker: {per_worker:?}"
    );
}

#[test]
fn retries_end_then_start_and_release_on_upstream_failure() {
    let rx = Receiver::start();
    let Some(envoy) = start_envoy(rx.port, 3600) else {
        return;
    };
    let post = |body: String, extra: &[(&str, &str)]| {
        let mut h = vec![("content-type", JSON)];
        h.extend_from_slice(extra);
        http1(envoy.port, "POST", "/callback", &h, body.as_bytes())
    };
    // same-session retry is forwarded again
    assert_eq!(
        post(v2("PubStart", "retry", Some("A"), KS_KEY), &[]).status,
        200
    );
    assert_eq!(
        post(v2("PubStart", "retry", Some("A"), KS_KEY), &[]).status,
        200
    );
    assert_eq!(
        post(v2("PubStart", "retry", Some("B"), KS_KEY), &[]).status,
        409
    );
    // an end from another session frees nothing; the owner's end frees the stream
    assert_eq!(
        post(v2("PubEnd", "retry", Some("B"), KS_KEY), &[]).status,
        200
    );
    assert_eq!(
        post(v2("PubStart", "retry", Some("B"), KS_KEY), &[]).status,
        409
    );
    assert_eq!(
        post(v2("PubEnd", "retry", Some("A"), KS_KEY), &[]).status,
        200
    );
    assert_eq!(
        post(v2("PubStart", "retry", Some("B"), KS_KEY), &[]).status,
        200
    );

    // the backend refuses a start: the stream must not stay reserved
    let r = post(
        v2("PubStart", "refused", Some("X"), KS_KEY),
        &[("x-receiver-status", "500")],
    );
    assert_eq!(r.status, 500);
    assert_eq!(
        post(v2("PubStart", "refused", Some("Y"), KS_KEY), &[]).status,
        200
    );
    assert!(envoy.counter("callback_guard_reservations_released") >= 1);

    // KLS old-version forms: vdoid is the session
    let form = |call: &str, vdoid: &str| {
        let body = v1(call, "f1", vdoid, KS_KEY);
        let ct = [("content-type", "application/x-www-form-urlencoded")];
        http1(envoy.port, "POST", "/callback", &ct, body.as_bytes())
    };
    assert_eq!(form("user_publish", "v1").status, 200);
    let r = form("user_publish", "v2");
    assert_eq!((r.status, r.code()), (409, "ExistStreamName".to_string()));
    assert_eq!(form("user_publish_done", "v1").status, 200);
    assert_eq!(form("user_publish", "v2").status, 200);
}

#[test]
fn unreachable_upstream_releases_the_reservation() {
    let rx = Receiver::start();
    // nothing listens on this port: Envoy answers 503 itself
    let dead = free_port();
    let mut opts = EnvoyOpts::new(base_config(), dead);
    opts.route_timeout_s = 2;
    let Some(envoy) = Envoy::start(opts) else {
        return;
    };
    let r = envoy.post(JSON, v2("PubStart", "down", Some("P"), KS_KEY).as_bytes());
    assert_eq!(r.status, 503);
    let r = envoy.post(JSON, v2("PubStart", "down", Some("Q"), KS_KEY).as_bytes());
    assert_eq!(r.status, 503, "not 409: the first reservation was released");
    drop(rx);
}

#[test]
fn expired_reservations_can_be_taken_over() {
    let rx = Receiver::start();
    let Some(envoy) = start_envoy(rx.port, 2) else {
        return;
    };
    assert_eq!(
        envoy
            .post(JSON, v2("PubStart", "ttl", Some("old"), KS_KEY).as_bytes())
            .status,
        200
    );
    assert_eq!(
        envoy
            .post(JSON, v2("PubStart", "ttl", Some("new"), KS_KEY).as_bytes())
            .status,
        409
    );
    std::thread::sleep(Duration::from_millis(3100));
    assert_eq!(
        envoy
            .post(JSON, v2("PubStart", "ttl", Some("new"), KS_KEY).as_bytes())
            .status,
        200
    );
}

#[test]
fn registry_off_forwards_every_start() {
    let rx = Receiver::start();
    let mut cfg = base_config();
    cfg["duplicate_streams"] = json!({"reject": false});
    let Some(envoy) = Envoy::start(EnvoyOpts::new(cfg, rx.port)) else {
        return;
    };
    for s in ["a", "b", "c"] {
        assert_eq!(
            envoy
                .post(JSON, v2("PubStart", "free", Some(s), KS_KEY).as_bytes())
                .status,
            200
        );
    }
    assert_eq!(rx.received().len(), 3);
}

/// A start the upstream never answers must not keep its stream: neither after
/// a route timeout (Envoy answers 504 itself) nor after the client hangs up
/// while the upstream is still working (the request is reset, no response at
/// all). Each time, another session's start gets through. Each case has its
/// own Envoy, so the reset one cannot pass through a route timeout instead.
#[test]
fn timeout_and_client_reset_release_the_reservation() {
    use std::io::Write;
    let rx = Receiver::start();
    let envoy_with = |route_timeout_s| {
        let mut opts = EnvoyOpts::new(base_config(), rx.port);
        opts.route_timeout_s = route_timeout_s;
        Envoy::start(opts)
    };
    let start = |envoy: &Envoy, stream: &str, session: &str, extra: &[(&str, &str)]| {
        let body = v2("PubStart", stream, Some(session), KS_KEY);
        let mut h = vec![("content-type", JSON)];
        h.extend_from_slice(extra);
        http1(envoy.port, "POST", "/callback", &h, body.as_bytes())
    };

    // Route timeout: 1 s, the upstream takes 3.
    let Some(envoy) = envoy_with(1) else {
        return;
    };
    let r = start(&envoy, "timeout", "P", &[("x-receiver-delay-ms", "3000")]);
    assert_eq!(r.status, 504);
    assert_eq!(
        start(&envoy, "timeout", "Q", &[]).status,
        200,
        "not 409: the timed-out start was released"
    );
    assert_eq!(envoy.counter("callback_guard_reservations_released"), 1);
    drop(envoy);

    // Client reset: the route would wait 30 s for the upstream's 20; hang up
    // once the upstream has the start, before it answers.
    let Some(envoy) = envoy_with(30) else {
        return;
    };
    let body = v2("PubStart", "hangup", Some("P"), KS_KEY);
    let mut req = String::from("POST /callback HTTP/1.1\r\nhost: 127.0.0.1\r\n");
    for (k, v) in [("content-type", JSON), ("x-receiver-delay-ms", "20000")] {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !rx
        .received()
        .iter()
        .any(|c| String::from_utf8_lossy(&c.body).contains("\"hangup\""))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the start never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        start(&envoy, "hangup", "Q", &[]).status,
        409,
        "reserved while the start is in flight"
    );
    drop(s);
    let released = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        envoy.counter("callback_guard_reservations_released") == 1
    });
    assert!(released, "the reset start was not released");
    assert_eq!(
        start(&envoy, "hangup", "Q", &[]).status,
        200,
        "not 409: the reset start was released"
    );
}

/// `callback_guard_reservations_live` counts what this Envoy's registry holds:
/// it moves with starts, ends and refused starts given back, and the traffic
/// that keeps it current is the filter's own (a tick, or requests).
#[test]
fn the_live_reservations_gauge_moves_with_starts_and_ends() {
    let rx = Receiver::start();
    let Some(envoy) = start_envoy(rx.port, 3600) else {
        return;
    };
    let gauge = "callback_guard_reservations_live";
    let post = |body: String| envoy.post(JSON, body.as_bytes());
    // The native module reads on requests: keep some coming while waiting.
    let settle = |want: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let _ = envoy.post(JSON, b"[]");
            let v = wait_for_stat(envoy.admin, gauge, want, Duration::from_millis(500));
            if v == want || std::time::Instant::now() > deadline {
                return v;
            }
        }
    };
    assert_eq!(settle(0), 0, "nothing held at start");
    for s in ["g1", "g2", "g3"] {
        assert_eq!(post(v2("PubStart", s, Some("s1"), KS_KEY)).status, 200);
    }
    assert_eq!(settle(3), 3, "three streams live");
    assert_eq!(post(v2("PubEnd", "g1", Some("s1"), KS_KEY)).status, 200);
    assert_eq!(settle(2), 2, "an end frees its stream");
    // A start the upstream refuses is given back.
    let r = http1(
        envoy.port,
        "POST",
        "/callback",
        &[("content-type", JSON), ("x-receiver-status", "500")],
        v2("PubStart", "g4", Some("s1"), KS_KEY).as_bytes(),
    );
    assert_eq!(r.status, 500);
    assert_eq!(post(v2("PubEnd", "g2", Some("s1"), KS_KEY)).status, 200);
    assert_eq!(
        settle(1),
        1,
        "only g3 is live: the refused start holds nothing"
    );
}
