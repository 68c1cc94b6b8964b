//! Thin proxy-wasm glue: moves bytes between Envoy and [`crate::decide`].
//!
//! The module implements the Proxy-Wasm ABI 0.2.1 itself and exports only the
//! callbacks it uses. Envoy skips a callback the module does not export, so a
//! request costs no VM calls for response bodies, trailers and the like; and
//! every hostcall returns a `Result` (see [`host`]), so nothing here can panic.
//!
//! Per request, as the one HTTP filter before the router:
//! - headers: read in one hostcall, spoofed `x-callback-guard-*` headers
//!   removed, a declared `content-length` over the limit refused; then the
//!   headers are held (`Pause`). With the Wasm `PluginConfig` flag
//!   `allow_on_headers_stop_iteration: true` (Envoy >= 1.35), that keeps them
//!   from the router while the body still reaches this filter;
//! - body: buffered (`Pause`) until the end of the stream, or until trailers
//!   (which end an HTTP/2 body without `end_of_stream`), refused with 413 as
//!   soon as it grows past the limit; then `decide()` runs;
//! - reject: a local reply with the spec code, and `Pause`;
//! - forward: the `x-callback-guard-*` headers are added to the held headers,
//!   and the request continues with its body unchanged.
//!
//! Without the flag, Envoy turns the header `Pause` into "stop everything":
//! the body never arrives and the request would hang. The root context's
//! tick finds such requests (body bytes received, none delivered), answers
//! them with `InternalError`, and logs one line that names the flag; later
//! requests with a body are then refused at once (see [`Stream::on_tick`]).

mod host;
#[cfg(feature = "vm-bench")]
mod vm_bench;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use host::{Buffer, Level, Map};

use crate::callback::Format;
use crate::config::{Config, EtcdStore, ProcessEnv};
use crate::registry::etcd::{self, EtcdOp, Step};
use crate::registry::{self, Answer, Claim, Layout, Op, RegistryError, SharedStore, StoreError};
use crate::reply::{self, Code};
use crate::verdict::{self, Action, Decision, Pending, Rejection, Request, Verdict};
use crate::wire;

const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;

/// Proxy-wasm shared data: one map per `vm_id`, shared by all workers.
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        host::shared_get(key).map_err(|s| StoreError::Host(format!("status {}", s.0)))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match host::shared_set(key, value, cas) {
            Ok(()) => Ok(()),
            Err(host::CAS_MISMATCH) => Err(StoreError::CasMismatch),
            Err(s) => Err(StoreError::Host(format!("status {}", s.0))),
        }
    }
}

/// A counter whose increments are kept in the VM and handed to Envoy in one
/// hostcall per tick (every [`TICK_MS`]), instead of one per request: each
/// hostcall costs about a microsecond. Counters thus lag by up to a tick.
struct Counter {
    id: Option<u32>,
    pending: Cell<u64>,
    /// No tick to flush on: every increment goes to Envoy at once.
    immediate: bool,
}

impl Counter {
    fn define(name: &str, immediate: bool) -> Counter {
        Counter {
            id: host::counter(name),
            pending: Cell::new(0),
            immediate,
        }
    }

    fn bump(&self) {
        self.pending.set(self.pending.get().saturating_add(1));
        if self.immediate {
            self.flush();
        }
    }

    fn flush(&self) {
        let n = self.pending.replace(0);
        if n > 0 {
            host::add_to_counter(self.id, n);
        }
    }
}

/// Counter ids, defined once per plugin configuration.
struct Metrics {
    received: Counter,
    forwarded: Counter,
    rejected: [Counter; Code::ALL.len()],
    released: Counter,
    /// Registry failures by kind ([`registry::RegistryError::KINDS`]).
    store_errors: [Counter; registry::RegistryError::KINDS.len()],
}

impl Metrics {
    fn define(immediate: bool) -> Metrics {
        Metrics {
            received: Counter::define("callback_guard.requests_received", immediate),
            forwarded: Counter::define("callback_guard.requests_forwarded", immediate),
            rejected: Code::ALL.map(|c| {
                Counter::define(
                    &format!("callback_guard.requests_rejected.{}", c.as_str()),
                    immediate,
                )
            }),
            released: Counter::define("callback_guard.reservations_released", immediate),
            store_errors: registry::RegistryError::KINDS
                .map(|k| Counter::define(&format!("callback_guard.store_errors.{k}"), immediate)),
        }
    }

