//! Standard Webhooks signatures: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature` (a space-separated list of `v1,<base64>`), signed as
//! HMAC-SHA256(secret, `id.timestamp.body`). The timestamp must lie within
//! `tolerance_s` of now in both directions.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::AuthError;
use crate::config::WebhookSignature;

/// The three Standard Webhooks headers as received (any may be absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhookHeaders<'a> {
    /// `webhook-id`
    pub id: Option<&'a str>,
    /// `webhook-timestamp`
    pub timestamp: Option<&'a str>,
    /// `webhook-signature`
    pub signature: Option<&'a str>,
}

/// Verifies the signature over `body`; returns the id of the key that matched.
pub fn verify(
    cfg: &WebhookSignature,
    h: WebhookHeaders<'_>,
    body: &[u8],
    now_s: u64,
) -> Result<String, AuthError> {
    let id = h.id.ok_or(AuthError::WebhookMissingHeader("webhook-id"))?;
    let ts = h
        .timestamp
        .ok_or(AuthError::WebhookMissingHeader("webhook-timestamp"))?;
    let sigs = h
        .signature
        .ok_or(AuthError::WebhookMissingHeader("webhook-signature"))?;
    if ts.is_empty() || ts.len() > 12 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::WebhookBadTimestamp);
    }
    let ts_s: u64 = ts.parse().map_err(|_| AuthError::WebhookBadTimestamp)?;
    if ts_s.abs_diff(now_s) > cfg.tolerance_s {
        return Err(AuthError::WebhookStale);
    }
    let presented: Vec<Vec<u8>> = sigs
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .collect();
    let matched = super::first_match(&cfg.keys, |key| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.secret.expose()) else {
            return false;
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(body);
        // every presented signature is checked against every key
        super::first_match(&presented, |sig| mac.clone().verify_slice(sig).is_ok()).is_some()
    });
    matched
        .map(|k| k.id.clone())
        .ok_or(AuthError::WebhookMismatch)
}

/// Signs like a Standard Webhooks sender would (`v1,<base64>`), for tests and tools.
pub fn sign(secret: &[u8], id: &str, ts: u64, body: &[u8]) -> String {
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(format!("{id}.{ts}.").as_bytes());
            mac.update(body);
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            )
        }
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, NamedSecret};
    use crate::secret::Secret;

    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: u64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn cfg() -> WebhookSignature {
        let c = Config::from_json(
            br#"{"callback_auth":{"webhook_signature":{"keys":[{"id":"w1","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]}}}"#,
            &|_: &str| None,
        )
        .unwrap();
        c.callback_auth.webhook_signature.unwrap()
    }

    fn headers(sig: &str) -> WebhookHeaders<'_> {
        WebhookHeaders {
            id: Some(ID),
            timestamp: Some("1614265330"),
            signature: Some(sig),
        }
    }

    #[test]
    fn published_vector_verifies() {
        assert_eq!(verify(&cfg(), headers(SIG), BODY, TS).unwrap(), "w1");
        let key = cfg().keys[0].secret.clone();
        assert_eq!(sign(key.expose(), ID, TS, BODY), SIG);
    }

    #[test]
    fn one_of_several_signatures_is_enough() {
        let list = format!("v1,AAAA v2,xyz {SIG}");
        assert!(verify(&cfg(), headers(&list), BODY, TS).is_ok());
    }

    #[test]
    fn rotation_of_secrets() {
        let mut c = cfg();
        c.keys.insert(
            0,
            NamedSecret {
                id: "new".into(),
                secret: Secret::new("another-secret-key"),
            },
        );
        assert_eq!(verify(&c, headers(SIG), BODY, TS).unwrap(), "w1");
    }

    #[test]
    fn tampered_body_or_id_fails() {
        assert_eq!(
            verify(&cfg(), headers(SIG), br#"{"test": 2432232315}"#, TS),
            Err(AuthError::WebhookMismatch)
        );
        let mut h = headers(SIG);
        h.id = Some("msg_other");
        assert_eq!(verify(&cfg(), h, BODY, TS), Err(AuthError::WebhookMismatch));
    }

    #[test]
    fn tolerance_both_directions() {
        let c = cfg();
        assert!(verify(&c, headers(SIG), BODY, TS + 300).is_ok());
        assert!(verify(&c, headers(SIG), BODY, TS - 300).is_ok());
        assert_eq!(
            verify(&c, headers(SIG), BODY, TS + 301),
            Err(AuthError::WebhookStale)
        );
        assert_eq!(
            verify(&c, headers(SIG), BODY, TS - 301),
            Err(AuthError::WebhookStale)
        );
    }

    #[test]
    fn missing_and_malformed_headers() {
        let c = cfg();
        let mut h = headers(SIG);
        h.id = None;
        assert_eq!(
            verify(&c, h, BODY, TS),
            Err(AuthError::WebhookMissingHeader("webhook-id"))
        );
        let mut h = headers(SIG);
        h.timestamp = Some("16142653x0");
        assert_eq!(verify(&c, h, BODY, TS), Err(AuthError::WebhookBadTimestamp));
        let mut h = headers(SIG);
        h.signature = None;
        assert_eq!(
            verify(&c, h, BODY, TS),
            Err(AuthError::WebhookMissingHeader("webhook-signature"))
        );
        assert_eq!(
            verify(&c, headers("v1,!!!notbase64"), BODY, TS),
            Err(AuthError::WebhookMismatch)
        );
    }
}
