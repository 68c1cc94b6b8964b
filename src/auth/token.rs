//! Push and play tokens: the signed parameters of a push (or play) URL.
//!
//! Both purposes use the same schemes, each with its own keys
//! (`push_auth`, `play_auth`, kept apart by the configuration), so a token
//! of one purpose never verifies as the other.
//!
//! - `ks_md5` is KLS "simple authentication" (doc 1062): `t` is a 10-digit
//!   expiry in Unix seconds, `k` is characters `[8..24)` of the lowercase hex
//!   `md5(key + stream + t)`.
//! - `hmac_sha256`: `sign` is the lowercase hex of
//!   HMAC-SHA256(key, `app + "\n" + stream + "\n" + t`); an optional `kid`
//!   picks the key.
//!
//! Signatures must be lowercase hex, as both schemes define them; uppercase is
//! refused with its own message rather than silently folded.
//!
//! Expiry is checked on events that begin something (a push start, a play)
//! only: a push or play that began with a valid token may end hours after
//! `t`, and its end must still get through.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::{AuthError, Purpose, TokenError};
use crate::callback::Callback;
use crate::config::{Scheme, TokenAuth, TokenKey};

type HmacSha256 = Hmac<Sha256>;
use sha2::Sha256;

/// Verifies the token of `cb` (a push's or a play's, by its event) against
/// `auth`, and returns the id of the key that matched.
pub fn verify(auth: &TokenAuth, cb: &Callback, now_s: u64) -> Result<String, AuthError> {
    let expiry_checked_at = cb.event.begins().then_some(now_s);
    check(auth, cb, expiry_checked_at).map_err(|e| AuthError::Token(Purpose::of(cb.event), e))
}

/// Whether the token of `cb` is signed by one of `auth`'s keys, expiry
/// aside: tells a token of the other purpose (a push token presented to
/// play) from a forgery, for the refusal's message.
pub fn signed_by(auth: &TokenAuth, cb: &Callback) -> bool {
    check(auth, cb, None).is_ok()
}

/// The token check; the expiry only when `now_s` is given.
fn check(auth: &TokenAuth, cb: &Callback, now_s: Option<u64>) -> Result<String, TokenError> {
    let t = cb.params.get("t").ok_or(TokenError::MissingParam("t"))?;
    let expiry = parse_expiry(t)?;
    let (param, hex_len) = match auth.scheme {
        Scheme::KsMd5 => ("k", 16),
        Scheme::HmacSha256 => ("sign", 64),
    };
    let presented_hex = cb
        .params
        .get(param)
        .ok_or(TokenError::MissingParam(param))?;
    let presented = decode_lower_hex(presented_hex, param, hex_len)?;

    if now_s.is_some_and(|now| now > expiry.saturating_add(auth.clock_skew_s)) {
        return Err(TokenError::Expired);
    }

    let domain = cb.domain.as_deref();
    let kid = match auth.scheme {
        Scheme::HmacSha256 => cb.params.get("kid"),
        Scheme::KsMd5 => None,
    };
    let mut candidates = auth
        .keys
        .iter()
        .filter(|k| k.applies_to(&cb.app, domain))
        .filter(|k| kid.is_none_or(|id| k.id == id))
        .peekable();
    if candidates.peek().is_none() {
        return Err(if kid.is_some() {
            TokenError::UnknownKid
        } else {
            TokenError::NoKeyInScope
        });
    }
    let matched = super::first_match(candidates, |key| match auth.scheme {
        Scheme::KsMd5 => ks_md5_matches(key, &cb.stream, t, &presented),
        Scheme::HmacSha256 => hmac_matches(key, &cb.app, &cb.stream, t, &presented),
    });
    matched
        .map(|k| k.id.clone())
        .ok_or(TokenError::BadSignature)
}

fn parse_expiry(t: &str) -> Result<u64, TokenError> {
    if t.len() != 10 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TokenError::BadExpiry);
    }
    t.parse().map_err(|_| TokenError::BadExpiry)
}

/// Decodes a signature that must be exactly `len` lowercase hex characters.
fn decode_lower_hex(s: &str, param: &'static str, len: usize) -> Result<Vec<u8>, TokenError> {
    if s.len() != len {
        return Err(TokenError::SignLength { param, len });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(TokenError::SignNotHex(param));
    }
    hex::decode(s).map_err(|_| TokenError::SignNotHex(param))
}

