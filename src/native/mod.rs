//! The Envoy dynamic-module host adapter (Envoy >= 1.38, `make native`):
//! turns Envoy's event hooks into [`crate::lifecycle`] events and the
//! lifecycle's effects into Envoy's callbacks. Every rule of a request's life
//! lives in the lifecycle; this file only moves bytes.
//!
//! What is the dynamic module's own:
//! - the module shares Envoy's process: every exported hook runs behind
//!   [`barrier`], so a panic answers its request `500 InternalError` with one
//!   critical log line and Envoy goes on serving, instead of aborting;
//! - the headers are held with `StopIteration` and the body buffered with
//!   `StopIterationAndBuffer`: Envoy's own filter semantics, so no flag and no
//!   tick are needed (the wasm's missing-flag rule cannot happen here);
//! - the one-Envoy registry is a process-wide store ([`store`]) with the same
//!   rules and compare-and-swap semantics as proxy-wasm shared data. It lives
//!   as long as the Envoy process, across configuration updates;
//! - etcd calls go out as the filter's own callouts while the request lives.
//!   Envoy cancels those when the request ends, so work that must outlive it
//!   (a start given back after the upstream refused it, an op whose request
//!   went away) moves to the filter configuration, whose callouts run on
//!   Envoy's main thread ([`Orphans`]);
//! - counters are Envoy's, incremented at once; those of such detached work
//!   too on Envoy >= 1.40 (its config-level increment, looked up at run
//!   time), while on 1.38 they wait for the next request's hook
//!   ([`Config::backlog`]).

mod abi;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use abi::{EnvoyBuffer, EnvoyHeader, ModuleBuffer, ModuleHeader};

use crate::config::ProcessEnv;
use crate::lifecycle::{self, Counts, Effect, Event, Facts, Flow, Level, Metric, Need, Write};
use crate::registry::etcd::Call;
use crate::registry::gauge::Read;
use crate::registry::{self, MemoryStore, SharedStore};
use crate::reply::Code;

/// The filter-state key of `filter_state_mark`: the wasm's, so that one RBAC
/// rule (`wasm.x-callback-guard-checked`) serves both builds.
const MARK_KEY: &str = "wasm.x-callback-guard-checked";

/// The one-Envoy registry: one store for the whole process, shared by every
/// worker and every configuration (as shared data is per `vm_id`).
fn store() -> &'static MemoryStore {
    static STORE: OnceLock<MemoryStore> = OnceLock::new();
    STORE.get_or_init(MemoryStore::new)
}

fn log(level: Level, line: &str) {
    // SAFETY: the buffer describes a live &str for the duration of the call.
    unsafe {
        abi::envoy_dynamic_module_callback_log(level as u32, ModuleBuffer::of(line.as_bytes()))
    }
}

fn now_ms() -> Option<u64> {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

/// Runs an exported hook's body; a panic in it is caught here (the module
/// shares Envoy's process: an unwinding panic through the C boundary would
/// abort Envoy). `on_panic` then gets the hook's name and gives the answer.
fn barrier<T>(hook: &str, f: impl FnOnce() -> T, on_panic: impl FnOnce(&str) -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => on_panic(hook),
    }
}

// ---- configuration ------------------------------------------------------------

/// One filter configuration and its Envoy resources.
struct Config {
    core: lifecycle::Plugin,
    envoy: abi::ConfigEnvoy,
    /// Counter ids by [`Metric::index`].
    counters: Vec<Option<usize>>,
    latency: Option<usize>,
    /// The live-reservations gauge, and the value last handed to Envoy.
    live: Option<usize>,
    live_set: AtomicU64,
    /// Increments of work that no request carries any more, for the next hook
    /// (Envoy 1.38, which has no config-level increment).
    backlog: Mutex<Counts>,
    backlogged: AtomicBool,
    /// Main-thread events for detached work.
    scheduler: abi::ConfigScheduler,
    orphans: Mutex<Orphans>,
    next_event: AtomicU64,
}

// SAFETY: the raw pointers are Envoy's configuration and its scheduler, which
// Envoy lets any thread hold; they are used on the main thread only (the
// scheduler's commit, which is thread-safe, excepted).
unsafe impl Send for Config {}
// SAFETY: as above; all mutable state is behind atomics or mutexes.
unsafe impl Sync for Config {}

/// Main-thread events: 0 is the start-up check of the etcd cluster, this one
/// the gauge's etcd count; the others are detached requests.
const GAUGE_EVENT: u64 = u64::MAX;

/// Requests that ended with etcd work left: waiting for the main thread
/// (by scheduler event id), or for a configuration callout's answer (by
/// callout id); and the main thread's own calls.
#[derive(Default)]
struct Orphans {
    queued: HashMap<u64, (lifecycle::Stream, Option<Call>, u32)>,
    in_flight: HashMap<u64, Waiting>,
    /// The gauge's etcd count, for the main thread to send.
    gauge_call: Option<Call>,
}

