//! `callback-receiver`: the demo and test upstream behind Envoy.
//!
//! It prints every callback it receives (method, path, the
//! `x-callback-guard-*` headers and the body) and records it in memory, so
//! tests can assert exactly what reached the upstream.
//!
//! ```text
//! callback-receiver [--listen 127.0.0.1:8080] [--quiet] [--no-store] [--answer-body TEXT]
//! ```
//!
//! - any request except the control endpoints is a callback: recorded,
//!   printed (unless `--quiet`) and answered `200 {"ok":true}`. A request
//!   header `x-receiver-status: NNN` (200..=599) makes it answer that status
//!   instead, and `x-receiver-delay-ms: N` (at most 30000) delays the answer;
//! - `--answer-body TEXT` answers every callback with exactly TEXT (as an SRS
//!   hook service does with `0`), and a request header
//!   `x-receiver-body: <percent-encoded bytes>` with exactly those bytes
//!   (any status: `x-receiver-status: 201` and `x-receiver-body: %7B%22code%22%3A1%7D`);
//! - `GET /__received`: the recorded requests, as a JSON array of
//!   `{"method","path","headers":[[name,value],..],"trailers":[..],"body_b64"}`
//!   (header names in lower case, body in standard base64);
//! - `DELETE /__received`: forget them (and reset the count);
//! - `GET /__count`: how many callbacks arrived, as a bare number;
//! - `--no-store`: count callbacks without recording them (soak runs);
//! - `GET /__health`: `ok`.
//!
//! Hand-written HTTP/1.1 over std (a thread per connection, keep-alive,
//! `content-length` and chunked request bodies, `expect: 100-continue`), no
//! async runtime and no C dependencies, so it also builds as a static musl
//! binary. Malformed requests get a 4xx answer and the connection is closed;
//! nothing a client sends can make it panic.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;

/// Largest request body accepted (callbacks are small; tests send a few MB at most).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Longest request line, header line or chunk-size line.
const MAX_LINE: usize = 16 * 1024;
/// Most header (or trailer) lines in one request.
const MAX_HEADERS: usize = 256;
/// Most connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 1024;
/// Once a request has started, each read must make progress within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of `x-receiver-delay-ms`.
const MAX_DELAY_MS: u64 = 30_000;
/// Largest number of recorded requests kept (the oldest are dropped).
const MAX_RECORDED: usize = 100_000;

/// Header or trailer fields: lower-case name, value.
type Fields = Vec<(String, String)>;

/// One request as it was received.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    target: String,
    /// `true` for HTTP/1.1, `false` for HTTP/1.0.
    http11: bool,
    headers: Vec<(String, String)>,
    trailers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The path without the query string.
    fn path_only(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    recorded: Mutex<Vec<Request>>,
    connections: AtomicUsize,
    quiet: bool,
    /// Callbacks received since start or the last `DELETE /__received`.
    count: AtomicU64,
    /// `--no-store`: count only, record nothing.
    no_store: bool,
    /// `--answer-body`: the body of every callback's answer.
    answer_body: Option<Vec<u8>>,
}

impl State {
    fn recorded(&self) -> MutexGuard<'_, Vec<Request>> {
        // A poisoned lock only means another thread panicked while holding
        // it; the data (a list) is still usable.
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why reading a request stopped.
#[derive(Debug)]
enum ReadError {
    /// The peer closed the connection (or went idle) between requests.
    Closed,
    /// An I/O error or timeout: the connection is dropped without an answer.
    Io,
    /// A malformed request: answered with this status, then closed.
    Bad(u16, &'static str),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Io
    }
}

/// What to answer.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }

    fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain",
            body: body.as_bytes().to_vec(),
        }
    }
}

fn main() {
    let mut listen = "127.0.0.1:8080".to_string();
    let mut quiet = false;
    let mut no_store = false;
    let mut answer_body = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => match args.next() {
                Some(v) => listen = v,
                None => usage(2),
            },
            "--quiet" | "-q" => quiet = true,
            "--no-store" => no_store = true,
            "--answer-body" => match args.next() {
                Some(v) => answer_body = Some(v.into_bytes()),
                None => usage(2),
            },
            "--help" | "-h" => usage(0),
            other => match other.strip_prefix("--listen=") {
                Some(v) => listen = v.to_string(),
                None => {
                    eprintln!("callback-receiver: unknown argument {other:?}");
                    usage(2)
                }
            },
        }
    }
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("callback-receiver: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(listen);
    say(&format!("callback-receiver listening on {bound}\n"));
    let state = Arc::new(State {
        quiet,
        no_store,
        answer_body,
        ..State::default()
    });
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(_) => {
                // Out of file descriptors and the like: back off, keep serving.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        accept(conn, &state);
    }
}

