//! Soak: many mixed callbacks through one Envoy (`--concurrency 2`), with
//! exact accounting. Run by `make soak` (ignored in `cargo test`):
//!
//! ```sh
//! SOAK_REQUESTS=200000 SOAK_SECONDS=600 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! Several threads, each on its own keep-alive connection to 127.0.0.1,
//! repeat a fixed cycle of twelve requests: four valid callbacks (a JSON
//! start/end pair and a form start/end pair, on streams of their own), and
//! eight that must be refused, one per code (a second session's start on a
//! live stream, a forged token, an unknown app, broken JSON, a missing field,
//! GET, text/plain, an oversized body). At the end:
//! - forwarded == valid sent, by the responses, by the receiver's count, by
//!   `callback_guard_requests_forwarded` and by the upstream cluster's
//!   completed requests;
//! - every refusal carried its expected status and code, and the filter's
//!   counter for each code equals the number sent;
//! - no 5xx and no failed exchange; no `[critical]` line and no panic in
//!   Envoy's log;
//! - Envoy's resident memory before, halfway and after is printed, with
//!   whether it grew in the second half (more than 8 MiB fails the run).
//!
//! The run is bounded by `SOAK_SECONDS`; one that runs out before sending
//! `SOAK_REQUESTS` fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";
const MAX_BODY: usize = 4096;
/// Most growth of Envoy's resident memory allowed in the second half of the soak.
const GROWTH_LIMIT_KIB: i64 = 8 * 1024;
/// Requests per cycle.
const CYCLE: u64 = 12;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// One request of the cycle: what to send and the answer it must get
/// (status, `Error.Code`; "" for a forward).
struct Step {
    method: &'static str,
    content_type: &'static str,
    body: String,
    status: u16,
    code: &'static str,
}

fn step(ct: &'static str, body: String, status: u16, code: &'static str) -> Step {
    Step {
        method: "POST",
        content_type: ct,
        body,
        status,
        code,
    }
}

/// The twelve requests of cycle `n` of thread `t`.
fn cycle(t: u64, n: u64) -> Vec<Step> {
    let s = format!("soak-{t}-{n}");
    let f = format!("soakf-{t}-{n}");
    let start = v2("PubStart", &s, Some(&format!("a-{s}")), KS_KEY);
    let other = v2("PubStart", &s, Some(&format!("b-{s}")), KS_KEY);
    let end = v2("PubEnd", &s, Some(&format!("a-{s}")), KS_KEY);
    let forged = v2("PubStart", &format!("x{s}"), None, "forgedKey77");
    let vod = start.replace("\"App\":\"live\"", "\"App\":\"vod\"");
    let missing = start.replace("\"Pubdomain\":\"push.example.com\",", "");
    let big = format!(
        "{{\"pad\":\"{}\"}}",
        "x".repeat(MAX_BODY + 100 + (n % 7) as usize)
    );
    vec![
        step(JSON, start.clone(), 200, ""),
        step(JSON, other, 409, "ExistStreamName"),
        step(JSON, forged, 403, "AuthencationFailed"),
        step(JSON, end, 200, ""),
        step(
            FORM,
            v1("user_publish", &f, &format!("v{f}"), KS_KEY),
            200,
            "",
        ),
        step(
            FORM,
            v1("user_publish_done", &f, &format!("v{f}"), KS_KEY),
            200,
            "",
        ),
        step(JSON, vod, 404, "NonExistApplication"),
        step(
            JSON,
            start[..start.len() / 2].to_string(),
            400,
            "InvalidParameterValue",
        ),
        step(JSON, missing, 400, "MissingParameter"),
        Step {
            method: "GET",
            content_type: JSON,
            body: String::new(),
            status: 405,
            code: "MethodNotAllowed",
        },
        step("text/plain", start, 415, "UnsupportedMediaType"),
        step(JSON, big, 413, "PayloadTooLarge"),
    ]
}

/// What one thread saw.
#[derive(Default)]
struct Tally {
    sent: u64,
    forwarded: u64,
    /// Refusals by code, as expected and matched.
    refused: BTreeMap<String, u64>,
    five_xx: u64,
    failed: u64,
    mismatches: u64,
    samples: Vec<String>,
    connects: u64,
}

fn prom(stats: &str, name: &str, label: Option<&str>) -> u64 {
    stats
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) && label.is_none_or(|lb| l.contains(lb)))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<u64>().ok())
        .sum()
}

