//! End-to-end harness: a real Envoy with the built filter, in front of the
//! project's recording receiver, spoken to over real HTTP on 127.0.0.1.
//!
//! - Envoy comes from `ENVOY_BIN`, else `.venv/bin/envoy` (`make envoy`). When
//!   it is missing the tests skip loudly, except under `CI=true`, where a
//!   missing Envoy is a failure.
//! - Ports are free ports picked at start; readiness is polled on admin `/ready`.
//! - When a test fails, dropping its `Envoy` prints Envoy's log.
//! - One build parameter picks the filter under test: `CALLBACK_GUARD_BUILD=native`
//!   runs every suite on the Envoy dynamic module (`make native`,
//!   envoy/envoy-native.yaml) instead of the wasm; see [`native`].
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Envoy binary, or `None` (with a loud message) when it is not installed.
/// Under `CI=true` a missing Envoy panics: CI must never skip these tests.
pub fn envoy_bin() -> Option<PathBuf> {
    let path = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/envoy"));
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "Envoy not found at {} and CI=true: run `make envoy`",
            path.display()
        );
    }
    eprintln!(
        "\n*** SKIPPING end-to-end test: no Envoy at {} (run `make envoy` or set ENVOY_BIN) ***\n",
        path.display()
    );
    None
}

/// Whether the suites run the native build (`CALLBACK_GUARD_BUILD=native`,
/// `make test-native`) rather than the wasm (the default).
pub fn native() -> bool {
    match std::env::var("CALLBACK_GUARD_BUILD").as_deref() {
        Ok("native") => true,
        Ok("wasm") | Err(_) => false,
        Ok(other) => panic!("CALLBACK_GUARD_BUILD={other}: expected wasm or native"),
    }
}

/// The directory of the built module (`make native`), for
/// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`; `CALLBACK_GUARD_NATIVE_DIR` picks another.
pub fn native_dir() -> PathBuf {
    let p = std::env::var_os("CALLBACK_GUARD_NATIVE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/native"));
    assert!(
        p.join("libcallback_guard.so").exists(),
        "{}/libcallback_guard.so is missing: run `make native` first",
        p.display()
    );
    p
}

/// The shipped config of the build under test: envoy/envoy.yaml (wasm) or
/// envoy/envoy-native.yaml (generated from it).
pub fn shipped_config_path() -> PathBuf {
    shipped_config_path_of(under_test())
}

/// The build the suites run (`CALLBACK_GUARD_BUILD`).
pub fn under_test() -> Build {
    if native() {
        Build::Native
    } else {
        Build::Wasm
    }
}

/// The shipped config of `build`.
pub fn shipped_config_path_of(build: Build) -> PathBuf {
    repo().join(if build == Build::Native {
        "envoy/envoy-native.yaml"
    } else {
        "envoy/envoy.yaml"
    })
}

/// The filter builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Wasm,
    Native,
}

/// Whether the test is about `build`, the build under test; if not, it says
/// so on stderr (the test is about something the other build does not have,
/// such as a VM and its reload) and the caller returns.
pub fn only_for(build: Build, what: &str) -> bool {
    let under_test = under_test();
    if under_test != build {
        eprintln!(
            "not run on the {under_test:?} build: this test is about the {build:?} build's {what}"
        );
    }
    under_test == build
}

/// Envoy's log component of the filter's own lines (`--component-log-level`).
pub fn filter_log_component() -> &'static str {
    if native() {
        "dynamic_modules"
    } else {
        "wasm"
    }
}

/// Whether an Envoy log line is one the filter wrote.
pub fn is_filter_log_line(line: &str) -> bool {
    if native() {
        line.contains("[dynamic_modules]")
    } else {
        line.contains("[wasm]") || line.contains("wasm log")
    }
}

/// The HTTP filter name of the build under test (for `typed_per_filter_config`).
pub fn guard_filter_name() -> &'static str {
    guard_filter_name_of(under_test())
}

/// The HTTP filter name of `build`.
pub fn guard_filter_name_of(build: Build) -> &'static str {
    if build == Build::Native {
        "envoy.filters.http.dynamic_modules"
    } else {
        "envoy.filters.http.wasm"
    }
}

/// The built filter (`make wasm`).
pub fn wasm_path() -> PathBuf {
    let p = std::env::var_os("CALLBACK_GUARD_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/wasm32-wasip1/release/callback_guard.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `make wasm` first",
        p.display()
    );
    p
}

