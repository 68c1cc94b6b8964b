//! The edge's own answers: error code → HTTP status and the KLS-style JSON body.

/// Every code the filter answers with. Spellings are the contract's
/// (`AuthencationFailed` is the KLS spec's own spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// Not a POST.
    MethodNotAllowed,
    /// Neither JSON nor a form (or that dialect is switched off).
    UnsupportedMediaType,
    /// Body over `max_body_bytes`.
    PayloadTooLarge,
    /// A required field is absent.
    MissingParameter,
    /// A field has the wrong type or form; the body cannot be parsed.
    InvalidParameterValue,
    /// A sender check or the push token failed.
    AuthencationFailed,
    /// The app is not in `apps`.
    NonExistApplication,
    /// Another session is pushing this stream.
    ExistStreamName,
    /// The filter is deployed in a way that cannot check callbacks (the
    /// request body never reaches it: `allow_on_headers_stop_iteration`).
    InternalError,
    /// The stream registry could not answer (etcd unreachable, without a
    /// leader, slow, or answering garbage; shared data contended or full),
    /// so a start cannot be checked for a live duplicate.
    ServiceUnavailable,
}

impl Code {
    /// All codes, for metrics set-up.
    pub const ALL: [Code; 10] = [
        Code::MethodNotAllowed,
        Code::UnsupportedMediaType,
        Code::PayloadTooLarge,
        Code::MissingParameter,
        Code::InvalidParameterValue,
        Code::AuthencationFailed,
        Code::NonExistApplication,
        Code::ExistStreamName,
        Code::InternalError,
        Code::ServiceUnavailable,
    ];

    /// The code as written in replies and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::MethodNotAllowed => "MethodNotAllowed",
            Code::UnsupportedMediaType => "UnsupportedMediaType",
            Code::PayloadTooLarge => "PayloadTooLarge",
            Code::MissingParameter => "MissingParameter",
            Code::InvalidParameterValue => "InvalidParameterValue",
            Code::AuthencationFailed => "AuthencationFailed",
            Code::NonExistApplication => "NonExistApplication",
            Code::ExistStreamName => "ExistStreamName",
            Code::InternalError => "InternalError",
            Code::ServiceUnavailable => "ServiceUnavailable",
        }
    }

    /// The HTTP status of the reply.
    pub fn status(self) -> u16 {
        match self {
            Code::MethodNotAllowed => 405,
            Code::UnsupportedMediaType => 415,
            Code::PayloadTooLarge => 413,
            Code::MissingParameter | Code::InvalidParameterValue => 400,
            Code::AuthencationFailed => 403,
            Code::NonExistApplication => 404,
            Code::ExistStreamName => 409,
            Code::InternalError => 500,
            Code::ServiceUnavailable => 503,
        }
    }

    /// Who is at fault, in the body's `Error.Type`: `Sender` for a refused
    /// callback (4xx), `Receiver` when the edge itself cannot decide (5xx),
    /// as in the OpenAPI error convention KLS follows.
    pub fn fault(self) -> &'static str {
        if self.status() >= 500 {
            "Receiver"
        } else {
            "Sender"
        }
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct Body<'a> {
    request_id: &'a str,
    error: ErrorBody<'a>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody<'a> {
    r#type: &'a str,
    code: &'a str,
    message: &'a str,
}

/// The reply body: `{"RequestId","Error":{"Type","Code","Message"}}`, with
/// `Type` from [`Code::fault`].
/// `request_id` is the request's `x-request-id` (empty when absent).
/// (Typed structs rather than `json!`: no float-printing code in the wasm.)
pub fn body(code: Code, message: &str, request_id: &str) -> String {
    let b = Body {
        request_id,
        error: ErrorBody {
            r#type: code.fault(),
            code: code.as_str(),
            message,
        },
    };
    // Serializing string fields cannot fail; the fallback keeps the shape anyway.
    serde_json::to_string(&b).unwrap_or_else(|_| {
        format!(
            r#"{{"RequestId":"","Error":{{"Type":"{}","Code":"{}","Message":""}}}}"#,
            code.fault(),
            code.as_str()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_table() {
        let want = [
            (Code::MethodNotAllowed, 405),
            (Code::UnsupportedMediaType, 415),
            (Code::PayloadTooLarge, 413),
            (Code::MissingParameter, 400),
            (Code::InvalidParameterValue, 400),
            (Code::AuthencationFailed, 403),
            (Code::NonExistApplication, 404),
            (Code::ExistStreamName, 409),
            (Code::InternalError, 500),
            (Code::ServiceUnavailable, 503),
        ];
        for (code, status) in want {
            assert_eq!(code.status(), status, "{code:?}");
        }
        assert_eq!(Code::AuthencationFailed.as_str(), "AuthencationFailed");
    }

    #[test]
    fn body_shape() {
        let b = body(Code::NonExistApplication, "app is not configured", "req-1");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["RequestId"], "req-1");
        assert_eq!(v["Error"]["Type"], "Sender");
        assert_eq!(v["Error"]["Code"], "NonExistApplication");
        assert_eq!(v["Error"]["Message"], "app is not configured");
        assert_eq!(v.as_object().unwrap().len(), 2);
        let b = body(Code::InternalError, "m", "req-2");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["Error"]["Type"], "Receiver", "the edge's own failure");
    }

    #[test]
    fn request_id_is_escaped() {
        let b = body(Code::MissingParameter, "m", "a\"b\\c");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["RequestId"], "a\"b\\c");
    }
}