/// What a configuration callout answers to.
enum Waiting {
    /// The start-up check.
    Probe,
    /// The gauge's etcd count.
    Gauge,
    /// A request that ended.
    Life(Box<lifecycle::Stream>),
}

impl Config {
    fn count(&self, filter: Option<abi::FilterEnvoy>, m: Metric) {
        match (filter, abi::config_increment_counter()) {
            (Some(f), _) => self.increment(f, m.index(), 1),
            // Envoy >= 1.40, on the main thread: at once.
            (None, Some(increment)) => {
                if let Some(Some(id)) = self.counters.get(m.index()) {
                    // SAFETY: this configuration's Envoy pointer, on the main thread.
                    unsafe { increment(self.envoy, *id, std::ptr::null(), 0, 1) };
                }
            }
            (None, None) => {
                if let Ok(mut b) = self.backlog.lock() {
                    b.bump(m);
                    self.backlogged.store(true, Ordering::Release);
                }
            }
        }
    }

    fn increment(&self, filter: abi::FilterEnvoy, index: usize, n: u64) {
        if let Some(Some(id)) = self.counters.get(index) {
            // SAFETY: `filter` is the live filter of the current hook.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                    filter,
                    *id,
                    std::ptr::null(),
                    0,
                    n,
                );
            }
        }
    }

    /// Hands the backlog to Envoy through the filter of the current hook.
    fn flush_backlog(&self, filter: abi::FilterEnvoy) {
        if !self.backlogged.swap(false, Ordering::AcqRel) {
            return;
        }
        let taken: Vec<(usize, u64)> = match self.backlog.lock() {
            Ok(mut b) => b.take().collect(),
            Err(_) => return,
        };
        for (i, n) in taken {
            self.increment(filter, i, n);
        }
    }

    /// The live-reservations gauge's read (at most once per
    /// `lifecycle::GAUGE_PERIOD_MS`, whichever request comes), and its value
    /// handed to Envoy through the filter of the current hook when it moved.
    fn gauge(&self, filter: abi::FilterEnvoy) {
        let Some(now) = now_ms() else {
            return;
        };
        match self.core.gauge_read(now) {
            Read::Nothing => {}
            Read::Buckets(range) => {
                for i in range {
                    let bytes = store()
                        .get(&self.core.bucket_key(i))
                        .ok()
                        .and_then(|(b, _)| b);
                    self.core.gauge_bucket(i, bytes.as_deref(), now / 1000);
                }
            }
            // Not the request's callout (Envoy cancels those with it): the
            // configuration's, on the main thread.
            Read::Etcd(call) => {
                if let Ok(mut o) = self.orphans.lock() {
                    o.gauge_call = Some(call);
                }
                // SAFETY: the scheduler lives as long as this configuration.
                unsafe {
                    abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                        self.scheduler,
                        GAUGE_EVENT,
                    )
                }
            }
        }
        if let (Some(v), Some(id)) = (self.core.gauge_value(), self.live) {
            if self.live_set.swap(v, Ordering::AcqRel) != v {
                // SAFETY: the live filter of the current hook.
                unsafe {
                    abi::envoy_dynamic_module_callback_http_filter_set_gauge(
                        filter,
                        id,
                        std::ptr::null(),
                        0,
                        v,
                    );
                }
            }
        }
    }

    /// Queues detached work for the main thread.
    fn detach(&self, life: lifecycle::Stream, call: Option<Call>, timeout_ms: u32) {
        let id = self.next_event.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut o) = self.orphans.lock() {
            o.queued.insert(id, (life, call, timeout_ms));
        }
        // SAFETY: the scheduler lives as long as this configuration; commit is thread-safe.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                self.scheduler,
                id,
            )
        }
    }

    /// On the main thread: sends an etcd call as the configuration's callout.
    fn config_callout(&self, call: &Call, timeout_ms: u32) -> Result<u64, u32> {
        let send = abi::envoy_dynamic_module_callback_http_filter_config_http_callout;
        // SAFETY: this configuration's Envoy pointer, on the main thread.
        unsafe { etcd_callout(&self.core, call, timeout_ms, self.envoy, send) }
    }

    /// On the main thread: carries out the effects of detached work.
    fn drain_orphan(&self, mut life: lifecycle::Stream) {
        while let Some(effect) = life.poll() {
            match effect {
                Effect::Count(m) => self.count(None, m),
                Effect::Log(l, line) => log(l, &line),
                Effect::Local { op, claim, now_s } => {
                    let ds = &self.core.config.duplicate_streams;
                    let answer = registry::shared::run(store(), ds, op, &claim, now_s);
                    life.handle(&self.core, Event::Registry(answer));
                }
                Effect::Etcd { call, timeout_ms } => match self.config_callout(&call, timeout_ms) {
                    Ok(id) => {
                        if let Ok(mut o) = self.orphans.lock() {
                            o.in_flight.insert(id, Waiting::Life(Box::new(life)));
                        }
                        return;
                    }
                    Err(_) => {
                        let now_ms = now_ms().unwrap_or(0);
                        life.handle(&self.core, Event::EtcdSendFailed { now_ms });
                    }
                },
                Effect::Need(_) => {
                    // An ended request needs nothing more than the clock,
                    // which its events carry.
                    life.handle(
                        &self.core,
                        Event::Facts(Facts {
                            now_ms: now_ms(),
                            ..Facts::default()
                        }),
                    );
                }
                // Nothing of an ended request is left to write, answer or resume;
                // its latency has no filter to record it.
                Effect::Write(_) | Effect::Reply { .. } | Effect::Resume | Effect::Latency(_) => {}
            }
        }
    }
}

