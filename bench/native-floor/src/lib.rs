//! The native floor filter for callback-guard's Envoy benchmark (see
//! Cargo.toml): hold, read the whole body once, one header, continue. No
//! parsing, no verification, no logging, no metrics, no panic barrier.
#![allow(clippy::missing_safety_doc)]

#[path = "../../../src/native/abi.rs"]
mod abi;

use abi::{EnvoyBuffer, ModuleBuffer};

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    abi::ABI_VERSION.as_ptr()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _envoy: abi::ConfigEnvoy,
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> abi::ConfigModule {
    abi::ABI_VERSION.as_ptr().cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(_c: abi::ConfigModule) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    _c: abi::ConfigModule,
    _envoy: abi::FilterEnvoy,
) -> abi::FilterModule {
    abi::ABI_VERSION.as_ptr().cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    _envoy: abi::FilterEnvoy,
    _m: abi::FilterModule,
    end_of_stream: bool,
) -> u32 {
    if end_of_stream {
        abi::HEADERS_CONTINUE
    } else {
        abi::HEADERS_STOP_ITERATION
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: abi::FilterEnvoy,
    _m: abi::FilterModule,
    end_of_stream: bool,
) -> u32 {
    if !end_of_stream {
        return abi::BODY_STOP_AND_BUFFER;
    }
    // Read the whole body once, as any checking filter must.
    let mut body = Vec::new();
    for kind in [abi::BUFFERED_REQUEST_BODY, abi::RECEIVED_REQUEST_BODY] {
        // SAFETY: the live filter of this hook; the array is sized by Envoy's count.
        unsafe {
            let n = abi::envoy_dynamic_module_callback_http_get_body_chunks_size(envoy, kind);
            let mut chunks = vec![EnvoyBuffer::NULL; n];
            if n > 0
                && abi::envoy_dynamic_module_callback_http_get_body_chunks(
                    envoy,
                    kind,
                    chunks.as_mut_ptr(),
                )
            {
                for c in chunks {
                    body.extend_from_slice(c.bytes());
                }
            }
        }
    }
    std::hint::black_box(&body);
    // SAFETY: as above; the buffers live for the call.
    unsafe {
        abi::envoy_dynamic_module_callback_http_add_header(
            envoy,
            abi::REQUEST_HEADER,
            ModuleBuffer::of(b"x-floor"),
            ModuleBuffer::of(b"1"),
        );
    }
    abi::BODY_CONTINUE
}

macro_rules! nothing {
    ($($name:ident($($arg:ty),*) $(-> $ret:ty = $v:expr)?;)*) => {
        $(
            #[no_mangle]
            #[allow(unused_variables)]
            pub extern "C" fn $name($(_: $arg),*) $(-> $ret)? { $($v)? }
        )*
    };
}

nothing! {
    envoy_dynamic_module_on_http_filter_request_trailers(abi::FilterEnvoy, abi::FilterModule) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_response_headers(abi::FilterEnvoy, abi::FilterModule, bool) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_response_body(abi::FilterEnvoy, abi::FilterModule, bool) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_response_trailers(abi::FilterEnvoy, abi::FilterModule) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_stream_complete(abi::FilterEnvoy, abi::FilterModule);
    envoy_dynamic_module_on_http_filter_destroy(abi::FilterModule);
    envoy_dynamic_module_on_http_filter_http_callout_done(abi::FilterEnvoy, abi::FilterModule, u64, u32, *const abi::EnvoyHeader, usize, *const EnvoyBuffer, usize);
    envoy_dynamic_module_on_http_filter_scheduled(abi::FilterEnvoy, abi::FilterModule, u64);
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(abi::FilterEnvoy, abi::FilterModule);
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(abi::FilterEnvoy, abi::FilterModule);
    envoy_dynamic_module_on_http_filter_http_stream_headers(abi::FilterEnvoy, abi::FilterModule, u64, *const abi::EnvoyHeader, usize, bool);
    envoy_dynamic_module_on_http_filter_http_stream_data(abi::FilterEnvoy, abi::FilterModule, u64, *const EnvoyBuffer, usize, bool);
    envoy_dynamic_module_on_http_filter_http_stream_trailers(abi::FilterEnvoy, abi::FilterModule, u64, *const abi::EnvoyHeader, usize);
    envoy_dynamic_module_on_http_filter_http_stream_complete(abi::FilterEnvoy, abi::FilterModule, u64);
    envoy_dynamic_module_on_http_filter_http_stream_reset(abi::FilterEnvoy, abi::FilterModule, u64, u32);
}