fn usage(code: i32) -> ! {
    eprintln!("usage: callback-receiver [--listen 127.0.0.1:8080] [--quiet] [--no-store] [--answer-body TEXT]");
    std::process::exit(code);
}

/// Writes to stdout without ever panicking (a closed stdout is ignored).
fn say(text: &str) {
    let stdout = io::stdout();
    let mut lock = stdout.lock();
    let _ = lock.write_all(text.as_bytes());
    let _ = lock.flush();
}

/// Counts a live connection; the count drops with the guard.
struct ConnGuard(Arc<State>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept(mut conn: TcpStream, state: &Arc<State>) {
    if state.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        state.connections.fetch_sub(1, Ordering::SeqCst);
        let _ = write_reply(
            &mut conn,
            &Reply::text(503, "too many connections\n"),
            false,
            true,
        );
        return;
    }
    let guard = ConnGuard(state.clone());
    let spawned = std::thread::Builder::new()
        .name("conn".into())
        .spawn(move || {
            let _ = serve(conn, &guard.0);
            drop(guard);
        });
    if spawned.is_err() {
        // The closure (and with it the guard and the socket) was dropped.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Serves one connection: requests one after the other until the peer
/// closes it, asks for `connection: close`, or sends something malformed.
fn serve(conn: TcpStream, state: &State) -> io::Result<()> {
    let _ = conn.set_nodelay(true);
    let mut out = conn.try_clone()?;
    let mut rd = BufReader::new(conn);
    loop {
        // Idle between requests: wait as long as the peer keeps the
        // connection (Envoy pools upstream connections for a long time).
        rd.get_ref().set_read_timeout(None)?;
        match rd.fill_buf() {
            Ok([]) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
        rd.get_ref().set_read_timeout(Some(REQUEST_TIMEOUT))?;
        let req = match read_request(&mut rd, &mut out) {
            Ok(r) => r,
            Err(ReadError::Closed) | Err(ReadError::Io) => return Ok(()),
            Err(ReadError::Bad(status, why)) => {
                let body = format!("{{\"ok\":false,\"error\":\"{why}\"}}");
                let _ = write_reply(&mut out, &Reply::json(status, body), false, true);
                return Ok(());
            }
        };
        let close = wants_close(&req);
        let reply = respond(&req, state);
        write_reply(&mut out, &reply, req.method == "HEAD", close)?;
        if close {
            return Ok(());
        }
    }
}

/// Whether the connection ends after this request's answer.
fn wants_close(req: &Request) -> bool {
    let tokens: Vec<String> = req
        .headers
        .iter()
        .filter(|(k, _)| k == "connection")
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    if tokens.iter().any(|t| t == "close") {
        return true;
    }
    !req.http11 && !tokens.iter().any(|t| t == "keep-alive")
}

fn write_reply(out: &mut TcpStream, reply: &Reply, head_only: bool, close: bool) -> io::Result<()> {
    // A 204 has no body and no content-length (RFC 9110 8.6).
    let no_body = reply.status == 204;
    let length = if no_body {
        String::new()
    } else {
        format!("content-length: {}\r\n", reply.body.len())
    };
    let mut msg = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\n{length}{}\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        if close { "connection: close\r\n" } else { "" },
    )
    .into_bytes();
    if !head_only && !no_body {
        msg.extend_from_slice(&reply.body);
    }
    out.write_all(&msg)?;
    out.flush()
}

fn respond(req: &Request, state: &State) -> Reply {
    match (req.path_only(), req.method.as_str()) {
        ("/__health", "GET" | "HEAD") => Reply::text(200, "ok\n"),
        ("/__received", "GET" | "HEAD") => {
            let list: Vec<serde_json::Value> = state.recorded().iter().map(to_json).collect();
            Reply::json(200, serde_json::Value::Array(list).to_string())
        }
        ("/__received", "DELETE") => {
            state.recorded().clear();
            state.count.store(0, Ordering::SeqCst);
            Reply::json(200, "{\"ok\":true}")
        }
        ("/__count", "GET") => Reply::text(200, &state.count.load(Ordering::SeqCst).to_string()),
        ("/__health" | "/__received" | "/__count", _) => Reply::json(405, "{\"ok\":false}"),
        _ => callback(req, state),
    }
}

fn callback(req: &Request, state: &State) -> Reply {
    if !state.quiet {
        say(&describe(req));
    }
    state.count.fetch_add(1, Ordering::SeqCst);
    if !state.no_store {
        let mut recorded = state.recorded();
        if recorded.len() >= MAX_RECORDED {
            recorded.remove(0);
        }
        recorded.push(req.clone());
    }
    if let Some(ms) = req
        .header("x-receiver-delay-ms")
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms.min(MAX_DELAY_MS)));
    }
    let status = req
        .header("x-receiver-status")
        .and_then(|v| v.trim().parse::<u16>().ok())
        .filter(|s| (200..=599).contains(s))
        .unwrap_or(200);
    let body = match req.header("x-receiver-body") {
        Some(b) => percent_encoding::percent_decode_str(b).collect(),
        None => match &state.answer_body {
            Some(b) => b.clone(),
            None => format!("{{\"ok\":{}}}", status < 300).into_bytes(),
        },
    };
    Reply::json(status, body)
}

