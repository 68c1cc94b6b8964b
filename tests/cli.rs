//! The `callback-guard` command-line tool, run as a user runs it: `check`
//! (the filter's `decide()` on a body from stdin), `check-config` and `sign`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

const BIN: &str = env!("CARGO_BIN_EXE_callback-guard");
const NOW: u64 = 1_700_000_000;
const KEY: &str = "CliKey123";

fn run(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A usage error exits before reading stdin: a broken pipe is expected then.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    (
        status.code().unwrap(),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

/// A configuration file in a fresh temp dir.
fn config_file(tag: &str, json: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("cg-cli-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cfg.json");
    std::fs::write(&path, json).unwrap();
    path
}

fn ks_k(stream: &str, t: u64) -> String {
    hex::encode(Md5::digest(format!("{KEY}{stream}{t}")))[8..24].to_string()
}

fn start_body(stream: &str, k: &str) -> String {
    format!(
        r#"{{"Version":"1.0","App":"live","Pubdomain":"push.example.com","Stream":"{stream}","PubStartUnixTime":{NOW}000,"NotifyType":"PubStart","ClientIp":" ","ClientPort":" ","Node":" ","PubParam":{{"t":"{}","k":"{k}"}}}}"#,
        NOW + 600
    )
}

fn guarded_config() -> std::path::PathBuf {
    config_file(
        "check",
        &format!(
            r#"{{"apps":["live"],"push_auth":{{"scheme":"ks_md5","keys":[{{"id":"main","secret":"{KEY}"}}]}}}}"#
        ),
    )
}

#[test]
fn check_forwards_a_valid_callback_and_prints_the_headers() {
    let cfg = guarded_config();
    let now = NOW.to_string();
    let body = start_body("cam1", &ks_k("cam1", NOW + 600));
    let (rc, out, _) = run(
        &["check", "--config", cfg.to_str().unwrap(), "--now", &now],
        body.as_bytes(),
    );
    assert_eq!(rc, 0, "{out}");
    assert_eq!(out.lines().count(), 1, "one JSON line: {out}");
    assert!(
        out.starts_with(r#"{"action":"forward","status":200,"code":"","message":"verified: "#),
        "keys in the documented order: {out}"
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["headers"]["x-callback-guard-key-id"], "main");
    assert_eq!(v["headers"]["x-callback-guard-event"], "start");
    assert!(!out.contains(KEY));
}

#[test]
fn check_rejects_with_the_spec_code_and_exit_1() {
    let cfg = guarded_config();
    let cfg = cfg.to_str().unwrap();
    let now = NOW.to_string();
    let forged = start_body("cam1", "0123456789abcdef");
    let (rc, out, _) = run(
        &["check", "--config", cfg, "--now", &now],
        forged.as_bytes(),
    );
    assert_eq!(rc, 1);
    assert_eq!(
        out.trim(),
        r#"{"action":"reject","status":403,"code":"AuthencationFailed","message":"push token signature does not match"}"#
    );
    // Expired at the given --now.
    let later = (NOW + 3600).to_string();
    let good = start_body("cam1", &ks_k("cam1", NOW + 600));
    let (rc, out, _) = run(
        &["check", "--config", cfg, "--now", &later],
        good.as_bytes(),
    );
    assert_eq!((rc, out.contains("expired")), (1, true), "{out}");
    // Method, content type, sender address and headers reach decide().
    let (rc, out, _) = run(&["check", "--config", cfg, "--method", "GET"], b"");
    assert_eq!((rc, out.contains(r#""status":405"#)), (1, true), "{out}");
    let (rc, out, _) = run(
        &["check", "--config", cfg, "--content-type", "text/plain"],
        good.as_bytes(),
    );
    assert_eq!(
        (rc, out.contains("UnsupportedMediaType")),
        (1, true),
        "{out}"
    );
    let cidr = config_file(
        "cidr",
        r#"{"callback_auth":{"allow_cidrs":["10.0.0.0/8"]}}"#,
    );
    let cidr = cidr.to_str().unwrap();
    let args = |ip: &'static str| {
        [
            "check",
            "--config",
            cidr,
            "--now",
            &now,
            "--source-addr",
            ip,
        ]
        .map(String::from)
    };
    let (rc, _, _) = run(
        &args("10.1.2.3").each_ref().map(String::as_str),
        good.as_bytes(),
    );
    assert_eq!(rc, 0);
    let (rc, out, _) = run(
        &args("192.0.2.1").each_ref().map(String::as_str),
        good.as_bytes(),
    );
    assert_eq!((rc, out.contains("AuthencationFailed")), (1, true), "{out}");
    let shared = config_file(
        "shared",
        r#"{"callback_auth":{"shared_key":{"header":"x-cdn-key","keys":[{"id":"c","secret":"cdn-secret-1"}]}}}"#,
    );
    let shared = shared.to_str().unwrap();
    let base = ["check", "--config", shared, "--now", &now, "--header"];
    let (rc, _, _) = run(
        &[&base[..], &["X-Cdn-Key: cdn-secret-1"]].concat(),
        good.as_bytes(),
    );
    assert_eq!(rc, 0);
    let (rc, out, _) = run(&[&base[..], &["X-Cdn-Key: nope"]].concat(), good.as_bytes());
    assert_eq!(rc, 1, "{out}");
}

#[test]
fn check_exits_2_on_usage_and_configuration_errors() {
    let (rc, _, err) = run(&["check"], b"{}");
    assert_eq!(rc, 2, "{err}");
    let bad = config_file(
        "bad",
        r#"{"push_auth":{"scheme":"ks_md5","keys":[{"id":"k","secret":"no-dashes-allowed"}]}}"#,
    );
    let (rc, out, err) = run(&["check", "--config", bad.to_str().unwrap()], b"{}");
    assert_eq!((rc, out.as_str()), (2, ""));
    assert!(err.contains("push_auth.keys[0]"), "{err}");
    assert!(
        !err.contains("no-dashes-allowed"),
        "a secret is never printed: {err}"
    );
    let cfg = guarded_config();
    let (rc, _, err) = run(
        &[
            "check",
            "--config",
            cfg.to_str().unwrap(),
            "--header",
            "no colon",
        ],
        b"{}",
    );
    assert_eq!((rc, err.contains("Name: value")), (2, true), "{err}");
}

#[test]
fn check_config_prints_ok_or_every_problem() {
    let cfg = guarded_config();
    let (rc, out, err) = run(&["check-config", cfg.to_str().unwrap()], b"");
    assert_eq!((rc, out.as_str(), err.as_str()), (0, "ok\n", ""));
    // Valid, but a check that cannot run on forms: ok, with a warning.
    let weak = config_file("weak", r#"{"max_event_age_s":300}"#);
    let (rc, out, err) = run(&["check-config", weak.to_str().unwrap()], b"");
    assert_eq!((rc, out.as_str()), (0, "ok\n"));
    assert!(err.starts_with("warning: max_event_age_s: kls_v1"), "{err}");
    let bad = config_file(
        "problems",
        r#"{"max_body_bytes":0,"push_auth":{"scheme":"hmac_sha256","keys":[{"id":"a","secret":"tiny1"}]},
            "duplicate_streams":{"ttl_s":0}}"#,
    );
    let (rc, out, _) = run(&["check-config", bad.to_str().unwrap()], b"");
    assert_eq!(rc, 2);
    for key in [
        "max_body_bytes",
        "push_auth.keys[0]",
        "duplicate_streams.ttl_s",
    ] {
        assert!(out.contains(key), "{key} not named in:\n{out}");
    }
    assert!(out.lines().count() >= 3, "{out}");
    assert!(!out.contains("tiny1"), "a secret is never printed: {out}");
    let (rc, out, _) = run(&["check-config", "/nonexistent/cfg.json"], b"");
    assert_eq!((rc, out.contains("/nonexistent/cfg.json")), (2, true));
}

/// `callback-guard sign` with whitespace-separated `args`, then `extra` (for
/// values with spaces).
fn sign(args: &str, extra: &[&str]) -> (i32, String, String) {
    let mut all: Vec<&str> = std::iter::once("sign")
        .chain(args.split_whitespace())
        .collect();
    all.extend_from_slice(extra);
    run(&all, b"")
}

#[test]
fn sign_mints_tokens_both_schemes_check() {
    // KLS doc 1062's worked example.
    let (rc, out, _) = sign(
        "--scheme ks_md5 --key 123456 --app live --stream stream --expires-at 1560096712",
        &[],
    );
    assert_eq!((rc, out.as_str()), (0, "t=1560096712&k=4f88e741140240e2\n"));
    // hmac_sha256 with a kid, as in the README.
    let (rc, out, _) = sign(
        "--scheme hmac_sha256 --key 0123456789abcdef --app live --stream cam1 --expires-at 1700000000 --kid k2",
        &[],
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef").unwrap();
    mac.update(b"live\ncam1\n1700000000");
    let sig = hex::encode(mac.finalize().into_bytes());
    assert_eq!((rc, out), (0, format!("t=1700000000&sign={sig}&kid=k2\n")));
    // --url gives the push URL, the stream percent-encoded as one path segment.
    let (rc, out, _) = sign(
        &format!("--scheme ks_md5 --key {KEY} --app live --expires-at 1700000600 --url rtmp://push.example.com/live/"),
        &["--stream", "a b"],
    );
    let k = ks_k("a b", 1_700_000_600);
    assert_eq!(
        (rc, out),
        (
            0,
            format!("rtmp://push.example.com/live/a%20b?t=1700000600&k={k}\n")
        )
    );
    // A token minted by `sign` passes `check`.
    let (_, minted, _) = sign(
        &format!(
            "--scheme ks_md5 --key {KEY} --app live --stream cam9 --expires-at {}",
            NOW + 600
        ),
        &[],
    );
    let k = minted.trim().rsplit("k=").next().unwrap();
    let cfg = guarded_config();
    let (rc, out, _) = run(
        &[
            "check",
            "--config",
            cfg.to_str().unwrap(),
            "--now",
            &NOW.to_string(),
        ],
        start_body("cam9", k).as_bytes(),
    );
    assert_eq!(rc, 0, "{out}");
}

#[test]
fn sign_refuses_bad_keys_and_options() {
    let base = "--app live --stream s --expires-at 1700000000";
    for (args, needle) in [
        (
            "--scheme ks_md5 --key has-dash",
            "at most 32 letters or digits",
        ),
        ("--scheme ks_md5 --key abc --kid x", "hmac_sha256 only"),
        ("--scheme hmac_sha256 --key short", "at least 16 bytes"),
        (
            "--scheme hmac_sha256 --key-env CG_CLI_UNSET_VAR",
            "not set or empty",
        ),
    ] {
        let (rc, out, err) = sign(&format!("{base} {args}"), &[]);
        assert_eq!((rc, out.as_str()), (2, ""), "{args}");
        assert!(err.contains(needle), "{args}: {err}");
    }
    let (rc, _, err) = sign(
        "--scheme ks_md5 --key abc --app live --stream s --expires-at 99",
        &[],
    );
    assert_eq!((rc, err.contains("10-digit")), (2, true), "{err}");
}

/// KLS's old-version sender posts with no content-type: `--content-type ''`
/// decides the spec's sample as the filter does (forwarded, as `kls_v1`), and
/// `--help` says how an unlabelled body is read.
#[test]
fn check_without_a_content_type_reads_the_body() {
    let cfg = config_file("sniff", "{}");
    let cfg = cfg.to_str().unwrap();
    let seed_end = "app=live&name=asdf&swfurl=nil&flashver=nil&tcurl=rtmp://test.uplive.ks-cdn.com/live&call=user_publish_done&close_mode=nil&vdoid=123456";
    let (rc, out, _) = run(
        &["check", "--config", cfg, "--content-type", ""],
        seed_end.as_bytes(),
    );
    assert_eq!(rc, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["action"], "forward");
    assert_eq!(v["headers"]["x-callback-guard-format"], "kls_v1", "{out}");
    // An explicit label that is neither JSON nor a form is still refused.
    let (rc, out, _) = run(
        &["check", "--config", cfg, "--content-type", "text/plain"],
        seed_end.as_bytes(),
    );
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("\"status\":415"), "{out}");
    let (rc, help, _) = run(&["check", "--help"], b"");
    assert_eq!(rc, 0);
    assert!(
        help.contains("--content-type ''") && help.contains("the body then picks the parser"),
        "{help}"
    );
}

/// `"mode": "observe"`: the filter forwards a failing callback, marked with
/// `x-callback-guard-would-reject`; `check` says so, with its own exit status.
#[test]
fn check_in_observe_mode_forwards_with_the_would_be_refusal_and_exit_3() {
    let observe = config_file(
        "observe",
        &format!(
            r#"{{"mode":"observe","apps":["live"],"push_auth":{{"scheme":"ks_md5","keys":[{{"id":"main","secret":"{KEY}"}}]}}}}"#
        ),
    );
    let observe = observe.to_str().unwrap();
    let now = NOW.to_string();
    let forged = start_body("cam1", "0123456789abcdef");
    let (rc, out, _) = run(
        &["check", "--config", observe, "--now", &now],
        forged.as_bytes(),
    );
    assert_eq!(rc, 3, "{out}");
    assert_eq!(
        out.trim(),
        r#"{"action":"forward","status":200,"code":"","message":"observe mode: would reject: push token signature does not match","would_reject":{"status":403,"code":"AuthencationFailed","message":"push token signature does not match"},"headers":{"x-callback-guard-would-reject":"AuthencationFailed"}}"#
    );
    // A valid callback is forwarded as in enforce mode: exit 0, no mark.
    let good = start_body("cam1", &ks_k("cam1", NOW + 600));
    let (rc, out, _) = run(
        &["check", "--config", observe, "--now", &now],
        good.as_bytes(),
    );
    assert_eq!(rc, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["action"], "forward");
    assert!(v.get("would_reject").is_none(), "{out}");
    assert!(!out.contains("would-reject"), "{out}");
    // The same forged callback under enforce is refused: exit 1.
    let (rc, _, _) = run(
        &[
            "check",
            "--config",
            guarded_config().to_str().unwrap(),
            "--now",
            &now,
        ],
        forged.as_bytes(),
    );
    assert_eq!(rc, 1);
    // The exit statuses are documented in the help.
    let (_, help, _) = run(&["check", "--help"], b"");
    for needle in [
        "0 = forwarded",
        "1 = refused",
        "2 = usage",
        "3 = forwarded by",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

/// The headers `check` prints are the ones the filter adds: none with an
/// empty value (no key id when push tokens are not checked).
#[test]
fn check_prints_only_the_headers_the_filter_adds() {
    let open = config_file("open", "{}");
    let body = start_body("cam1", "whatever");
    let (rc, out, _) = run(
        &["check", "--config", open.to_str().unwrap()],
        body.as_bytes(),
    );
    assert_eq!(rc, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let headers = v["headers"].as_object().unwrap();
    let names: Vec<&str> = headers.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "x-callback-guard-event",
            "x-callback-guard-format",
            "x-callback-guard-verified"
        ],
        "{out}"
    );
    assert!(headers
        .values()
        .all(|v| v.as_str().is_some_and(|s| !s.is_empty())));
    assert!(!out.contains("key-id"), "{out}");
}

#[test]
fn check_config_warns_when_nothing_checks_who_sent_it() {
    for json in ["{}", r#"{"apps":["live"]}"#] {
        let open = config_file("open", json);
        let (rc, out, err) = run(&["check-config", open.to_str().unwrap()], b"");
        assert_eq!((rc, out.as_str()), (0, "ok\n"), "{json}");
        assert!(
            err.starts_with("warning: push_auth, callback_auth: neither is set")
                && err.contains("only the callbacks' format and fields"),
            "{json}: {err}"
        );
    }
}

#[test]
fn sign_names_both_alternatives_of_a_missing_argument() {
    let (rc, _, err) = sign("--scheme ks_md5 --app live --stream s --expires-in 60", &[]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("--key <KEY>|--key-env <KEY_ENV>"), "{err}");
    let (rc, _, err) = sign("--scheme ks_md5 --app live --stream s --key abc", &[]);
    assert_eq!(rc, 2, "{err}");
    assert!(
        err.contains("--expires-in <EXPIRES_IN>|--expires-at <EXPIRES_AT>"),
        "{err}"
    );
    let (rc, _, err) = sign(
        "--scheme ks_md5 --app live --stream s --key abc --key-env K --expires-in 60",
        &[],
    );
    assert_eq!(
        (rc, err.contains("cannot be used with")),
        (2, true),
        "{err}"
    );
}

#[test]
fn sign_refuses_a_push_url_for_another_app() {
    let hmac =
        "--scheme hmac_sha256 --key 0123456789abcdef --app live --stream s --expires-at 1700000000";
    let (rc, out, err) = sign(&format!("{hmac} --url rtmp://h/other"), &[]);
    assert_eq!((rc, out.as_str()), (2, ""), "{err}");
    assert!(
        err.contains("app `other`, but --app is `live`") && err.contains("never pass"),
        "{err}"
    );
    // ks_md5 does not sign the app: printed, with a warning.
    let ks = "--scheme ks_md5 --key abc --app live --stream s --expires-at 1700000000";
    let (rc, out, err) = sign(&format!("{ks} --url rtmp://h/other/"), &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with("rtmp://h/other/s?t=1700000000&k="), "{out}");
    assert!(err.contains("warning: --url is for app `other`"), "{err}");
    // The URL's app is --app, or added when the URL has none.
    for url in ["rtmp://h/live", "rtmp://h/live/", "rtmp://h", "rtmp://h/"] {
        let (rc, out, err) = sign(&format!("{hmac} --url {url}"), &[]);
        assert_eq!(rc, 0, "{url}: {err}");
        assert!(
            out.starts_with("rtmp://h/live/s?t=1700000000&sign="),
            "{out}"
        );
        assert_eq!(err, "", "{url}");
    }
    let (rc, _, err) = sign(&format!("{hmac} --url rtmp://h/live?x=1"), &[]);
    assert_eq!((rc, err.contains("without a query")), (2, true), "{err}");
}

/// `check-config FILE` with the environment variables the shipped configs'
/// `secret_env` names set (as Envoy would pass them).
fn check_config_with_key(file: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["check-config", file.to_str().unwrap()])
        .env("CALLBACK_GUARD_PUSH_KEY", "ShippedKey1")
        .env("CALLBACK_GUARD_PLAY_KEY", "ShippedPlayKey2")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn yaml_file(tag: &str, yaml: &str) -> std::path::PathBuf {
    let json = config_file(tag, "");
    let path = json.with_file_name("envoy.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Every YAML shipped in envoy/ and deploy/: those with callback-guard filters
/// give one `ok` per filter with its place; the others say that none was
/// found (exit 2), so a file that lost its filter shows.
#[test]
fn check_config_reads_every_shipped_envoy_yaml() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let expected: &[(&str, &[&str])] = &[
        (
            "envoy/envoy.yaml",
            &["document 1, static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]: ok"],
        ),
        (
            "envoy/envoy-native.yaml",
            &["document 1, static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]: ok"],
        ),
        (
            "deploy/envoy-gateway-native/envoyextensionpolicy.yaml",
            &["document 1, spec.dynamicModules[0]: ok"],
        ),
        (
            "envoy/nginx-rtmp.yaml",
            &["document 1, static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]: ok"],
        ),
        (
            "envoy/srs.yaml",
            &["document 1, static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]: ok"],
        ),
        (
            "deploy/istio/envoyfilter.yaml",
            &["document 1, spec.configPatches[0].patch.value: ok"],
        ),
        (
            "deploy/envoy-gateway/envoyextensionpolicy.yaml",
            &["document 1, spec.wasm[0]: ok"],
        ),
    ];
    // The shipped files: those git tracks (generated, ignored configs such as
    // envoy/envoy.docker.yaml are not shipped).
    let listed = std::process::Command::new("git")
        .args(["ls-files", "envoy", "deploy"])
        .current_dir(root)
        .output()
        .expect("git ls-files");
    let mut files: Vec<std::path::PathBuf> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.ends_with(".yaml") || l.ends_with(".yml"))
        .map(|l| root.join(l))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "{files:?}");
    let mut with_filters = 0;
    for file in &files {
        let rel = file.strip_prefix(root).unwrap().to_str().unwrap();
        let (rc, out, err) = check_config_with_key(file);
        match expected.iter().find(|(f, _)| *f == rel) {
            Some((_, lines)) => {
                with_filters += 1;
                assert_eq!(rc, 0, "{rel}: {out}{err}");
                assert_eq!(out.lines().collect::<Vec<_>>(), *lines, "{rel}");
                for w in err.lines() {
                    assert!(w.contains(": warning: "), "{rel}: {w}");
                }
            }
            None => {
                assert_eq!(rc, 2, "{rel}: {out}");
                assert!(
                    out.contains("no callback-guard filter found"),
                    "{rel}: {out}"
                );
            }
        }
    }
    assert_eq!(with_filters, expected.len(), "a shipped file went missing");

    // The configuration is read, not only found: a mistake in each is named.
    for (rel, _) in expected {
        let text = std::fs::read_to_string(root.join(rel)).unwrap();
        assert!(text.contains("\"apps\"") || text.contains("apps:"), "{rel}");
        let broken = text
            .replacen("\"apps\"", "\"appz\"", 1)
            .replacen("apps:", "appz:", 1);
        let (rc, out, _) = check_config_with_key(&yaml_file("broken", &broken));
        assert_eq!(rc, 2, "{rel}: {out}");
        assert!(
            out.contains(": configuration: unknown field `appz`"),
            "{rel}: {out}"
        );
    }
}

#[test]
fn check_config_finds_each_filter_of_a_multi_document_yaml() {
    let yaml = r#"
# A bootstrap with two listeners, one guard each, and a wasm filter of another plugin.
static_resources:
  listeners:
  - name: a
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          http_filters:
          - name: other
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: other_plugin
                configuration: { "@type": type.googleapis.com/google.protobuf.StringValue, value: "not json" }
          - name: callback-guard
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                root_id: callback_guard
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"apps":["a"],"apps":["b"]}'
---
# ECDS resource with the native module.
name: callback-guard
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
  dynamic_module_config: { name: callback_guard }
  filter_name: callback_guard
  filter_config:
    "@type": type.googleapis.com/google.protobuf.StringValue
    value: '{"mode":"observ","callback_auth":{"allow_cidrs":["10.0.0.0/8"]}}'
---
# Istio's older form: a TypedStruct of the Wasm filter, no configuration (the defaults).
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
spec:
  configPatches:
  - patch:
      value:
        name: callback-guard
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
          value:
            config:
              vm_config: { code: { local: { filename: /etc/callback_guard.wasm } } }
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: callback-guard }
spec:
  url: oci://registry.example.com/callback-guard-wasm:0.1.0
  pluginConfig:
    push_auth: { scheme: ks_md5, keys: [{ id: k, secret: 12345 }] }
"#;
    let (rc, out, err) = check_config_with_key(&yaml_file("multi", yaml));
    assert_eq!(rc, 2, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "document 1, static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[1]: apps: duplicate key: given more than once; set it once",
            "document 2: mode: unknown mode `observ`, expected `enforce` or `observe`",
            "document 3, spec.configPatches[0].patch.value: ok",
            "document 4, spec: push_auth.keys[0].secret: invalid type: integer, expected a string",
        ],
        "{out}"
    );
    assert!(!out.contains("12345"), "a secret is never printed: {out}");
    assert!(
        err.contains("document 3, spec.configPatches[0].patch.value: warning: push_auth, callback_auth: neither is set"),
        "{err}"
    );
    // A filter entry named callback-guard is callback-guard's, whatever its
    // plugin says; a Wasm filter of another name is not.
    let (rc, out, _) = check_config_with_key(&yaml_file(
        "named",
        r#"
http_filters:
- name: callback-guard
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      vm_config: { code: { local: { filename: /opt/guard.wasm } } }
      configuration: { "@type": type.googleapis.com/google.protobuf.StringValue, value: '{"ttl_s":1}' }
- name: another
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      vm_config: { code: { local: { filename: /opt/other.wasm } } }
"#,
    ));
    assert_eq!(rc, 2, "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["document 1, http_filters[0]: configuration: unknown field `ttl_s`, expected one of `max_body_bytes`, `apps`, `formats`, `push_auth`, `play_auth`, `callback_auth`, `duplicate_streams`, `max_event_age_s`, `mode`, `filter_state_mark`"],
        "{out}"
    );
    // Not YAML, and YAML with a configuration callback-guard cannot read.
    let (rc, out, _) = check_config_with_key(&yaml_file("bad", "a: [1,\n"));
    assert_eq!((rc, out.contains("not valid YAML")), (2, true), "{out}");
    let (rc, out, _) = check_config_with_key(&yaml_file(
        "struct",
        r#"
"@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
config:
  name: callback_guard
  configuration: { "@type": type.googleapis.com/google.protobuf.Struct, value: { apps: [a] } }
"#,
    ));
    assert_eq!(rc, 2, "{out}");
    assert!(
        out.starts_with(
            "document 1: configuration: a `type.googleapis.com/google.protobuf.Struct`"
        ),
        "{out}"
    );
}

const PLAY_KEY: &str = "CliPlayKey456";

/// nginx-rtmp's `on_play` form for `stream`, with the player's query.
fn play_form(call: &str, stream: &str, query: &str) -> String {
    format!(
        "app=live&flashver=LNX%209,0,124,2&swfurl=&tcurl=rtmp://127.0.0.1:1935/live&pageurl=&addr=127.0.0.1&clientid=3&call={call}&name={stream}&start=4294965296&duration=0&reset=0&{query}"
    )
}

fn play_config() -> std::path::PathBuf {
    config_file(
        "play",
        &format!(
            r#"{{"formats":["nginx_rtmp"],"apps":["live"],
                "push_auth":{{"scheme":"ks_md5","keys":[{{"id":"main","secret":"{KEY}"}}]}},
                "play_auth":{{"scheme":"ks_md5","keys":[{{"id":"viewer","secret":"{PLAY_KEY}"}}]}}}}"#
        ),
    )
}

