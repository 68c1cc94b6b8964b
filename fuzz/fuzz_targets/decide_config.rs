//! `decide()` with a configuration the fuzzer generates too.
//!
//! The input (via `arbitrary`) is a configuration (every key of the contract,
//! valid and invalid values, secrets inline or from the environment, or raw
//! bytes as configuration text) and up to eight requests decided in order on
//! one registry. Bodies are raw bytes or callbacks built from the spec's seed
//! shapes (KLS JSON, KLS and nginx-rtmp forms with every push and play
//! `call`, SRS hooks with every action), and can carry correctly signed push
//! or play tokens, shared keys and webhook signatures made with the
//! configuration's own keys, so the fuzzer gets past every check to the
//! registry and the forward path.
//!
//! Beyond the shared oracles: a token signed with a key of the other purpose
//! (a push token on a play, a play token on a push) never gets a callback
//! forwarded when its own purpose is token-checked.
#![no_main]

use arbitrary::Arbitrary;
use callback_guard::auth::{token, webhook};
use callback_guard::config::{Config, Scheme};
use callback_guard::registry::MemoryStore;
use callback_guard::Verdict;
use cg_fuzz::OwnedRequest;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

/// Distinctive secrets the oracle watches for (the last three are meant for
/// play keys).
const SECRETS: [&str; 8] = [
    "fuzzKs0123456789",
    "second0Key42",
    "hmacKey-0123456789abcdef",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "sharedKey-fuzz-9",
    "fuzzPlay01234567",
    "play0second",
    "playHmacKey-0123456789",
];
/// The secrets a play key's `Fixed(n)` picks from: mostly its own, and one
/// push secret (a configuration that mixes them up is an error).
const PLAY_SECRETS: [&str; 4] = [SECRETS[5], SECRETS[6], SECRETS[7], SECRETS[0]];
const ENV_VARS: [&str; 4] = ["CG_FUZZ_A", "CG_FUZZ_B", "CG_FUZZ_UNSET", "CG_FUZZ_P"];

fn env(name: &str) -> Option<String> {
    match name {
        "CG_FUZZ_A" => Some(SECRETS[0].into()),
        "CG_FUZZ_B" => Some(SECRETS[2].into()),
        "CG_FUZZ_P" => Some(SECRETS[5].into()),
        "CG_FUZZ_EMPTY" => Some(String::new()),
        _ => None,
    }
}