    fn store_error(&self, e: &registry::RegistryError) {
        if let Some(i) = registry::RegistryError::KINDS
            .iter()
            .position(|k| *k == e.kind())
        {
            self.store_errors[i].bump();
        }
    }

    fn reject(&self, code: Code) {
        if let Some(i) = Code::ALL.iter().position(|c| *c == code) {
            self.rejected[i].bump();
        }
    }

    /// Hands the pending increments to Envoy.
    fn flush(&self) {
        self.received.flush();
        self.forwarded.flush();
        self.released.flush();
        for c in self.rejected.iter().chain(&self.store_errors) {
            c.flush();
        }
    }
}

/// What every request of one plugin configuration shares.
struct Plugin {
    config: Config,
    metrics: Metrics,
    /// Envoy's log level when the plugin was configured: forwards are logged
    /// only at debug, so the line is not even formatted otherwise.
    log_forwards: bool,
    /// Set once a request's body was seen held back from this filter: the
    /// Wasm filter lacks `allow_on_headers_stop_iteration`, so no body can
    /// be checked (see [`Stream::on_tick`]).
    body_withheld: Cell<bool>,
    /// Milliseconds per registry op on a remote store (histogram).
    store_latency: Option<u32>,
    /// Whether this worker has checked that the etcd cluster is there.
    probed: Cell<bool>,
}

/// The filter state name of `filter_state_mark` (Envoy stores it as
/// `wasm.x-callback-guard-checked`).
const CHECKED_MARK: &str = "x-callback-guard-checked";

/// How often the root context looks for requests whose body is withheld.
const TICK_MS: u32 = 250;

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Headers held, no body callback yet.
    AwaitingBody,
    /// Body callbacks arriving.
    Body,
    /// Waiting for the remote registry (etcd) to answer.
    Registry,
    /// Decided (forwarded or answered).
    Decided,
}

/// One request.
struct Stream {
    /// Its context id.
    id: u32,
    plugin: Rc<Plugin>,
    /// All request headers, read once.
    headers: Vec<(String, String)>,
    /// Bytes of the names and values of the held headers, as Envoy counts them.
    header_bytes: usize,
    /// A header change that the host refused: such a request is never sent on
    /// (it could carry a spoofed `x-callback-guard-*` header).
    header_write_failed: Option<host::Status>,
    /// Body bytes buffered so far (Envoy reports the running total).
    body_size: usize,
    phase: Phase,
    /// A start's claim on its stream, with the callback's dialect: given back
    /// if the publish does not go through.
    reservation: Option<(Claim, Format)>,
    /// A callback that passed every check but the registry's, while the
    /// remote registry answers.
    pending: Option<Pending>,
}

/// A call to the remote registry in flight (keyed by its token).
enum StoreCall {
    /// One step of a registry op.
    Op {
        plugin: Rc<Plugin>,
        op: EtcdOp,
        /// The request waiting for it; `None` for an op of its own (a
        /// start's attempt given back after the request ended).
        stream: Option<u32>,
        started_ms: u64,
    },
    /// The start-up call that shows whether etcd answers.
    Probe,
}

