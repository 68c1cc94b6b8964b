//! The lifecycle's SRS rules (issue 21), driven by a small test host as in
//! tests/lifecycle.rs: the upstream's answer body decides an SRS start
//! (and is read for SRS starts only), and `on_hls` is forwarded at once,
//! its renewal running on its own, also when etcd is slow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use callback_guard::lifecycle::{Effect, Event, Facts, Flow, Level, Metric, Plugin, Stream};
use callback_guard::registry::{self, MemoryStore};

const NOW: u64 = 1_700_000_000;

fn plugin(extra: &str) -> Plugin {
    let json = format!(r#"{{"formats":["srs","kls_v2"]{extra}}}"#);
    Plugin::configure(json.as_bytes(), &|_: &str| None, Level::Info)
        .unwrap()
        .0
}

fn etcd_plugin() -> Plugin {
    plugin(
        r#","duplicate_streams":{"store":{"etcd":{"cluster":"etcd","key_prefix":"cg/","timeout_ms":1000}}}"#,
    )
}

fn hook(action: &str, client: &str) -> Vec<u8> {
    let hls = if action == "on_hls" {
        r#","duration":2.02,"cwd":"/s","file":"/s/a.ts","url":"a.ts","m3u8":"/s/a.m3u8","m3u8_url":"a.m3u8","seq_no":1"#
    } else {
        ""
    };
    format!(
        r#"{{"server_id":"vid-a","service_id":"s","action":"{action}","client_id":"{client}","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","tcUrl":"rtmp://127.0.0.1/live","stream":"cam1","param":""{hls},"stream_url":"/live/cam1","stream_id":"vid-x"}}"#
    )
    .into_bytes()
}

const KLS: &str = r#"{"Version":"1.0","App":"live","Pubdomain":"push.example.com","Stream":"cam1","PubStartUnixTime":"1700000000000","NotifyType":"PubStart","ClientIp":" ","ClientPort":" ","Node":" ","PubParam":{}}"#;

#[derive(Default)]
struct Host {
    store: MemoryStore,
    body: Vec<u8>,
    response_code: Option<i64>,
    etcd_calls: usize,
    replies: usize,
    resumed: usize,
    counts: Vec<Metric>,
    logs: Vec<String>,
}

impl Host {
    fn run(&mut self, p: &Plugin, st: &mut Stream, event: Event<'_>) -> Flow {
        st.handle(p, event);
        while let Some(effect) = st.poll() {
            match effect {
                Effect::Need(need) => {
                    let facts = Facts {
                        body: Ok(self.body[..need.body.min(self.body.len())].to_vec()),
                        now_ms: Some(NOW * 1000),
                        response_code: if need.response_code {
                            self.response_code
                        } else {
                            None
                        },
                        ..Facts::default()
                    };
                    st.handle(p, Event::Facts(facts));
                }
                Effect::Write(_) => st.handle(p, Event::Written(Ok(()))),
                Effect::Reply { .. } => self.replies += 1,
                Effect::Resume => self.resumed += 1,
                Effect::Local { op, claim, now_s } => {
                    let ds = &p.config.duplicate_streams;
                    let a = registry::shared::run(&self.store, ds, op, &claim, now_s);
                    st.handle(p, Event::Registry(a));
                }
                Effect::Etcd { .. } => self.etcd_calls += 1,
                Effect::Count(m) => self.counts.push(m),
                Effect::Latency(_) => {}
                Effect::Log(_, line) => self.logs.push(line),
            }
        }
        st.flow()
    }

    fn post(&mut self, p: &Plugin, st: &mut Stream, body: &[u8]) -> Flow {
        self.body = body.to_vec();
        let headers = vec![
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), "/hook".to_string()),
            ("content-type".to_string(), "application/json".to_string()),
        ];
        self.run(
            p,
            st,
            Event::Headers {
                headers,
                bytes: 40,
                end_of_stream: false,
            },
        );
        self.run(
            p,
            st,
            Event::Body {
                size: body.len(),
                end_of_stream: true,
            },
        )
    }

    fn released(&self) -> usize {
        self.counts
            .iter()
            .filter(|m| **m == Metric::Released)
            .count()
    }

    /// An SRS start answered `status` with the body in `chunks` (`None`: unreadable).
    fn start_answered(&mut self, p: &Plugin, client: &str, status: i64, chunks: &[Option<&[u8]>]) {
        let mut st = Stream::new();
        assert_eq!(
            self.post(p, &mut st, &hook("on_publish", client)),
            Flow::Continue
        );
        assert!(st.wants_response_body(), "an SRS start reads its answer");
        for (i, c) in chunks.iter().enumerate() {
            let f = self.run(
                p,
                &mut st,
                Event::ResponseBody {
                    chunk: *c,
                    end_of_stream: i + 1 == chunks.len(),
                },
            );
            assert_eq!(f, Flow::Continue, "the answer is never held");
        }
        self.response_code = Some(status);
        self.run(p, &mut st, Event::End);
        assert!(!st.wants_response_body());
    }
}

