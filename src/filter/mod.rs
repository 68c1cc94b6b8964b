//! The proxy-wasm host adapter: turns Envoy's callbacks into
//! [`crate::lifecycle`] events and the lifecycle's effects into hostcalls.
//! Every rule of a request's life lives in the lifecycle; this file only
//! moves bytes.
//!
//! The module implements the Proxy-Wasm ABI 0.2.1 itself and exports only the
//! callbacks it uses. Envoy skips a callback the module does not export, so a
//! request costs no VM calls for response headers, trailers and the like
//! (response bodies: one call per chunk, for SRS's answer rule; see
//! [`proxy_on_response_body`]); and
//! every hostcall returns a `Result` (see [`host`]), so nothing here can panic.
//!
//! What is proxy-wasm's own:
//! - the headers are held with `Pause`; with the Wasm `PluginConfig` flag
//!   `allow_on_headers_stop_iteration: true` (Envoy >= 1.35) the body still
//!   reaches this filter. Without it Envoy turns the header `Pause` into
//!   "stop everything", and the root context's tick hands [`Event::Tick`] to
//!   the held requests until a body has reached the filter once (the
//!   lifecycle's missing-flag rule);
//! - counters are batched and handed to Envoy once per tick;
//! - calls to etcd go out with `proxy_http_call` and are answered on the root
//!   context, so they outlive the request that asked for them: the call keeps
//!   the request's state until its answer came;
//! - the one-Envoy registry is Proxy-Wasm shared data ([`HostStore`]).

mod host;
#[cfg(feature = "vm-bench")]
mod vm_bench;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use host::{Buffer, Map};

use crate::config::ProcessEnv;
use crate::lifecycle::{self, Counts, Effect, Event, Facts, Flow, Level, Metric, Need, Write};
use crate::registry::gauge::Read;
use crate::registry::{self, Layout, SharedStore, StoreError};
use crate::wire;

const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;

/// How often the root context flushes counters (and, while the flag is
/// unproven, looks for requests whose body is withheld).
const TICK_MS: u32 = 250;

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

/// One plugin configuration (root context) and its host resources.
struct Plugin {
    core: lifecycle::Plugin,
    /// Counter ids by [`Metric::index`].
    counters: Vec<Option<u32>>,
    /// Increments since the last flush.
    counts: RefCell<Counts>,
    /// No tick to flush on: every increment goes to Envoy at once.
    immediate: bool,
    /// Milliseconds per registry op on etcd (histogram).
    store_latency: Option<u32>,
    /// Live reservations (gauge).
    live: Option<u32>,
}

impl Plugin {
    fn count(&self, m: Metric) {
        if let Ok(mut c) = self.counts.try_borrow_mut() {
            c.bump(m);
        }
        if self.immediate {
            self.flush();
        }
    }

    /// Hands the pending increments to Envoy.
    fn flush(&self) {
        let Ok(mut counts) = self.counts.try_borrow_mut() else {
            return;
        };
        for (i, n) in counts.take() {
            host::add_to_counter(self.counters.get(i).copied().flatten(), n);
        }
    }
}

/// One request: its context id, its plugin, and its lifecycle.
struct Held {
    id: u32,
    plugin: Rc<Plugin>,
    life: lifecycle::Stream,
}

/// What a call in flight answers to.
enum Callee {
    /// A request's registry op (the request may have ended meanwhile).
    Stream(Rc<RefCell<Held>>),
    /// The start-up call that shows whether etcd answers.
    Probe,
    /// The live-reservations gauge's count.
    Gauge(Rc<Plugin>),
}

