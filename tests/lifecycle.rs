//! The request lifecycle (`callback_guard::lifecycle`) driven through every
//! path by a test host: the same events a proxy-wasm or dynamic-module host
//! feeds, with the one-Envoy store in memory and etcd answers captured from a
//! real etcd 3.4.23 (tests/fixtures/etcd/).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;

use callback_guard::auth::token;
use callback_guard::config::Scheme;
use callback_guard::lifecycle::{
    Effect, Event, Facts, Flow, Level, Metric, Need, Plugin, Stream, Write, CHECKED_MARK,
};
use callback_guard::registry::{self, Layout, MemoryStore, SharedStore, StoreError};
use callback_guard::reply::Code;

const NOW: u64 = 1_700_000_000;
const KEY: &str = "123456";

fn plugin(extra: &str) -> Plugin {
    let json = format!(
        r#"{{"apps":["live"],"push_auth":{{"scheme":"ks_md5","keys":[{{"id":"k1","secret":"{KEY}"}}]}}{extra}}}"#
    );
    let (p, _) = Plugin::configure(json.as_bytes(), &|_: &str| None, Level::Info).unwrap();
    p
}

fn etcd_plugin(extra: &str) -> Plugin {
    plugin(&format!(
        r#","duplicate_streams":{{"store":{{"etcd":{{"cluster":"etcd","key_prefix":"cg/","timeout_ms":1000}}}}}}{extra}"#
    ))
}

fn params(stream: &str, expires: u64) -> String {
    let q = token::sign(Scheme::KsMd5, KEY.as_bytes(), "live", stream, expires);
    let (t, k) = q.split_once("&k=").unwrap();
    format!(r#"{{"t":"{}","k":"{k}"}}"#, &t[2..])
}

/// A signed start of `stream` by the session that started at `at_s`.
fn start(stream: &str, at_s: u64) -> Vec<u8> {
    format!(
        r#"{{"Version":"1.0","App":"live","Pubdomain":"push.example.com","Stream":"{stream}","PubStartUnixTime":"{at_s}000","NotifyType":"PubStart","ClientIp":" ","ClientPort":" ","Node":" ","PubParam":{}}}"#,
        params(stream, NOW + 3600)
    )
    .into_bytes()
}

fn end(stream: &str, at_s: u64) -> Vec<u8> {
    format!(
        r#"{{"Version":"1.0","App":"live","Pubdomain":"push.example.com","Stream":"{stream}","PubEndUnixTime":{at_s}000,"NotifyType":"PubEnd","ClientIp":" ","ClientPort":" ","Node":" ","PubEndMessage":" ","PubParam":{}}}"#,
        params(stream, NOW + 3600)
    )
    .into_bytes()
}

/// A shared-data store whose writes can be made to fail.
#[derive(Default)]
struct Store {
    inner: MemoryStore,
    fail_sets: Cell<bool>,
}

impl SharedStore for Store {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        if self.fail_sets.get() {
            return Err(StoreError::Host("status 2".into()));
        }
        self.inner.set(key, value, cas)
    }
}

/// What a host saw of one request, and the facts it reports.
struct Host {
    store: Store,
    now_ms: Option<u64>,
    body: Vec<u8>,
    body_readable: bool,
    total_size: Option<usize>,
    response_code: Option<i64>,
    fail_writes: bool,
    etcd_send_fails: bool,
    // What happened:
    needs: Vec<Need>,
    writes: Vec<Write>,
    replies: Vec<(u16, String)>,
    resumed: usize,
    etcd: Vec<(String, String, u32)>,
    counts: Vec<Metric>,
    latencies: Vec<u64>,
    logs: Vec<(Level, String)>,
}

impl Host {
    fn new() -> Host {
        Host {
            store: Store::default(),
            now_ms: Some(NOW * 1000),
            body: Vec::new(),
            body_readable: true,
            total_size: None,
            response_code: None,
            fail_writes: false,
            etcd_send_fails: false,
            needs: Vec::new(),
            writes: Vec::new(),
            replies: Vec::new(),
            resumed: 0,
            etcd: Vec::new(),
            counts: Vec::new(),
            latencies: Vec::new(),
            logs: Vec::new(),
        }
    }

    /// A host whose shared data holds the buckets, as after configure.
    fn for_plugin(p: &Plugin) -> Host {
        let h = Host::new();
        if let Some(layout) = p.local_registry() {
            assert!(registry::create_buckets(&h.store, &layout).is_empty());
        }
        h
    }

