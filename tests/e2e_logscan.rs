//! End-to-end: no secret or token ever reaches Envoy's log, with Envoy (and
//! so the filter) at its most verbose level, `-l trace`.
//!
//! Two Envoys (ks_md5, then hmac_sha256 push tokens), each with a shared key
//! and Standard Webhooks signatures. Every secret comes from the environment
//! (`secret_env`), as the README recommends, so none is in Envoy's own
//! configuration. Valid and invalid callbacks carry known tokens; afterwards
//! the whole log is searched for every secret, every expected signature and
//! every presented token.
//!
//! Envoy itself prints each request's headers at debug and trace level (the
//! HTTP/1 codec's `completed header`, the connection manager's header dump,
//! the router's `match for URL`), `:path` included. A shared key or webhook
//! signature that the sender presents in a header or the query therefore
//! shows in those lines of Envoy's own; the test checks that it never shows
//! in a line of the filter's. Push keys, the webhook secret, expected
//! signatures and body-borne tokens must appear nowhere at all. A second test
//! puts only the filter at trace (`--component-log-level wasm:trace`); then
//! nothing presented or configured may appear anywhere in the log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine as _;
use callback_guard::auth::{token, webhook};
use callback_guard::config::Scheme;
use serde_json::json;
use support::*;

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";
const KS: &str = "LogScanKs0123456789";
const HMAC: &str = "LogScanHmacKey-0123456789abcdef";
const SHARED: &str = "LogScanShared-4242";
const WRONG_SHARED: &str = "WrongShared-9999";
const WEBHOOK_RAW: &str = "LogScanWebhookSecret-0123456789";

fn whsec() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(WEBHOOK_RAW)
    )
}

/// A start for `stream` with the given push params (already a JSON object).
fn body(stream: &str, params: &str) -> String {
    format!(
        r#"{{"Version":"1.0","App":"live","Pubdomain":"push.example.com","Stream":"{stream}","PubStartUnixTime":{}000,"NotifyType":"PubStart","ClientIp":" ","ClientPort":" ","Node":" ","Sequence":"seq-{stream}","PubParam":{params}}}"#,
        now_s()
    )
}

struct Sent {
    /// Values that must appear nowhere in the log.
    never: Vec<String>,
    /// Values presented in headers or the query: allowed only in Envoy's own
    /// header dumps.
    in_headers: Vec<String>,
}

/// Sends `body` with a webhook signature (valid, or made with `hook_secret`)
/// and the shared key (`shared`) in the header and the query.
fn send(
    envoy: &Envoy,
    ct: &str,
    body: &str,
    shared: &str,
    hook_secret: &[u8],
    sent: &mut Sent,
) -> Response {
    let ts = now_s();
    let id = format!("msg_{}", sent.in_headers.len());
    let sig = webhook::sign(hook_secret, &id, ts, body.as_bytes());
    sent.in_headers
        .push(sig.trim_start_matches("v1,").to_string());
    sent.in_headers.push(shared.to_string());
    let ts = ts.to_string();
    // Read by content-length: waiting for Envoy to close would cost its
    // delayed-close timeout on every local reply.
    KeepAlive::new(envoy.port).request(
        "POST",
        &format!("/callback?auth_key={shared}"),
        &[
            ("content-type", ct),
            ("x-cdn-key", shared),
            ("webhook-id", &id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &sig),
        ],
        body.as_bytes(),
    )
}

fn start_envoy(scheme: &str, rx: &Receiver, verbose: Verbose) -> Option<Envoy> {
    let cfg = json!({
        "apps": ["live"],
        "formats": ["kls_v2", "kls_v1"],
        "push_auth": {"scheme": scheme, "keys": [
            {"id": "old", "secret_env": "CG_LOGSCAN_OLD"},
            {"id": "main", "secret_env": "CG_LOGSCAN_PUSH"}]},
        "callback_auth": {
            "shared_key": {"header": "x-cdn-key", "query_param": "auth_key",
                           "keys": [{"id": "cdn", "secret_env": "CG_LOGSCAN_SHARED"}]},
            "webhook_signature": {"keys": [{"id": "wh", "secret_env": "CG_LOGSCAN_WEBHOOK"}]}
        }
    });
    let mut opts = EnvoyOpts::new(cfg, rx.port);
    match verbose {
        Verbose::All => opts.log_level = "trace".into(),
        Verbose::FilterOnly => {
            opts.component_log_level = Some(format!("{}:trace", filter_log_component()))
        }
    }
    opts.concurrency = 1;
    let push = if scheme == "ks_md5" { KS } else { HMAC };
    let old = if scheme == "ks_md5" {
        "OldKs987654321"
    } else {
        "OldHmacKey-987654321-abcdef"
    };
    for (k, v) in [
        ("CG_LOGSCAN_PUSH", push.to_string()),
        ("CG_LOGSCAN_OLD", old.to_string()),
        ("CG_LOGSCAN_SHARED", SHARED.to_string()),
        ("CG_LOGSCAN_WEBHOOK", whsec()),
    ] {
        opts.env.push((k.into(), v));
        opts.host_env_keys.push(k.into());
    }
    Envoy::start(opts)
}

