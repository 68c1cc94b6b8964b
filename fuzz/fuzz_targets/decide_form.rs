//! `decide()` on arbitrary form bodies, under every fixed configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cg_fuzz::run_body("application/x-www-form-urlencoded", data);
});
