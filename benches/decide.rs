//! Criterion benches of `decide()`: ns per call for the callbacks the filter sees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use callback_guard::auth::token;
use callback_guard::config::Scheme;
use callback_guard::registry::{self, Layout, MemoryStore, SharedStore};
use callback_guard::{decide, Config, Request, Verdict};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const NOW: u64 = 1_700_000_000;
const KS_KEY: &str = "123456";
const HMAC_KEY: &str = "0123456789abcdef0123456789abcdef";

fn config(scheme: &str, key: &str) -> Config {
    let json = format!(
        r#"{{"apps":["live"],"push_auth":{{"scheme":"{scheme}","keys":[{{"id":"k1","secret":"{key}"}}]}},
            "callback_auth":{{"allow_cidrs":["127.0.0.0/8"]}},"max_event_age_s":600}}"#
    );
    Config::from_json(json.as_bytes(), &|_: &str| None).unwrap()
}

/// The seed's PubStart sample, made current, with the token in `PubParam`.
fn seed_start(params: &str, pad: usize) -> Vec<u8> {
    format!(
        r#"{{
    "Version":"1.0",
    "App":"live",
    "Pubdomain":"xxx.xxx.com",
    "Stream":"test",
    "PubStartUnixTime":"{NOW}000",
    "NotifyType":"PubStart",
    "ClientIp":" ",
    "ClientPort":" ",
    "Node":" ",
    "Pad":"{}",
    "PubParam":{params}
}}"#,
        "x".repeat(pad)
    )
    .into_bytes()
}

