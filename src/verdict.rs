//! The one decision: given the configuration, a request, the time and the
//! stream registry, forward the callback or reject it with a spec code.
//!
//! Order of the rules (the first failure answers):
//! method → size → sender checks (`callback_auth`) → media type (the label,
//! or the body when unlabelled) → parsing and validation → dialect switched
//! on → for a play, `play_auth` configured → `apps` → event age → push (or
//! play) token → stream registry (pushes only: plays never touch it). Sender
//! checks come before the body is read so that an unauthenticated sender
//! learns nothing about what a valid body looks like.

use std::net::IpAddr;

use crate::auth::{self, webhook::WebhookHeaders, AuthError, Purpose, TokenError};
use crate::callback::{self, printable, Callback, CallbackError, Event, Format, MediaType};
use crate::config::{Config, Mode};
use crate::registry::{self, Answer, Claim, Op, RegistryError, Reserve, SharedStore};
use crate::reply::Code;

/// What the decision sees of an HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Request path with query (where a shared key may be).
    pub path: &'a str,
    /// The `content-type` header; `None` when the sender sent none (KLS's
    /// old-version sender does not), and the body then picks the parser.
    pub content_type: Option<&'a str>,
    /// Request headers (the filter passes all of them); names compared
    /// case-insensitively.
    pub headers: &'a [(String, String)],
    /// The whole body.
    pub body: &'a [u8],
    /// Downstream peer address.
    pub source: Option<IpAddr>,
}

impl Request<'_> {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(self.headers, name)
    }
}

/// First value of header `name` in `headers`, names compared
/// case-insensitively (the filter reads the same list before `decide()`).
pub fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Forward or reject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the callback upstream, with these facts.
    Forward(Forward),
    /// Answer at the edge.
    Reject(Rejection),
}

/// What the filter does with a verdict, under the configured [`Mode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pass the callback upstream, with these facts.
    Forward(Forward),
    /// Answer at the edge with the rejection.
    Refuse(Rejection),
    /// Observe mode: pass the callback upstream although it would have been
    /// refused, marked with [`WOULD_REJECT_HEADER`] and the code; counted
    /// and logged as the refusal would have been.
    Observe(Rejection),
}

/// The header that marks a callback observe mode forwarded although it
/// would have been refused; its value is the code.
pub const WOULD_REJECT_HEADER: &str = "x-callback-guard-would-reject";

impl Verdict {
    /// The action under `mode`: in observe mode every callback goes on, and
    /// a refusal only marks it. The registry has already done what the
    /// callback asked of it either way (so switching to enforce later starts
    /// from the truth): a forwarded start holds its reservation, a refused
    /// one touched nothing.
    pub fn under(self, mode: Mode) -> Action {
        match (self, mode) {
            (Verdict::Forward(f), _) => Action::Forward(f),
            (Verdict::Reject(r), Mode::Enforce) => Action::Refuse(r),
            (Verdict::Reject(r), Mode::Observe) => Action::Observe(r),
        }
    }
}

/// An accepted callback and what was verified about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Wire format.
    pub format: Format,
    /// What the callback reports (a push's start, end, update, or a play's).
    pub event: Event,
    /// App name.
    pub app: String,
    /// Stream name.
    pub stream: String,
    /// Id of the push (or, for a play, play) key that matched, when tokens
    /// are checked.
    pub key_id: Option<String>,
    /// Names of the checks that ran and passed.
    pub verified: Vec<&'static str>,
    /// For a start that reserved its stream: the claim to release if the
    /// upstream refuses the publish or never answers.
    pub reservation: Option<Claim>,
    /// An end or update forwarded although the registry could not record it
    /// (the backend must learn that a push stopped): logged and counted.
    pub registry_error: Option<RegistryError>,
}

impl Forward {
    /// The debug log line for a forwarded callback. App and stream are quoted
    /// and escaped, so a hostile name cannot pass for the fields after it.
    pub fn log_line(&self) -> String {
        format!(
            "callback-guard forwarded: format={} event={} app={:?} stream={:?}",
            self.format.as_str(),
            self.event.as_str(),
            printable(&self.app),
            printable(&self.stream)
        )
    }

