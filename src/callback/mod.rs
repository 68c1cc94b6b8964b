//! The typed callback model shared by every wire format.
//!
//! KLS new-version JSON (`json`), KLS old-version forms and nginx-rtmp's
//! `on_publish` / `on_play` forms (`form`) and SRS hooks (`srs`) all become one
//! [`Callback`], so every later rule (apps, tokens, the stream registry) is
//! written once. A callback is about a push (start, end, update) or about a
//! viewer's play (play, play end, play update): see [`Event`].

mod form;
mod json;
mod media;
mod srs;

pub use form::parse_form;
pub use json::parse_json;
pub use media::{classify, media_type, sniff, MediaType};
pub use srs::{answer_is_success, parse_srs, parse_srs_or_kls};

/// Longest app, stream or domain name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// The wire dialect a callback arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// KLS new version: JSON with `NotifyType` `PubStart` / `PubEnd`.
    KlsV2,
    /// KLS old version: form with `call` `user_publish` / `user_publish_done`.
    KlsV1,
    /// nginx-rtmp `on_publish`: form with `call` `publish` / `publish_done`
    /// (and `update_publish` from `on_update`); its `on_play`: `play` /
    /// `play_done` (and `update_play`).
    NginxRtmp,
    /// SRS `http_hooks`: JSON with `action` `on_publish` / `on_unpublish`
    /// (and `on_hls`, a live push's sign of life); `on_play` / `on_stop`.
    Srs,
}

impl Format {
    /// Stable name, used in configuration (`formats`) and the forwarded headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::KlsV2 => "kls_v2",
            Format::KlsV1 => "kls_v1",
            Format::NginxRtmp => "nginx_rtmp",
            Format::Srs => "srs",
        }
    }
}

/// What the callback reports: a push starting, ending or still live, or a
/// viewer starting, ending or still playing.
///
/// Plays are checked with their own keys (`play_auth`) and never touch the
/// stream registry: any number of viewers may watch a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `PubStart`, `user_publish`, `publish`, SRS `on_publish`.
    Start,
    /// `PubEnd`, `user_publish_done`, `publish_done`, SRS `on_unpublish`.
    End,
    /// nginx-rtmp `update_publish` (`on_update`), SRS `on_hls`: a live
    /// push's sign of life.
    Update,
    /// A viewer starts playing: nginx-rtmp `play`, SRS `on_play`.
    Play,
    /// A viewer stopped: nginx-rtmp `play_done`, SRS `on_stop`.
    PlayEnd,
    /// nginx-rtmp `update_play` (`on_update` while a viewer plays).
    PlayUpdate,
}

impl Event {
    /// Stable name for the forwarded headers (`x-callback-guard-event`).
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::End => "end",
            Event::Update => "update",
            Event::Play => "play",
            Event::PlayEnd => "play_end",
            Event::PlayUpdate => "play_update",
        }
    }

    /// Whether the callback is about a viewer (checked with `play_auth`).
    pub fn is_play(self) -> bool {
        matches!(self, Event::Play | Event::PlayEnd | Event::PlayUpdate)
    }

    /// Whether the callback asks to begin something (a push or a play):
    /// only these are bound by the token's expiry, since a push or play that
    /// began with a valid token may end or renew hours after it.
    pub fn begins(self) -> bool {
        matches!(self, Event::Start | Event::Play)
    }
}

/// The push (or play) URL's query parameters, as strings, with no name given twice.
///
/// A few params (the usual case) are searched linearly, which costs no
/// allocation. Past [`Params::INDEX_FROM`] names are indexed: a 64 KB body can
/// hold thousands of params, and a linear search per param made parsing it
/// quadratic (tens of milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(
    Vec<(String, String)>,
    Option<std::collections::HashMap<String, usize>>,
);

impl Params {
    /// Size from which lookups go through a hash index.
    pub const INDEX_FROM: usize = 16;

