//! One request's life in the filter, written once for every host, as a state
//! machine without I/O.
//!
//! A host adapter (the proxy-wasm glue today, an Envoy dynamic module next)
//! turns its callbacks into [`Event`]s for a [`Stream`], then drains the
//! stream's [`Effect`]s with [`Stream::poll`] until there are none, turning
//! each into a host call. Some effects ask for an answer, which the host
//! hands back at once as another event while it drains:
//! - [`Effect::Need`] → [`Event::Facts`] (the body, the peer, the clock, …:
//!   read only when a rule needs them, since each read costs a hostcall);
//! - [`Effect::Write`] → [`Event::Written`];
//! - [`Effect::Local`] → [`Event::Registry`] (the one-Envoy store answers at once);
//! - [`Effect::Etcd`] → [`Event::EtcdSendFailed`] if the call cannot even
//!   start; otherwise the answer comes later as [`Event::Etcd`].
//!
//! After a hook event ([`Event::Headers`], [`Event::Body`], [`Event::Trailers`])
//! and its answers, [`Stream::flow`] is what the hook returns. Events that
//! come outside a hook (an etcd answer, a tick) resume a held request with
//! [`Effect::Resume`] instead.
//!
//! A stream that ends while a registry call is in flight, or whose start must
//! be given back after the end, lives on in the host until [`Stream::busy`]
//! is false: it then only counts, logs and talks to etcd.
//!
//! The rules of the life (the order matters):
//! - headers: spoofed `x-callback-guard-*` headers removed, a declared
//!   `content-length` over the limit refused, then held until the body is in;
//! - body: buffered until the end of the stream or trailers, refused with 413
//!   as soon as it grows past the limit; then [`verdict::check`] runs, and the
//!   registry is asked where the callback needs it;
//! - forward: the verified headers (and the filter-state mark) are written; a
//!   write that fails turns the forward into a refusal, and gives back the
//!   start's reservation;
//! - end: a start that reserved its stream keeps it only if the upstream
//!   accepted the publish ([`registry::publish_accepted`]);
//! - the missing-flag rule (proxy-wasm without
//!   `allow_on_headers_stop_iteration`): a tick that finds body bytes
//!   received but none delivered answers the request and every later one
//!   with a body; see [`Plugin::wants_stream_ticks`].

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::callback::{printable, Format};
use crate::config::{Config, Env, EtcdStore, Mode};
use crate::registry::etcd::{self, Call, EtcdOp, Step};
use crate::registry::gauge::{LiveGauge, Read};
use crate::registry::{self, Answer, Claim, Layout, Op, RegistryError, Release, Reserve};
use crate::reply::{self, Code};
use crate::verdict::{self, Action, Decision, Forward, Pending, Rejection, Request, Verdict};

/// Log levels, as both hosts number them (Proxy-Wasm ABI order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Trace.
    Trace = 0,
    /// Debug: forwards are logged here.
    Debug = 1,
    /// Info: refusals.
    Info = 2,
    /// Warn.
    Warn = 3,
    /// Error.
    Error = 4,
    /// Critical: the filter cannot do its job.
    Critical = 5,
}

/// A counter the lifecycle moves. Every host defines the same names
/// ([`Metric::name`]), so dashboards work on either build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Every request the filter sees, plays included.
    Received,
    /// Requests sent on to the upstream, plays apart.
    Forwarded,
    /// Refusals (in observe mode: would-be refusals), by code, plays apart.
    Rejected(Code),
    /// Play callbacks (nginx-rtmp `play…`, SRS `on_play`/`on_stop`) sent on.
    PlayForwarded,
    /// Play callbacks refused (in observe mode: would-be refusals), by code.
    PlayRejected(Code),
    /// Reservations freed because the upstream refused a start or never answered.
    Released,
    /// Registry failures, by kind ([`RegistryError::KINDS`]).
    StoreError(&'static str),
}

impl Metric {
    /// How many counters there are: [`Metric::index`] is below it.
    pub const COUNT: usize = 4 + 2 * Code::ALL.len() + RegistryError::KINDS.len();

    /// Every counter, in [`Metric::index`] order.
    pub fn all() -> impl Iterator<Item = Metric> {
        [Metric::Received, Metric::Forwarded, Metric::Released]
            .into_iter()
            .chain(Code::ALL.into_iter().map(Metric::Rejected))
            .chain(RegistryError::KINDS.into_iter().map(Metric::StoreError))
            .chain([Metric::PlayForwarded])
            .chain(Code::ALL.into_iter().map(Metric::PlayRejected))
    }

    /// A dense index, for hosts that keep counters in an array.
    pub fn index(self) -> usize {
        let code = |c: Code| Code::ALL.iter().position(|x| *x == c).unwrap_or(0);
        let plays = 3 + Code::ALL.len() + RegistryError::KINDS.len();
        match self {
            Metric::Received => 0,
            Metric::Forwarded => 1,
            Metric::Released => 2,
            Metric::Rejected(c) => 3 + code(c),
            Metric::StoreError(k) => {
                3 + Code::ALL.len()
                    + RegistryError::KINDS
                        .iter()
                        .position(|x| *x == k)
                        .unwrap_or(0)
            }
            Metric::PlayForwarded => plays,
            Metric::PlayRejected(c) => plays + 1 + code(c),
        }
    }

