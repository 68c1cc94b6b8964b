//! The floor filter for callback-guard's Envoy benchmark.
//!
//! The least any Proxy-Wasm filter doing callback-guard's job must do: hold the
//! request headers back from the router until the whole body has arrived, read
//! that body into the VM once, tell the upstream something (one header), and
//! let the request go. No parsing, no verification, no logging, no metrics.
//! Whatever callback-guard costs above this is the price of its checks.
//!
//! Needs `allow_on_headers_stop_iteration: true` in the Wasm filter's
//! PluginConfig (Envoy >= 1.35). Without it Envoy turns the header-phase Pause
//! into StopAllIteration and the body never reaches `on_http_request_body`.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Floor) });
}}

struct Floor;

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        // Read the whole body once, as any checking filter must; the floor
        // itself has no use for it.
        let _body = self.get_http_request_body(0, body_size);
        self.set_http_request_header("x-floor", Some("1"));
        Action::Continue
    }
}