/// `POST path` to the etcd cluster, JSON, with `Grpc-Metadata-hasleader`
/// (without a quorum etcd then answers at once instead of after 7 s), with
/// `send`: the filter's callout or the configuration's, on `envoy`. The
/// callout id, or Envoy's init result.
///
/// # Safety
/// `envoy` must be the live Envoy object `send` is for, on its thread.
unsafe fn etcd_callout(
    core: &lifecycle::Plugin,
    call: &Call,
    timeout_ms: u32,
    envoy: *mut std::ffi::c_void,
    send: abi::Callout,
) -> Result<u64, u32> {
    let Some(etcd) = core.config.duplicate_streams.etcd.as_ref() else {
        return Err(abi::CALLOUT_CLUSTER_NOT_FOUND);
    };
    let headers = etcd_headers(call.path, &etcd.authority);
    let mut id = 0u64;
    // Every buffer lives until the call returns; Envoy copies them.
    let r = send(
        envoy,
        &mut id,
        ModuleBuffer::of(etcd.cluster.as_bytes()),
        headers.as_ptr(),
        headers.len(),
        ModuleBuffer::of(call.body.as_bytes()),
        u64::from(timeout_ms),
    );
    if r == abi::CALLOUT_SUCCESS {
        Ok(id)
    } else {
        Err(r)
    }
}

fn etcd_headers<'a>(path: &'a str, authority: &'a str) -> [ModuleHeader; 5] {
    [
        ModuleHeader::of(":method", "POST"),
        ModuleHeader::of(":path", path),
        ModuleHeader::of("host", authority),
        ModuleHeader::of("content-type", "application/json"),
        ModuleHeader::of("grpc-metadata-hasleader", "true"),
    ]
}

fn define_gauge(config: abi::ConfigEnvoy, name: &str) -> Option<usize> {
    let mut id = 0usize;
    // SAFETY: the name lives for the call; `id` is written by Envoy.
    let r = unsafe {
        abi::envoy_dynamic_module_callback_http_filter_config_define_gauge(
            config,
            ModuleBuffer::of(name.as_bytes()),
            std::ptr::null(),
            0,
            &mut id,
        )
    };
    (r == abi::METRICS_SUCCESS).then_some(id)
}

fn define(config: abi::ConfigEnvoy, name: &str, histogram: bool) -> Option<usize> {
    let mut id = 0usize;
    // SAFETY: the name lives for the call; `id` is written by Envoy.
    let r = unsafe {
        let n = ModuleBuffer::of(name.as_bytes());
        if histogram {
            abi::envoy_dynamic_module_callback_http_filter_config_define_histogram(
                config,
                n,
                std::ptr::null(),
                0,
                &mut id,
            )
        } else {
            abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                config,
                n,
                std::ptr::null(),
                0,
                &mut id,
            )
        }
    };
    (r == abi::METRICS_SUCCESS).then_some(id)
}

// ---- one request ---------------------------------------------------------------

/// One request: its configuration, its Envoy filter and its lifecycle.
struct Filter {
    config: Arc<Config>,
    envoy: abi::FilterEnvoy,
    life: lifecycle::Stream,
    /// The etcd callout in flight for this request.
    callout: Option<u64>,
    /// A local reply was sent (a panic's 500 must not be a second one).
    replied: bool,
    /// A panic stopped this request: later hooks let it be.
    broken: bool,
}

