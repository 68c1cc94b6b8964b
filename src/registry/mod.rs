//! The live-stream registry behind `ExistStreamName`: one live push per
//! (ingest domain, app, stream), on one Envoy or across a fleet.
//!
//! The rules (who may take, renew and free a stream) are written once, here,
//! as [`rule`]: a pure function from the stream's live entry (if any) to an
//! answer and a change. Two stores carry them out:
//! - [`shared`]: Proxy-Wasm shared data, which every worker of one Envoy
//!   sees: fixed buckets of entries, compare-and-swap (the default);
//! - [`etcd`]: one key per stream in etcd, reached through its JSON gateway,
//!   so that every Envoy of a fleet sees the same registry. That module is a
//!   state machine without I/O: the filter carries its requests.
//!
//! An entry stores 128-bit hashes of the stream, of the session identity and
//! of the peer (client address:port), and the expiry. Nothing the sender
//! controls is stored verbatim, and no secret or token is ever hashed in.
//! The hash is SipHash-1-3 with fixed keys ([`hash16`]), pinned by tests:
//! entries written by one build of the module must be found by the next, in
//! every worker and on every Envoy of a fleet. It need not resist crafted
//! collisions: streams are named by signed push URLs, and whoever can mint
//! those can push any stream.

pub mod etcd;
pub mod gauge;
pub mod shared;

pub use shared::{
    create_buckets, give_back, refresh, release, reserve, Layout, MemoryStore, SharedStore,
    CAS_RETRIES, MAX_BUCKETS,
};

use crate::callback::{Callback, Event, Format};

/// Bytes per stored entry.
pub const ENTRY_BYTES: usize = 16 + 16 + 16 + 8 + 1;

/// A shared-data store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Someone else wrote the key since it was read.
    #[error("compare-and-swap mismatch")]
    CasMismatch,
    /// The host refused the call.
    #[error("shared data unavailable: {0}")]
    Host(String),
}

/// Why a remote store (etcd) could not answer (see [`RegistryError::kind`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// The store answered that it has no leader (no quorum); nothing was written.
    #[error("etcd has no leader")]
    NoLeader,
    /// No answer within `timeout_ms`.
    #[error("etcd did not answer within timeout_ms")]
    Timeout,
    /// The call could not be made or was cut off (no such cluster, refused, reset).
    #[error("etcd could not be reached")]
    Unreachable,
    /// The store answered with an error (HTTP status, gRPC code; -1 when the
    /// body is not etcd's error JSON) whose effect on the key is unknown.
    #[error("etcd answered an error (status {0}, code {1})")]
    Failed(u16, i64),
    /// An answer the filter cannot read.
    #[error("etcd answered something unreadable ({0})")]
    Garbage(&'static str),
}

impl Unavailable {
    /// Short name for counters and log lines.
    pub fn kind(&self) -> &'static str {
        match self {
            Unavailable::NoLeader => "no_leader",
            Unavailable::Timeout => "timeout",
            Unavailable::Unreachable => "unreachable",
            Unavailable::Failed(..) => "failed",
            Unavailable::Garbage(_) => "bad_answer",
        }
    }
}

/// Why the registry could not answer. A start is then refused (503
/// `ServiceUnavailable`), never forwarded; an end is forwarded anyway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Other writers kept winning the compare-and-swap.
    #[error("stream registry is contended, try again")]
    Contended,
    /// The stream's bucket holds its cap of live streams.
    #[error("stream registry is full (duplicate_streams.max_streams)")]
    Full,
    /// Shared data failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The remote store could not answer.
    #[error("{0}")]
    Unavailable(#[from] Unavailable),
}

impl RegistryError {
    /// Short name for counters (`callback_guard.store_errors.<kind>`) and log lines.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::Contended => "contended",
            RegistryError::Full => "full",
            RegistryError::Store(_) => "shared_data",
            RegistryError::Unavailable(u) => u.kind(),
        }
    }

    /// Every kind, for metrics set-up.
    pub const KINDS: [&'static str; 8] = [
        "contended",
        "full",
        "shared_data",
        "no_leader",
        "timeout",
        "unreachable",
        "failed",
        "bad_answer",
    ];
}

/// What a start did to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// The stream was free (or its entry had expired) and is now this session's.
    Reserved,
    /// The same session already held it (a CDN retry); the expiry was renewed.
    Renewed,
    /// Another live session holds the stream.
    Busy,
}