/// `md5(key + stream + t)`; `k` is hex chars `[8..24)`, i.e. digest bytes `[4..12)`.
fn ks_md5_matches(key: &TokenKey, stream: &str, t: &str, presented: &[u8]) -> bool {
    let digest = ks_md5_digest(key.secret.expose(), stream, t);
    digest[4..12].ct_eq(presented).into()
}

fn ks_md5_digest(key: &[u8], stream: &str, t: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(key);
    h.update(stream.as_bytes());
    h.update(t.as_bytes());
    h.finalize().into()
}

fn hmac_matches(key: &TokenKey, app: &str, stream: &str, t: &str, presented: &[u8]) -> bool {
    match HmacSha256::new_from_slice(key.secret.expose()) {
        Ok(mut mac) => {
            hmac_input(&mut mac, app, stream, t);
            mac.verify_slice(presented).is_ok()
        }
        Err(_) => false,
    }
}

fn hmac_input(mac: &mut HmacSha256, app: &str, stream: &str, t: &str) {
    mac.update(app.as_bytes());
    mac.update(b"\n");
    mac.update(stream.as_bytes());
    mac.update(b"\n");
    mac.update(t.as_bytes());
}

/// Why a key of one purpose would sign what a key of the other signs
/// (see [`signs_alike`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alike {
    /// The same bytes.
    Same,
    /// `ks_md5` hashes `key + stream + t` without a separator: when one key
    /// begins with the other (`K` and `Kc`), the token of stream `am1` under
    /// `Kc` is the token of stream `cam1` under `K`.
    Prefix,
    /// HMAC pads a key shorter than its 64-byte block with zero bytes and
    /// hashes a longer one first: `K` and `K\0` (or a long key and its
    /// SHA-256) are one HMAC key.
    SameHmacKey,
}

/// Whether a token signed with key `a` (scheme `sa`) can pass as one signed
/// with key `b` (scheme `sb`), for some app, stream and expiry: the
/// configuration refuses a play key and a push key that do, since a play
/// token must never open a push, nor a push token a play. Keys of two
/// schemes never do: the token's parameters differ (`k`, `sign`).
pub fn signs_alike(sa: Scheme, a: &[u8], sb: Scheme, b: &[u8]) -> Option<Alike> {
    if a == b {
        return Some(Alike::Same);
    }
    match (sa, sb) {
        (Scheme::KsMd5, Scheme::KsMd5) if a.starts_with(b) || b.starts_with(a) => {
            Some(Alike::Prefix)
        }
        (Scheme::HmacSha256, Scheme::HmacSha256) if hmac_block(a) == hmac_block(b) => {
            Some(Alike::SameHmacKey)
        }
        _ => None,
    }
}