impl Filter {
    /// Hands `event` to the lifecycle and carries out its effects.
    fn run(&mut self, event: Event<'_>) -> Flow {
        let config = self.config.clone();
        let core = &config.core;
        config.flush_backlog(self.envoy);
        config.gauge(self.envoy);
        self.life.handle(core, event);
        while let Some(effect) = self.life.poll() {
            match effect {
                Effect::Need(need) => {
                    let facts = self.facts(need);
                    self.life.handle(core, Event::Facts(facts));
                }
                Effect::Write(writes) => {
                    let result = self.write(&writes);
                    self.life.handle(core, Event::Written(result));
                }
                Effect::Reply { status, body } => self.reply(status, &body),
                // SAFETY: the live filter of the current hook.
                Effect::Resume => unsafe {
                    abi::envoy_dynamic_module_callback_http_filter_continue_decoding(self.envoy)
                },
                Effect::Local { op, claim, now_s } => {
                    let ds = &core.config.duplicate_streams;
                    let answer = registry::shared::run(store(), ds, op, &claim, now_s);
                    self.life.handle(core, Event::Registry(answer));
                }
                Effect::Etcd { call, timeout_ms } => {
                    if self.life.ended() {
                        // Envoy cancels a filter's callouts when its request
                        // ends: the configuration sends this one.
                        let life = std::mem::take(&mut self.life);
                        config.detach(life, Some(call), timeout_ms);
                        return Flow::Continue;
                    }
                    match self.callout(core, &call, timeout_ms) {
                        Ok(id) => self.callout = Some(id),
                        Err(_) => {
                            let now_ms = now_ms().unwrap_or(0);
                            self.life.handle(core, Event::EtcdSendFailed { now_ms });
                        }
                    }
                }
                Effect::Count(m) => config.count(Some(self.envoy), m),
                Effect::Latency(ms) => {
                    if let Some(id) = config.latency {
                        // SAFETY: the live filter of the current hook.
                        unsafe {
                            abi::envoy_dynamic_module_callback_http_filter_record_histogram_value(
                                self.envoy,
                                id,
                                std::ptr::null(),
                                0,
                                ms,
                            );
                        }
                    }
                }
                Effect::Log(l, line) => log(l, &line),
            }
        }
        self.life.flow()
    }

    fn callout(&self, core: &lifecycle::Plugin, call: &Call, timeout_ms: u32) -> Result<u64, u32> {
        let send = abi::envoy_dynamic_module_callback_http_filter_http_callout;
        // SAFETY: the live filter of the current hook.
        unsafe { etcd_callout(core, call, timeout_ms, self.envoy, send) }
    }

