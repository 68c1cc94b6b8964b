//! Running callback-guard in production, on a real Envoy: a crashed VM comes
//! back (`failure_policy: FAIL_RELOAD`, proven with a test-only build that
//! aborts on a marker header), metrics carry the code as a label, and observe
//! mode forwards what enforce mode refuses, marked and counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use callback_guard::lifecycle::Metric;
use serde_json::json;
use support::*;

const JSON: &str = "application/json";
const CRASH: (&str, &str) = ("x-callback-guard-test-crash", "abort");

/// The test-only build of `make wasm-crash-test`.
fn crash_wasm() -> String {
    let p = repo().join("target/crash-test/wasm32-wasip1/release/callback_guard.wasm");
    assert!(
        p.exists(),
        "{} is missing: run `make wasm-crash-test`",
        p.display()
    );
    p.display().to_string()
}

/// envoy/envoy.yaml as shipped (FAIL_RELOAD, stats tags), with the crash-test
/// module and a reload backoff long enough to watch.
fn shipped_with_crash_module(backoff_s: u32) -> String {
    let yaml = shipped_yaml();
    let old = "reload_config: { backoff: { base_interval: 1s, max_interval: 30s } }";
    assert!(
        yaml.contains(old),
        "envoy/envoy.yaml: the reload backoff line changed"
    );
    yaml.replace("{{WASM}}", &crash_wasm()).replace(
        old,
        &format!("reload_config: {{ backoff: {{ base_interval: {backoff_s}s, max_interval: {backoff_s}s }} }}"),
    )
}

fn start_shipped(raw: String, rx: &Receiver, key: &str) -> Option<Envoy> {
    let mut opts = EnvoyOpts::new(json!({}), rx.port);
    opts.raw_yaml = Some(raw);
    opts.env
        .push(("CALLBACK_GUARD_PUSH_KEY".into(), key.into()));
    opts.concurrency = 1;
    Envoy::start(opts)
}

fn post(envoy: &Envoy, body: &str, extra: &[(&str, &str)]) -> Response {
    let mut h = vec![("content-type", JSON)];
    h.extend_from_slice(extra);
    http1(envoy.port, "POST", "/callback", &h, body.as_bytes())
}

