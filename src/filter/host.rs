//! The Envoy side of the Proxy-Wasm ABI 0.2.1: the hostcalls the filter
//! imports, wrapped so that every status comes back as a `Result`.
//!
//! The proxy-wasm SDK panics on statuses it does not expect (and on header
//! values that are not UTF-8); a panic aborts the VM for every later request,
//! so the filter talks to the host through these wrappers instead.

use std::ptr::{null, null_mut};

use crate::wire;

/// A non-OK status from the host (ABI numbering: 1 NotFound, 2 BadArgument, 8 CasMismatch …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

/// Compare-and-swap mismatch on shared data.
pub const CAS_MISMATCH: Status = Status(8);
/// The key or value does not exist.
pub const NOT_FOUND: Status = Status(1);

/// Log levels: the lifecycle's are numbered as the ABI's.
pub use crate::lifecycle::Level;

/// Buffers the filter reads.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum Buffer {
    HttpRequestBody = 0,
    HttpResponseBody = 1,
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

/// Header maps the filter reads or changes.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum Map {
    HttpRequestHeaders = 0,
    HttpCallResponseHeaders = 6,
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_http_call(
        upstream_data: *const u8,
        upstream_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        body_data: *const u8,
        body_size: usize,
        trailers_data: *const u8,
        trailers_size: usize,
        timeout: u32,
        return_token: *mut u32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
}

fn ok(status: u32) -> Result<(), Status> {
    if status == 0 {
        Ok(())
    } else {
        Err(Status(status))
    }
}

/// Takes ownership of bytes the host wrote into memory it got from
/// `proxy_on_memory_allocate` (see `super::proxy_on_memory_allocate`).
///
/// # Safety
/// `data` must be null or come from `proxy_on_memory_allocate(size)`.
unsafe fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(data, size, size))
    }
}

/// Writes a line to Envoy's log.
pub fn log(level: Level, msg: &str) {
    // SAFETY: pointer and length describe a live &str.
    let _ = unsafe { proxy_log(level as u32, msg.as_ptr(), msg.len()) };
}

/// The host's current log level for this plugin (Info if it will not say).
pub fn log_level() -> u32 {
    let mut level = Level::Info as u32;
    // SAFETY: the host writes one u32 through the pointer.
    match ok(unsafe { proxy_get_log_level(&mut level) }) {
        Ok(()) => level,
        Err(_) => Level::Info as u32,
    }
}

/// Host wall clock in nanoseconds.
#[cfg(feature = "vm-bench")]
pub fn now_ns() -> Option<u64> {
    let mut ns = 0u64;
    // SAFETY: the host writes one u64 through the pointer.
    ok(unsafe { proxy_get_current_time_nanoseconds(&mut ns) }).ok()?;
    Some(ns)
}

