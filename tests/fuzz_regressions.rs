//! Regressions found by the fuzz targets in `fuzz/` (see docs/development.md, "Hardening").
//! Each test replays the input that broke an oracle, through the public API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use callback_guard::registry::MemoryStore;
use callback_guard::reply::Code;
use callback_guard::{decide, Config, Request, Verdict};

const NOW: u64 = 1_700_000_000;

fn run(config: &Config, content_type: &str, body: &[u8]) -> Verdict {
    let req = Request {
        method: "POST",
        path: "/callback",
        content_type: Some(content_type),
        headers: &[],
        body,
        source: None,
    };
    decide(config, &req, NOW, &MemoryStore::new())
}

/// decide_json oracle "every core field is named by exactly one member":
/// `Stream` and `stream` in one body were forwarded. The guard checked
/// `Stream`; a reader that folds case (Go's encoding/json, which also folds
/// `ſ` to `s`) takes the last of them, so the upstream could act on a stream
/// the guard never checked.
#[test]
fn a_core_field_repeated_in_another_case_is_refused() {
    let config = Config::default_config();
    for body in [
        r#"{"App":"live","Pubdomain":"d.com","Stream":"a","PubStartUnixTime":1700000000000,"NotifyType":"PubStart","stream":"b"}"#,
        r#"{"App":"live","Pubdomain":"d.com","ſtream":"b","Stream":"a","PubStartUnixTime":1700000000000,"NotifyType":"PubStart"}"#,
        r#"{"App":"live","APP":"x","Pubdomain":"d.com","Stream":"a","PubStartUnixTime":1700000000000,"NotifyType":"PubStart"}"#,
        r#"{"App":"live","Pubdomain":"d.com","Stream":"a","PubStartUnixTime":1700000000000,"NotifyType":"PubStart","PubParam":{},"pubparam":{"t":"1"}}"#,
    ] {
        match run(&config, "application/json", body.as_bytes()) {
            Verdict::Reject(r) => {
                assert_eq!(r.code, Code::InvalidParameterValue, "{body}");
                assert!(
                    r.message.contains("is given more than once"),
                    "{}",
                    r.message
                );
            }
            Verdict::Forward(f) => panic!("forwarded {body}: {f:?}"),
        }
    }
    // The exact names once each, plus unrelated lowercase fields: still fine.
    let ok = r#"{"App":"live","Pubdomain":"d.com","Stream":"a","PubStartUnixTime":1700000000000,"NotifyType":"PubStart","streams":"x","apps":1}"#;
    assert!(matches!(
        run(&config, "application/json", ok.as_bytes()),
        Verdict::Forward(_)
    ));
}

/// decide_config oracle "a configuration error is one log line": key ids
/// and other quoted configuration text went into the message verbatim, so a
/// newline in a key id split Envoy's critical log line.
#[test]
fn configuration_errors_stay_on_one_line() {
    let env = |_: &str| None;
    for cfg in [
        // the fuzzer's input, reduced
        r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"\u0017i\n\u0017i\n\u0011","secret":""}]}}"#,
        r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"a\nb"}]}}"#,
        r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"a\r\nb","secret_env":"X\nY"}]}}"#,
        r#"{"formats":["kls_v2\n[critical] forged"]}"#,
        r#"{"push_auth":{"scheme":"md5\nx","keys":[]}}"#,
        r#"{"apps":["a\u0000b"]}"#,
    ] {
        let errs = Config::from_json(cfg.as_bytes(), &env).unwrap_err();
        for e in errs {
            let line = e.to_string();
            assert!(!line.chars().any(char::is_control), "{cfg}: {line:?}");
        }
    }
}

/// Found while probing the worst case of a 64 KB body: every push param was
/// looked up linearly, so a form or `PubParam` with thousands of params cost
/// tens of milliseconds (quadratic). Params are indexed now; the behaviour on
/// repeats stays the same.
#[test]
fn thousands_of_push_params_parse_with_repeats_checked() {
    let config = Config::default_config();
    let mut form = "app=live&name=s&tcurl=rtmp://h/live&call=user_publish".to_string();
    let mut i = 0;
    while form.len() < 60_000 {
        form.push_str(&format!("&p{i:x}=1"));
        i += 1;
    }
    assert!(matches!(
        run(
            &config,
            "application/x-www-form-urlencoded",
            form.as_bytes()
        ),
        Verdict::Forward(_)
    ));
    let same = format!("{form}&p0=1");
    assert!(matches!(
        run(
            &config,
            "application/x-www-form-urlencoded",
            same.as_bytes()
        ),
        Verdict::Forward(_)
    ));
    let conflicting = format!("{form}&p0=2");
    match run(
        &config,
        "application/x-www-form-urlencoded",
        conflicting.as_bytes(),
    ) {
        Verdict::Reject(r) => assert!(r.message.contains("URL param `p0`"), "{}", r.message),
        Verdict::Forward(_) => panic!("conflicting repeat forwarded"),
    }
    let params: Vec<String> = (0..4000).map(|i| format!("\"q{i}\":{i}")).collect();
    let json = format!(
        r#"{{"App":"live","Pubdomain":"d.com","Stream":"s","PubStartUnixTime":1700000000000,"NotifyType":"PubStart","PubParam":{{{},"q3999":"3999","q1":2}}}}"#,
        params.join(",")
    );
    match run(&config, "application/json", json.as_bytes()) {
        Verdict::Reject(r) => assert!(r.message.contains("URL param `q1`"), "{}", r.message),
        Verdict::Forward(_) => panic!("conflicting repeat forwarded"),
    }
}