/// Envoy's own wasm counters, e.g. `vm_reload_success` (the plugin's stat prefix).
fn wasm_stat(envoy: &Envoy, suffix: &str) -> u64 {
    let stats =
        String::from_utf8_lossy(&http1(envoy.admin, "GET", "/stats", &[], b"").body).into_owned();
    stats
        .lines()
        .find(|l| l.starts_with("wasm.") && l.contains(&format!(".{suffix}:")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// The native module shares Envoy's process: a panic (a bug; the test-only
/// build of `make native-crash-test` panics on a marker header) is caught at
/// the hook it happened in. That request is answered `500 InternalError`
/// with one critical line; Envoy keeps serving, at once, and a stream
/// reserved before is still reserved.
#[test]
fn a_panic_is_answered_500_and_envoy_keeps_serving_with_the_registry() {
    if !only_for(Build::Native, "panic barrier") {
        return;
    }
    let dir = repo().join("target/crash-test/native");
    assert!(
        dir.join("libcallback_guard.so").exists(),
        "{} is missing: run `make native-crash-test`",
        dir.display()
    );
    std::env::set_var("CALLBACK_GUARD_NATIVE_DIR", &dir);
    let rx = Receiver::start();
    let Some(envoy) = start_shipped(shipped_yaml(), &rx, KS_KEY) else {
        return;
    };
    assert_eq!(
        post(&envoy, &v2("PubStart", "held", Some("s1"), KS_KEY), &[]).status,
        200
    );
    let forwarded_before = rx.received().len();
    let r = post(
        &envoy,
        &v2("PubStart", "crash", Some("c"), KS_KEY),
        &[CRASH],
    );
    assert_eq!(
        (r.status, r.code()),
        (500, "InternalError".to_string()),
        "the request that hit the bug"
    );
    // At once, with no reload: the held stream is still held, forged tokens
    // are refused, valid starts forwarded.
    let r = post(&envoy, &v2("PubStart", "held", Some("s2"), KS_KEY), &[]);
    assert_eq!(
        (r.status, r.code()),
        (409, "ExistStreamName".to_string()),
        "the reservation survived the panic"
    );
    let r = post(&envoy, &v2("PubStart", "after", Some("a"), "forged"), &[]);
    assert_eq!(
        (r.status, r.code()),
        (403, "AuthencationFailed".to_string())
    );
    assert_eq!(
        post(&envoy, &v2("PubStart", "after", Some("a"), KS_KEY), &[]).status,
        200
    );
    assert_eq!(
        rx.received().len(),
        forwarded_before + 1,
        "only the valid start after the panic was forwarded"
    );
    let log = envoy.log();
    let critical: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("[critical]") && l.contains("callback-guard: a bug stopped a request")
        })
        .collect();
    assert_eq!(critical.len(), 1, "one critical line:\n{log}");
    assert!(critical[0].contains("on_http_filter_request_headers"));
}

/// A VM crash refuses callbacks (never forwards them) until the VM reloads,
/// which the first request after the backoff does; from then on callbacks
/// are decided again, and a stream reserved before the crash is still
/// reserved (the registry lives in the host, not in the VM).
#[test]
fn a_crashed_vm_comes_back_and_keeps_the_registry() {
    if !only_for(Build::Wasm, "VM crash and reload") {
        return;
    }
    let rx = Receiver::start();
    let Some(envoy) = start_shipped(shipped_with_crash_module(2), &rx, KS_KEY) else {
        return;
    };
    assert_eq!(
        post(&envoy, &v2("PubStart", "held", Some("s1"), KS_KEY), &[]).status,
        200
    );
    let forwarded_before = rx.received().len();

    let r = post(
        &envoy,
        &v2("PubStart", "crash", Some("c"), KS_KEY),
        &[CRASH],
    );
    assert_eq!(r.status, 503, "the crashing request is refused");
    let t0 = Instant::now();
    let mut refused = 0;
    let r = loop {
        // Another session's start of the held stream: refused while the VM
        // is down (503), a duplicate (409) once it is back.
        let r = post(&envoy, &v2("PubStart", "held", Some("s2"), KS_KEY), &[]);
        if r.status != 503 {
            break r;
        }
        refused += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the VM never came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let waited = t0.elapsed();
    eprintln!("refused {refused} requests for {waited:?} after the crash, then decided again");
    assert!(refused >= 1, "refused while the VM reloads");
    assert!(
        waited >= Duration::from_millis(1500),
        "back only after the 2 s backoff ({waited:?})"
    );
    assert_eq!(
        (r.status, r.code()),
        (409, "ExistStreamName".to_string()),
        "the reservation survived the crash"
    );
    assert_eq!(
        rx.received().len(),
        forwarded_before,
        "nothing was forwarded while the VM was down"
    );
    // Decided again: a forged token is refused, a valid start forwarded.
    let r = post(&envoy, &v2("PubStart", "after", Some("a"), "forged"), &[]);
    assert_eq!(
        (r.status, r.code()),
        (403, "AuthencationFailed".to_string())
    );
    assert_eq!(
        post(&envoy, &v2("PubStart", "after", Some("a"), KS_KEY), &[]).status,
        200
    );
    assert_eq!(wasm_stat(&envoy, "vm_reload_success"), 1);
    let log = envoy.log();
    assert!(
        log.contains("RuntimeError: unreachable"),
        "the crash is in Envoy's log:\n{log}"
    );
}

/// The shipped configs label refusals by code (stats_tags): one metric per
/// outcome, as Prometheus users expect.
#[test]
fn refusals_are_one_metric_with_the_code_as_a_label() {
    let Some(stack) = Shipped::start() else {
        return;
    };
    let forged = v2("PubStart", &unique_stream("labels"), None, "forged");
    for _ in 0..2 {
        assert_eq!(stack.post(JSON, forged.as_bytes()).status, 403);
    }
    let r = http1(stack.port, "GET", "/callback", &[], b"");
    assert_eq!(r.status, 405);
    assert!(stack.counter(&rejected_series("AuthencationFailed")) >= 2);
    assert!(stack.counter(&rejected_series("MethodNotAllowed")) >= 1);
    let text =
        String::from_utf8_lossy(&http1(stack.admin, "GET", "/stats/prometheus", &[], b"").body)
            .into_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with("# TYPE callback_guard_requests_rejected counter")),
        "one metric name for every code"
    );
    assert!(
        !text.contains("callback_guard_requests_rejected_AuthencationFailed"),
        "no per-code metric names any more"
    );
    assert!(
        text.contains("callback_guard_store_errors{kind=\"contended\"}"),
        "store errors by kind"
    );
    // Every counter the filter defines is exported from the start, a per-code or
    // per-kind one only as a series of its labelled metric (plays too).
    for m in Metric::all() {
        let series = match m {
            Metric::Rejected(c) => rejected_series(c.as_str()),
            Metric::PlayRejected(c) => plays_rejected_series(c.as_str()),
            Metric::StoreError(k) => format!("callback_guard_store_errors{{kind=\"{k}\"}}"),
            _ => format!("{}{{}}", m.name().replace('.', "_")),
        };
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{series} "))),
            "{} is not exported as {series}",
            m.name()
        );
    }
    assert!(
        !text.contains("callback_guard_plays_rejected_"),
        "no per-code metric names for plays"
    );
}