    fn clear(&mut self) {
        self.needs.clear();
        self.writes.clear();
        self.replies.clear();
        self.resumed = 0;
        self.etcd.clear();
        self.counts.clear();
        self.latencies.clear();
        self.logs.clear();
    }

    /// Hands `event` to the stream and carries out its effects, as a host does.
    fn run(&mut self, p: &Plugin, st: &mut Stream, event: Event<'_>) -> Flow {
        st.handle(p, event);
        while let Some(effect) = st.poll() {
            match effect {
                Effect::Need(need) => {
                    self.needs.push(need);
                    let facts = Facts {
                        body: if self.body_readable {
                            Ok(self.body[..need.body.min(self.body.len())].to_vec())
                        } else {
                            Err("status 1".into())
                        },
                        source: need.source.then(|| "127.0.0.1".parse().unwrap()),
                        now_ms: if need.now { self.now_ms } else { None },
                        total_size: if need.total_size {
                            self.total_size
                        } else {
                            None
                        },
                        response_code: if need.response_code {
                            self.response_code
                        } else {
                            None
                        },
                    };
                    st.handle(p, Event::Facts(facts));
                }
                Effect::Write(w) => {
                    self.writes.extend(w);
                    let r = if self.fail_writes {
                        Err("status 2".to_string())
                    } else {
                        Ok(())
                    };
                    st.handle(p, Event::Written(r));
                }
                Effect::Reply { status, body } => self.replies.push((status, body)),
                Effect::Resume => self.resumed += 1,
                Effect::Local { op, claim, now_s } => {
                    let ds = &p.config.duplicate_streams;
                    let a = registry::shared::run(&self.store, ds, op, &claim, now_s);
                    st.handle(p, Event::Registry(a));
                }
                Effect::Etcd { call, timeout_ms } => {
                    self.etcd
                        .push((call.path.to_string(), call.body.clone(), timeout_ms));
                    if self.etcd_send_fails {
                        let now_ms = self.now_ms.unwrap_or(0);
                        st.handle(p, Event::EtcdSendFailed { now_ms });
                    }
                }
                Effect::Count(m) => self.counts.push(m),
                Effect::Latency(ms) => self.latencies.push(ms),
                Effect::Log(l, line) => self.logs.push((l, line)),
            }
        }
        st.flow()
    }

    /// The headers hook with these pairs (their bytes counted as Envoy does).
    fn headers(
        &mut self,
        p: &Plugin,
        st: &mut Stream,
        pairs: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Flow {
        let headers: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let bytes = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.run(
            p,
            st,
            Event::Headers {
                headers,
                bytes,
                end_of_stream,
            },
        )
    }

    /// The body hook with `size` bytes buffered so far.
    fn body_in(&mut self, p: &Plugin, st: &mut Stream, size: usize, end_of_stream: bool) -> Flow {
        self.run(
            p,
            st,
            Event::Body {
                size,
                end_of_stream,
            },
        )
    }

    /// A POST with this body, in one body chunk; the flow of the last hook.
    fn post(&mut self, p: &Plugin, st: &mut Stream, body: &[u8], extra: &[(&str, &str)]) -> Flow {
        self.body = body.to_vec();
        let mut headers = vec![
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), "/callback".to_string()),
            ("content-type".to_string(), "application/json".to_string()),
            ("x-request-id".to_string(), "rid-1".to_string()),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let bytes = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let f = self.run(
            p,
            st,
            Event::Headers {
                headers,
                bytes,
                end_of_stream: false,
            },
        );
        assert_eq!(f, Flow::Pause, "headers are held until the body is in");
        self.run(
            p,
            st,
            Event::Body {
                size: body.len(),
                end_of_stream: true,
            },
        )
    }

    /// One whole request: posted, answered `status` by the upstream if
    /// forwarded, and ended.
    fn exchange(&mut self, p: &Plugin, body: &[u8], upstream: i64) -> (Flow, Option<u16>) {
        let mut st = Stream::new();
        let flow = self.post(p, &mut st, body, &[]);
        let local = self.replies.last().map(|r| r.0);
        self.response_code = Some(local.map_or(upstream, i64::from));
        self.run(p, &mut st, Event::End);
        (flow, local)
    }

