//! Picks the wire format: from the `content-type` header when the sender
//! labels the body, from the body itself when it does not.
//!
//! KLS's old-version sender posts its form with no `Content-Type` at all (the
//! spec shows the request on the wire: `POST /callback HTTP/1.0`, `Host`,
//! `Connection`, `Content-Length`, body). So a missing label cannot mean
//! "refuse"; it means "look at the body". Sniffing only picks a parser: the
//! strict parsers still decide every field, so an unlabelled body that is
//! neither a KLS JSON callback nor a form callback is refused by them (400),
//! exactly as a labelled one would be. A label that names another type
//! (`text/plain`, `multipart/form-data`, …) is still refused (415).

/// The two body encodings callbacks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// `application/json` (KLS new version).
    Json,
    /// `application/x-www-form-urlencoded` (KLS old version, nginx-rtmp).
    Form,
}

/// The UTF-8 byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads a `content-type` value: the essence is compared case-insensitively,
/// surrounding spaces and parameters such as `charset` are allowed.
/// Anything else, including a missing header, is `None`.
pub fn media_type(content_type: Option<&str>) -> Option<MediaType> {
    let essence = content_type?.split(';').next()?.trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Some(MediaType::Json)
    } else if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Some(MediaType::Form)
    } else {
        None
    }
}

/// The parser for a request: by its `content-type` when it has one, else by
/// its body ([`sniff`]). `None` only for a label that is neither JSON nor a
/// form (415). A header whose value is empty or blank labels nothing and
/// counts as missing (it names no media type; the CLI's `--content-type ''`
/// means the same).
pub fn classify(content_type: Option<&str>, body: &[u8]) -> Option<MediaType> {
    match content_type {
        Some(ct) if !ct.trim().is_empty() => media_type(Some(ct)),
        _ => Some(sniff(body)),
    }
}

/// An unlabelled body is JSON when its first byte after JSON whitespace
/// (space, tab, CR, LF) is `{`; everything else goes to the form parsers.
///
/// A UTF-8 byte order mark before the `{` counts: such a body is meant as
/// JSON, so it gets the JSON parser's answer, which refuses the mark exactly
/// as it does under `application/json` (RFC 8259 §8.1 forbids senders to add
/// one). Read as a form, it would get a confusing "missing `call`" instead.
pub fn sniff(body: &[u8]) -> MediaType {
    let body = body.strip_prefix(BOM).unwrap_or(body);
    match body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
    {
        Some(b'{') => MediaType::Json,
        _ => MediaType::Form,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_both_media_types_with_case_and_parameters() {
        assert_eq!(media_type(Some("application/json")), Some(MediaType::Json));
        assert_eq!(
            media_type(Some("Application/JSON; charset=UTF-8")),
            Some(MediaType::Json)
        );
        assert_eq!(
            media_type(Some(" application/x-www-form-urlencoded ;charset=utf-8")),
            Some(MediaType::Form)
        );
        assert_eq!(
            media_type(Some("APPLICATION/X-WWW-FORM-URLENCODED")),
            Some(MediaType::Form)
        );
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(media_type(None), None);
        assert_eq!(media_type(Some("")), None);
        assert_eq!(media_type(Some("text/plain")), None);
        assert_eq!(media_type(Some("multipart/form-data; boundary=x")), None);
        assert_eq!(media_type(Some("application/jsonx")), None);
        assert_eq!(media_type(Some("application/json-seq")), None);
    }

    #[test]
    fn a_label_wins_over_the_body() {
        assert_eq!(
            classify(Some("application/x-www-form-urlencoded"), b"{\"a\":1}"),
            Some(MediaType::Form)
        );
        assert_eq!(
            classify(Some("application/json"), b"app=live"),
            Some(MediaType::Json)
        );
        for ct in ["text/plain", "multipart/form-data; boundary=x", "a/b"] {
            assert_eq!(classify(Some(ct), b"{}"), None, "{ct}");
            assert_eq!(classify(Some(ct), b"app=live"), None, "{ct}");
        }
    }

    #[test]
    fn no_label_means_the_body_decides() {
        let kls_v1 = b"app=live&name=asdf&swfurl=nil&flashver=nil&tcurl=rtmp://test.uplive.ks-cdn.com/live&call=user_publish&vdoid=123456";
        for ct in [None, Some(""), Some("   "), Some("\t")] {
            assert_eq!(classify(ct, kls_v1), Some(MediaType::Form));
            assert_eq!(classify(ct, b"{\"App\":\"live\"}"), Some(MediaType::Json));
            assert_eq!(classify(ct, b""), Some(MediaType::Form));
        }
    }

    #[test]
    fn sniffing_skips_json_whitespace_and_a_bom() {
        assert_eq!(sniff(b" \t\r\n{}"), MediaType::Json);
        assert_eq!(sniff(b"\xEF\xBB\xBF{}"), MediaType::Json);
        assert_eq!(sniff(b"\xEF\xBB\xBF \n{}"), MediaType::Json);
        // Only JSON's four whitespace bytes are skipped, and only one BOM.
        assert_eq!(sniff(b"\x0c{}"), MediaType::Form);
        assert_eq!(sniff(b"\xEF\xBB\xBF\xEF\xBB\xBF{}"), MediaType::Form);
        assert_eq!(sniff("\u{a0}{}".as_bytes()), MediaType::Form);
        // Other JSON values are not KLS callbacks: the form parser refuses them.
        assert_eq!(sniff(b"[{}]"), MediaType::Form);
        assert_eq!(sniff(b"\"{}\""), MediaType::Form);
        assert_eq!(sniff(b"   "), MediaType::Form);
    }
}