#[derive(Default)]
struct State {
    /// Root contexts, with their plugin once configured.
    roots: HashMap<u32, Option<Rc<Plugin>>>,
    /// Live requests.
    streams: HashMap<u32, Rc<RefCell<Held>>>,
    /// Calls to etcd in flight, by token (a few at a time per worker).
    calls: Vec<(u32, Callee)>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn log(l: Level, line: &str) {
    host::log(l, line);
}

fn status(s: host::Status) -> String {
    format!("status {}", s.0)
}

/// The request's state, if it is live and not busy. Envoy may call back into
/// the VM while a hostcall of this very request is running (a local reply
/// passes through the response callbacks); such a nested call finds the
/// request busy and gets `None`.
fn stream(id: u32) -> Option<Rc<RefCell<Held>>> {
    STATE.with(|s| {
        s.try_borrow()
            .ok()
            .and_then(|s| s.streams.get(&id).cloned())
    })
}

/// Hands `event` to the request's lifecycle and carries out its effects;
/// returns what the hook returns.
fn run(rc: &Rc<RefCell<Held>>, event: Event<'_>) -> u32 {
    let Ok(mut h) = rc.try_borrow_mut() else {
        return CONTINUE;
    };
    let h = &mut *h;
    let plugin = h.plugin.clone();
    let core = &plugin.core;
    h.life.handle(core, event);
    while let Some(effect) = h.life.poll() {
        match effect {
            Effect::Need(need) => {
                let facts = facts(need);
                h.life.handle(core, Event::Facts(facts));
            }
            Effect::Write(writes) => {
                let result = write(&writes);
                h.life.handle(core, Event::Written(result));
            }
            Effect::Reply { status: code, body } => {
                let headers = [("content-type", "application/json")];
                if let Err(s) = host::send_response(code, &headers, body.as_bytes()) {
                    log(
                        Level::Error,
                        &format!("callback-guard: local reply failed ({})", status(s)),
                    );
                }
            }
            Effect::Resume => {
                if let Err(s) = host::continue_request() {
                    log(
                        Level::Error,
                        &format!("callback-guard: cannot resume the request ({})", status(s)),
                    );
                }
            }
            Effect::Local { op, claim, now_s } => {
                let ds = &core.config.duplicate_streams;
                let answer = registry::shared::run(&HostStore, ds, op, &claim, now_s);
                h.life.handle(core, Event::Registry(answer));
            }
            Effect::Etcd { call, timeout_ms } => {
                match send_to_etcd(core, call.path, call.body.as_bytes(), timeout_ms) {
                    Ok(token) => register(token, Callee::Stream(rc.clone())),
                    Err(_) => {
                        let now_ms = host::now_ms().unwrap_or(0);
                        h.life.handle(core, Event::EtcdSendFailed { now_ms });
                    }
                }
            }
            Effect::Count(m) => plugin.count(m),
            Effect::Latency(ms) => host::record(plugin.store_latency, ms),
            Effect::Log(l, line) => log(l, &line),
        }
    }
    match h.life.flow() {
        Flow::Continue => CONTINUE,
        Flow::Pause => PAUSE,
    }
}

/// Reads what the lifecycle needs, each at most one hostcall.
fn facts(need: Need) -> Facts {
    let int = |path: &[&str]| {
        host::property(path)
            .ok()
            .flatten()
            .and_then(|v| wire::decode_int(&v))
    };
    Facts {
        body: if need.body == 0 {
            Ok(Vec::new())
        } else {
            host::buffer(Buffer::HttpRequestBody, 0, need.body).map_err(status)
        },
        source: if need.source { source() } else { None },
        now_ms: if need.now { host::now_ms() } else { None },
        total_size: if need.total_size {
            int(&["request", "total_size"]).and_then(|n| usize::try_from(n).ok())
        } else {
            None
        },
        response_code: if need.response_code {
            int(&["response", "code"])
        } else {
            None
        },
    }
}

fn source() -> Option<IpAddr> {
    let raw = host::property(&["source", "address"]).ok()??;
    let text = std::str::from_utf8(&raw).ok()?;
    text.parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| text.parse::<IpAddr>())
        .ok()
}

/// Carries out the writes; the first failure, if any.
fn write(writes: &[Write]) -> Result<(), String> {
    let mut result = Ok(());
    for w in writes {
        let r = match w {
            Write::Remove(name) => host::remove_header(Map::HttpRequestHeaders, name),
            Write::Add(name, value) => host::add_header(Map::HttpRequestHeaders, name, value),
            Write::Mark => host::set_property(lifecycle::CHECKED_MARK, b"1"),
        };
        if let (Err(s), Ok(())) = (r, &result) {
            result = Err(status(s));
        }
    }
    result
}

fn register(token: u32, callee: Callee) {
    STATE.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            s.calls.push((token, callee));
        }
    });
}