    fn reply_code(&self) -> (u16, String) {
        let (status, body) = self.replies.last().expect("a local reply");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        (*status, v["Error"]["Code"].as_str().unwrap().to_string())
    }

    fn counted(&self, m: Metric) -> usize {
        self.counts.iter().filter(|c| **c == m).count()
    }
}

fn added(writes: &[Write], name: &str) -> Option<String> {
    writes.iter().find_map(|w| match w {
        Write::Add(n, v) if *n == name => Some(v.clone()),
        _ => None,
    })
}

#[test]
fn a_signed_start_is_forwarded_with_its_verified_headers() {
    let p = plugin("");
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    let flow = h.post(&p, &mut st, &start("cam1", NOW), &[]);
    assert_eq!(flow, Flow::Continue);
    assert!(h.replies.is_empty());
    assert_eq!(
        added(&h.writes, "x-callback-guard-format").unwrap(),
        "kls_v2"
    );
    assert_eq!(added(&h.writes, "x-callback-guard-event").unwrap(), "start");
    assert_eq!(added(&h.writes, "x-callback-guard-key-id").unwrap(), "k1");
    assert!(added(&h.writes, "x-callback-guard-verified")
        .unwrap()
        .contains("stream_registry"));
    assert!(
        !h.writes.contains(&Write::Mark),
        "no mark unless configured"
    );
    assert_eq!(h.counted(Metric::Received), 1);
    assert_eq!(h.counted(Metric::Forwarded), 1);
    // The body, the clock and (without allow_cidrs) no peer address were asked for.
    let need = h.needs[0];
    assert_eq!(need.body, h.body.len());
    assert!(need.now && !need.source);
}

