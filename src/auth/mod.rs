//! Authentication: is this push allowed (`token`) and did the CDN send it (`sender`, `webhook`)?
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

/// Why authentication failed. Every variant answers `AuthencationFailed` (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A token parameter is absent from the push params.
    #[error("push token: missing parameter `{0}`")]
    MissingParam(&'static str),
    /// `t` is not a 10-digit Unix time.
    #[error("push token: `t` must be a 10-digit Unix time in seconds")]
    BadExpiry,
    /// The signature parameter has the wrong length.
    #[error("push token: `{param}` must be {len} hex characters")]
    SignLength {
        /// `k` or `sign`.
        param: &'static str,
        /// Expected number of hex characters.
        len: usize,
    },
    /// The signature parameter has characters other than lowercase hex.
    #[error("push token: `{0}` must be lowercase hex")]
    SignNotHex(&'static str),
    /// `t` is in the past (beyond the configured clock skew).
    #[error("push token expired")]
    Expired,
    /// `kid` names no configured key (or one not valid for this app/domain).
    #[error("push token: `kid` names no key valid for this app and domain")]
    UnknownKid,
    /// No configured key is valid for this app and ingest domain.
    #[error("push token: no key is configured for this app and domain")]
    NoKeyInScope,
    /// The signature matches no key.
    #[error("push token signature does not match")]
    BadSignature,
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
