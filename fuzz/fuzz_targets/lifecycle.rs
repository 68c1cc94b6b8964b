//! The request lifecycle (`callback_guard::lifecycle`) under arbitrary event
//! sequences and host answers: headers, body chunks of any size, trailers,
//! ticks, etcd answers of any status and bytes (or none), write and body-read
//! failures, and the end of the request at any point; on the one-Envoy store
//! and on etcd, in enforce and observe mode.
//!
//! Beyond "never panics", every run checks what a host relies on:
//! - at most one local reply, and never one after the request went on;
//! - a refused request is never forwarded (no `Forwarded` count, no resume);
//! - nothing is written, answered or resumed after the end;
//! - a reply's body is the spec's JSON with a code;
//! - a request is counted once, forwarded or refused, and a play apart from
//!   a push: once the forwarded headers said `x-callback-guard-event: play…`
//!   only the play counters move, and never without `play_auth`.
//!
//! The play plugins get no `content-type` (the body picks JSON or form, as
//! KLS's old-version sender has it), so SRS hooks and nginx-rtmp forms both
//! reach them.
#![no_main]

use arbitrary::Arbitrary;
use callback_guard::lifecycle::{Effect, Event, Facts, Flow, Level, Metric, Plugin, Stream, Write};
use callback_guard::registry::{self, MemoryStore};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Step {
    Headers {
        end: bool,
        length: Option<u16>,
        get: bool,
    },
    Body {
        grow: u16,
        end: bool,
    },
    Trailers,
    Tick {
        received: u16,
    },
    Etcd {
        status: Option<u16>,
        body: Vec<u8>,
        late: bool,
    },
    End {
        status: Option<u16>,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    plugin: u8,
    body: Vec<u8>,
    fail_writes: bool,
    unreadable: bool,
    send_fails: bool,
    steps: Vec<Step>,
}

/// Push and play keys of the play plugins (the body targets' own, so that
/// their signed seeds serve here too).
const PLAY_AUTH: &str = r#""push_auth":{"scheme":"ks_md5","keys":[{"id":"main","secret":"fuzzKs0123456789"}]},
    "play_auth":{"scheme":"ks_md5","clock_skew_s":30,"keys":[{"id":"viewer","secret":"fuzzPlay01234567"}]}"#;

/// The plugins, each with whether its requests carry `content-type: application/json`.
fn plugins() -> &'static [(Plugin, bool)] {
    static P: std::sync::OnceLock<Vec<(Plugin, bool)>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        [
            (r#"{}"#.to_string(), true),
            (r#"{"mode":"observe","filter_state_mark":true,"formats":["kls_v2","kls_v1","nginx_rtmp"]}"#.to_string(), true),
            (r#"{"max_body_bytes":64}"#.to_string(), true),
            (r#"{"duplicate_streams":{"store":{"etcd":{"cluster":"etcd","key_prefix":"cg/","timeout_ms":500}}}}"#.to_string(), true),
            (r#"{"mode":"observe","duplicate_streams":{"store":{"etcd":{"cluster":"etcd","key_prefix":"cg/","timeout_ms":500}}}}"#.to_string(), true),
            // plays: SRS and nginx-rtmp, push and play keys, the local registry
            (format!(r#"{{"formats":["srs","nginx_rtmp","kls_v2"],{PLAY_AUTH}}}"#), false),
            // plays in observe mode, the registry on etcd (plays never ask it)
            (
                format!(
                    r#"{{"mode":"observe","filter_state_mark":true,"formats":["srs","nginx_rtmp"],{PLAY_AUTH},
                    "duplicate_streams":{{"store":{{"etcd":{{"cluster":"etcd","key_prefix":"cg/","timeout_ms":500}}}}}}}}"#
                ),
                false,
            ),
        ]
        .iter()
        .map(|(j, labelled)| {
            let p = Plugin::configure(j.as_bytes(), &|_: &str| None, Level::Debug)
                .expect("fixed fuzz configuration is valid")
                .0;
            (p, *labelled)
        })
        .collect()
    })
}

/// What the host saw.
#[derive(Default)]
struct Seen {
    replies: usize,
    forwarded: usize,
    play_forwarded: usize,
    rejected: usize,
    /// Codes of the `Rejected` counts.
    rejected_codes: Vec<callback_guard::reply::Code>,
    play_rejected: usize,
    resumed: usize,
    after_end: usize,
    ended: bool,
    /// `x-callback-guard-event` of the forwarded headers, once written.
    event: Option<String>,
}

struct Host<'a> {
    p: &'a Plugin,
    store: MemoryStore,
    input: &'a Input,
    now_ms: u64,
    response: Option<i64>,
    total: usize,
    seen: Seen,
}

impl Host<'_> {
    fn run(&mut self, st: &mut Stream, e: Event<'_>) -> Flow {
        st.handle(self.p, e);
        while let Some(effect) = st.poll() {
            if self.seen.ended
                && matches!(
                    effect,
                    Effect::Reply { .. } | Effect::Resume | Effect::Write(_)
                )
            {
                self.seen.after_end += 1;
            }
            match effect {
                Effect::Need(n) => {
                    let body = if self.input.unreadable {
                        Err("status 1".to_string())
                    } else {
                        Ok(self.input.body[..n.body.min(self.input.body.len())].to_vec())
                    };
                    let facts = Facts {
                        body,
                        source: n.source.then(|| "127.0.0.1".parse().expect("ip")),
                        now_ms: n.now.then_some(self.now_ms),
                        total_size: n.total_size.then_some(self.total),
                        response_code: if n.response_code { self.response } else { None },
                    };
                    st.handle(self.p, Event::Facts(facts));
                }
                Effect::Write(writes) => {
                    for w in &writes {
                        if let Write::Add("x-callback-guard-event", v) = w {
                            self.seen.event = Some(v.clone());
                        }
                    }
                    let r = if self.input.fail_writes {
                        Err("status 2".to_string())
                    } else {
                        Ok(())
                    };
                    st.handle(self.p, Event::Written(r));
                }
                Effect::Reply { status, body } => {
                    self.seen.replies += 1;
                    assert!((400..600).contains(&status), "reply status {status}");
                    let v: serde_json::Value = serde_json::from_str(&body).expect("reply is JSON");
                    assert!(v["Error"]["Code"].is_string(), "reply has a code: {body}");
                }
                Effect::Resume => self.seen.resumed += 1,
                Effect::Local { op, claim, now_s } => {
                    let ds = &self.p.config.duplicate_streams;
                    let a = registry::shared::run(&self.store, ds, op, &claim, now_s);
                    st.handle(self.p, Event::Registry(a));
                }
                Effect::Etcd { .. } => {
                    if self.input.send_fails {
                        st.handle(
                            self.p,
                            Event::EtcdSendFailed {
                                now_ms: self.now_ms,
                            },
                        );
                    }
                }
                Effect::Count(Metric::Forwarded) => self.seen.forwarded += 1,
                Effect::Count(Metric::PlayForwarded) => self.seen.play_forwarded += 1,
                Effect::Count(Metric::Rejected(code)) => {
                    self.seen.rejected += 1;
                    self.seen.rejected_codes.push(code);
                }
                Effect::Count(Metric::PlayRejected(_)) => self.seen.play_rejected += 1,
                Effect::Count(_) | Effect::Latency(_) | Effect::Log(..) => {}
            }
        }
        st.flow()
    }
}

fuzz_target!(|input: Input| {
    let list = plugins();
    let (p, labelled) = &list[usize::from(input.plugin) % list.len()];
    let mut h = Host {
        p,
        store: MemoryStore::new(),
        input: &input,
        now_ms: 1_700_000_000_000,
        response: None,
        total: 0,
        seen: Seen::default(),
    };
    if let Some(layout) = p.local_registry() {
        registry::create_buckets(&h.store, &layout);
    }
    let mut st = Stream::new();
    let mut size = 0usize;
    let mut headers_seen = false;
    for step in input.steps.iter().take(64) {
        // A host feeds hooks in Envoy's order: headers first, nothing after the end.
        if h.seen.ended {
            break;
        }
        match step {
            Step::Headers { end, length, get } => {
                if headers_seen {
                    continue;
                }
                headers_seen = true;
                let mut headers = vec![
                    (
                        ":method".to_string(),
                        if *get { "GET" } else { "POST" }.to_string(),
                    ),
                    (":path".to_string(), "/callback".to_string()),
                ];
                if *labelled {
                    headers.push(("content-type".to_string(), "application/json".to_string()));
                }
                if let Some(n) = length {
                    headers.push(("content-length".to_string(), n.to_string()));
                }
                h.total = 40;
                h.run(
                    &mut st,
                    Event::Headers {
                        headers,
                        bytes: 40,
                        end_of_stream: *end,
                    },
                );
            }
            Step::Body { grow, end } => {
                if !headers_seen {
                    continue;
                }
                size = size.saturating_add(usize::from(*grow));
                h.total = 40 + size;
                h.run(
                    &mut st,
                    Event::Body {
                        size,
                        end_of_stream: *end,
                    },
                );
            }
            Step::Trailers => {
                if headers_seen {
                    h.run(&mut st, Event::Trailers);
                }
            }
            Step::Tick { received } => {
                h.total = h.total.max(40 + usize::from(*received));
                h.run(&mut st, Event::Tick);
            }
            Step::Etcd { status, body, late } => {
                if *late {
                    h.now_ms += 1000;
                }
                let answer = status.map(|s| (s, &body[..]));
                h.run(
                    &mut st,
                    Event::Etcd {
                        answer,
                        now_ms: h.now_ms,
                    },
                );
            }
            Step::End { status } => {
                h.response = status.map(i64::from);
                h.run(&mut st, Event::End);
                h.seen.ended = true;
            }
        }
        let s = &h.seen;
        assert!(s.replies <= 1, "two local replies");
        if s.replies == 1 && p.config.mode == callback_guard::config::Mode::Enforce {
            assert_eq!(
                s.forwarded + s.play_forwarded,
                0,
                "a refused request was counted forwarded"
            );
            assert_eq!(s.resumed, 0, "a refused request was resumed");
        }
        assert_eq!(s.after_end, 0, "written, answered or resumed after the end");
        assert!(
            s.forwarded + s.play_forwarded + s.rejected + s.play_rejected <= 1,
            "one request counted {} forwarded, {} plays forwarded, {} refused, {} plays refused",
            s.forwarded,
            s.play_forwarded,
            s.rejected,
            s.play_rejected
        );
        if p.config.play_auth.is_none() {
            assert_eq!(s.play_forwarded, 0, "a play forwarded without play_auth");
        }
        // Plays are counted apart: the headers said what the request is.
        match s.event.as_deref() {
            Some("play" | "play_end" | "play_update") => assert_eq!(
                s.forwarded + s.rejected,
                0,
                "a play counted as a push (forwarded {}, refused {})",
                s.forwarded,
                s.rejected
            ),
            Some(_) => assert_eq!(
                s.play_forwarded + s.play_rejected,
                0,
                "a push counted as a play"
            ),
            None => assert_eq!(s.forwarded + s.play_forwarded, 0, "forwarded unwritten"),
        }
    }
});
