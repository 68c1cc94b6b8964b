//! The registry on etcd, for a fleet of Envoys: one key per stream, reached
//! through etcd's JSON gateway (`POST /v3/kv/txn`, `/v3/kv/range`,
//! `/v3/lease/grant`) over an HTTP/1.1 Envoy cluster.
//!
//! [`EtcdOp`] carries out one registry [`Op`] as a state machine without I/O:
//! it says which request to send ([`Step::Send`]), is told what came back
//! ([`EtcdOp::on_answer`]), and ends with the answer or why the store could
//! not give one ([`Step::Done`]). The filter only moves the bytes
//! (`proxy_dispatch_http_call`); every decision is made here, and tested
//! natively against answers captured from a real etcd
//! (`tests/fixtures/etcd/`).
//!
//! - Key: `key_prefix` + hex of the stream's 128-bit hash; value: a version
//!   byte and the 57-byte [`Entry`] (base64 on the wire). No name, secret or
//!   token goes into etcd.
//! - A start first tries "create if absent" (compare `CREATE` = 0, put; on
//!   failure, read the holder in the same round trip). Renewals, ends and
//!   given-back starts compare `MOD` against the revision they read.
//! - Expiry: the value carries it and [`rule`] enforces it. So that etcd drops
//!   forgotten keys too, every put carries a lease shared by all the keys
//!   written in one time window (no lease per key); a window's lease is
//!   granted when a put finds it missing.
//! - A failed compare brings the current holder, and the rule runs again, a
//!   bounded number of times; a failed call or an unreadable answer ends the
//!   op with [`RegistryError::Unavailable`] and its kind.

use base64::Engine as _;
use serde::Deserialize;

use super::{rule, Answer, Change, Claim, Entry, Op, RegistryError, Unavailable, ENTRY_BYTES};

/// Version byte in front of every stored entry.
const VALUE_VERSION: u8 = 1;
/// Compare-and-swap rounds before the op gives up as contended.
const TRIES: u8 = 8;

/// The txn endpoint.
pub const TXN_PATH: &str = "/v3/kv/txn";
/// The range endpoint.
pub const RANGE_PATH: &str = "/v3/kv/range";
/// The lease grant endpoint.
pub const GRANT_PATH: &str = "/v3/lease/grant";

/// One request for the filter to send: `POST path` with a JSON body, and the
/// header `Grpc-Metadata-hasleader: true` (without a quorum etcd then answers
/// at once instead of after its own 7 s timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Request path.
    pub path: &'static str,
    /// JSON body.
    pub body: String,
}

/// What the filter does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this request; give the answer to [`EtcdOp::on_answer`].
    Send(Call),
    /// The op is over.
    Done(Result<Answer, RegistryError>),
}

/// Where an op is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Sent "create if absent".
    Create,
    /// Sent a read.
    Read,
    /// Sent a compare-and-swap; `answer` stands if it succeeds.
    Swap { answer: Answer },
    /// Sent a lease grant; then `retry` goes again, in state `then`.
    Grant { retry: Call, then: Box<State> },
}

/// One registry op on etcd (see the module docs).
#[derive(Debug, Clone)]
pub struct EtcdOp {
    op: Op,
    claim: Claim,
    now_s: u64,
    ttl_s: u64,
    deadline_ms: u64,
    key: String,
    lease: Lease,
    tries: u8,
    granted: bool,
    last: Option<Call>,
    state: State,
}

/// The lease of the time window a put happens in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The lease ID, derived from the key prefix, `ttl_s` and the window.
    pub id: i64,
    /// Its TTL: long enough for every key put during the window to live `ttl_s`.
    pub ttl_s: u64,
}