fn token_params(scheme: Scheme, key: &str) -> String {
    let q = token::sign(scheme, key.as_bytes(), "live", "test", NOW + 3600);
    let mut parts = q.split('&').map(|kv| kv.split_once('=').unwrap());
    let (_, t) = parts.next().unwrap();
    let (name, sig) = parts.next().unwrap();
    format!(r#"{{"t":"{t}","{name}":"{sig}"}}"#)
}

fn run(c: &mut Criterion, name: &str, cfg: &Config, ct: &str, body: &[u8], forward: bool) {
    let source = Some("127.0.0.1".parse().unwrap());
    let headers = Vec::new();
    let req = Request {
        method: "POST",
        path: "/callback",
        content_type: Some(ct),
        headers: &headers,
        body,
        source,
    };
    // The registry is on: each iteration uses a fresh store so every start
    // reserves. The stream's bucket exists already, as the filter creates the
    // buckets when it is configured (outside the timed part, like the store).
    let layout = Layout::for_config(&cfg.duplicate_streams);
    let probe = MemoryStore::new();
    assert!(registry::create_buckets(&probe, &layout).is_empty());
    decide(cfg, &req, NOW, &probe);
    let bucket = layout
        .bucket_keys()
        .find(|k| probe.get(k).unwrap().0.is_some_and(|v| !v.is_empty()));
    let store = || {
        let s = MemoryStore::new();
        if let Some(k) = &bucket {
            s.set(k, &[], None).unwrap();
        }
        s
    };
    let check = decide(cfg, &req, NOW, &store());
    assert_eq!(
        matches!(check, Verdict::Forward(_)),
        forward,
        "{name}: {check:?}"
    );
    c.bench_function(name, |b| {
        // By reference, so dropping the store stays out of the timing too.
        b.iter_batched_ref(
            store,
            |store| black_box(decide(cfg, black_box(&req), NOW, store)),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn benches(c: &mut Criterion) {
    let ks = config("ks_md5", KS_KEY);
    let hm = config("hmac_sha256", HMAC_KEY);
    let json = "application/json";
    let ks_body = seed_start(&token_params(Scheme::KsMd5, KS_KEY), 0);
    run(c, "v2_pubstart_ks_md5", &ks, json, &ks_body, true);
    run(
        c,
        "v2_pubstart_hmac_sha256",
        &hm,
        json,
        &seed_start(&token_params(Scheme::HmacSha256, HMAC_KEY), 0),
        true,
    );
    let q = token::sign(Scheme::KsMd5, KS_KEY.as_bytes(), "live", "asdf", NOW + 3600);
    let form = format!(
        "app=live&name=asdf&swfurl=nil&flashver=nil&tcurl=rtmp://test.uplive.ks-cdn.com/live&call=user_publish&vdoid=123456&{q}"
    );
    run(
        c,
        "v1_form_ks_md5",
        &ks,
        "application/x-www-form-urlencoded",
        form.as_bytes(),
        true,
    );
    let bad = seed_start(r#"{"t":"1700003600","k":"0123456789abcdef"}"#, 0);
    run(c, "v2_rejected_bad_token", &ks, json, &bad, false);
    let big = seed_start(&token_params(Scheme::KsMd5, KS_KEY), 64 * 1024 - 400);
    let mut cfg64 = ks.clone();
    cfg64.max_body_bytes = 128 * 1024;
    run(c, "v2_pubstart_64kb_body", &cfg64, json, &big, true);

    // SRS http_hooks (issue 21): the dialect's JSON parse against KLS's, on
    // the bodies the senders send (SRS's captured on_publish, the KLS seed),
    // then whole decisions.
    let srs_body = srs_publish(&format!(
        "?{}",
        token::sign(Scheme::KsMd5, KS_KEY.as_bytes(), "live", "test", NOW + 3600)
    ));
    c.bench_function("parse_kls_v2_json", |b| {
        b.iter(|| black_box(callback_guard::callback::parse_json(black_box(&ks_body))))
    });
    c.bench_function("parse_srs_json", |b| {
        b.iter(|| black_box(callback_guard::callback::parse_srs(black_box(&srs_body))))
    });
    let mut srs = ks.clone();
    srs.formats.srs = true;
    srs.formats.kls_v2 = false;
    srs.max_event_age_s = 0;
    run(c, "srs_on_publish_ks_md5", &srs, json, &srs_body, true);
    let mut both = ks.clone();
    both.formats.srs = true;
    run(
        c,
        "v2_pubstart_ks_md5_srs_also_on",
        &both,
        json,
        &ks_body,
        true,
    );
    run(
        c,
        "srs_on_publish_ks_md5_kls_also_on",
        &both,
        json,
        &srs_body,
        true,
    );

    // Plays (issue 22): an nginx-rtmp play against a publish of the same
    // shape, and a play with a push token (refused after a second check that
    // names the mix-up).
    let play_key = "play0key7";
    let mut plays = ks.clone();
    plays.formats.nginx_rtmp = true;
    let play_cfg = format!(
        r#"{{"play_auth":{{"scheme":"ks_md5","keys":[{{"id":"v1","secret":"{play_key}"}}]}}}}"#
    );
    plays.play_auth = Config::from_json(play_cfg.as_bytes(), &|_: &str| None)
        .unwrap()
        .play_auth;
    let nginx = |call: &str, own: &str, key: &str| {
        let q = token::sign(Scheme::KsMd5, key.as_bytes(), "live", "cam1", NOW + 3600);
        format!(
            "app=live&flashver=LNX%209,0,124,2&swfurl=&tcurl=rtmp://127.0.0.1:1935/live&pageurl=&addr=127.0.0.1&clientid=3&call={call}&name=cam1{own}&{q}"
        )
    };
    let form_ct = "application/x-www-form-urlencoded";
    let publish = nginx("publish", "&type=live", KS_KEY);
    run(
        c,
        "nginx_publish_ks_md5",
        &plays,
        form_ct,
        publish.as_bytes(),
        true,
    );
    let own = "&start=4294965296&duration=0&reset=0";
    let play = nginx("play", own, play_key);
    run(
        c,
        "nginx_play_ks_md5",
        &plays,
        form_ct,
        play.as_bytes(),
        true,
    );
    let push_token = nginx("play", own, KS_KEY);
    run(
        c,
        "nginx_play_push_token_refused",
        &plays,
        form_ct,
        push_token.as_bytes(),
        false,
    );
}

/// SRS's captured on_publish (tests/fixtures/srs/on_publish.http), with `param`.
fn srs_publish(param: &str) -> Vec<u8> {
    format!(
        r#"{{"server_id":"vid-i562442","service_id":"41vb31bg","action":"on_publish","client_id":"9ln112g1","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","tcUrl":"rtmp://127.0.0.1:19350/live","stream":"test","param":"{param}","stream_url":"/live/test","stream_id":"vid-mo60970"}}"#
    )
    .into_bytes()
}

criterion_group!(all, benches);
criterion_main!(all);
