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
/// whose verified headers cannot be written is refused 500, and counted
/// `requests_rejected.InternalError` instead of `plays_rejected.InternalError`:
/// `Stream::forwarded` refuses with a `Rejection::new(…)`, which carries no
/// event, so `Rejection::is_play` is false. Every other refusal of a play is
/// a play's.
#[test]
#[ignore = "core bug, not fixed yet: a play refused after its headers failed to write is counted as a push refusal"]
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
/// play keys are kept apart from push keys by comparing secrets for
/// equality, but ks_md5 signs `md5(key + stream + t)`, a plain
/// concatenation. A play secret that extends a push secret (`pushKey1` and
/// `pushKey1c`) is accepted, and a play token for stream `am1` is then a
/// valid push token for stream `cam1`: a viewer holding a play URL can push.
/// Either fix holds the test: the configuration refused (a play secret
/// starting with a push secret, or the reverse, under ks_md5), or the push
/// refused.
#[test]
#[ignore = "core gap, not fixed yet: ks_md5 play and push secrets where one extends the other are accepted"]
fn a_ks_md5_play_secret_extending_a_push_secret_opens_no_push() {
    use callback_guard::auth::token;
    use callback_guard::config::Scheme;

    let json = br#"{"formats":["nginx_rtmp"],
        "push_auth":{"scheme":"ks_md5","keys":[{"id":"pusher","secret":"pushKey1"}]},
        "play_auth":{"scheme":"ks_md5","keys":[{"id":"viewer","secret":"pushKey1c"}]}}"#;
    let Ok(config) = Config::from_json(json, &|_: &str| None) else {
        return; // refused: fixed in the configuration
    };
    // A play URL for stream `am1`, as `callback-guard sign --for play` mints it.
    let play = token::sign(Scheme::KsMd5, b"pushKey1c", "live", "am1", NOW + 600);
    let form = |call: &str, name: &str, own: &str| {
        format!(
            "app=live&flashver=&swfurl=&tcurl=rtmp://127.0.0.1:1935/live&pageurl=&addr=127.0.0.1&clientid=3&call={call}&name={name}{own}&{play}"
        )
    };
    let ct = "application/x-www-form-urlencoded";
    let v = run(
        &config,
        ct,
        form("play", "am1", "&start=0&duration=0&reset=0").as_bytes(),
    );
    assert!(matches!(v, Verdict::Forward(_)), "the play itself: {v:?}");
    // The same t and k on a publish of `cam1`.
    match run(
        &config,
        ct,
        form("publish", "cam1", "&type=live").as_bytes(),
    ) {
        Verdict::Reject(r) => assert_eq!(r.code, Code::AuthencationFailed),
        Verdict::Forward(f) => panic!("a play token opened a push: {f:?}"),
    }
}

/// The same gap under hmac_sha256: HMAC pads a key shorter than its block
/// with zero bytes, so `K` and `K\0` are the same key. A play secret equal
/// to a push secret but for a trailing NUL is accepted (the secrets differ
/// as bytes), and every push token then opens a play, for the same app and
/// stream.
#[test]
#[ignore = "core gap, not fixed yet: hmac_sha256 secrets equal up to trailing NUL bytes are kept apart as different"]
fn hmac_secrets_equal_up_to_trailing_nul_bytes_are_the_same_key() {
    use callback_guard::auth::token;
    use callback_guard::config::Scheme;

    let json = br#"{"formats":["nginx_rtmp"],
        "push_auth":{"scheme":"hmac_sha256","keys":[{"id":"pusher","secret":"pushHmacKey-0123456789"}]},
        "play_auth":{"scheme":"hmac_sha256","keys":[{"id":"viewer","secret":"pushHmacKey-0123456789\u0000"}]}}"#;
    let Ok(config) = Config::from_json(json, &|_: &str| None) else {
        return; // refused: fixed in the configuration
    };
    let push = token::sign(
        Scheme::HmacSha256,
        b"pushHmacKey-0123456789",
        "live",
        "cam1",
        NOW + 600,
    );
    let play = format!(
        "app=live&flashver=&swfurl=&tcurl=rtmp://127.0.0.1:1935/live&pageurl=&addr=127.0.0.1&clientid=3&call=play&name=cam1&start=0&duration=0&reset=0&{push}"
    );
    match run(
        &config,
        "application/x-www-form-urlencoded",
        play.as_bytes(),
    ) {
        Verdict::Reject(r) => assert_eq!(r.code, Code::AuthencationFailed),
        Verdict::Forward(f) => panic!("a push token opened a play: {f:?}"),
    }
}
