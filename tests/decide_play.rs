//! Play authorization through `decide()` (issue 22): nginx-rtmp's `on_play`
//! (`call=play`, `play_done`, `update_play`) and SRS's `on_play` / `on_stop`,
//! checked with `play_auth`'s keys and never touching the stream registry.
//! tests/decide.rs style: one passing and one failing case per rule.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use callback_guard::auth::token;
use callback_guard::config::{Mode, Scheme};
use callback_guard::registry::MemoryStore;
use callback_guard::reply::Code;
use callback_guard::verdict::{Action, Forward, Rejection};
use callback_guard::{decide, Config, Request, Verdict};

const NOW: u64 = 1_700_000_000;
const PUSH_KEY: &str = "pushKey123";
const PLAY_KEY: &str = "playKey456";
const HMAC_PLAY_KEY: &str = "0123456789abcdef-play";
const FORM: &str = "application/x-www-form-urlencoded";
const CAPTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/srs");

fn config(json: &str) -> Config {
    Config::from_json(json.as_bytes(), &|_: &str| None).unwrap()
}

/// nginx-rtmp and SRS, push and play keys (ks_md5), apps, senders.
fn guarded(extra: &str) -> Config {
    config(&format!(
        r#"{{"formats":["nginx_rtmp","srs"],"apps":["live"],
            "push_auth":{{"scheme":"ks_md5","keys":[{{"id":"pusher","secret":"{PUSH_KEY}"}}]}},
            "play_auth":{{"scheme":"ks_md5","clock_skew_s":30,"keys":[{{"id":"viewer","secret":"{PLAY_KEY}"}}]}},
            "callback_auth":{{"allow_cidrs":["127.0.0.0/8"]}}{extra}}}"#
    ))
}

fn ks(key: &str, stream: &str, t: u64) -> String {
    token::sign(Scheme::KsMd5, key.as_bytes(), "live", stream, t)
}

/// The form nginx-rtmp posts for `call` (as captured from Debian's module:
/// a play carries the player's `start`, `duration`, `reset`), with `query`
/// (the player's or pusher's URL args) appended.
fn nginx(call: &str, app: &str, stream: &str, clientid: u32, query: &str) -> String {
    let own = match call {
        "play" => "&start=4294965296&duration=0&reset=0",
        "publish" => "&type=live",
        "update_play" | "update_publish" => "&time=4&timestamp=4000",
        _ => "",
    };
    format!(
        "app={app}&flashver=LNX%209,0,124,2&swfurl=&tcurl=rtmp://127.0.0.1:1935/{app}&pageurl=&addr=127.0.0.1&clientid={clientid}&call={call}&name={stream}{own}&{query}"
    )
}

fn run_from(c: &Config, body: &str, source: &str, now: u64, store: &MemoryStore) -> Verdict {
    let req = Request {
        method: "POST",
        path: "/callback",
        content_type: Some(if body.starts_with('{') {
            "application/json"
        } else {
            FORM
        }),
        headers: &[],
        body: body.as_bytes(),
        source: Some(source.parse().unwrap()),
    };
    decide(c, &req, now, store)
}

fn run(c: &Config, body: &str) -> Verdict {
    run_from(c, body, "127.0.0.1", NOW, &MemoryStore::new())
}

fn forwarded(v: &Verdict) -> &Forward {
    match v {
        Verdict::Forward(f) => f,
        Verdict::Reject(r) => panic!("expected forward, got {r:?}"),
    }
}

fn refused(v: &Verdict) -> &Rejection {
    match v {
        Verdict::Reject(r) => r,
        Verdict::Forward(f) => panic!("expected a refusal, got {f:?}"),
    }
}

fn header<'a>(f: &'a Forward, name: &str) -> &'a str {
    f.headers()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .map_or("", |v| Box::leak(v.into_boxed_str()))
}

