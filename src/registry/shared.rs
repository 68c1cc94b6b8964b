//! The registry in Proxy-Wasm shared data: one Envoy, every worker.
//!
//! State lives in a [`SharedStore`]: key/value bytes with compare-and-swap
//! versions, which is exactly what proxy-wasm shared data offers (the filter
//! implements the trait with those hostcalls; tests use [`MemoryStore`]).
//!
//! Layout: a fixed number of buckets (shared-data keys) chosen by a hash of the
//! stream. Each bucket holds fixed-size entries ([`ENTRY_BYTES`] each) and has
//! a cap, so memory is bounded by `buckets × cap × ENTRY_BYTES` whatever the
//! traffic. Expired entries are dropped whenever their bucket is written.

use super::ENTRY_BYTES;
use super::{rule, Answer, Change, Claim, Entry, Op, RegistryError, Release, Reserve, StoreError};
use crate::config::DuplicateStreams;

/// Number of buckets (shared-data keys), whatever the configuration.
pub const MAX_BUCKETS: usize = 1024;
/// Compare-and-swap attempts before giving up on a contended bucket.
pub const CAS_RETRIES: usize = 16;
/// Prefix of the shared-data keys.
/// `v2`: the last byte of an entry holds the attempts count (`v1` held a bool).
const KEY_PREFIX: &str = "callback_guard.registry.v2.";

/// Key/value store with compare-and-swap, shaped after proxy-wasm shared data.
pub trait SharedStore {
    /// The value and its version (`None` when the key was never written).
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Writes `value` if the key's version is still `cas` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// Sizing derived from `max_streams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Number of buckets (shared-data keys).
    pub buckets: usize,
    /// Most entries in one bucket.
    pub per_bucket: usize,
}

impl Layout {
    /// Buckets and per-bucket cap for a configuration. The number of buckets
    /// never changes, so a stream is found in the same bucket whatever
    /// `max_streams` a (re)configuration sets: shared data outlives
    /// reconfiguration. The cap is twice the even share, so hashing imbalance
    /// does not refuse streams early.
    pub fn for_config(cfg: &DuplicateStreams) -> Layout {
        let buckets = MAX_BUCKETS;
        let share = cfg.max_streams.max(1).div_ceil(buckets);
        Layout {
            buckets,
            per_bucket: share.saturating_mul(2).max(4),
        }
    }

    /// Upper bound on the registry's bytes in shared data (values only).
    pub fn max_bytes(&self) -> usize {
        self.buckets * self.per_bucket * ENTRY_BYTES
    }

    fn bucket_key(&self, stream: &[u8; 16]) -> String {
        let mut n = [0u8; 8];
        n.copy_from_slice(&stream[..8]);
        let idx = u64::from_le_bytes(n) % self.buckets as u64;
        format!("{KEY_PREFIX}{idx}")
    }

    /// The key of bucket `index`.
    pub fn bucket_key_at(&self, index: usize) -> String {
        format!("{KEY_PREFIX}{index}")
    }

    /// Every bucket key, for initialising shared data at VM start.
    pub fn bucket_keys(&self) -> impl Iterator<Item = String> {
        (0..self.buckets).map(|i| format!("{KEY_PREFIX}{i}"))
    }
}

/// Creates the buckets that do not exist yet, empty, so that every later write
/// goes through compare-and-swap: Envoy's shared data cannot guard a key's
/// first write. Run once per configuration, before any request. Returns the
/// keys that could not be created, with why.
pub fn create_buckets(store: &dyn SharedStore, layout: &Layout) -> Vec<(String, StoreError)> {
    let mut failed = Vec::new();
    for key in layout.bucket_keys() {
        match store.get(&key) {
            Ok((_, Some(_))) => {}
            Ok((_, None)) => {
                if let Err(e) = store.set(&key, &[], None) {
                    failed.push((key, e));
                }
            }
            Err(e) => failed.push((key, e)),
        }
    }
    failed
}

fn decode(bytes: Option<Vec<u8>>) -> Vec<Entry> {
    bytes
        .unwrap_or_default()
        .chunks_exact(ENTRY_BYTES)
        .filter_map(Entry::read)
        .collect()
}

/// How many of a bucket's entries (its stored bytes) are live at `now`.
pub fn live_in_bucket(bytes: &[u8], now: u64) -> u64 {
    bytes
        .chunks_exact(ENTRY_BYTES)
        .filter_map(Entry::read)
        .filter(|e| e.live(now))
        .count() as u64
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for e in entries {
        e.write(&mut out);
    }
    out
}