#[test]
fn only_srs_starts_read_the_answer_body() {
    let p = plugin("");
    let mut h = Host::default();
    let mut st = Stream::new();
    h.post(&p, &mut st, KLS.as_bytes());
    assert!(!st.wants_response_body(), "a KLS start goes by its status");
    let mut st = Stream::new();
    h.post(&p, &mut st, &hook("on_unpublish", "c9"));
    assert!(!st.wants_response_body(), "an end reserves nothing");
    let mut st = Stream::new();
    h.post(&p, &mut st, &hook("on_connect", "c9"));
    assert!(!st.wants_response_body(), "a refusal");
    let p = plugin(r#","duplicate_streams":{"reject":false}"#);
    let mut st = Stream::new();
    h.post(&p, &mut st, &hook("on_publish", "c9"));
    assert!(!st.wants_response_body(), "no registry: nothing to free");
}

#[test]
fn the_answer_body_decides_whether_an_srs_start_keeps_its_stream() {
    let p = plugin("");
    let mut h = Host::default();
    // `0`: kept; a second session is then refused.
    h.start_answered(&p, "c1", 200, &[Some(b"0")]);
    assert_eq!(h.released(), 0);
    let mut st = Stream::new();
    h.post(&p, &mut st, &hook("on_publish", "c2"));
    assert_eq!(h.replies, 1, "409 while c1 holds the stream");
    // `{"code":0}` in two chunks: kept (a renewal of c1's own stream).
    h.start_answered(&p, "c1", 201, &[Some(b"{\"code\":"), Some(b"0}")]);
    assert_eq!(h.released(), 0);
    // Each refused form frees the stream (a fresh store each: a session's
    // accepted starts are attempts a refused one does not give back).
    for (status, chunks) in [
        (200, vec![Some(&b"{\"code\":1}"[..])]),
        (200, vec![Some(&b"0"[..]), Some(&b"\n"[..])]),
        (204, vec![]),
        (500, vec![Some(&b"0"[..])]),
        (200, vec![None]),
    ] {
        let mut h = Host::default();
        h.start_answered(&p, "c1", status, &chunks);
        assert_eq!(h.released(), 1, "{status} {chunks:?}");
    }
    // An answer over the bound counts as a refusal.
    let mut h = Host::default();
    let big = vec![b' '; registry::MAX_ANSWER_BYTES];
    h.start_answered(&p, "c1", 200, &[Some(b"{\"code\":0}"), Some(&big)]);
    assert_eq!(h.released(), 1);
}

#[test]
fn on_hls_is_forwarded_at_once_while_its_renewal_runs_on_etcd() {
    let p = etcd_plugin();
    let mut h = Host::default();
    let mut st = Stream::new();
    let f = h.post(&p, &mut st, &hook("on_hls", "c1"));
    assert_eq!(f, Flow::Continue, "not held for etcd");
    assert_eq!(h.etcd_calls, 1, "the renewal was sent");
    assert!(st.busy(), "and is in flight");
    assert!(h.counts.contains(&Metric::Forwarded));
    // A start, by contrast, waits for etcd.
    let mut start = Stream::new();
    assert_eq!(
        h.post(&p, &mut start, &hook("on_publish", "c1")),
        Flow::Pause
    );
    // The request ends before etcd answers; the answer (none: etcd is down)
    // is counted and logged, and touches no request.
    h.run(&p, &mut st, Event::End);
    let before = (h.replies, h.resumed);
    h.run(
        &p,
        &mut st,
        Event::Etcd {
            answer: None,
            now_ms: NOW * 1000 + 1500,
        },
    );
    assert!(!st.busy());
    assert_eq!((h.replies, h.resumed), before);
    assert!(h.counts.iter().any(|m| matches!(m, Metric::StoreError(_))));
    // An answer while the request is still live changes nothing either.
    let mut st = Stream::new();
    h.post(&p, &mut st, &hook("on_hls", "c1"));
    let before = (h.replies, h.resumed);
    h.run(
        &p,
        &mut st,
        Event::Etcd {
            answer: None,
            now_ms: NOW * 1000 + 10,
        },
    );
    assert_eq!(
        (h.replies, h.resumed),
        before,
        "no second forward, no reply"
    );
    assert!(h.logs.iter().any(|l| l.contains("renewal")), "{:?}", h.logs);
}

#[test]
fn on_hls_from_another_session_is_forwarded_and_changes_nothing() {
    let p = plugin(r#","duplicate_streams":{"ttl_s":60}"#);
    let mut h = Host::default();
    h.start_answered(&p, "c1", 200, &[Some(b"0")]);
    let mut st = Stream::new();
    assert_eq!(h.post(&p, &mut st, &hook("on_hls", "c2")), Flow::Continue);
    assert_eq!(h.replies, 0, "answered by the upstream, not refused");
    let mut st = Stream::new();
    h.post(&p, &mut st, &hook("on_publish", "c2"));
    assert_eq!(h.replies, 1, "c1 still holds the stream");
}