/// What an end (or a failed start) did to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The session's entry was removed.
    Released,
    /// A failed start of the session was counted off, but another start of
    /// the same session (a retry, or the original) may still be accepted, so
    /// the stream stays held.
    Kept,
    /// No entry for this stream and session; nothing changed.
    NotHeld,
}

/// What is asked of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A start: take the stream, or renew it for the same session.
    Reserve,
    /// A sign of life of a live push (nginx-rtmp `on_update`): renew the
    /// session's reservation without counting a start; take a free stream.
    Refresh,
    /// An end: free the stream if this session holds it.
    Release,
    /// A start the upstream refused or never answered: count it off.
    GiveBack,
}

/// The registry's answer to an [`Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// See [`Reserve`] and [`Release`].
    Reserve(Reserve),
    /// See [`Release`].
    Release(Release),
}

/// What [`rule`] does to the stream's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing to write.
    Keep,
    /// Write this entry.
    Put(Entry),
    /// Remove the entry.
    Delete,
}

/// The registry's view of one callback: which stream, which session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    stream: [u8; 16],
    session: [u8; 16],
    peer: [u8; 16],
    /// True when the sender named the session (`Sequence`, `UniqueName`,
    /// `vdoid`, nginx-rtmp `clientid`); false when it was derived.
    explicit: bool,
}

/// 128-bit hash of length-prefixed parts (so `("ab","c")` and `("a","bc")`
/// differ): two SipHash-1-3 passes with keys (0, 0), seeded 1 and 2. This is
/// what std's `DefaultHasher` computed when the registry was written; the
/// `siphasher` crate keeps it the same whatever std does later.
pub(crate) fn hash16(parts: &[&[u8]]) -> [u8; 16] {
    use std::hash::Hasher;
    let half = |seed: u8| {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
        h.write_u8(seed);
        for p in parts {
            h.write_u64(p.len() as u64);
            h.write(p);
        }
        h.finish().to_le_bytes()
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&half(1));
    out[8..].copy_from_slice(&half(2));
    out
}

impl Claim {
    /// The stream is (ingest domain, app, stream). The session is the sender's
    /// identity when it gives one; otherwise it is derived from the event time
    /// with the client address and port, and an end without identity matches
    /// a derived start by client address and port.
    pub fn of(cb: &Callback) -> Claim {
        let domain = cb.domain.as_deref().unwrap_or_default();
        let stream = hash16(&[domain.as_bytes(), cb.app.as_bytes(), cb.stream.as_bytes()]);
        let ip = cb.client_ip.as_deref().unwrap_or_default();
        let port = cb.client_port.map(|p| p.to_string()).unwrap_or_default();
        let peer = hash16(&[b"peer", ip.as_bytes(), port.as_bytes()]);
        match &cb.session {
            Some(id) => Claim {
                stream,
                session: hash16(&[b"id", id.as_bytes()]),
                peer,
                explicit: true,
            },
            None => {
                let ts = match cb.event {
                    Event::Start => cb.event_time_ms.map(|t| t.to_string()).unwrap_or_default(),
                    // Plays never reach the registry; they would claim as ends do.
                    Event::End
                    | Event::Update
                    | Event::Play
                    | Event::PlayEnd
                    | Event::PlayUpdate => String::new(),
                };
                Claim {
                    stream,
                    session: hash16(&[b"derived", ts.as_bytes(), ip.as_bytes(), port.as_bytes()]),
                    peer,
                    explicit: false,
                }
            }
        }
    }

    /// The stream's 128-bit hash (names its etcd key and its bucket).
    pub fn stream_hash(&self) -> &[u8; 16] {
        &self.stream
    }

    /// Whether an entry belongs to this claim's session, for an end: the same
    /// session, or (neither having named one) the same client address and port.
    fn owns(&self, e: &Entry) -> bool {
        e.stream == self.stream
            && (e.session == self.session || (!self.explicit && !e.explicit && e.peer == self.peer))
    }
}

/// One stored reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    stream: [u8; 16],
    session: [u8; 16],
    peer: [u8; 16],
    expires_at: u64,
    explicit: bool,
    /// Starts of this session (the original and its retries) that have not
    /// failed upstream. A failed start counts itself off; the stream is freed
    /// when none is left, since any other attempt may have been accepted.
    attempts: u8,
}