    /// The stat name (Envoy prefixes it; the shipped `stats_tags` turn the
    /// last part into a `code` or `kind` label). Plays have names of their
    /// own: viewers can outnumber pushes by far, and a dashboard of pushes
    /// must not drown in them.
    pub fn name(self) -> String {
        match self {
            Metric::Received => "callback_guard.requests_received".into(),
            Metric::Forwarded => "callback_guard.requests_forwarded".into(),
            Metric::Released => "callback_guard.reservations_released".into(),
            Metric::Rejected(c) => format!("callback_guard.requests_rejected.{}", c.as_str()),
            Metric::StoreError(k) => format!("callback_guard.store_errors.{k}"),
            Metric::PlayForwarded => "callback_guard.plays_forwarded".into(),
            Metric::PlayRejected(c) => format!("callback_guard.plays_rejected.{}", c.as_str()),
        }
    }
}

/// The gauge of live reservations (this Envoy's on shared data, the fleet's
/// on etcd), see [`crate::registry::gauge`].
pub const LIVE_GAUGE: &str = "callback_guard.reservations_live";

/// The least time between two reads for the gauge.
pub const GAUGE_PERIOD_MS: u64 = 250;

/// The histogram of milliseconds per registry op on a remote store.
pub const STORE_LATENCY: &str = "callback_guard.store_latency_ms";

/// The filter state name of `filter_state_mark` (proxy-wasm stores it as
/// `wasm.x-callback-guard-checked`).
pub const CHECKED_MARK: &str = "x-callback-guard-checked";

/// Increments kept by a host between two flushes (the wasm host hands them
/// to Envoy once per tick: each hostcall costs about a microsecond).
#[derive(Debug, Clone)]
pub struct Counts {
    pending: [u64; Metric::COUNT],
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            pending: [0; Metric::COUNT],
        }
    }
}

impl Counts {
    /// One more of `m`.
    pub fn bump(&mut self, m: Metric) {
        if let Some(n) = self.pending.get_mut(m.index()) {
            *n = n.saturating_add(1);
        }
    }

    /// The pending increments by index, leaving none.
    pub fn take(&mut self) -> impl Iterator<Item = (usize, u64)> {
        std::mem::replace(&mut self.pending, [0; Metric::COUNT])
            .into_iter()
            .enumerate()
            .filter(|(_, n)| *n > 0)
    }
}

/// What every request of one filter configuration shares. Its flags are
/// atomics, so a host whose workers share one configuration (the dynamic
/// module) can hand it to every thread.
#[derive(Debug)]
pub struct Plugin {
    /// The configuration.
    pub config: Config,
    /// Envoy logs at debug: forwards are logged (the line is not even
    /// formatted otherwise).
    log_forwards: bool,
    /// A request's body was seen held back from this filter: no body can
    /// be checked (the missing-flag rule).
    body_withheld: AtomicBool,
    /// A body reached this filter after it held the headers: the flag is
    /// there, and ticks need not look at held requests any more.
    body_delivered: AtomicBool,
    /// The start-up check of the etcd cluster was sent.
    probed: AtomicBool,
    /// The live-reservations gauge and when it last read (`None`: registry off).
    gauge: Option<std::sync::Mutex<(LiveGauge, u64)>>,
}

impl Plugin {
    /// Reads the configuration JSON. On success, the plugin and the lines
    /// to log once; on failure, the one line that says why (a host then
    /// refuses the filter).
    pub fn configure(
        bytes: &[u8],
        env: &dyn Env,
        log_level: Level,
    ) -> Result<(Plugin, Vec<(Level, String)>), String> {
        let config = Config::from_json(bytes, env).map_err(|errs| {
            let list: Vec<String> = errs.iter().map(ToString::to_string).collect();
            format!("callback-guard: invalid configuration: {}", list.join("; "))
        })?;
        let mut lines = Vec::new();
        if config.mode == Mode::Observe {
            lines.push((
                Level::Warn,
                "callback-guard: mode is observe: callbacks that fail a check are forwarded, marked x-callback-guard-would-reject".to_string(),
            ));
        }
        for w in config.warnings() {
            lines.push((Level::Warn, format!("callback-guard: {w}")));
        }
        Ok((Plugin::new(config, log_level), lines))
    }

    /// [`Plugin::configure`] for a host: every line goes to `log` (the
    /// failure's one line as critical), and `None` means the host must refuse
    /// the filter.
    pub fn load(
        bytes: &[u8],
        env: &dyn Env,
        log_level: Level,
        log: &mut dyn FnMut(Level, &str),
    ) -> Option<Plugin> {
        match Plugin::configure(bytes, env, log_level) {
            Ok((plugin, lines)) => {
                for (level, line) in lines {
                    log(level, &line);
                }
                Some(plugin)
            }
            Err(line) => {
                log(Level::Critical, &line);
                None
            }
        }
    }

    /// A plugin for an already read configuration.
    pub fn new(config: Config, log_level: Level) -> Plugin {
        let ds = &config.duplicate_streams;
        let gauge = ds.reject.then(|| {
            let prefix = ds.etcd.as_ref().map(|e| e.key_prefix.as_str());
            std::sync::Mutex::new((LiveGauge::new(Layout::for_config(ds), prefix), 0))
        });
        Plugin {
            gauge,
            config,
            log_forwards: log_level <= Level::Debug,
            body_withheld: AtomicBool::new(false),
            body_delivered: AtomicBool::new(false),
            probed: AtomicBool::new(false),
        }
    }