/// The play key of [`shipped_with_play_auth`]: a viewer's token, not a push's.
const PLAY_KEY: &str = "playKey456";

/// The shipped config (stats tags and all) with plays checked: `play_auth`
/// with its own key, and nginx-rtmp forms next to KLS JSON.
fn shipped_with_play_auth() -> String {
    let yaml = shipped_yaml();
    let apps = "\"apps\": [\"live\"],";
    assert_eq!(
        yaml.matches(apps).count(),
        1,
        "{}: the plugin configuration's apps line changed",
        shipped_config_path().display()
    );
    yaml.replace(
        apps,
        &format!(
            "{apps} \"formats\": [\"kls_v2\", \"nginx_rtmp\"], \"play_auth\": \
             {{\"scheme\": \"ks_md5\", \"keys\": [{{\"id\": \"viewer\", \"secret\": \"{PLAY_KEY}\"}}]}},"
        ),
    )
}

/// nginx-rtmp's `on_play` (`call=play`) of a viewer of live/cam1, its token
/// signed with `key`.
fn nginx_play(key: &str) -> String {
    let token = callback_guard::auth::token::sign(
        callback_guard::config::Scheme::KsMd5,
        key.as_bytes(),
        "live",
        "cam1",
        now_s() + 600,
    );
    format!(
        "app=live&flashver=x&swfurl=&tcurl=rtmp://127.0.0.1:1935/live&pageurl=&addr=127.0.0.1\
         &clientid=3&call=play&name=cam1&start=4294965296&duration=0&reset=0&{token}"
    )
}