    fn reply(&mut self, status: u16, body: &str) {
        let headers = [ModuleHeader::of("content-type", "application/json")];
        self.replied = true;
        // SAFETY: the live filter of the current hook; buffers live for the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.envoy,
                u32::from(status),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(body.as_bytes()),
                ModuleBuffer::of(b"callback_guard"),
            );
        }
    }

    /// Reads what the lifecycle needs.
    fn facts(&self, need: Need) -> Facts {
        Facts {
            body: if need.body == 0 {
                Ok(Vec::new())
            } else {
                Ok(self.body(need.body))
            },
            source: if need.source { self.source() } else { None },
            now_ms: if need.now { now_ms() } else { None },
            total_size: None,
            response_code: if need.response_code {
                self.int(abi::ATTRIBUTE_RESPONSE_CODE)
                    .and_then(|v| i64::try_from(v).ok())
            } else {
                None
            },
        }
    }

    fn int(&self, attribute: u32) -> Option<u64> {
        let mut v = 0u64;
        // SAFETY: the live filter of the current hook; Envoy writes one u64.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_int(
                self.envoy, attribute, &mut v,
            )
        };
        ok.then_some(v)
    }

    fn source(&self) -> Option<IpAddr> {
        let mut b = EnvoyBuffer::NULL;
        // SAFETY: the live filter; the buffer is Envoy's, valid for this hook.
        let text = unsafe {
            if !abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.envoy,
                abi::ATTRIBUTE_SOURCE_ADDRESS,
                &mut b,
            ) {
                return None;
            }
            std::str::from_utf8(b.bytes()).ok()?.to_string()
        };
        text.parse::<SocketAddr>()
            .map(|s| s.ip())
            .or_else(|_| text.parse::<IpAddr>())
            .ok()
    }

    /// Bytes buffered so far plus the chunk of the current body hook.
    fn body_size(&self) -> usize {
        // SAFETY: the live filter of the current hook.
        unsafe {
            abi::envoy_dynamic_module_callback_http_get_body_size(
                self.envoy,
                abi::BUFFERED_REQUEST_BODY,
            ) + abi::envoy_dynamic_module_callback_http_get_body_size(
                self.envoy,
                abi::RECEIVED_REQUEST_BODY,
            )
        }
    }

    /// The first `n` bytes of the body: the buffered chunks, then the
    /// current hook's (received only inside a body hook).
    fn body(&self, n: usize) -> Vec<u8> {
        let mut out = self.chunks(abi::BUFFERED_REQUEST_BODY);
        out.extend_from_slice(&self.chunks(abi::RECEIVED_REQUEST_BODY));
        out.truncate(n);
        out
    }

    /// The bytes of one of Envoy's bodies (`abi::*_BODY`), for this hook.
    fn chunks(&self, kind: u32) -> Vec<u8> {
        let mut out = Vec::new();
        // SAFETY: the live filter; the chunk array is sized by Envoy's own
        // count, and the chunks stay valid for this hook.
        unsafe {
            let count =
                abi::envoy_dynamic_module_callback_http_get_body_chunks_size(self.envoy, kind);
            if count == 0 {
                return out;
            }
            let mut chunks = vec![EnvoyBuffer::NULL; count];
            if abi::envoy_dynamic_module_callback_http_get_body_chunks(
                self.envoy,
                kind,
                chunks.as_mut_ptr(),
            ) {
                for c in chunks {
                    out.extend_from_slice(c.bytes());
                }
            }
        }
        out
    }

    /// All request headers, lossily UTF-8 (as the wasm reads them), and the
    /// bytes of their names and values.
    fn headers(&self) -> (Vec<(String, String)>, usize) {
        // SAFETY: the live filter; the array is sized by Envoy's own count and
        // the buffers stay valid for this hook.
        unsafe {
            let n = abi::envoy_dynamic_module_callback_http_get_headers_size(
                self.envoy,
                abi::REQUEST_HEADER,
            );
            let empty = EnvoyHeader {
                key_ptr: std::ptr::null(),
                key_length: 0,
                value_ptr: std::ptr::null(),
                value_length: 0,
            };
            let mut raw = vec![empty; n];
            if n == 0
                || !abi::envoy_dynamic_module_callback_http_get_headers(
                    self.envoy,
                    abi::REQUEST_HEADER,
                    raw.as_mut_ptr(),
                )
            {
                return (Vec::new(), 0);
            }
            let mut bytes = 0;
            let headers = raw
                .into_iter()
                .map(|h| {
                    let k = EnvoyBuffer {
                        ptr: h.key_ptr,
                        length: h.key_length,
                    }
                    .bytes();
                    let v = EnvoyBuffer {
                        ptr: h.value_ptr,
                        length: h.value_length,
                    }
                    .bytes();
                    bytes += k.len() + v.len();
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            (headers, bytes)
        }
    }

    /// Carries out the writes; the first failure, if any.
    fn write(&self, writes: &[Write]) -> Result<(), String> {
        let mut result = Ok(());
        for w in writes {
            // SAFETY: the live filter of the current hook; buffers live for the call.
            let ok = unsafe {
                match w {
                    Write::Remove(name) => abi::envoy_dynamic_module_callback_http_set_header(
                        self.envoy,
                        abi::REQUEST_HEADER,
                        ModuleBuffer::of(name.as_bytes()),
                        ModuleBuffer::NULL,
                    ),
                    Write::Add(name, value) => abi::envoy_dynamic_module_callback_http_add_header(
                        self.envoy,
                        abi::REQUEST_HEADER,
                        ModuleBuffer::of(name.as_bytes()),
                        ModuleBuffer::of(value.as_bytes()),
                    ),
                    Write::Mark => abi::envoy_dynamic_module_callback_http_set_filter_state_bytes(
                        self.envoy,
                        ModuleBuffer::of(MARK_KEY.as_bytes()),
                        ModuleBuffer::of(b"1"),
                    ),
                }
            };
            if !ok && result.is_ok() {
                result = Err("refused by Envoy".to_string());
            }
        }
        result
    }

    /// After a panic in one of this request's hooks: one critical line, and
    /// the request answered `500 InternalError` unless it was answered already.
    fn broke(&mut self, hook: &str) {
        self.broken = true;
        log(
            Level::Critical,
            &format!("callback-guard: a bug stopped a request (panic in {hook}); it is answered InternalError and Envoy goes on serving"),
        );
        if !self.replied {
            let code = Code::InternalError;
            let body = crate::reply::body(code, "callback-guard failed on this request", "");
            self.reply(code.status(), &body);
        }
    }
}

/// The filter of a hook. `module` is what `on_http_filter_new` returned.
///
/// # Safety
/// `module` must be a live `Filter` made by `on_http_filter_new`, used by one
/// thread at a time (Envoy calls a filter's hooks on its worker only).
unsafe fn filter<'a>(module: abi::FilterModule) -> Option<&'a mut Filter> {
    (module as *mut Filter).as_mut()
}

/// Runs a request hook behind the barrier: `f` gives the flow, mapped to
/// the hook's status by `status` (Continue, then Pause).
fn request_hook(
    name: &str,
    envoy: abi::FilterEnvoy,
    module: abi::FilterModule,
    status: (u32, u32),
    f: impl FnOnce(&mut Filter) -> Flow,
) -> u32 {
    // SAFETY: Envoy passes the pointer `on_http_filter_new` returned.
    let Some(filter) = (unsafe { filter(module) }) else {
        return status.0;
    };
    if filter.broken {
        return status.0;
    }
    filter.envoy = envoy;
    let flow = match catch_unwind(AssertUnwindSafe(|| f(&mut *filter))) {
        Ok(flow) => flow,
        Err(_) => {
            filter.broke(name);
            Flow::Pause
        }
    };
    match flow {
        Flow::Continue => status.0,
        Flow::Pause => status.1,
    }
}

// ---- exported hooks ------------------------------------------------------------

/// Loaded: the ABI version this module is written against.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    barrier(
        "on_program_init",
        || {
            log(
                Level::Info,
                &format!("callback-guard {} starting", crate::VERSION),
            )
        },
        |_| {},
    );
    abi::ABI_VERSION.as_ptr()
}