    /// The etcd store, when the registry is on and lives there.
    pub fn etcd(&self) -> Option<&EtcdStore> {
        let ds = &self.config.duplicate_streams;
        ds.etcd.as_ref().filter(|_| ds.reject)
    }

    /// The layout of the one-Envoy store, whose buckets the host creates
    /// before any request ([`registry::create_buckets`]); `None` when the
    /// registry is off or on etcd.
    pub fn local_registry(&self) -> Option<Layout> {
        let ds = &self.config.duplicate_streams;
        (ds.reject && ds.etcd.is_none()).then(|| Layout::for_config(ds))
    }

    /// What to read for the live-reservations gauge now: at most once per
    /// [`GAUGE_PERIOD_MS`], whoever asks (a host may ask on every tick or
    /// every request); [`Read::Nothing`] when the registry is off.
    pub fn gauge_read(&self, now_ms: u64) -> Read {
        let Some(Ok(mut g)) = self.gauge.as_ref().map(|g| g.try_lock()) else {
            return Read::Nothing;
        };
        if g.1 != 0 && now_ms.saturating_sub(g.1) < GAUGE_PERIOD_MS {
            return Read::Nothing;
        }
        g.1 = now_ms.max(1);
        g.0.next_read()
    }

    /// The key of bucket `index` of the one-Envoy store, for [`Read::Buckets`].
    pub fn bucket_key(&self, index: usize) -> String {
        Layout::for_config(&self.config.duplicate_streams).bucket_key_at(index)
    }

    /// A bucket read for the gauge: its stored bytes, at `now_s`.
    pub fn gauge_bucket(&self, index: usize, bytes: Option<&[u8]>, now_s: u64) {
        if let Some(Ok(mut g)) = self.gauge.as_ref().map(|g| g.lock()) {
            g.0.bucket(index, bytes, now_s);
        }
    }

    /// The answer to the gauge's etcd count (`None`: none came).
    pub fn gauge_etcd(&self, answer: Option<(u16, &[u8])>) {
        if let Some(Ok(mut g)) = self.gauge.as_ref().map(|g| g.lock()) {
            g.0.etcd(answer);
        }
    }

    /// The gauge's value, once known.
    pub fn gauge_value(&self) -> Option<u64> {
        self.gauge.as_ref()?.lock().ok()?.0.value()
    }

    /// Whether a tick must give [`Event::Tick`] to the requests that wait for
    /// their first body byte. Only until a body has reached the filter once:
    /// from then on the flag is known to be there, and a tick costs the same
    /// whatever the number of held requests.
    pub fn wants_stream_ticks(&self) -> bool {
        !self.body_delivered.load(Ordering::Relaxed)
    }

    /// On a worker's first tick, the start-up check of the etcd cluster:
    /// one read of the key prefix, whose answer goes to
    /// [`Plugin::probe_answered`]. `None` after the first call, or without etcd.
    pub fn probe(&self) -> Option<Call> {
        let etcd = self.etcd()?;
        (!self.probed.swap(true, Ordering::Relaxed)).then(|| etcd::range(&etcd.key_prefix))
    }

    /// The log line for the start-up check's answer (`None`: no answer).
    pub fn probe_answered(status: Option<u16>) -> (Level, String) {
        match status {
            Some(s) => (
                Level::Info,
                format!("callback-guard: etcd answered the start-up check (HTTP {s})"),
            ),
            None => (
                Level::Warn,
                "callback-guard: etcd did not answer the start-up check: starts will be refused (503) until it does".to_string(),
            ),
        }
    }

    /// The log line for a start-up check that could not be sent: the host
    /// has no such cluster, or the call could not start yet (before the
    /// cluster's first health check passed, say), which may pass by itself.
    pub fn probe_failed(&self, no_cluster: bool, detail: &str) -> (Level, String) {
        let cluster = self
            .etcd()
            .map(|e| printable(&e.cluster))
            .unwrap_or_default();
        if no_cluster {
            (
                Level::Critical,
                format!("callback-guard: duplicate_streams.store.etcd.cluster: Envoy has no cluster `{cluster}` to reach etcd: every start is refused with ServiceUnavailable"),
            )
        } else {
            (
                Level::Warn,
                format!("callback-guard: the start-up call to etcd through cluster `{cluster}` could not start ({detail}): starts get ServiceUnavailable until etcd answers"),
            )
        }
    }
}

/// What the host reports back from a read it was asked for ([`Effect::Need`]);
/// fields that were not asked for are ignored.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The buffered body (`Err`: why it could not be read).
    pub body: Result<Vec<u8>, String>,
    /// The downstream peer's address.
    pub source: Option<IpAddr>,
    /// The host clock, milliseconds since the epoch (`None`: unavailable).
    pub now_ms: Option<u64>,
    /// Bytes of the request received so far, headers included (proxy-wasm's
    /// `request.total_size`).
    pub total_size: Option<usize>,
    /// The upstream's (or a local reply's) status, when there was one.
    pub response_code: Option<i64>,
}

impl Default for Facts {
    fn default() -> Self {
        Facts {
            body: Ok(Vec::new()),
            source: None,
            now_ms: None,
            total_size: None,
            response_code: None,
        }
    }
}