/// A port nobody listens on, for a process the test starts next.
///
/// Not `bind(0)`: that port comes from the kernel's ephemeral range, where
/// any outgoing connection (Envoy to its upstream, a client to Envoy) may
/// take it as its local port before the child binds it, and two threads of
/// one test binary may be handed the same port. Ports below the ephemeral
/// range are never taken by outgoing connections, and this process hands
/// each out once. Falls back to `bind(0)` when the range starts too low.
pub fn free_port() -> u16 {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (ephemeral_low.saturating_sub(12000).max(1024), ephemeral_low);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    if high - low >= 4000 {
        // A start that differs per process and per call, so concurrent test
        // binaries walk the range from different places.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id().wrapping_mul(2_654_435_761);
        let span = u32::from(high - low);
        for i in 0..span {
            let port = low + ((seed.wrapping_add(i.wrapping_mul(7919))) % span) as u16;
            if given.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

// ---- the recording receiver -----------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Receiver {
    pub port: u16,
    child: Child,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::start_with(&[])
    }

    /// A receiver started with extra arguments (e.g. `--no-store`). It binds
    /// port 0 itself and says which port it got: no race for the port.
    pub fn start_with(args: &[&str]) -> Receiver {
        let mut all = vec!["--listen", "127.0.0.1:0", "--quiet"];
        all.extend_from_slice(args);
        let mut child = Command::new(env!("CARGO_BIN_EXE_callback-receiver"))
            .args(&all)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Its one line in quiet mode: "callback-receiver listening on 127.0.0.1:P".
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the receiver did not say its port: {line:?}"));
        // It says so after it listens: no need to wait for the port.
        Receiver { port, child }
    }

    pub fn received(&self) -> Vec<Recorded> {
        received_at(self.port)
    }

    pub fn clear(&self) {
        http1(self.port, "DELETE", "/__received", &[], b"");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- Envoy ----------------------------------------------------------------------

/// How to start Envoy.
pub struct EnvoyOpts {
    /// The plugin configuration (JSON).
    pub plugin_config: serde_json::Value,
    pub concurrency: u32,
    /// Variables set on the Envoy process.
    pub env: Vec<(String, String)>,
    /// Variables Envoy passes to the VM.
    pub host_env_keys: Vec<String>,
    pub upstream_port: u16,
    /// Envoy's log level (`-l`).
    pub log_level: String,
    /// Per-component levels (`--component-log-level`), e.g. `wasm:trace`.
    pub component_log_level: Option<String>,
    /// Route timeout to the upstream, in seconds.
    pub route_timeout_s: u32,
    /// A whole config instead of the generated one; `{{LISTENER_PORT}}`,
    /// `{{ADMIN_PORT}}`, `{{UPSTREAM_PORT}}` and `{{WASM}}` are substituted.
    pub raw_yaml: Option<String>,
    /// Drop `allow_on_headers_stop_iteration` from the shipped filter.
    pub without_stop_iteration_flag: bool,
    /// The listener's `per_connection_buffer_limit_bytes` (Envoy: 1 MiB).
    pub buffer_limit_bytes: Option<u32>,
    /// More clusters (such as `etcd`).
    pub extra_clusters: Vec<serde_json::Value>,
    /// Listen on this port instead of a free one (a restarted Envoy).
    pub listener_port: Option<u16>,
    /// HTTP filters between callback-guard and the router.
    pub filters_after: Vec<serde_json::Value>,
    /// Routes before the catch-all one (for example with the filter disabled).
    pub routes_before: Vec<serde_json::Value>,
    /// The filter build this Envoy runs (default: the build under test); a
    /// fleet may mix them.
    pub build: Option<Build>,
}

impl EnvoyOpts {
    /// The build this Envoy runs.
    pub fn build(&self) -> Build {
        self.build.unwrap_or_else(under_test)
    }
}

impl EnvoyOpts {
    pub fn new(plugin_config: serde_json::Value, upstream_port: u16) -> Self {
        EnvoyOpts {
            plugin_config,
            concurrency: 2,
            env: Vec::new(),
            host_env_keys: Vec::new(),
            upstream_port,
            log_level: "info".into(),
            component_log_level: None,
            route_timeout_s: 5,
            raw_yaml: None,
            without_stop_iteration_flag: false,
            buffer_limit_bytes: None,
            extra_clusters: Vec::new(),
            listener_port: None,
            filters_after: Vec::new(),
            routes_before: Vec::new(),
            build: None,
        }
    }
}

pub struct Envoy {
    pub port: u16,
    pub admin: u16,
    child: Child,
    log_path: PathBuf,
    _dir: TempDir,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("cg-{tag}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The callback-guard HTTP filter exactly as `envoy/envoy.yaml` ships it
/// (the one place the filter chain is written; envoy/envoy-native.yaml for
/// the native build), as JSON.
pub fn shipped_guard_filter() -> serde_json::Value {
    shipped_guard_filter_of(under_test())
}

/// The shipped filter entry of `build`.
pub fn shipped_guard_filter_of(build: Build) -> serde_json::Value {
    let text = std::fs::read_to_string(shipped_config_path_of(build)).unwrap();
    let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let filters = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"];
    let list = filters.as_array().expect("envoy/envoy.yaml: http_filters");
    assert_eq!(
        list.len(),
        2,
        "envoy/envoy.yaml: callback-guard then the router, nothing else"
    );
    assert_eq!(list[1]["name"], "envoy.filters.http.router");
    list[0].clone()
}

/// The shipped filter with a test's plugin configuration, variables and
/// module path; without `allow_on_headers_stop_iteration` when asked.
pub fn guard_filter(opts: &EnvoyOpts, wasm: &str) -> serde_json::Value {
    let mut f = shipped_guard_filter_of(opts.build());
    if opts.build() == Build::Native {
        // The module reads secrets from Envoy's environment: no key list.
        assert!(
            !opts.without_stop_iteration_flag,
            "the stop-iteration flag is a wasm setting"
        );
        f["typed_config"]["filter_config"]["value"] = opts.plugin_config.to_string().into();
        return f;
    }
    let cfg = &mut f["typed_config"]["config"];
    cfg["configuration"]["value"] = opts.plugin_config.to_string().into();
    cfg["vm_config"]["code"]["local"]["filename"] = wasm.into();
    cfg["vm_config"]["environment_variables"]["host_env_keys"] =
        serde_json::json!(opts.host_env_keys);
    if opts.without_stop_iteration_flag {
        cfg.as_object_mut()
            .unwrap()
            .remove("allow_on_headers_stop_iteration")
            .expect("the shipped filter sets allow_on_headers_stop_iteration");
    }
    f
}

/// A whole Envoy config (JSON) around the shipped filter: one listener whose
/// every path but /healthz goes through the filter to the upstream.
pub fn envoy_config(opts: &EnvoyOpts, port: u16, admin: u16, wasm: &str) -> String {
    let addr =
        |p: u16| serde_json::json!({"socket_address": {"address": "127.0.0.1", "port_value": p}});
    let healthz = serde_json::json!({
        "match": {"path": "/healthz"},
        "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
        "typed_per_filter_config": {guard_filter_name_of(opts.build()): {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            "disabled": true
        }}
    });
    let upstream = serde_json::json!({
        "match": {"prefix": "/"},
        "route": {"cluster": "upstream", "timeout": format!("{}s", opts.route_timeout_s)}
    });
    let routes: Vec<serde_json::Value> = std::iter::once(healthz)
        .chain(opts.routes_before.iter().cloned())
        .chain(std::iter::once(upstream))
        .collect();
    let router = serde_json::json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    }});
    let filters: Vec<serde_json::Value> = std::iter::once(guard_filter(opts, wasm))
        .chain(opts.filters_after.iter().cloned())
        .chain(std::iter::once(router))
        .collect();
    let mut listener = serde_json::json!({
        "name": "callbacks",
        "address": addr(port),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "callbacks",
                "codec_type": "AUTO",
                "http_protocol_options": {"accept_http_10": true},
                "route_config": {"virtual_hosts": [{
                    "name": "callbacks",
                    "domains": ["*"],
                    "routes": routes
                }]},
                "http_filters": filters
            }
        }]}]
    });
    if let Some(limit) = opts.buffer_limit_bytes {
        listener["per_connection_buffer_limit_bytes"] = limit.into();
    }
    let mut clusters = vec![serde_json::json!({
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": addr(opts.upstream_port)}}
        ]}]}
    })];
    clusters.extend(opts.extra_clusters.iter().cloned());
    let mut config = serde_json::json!({
        "admin": {"address": addr(admin)},
        "static_resources": {
            "listeners": [listener],
            "clusters": clusters
        }
    });
    if opts.build() == Build::Native {
        // As envoy/envoy-native.yaml: the wasm's Prometheus names.
        config["layered_runtime"] = serde_json::json!({"layers": [{"name": "static", "static_layer": {
            "envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix": true
        }}]});
    }
    serde_json::to_string_pretty(&config).unwrap()
}

