//! callback-guard: verifies live-streaming push callbacks at the Envoy edge.
//!
//! Module map (every rule is plain Rust that `cargo test` runs natively):
//! - [`callback`]: the typed model and the JSON / form parsers;
//! - [`config`]: the plugin configuration and its validation;
//! - [`lifecycle`]: one request's life as a state machine without I/O,
//!   written once for every host (events in, effects out);
//! - [`auth`]: push tokens and sender checks;
//! - [`registry`]: the live-stream registry behind `ExistStreamName`;
//! - [`verdict`]: the one decision, `decide()`;
//! - [`reply`]: codes, statuses and reply bodies;
//! - [`wire`]: the Proxy-Wasm ABI's byte formats;
//! - `filter` (wasm only): the proxy-wasm host adapter (callbacks to
//!   lifecycle events, effects to hostcalls), exporting only what it uses;
//! - `native` (feature `native`, `make native`): the Envoy dynamic-module
//!   host adapter, from the same lifecycle.

pub mod auth;
pub mod callback;
pub mod config;
pub mod lifecycle;
pub mod registry;
pub mod reply;
pub mod secret;
pub mod verdict;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod filter;

#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
mod native;

pub use config::Config;
pub use verdict::{decide, Action, Forward, Rejection, Request, Verdict};

/// The crate version, logged once when the VM starts.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