/// What the host must read and report as [`Event::Facts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Need {
    /// Read this many buffered body bytes (0: none).
    pub body: usize,
    /// The downstream peer's address.
    pub source: bool,
    /// The clock.
    pub now: bool,
    /// Bytes received so far.
    pub total_size: bool,
    /// The response status.
    pub response_code: bool,
}

/// One change to the held request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Remove every header of this name.
    Remove(String),
    /// Add a header (the spoofed ones were removed on arrival: add, never replace).
    Add(&'static str, String),
    /// Set the filter-state mark [`CHECKED_MARK`] to `1`.
    Mark,
}

/// What the host does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Read these facts, and report them at once with [`Event::Facts`].
    Need(Need),
    /// Change the held request; report at once with [`Event::Written`]
    /// (the first failure, if any).
    Write(Vec<Write>),
    /// Answer the request with this status and JSON body
    /// (`content-type: application/json`).
    Reply {
        /// HTTP status.
        status: u16,
        /// The JSON body ([`reply::body`]).
        body: String,
    },
    /// Let a held request go on (outside a hook).
    Resume,
    /// Run a registry op on the one-Envoy store, and report its answer at
    /// once with [`Event::Registry`].
    Local {
        /// The op.
        op: Op,
        /// About which stream and session.
        claim: Claim,
        /// The time, seconds since the epoch.
        now_s: u64,
    },
    /// Send this call to the etcd cluster ([`Plugin::etcd`]), with this
    /// timeout; its answer comes later as [`Event::Etcd`]. A call that cannot
    /// start is reported at once with [`Event::EtcdSendFailed`].
    Etcd {
        /// The request.
        call: Call,
        /// Its timeout, milliseconds.
        timeout_ms: u32,
    },
    /// One more of this counter.
    Count(Metric),
    /// A registry op on etcd took this many milliseconds ([`STORE_LATENCY`]).
    Latency(u64),
    /// Write this log line.
    Log(Level, String),
}

/// What a hook returns to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Let the request go on.
    Continue,
    /// Hold it.
    Pause,
}

/// Something that happened to the request.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// Hook: the request headers, all of them, and the bytes of their names
    /// and values as Envoy counts them.
    Headers {
        /// Names (lowercase) and values.
        headers: Vec<(String, String)>,
        /// Bytes of names and values.
        bytes: usize,
        /// The request has no body.
        end_of_stream: bool,
    },
    /// Hook: body bytes arrived; `size` is the total buffered so far.
    Body {
        /// Bytes buffered.
        size: usize,
        /// The body is complete.
        end_of_stream: bool,
    },
    /// Hook: trailers (they end an HTTP/2 body without `end_of_stream`).
    Trailers,
    /// The answer to [`Effect::Need`].
    Facts(Facts),
    /// The answer to [`Effect::Write`]: `Err` with the first failure.
    Written(Result<(), String>),
    /// The answer to [`Effect::Local`].
    Registry(Result<Answer, RegistryError>),
    /// The answer to an [`Effect::Etcd`]: the status and body, or `None`
    /// (refused, reset, timed out); `now_ms` is when it came.
    Etcd {
        /// Status and body.
        answer: Option<(u16, &'a [u8])>,
        /// The clock.
        now_ms: u64,
    },
    /// An [`Effect::Etcd`] whose call could not start.
    EtcdSendFailed {
        /// The clock.
        now_ms: u64,
    },
    /// The host lost the etcd call in flight without an answer (its own
    /// callout died with the request): the same call is sent again.
    EtcdResend {
        /// The clock.
        now_ms: u64,
    },
    /// The root context's tick, while the request waits for its first body
    /// byte ([`Plugin::wants_stream_ticks`]).
    Tick,
    /// Hook: a chunk of the upstream's answer body, given only while
    /// [`Stream::wants_response_body`] (an SRS start: SRS's answer rule
    /// reads the body); `None` when the host could not read it.
    ResponseBody {
        /// The chunk.
        chunk: Option<&'a [u8]>,
        /// The answer is complete.
        end_of_stream: bool,
    },
    /// The request is over (answered, forwarded and answered, or reset).
    End,
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No headers yet.
    New,
    /// Headers held, no body byte yet.
    AwaitingBody,
    /// Body arriving.
    Body,
    /// Waiting for the registry.
    Registry,
    /// Forwarded or answered.
    Decided,
    /// Over: only a registry op may still run.
    Ended,
}

/// What asked for the facts that come next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Decide,
    Tick,
    End(Format),
    /// The clock, for a give-back while the request still runs.
    GiveBack(Claim),
}

/// What a write in flight is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Writing {
    /// Removing spoofed headers.
    Strip,
    /// The verified headers of a forward.
    Forward(Box<Forward>),
    /// Observe mode's mark on a would-be refusal.
    Observed,
}

/// An etcd op in flight.
#[derive(Debug, Clone)]
struct Remote {
    op: EtcdOp,
    started_ms: u64,
}