fn spawn_envoy(opts: &EnvoyOpts, dir: &TempDir, port: u16, admin: u16) -> (Child, PathBuf) {
    let bin = envoy_bin().expect("envoy_bin checked by the caller");
    let wasm = if opts.build() == Build::Native {
        PathBuf::from("(no wasm: native build)")
    } else {
        wasm_path()
    };
    let yaml = match &opts.raw_yaml {
        Some(raw) => raw
            .replace("{{LISTENER_PORT}}", &port.to_string())
            .replace("{{ADMIN_PORT}}", &admin.to_string())
            .replace("{{UPSTREAM_PORT}}", &opts.upstream_port.to_string())
            .replace("{{WASM}}", &wasm.display().to_string()),
        None => envoy_config(opts, port, admin, &wasm.display().to_string()),
    };
    // JSON is YAML too; the extension tells Envoy which parser to use.
    let cfg = dir.0.join(if opts.raw_yaml.is_some() {
        "envoy.yaml"
    } else {
        "envoy.json"
    });
    std::fs::write(&cfg, yaml).unwrap();
    let log_path = dir.0.join("envoy.log");
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(&cfg)
        .args(["--concurrency", &opts.concurrency.to_string()])
        .args(["-l", &opts.log_level])
        .args(
            opts.component_log_level
                .iter()
                .flat_map(|c| ["--component-log-level", c.as_str()]),
        )
        .arg("--disable-hot-restart")
        .current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // stderr, unlike --log-path, is written line by line: tests read it at once.
        .stderr(std::fs::File::create(&log_path).unwrap());
    if opts.build() == Build::Native {
        cmd.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", native_dir());
    }
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    (cmd.spawn().unwrap(), log_path)
}

