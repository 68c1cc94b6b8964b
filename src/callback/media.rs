//! Picks the wire format from the `content-type` header.

/// The two body encodings callbacks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// `application/json` (KLS new version).
    Json,
    /// `application/x-www-form-urlencoded` (KLS old version, nginx-rtmp).
    Form,
}

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
}