/// `POST path` to the etcd cluster, JSON, with `Grpc-Metadata-hasleader`
/// (without a quorum etcd then answers at once instead of after 7 s).
fn send_to_etcd(
    core: &lifecycle::Plugin,
    path: &str,
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, host::Status> {
    let Some(etcd) = core.config.duplicate_streams.etcd.as_ref() else {
        return Err(host::Status(2));
    };
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
            let held = Held {
                id: context_id,
                plugin: plugin.clone(),
                life: lifecycle::Stream::new(),
            };
            s.streams.insert(context_id, Rc::new(RefCell::new(held)));
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
    log(
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
            log(
                Level::Critical,
                &format!(
                    "callback-guard: cannot read the plugin configuration ({})",
                    status(s)
                ),
            );
            return 0;
        }
    };
    let envoy_level = if host::log_level() <= Level::Debug as u32 {
        Level::Debug
    } else {
        Level::Info
    };
    let Some(core) = lifecycle::Plugin::load(&bytes, &ProcessEnv, envoy_level, &mut log) else {
        return 0;
    };
    if let Some(layout) = core.local_registry() {
        init_registry(&layout);
    }
    #[cfg(feature = "vm-bench")]
    vm_bench::run();
    let ticking = host::set_tick_period_ms(TICK_MS);
    if let Err(s) = ticking {
        log(
            Level::Warn,
            &format!(
                "callback-guard: no tick ({}): a missing allow_on_headers_stop_iteration will not be detected",
                status(s)
            ),
        );
    }
    let store_latency = core
        .config
        .duplicate_streams
        .etcd
        .as_ref()
        .and_then(|_| host::histogram(lifecycle::STORE_LATENCY));
    let plugin = Rc::new(Plugin {
        core,
        counters: Metric::all().map(|m| host::counter(&m.name())).collect(),
        counts: RefCell::new(Counts::default()),
        immediate: ticking.is_err(),
        store_latency,
        live: host::gauge(lifecycle::LIVE_GAUGE),
    });
    STATE.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            s.roots.insert(root_context_id, Some(plugin));
        }
    });
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _num_headers: usize,
    end_of_stream: u32,
) -> u32 {
    let Some(rc) = stream(context_id) else {
        return refuse_unconfigured();
    };
    let (headers, bytes) = host::headers(Map::HttpRequestHeaders).unwrap_or_default();
    #[cfg(feature = "crash-test")]
    if crate::verdict::header(&headers, "x-callback-guard-test-crash") == Some("abort") {
        // A VM crash, as a bug or a V8 out-of-memory would cause.
        std::process::abort();
    }
    let event = Event::Headers {
        headers,
        bytes,
        end_of_stream: end_of_stream != 0,
    };
    run(&rc, event)
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(
    context_id: u32,
    body_size: usize,
    end_of_stream: u32,
) -> u32 {
    let event = Event::Body {
        size: body_size,
        end_of_stream: end_of_stream != 0,
    };
    stream(context_id).map_or(CONTINUE, |rc| run(&rc, event))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, _num_trailers: usize) -> u32 {
    stream(context_id).map_or(CONTINUE, |rc| run(&rc, Event::Trailers))
}

/// A chunk of the upstream's answer body. Exported for SRS's answer rule
/// (a publish goes ahead only on a body of `0` or `{"code":0}`), and as cheap
/// as an export can be for everything else: one lookup of the request and a
/// flag, no hostcall, `Continue`. Only a forwarded SRS start
/// ([`lifecycle::Stream::wants_response_body`]) reads the chunk.
#[no_mangle]
pub extern "C" fn proxy_on_response_body(
    context_id: u32,
    body_size: usize,
    end_of_stream: u32,
) -> u32 {
    let Some(rc) = stream(context_id) else {
        return CONTINUE;
    };
    if body_size == 0 || !rc.try_borrow().is_ok_and(|h| h.life.wants_response_body()) {
        return CONTINUE;
    }
    let chunk = host::buffer(Buffer::HttpResponseBody, 0, body_size).ok();
    let event = Event::ResponseBody {
        chunk: chunk.as_deref(),
        end_of_stream: end_of_stream != 0,
    };
    run(&rc, event)
}

/// The request is over (Envoy's access-log hook, called for every request,
/// answered or reset). The request's state is dropped, unless a call to etcd
/// still holds it. `proxy_on_response_headers`, `proxy_on_done` and
/// `proxy_on_delete` are deliberately not exported (the status is read here,
/// at the end): Envoy skips what a module
/// does not export, and each call into the VM costs about a microsecond.
#[no_mangle]
pub extern "C" fn proxy_on_log(context_id: u32) {
    if let Some(rc) = stream(context_id) {
        run(&rc, Event::End);
    }
    STATE.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            s.streams.remove(&context_id);
        }
    });
}

