//! End-to-end: an adversarial catalog through one real Envoy.
//!
//! Every entry is a named request with the answer it must get. Hostile ones
//! must be answered at the edge (the filter's status and spec code, or
//! Envoy's own answer to broken HTTP) and the upstream must see nothing of
//! them. The reverse entries are unusual but legal callbacks, which must
//! reach the upstream byte for byte with the verification headers (any
//! spoofed `x-callback-guard-*` header overwritten or removed).
//!
//! One Envoy serves the whole table; every mismatch is collected and
//! reported at the end, not just the first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use serde_json::json;
use support::*;

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";
const VERIFIED: &str = "format,app,push_token,stream_registry";
/// What a forwarded play is verified for (plays never touch the registry).
const VERIFIED_PLAY: &str = "format,app,play_token";
/// The catalog's play key (`play_auth`), apart from the push key.
const PLAY_KEY: &str = "catPlayKey0123456";

/// A play URL's token for `stream`, expiring at `t`.
fn play_query(stream: &str, t: u64) -> String {
    let (t, k) = ks_token(PLAY_KEY, stream, t);
    format!("t={t}&k={k}")
}

/// How a case is sent.
enum Send {
    /// One HTTP/1.1 request with a correct content-length.
    Http1 {
        method: &'static str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Raw bytes; `half_close` shuts the write side after sending.
    Raw { bytes: Vec<u8>, half_close: bool },
    /// Chunked HTTP/1.1, pieces with pauses.
    Chunked {
        headers: Vec<(String, String)>,
        pieces: Vec<Vec<u8>>,
        pause_ms: u64,
        trailers: Vec<(String, String)>,
    },
    /// Content-length HTTP/1.1 whose body trickles in pieces.
    Slow {
        headers: Vec<(String, String)>,
        pieces: Vec<Vec<u8>>,
        pause_ms: u64,
    },
    /// HTTP/2 cleartext, the body in the given frames.
    H2 {
        headers: Vec<(String, String)>,
        frames: Vec<Vec<u8>>,
    },
}

/// What must come back.
enum Expect {
    /// The filter's rejection: status and `Error.Code` in the KLS body.
    Reject(u16, &'static str),
    /// A status without a KLS body (HEAD, Envoy's own codec errors).
    Status(u16),
    /// No answer: the connection closes without a response.
    NoAnswer,
    /// Forwarded byte for byte, with these `x-callback-guard-format` and `-event`.
    Forward(&'static str, &'static str),
}

struct Case {
    name: &'static str,
    send: Send,
    expect: Expect,
}

fn hdrs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn post(name: &'static str, ct: &str, body: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        name,
        send: Send::Http1 {
            method: "POST",
            headers: hdrs(&[("content-type", ct)]),
            body: body.into(),
        },
        expect,
    }
}

fn json_case(name: &'static str, body: impl Into<Vec<u8>>, expect: Expect) -> Case {
    post(name, JSON, body, expect)
}

fn form_case(name: &'static str, body: impl Into<Vec<u8>>, expect: Expect) -> Case {
    post(name, FORM, body, expect)
}

fn bad(code: &'static str) -> Expect {
    let status = match code {
        "MethodNotAllowed" => 405,
        "UnsupportedMediaType" => 415,
        "PayloadTooLarge" => 413,
        "AuthencationFailed" => 403,
        "NonExistApplication" => 404,
        "ExistStreamName" => 409,
        _ => 400,
    };
    Expect::Reject(status, code)
}

const INVALID: &str = "InvalidParameterValue";
const MISSING: &str = "MissingParameter";
const AUTH: &str = "AuthencationFailed";

/// A valid KLS new-version start for `stream` (own session), as text.
fn start(stream: &str) -> String {
    v2("PubStart", stream, Some(&format!("seq-{stream}")), KS_KEY)
}

/// A valid KLS old-version start for `stream`, as text.
fn form_start(stream: &str) -> String {
    v1("user_publish", stream, &format!("vd-{stream}"), KS_KEY)
}

/// `t` and `k` query for `stream`, valid for ten minutes.
fn token_query(stream: &str) -> String {
    let (t, k) = ks_token(KS_KEY, stream, now_s() + 600);
    format!("t={t}&k={k}")
}

/// Replaces exactly one occurrence (the test is wrong otherwise).
fn swap(s: &str, from: &str, to: &str) -> String {
    assert_eq!(s.matches(from).count(), 1, "`{from}` in {s}");
    s.replace(from, to)
}

fn time_field(body: &str) -> String {
    let i = body.find("\"PubStartUnixTime\":").unwrap() + "\"PubStartUnixTime\":".len();
    let end = body[i..].find(',').unwrap();
    body[i..i + end].to_string()
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn bytes_with(body: &str, from: &str, to: &[u8]) -> Vec<u8> {
    let i = body.find(from).unwrap();
    let mut v = body.as_bytes()[..i].to_vec();
    v.extend_from_slice(to);
    v.extend_from_slice(&body.as_bytes()[i + from.len()..]);
    v
}

fn catalog() -> Vec<Case> {
    let mut c = Vec::new();

    // ---- JSON syntax, depth and numbers ------------------------------------
    let b = start("truncated");
    c.push(json_case(
        "json truncated in the middle",
        &b.as_bytes()[..b.len() / 2],
        bad(INVALID),
    ));
    c.push(json_case(
        "json missing its closing brace",
        &b.as_bytes()[..b.len() - 1],
        bad(INVALID),
    ));
    c.push(json_case(
        "json nested 10,000 deep in an unknown field",
        swap(
            &start("deep1"),
            "\"Node\":\" \"",
            &format!("\"Node\":\" \",\"x\":{}", nested(10_000)),
        ),
        bad(INVALID),
    ));
    c.push(json_case(
        "json nested 10,000 deep inside PubParam",
        swap(
            &start("deep2"),
            "\"PubParam\":{",
            &format!("\"PubParam\":{{\"x\":{},", nested(10_000)),
        ),
        bad(INVALID),
    ));
    c.push(json_case(
        "json body that is only 10,000 nested arrays",
        nested(10_000),
        bad(INVALID),
    ));
    let b = start("digits400");
    let t = time_field(&b);
    c.push(json_case(
        "json 400-digit start time",
        swap(&b, &t, &"9".repeat(400)),
        bad(INVALID),
    ));
    c.push(json_case(
        "json 400-digit number in an unknown field",
        swap(
            &start("digits400b"),
            "\"Node\":\" \"",
            &format!("\"Node\":\" \",\"Big\":{}", "1".repeat(400)),
        ),
        bad(INVALID),
    ));
    c.push(json_case(
        "json 400-digit string start time",
        swap(
            &start("digits400c"),
            &t,
            &format!("\"{}\"", "1".repeat(400)),
        ),
        bad(INVALID),
    ));
    let b = start("float-time");
    let t = time_field(&b);
    c.push(json_case(
        "json float start time",
        swap(&b, &t, &format!("{t}.0")),
        bad(INVALID),
    ));
    c.push(json_case(
        "json exponent start time",
        swap(&b, &t, "1.7e12"),
        bad(INVALID),
    ));
    c.push(json_case(
        "json negative start time",
        swap(&b, &t, &format!("-{t}")),
        bad(INVALID),
    ));
    c.push(json_case(
        "json negative zero start time",
        swap(&b, &t, "-0"),
        bad(INVALID),
    ));
    c.push(json_case(
        "json string float start time",
        swap(&b, &t, &format!("\"{t}.5\"")),
        bad(INVALID),
    ));
    let e = v2("PubEnd", "neg-end", Some("seq-neg-end"), KS_KEY);
    let i = e.find("\"PubEndUnixTime\":").unwrap() + "\"PubEndUnixTime\":".len();
    let te = &e[i..i + 13];
    c.push(json_case(
        "json negative end time",
        swap(&e, te, &format!("-{te}")),
        bad(INVALID),
    ));

    // ---- encoding: UTF-8, NUL ------------------------------------------------
    let b = start("utf8");
    c.push(json_case(
        "json invalid UTF-8 byte in Stream",
        bytes_with(&b, "\"Stream\":\"utf8\"", b"\"Stream\":\"ut\xfff8\""),
        bad(INVALID),
    ));
    c.push(json_case(
        "json overlong UTF-8 slash in Stream",
        bytes_with(&b, "\"Stream\":\"utf8\"", b"\"Stream\":\"ut\xc0\xaff8\""),
        bad(INVALID),
    ));
    c.push(json_case(
        "json overlong UTF-8 NUL in Stream",
        bytes_with(&b, "\"Stream\":\"utf8\"", b"\"Stream\":\"ut\xc0\x80f8\""),
        bad(INVALID),
    ));
    c.push(json_case(
        "json invalid UTF-8 in an unknown field",
        bytes_with(
            &b,
            "\"Node\":\" \"",
            b"\"Node\":\" \",\"junk\":\"\xed\xa0\x80\"",
        ),
        bad(INVALID),
    ));
    c.push(json_case(
        "json lone surrogate escape in Stream",
        swap(&b, "\"Stream\":\"utf8\"", "\"Stream\":\"utf8\\ud800\""),
        bad(INVALID),
    ));
    c.push(json_case(
        "json escaped NUL in Stream",
        swap(&b, "\"Stream\":\"utf8\"", "\"Stream\":\"utf8\\u0000\""),
        bad(INVALID),
    ));
    c.push(json_case(
        "json raw NUL byte in Stream",
        bytes_with(&b, "\"Stream\":\"utf8\"", b"\"Stream\":\"ut\x00f8\""),
        bad(INVALID),
    ));
    c.push(json_case(
        "json NUL byte after the object",
        [b.as_bytes(), b"\0"].concat(),
        bad(INVALID),
    ));
    c.push(json_case(
        "json with a UTF-8 byte-order mark",
        [b"\xef\xbb\xbf".as_slice(), b.as_bytes()].concat(),
        bad(INVALID),
    ));

    // ---- duplicates -----------------------------------------------------------
    let b = start("dupkey");
    c.push(json_case(
        "json duplicate Stream key",
        swap(&b, "\"Node\":\" \"", "\"Node\":\" \",\"Stream\":\"other\""),
        bad(INVALID),
    ));
    c.push(json_case(
        "json duplicate NotifyType (start then end)",
        swap(
            &b,
            "\"Node\":\" \"",
            "\"Node\":\" \",\"NotifyType\":\"PubEnd\"",
        ),
        bad(INVALID),
    ));
    c.push(json_case(
        "json Stream again as `stream` (case-folding readers)",
        swap(&b, "\"Node\":\" \"", "\"Node\":\" \",\"stream\":\"other\""),
        bad(INVALID),
    ));
    c.push(json_case(
        "json App again as escaped `\\u0041pp`",
        swap(&b, "\"Node\":\" \"", "\"Node\":\" \",\"\\u0041pp\":\"vod\""),
        bad(INVALID),
    ));
    c.push(json_case(
        "json PubParam k twice with different values",
        swap(
            &b,
            "\"PubParam\":{",
            "\"PubParam\":{\"k\":\"0000000000000000\",",
        ),
        bad(INVALID),
    ));

    // ---- not an object ----------------------------------------------------------
    c.push(json_case("json empty array body", "[]", bad(INVALID)));
    c.push(json_case(
        "json array holding a valid callback",
        format!("[{}]", start("in-array")),
        bad(INVALID),
    ));
    c.push(json_case("json string body", "\"PubStart\"", bad(INVALID)));
    c.push(json_case("json number body", "42", bad(INVALID)));
    c.push(json_case("json null body", "null", bad(INVALID)));
    c.push(json_case("json true body", "true", bad(INVALID)));
    c.push(json_case("json empty body", "", bad(INVALID)));
    c.push(json_case("json whitespace body", " \r\n ", bad(INVALID)));

    // ---- the wrong type in each field --------------------------------------------
    let b = start("types");
    let t = time_field(&b);
    for (name, from, to) in [
        ("json App as a number", "\"App\":\"live\"", "\"App\":1"),
        ("json App as null", "\"App\":\"live\"", "\"App\":null"),
        (
            "json Pubdomain as an array",
            "\"Pubdomain\":\"push.example.com\"",
            "\"Pubdomain\":[\"push.example.com\"]",
        ),
        (
            "json Stream as a number",
            "\"Stream\":\"types\"",
            "\"Stream\":7",
        ),
        (
            "json Stream as an object",
            "\"Stream\":\"types\"",
            "\"Stream\":{}",
        ),
        (
            "json Stream empty",
            "\"Stream\":\"types\"",
            "\"Stream\":\"\"",
        ),
        (
            "json NotifyType as a number",
            "\"NotifyType\":\"PubStart\"",
            "\"NotifyType\":1",
        ),
        (
            "json NotifyType in lower case",
            "\"NotifyType\":\"PubStart\"",
            "\"NotifyType\":\"pubstart\"",
        ),
        (
            "json Version as a number",
            "\"Version\":\"1.0\"",
            "\"Version\":1.0",
        ),
        (
            "json ClientIp not an address",
            "\"ClientIp\":\" \"",
            "\"ClientIp\":\"nope\"",
        ),
        (
            "json ClientPort as a word",
            "\"ClientPort\":\" \"",
            "\"ClientPort\":\"http\"",
        ),
        (
            "json ClientPort over 65535",
            "\"ClientPort\":\" \"",
            "\"ClientPort\":70000",
        ),
        (
            "json Node as an object",
            "\"Node\":\" \"",
            "\"Node\":{\"a\":1}",
        ),
        (
            "json Sequence as an array",
            "\"Sequence\":\"seq-types\"",
            "\"Sequence\":[1]",
        ),
    ] {
        c.push(json_case(name, swap(&b, from, to), bad(INVALID)));
    }
    let pp = &b[b.find("\"PubParam\":").unwrap()..b.len() - 1];
    c.push(json_case(
        "json PubParam as an array",
        swap(
            &b,
            pp,
            &format!("\"PubParam\":[{}]", &pp["\"PubParam\":".len()..]),
        ),
        bad(INVALID),
    ));
    c.push(json_case(
        "json start time as true",
        swap(&b, &t, "true"),
        bad(INVALID),
    ));
    c.push(json_case(
        "json start time as an object",
        swap(&b, &t, "{\"ms\":1}"),
        bad(INVALID),
    ));
    for (name, to) in [
        ("json UniqueName as an array", "\"UniqueName\":[\"u\"]"),
        (
            "json UniqueName as an object",
            "\"UniqueName\":{\"id\":\"u\"}",
        ),
    ] {
        c.push(json_case(
            name,
            swap(&b, "\"Sequence\":\"seq-types\"", to),
            bad(INVALID),
        ));
    }
    let e = v2("PubEnd", "types-end", Some("seq-types-end"), KS_KEY);
    let end_time = {
        let i = e.find("\"PubEndUnixTime\":").unwrap() + "\"PubEndUnixTime\":".len();
        e[i..i + e[i..].find(',').unwrap()].to_string()
    };
    for (name, field) in [
        (
            "json PubEndMessage as an object",
            "\"PubEndMessage\":{\"m\":3}",
        ),
        (
            "json PubEndMessage as an array",
            "\"PubEndMessage\":[\"x\"]",
        ),
    ] {
        c.push(json_case(
            name,
            swap(
                &e,
                "\"NotifyType\":\"PubEnd\"",
                &format!("\"NotifyType\":\"PubEnd\",{field}"),
            ),
            bad(INVALID),
        ));
    }
    for (name, to) in [
        ("json end time as true", "true"),
        ("json end time as an array", "[1]"),
        ("json end time of 12 digits", "\"145680001000\""),
    ] {
        c.push(json_case(name, swap(&e, &end_time, to), bad(INVALID)));
    }
    c.push(json_case(
        "json PubParam as a number",
        swap(&b, pp, "\"PubParam\":12345"),
        bad(INVALID),
    ));
    c.push(json_case(
        "json PubParam string that is not JSON",
        swap(&b, pp, "\"PubParam\":\"t=1&k=2\""),
        bad(INVALID),
    ));
    c.push(json_case(
        "json PubParam value that is an object",
        swap(&b, "\"PubParam\":{", "\"PubParam\":{\"x\":{\"y\":1},"),
        bad(INVALID),
    ));
    c.push(json_case(
        "json App missing",
        swap(&b, "\"App\":\"live\",", ""),
        bad(MISSING),
    ));
    c.push(json_case(
        "json Stream of 257 bytes",
        swap(
            &b,
            "\"Stream\":\"types\"",
            &format!("\"Stream\":\"{}\"", "s".repeat(257)),
        ),
        bad(INVALID),
    ));
    c.push(json_case(
        "json Stream with an escape character",
        swap(&b, "\"Stream\":\"types\"", "\"Stream\":\"ty\\u001bpes\""),
        bad(INVALID),
    ));

    // ---- push tokens ----------------------------------------------------------------
    // A stream whose token has a hex letter, so upper case differs.
    let tok_stream = (0..)
        .map(|i| format!("tok{i}"))
        .find(|s| {
            ks_token(KS_KEY, s, now_s() + 600)
                .1
                .bytes()
                .any(|b| b.is_ascii_alphabetic())
        })
        .unwrap();
    let tok = start(&tok_stream);
    let (t_ok, k_ok) = ks_token(KS_KEY, &tok_stream, now_s() + 600);
    let t_field = format!("\"t\":\"{t_ok}\"");
    let pp = &tok[tok.find("\"PubParam\":").unwrap()..tok.len() - 1];
    c.push(json_case(
        "token signed with another key",
        v2("PubStart", &tok_stream, Some("seq-tok"), "otherKey123"),
        bad(AUTH),
    ));
    let (t_old, k_old) = ks_token(KS_KEY, &tok_stream, now_s() - 3600);
    c.push(json_case(
        "token expired an hour ago",
        swap(
            &swap(&tok, &t_field, &format!("\"t\":\"{t_old}\"")),
            &format!("\"k\":\"{k_ok}\""),
            &format!("\"k\":\"{k_old}\""),
        ),
        bad(AUTH),
    ));
    c.push(json_case(
        "token in upper-case hex",
        swap(&tok, &k_ok, &k_ok.to_uppercase()),
        bad(AUTH),
    ));
    c.push(json_case(
        "token missing",
        swap(&tok, pp, "\"PubParam\":{}"),
        bad(AUTH),
    ));
    c.push(json_case(
        "token t of 9 digits",
        swap(&tok, &t_field, &format!("\"t\":\"{}\"", &t_ok[1..])),
        bad(AUTH),
    ));
    c.push(json_case(
        "token of another stream",
        swap(
            &tok,
            &format!("\"Stream\":\"{tok_stream}\""),
            "\"Stream\":\"tok-other\"",
        ),
        bad(AUTH),
    ));
    c.push(json_case(
        "app that is not configured",
        swap(&tok, "\"App\":\"live\"", "\"App\":\"vod\""),
        bad("NonExistApplication"),
    ));

    // ---- forms: encoding tricks, repeats, two places -----------------------------------
    let f = form_start("frm");
    c.push(form_case(
        "form app given again percent-encoded as %61pp",
        format!("{f}&%61pp=vod"),
        bad(INVALID),
    ));
    c.push(form_case(
        "form call given twice with conflicting values",
        format!("{f}&call=user_publish_done"),
        bad(INVALID),
    ));
    c.push(form_case(
        "form name given twice with the same value",
        format!("{f}&name=frm"),
        bad(INVALID),
    ));
    c.push(form_case(
        "form push param k given twice with conflicting values",
        format!("{f}&k=0000000000000000"),
        bad(INVALID),
    ));
    c.push(form_case(
        "form token in the fields and in tcurl with different values",
        swap(
            &f,
            "tcurl=rtmp://push.example.com/live",
            "tcurl=rtmp://push.example.com/live?k=0000000000000000",
        ),
        bad(INVALID),
    ));
    c.push(form_case(
        "form token in the fields and after name? with different values",
        swap(&f, "name=frm", "name=frm?k=0000000000000000"),
        bad(INVALID),
    ));
    c.push(form_case(
        "form stream with percent-encoded invalid UTF-8",
        swap(&f, "name=frm", "name=fr%FFm"),
        bad(INVALID),
    ));
    c.push(form_case(
        "form stream with percent-encoded overlong UTF-8",
        swap(&f, "name=frm", "name=fr%C0%AFm"),
        bad(INVALID),
    ));
    c.push(form_case(
        "form stream with percent-encoded NUL",
        swap(&f, "name=frm", "name=fr%00m"),
        bad(INVALID),
    ));
    c.push(form_case(
        "form stream with a raw NUL byte",
        bytes_with(&f, "name=frm", b"name=fr\0m"),
        bad(INVALID),
    ));
    c.push(form_case(
        "form stream with raw invalid UTF-8",
        bytes_with(&f, "name=frm", b"name=fr\xffm"),
        bad(INVALID),
    ));
    let plus = v1("user_publish", "my+cam", "vd-plus", KS_KEY);
    c.push(form_case(
        "form `+` is a space: token signed for the literal `my+cam`",
        plus,
        bad(AUTH),
    ));
    c.push(form_case(
        "form encoded `&k=` smuggled inside the stream name",
        swap(&f, "name=frm", "name=frm%26k%3D0000000000000000"),
        bad(AUTH),
    ));
    c.push(form_case(
        "form a field with an empty name",
        format!("={f}"),
        bad(INVALID),
    ));
    c.push(form_case(
        "form app given as nil",
        swap(&f, "app=live", "app=nil"),
        bad(MISSING),
    ));
    c.push(form_case(
        "form unknown call",
        swap(&f, "call=user_publish", "call=user_publish_now"),
        bad(INVALID),
    ));
    c.push(form_case(
        "form tcurl that is not a URL",
        swap(
            &f,
            "tcurl=rtmp://push.example.com/live",
            "tcurl=push.example.com",
        ),
        bad(INVALID),
    ));
    c.push(form_case(
        "form semicolons instead of ampersands",
        f.replace('&', ";"),
        bad(MISSING),
    ));
    c.push(form_case("form empty body", "", bad(MISSING)));
    c.push(form_case(
        "form content-type with a JSON body",
        start("json-as-form"),
        bad(MISSING),
    ));
    c.push(json_case(
        "json content-type with a form body",
        form_start("form-as-json"),
        bad(INVALID),
    ));

    // ---- content-type tricks ----------------------------------------------------------------
    let b = start("ctype");
    for (name, ct) in [
        ("content-type text/plain", "text/plain"),
        (
            "content-type multipart/form-data",
            "multipart/form-data; boundary=x",
        ),
        ("content-type application/json-seq", "application/json-seq"),
        ("content-type application/jsonx", "application/jsonx"),
        (
            "content-type two types in one value",
            "application/json, text/plain",
        ),
    ] {
        c.push(post(name, ct, b.clone(), bad("UnsupportedMediaType")));
    }
    // No content-type (KLS's old-version sender sends none): the body picks the
    // parser, and the strict parsers refuse what is not a callback with 400.
    let unlabelled = |name: &'static str, body: Vec<u8>, expect: Expect| Case {
        name,
        send: Send::Http1 {
            method: "POST",
            headers: Vec::new(),
            body,
        },
        expect,
    };
    c.push(unlabelled(
        "no content-type, plain text",
        b"hello, callback".to_vec(),
        bad(MISSING),
    ));
    c.push(unlabelled(
        "no content-type, truncated JSON",
        br#"{"App":"live","Stream":"#.to_vec(),
        bad(INVALID),
    ));
    c.push(unlabelled(
        "no content-type, JSON array of a callback",
        format!("[{}]", start("unl-arr")).into_bytes(),
        bad(MISSING),
    ));
    c.push(unlabelled(
        "no content-type, BOM before a valid JSON callback",
        format!("\u{feff}{}", start("unl-bom")).into_bytes(),
        bad(INVALID),
    ));
    c.push(unlabelled(
        "no content-type, form with a forged token",
        v1("user_publish", "unl-forged", "vd-unl", "someOtherKey").into_bytes(),
        bad(AUTH),
    ));
    c.push(unlabelled(
        "no content-type, JSON for an unknown app",
        start("unl-app")
            .replace("\"App\":\"live\"", "\"App\":\"vod\"")
            .into_bytes(),
        bad("NonExistApplication"),
    ));
    c.push(post(
        "content-type empty, form with a forged token",
        "",
        v1("user_publish", "unl-forged2", "vd-unl2", "someOtherKey"),
        bad(AUTH),
    ));
    c.push(Case {
        name: "multipart body holding a valid callback",
        send: Send::Http1 {
            method: "POST",
            headers: hdrs(&[("content-type", "multipart/form-data; boundary=XyZ")]),
            body: format!(
                "--XyZ\r\ncontent-disposition: form-data; name=\"cb\"\r\ncontent-type: application/json\r\n\r\n{}\r\n--XyZ--\r\n",
                start("multi")
            )
            .into_bytes(),
        },
        expect: bad("UnsupportedMediaType"),
    });

    // ---- methods -----------------------------------------------------------------------------
    for (name, method) in [
        ("method GET with a valid body", "GET"),
        ("method PUT with a valid body", "PUT"),
        ("method PATCH with a valid body", "PATCH"),
        ("method DELETE with a valid body", "DELETE"),
        ("method OPTIONS", "OPTIONS"),
    ] {
        c.push(Case {
            name,
            send: Send::Http1 {
                method,
                headers: hdrs(&[("content-type", JSON)]),
                body: start("method").into_bytes(),
            },
            expect: bad("MethodNotAllowed"),
        });
    }
    c.push(Case {
        name: "method HEAD (answer without a body)",
        send: Send::Http1 {
            method: "HEAD",
            headers: hdrs(&[("content-type", JSON)]),
            body: Vec::new(),
        },
        expect: Expect::Status(405),
    });

    // ---- size and framing ------------------------------------------------------------------------
    c.push(json_case(
        "body over max_body_bytes",
        swap(
            &start("big"),
            "\"Node\":\" \"",
            &format!("\"Node\":\" \",\"pad\":\"{}\"", "x".repeat(70_000)),
        ),
        bad("PayloadTooLarge"),
    ));
    let lie = start("cl-lies");
    c.push(Case {
        name: "content-length larger than the body, then the client half-closes",
        send: Send::Raw {
            bytes: format!(
                "POST /callback HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {JSON}\r\ncontent-length: {}\r\n\r\n{lie}",
                lie.len() + 100
            )
            .into_bytes(),
            half_close: true,
        },
        expect: Expect::NoAnswer,
    });
    c.push(Case {
        name: "content-length smaller than the body (the rest is not a request)",
        send: Send::Raw {
            bytes: format!(
                "POST /callback HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: {JSON}\r\ncontent-length: {}\r\n\r\n{lie}",
                lie.len() / 2
            )
            .into_bytes(),
            half_close: false,
        },
        expect: bad(INVALID),
    });
    c.push(Case {
        name: "two conflicting content-length headers",
        send: Send::Raw {
            bytes: format!(
                "POST /callback HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {JSON}\r\ncontent-length: {}\r\ncontent-length: 5\r\n\r\n{lie}",
                lie.len()
            )
            .into_bytes(),
            half_close: false,
        },
        expect: Expect::Status(400),
    });
    c.push(Case {
        name: "content-length and chunked together",
        send: Send::Raw {
            bytes: format!(
                "POST /callback HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {JSON}\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{lie}\r\n0\r\n\r\n",
                lie.len(),
                lie.len()
            )
            .into_bytes(),
            half_close: false,
        },
        expect: Expect::Status(400),
    });
    c.push(Case {
        name: "chunk size that is not hex",
        send: Send::Raw {
            bytes: format!(
                "POST /callback HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {JSON}\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{lie}\r\n0\r\n\r\n"
            )
            .into_bytes(),
            half_close: false,
        },
        expect: Expect::Status(400),
    });
    let slow = v2(
        "PubStart",
        "slow-forged",
        Some("seq-slow-forged"),
        "forgedKey9",
    );
    c.push(Case {
        name: "forged callback arriving slowly in 8 chunks",
        send: Send::Chunked {
            headers: hdrs(&[("content-type", JSON)]),
            pieces: slow
                .as_bytes()
                .chunks(slow.len() / 8 + 1)
                .map(<[u8]>::to_vec)
                .collect(),
            pause_ms: 150,
            trailers: Vec::new(),
        },
        expect: bad(AUTH),
    });
    let slow_trunc = start("slow-trunc");
    c.push(Case {
        name: "truncated callback trickling in with content-length",
        send: Send::Slow {
            headers: hdrs(&[("content-type", JSON)]),
            pieces: slow_trunc.as_bytes()[..slow_trunc.len() - 3]
                .chunks(40)
                .map(<[u8]>::to_vec)
                .collect(),
            pause_ms: 100,
        },
        expect: bad(INVALID),
    });

    // ---- spoofed guard headers --------------------------------------------------------------------
    let spoof = [
        (
            "x-callback-guard-verified",
            "format,app,push_token,stream_registry",
        ),
        ("x-callback-guard-key-id", "main"),
        ("x-callback-guard-format", "kls_v2"),
        ("x-callback-guard-event", "start"),
    ];
    let mut h = hdrs(&[("content-type", JSON)]);
    h.extend(hdrs(&spoof));
    c.push(Case {
        name: "forged token with every guard header spoofed",
        send: Send::Http1 {
            method: "POST",
            headers: h.clone(),
            body: v2("PubStart", "spoof1", Some("s"), "forgedKey9").into_bytes(),
        },
        expect: bad(AUTH),
    });
    c.push(Case {
        name: "broken JSON with every guard header spoofed",
        send: Send::Http1 {
            method: "POST",
            headers: h,
            body: b"{\"App\":".to_vec(),
        },
        expect: bad(INVALID),
    });

    // ---- the reverse: unusual but legal, forwarded byte for byte --------------------------------------
    let mut spoofed_valid = hdrs(&[("content-type", JSON)]);
    spoofed_valid.extend(hdrs(&[
        ("x-callback-guard-verified", "everything"),
        ("X-Callback-Guard-Key-Id", "attacker"),
        ("x-callback-guard-format", "kls_v1"),
        ("x-callback-guard-event", "end"),
        ("x-callback-guard-extra", "1"),
    ]));
    c.push(Case {
        name: "valid start with spoofed guard headers (overwritten, extra removed)",
        send: Send::Http1 {
            method: "POST",
            headers: spoofed_valid.clone(),
            body: start("ok-spoofed").into_bytes(),
        },
        expect: Expect::Forward("kls_v2", "start"),
    });
    c.push(Case {
        name: "valid start over h2c with spoofed guard headers",
        send: Send::H2 {
            headers: spoofed_valid,
            frames: {
                let b = start("ok-h2-spoofed").into_bytes();
                vec![b[..20].to_vec(), b[20..].to_vec()]
            },
        },
        expect: Expect::Forward("kls_v2", "start"),
    });
    c.push(Case {
        name: "valid chunked start with a spoofed guard trailer",
        send: Send::Chunked {
            headers: hdrs(&[("content-type", JSON)]),
            pieces: vec![start("ok-trailer").into_bytes()],
            pause_ms: 0,
            trailers: hdrs(&[("x-callback-guard-verified", "everything")]),
        },
        expect: Expect::Forward("kls_v2", "start"),
    });
    for (name, body, format) in [
        (
            "no content-type, JSON start",
            start("ok-unl-json"),
            "kls_v2",
        ),
        (
            "no content-type, JSON start after CR LF and tabs",
            format!("\r\n\t {}", start("ok-unl-ws")),
            "kls_v2",
        ),
        (
            "no content-type, KLS form start",
            form_start("ok-unl-form"),
            "kls_v1",
        ),
    ] {
        c.push(Case {
            name,
            send: Send::Http1 {
                method: "POST",
                headers: Vec::new(),
                body: body.into_bytes(),
            },
            expect: Expect::Forward(format, "start"),
        });
    }
    c.push(post(
        "content-type empty, KLS form start",
        "",
        form_start("ok-unl-empty"),
        Expect::Forward("kls_v1", "start"),
    ));
    let uni = "直播流-😀-ü";
    c.push(json_case(
        "unicode stream name",
        start(uni),
        Expect::Forward("kls_v2", "start"),
    ));
    c.push(json_case(
        "unicode stream name written as JSON escapes",
        {
            let b = start("\u{76f4}\u{64ad}");
            swap(&b, "\"Stream\":\"直播\"", "\"Stream\":\"\\u76f4\\u64ad\"")
        },
        Expect::Forward("kls_v2", "start"),
    ));
    c.push(json_case(
        "extra unknown fields of every type",
        swap(
            &start("ok-extra"),
            "\"Node\":\" \"",
            "\"Node\":\" \",\"Ext\":{\"a\":[1,2.5,-3,null,true,{\"b\":\"c\"}]},\"流\":\"值\",\"Big\":12345678901234567890,\"n\":null",
        ),
        Expect::Forward("kls_v2", "start"),
    ));
    c.push(json_case(
        "number-typed push params (t as an integer, extra numbers)",
        {
            let b = start("ok-numbers");
            let (t, _) = ks_token(KS_KEY, "ok-numbers", now_s() + 600);
            let b = swap(&b, &format!("\"t\":\"{t}\""), &format!("\"t\":{t}"));
            swap(&b, "\"PubParam\":{", "\"PubParam\":{\"p1\":11,\"p2\":-2.5,")
        },
        Expect::Forward("kls_v2", "start"),
    ));
    c.push(json_case(
        "2024 shape: PubParam as a JSON string, integer times, string port",
        {
            let q = token_query("ok-2024");
            let (t, k) = q.split_once("&k=").unwrap();
            let pp = json!({"t": &t[2..], "k": k, "extra": 1}).to_string();
            json!({
                "Version": "1.0", "App": "live", "Pubdomain": "push.example.com",
                "Stream": "ok-2024", "PubStartUnixTime": now_s() * 1000, "NotifyType": "PubStart",
                "ClientIp": "203.0.113.9", "ClientPort": "17102", "Node": "n1",
                "UniqueName": "u-2024", "Sequence": "s-2024", "PubParam": pp,
            })
            .to_string()
        },
        Expect::Forward("kls_v2", "start"),
    ));
    c.push(json_case(
        "2020 shape: start time as a string, pretty-printed",
        {
            let b = start("ok-2020");
            let t = time_field(&b);
            serde_json::to_string_pretty(
                &serde_json::from_str::<serde_json::Value>(&swap(&b, &t, &format!("\"{t}\"")))
                    .unwrap(),
            )
            .unwrap()
        },
        Expect::Forward("kls_v2", "start"),
    ));
    c.push(json_case(
        "end of a started stream",
        v2("PubEnd", "ok-spoofed", Some("seq-ok-spoofed"), KS_KEY),
        Expect::Forward("kls_v2", "end"),
    ));
    c.push(post(
        "content-type in upper case with a charset",
        "Application/JSON; charset=UTF-8",
        start("ok-ctype"),
        Expect::Forward("kls_v2", "start"),
    ));
    c.push(json_case(
        "stream name of exactly 256 bytes",
        v2("PubStart", &"s".repeat(256), Some("seq-256"), KS_KEY),
        Expect::Forward("kls_v2", "start"),
    ));
    c.push(form_case(
        "form seed shape",
        form_start("ok-form"),
        Expect::Forward("kls_v1", "start"),
    ));
    c.push(post(
        "form content-type in upper case",
        "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
        form_start("ok-form-ct"),
        Expect::Forward("kls_v1", "start"),
    ));
    c.push(form_case(
        "form `+` as a space in the stream name",
        {
            let f = v1("user_publish", "my cam", "vd-mycam", KS_KEY);
            swap(&f, "name=my cam", "name=my+cam")
        },
        Expect::Forward("kls_v1", "start"),
    ));
    c.push(form_case(
        "form percent-encoded unicode stream and call",
        {
            let f = v1("user_publish", "直播流", "vd-uni", KS_KEY);
            let f = swap(&f, "name=直播流", "name=%E7%9B%B4%E6%92%AD%E6%B5%81");
            swap(&f, "call=user_publish", "call=user%5Fpublish")
        },
        Expect::Forward("kls_v1", "start"),
    ));
    c.push(form_case(
        "form push param repeated with the same value",
        {
            let f = form_start("ok-repeat");
            let k = f.split("&k=").nth(1).unwrap().to_string();
            format!("{f}&k={k}")
        },
        Expect::Forward("kls_v1", "start"),
    ));
    c.push(form_case(
        "form token only in tcurl's query, nil and empty extras",
        format!(
            "app=live&name=ok-tcurl&swfurl=nil&flashver=&tcurl=rtmp://push.example.com/live?{}&call=user_publish&vdoid=vd-tcurl",
            token_query("ok-tcurl").replace('&', "%26")
        ),
        Expect::Forward("kls_v1", "start"),
    ));
    c.push(form_case(
        "form token only after name?",
        format!(
            "app=live&name=ok-nameq?{}&swfurl=nil&flashver=nil&tcurl=rtmp://push.example.com/live&call=user_publish&vdoid=vd-nameq",
            token_query("ok-nameq").replace('&', "%26")
        ),
        Expect::Forward("kls_v1", "start"),
    ));
    c.push(form_case(
        "nginx-rtmp publish with extra fields",
        format!(
            "app=live&flashver=FMLE/3.0%20(compatible%3B%20Lavf59.27&swfurl=&tcurl=rtmp://127.0.0.1:19350/live&pageurl=&addr=127.0.0.1&clientid=7&call=publish&name=ok-nginx&type=live&{}&extra=1",
            token_query("ok-nginx")
        ),
        Expect::Forward("nginx_rtmp", "start"),
    ));
    // ---- plays (issue 22): names starting with "play " are counted as plays --
    let nginx_play = |call: &str, stream: &str, query: &str| {
        format!(
            "app=live&flashver=LNX%209,0,124,2&swfurl=&tcurl=rtmp://127.0.0.1:19350/live&pageurl=&addr=127.0.0.1&clientid=9&call={call}&name={stream}&start=4294965296&duration=0&reset=0&{query}"
        )
    };
    let soon = now_s() + 600;
    let ago = now_s() - 7200;
    let srs_play = |action: &str, stream: &str, query: &str| {
        let page = if action == "on_play" {
            r#","pageUrl":"""#
        } else {
            ""
        };
        format!(
            r#"{{"server_id":"vid-cat","service_id":"svc","action":"{action}","client_id":"p-{stream}","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","stream":"{stream}","tcUrl":"rtmp://127.0.0.1:1935/live","param":"?{query}"{page},"stream_url":"/live/{stream}","stream_id":"vid-s"}}"#
        )
    };
    for (name, body, expect) in [
        (
            "play nginx-rtmp signed play",
            nginx_play("play", "pl-ok", &play_query("pl-ok", soon)),
            Expect::Forward("nginx_rtmp", "play"),
        ),
        (
            "play nginx-rtmp a second viewer of the same stream",
            nginx_play("play", "pl-ok", &play_query("pl-ok", soon))
                .replace("clientid=9", "clientid=10"),
            Expect::Forward("nginx_rtmp", "play"),
        ),
        (
            "play nginx-rtmp play_done with an expired token",
            nginx_play("play_done", "pl-old", &play_query("pl-old", ago)),
            Expect::Forward("nginx_rtmp", "play_end"),
        ),
        (
            "play nginx-rtmp update_play",
            nginx_play("update_play", "pl-ok", &play_query("pl-ok", soon)),
            Expect::Forward("nginx_rtmp", "play_update"),
        ),
        (
            "play nginx-rtmp forged token",
            nginx_play("play", "pl-bad", &format!("t={soon}&k=0123456789abcdef")),
            bad("AuthencationFailed"),
        ),
        (
            "play nginx-rtmp expired token",
            nginx_play("play", "pl-old", &play_query("pl-old", ago)),
            bad("AuthencationFailed"),
        ),
        (
            "play nginx-rtmp with a push token",
            nginx_play("play", "pl-push", &token_query("pl-push")),
            bad("AuthencationFailed"),
        ),
        (
            "play nginx-rtmp of an unknown app",
            nginx_play("play", "pl-app", &play_query("pl-app", soon))
                .replace("app=live", "app=vod"),
            bad("NonExistApplication"),
        ),
        (
            "push nginx-rtmp publish with a play token",
            nginx_play("publish", "pu-play", &play_query("pu-play", soon))
                .replace("&start=4294965296&duration=0&reset=0", "&type=live"),
            bad("AuthencationFailed"),
        ),
        (
            "nginx-rtmp play with the player's own start arg",
            nginx_play(
                "play",
                "pl-st",
                &format!("{}&start=5", play_query("pl-st", soon)),
            ),
            bad("InvalidParameterValue"),
        ),
    ] {
        c.push(form_case(name, body, expect));
    }
    for (name, body, expect) in [
        (
            "play srs on_play signed",
            srs_play("on_play", "pl-srs", &play_query("pl-srs", soon)),
            Expect::Forward("srs", "play"),
        ),
        (
            "play srs on_stop with an expired token",
            srs_play("on_stop", "pl-srs", &play_query("pl-srs", ago)),
            Expect::Forward("srs", "play_end"),
        ),
        (
            "play srs on_play with a push token",
            srs_play("on_play", "pl-srs2", &token_query("pl-srs2")),
            bad("AuthencationFailed"),
        ),
    ] {
        c.push(json_case(name, body, expect));
    }
    // ---- SRS http_hooks (issue 21) -------------------------------------------
    let srs = |action: &str, stream: &str, param: &str, change: serde_json::Value| {
        let mut v = json!({"server_id":"vid-cat","service_id":"svc","action":action,
            "client_id":format!("c-{stream}"),"ip":"127.0.0.1","vhost":"__defaultVhost__",
            "app":"live","tcUrl":"rtmp://127.0.0.1:1935/live","stream":stream,"param":param,
            "stream_url":format!("/live/{stream}"),"stream_id":"vid-s"});
        if let (Some(m), Some(ch)) = (v.as_object_mut(), change.as_object()) {
            for (k, x) in ch {
                if x.is_null() {
                    m.remove(k);
                } else {
                    m.insert(k.clone(), x.clone());
                }
            }
        }
        v.to_string()
    };
    let tok = |stream: &str| format!("?{}", token_query(stream));
    for (name, body, expect) in [
        (
            "srs on_play without pageUrl",
            srs("on_play", "srs-play", &tok("srs-play"), json!({})),
            Expect::Reject(400, "MissingParameter"),
        ),
        (
            "srs on_dvr (not a push hook)",
            srs("on_dvr", "srs-dvr", &tok("srs-dvr"), json!({})),
            Expect::Reject(400, "InvalidParameterValue"),
        ),
        (
            "srs action a number",
            srs("on_publish", "srs-an", &tok("srs-an"), json!({"action": 1})),
            Expect::Reject(400, "InvalidParameterValue"),
        ),
        (
            "srs client_id missing",
            srs(
                "on_publish",
                "srs-nc",
                &tok("srs-nc"),
                json!({"client_id": null}),
            ),
            Expect::Reject(400, "MissingParameter"),
        ),
        (
            "srs stream_id a number",
            srs(
                "on_publish",
                "srs-sid",
                &tok("srs-sid"),
                json!({"stream_id": 5}),
            ),
            Expect::Reject(400, "InvalidParameterValue"),
        ),
        (
            "srs on_hls seq_no a string",
            srs(
                "on_hls",
                "srs-seq",
                &tok("srs-seq"),
                json!({"duration":2.0,"cwd":"/","file":"/a.ts","url":"a.ts","m3u8":"/a.m3u8",
                    "m3u8_url":"a.m3u8","seq_no":"1"}),
            ),
            Expect::Reject(400, "InvalidParameterValue"),
        ),
        (
            "srs param without its ?",
            srs("on_publish", "srs-nq", &token_query("srs-nq"), json!({})),
            Expect::Reject(400, "InvalidParameterValue"),
        ),
        (
            "srs param with two different queries",
            srs(
                "on_publish",
                "srs-2q",
                &format!("{}?t=1", tok("srs-2q")),
                json!({}),
            ),
            Expect::Reject(400, "InvalidParameterValue"),
        ),
        (
            "srs param repeating k with another value",
            srs(
                "on_publish",
                "srs-rk",
                &format!("{}&k=0", tok("srs-rk")),
                json!({}),
            ),
            Expect::Reject(400, "InvalidParameterValue"),
        ),
        (
            "srs non-ASCII trap (query left in stream)",
            srs("on_publish", "srs-trap?u=é&t=1", "", json!({})),
            Expect::Reject(403, "AuthencationFailed"),
        ),
        (
            "srs no token",
            srs("on_publish", "srs-nt", "", json!({})),
            Expect::Reject(403, "AuthencationFailed"),
        ),
        (
            "srs forged token",
            srs("on_publish", "srs-ft", &tok("srs-other"), json!({})),
            Expect::Reject(403, "AuthencationFailed"),
        ),
        (
            "srs token for another app",
            srs(
                "on_publish",
                "srs-ap",
                &tok("srs-ap"),
                json!({"app": "vod"}),
            ),
            Expect::Reject(404, "NonExistApplication"),
        ),
        (
            "srs body with action and NotifyType",
            srs(
                "on_publish",
                "srs-mx",
                &tok("srs-mx"),
                json!({"NotifyType": "PubStart"}),
            ),
            Expect::Reject(400, "InvalidParameterValue"),
        ),
        (
            "srs app given twice",
            srs("on_publish", "srs-dup", &tok("srs-dup"), json!({}))
                .replace(r#""app":"live""#, r#""app":"live","app":"live""#),
            Expect::Reject(400, "InvalidParameterValue"),
        ),
        (
            "srs App next to app",
            srs("on_publish", "srs-case", &tok("srs-case"), json!({}))
                .replace(r#""app":"live""#, r#""app":"live","App":"vod""#),
            Expect::Reject(400, "InvalidParameterValue"),
        ),
        (
            "srs on_publish",
            srs("on_publish", "ok-srs", &tok("ok-srs"), json!({})),
            Expect::Forward("srs", "start"),
        ),
        (
            "srs on_publish, OBS-style doubled param",
            srs(
                "on_publish",
                "ok-srs-obs",
                &format!("{}{}", tok("ok-srs-obs"), tok("ok-srs-obs")),
                json!({}),
            ),
            Expect::Forward("srs", "start"),
        ),
        (
            "srs on_unpublish",
            srs("on_unpublish", "ok-srs-end", &tok("ok-srs-end"), json!({})),
            Expect::Forward("srs", "end"),
        ),
    ] {
        c.push(Case {
            name: Box::leak(name.to_string().into_boxed_str()),
            send: Send::Http1 {
                method: "POST",
                headers: hdrs(&[("content-type", JSON), ("user-agent", "SRS/6.0.157(Hang)")]),
                body: body.into_bytes(),
            },
            expect,
        });
    }
    let slow_ok = start("ok-slow");
    c.push(Case {
        name: "valid callback arriving slowly in 8 chunks",
        send: Send::Chunked {
            headers: hdrs(&[("content-type", JSON)]),
            pieces: slow_ok
                .as_bytes()
                .chunks(slow_ok.len() / 8 + 1)
                .map(<[u8]>::to_vec)
                .collect(),
            pause_ms: 100,
            trailers: Vec::new(),
        },
        expect: Expect::Forward("kls_v2", "start"),
    });
    let slow_cl = start("ok-slow-cl");
    c.push(Case {
        name: "valid callback trickling in with content-length",
        send: Send::Slow {
            headers: hdrs(&[("content-type", JSON)]),
            pieces: slow_cl.as_bytes().chunks(50).map(<[u8]>::to_vec).collect(),
            pause_ms: 60,
        },
        expect: Expect::Forward("kls_v2", "start"),
    });

    c
}

// ---- sending -------------------------------------------------------------------------------

fn request_head(method: &str, headers: &[(String, String)], extra: &str) -> String {
    let mut head =
        format!("{method} /callback HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(extra);
    head.push_str("\r\n");
    head
}

/// Reads one response and returns as soon as it is complete: waiting for
/// Envoy to close would cost its delayed-close timeout (1 s) per request.
fn read_all(s: TcpStream) -> Response {
    read_one(s, false)
}

fn read_one(mut s: TcpStream, head_only: bool) -> Response {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let r = parse(&buf);
            let have = buf.len() - split - 4;
            let done = if head_only || r.status == 204 || r.status == 304 {
                true
            } else if let Some(len) = r
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
            {
                have >= len
            } else if r.header("transfer-encoding").is_some() {
                buf.ends_with(b"0\r\n\r\n")
            } else {
                false
            };
            if done {
                return r;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return parse(&buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Parses the first response of `buf` (status 0 when there is none).
fn parse(buf: &[u8]) -> Response {
    let Some((status, headers, body_at)) = parse_head(buf) else {
        return Response {
            status: 0,
            headers: Vec::new(),
            body: buf.to_vec(),
        };
    };
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(buf.len() - body_at);
    let body = buf[body_at..(body_at + len).min(buf.len())].to_vec();
    Response {
        status,
        headers,
        body,
    }
}

fn send(port: u16, s: &Send) -> Response {
    match s {
        Send::Http1 {
            method,
            headers,
            body,
        } => {
            let cl = if body.is_empty() && !matches!(*method, "POST" | "PUT") {
                String::new()
            } else {
                format!("content-length: {}\r\n", body.len())
            };
            let mut bytes = request_head(method, headers, &cl).into_bytes();
            bytes.extend_from_slice(body);
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let _ = s.write_all(&bytes);
            read_one(s, *method == "HEAD")
        }
        Send::Raw { bytes, half_close } => {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let _ = s.write_all(bytes);
            if *half_close {
                let _ = s.shutdown(Shutdown::Write);
            }
            read_all(s)
        }
        Send::Chunked {
            headers,
            pieces,
            pause_ms,
            trailers,
        } => {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let head = request_head("POST", headers, "transfer-encoding: chunked\r\n");
            s.write_all(head.as_bytes()).unwrap();
            for p in pieces {
                std::thread::sleep(Duration::from_millis(*pause_ms));
                let _ = s.write_all(format!("{:x}\r\n", p.len()).as_bytes());
                let _ = s.write_all(p);
                let _ = s.write_all(b"\r\n");
            }
            let mut end = "0\r\n".to_string();
            for (k, v) in trailers {
                end.push_str(&format!("{k}: {v}\r\n"));
            }
            end.push_str("\r\n");
            let _ = s.write_all(end.as_bytes());
            read_all(s)
        }
        Send::Slow {
            headers,
            pieces,
            pause_ms,
        } => {
            let total: usize = pieces.iter().map(Vec::len).sum();
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let head = request_head("POST", headers, &format!("content-length: {total}\r\n"));
            s.write_all(head.as_bytes()).unwrap();
            for p in pieces {
                std::thread::sleep(Duration::from_millis(*pause_ms));
                let _ = s.write_all(p);
            }
            read_all(s)
        }
        Send::H2 { headers, frames } => {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let f: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            http2(port, "/callback", &h, &f, None)
        }
    }
}

fn sent_body(s: &Send) -> Vec<u8> {
    match s {
        Send::Http1 { body, .. } => body.clone(),
        Send::Chunked { pieces, .. } | Send::Slow { pieces, .. } => pieces.concat(),
        Send::H2 { frames, .. } => frames.concat(),
        Send::Raw { .. } => Vec::new(),
    }
}

/// What the receiver recorded, as raw JSON (headers and trailers included).
fn received(rx: &Receiver) -> Vec<serde_json::Value> {
    let r = http1(rx.port, "GET", "/__received", &[], b"");
    serde_json::from_slice::<serde_json::Value>(&r.body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn field<'a>(list: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
                .filter_map(|p| p[1].as_str())
                .collect()
        })
        .unwrap_or_default()
}

fn body_of(r: &serde_json::Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(r["body_b64"].as_str().unwrap_or_default())
        .unwrap_or_default()
}

/// Checks one case; returns every problem found.
fn check(case: &Case, r: &Response, got: &[serde_json::Value]) -> Vec<String> {
    let mut p = Vec::new();
    let text = String::from_utf8_lossy(&r.body);
    match &case.expect {
        Expect::Reject(status, code) => {
            if r.status != *status {
                p.push(format!("status {} (want {status}): {text}", r.status));
            }
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            if v["Error"]["Code"] != *code || v["Error"]["Type"] != "Sender" {
                p.push(format!("code {} (want {code}): {text}", v["Error"]["Code"]));
            }
            if v["Error"]["Message"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
            {
                p.push("no message".into());
            }
        }
        Expect::Status(status) => {
            if r.status != *status {
                p.push(format!("status {} (want {status}): {text}", r.status));
            }
        }
        Expect::NoAnswer => {
            if r.status != 0 {
                p.push(format!("answered {} (want no answer): {text}", r.status));
            }
        }
        Expect::Forward(format, event) => {
            if r.status != 200 {
                p.push(format!("status {} (want 200, forwarded): {text}", r.status));
            }
            match got {
                [one] => {
                    if body_of(one) != sent_body(&case.send) {
                        p.push("forwarded body differs from the one sent".into());
                    }
                    let h = &one["headers"];
                    let (verified, key_id) = if event.starts_with("play") {
                        (VERIFIED_PLAY, "viewers")
                    } else {
                        (VERIFIED, "main")
                    };
                    let want = [
                        ("x-callback-guard-format", *format),
                        ("x-callback-guard-event", *event),
                        ("x-callback-guard-verified", verified),
                        ("x-callback-guard-key-id", key_id),
                    ];
                    for (name, value) in want {
                        if field(h, name) != [value] {
                            p.push(format!("{name} is {:?}, want [{value:?}]", field(h, name)));
                        }
                    }
                    let stray: Vec<String> = ["headers", "trailers"]
                        .iter()
                        .flat_map(|part| one[*part].as_array().cloned().unwrap_or_default())
                        .filter_map(|pair| pair[0].as_str().map(str::to_string))
                        .filter(|k| {
                            k.starts_with("x-callback-guard") && !want.iter().any(|(w, _)| w == k)
                        })
                        .collect();
                    let trailers = one["trailers"].as_array().map_or(0, Vec::len);
                    if !stray.is_empty()
                        || trailers > 0
                            && !field(&one["trailers"], "x-callback-guard-verified").is_empty()
                    {
                        p.push(format!(
                            "stray guard headers or trailers reached the upstream: {stray:?} {}",
                            one["trailers"]
                        ));
                    }
                }
                _ => p.push(format!("the receiver got {} requests (want 1)", got.len())),
            }
        }
    }
    if !matches!(case.expect, Expect::Forward(..)) && !got.is_empty() {
        p.push(format!(
            "the receiver saw {} request(s): {:?}",
            got.len(),
            got.iter()
                .map(|g| String::from_utf8_lossy(&body_of(g))
                    .chars()
                    .take(120)
                    .collect::<String>())
                .collect::<Vec<_>>()
        ));
    }
    p
}

#[test]
fn adversarial_catalog_through_envoy() {
    let cases = catalog();
    let rx = Receiver::start();
    let mut cfg = base_config();
    cfg["formats"] = json!(["kls_v2", "kls_v1", "nginx_rtmp", "srs"]);
    cfg["play_auth"] = json!({"scheme": "ks_md5", "keys": [{"id": "viewers", "secret": PLAY_KEY}]});
    let Some(envoy) = Envoy::start(EnvoyOpts::new(cfg, rx.port)) else {
        return;
    };
    let hostile = cases
        .iter()
        .filter(|c| !matches!(c.expect, Expect::Forward(..)))
        .count();
    assert!(hostile >= 50, "only {hostile} hostile cases");
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "duplicate case name {}", c.name);
    }

    let mut failures = Vec::new();
    let mut want_codes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut want_play_codes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut want_plays_forwarded = 0;
    for case in &cases {
        rx.clear();
        let t0 = std::time::Instant::now();
        let r = send(envoy.port, &case.send);
        if t0.elapsed() > Duration::from_secs(1) {
            eprintln!("catalog: [{}] took {:?}", case.name, t0.elapsed());
        }
        let got = received(&rx);
        for problem in check(case, &r, &got) {
            failures.push(format!("[{}] {problem}", case.name));
        }
        // A play (its body parsed as one) is counted apart from pushes.
        let play = case.name.starts_with("play ");
        match case.expect {
            Expect::Reject(_, code) if play => *want_play_codes.entry(code).or_default() += 1,
            Expect::Reject(_, code) => *want_codes.entry(code).or_default() += 1,
            Expect::Forward(..) if play => want_plays_forwarded += 1,
            _ => {}
        }
        if case.name.starts_with("method HEAD") {
            *want_codes.entry("MethodNotAllowed").or_default() += 1;
        }
    }

    // Every filter rejection was counted under its code, plays apart.
    let stats = envoy.stats();
    let counters = want_codes
        .iter()
        .map(|(code, n)| (format!("callback_guard_requests_rejected_{code}"), *n))
        .chain(
            want_play_codes
                .iter()
                .map(|(code, n)| (format!("callback_guard_plays_rejected_{code}"), *n)),
        )
        .chain([(
            "callback_guard_plays_forwarded".to_string(),
            want_plays_forwarded,
        )]);
    for (name, n) in counters {
        let have = stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{}} ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if have != n {
            failures.push(format!("counter {name} = {have}, want {n}"));
        }
    }
    let log = envoy.log();
    for bad_line in log
        .lines()
        .filter(|l| l.contains("[critical]") || l.contains("panicked"))
    {
        failures.push(format!("Envoy log: {bad_line}"));
    }
    let forwarded = cases.len() - hostile;
    eprintln!(
        "catalog: {} cases ({hostile} hostile, {forwarded} legal), {} mismatches",
        cases.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} catalog entries failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