impl Envoy {
    /// Starts Envoy and waits for admin `/ready`; `None` when Envoy is not
    /// installed (outside CI).
    pub fn start(opts: EnvoyOpts) -> Option<Envoy> {
        envoy_bin()?;
        let dir = TempDir::new("envoy");
        let (port, admin) = (opts.listener_port.unwrap_or_else(free_port), free_port());
        let (child, log_path) = spawn_envoy(&opts, &dir, port, admin);
        let mut e = Envoy {
            port,
            admin,
            child,
            log_path,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(status)) = e.child.try_wait() {
                panic!("Envoy exited early ({status}):\n{}", e.log());
            }
            if TcpStream::connect(("127.0.0.1", admin)).is_ok()
                && http1(admin, "GET", "/ready", &[], b"").status == 200
            {
                return Some(e);
            }
            if Instant::now() > deadline {
                let _ = e.child.kill();
                panic!("Envoy not ready in time:\n{}", e.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs Envoy with a config that must be refused; returns its exit status
    /// and log. `None` when Envoy is not installed (outside CI).
    pub fn expect_failure(opts: EnvoyOpts) -> Option<(ExitStatus, String)> {
        envoy_bin()?;
        let dir = TempDir::new("bad");
        let (mut child, log_path) = spawn_envoy(&opts, &dir, free_port(), free_port());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((
                    status,
                    std::fs::read_to_string(&log_path).unwrap_or_default(),
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("Envoy accepted a bad config and kept running:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn stats(&self) -> String {
        String::from_utf8_lossy(&http1(self.admin, "GET", "/stats/prometheus", &[], b"").body)
            .into_owned()
    }

    /// The settled value of a Prometheus counter `name{} N` (0 if absent);
    /// see [`counter_at`].
    pub fn counter(&self, name: &str) -> u64 {
        counter_at(self.admin, name)
    }

    pub fn post(&self, content_type: &str, body: &[u8]) -> Response {
        http1(
            self.port,
            "POST",
            "/callback",
            &[("content-type", content_type)],
            body,
        )
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "===== Envoy log =====\n{}\n===== end of Envoy log =====",
                self.log()
            );
        }
    }
}

// ---- HTTP clients (127.0.0.1 only) ------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `Error.Code` of a rejection body.
    pub fn code(&self) -> String {
        self.json()["Error"]["Code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Status and `Error.Code`, the code empty for a 200 (whose body is the
    /// upstream's, not a rejection): one value to compare or count.
    pub fn status_and_code(&self) -> (u16, String) {
        let code = if self.status == 200 {
            String::new()
        } else {
            self.code()
        };
        (self.status, code)
    }
}

/// One HTTP/1.1 request with a content-length, on a fresh connection.
pub fn http1(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    http1_raw(port, &bytes)
}

/// A chunked HTTP/1.1 request: the body goes out in `pieces`, with pauses.
pub fn http1_chunked(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    pieces: &[&[u8]],
    pause: Duration,
) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ntransfer-encoding: chunked\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    for p in pieces {
        std::thread::sleep(pause);
        s.write_all(format!("{:x}\r\n", p.len()).as_bytes())
            .unwrap();
        s.write_all(p).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    read_response(s)
}

/// Sends raw bytes and reads the answer (status 0 if none came, or nothing
/// listens on the port).
pub fn http1_raw(port: u16, bytes: &[u8]) -> Response {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return Response {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
        };
    };
    let _ = s.write_all(bytes);
    read_response(s)
}

fn read_response(mut s: TcpStream) -> Response {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
}

/// A response head: status, headers (names lowercase), where the body starts.
pub type Head = (u16, Vec<(String, String)>, usize);

/// The head of the first HTTP/1 response in `buf`; `None` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Option<Head> {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, split + 4))
}

fn parse_response(buf: &[u8]) -> Response {
    let Some((status, headers, body_at)) = parse_head(buf) else {
        return Response {
            status: 0,
            headers: Vec::new(),
            body: buf.to_vec(),
        };
    };
    let raw = &buf[body_at..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&raw[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

/// One HTTP/2 request over cleartext (prior knowledge), the body sent as the
/// given DATA frames, optionally followed by trailers.
pub fn http2(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    frames: &[&[u8]],
    trailers: Option<&[(&str, &str)]>,
) -> Response {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.unwrap();
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("http://127.0.0.1:{port}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let no_body = frames.is_empty() && trailers.is_none();
        let (resp, mut stream) = client.send_request(req.body(()).unwrap(), no_body).unwrap();
        // Envoy may answer (and reset the stream) before the body is all sent,
        // as for an oversized body: stop sending then, and read the answer.
        let mut open = true;
        for (i, f) in frames.iter().enumerate() {
            let last = i + 1 == frames.len() && trailers.is_none();
            if stream
                .send_data(bytes::Bytes::copy_from_slice(f), last)
                .is_err()
            {
                open = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let (Some(t), true) = (trailers, open) {
            let mut map = http::HeaderMap::new();
            for (k, v) in t {
                map.insert(
                    http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let _ = stream.send_trailers(map);
        }
        let resp = tokio::time::timeout(Duration::from_secs(15), resp)
            .await
            .unwrap()
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let mut body_stream = resp.into_body();
        let mut body = Vec::new();
        while let Some(chunk) = body_stream.data().await {
            let chunk = chunk.unwrap();
            let _ = body_stream.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        Response {
            status,
            headers,
            body,
        }
    })
}

// ---- callbacks -------------------------------------------------------------------

pub const KS_KEY: &str = "e2eKey0123456789";

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `(t, k)` for a ks_md5 token.
pub fn ks_token(key: &str, stream: &str, expires: u64) -> (String, String) {
    let q = callback_guard::auth::token::sign(
        callback_guard::config::Scheme::KsMd5,
        key.as_bytes(),
        "live",
        stream,
        expires,
    );
    let (t, k) = q.split_once("&k=").unwrap();
    (t.trim_start_matches("t=").to_string(), k.to_string())
}

/// A current KLS new-version callback (the seed's shape) with a ks_md5 token.
pub fn v2(event: &str, stream: &str, session: Option<&str>, key: &str) -> String {
    let (t, k) = ks_token(key, stream, now_s() + 600);
    let time_field = if event == "PubStart" {
        "PubStartUnixTime"
    } else {
        "PubEndUnixTime"
    };
    let seq = session
        .map(|s| format!(",\"Sequence\":\"{s}\""))
        .unwrap_or_default();
    format!(
        r#"{{"Version":"1.0","App":"live","Pubdomain":"push.example.com","Stream":"{stream}","{time_field}":{}000,"NotifyType":"{event}","ClientIp":" ","ClientPort":" ","Node":" "{seq},"PubParam":{{"t":"{t}","k":"{k}"}}}}"#,
        now_s()
    )
}

/// A KLS old-version form callback with the token as extra fields.
pub fn v1(call: &str, stream: &str, vdoid: &str, key: &str) -> String {
    let (t, k) = ks_token(key, stream, now_s() + 600);
    format!("app=live&name={stream}&swfurl=nil&flashver=nil&tcurl=rtmp://push.example.com/live&call={call}&vdoid={vdoid}&t={t}&k={k}")
}

/// A plugin configuration with a ks_md5 key (inline) and `apps: [live]`.
pub fn base_config() -> serde_json::Value {
    serde_json::json!({
        "apps": ["live"],
        "push_auth": {"scheme": "ks_md5", "keys": [{"id": "main", "secret": KS_KEY}]},
    })
}

// ---- hardening: keep-alive client, process facts (soak, log scan) ------------------

impl Receiver {
    /// Callbacks received so far (`GET /__count`).
    pub fn count(&self) -> u64 {
        let r = http1(self.port, "GET", "/__count", &[], b"");
        String::from_utf8_lossy(&r.body).trim().parse().unwrap()
    }
}

impl Envoy {
    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's resident memory in KiB (`VmRSS` of /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

/// An HTTP/1.1 client that keeps its connection open between requests
/// (127.0.0.1 only). A request that fails on the wire gets status 0 and the
/// next one opens a new connection; nothing is retried, so a count of sent
/// requests stays exact.
pub struct KeepAlive {
    port: u16,
    conn: Option<std::io::BufReader<TcpStream>>,
    /// Connections opened so far.
    pub connects: u64,
}

impl KeepAlive {
    pub fn new(port: u16) -> KeepAlive {
        KeepAlive {
            port,
            conn: None,
            connects: 0,
        }
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        match self.try_request(method, path, headers, body) {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                Response {
                    status: 0,
                    headers: Vec::new(),
                    body: Vec::new(),
                }
            }
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        use std::io::BufRead;
        if self.conn.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(15)))?;
            self.conn = Some(std::io::BufReader::new(s));
            self.connects += 1;
        }
        let rd = self.conn.as_mut().expect("connected above");
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        rd.get_mut().write_all(&bytes)?;

        let mut line = String::new();
        if rd.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v): &(String, String)| v.clone())
        };
        let mut body = Vec::new();
        if method == "HEAD" {
        } else if let Some(n) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(n, 0);
            rd.read_exact(&mut body)?;
        } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size = String::new();
                rd.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim(), 16)
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
                let mut chunk = vec![0u8; n + 2];
                rd.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        if find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            self.conn = None;
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

// ---- the shipped config: a native Envoy, or an external stack (docker compose) ------
//
// `CALLBACK_GUARD_E2E_EXTERNAL=LISTENER:ADMIN:RECEIVER` (ports on 127.0.0.1) points the
// shipped-config tests (tests/e2e_shipped.rs) at an Envoy and a recording receiver that
// already run, such as the compose stack of `make docker-test`; the push key is then
// the one in `CALLBACK_GUARD_PUSH_KEY`, as the stack's Envoy has it. Without the
// variable, those tests start a native Envoy with envoy/envoy.yaml as shipped. An
// external stack keeps its state from test to test, so the tests take turns on it and
// each uses streams of its own.

/// The variable that names an external stack's ports.
pub const EXTERNAL_STACK_VAR: &str = "CALLBACK_GUARD_E2E_EXTERNAL";

/// `(listener, admin, receiver)` ports of the external stack, when one is named.
pub fn external_stack_ports() -> Option<(u16, u16, u16)> {
    let v = std::env::var(EXTERNAL_STACK_VAR)
        .ok()
        .filter(|v| !v.is_empty())?;
    let ports: Vec<u16> = v
        .split(':')
        .map(|p| {
            p.trim().parse().unwrap_or_else(|_| {
                panic!("{EXTERNAL_STACK_VAR}={v}: expected LISTENER:ADMIN:RECEIVER ports")
            })
        })
        .collect();
    assert_eq!(
        ports.len(),
        3,
        "{EXTERNAL_STACK_VAR}={v}: expected LISTENER:ADMIN:RECEIVER ports"
    );
    Some((ports[0], ports[1], ports[2]))
}

/// envoy/envoy.yaml with its ports and wasm path turned into the placeholders of
/// [`EnvoyOpts::raw_yaml`].
pub fn shipped_yaml() -> String {
    std::fs::read_to_string(shipped_config_path())
        .unwrap()
        .replace("port_value: 10000", "port_value: {{LISTENER_PORT}}")
        .replace("port_value: 9901", "port_value: {{ADMIN_PORT}}")
        .replace("port_value: 8080", "port_value: {{UPSTREAM_PORT}}")
        .replace(
            "target/wasm32-wasip1/release/callback_guard.wasm",
            "{{WASM}}",
        )
}

/// What a recording receiver on `port` got (`GET /__received`).
pub fn received_at(port: u16) -> Vec<Recorded> {
    let r = http1(port, "GET", "/__received", &[], b"");
    assert_eq!(r.status, 200, "receiver on {port}: GET /__received");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| Recorded {
            method: r["method"].as_str().unwrap().into(),
            path: r["path"].as_str().unwrap().into(),
            headers: r["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
                .collect(),
            body: base64::engine::general_purpose::STANDARD
                .decode(r["body_b64"].as_str().unwrap())
                .unwrap(),
        })
        .collect()
}

/// The value of the Prometheus counter `name` at the admin port (0 if absent),
/// as it reads right now.
/// `name` is a bare metric (`callback_guard_requests_forwarded`) or a series
/// with its labels (`callback_guard_requests_rejected{code="ExistStreamName"}`).
pub fn counter_now(admin: u16, name: &str) -> u64 {
    let stats = http1(admin, "GET", "/stats/prometheus", &[], b"");
    let series = if name.contains('{') {
        format!("{name} ")
    } else {
        format!("{name}{{}} ")
    };
    String::from_utf8_lossy(&stats.body)
        .lines()
        .find_map(|l| {
            l.strip_prefix(&series)
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// Waits until the Prometheus stat `name` (a counter or a gauge) reads `want`
/// at the admin port; the last value read on timeout.
pub fn wait_for_stat(admin: u16, name: &str, want: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let v = counter_now(admin, name);
        if v == want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The series of a refusal counter in the shipped configs (`stats_tags`
/// make the code a label).
pub fn rejected_series(code: &str) -> String {
    format!("callback_guard_requests_rejected{{code=\"{code}\"}}")
}

/// The series of a play refusal counter in the shipped configs (the same
/// `code` tag as [`rejected_series`]).
pub fn plays_rejected_series(code: &str) -> String {
    format!("callback_guard_plays_rejected{{code=\"{code}\"}}")
}

/// Every `callback_guard_*` sample of `/stats/prometheus` at the admin port,
/// series (`name{labels}`) to value, read once none has changed for three
/// ticks (at most 10 s; see [`counter_at`]). Counters that only differ
/// between two such reads have moved by exactly that much.
pub fn settled_series(admin: u16) -> std::collections::BTreeMap<String, u64> {
    let read = || -> std::collections::BTreeMap<String, u64> {
        let stats = http1(admin, "GET", "/stats/prometheus", &[], b"");
        String::from_utf8_lossy(&stats.body)
            .lines()
            .filter(|l| l.starts_with("callback_guard_"))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    };
    settled(read)
}

/// The filter hands its counters to Envoy once per tick (250 ms), so a value
/// is read once it has held for three ticks (at most 10 s).
pub fn counter_at(admin: u16, name: &str) -> u64 {
    settled(|| counter_now(admin, name))
}

/// `read()` once its answer has held for three ticks (750 ms), or after 10 s.
fn settled<T: PartialEq>(read: impl Fn() -> T) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = read();
    let mut held = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = read();
        if now != last {
            last = now;
            held = Instant::now();
        } else if held.elapsed() >= Duration::from_millis(750) {
            break;
        }
    }
    last
}

/// A stream name no other test or run uses (an external stack remembers live streams).
pub fn unique_stream(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// Turns on an external stack, one test at a time.
static EXTERNAL_STACK_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Envoy with envoy/envoy.yaml in front of a recording receiver: started here, or the
/// external stack.
pub struct Shipped {
    pub port: u16,
    pub admin: u16,
    pub receiver_port: u16,
    /// The push key in the stack's `CALLBACK_GUARD_PUSH_KEY`.
    pub push_key: String,
    native: Option<(Envoy, Receiver)>,
    _turn: Option<std::sync::MutexGuard<'static, ()>>,
}

impl Shipped {
    /// The external stack (ready, its receiver emptied) or a native one; `None` when
    /// native and Envoy is not installed (outside CI).
    pub fn start() -> Option<Shipped> {
        if let Some((port, admin, receiver_port)) = external_stack_ports() {
            let turn = EXTERNAL_STACK_TURN
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let push_key = std::env::var("CALLBACK_GUARD_PUSH_KEY").unwrap_or_else(|_| {
                panic!("{EXTERNAL_STACK_VAR} is set: set CALLBACK_GUARD_PUSH_KEY to the stack's push key too")
            });
            let ready = http1(admin, "GET", "/ready", &[], b"");
            assert_eq!(
                ready.status, 200,
                "external stack: Envoy admin on 127.0.0.1:{admin} is not ready"
            );
            http1(receiver_port, "DELETE", "/__received", &[], b"");
            return Some(Shipped {
                port,
                admin,
                receiver_port,
                push_key,
                native: None,
                _turn: Some(turn),
            });
        }
        let rx = Receiver::start();
        let mut opts = EnvoyOpts::new(serde_json::json!({}), rx.port);
        opts.raw_yaml = Some(shipped_yaml());
        opts.env
            .push(("CALLBACK_GUARD_PUSH_KEY".into(), KS_KEY.into()));
        let envoy = Envoy::start(opts)?;
        Some(Shipped {
            port: envoy.port,
            admin: envoy.admin,
            receiver_port: rx.port,
            push_key: KS_KEY.into(),
            native: Some((envoy, rx)),
            _turn: None,
        })
    }

    pub fn is_external(&self) -> bool {
        self.native.is_none()
    }

    /// What reached the upstream since this test started.
    pub fn received(&self) -> Vec<Recorded> {
        received_at(self.receiver_port)
    }

    pub fn counter(&self, name: &str) -> u64 {
        counter_at(self.admin, name)
    }

    /// A POST to /callback.
    pub fn post(&self, content_type: &str, body: &[u8]) -> Response {
        http1(
            self.port,
            "POST",
            "/callback",
            &[("content-type", content_type)],
            body,
        )
    }
}

// ---- the upstream socket itself ------------------------------------------------------

/// A raw TCP upstream that records every byte any connection sends it, and
/// answers each complete HTTP/1.1 request (content-length or chunked) with
/// `200 ok`. "The upstream sees nothing" is then checked at the socket: not a
/// request line, not a header, not a body byte.
pub struct SocketSpy {
    pub port: u16,
    seen: std::sync::Arc<std::sync::Mutex<(u64, Vec<u8>)>>,
}

impl SocketSpy {
    pub fn start() -> SocketSpy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new((0u64, Vec::new())));
        let shared = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let shared = shared.clone();
                shared.lock().unwrap().0 += 1;
                std::thread::spawn(move || {
                    let mut pending = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        shared.lock().unwrap().1.extend_from_slice(&buf[..n]);
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(len) = complete_request_len(&pending) {
                            pending.drain(..len);
                            let _ = conn.write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
                            );
                        }
                    }
                });
            }
        });
        SocketSpy { port, seen }
    }

    /// Connections accepted and bytes received so far.
    pub fn seen(&self) -> (u64, Vec<u8>) {
        self.seen.lock().unwrap().clone()
    }
}

/// The length of the first complete HTTP/1.1 request in `buf`, if there is one.
fn complete_request_len(buf: &[u8]) -> Option<usize> {
    // (`parse_head` reads a request head too; its "status" is then 0.)
    let (_, headers, body_at) = parse_head(buf)?;
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut at = body_at;
        loop {
            let eol = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[at..eol]).ok()?.trim(), 16).ok()?;
            at = eol + 2;
            if size == 0 {
                // trailers, then an empty line
                let end = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
                if end == 0 {
                    return Some(at + 2);
                }
                let rest = buf.get(at..)?.windows(4).position(|w| w == b"\r\n\r\n")?;
                return Some(at + rest + 4);
            }
            at += size + 2;
            if at > buf.len() {
                return None;
            }
        }
    }
    let len: usize = get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (buf.len() >= body_at + len).then_some(body_at + len)
}