/// The last byte of an entry: bit 0 `explicit`, bits 1-7 `attempts`.
const FLAG_EXPLICIT: u8 = 1;
/// Most attempts counted; beyond it the stream stays held until an end or `ttl_s`.
const MAX_ATTEMPTS: u8 = 127;

impl Entry {
    /// A fresh reservation of the claim's stream for its session.
    fn new(claim: &Claim, expires_at: u64) -> Entry {
        Entry {
            stream: claim.stream,
            session: claim.session,
            peer: claim.peer,
            expires_at,
            explicit: claim.explicit,
            attempts: 1,
        }
    }

    /// Unix second from which the entry no longer holds its stream.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Whether the entry still holds its stream at `now`.
    pub fn live(&self, now: u64) -> bool {
        self.expires_at > now
    }

    /// Appends the [`ENTRY_BYTES`] bytes of the entry.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.stream);
        out.extend_from_slice(&self.session);
        out.extend_from_slice(&self.peer);
        out.extend_from_slice(&self.expires_at.to_le_bytes());
        out.push((self.attempts.min(MAX_ATTEMPTS) << 1) | u8::from(self.explicit));
    }

    /// Reads an entry written by [`Entry::write`].
    pub fn read(b: &[u8]) -> Option<Entry> {
        if b.len() != ENTRY_BYTES {
            return None;
        }
        let mut stream = [0u8; 16];
        let mut session = [0u8; 16];
        let mut peer = [0u8; 16];
        let mut exp = [0u8; 8];
        stream.copy_from_slice(&b[0..16]);
        session.copy_from_slice(&b[16..32]);
        peer.copy_from_slice(&b[32..48]);
        exp.copy_from_slice(&b[48..56]);
        Some(Entry {
            stream,
            session,
            peer,
            expires_at: u64::from_le_bytes(exp),
            explicit: b[56] & FLAG_EXPLICIT != 0,
            attempts: b[56] >> 1,
        })
    }
}

/// The registry's rules. `live` is the stream's entry when one holds it at
/// `now` (an expired entry counts as none). Returns the answer and what to
/// write. A store applies the change atomically against what it read, or
/// reads again and asks again.
pub fn rule(op: Op, live: Option<&Entry>, claim: &Claim, now: u64, ttl_s: u64) -> (Answer, Change) {
    let expires_at = now.saturating_add(ttl_s);
    match op {
        Op::Reserve => match live {
            Some(e) if e.session == claim.session => {
                let mut e = *e;
                e.expires_at = expires_at;
                e.attempts = e.attempts.saturating_add(1).min(MAX_ATTEMPTS);
                (Answer::Reserve(Reserve::Renewed), Change::Put(e))
            }
            Some(_) => (Answer::Reserve(Reserve::Busy), Change::Keep),
            None => (
                Answer::Reserve(Reserve::Reserved),
                Change::Put(Entry::new(claim, expires_at)),
            ),
        },
        Op::Refresh => match live {
            Some(e) if e.session == claim.session => {
                let mut e = *e;
                e.expires_at = expires_at.max(e.expires_at);
                (Answer::Reserve(Reserve::Renewed), Change::Put(e))
            }
            Some(_) => (Answer::Reserve(Reserve::Busy), Change::Keep),
            None => (
                Answer::Reserve(Reserve::Reserved),
                Change::Put(Entry::new(claim, expires_at)),
            ),
        },
        Op::Release => match live {
            Some(e) if claim.owns(e) => (Answer::Release(Release::Released), Change::Delete),
            _ => (Answer::Release(Release::NotHeld), Change::Keep),
        },
        // Only this exact session's entry: the peer fallback of ends does
        // not apply to a failed start.
        Op::GiveBack => match live {
            Some(e) if e.session == claim.session => match e.attempts {
                // Saturated: the count is no longer exact, so keep the stream
                // (until the session's end or `ttl_s`) rather than guess.
                MAX_ATTEMPTS => (Answer::Release(Release::Kept), Change::Keep),
                n if n > 1 => {
                    let mut e = *e;
                    e.attempts = n - 1;
                    (Answer::Release(Release::Kept), Change::Put(e))
                }
                _ => (Answer::Release(Release::Released), Change::Delete),
            },
            _ => (Answer::Release(Release::NotHeld), Change::Keep),
        },
    }
}