/// The key HMAC-SHA256 actually uses, without its zero padding: the key
/// itself, or its SHA-256 when longer than the 64-byte block (RFC 2104).
fn hmac_block(key: &[u8]) -> Vec<u8> {
    let block = if key.len() > 64 {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    let end = block.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    block[..end].to_vec()
}

/// Mints a token's query string (`t=…&k=…` or `t=…&sign=…`), for
/// `callback-guard sign`: the same for a push or a play token, whose
/// purpose is the key's.
pub fn sign(scheme: Scheme, key: &[u8], app: &str, stream: &str, expires_at: u64) -> String {
    let t = expires_at.to_string();
    match scheme {
        Scheme::KsMd5 => {
            let digest = hex::encode(ks_md5_digest(key, stream, &t));
            format!("t={t}&k={}", &digest[8..24])
        }
        Scheme::HmacSha256 => {
            let sig = match HmacSha256::new_from_slice(key) {
                Ok(mut mac) => {
                    hmac_input(&mut mac, app, stream, &t);
                    hex::encode(mac.finalize().into_bytes())
                }
                // HMAC accepts keys of any length; this arm is unreachable in practice.
                Err(_) => String::new(),
            };
            format!("t={t}&sign={sig}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::{Callback, Event, Format, Params};
    use crate::secret::Secret;

    /// A push token failure.
    fn push(e: TokenError) -> AuthError {
        AuthError::Token(Purpose::Push, e)
    }

    fn key(id: &str, secret: &str) -> TokenKey {
        TokenKey {
            id: id.into(),
            secret: Secret::new(secret),
            apps: None,
            domains: None,
        }
    }

    fn auth(scheme: Scheme, keys: Vec<TokenKey>) -> TokenAuth {
        TokenAuth {
            scheme,
            keys,
            clock_skew_s: 0,
        }
    }

    fn cb(event: Event, query: &str) -> Callback {
        let mut params = Params::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            params.insert(k.into(), v.into()).unwrap();
        }
        Callback {
            format: Format::KlsV2,
            event,
            app: "live".into(),
            stream: "stream".into(),
            domain: Some("push.example.com".into()),
            event_time_ms: None,
            session: None,
            params,
            client_ip: None,
            client_port: None,
            node: None,
            close_mode: None,
        }
    }

    const NOW: u64 = 1560096000;

    #[test]
    fn kls_doc_worked_example() {
        assert_eq!(
            hex::encode(ks_md5_digest(b"123456", "stream", "1560096712")),
            "c628321f4f88e741140240e2e5c5bd90"
        );
        assert_eq!(
            sign(Scheme::KsMd5, b"123456", "live", "stream", 1560096712),
            "t=1560096712&k=4f88e741140240e2"
        );
        let a = auth(Scheme::KsMd5, vec![key("doc", "123456")]);
        let c = cb(Event::Start, "t=1560096712&k=4f88e741140240e2");
        assert_eq!(verify(&a, &c, NOW).unwrap(), "doc");
    }

    #[test]
    fn ks_md5_wrong_key_or_stream_fails() {
        let a = auth(Scheme::KsMd5, vec![key("doc", "1234567")]);
        let c = cb(Event::Start, "t=1560096712&k=4f88e741140240e2");
        assert_eq!(verify(&a, &c, NOW), Err(push(TokenError::BadSignature)));
        let a = auth(Scheme::KsMd5, vec![key("doc", "123456")]);
        let mut c = cb(Event::Start, "t=1560096712&k=4f88e741140240e2");
        c.stream = "stream2".into();
        assert_eq!(verify(&a, &c, NOW), Err(push(TokenError::BadSignature)));
    }

    #[test]
    fn hmac_round_trip_and_tamper() {
        let secret = "0123456789abcdef0123";
        let q = sign(
            Scheme::HmacSha256,
            secret.as_bytes(),
            "live",
            "stream",
            NOW + 60,
        );
        let a = auth(Scheme::HmacSha256, vec![key("h1", secret)]);
        assert_eq!(verify(&a, &cb(Event::Start, &q), NOW).unwrap(), "h1");
        // the app is signed too
        let mut c = cb(Event::Start, &q);
        c.app = "other".into();
        assert_eq!(verify(&a, &c, NOW), Err(push(TokenError::BadSignature)));
        // a changed t breaks the signature
        let t2 = q.replace(&format!("t={}", NOW + 60), &format!("t={}", NOW + 61));
        assert_eq!(
            verify(&a, &cb(Event::Start, &t2), NOW),
            Err(push(TokenError::BadSignature))
        );
    }

    #[test]
    fn hmac_known_vector() {
        // HMAC-SHA256("0123456789abcdef", "live\nstream\n1700000000"), computed independently.
        let q = sign(
            Scheme::HmacSha256,
            b"0123456789abcdef",
            "live",
            "stream",
            1700000000,
        );
        let mut mac = HmacSha256::new_from_slice(b"0123456789abcdef").unwrap();
        mac.update(b"live\nstream\n1700000000");
        let want = hex::encode(mac.finalize().into_bytes());
        assert_eq!(q, format!("t=1700000000&sign={want}"));
        assert_eq!(want.len(), 64);
    }

    #[test]
    fn kid_picks_the_key() {
        let s1 = "aaaaaaaaaaaaaaaaaaaa";
        let s2 = "bbbbbbbbbbbbbbbbbbbb";
        let a = auth(Scheme::HmacSha256, vec![key("old", s1), key("new", s2)]);
        let q = sign(
            Scheme::HmacSha256,
            s2.as_bytes(),
            "live",
            "stream",
            NOW + 60,
        );
        assert_eq!(
            verify(&a, &cb(Event::Start, &format!("{q}&kid=new")), NOW).unwrap(),
            "new"
        );
        assert_eq!(
            verify(&a, &cb(Event::Start, &format!("{q}&kid=old")), NOW),
            Err(push(TokenError::BadSignature))
        );
        assert_eq!(
            verify(&a, &cb(Event::Start, &format!("{q}&kid=gone")), NOW),
            Err(push(TokenError::UnknownKid))
        );
    }

    #[test]
    fn rotation_old_new_and_retired_keys() {
        let old = "oldkey1";
        let new = "newkey2";
        let retired = "retired3";
        let a = auth(Scheme::KsMd5, vec![key("new", new), key("old", old)]);
        for (secret, want) in [
            (old, Ok("old")),
            (new, Ok("new")),
            (retired, Err(push(TokenError::BadSignature))),
        ] {
            let q = sign(Scheme::KsMd5, secret.as_bytes(), "live", "stream", NOW + 60);
            assert_eq!(
                verify(&a, &cb(Event::Start, &q), NOW)
                    .as_deref()
                    .map_err(Clone::clone),
                want,
                "{secret}"
            );
        }
    }

    #[test]
    fn key_scoping_by_app_and_domain() {
        let mut scoped = key("scoped", "scopedkey");
        scoped.apps = Some(vec!["live".into()]);
        scoped.domains = Some(vec!["push.example.com".into()]);
        let a = auth(Scheme::KsMd5, vec![scoped]);
        let q = sign(Scheme::KsMd5, b"scopedkey", "live", "stream", NOW + 60);
        assert_eq!(verify(&a, &cb(Event::Start, &q), NOW).unwrap(), "scoped");
        let mut c = cb(Event::Start, &q);
        c.app = "vod".into();
        assert_eq!(verify(&a, &c, NOW), Err(push(TokenError::NoKeyInScope)));
        let mut c = cb(Event::Start, &q);
        c.domain = Some("other.example.com".into());
        assert_eq!(verify(&a, &c, NOW), Err(push(TokenError::NoKeyInScope)));
    }

    #[test]
    fn expiry_applies_to_starts_only_with_skew() {
        let mut a = auth(Scheme::KsMd5, vec![key("k", "abc")]);
        let q = sign(Scheme::KsMd5, b"abc", "live", "stream", NOW);
        assert!(
            verify(&a, &cb(Event::Start, &q), NOW).is_ok(),
            "now == t is valid"
        );
        assert_eq!(
            verify(&a, &cb(Event::Start, &q), NOW + 1),
            Err(push(TokenError::Expired))
        );
        a.clock_skew_s = 30;
        assert!(verify(&a, &cb(Event::Start, &q), NOW + 30).is_ok());
        assert_eq!(
            verify(&a, &cb(Event::Start, &q), NOW + 31),
            Err(push(TokenError::Expired))
        );
        // an end hours later still verifies its signature
        assert!(verify(&a, &cb(Event::End, &q), NOW + 5 * 3600).is_ok());
        let forged = q
            .replace("&k=", "&k=0")
            .chars()
            .take(q.len())
            .collect::<String>();
        assert!(verify(&a, &cb(Event::End, &forged), NOW + 5 * 3600).is_err());
    }

    #[test]
    fn malformed_tokens_each_have_their_message() {
        let a = auth(Scheme::KsMd5, vec![key("k", "abc")]);
        let cases = [
            ("k=4f88e741140240e2", TokenError::MissingParam("t")),
            ("t=1560096712", TokenError::MissingParam("k")),
            ("t=156009671&k=4f88e741140240e2", TokenError::BadExpiry),
            ("t=15600967120&k=4f88e741140240e2", TokenError::BadExpiry),
            ("t=1560o96712&k=4f88e741140240e2", TokenError::BadExpiry),
            (
                "t=1560096712&k=4f88e741140240e",
                TokenError::SignLength {
                    param: "k",
                    len: 16,
                },
            ),
            (
                "t=1560096712&k=4f88e741140240e2a",
                TokenError::SignLength {
                    param: "k",
                    len: 16,
                },
            ),
            (
                "t=1560096712&k=4f88e741140240g2",
                TokenError::SignNotHex("k"),
            ),
            (
                "t=1560096712&k=4F88E741140240E2",
                TokenError::SignNotHex("k"),
            ),
        ];
        for (q, want) in cases {
            assert_eq!(
                verify(&a, &cb(Event::Start, q), NOW),
                Err(push(want)),
                "{q}"
            );
        }
        let h = auth(Scheme::HmacSha256, vec![key("h", "0123456789abcdef")]);
        assert_eq!(
            verify(&h, &cb(Event::Start, "t=1560096712"), NOW),
            Err(push(TokenError::MissingParam("sign")))
        );
        assert_eq!(
            verify(&h, &cb(Event::Start, "t=1560096712&sign=abc"), NOW),
            Err(push(TokenError::SignLength {
                param: "sign",
                len: 64
            }))
        );
        let lower = sign(
            Scheme::HmacSha256,
            b"0123456789abcdef",
            "live",
            "s",
            1_560_096_712,
        );
        let sig = lower.rsplit("sign=").next().unwrap().to_string();
        for bad in [sig.to_uppercase(), format!("{}z", &sig[..63])] {
            assert_eq!(
                verify(
                    &h,
                    &cb(Event::Start, &format!("t=1560096712&sign={bad}")),
                    NOW
                ),
                Err(push(TokenError::SignNotHex("sign"))),
                "{bad}"
            );
        }
    }

    /// A play's token: the same rules, its own purpose in every message,
    /// expiry binding the play itself only.
    #[test]
    fn play_tokens_follow_the_same_rules_with_their_own_messages() {
        let a = auth(Scheme::KsMd5, vec![key("viewer", "playkey1")]);
        let q = sign(Scheme::KsMd5, b"playkey1", "live", "stream", NOW + 60);
        assert_eq!(verify(&a, &cb(Event::Play, &q), NOW).unwrap(), "viewer");
        let late = NOW + 3600;
        let e = verify(&a, &cb(Event::Play, &q), late).unwrap_err();
        assert_eq!(e, AuthError::Token(Purpose::Play, TokenError::Expired));
        assert_eq!(e.to_string(), "play token expired");
        for ends in [Event::PlayEnd, Event::PlayUpdate] {
            assert!(verify(&a, &cb(ends, &q), late).is_ok(), "{ends:?}");
        }
        let forged = cb(Event::Play, &format!("t={}&k=0123456789abcdef", NOW + 60));
        assert_eq!(
            verify(&a, &forged, NOW).unwrap_err().to_string(),
            "play token signature does not match"
        );
        assert!(!signed_by(&a, &forged));
        // signed_by ignores the expiry: it only tells whose key signed it.
        assert!(signed_by(&a, &cb(Event::Play, &q)));
        let old = sign(Scheme::KsMd5, b"playkey1", "live", "stream", NOW - 7200);
        assert!(signed_by(&a, &cb(Event::Play, &old)));
        assert_eq!(
            AuthError::Token(Purpose::Play, TokenError::OtherPurpose).to_string(),
            "play token signature does not match: it is a push token, and push tokens never open a play (mint play URLs with `callback-guard sign --for play`)"
        );
    }

    #[test]
    fn keys_that_sign_alike_are_told() {
        use Scheme::{HmacSha256 as H, KsMd5 as K};
        assert_eq!(signs_alike(K, b"abc", K, b"abc"), Some(Alike::Same));
        assert_eq!(signs_alike(K, b"abc", H, b"abc"), Some(Alike::Same));
        assert_eq!(
            signs_alike(K, b"pushKey1", K, b"pushKey1c"),
            Some(Alike::Prefix)
        );
        assert_eq!(
            signs_alike(K, b"pushKey1c", K, b"pushKey1"),
            Some(Alike::Prefix)
        );
        assert_eq!(signs_alike(K, b"pushKey1", K, b"playKey1"), None);
        // ks_md5's concatenation, shown: the tokens are the same.
        assert_eq!(
            sign(K, b"pushKey1c", "live", "am1", NOW),
            sign(K, b"pushKey1", "live", "cam1", NOW)
        );
        // A prefix under two schemes is no threat: `k` is not `sign`.
        assert_eq!(
            signs_alike(K, b"pushKey1", H, b"pushKey1c-0123456789"),
            None
        );
        let k = b"0123456789abcdef-push";
        let mut nul = k.to_vec();
        nul.push(0);
        assert_eq!(signs_alike(H, k, H, &nul), Some(Alike::SameHmacKey));
        assert_eq!(
            sign(H, k, "live", "s", NOW),
            sign(H, &nul, "live", "s", NOW)
        );
        let long = [7u8; 80];
        let hashed = Sha256::digest(long);
        assert_eq!(signs_alike(H, &long, H, &hashed), Some(Alike::SameHmacKey));
        assert_eq!(
            sign(H, &long, "live", "s", NOW),
            sign(H, &hashed, "live", "s", NOW)
        );
        assert_eq!(signs_alike(H, k, H, b"0123456789abcdef-play"), None);
        // An HMAC prefix is another key.
        assert_eq!(signs_alike(H, k, H, b"0123456789abcdef-push2"), None);
    }

    #[test]
    fn messages_show_no_values() {
        let a = auth(Scheme::KsMd5, vec![key("k", "123456")]);
        for q in [
            "t=1560096712&k=4f88e741140240e3",
            "t=1560096712&k=4F88E741140240E2",
            "t=1560096712&k=4f88",
        ] {
            let msg = verify(&a, &cb(Event::Start, q), NOW)
                .unwrap_err()
                .to_string();
            for secret in ["123456", "4f88", "4F88", "c628321f", "1560096712"] {
                assert!(!msg.contains(secret), "{msg} shows {secret}");
            }
        }
    }
}