#[derive(Arbitrary, Debug)]
enum Name {
    Live,
    Vod,
    Unicode,
    Spaces,
    Long,
    Control,
    Custom(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Live => "live".into(),
            Name::Vod => "vod".into(),
            Name::Unicode => "直播-流".into(),
            Name::Spaces => " a b ".into(),
            Name::Long => "s".repeat(257),
            Name::Control => "a\u{0}b".into(),
            Name::Custom(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum SecretSrc {
    Fixed(u8),
    Env(u8),
    Both(u8),
    Neither,
    Custom(String),
}

#[derive(Arbitrary, Debug)]
struct FKey {
    id: Option<Name>,
    secret: SecretSrc,
    apps: Option<Vec<Name>>,
    domains: Option<Vec<Name>>,
}

#[derive(Arbitrary, Debug)]
struct FConfig {
    raw: Option<Vec<u8>>,
    max_body_bytes: Option<u32>,
    apps: Option<Vec<Name>>,
    formats: Option<Vec<u8>>,
    push_auth: Option<(bool, Vec<FKey>, Option<u32>)>,
    allow_cidrs: Option<Vec<([u8; 4], u8, bool)>>,
    trusted_xff_hops: Option<u8>,
    shared_key: Option<(Option<Name>, Option<Name>, Vec<FKey>)>,
    webhook: Option<(Vec<FKey>, Option<u16>)>,
    dup: Option<(Option<bool>, Option<u32>, Option<u32>)>,
    max_event_age_s: Option<u32>,
    unknown_key: bool,
    /// push_auth's shape: hmac_sha256 or ks_md5, keys, clock skew.
    play_auth: Option<(bool, Vec<FKey>, Option<u32>)>,
}

/// Which keys a generated key list is for: ids `k0…` and any secret for
/// push_auth and the sender checks, ids `p0…` and play secrets for play_auth.
#[derive(Clone, Copy, PartialEq)]
enum KeysFor {
    Push,
    Play,
}

fn key_json(k: &FKey, i: usize, placed: &mut Vec<&'static str>, keys_for: KeysFor) -> Value {
    let mut m = Map::new();
    let prefix = if keys_for == KeysFor::Play { "p" } else { "k" };
    m.insert(
        "id".into(),
        json!(k.id.as_ref().map_or(format!("{prefix}{i}"), Name::text)),
    );
    let table: &[&'static str] = match keys_for {
        KeysFor::Push => &SECRETS,
        KeysFor::Play => &PLAY_SECRETS,
    };
    let fixed = |n: u8| table[n as usize % table.len()];
    let var = |n: u8| ENV_VARS[n as usize % ENV_VARS.len()];
    match &k.secret {
        SecretSrc::Fixed(n) => {
            placed.push(fixed(*n));
            m.insert("secret".into(), json!(fixed(*n)));
        }
        SecretSrc::Env(n) => {
            m.insert("secret_env".into(), json!(var(*n)));
        }
        SecretSrc::Both(n) => {
            placed.push(fixed(*n));
            m.insert("secret".into(), json!(fixed(*n)));
            m.insert("secret_env".into(), json!(var(*n)));
        }
        SecretSrc::Neither => {}
        SecretSrc::Custom(s) => {
            m.insert("secret".into(), json!(s));
        }
    }
    if let Some(a) = &k.apps {
        m.insert(
            "apps".into(),
            json!(a.iter().map(Name::text).collect::<Vec<_>>()),
        );
    }
    if let Some(d) = &k.domains {
        m.insert(
            "domains".into(),
            json!(d.iter().map(Name::text).collect::<Vec<_>>()),
        );
    }
    Value::Object(m)
}

impl FConfig {
    /// The configuration text and the fixed secrets placed in it.
    fn text(&self) -> (Vec<u8>, Vec<&'static str>) {
        if let Some(raw) = &self.raw {
            return (raw.clone(), Vec::new());
        }
        let mut placed = Vec::new();
        let mut m = Map::new();
        if let Some(n) = self.max_body_bytes {
            m.insert("max_body_bytes".into(), json!(n));
        }
        if let Some(a) = &self.apps {
            m.insert(
                "apps".into(),
                json!(a.iter().map(Name::text).collect::<Vec<_>>()),
            );
        }
        if let Some(f) = &self.formats {
            let names: Vec<&str> = f
                .iter()
                .map(|b| ["kls_v2", "kls_v1", "nginx_rtmp", "srs", "KLS_V2"][*b as usize % 5])
                .collect();
            m.insert("formats".into(), json!(names));
        }
        for (section, auth, keys_for) in [
            ("push_auth", &self.push_auth, KeysFor::Push),
            ("play_auth", &self.play_auth, KeysFor::Play),
        ] {
            let Some((hmac, keys, skew)) = auth else {
                continue;
            };
            let mut pa = Map::new();
            pa.insert(
                "scheme".into(),
                json!(if *hmac { "hmac_sha256" } else { "ks_md5" }),
            );
            let ks: Vec<Value> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| key_json(k, i, &mut placed, keys_for))
                .collect();
            pa.insert("keys".into(), Value::Array(ks));
            if let Some(s) = skew {
                pa.insert("clock_skew_s".into(), json!(s));
            }
            m.insert(section.into(), Value::Object(pa));
        }
        let mut ca = Map::new();
        if let Some(cidrs) = &self.allow_cidrs {
            let list: Vec<String> = cidrs
                .iter()
                .map(|(ip, len, bare)| {
                    let a = std::net::Ipv4Addr::from(*ip);
                    if *bare {
                        a.to_string()
                    } else {
                        format!("{a}/{}", len % 40)
                    }
                })
                .collect();
            ca.insert("allow_cidrs".into(), json!(list));
        }
        if let Some(h) = self.trusted_xff_hops {
            ca.insert("trusted_xff_hops".into(), json!(h % 5));
        }
        if let Some((q, h, keys)) = &self.shared_key {
            let mut sk = Map::new();
            if let Some(q) = q {
                sk.insert("query_param".into(), json!(q.text()));
            }
            if let Some(h) = h {
                sk.insert("header".into(), json!(h.text()));
            }
            let ks: Vec<Value> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| key_json(k, i, &mut placed, KeysFor::Push))
                .collect();
            sk.insert("keys".into(), Value::Array(ks));
            ca.insert("shared_key".into(), Value::Object(sk));
        }
        if let Some((keys, tol)) = &self.webhook {
            let mut w = Map::new();
            let ks: Vec<Value> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| key_json(k, i, &mut placed, KeysFor::Push))
                .collect();
            w.insert("keys".into(), Value::Array(ks));
            if let Some(t) = tol {
                w.insert("tolerance_s".into(), json!(t));
            }
            ca.insert("webhook_signature".into(), Value::Object(w));
        }
        if !ca.is_empty() {
            m.insert("callback_auth".into(), Value::Object(ca));
        }
        if let Some((reject, ttl, max)) = &self.dup {
            let mut d = Map::new();
            if let Some(r) = reject {
                d.insert("reject".into(), json!(r));
            }
            if let Some(t) = ttl {
                d.insert("ttl_s".into(), json!(t % 200_000));
            }
            if let Some(x) = max {
                d.insert("max_streams".into(), json!(x % 5000));
            }
            m.insert("duplicate_streams".into(), Value::Object(d));
        }
        if let Some(a) = self.max_event_age_s {
            m.insert("max_event_age_s".into(), json!(a));
        }
        if self.unknown_key {
            m.insert("max_body".into(), json!(1));
        }
        (Value::Object(m).to_string().into_bytes(), placed)
    }
}

