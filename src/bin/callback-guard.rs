//! `callback-guard`: the native companion of the filter.
//!
//! - `check` runs the very `decide()` the filter runs, on a body from stdin;
//! - `check-config` lists every problem of a configuration file;
//! - `sign` mints push and play tokens and URLs for operators.

use std::io::Read;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use callback_guard::auth::{token, Purpose};
use callback_guard::config::{ProcessEnv, Scheme};
use callback_guard::registry::MemoryStore;
use callback_guard::verdict::WOULD_REJECT_HEADER;
use callback_guard::{decide, Action, Config, Request};
use clap::{Parser, Subcommand, ValueEnum};

#[path = "cli/envoy_yaml.rs"]
mod envoy_yaml;

#[derive(Parser)]
#[command(
    name = "callback-guard",
    version,
    about = "Verify live-push and play callbacks the way the Envoy filter does"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Decide one callback read from stdin, as the filter does; prints one JSON line.
    ///
    /// Exit status: 0 = forwarded; 1 = refused at the edge; 2 = usage or
    /// configuration error; 3 = forwarded by `"mode": "observe"` although it
    /// fails a check (the line's `would_reject` says how enforce mode would
    /// answer, and `headers` holds `x-callback-guard-would-reject`).
    Check {
        /// Plugin configuration (JSON, as in the Envoy filter's `configuration`).
        #[arg(long)]
        config: String,
        /// The request's content-type. `--content-type ''` sends none, as KLS's
        /// old-version sender does: the body then picks the parser, as in the
        /// filter (`{` after whitespace is JSON, anything else a form).
        #[arg(long, default_value = "application/json")]
        content_type: String,
        /// The request's method.
        #[arg(long, default_value = "POST")]
        method: String,
        /// The request's path, with query (where a shared key may sit).
        #[arg(long, default_value = "/callback")]
        path: String,
        /// An extra request header, `Name: value`; repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// The sender's address (downstream peer).
        #[arg(long)]
        source_addr: Option<IpAddr>,
        /// Current time in Unix seconds (default: now).
        #[arg(long)]
        now: Option<u64>,
    },
    /// Print every problem of a configuration file, or `ok`. Exit 0 = ok, 2 = problems.
    ///
    /// A `.yaml` / `.yml` file is an Envoy bootstrap or manifests (any number of
    /// documents): each callback-guard filter's configuration in it is checked
    /// (the Wasm filter's `configuration`, the dynamic module's `filter_config`,
    /// Envoy Gateway's `EnvoyExtensionPolicy` and Istio's `WasmPlugin` config),
    /// one result per filter, prefixed with its document and path. No such
    /// filter in the file is a problem too.
    CheckConfig {
        /// Configuration file: the plugin configuration (JSON), or Envoy YAML.
        file: String,
    },
    /// Mint a push or play token: prints `t=…&k=…` / `t=…&sign=…`, or the URL with `--url`.
    ///
    /// Push and play tokens have the same shape; what makes one a play token
    /// is the key: sign with a `play_auth` key for `--for play`, with a
    /// `push_auth` key for `--for push` (the default). The filter refuses a
    /// token signed with the other purpose's key.
    Sign {
        /// What the token opens: a push (push_auth's keys) or a play (play_auth's keys).
        #[arg(long = "for", value_enum, default_value = "push")]
        purpose: PurposeArg,
        /// Token scheme (push_auth.scheme or play_auth.scheme).
        #[arg(long, value_enum)]
        scheme: SchemeArg,
        #[command(flatten)]
        key: KeyArg,
        /// App name (signed by hmac_sha256).
        #[arg(long)]
        app: String,
        /// Stream name.
        #[arg(long)]
        stream: String,
        #[command(flatten)]
        expires: ExpiryArg,
        /// Key id to add as `kid` (hmac_sha256 only).
        #[arg(long)]
        kid: Option<String>,
        /// Push (or play) URL base, rtmp://host/APP (its app must be --app) or
        /// rtmp://host (the app is added); prints the whole URL.
        #[arg(long)]
        url: Option<String>,
    },
}

/// `sign`'s key: exactly one of the two (a missing one names both).
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct KeyArg {
    /// The key (prefer --key-env to keep it out of the process list).
    #[arg(long)]
    key: Option<String>,
    /// Environment variable holding the key.
    #[arg(long)]
    key_env: Option<String>,
}

/// `sign`'s expiry: exactly one of the two.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct ExpiryArg {
    /// Lifetime from now, in seconds.
    #[arg(long)]
    expires_in: Option<u64>,
    /// Expiry as Unix seconds.
    #[arg(long)]
    expires_at: Option<u64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PurposeArg {
    /// A push URL's token (a push_auth key).
    Push,
    /// A play URL's token (a play_auth key).
    Play,
}

#[derive(Clone, Copy, ValueEnum)]
enum SchemeArg {
    #[value(name = "ks_md5")]
    KsMd5,
    #[value(name = "hmac_sha256")]
    HmacSha256,
}

/// `check`: refused at the edge.
const EXIT_REJECT: u8 = 1;
/// `check`: forwarded in observe mode, though it would have been refused.
const EXIT_OBSERVED: u8 = 3;

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn is_yaml(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml")
}

