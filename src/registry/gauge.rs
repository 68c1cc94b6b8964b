//! The live-reservations gauge (`callback_guard.reservations_live`): how many
//! streams the registry holds now. On one Envoy's store: the live entries of
//! every bucket, counted by a rolling sweep of [`SWEEP`] buckets per read, so
//! a read costs the same whatever the registry holds and the whole store is
//! counted every `buckets / SWEEP` reads. On etcd: the fleet's keys, one
//! `count_only` range per read, never two in flight.
//!
//! A state machine without I/O, like [`super::etcd::EtcdOp`]: the host asks
//! [`LiveGauge::next_read`] at most once per tick, carries out the [`Read`], and
//! hands back what it read; [`LiveGauge::value`] is the gauge.

use super::etcd::{self, Call};
use super::shared::{live_in_bucket, Layout};

/// Buckets counted per read (1024 buckets: every one every 8 reads).
pub const SWEEP: usize = 128;

/// What the host reads for the gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Nothing now.
    Nothing,
    /// These buckets of the one-Envoy store: hand each to [`LiveGauge::bucket`].
    Buckets(std::ops::Range<usize>),
    /// This call to etcd: hand its answer to [`LiveGauge::etcd`].
    Etcd(Call),
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct LiveGauge {
    /// Live entries per bucket, as last counted.
    counts: Vec<u64>,
    next_bucket: usize,
    /// Every bucket has been counted once.
    swept: bool,
    /// The etcd key prefix, when the registry lives there.
    etcd_prefix: Option<String>,
    etcd_waiting: bool,
    etcd_count: Option<u64>,
}

impl LiveGauge {
    /// A gauge for the one-Envoy store of `layout`, or for etcd under `etcd_prefix`.
    pub fn new(layout: Layout, etcd_prefix: Option<&str>) -> LiveGauge {
        LiveGauge {
            counts: vec![
                0;
                if etcd_prefix.is_some() {
                    0
                } else {
                    layout.buckets
                }
            ],
            next_bucket: 0,
            swept: false,
            etcd_prefix: etcd_prefix.map(String::from),
            etcd_waiting: false,
            etcd_count: None,
        }
    }

    /// What to read now.
    pub fn next_read(&mut self) -> Read {
        if let Some(prefix) = &self.etcd_prefix {
            if self.etcd_waiting {
                return Read::Nothing;
            }
            self.etcd_waiting = true;
            return Read::Etcd(etcd::count(prefix));
        }
        let n = self.counts.len();
        if n == 0 {
            return Read::Nothing;
        }
        let start = self.next_bucket;
        let end = (start + SWEEP).min(n);
        self.next_bucket = if end == n { 0 } else { end };
        Read::Buckets(start..end)
    }

    /// The stored bytes of bucket `index` (`None`: absent or unreadable), at `now_s`.
    pub fn bucket(&mut self, index: usize, bytes: Option<&[u8]>, now_s: u64) {
        if let Some(c) = self.counts.get_mut(index) {
            *c = bytes.map_or(0, |b| live_in_bucket(b, now_s));
        }
        if index + 1 == self.counts.len() {
            self.swept = true;
        }
    }

    /// The answer to the [`Read::Etcd`] call (`None`: none came). A failed
    /// read keeps the last count.
    pub fn etcd(&mut self, answer: Option<(u16, &[u8])>) {
        self.etcd_waiting = false;
        if let Some(n) = etcd::count_answer(answer) {
            self.etcd_count = Some(n);
        }
    }

    /// The gauge, once known: after the first whole sweep, or etcd's first count.
    pub fn value(&self) -> Option<u64> {
        if self.etcd_prefix.is_some() {
            return self.etcd_count;
        }
        self.swept.then(|| self.counts.iter().sum())
    }