/// A captured SRS hook body (tests/fixtures/srs) with its `param` replaced.
fn srs_capture(name: &str, param: &str) -> String {
    let raw = std::fs::read_to_string(format!("{CAPTURES}/{name}")).unwrap();
    let body = raw.split("\r\n\r\n").nth(1).unwrap();
    body.replace(
        r#""param":"?token=play1&x=y""#,
        &format!(r#""param":"{param}""#),
    )
}

#[test]
fn a_signed_play_is_forwarded_with_its_own_headers() {
    let c = guarded("");
    let q = ks(PLAY_KEY, "cam1", NOW + 600);
    let v = run(&c, &nginx("play", "live", "cam1", 3, &q));
    let f = forwarded(&v);
    assert_eq!(f.event.as_str(), "play");
    assert_eq!(f.key_id.as_deref(), Some("viewer"));
    assert_eq!(f.verified, ["sender_cidr", "format", "app", "play_token"]);
    assert_eq!(header(f, "x-callback-guard-event"), "play");
    assert_eq!(header(f, "x-callback-guard-format"), "nginx_rtmp");
    assert_eq!(header(f, "x-callback-guard-key-id"), "viewer");
    assert_eq!(
        header(f, "x-callback-guard-verified"),
        "sender_cidr,format,app,play_token"
    );
    assert_eq!(f.reservation, None, "a play reserves nothing");
    for (call, event) in [("play_done", "play_end"), ("update_play", "play_update")] {
        let v = run(&c, &nginx(call, "live", "cam1", 3, &q));
        let f = forwarded(&v);
        assert_eq!(header(f, "x-callback-guard-event"), event, "{call}");
        assert_eq!(f.key_id.as_deref(), Some("viewer"), "{call}");
    }
}

#[test]
fn forged_expired_and_wrong_stream_plays_are_refused() {
    let c = guarded("");
    let t = NOW + 600;
    let forged = format!("t={t}&k=0123456789abcdef");
    let other_stream = ks(PLAY_KEY, "cam2", t);
    let expired = ks(PLAY_KEY, "cam1", NOW - 31);
    for (q, why) in [
        (&forged, "play token signature does not match"),
        (&other_stream, "play token signature does not match"),
        (&expired, "play token expired"),
        (&"x=1".to_string(), "play token: missing parameter `t`"),
    ] {
        let r = refused(&run(&c, &nginx("play", "live", "cam1", 3, q))).clone();
        assert_eq!(
            (r.code, r.message.as_str()),
            (Code::AuthencationFailed, why)
        );
        assert!(r.is_play());
        if let Some((_, k)) = q.split_once("k=") {
            assert!(
                !r.message.contains(k) && !r.log_line().contains(k),
                "no token value"
            );
        }
    }
    // The clock skew is play_auth's own (30 s).
    let just = ks(PLAY_KEY, "cam1", NOW - 30);
    forwarded(&run(&c, &nginx("play", "live", "cam1", 3, &just)));
    // A refused play's log line says it was a play.
    let r = refused(&run(&c, &nginx("play", "live", "cam1", 3, &forged))).clone();
    assert!(
        r.log_line().starts_with(
            r#"callback-guard rejected: code=AuthencationFailed status=403 app="live" stream="cam1" event=play reason=play token signature"#
        ),
        "{}",
        r.log_line()
    );
}

#[test]
fn play_ends_and_updates_are_not_bound_by_the_expiry_but_by_the_signature() {
    let c = guarded("");
    let long_ago = ks(PLAY_KEY, "cam1", NOW - 5 * 3600);
    for call in ["play_done", "update_play"] {
        forwarded(&run(&c, &nginx(call, "live", "cam1", 3, &long_ago)));
        let forged = format!("t={}&k=0123456789abcdef", NOW - 5 * 3600);
        let r = refused(&run(&c, &nginx(call, "live", "cam1", 3, &forged))).clone();
        assert_eq!(r.code, Code::AuthencationFailed, "{call}");
    }
    // SRS's on_stop the same.
    let stop = srs_capture(
        "on_stop.http",
        &format!("?{}", ks(PLAY_KEY, "test1", NOW - 7200)),
    );
    let f = forwarded(&run(&c, &stop)).clone();
    assert_eq!(header(&f, "x-callback-guard-event"), "play_end");
}

/// A play token never opens a push, a push token is never a play token:
/// both ways, with the other key's refusal saying which mix-up it was.
#[test]
fn push_and_play_tokens_never_stand_in_for_each_other() {
    let c = guarded("");
    let t = NOW + 600;
    let push_token = ks(PUSH_KEY, "cam1", t);
    let play_token = ks(PLAY_KEY, "cam1", t);

    let r = refused(&run(&c, &nginx("play", "live", "cam1", 3, &push_token))).clone();
    assert_eq!(r.code, Code::AuthencationFailed);
    assert!(
        r.message
            .starts_with("play token signature does not match: it is a push token"),
        "{}",
        r.message
    );
    let r = refused(&run(&c, &nginx("publish", "live", "cam1", 1, &play_token))).clone();
    assert_eq!(r.code, Code::AuthencationFailed);
    assert!(
        r.message
            .starts_with("push token signature does not match: it is a play token"),
        "{}",
        r.message
    );
    // Ends too: a push's end with a play token, a play's end with a push token.
    refused(&run(
        &c,
        &nginx("publish_done", "live", "cam1", 1, &play_token),
    ));
    refused(&run(
        &c,
        &nginx("play_done", "live", "cam1", 3, &push_token),
    ));
    // The same over SRS.
    let r = refused(&run(
        &c,
        &srs_capture(
            "on_play.http",
            &format!("?{push_token}").replace("cam1", "test1"),
        ),
    ))
    .clone();
    assert_eq!(r.code, Code::AuthencationFailed);
    // And each with its own key passes.
    forwarded(&run(&c, &nginx("play", "live", "cam1", 3, &play_token)));
    forwarded(&run(&c, &nginx("publish", "live", "cam1", 1, &push_token)));
}

/// hmac_sha256 play keys, `kid` and key scoping, as for pushes.
#[test]
fn play_keys_are_chosen_and_scoped_like_push_keys() {
    let c = config(&format!(
        r#"{{"formats":["nginx_rtmp"],
            "play_auth":{{"scheme":"hmac_sha256","keys":[
              {{"id":"live-viewers","secret":"{HMAC_PLAY_KEY}","apps":["live"]}},
              {{"id":"vip","secret":"{HMAC_PLAY_KEY}-vip","domains":["127.0.0.1"]}}]}}}}"#
    ));
    let t = NOW + 60;
    let sign =
        |key: &str, app: &str| token::sign(Scheme::HmacSha256, key.as_bytes(), app, "cam1", t);
    let f = forwarded(&run(
        &c,
        &nginx("play", "live", "cam1", 3, &sign(HMAC_PLAY_KEY, "live")),
    ))
    .clone();
    assert_eq!(f.key_id.as_deref(), Some("live-viewers"));
    // The live key does not apply to app `vod`.
    let r = refused(&run(
        &c,
        &nginx("play", "vod", "cam1", 3, &sign(HMAC_PLAY_KEY, "vod")),
    ))
    .clone();
    assert_eq!(r.message, "play token signature does not match");
    let vip = format!("{HMAC_PLAY_KEY}-vip");
    let f = forwarded(&run(
        &c,
        &nginx(
            "play",
            "vod",
            "cam1",
            3,
            &format!("{}&kid=vip", sign(&vip, "vod")),
        ),
    ))
    .clone();
    assert_eq!(f.key_id.as_deref(), Some("vip"));
    let r = refused(&run(
        &c,
        &nginx(
            "play",
            "live",
            "cam1",
            3,
            &format!("{}&kid=gone", sign(&vip, "live")),
        ),
    ))
    .clone();
    assert_eq!(
        r.message,
        "play token: `kid` names no key valid for this app and domain"
    );
    // Without push_auth, pushes are not token-checked, plays still are.
    forwarded(&run(&c, &nginx("publish", "live", "cam1", 1, "x=1")));
    refused(&run(&c, &nginx("play", "live", "cam1", 3, "x=1")));
}

