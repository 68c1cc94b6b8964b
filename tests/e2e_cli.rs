//! `callback-guard check` against the filter in a real Envoy: for the same
//! configuration and callback, the CLI prints what the filter does (forward,
//! refuse, or observe mode's marked forward) and exactly the
//! `x-callback-guard-*` headers the upstream gets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;
use support::*;

const JSON: &str = "application/json";

/// `check` on `body` with `config`: exit status and the printed line.
fn cli_check(config: &serde_json::Value, body: &str) -> (i32, serde_json::Value) {
    let dir = TempDir::new("e2e-cli");
    let path = dir.0.join("cfg.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_callback-guard"))
        .args(["check", "--config", path.to_str().unwrap()])
        .args(["--source-addr", "127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    (
        out.status.code().unwrap(),
        serde_json::from_str(&line).unwrap(),
    )
}

fn guard_headers(r: &Recorded) -> BTreeMap<String, String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-callback-guard-"))
        .cloned()
        .collect()
}

fn cli_headers(line: &serde_json::Value) -> BTreeMap<String, String> {
    line["headers"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The play key of the play cases (apart from the push key, KS_KEY).
const PLAY_KEY: &str = "cliPlayKey0123456";

/// SRS's on_play for `stream` with a token signed by `key`.
fn on_play(stream: &str, key: &str) -> String {
    let (t, k) = ks_token(key, stream, now_s() + 600);
    json!({"server_id":"vid-cli","service_id":"s1","action":"on_play","client_id":"c1",
        "ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","stream":stream,
        "tcUrl":"rtmp://127.0.0.1:1935/live","param":format!("?t={t}&k={k}"),"pageUrl":"",
        "stream_url":format!("/live/{stream}"),"stream_id":"vid-x"})
    .to_string()
}

#[test]
fn check_says_what_the_filter_does_with_the_same_headers() {
    let open = json!({"apps": ["live"]});
    let guarded = base_config();
    let mut observe = base_config();
    observe["mode"] = json!("observe");
    let mut plays = base_config();
    plays["formats"] = json!(["srs"]);
    plays["play_auth"] =
        json!({"scheme": "ks_md5", "keys": [{"id": "viewers", "secret": PLAY_KEY}]});
    let mut plays_observed = plays.clone();
    plays_observed["mode"] = json!("observe");
    let mut srs_no_play = base_config();
    srs_no_play["formats"] = json!(["srs"]);
    // (config, body, CLI exit, forwarded by Envoy)
    let cases = [
        (
            &open,
            v2("PubStart", "cli-open", Some("s1"), "any"),
            0,
            true,
        ),
        (
            &guarded,
            v2("PubStart", "cli-signed", Some("s1"), KS_KEY),
            0,
            true,
        ),
        (
            &guarded,
            v2("PubStart", "cli-forged", Some("s1"), "forged"),
            1,
            false,
        ),
        (
            &observe,
            v2("PubStart", "cli-observed", Some("s1"), "forged"),
            3,
            true,
        ),
        (
            &observe,
            v2("PubStart", "cli-observed-ok", Some("s1"), KS_KEY),
            0,
            true,
        ),
        // Plays (issue 22): SRS's on_play with a play token, a push token, and
        // no play_auth at all; observe mode's marked forward of a bad play.
        (&plays, on_play("cli-play", PLAY_KEY), 0, true),
        (&plays, on_play("cli-play-push", KS_KEY), 1, false),
        (&srs_no_play, on_play("cli-play-off", PLAY_KEY), 1, false),
        (
            &plays_observed,
            on_play("cli-play-obs", "forgedKey1"),
            3,
            true,
        ),
    ];
    for (config, body, exit, forwarded) in &cases {
        let rx = Receiver::start();
        let Some(envoy) = Envoy::start(EnvoyOpts::new((*config).clone(), rx.port)) else {
            return;
        };
        let r = http1(
            envoy.port,
            "POST",
            "/callback",
            &[("content-type", JSON)],
            body.as_bytes(),
        );
        let (rc, line) = cli_check(config, body);
        assert_eq!(rc, *exit, "{config} {body}: {line}");
        let got = rx.received();
        if *forwarded {
            assert_eq!(r.status, 200, "{config}: {body}");
            assert_eq!(line["action"], "forward", "{line}");
            assert_eq!(got.len(), 1);
            assert_eq!(
                cli_headers(&line),
                guard_headers(&got[0]),
                "{config}: the CLI prints the headers the upstream gets"
            );
        } else {
            assert_eq!(
                (r.status, r.code()),
                (
                    line["status"].as_u64().unwrap() as u16,
                    line["code"].as_str().unwrap().to_string()
                ),
                "{line}"
            );
            assert!(got.is_empty());
        }
    }
}