/// `check-config` on Envoy YAML: one line per callback-guard filter,
/// `document N, PATH: ok` or one per problem; warnings on stderr.
fn check_yaml(file: &str) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            println!("{file}: {e}");
            return ExitCode::from(2);
        }
    };
    let found = match envoy_yaml::find(&text) {
        Ok(f) => f,
        Err(e) => {
            println!("{file}: not valid YAML: {e}");
            return ExitCode::from(2);
        }
    };
    if found.is_empty() {
        println!(
            "{file}: no callback-guard filter found (a Wasm filter or dynamic module naming callback_guard, \
             an EnvoyExtensionPolicy or a WasmPlugin)"
        );
        return ExitCode::from(2);
    }
    let mut failed = false;
    for f in found {
        let place = if f.path.is_empty() {
            format!("document {}", f.document)
        } else {
            format!("document {}, {}", f.document, f.path)
        };
        let result = f.config.map_err(|e| vec![e]).and_then(|text| {
            Config::from_json(text.as_bytes(), &ProcessEnv)
                .map_err(|errs| errs.iter().map(ToString::to_string).collect())
        });
        match result {
            Ok(config) => {
                println!("{place}: ok");
                for w in config.warnings() {
                    eprintln!("{place}: warning: {w}");
                }
            }
            Err(problems) => {
                failed = true;
                for p in problems {
                    println!("{place}: {p}");
                }
            }
        }
    }
    if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

