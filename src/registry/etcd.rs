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

/// Standard base64 with padding, as etcd's gateway wants keys and values.
/// Written out (the `base64` crate decodes, and is this function's oracle in
/// the tests): its generic encoder cost 1.8 KB of the module, which has a
/// size budget.
fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
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

/// A `count_only` range over every key under `prefix`: how many reservations
/// the fleet holds (keys whose lease has not expired yet).
pub fn count(prefix: &str) -> Call {
    let mut end = prefix.as_bytes().to_vec();
    // The range end is the prefix with its last byte one higher ("[prefix, end)").
    match end.last_mut() {
        Some(b) if *b < 0xff => *b += 1,
        _ => end.push(0),
    }
    Call {
        path: RANGE_PATH,
        body: format!(
            r#"{{"key":"{}","range_end":"{}","count_only":true}}"#,
            b64(prefix.as_bytes()),
            b64(&end)
        ),
    }
}

/// The count of a [`count`] answer: a 200 with etcd's header, and `count` as
/// an int64 string (absent when 0, as etcd's gateway omits zero values).
/// `None` for anything else: no answer, an error, garbage.
pub fn count_answer(answer: Option<(u16, &[u8])>) -> Option<u64> {
    let (status, body) = answer?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("header")?.as_object()?;
    match v.get("count") {
        None => Some(0),
        Some(c) => c.as_str()?.parse().ok(),
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

// Answers are read as `serde_json::Value` (which the module has anyway)
// rather than derived structs: etcd leaves out every field at its default,
// so a missing `succeeded` is a failed compare, missing `kvs` is no key, and
// a missing `value` is an empty one.

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

fn read_holder(kvs: Option<&serde_json::Value>) -> Result<Option<Holder>, Unavailable> {
    let Some(kv) = kvs.and_then(|k| k.as_array()).and_then(|k| k.first()) else {
        return Ok(None);
    };
    let value = kv.get("value").and_then(|v| v.as_str()).unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| Unavailable::Garbage("a value that is not base64"))?;
    let entry =
        decode_value(&bytes).ok_or(Unavailable::Garbage("a value this filter did not write"))?;
    let mod_revision = kv
        .get("mod_revision")
        .and_then(|r| r.as_str())
        .and_then(|r| r.parse().ok())
        .ok_or(Unavailable::Garbage("a kv without a numeric mod_revision"))?;
    Ok(Some(Holder {
        entry,
        mod_revision,
    }))
}

/// Reads one answer: `None` when no answer came at all (refused, reset, or
/// the filter's own timeout); else the HTTP status and the body.
fn hear(answer: Option<(u16, &[u8])>) -> Heard {
    let Some((status, body)) = answer else {
        return Heard::Failed(Unavailable::Unreachable);
    };
    // (`from_str`, as for the configuration: one serde_json reader in the module.)
    let json: Option<serde_json::Value> = std::str::from_utf8(body)
        .ok()
        .and_then(|t| serde_json::from_str(t).ok());
    if status == 200 {
        // Every real txn or range answer has a `header`; `{}` is not one.
        let Some(r) = json.filter(|j| j.get("header").is_some_and(|h| h.is_object())) else {
            return Heard::Failed(Unavailable::Garbage(
                "a 200 answer that is not a txn or range reply",
            ));
        };
        let succeeded = r
            .get("succeeded")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        // A txn's holder is in its failure range; a range answer's at the top.
        let kvs = match r.get("responses").and_then(|v| v.get(0)) {
            Some(op) => op.get("response_range").and_then(|rr| rr.get("kvs")),
            None => r.get("kvs"),
        };
        return match read_holder(kvs) {
            Ok(holder) => Heard::Ok { succeeded, holder },
            Err(e) => Heard::Failed(e),
        };
    }
    let Some(e) = json else {
        return Heard::Failed(Unavailable::Failed(status, -1));
    };
    let code = e.get("code").and_then(|c| c.as_i64()).unwrap_or(-1);
    let message = e
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default();
    match code {
        // "no leader" (with Grpc-Metadata-hasleader): nothing was applied.
        14 if message.contains("no leader") => Heard::Failed(Unavailable::NoLeader),
        5 if message.contains("lease not found") => Heard::LeaseMissing,
        9 if message.contains("lease already exists") => Heard::LeaseExists,
        // Anything else (a timed-out request, code 14 or 2; a refused
        // request) leaves the key's state unknown: fail this op.
        code => Heard::Failed(Unavailable::Failed(status, code)),
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

    /// The call in flight (the last [`Step::Send`]), to send again when a
    /// host lost it before its answer (the request that carried it ended).
    /// Every call of an op may be repeated: a write applied twice finds the
    /// op's own entry, which [`rule`] treats as a retry.
    pub fn last_call(&self) -> Option<&Call> {
        self.last.as_ref()
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
                    // The lease is missing even after it was granted: the
                    // store is not behaving.
                    _ => self.done(Err(Unavailable::Failed(404, 5).into())),
                }
            }
            Heard::LeaseExists => match self.state.clone() {
                // Another Envoy granted it first: just as good.
                State::Grant { retry, then } => self.send(retry, *then),
                _ => self.done(Err(Unavailable::Garbage(
                    "\"lease already exists\" to something that was not a grant",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::{Callback, Event, Format, Params};
    use crate::registry::{Release, Reserve};

    const PREFIX: &str = "/cg/";
    const NOW: u64 = 1_700_000_000;
    const NOW_MS: u64 = NOW * 1000;

    /// A captured answer: (status, body), `None` when none arrived.
    fn fixture(name: &str) -> Option<(u16, Vec<u8>)> {
        let path = format!(
            "{}/tests/fixtures/etcd/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let r = &v["response"];
        (!r.is_null()).then(|| {
            (
                r["status"].as_u64().unwrap() as u16,
                r["body"].as_str().unwrap().as_bytes().to_vec(),
            )
        })
    }

    fn heard(name: &str) -> Heard {
        let f = fixture(name);
        hear(f.as_ref().map(|(s, b)| (*s, &b[..])))
    }

    fn claim(session: &str) -> Claim {
        let cb = Callback {
            format: Format::KlsV2,
            event: Event::Start,
            app: "live".into(),
            stream: "cam1".into(),
            domain: Some("push.example.com".into()),
            event_time_ms: Some(NOW * 1000),
            session: Some(session.into()),
            params: Params::default(),
            client_ip: None,
            client_port: None,
            node: None,
            close_mode: None,
        };
        Claim::of(&cb)
    }

    fn entry_of(c: &Claim, expires_at: u64, attempts: u8) -> Entry {
        let mut e = Entry::new(c, expires_at);
        e.attempts = attempts;
        e
    }

    /// A 200 txn answer: `succeeded`, and the holder in the failure range.
    fn txn(succeeded: bool, holder: Option<(&Entry, i64)>) -> (u16, Vec<u8>) {
        let kvs = holder.map_or(String::new(), |(e, rev)| {
            format!(
                r#","kvs":[{{"key":"eA==","create_revision":"2","mod_revision":"{rev}","version":"1","value":"{}"}}],"count":"1""#,
                b64(&encode_value(e))
            )
        });
        let head = r#""header":{"cluster_id":"1","member_id":"2","revision":"9","raft_term":"2"}"#;
        let body = if succeeded {
            format!(
                r#"{{{head},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"9"}}}}}}]}}"#
            )
        } else {
            format!(
                r#"{{{head},"responses":[{{"response_range":{{"header":{{"revision":"9"}}{kvs}}}}}]}}"#
            )
        };
        (200, body.into_bytes())
    }

    fn range_answer(holder: Option<(&Entry, i64)>) -> (u16, Vec<u8>) {
        let kvs = holder.map_or(String::new(), |(e, rev)| {
            format!(
                r#","kvs":[{{"key":"eA==","create_revision":"2","mod_revision":"{rev}","version":"1","value":"{}"}}],"count":"1""#,
                b64(&encode_value(e))
            )
        });
        (
            200,
            format!(r#"{{"header":{{"revision":"9"}}{kvs}}}"#).into_bytes(),
        )
    }

    fn sent(step: &Step) -> &Call {
        match step {
            Step::Send(c) => c,
            Step::Done(r) => panic!("expected a call, the op ended with {r:?}"),
        }
    }

    fn answer(op: &mut EtcdOp, a: &(u16, Vec<u8>)) -> Step {
        op.on_answer(Some((a.0, &a.1)), NOW_MS + 5)
    }

    fn begin(o: Op, c: Claim) -> (EtcdOp, Step) {
        EtcdOp::begin(o, c, PREFIX, 600, NOW, NOW_MS, 1500)
    }

    #[test]
    fn requests_are_the_documented_json() {
        let c = claim("s1");
        let key = key_of(PREFIX, &c);
        assert!(key.starts_with("/cg/") && key.len() == 4 + 32, "{key}");
        let e = entry_of(&c, NOW + 600, 1);
        for call in [
            txn_create(&key, &encode_value(&e), 7),
            txn_swap_put(&key, &encode_value(&e), 7, 42),
            txn_swap_delete(&key, 42),
            range(&key),
            lease_grant(&Lease { id: 7, ttl_s: 750 }),
        ] {
            let v: serde_json::Value = serde_json::from_str(&call.body).unwrap();
            assert!(v.is_object(), "{}", call.body);
        }
        let v: serde_json::Value =
            serde_json::from_str(&txn_swap_put(&key, b"v", 7, 42).body).unwrap();
        assert_eq!(v["compare"][0]["target"], "MOD");
        assert_eq!(v["compare"][0]["mod_revision"], "42", "int64 as a string");
        assert_eq!(v["success"][0]["request_put"]["lease"], "7");
        assert_eq!(v["failure"][0]["request_range"]["key"], b64(key.as_bytes()));
        let v: serde_json::Value = serde_json::from_str(&txn_create(&key, b"v", 0).body).unwrap();
        assert_eq!(v["compare"][0]["create_revision"], "0");
        // No name, secret or token: the key is a hash and the value an entry.
        assert!(!key.contains("cam1") && !key.contains("live"));
    }

    #[test]
    fn leases_follow_windows_and_outlive_their_keys() {
        let a = Lease::at(PREFIX, 86_400, NOW);
        assert_eq!(a.ttl_s, 86_400 + 3600);
        assert!(a.id > 0);
        assert_eq!(
            Lease::at(PREFIX, 86_400, NOW + 1),
            a,
            "same window, same lease"
        );
        let next = Lease::at(PREFIX, 86_400, NOW + 3600);
        assert_ne!(next.id, a.id, "next window, next lease");
        assert_ne!(Lease::at("/other/", 86_400, NOW).id, a.id, "another prefix");
        assert_ne!(Lease::at(PREFIX, 600, NOW).id, a.id, "another ttl");
        assert_eq!(Lease::at(PREFIX, 3, NOW).ttl_s, 4, "1 s windows at least");
    }

    #[test]
    fn answers_are_classified_as_captured_from_etcd() {
        assert!(matches!(
            heard("single/txn_create_absent_leased"),
            Heard::Ok {
                succeeded: true,
                holder: None
            }
        ));
        assert!(matches!(
            heard("single/range_absent"),
            Heard::Ok {
                succeeded: false,
                holder: None
            }
        ));
        assert!(matches!(
            heard("single/txn_cas_delete_absent"),
            Heard::Ok {
                succeeded: false,
                holder: None
            }
        ));
        assert!(matches!(
            heard("single/put_unknown_lease"),
            Heard::LeaseMissing
        ));
        assert!(matches!(
            heard("single/txn_create_absent_unknown_lease"),
            Heard::LeaseMissing
        ));
        assert!(matches!(
            heard("single/lease_grant_exists"),
            Heard::LeaseExists
        ));
        assert!(matches!(heard("single/lease_grant_new"), Heard::Ok { .. }));
        assert!(matches!(
            heard("cluster3/quorum_lost_at_follower_late_hasleader"),
            Heard::Failed(Unavailable::NoLeader)
        ));
        // A timed-out request may or may not have been applied: an error, not "no leader".
        for name in [
            "cluster3/quorum_lost_at_follower_early_hasleader",
            "cluster3/quorum_lost_at_follower_late_no_header",
            "single/txn_not_json",
            "single/unknown_path",
        ] {
            assert!(
                matches!(heard(name), Heard::Failed(Unavailable::Failed(..))),
                "{name}"
            );
        }
        // A value this filter did not write is not guessed at.
        assert!(matches!(
            heard("single/txn_create_present_leased"),
            Heard::Failed(Unavailable::Garbage(_))
        ));
        assert!(matches!(
            hear(None),
            Heard::Failed(Unavailable::Unreachable)
        ));
        for garbage in [&b"{}"[..], b"[]", b"not json", b""] {
            assert!(matches!(
                hear(Some((200, garbage))),
                Heard::Failed(Unavailable::Garbage(_))
            ));
        }
    }

    #[test]
    fn a_start_on_a_free_stream_is_one_round_trip() {
        let (mut op, first) = begin(Op::Reserve, claim("s1"));
        let call = sent(&first);
        assert_eq!(call.path, TXN_PATH);
        assert!(call.body.contains(r#""target":"CREATE""#));
        let done = answer(&mut op, &txn(true, None));
        assert_eq!(done, Step::Done(Ok(Answer::Reserve(Reserve::Reserved))));
    }

    #[test]
    fn a_start_finds_the_holder_in_the_same_round_trip() {
        let mine = claim("s1");
        let theirs = entry_of(&claim("s2"), NOW + 100, 1);
        let (mut op, _) = begin(Op::Reserve, mine);
        let done = answer(&mut op, &txn(false, Some((&theirs, 17))));
        assert_eq!(done, Step::Done(Ok(Answer::Reserve(Reserve::Busy))));
    }

    #[test]
    fn a_retry_renews_with_compare_and_swap_and_rereads_when_stale() {
        let mine = claim("s1");
        let held = entry_of(&mine, NOW + 100, 1);
        let (mut op, _) = begin(Op::Reserve, mine);
        let swap = answer(&mut op, &txn(false, Some((&held, 17))));
        let call = sent(&swap);
        assert!(
            call.body.contains(r#""target":"MOD""#) && call.body.contains(r#""mod_revision":"17""#)
        );
        // Someone wrote in between: the new holder is another session's now.
        let theirs = entry_of(&claim("s2"), NOW + 100, 1);
        let done = answer(&mut op, &txn(false, Some((&theirs, 18))));
        assert_eq!(done, Step::Done(Ok(Answer::Reserve(Reserve::Busy))));

        let (mut op, _) = begin(Op::Reserve, mine);
        let _ = answer(&mut op, &txn(false, Some((&held, 17))));
        let done = answer(&mut op, &txn(true, None));
        assert_eq!(done, Step::Done(Ok(Answer::Reserve(Reserve::Renewed))));
    }

    #[test]
    fn an_expired_holder_is_taken_over_with_compare_and_swap() {
        let stale = entry_of(&claim("s2"), NOW - 1, 1);
        let (mut op, _) = begin(Op::Reserve, claim("s1"));
        let swap = answer(&mut op, &txn(false, Some((&stale, 5))));
        assert!(sent(&swap).body.contains(r#""mod_revision":"5""#));
        let done = answer(&mut op, &txn(true, None));
        assert_eq!(done, Step::Done(Ok(Answer::Reserve(Reserve::Reserved))));
    }

    #[test]
    fn a_missing_lease_is_granted_once_then_the_write_goes_again() {
        let (mut op, first) = begin(Op::Reserve, claim("s1"));
        let create = sent(&first).clone();
        let grant = answer(&mut op, &fixture("single/put_unknown_lease").unwrap());
        let g = sent(&grant);
        assert_eq!(g.path, GRANT_PATH);
        assert!(g
            .body
            .contains(&format!(r#""ID":"{}""#, Lease::at(PREFIX, 600, NOW).id)));
        // Another Envoy granted it first: just as good.
        let again = answer(&mut op, &fixture("single/lease_grant_exists").unwrap());
        assert_eq!(sent(&again), &create);
        // Still missing after a grant: the store is not behaving; fail.
        let done = answer(&mut op, &fixture("single/put_unknown_lease").unwrap());
        assert!(matches!(
            done,
            Step::Done(Err(RegistryError::Unavailable(Unavailable::Failed(..))))
        ));

        let (mut op, _) = begin(Op::Reserve, claim("s1"));
        let _ = answer(&mut op, &fixture("single/put_unknown_lease").unwrap());
        let _ = answer(&mut op, &fixture("single/lease_grant_new").unwrap());
        let done = answer(&mut op, &txn(true, None));
        assert_eq!(done, Step::Done(Ok(Answer::Reserve(Reserve::Reserved))));
    }

    #[test]
    fn an_end_reads_then_deletes_only_its_own_session() {
        let mine = claim("s1");
        let held = entry_of(&mine, NOW + 100, 1);
        let (mut op, first) = begin(Op::Release, mine);
        assert_eq!(sent(&first).path, RANGE_PATH);
        let del = answer(&mut op, &range_answer(Some((&held, 8))));
        assert!(sent(&del).body.contains("request_delete_range"));
        let done = answer(&mut op, &txn(true, None));
        assert_eq!(done, Step::Done(Ok(Answer::Release(Release::Released))));

        let theirs = entry_of(&claim("s2"), NOW + 100, 1);
        let (mut op, _) = begin(Op::Release, mine);
        let done = answer(&mut op, &range_answer(Some((&theirs, 8))));
        assert_eq!(done, Step::Done(Ok(Answer::Release(Release::NotHeld))));

        let (mut op, _) = begin(Op::Release, mine);
        let done = answer(&mut op, &range_answer(None));
        assert_eq!(done, Step::Done(Ok(Answer::Release(Release::NotHeld))));
    }

    #[test]
    fn a_failed_start_counts_its_attempt_off() {
        let mine = claim("s1");
        let twice = entry_of(&mine, NOW + 100, 2);
        let (mut op, _) = begin(Op::GiveBack, mine);
        let put = answer(&mut op, &range_answer(Some((&twice, 8))));
        let body = &sent(&put).body;
        assert!(body.contains("request_put"), "{body}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let stored = base64::engine::general_purpose::STANDARD
            .decode(v["success"][0]["request_put"]["value"].as_str().unwrap())
            .unwrap();
        assert_eq!(decode_value(&stored).unwrap().attempts, 1);
        let done = answer(&mut op, &txn(true, None));
        assert_eq!(done, Step::Done(Ok(Answer::Release(Release::Kept))));
    }

    #[test]
    fn failures_end_the_op_with_their_kind() {
        let (mut op, _) = begin(Op::Reserve, claim("s1"));
        let done = op.on_answer(None, NOW_MS + 5);
        assert!(matches!(
            done,
            Step::Done(Err(RegistryError::Unavailable(Unavailable::Unreachable)))
        ));

        let (mut op, _) = begin(Op::Reserve, claim("s1"));
        let f = fixture("cluster3/quorum_lost_at_follower_late_hasleader").unwrap();
        let done = answer(&mut op, &f);
        assert_eq!(done, Step::Done(Err(Unavailable::NoLeader.into())));

        // An answer after the deadline is not trusted: the op timed out.
        let (mut op, _) = begin(Op::Reserve, claim("s1"));
        let t = txn(true, None);
        let done = op.on_answer(Some((t.0, &t.1)), NOW_MS + 1500);
        assert_eq!(done, Step::Done(Err(Unavailable::Timeout.into())));
        assert_eq!(op.remaining_ms(NOW_MS + 1000), 500);
    }

    #[test]
    fn endless_contention_is_bounded() {
        let mine = claim("s1");
        let (mut op, _) = begin(Op::Reserve, mine);
        let mut rev = 10;
        let mut last = answer(
            &mut op,
            &txn(false, Some((&entry_of(&mine, NOW + 100, 1), rev))),
        );
        for _ in 0..20 {
            if let Step::Done(_) = last {
                break;
            }
            rev += 1;
            last = answer(
                &mut op,
                &txn(false, Some((&entry_of(&mine, NOW + 100, 1), rev))),
            );
        }
        assert_eq!(last, Step::Done(Err(RegistryError::Contended)));
    }

    #[test]
    fn base64_is_the_standard_padded_one() {
        let oracle = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        for n in 0..70 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(b64(&bytes), oracle(&bytes), "{n} bytes");
        }
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(&[0xff]), "/w==");
    }

    #[test]
    fn values_round_trip_and_foreign_ones_are_refused() {
        let e = entry_of(&claim("s1"), NOW + 5, 3);
        assert_eq!(decode_value(&encode_value(&e)), Some(e));
        assert_eq!(decode_value(b""), None);
        assert_eq!(decode_value(&[9; 58]), None, "another version");
        assert_eq!(decode_value(&encode_value(&e)[..40]), None);
    }
}