/// The human-readable block printed for one callback.
fn describe(req: &Request) -> String {
    let mut s = format!(
        "--- {} {} ({} body bytes)\n",
        req.method,
        req.target,
        req.body.len()
    );
    for (k, v) in req.headers.iter().chain(&req.trailers) {
        if k.starts_with("x-callback-guard-") || k == "content-type" {
            s.push_str(&format!("{k}: {v}\n"));
        }
    }
    let body = String::from_utf8_lossy(&req.body);
    s.push_str(&body);
    if !body.ends_with('\n') {
        s.push('\n');
    }
    s
}

fn to_json(r: &Request) -> serde_json::Value {
    use serde_json::Value;
    let pairs = |list: &[(String, String)]| {
        Value::Array(
            list.iter()
                .map(|(k, v)| {
                    Value::Array(vec![Value::String(k.clone()), Value::String(v.clone())])
                })
                .collect(),
        )
    };
    let mut m = serde_json::Map::new();
    m.insert("method".into(), Value::String(r.method.clone()));
    m.insert("path".into(), Value::String(r.target.clone()));
    m.insert("headers".into(), pairs(&r.headers));
    m.insert("trailers".into(), pairs(&r.trailers));
    m.insert(
        "body_b64".into(),
        Value::String(base64::engine::general_purpose::STANDARD.encode(&r.body)),
    );
    Value::Object(m)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

// ---- HTTP/1.1 request parsing ------------------------------------------------------

/// Reads one line (up to `\n`), at most `MAX_LINE` bytes, without the line
/// ending. `Ok(None)` on a clean end of stream before any byte.
fn read_line(rd: &mut BufReader<TcpStream>) -> Result<Option<Vec<u8>>, ReadError> {
    let mut buf = Vec::new();
    let limit = (MAX_LINE + 2) as u64;
    rd.by_ref().take(limit).read_until(b'\n', &mut buf)?;
    if buf.last() != Some(&b'\n') {
        if buf.is_empty() {
            return Ok(None);
        }
        if buf.len() as u64 >= limit {
            return Err(ReadError::Bad(431, "line too long"));
        }
        return Err(ReadError::Io); // closed in the middle of a line
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(buf))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads header (or trailer) lines up to the empty line.
fn read_fields(rd: &mut BufReader<TcpStream>) -> Result<Fields, ReadError> {
    let mut fields = Vec::new();
    loop {
        let Some(line) = read_line(rd)? else {
            return Err(ReadError::Io);
        };
        if line.is_empty() {
            return Ok(fields);
        }
        if fields.len() >= MAX_HEADERS {
            return Err(ReadError::Bad(431, "too many header fields"));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(ReadError::Bad(400, "obsolete line folding"));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(ReadError::Bad(400, "header line without a colon"));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(ReadError::Bad(400, "bad header name"));
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let value = String::from_utf8_lossy(value)
            .trim_matches([' ', '\t'])
            .to_string();
        fields.push((name, value));
    }
}

/// Reads one whole request, body included. Answers `100 Continue` on `out`
/// when the client asks for it.
fn read_request(rd: &mut BufReader<TcpStream>, out: &mut TcpStream) -> Result<Request, ReadError> {
    // A few empty lines before the request line are tolerated (RFC 9112 2.2).
    let mut line = None;
    for _ in 0..4 {
        match read_line(rd)? {
            None => return Err(ReadError::Closed),
            Some(l) if l.is_empty() => continue,
            Some(l) => {
                line = Some(l);
                break;
            }
        }
    }
    let Some(line) = line else {
        return Err(ReadError::Bad(400, "no request line"));
    };
    let line = String::from_utf8_lossy(&line).into_owned();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(400, "bad request line"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(ReadError::Bad(400, "bad method"));
    }
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(ReadError::Bad(400, "bad request target"));
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if v.starts_with("HTTP/") => {
            return Err(ReadError::Bad(505, "HTTP version not supported"))
        }
        _ => return Err(ReadError::Bad(400, "bad HTTP version")),
    };
    let headers = read_fields(rd)?;
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        http11,
        headers,
        trailers: Vec::new(),
        body: Vec::new(),
    };

    let te: Vec<String> = req
        .headers
        .iter()
        .filter(|(k, _)| k == "transfer-encoding")
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| !t.is_empty())
        .collect();
    let lengths: Vec<&str> = req
        .headers
        .iter()
        .filter(|(k, _)| k == "content-length")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    let chunked = match te.last().map(String::as_str) {
        None => false,
        Some(_) if !lengths.is_empty() => {
            return Err(ReadError::Bad(
                400,
                "both transfer-encoding and content-length",
            ))
        }
        Some(_) if !http11 => return Err(ReadError::Bad(400, "transfer-encoding in HTTP/1.0")),
        Some("chunked") if te.iter().filter(|t| *t == "chunked").count() == 1 => true,
        Some(_) => return Err(ReadError::Bad(501, "unsupported transfer-encoding")),
    };
    let length = if chunked || lengths.is_empty() {
        0
    } else {
        let mut value = None;
        for l in &lengths {
            if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ReadError::Bad(400, "bad content-length"));
            }
            let n = l.parse::<u64>().unwrap_or(u64::MAX);
            if value.is_some_and(|v| v != n) {
                return Err(ReadError::Bad(400, "conflicting content-length"));
            }
            value = Some(n);
        }
        let n = value.unwrap_or(0);
        if n > MAX_BODY as u64 {
            return Err(ReadError::Bad(413, "body too large"));
        }
        n as usize
    };

    let expects_body = chunked || length > 0;
    let expect = req.header("expect").map(str::to_ascii_lowercase);
    if let Some(e) = expect {
        if e != "100-continue" {
            return Err(ReadError::Bad(417, "unsupported expectation"));
        }
        if http11 && expects_body {
            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            out.flush()?;
        }
    }

    if chunked {
        let (body, trailers) = read_chunked(rd)?;
        req.body = body;
        req.trailers = trailers;
    } else if length > 0 {
        let mut body = vec![0u8; length];
        rd.read_exact(&mut body)?;
        req.body = body;
    }
    Ok(req)
}

/// A chunked body and its trailers.
fn read_chunked(rd: &mut BufReader<TcpStream>) -> Result<(Vec<u8>, Fields), ReadError> {
    let mut body = Vec::new();
    loop {
        let Some(line) = read_line(rd)? else {
            return Err(ReadError::Io);
        };
        let line = String::from_utf8_lossy(&line).into_owned();
        let hex = line.split(';').next().unwrap_or_default().trim();
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ReadError::Bad(400, "bad chunk size"));
        }
        let size =
            u64::from_str_radix(hex, 16).map_err(|_| ReadError::Bad(400, "bad chunk size"))?;
        if size == 0 {
            let trailers = read_fields(rd)?;
            return Ok((body, trailers));
        }
        if size > (MAX_BODY - body.len()) as u64 {
            return Err(ReadError::Bad(413, "body too large"));
        }
        let start = body.len();
        body.resize(start + size as usize, 0);
        rd.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        rd.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(ReadError::Bad(400, "chunk not followed by CRLF"));
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}