fn load_config(path: &str) -> Result<Config, Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| vec![format!("{path}: {e}")])?;
    Config::from_json(&bytes, &ProcessEnv)
        .map_err(|errs| errs.iter().map(ToString::to_string).collect())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.cmd {
        Cmd::CheckConfig { file } if is_yaml(&file) => check_yaml(&file),
        Cmd::CheckConfig { file } => match load_config(&file) {
            Ok(config) => {
                println!("ok");
                for w in config.warnings() {
                    eprintln!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in problems {
                    println!("{p}");
                }
                ExitCode::from(2)
            }
        },
        Cmd::Check {
            config,
            content_type,
            method,
            path,
            headers,
            source_addr,
            now,
        } => check(
            &config,
            &content_type,
            &method,
            &path,
            &headers,
            source_addr,
            now,
        ),
        Cmd::Sign {
            purpose,
            scheme,
            key: KeyArg { key, key_env },
            app,
            stream,
            expires:
                ExpiryArg {
                    expires_in,
                    expires_at,
                },
            kid,
            url,
        } => {
            let key = match (key, key_env) {
                (Some(k), _) => k,
                (None, Some(var)) => {
                    match std::env::var(&var) {
                        Ok(k) if !k.is_empty() => k,
                        _ => {
                            eprintln!("callback-guard sign: environment variable `{var}` is not set or empty");
                            return ExitCode::from(2);
                        }
                    }
                }
                (None, None) => {
                    eprintln!("callback-guard sign: give --key or --key-env");
                    return ExitCode::from(2);
                }
            };
            let scheme = match scheme {
                SchemeArg::KsMd5 => Scheme::KsMd5,
                SchemeArg::HmacSha256 => Scheme::HmacSha256,
            };
            let purpose = match purpose {
                PurposeArg::Push => Purpose::Push,
                PurposeArg::Play => Purpose::Play,
            };
            let expires =
                expires_at.unwrap_or_else(|| now_s().saturating_add(expires_in.unwrap_or(0)));
            let mint = Mint {
                purpose,
                scheme,
                key: &key,
                app: &app,
                stream: &stream,
                expires,
                kid: kid.as_deref(),
                url: url.as_deref(),
            };
            match sign(&mint) {
                Ok(out) => {
                    println!("{out}");
                    ExitCode::SUCCESS
                }
                Err(msg) => {
                    eprintln!("callback-guard sign: {msg}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// What `sign` is asked to mint.
#[derive(Clone, Copy)]
struct Mint<'a> {
    purpose: Purpose,
    scheme: Scheme,
    key: &'a str,
    app: &'a str,
    stream: &'a str,
    expires: u64,
    kid: Option<&'a str>,
    url: Option<&'a str>,
}

/// The token's query, or the whole URL with `--url`.
fn sign(m: &Mint<'_>) -> Result<String, String> {
    let Mint {
        purpose,
        scheme,
        key,
        app,
        stream,
        expires,
        kid,
        url,
    } = *m;
    let p = purpose.as_str();
    match scheme {
        Scheme::KsMd5 => {
            if key.len() > 32 || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!(
                    "a ks_md5 {p} key is at most 32 letters or digits (KLS rule)"
                ));
            }
            if kid.is_some() {
                return Err("--kid applies to hmac_sha256 only".into());
            }
        }
        Scheme::HmacSha256 => {
            if key.len() < 16 {
                return Err(format!("an hmac_sha256 {p} key is at least 16 bytes"));
            }
        }
    }
    if !(1_000_000_000..=9_999_999_999).contains(&expires) {
        return Err("the expiry must be a 10-digit Unix time".into());
    }
    let mut query = token::sign(scheme, key.as_bytes(), app, stream, expires);
    if let Some(k) = kid {
        query.push_str("&kid=");
        query.extend(form_urlencoded::byte_serialize(k.as_bytes()));
    }
    Ok(match url {
        None => query,
        Some(base) => {
            let base = url_base(base, app, scheme, purpose)?;
            let segment: String =
                percent_encoding::utf8_percent_encode(stream, percent_encoding::NON_ALPHANUMERIC)
                    .collect();
            format!("{base}/{segment}?{query}")
        }
    })
}

/// The push (or play) URL up to the stream: `--url` with the app `--app`
/// names. A URL of another app is refused for hmac_sha256 (which signs the
/// app: the push or play could never pass) and warned about for ks_md5 (its
/// callback carries the URL's app, which `apps` and key scoping then see).
fn url_base(base: &str, app: &str, scheme: Scheme, purpose: Purpose) -> Result<String, String> {
    let p = purpose.as_str();
    let base = base.trim_end_matches('/');
    let Some((_, rest)) = base.split_once("://") else {
        return Err(format!(
            "--url `{base}` is not a URL like rtmp://host/{app}"
        ));
    };
    if base.contains('?') || base.contains('#') {
        return Err(format!(
            "--url takes the {p} URL without a query; sign adds it"
        ));
    }
    let url_app = rest.split_once('/').map_or("", |(_, path)| path);
    if url_app.is_empty() {
        return Ok(format!("{base}/{app}"));
    }
    if url_app == app {
        return Ok(base.to_string());
    }
    let why = format!("--url is for app `{url_app}`, but --app is `{app}`");
    match scheme {
        Scheme::HmacSha256 => Err(format!(
            "{why}: hmac_sha256 signs the app, so this {p} could never pass"
        )),
        Scheme::KsMd5 => {
            eprintln!("callback-guard sign: warning: {why}: the callback will say app `{url_app}`");
            Ok(base.to_string())
        }
    }
}

fn check(
    config: &str,
    content_type: &str,
    method: &str,
    path: &str,
    headers: &[String],
    source: Option<IpAddr>,
    now: Option<u64>,
) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            return ExitCode::from(2);
        }
    };
    let mut pairs = Vec::new();
    for h in headers {
        match h.split_once(':') {
            Some((k, v)) => pairs.push((k.trim().to_ascii_lowercase(), v.trim().to_string())),
            None => {
                eprintln!("--header must look like 'Name: value'");
                return ExitCode::from(2);
            }
        }
    }
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut body) {
        eprintln!("cannot read the body from stdin: {e}");
        return ExitCode::from(2);
    }
    let req = Request {
        method,
        path,
        content_type: Some(content_type).filter(|t| !t.is_empty()),
        headers: &pairs,
        body: &body,
        source,
    };
    let store = MemoryStore::new();
    let verdict = decide(&config, &req, now.unwrap_or_else(now_s), &store);
    // What the filter does with the verdict under the configured mode.
    match verdict.under(config.mode) {
        Action::Forward(f) => {
            print_outcome(&Outcome {
                action: "forward",
                status: 200,
                code: "",
                message: format!("verified: {}", f.verified.join(",")),
                would_reject: None,
                headers: Some(added_headers(&f.headers())),
            });
            ExitCode::SUCCESS
        }
        Action::Refuse(r) => {
            print_outcome(&Outcome {
                action: "reject",
                status: r.code.status(),
                code: r.code.as_str(),
                message: r.message,
                would_reject: None,
                headers: None,
            });
            ExitCode::from(EXIT_REJECT)
        }
        Action::Observe(r) => {
            let mark = [(WOULD_REJECT_HEADER, r.code.as_str().to_string())];
            print_outcome(&Outcome {
                action: "forward",
                status: 200,
                code: "",
                message: format!("observe mode: would reject: {}", r.message),
                would_reject: Some(WouldReject {
                    status: r.code.status(),
                    code: r.code.as_str(),
                    message: r.message.clone(),
                }),
                headers: Some(added_headers(&mark)),
            });
            ExitCode::from(EXIT_OBSERVED)
        }
    }
}

/// The headers the filter adds to a forwarded callback: those with a value
/// (src/filter/mod.rs skips an empty one, such as the key id when push
/// tokens are not checked).
fn added_headers(headers: &[(&str, String)]) -> serde_json::Map<String, serde_json::Value> {
    headers
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
        .collect()
}

/// The one JSON line `check` prints, keys in this order.
#[derive(serde::Serialize)]
struct Outcome {
    action: &'static str,
    status: u16,
    code: &'static str,
    message: String,
    /// Observe mode: the refusal the callback was forwarded despite.
    #[serde(skip_serializing_if = "Option::is_none")]
    would_reject: Option<WouldReject>,
    /// The `x-callback-guard-*` headers a forward adds.
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What enforce mode would have answered.
#[derive(serde::Serialize)]
struct WouldReject {
    status: u16,
    code: &'static str,
    message: String,
}

fn print_outcome(o: &Outcome) {
    match serde_json::to_string(o) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("cannot print the outcome: {e}"),
    }
}