/// Plays (viewers' callbacks) are counted apart from pushes, with the same
/// `code` label: a forwarded play moves `plays_forwarded`, a refused one
/// `plays_rejected{code=...}`, and neither moves the push counters
/// (`requests_forwarded`, `requests_rejected`); `requests_received` counts
/// both. Pushes then move only the push counters.
#[test]
fn plays_are_counted_apart_from_pushes_with_the_code_as_a_label() {
    let rx = Receiver::start();
    let Some(envoy) = start_shipped(shipped_with_play_auth(), &rx, KS_KEY) else {
        return;
    };
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let sum = |s: &std::collections::BTreeMap<String, u64>, prefix: &str| -> u64 {
        s.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| *v)
            .sum()
    };
    let moved = |a: &std::collections::BTreeMap<String, u64>,
                 b: &std::collections::BTreeMap<String, u64>,
                 prefix: &str| sum(b, prefix) - sum(a, prefix);
    let before = settled_series(envoy.admin);
    for (prefix, what) in [
        ("callback_guard_plays_forwarded{}", "plays_forwarded"),
        (
            plays_rejected_series("AuthencationFailed").as_str(),
            "plays_rejected{code=\"AuthencationFailed\"}",
        ),
    ] {
        assert!(
            before.contains_key(prefix),
            "{what} is not exported: {before:?}"
        );
    }

    // A viewer's play with a play token: forwarded.
    let r = http1(
        envoy.port,
        "POST",
        "/callback",
        &form,
        nginx_play(PLAY_KEY).as_bytes(),
    );
    assert_eq!(r.status, 200, "a signed play is forwarded");
    let got = rx.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x-callback-guard-event"), Some("play"));
    // A play with a push token (signed with the push key): refused.
    let r = http1(
        envoy.port,
        "POST",
        "/callback",
        &form,
        nginx_play(KS_KEY).as_bytes(),
    );
    assert_eq!(
        (r.status, r.code()),
        (403, "AuthencationFailed".to_string()),
        "a play with a push token"
    );
    assert_eq!(
        rx.received().len(),
        1,
        "the refused play never reached the upstream"
    );

    let plays = settled_series(envoy.admin);
    let of = |prefix: &str| moved(&before, &plays, prefix);
    assert_eq!(of("callback_guard_plays_forwarded{}"), 1, "plays_forwarded");
    assert_eq!(
        of(&plays_rejected_series("AuthencationFailed")),
        1,
        "plays_rejected{{code=\"AuthencationFailed\"}}"
    );
    assert_eq!(
        of("callback_guard_plays_rejected{"),
        1,
        "no other play refusal"
    );
    assert_eq!(
        of("callback_guard_requests_forwarded{}"),
        0,
        "requests_forwarded: plays apart"
    );
    assert_eq!(
        of("callback_guard_requests_rejected{"),
        0,
        "requests_rejected: plays apart"
    );
    assert_eq!(
        of("callback_guard_requests_received{}"),
        2,
        "requests_received counts plays too"
    );

    // Pushes, on the same Envoy: a signed start forwarded, a forged one refused,
    // counted as requests and never as plays.
    let stream = unique_stream("push");
    assert_eq!(
        post(&envoy, &v2("PubStart", &stream, Some("s1"), KS_KEY), &[]).status,
        200
    );
    let r = post(&envoy, &v2("PubStart", &stream, Some("s2"), "forged"), &[]);
    assert_eq!(
        (r.status, r.code()),
        (403, "AuthencationFailed".to_string())
    );
    let pushes = settled_series(envoy.admin);
    let of = |prefix: &str| moved(&plays, &pushes, prefix);
    assert_eq!(
        of("callback_guard_requests_forwarded{}"),
        1,
        "requests_forwarded"
    );
    assert_eq!(
        of(&rejected_series("AuthencationFailed")),
        1,
        "requests_rejected{{code=\"AuthencationFailed\"}}"
    );
    assert_eq!(
        of("callback_guard_requests_rejected{"),
        1,
        "no other refusal"
    );
    assert_eq!(
        of("callback_guard_requests_received{}"),
        2,
        "requests_received"
    );
    assert_eq!(
        of("callback_guard_plays_forwarded{}"),
        0,
        "plays_forwarded: pushes apart"
    );
    assert_eq!(
        of("callback_guard_plays_rejected{"),
        0,
        "plays_rejected: pushes apart"
    );
}