    /// The `x-callback-guard-*` headers for the forwarded request; the filter
    /// adds those with a value (the key id is empty when tokens are not checked).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("x-callback-guard-format", self.format.as_str().to_string()),
            ("x-callback-guard-event", self.event.as_str().to_string()),
            ("x-callback-guard-verified", self.verified.join(",")),
            // Empty when push tokens are not checked: not added.
            (
                "x-callback-guard-key-id",
                self.key_id.clone().unwrap_or_default(),
            ),
        ]
    }
}

/// A refused callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Spec code (decides the status).
    pub code: Code,
    /// Why, naming the field or check; never a secret or token.
    pub message: String,
    /// App, when the body got that far (for the log line).
    pub app: Option<String>,
    /// Stream, when the body got that far (for the log line).
    pub stream: Option<String>,
    /// The callback's event, when the body got that far: a play's refusal
    /// is counted apart from a push's.
    pub event: Option<Event>,
    /// Why the registry could not check a start, when that is the reason
    /// (counted by kind).
    pub registry_error: Option<RegistryError>,
}

impl Rejection {
    /// A rejection with its code and message (no app or stream known).
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
            app: None,
            stream: None,
            event: None,
            registry_error: None,
        }
    }

    /// Whether the refused callback was a play (counted as one).
    pub fn is_play(&self) -> bool {
        self.event.is_some_and(Event::is_play)
    }

    /// The one log line for a rejection: code, status, app, stream and
    /// reason. App and stream are quoted and escaped (`-` when the body never
    /// got that far); the reason names fields and checks, never a value.
    pub fn log_line(&self) -> String {
        self.log_line_in(Mode::Enforce)
    }

    /// The log line under `mode`: in observe mode it says so before the
    /// reason (`mode=observe`), the rest unchanged, so the same searches and
    /// counters find observed refusals. A play's line says which play event
    /// it was (`event=play`), so that plays can be told from pushes.
    pub fn log_line_in(&self, mode: Mode) -> String {
        let quoted = |s: &Option<String>| s.as_ref().map_or("-".to_string(), |s| format!("{s:?}"));
        let mode = match mode {
            Mode::Enforce => "",
            Mode::Observe => " mode=observe",
        };
        let event = match self.event {
            Some(e) if e.is_play() => format!(" event={}", e.as_str()),
            _ => String::new(),
        };
        format!(
            "callback-guard rejected: code={} status={} app={} stream={}{event}{mode} reason={}",
            self.code.as_str(),
            self.code.status(),
            quoted(&self.app),
            quoted(&self.stream),
            self.message
        )
    }

    fn about(mut self, cb: &Callback) -> Self {
        self.event = Some(cb.event);
        self.about_names(&cb.app, &cb.stream)
    }

    fn about_names(mut self, app: &str, stream: &str) -> Self {
        self.app = Some(printable(app));
        self.stream = Some(printable(stream));
        self
    }
}

fn callback_rejection(e: &CallbackError) -> Rejection {
    let code = match e {
        CallbackError::Missing(_) => Code::MissingParameter,
        _ => Code::InvalidParameterValue,
    };
    Rejection::new(code, e.to_string())
}

fn auth_rejection(e: AuthError) -> Rejection {
    Rejection::new(Code::AuthencationFailed, e.to_string())
}

/// Decides one request against a shared-data registry. Pure apart from the
/// registry store; never panics.
pub fn decide(config: &Config, req: &Request<'_>, now_s: u64, store: &dyn SharedStore) -> Verdict {
    match check(config, req, now_s) {
        Decision::Final(v) => v,
        Decision::Registry(p) => {
            let ds = &config.duplicate_streams;
            let answer = registry::shared::run(store, ds, p.op, &p.claim, now_s);
            p.conclude(answer)
        }
    }
}