impl Lease {
    /// The lease for a put at `now_s`: windows of a quarter of `ttl_s` (1 s
    /// to 1 h), so about five leases are alive at a time whatever the
    /// traffic. The ID is positive: 23 bits of a hash of the prefix, `ttl_s`
    /// and the window length, then 40 bits of the window number.
    pub fn at(prefix: &str, ttl_s: u64, now_s: u64) -> Lease {
        let window_s = (ttl_s / 4).clamp(1, 3600);
        let window = now_s / window_s;
        let tag = super::hash16(&[
            b"lease",
            prefix.as_bytes(),
            &ttl_s.to_le_bytes(),
            &window_s.to_le_bytes(),
        ]);
        let tag = u64::from_le_bytes([tag[0], tag[1], tag[2], tag[3], 0, 0, 0, 0]) & 0x7f_ffff;
        let id = (tag << 40) | (window & 0xff_ffff_ffff);
        Lease {
            id: i64::try_from(id).unwrap_or(i64::MAX),
            ttl_s: ttl_s.saturating_add(window_s),
        }
    }
}

/// The etcd key of a stream.
pub fn key_of(prefix: &str, claim: &Claim) -> String {
    format!("{prefix}{}", hex::encode(claim.stream_hash()))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The stored value of an entry.
pub fn encode_value(e: &Entry) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + ENTRY_BYTES);
    v.push(VALUE_VERSION);
    e.write(&mut v);
    v
}

/// An entry from a stored value (`None`: not one this module wrote).
pub fn decode_value(v: &[u8]) -> Option<Entry> {
    match v.split_first() {
        Some((&VALUE_VERSION, rest)) => Entry::read(rest),
        _ => None,
    }
}

/// `POST /v3/kv/txn`: put `value` if `key` does not exist; else read it.
pub fn txn_create(key: &str, value: &[u8], lease: i64) -> Call {
    let (k, v) = (b64(key.as_bytes()), b64(value));
    Call {
        path: TXN_PATH,
        body: format!(
            r#"{{"compare":[{{"target":"CREATE","key":"{k}","create_revision":"0"}}],"success":[{{"request_put":{{"key":"{k}","value":"{v}","lease":"{lease}"}}}}],"failure":[{{"request_range":{{"key":"{k}"}}}}]}}"#
        ),
    }
}

/// `POST /v3/kv/txn`: put `value` if `key` is still at `mod_revision`; else read it.
pub fn txn_swap_put(key: &str, value: &[u8], lease: i64, mod_revision: i64) -> Call {
    let (k, v) = (b64(key.as_bytes()), b64(value));
    Call {
        path: TXN_PATH,
        body: format!(
            r#"{{"compare":[{{"target":"MOD","key":"{k}","mod_revision":"{mod_revision}"}}],"success":[{{"request_put":{{"key":"{k}","value":"{v}","lease":"{lease}"}}}}],"failure":[{{"request_range":{{"key":"{k}"}}}}]}}"#
        ),
    }
}

/// `POST /v3/kv/txn`: delete `key` if it is still at `mod_revision`; else read it.
pub fn txn_swap_delete(key: &str, mod_revision: i64) -> Call {
    let k = b64(key.as_bytes());
    Call {
        path: TXN_PATH,
        body: format!(
            r#"{{"compare":[{{"target":"MOD","key":"{k}","mod_revision":"{mod_revision}"}}],"success":[{{"request_delete_range":{{"key":"{k}"}}}}],"failure":[{{"request_range":{{"key":"{k}"}}}}]}}"#
        ),
    }
}

/// `POST /v3/kv/range` of one key.
pub fn range(key: &str) -> Call {
    Call {
        path: RANGE_PATH,
        body: format!(r#"{{"key":"{}"}}"#, b64(key.as_bytes())),
    }
}

/// `POST /v3/lease/grant` of a lease with a chosen ID.
pub fn lease_grant(lease: &Lease) -> Call {
    Call {
        path: GRANT_PATH,
        body: format!(r#"{{"TTL":"{}","ID":"{}"}}"#, lease.ttl_s, lease.id),
    }
}

// ---- answers ------------------------------------------------------------------

/// A successful txn or range answer, as far as the registry reads it. etcd
/// leaves out every field at its default: a missing `succeeded` is a failed
/// compare, missing `kvs` is no key, a missing `value` is an empty one.
#[derive(Debug, Deserialize)]
struct Reply {
    /// Every real answer has one; `{}` is not an answer.
    header: serde_json::Value,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<OpReply>,
    /// Set on a range answer.
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Debug, Deserialize)]
struct OpReply {
    response_range: Option<RangeReply>,
}

#[derive(Debug, Deserialize)]
struct RangeReply {
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Debug, Deserialize)]
struct Kv {
    #[serde(default)]
    value: String,
    mod_revision: String,
}