/// Reads up to `max` bytes of a buffer.
pub fn buffer(kind: Buffer, start: usize, max: usize) -> Result<Vec<u8>, Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the host fills data/size with memory from proxy_on_memory_allocate.
    unsafe {
        match ok(proxy_get_buffer_bytes(
            kind as u32,
            start,
            max,
            &mut data,
            &mut size,
        )) {
            Ok(()) => Ok(owned(data, size).unwrap_or_default()),
            Err(NOT_FOUND) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

/// All pairs of a header map, and the bytes of its names and values as the
/// host counts them (before any lossy UTF-8 decoding).
pub fn headers(map: Map) -> Result<(Vec<(String, String)>, usize), Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: as in `buffer`.
    unsafe {
        ok(proxy_get_header_map_pairs(map as u32, &mut data, &mut size))?;
        Ok(owned(data, size)
            .map(|b| (wire::decode_map(&b), wire::map_payload_bytes(&b)))
            .unwrap_or_default())
    }
}

/// Removes a header (only while the headers are still held by this filter).
pub fn remove_header(map: Map, name: &str) -> Result<(), Status> {
    // SAFETY: pointer and length describe a live &str.
    ok(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// Adds a header (only while the headers are still held by this filter).
pub fn add_header(map: Map, name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: pointers and lengths describe live &strs.
    ok(unsafe {
        proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// One value of a header map (`None` when absent).
pub fn header_value(map: Map, name: &str) -> Result<Option<Vec<u8>>, Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: as in `buffer`.
    unsafe {
        match ok(proxy_get_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            &mut data,
            &mut size,
        )) {
            Ok(()) => Ok(owned(data, size)),
            Err(NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Sends an HTTP request to an Envoy cluster; the answer comes to
/// `proxy_on_http_call_response` of this VM's root context, with the token
/// returned here. Envoy makes the call on the root context, so it outlives the
/// request that asked for it.
pub fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, Status> {
    let h = wire::encode_map(headers);
    let t = wire::encode_map(&[]);
    let mut token = 0u32;
    // SAFETY: pointers and lengths describe live slices; the host writes one u32.
    ok(unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            h.as_ptr(),
            h.len(),
            body.as_ptr(),
            body.len(),
            t.as_ptr(),
            t.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// Lets a request held by this filter go on (acts on the effective context).
pub fn continue_request() -> Result<(), Status> {
    // SAFETY: a plain value (0: the HTTP request stream).
    ok(unsafe { proxy_continue_stream(0) })
}

/// Defines a histogram; `None` if the host refuses.
pub fn histogram(name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: the host writes one u32 through the pointer.
    ok(unsafe { proxy_define_metric(2, name.as_ptr(), name.len(), &mut id) }).ok()?;
    Some(id)
}

/// Defines a gauge (metric type 1).
pub fn gauge(name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: the host writes one u32 through the pointer.
    ok(unsafe { proxy_define_metric(1, name.as_ptr(), name.len(), &mut id) }).ok()?;
    Some(id)
}

/// Records one value in a histogram, or sets a gauge.
pub fn record(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        // SAFETY: plain values.
        let _ = unsafe { proxy_record_metric(id, value) };
    }
}

/// Host wall clock in milliseconds.
pub fn now_ms() -> Option<u64> {
    let mut ns = 0u64;
    // SAFETY: the host writes one u64 through the pointer.
    ok(unsafe { proxy_get_current_time_nanoseconds(&mut ns) }).ok()?;
    Some(ns / 1_000_000)
}

/// Sets a property; Envoy keeps it as filter state `wasm.<name>`, which a
/// client cannot set (unlike a header).
pub fn set_property(name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths describe live slices.
    ok(unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Asks for `proxy_on_tick` on the root context every `ms` milliseconds.
pub fn set_tick_period_ms(ms: u32) -> Result<(), Status> {
    // SAFETY: a plain value.
    ok(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// Makes later hostcalls of this VM call act on another context (a request,
/// from the root context's tick).
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: a plain value.
    ok(unsafe { proxy_set_effective_context(context_id) })
}

/// Reads a property such as `source.address`.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let p = wire::property_path(path);
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: as in `buffer`.
    unsafe {
        match ok(proxy_get_property(
            p.as_ptr(),
            p.len(),
            &mut data,
            &mut size,
        )) {
            Ok(()) => Ok(owned(data, size)),
            Err(NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Reads shared data: the value and its CAS version.
pub fn shared_get(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let mut data = null_mut();
    let mut size = 0;
    let mut cas = 0u32;
    // SAFETY: as in `buffer`, plus one u32 written through `cas`.
    unsafe {
        match ok(proxy_get_shared_data(
            key.as_ptr(),
            key.len(),
            &mut data,
            &mut size,
            &mut cas,
        )) {
            Ok(()) => Ok((
                owned(data, size).or(Some(Vec::new())),
                (cas != 0).then_some(cas),
            )),
            Err(NOT_FOUND) => Ok((None, None)),
            Err(e) => Err(e),
        }
    }
}

/// Writes shared data if the version is still `cas` (`None`: unconditionally).
pub fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    // SAFETY: pointers and lengths describe live slices.
    ok(unsafe {
        proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    })
}

/// Answers the request from the filter.
pub fn send_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), Status> {
    let h = wire::encode_map(headers);
    // SAFETY: pointers and lengths describe live slices.
    ok(unsafe {
        proxy_send_local_response(
            u32::from(status),
            null(),
            0,
            body.as_ptr(),
            body.len(),
            h.as_ptr(),
            h.len(),
            -1,
        )
    })
}

/// Defines a counter; `None` if the host refuses (metrics are then skipped).
pub fn counter(name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: the host writes one u32 through the pointer.
    ok(unsafe { proxy_define_metric(0, name.as_ptr(), name.len(), &mut id) }).ok()?;
    Some(id)
}

/// Adds `n` to a counter.
pub fn add_to_counter(id: Option<u32>, n: u64) {
    if let Some(id) = id {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        // SAFETY: plain values.
        let _ = unsafe { proxy_increment_metric(id, n) };
    }
}