/// A filter configuration: the plugin JSON, exactly as the wasm's. `null`
/// (with one critical line saying why) makes Envoy refuse the filter.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy: abi::ConfigEnvoy,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> abi::ConfigModule {
    barrier(
        "on_http_filter_config_new",
        || {
            // SAFETY: Envoy's buffer, valid for this hook.
            let bytes = unsafe { config.bytes() };
            // SAFETY: a plain query.
            let debug =
                unsafe { abi::envoy_dynamic_module_callback_log_enabled(Level::Debug as u32) };
            let level = if debug { Level::Debug } else { Level::Info };
            let Some(core) = lifecycle::Plugin::load(bytes, &ProcessEnv, level, &mut log) else {
                return std::ptr::null();
            };
            if let Some(layout) = core.local_registry() {
                for (key, e) in registry::create_buckets(store(), &layout) {
                    log(
                        Level::Error,
                        &format!("callback-guard: cannot create registry bucket {key}: {e}"),
                    );
                }
            }
            let latency = core
                .config
                .duplicate_streams
                .etcd
                .as_ref()
                .and_then(|_| define(envoy, lifecycle::STORE_LATENCY, true));
            // SAFETY: Envoy's configuration pointer, on the main thread.
            let scheduler = unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(envoy)
            };
            let probe = core.etcd().is_some();
            let c = Arc::new(Config {
                counters: Metric::all()
                    .map(|m| define(envoy, &m.name(), false))
                    .collect(),
                core,
                envoy,
                latency,
                live: define_gauge(envoy, lifecycle::LIVE_GAUGE),
                live_set: AtomicU64::new(u64::MAX),
                backlog: Mutex::new(Counts::default()),
                backlogged: AtomicBool::new(false),
                scheduler,
                orphans: Mutex::new(Orphans::default()),
                next_event: AtomicU64::new(1),
            });
            if probe {
                // The start-up check, once the main thread runs its loop (the
                // clusters are there by then).
                // SAFETY: the scheduler just made.
                unsafe {
                    abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                        scheduler, 0,
                    )
                }
            }
            Arc::into_raw(c) as abi::ConfigModule
        },
        |hook| {
            log(
                Level::Critical,
                &format!("callback-guard: a bug stopped the configuration (panic in {hook}): the filter is refused"),
            );
            std::ptr::null()
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: abi::ConfigModule) {
    barrier(
        "on_http_filter_config_destroy",
        || {
            if config.is_null() {
                return;
            }
            // SAFETY: the pointer `Arc::into_raw` made in config_new, given back once.
            let c = unsafe { Arc::from_raw(config as *const Config) };
            // SAFETY: the scheduler of this configuration, deleted once.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(c.scheduler)
            };
        },
        |_| {},
    )
}

/// Main thread: detached etcd work, or the start-up check (event 0).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _envoy: abi::ConfigEnvoy,
    config: abi::ConfigModule,
    event_id: u64,
) {
    config_hook("on_http_filter_config_scheduled", config, |c| {
        if event_id == GAUGE_EVENT {
            let call = c.orphans.lock().ok().and_then(|mut o| o.gauge_call.take());
            if let Some(call) = call {
                match c.config_callout(&call, 1000) {
                    Ok(id) => {
                        if let Ok(mut o) = c.orphans.lock() {
                            o.in_flight.insert(id, Waiting::Gauge);
                        }
                    }
                    Err(_) => c.core.gauge_etcd(None),
                }
            }
            return;
        }
        if event_id == 0 {
            if let Some(call) = c.core.probe() {
                match c.config_callout(&call, 5000) {
                    Ok(id) => {
                        if let Ok(mut o) = c.orphans.lock() {
                            o.in_flight.insert(id, Waiting::Probe);
                        }
                    }
                    Err(r) => {
                        let detail = format!("callout result {r}");
                        let (l, line) = c
                            .core
                            .probe_failed(r == abi::CALLOUT_CLUSTER_NOT_FOUND, &detail);
                        log(l, &line);
                    }
                }
            }
            return;
        }
        let queued = c
            .orphans
            .lock()
            .ok()
            .and_then(|mut o| o.queued.remove(&event_id));
        let Some((mut life, call, timeout_ms)) = queued else {
            return;
        };
        match call {
            // An etcd call to send for it.
            Some(call) => match c.config_callout(&call, timeout_ms) {
                Ok(id) => {
                    if let Ok(mut o) = c.orphans.lock() {
                        o.in_flight.insert(id, Waiting::Life(Box::new(life)));
                    }
                    return;
                }
                Err(_) => {
                    let now_ms = now_ms().unwrap_or(0);
                    life.handle(&c.core, Event::EtcdSendFailed { now_ms });
                }
            },
            // Its callout died with the request: send the same call again.
            None => {
                let now_ms = now_ms().unwrap_or(0);
                life.handle(&c.core, Event::EtcdResend { now_ms });
            }
        }
        c.drain_orphan(life);
    });
}