#[test]
fn apps_and_sender_checks_apply_to_plays() {
    let c = guarded("");
    let t = NOW + 600;
    let q = token::sign(Scheme::KsMd5, PLAY_KEY.as_bytes(), "vod", "cam1", t);
    let r = refused(&run(&c, &nginx("play", "vod", "cam1", 3, &q))).clone();
    assert_eq!(r.code, Code::NonExistApplication);
    assert!(r.is_play());
    let q = ks(PLAY_KEY, "cam1", t);
    for call in ["play", "play_done", "update_play"] {
        let v = run_from(
            &c,
            &nginx(call, "live", "cam1", 3, &q),
            "203.0.113.9",
            NOW,
            &MemoryStore::new(),
        );
        let r = refused(&v);
        assert_eq!(r.code, Code::AuthencationFailed, "{call}");
        assert_eq!(r.message, "sender address not allowed", "{call}");
    }
}

/// Plays never touch the stream registry: any number of viewers, no stream
/// freed by a play's end, no stream taken by a play.
#[test]
fn plays_never_touch_the_stream_registry() {
    let c = guarded("");
    let store = MemoryStore::new();
    let t = NOW + 600;
    let at = |body: &str| run_from(&c, body, "127.0.0.1", NOW, &store);
    // cam1 is live, pushed by client 1.
    let f = forwarded(&at(&nginx(
        "publish",
        "live",
        "cam1",
        1,
        &ks(PUSH_KEY, "cam1", t),
    )))
    .clone();
    assert!(f.reservation.is_some());
    // Two viewers play it, each its own client; one stops.
    let view = ks(PLAY_KEY, "cam1", t);
    for client in [7, 8] {
        forwarded(&at(&nginx("play", "live", "cam1", client, &view)));
    }
    forwarded(&at(&nginx("play_done", "live", "cam1", 7, &view)));
    // The same client id as the pusher, playing: still no registry.
    forwarded(&at(&nginx("play", "live", "cam1", 1, &view)));
    forwarded(&at(&nginx("play_done", "live", "cam1", 1, &view)));
    // The push still holds cam1: a second pusher is refused.
    let r = refused(&at(&nginx(
        "publish",
        "live",
        "cam1",
        2,
        &ks(PUSH_KEY, "cam1", t),
    )))
    .clone();
    assert_eq!(r.code, Code::ExistStreamName);
    assert!(!r.is_play());
    // A play of a stream nobody pushes is decided by the token alone, and
    // takes nothing: a push of that stream then gets it.
    forwarded(&at(&nginx(
        "play",
        "live",
        "cam9",
        7,
        &ks(PLAY_KEY, "cam9", t),
    )));
    let f = forwarded(&at(&nginx(
        "publish",
        "live",
        "cam9",
        2,
        &ks(PUSH_KEY, "cam9", t),
    )))
    .clone();
    assert!(f.reservation.is_some());
}