/// One request (see the module docs).
#[derive(Debug)]
pub struct Stream {
    phase: Phase,
    headers: Vec<(String, String)>,
    header_bytes: usize,
    /// A header change the host refused: such a request is never sent on
    /// (it could carry a spoofed `x-callback-guard-*` header).
    write_failed: Option<String>,
    body_size: usize,
    /// The current events come from a hook: its return is [`Stream::flow`].
    in_hook: bool,
    flow: Flow,
    asked: Option<Asked>,
    writing: VecDeque<Writing>,
    /// The local op asked for, answered by [`Event::Registry`].
    local: Option<Op>,
    remote: Option<Remote>,
    /// A callback that passed every check but the registry's.
    pending: Option<Pending>,
    /// A forwarded start's claim, with its dialect: given back if the
    /// publish does not go through.
    reservation: Option<(Claim, Format)>,
    /// The answer body kept for a start whose dialect's acceptance reads it
    /// ([`registry::answer_body_needed`]); `None` once cut off or unreadable.
    answer: Option<Vec<u8>>,
    /// The answer body is wanted (see [`Stream::wants_response_body`]).
    collecting: bool,
    /// The registry op runs on its own: the callback was forwarded without
    /// waiting for it ([`Pending::answers_at_once`]).
    detached: bool,
    effects: VecDeque<Effect>,
}

impl Default for Stream {
    fn default() -> Self {
        Stream::new()
    }
}

impl Stream {
    /// A request before its headers.
    pub fn new() -> Stream {
        Stream {
            phase: Phase::New,
            headers: Vec::new(),
            header_bytes: 0,
            write_failed: None,
            body_size: 0,
            in_hook: false,
            flow: Flow::Continue,
            asked: None,
            writing: VecDeque::new(),
            local: None,
            remote: None,
            pending: None,
            reservation: None,
            answer: None,
            collecting: false,
            detached: false,
            effects: VecDeque::new(),
        }
    }

    /// The next effect for the host, until there is none.
    pub fn poll(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// What the hook whose events were just handled returns.
    pub fn flow(&self) -> Flow {
        self.flow
    }

    /// The request headers (after [`Event::Headers`]).
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// Whether the request waits for its first body byte (the missing-flag
    /// rule's ticks are for these).
    pub fn awaiting_body(&self) -> bool {
        self.phase == Phase::AwaitingBody
    }

    /// Whether the request is over.
    pub fn ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Whether the host must hand over the upstream's answer body
    /// ([`Event::ResponseBody`]): only for a forwarded start whose dialect's
    /// acceptance reads it (SRS), so every other request's answer is never read.
    /// The wasm host feeds it from `proxy_on_response_body`, the native one
    /// from its response-body hook.
    pub fn wants_response_body(&self) -> bool {
        self.collecting
    }

    /// Whether a registry op on etcd is in flight: an ended stream must be
    /// kept (by the call) until its answer came.
    pub fn busy(&self) -> bool {
        self.remote.is_some()
    }

    /// Handles one event; the host then drains [`Stream::poll`].
    pub fn handle(&mut self, plugin: &Plugin, event: Event<'_>) {
        match event {
            Event::Headers {
                headers,
                bytes,
                end_of_stream,
            } => {
                self.in_hook = true;
                self.on_headers(plugin, headers, bytes, end_of_stream);
            }
            Event::Body {
                size,
                end_of_stream,
            } => {
                self.in_hook = true;
                self.on_body(plugin, size, end_of_stream);
            }
            Event::Trailers => {
                self.in_hook = true;
                if self.deciding() {
                    self.ask_to_decide(plugin);
                } else {
                    self.flow = Flow::Continue;
                }
            }
            Event::Facts(facts) => match self.asked.take() {
                Some(Asked::Decide) => self.decide(plugin, facts),
                Some(Asked::Tick) => self.on_tick_facts(plugin, &facts),
                Some(Asked::End(format)) => self.on_end_facts(plugin, format, &facts),
                Some(Asked::GiveBack(claim)) => {
                    self.give_back(plugin, claim, facts.now_ms.unwrap_or(0))
                }
                None => {}
            },
            Event::Written(result) => self.on_written(plugin, result),
            Event::Registry(result) => match self.local.take() {
                Some(Op::GiveBack) => self.given_back(result),
                Some(_) => self.registry_answered(plugin, result),
                None => {}
            },
            Event::Etcd { answer, now_ms } => {
                self.in_hook = false;
                if let Some(mut r) = self.remote.take() {
                    let step = r.op.on_answer(answer, now_ms);
                    self.step(plugin, r, step, now_ms);
                }
            }
            Event::EtcdSendFailed { now_ms } => {
                if let Some(mut r) = self.remote.take() {
                    let step = r.op.on_answer(None, now_ms);
                    self.step(plugin, r, step, now_ms);
                }
            }
            Event::EtcdResend { now_ms } => {
                if let Some(r) = &self.remote {
                    if let Some(call) = r.op.last_call().cloned() {
                        let timeout = r.op.remaining_ms(now_ms).max(1);
                        self.emit(Effect::Etcd {
                            call,
                            timeout_ms: u32::try_from(timeout).unwrap_or(u32::MAX),
                        });
                    }
                }
            }
            Event::Tick => {
                self.in_hook = false;
                if self.phase == Phase::AwaitingBody {
                    self.ask(
                        Asked::Tick,
                        Need {
                            total_size: true,
                            ..Need::default()
                        },
                    );
                }
            }
            Event::ResponseBody { chunk, .. } => {
                self.in_hook = true;
                self.flow = Flow::Continue;
                self.on_answer_chunk(chunk);
            }
            Event::End => self.on_end(),
        }
    }

    fn emit(&mut self, e: Effect) {
        self.effects.push_back(e);
    }

    fn ask(&mut self, why: Asked, need: Need) {
        self.asked = Some(why);
        self.emit(Effect::Need(need));
    }

    fn write(&mut self, why: Writing, writes: Vec<Write>) {
        self.writing.push_back(why);
        self.emit(Effect::Write(writes));
    }

    fn log(&mut self, level: Level, line: String) {
        self.emit(Effect::Log(level, line));
    }

    fn header(&self, name: &str) -> Option<&str> {
        verdict::header(&self.headers, name)
    }

    /// Still before the decision (headers held, body arriving).
    fn deciding(&self) -> bool {
        matches!(self.phase, Phase::AwaitingBody | Phase::Body)
    }

    fn on_headers(
        &mut self,
        plugin: &Plugin,
        headers: Vec<(String, String)>,
        bytes: usize,
        end_of_stream: bool,
    ) {
        self.emit(Effect::Count(Metric::Received));
        self.headers = headers;
        self.header_bytes = bytes;
        // Strip spoofed verification headers while this filter holds the headers.
        let mut strip = Vec::new();
        for (name, value) in &self.headers {
            if name.starts_with("x-callback-guard") {
                strip.push(Write::Remove(name.clone()));
                self.header_bytes = self.header_bytes.saturating_sub(name.len() + value.len());
            }
        }
        if !strip.is_empty() {
            self.write(Writing::Strip, strip);
        }
        self.phase = Phase::AwaitingBody;
        let limit = plugin.config.max_body_bytes;
        let declared = self
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return self.reject(plugin, &verdict::too_large(limit));
        }
        if end_of_stream {
            return self.ask_to_decide(plugin);
        }
        if plugin.body_withheld.load(Ordering::Relaxed) {
            return self.reject(plugin, &body_withheld());
        }
        // Held until the body is decided.
        self.flow = Flow::Pause;
    }