/// An error answer: `{"error","message","code"}` (gRPC code).
#[derive(Debug, Deserialize)]
struct ErrorReply {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

/// The holder a txn or range answer names: its entry (if any) and revision.
#[derive(Debug)]
struct Holder {
    entry: Entry,
    mod_revision: i64,
}

/// What one answer means.
#[derive(Debug)]
enum Heard {
    /// 200 with a readable body: the compare's result and the holder read.
    Ok {
        succeeded: bool,
        holder: Option<Holder>,
    },
    /// The put named a lease that does not exist (code 5): grant, then retry.
    LeaseMissing,
    /// The lease to grant exists already (code 9): fine.
    LeaseExists,
    /// The store could not answer.
    Failed(Unavailable),
}

fn read_holder(kvs: &[Kv]) -> Result<Option<Holder>, Unavailable> {
    let Some(kv) = kvs.first() else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&kv.value)
        .map_err(|_| Unavailable::Garbage("a value that is not base64".into()))?;
    let entry = decode_value(&bytes)
        .ok_or_else(|| Unavailable::Garbage("a value this filter did not write".into()))?;
    let mod_revision = kv
        .mod_revision
        .parse()
        .map_err(|_| Unavailable::Garbage("a mod_revision that is not a number".into()))?;
    Ok(Some(Holder {
        entry,
        mod_revision,
    }))
}

/// Reads one answer: `None` when no answer came at all (refused, reset, or
/// the filter's own timeout); else the HTTP status and the body.
fn hear(answer: Option<(u16, &[u8])>) -> Heard {
    let Some((status, body)) = answer else {
        return Heard::Failed(Unavailable::Unreachable("no answer".into()));
    };
    if status == 200 {
        return match serde_json::from_slice::<Reply>(body) {
            Ok(r) if !r.header.is_null() => {
                let kvs = match r.responses.first() {
                    Some(op) => op.response_range.as_ref().map_or(&[][..], |rr| &rr.kvs[..]),
                    None => &r.kvs[..],
                };
                match read_holder(kvs) {
                    Ok(holder) => Heard::Ok {
                        succeeded: r.succeeded,
                        holder,
                    },
                    Err(e) => Heard::Failed(e),
                }
            }
            _ => Heard::Failed(Unavailable::Garbage(
                "a 200 answer that is not a txn or range reply".into(),
            )),
        };
    }
    let Ok(e) = serde_json::from_slice::<ErrorReply>(body) else {
        return Heard::Failed(Unavailable::Failed(format!("status {status}")));
    };
    match e.code {
        // "no leader" (with Grpc-Metadata-hasleader): nothing was applied.
        14 if e.message.contains("no leader") => Heard::Failed(Unavailable::NoLeader),
        5 if e.message.contains("lease not found") => Heard::LeaseMissing,
        9 if e.message.contains("lease already exists") => Heard::LeaseExists,
        // Anything else (a timed-out request, code 14 or 2; a refused
        // request) leaves the key's state unknown: fail this op.
        code => Heard::Failed(Unavailable::Failed(format!("status {status}, code {code}"))),
    }
}

impl EtcdOp {
    /// Starts `op` for `claim` at `now_s` / `now_ms`, to end by
    /// `now_ms + timeout_ms`. Returns the op and its first step.
    pub fn begin(
        op: Op,
        claim: Claim,
        prefix: &str,
        ttl_s: u64,
        now_s: u64,
        now_ms: u64,
        timeout_ms: u64,
    ) -> (EtcdOp, Step) {
        let mut this = EtcdOp {
            op,
            claim,
            now_s,
            ttl_s,
            deadline_ms: now_ms.saturating_add(timeout_ms),
            key: key_of(prefix, &claim),
            lease: Lease::at(prefix, ttl_s, now_s),
            tries: TRIES,
            granted: false,
            last: None,
            state: State::Read,
        };
        let step = match op {
            // A start (or sign of life) usually finds its stream free: try to
            // create the entry, and learn the holder in the same round trip.
            Op::Reserve | Op::Refresh => this.create(),
            Op::Release | Op::GiveBack => this.send(range(&this.key), State::Read),
        };
        (this, step)
    }