/// Main thread: the answer to a configuration callout.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _envoy: abi::ConfigEnvoy,
    config: abi::ConfigModule,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    config_hook("on_http_filter_config_http_callout_done", config, |c| {
        let waiting = c
            .orphans
            .lock()
            .ok()
            .and_then(|mut o| o.in_flight.remove(&callout_id));
        // SAFETY: Envoy's arrays, valid for this hook.
        let (status, body) = unsafe { answer(result, headers, headers_size, chunks, chunks_size) };
        match waiting {
            None => {}
            Some(Waiting::Probe) => {
                let (l, line) = lifecycle::Plugin::probe_answered(status);
                log(l, &line);
            }
            // Handed to Envoy at the next request's hook ([`Config::gauge`]).
            Some(Waiting::Gauge) => c.core.gauge_etcd(status.map(|s| (s, &body[..]))),
            Some(Waiting::Life(life)) => {
                let mut life = *life;
                let now_ms = now_ms().unwrap_or(0);
                let answer = status.map(|s| (s, &body[..]));
                life.handle(&c.core, Event::Etcd { answer, now_ms });
                c.drain_orphan(life);
            }
        }
    });
}

/// Runs a configuration hook (main thread) behind the barrier, with the
/// live configuration.
fn config_hook(name: &str, config: abi::ConfigModule, f: impl FnOnce(&Config)) {
    barrier(
        name,
        || {
            // SAFETY: the live configuration (Envoy destroys it after its
            // events and callouts).
            if let Some(c) = unsafe { (config as *const Config).as_ref() } {
                f(c);
            }
        },
        |hook| {
            log(
                Level::Critical,
                &format!("callback-guard: a bug stopped detached registry work (panic in {hook})"),
            )
        },
    );
}

