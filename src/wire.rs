//! The byte formats of the Proxy-Wasm ABI (0.2.1) that the filter exchanges
//! with Envoy: header maps and property paths.
//!
//! Kept apart from the glue so it is plain Rust under `cargo test`. Decoding
//! never panics: Envoy passes header values as bytes, and a value that is not
//! UTF-8 (obs-text is legal HTTP) must not take the VM down, as an unwrap in a
//! decoder would.

/// Decodes a serialized header map: `u32` count, then `u32` key and value
/// lengths per pair, then each key and value followed by a NUL byte. Pairs
/// that are not UTF-8 are kept lossily (they can only fail later checks);
/// a truncated map yields the pairs read so far.
pub fn decode_map(bytes: &[u8]) -> Vec<(String, String)> {
    let Some(count) = read_u32(bytes, 0) else {
        return Vec::new();
    };
    let count = count as usize;
    let Some(mut p) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(count.min(256));
    for n in 0..count {
        let (Some(klen), Some(vlen)) = (read_u32(bytes, 4 + n * 8), read_u32(bytes, 8 + n * 8))
        else {
            break;
        };
        let Some(key) = take(bytes, &mut p, klen as usize) else {
            break;
        };
        let Some(value) = take(bytes, &mut p, vlen as usize) else {
            break;
        };
        out.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    out
}

/// The bytes of the names and values in a serialized map (what Envoy counts
/// as a header map's byte size), without decoding it: the map's length less
/// its count, the two lengths and the two NULs of each pair. 0 when malformed.
pub fn map_payload_bytes(bytes: &[u8]) -> usize {
    let Some(count) = read_u32(bytes, 0) else {
        return 0;
    };
    (count as usize)
        .checked_mul(10)
        .and_then(|n| n.checked_add(4))
        .and_then(|framing| bytes.len().checked_sub(framing))
        .unwrap_or(0)
}

/// Encodes a header map in the same format.
pub fn encode_map(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 10 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// An integer property (such as `response.code`): Envoy sends it as 8 bytes,
/// little-endian; text digits are accepted too.
pub fn decode_int(bytes: &[u8]) -> Option<i64> {
    match <[u8; 8]>::try_from(bytes) {
        Ok(b) => Some(i64::from_le_bytes(b)),
        Err(_) => std::str::from_utf8(bytes).ok()?.trim().parse().ok(),
    }
}

/// A property path: segments separated by NUL bytes.
pub fn property_path(segments: &[&str]) -> Vec<u8> {
    segments.join("\0").into_bytes()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Takes `len` bytes at `*p` and skips the NUL after them.
fn take<'a>(bytes: &'a [u8], p: &mut usize, len: usize) -> Option<&'a [u8]> {
    let end = p.checked_add(len)?;
    let s = bytes.get(*p..end)?;
    *p = end.checked_add(1)?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let pairs = [
            (":method", "POST"),
            ("content-type", "application/json"),
            ("x-empty", ""),
        ];
        let enc = encode_map(&pairs);
        let dec = decode_map(&enc);
        let want: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(dec, want);
    }

    #[test]
    fn empty_and_truncated_maps() {
        assert!(decode_map(&[]).is_empty());
        assert!(decode_map(&[1, 0]).is_empty());
        let enc = encode_map(&[("a", "1"), ("b", "2")]);
        let dec = decode_map(&enc[..enc.len() - 3]);
        assert_eq!(dec, vec![("a".to_string(), "1".to_string())]);
        // an absurd count does not allocate or loop
        assert!(decode_map(&[0xff, 0xff, 0xff, 0xff]).is_empty());
    }

    #[test]
    fn non_utf8_values_do_not_panic() {
        let mut enc = encode_map(&[("x", "ab")]);
        let at = enc.len() - 3;
        enc[at] = 0xff;
        let dec = decode_map(&enc);
        assert_eq!(dec[0].0, "x");
        assert!(dec[0].1.contains('\u{fffd}'));
    }

    #[test]
    fn payload_bytes_count_names_and_values_only() {
        let enc = encode_map(&[(":method", "POST"), ("x-empty", ""), ("k", "\u{e9}")]);
        assert_eq!(map_payload_bytes(&enc), 7 + 4 + 7 + 1 + 2);
        assert_eq!(map_payload_bytes(&encode_map(&[])), 0);
        assert_eq!(map_payload_bytes(&[]), 0);
        assert_eq!(map_payload_bytes(&[0xff, 0xff, 0xff, 0xff]), 0);
    }

    #[test]
    fn integer_properties() {
        assert_eq!(decode_int(&200i64.to_le_bytes()), Some(200));
        assert_eq!(decode_int(b"503"), Some(503));
        assert_eq!(decode_int(b""), None);
        assert_eq!(decode_int(b"abc"), None);
    }

    #[test]
    fn property_paths() {
        assert_eq!(property_path(&["source", "address"]), b"source\0address");
        assert_eq!(property_path(&["x"]), b"x");
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_map(&bytes);
        }
    }
}