#[test]
#[ignore = "soak: run with `make soak`"]
fn soak_with_exact_accounting() {
    let total = env_u64("SOAK_REQUESTS", 200_000);
    let seconds = env_u64("SOAK_SECONDS", 600);
    let threads = env_u64("SOAK_THREADS", 8).max(1);
    let rx = Receiver::start_with(&["--no-store"]);
    let mut cfg = base_config();
    cfg["max_body_bytes"] = json!(MAX_BODY);
    cfg["formats"] = json!(["kls_v2", "kls_v1"]);
    let mut opts = EnvoyOpts::new(cfg, rx.port);
    opts.concurrency = 2;
    let Some(envoy) = Envoy::start(opts) else {
        return;
    };
    let rss_before = envoy.rss_kib();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let cycles_per_thread = total.div_ceil(CYCLE * threads);
    let done = Arc::new(AtomicU64::new(0));
    let half = (cycles_per_thread * threads * CYCLE) / 2;
    let rss_half = Arc::new(Mutex::new(None::<u64>));
    let pid = envoy.pid();
    let port = envoy.port;
    let began = Instant::now();

    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let done = done.clone();
            let rss_half = rss_half.clone();
            std::thread::spawn(move || {
                let mut client = KeepAlive::new(port);
                let mut tally = Tally::default();
                'run: for n in 0..cycles_per_thread {
                    for s in cycle(t, n) {
                        if Instant::now() > deadline {
                            break 'run;
                        }
                        let r = client.request(
                            s.method,
                            "/callback",
                            &[("content-type", s.content_type)],
                            s.body.as_bytes(),
                        );
                        tally.sent += 1;
                        if done.fetch_add(1, Ordering::Relaxed) + 1 == half {
                            let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                                .unwrap_or_default()
                                .lines()
                                .find_map(|l| l.strip_prefix("VmRSS:"))
                                .and_then(|v| v.split_whitespace().next()?.parse().ok());
                            *rss_half.lock().unwrap() = rss;
                        }
                        let code = if r.status == 200 {
                            String::new()
                        } else {
                            serde_json::from_slice::<serde_json::Value>(&r.body)
                                .ok()
                                .and_then(|v| v["Error"]["Code"].as_str().map(str::to_string))
                                .unwrap_or_default()
                        };
                        if r.status == 0 {
                            tally.failed += 1;
                        } else if r.status >= 500 {
                            tally.five_xx += 1;
                        }
                        if r.status == s.status && code == s.code {
                            if s.status == 200 {
                                tally.forwarded += 1;
                            } else {
                                *tally.refused.entry(code).or_default() += 1;
                            }
                        } else {
                            tally.mismatches += 1;
                            if tally.samples.len() < 5 {
                                tally.samples.push(format!(
                                    "thread {t} cycle {n}: want {} {:?}, got {} {:?}",
                                    s.status, s.code, r.status, code
                                ));
                            }
                        }
                    }
                }
                tally.connects = client.connects;
                tally
            })
        })
        .collect();
    let tallies: Vec<Tally> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let elapsed = began.elapsed();
    // Let the last upstream exchanges settle in the stats.
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = envoy.rss_kib();

    let sent: u64 = tallies.iter().map(|t| t.sent).sum();
    let forwarded: u64 = tallies.iter().map(|t| t.forwarded).sum();
    let failed: u64 = tallies.iter().map(|t| t.failed).sum();
    let five_xx: u64 = tallies.iter().map(|t| t.five_xx).sum();
    let mismatches: u64 = tallies.iter().map(|t| t.mismatches).sum();
    let connects: u64 = tallies.iter().map(|t| t.connects).sum();
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    for t in &tallies {
        for (k, v) in &t.refused {
            *refused.entry(k.clone()).or_default() += v;
        }
    }
    // What the cycle says should have happened to the requests sent.
    let mut want_forwarded = 0;
    let mut want_refused: BTreeMap<String, u64> = BTreeMap::new();
    for t in &tallies {
        let full = t.sent / CYCLE;
        let steps = cycle(0, 0);
        for (i, s) in steps.iter().enumerate() {
            let n = full + u64::from((i as u64) < t.sent % CYCLE);
            if s.status == 200 {
                want_forwarded += n;
            } else {
                *want_refused.entry(s.code.to_string()).or_default() += n;
            }
        }
    }

    // The filter hands its counters to Envoy once per tick: let them settle.
    let _ = envoy.counter("callback_guard_requests_received");
    let stats = envoy.stats();
    let received_by_filter = prom(&stats, "callback_guard_requests_received", None);
    let forwarded_by_filter = prom(&stats, "callback_guard_requests_forwarded", None);
    let upstream_completed = prom(
        &stats,
        "envoy_cluster_upstream_rq_completed",
        Some("envoy_cluster_name=\"upstream\""),
    );
    let downstream_5xx = prom(
        &stats,
        "envoy_http_downstream_rq_xx",
        Some("envoy_response_code_class=\"5\""),
    );
    let receiver_count = rx.count();
    let log = envoy.log();
    let critical = log.lines().filter(|l| l.contains("[critical]")).count();
    let panics = log.lines().filter(|l| l.contains("panicked")).count();

    let rss_half_read = *rss_half.lock().unwrap();
    let rss_half = rss_half_read.unwrap_or(rss_after);
    let rps = sent as f64 / elapsed.as_secs_f64();
    println!("soak: {sent} requests in {elapsed:.1?} ({rps:.0} req/s), {threads} threads, {connects} connections");
    println!("soak: forwarded {forwarded} (want {want_forwarded}); filter counter {forwarded_by_filter}, upstream completed {upstream_completed}, receiver {receiver_count}");
    println!("soak: refused by response {refused:?}");
    println!("soak: filter saw {received_by_filter} requests; 5xx {five_xx} (Envoy: {downstream_5xx}); failed exchanges {failed}; mismatches {mismatches}");
    println!(
        "soak: Envoy RSS before {} KiB, halfway {} KiB, after {} KiB ({:+} KiB overall, {:+} KiB in the second half)",
        rss_before,
        rss_half,
        rss_after,
        rss_after as i64 - rss_before as i64,
        rss_after as i64 - rss_half as i64
    );
    // Growth in the second half, once pools and caches are warm, is what a
    // leak would show; the first half includes warm-up.
    let second_half_kib = rss_after as i64 - rss_half as i64;
    let grew = second_half_kib > GROWTH_LIMIT_KIB;
    match rss_half_read {
        Some(_) => println!(
            "soak: memory {} in the second half ({second_half_kib:+} KiB; limit {GROWTH_LIMIT_KIB} KiB)",
            if grew { "GREW" } else { "did not grow" }
        ),
        None => println!("soak: memory halfway not read: growth not judged"),
    }
    println!("soak: log: {critical} [critical] lines, {panics} panics");

    let mut problems = Vec::new();
    if sent < total {
        let why = if Instant::now() > deadline {
            format!(" (SOAK_SECONDS={seconds} ran out)")
        } else {
            String::new()
        };
        problems.push(format!("sent only {sent} of SOAK_REQUESTS={total}{why}"));
    }
    if rss_half_read.is_none() || rss_after == 0 {
        problems.push("Envoy's resident memory could not be read from /proc".into());
    } else if grew {
        problems.push(format!(
            "Envoy's memory grew by {second_half_kib} KiB in the second half"
        ));
    }
    for t in &tallies {
        problems.extend(t.samples.iter().cloned());
    }
    if mismatches > 0 {
        problems.push(format!(
            "{mismatches} answers differ from the expected ones"
        ));
    }
    for (what, have) in [
        ("forwarded answers", forwarded),
        ("callback_guard_requests_forwarded", forwarded_by_filter),
        ("upstream completed requests", upstream_completed),
        ("receiver count", receiver_count),
    ] {
        if have != want_forwarded {
            problems.push(format!("{what} = {have}, want {want_forwarded}"));
        }
    }
    if refused != want_refused {
        problems.push(format!(
            "refusals by response {refused:?}, want {want_refused:?}"
        ));
    }
    for (code, want) in &want_refused {
        let have = prom(
            &stats,
            &format!("callback_guard_requests_rejected_{code}"),
            None,
        );
        if have != *want {
            problems.push(format!(
                "callback_guard_requests_rejected_{code} = {have}, want {want}"
            ));
        }
    }
    if received_by_filter != sent {
        problems.push(format!(
            "callback_guard_requests_received = {received_by_filter}, want {sent}"
        ));
    }
    if five_xx + downstream_5xx + failed > 0 {
        problems.push(format!(
            "{five_xx} 5xx answers, {downstream_5xx} 5xx in Envoy's stats, {failed} failed exchanges"
        ));
    }
    if critical + panics > 0 {
        problems.push(format!(
            "Envoy's log has {critical} [critical] lines and {panics} panics"
        ));
    }
    assert!(problems.is_empty(), "soak failed:\n{}", problems.join("\n"));
}