/// Who logs at trace: all of Envoy, or only the filter (`wasm`), the rest at info.
#[derive(Clone, Copy)]
enum Verbose {
    All,
    FilterOnly,
}

/// `t`, the signature param and its value, for `stream` signed with `key`.
fn sign(scheme: Scheme, key: &str, stream: &str, expires: u64) -> (String, String, String) {
    let q = token::sign(scheme, key.as_bytes(), "live", stream, expires);
    let mut parts = q.split('&');
    let t = parts.next().unwrap().trim_start_matches("t=").to_string();
    let (name, value) = parts.next().unwrap().split_once('=').unwrap();
    (t, name.to_string(), value.to_string())
}

/// Sends valid and invalid callbacks; returns what must not leak.
fn exercise(envoy: &Envoy, scheme: Scheme, key: &str) -> Sent {
    let mut sent = Sent {
        never: vec![
            KS.into(),
            HMAC.into(),
            WEBHOOK_RAW.into(),
            whsec(),
            "OldKs987654321".into(),
            "OldHmacKey-987654321-abcdef".into(),
        ],
        in_headers: Vec::new(),
    };
    let hook = WEBHOOK_RAW.as_bytes();
    let exp = now_s() + 600;
    let expect = |r: Response, status: u16, what: &str| {
        assert_eq!(
            r.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
    };

    // valid JSON start: token presented in the body
    let (t, name, sig) = sign(scheme, key, "scan1", exp);
    sent.never.push(sig.clone());
    let b = body("scan1", &format!(r#"{{"t":"{t}","{name}":"{sig}"}}"#));
    expect(send(envoy, JSON, &b, SHARED, hook, &mut sent), 200, "valid");

    // forged token: both the presented and the expected signature are secret
    let (t, name, forged) = sign(scheme, "ForgedKey0123456789abcdef", "scan2", exp);
    let (_, _, expected) = sign(scheme, key, "scan2", exp);
    sent.never.push(forged.clone());
    sent.never.push(expected);
    let b = body("scan2", &format!(r#"{{"t":"{t}","{name}":"{forged}"}}"#));
    expect(
        send(envoy, JSON, &b, SHARED, hook, &mut sent),
        403,
        "forged",
    );

    // expired token, upper-case token, token of the old key for another stream
    let (t, name, old_sig) = sign(scheme, key, "scan3", now_s() - 3600);
    sent.never.push(old_sig.clone());
    let b = body("scan3", &format!(r#"{{"t":"{t}","{name}":"{old_sig}"}}"#));
    expect(
        send(envoy, JSON, &b, SHARED, hook, &mut sent),
        403,
        "expired",
    );
    let (t, name, upper) = sign(scheme, key, "scan4", exp);
    let upper = upper.to_uppercase();
    sent.never.push(upper.clone());
    let b = body("scan4", &format!(r#"{{"t":"{t}","{name}":"{upper}"}}"#));
    expect(send(envoy, JSON, &b, SHARED, hook, &mut sent), 403, "upper");

    // wrong shared key, wrong webhook secret (sender checks)
    let (t, name, sig5) = sign(scheme, key, "scan5", exp);
    sent.never.push(sig5.clone());
    let b = body("scan5", &format!(r#"{{"t":"{t}","{name}":"{sig5}"}}"#));
    expect(
        send(envoy, JSON, &b, WRONG_SHARED, hook, &mut sent),
        403,
        "wrong shared key",
    );
    expect(
        send(envoy, JSON, &b, SHARED, b"NotTheWebhookSecret", &mut sent),
        403,
        "wrong webhook secret",
    );

    // valid and forged forms: token as extra fields
    let (t, name, sig6) = sign(scheme, key, "scan6", exp);
    sent.never.push(sig6.clone());
    let form = format!("app=live&name=scan6&swfurl=nil&flashver=nil&tcurl=rtmp://push.example.com/live&call=user_publish&vdoid=v6&t={t}&{name}={sig6}");
    expect(
        send(envoy, FORM, &form, SHARED, hook, &mut sent),
        200,
        "form",
    );
    let (t, name, forged7) = sign(scheme, "ForgedKey0123456789abcdef", "scan7", exp);
    sent.never.push(forged7.clone());
    let form = format!("app=live&name=scan7&swfurl=nil&flashver=nil&tcurl=rtmp://push.example.com/live&call=user_publish&vdoid=v7&t={t}&{name}={forged7}");
    expect(
        send(envoy, FORM, &form, SHARED, hook, &mut sent),
        403,
        "forged form",
    );
    // a body that fails to parse around a token
    let b = format!(r#"{{"PubParam":{{"t":"{t}","{name}":"{forged7}"}},"Stream":"#);
    expect(
        send(envoy, JSON, &b, SHARED, hook, &mut sent),
        400,
        "broken",
    );
    sent
}

/// Problems in the log: a secret or body token anywhere, or a header-borne
/// value in a line the filter wrote. Continuation lines (a multi-line
/// message) belong to the timestamped line above them.
fn scan(log: &str, sent: &Sent) -> Vec<String> {
    let mut problems = Vec::new();
    let mut filter_line = false;
    for line in log.lines() {
        if line.starts_with("[20") {
            filter_line = is_filter_log_line(line);
        }
        for s in &sent.never {
            if line.contains(s.as_str()) {
                problems.push(format!("secret or body token {s:?} in: {line}"));
            }
        }
        if filter_line {
            for s in &sent.in_headers {
                if line.contains(s.as_str()) {
                    problems.push(format!(
                        "header-borne value {s:?} in the filter's line: {line}"
                    ));
                }
            }
        }
    }
    problems
}

/// Lines of Envoy's own that show a header-borne value (documented, not the filter's).
fn envoy_header_lines(log: &str, sent: &Sent) -> usize {
    log.lines()
        .filter(|l| sent.in_headers.iter().any(|s| l.contains(s.as_str())))
        .count()
}

#[test]
fn no_secret_or_token_in_envoys_trace_log() {
    let rx = Receiver::start();
    let mut problems = Vec::new();
    for (scheme_name, scheme, key) in [
        ("ks_md5", Scheme::KsMd5, KS),
        ("hmac_sha256", Scheme::HmacSha256, HMAC),
    ] {
        let Some(envoy) = start_envoy(scheme_name, &rx, Verbose::All) else {
            return;
        };
        let sent = exercise(&envoy, scheme, key);
        let log = envoy.log();
        // The filter really logged at this level: rejections and forwards.
        assert!(log.contains("callback-guard rejected: code=AuthencationFailed"));
        assert!(
            log.contains("callback-guard forwarded:"),
            "forwards log at debug"
        );
        assert!(log.contains("[trace]"), "Envoy runs at trace");
        assert!(
            log.lines().filter(|l| is_filter_log_line(l)).count() >= 10,
            "the filter's lines are in the log"
        );
        for p in scan(&log, &sent) {
            problems.push(format!("{scheme_name}: {p}"));
        }
        eprintln!(
            "log scan {scheme_name}: {} lines, {} of Envoy's own show a header-borne value",
            log.lines().count(),
            envoy_header_lines(&log, &sent)
        );
    }
    assert_eq!(rx.received().len(), 4, "two valid callbacks per Envoy");
    assert!(
        problems.is_empty(),
        "{} leaks:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The filter at its most verbose (`--component-log-level wasm:trace`) with
/// the rest of Envoy at info: then nothing presented or configured may show
/// anywhere in the log, header-borne shared keys and webhook signatures
/// included.
#[test]
fn no_secret_or_token_anywhere_with_the_filter_at_trace() {
    let rx = Receiver::start();
    let Some(envoy) = start_envoy("ks_md5", &rx, Verbose::FilterOnly) else {
        return;
    };
    let sent = exercise(&envoy, Scheme::KsMd5, KS);
    let log = envoy.log();
    assert!(log.contains("callback-guard rejected: code=AuthencationFailed"));
    assert!(
        log.contains("callback-guard forwarded:"),
        "the filter logs forwards at this level"
    );
    assert!(
        !log.contains("[trace][http]"),
        "only the filter runs at trace"
    );
    let leaks: Vec<String> = log
        .lines()
        .filter_map(|line| {
            let s = sent
                .never
                .iter()
                .chain(&sent.in_headers)
                .find(|s| line.contains(s.as_str()))?;
            Some(format!("{s:?} in: {line}"))
        })
        .collect();
    assert!(!sent.in_headers.is_empty() && !sent.never.is_empty());
    assert_eq!(rx.received().len(), 2, "two valid callbacks");
    assert!(
        leaks.is_empty(),
        "{} leaks:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}