    /// The key of bucket `index` (for a host reading [`Read::Buckets`]).
    pub fn bucket_key(layout: &Layout, index: usize) -> String {
        layout.bucket_key_at(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::{Callback, Event, Format, Params};
    use crate::config::DuplicateStreams;
    use crate::registry::{create_buckets, shared, Claim, MemoryStore, SharedStore};

    fn claim(stream: &str, session: &str) -> Claim {
        Claim::of(&Callback {
            format: Format::KlsV2,
            event: Event::Start,
            app: "live".into(),
            stream: stream.into(),
            domain: Some("push.example.com".into()),
            event_time_ms: Some(1_700_000_000_000),
            session: Some(session.into()),
            params: Params::default(),
            client_ip: None,
            client_port: None,
            node: None,
            close_mode: None,
        })
    }

    fn layout() -> Layout {
        Layout::for_config(&DuplicateStreams {
            reject: true,
            ttl_s: 100,
            max_streams: 1000,
            etcd: None,
        })
    }

    fn sweep(g: &mut LiveGauge, store: &MemoryStore, l: &Layout, now: u64) {
        loop {
            let Read::Buckets(r) = g.next_read() else {
                panic!("a one-Envoy gauge reads buckets");
            };
            let last = r.end == l.buckets;
            for i in r {
                let (bytes, _) = store.get(&l.bucket_key_at(i)).unwrap();
                g.bucket(i, bytes.as_deref(), now);
            }
            if last {
                return;
            }
        }
    }

    #[test]
    fn the_sweep_counts_live_entries_and_forgets_expired_ones() {
        let l = layout();
        let store = MemoryStore::new();
        assert!(create_buckets(&store, &l).is_empty());
        let ds = DuplicateStreams {
            reject: true,
            ttl_s: 100,
            max_streams: 1000,
            etcd: None,
        };
        let mut g = LiveGauge::new(l, None);
        assert_eq!(g.value(), None, "unknown before a whole sweep");
        for i in 0..5 {
            let c = claim(&format!("cam{i}"), "s1");
            shared::reserve(&store, &ds, &c, 1000).unwrap();
        }
        sweep(&mut g, &store, &l, 1000);
        assert_eq!(g.value(), Some(5));
        shared::release(&store, &ds, &claim("cam0", "s1"), 1001).unwrap();
        sweep(&mut g, &store, &l, 1001);
        assert_eq!(g.value(), Some(4), "an end frees its stream");
        sweep(&mut g, &store, &l, 1000 + 101);
        assert_eq!(g.value(), Some(0), "past ttl_s nothing is live");
    }

    #[test]
    fn a_read_costs_at_most_sweep_buckets() {
        let l = layout();
        let mut g = LiveGauge::new(l, None);
        let mut reads = 0;
        loop {
            let Read::Buckets(r) = g.next_read() else {
                panic!("buckets")
            };
            assert!(r.len() <= SWEEP);
            reads += 1;
            if r.end == l.buckets {
                break;
            }
        }
        assert_eq!(reads, l.buckets.div_ceil(SWEEP));
    }

    #[test]
    fn on_etcd_one_count_at_a_time_and_failures_keep_the_last_count() {
        let mut g = LiveGauge::new(layout(), Some("/cg/"));
        let Read::Etcd(call) = g.next_read() else {
            panic!("an etcd gauge counts on etcd")
        };
        assert_eq!(call.path, "/v3/kv/range");
        assert!(call.body.contains(r#""count_only":true"#));
        // "/cg/" and its range end "/cg0" in base64.
        assert!(call.body.contains(r#""key":"L2NnLw==""#), "{}", call.body);
        assert!(
            call.body.contains(r#""range_end":"L2NnMA==""#),
            "{}",
            call.body
        );
        assert_eq!(g.next_read(), Read::Nothing, "one in flight");
        g.etcd(Some((200, br#"{"header":{"revision":"7"},"count":"3"}"#)));
        assert_eq!(g.value(), Some(3));
        assert!(matches!(g.next_read(), Read::Etcd(_)));
        g.etcd(Some((503, b"no")));
        assert_eq!(g.value(), Some(3), "kept");
        assert!(matches!(g.next_read(), Read::Etcd(_)));
        g.etcd(Some((200, br#"{"header":{"revision":"8"}}"#)));
        assert_eq!(g.value(), Some(0), "etcd omits a zero count");
        assert!(matches!(g.next_read(), Read::Etcd(_)));
        g.etcd(Some((200, b"garbage")));
        g.etcd(None);
        assert_eq!(g.value(), Some(0));
    }
}