    fn on_body(&mut self, plugin: &Plugin, size: usize, end_of_stream: bool) {
        if !self.deciding() {
            self.flow = Flow::Continue;
            return;
        }
        if self.phase == Phase::AwaitingBody {
            plugin.body_delivered.store(true, Ordering::Relaxed);
        }
        self.phase = Phase::Body;
        self.body_size = size;
        let limit = plugin.config.max_body_bytes;
        if size > limit {
            return self.reject(plugin, &verdict::too_large(limit));
        }
        if end_of_stream {
            self.ask_to_decide(plugin);
        } else {
            self.flow = Flow::Pause;
        }
    }

    fn ask_to_decide(&mut self, plugin: &Plugin) {
        // Held while the facts come (at once) and the registry answers.
        self.flow = Flow::Pause;
        self.ask(
            Asked::Decide,
            Need {
                body: self.body_size,
                source: plugin.config.callback_auth.allow_cidrs.is_some(),
                now: true,
                ..Need::default()
            },
        );
    }

    fn decide(&mut self, plugin: &Plugin, facts: Facts) {
        let body = match facts.body {
            Ok(b) => b,
            Err(why) if self.body_size > 0 => {
                self.log(
                    Level::Error,
                    format!("callback-guard: cannot read the body ({why})"),
                );
                let r = Rejection::new(Code::InvalidParameterValue, "body could not be read");
                return self.reject(plugin, &r);
            }
            Err(_) => Vec::new(),
        };
        let Some(now_ms) = facts.now_ms else {
            self.log(
                Level::Error,
                "callback-guard: the host clock is unavailable".to_string(),
            );
            let r = Rejection::new(
                Code::AuthencationFailed,
                "cannot check the callback's times: clock unavailable",
            );
            return self.reject(plugin, &r);
        };
        let now_s = now_ms / 1000;
        let config = &plugin.config;
        let req = Request {
            method: self.header(":method").unwrap_or(""),
            path: self.header(":path").unwrap_or(""),
            content_type: self.header("content-type"),
            headers: &self.headers,
            body: &body,
            source: facts.source,
        };
        let pending = match verdict::check(config, &req, now_s) {
            Decision::Final(v) => return self.conclude(plugin, v),
            Decision::Registry(p) => p,
        };
        self.phase = Phase::Registry;
        let (op, claim) = (pending.op, pending.claim);
        if pending.answers_at_once() {
            // Forwarded now; the op's answer only counts and logs.
            self.detached = true;
            self.conclude(plugin, Verdict::Forward(pending.forward_now()));
        } else {
            self.pending = Some(pending);
        }
        let ds = &config.duplicate_streams;
        match ds.etcd.as_ref() {
            None => {
                self.local = Some(op);
                self.emit(Effect::Local { op, claim, now_s });
            }
            Some(_) => self.begin_remote(plugin, op, claim, now_ms),
        }
    }

    /// Starts an op on etcd at `now_ms`.
    fn begin_remote(&mut self, plugin: &Plugin, op: Op, claim: Claim, now_ms: u64) {
        let ds = &plugin.config.duplicate_streams;
        let Some(etcd) = ds.etcd.as_ref() else {
            return;
        };
        let (op, step) = EtcdOp::begin(
            op,
            claim,
            &etcd.key_prefix,
            ds.ttl_s,
            now_ms / 1000,
            now_ms,
            etcd.timeout_ms,
        );
        let remote = Remote {
            op,
            started_ms: now_ms,
        };
        self.step(plugin, remote, step, now_ms);
    }