    /// The value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        let at = match &self.1 {
            Some(index) => index.get(name).copied(),
            None => self.0.iter().position(|(k, _)| k == name),
        };
        at.and_then(|i| self.0.get(i)).map(|(_, v)| v.as_str())
    }

    /// Adds a parameter. The same name again with the same value is kept once;
    /// with a different value it is an error, since two readers could pick
    /// different ones.
    pub fn insert(&mut self, name: String, value: String) -> Result<(), CallbackError> {
        match self.get(&name) {
            Some(v) if v == value => return Ok(()),
            Some(_) => {
                return Err(CallbackError::invalid(
                    format!("URL param `{}`", printable(&name)),
                    "is given more than once with different values",
                ))
            }
            None => {}
        }
        if let Some(index) = &mut self.1 {
            index.insert(name.clone(), self.0.len());
        }
        self.0.push((name, value));
        if self.1.is_none() && self.0.len() >= Self::INDEX_FROM {
            let index = self
                .0
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect();
            self.1 = Some(index);
        }
        Ok(())
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// All parameters in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// One push or play notification, whatever its wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    /// Wire format it arrived in.
    pub format: Format,
    /// Start or end of the push.
    pub event: Event,
    /// App name (`App`, `app`).
    pub app: String,
    /// Stream name (`Stream`, `name` without any `?query`).
    pub stream: String,
    /// Ingest domain, lowercase: `Pubdomain`, or the host of `tcurl`.
    pub domain: Option<String>,
    /// Event time in Unix milliseconds (v2 only; forms carry none).
    pub event_time_ms: Option<u64>,
    /// Session identity given by the sender: `Sequence`, else `UniqueName` (v2),
    /// `vdoid` (KLS v1), `clientid` with `addr` and the ingest host (nginx-rtmp).
    pub session: Option<String>,
    /// The push (or play) URL's query parameters, where tokens live.
    pub params: Params,
    /// Address of the pushing client, when the sender gives one.
    pub client_ip: Option<String>,
    /// Port of the pushing client, when the sender gives one.
    pub client_port: Option<u16>,
    /// CDN node that took the push (v2).
    pub node: Option<String>,
    /// `close_mode` of a KLS v1 end: 1 normal, 2 abnormal.
    pub close_mode: Option<u8>,
}

/// Why a body could not become a [`Callback`]. Messages name the field and
/// never echo a value that could be a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// A required field is absent (or `nil`/blank where that means absent).
    #[error("missing required field `{0}`")]
    Missing(String),
    /// A field has the wrong type or form, or is given twice.
    #[error("{field} {problem}")]
    Invalid {
        /// The field, e.g. "field `Stream`".
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// The body as a whole cannot be read.
    #[error("body {0}")]
    Body(String),
    /// A form's `call` names no known event. Which values are right depends on
    /// the dialects switched on, so the decision words the message.
    #[error("field `call` has an unknown value")]
    UnknownCall,
    /// An SRS body whose `stream` still holds the URL's query (SRS could
    /// not parse the URL, e.g. raw non-ASCII bytes in the query, and sent an
    /// empty `param`): the token never reached the hook. Carries the event,
    /// so the message names the push or play token.
    #[error("field `stream` holds the {} URL's query and `param` is empty (SRS could not parse the URL: raw non-ASCII in its query?), so the {} token is missing; percent-encode the query", token_of(*.0), token_of(*.0))]
    QueryInStream(Event),
}

/// `push` or `play`: whose token a message is about.
pub(crate) fn token_of(event: Event) -> &'static str {
    if event.is_play() {
        "play"
    } else {
        "push"
    }
}

impl CallbackError {
    pub(crate) fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        CallbackError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn field(name: &str, problem: impl Into<String>) -> Self {
        CallbackError::invalid(format!("field `{name}`"), problem)
    }
}

/// Checks an app, stream or domain name: non-empty, at most [`MAX_NAME_BYTES`],
/// no control characters. Returns the problem in words.
pub fn check_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        Err("must not be empty")
    } else if s.len() > MAX_NAME_BYTES {
        Err("is longer than 256 bytes")
    } else if s.chars().any(char::is_control) {
        Err("contains a control character")
    } else {
        Ok(())
    }
}

/// Validates a name-like field and wraps the problem with the field's name.
pub(crate) fn named(field: &str, value: String) -> Result<String, CallbackError> {
    check_name(&value).map_err(|p| CallbackError::field(field, p))?;
    Ok(value)
}

