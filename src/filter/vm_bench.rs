//! Measurement only (cargo feature `vm-bench`): `decide()` timed inside the
//! VM, on the bench's configuration and the seed PubStart with a valid
//! ks_md5 token, against an in-memory registry (so no hostcall is counted).
//! Compared with the native Criterion bench, it shows what V8 makes of the
//! same code.

use super::host::{self, Level};
use crate::registry::MemoryStore;
use crate::{decide, Config, Request};

const NOW: u64 = 1_700_000_000;
const ROUNDS: u64 = 20_000;

fn now_ns() -> u64 {
    host::now_ns().unwrap_or(0)
}

pub fn run() {
    let key = "123456";
    let cfg = format!(
        r#"{{"apps":["live"],"push_auth":{{"scheme":"ks_md5","keys":[{{"id":"k1","secret":"{key}"}}]}},
            "callback_auth":{{"allow_cidrs":["127.0.0.0/8"]}},"max_event_age_s":600}}"#
    );
    let Ok(config) = Config::from_json(cfg.as_bytes(), &|_: &str| None) else {
        return;
    };
    let q = crate::auth::token::sign(
        crate::config::Scheme::KsMd5,
        key.as_bytes(),
        "live",
        "test",
        NOW + 3600,
    );
    let (t, k) = q.split_once("&k=").unwrap_or_default();
    let body = format!(
        r#"{{"Version":"1.0","App":"live","Pubdomain":"xxx.xxx.com","Stream":"test","PubStartUnixTime":"{NOW}000","NotifyType":"PubStart","ClientIp":" ","ClientPort":" ","Node":" ","Sequence":"s1","PubParam":{{"t":"{}","k":"{k}"}}}}"#,
        t.trim_start_matches("t=")
    );
    let headers = Vec::new();
    let req = Request {
        method: "POST",
        path: "/callback",
        content_type: Some("application/json"),
        headers: &headers,
        body: body.as_bytes(),
        source: "127.0.0.1".parse().ok(),
    };
    let store = MemoryStore::new();
    let mut forwarded = 0u64;
    // Warm up (V8 tiers hot functions up), then time.
    for _ in 0..ROUNDS {
        forwarded += u64::from(matches!(
            decide(&config, &req, NOW, &store),
            crate::Verdict::Forward(_)
        ));
    }
    let t0 = now_ns();
    for _ in 0..ROUNDS {
        forwarded += u64::from(matches!(
            decide(&config, &req, NOW, &store),
            crate::Verdict::Forward(_)
        ));
    }
    let ns = now_ns().saturating_sub(t0) / ROUNDS;
    host::log(
        Level::Warn,
        &format!("callback-guard vm-bench: decide() {ns} ns per call in the VM ({forwarded} forwarded of {})", 2 * ROUNDS),
    );
    // The glue's own work per request: decoding a typical header map (what
    // wrk and Envoy send: 9 headers) into owned strings.
    let map = crate::wire::encode_map(&[
        (":authority", "127.0.0.1:10000"),
        (":path", "/callback"),
        (":method", "POST"),
        (":scheme", "http"),
        ("content-type", "application/json"),
        ("content-length", "231"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "3f2b8a4e-6c1d-4f7a-9b2e-1d5c8e7f6a90"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
    ]);
    let mut n = 0usize;
    let t0 = now_ns();
    for _ in 0..ROUNDS {
        n += crate::wire::decode_map(&map).len();
    }
    let ns = now_ns().saturating_sub(t0) / ROUNDS;
    host::log(
        Level::Warn,
        &format!("callback-guard vm-bench: decode_map() {ns} ns per call in the VM ({n})"),
    );
}
