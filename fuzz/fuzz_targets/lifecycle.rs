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
//! - a reply's body is the spec's JSON with a code.
#![no_main]

use arbitrary::Arbitrary;
use callback_guard::lifecycle::{Effect, Event, Facts, Flow, Level, Metric, Plugin, Stream};
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

fn plugins() -> &'static [Plugin] {
    static P: std::sync::OnceLock<Vec<Plugin>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        [
            r#"{}"#,
            r#"{"mode":"observe","filter_state_mark":true,"formats":["kls_v2","kls_v1","nginx_rtmp"]}"#,
            r#"{"max_body_bytes":64}"#,
            r#"{"duplicate_streams":{"store":{"etcd":{"cluster":"etcd","key_prefix":"cg/","timeout_ms":500}}}}"#,
            r#"{"mode":"observe","duplicate_streams":{"store":{"etcd":{"cluster":"etcd","key_prefix":"cg/","timeout_ms":500}}}}"#,
        ]
        .iter()
        .map(|j| {
            Plugin::configure(j.as_bytes(), &|_: &str| None, Level::Debug)
                .expect("fixed fuzz configuration is valid")
                .0
        })
        .collect()
    })
}

/// What the host saw.
#[derive(Default)]
struct Seen {
    replies: usize,
    forwarded: usize,
    resumed: usize,
    after_end: usize,
    ended: bool,
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
                Effect::Write(_) => {
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
                Effect::Count(_) | Effect::Latency(_) | Effect::Log(..) => {}
            }
        }
        st.flow()
    }
}

fuzz_target!(|input: Input| {
    let list = plugins();
    let p = &list[usize::from(input.plugin) % list.len()];
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
                    ("content-type".to_string(), "application/json".to_string()),
                ];
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
            assert_eq!(s.forwarded, 0, "a refused request was counted forwarded");
            assert_eq!(s.resumed, 0, "a refused request was resumed");
        }
        assert_eq!(s.after_end, 0, "written, answered or resumed after the end");
    }
});