    /// Milliseconds left before the op's deadline (the timeout of the next call).
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.deadline_ms.saturating_sub(now_ms)
    }

    /// The op this is.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The claim this op is about.
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    fn send(&mut self, call: Call, state: State) -> Step {
        self.state = state;
        self.last = Some(call.clone());
        Step::Send(call)
    }

    fn done(&self, r: Result<Answer, RegistryError>) -> Step {
        Step::Done(r)
    }

    fn create(&mut self) -> Step {
        let (answer, change) = rule(self.op, None, &self.claim, self.now_s, self.ttl_s);
        match change {
            Change::Put(e) => {
                let call = txn_create(&self.key, &encode_value(&e), self.lease.id);
                self.send(call, State::Create)
            }
            Change::Keep | Change::Delete => self.done(Ok(answer)),
        }
    }

    /// Runs the rule on what etcd holds and writes the change against it.
    fn decide(&mut self, holder: Option<Holder>) -> Step {
        if self.tries == 0 {
            return self.done(Err(RegistryError::Contended));
        }
        self.tries -= 1;
        let Some(h) = holder else {
            // No key: a start creates it; an end or give-back finds nothing.
            return self.create();
        };
        let live = h.entry.live(self.now_s).then_some(&h.entry);
        let (answer, change) = rule(self.op, live, &self.claim, self.now_s, self.ttl_s);
        match change {
            Change::Keep => self.done(Ok(answer)),
            Change::Put(e) => {
                let call =
                    txn_swap_put(&self.key, &encode_value(&e), self.lease.id, h.mod_revision);
                self.send(call, State::Swap { answer })
            }
            Change::Delete => {
                let call = txn_swap_delete(&self.key, h.mod_revision);
                self.send(call, State::Swap { answer })
            }
        }
    }

    /// Gives the op the answer to its last [`Step::Send`]: `None` when no
    /// answer came (refused, reset, or the call's own timeout), else the HTTP
    /// status and body.
    pub fn on_answer(&mut self, answer: Option<(u16, &[u8])>, now_ms: u64) -> Step {
        if now_ms >= self.deadline_ms {
            return self.done(Err(Unavailable::Timeout.into()));
        }
        match hear(answer) {
            Heard::Failed(e) => self.done(Err(e.into())),
            Heard::LeaseMissing => {
                // The window's lease is not granted yet (or has expired):
                // grant it once, then send the same write again.
                let writes = matches!(self.state, State::Create | State::Swap { .. });
                match (writes && !self.granted, self.last.clone()) {
                    (true, Some(retry)) => {
                        self.granted = true;
                        let then = Box::new(self.state.clone());
                        self.send(lease_grant(&self.lease), State::Grant { retry, then })
                    }
                    _ => self.done(Err(Unavailable::Failed(
                        "the write's lease is missing even after it was granted".into(),
                    )
                    .into())),
                }
            }
            Heard::LeaseExists => match self.state.clone() {
                // Another Envoy granted it first: just as good.
                State::Grant { retry, then } => self.send(retry, *then),
                _ => self.done(Err(Unavailable::Garbage(
                    "\"lease already exists\" to something that was not a grant".into(),
                )
                .into())),
            },
            Heard::Ok { succeeded, holder } => match self.state.clone() {
                State::Grant { retry, then } => self.send(retry, *then),
                State::Create if succeeded => {
                    let (answer, _) = rule(self.op, None, &self.claim, self.now_s, self.ttl_s);
                    self.done(Ok(answer))
                }
                State::Swap { answer } if succeeded => self.done(Ok(answer)),
                // A failed compare brings the current holder (or none): ask
                // the rule again against it.
                State::Create | State::Swap { .. } | State::Read => self.decide(holder),
            },
        }
    }
}