/// Where [`check`] leaves a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Decided without the registry (refused, or the registry is off).
    Final(Verdict),
    /// Every other check passed; the registry must answer [`Pending::op`].
    Registry(Pending),
}

/// A callback that passed every check but the stream registry's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// What to ask the registry.
    pub op: Op,
    /// About which stream and session.
    pub claim: Claim,
    forward: Forward,
}

impl Pending {
    /// Whether the callback is answered without waiting for the registry:
    /// SRS's `on_hls`, a renewal whose answer SRS ignores, and which SRS
    /// sends from a queue that a slow answer holds up (its `on_unpublish`
    /// comes late). It is forwarded at once ([`Pending::forward_now`]) and
    /// the renewal runs on its own.
    pub fn answers_at_once(&self) -> bool {
        self.forward.format == Format::Srs && self.forward.event == Event::Update
    }

    /// The forward of a callback that does not wait for the registry.
    pub fn forward_now(&self) -> Forward {
        self.forward.clone()
    }

    /// The verdict, given the registry's answer. A start the registry could
    /// not check is refused (503 `ServiceUnavailable`, never mistaken for a
    /// duplicate's 409); an end or update is forwarded anyway, marked with
    /// the error, since the backend must learn that a push stopped.
    pub fn conclude(self, answer: Result<Answer, RegistryError>) -> Verdict {
        let Pending {
            op,
            claim,
            mut forward,
        } = self;
        if forward.format == Format::Srs && forward.event == Event::Update {
            // Answered at once (see `answers_at_once`): forwarded whatever
            // the registry says; another session's renewal changed nothing.
            forward.registry_error = answer.err();
            return Verdict::Forward(forward);
        }
        let about = |r: Rejection| r.about_names(&forward.app, &forward.stream);
        match (op, answer) {
            (_, Ok(Answer::Reserve(Reserve::Busy))) => Verdict::Reject(about(Rejection::new(
                Code::ExistStreamName,
                "a push of this stream by another session is live",
            ))),
            (Op::Reserve, Ok(_)) => {
                // Each start, fresh or a retry, is one attempt on the stream's
                // entry, to give back if the upstream refuses it or never
                // answers (`registry::give_back`).
                forward.reservation = Some(claim);
                forward.verified.push("stream_registry");
                Verdict::Forward(forward)
            }
            (_, Ok(_)) => {
                forward.verified.push("stream_registry");
                Verdict::Forward(forward)
            }
            (Op::Reserve, Err(e)) => Verdict::Reject(about(registry_rejection(&e))),
            (_, Err(e)) => {
                forward.registry_error = Some(e);
                Verdict::Forward(forward)
            }
        }
    }
}

/// Every check but the registry's: the verdict, or what to ask the registry.
pub fn check(config: &Config, req: &Request<'_>, now_s: u64) -> Decision {
    match check_inner(config, req, now_s) {
        Ok(Ok(f)) => Decision::Final(Verdict::Forward(f)),
        Ok(Err(p)) => Decision::Registry(p),
        Err(r) => Decision::Final(Verdict::Reject(r)),
    }
}