// ---- etcd: real members on 127.0.0.1 (the fleet suite) --------------------------------

/// The etcd binary (`/usr/bin/etcd` from Debian's etcd-server, or `ETCD_BIN`),
/// or `None` with a loud message. Under `CI=true` a missing etcd panics.
pub fn etcd_bin() -> Option<PathBuf> {
    let path = std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "etcd not found at {} and CI=true: run `make test-fleet`, which installs etcd-server",
            path.display()
        );
    }
    eprintln!(
        "\n*** SKIPPING: no etcd at {} (make test-fleet installs it) ***\n",
        path.display()
    );
    None
}

/// One etcd member.
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A cluster of real etcd members, each its own process with its own data dir.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    initial: String,
    _dir: TempDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits until they have a leader; `None` when etcd
    /// is not installed (outside CI).
    pub fn start(n: usize) -> Option<EtcdCluster> {
        etcd_bin()?;
        let dir = TempDir::new("etcd");
        let members: Vec<EtcdMember> = (0..n)
            .map(|i| EtcdMember {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                dir: dir.0.join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            members,
            initial,
            _dir: dir,
        };
        for i in 0..n {
            c.spawn(i, "new");
        }
        c.wait_for_leader(Duration::from_secs(30));
        Some(c)
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let m = &mut self.members[i];
        let log = std::fs::File::create(m.dir.with_extension("log")).unwrap();
        let child = Command::new(etcd_bin().unwrap())
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.dir)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", m.client_port),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", m.client_port),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer_port),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer_port),
            ])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-token", "callback-guard-test"])
            .args(["--initial-cluster-state", state])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        m.child = Some(child);
    }

    pub fn client_ports(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.client_port).collect()
    }

    /// The index of the member that is leader now, if a running one says so.
    pub fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let r = http1(m.client_port, "POST", "/v3/maintenance/status", &[], b"{}");
            if r.status != 200 {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            let (Some(leader), Some(me)) =
                (v["leader"].as_str(), v["header"]["member_id"].as_str())
            else {
                continue;
            };
            if leader == me {
                return self
                    .members
                    .iter()
                    .position(|x| x.client_port == m.client_port);
            }
        }
        None
    }

    /// Waits until some running member is leader and answers a write.
    pub fn wait_for_leader(&self, within: Duration) -> Duration {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if self.leader().is_some() {
                let ok = self.members.iter().filter(|m| m.child.is_some()).any(|m| {
                    http1(
                        m.client_port,
                        "POST",
                        "/v3/kv/put",
                        &[("grpc-metadata-hasleader", "true")],
                        br#"{"key":"cHJvYmU=","value":"MQ=="}"#,
                    )
                    .status
                        == 200
                });
                if ok {
                    return t0.elapsed();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd has no leader after {within:?}");
    }

    /// SIGKILL of one member.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed member again, on its data dir.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
    }

    /// The keys under `prefix` (base64-decoded), as etcd holds them now.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let body = format!(
            r#"{{"key":"{}","range_end":"{}","keys_only":true}}"#,
            b64(prefix.as_bytes()),
            b64(&end)
        );
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let r = http1(m.client_port, "POST", "/v3/kv/range", &[], body.as_bytes());
            if r.status == 200 {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                return v["kvs"]
                    .as_array()
                    .map(|kvs| {
                        kvs.iter()
                            .map(|kv| {
                                String::from_utf8(
                                    base64::engine::general_purpose::STANDARD
                                        .decode(kv["key"].as_str().unwrap())
                                        .unwrap(),
                                )
                                .unwrap()
                            })
                            .collect()
                    })
                    .unwrap_or_default();
            }
        }
        panic!("no etcd member answered a range");
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// The Envoy cluster `etcd` for these members: HTTP/1.1 (the gateway), health
/// checked on `/health` so a dead or leaderless member takes no calls.
pub fn etcd_cluster_config(ports: &[u16]) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = ports
        .iter()
        .map(|p| serde_json::json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}))
        .collect();
    serde_json::json!({
        "name": "etcd",
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": "etcd", "endpoints": [{"lb_endpoints": endpoints}]},
        "health_checks": [{
            "timeout": "0.5s",
            "interval": "0.5s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "http_health_check": {"path": "/health"},
            // Envoy checks a cluster that has carried no call yet only every 60 s
            // by default: a member that dies early would stay "healthy" that long.
            "no_traffic_interval": "0.5s"
        }],
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}}
    })
}
