//! One live push per stream across a fleet: two real Envoys (each
//! `--concurrency 2`) share a real 3-member etcd cluster on 127.0.0.1, in
//! front of one recording upstream. Members are killed for real (SIGKILL).
//!
//! `make test-fleet` runs this suite (it installs Debian's etcd-server when it
//! is missing); the tests are `#[ignore]` so that `make test` does not need
//! etcd. Under `CI=true` a missing etcd or Envoy is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callback_guard::registry::etcd::{self, EtcdOp, Step};
use callback_guard::registry::{Answer, Op, Release, Reserve};
use serde_json::json;
use support::*;

const JSON: &str = "application/json";
const PREFIX: &str = "/cg-test/";

/// A KLS start or end of `stream` by session `session`, signed with KS_KEY.
fn callback(event: &str, stream: &str, session: &str) -> String {
    v2(event, stream, Some(session), KS_KEY)
}

/// The build of Envoy `i` from `CALLBACK_GUARD_FLEET_BUILDS` (`wasm,native`).
fn fleet_build(i: usize) -> Option<Build> {
    let v = std::env::var("CALLBACK_GUARD_FLEET_BUILDS").ok()?;
    let builds: Vec<Build> = v
        .split(',')
        .map(|b| match b.trim() {
            "wasm" => Build::Wasm,
            "native" => Build::Native,
            other => panic!("CALLBACK_GUARD_FLEET_BUILDS: unknown build {other:?}"),
        })
        .collect();
    Some(builds[i % builds.len()])
}

/// etcd, the recording upstream and two Envoys sharing them.
struct Fleet {
    etcd: EtcdCluster,
    rx: Receiver,
    envoys: Vec<Envoy>,
    ttl_s: u64,
    timeout_ms: u64,
}

impl Fleet {
    fn start(ttl_s: u64, timeout_ms: u64) -> Option<Fleet> {
        envoy_bin()?;
        let etcd = EtcdCluster::start(3)?;
        let rx = Receiver::start();
        let mut f = Fleet {
            etcd,
            rx,
            envoys: Vec::new(),
            ttl_s,
            timeout_ms,
        };
        for i in 0..2 {
            let e = f.envoy(i, None);
            f.envoys.push(e);
        }
        Some(f)
    }

    fn plugin_config(&self) -> serde_json::Value {
        let mut c = base_config();
        c["duplicate_streams"] = json!({
            "reject": true,
            "ttl_s": self.ttl_s,
            "store": {"etcd": {"cluster": "etcd", "key_prefix": PREFIX, "timeout_ms": self.timeout_ms}}
        });
        c
    }

    /// Envoy `i` of the fleet (`CALLBACK_GUARD_FLEET_BUILDS=wasm,native` mixes
    /// the builds, one per Envoy; by default both run the build under test).
    fn envoy(&self, i: usize, port: Option<u16>) -> Envoy {
        let mut opts = EnvoyOpts::new(self.plugin_config(), self.rx.port);
        opts.build = fleet_build(i);
        opts.extra_clusters = vec![etcd_cluster_config(&self.etcd.client_ports())];
        opts.listener_port = port;
        let e = Envoy::start(opts).expect("Envoy");
        // The etcd cluster's first health checks pass before callbacks flow.
        wait_healthy_etcd(&e, 3);
        e
    }

    fn post(&self, envoy: usize, body: &str) -> Response {
        self.envoys[envoy].post(JSON, body.as_bytes())
    }

    /// Starts of `stream` that reached the upstream.
    fn upstream_starts(&self, stream: &str) -> usize {
        self.rx
            .received()
            .iter()
            .filter(|r| {
                r.header("x-callback-guard-event") == Some("start")
                    && String::from_utf8_lossy(&r.body)
                        .contains(&format!("\"Stream\":\"{stream}\""))
            })
            .count()
    }
}