    /// Sends the etcd op's next call, or acts on its result.
    fn step(&mut self, plugin: &Plugin, remote: Remote, step: Step, now_ms: u64) {
        match step {
            Step::Send(call) => {
                let timeout = remote.op.remaining_ms(now_ms).max(1);
                self.remote = Some(remote);
                self.emit(Effect::Etcd {
                    call,
                    timeout_ms: u32::try_from(timeout).unwrap_or(u32::MAX),
                });
            }
            Step::Done(result) => {
                self.emit(Effect::Latency(now_ms.saturating_sub(remote.started_ms)));
                match remote.op.op() {
                    Op::GiveBack => self.given_back(result),
                    op if self.phase == Phase::Ended => {
                        self.orphan_answered(plugin, op, *remote.op.claim(), result, now_ms)
                    }
                    _ => self.registry_answered(plugin, result),
                }
            }
        }
    }

    /// The registry answered for the callback that waits for it.
    fn registry_answered(&mut self, plugin: &Plugin, result: Result<Answer, RegistryError>) {
        if self.detached {
            // Already forwarded: a renewal from another session changed
            // nothing, and a failure is only counted and logged.
            if let Err(e) = result {
                self.store_failed(&e, "renewal");
            }
            return;
        }
        if let Some(p) = self.pending.take() {
            self.conclude(plugin, p.conclude(result));
        }
    }

    /// An op answered after its request ended: a start that was recorded is
    /// given back at once (it was never forwarded).
    fn orphan_answered(
        &mut self,
        plugin: &Plugin,
        op: Op,
        claim: Claim,
        result: Result<Answer, RegistryError>,
        now_ms: u64,
    ) {
        self.pending = None;
        match (op, result) {
            (Op::Reserve, Ok(Answer::Reserve(Reserve::Reserved | Reserve::Renewed))) => {
                self.give_back(plugin, claim, now_ms);
            }
            (_, Err(e)) => self.store_failed(&e, "registry op"),
            _ => {}
        }
    }

    fn store_failed(&mut self, e: &RegistryError, what: &str) {
        self.emit(Effect::Count(Metric::StoreError(e.kind())));
        self.log(
            Level::Warn,
            format!("callback-guard: {what} ({}) failed: {e}", e.kind()),
        );
    }

    /// A give-back's answer.
    fn given_back(&mut self, result: Result<Answer, RegistryError>) {
        match result {
            Ok(Answer::Release(Release::Released)) => self.emit(Effect::Count(Metric::Released)),
            Ok(_) => {}
            Err(e) => self.store_failed(&e, "release"),
        }
    }

    /// Gives a start's attempt back (the upstream refused it or never
    /// answered, or its headers could not be written).
    fn give_back(&mut self, plugin: &Plugin, claim: Claim, now_ms: u64) {
        let ds = &plugin.config.duplicate_streams;
        match ds.etcd.as_ref() {
            None => {
                self.local = Some(Op::GiveBack);
                self.emit(Effect::Local {
                    op: Op::GiveBack,
                    claim,
                    now_s: now_ms / 1000,
                });
            }
            Some(_) => self.begin_remote(plugin, Op::GiveBack, claim, now_ms),
        }
    }