#[test]
fn observe_mode_forwards_a_bad_play_marked() {
    let c = guarded(r#","mode":"observe""#);
    assert_eq!(c.mode, Mode::Observe);
    let forged = format!("t={}&k=0123456789abcdef", NOW + 60);
    let v = run(&c, &nginx("play", "live", "cam1", 3, &forged));
    match v.under(c.mode) {
        Action::Observe(r) => {
            assert_eq!(r.code, Code::AuthencationFailed);
            assert!(r.is_play());
        }
        other => panic!("{other:?}"),
    }
}

/// SRS's captured on_play and on_stop: `param` is the player's query.
#[test]
fn srs_on_play_and_on_stop() {
    let c = guarded("");
    let q = ks(PLAY_KEY, "test1", NOW + 600);
    let f = forwarded(&run(&c, &srs_capture("on_play.http", &format!("?{q}&x=y")))).clone();
    assert_eq!(header(&f, "x-callback-guard-format"), "srs");
    assert_eq!(header(&f, "x-callback-guard-event"), "play");
    assert_eq!(f.key_id.as_deref(), Some("viewer"));
    let f = forwarded(&run(&c, &srs_capture("on_stop.http", &format!("?{q}")))).clone();
    assert_eq!(header(&f, "x-callback-guard-event"), "play_end");
    // The capture as SRS sent it: its token is no ks_md5 token.
    let r = refused(&run(&c, &srs_capture("on_play.http", "?token=play1&x=y"))).clone();
    assert_eq!(r.message, "play token: missing parameter `t`");
    // SRS's non-ASCII trap on a play: the play token never reached the hook.
    let trap = srs_capture("on_play.http", "")
        .replace(r#""stream":"test1""#, r#""stream":"test1?u=é&t=1""#);
    let r = refused(&run(&c, &trap)).clone();
    assert_eq!(r.code, Code::AuthencationFailed);
    assert!(r.message.contains("play token is missing"), "{}", r.message);
    assert!(r.is_play());
}

/// Without `play_auth`, every play callback is refused (400) with a message
/// that names it; a form play to a config without nginx_rtmp is a dialect
/// that is off.
#[test]
fn without_play_auth_plays_are_refused_naming_it() {
    let c = config(&format!(
        r#"{{"formats":["nginx_rtmp","srs"],
            "push_auth":{{"scheme":"ks_md5","keys":[{{"id":"pusher","secret":"{PUSH_KEY}"}}]}}}}"#
    ));
    let q = ks(PUSH_KEY, "cam1", NOW + 60);
    for body in [
        nginx("play", "live", "cam1", 3, &q),
        nginx("play_done", "live", "cam1", 3, &q),
        nginx("update_play", "live", "cam1", 3, &q),
        srs_capture("on_play.http", "?x=1"),
        srs_capture("on_stop.http", "?x=1"),
    ] {
        let r = refused(&run(&c, &body)).clone();
        assert_eq!(r.code, Code::InvalidParameterValue, "{body}");
        assert!(r.message.contains("`play_auth`"), "{}", r.message);
        assert!(r.is_play());
    }
    // With play_auth, nginx-rtmp's accepted `call` values include the play ones.
    let c = guarded("");
    let r = refused(&run(&c, &nginx("playing", "live", "cam1", 3, &q))).clone();
    assert!(
        r.message.contains("play, play_done or update_play"),
        "{}",
        r.message
    );
    let kls_only = config(r#"{"formats":["kls_v1"]}"#);
    let r = refused(&run(&kls_only, &nginx("play", "live", "cam1", 3, &q))).clone();
    assert!(
        r.message.contains("user_publish or user_publish_done"),
        "{}",
        r.message
    );
}