#[derive(Default)]
struct State {
    /// Root contexts, with their plugin once configured.
    roots: HashMap<u32, Option<Rc<Plugin>>>,
    /// Live requests.
    streams: HashMap<u32, Rc<RefCell<Stream>>>,
    /// Calls to the remote registry, with their tokens (a few at a time per
    /// worker). Envoy makes them on the root context, so they outlive the
    /// requests that asked for them.
    calls: Vec<(u32, StoreCall)>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Runs `f` on a request's state. Envoy may call back into the VM while a
/// hostcall of this very request is running (a local reply passes through the
/// response callbacks); such a nested call finds the request busy and gets
/// `default`.
fn with_stream<T>(id: u32, default: T, f: impl FnOnce(&mut Stream) -> T) -> T {
    let stream = STATE.with(|s| {
        s.try_borrow()
            .ok()
            .and_then(|s| s.streams.get(&id).cloned())
    });
    match stream {
        Some(rc) => match rc.try_borrow_mut() {
            Ok(mut st) => f(&mut st),
            Err(_) => default,
        },
        None => default,
    }
}

// ---- exports ------------------------------------------------------------------

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// Reactor initialisation, as the wasi target expects.
#[no_mangle]
pub extern "C" fn _initialize() {
    #[cfg(target_os = "wasi")]
    // SAFETY: the linker-provided constructor runner, called once at start.
    unsafe {
        __wasm_call_ctors();
    }
}

/// Marks the ABI version this module speaks.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Memory the host fills and hands back (see `host::owned`).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::with_capacity(size);
    let p = v.as_mut_ptr();
    std::mem::forget(v);
    p
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    STATE.with(|s| {
        let Ok(mut s) = s.try_borrow_mut() else {
            return;
        };
        if root_context_id == 0 {
            s.roots.insert(context_id, None);
            return;
        }
        // A request for a root that never configured cannot be checked; it
        // keeps no plugin and is refused in its first callback.
        if let Some(Some(plugin)) = s.roots.get(&root_context_id) {
            let stream = Stream {
                id: context_id,
                plugin: plugin.clone(),
                headers: Vec::new(),
                header_bytes: 0,
                header_write_failed: None,
                body_size: 0,
                phase: Phase::AwaitingBody,
                reservation: None,
                pending: None,
            };
            s.streams.insert(context_id, Rc::new(RefCell::new(stream)));
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
    host::log(
        Level::Info,
        &format!("callback-guard {} starting", crate::VERSION),
    );
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_context_id: u32, _configuration_size: usize) -> u32 {
    let bytes = match host::buffer(Buffer::PluginConfiguration, 0, usize::MAX) {
        Ok(b) => b,
        Err(s) => {
            host::log(
                Level::Critical,
                &format!(
                    "callback-guard: cannot read the plugin configuration (status {})",
                    s.0
                ),
            );
            return 0;
        }
    };
    match Config::from_json(&bytes, &ProcessEnv) {
        Ok(config) => {
            if config.mode == crate::config::Mode::Observe {
                host::log(
                    Level::Warn,
                    "callback-guard: mode is observe: callbacks that fail a check are forwarded, marked x-callback-guard-would-reject",
                );
            }
            for w in config.warnings() {
                host::log(Level::Warn, &format!("callback-guard: {w}"));
            }
            let ds = &config.duplicate_streams;
            if ds.reject && ds.etcd.is_none() {
                init_registry(&Layout::for_config(ds));
            }
            #[cfg(feature = "vm-bench")]
            vm_bench::run();
            let ticking = host::set_tick_period_ms(TICK_MS);
            if let Err(s) = ticking {
                host::log(
                    Level::Warn,
                    &format!(
                        "callback-guard: no tick (status {}): a missing allow_on_headers_stop_iteration will not be detected",
                        s.0
                    ),
                );
            }
            let store_latency = config
                .duplicate_streams
                .etcd
                .as_ref()
                .and_then(|_| host::histogram("callback_guard.store_latency_ms"));
            let plugin = Rc::new(Plugin {
                config,
                metrics: Metrics::define(ticking.is_err()),
                log_forwards: host::log_level() <= Level::Debug as u32,
                body_withheld: Cell::new(false),
                store_latency,
                probed: Cell::new(false),
            });
            STATE.with(|s| {
                if let Ok(mut s) = s.try_borrow_mut() {
                    s.roots.insert(root_context_id, Some(plugin));
                }
            });
            1
        }
        Err(errs) => {
            let list: Vec<String> = errs.iter().map(ToString::to_string).collect();
            host::log(
                Level::Critical,
                &format!("callback-guard: invalid configuration: {}", list.join("; ")),
            );
            0
        }
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _num_headers: usize,
    end_of_stream: u32,
) -> u32 {
    if !known(context_id) {
        return refuse_unconfigured();
    }
    with_stream(context_id, CONTINUE, |st| st.on_headers(end_of_stream != 0))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(
    context_id: u32,
    body_size: usize,
    end_of_stream: u32,
) -> u32 {
    with_stream(context_id, CONTINUE, |st| {
        st.on_body(body_size, end_of_stream != 0)
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, _num_trailers: usize) -> u32 {
    with_stream(context_id, CONTINUE, |st| st.on_trailers())
}

/// The request is over (Envoy's access-log hook, called for every request,
/// answered or reset). End-of-request work happens here, and the request's
/// state is dropped. `proxy_on_response_headers`, `proxy_on_done` and
/// `proxy_on_delete` are deliberately not exported: Envoy skips what a module
/// does not export, and each call into the VM costs about a microsecond.
#[no_mangle]
pub extern "C" fn proxy_on_log(context_id: u32) {
    with_stream(context_id, (), Stream::on_end);
    STATE.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            s.streams.remove(&context_id);
        }
    });
}

/// The root context's tick: hands the batched counters to Envoy, and answers
/// the requests whose body Envoy holds back from this filter (see
/// [`Stream::on_tick`]).
#[no_mangle]
pub extern "C" fn proxy_on_tick(root_context_id: u32) {
    let plugin = STATE.with(|s| {
        s.try_borrow()
            .ok()
            .and_then(|s| s.roots.get(&root_context_id).cloned().flatten())
    });
    let Some(plugin) = plugin else {
        return;
    };
    plugin.metrics.flush();
    if let Some(etcd) = plugin.config.duplicate_streams.etcd.as_ref() {
        if plugin.config.duplicate_streams.reject && !plugin.probed.replace(true) {
            probe_etcd(etcd);
        }
    }
    let waiting: Vec<u32> = STATE.with(|s| {
        s.try_borrow().map_or_else(
            |_| Vec::new(),
            |s| {
                s.streams
                    .iter()
                    .filter(|(_, st)| {
                        st.try_borrow().is_ok_and(|st| {
                            st.phase == Phase::AwaitingBody && Rc::ptr_eq(&st.plugin, &plugin)
                        })
                    })
                    .map(|(id, _)| *id)
                    .collect()
            },
        )
    });
    if waiting.is_empty() {
        return;
    }
    for id in waiting {
        if host::set_effective_context(id).is_ok() {
            with_stream(id, (), Stream::on_tick);
        }
    }
    let _ = host::set_effective_context(root_context_id);
}

/// An answer (or the failure) of a call to the remote registry.
#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    root_context_id: u32,
    token: u32,
    _num_headers: usize,
    body_size: usize,
    _num_trailers: usize,
) {
    let call = STATE.with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        let at = s.calls.iter().position(|(t, _)| *t == token)?;
        Some(s.calls.swap_remove(at).1)
    });
    let status = host::header_value(Map::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u16>().ok());
    match call {
        None => {}
        Some(StoreCall::Probe) => match status {
            Some(s) => host::log(
                Level::Info,
                &format!("callback-guard: etcd answered the start-up check (HTTP {s})"),
            ),
            None => host::log(
                Level::Warn,
                "callback-guard: etcd did not answer the start-up check: starts will be refused (503) until it does",
            ),
        },
        Some(StoreCall::Op {
            plugin,
            mut op,
            stream,
            started_ms,
        }) => {
            let body = if body_size == 0 {
                Vec::new()
            } else {
                host::buffer(Buffer::HttpCallResponseBody, 0, body_size).unwrap_or_default()
            };
            let now_ms = host::now_ms().unwrap_or(started_ms);
            let step = op.on_answer(status.map(|s| (s, &body[..])), now_ms);
            let kind = op.op();
            let claim = *op.claim();
            if let Some(result) = drive(&plugin, op, step, stream, started_ms) {
                finish(root_context_id, &plugin, kind, claim, stream, result);
            }
        }
    }
}

/// Sends the op's calls until one is in flight (`None`) or the op is over
/// (its result). A call that cannot even be sent is an answer of its own.
fn drive(
    plugin: &Rc<Plugin>,
    mut op: EtcdOp,
    mut step: Step,
    stream: Option<u32>,
    started_ms: u64,
) -> Option<Result<Answer, RegistryError>> {
    let Some(etcd) = plugin.config.duplicate_streams.etcd.as_ref() else {
        return Some(Err(registry::Unavailable::Unreachable.into()));
    };
    loop {
        let now_ms = host::now_ms().unwrap_or(started_ms);
        match step {
            Step::Done(result) => {
                host::record(plugin.store_latency, now_ms.saturating_sub(started_ms));
                return Some(result);
            }
            Step::Send(call) => {
                let timeout = u32::try_from(op.remaining_ms(now_ms).max(1)).unwrap_or(u32::MAX);
                match send_to_etcd(etcd, call.path, call.body.as_bytes(), timeout) {
                    Ok(token) => {
                        let pending = StoreCall::Op {
                            plugin: plugin.clone(),
                            op,
                            stream,
                            started_ms,
                        };
                        STATE.with(|s| {
                            if let Ok(mut s) = s.try_borrow_mut() {
                                s.calls.push((token, pending));
                            }
                        });
                        return None;
                    }
                    Err(_) => step = op.on_answer(None, now_ms),
                }
            }
        }
    }
}

/// `POST path` to the etcd cluster, JSON, with `Grpc-Metadata-hasleader`
/// (without a quorum etcd then answers at once instead of after 7 s).
fn send_to_etcd(
    etcd: &EtcdStore,
    path: &str,
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, host::Status> {
    host::http_call(
        &etcd.cluster,
        &[
            (":method", "POST"),
            (":path", path),
            (":authority", &etcd.authority),
            ("content-type", "application/json"),
            ("grpc-metadata-hasleader", "true"),
        ],
        body,
        timeout_ms,
    )
}

/// An op is over: the waiting request continues or is answered; a start
/// whose request ended meanwhile (never forwarded) gives its attempt back.
fn finish(
    root_context_id: u32,
    plugin: &Rc<Plugin>,
    op: Op,
    claim: Claim,
    stream: Option<u32>,
    result: Result<Answer, RegistryError>,
) {
    let waiting = stream.filter(|id| known(*id));
    if let Some(id) = waiting {
        if host::set_effective_context(id).is_ok() {
            with_stream(id, (), |st| st.on_registry(result));
        }
        let _ = host::set_effective_context(root_context_id);
        return;
    }
    match (op, result) {
        (
            Op::Reserve,
            Ok(Answer::Reserve(registry::Reserve::Reserved | registry::Reserve::Renewed)),
        ) if stream.is_some() => {
            give_back_on_etcd(plugin, claim);
        }
        (Op::GiveBack, Ok(Answer::Release(registry::Release::Released))) => {
            plugin.metrics.released.bump();
        }
        (_, Err(e)) => {
            plugin.metrics.store_error(&e);
            host::log(
                Level::Warn,
                &format!("callback-guard: registry op ({}) failed: {e}", e.kind()),
            );
        }
        _ => {}
    }
}

/// A start the upstream refused or never answered gives its attempt back,
/// on its own: the request is over.
fn give_back_on_etcd(plugin: &Rc<Plugin>, claim: Claim) {
    let Some(etcd) = plugin.config.duplicate_streams.etcd.as_ref() else {
        return;
    };
    let now_ms = host::now_ms().unwrap_or(0);
    let (op, step) = EtcdOp::begin(
        Op::GiveBack,
        claim,
        &etcd.key_prefix,
        plugin.config.duplicate_streams.ttl_s,
        now_ms / 1000,
        now_ms,
        etcd.timeout_ms,
    );
    if let Some(result) = drive(plugin, op, step, None, now_ms) {
        finish(0, plugin, Op::GiveBack, claim, None, result);
    }
}

/// On each worker's first tick (Envoy has no clusters yet when the filter is
/// configured): one read of the key prefix says in the log whether the etcd
/// cluster exists and answers. Starts are refused (503) until it does.
fn probe_etcd(etcd: &EtcdStore) {
    let call = etcd::range(&etcd.key_prefix);
    match send_to_etcd(etcd, call.path, call.body.as_bytes(), 5000) {
        Ok(token) => {
            STATE.with(|s| {
                if let Ok(mut s) = s.try_borrow_mut() {
                    s.calls.push((token, StoreCall::Probe));
                }
            });
        }
        // BadArgument: Envoy has no such cluster. Anything else (InternalFailure:
        // the call could not start, say before the cluster's first health
        // check passed) may pass by itself.
        Err(host::Status(2)) => host::log(
            Level::Critical,
            &format!(
                "callback-guard: duplicate_streams.store.etcd.cluster: Envoy has no cluster `{}` to reach etcd: every start is refused with ServiceUnavailable",
                crate::callback::printable(&etcd.cluster)
            ),
        ),
        Err(s) => host::log(
            Level::Warn,
            &format!(
                "callback-guard: the start-up call to etcd through cluster `{}` could not start (status {}): starts get ServiceUnavailable until etcd answers",
                crate::callback::printable(&etcd.cluster),
                s.0
            ),
        ),
    }
}

fn known(context_id: u32) -> bool {
    STATE.with(|s| {
        s.try_borrow()
            .is_ok_and(|s| s.streams.contains_key(&context_id))
    })
}

/// Fail closed when a request arrives for a plugin that is not configured.
fn refuse_unconfigured() -> u32 {
    let code = Code::InternalError;
    let body = reply::body(code, "callback-guard is not configured", "");
    let _ = host::send_response(
        code.status(),
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    PAUSE
}

/// Creates the registry's buckets before any request (see [`registry::create_buckets`]).
fn init_registry(layout: &Layout) {
    for (key, e) in registry::create_buckets(&HostStore, layout) {
        host::log(
            Level::Error,
            &format!("callback-guard: cannot create registry bucket {key}: {e}"),
        );
    }
}

// ---- one request --------------------------------------------------------------

impl Stream {
    fn header(&self, name: &str) -> Option<&str> {
        verdict::header(&self.headers, name)
    }

    fn on_headers(&mut self, end_of_stream: bool) -> u32 {
        self.plugin.metrics.received.bump();
        let (headers, bytes) = host::headers(Map::HttpRequestHeaders).unwrap_or_default();
        self.headers = headers;
        self.header_bytes = bytes;
        #[cfg(feature = "crash-test")]
        if self.header("x-callback-guard-test-crash") == Some("abort") {
            // A VM crash, as a bug or a V8 out-of-memory would cause.
            std::process::abort();
        }
        // Strip spoofed verification headers while this filter holds the headers.
        for (name, value) in &self.headers {
            if name.starts_with("x-callback-guard") {
                if let Err(s) = host::remove_header(Map::HttpRequestHeaders, name) {
                    self.header_write_failed = Some(s);
                }
                self.header_bytes = self.header_bytes.saturating_sub(name.len() + value.len());
            }
        }
        let limit = self.plugin.config.max_body_bytes;
        let declared = self
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return self.reject(&verdict::too_large(limit));
        }
        if end_of_stream {
            return self.decide();
        }
        if self.plugin.body_withheld.get() {
            return self.reject(&body_withheld());
        }
        // Hold the headers until the body is decided (needs the flag, see the
        // module docs; the tick catches its absence).
        self.phase = Phase::AwaitingBody;
        PAUSE
    }

    fn on_body(&mut self, body_size: usize, end_of_stream: bool) -> u32 {
        if self.phase == Phase::Decided {
            return CONTINUE;
        }
        self.phase = Phase::Body;
        self.body_size = body_size;
        let limit = self.plugin.config.max_body_bytes;
        if body_size > limit {
            return self.reject(&verdict::too_large(limit));
        }
        if end_of_stream {
            self.decide()
        } else {
            PAUSE
        }
    }

    fn on_trailers(&mut self) -> u32 {
        if self.phase == Phase::Decided {
            CONTINUE
        } else {
            self.decide()
        }
    }

    /// Called from the root context's tick (this request made the effective
    /// context) while the request still waits for its first body callback.
    /// With `allow_on_headers_stop_iteration`, Envoy hands body bytes to this
    /// filter as they arrive, on this very worker; so body bytes received
    /// (`request.total_size` less the held headers) with none delivered mean
    /// the flag is missing. The request is answered, one line says why, and
    /// later requests with a body are refused at their headers. A sender that
    /// has sent no body byte yet is left alone (Envoy's timeouts apply).
    fn on_tick(&mut self) {
        if self.phase != Phase::AwaitingBody {
            return;
        }
        let total = host::property(&["request", "total_size"])
            .ok()
            .flatten()
            .and_then(|v| wire::decode_int(&v))
            .and_then(|n| usize::try_from(n).ok());
        let Some(total) = total else {
            return;
        };
        if total <= self.header_bytes {
            return;
        }
        if !self.plugin.body_withheld.replace(true) {
            host::log(
                Level::Critical,
                "callback-guard: Envoy holds the request body back from the filter, so no callback can be checked: set `allow_on_headers_stop_iteration: true` in the Wasm filter's config (Envoy >= 1.35); until then callbacks with a body are refused with InternalError",
            );
        }
        if self.reject(&body_withheld()) == CONTINUE {
            // Observe mode: let it go on, marked.
            let _ = host::continue_request();
        }
    }

    /// The request is over. A start that reserved its stream keeps the
    /// reservation only if the upstream accepted the publish (2xx); after any
    /// other answer, or none (reset, timeout), the stream is freed again.
    fn on_end(&mut self) {
        let Some((_, format)) = self.reservation else {
            return;
        };
        let status = host::property(&["response", "code"])
            .ok()
            .flatten()
            .and_then(|v| wire::decode_int(&v));
        if registry::publish_accepted(format, status) {
            self.reservation = None;
        } else {
            self.release();
        }
    }

    fn source(&self) -> Option<IpAddr> {
        let raw = host::property(&["source", "address"]).ok()??;
        let text = std::str::from_utf8(&raw).ok()?;
        text.parse::<SocketAddr>()
            .map(|s| s.ip())
            .or_else(|_| text.parse::<IpAddr>())
            .ok()
    }

    /// A refusal: counted and logged; answered at the edge, or in observe
    /// mode forwarded with the code in `x-callback-guard-would-reject`
    /// (then `CONTINUE`).
    fn reject(&mut self, r: &Rejection) -> u32 {
        self.phase = Phase::Decided;
        if let Some(e) = &r.registry_error {
            self.plugin.metrics.store_error(e);
        }
        self.plugin.metrics.reject(r.code);
        let mode = self.plugin.config.mode;
        host::log(Level::Info, &r.log_line_in(mode));
        if let Action::Observe(r) = Verdict::Reject(r.clone()).under(mode) {
            self.mark_checked();
            // The spoofed guard headers were removed on arrival.
            let marked = host::add_header(
                Map::HttpRequestHeaders,
                verdict::WOULD_REJECT_HEADER,
                r.code.as_str(),
            );
            if let Err(s) = marked {
                host::log(
                    Level::Error,
                    &format!(
                        "callback-guard: cannot mark an observed refusal (status {})",
                        s.0
                    ),
                );
            }
            return CONTINUE;
        }
        let body = reply::body(
            r.code,
            &r.message,
            self.header("x-request-id").unwrap_or(""),
        );
        let headers = [("content-type", "application/json")];
        if let Err(s) = host::send_response(r.code.status(), &headers, body.as_bytes()) {
            host::log(
                Level::Error,
                &format!("callback-guard: local reply failed (status {})", s.0),
            );
        }
        PAUSE
    }

    fn decide(&mut self) -> u32 {
        let body = if self.body_size == 0 {
            Vec::new()
        } else {
            match host::buffer(Buffer::HttpRequestBody, 0, self.body_size) {
                Ok(b) => b,
                Err(s) => {
                    host::log(
                        Level::Error,
                        &format!("callback-guard: cannot read the body (status {})", s.0),
                    );
                    let r = Rejection::new(Code::InvalidParameterValue, "body could not be read");
                    return self.reject(&r);
                }
            }
        };
        let config = &self.plugin.config;
        let source = if config.callback_auth.allow_cidrs.is_some() {
            self.source()
        } else {
            None
        };
        let req = Request {
            method: self.header(":method").unwrap_or(""),
            path: self.header(":path").unwrap_or(""),
            content_type: self.header("content-type"),
            headers: &self.headers,
            body: &body,
            source,
        };
        let Some(now) = host::now_s() else {
            host::log(
                Level::Error,
                "callback-guard: the host clock is unavailable",
            );
            let r = Rejection::new(
                Code::AuthencationFailed,
                "cannot check the callback's times: clock unavailable",
            );
            return self.reject(&r);
        };
        let pending = match verdict::check(config, &req, now) {
            Decision::Final(v) => return self.conclude(v),
            Decision::Registry(p) => p,
        };
        let ds = &config.duplicate_streams;
        let Some(etcd) = ds.etcd.as_ref() else {
            let answer = registry::shared::run(&HostStore, ds, pending.op, &pending.claim, now);
            return self.conclude(pending.conclude(answer));
        };
        // The remote registry: hold the request while etcd answers.
        let now_ms = host::now_ms().unwrap_or(now.saturating_mul(1000));
        let (op, step) = EtcdOp::begin(
            pending.op,
            pending.claim,
            &etcd.key_prefix,
            ds.ttl_s,
            now,
            now_ms,
            etcd.timeout_ms,
        );
        let plugin = self.plugin.clone();
        match drive(&plugin, op, step, Some(self.id), now_ms) {
            None => {
                self.pending = Some(pending);
                self.phase = Phase::Registry;
                PAUSE
            }
            Some(result) => self.conclude(pending.conclude(result)),
        }
    }

    /// The remote registry answered for this held request (this request is
    /// the effective context): it continues, or is answered.
    fn on_registry(&mut self, result: Result<Answer, RegistryError>) {
        let Some(p) = self.pending.take() else {
            return;
        };
        if self.conclude(p.conclude(result)) == CONTINUE {
            if let Err(s) = host::continue_request() {
                host::log(
                    Level::Error,
                    &format!("callback-guard: cannot resume the request (status {})", s.0),
                );
            }
        }
    }

    /// Acts on the verdict: a local reply, or the verified headers and on.
    fn conclude(&mut self, v: Verdict) -> u32 {
        match v {
            Verdict::Reject(r) => self.reject(&r),
            Verdict::Forward(f) => {
                // The headers are still held here, so they can be written.
                // Spoofed ones were removed on arrival: add, do not replace.
                // (One add per header is cheaper than one call that replaces
                // the whole map: Envoy then rebuilds it and the route cache.)
                for (name, value) in f.headers() {
                    if value.is_empty() {
                        continue;
                    }
                    if let Err(s) = host::add_header(Map::HttpRequestHeaders, name, &value) {
                        self.header_write_failed = Some(s);
                    }
                }
                self.mark_checked();
                if let Some(s) = self.header_write_failed {
                    host::log(
                        Level::Error,
                        &format!(
                            "callback-guard: cannot write the forwarded headers (status {})",
                            s.0
                        ),
                    );
                    self.reservation = f.reservation.map(|c| (c, f.format));
                    self.release();
                    return self.reject(&Rejection::new(
                        Code::InternalError,
                        "the verified headers could not be written",
                    ));
                }
                self.phase = Phase::Decided;
                self.plugin.metrics.forwarded.bump();
                if let Some(e) = &f.registry_error {
                    self.plugin.metrics.store_error(e);
                    host::log(
                        Level::Warn,
                        &format!(
                            "callback-guard: {} forwarded without the stream registry ({}): {e}",
                            f.event.as_str(),
                            e.kind()
                        ),
                    );
                }
                self.reservation = f.reservation.map(|c| (c, f.format));
                if self.plugin.log_forwards {
                    host::log(Level::Debug, &f.log_line());
                }
                CONTINUE
            }
        }
    }

    /// With `filter_state_mark`: the filter state that tells a stock filter
    /// after this one that callback-guard checked this request. A mark that
    /// cannot be set counts as a failed header write (never forwarded).
    fn mark_checked(&mut self) {
        if self.plugin.config.filter_state_mark {
            if let Err(s) = host::set_property(CHECKED_MARK, b"1") {
                self.header_write_failed = Some(s);
            }
        }
    }

    fn release(&mut self) {
        if let Some((claim, _)) = self.reservation.take() {
            let ds = &self.plugin.config.duplicate_streams;
            if ds.etcd.is_some() {
                give_back_on_etcd(&self.plugin, claim);
                return;
            }
            match registry::give_back(&HostStore, ds, &claim, host::now_s().unwrap_or(0)) {
                Ok(registry::Release::Released) => self.plugin.metrics.released.bump(),
                Ok(_) => {}
                Err(e) => host::log(Level::Warn, &format!("callback-guard: release failed: {e}")),
            }
        }
    }
}

/// The answer while the request body is held back from the filter.
fn body_withheld() -> Rejection {
    Rejection::new(Code::InternalError, "the callback body cannot be checked: the filter is deployed without allow_on_headers_stop_iteration")
}