/// Observe mode forwards every callback; one that enforce mode refuses is
/// marked `x-callback-guard-would-reject: <Code>` and counted and logged as a
/// refusal. The registry still records reservations, so enforce mode later
/// starts from the truth.
#[test]
fn observe_mode_forwards_and_marks_what_enforce_mode_refuses() {
    let rx = Receiver::start();
    let mut cfg = base_config();
    cfg["mode"] = json!("observe");
    let Some(observe) = Envoy::start(EnvoyOpts::new(cfg.clone(), rx.port)) else {
        return;
    };
    let cases = [
        (
            "valid start",
            v2("PubStart", "obs", Some("s1"), KS_KEY),
            None,
        ),
        (
            "forged token",
            v2("PubStart", "obs-forged", Some("s1"), "forged"),
            Some("AuthencationFailed"),
        ),
        (
            "second push of a live stream",
            v2("PubStart", "obs", Some("s2"), KS_KEY),
            Some("ExistStreamName"),
        ),
        (
            "unknown app",
            v2("PubStart", "obs-app", Some("s1"), KS_KEY)
                .replace("\"App\":\"live\"", "\"App\":\"vod\""),
            Some("NonExistApplication"),
        ),
        (
            "not a callback",
            "{\"App\":".to_string(),
            Some("InvalidParameterValue"),
        ),
    ];
    for (name, body, would) in &cases {
        let r = post(
            &observe,
            body,
            &[("x-callback-guard-would-reject", "spoofed")],
        );
        assert_eq!(r.status, 200, "{name}: observe mode forwards it");
        let got = rx.received();
        let last = got.last().unwrap();
        assert_eq!(last.body, body.as_bytes(), "{name}: body unchanged");
        assert_eq!(
            last.header("x-callback-guard-would-reject"),
            *would,
            "{name}"
        );
        if would.is_none() {
            assert_eq!(last.header("x-callback-guard-event"), Some("start"));
        }
    }
    assert_eq!(
        observe.counter("callback_guard_requests_rejected_AuthencationFailed"),
        1
    );
    assert_eq!(
        observe.counter("callback_guard_requests_rejected_ExistStreamName"),
        1
    );
    assert_eq!(
        observe.counter("callback_guard_requests_forwarded"),
        1,
        "only the valid one counts as forwarded"
    );
    let log = observe.log();
    assert!(
        log.contains("callback-guard rejected: code=ExistStreamName status=409 app=\"live\" stream=\"obs\" mode=observe reason="),
        "{log}"
    );

    // Enforce mode on the same configuration refuses the same callbacks.
    cfg["mode"] = json!("enforce");
    let rx2 = Receiver::start();
    let Some(enforce) = Envoy::start(EnvoyOpts::new(cfg, rx2.port)) else {
        return;
    };
    for (name, body, would) in &cases {
        let r = post(&enforce, body, &[]);
        match would {
            None => assert_eq!(r.status, 200, "{name}"),
            Some(code) => assert_eq!(r.code(), *code, "{name}"),
        }
    }
    assert_eq!(
        rx2.received().len(),
        1,
        "enforce mode forwarded only the valid start"
    );
}

/// The Grafana dashboard (deploy/grafana/callback-guard.json) queries only
/// metrics that the shipped Envoy config exports, with the labels it groups by.
#[test]
fn the_grafana_dashboard_queries_metrics_that_exist() {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/callback-guard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 14, "{exprs:?}");
    // The Plays panel: plays forwarded, and refused by code.
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("callback_guard_plays_forwarded"))
            && exprs
                .iter()
                .any(|e| e.contains("by (code)") && e.contains("callback_guard_plays_rejected")),
        "{exprs:?}"
    );
    let Some(stack) = Shipped::start() else {
        return;
    };
    // Some traffic, so that every series exists.
    let _ = stack.post(
        JSON,
        v2("PubStart", &unique_stream("dash"), None, "forged").as_bytes(),
    );
    let _ = stack.counter(&rejected_series("AuthencationFailed"));
    let stats =
        String::from_utf8_lossy(&http1(stack.admin, "GET", "/stats/prometheus", &[], b"").body)
            .into_owned();
    let mut checked = 0;
    for e in &exprs {
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("callback_guard_") || w.starts_with("envoy_wasm_"))
        {
            // The VM panels stay empty for the native build: it has no VM.
            if native() && name.starts_with("envoy_wasm_") {
                continue;
            }
            // The store latency histogram exists only with the etcd store.
            if name.starts_with("callback_guard_store_latency") {
                continue;
            }
            assert!(
                stats
                    .lines()
                    .any(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])),
                "the dashboard queries {name}, which the shipped Envoy does not export"
            );
            checked += 1;
        }
        // A panel grouped by a label: the metric it queries carries that label.
        for label in ["code", "kind"] {
            if e.contains(&format!("by ({label})")) {
                for name in e
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("callback_guard_"))
                {
                    assert!(
                        stats
                            .lines()
                            .any(|l| l.starts_with(&format!("{name}{{{label}=\""))),
                        "no `{label}` label on {name} for {e}"
                    );
                }
            }
        }
    }
    // Every query but store latency's two (etcd only); the native build has no VM:
    // its three VM reload queries stay empty.
    let expected = if native() { 10 } else { 13 };
    assert!(checked >= expected, "{checked}");
}