/// The status and body of a callout's answer (`None`: no answer).
///
/// # Safety
/// The arrays must be Envoy's, of the given sizes (or null).
unsafe fn answer(
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) -> (Option<u16>, Vec<u8>) {
    if result != abi::CALLOUT_RESULT_SUCCESS || headers.is_null() {
        return (None, Vec::new());
    }
    let headers = std::slice::from_raw_parts(headers, headers_size);
    let status = headers.iter().find_map(|h| {
        let k = EnvoyBuffer {
            ptr: h.key_ptr,
            length: h.key_length,
        }
        .bytes();
        (k == b":status").then(|| {
            let v = EnvoyBuffer {
                ptr: h.value_ptr,
                length: h.value_length,
            }
            .bytes();
            std::str::from_utf8(v).ok()?.parse::<u16>().ok()
        })?
    });
    let mut body = Vec::new();
    if !chunks.is_null() {
        for c in std::slice::from_raw_parts(chunks, chunks_size) {
            body.extend_from_slice(c.bytes());
        }
    }
    (status, body)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: abi::ConfigModule,
    envoy: abi::FilterEnvoy,
) -> abi::FilterModule {
    barrier(
        "on_http_filter_new",
        || {
            if config.is_null() {
                return std::ptr::null();
            }
            // SAFETY: the live configuration made by config_new; one more owner.
            let config = unsafe {
                Arc::increment_strong_count(config as *const Config);
                Arc::from_raw(config as *const Config)
            };
            let f = Box::new(Filter {
                config,
                envoy,
                life: lifecycle::Stream::new(),
                callout: None,
                replied: false,
                broken: false,
            });
            Box::into_raw(f) as abi::FilterModule
        },
        |_| std::ptr::null(),
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: abi::FilterEnvoy,
    module: abi::FilterModule,
    end_of_stream: bool,
) -> u32 {
    let status = (abi::HEADERS_CONTINUE, abi::HEADERS_STOP_ITERATION);
    request_hook(
        "on_http_filter_request_headers",
        envoy,
        module,
        status,
        |f| {
            let (headers, bytes) = f.headers();
            #[cfg(feature = "crash-test")]
            if crate::verdict::header(&headers, "x-callback-guard-test-crash") == Some("abort") {
                // A bug, as the barrier must survive it.
                #[allow(clippy::panic)]
                {
                    panic!("crash-test: x-callback-guard-test-crash");
                }
            }
            f.run(Event::Headers {
                headers,
                bytes,
                end_of_stream,
            })
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: abi::FilterEnvoy,
    module: abi::FilterModule,
    end_of_stream: bool,
) -> u32 {
    let status = (abi::BODY_CONTINUE, abi::BODY_STOP_AND_BUFFER);
    request_hook("on_http_filter_request_body", envoy, module, status, |f| {
        let size = f.body_size();
        f.run(Event::Body {
            size,
            end_of_stream,
        })
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy: abi::FilterEnvoy,
    module: abi::FilterModule,
) -> u32 {
    let status = (abi::TRAILERS_CONTINUE, abi::TRAILERS_STOP_ITERATION);
    request_hook(
        "on_http_filter_request_trailers",
        envoy,
        module,
        status,
        |f| f.run(Event::Trailers),
    )
}

/// A filter callout's answer (etcd), on the request's worker.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    envoy: abi::FilterEnvoy,
    module: abi::FilterModule,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    let status = (0, 0);
    request_hook(
        "on_http_filter_http_callout_done",
        envoy,
        module,
        status,
        |f| {
            if f.callout != Some(callout_id) {
                return Flow::Continue;
            }
            f.callout = None;
            // SAFETY: Envoy's arrays, valid for this hook.
            let (code, body) =
                unsafe { answer(result, headers, headers_size, chunks, chunks_size) };
            let now_ms = now_ms().unwrap_or(0);
            let answer = code.map(|s| (s, &body[..]));
            f.run(Event::Etcd { answer, now_ms })
        },
    );
}

/// The request is over (before Envoy's access log): a start's reservation is
/// kept or given back; an etcd op still in flight moves to the configuration.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    envoy: abi::FilterEnvoy,
    module: abi::FilterModule,
) {
    let status = (0, 0);
    request_hook(
        "on_http_filter_stream_complete",
        envoy,
        module,
        status,
        |f| {
            let in_flight = f.callout.take().is_some();
            let flow = f.run(Event::End);
            if in_flight && f.life.busy() {
                // Its callout dies with the request: the configuration sends the
                // same call again and takes the answer.
                let life = std::mem::take(&mut f.life);
                f.config.detach(life, None, 0);
            }
            flow
        },
    );
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: abi::FilterModule) {
    barrier(
        "on_http_filter_destroy",
        || {
            if !module.is_null() {
                // SAFETY: the pointer `Box::into_raw` made in filter_new, given back once.
                drop(unsafe { Box::from_raw(module as *mut Filter) });
            }
        },
        |_| {},
    )
}

// Hooks Envoy resolves when it loads an HTTP filter module; callback-guard
// has nothing to do in them.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _envoy: abi::FilterEnvoy,
    _module: abi::FilterModule,
    _end_of_stream: bool,
) -> u32 {
    0
}

/// The upstream's answer body: read only while the lifecycle wants it (a
/// forwarded SRS start, whose acceptance reads the body); every other
/// answer costs one check.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: abi::FilterEnvoy,
    module: abi::FilterModule,
    end_of_stream: bool,
) -> u32 {
    let status = (abi::RESPONSE_BODY_CONTINUE, abi::RESPONSE_BODY_CONTINUE);
    request_hook("on_http_filter_response_body", envoy, module, status, |f| {
        if !f.life.wants_response_body() {
            return Flow::Continue;
        }
        let chunk = f.chunks(abi::RECEIVED_RESPONSE_BODY);
        f.run(Event::ResponseBody {
            chunk: Some(&chunk),
            end_of_stream,
        })
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _envoy: abi::FilterEnvoy,
    _module: abi::FilterModule,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _envoy: abi::FilterEnvoy,
    _module: abi::FilterModule,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const u8 {
    // Per-route configuration is not used: any non-null pointer accepts it.
    abi::ABI_VERSION.as_ptr()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_config: *const u8) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _envoy: abi::FilterEnvoy,
    _module: abi::FilterModule,
    _response_code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: abi::FilterEnvoy,
    _module: abi::FilterModule,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: abi::FilterEnvoy,
    _module: abi::FilterModule,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: abi::FilterEnvoy,
    _module: abi::FilterModule,
    _stream_id: u64,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: abi::FilterEnvoy,
    _module: abi::FilterModule,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: abi::FilterEnvoy,
    _module: abi::FilterModule,
    _stream_id: u64,
    _trailers: *const EnvoyHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: abi::FilterEnvoy,
    _module: abi::FilterModule,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: abi::FilterEnvoy,
    _module: abi::FilterModule,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _envoy: abi::ConfigEnvoy,
    _config: abi::ConfigModule,
    _stream_id: u64,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _envoy: abi::ConfigEnvoy,
    _config: abi::ConfigModule,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _envoy: abi::ConfigEnvoy,
    _config: abi::ConfigModule,
    _stream_id: u64,
    _trailers: *const EnvoyHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _envoy: abi::ConfigEnvoy,
    _config: abi::ConfigModule,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _envoy: abi::ConfigEnvoy,
    _config: abi::ConfigModule,
    _stream_id: u64,
    _reason: u32,
) {
}