#[derive(Arbitrary, Debug)]
enum Token {
    None,
    /// Signed with the configuration's key `key`, expiring `expiry` s from
    /// now: a key of the callback's own purpose (push_auth for a push,
    /// play_auth for a play), or with `other_purpose` of the other one.
    Signed {
        key: u8,
        other_scheme: bool,
        expiry: i32,
        kid: bool,
        flip: Option<u8>,
        t_as_number: bool,
        other_purpose: bool,
    },
    Raw(String, String),
}

/// A form's `call`: KLS old version, nginx-rtmp's pushes and plays.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Call {
    UserPublish,
    UserPublishDone,
    Publish,
    PublishDone,
    UpdatePublish,
    Play,
    PlayDone,
    UpdatePlay,
}

impl Call {
    fn text(self) -> &'static str {
        match self {
            Call::UserPublish => "user_publish",
            Call::UserPublishDone => "user_publish_done",
            Call::Publish => "publish",
            Call::PublishDone => "publish_done",
            Call::UpdatePublish => "update_publish",
            Call::Play => "play",
            Call::PlayDone => "play_done",
            Call::UpdatePlay => "update_play",
        }
    }

    fn nginx(self) -> bool {
        !matches!(self, Call::UserPublish | Call::UserPublishDone)
    }

    fn play(self) -> bool {
        matches!(self, Call::Play | Call::PlayDone | Call::UpdatePlay)
    }
}

/// An SRS hook's `action`.
#[derive(Arbitrary, Debug)]
enum Action {
    Publish,
    Unpublish,
    Hls,
    Play,
    Stop,
    Other(String),
}