/// Runs `f` on a bucket's live entries and writes the result back with
/// compare-and-swap, retrying a bounded number of times.
fn update<T>(
    store: &dyn SharedStore,
    key: &str,
    now: u64,
    mut f: impl FnMut(&mut Vec<Entry>) -> Result<(T, bool), RegistryError>,
) -> Result<T, RegistryError> {
    for _ in 0..CAS_RETRIES {
        let (bytes, cas) = store.get(key)?;
        if cas.is_none() {
            // Normally done by `create_buckets` before any request. Envoy's
            // compare-and-swap cannot guard a key's first write: create the
            // bucket empty, then come back and update it under CAS.
            store.set(key, &[], None)?;
            continue;
        }
        let stored = decode(bytes);
        let before = stored.len();
        let mut entries: Vec<Entry> = stored.into_iter().filter(|e| e.live(now)).collect();
        let expired = entries.len() != before;
        let (out, changed) = f(&mut entries)?;
        if !changed && !expired {
            return Ok(out);
        }
        match store.set(key, &encode(&entries), cas) {
            Ok(()) => return Ok(out),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(RegistryError::Contended)
}

/// Carries out one [`Op`] on the bucket of the claim's stream: [`rule`] on
/// the stream's live entry, written back with compare-and-swap. A new entry
/// in a bucket already at its cap is refused ([`RegistryError::Full`]).
pub fn run(
    store: &dyn SharedStore,
    cfg: &DuplicateStreams,
    op: Op,
    claim: &Claim,
    now: u64,
) -> Result<Answer, RegistryError> {
    let layout = Layout::for_config(cfg);
    let key = layout.bucket_key(claim.stream_hash());
    update(store, &key, now, |entries| {
        let at = entries
            .iter()
            .position(|e| &e.stream == claim.stream_hash());
        let (answer, change) = rule(op, at.map(|i| &entries[i]), claim, now, cfg.ttl_s);
        match (change, at) {
            (Change::Keep, _) => return Ok((answer, false)),
            (Change::Put(e), Some(i)) => entries[i] = e,
            (Change::Put(e), None) => {
                if entries.len() >= layout.per_bucket {
                    return Err(RegistryError::Full);
                }
                entries.push(e);
            }
            (Change::Delete, Some(i)) => {
                entries.remove(i);
            }
            (Change::Delete, None) => return Ok((answer, false)),
        }
        Ok((answer, true))
    })
}

fn reserve_answer(a: Answer) -> Reserve {
    match a {
        Answer::Reserve(r) => r,
        Answer::Release(_) => Reserve::Busy,
    }
}

fn release_answer(a: Answer) -> Release {
    match a {
        Answer::Release(r) => r,
        Answer::Reserve(_) => Release::NotHeld,
    }
}

/// Reserves the stream for the claim's session until `now + ttl_s`.
pub fn reserve(
    store: &dyn SharedStore,
    cfg: &DuplicateStreams,
    claim: &Claim,
    now: u64,
) -> Result<Reserve, RegistryError> {
    run(store, cfg, Op::Reserve, claim, now).map(reserve_answer)
}

/// Renews a live push's reservation (nginx-rtmp `on_update`), see [`Op::Refresh`].
pub fn refresh(
    store: &dyn SharedStore,
    cfg: &DuplicateStreams,
    claim: &Claim,
    now: u64,
) -> Result<Reserve, RegistryError> {
    run(store, cfg, Op::Refresh, claim, now).map(reserve_answer)
}

/// An end: frees the stream if this claim's session holds it. An end without
/// its own identity also frees a reservation whose identity was derived,
/// when the client address and port agree. Nothing held by another session
/// is touched.
pub fn release(
    store: &dyn SharedStore,
    cfg: &DuplicateStreams,
    claim: &Claim,
    now: u64,
) -> Result<Release, RegistryError> {
    run(store, cfg, Op::Release, claim, now).map(release_answer)
}

/// A start the upstream refused or never answered gives its attempt back.
/// The stream is freed only when no other start of the same session (the
/// original, or a CDN retry of it) is left that may have been accepted.
/// Only this exact session's entry is considered.
pub fn give_back(
    store: &dyn SharedStore,
    cfg: &DuplicateStreams,
    claim: &Claim,
    now: u64,
) -> Result<Release, RegistryError> {
    run(store, cfg, Op::GiveBack, claim, now).map(release_answer)
}

/// A [`SharedStore`] in process memory, with the same compare-and-swap
/// semantics as Envoy's shared data. Used by tests and the `check` command.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: std::sync::Mutex<MemoryState>,
}

/// Values with their versions, and the last version handed out.
type MemoryState = (std::collections::HashMap<String, (Vec<u8>, u32)>, u32);

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Total bytes of all values (for the memory-bound tests).
    pub fn value_bytes(&self) -> usize {
        self.inner
            .lock()
            .map(|g| g.0.values().map(|(v, _)| v.len()).sum())
            .unwrap_or(0)
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        let g = self
            .inner
            .lock()
            .map_err(|_| StoreError::Host("lock poisoned".into()))?;
        Ok(match g.0.get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| StoreError::Host("lock poisoned".into()))?;
        let (map, counter) = &mut *g;
        *counter = counter.wrapping_add(1).max(1);
        let next = *counter;
        match map.get_mut(key) {
            Some(slot) => {
                if cas.is_some_and(|c| c != slot.1) {
                    return Err(StoreError::CasMismatch);
                }
                *slot = (value.to_vec(), next);
            }
            None => {
                map.insert(key.to_string(), (value.to_vec(), next));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::{Callback, Event, Format, Params};
    use crate::registry::{publish_accepted, MAX_ATTEMPTS};

    fn cfg() -> DuplicateStreams {
        DuplicateStreams {
            reject: true,
            ttl_s: 100,
            max_streams: 1000,
            etcd: None,
        }
    }

    fn cb(event: Event, stream: &str, session: Option<&str>) -> Callback {
        Callback {
            format: Format::KlsV2,
            event,
            app: "live".into(),
            stream: stream.into(),
            domain: Some("d".into()),
            event_time_ms: Some(1_700_000_000_000),
            session: session.map(Into::into),
            params: Params::default(),
            client_ip: Some("1.2.3.4".into()),
            client_port: Some(5000),
            node: None,
            close_mode: None,
        }
    }

    fn start(s: &MemoryStore, stream: &str, session: Option<&str>, now: u64) -> Reserve {
        reserve(
            s,
            &cfg(),
            &Claim::of(&cb(Event::Start, stream, session)),
            now,
        )
        .unwrap()
    }

    fn end(s: &MemoryStore, stream: &str, session: Option<&str>, now: u64) -> Release {
        release(s, &cfg(), &Claim::of(&cb(Event::End, stream, session)), now).unwrap()
    }

    #[test]
    fn other_session_is_busy_same_session_renews() {
        let s = MemoryStore::new();
        assert_eq!(start(&s, "a", Some("s1"), 10), Reserve::Reserved);
        assert_eq!(start(&s, "a", Some("s2"), 11), Reserve::Busy);
        assert_eq!(start(&s, "a", Some("s1"), 12), Reserve::Renewed);
        assert_eq!(
            start(&s, "b", Some("s2"), 12),
            Reserve::Reserved,
            "other streams are independent"
        );
    }

    #[test]
    fn end_frees_only_the_owner() {
        let s = MemoryStore::new();
        assert_eq!(start(&s, "a", Some("s1"), 10), Reserve::Reserved);
        assert_eq!(end(&s, "a", Some("s2"), 11), Release::NotHeld);
        assert_eq!(
            start(&s, "a", Some("s2"), 12),
            Reserve::Busy,
            "a stranger's end freed nothing"
        );
        assert_eq!(end(&s, "a", Some("s1"), 13), Release::Released);
        assert_eq!(start(&s, "a", Some("s2"), 14), Reserve::Reserved);
        assert_eq!(end(&s, "zzz", Some("s1"), 15), Release::NotHeld);
    }

    #[test]
    fn expired_entry_can_be_taken_over() {
        let s = MemoryStore::new();
        assert_eq!(start(&s, "a", Some("s1"), 10), Reserve::Reserved);
        assert_eq!(start(&s, "a", Some("s2"), 109), Reserve::Busy);
        assert_eq!(start(&s, "a", Some("s2"), 110), Reserve::Reserved);
    }

    #[test]
    fn renewal_extends_the_expiry() {
        let s = MemoryStore::new();
        start(&s, "a", Some("s1"), 10);
        start(&s, "a", Some("s1"), 90);
        assert_eq!(start(&s, "a", Some("s2"), 150), Reserve::Busy);
        assert_eq!(start(&s, "a", Some("s2"), 190), Reserve::Reserved);
    }

    #[test]
    fn derived_sessions_use_time_and_peer_and_end_matches_by_peer() {
        let s = MemoryStore::new();
        assert_eq!(start(&s, "a", None, 10), Reserve::Reserved);
        assert_eq!(
            start(&s, "a", None, 11),
            Reserve::Renewed,
            "same time and peer is a retry"
        );
        let mut other = cb(Event::Start, "a", None);
        other.event_time_ms = Some(1_700_000_000_999);
        assert_eq!(
            reserve(&s, &cfg(), &Claim::of(&other), 12).unwrap(),
            Reserve::Busy
        );
        let mut stranger_end = cb(Event::End, "a", None);
        stranger_end.client_port = Some(6000);
        assert_eq!(
            release(&s, &cfg(), &Claim::of(&stranger_end), 13).unwrap(),
            Release::NotHeld
        );
        assert_eq!(end(&s, "a", None, 14), Release::Released);
    }

    /// Without an identity and without a client address (the spec samples'
    /// blank `ClientIp`/`ClientPort`), an end cannot be tied to one push. It
    /// frees the stream's derived reservation rather than leave the stream
    /// blocked for `ttl_s` (docs/registry.md, "One live push per stream").
    #[test]
    fn an_end_with_no_identity_and_no_address_frees_a_derived_reservation() {
        let s = MemoryStore::new();
        let anonymous = |event, time| {
            let mut c = cb(event, "a", None);
            c.client_ip = None;
            c.client_port = None;
            c.event_time_ms = Some(time);
            c
        };
        let first = anonymous(Event::Start, 1_700_000_000_000);
        let second = anonymous(Event::Start, 1_700_000_000_500);
        assert_eq!(
            reserve(&s, &cfg(), &Claim::of(&first), 10).unwrap(),
            Reserve::Reserved
        );
        assert_eq!(
            reserve(&s, &cfg(), &Claim::of(&second), 11).unwrap(),
            Reserve::Busy
        );
        let end = anonymous(Event::End, 1_700_000_060_000);
        assert_eq!(
            release(&s, &cfg(), &Claim::of(&end), 12).unwrap(),
            Release::Released
        );
        assert_eq!(
            reserve(&s, &cfg(), &Claim::of(&second), 13).unwrap(),
            Reserve::Reserved
        );
        // It still never frees a session the sender named.
        start(&s, "named", Some("s1"), 14);
        let mut end = anonymous(Event::End, 1_700_000_060_000);
        end.stream = "named".into();
        assert_eq!(
            release(&s, &cfg(), &Claim::of(&end), 15).unwrap(),
            Release::NotHeld
        );
    }

    #[test]
    fn an_anonymous_end_cannot_free_a_named_session() {
        let s = MemoryStore::new();
        start(&s, "a", Some("s1"), 10);
        assert_eq!(end(&s, "a", None, 11), Release::NotHeld);
    }

    #[test]
    fn memory_is_bounded_and_expired_entries_are_cleaned() {
        let small = DuplicateStreams {
            reject: true,
            ttl_s: 100,
            max_streams: 8,
            etcd: None,
        };
        let layout = Layout::for_config(&small);
        let s = MemoryStore::new();
        let mut full = 0;
        // 20000 streams over 1024 buckets of 4: many buckets fill up
        for i in 0..20_000 {
            let c = cb(Event::Start, &format!("s{i}"), Some("x"));
            match reserve(&s, &small, &Claim::of(&c), 10) {
                Ok(Reserve::Reserved) => {}
                Err(RegistryError::Full) => full += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(full > 0, "the cap refuses new streams once reached");
        assert!(
            s.value_bytes() <= layout.max_bytes(),
            "{} > {}",
            s.value_bytes(),
            layout.max_bytes()
        );
        // once the entries expire, touching a bucket cleans it and admits new streams
        for i in 0..20_000 {
            let c = cb(Event::Start, &format!("t{i}"), Some("x"));
            let _ = reserve(&s, &small, &Claim::of(&c), 500);
        }
        assert!(s.value_bytes() <= layout.max_bytes());
        let c = cb(Event::Start, "s0", Some("y"));
        assert_eq!(
            reserve(&s, &small, &Claim::of(&c), 1000).unwrap(),
            Reserve::Reserved
        );
    }

    #[test]
    fn layout_for_default_config() {
        let l = Layout::for_config(&DuplicateStreams {
            reject: true,
            ttl_s: 1,
            max_streams: 100_000,
            etcd: None,
        });
        assert_eq!(l.buckets, 1024);
        assert_eq!(l.per_bucket, 196);
        assert_eq!(l.max_bytes(), 1024 * 196 * ENTRY_BYTES);
    }

    /// A store whose writes always lose the race.
    struct Contended;
    impl SharedStore for Contended {
        fn get(&self, _: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            Ok((None, Some(1)))
        }
        fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), StoreError> {
            Err(StoreError::CasMismatch)
        }
    }

    #[test]
    fn the_bucket_of_a_stream_does_not_depend_on_max_streams() {
        let c = Claim::of(&cb(Event::Start, "a", Some("s1")));
        let small = DuplicateStreams {
            reject: true,
            ttl_s: 100,
            max_streams: 10,
            etcd: None,
        };
        let s = MemoryStore::new();
        assert_eq!(reserve(&s, &small, &c, 10).unwrap(), Reserve::Reserved);
        // reconfigured with another max_streams: the live stream is still found
        let other = Claim::of(&cb(Event::Start, "a", Some("s2")));
        assert_eq!(reserve(&s, &cfg(), &other, 11).unwrap(), Reserve::Busy);
    }

    #[test]
    fn giving_back_ignores_the_peer_fallback() {
        let s = MemoryStore::new();
        let mut first = cb(Event::Start, "a", None);
        first.event_time_ms = Some(1);
        assert_eq!(
            reserve(&s, &cfg(), &Claim::of(&first), 10).unwrap(),
            Reserve::Reserved
        );
        // a later start from the same peer, failing upstream, gives back only its own
        let mut late = cb(Event::Start, "a", None);
        late.event_time_ms = Some(2);
        assert_eq!(
            give_back(&s, &cfg(), &Claim::of(&late), 11).unwrap(),
            Release::NotHeld
        );
        assert_eq!(
            give_back(&s, &cfg(), &Claim::of(&first), 12).unwrap(),
            Release::Released
        );
    }

    /// A CDN that timed out on a start retries it. Whatever the order of the
    /// upstream's answers, the failure of one attempt must not free a stream
    /// whose other attempt may have been accepted; when every attempt failed,
    /// the stream is free again.
    #[test]
    fn a_stream_is_given_back_when_every_attempt_failed() {
        let s = MemoryStore::new();
        let c = Claim::of(&cb(Event::Start, "a", Some("s1")));
        let other = Claim::of(&cb(Event::Start, "a", Some("s2")));
        let busy = |now| reserve(&s, &cfg(), &other, now).unwrap() == Reserve::Busy;
        // The original reserves, its retry renews: two attempts.
        assert_eq!(reserve(&s, &cfg(), &c, 10).unwrap(), Reserve::Reserved);
        assert_eq!(reserve(&s, &cfg(), &c, 11).unwrap(), Reserve::Renewed);
        // One of them fails (either order): the other may be live.
        assert_eq!(give_back(&s, &cfg(), &c, 12).unwrap(), Release::Kept);
        assert!(busy(13), "the push may be live");
        // The other fails too: nothing can be live.
        assert_eq!(give_back(&s, &cfg(), &c, 14).unwrap(), Release::Released);
        assert_eq!(reserve(&s, &cfg(), &other, 15).unwrap(), Reserve::Reserved);
        assert_eq!(release(&s, &cfg(), &other, 16).unwrap(), Release::Released);

        // An accepted start never gives back; a failed duplicate of it keeps it.
        assert_eq!(reserve(&s, &cfg(), &c, 20).unwrap(), Reserve::Reserved);
        assert_eq!(reserve(&s, &cfg(), &c, 21).unwrap(), Reserve::Renewed);
        assert_eq!(give_back(&s, &cfg(), &c, 22).unwrap(), Release::Kept);
        assert!(busy(23));
        // The session's end frees it, whatever the count.
        assert_eq!(release(&s, &cfg(), &c, 24).unwrap(), Release::Released);
        assert!(!busy(25));
    }

    #[test]
    fn attempts_saturate_and_keep_the_stream() {
        let s = MemoryStore::new();
        let c = Claim::of(&cb(Event::Start, "a", Some("s1")));
        for _ in 0..200 {
            reserve(&s, &cfg(), &c, 1).unwrap();
        }
        // The count saturated, so it is no longer exact: failures keep the stream.
        for _ in 0..300 {
            assert_eq!(give_back(&s, &cfg(), &c, 2).unwrap(), Release::Kept);
        }
        assert_eq!(
            release(&s, &cfg(), &c, 3).unwrap(),
            Release::Released,
            "an end frees it"
        );
    }

    #[test]
    fn entry_flags_round_trip() {
        for (explicit, attempts) in [(false, 1), (true, 1), (false, 2), (true, MAX_ATTEMPTS)] {
            let e = Entry {
                stream: [1; 16],
                session: [2; 16],
                peer: [3; 16],
                expires_at: 99,
                explicit,
                attempts,
            };
            let mut out = Vec::new();
            e.write(&mut out);
            assert_eq!(out.len(), ENTRY_BYTES);
            assert_eq!(Entry::read(&out), Some(e));
        }
    }

    #[test]
    fn cas_retries_are_bounded() {
        let c = Claim::of(&cb(Event::Start, "a", Some("s")));
        assert_eq!(
            reserve(&Contended, &cfg(), &c, 1),
            Err(RegistryError::Contended)
        );
    }

    #[test]
    fn concurrent_reservations_admit_exactly_one() {
        let s = std::sync::Arc::new(MemoryStore::new());
        // As the filter does at configuration time: a bucket's first write
        // cannot be guarded by compare-and-swap.
        assert!(create_buckets(&*s, &Layout::for_config(&cfg())).is_empty());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut won = 0;
                    for i in 0..25 {
                        let c = cb(Event::Start, "one", Some(&format!("t{t}-{i}")));
                        if let Ok(Reserve::Reserved) = reserve(&*s, &cfg(), &Claim::of(&c), 1) {
                            won += 1;
                        }
                    }
                    won
                })
            })
            .collect();
        let total: i32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 1);
    }

    /// The current layout is a contract with every later build (and the
    /// previous release, whose module wrote the same bytes): bucket key and
    /// entry bytes of a known claim are pinned. A build that changes them
    /// must move the live reservations of the old layout, or an upgrade
    /// makes them invisible (as the move from `v1` to `v2` did, before any
    /// release).
    #[test]
    fn the_layout_is_pinned() {
        let c = Claim::of(&cb(Event::Start, "cam1", Some("seq-1")));
        let layout = Layout::for_config(&cfg());
        assert_eq!(layout.bucket_key(c.stream_hash()), PINNED_BUCKET);
        let mut e = Entry::new(&c, 1_700_000_100);
        e.attempts = 3;
        let mut bytes = Vec::new();
        e.write(&mut bytes);
        assert_eq!(hex::encode(&bytes), PINNED_ENTRY);
    }

    const PINNED_BUCKET: &str = "callback_guard.registry.v2.612";
    const PINNED_ENTRY: &str =
        "64c2a3f8f6e50850fc2cb22d00d49cc773ab62f7270c28f88ee107d559d755bfa9ce155a6e2370cef2ebad3da5c7846964f153650000000007";

    #[test]
    fn create_buckets_keeps_existing_ones() {
        let s = MemoryStore::new();
        let layout = Layout::for_config(&cfg());
        assert!(create_buckets(&s, &layout).is_empty());
        assert_eq!(
            s.get(&layout.bucket_keys().next().unwrap()).unwrap().0,
            Some(vec![])
        );
        let c = Claim::of(&cb(Event::Start, "kept", Some("a")));
        assert_eq!(reserve(&s, &cfg(), &c, 1).unwrap(), Reserve::Reserved);
        // A second configuration (another worker, a reload) must not wipe it.
        assert!(create_buckets(&s, &layout).is_empty());
        let other = Claim::of(&cb(Event::Start, "kept", Some("b")));
        assert_eq!(reserve(&s, &cfg(), &other, 1).unwrap(), Reserve::Busy);
    }

    #[test]
    fn only_an_accepting_upstream_answer_keeps_a_reservation() {
        for f in [Format::KlsV2, Format::KlsV1, Format::NginxRtmp] {
            for s in [200, 201, 204, 299] {
                assert!(publish_accepted(f, Some(s)), "{f:?} {s}");
            }
            for s in [0, 100, 199, 400, 403, 409, 500, 503, 504] {
                assert!(!publish_accepted(f, Some(s)), "{f:?} {s}");
            }
            assert!(!publish_accepted(f, None), "reset or timeout: no answer");
        }
        // nginx-rtmp goes on with a push redirected by a 3xx; KLS does not.
        for s in [300, 302, 307, 399] {
            assert!(publish_accepted(Format::NginxRtmp, Some(s)), "{s}");
            assert!(!publish_accepted(Format::KlsV2, Some(s)), "{s}");
            assert!(!publish_accepted(Format::KlsV1, Some(s)), "{s}");
        }
    }
}