    /// Acts on the verdict: a refusal, or the verified headers written.
    fn conclude(&mut self, plugin: &Plugin, v: Verdict) {
        match v {
            Verdict::Reject(r) => self.reject(plugin, &r),
            Verdict::Forward(f) => {
                let mut writes: Vec<Write> = f
                    .headers()
                    .into_iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(n, v)| Write::Add(n, v))
                    .collect();
                if plugin.config.filter_state_mark {
                    writes.push(Write::Mark);
                }
                self.write(Writing::Forward(Box::new(f)), writes);
            }
        }
    }

    fn on_written(&mut self, plugin: &Plugin, result: Result<(), String>) {
        let Some(why) = self.writing.pop_front() else {
            return;
        };
        match why {
            Writing::Strip => {
                if let Err(e) = result {
                    self.write_failed = Some(e);
                }
            }
            Writing::Observed => {
                if let Err(e) = result {
                    self.log(
                        Level::Error,
                        format!("callback-guard: cannot mark an observed refusal ({e})"),
                    );
                }
            }
            Writing::Forward(f) => {
                if let Err(e) = result {
                    self.write_failed.get_or_insert(e);
                }
                self.forwarded(plugin, *f);
            }
        }
    }

    /// The verified headers are written (or not): the request goes on, or
    /// is refused after all.
    fn forwarded(&mut self, plugin: &Plugin, f: Forward) {
        if let Some(e) = self.write_failed.clone() {
            self.log(
                Level::Error,
                format!("callback-guard: cannot write the forwarded headers ({e})"),
            );
            if let Some(claim) = f.reservation {
                self.ask(
                    Asked::GiveBack(claim),
                    Need {
                        now: true,
                        ..Need::default()
                    },
                );
            }
            let mut r = Rejection::new(
                Code::InternalError,
                "the verified headers could not be written",
            );
            // A play refused so is still counted as a play.
            r.event = Some(f.event);
            return self.reject(plugin, &r);
        }
        self.phase = Phase::Decided;
        self.emit(Effect::Count(if f.event.is_play() {
            Metric::PlayForwarded
        } else {
            Metric::Forwarded
        }));
        if let Some(e) = &f.registry_error {
            self.emit(Effect::Count(Metric::StoreError(e.kind())));
            self.log(
                Level::Warn,
                format!(
                    "callback-guard: {} forwarded without the stream registry ({}): {e}",
                    f.event.as_str(),
                    e.kind()
                ),
            );
        }
        self.reservation = f.reservation.map(|c| (c, f.format));
        if self.reservation.is_some() && registry::answer_body_needed(f.format) {
            self.collecting = true;
            self.answer = Some(Vec::new());
        }
        if plugin.log_forwards {
            self.log(Level::Debug, f.log_line());
        }
        self.go_on();
    }

    /// The request goes on: the hook returns `Continue`, or (outside a
    /// hook) the host resumes it.
    fn go_on(&mut self) {
        if self.in_hook {
            self.flow = Flow::Continue;
        } else {
            self.emit(Effect::Resume);
        }
    }

    /// A refusal: counted and logged; answered at the edge, or in observe
    /// mode forwarded with the code in `x-callback-guard-would-reject`.
    fn reject(&mut self, plugin: &Plugin, r: &Rejection) {
        self.phase = Phase::Decided;
        if let Some(e) = &r.registry_error {
            self.emit(Effect::Count(Metric::StoreError(e.kind())));
        }
        self.emit(Effect::Count(if r.is_play() {
            Metric::PlayRejected(r.code)
        } else {
            Metric::Rejected(r.code)
        }));
        let mode = plugin.config.mode;
        self.log(Level::Info, r.log_line_in(mode));
        if let Action::Observe(r) = Verdict::Reject(r.clone()).under(mode) {
            let mut writes = Vec::new();
            if plugin.config.filter_state_mark {
                writes.push(Write::Mark);
            }
            // The spoofed guard headers were removed on arrival.
            writes.push(Write::Add(
                verdict::WOULD_REJECT_HEADER,
                r.code.as_str().to_string(),
            ));
            self.write(Writing::Observed, writes);
            return self.go_on();
        }
        let body = reply::body(
            r.code,
            &r.message,
            self.header("x-request-id").unwrap_or(""),
        );
        self.emit(Effect::Reply {
            status: r.code.status(),
            body,
        });
        self.flow = Flow::Pause;
    }

    /// With `allow_on_headers_stop_iteration`, Envoy hands body bytes to
    /// the filter as they arrive; so body bytes received (the total less the
    /// held headers) with none delivered mean the flag is missing. The
    /// request is answered, one line says why, and later requests with a
    /// body are refused at their headers. A sender that has sent no body
    /// byte yet is left alone (Envoy's timeouts apply).
    fn on_tick_facts(&mut self, plugin: &Plugin, facts: &Facts) {
        if self.phase != Phase::AwaitingBody {
            return;
        }
        let Some(total) = facts.total_size else {
            return;
        };
        if total <= self.header_bytes {
            return;
        }
        if !plugin.body_withheld.swap(true, Ordering::Relaxed) {
            self.log(
                Level::Critical,
                "callback-guard: Envoy holds the request body back from the filter, so no callback can be checked: set `allow_on_headers_stop_iteration: true` in the Wasm filter's config (Envoy >= 1.35); until then callbacks with a body are refused with InternalError".to_string(),
            );
        }
        self.reject(plugin, &body_withheld());
    }

    /// The request is over. A start that reserved its stream keeps the
    /// reservation only if the upstream accepted the publish; after any
    /// other answer, or none (reset, timeout), the stream is freed again.
    fn on_end(&mut self) {
        self.in_hook = false;
        self.phase = Phase::Ended;
        if let Some((_, format)) = self.reservation {
            self.ask(
                Asked::End(format),
                Need {
                    response_code: true,
                    now: true,
                    ..Need::default()
                },
            );
        }
    }

    /// Keeps a chunk of the answer body, up to [`registry::MAX_ANSWER_BYTES`].
    fn on_answer_chunk(&mut self, chunk: Option<&[u8]>) {
        if !self.collecting {
            return;
        }
        let keep = match (self.answer.as_mut(), chunk) {
            (Some(a), Some(c)) if a.len() + c.len() <= registry::MAX_ANSWER_BYTES => {
                a.extend_from_slice(c);
                true
            }
            _ => false,
        };
        if !keep {
            self.answer = None;
            self.collecting = false;
        }
    }

    fn on_end_facts(&mut self, plugin: &Plugin, format: Format, facts: &Facts) {
        let Some((claim, _)) = self.reservation.take() else {
            return;
        };
        self.collecting = false;
        let accepted = self.phase == Phase::Ended
            && registry::answer_accepted(format, facts.response_code, self.answer.as_deref());
        if !accepted {
            self.give_back(plugin, claim, facts.now_ms.unwrap_or(0));
        }
    }
}

/// The answer while the request body is held back from the filter.
fn body_withheld() -> Rejection {
    Rejection::new(Code::InternalError, "the callback body cannot be checked: the filter is deployed without allow_on_headers_stop_iteration")
}

/// The answer to a request for a filter that is not configured (fail closed).
pub fn unconfigured() -> (u16, String) {
    let code = Code::InternalError;
    (
        code.status(),
        reply::body(code, "callback-guard is not configured", ""),
    )
}