/// The root context's tick: hands the batched counters to Envoy, sends the
/// etcd start-up check once, and, until a body has reached the filter once,
/// gives the requests that wait for their body a tick (the missing-flag rule).
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
    plugin.flush();
    if let Some(call) = plugin.core.probe() {
        match send_to_etcd(&plugin.core, call.path, call.body.as_bytes(), 5000) {
            Ok(token) => register(token, Callee::Probe),
            // BadArgument: Envoy has no such cluster.
            Err(s) => {
                let (l, line) = plugin.core.probe_failed(s.0 == 2, &status(s));
                log(l, &line);
            }
        }
    }
    read_gauge(&plugin);
    if !plugin.core.wants_stream_ticks() {
        return;
    }
    let waiting: Vec<(u32, Rc<RefCell<Held>>)> = STATE.with(|s| {
        s.try_borrow().map_or_else(
            |_| Vec::new(),
            |s| {
                s.streams
                    .iter()
                    .filter(|(_, h)| {
                        h.try_borrow()
                            .is_ok_and(|h| h.life.awaiting_body() && Rc::ptr_eq(&h.plugin, &plugin))
                    })
                    .map(|(id, h)| (*id, h.clone()))
                    .collect()
            },
        )
    });
    if waiting.is_empty() {
        return;
    }
    for (id, rc) in waiting {
        if host::set_effective_context(id).is_ok() {
            run(&rc, Event::Tick);
        }
    }
    let _ = host::set_effective_context(root_context_id);
}

/// An answer (or the failure) of a call to etcd.
#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    root_context_id: u32,
    token: u32,
    _num_headers: usize,
    body_size: usize,
    _num_trailers: usize,
) {
    let callee = STATE.with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        let at = s.calls.iter().position(|(t, _)| *t == token)?;
        Some(s.calls.swap_remove(at).1)
    });
    let code = host::header_value(Map::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u16>().ok());
    match callee {
        None => {}
        Some(Callee::Probe) => {
            let (l, line) = lifecycle::Plugin::probe_answered(code);
            log(l, &line);
        }
        Some(Callee::Gauge(plugin)) => {
            let body = if body_size == 0 {
                Vec::new()
            } else {
                host::buffer(Buffer::HttpCallResponseBody, 0, body_size).unwrap_or_default()
            };
            plugin.core.gauge_etcd(code.map(|c| (c, &body[..])));
            set_gauge(&plugin);
        }
        Some(Callee::Stream(rc)) => {
            let body = if body_size == 0 {
                Vec::new()
            } else {
                host::buffer(Buffer::HttpCallResponseBody, 0, body_size).unwrap_or_default()
            };
            let now_ms = host::now_ms().unwrap_or(0);
            // A request that is still live is the effective context while
            // it is resumed or answered.
            let live = rc
                .try_borrow()
                .ok()
                .filter(|h| !h.life.ended())
                .map(|h| h.id);
            let entered = live.is_some_and(|id| host::set_effective_context(id).is_ok());
            let answer = code.map(|c| (c, &body[..]));
            run(&rc, Event::Etcd { answer, now_ms });
            if entered {
                let _ = host::set_effective_context(root_context_id);
            }
        }
    }
}

/// The tick's read for the live-reservations gauge (see `registry::gauge`).
fn read_gauge(plugin: &Rc<Plugin>) {
    let now_ms = host::now_ms().unwrap_or(0);
    match plugin.core.gauge_read(now_ms) {
        Read::Nothing => {}
        Read::Buckets(range) => {
            for i in range {
                let bytes = host::shared_get(&plugin.core.bucket_key(i))
                    .ok()
                    .and_then(|(b, _)| b);
                plugin.core.gauge_bucket(i, bytes.as_deref(), now_ms / 1000);
            }
            set_gauge(plugin);
        }
        Read::Etcd(call) => match send_to_etcd(&plugin.core, call.path, call.body.as_bytes(), 1000)
        {
            Ok(token) => register(token, Callee::Gauge(plugin.clone())),
            Err(_) => plugin.core.gauge_etcd(None),
        },
    }
}

fn set_gauge(plugin: &Plugin) {
    if let Some(v) = plugin.core.gauge_value() {
        host::record(plugin.live, v);
    }
}

/// Fail closed when a request arrives for a plugin that is not configured.
fn refuse_unconfigured() -> u32 {
    let (code, body) = lifecycle::unconfigured();
    let _ = host::send_response(
        code,
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    PAUSE
}

/// Creates the registry's buckets before any request (see [`registry::create_buckets`]).
fn init_registry(layout: &Layout) {
    for (key, e) in registry::create_buckets(&HostStore, layout) {
        log(
            Level::Error,
            &format!("callback-guard: cannot create registry bucket {key}: {e}"),
        );
    }
}