/// `sign --for play` mints with a play key what `check` then takes as a
/// play token, and refuses as a push token; the push token minted by
/// `sign` (default `--for push`) is refused for a play.
#[test]
fn sign_for_play_mints_what_check_plays_and_never_pushes() {
    let cfg = play_config();
    let cfg = cfg.to_str().unwrap();
    let now = NOW.to_string();
    let exp = (NOW + 600).to_string();
    let (rc, url, err) = sign(
        &format!("--for play --scheme ks_md5 --key {PLAY_KEY} --app live --stream cam1 --expires-at {exp} --url rtmp://edge.example.com"),
        &[],
    );
    assert_eq!(rc, 0, "{err}");
    let k = hex::encode(Md5::digest(format!("{PLAY_KEY}cam1{exp}")))[8..24].to_string();
    assert_eq!(
        url,
        format!("rtmp://edge.example.com/live/cam1?t={exp}&k={k}\n")
    );
    let query = url.trim().split_once('?').unwrap().1.to_string();
    let check = |body: &str| {
        run(
            &[
                "check",
                "--config",
                cfg,
                "--content-type",
                "",
                "--now",
                &now,
            ],
            body.as_bytes(),
        )
    };
    let (rc, out, _) = check(&play_form("play", "cam1", &query));
    assert_eq!(rc, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["headers"]["x-callback-guard-event"], "play");
    assert_eq!(v["headers"]["x-callback-guard-key-id"], "viewer");
    assert!(
        v["message"].as_str().unwrap().contains("play_token"),
        "{out}"
    );
    let (rc, out, _) = check(&play_form("play_done", "cam1", &query));
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.contains(r#""x-callback-guard-event":"play_end""#),
        "{out}"
    );
    // The play token pushes nothing.
    let push = format!(
        "app=live&flashver=x&swfurl=&tcurl=rtmp://127.0.0.1:1935/live&pageurl=&addr=127.0.0.1&clientid=1&call=publish&name=cam1&type=live&{query}"
    );
    let (rc, out, _) = check(&push);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("it is a play token"), "{out}");
    // A push token (sign's default) plays nothing.
    let (_, push_q, _) = sign(
        &format!("--scheme ks_md5 --key {KEY} --app live --stream cam1 --expires-at {exp}"),
        &[],
    );
    let (rc, out, _) = check(&play_form("play", "cam1", push_q.trim()));
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains(r#""code":"AuthencationFailed""#), "{out}");
    assert!(out.contains("it is a push token"), "{out}");
    assert!(!out.contains(KEY) && !out.contains(PLAY_KEY));
}

#[test]
fn sign_for_names_the_purpose_in_its_errors() {
    let (rc, _, err) = sign(
        "--for play --scheme hmac_sha256 --key short --app live --stream s --expires-at 1700000000",
        &[],
    );
    assert_eq!(rc, 2);
    assert!(
        err.contains("an hmac_sha256 play key is at least 16 bytes"),
        "{err}"
    );
    let (rc, _, err) = sign(
        "--for play --scheme hmac_sha256 --key 0123456789abcdef --app live --stream s --expires-at 1700000000 --url rtmp://h/other",
        &[],
    );
    assert_eq!(rc, 2);
    assert!(err.contains("so this play could never pass"), "{err}");
    let (rc, _, err) = sign(
        "--for view --scheme ks_md5 --key abc --app live --stream s --expires-at 1700000000",
        &[],
    );
    assert_eq!(rc, 2);
    assert!(err.contains("push") && err.contains("play"), "{err}");
}