/// Whether a start's reservation stands once the upstream has answered it:
/// a 2xx accepts the publish; so does a 3xx for nginx-rtmp, which follows it
/// as a redirect and goes on with the push (under the same name, or a new
/// one that its `publish_done` does not use). Any other status, or none at
/// all (the request was reset or timed out), means the push does not go
/// ahead, so the attempt is given back rather than block the stream for `ttl_s`.
///
/// SRS allows a publish only on 200 or 201 **and** an answer body SRS takes
/// for success ([`srs_answer_accepted`]): its status alone is not enough,
/// see [`answer_accepted`].
pub fn publish_accepted(format: Format, upstream_status: Option<i64>) -> bool {
    upstream_status.is_some_and(|s| match format {
        Format::NginxRtmp => (200..400).contains(&s),
        Format::KlsV2 | Format::KlsV1 => (200..300).contains(&s),
        Format::Srs => s == 200 || s == 201,
    })
}

/// Whether a dialect's acceptance of a publish depends on the answer's body,
/// which the host then hands over (only SRS: every other request's path does
/// not read the response).
pub fn answer_body_needed(format: Format) -> bool {
    format == Format::Srs
}

/// The whole acceptance rule of a start's answer: the status, and for SRS
/// the body (`None`: not read, or cut off past [`MAX_ANSWER_BYTES`]).
pub fn answer_accepted(format: Format, upstream_status: Option<i64>, body: Option<&[u8]>) -> bool {
    publish_accepted(format, upstream_status)
        && (!answer_body_needed(format) || body.is_some_and(srs_answer_accepted))
}

/// Longest answer body kept to apply SRS's rule; a longer one counts as a
/// refusal (the reservation is given back).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// SRS's success body: exactly `0` (byte-exact: `0\n`, ` 0` and `"0"` are
/// refusals), or a JSON object whose `"code"` is the integer 0 (whitespace
/// and other keys are fine).
pub fn srs_answer_accepted(body: &[u8]) -> bool {
    crate::callback::answer_is_success(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry's hash must never change: entries written by one build
    /// are read by the next, and by every Envoy of a fleet.
    #[test]
    fn every_error_kind_is_listed() {
        let all = [
            RegistryError::Contended,
            RegistryError::Full,
            RegistryError::Store(StoreError::CasMismatch),
            Unavailable::NoLeader.into(),
            Unavailable::Timeout.into(),
            Unavailable::Unreachable.into(),
            Unavailable::Failed(500, 2).into(),
            Unavailable::Garbage("x").into(),
        ];
        let kinds: Vec<&str> = all.iter().map(RegistryError::kind).collect();
        assert_eq!(kinds, RegistryError::KINDS);
    }

    #[test]
    fn the_hash_is_pinned() {
        assert_eq!(
            hex::encode(hash16(&[b"push.example.com", b"live", b"cam1"])),
            PINNED_STREAM_HASH
        );
        assert_eq!(hex::encode(hash16(&[])), PINNED_EMPTY_HASH);
    }

    /// It is what std's `DefaultHasher` gives (and gave when the registry
    /// was written): the same two passes.
    #[test]
    fn the_hash_is_the_one_std_gave() {
        use std::hash::Hasher;
        let std16 = |parts: &[&[u8]]| {
            let half = |seed: u8| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                h.write_u8(seed);
                for p in parts {
                    h.write_u64(p.len() as u64);
                    h.write(p);
                }
                h.finish().to_le_bytes()
            };
            let mut out = [0u8; 16];
            out[..8].copy_from_slice(&half(1));
            out[8..].copy_from_slice(&half(2));
            out
        };
        for parts in [
            vec![&b"push.example.com"[..], b"live", b"cam1"],
            vec![b"id", b"seq-1"],
            vec![b"derived", b"", b"", b""],
            vec![&[0xffu8; 300][..]],
        ] {
            assert_eq!(hash16(&parts), std16(&parts));
        }
    }

    const PINNED_STREAM_HASH: &str = "9d625187c0f225855f496384f789fec3";
    const PINNED_EMPTY_HASH: &str = "ed40851f3b10bc440b45527fcbce3264";
}
