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

/// lifecycle oracle "plays are counted apart" (issue 22): a signed play
/// whose verified headers cannot be written is refused 500, and was counted
/// `requests_rejected.InternalError` instead of `plays_rejected.InternalError`:
/// `Stream::forwarded` refused with a `Rejection::new(…)`, which carried no
/// event. It now carries the forward's.
#[test]
fn a_play_whose_headers_cannot_be_written_counts_as_a_play() {
    use callback_guard::auth::token;
    use callback_guard::config::Scheme;
    use callback_guard::lifecycle::{Effect, Event, Facts, Level, Metric, Plugin, Stream};

    let (p, _) = Plugin::configure(
        br#"{"formats":["nginx_rtmp"],"play_auth":{"scheme":"ks_md5","keys":[{"id":"viewer","secret":"playKey456"}]}}"#,
        &|_: &str| None,
        Level::Info,
    )
    .unwrap();
    let q = token::sign(Scheme::KsMd5, b"playKey456", "live", "cam1", NOW + 600);
    let body = format!(
        "app=live&flashver=LNX%209,0,124,2&swfurl=&tcurl=rtmp://127.0.0.1:1935/live&pageurl=&addr=127.0.0.1&clientid=3&call=play&name=cam1&start=4294965296&duration=0&reset=0&{q}"
    )
    .into_bytes();
    let store = MemoryStore::new();
    if let Some(layout) = p.local_registry() {
        callback_guard::registry::create_buckets(&store, &layout);
    }
    let mut st = Stream::new();
    let mut counts = Vec::new();
    let mut replies = Vec::new();
    let mut run = |st: &mut Stream, e: Event<'_>| {
        st.handle(&p, e);
        while let Some(effect) = st.poll() {
            match effect {
                Effect::Need(n) => {
                    let facts = Facts {
                        body: Ok(body[..n.body.min(body.len())].to_vec()),
                        source: n.source.then(|| "127.0.0.1".parse().unwrap()),
                        now_ms: n.now.then_some(NOW * 1000),
                        total_size: n.total_size.then_some(body.len() + 40),
                        response_code: None,
                    };
                    st.handle(&p, Event::Facts(facts));
                }
                // The host cannot add the verified headers.
                Effect::Write(_) => st.handle(&p, Event::Written(Err("status 2".into()))),
                Effect::Local { op, claim, now_s } => {
                    let ds = &p.config.duplicate_streams;
                    let a = callback_guard::registry::shared::run(&store, ds, op, &claim, now_s);
                    st.handle(&p, Event::Registry(a));
                }
                Effect::Reply { status, .. } => replies.push(status),
                Effect::Count(m) => counts.push(m),
                _ => {}
            }
        }
    };
    let headers = vec![
        (":method".to_string(), "POST".to_string()),
        (":path".to_string(), "/callback".to_string()),
        (
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        ),
    ];
    run(
        &mut st,
        Event::Headers {
            headers,
            bytes: 40,
            end_of_stream: false,
        },
    );
    run(
        &mut st,
        Event::Body {
            size: body.len(),
            end_of_stream: true,
        },
    );
    assert_eq!(replies, [500]);
    assert!(
        counts.contains(&Metric::PlayRejected(Code::InternalError)),
        "a refused play counted {counts:?}"
    );
    assert!(
        !counts.contains(&Metric::Rejected(Code::InternalError)),
        "a refused play counted as a push: {counts:?}"
    );
}

/// Found while writing decide_config's cross-purpose oracle (issue 22):
/// play keys were kept apart from push keys by comparing secrets for
/// equality, but ks_md5 signs `md5(key + stream + t)`, a plain
/// concatenation. A play secret that extends a push secret (`pushKey1` and
/// `pushKey1c`) was accepted, and a play token for stream `am1` was then a
/// valid push token for stream `cam1`: a viewer holding a play URL could
/// push. Such keys are now refused when the configuration loads, both ways.
#[test]
fn a_ks_md5_play_secret_extending_a_push_secret_opens_no_push() {
    use callback_guard::auth::token;
    use callback_guard::config::Scheme;

    // The tokens are the same: the reason for the refusal.
    assert_eq!(
        token::sign(Scheme::KsMd5, b"pushKey1c", "live", "am1", NOW + 600),
        token::sign(Scheme::KsMd5, b"pushKey1", "live", "cam1", NOW + 600)
    );
    for (push, play) in [("pushKey1", "pushKey1c"), ("pushKey1c", "pushKey1")] {
        let json = format!(
            r#"{{"formats":["nginx_rtmp"],
            "push_auth":{{"scheme":"ks_md5","keys":[{{"id":"pusher","secret":"{push}"}}]}},
            "play_auth":{{"scheme":"ks_md5","keys":[{{"id":"viewer","secret":"{play}"}}]}}}}"#
        );
        let errs = Config::from_json(json.as_bytes(), &|_: &str| None).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "play_auth.keys[0]");
        let msg = errs[0].to_string();
        assert!(
            msg.contains("`viewer`") && msg.contains("`pusher`") && msg.contains("begins with"),
            "{msg}"
        );
        assert!(!msg.contains("pushKey1"), "no secret in the message: {msg}");
    }
}

/// The same gap under hmac_sha256: HMAC pads a key shorter than its block
/// with zero bytes, so `K` and `K\0` are the same key. A play secret equal
/// to a push secret but for a trailing NUL was accepted (the secrets differ
/// as bytes), and every push token then opened a play. Refused now, as is a
/// key over 64 bytes beside its SHA-256 (the key HMAC then uses).
#[test]
fn hmac_secrets_equal_up_to_trailing_nul_bytes_are_the_same_key() {
    let json = br#"{"formats":["nginx_rtmp"],
        "push_auth":{"scheme":"hmac_sha256","keys":[{"id":"pusher","secret":"pushHmacKey-0123456789"}]},
        "play_auth":{"scheme":"hmac_sha256","keys":[{"id":"viewer","secret":"pushHmacKey-0123456789\u0000"}]}}"#;
    let errs = Config::from_json(json, &|_: &str| None).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "play_auth.keys[0]");
    assert!(errs[0].problem.contains("the same HMAC key"), "{}", errs[0]);
    assert!(!errs[0].to_string().contains("pushHmacKey"), "{}", errs[0]);
}
