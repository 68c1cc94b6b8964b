//! `callback-receiver`: the demo and test upstream behind Envoy.
//!
//! It prints every callback it receives (with the `x-callback-guard-*`
//! headers) and records it, so tests can assert what reached the upstream.
//! Plain HTTP/1.1 over std, no runtime and no C dependencies, so it also
//! builds as a static musl binary.
//!
//! - any request: recorded, printed, answered `200 {"ok":true}`, or with the
//!   status named by an `x-receiver-status` header;
//! - `GET /__received`: the recorded requests as JSON;
//! - `DELETE /__received`: forget them;
//! - `GET /__health`: `ok`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;

/// Largest request body accepted (callbacks are small).
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Largest request head accepted.
const MAX_HEAD_LINES: usize = 200;

#[derive(Clone)]
struct Recorded {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Recorded>>>;

fn main() {
    let mut listen = "127.0.0.1:8080".to_string();
    let mut quiet = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => match args.next() {
                Some(v) => listen = v,
                None => usage(),
            },
            "--quiet" => quiet = true,
            _ => usage(),
        }
    }
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("callback-receiver: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    println!("callback-receiver listening on {listen}");
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let log = log.clone();
        std::thread::spawn(move || {
            let _ = serve(conn, &log, quiet);
        });
    }
}

fn usage() -> ! {
    eprintln!("usage: callback-receiver [--listen 127.0.0.1:8080] [--quiet]");
    std::process::exit(2);
}

/// Serves one keep-alive connection until the peer closes it.
fn serve(conn: TcpStream, log: &Log, quiet: bool) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = conn.try_clone()?;
    let mut rd = BufReader::new(conn);
    loop {
        let Some(req) = read_request(&mut rd)? else {
            return Ok(());
        };
        let close =
            header(&req.headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let (status, ctype, body) = respond(&req, log, quiet);
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n{}\r\n",
            reason(status),
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        out.write_all(head.as_bytes())?;
        out.write_all(&body)?;
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}

fn respond(req: &Recorded, log: &Log, quiet: bool) -> (u16, &'static str, Vec<u8>) {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/__health") => (200, "text/plain", b"ok\n".to_vec()),
        ("GET", "/__received") => {
            let list: Vec<serde_json::Value> = log
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "method": r.method,
                        "path": r.path,
                        "headers": r.headers,
                        "body_b64": base64::engine::general_purpose::STANDARD.encode(&r.body),
                    })
                })
                .collect();
            (
                200,
                "application/json",
                serde_json::Value::Array(list).to_string().into_bytes(),
            )
        }
        ("DELETE", "/__received") => {
            if let Ok(mut l) = log.lock() {
                l.clear();
            }
            (200, "application/json", b"{\"ok\":true}".to_vec())
        }
        _ => {
            if !quiet {
                print_callback(req);
            }
            if let Ok(mut l) = log.lock() {
                l.push(req.clone());
            }
            let status = header(&req.headers, "x-receiver-status")
                .and_then(|s| s.trim().parse::<u16>().ok())
                .filter(|s| (200..600).contains(s))
                .unwrap_or(200);
            (
                status,
                "application/json",
                format!("{{\"ok\":{}}}", status < 300).into_bytes(),
            )
        }
    }
}

fn print_callback(req: &Recorded) {
    let mut s = format!("--- callback: {} {}\n", req.method, req.path);
    for (k, v) in &req.headers {
        if k.starts_with("x-callback-guard") || k == "content-type" {
            s.push_str(&format!("{k}: {v}\n"));
        }
    }
    s.push_str(&String::from_utf8_lossy(&req.body));
    s.push('\n');
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = lock.write_all(s.as_bytes());
    let _ = lock.flush();
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one request; `None` when the peer closed the connection first.
fn read_request(rd: &mut BufReader<TcpStream>) -> std::io::Result<Option<Recorded>> {
    let mut line = String::new();
    if rd.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(bad("bad request line"));
    };
    let (method, path) = (method.to_string(), path.to_string());
    let mut headers = Vec::new();
    for _ in 0..MAX_HEAD_LINES {
        let mut h = String::new();
        if rd.read_line(&mut h)? == 0 {
            return Err(bad("connection closed in headers"));
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            let body = read_body(rd, &headers)?;
            return Ok(Some(Recorded {
                method,
                path,
                headers,
                body,
            }));
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Err(bad("too many header lines"))
}

fn read_body(
    rd: &mut BufReader<TcpStream>,
    headers: &[(String, String)],
) -> std::io::Result<Vec<u8>> {
    let chunked = header(headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        loop {
            let mut size_line = String::new();
            rd.read_line(&mut size_line)?;
            let size_hex = size_line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
            if body.len() + size > MAX_BODY {
                return Err(bad("body too large"));
            }
            if size == 0 {
                // Trailers, if any, end with an empty line.
                loop {
                    let mut t = String::new();
                    if rd.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size, 0);
            rd.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            rd.read_exact(&mut crlf)?;
        }
    }
    let len = header(headers, "content-length")
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| bad("bad content-length"))
        })
        .transpose()?
        .unwrap_or(0);
    if len > MAX_BODY {
        return Err(bad("body too large"));
    }
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body)?;
    Ok(body)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
