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
    // both workers took part
    let log = envoy.log();
    assert!(
        log.matches("callback-guard rejected: code=ExistStreamName")
            .count()
            == n - 1
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