#[test]
fn without_push_auth_no_empty_key_id_header_is_written() {
    let (p, _) = Plugin::configure(br#"{}"#, &|_: &str| None, Level::Info).unwrap();
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    assert_eq!(
        h.post(&p, &mut st, &start("cam1", NOW), &[]),
        Flow::Continue
    );
    assert_eq!(added(&h.writes, "x-callback-guard-key-id"), None);
}

#[test]
fn spoofed_guard_headers_are_removed_on_arrival() {
    let p = plugin("");
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    h.post(
        &p,
        &mut st,
        &start("cam1", NOW),
        &[("x-callback-guard-verified", "push_token")],
    );
    assert_eq!(
        h.writes[0],
        Write::Remove("x-callback-guard-verified".into())
    );
}

#[test]
fn a_forged_token_is_answered_at_the_edge_with_the_request_id() {
    let p = plugin("");
    let mut h = Host::for_plugin(&p);
    let mut body = String::from_utf8(start("cam1", NOW)).unwrap();
    body = body.replace(r#""k":""#, r#""k":"0"#);
    let mut st = Stream::new();
    assert_eq!(h.post(&p, &mut st, body.as_bytes(), &[]), Flow::Pause);
    assert_eq!(h.reply_code(), (403, "AuthencationFailed".to_string()));
    assert!(h.replies[0].1.contains("rid-1"));
    assert_eq!(h.counted(Metric::Rejected(Code::AuthencationFailed)), 1);
    assert_eq!(h.counted(Metric::Forwarded), 0);
    let (level, line) = h.logs.last().unwrap();
    assert_eq!(*level, Level::Info);
    assert!(line.starts_with("callback-guard rejected: code=AuthencationFailed"));
    assert!(h.writes.is_empty(), "a refusal writes no header");
}

#[test]
fn observe_mode_forwards_a_refusal_marked_and_counted() {
    let p = plugin(r#","mode":"observe","filter_state_mark":true"#);
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    let body = String::from_utf8(start("cam1", NOW))
        .unwrap()
        .replace(r#""k":""#, r#""k":"0"#);
    assert_eq!(h.post(&p, &mut st, body.as_bytes(), &[]), Flow::Continue);
    assert!(h.replies.is_empty());
    assert_eq!(
        added(&h.writes, "x-callback-guard-would-reject").unwrap(),
        "AuthencationFailed"
    );
    assert!(h.writes.contains(&Write::Mark));
    assert_eq!(h.counted(Metric::Rejected(Code::AuthencationFailed)), 1);
    assert!(h.logs.iter().any(|(_, l)| l.contains("mode=observe")));
}

#[test]
fn the_filter_state_mark_is_set_on_every_forward() {
    let p = plugin(r#","filter_state_mark":true"#);
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    h.post(&p, &mut st, &start("cam1", NOW), &[]);
    assert!(h.writes.contains(&Write::Mark));
    assert_eq!(CHECKED_MARK, "x-callback-guard-checked");
}

#[test]
fn a_declared_length_over_the_limit_is_refused_at_the_headers() {
    let p = plugin(r#","max_body_bytes":100"#);
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    let f = h.headers(
        &p,
        &mut st,
        &[(":method", "POST"), ("content-length", "101")],
        false,
    );
    assert_eq!(f, Flow::Pause);
    assert_eq!(h.reply_code(), (413, "PayloadTooLarge".to_string()));
    assert!(h.needs.is_empty(), "nothing read for a refused size");
    // Body bytes after the decision go on untouched.
    h.clear();
    let f = h.body_in(&p, &mut st, 50, false);
    assert_eq!(f, Flow::Continue);
    assert!(h.replies.is_empty() && h.counts.is_empty());
}

#[test]
fn a_body_growing_past_the_limit_is_refused_before_its_end() {
    let p = plugin(r#","max_body_bytes":100"#);
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    h.headers(&p, &mut st, &[(":method", "POST")], false);
    let f = h.body_in(&p, &mut st, 60, false);
    assert_eq!(f, Flow::Pause, "buffered while under the limit");
    let f = h.body_in(&p, &mut st, 120, false);
    assert_eq!(f, Flow::Pause);
    assert_eq!(h.reply_code(), (413, "PayloadTooLarge".to_string()));
}

#[test]
fn trailers_end_the_body() {
    let p = plugin("");
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    h.body = start("cam1", NOW);
    h.headers(
        &p,
        &mut st,
        &[(":method", "POST"), ("content-type", "application/json")],
        false,
    );
    h.body_in(&p, &mut st, h.body.len(), false);
    assert_eq!(h.run(&p, &mut st, Event::Trailers), Flow::Continue);
    assert_eq!(h.counted(Metric::Forwarded), 1);
}

#[test]
fn a_request_without_a_body_is_decided_at_its_headers() {
    let p = plugin("");
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    let f = h.headers(&p, &mut st, &[(":method", "GET")], true);
    assert_eq!(f, Flow::Pause);
    assert_eq!(h.reply_code(), (405, "MethodNotAllowed".to_string()));
    assert_eq!(h.needs[0].body, 0, "no body to read");
}

#[test]
fn an_unreadable_body_or_clock_is_refused() {
    let p = plugin("");
    let mut h = Host::for_plugin(&p);
    h.body_readable = false;
    h.post(&p, &mut Stream::new(), &start("cam1", NOW), &[]);
    assert_eq!(h.reply_code(), (400, "InvalidParameterValue".to_string()));
    assert!(h
        .logs
        .iter()
        .any(|(l, s)| *l == Level::Error && s.contains("cannot read the body (status 1)")));
    let mut h = Host::for_plugin(&p);
    h.now_ms = None;
    h.post(&p, &mut Stream::new(), &start("cam1", NOW), &[]);
    assert_eq!(h.reply_code(), (403, "AuthencationFailed".to_string()));
    assert!(h.replies[0].1.contains("clock unavailable"));
}

#[test]
fn a_second_session_is_refused_while_the_first_holds_the_stream() {
    let p = plugin("");
    let mut h = Host::for_plugin(&p);
    assert_eq!(
        h.exchange(&p, &start("cam1", NOW), 200),
        (Flow::Continue, None)
    );
    h.clear();
    let (_, local) = h.exchange(&p, &start("cam1", NOW + 5), 200);
    assert_eq!(local, Some(409));
    assert_eq!(h.reply_code(), (409, "ExistStreamName".to_string()));
    // The holder's end frees it.
    h.clear();
    assert_eq!(h.exchange(&p, &end("cam1", NOW + 60), 200).1, None);
    h.clear();
    assert_eq!(h.exchange(&p, &start("cam1", NOW + 70), 200).1, None);
}

#[test]
fn a_start_the_upstream_refuses_gives_its_reservation_back() {
    let p = plugin("");
    let mut h = Host::for_plugin(&p);
    assert_eq!(h.exchange(&p, &start("cam1", NOW), 500).1, None);
    assert_eq!(h.counted(Metric::Released), 1);
    let end_need = h.needs.last().unwrap();
    assert!(end_need.response_code && end_need.now);
    // Another session may now push the stream.
    h.clear();
    assert_eq!(h.exchange(&p, &start("cam1", NOW + 5), 200).1, None);
    assert_eq!(h.counted(Metric::Released), 0, "accepted: kept");
    h.clear();
    assert_eq!(h.exchange(&p, &start("cam1", NOW + 9), 200).1, Some(409));
}

#[test]
fn a_start_never_answered_gives_its_reservation_back() {
    let p = plugin("");
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    h.post(&p, &mut st, &start("cam1", NOW), &[]);
    h.response_code = None; // reset before any answer
    h.run(&p, &mut st, Event::End);
    assert_eq!(h.counted(Metric::Released), 1);
}

#[test]
fn a_failed_give_back_on_shared_data_is_counted_as_a_store_error() {
    let p = plugin("");
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    h.post(&p, &mut st, &start("cam1", NOW), &[]);
    h.store.fail_sets.set(true);
    h.response_code = Some(503);
    h.run(&p, &mut st, Event::End);
    assert_eq!(h.counted(Metric::Released), 0);
    let kinds: Vec<_> = h
        .counts
        .iter()
        .filter(|m| matches!(m, Metric::StoreError(_)))
        .collect();
    assert_eq!(
        kinds,
        vec![&Metric::StoreError("shared_data")],
        "{:?}",
        h.counts
    );
    assert!(h
        .logs
        .iter()
        .any(|(l, s)| *l == Level::Warn && s.contains("release")));
}

#[test]
fn a_header_write_that_fails_refuses_and_frees_the_stream() {
    let p = plugin("");
    let mut h = Host::for_plugin(&p);
    h.fail_writes = true;
    let (flow, local) = h.exchange(&p, &start("cam1", NOW), 200);
    assert_eq!((flow, local), (Flow::Pause, Some(500)));
    assert_eq!(h.reply_code(), (500, "InternalError".to_string()));
    assert_eq!(h.counted(Metric::Forwarded), 0);
    assert_eq!(h.counted(Metric::Released), 1);
    assert!(h
        .logs
        .iter()
        .any(|(l, s)| *l == Level::Error
            && s.contains("cannot write the forwarded headers (status 2)")));
    h.fail_writes = false;
    h.clear();
    assert_eq!(h.exchange(&p, &start("cam1", NOW + 5), 200).1, None);
}

#[test]
fn the_missing_flag_is_found_by_a_tick_and_refuses_later_bodies() {
    let p = plugin("");
    let mut h = Host::for_plugin(&p);
    assert!(p.wants_stream_ticks());
    let mut st = Stream::new();
    let f = h.headers(&p, &mut st, &[(":method", "POST")], false);
    assert_eq!(f, Flow::Pause);
    assert!(st.awaiting_body());
    // No body byte received yet: left alone.
    h.total_size = Some(10);
    h.run(&p, &mut st, Event::Tick);
    assert!(h.replies.is_empty() && st.awaiting_body());
    // Body bytes received, none delivered: the flag is missing.
    h.total_size = Some(200);
    h.run(&p, &mut st, Event::Tick);
    assert_eq!(h.reply_code(), (500, "InternalError".to_string()));
    let critical: Vec<_> = h
        .logs
        .iter()
        .filter(|(l, _)| *l == Level::Critical)
        .collect();
    assert_eq!(critical.len(), 1);
    assert!(critical[0].1.contains("allow_on_headers_stop_iteration"));
    // Later requests with a body are refused at their headers, without a
    // second critical line.
    h.clear();
    let mut next = Stream::new();
    let f = h.headers(&p, &mut next, &[(":method", "POST")], false);
    assert_eq!(f, Flow::Pause);
    assert_eq!(h.reply_code(), (500, "InternalError".to_string()));
    assert!(!h.logs.iter().any(|(l, _)| *l == Level::Critical));
}

#[test]
fn once_a_body_reached_the_filter_ticks_leave_held_requests_alone() {
    let p = plugin("");
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    h.body = start("cam1", NOW);
    h.headers(&p, &mut st, &[(":method", "POST")], false);
    assert!(p.wants_stream_ticks());
    h.body_in(&p, &mut st, 5, false);
    assert!(!p.wants_stream_ticks(), "the flag is proven");
}

#[test]
fn metrics_have_the_wasm_names_and_dense_indexes() {
    let all: Vec<Metric> = Metric::all().collect();
    assert_eq!(all.len(), Metric::COUNT);
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.index(), i, "{m:?}");
    }
    let names: Vec<String> = all.iter().map(|m| m.name()).collect();
    assert!(names.contains(&"callback_guard.requests_received".to_string()));
    assert!(names.contains(&"callback_guard.requests_rejected.ExistStreamName".to_string()));
    assert!(names.contains(&"callback_guard.store_errors.timeout".to_string()));
    assert!(names.contains(&"callback_guard.plays_forwarded".to_string()));
    assert!(names.contains(&"callback_guard.plays_rejected.AuthencationFailed".to_string()));
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len());
}

/// A play (SRS `on_play`, `on_stop`) is counted apart from pushes, never
/// asks the registry, and its refusals are counted by code as plays.
#[test]
fn plays_are_counted_apart_and_never_ask_the_registry() {
    let play_key = "play789";
    let p = plugin(&format!(
        r#","formats":["srs"],"play_auth":{{"scheme":"ks_md5","keys":[{{"id":"v1","secret":"{play_key}"}}]}}"#
    ));
    let hook = |action: &str, q: &str| {
        let page = if action == "on_play" {
            r#""pageUrl":"","#
        } else {
            ""
        };
        format!(r#"{{"server_id":"vid-1","service_id":"s1","action":"{action}","client_id":"c3","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","stream":"cam1","tcUrl":"rtmp://127.0.0.1:1935/live","param":"?{q}",{page}"stream_url":"/live/cam1","stream_id":"vid-2"}}"#)
            .into_bytes()
    };
    let ok = token::sign(Scheme::KsMd5, play_key.as_bytes(), "live", "cam1", NOW + 60);
    let forged = format!("t={}&k=0123456789abcdef", NOW + 60);
    for (call, q, forwarded) in [
        ("on_play", ok.as_str(), true),
        ("on_stop", ok.as_str(), true),
        ("on_play", forged.as_str(), false),
    ] {
        let mut h = Host::for_plugin(&p);
        let mut st = Stream::new();
        let flow = h.post(&p, &mut st, &hook(call, q), &[]);
        h.response_code = Some(200);
        h.run(&p, &mut st, Event::End);
        assert_eq!(h.counted(Metric::Received), 1);
        assert_eq!(h.counted(Metric::Forwarded), 0, "{call}: not a push");
        assert_eq!(h.counted(Metric::Rejected(Code::AuthencationFailed)), 0);
        if forwarded {
            assert_eq!(flow, Flow::Continue, "{call}");
            assert_eq!(h.counted(Metric::PlayForwarded), 1, "{call}");
            let event = if call == "on_play" {
                "play"
            } else {
                "play_end"
            };
            assert_eq!(added(&h.writes, "x-callback-guard-event").unwrap(), event);
            assert_eq!(added(&h.writes, "x-callback-guard-key-id").unwrap(), "v1");
        } else {
            assert_eq!(h.reply_code(), (403, "AuthencationFailed".to_string()));
            assert_eq!(h.counted(Metric::PlayRejected(Code::AuthencationFailed)), 1);
            let line = &h.logs.iter().find(|(l, _)| *l == Level::Info).unwrap().1;
            assert!(
                line.contains(r#"stream="cam1" event=play reason="#),
                "{line}"
            );
        }
        // The registry is on (shared data), but a play asks nothing of it,
        // and its end gives nothing back.
        assert!(h.needs.iter().all(|n| !n.response_code), "{call}");
        assert!(!h.counts.contains(&Metric::Released));
        assert!(st.ended());
    }
}

/// On the etcd store too, a play never calls the registry: answered by its
/// token alone, at once, with nothing sent to etcd.
#[test]
fn plays_never_call_etcd() {
    let play_key = "play789";
    let p = etcd_plugin(&format!(
        r#","formats":["srs"],"play_auth":{{"scheme":"ks_md5","keys":[{{"id":"v1","secret":"{play_key}"}}]}}"#
    ));
    let q = token::sign(Scheme::KsMd5, play_key.as_bytes(), "live", "cam1", NOW + 60);
    for action in ["on_play", "on_stop"] {
        let page = if action == "on_play" {
            r#""pageUrl":"","#
        } else {
            ""
        };
        let body = format!(
            r#"{{"server_id":"vid-1","service_id":"s1","action":"{action}","client_id":"c3","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","stream":"cam1","tcUrl":"rtmp://127.0.0.1:1935/live","param":"?{q}",{page}"stream_url":"/live/cam1","stream_id":"vid-2"}}"#
        );
        let mut h = Host::for_plugin(&p);
        let mut st = Stream::new();
        assert_eq!(
            h.post(&p, &mut st, body.as_bytes(), &[]),
            Flow::Continue,
            "{action}"
        );
        h.response_code = Some(200);
        h.run(&p, &mut st, Event::End);
        assert!(h.etcd.is_empty(), "{action}: {:?}", h.etcd);
        assert_eq!(h.counted(Metric::PlayForwarded), 1, "{action}");
        assert!(!st.busy());
    }
}

#[test]
fn configure_gives_one_line_for_a_bad_configuration_and_warns_in_observe_mode() {
    let err = Plugin::configure(br#"{"apps": 3}"#, &|_: &str| None, Level::Info).unwrap_err();
    assert!(
        err.starts_with("callback-guard: invalid configuration: "),
        "{err}"
    );
    assert!(err.contains("apps"), "{err}");
    assert!(!err.contains('\n'));
    let (_, lines) =
        Plugin::configure(br#"{"mode":"observe"}"#, &|_: &str| None, Level::Info).unwrap();
    assert!(lines
        .iter()
        .any(|(l, s)| *l == Level::Warn && s.contains("mode is observe")));
}

#[test]
fn forwards_are_logged_only_when_envoy_logs_at_debug() {
    let json = br#"{"apps":["live"]}"#;
    let (quiet, _) = Plugin::configure(json, &|_: &str| None, Level::Info).unwrap();
    let (loud, _) = Plugin::configure(json, &|_: &str| None, Level::Debug).unwrap();
    for (p, expect) in [(quiet, 0), (loud, 1)] {
        let mut h = Host::for_plugin(&p);
        h.post(&p, &mut Stream::new(), &start("cam1", NOW), &[]);
        let n = h
            .logs
            .iter()
            .filter(|(l, s)| *l == Level::Debug && s.starts_with("callback-guard forwarded:"))
            .count();
        assert_eq!(n, expect);
    }
}

// ---- etcd ---------------------------------------------------------------------

/// The body of a captured etcd answer.
fn fixture(name: &str) -> (u16, Vec<u8>) {
    let path = format!(
        "{}/tests/fixtures/etcd/single/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let r = &v["response"];
    (
        r["status"].as_u64().unwrap() as u16,
        r["body"].as_str().unwrap().as_bytes().to_vec(),
    )
}

fn answer(h: &mut Host, p: &Plugin, st: &mut Stream, a: Option<&(u16, Vec<u8>)>, now_ms: u64) {
    let answer = a.map(|(s, b)| (*s, &b[..]));
    h.run(p, st, Event::Etcd { answer, now_ms });
}

#[test]
fn an_etcd_start_is_held_until_etcd_answers_then_resumed() {
    let p = etcd_plugin("");
    assert!(p.local_registry().is_none());
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    let f = h.post(&p, &mut st, &start("cam1", NOW), &[]);
    assert_eq!(f, Flow::Pause, "held while etcd answers");
    assert!(st.busy());
    let (path, body, timeout) = h.etcd[0].clone();
    assert_eq!(path, "/v3/kv/txn");
    assert!(body.contains("CREATE"), "a start tries create-if-absent");
    assert_eq!(timeout, 1000);
    h.clear();
    answer(
        &mut h,
        &p,
        &mut st,
        Some(&fixture("txn_create_absent_leased")),
        NOW * 1000 + 7,
    );
    assert_eq!(h.resumed, 1, "resumed outside the hook");
    assert_eq!(h.latencies, vec![7]);
    assert_eq!(h.counted(Metric::Forwarded), 1);
    assert!(!st.busy());
    // The upstream refuses it: the attempt is given back on etcd.
    h.clear();
    h.response_code = Some(500);
    h.run(&p, &mut st, Event::End);
    assert_eq!(h.etcd[0].0, "/v3/kv/range", "a give-back reads first");
    assert!(st.busy(), "the call keeps the ended stream");
    h.clear();
    answer(
        &mut h,
        &p,
        &mut st,
        Some(&fixture("range_absent")),
        NOW * 1000 + 20,
    );
    assert!(!st.busy());
    assert!(
        h.replies.is_empty() && h.resumed == 0,
        "an ended request is not touched"
    );
    assert_eq!(h.counted(Metric::Released), 0, "nothing was held any more");
}

#[test]
fn etcd_that_cannot_answer_refuses_starts_with_503_and_counts_it() {
    let p = etcd_plugin("");
    // No answer at all (refused, reset).
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    h.post(&p, &mut st, &start("cam1", NOW), &[]);
    h.clear();
    answer(&mut h, &p, &mut st, None, NOW * 1000 + 3);
    assert_eq!(h.reply_code(), (503, "ServiceUnavailable".to_string()));
    assert_eq!(h.counted(Metric::StoreError("unreachable")), 1);
    // Past the deadline.
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    h.post(&p, &mut st, &start("cam1", NOW), &[]);
    h.clear();
    answer(
        &mut h,
        &p,
        &mut st,
        Some(&fixture("txn_create_absent_leased")),
        NOW * 1000 + 1000,
    );
    assert_eq!(h.reply_code(), (503, "ServiceUnavailable".to_string()));
    assert_eq!(h.counted(Metric::StoreError("timeout")), 1);
    // A call that cannot even start: answered within the hook.
    let mut h = Host::for_plugin(&p);
    h.etcd_send_fails = true;
    let f = h.post(&p, &mut Stream::new(), &start("cam1", NOW), &[]);
    assert_eq!(f, Flow::Pause);
    assert_eq!(h.reply_code(), (503, "ServiceUnavailable".to_string()));
    assert_eq!(h.resumed, 0);
}

#[test]
fn an_end_is_forwarded_when_etcd_cannot_record_it() {
    let p = etcd_plugin("");
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    h.post(&p, &mut st, &end("cam1", NOW), &[]);
    h.clear();
    answer(
        &mut h,
        &p,
        &mut st,
        Some(&(500, b"oops".to_vec())),
        NOW * 1000 + 2,
    );
    assert_eq!(h.resumed, 1);
    assert!(h.replies.is_empty());
    assert_eq!(h.counted(Metric::Forwarded), 1);
    assert_eq!(h.counted(Metric::StoreError("failed")), 1, "{:?}", h.counts);
    assert!(h
        .logs
        .iter()
        .any(|(l, s)| *l == Level::Warn && s.contains("forwarded without the stream registry")));
}

#[test]
fn a_start_whose_request_ended_while_etcd_answered_is_given_back() {
    let p = etcd_plugin("");
    let mut h = Host::for_plugin(&p);
    let mut st = Stream::new();
    h.post(&p, &mut st, &start("cam1", NOW), &[]);
    // The sender went away while the call was in flight.
    h.run(&p, &mut st, Event::End);
    assert!(st.ended() && st.busy());
    h.clear();
    answer(
        &mut h,
        &p,
        &mut st,
        Some(&fixture("txn_create_absent_leased")),
        NOW * 1000 + 4,
    );
    assert!(h.replies.is_empty() && h.resumed == 0);
    assert_eq!(h.counted(Metric::Forwarded), 0, "never forwarded");
    assert_eq!(h.etcd.len(), 1, "its attempt is given back");
    assert_eq!(h.etcd[0].0, "/v3/kv/range");
    assert!(st.busy());
}

#[test]
fn the_etcd_probe_is_sent_once() {
    let p = etcd_plugin("");
    let call = p.probe().unwrap();
    assert_eq!(call.path, "/v3/kv/range");
    assert!(p.probe().is_none());
    assert!(plugin("").probe().is_none(), "no etcd, no probe");
    let (l, line) = p.probe_failed(true, "status 2");
    assert_eq!(l, Level::Critical);
    assert!(line.contains("no cluster `etcd`"));
    assert_eq!(Plugin::probe_answered(None).0, Level::Warn);
}

#[test]
fn the_local_registry_layout_is_the_configured_one() {
    let p = plugin("");
    let want = Layout::for_config(&p.config.duplicate_streams);
    assert_eq!(
        p.local_registry().unwrap().bucket_keys().count(),
        want.bucket_keys().count()
    );
    let off = plugin(r#","duplicate_streams":{"reject":false}"#);
    assert!(off.local_registry().is_none());
}