fn check_inner(
    config: &Config,
    req: &Request<'_>,
    now_s: u64,
) -> Result<Result<Forward, Pending>, Rejection> {
    if req.method != "POST" {
        return Err(Rejection::new(
            Code::MethodNotAllowed,
            "callbacks must be POST",
        ));
    }
    if req.body.len() > config.max_body_bytes {
        return Err(too_large(config.max_body_bytes));
    }
    let mut verified = Vec::new();
    check_sender(config, req, now_s, &mut verified)?;

    let media = callback::classify(req.content_type, req.body).ok_or_else(|| {
        Rejection::new(
            Code::UnsupportedMediaType,
            "content-type must be application/json or application/x-www-form-urlencoded (or absent)",
        )
    })?;
    let cb = match media {
        MediaType::Json => parse_json_dialect(config, req.body)?,
        MediaType::Form => callback::parse_form(req.body),
    }
    .map_err(|e| match e {
        CallbackError::UnknownCall => dialect_off(config),
        CallbackError::QueryInStream(event) if token_auth(config, Purpose::of(event)).is_some() => {
            let mut r = Rejection::new(Code::AuthencationFailed, e.to_string());
            r.event = Some(event);
            r
        }
        e => callback_rejection(&e),
    })?;
    if !config.formats.allows(cb.format) {
        return Err(dialect_off(config).about(&cb));
    }
    if cb.event.is_play() && config.play_auth.is_none() {
        return Err(Rejection::new(
            Code::InvalidParameterValue,
            format!(
                "`{}` is a play callback, and play callbacks are refused until `play_auth` is configured (the play token check)",
                play_call(cb.format, cb.event)
            ),
        )
        .about(&cb));
    }
    verified.push("format");

    if let Some(apps) = &config.apps {
        if !apps.contains(&cb.app) {
            return Err(Rejection::new(
                Code::NonExistApplication,
                "app is not configured in `apps`",
            )
            .about(&cb));
        }
        verified.push("app");
    }

    if config.max_event_age_s > 0 {
        if let Some(t_ms) = cb.event_time_ms {
            let window_ms = config.max_event_age_s.saturating_mul(1000);
            if t_ms.abs_diff(now_s.saturating_mul(1000)) > window_ms {
                return Err(auth_rejection(AuthError::EventTooOld).about(&cb));
            }
            verified.push("event_age");
        }
    }

    let key_id = match token_auth(config, Purpose::of(cb.event)) {
        Some(ta) => {
            let id = auth::token::verify(ta, &cb, now_s)
                .map_err(|e| auth_rejection(other_purpose(config, &cb, e)).about(&cb))?;
            verified.push(if cb.event.is_play() {
                "play_token"
            } else {
                "push_token"
            });
            Some(id)
        }
        None => None,
    };

    let forward = Forward {
        format: cb.format,
        event: cb.event,
        app: cb.app.clone(),
        stream: cb.stream.clone(),
        key_id,
        verified,
        reservation: None,
        registry_error: None,
    };
    let op = match cb.event {
        _ if !config.duplicate_streams.reject => return Ok(Ok(forward)),
        Event::Start => Op::Reserve,
        Event::End => Op::Release,
        Event::Update => Op::Refresh,
        // Any number of viewers may watch: a play never reserves or frees.
        Event::Play | Event::PlayEnd | Event::PlayUpdate => return Ok(Ok(forward)),
    };
    Ok(Err(Pending {
        op,
        claim: Claim::of(&cb),
        forward,
    }))
}

/// A JSON body: KLS new version, SRS `http_hooks`, told apart by their keys
/// (`NotifyType`, `action`) when both are on. With `kls_v2` on, a body with
/// neither key gets KLS's messages, as before `srs` existed.
fn parse_json_dialect(
    config: &Config,
    body: &[u8],
) -> Result<Result<Callback, CallbackError>, Rejection> {
    let f = &config.formats;
    let kls_off = || {
        Rejection::new(
            Code::UnsupportedMediaType,
            "JSON callbacks (kls_v2) are not enabled in `formats`",
        )
    };
    if !f.srs {
        if !f.kls_v2 {
            return Err(kls_off());
        }
        return Ok(callback::parse_json(body));
    }
    // Both on: a body without any escape has its keys written literally, so
    // one that names `"NotifyType"` and nowhere `"action"` is what the SRS
    // reader would hand to the KLS one anyway; read it as KLS at once
    // instead of twice.
    if f.kls_v2
        && !body.contains(&b'\\')
        && has(body, b"\"NotifyType\"")
        && !has(body, b"\"action\"")
    {
        return Ok(callback::parse_json(body));
    }
    Ok(match callback::parse_srs_or_kls(body) {
        Ok(Some(cb)) => Ok(cb),
        Ok(None) if f.kls_v2 => callback::parse_json(body),
        Ok(None) => return Err(kls_off()),
        Err(CallbackError::Missing(m)) if f.kls_v2 && m == "action" => callback::parse_json(body),
        Err(e) => Err(e),
    })
}