/// A field name safe to show in a message: bounded and without control characters.
pub(crate) fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// Checks a 13-digit millisecond timestamp given as text.
pub(crate) fn timestamp_ms(field: &str, digits: &str) -> Result<u64, CallbackError> {
    if digits.len() != 13 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CallbackError::field(
            field,
            "must be a 13-digit Unix timestamp in milliseconds",
        ));
    }
    digits.parse().map_err(|_| {
        CallbackError::field(field, "must be a 13-digit Unix timestamp in milliseconds")
    })
}

/// Parses a client port given as digits; blank means absent.
pub(crate) fn port(field: &str, s: &str) -> Result<Option<u16>, CallbackError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 5 {
        return Err(CallbackError::field(field, "must be a port number 0-65535"));
    }
    s.parse::<u16>()
        .map(Some)
        .map_err(|_| CallbackError::field(field, "must be a port number 0-65535"))
}

/// Parses a client address; blank means absent, anything else must be an IP.
pub(crate) fn client_ip(field: &str, s: &str) -> Result<Option<String>, CallbackError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<std::net::IpAddr>()
        .map(|_| Some(s.to_string()))
        .map_err(|_| CallbackError::field(field, "must be an IP address"))
}

/// Stores a domain lowercase after checking it like a name.
pub(crate) fn domain(field: &str, s: &str) -> Result<String, CallbackError> {
    check_name(s).map_err(|p| CallbackError::field(field, p))?;
    Ok(s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_printable() {
        assert!(check_name("live").is_ok());
        assert!(check_name("直播-1").is_ok());
        assert_eq!(check_name(""), Err("must not be empty"));
        assert_eq!(
            check_name(&"a".repeat(257)),
            Err("is longer than 256 bytes")
        );
        assert!(check_name(&"a".repeat(256)).is_ok());
        assert_eq!(check_name("a\nb"), Err("contains a control character"));
        assert_eq!(check_name("a\0"), Err("contains a control character"));
    }

    #[test]
    fn params_refuse_conflicting_repeats_and_fold_identical_ones() {
        let mut p = Params::default();
        p.insert("t".into(), "1".into()).unwrap();
        p.insert("t".into(), "1".into()).unwrap();
        assert_eq!(p.len(), 1);
        let e = p.insert("t".into(), "2".into()).unwrap_err();
        assert!(e.to_string().contains("`t`"), "{e}");
        assert!(!e.to_string().contains('2'), "{e}");
    }

    #[test]
    fn many_params_are_indexed_with_the_same_rules() {
        let mut p = Params::default();
        for i in 0..100 {
            p.insert(format!("p{i}"), i.to_string()).unwrap();
        }
        assert_eq!(p.len(), 100);
        assert_eq!(p.get("p0"), Some("0"));
        assert_eq!(p.get("p99"), Some("99"));
        assert_eq!(p.get("p100"), None);
        p.insert("p5".into(), "5".into()).unwrap();
        assert!(p.insert("p50".into(), "x".into()).is_err());
        assert_eq!(p.len(), 100);
    }

    #[test]
    fn timestamps_need_13_digits() {
        assert_eq!(timestamp_ms("T", "1456800010000").unwrap(), 1456800010000);
        assert!(timestamp_ms("T", "145680001000").is_err());
        assert!(timestamp_ms("T", "14568000100000").is_err());
        assert!(timestamp_ms("T", "-456800010000").is_err());
        assert!(timestamp_ms("T", "1456800010.00").is_err());
    }

    #[test]
    fn ports_and_ips_accept_blank() {
        assert_eq!(port("P", " ").unwrap(), None);
        assert_eq!(port("P", "17102").unwrap(), Some(17102));
        assert!(port("P", "70000").is_err());
        assert!(port("P", "-1").is_err());
        assert_eq!(client_ip("I", " ").unwrap(), None);
        assert_eq!(client_ip("I", "::1").unwrap().as_deref(), Some("::1"));
        assert!(client_ip("I", "not-an-ip").is_err());
    }
}
