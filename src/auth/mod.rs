//! Authentication: is this push or play allowed (`token`) and did the CDN
//! or ingest server send it (`sender`, `webhook`)?
//!
//! Everything here is pure and compares in constant time. Failures are
//! [`AuthError`]s whose messages say what failed and never show a value:
//! no secret, no expected signature, no presented token.

/// The first item that `matches`, after trying every item: no early exit,
/// so the time taken does not say which key matched (or how many were tried).
pub(crate) fn first_match<T>(
    items: impl IntoIterator<Item = T>,
    mut matches: impl FnMut(&T) -> bool,
) -> Option<T> {
    let mut found = None;
    for item in items {
        if matches(&item) && found.is_none() {
            found = Some(item);
        }
    }
    found
}

pub mod sender;
pub mod token;
pub mod webhook;

/// Whose token: a push URL's (`push_auth`) or a play URL's (`play_auth`).
/// The two never stand in for each other: their keys are kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A push URL's token, checked on push callbacks.
    Push,
    /// A play URL's token, checked on play callbacks.
    Play,
}

impl Purpose {
    /// `push` or `play`, as messages and `sign --for` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Push => "push",
            Purpose::Play => "play",
        }
    }

    /// The token a callback about `event` carries.
    pub fn of(event: crate::callback::Event) -> Purpose {
        if event.is_play() {
            Purpose::Play
        } else {
            Purpose::Push
        }
    }

    /// The other purpose.
    pub fn other(self) -> Purpose {
        match self {
            Purpose::Push => Purpose::Play,
            Purpose::Play => Purpose::Push,
        }
    }
}

/// What is wrong with a push or play token (see [`AuthError::Token`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// A token parameter is absent from the URL's params.
    MissingParam(&'static str),
    /// `t` is not a 10-digit Unix time.
    BadExpiry,
    /// The signature parameter has the wrong length.
    SignLength {
        /// `k` or `sign`.
        param: &'static str,
        /// Expected number of hex characters.
        len: usize,
    },
    /// The signature parameter has characters other than lowercase hex.
    SignNotHex(&'static str),
    /// `t` is in the past (beyond the configured clock skew).
    Expired,
    /// `kid` names no configured key (or one not valid for this app/domain).
    UnknownKid,
    /// No configured key is valid for this app and ingest domain.
    NoKeyInScope,
    /// The signature matches no key.
    BadSignature,
    /// The signature matches no key of this purpose, but one of the other:
    /// a push token presented to play, or a play token to push.
    OtherPurpose,
}

/// Why authentication failed. Every variant answers `AuthencationFailed` (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The push or play token failed.
    #[error("{}", token_message(*.0, *.1))]
    Token(Purpose, TokenError),
    /// The sender's address could not be determined.
    #[error("sender address unknown")]
    SenderUnknown,
    /// The sender is outside `allow_cidrs`.
    #[error("sender address not allowed")]
    SenderNotAllowed,
    /// `X-Forwarded-For` has fewer entries than the trusted hops.
    #[error("X-Forwarded-For has fewer entries than trusted_xff_hops")]
    ForwardedForShort,
    /// No shared key presented where one was configured.
    #[error("callback shared key missing")]
    SharedKeyMissing,
    /// A presented shared key matches no configured key.
    #[error("callback shared key does not match")]
    SharedKeyMismatch,
    /// A Standard Webhooks header is absent.
    #[error("webhook signature: missing header `{0}`")]
    WebhookMissingHeader(&'static str),
    /// `webhook-timestamp` is not a Unix time in seconds.
    #[error("webhook signature: `webhook-timestamp` must be a Unix time in seconds")]
    WebhookBadTimestamp,
    /// `webhook-timestamp` is outside the tolerance.
    #[error("webhook signature: timestamp outside the allowed window")]
    WebhookStale,
    /// No `v1,` signature matches.
    #[error("webhook signature does not match")]
    WebhookMismatch,
    /// The callback's own event time is outside `max_event_age_s`.
    #[error("event timestamp outside the allowed window (max_event_age_s)")]
    EventTooOld,
}

/// The message of a token failure, e.g. `push token expired`: it names the
/// parameter or the check, never a value.
fn token_message(purpose: Purpose, e: TokenError) -> String {
    let p = purpose.as_str();
    match e {
        TokenError::MissingParam(param) => format!("{p} token: missing parameter `{param}`"),
        TokenError::BadExpiry => format!("{p} token: `t` must be a 10-digit Unix time in seconds"),
        TokenError::SignLength { param, len } => {
            format!("{p} token: `{param}` must be {len} hex characters")
        }
        TokenError::SignNotHex(param) => format!("{p} token: `{param}` must be lowercase hex"),
        TokenError::Expired => format!("{p} token expired"),
        TokenError::UnknownKid => {
            format!("{p} token: `kid` names no key valid for this app and domain")
        }
        TokenError::NoKeyInScope => {
            format!("{p} token: no key is configured for this app and domain")
        }
        TokenError::BadSignature => format!("{p} token signature does not match"),
        TokenError::OtherPurpose => {
            let other = purpose.other().as_str();
            format!(
                "{p} token signature does not match: it is a {other} token, and {other} tokens never open a {p} (mint {p} URLs with `callback-guard sign --for {p}`)"
            )
        }
    }
}