/// The token check of `purpose`: `play_auth` for plays, `push_auth` for
/// everything else.
fn token_auth(config: &Config, purpose: Purpose) -> Option<&crate::config::TokenAuth> {
    match purpose {
        Purpose::Push => config.push_auth.as_ref(),
        Purpose::Play => config.play_auth.as_ref(),
    }
}

/// A signature that matches no key: when a key of the other purpose signed
/// it (a push token presented to play, or the reverse), the message says so,
/// since that is a mix-up to fix where URLs are minted, not a forgery.
fn other_purpose(config: &Config, cb: &Callback, e: AuthError) -> AuthError {
    let AuthError::Token(purpose, TokenError::BadSignature) = e else {
        return e;
    };
    match token_auth(config, purpose.other()) {
        Some(other) if auth::token::signed_by(other, cb) => {
            AuthError::Token(purpose, TokenError::OtherPurpose)
        }
        _ => e,
    }
}

/// The dialect's own name of a play event, for messages.
fn play_call(format: Format, event: Event) -> &'static str {
    match (format, event) {
        (Format::Srs, Event::PlayEnd) => "on_stop",
        (Format::Srs, _) => "on_play",
        (_, Event::PlayEnd) => "play_done",
        (_, Event::PlayUpdate) => "update_play",
        _ => "play",
    }
}

fn has(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The rejection for a body over the limit (also used by the filter before buffering).
pub fn too_large(limit: usize) -> Rejection {
    Rejection::new(
        Code::PayloadTooLarge,
        format!("body is larger than max_body_bytes ({limit})"),
    )
}

fn dialect_off(config: &Config) -> Rejection {
    let allowed: Vec<&str> = [
        (config.formats.kls_v1, "user_publish or user_publish_done"),
        (
            config.formats.nginx_rtmp,
            "publish, publish_done or update_publish",
        ),
        (
            config.formats.nginx_rtmp && config.play_auth.is_some(),
            "play, play_done or update_play",
        ),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, v)| *v)
    .collect();
    if allowed.is_empty() {
        return Rejection::new(
            Code::UnsupportedMediaType,
            "form callbacks are not enabled in `formats`",
        );
    }
    Rejection::new(
        Code::InvalidParameterValue,
        format!("field `call` must be {}", allowed.join(", or ")),
    )
}

/// The registry could not answer a start: fail closed, and say why.
fn registry_rejection(e: &RegistryError) -> Rejection {
    let mut r = Rejection::new(
        Code::ServiceUnavailable,
        format!("the stream registry cannot check this start: {e}"),
    );
    r.registry_error = Some(e.clone());
    r
}

fn check_sender(
    config: &Config,
    req: &Request<'_>,
    now_s: u64,
    verified: &mut Vec<&'static str>,
) -> Result<(), Rejection> {
    let ca = &config.callback_auth;
    if let Some(cidrs) = &ca.allow_cidrs {
        let addr = auth::sender::sender_addr(ca, req.source, req.header("x-forwarded-for"))
            .map_err(auth_rejection)?;
        auth::sender::check_cidrs(cidrs, addr).map_err(auth_rejection)?;
        verified.push("sender_cidr");
    }
    if let Some(sk) = &ca.shared_key {
        let header = sk.header.as_deref().and_then(|h| req.header(h));
        auth::sender::check_shared_key(sk, req.path, header).map_err(auth_rejection)?;
        verified.push("shared_key");
    }
    if let Some(ws) = &ca.webhook_signature {
        let h = WebhookHeaders {
            id: req.header("webhook-id"),
            timestamp: req.header("webhook-timestamp"),
            signature: req.header("webhook-signature"),
        };
        auth::webhook::verify(ws, h, req.body, now_s).map_err(auth_rejection)?;
        verified.push("webhook_signature");
    }
    Ok(())
}