/// Waits until Envoy's etcd cluster counts `n` healthy members.
fn wait_healthy_etcd(e: &Envoy, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let stats = e.stats();
        let healthy = stats
            .lines()
            .find(|l| {
                l.starts_with("envoy_cluster_membership_healthy{envoy_cluster_name=\"etcd\"}")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        if healthy == Some(n) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "Envoy's etcd cluster never had {n} healthy members:\n{}",
        e.log()
    );
}

/// The state machine, driven natively over HTTP/1.1 against a real etcd: the
/// wire format as the filter sends it, lease grants included.
#[test]
#[ignore]
fn the_etcd_wire_format_against_a_real_member() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let port = etcd.client_ports()[0];
    let now = now_s();
    let run = |op: Op, session: &str| -> Result<Answer, String> {
        let cb =
            callback_guard::callback::parse_json(callback("PubStart", "wire", session).as_bytes())
                .unwrap();
        let claim = callback_guard::registry::Claim::of(&cb);
        let now_ms = now * 1000;
        let (mut op, mut step) = EtcdOp::begin(op, claim, PREFIX, 60, now, now_ms, 5000);
        let mut calls = 0;
        loop {
            match step {
                Step::Done(r) => return r.map_err(|e| e.to_string()),
                Step::Send(call) => {
                    calls += 1;
                    assert!(calls < 10, "too many round trips");
                    let r = http1(
                        port,
                        "POST",
                        call.path,
                        &[("content-type", JSON), ("grpc-metadata-hasleader", "true")],
                        call.body.as_bytes(),
                    );
                    step = op.on_answer(Some((r.status, &r.body)), now_ms + 1);
                }
            }
        }
    };
    // The first put finds its window's lease missing, grants it, and goes again.
    assert_eq!(
        run(Op::Reserve, "s1"),
        Ok(Answer::Reserve(Reserve::Reserved))
    );
    assert_eq!(run(Op::Reserve, "s2"), Ok(Answer::Reserve(Reserve::Busy)));
    assert_eq!(
        run(Op::Reserve, "s1"),
        Ok(Answer::Reserve(Reserve::Renewed))
    );
    assert_eq!(run(Op::GiveBack, "s1"), Ok(Answer::Release(Release::Kept)));
    assert_eq!(
        run(Op::Release, "s2"),
        Ok(Answer::Release(Release::NotHeld))
    );
    assert_eq!(
        run(Op::Release, "s1"),
        Ok(Answer::Release(Release::Released))
    );
    assert!(etcd.keys(PREFIX).is_empty(), "released: the key is gone");
    assert_eq!(
        run(Op::Reserve, "s2"),
        Ok(Answer::Reserve(Reserve::Reserved))
    );
    let keys = etcd.keys(PREFIX);
    assert_eq!(keys.len(), 1);
    assert!(
        keys[0].starts_with(PREFIX) && !keys[0].contains("wire"),
        "a hash, never the name: {keys:?}"
    );
    // The key carries the window's lease, with a TTL of ttl_s and one window.
    let lease = etcd::Lease::at(PREFIX, 60, now);
    let r = http1(
        port,
        "POST",
        "/v3/lease/timetolive",
        &[],
        format!(r#"{{"ID":"{}"}}"#, lease.id).as_bytes(),
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["grantedTTL"], lease.ttl_s.to_string(), "{v}");
}

/// Across Envoys: a live start holds the stream on every Envoy; an end on the
/// other frees it; a same-session retry on the other is a renewal; and the
/// reservation survives a restart of an Envoy.
#[test]
#[ignore]
fn one_live_push_per_stream_across_two_envoys() {
    let Some(mut f) = Fleet::start(600, 1500) else {
        return;
    };
    let r = f.post(0, &callback("PubStart", "cam1", "s1"));
    assert_eq!(
        r.status_and_code(),
        (200, String::new()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // Another session on the other Envoy: a duplicate.
    let r = f.post(1, &callback("PubStart", "cam1", "s2"));
    assert_eq!(r.status_and_code(), (409, "ExistStreamName".into()));
    // The same session on the other Envoy (a CDN retry): a renewal.
    let r = f.post(1, &callback("PubStart", "cam1", "s1"));
    assert_eq!(r.status, 200, "a retry is forwarded");
    assert_eq!(f.upstream_starts("cam1"), 2);

    // Envoy B restarts on the same port: the reservation is still there.
    let port = f.envoys[1].port;
    f.envoys.remove(1);
    let b = f.envoy(1, Some(port));
    f.envoys.push(b);
    let r = f.post(1, &callback("PubStart", "cam1", "s3"));
    assert_eq!(
        r.status_and_code(),
        (409, "ExistStreamName".into()),
        "after a restart"
    );

    // The end goes through B and frees the stream everywhere.
    let r = f.post(1, &callback("PubEnd", "cam1", "s1"));
    assert_eq!(r.status, 200);
    assert_eq!(f.post(0, &callback("PubStart", "cam1", "s3")).status, 200);
    assert_eq!(f.post(1, &callback("PubEnd", "cam1", "s3")).status, 200);
    assert_eq!(f.post(1, &callback("PubStart", "cam1", "s4")).status, 200);
    assert_eq!(f.upstream_starts("cam1"), 4);
    let released = f.envoys[0].counter("callback_guard_reservations_released");
    assert_eq!(released, 0, "ends do not count as given-back starts");
    assert_eq!(
        f.envoys[0].counter("callback_guard_store_errors_unreachable"),
        0
    );
}

/// 200 starts of one stream from 200 sessions, at once, spread over both
/// Envoys: exactly one reaches the upstream.
#[test]
#[ignore]
fn two_hundred_concurrent_starts_admit_exactly_one() {
    let Some(f) = Fleet::start(600, 3000) else {
        return;
    };
    let f = Arc::new(f);
    let ok = Arc::new(AtomicU64::new(0));
    let dup = Arc::new(AtomicU64::new(0));
    let other = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..20)
        .map(|t| {
            let (f, ok, dup, other) = (f.clone(), ok.clone(), dup.clone(), other.clone());
            std::thread::spawn(move || {
                for i in 0..10 {
                    let session = format!("race-{t}-{i}");
                    let r = f.post((t + i) % 2, &callback("PubStart", "race", &session));
                    match r.status {
                        200 => ok.fetch_add(1, Ordering::SeqCst),
                        409 => dup.fetch_add(1, Ordering::SeqCst),
                        s => {
                            other
                                .lock()
                                .unwrap()
                                .push((s, String::from_utf8_lossy(&r.body).into_owned()));
                            0
                        }
                    };
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let other = other.lock().unwrap().clone();
    assert!(other.is_empty(), "answers other than 200/409: {other:?}");
    assert_eq!(ok.load(Ordering::SeqCst), 1, "exactly one start forwarded");
    assert_eq!(dup.load(Ordering::SeqCst), 199);
    assert_eq!(f.upstream_starts("race"), 1, "by the upstream's own count");
}

/// A start the upstream refuses frees the stream on every Envoy; a start
/// without an end expires after `ttl_s`.
#[test]
#[ignore]
fn upstream_refusal_and_ttl_free_the_stream_fleet_wide() {
    let Some(f) = Fleet::start(3, 1500) else {
        return;
    };
    let body = callback("PubStart", "refused", "s1");
    let r = http1(
        f.envoys[0].port,
        "POST",
        "/callback",
        &[("content-type", JSON), ("x-receiver-status", "500")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 500, "the upstream's answer");
    // The give-back runs after the answer: the stream is free shortly after.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = f.post(1, &callback("PubStart", "refused", "s2"));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 409);
        assert!(
            Instant::now() < deadline,
            "the refused start was not given back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(f.envoys[0].counter("callback_guard_reservations_released") >= 1);

    // ttl_s = 3: a start without an end holds the stream for 3 s only.
    assert_eq!(f.post(0, &callback("PubStart", "ttl", "s1")).status, 200);
    assert_eq!(f.post(1, &callback("PubStart", "ttl", "s2")).status, 409);
    std::thread::sleep(Duration::from_millis(4100));
    assert_eq!(
        f.post(1, &callback("PubStart", "ttl", "s2")).status,
        200,
        "expired"
    );
}

/// SIGKILL of the etcd leader under load never lets a second push of a live
/// stream through, and starts are served again once a new leader is elected.
#[test]
#[ignore]
fn killing_the_leader_under_load_never_admits_a_duplicate() {
    let Some(f) = Fleet::start(600, 1000) else {
        return;
    };
    assert_eq!(
        f.post(0, &callback("PubStart", "held", "owner")).status,
        200
    );
    let f = Arc::new(std::sync::Mutex::new(f));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counts = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        (String, u16),
        u64,
    >::new()));
    let (ports, rx_port) = {
        let g = f.lock().unwrap();
        (vec![g.envoys[0].port, g.envoys[1].port], g.rx.port)
    };
    let load: Vec<_> = (0..4)
        .map(|t| {
            let (stop, counts, ports) = (stop.clone(), counts.clone(), ports.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    // A duplicate of the held stream, and a fresh stream.
                    for (kind, body) in [
                        (
                            "dup",
                            callback("PubStart", "held", &format!("intruder-{t}-{n}")),
                        ),
                        (
                            "fresh",
                            callback("PubStart", &format!("fresh-{t}-{n}"), "s"),
                        ),
                    ] {
                        let port = ports[(n as usize + t) % 2];
                        let r = http1(
                            port,
                            "POST",
                            "/callback",
                            &[("content-type", JSON)],
                            body.as_bytes(),
                        );
                        *counts
                            .lock()
                            .unwrap()
                            .entry((kind.into(), r.status))
                            .or_default() += 1;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let leader = {
        let mut g = f.lock().unwrap();
        let leader = g.etcd.leader().expect("a leader");
        g.etcd.kill(leader);
        leader
    };
    let t_kill = Instant::now();
    // A new leader is elected among the two left.
    let elected = f
        .lock()
        .unwrap()
        .etcd
        .wait_for_leader(Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for h in load {
        h.join().unwrap();
    }
    let counts = counts.lock().unwrap().clone();
    eprintln!("killed member {leader}; new leader after {elected:?} ({:?} since the kill); answers: {counts:?}", t_kill.elapsed());
    // Never a second push of the held stream: not by the answers...
    assert_eq!(counts.get(&("dup".into(), 200)), None, "{counts:?}");
    // ...and not by the upstream's own count.
    assert_eq!(
        received_at(rx_port)
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains("\"Stream\":\"held\""))
            .count(),
        1
    );
    // Starts were refused with 503 during the election, served before and after.
    for (key, n) in &counts {
        assert!(
            matches!(key.1, 200 | 409 | 503),
            "unexpected status {key:?} x{n}"
        );
    }
    assert!(
        counts.get(&("fresh".into(), 200)).copied().unwrap_or(0) > 10,
        "{counts:?}"
    );
    // Served again after the election: both Envoys, within a few seconds
    // (Envoy's health checks drop the dead member; the survivors answer).
    let g = f.lock().unwrap();
    for e in 0..2 {
        let t0 = Instant::now();
        let mut n = 0;
        loop {
            n += 1;
            let r = g.post(
                e,
                &callback("PubStart", &format!("after-election-{e}-{n}"), "s"),
            );
            if r.status == 200 {
                eprintln!(
                    "Envoy {e}: starts served again {:?} after the election was seen",
                    t0.elapsed()
                );
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "Envoy {e} not serving starts after the election: {}",
                String::from_utf8_lossy(&r.body)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Quorum lost (2 of 3 members killed), then etcd gone entirely: every start
/// is refused with 503 ServiceUnavailable within timeout_ms and reaches
/// nothing; ends still reach the upstream.
#[test]
#[ignore]
fn without_quorum_or_without_etcd_starts_fail_closed_and_ends_pass() {
    let Some(mut f) = Fleet::start(600, 800) else {
        return;
    };
    assert_eq!(f.post(0, &callback("PubStart", "q", "s1")).status, 200);
    let before = f.upstream_starts("q-");
    for phase in ["quorum lost", "etcd gone"] {
        match phase {
            "quorum lost" => {
                let leader = f.etcd.leader().unwrap();
                f.etcd.kill(leader);
                f.etcd.kill((leader + 1) % 3);
            }
            _ => {
                for i in 0..3 {
                    f.etcd.kill(i);
                }
            }
        }
        for i in 0..6 {
            let t0 = Instant::now();
            let r = f.post(i % 2, &callback("PubStart", &format!("q-{phase}-{i}"), "s"));
            let took = t0.elapsed();
            assert_eq!(
                r.status_and_code(),
                (503, "ServiceUnavailable".into()),
                "{phase}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(r.json()["Error"]["Type"], "Receiver");
            assert!(
                took < Duration::from_millis(800 + 700),
                "{phase}: answered after {took:?}"
            );
        }
        // Ends are forwarded: the backend must learn that a push stopped.
        let r = f.post(1, &callback("PubEnd", "q", "s1"));
        assert_eq!(r.status, 200, "{phase}: the end was forwarded");
    }
    assert_eq!(
        f.upstream_starts("q-"),
        before,
        "no start reached the upstream"
    );
    let ends =
        f.rx.received()
            .iter()
            .filter(|r| r.header("x-callback-guard-event") == Some("end"))
            .count();
    assert_eq!(ends, 2);
    let log = f.envoys[1].log();
    assert!(
        log.contains("forwarded without the stream registry"),
        "{log}"
    );
    let errors: u64 = ["no_leader", "timeout", "unreachable", "failed"]
        .iter()
        .map(|k| {
            f.envoys[0].counter(&format!("callback_guard_store_errors_{k}"))
                + f.envoys[1].counter(&format!("callback_guard_store_errors_{k}"))
        })
        .sum();
    assert_eq!(errors, 14, "12 refused starts and 2 ends, counted by kind");
}

/// Observe mode records reservations in the registry like enforce mode, so
/// switching to enforce starts from the truth: a push let through by an
/// observe-mode Envoy holds its stream on an enforce-mode Envoy of the fleet.
#[test]
#[ignore]
fn observe_mode_records_reservations_that_enforce_mode_then_honours() {
    let Some(f) = Fleet::start(600, 1500) else {
        return;
    };
    let mut cfg = f.plugin_config();
    cfg["mode"] = json!("observe");
    let mut opts = EnvoyOpts::new(cfg, f.rx.port);
    opts.extra_clusters = vec![etcd_cluster_config(&f.etcd.client_ports())];
    let observe = Envoy::start(opts).expect("Envoy");
    wait_healthy_etcd(&observe, 3);

    let r = observe.post(JSON, callback("PubStart", "rollout", "s1").as_bytes());
    assert_eq!(r.status, 200);
    // In observe mode a second push is let through, marked.
    let r = observe.post(JSON, callback("PubStart", "rollout", "s2").as_bytes());
    assert_eq!(r.status, 200);
    let marked =
        f.rx.received()
            .last()
            .unwrap()
            .header("x-callback-guard-would-reject")
            .map(str::to_string);
    assert_eq!(marked.as_deref(), Some("ExistStreamName"));
    // Enforce mode, on the same registry, refuses it: it knows s1 is live.
    let r = f.post(0, &callback("PubStart", "rollout", "s2"));
    assert_eq!(r.status_and_code(), (409, "ExistStreamName".into()));
    assert_eq!(
        f.post(1, &callback("PubStart", "rollout", "s1")).status,
        200,
        "s1's retry renews"
    );
}

/// On etcd, `callback_guard_reservations_live` is the fleet's: a start through
/// Envoy A shows on Envoy B, and its end through B clears it on A.
#[test]
#[ignore]
fn the_live_reservations_gauge_counts_the_fleet() {
    let Some(f) = Fleet::start(3600, 1500) else {
        return;
    };
    let gauge = "callback_guard_reservations_live";
    // The native module reads on requests: keep some coming while waiting.
    let settle = |envoy: usize, want: u64| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let _ = f.post(envoy, "[]");
            let v = wait_for_stat(
                f.envoys[envoy].admin,
                gauge,
                want,
                Duration::from_millis(500),
            );
            if v == want || Instant::now() > deadline {
                return v;
            }
        }
    };
    assert_eq!(settle(1, 0), 0);
    assert_eq!(
        f.post(0, &callback("PubStart", "fleet-g1", "s1")).status,
        200
    );
    assert_eq!(
        f.post(0, &callback("PubStart", "fleet-g2", "s1")).status,
        200
    );
    assert_eq!(settle(1, 2), 2, "Envoy B counts what A reserved");
    assert_eq!(f.post(1, &callback("PubEnd", "fleet-g1", "s1")).status, 200);
    assert_eq!(settle(0, 1), 1, "Envoy A counts what B freed");
}

/// SRS (issue 21) across a fleet: two SRS sessions of one stream on two
/// Envoys sharing etcd. The captured publishers (two client_ids, one
/// stream_id): the second gets 409 on the other Envoy until the first's
/// on_unpublish; an on_hls renews the holder's reservation on etcd, and is
/// answered at once; an upstream answer SRS refuses frees the stream.
#[test]
#[ignore]
fn srs_two_sessions_of_one_stream_across_two_envoys() {
    if envoy_bin().is_none() {
        return;
    }
    let Some(etcd) = EtcdCluster::start(3) else {
        return;
    };
    let rx = Receiver::start_with(&["--answer-body", "0"]);
    let plugin = json!({"formats": ["srs"], "duplicate_streams": {"reject": true, "ttl_s": 60,
        "store": {"etcd": {"cluster": "etcd", "key_prefix": "/cg-srs/", "timeout_ms": 2000}}}});
    let envoys: Vec<Envoy> = (0..2)
        .map(|_| {
            let mut o = EnvoyOpts::new(plugin.clone(), rx.port);
            o.extra_clusters = vec![etcd_cluster_config(&etcd.client_ports())];
            let e = Envoy::start(o).expect("Envoy");
            wait_healthy_etcd(&e, 3);
            e
        })
        .collect();
    let capture = |name: &str| {
        let raw = std::fs::read(format!(
            "{}/tests/fixtures/srs/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        raw[at + 4..].to_vec()
    };
    let post = |i: usize, body: &[u8]| envoys[i].post(JSON, body).status_and_code();
    let first = capture("conflict_156_on_publish.http");
    let second = capture("conflict_158_on_publish.http");
    let ok = (200, String::new());
    assert_eq!(post(0, &first), ok);
    assert_eq!(post(1, &second), (409, "ExistStreamName".into()));
    // The holder's on_hls on the other Envoy: forwarded at once, renews on etcd.
    let hls = String::from_utf8(first.clone())
        .unwrap()
        .replace(
            r#""action":"on_publish""#,
            r#""action":"on_hls","duration":2.02,"cwd":"/","file":"/a.ts","url":"a.ts","m3u8":"/a.m3u8","m3u8_url":"a.m3u8","seq_no":3"#,
        );
    let t = Instant::now();
    assert_eq!(post(1, hls.as_bytes()), ok);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(post(0, &second), (409, "ExistStreamName".into()));
    // The holder's end, on either Envoy, frees it for the second session.
    assert_eq!(post(1, &capture("conflict_160_on_unpublish.http")), ok);
    assert_eq!(post(0, &second), ok);
    // An answer SRS refuses frees the stream across the fleet.
    let other = String::from_utf8(second.clone())
        .unwrap()
        .replace(r#""stream":"test1""#, r#""stream":"fleet-refused""#);
    let r = http1(
        envoys[0].port,
        "POST",
        "/hook",
        &[
            ("content-type", JSON),
            ("x-receiver-body", "%7B%22code%22%3A1%7D"),
        ],
        other.as_bytes(),
    );
    assert_eq!(r.body, br#"{"code":1}"#);
    let third = other.replace("y708hn83", "third001");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = post(1, third.as_bytes());
        if r == ok {
            break;
        }
        assert!(Instant::now() < deadline, "never freed: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