impl Action {
    fn text(&self) -> &str {
        match self {
            Action::Publish => "on_publish",
            Action::Unpublish => "on_unpublish",
            Action::Hls => "on_hls",
            Action::Play => "on_play",
            Action::Stop => "on_stop",
            Action::Other(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum TokenPlace {
    Extra,
    Tcurl,
    Name,
    ExtraAndTcurl,
}

#[derive(Arbitrary, Debug)]
enum Body {
    Raw(Vec<u8>),
    V2 {
        start: bool,
        app: Name,
        stream: Name,
        domain: Option<Name>,
        time: Option<(bool, i64)>,
        session: Option<Name>,
        token: Token,
        params_as_string: bool,
        extra: Vec<(String, String)>,
    },
    Form {
        call: Call,
        app: Name,
        stream: Name,
        domain: Option<Name>,
        session: Option<Name>,
        token: Token,
        place: TokenPlace,
        extra: Vec<(String, String)>,
    },
    /// An SRS hook shaped like SRS 6's (tests/fixtures/srs).
    Srs {
        action: Action,
        app: Name,
        stream: Name,
        vhost: Option<Name>,
        client: Option<Name>,
        token: Token,
        /// on_play's `pageUrl` (SRS always sends it on a play).
        page_url: bool,
        extra: Vec<(String, String)>,
    },
}

impl Body {
    /// Whether the body is a play callback, by the spec's names (written out
    /// here), and whether it carries a correctly made token of the other
    /// purpose.
    fn purpose(&self) -> (bool, bool) {
        let (play, token) = match self {
            Body::Raw(_) => return (false, false),
            Body::V2 { token, .. } => (false, token),
            Body::Form { call, token, .. } => (call.play(), token),
            Body::Srs { action, token, .. } => {
                (matches!(action.text(), "on_play" | "on_stop"), token)
            }
        };
        let crossed = matches!(
            token,
            Token::Signed {
                other_purpose: true,
                flip: None,
                ..
            }
        );
        (play, crossed)
    }
}

#[derive(Arbitrary, Debug)]
enum CType {
    Json,
    Form,
    JsonCharset,
    FormUpper,
    Multipart,
    Missing,
    Custom(String),
}

#[derive(Arbitrary, Debug)]
enum Presented {
    Key(u8),
    Wrong(String),
}

#[derive(Arbitrary, Debug)]
enum Hook {
    Signed { key: u8, id: String, skew: i16 },
    Raw(Option<String>, Option<String>, Option<String>),
}

#[derive(Arbitrary, Debug)]
struct FReq {
    method: Option<String>,
    ctype: CType,
    body: Body,
    in_query: Option<Presented>,
    in_header: Option<Presented>,
    hook: Option<Hook>,
    xff: Option<String>,
    source: Option<[u8; 4]>,
    advance_s: u16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: FConfig,
    now: u32,
    requests: Vec<FReq>,
}

/// A token for a callback about `app`/`stream`; `play` says whether the
/// callback is a play (whose own keys are play_auth's).
fn sign_token(
    cfg: &Config,
    t: &Token,
    app: &str,
    stream: &str,
    now: u64,
    play: bool,
) -> Vec<(String, String)> {
    match t {
        Token::None => Vec::new(),
        Token::Raw(t, k) => vec![("t".into(), t.clone()), ("k".into(), k.clone())],
        Token::Signed {
            key,
            other_scheme,
            expiry,
            kid,
            flip,
            t_as_number: _,
            other_purpose,
        } => {
            let auth = if play != *other_purpose {
                &cfg.play_auth
            } else {
                &cfg.push_auth
            };
            let Some(pa) = auth else {
                return Vec::new();
            };
            if pa.keys.is_empty() {
                return Vec::new();
            }
            let k = &pa.keys[*key as usize % pa.keys.len()];
            let scheme = match (pa.scheme, other_scheme) {
                (s, false) => s,
                (Scheme::KsMd5, true) => Scheme::HmacSha256,
                (Scheme::HmacSha256, true) => Scheme::KsMd5,
            };
            let exp = now.saturating_add_signed(i64::from(*expiry));
            let q = token::sign(scheme, k.secret.expose(), app, stream, exp);
            let mut out: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
                .map(|(a, b)| (a.into_owned(), b.into_owned()))
                .collect();
            if let Some(f) = flip {
                if let Some((_, v)) = out.get_mut(1) {
                    let mut b = v.clone().into_bytes();
                    if !b.is_empty() {
                        let i = *f as usize % b.len();
                        b[i] = if b[i] == b'0' { b'1' } else { b'0' };
                    }
                    *v = String::from_utf8_lossy(&b).into_owned();
                }
            }
            if *kid {
                out.push(("kid".into(), k.id.clone()));
            }
            out
        }
    }
}

fn t_as_number(t: &Token) -> bool {
    matches!(
        t,
        Token::Signed {
            t_as_number: true,
            ..
        }
    )
}

fn query(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn build_body(cfg: &Config, b: &Body, now: u64) -> Vec<u8> {
    match b {
        Body::Raw(v) => v.clone(),
        Body::V2 {
            start,
            app,
            stream,
            domain,
            time,
            session,
            token,
            params_as_string,
            extra,
        } => {
            let (app, stream) = (app.text(), stream.text());
            let mut m = Map::new();
            m.insert("Version".into(), json!("1.0"));
            m.insert("App".into(), json!(app));
            m.insert(
                "Pubdomain".into(),
                json!(domain
                    .as_ref()
                    .map_or("push.example.com".into(), Name::text)),
            );
            m.insert("Stream".into(), json!(stream));
            let tf = if *start {
                "PubStartUnixTime"
            } else {
                "PubEndUnixTime"
            };
            let tv = match time {
                None => json!(now * 1000),
                Some((true, d)) => json!((now * 1000).saturating_add_signed(*d).to_string()),
                Some((false, d)) => json!((now * 1000).saturating_add_signed(*d)),
            };
            m.insert(tf.into(), tv);
            m.insert(
                "NotifyType".into(),
                json!(if *start { "PubStart" } else { "PubEnd" }),
            );
            m.insert("ClientIp".into(), json!(" "));
            m.insert("ClientPort".into(), json!(" "));
            m.insert("Node".into(), json!(" "));
            if let Some(s) = session {
                m.insert("Sequence".into(), json!(s.text()));
            }
            let num = t_as_number(token);
            let params: Map<String, Value> = sign_token(cfg, token, &app, &stream, now, false)
                .into_iter()
                .map(|(k, v)| {
                    let val = match (k.as_str(), num, v.parse::<u64>()) {
                        ("t", true, Ok(n)) => json!(n),
                        _ => json!(v),
                    };
                    (k, val)
                })
                .collect();
            let params = Value::Object(params);
            m.insert(
                "PubParam".into(),
                if *params_as_string {
                    json!(params.to_string())
                } else {
                    params
                },
            );
            for (k, v) in extra.iter().take(4) {
                m.entry(k.clone()).or_insert(json!(v));
            }
            Value::Object(m).to_string().into_bytes()
        }
        Body::Form {
            call,
            app,
            stream,
            domain,
            session,
            token,
            place,
            extra,
        } => {
            let (app, stream) = (app.text(), stream.text());
            let host = domain
                .as_ref()
                .map_or("push.example.com".into(), Name::text);
            let nginx = &call.nginx();
            let tok = sign_token(cfg, token, &app, &stream, now, call.play());
            let tq = query(&tok);
            let mut tcurl = format!("rtmp://{host}/{app}");
            let mut name = stream.clone();
            let mut pairs: Vec<(String, String)> = vec![("app".into(), app.clone())];
            match place {
                TokenPlace::Extra => pairs.extend(tok.iter().cloned()),
                TokenPlace::Tcurl => tcurl = format!("{tcurl}?{tq}"),
                TokenPlace::Name => name = format!("{name}?{tq}"),
                TokenPlace::ExtraAndTcurl => {
                    pairs.extend(tok.iter().cloned());
                    tcurl = format!("{tcurl}?{tq}");
                }
            }
            pairs.push(("name".into(), name));
            pairs.push(("tcurl".into(), tcurl));
            pairs.push(("call".into(), call.text().into()));
            pairs.push(("swfurl".into(), "nil".into()));
            // nginx-rtmp's own fields of the call (as Debian's module sends them).
            let own: &[(&str, &str)] = match call {
                Call::Play => &[("start", "4294965296"), ("duration", "0"), ("reset", "0")],
                Call::Publish => &[("type", "live")],
                Call::UpdatePlay | Call::UpdatePublish => &[("time", "4"), ("timestamp", "4000")],
                _ => &[],
            };
            for (k, v) in own {
                pairs.push(((*k).into(), (*v).into()));
            }
            if let Some(s) = session {
                if *nginx {
                    pairs.push(("clientid".into(), s.text()));
                    pairs.push(("addr".into(), "127.0.0.1".into()));
                } else {
                    pairs.push(("vdoid".into(), s.text()));
                }
            }
            pairs.extend(extra.iter().take(4).cloned());
            query(&pairs).into_bytes()
        }
        Body::Srs {
            action,
            app,
            stream,
            vhost,
            client,
            token,
            page_url,
            extra,
        } => {
            let (app, stream) = (app.text(), stream.text());
            let play = matches!(action.text(), "on_play" | "on_stop");
            let tok = sign_token(cfg, token, &app, &stream, now, play);
            let param = if tok.is_empty() {
                String::new()
            } else {
                format!("?{}", query(&tok))
            };
            let mut m = Map::new();
            m.insert("server_id".into(), json!("vid-i562442"));
            m.insert("service_id".into(), json!("41vb31bg"));
            m.insert("action".into(), json!(action.text()));
            m.insert(
                "client_id".into(),
                json!(client.as_ref().map_or("5643425w".into(), Name::text)),
            );
            m.insert("ip".into(), json!("127.0.0.1"));
            m.insert(
                "vhost".into(),
                json!(vhost.as_ref().map_or("__defaultVhost__".into(), Name::text)),
            );
            m.insert("app".into(), json!(app));
            m.insert(
                "tcUrl".into(),
                json!(format!("rtmp://127.0.0.1:19350/{app}")),
            );
            m.insert("stream".into(), json!(stream));
            m.insert("param".into(), json!(param));
            if *page_url {
                m.insert("pageUrl".into(), json!(""));
            }
            m.insert("stream_url".into(), json!(format!("/{app}/{stream}")));
            m.insert("stream_id".into(), json!("vid-91o0auf"));
            if let Action::Hls = action {
                m.insert("duration".into(), json!(10.0));
                m.insert("cwd".into(), json!("/srs"));
                m.insert("file".into(), json!("./objs/nginx/html/live/s-1.ts"));
                m.insert("url".into(), json!("live/s-1.ts"));
                m.insert("m3u8".into(), json!("./objs/nginx/html/live/s.m3u8"));
                m.insert("m3u8_url".into(), json!("live/s.m3u8"));
                m.insert("seq_no".into(), json!(1));
            }
            for (k, v) in extra.iter().take(4) {
                m.entry(k.clone()).or_insert(json!(v));
            }
            Value::Object(m).to_string().into_bytes()
        }
    }
}

fn presented(cfg: &Config, p: &Presented) -> String {
    match p {
        Presented::Key(i) => cfg
            .callback_auth
            .shared_key
            .as_ref()
            .filter(|sk| !sk.keys.is_empty())
            .map(|sk| {
                let k = &sk.keys[*i as usize % sk.keys.len()];
                String::from_utf8_lossy(k.secret.expose()).into_owned()
            })
            .unwrap_or_default(),
        Presented::Wrong(s) => s.clone(),
    }
}

fuzz_target!(|input: Input| {
    let (text, placed) = input.config.text();
    let config = match Config::from_json(&text, &env) {
        Ok(c) => c,
        Err(errs) => {
            assert!(!errs.is_empty());
            let text_s = String::from_utf8_lossy(&text);
            for e in &errs {
                let line = e.to_string();
                assert!(!line.chars().any(|c| c == '\n' || c == '\r'), "{line:?}");
                for s in placed.iter().chain(SECRETS.iter()) {
                    // A secret may show only if it also sits in a non-secret place.
                    let uses = placed.iter().filter(|p| *p == s).count();
                    if text_s.matches(*s).count() <= uses {
                        assert!(!line.contains(s), "config error shows a secret: {line}");
                    }
                }
            }
            return;
        }
    };
    // Secrets to watch: the fixed ones, unless the generated configuration
    // also holds one outside a secret position (say, as an app name).
    let text_s = String::from_utf8_lossy(&text);
    let watched: Vec<&[u8]> = SECRETS
        .iter()
        .filter(|s| text_s.matches(**s).count() <= placed.iter().filter(|p| p == s).count())
        .map(|s| s.as_bytes())
        .collect();
    cg_fuzz::check_debug(&config, &watched);
    let store = MemoryStore::new();
    let mut now = 1_600_000_000u64 + u64::from(input.now % 200_000_000);
    for r in input.requests.iter().take(8) {
        now += u64::from(r.advance_s % 4000);
        let body = build_body(&config, &r.body, now);
        let ct = match &r.ctype {
            CType::Json => Some("application/json".to_string()),
            CType::Form => Some("application/x-www-form-urlencoded".to_string()),
            CType::JsonCharset => Some("Application/JSON; charset=utf-8".to_string()),
            CType::FormUpper => Some("APPLICATION/X-WWW-FORM-URLENCODED".to_string()),
            CType::Multipart => Some("multipart/form-data; boundary=x".to_string()),
            CType::Missing => None,
            CType::Custom(s) => Some(s.clone()),
        };
        let mut req = OwnedRequest::post("", &body);
        req.content_type = ct;
        if let Some(m) = &r.method {
            req.method = m.clone();
        }
        if let Some(p) = &r.in_query {
            let param = config
                .callback_auth
                .shared_key
                .as_ref()
                .and_then(|sk| sk.query_param.clone())
                .unwrap_or_else(|| "auth_key".into());
            req.path = format!("/callback?{}", query(&[(param, presented(&config, p))]));
        }
        if let Some(p) = &r.in_header {
            let h = config
                .callback_auth
                .shared_key
                .as_ref()
                .and_then(|sk| sk.header.clone())
                .unwrap_or_else(|| "x-callback-key".into());
            req.headers.push((h, presented(&config, p)));
        }
        match &r.hook {
            None => {}
            Some(Hook::Signed { key, id, skew }) => {
                if let Some(w) = config
                    .callback_auth
                    .webhook_signature
                    .as_ref()
                    .filter(|w| !w.keys.is_empty())
                {
                    let k = &w.keys[*key as usize % w.keys.len()];
                    let ts = now.saturating_add_signed(i64::from(*skew));
                    let sig = webhook::sign(k.secret.expose(), id, ts, &body);
                    req.headers.push(("webhook-id".into(), id.clone()));
                    req.headers
                        .push(("webhook-timestamp".into(), ts.to_string()));
                    req.headers.push(("webhook-signature".into(), sig));
                }
            }
            Some(Hook::Raw(i, t, s)) => {
                for (n, v) in [
                    ("webhook-id", i),
                    ("webhook-timestamp", t),
                    ("webhook-signature", s),
                ] {
                    if let Some(v) = v {
                        req.headers.push((n.into(), v.clone()));
                    }
                }
            }
        }
        if let Some(x) = &r.xff {
            req.headers.push(("x-forwarded-for".into(), x.clone()));
        }
        req.source = r.source.map(std::net::IpAddr::from);
        let v = cg_fuzz::check(&config, &req, now, &store, &watched);
        // A token of the other purpose opens nothing that is token-checked:
        // play and push keys are kept apart by the configuration.
        let (play, crossed) = r.body.purpose();
        let checked = if play {
            config.play_auth.is_some()
        } else {
            config.push_auth.is_some()
        };
        if crossed && checked {
            if let Verdict::Forward(f) = &v {
                // (A token placed where the parser does not look leaves the
                // body's event as built; the event is what counts.)
                if cg_fuzz::is_play_event(f.event) == play {
                    panic!(
                        "a {} token opened a {:?}: {f:?}",
                        if play { "push" } else { "play" },
                        f.event
                    );
                }
            }
        }
    }
});
