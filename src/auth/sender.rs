//! Sender checks on the callback request itself: where it came from
//! (`allow_cidrs`) and whether it carries the shared key.

use std::net::IpAddr;

use ipnet::IpNet;

use super::AuthError;
use crate::config::{CallbackAuth, NamedSecret, SharedKey};

/// Finds the sender's address. With `trusted_xff_hops = 0` it is the
/// downstream address and `X-Forwarded-For` is ignored. With N > 0 the
/// request passed N proxies we trust, each appending to `X-Forwarded-For`,
/// so the sender is the N-th entry from the right.
pub fn sender_addr(
    auth: &CallbackAuth,
    downstream: Option<IpAddr>,
    forwarded_for: Option<&str>,
) -> Result<IpAddr, AuthError> {
    let hops = auth.trusted_xff_hops;
    if hops == 0 {
        return downstream.ok_or(AuthError::SenderUnknown);
    }
    let list: Vec<&str> = forwarded_for
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if list.len() < hops {
        return Err(AuthError::ForwardedForShort);
    }
    list[list.len() - hops]
        .parse()
        .map_err(|_| AuthError::SenderUnknown)
}

/// Checks that `addr` is inside one of `cidrs`.
pub fn check_cidrs(cidrs: &[IpNet], addr: IpAddr) -> Result<(), AuthError> {
    // An IPv4 peer may arrive as ::ffff:a.b.c.d on a dual-stack listener.
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    if cidrs.iter().any(|n| n.contains(&addr)) {
        Ok(())
    } else {
        Err(AuthError::SenderNotAllowed)
    }
}

/// The value of a query parameter of a request path, percent-decoded.
/// A parameter given twice is ambiguous and counts as two presentations.
fn query_values<'a>(path: &'a str, name: &'a str) -> impl Iterator<Item = String> + 'a {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(query.as_bytes())
        .filter(move |(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Checks the shared key. Every presented value (header and/or query) must
/// match a configured key; at least one must be presented. Returns the key id.
pub fn check_shared_key(
    sk: &SharedKey,
    path: &str,
    header_value: Option<&str>,
) -> Result<String, AuthError> {
    let mut presented: Vec<String> = Vec::new();
    if let Some(h) = header_value {
        presented.push(h.to_string());
    }
    if let Some(q) = &sk.query_param {
        presented.extend(query_values(path, q));
    }
    if presented.is_empty() {
        return Err(AuthError::SharedKeyMissing);
    }
    let mut id = None;
    for p in &presented {
        match match_any(&sk.keys, p.as_bytes()) {
            Some(k) => id = id.or(Some(k)),
            None => return Err(AuthError::SharedKeyMismatch),
        }
    }
    id.map(|k| k.id.clone()).ok_or(AuthError::SharedKeyMismatch)
}

/// Compares against every key (constant time per key, no early exit).
fn match_any<'a>(keys: &'a [NamedSecret], presented: &[u8]) -> Option<&'a NamedSecret> {
    super::first_match(keys, |k| k.secret.matches(presented))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn cidrs_v4_and_v6() {
        let n = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        assert!(check_cidrs(&n, "10.1.2.3".parse().unwrap()).is_ok());
        assert!(check_cidrs(&n, "2001:db8::1".parse().unwrap()).is_ok());
        assert_eq!(
            check_cidrs(&n, "11.0.0.1".parse().unwrap()),
            Err(AuthError::SenderNotAllowed)
        );
        assert_eq!(
            check_cidrs(&n, "2001:db9::1".parse().unwrap()),
            Err(AuthError::SenderNotAllowed)
        );
        assert!(check_cidrs(&n, "::ffff:10.0.0.1".parse().unwrap()).is_ok());
    }

    #[test]
    fn xff_is_ignored_unless_hops_are_trusted() {
        let mut a = CallbackAuth::default();
        let down: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(sender_addr(&a, Some(down), Some("10.0.0.1")).unwrap(), down);
        assert_eq!(
            sender_addr(&a, None, Some("10.0.0.1")),
            Err(AuthError::SenderUnknown)
        );
        a.trusted_xff_hops = 1;
        assert_eq!(
            sender_addr(&a, Some(down), Some("6.6.6.6, 10.0.0.1")).unwrap(),
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "the rightmost entry was written by the trusted proxy"
        );
        a.trusted_xff_hops = 2;
        assert_eq!(
            sender_addr(&a, Some(down), Some("6.6.6.6, 10.0.0.1")).unwrap(),
            "6.6.6.6".parse::<IpAddr>().unwrap()
        );
        a.trusted_xff_hops = 3;
        assert_eq!(
            sender_addr(&a, Some(down), Some("6.6.6.6, 10.0.0.1")),
            Err(AuthError::ForwardedForShort)
        );
        assert_eq!(
            sender_addr(&a, Some(down), None),
            Err(AuthError::ForwardedForShort)
        );
        a.trusted_xff_hops = 1;
        assert_eq!(
            sender_addr(&a, Some(down), Some("garbage")),
            Err(AuthError::SenderUnknown)
        );
    }

    fn sk(query: Option<&str>, header: Option<&str>) -> SharedKey {
        SharedKey {
            query_param: query.map(Into::into),
            header: header.map(Into::into),
            keys: vec![
                NamedSecret {
                    id: "cur".into(),
                    secret: Secret::new("s3cr3t-current"),
                },
                NamedSecret {
                    id: "prev".into(),
                    secret: Secret::new("s3cr3t-previous"),
                },
            ],
        }
    }

    #[test]
    fn shared_key_in_query_with_rotation() {
        let s = sk(Some("auth_key"), None);
        assert_eq!(
            check_shared_key(&s, "/callback?auth_key=s3cr3t-current", None).unwrap(),
            "cur"
        );
        assert_eq!(
            check_shared_key(&s, "/callback?x=1&auth_key=s3cr3t-previous", None).unwrap(),
            "prev"
        );
        assert_eq!(
            check_shared_key(&s, "/callback?auth_key=s3cr3t-%63urrent", None).unwrap(),
            "cur"
        );
        assert_eq!(
            check_shared_key(&s, "/callback?auth_key=nope", None),
            Err(AuthError::SharedKeyMismatch)
        );
        assert_eq!(
            check_shared_key(&s, "/callback", None),
            Err(AuthError::SharedKeyMissing)
        );
        assert_eq!(
            check_shared_key(&s, "/callback?auth_key=s3cr3t-current&auth_key=bad", None),
            Err(AuthError::SharedKeyMismatch),
            "a second, wrong value is not ignored"
        );
    }

    #[test]
    fn shared_key_under_a_custom_query_param() {
        let s = sk(Some("cdn_token"), None);
        assert_eq!(
            check_shared_key(&s, "/callback?cdn_token=s3cr3t-current", None).unwrap(),
            "cur"
        );
        assert_eq!(
            check_shared_key(&s, "/callback?auth_key=s3cr3t-current", None),
            Err(AuthError::SharedKeyMissing),
            "only the configured name counts"
        );
    }

    #[test]
    fn shared_key_in_header() {
        let s = sk(None, Some("x-cdn-key"));
        assert_eq!(
            check_shared_key(&s, "/callback", Some("s3cr3t-current")).unwrap(),
            "cur"
        );
        assert_eq!(
            check_shared_key(&s, "/callback?auth_key=s3cr3t-current", None),
            Err(AuthError::SharedKeyMissing)
        );
        assert_eq!(
            check_shared_key(&s, "/callback", Some("s3cr3t-curren")),
            Err(AuthError::SharedKeyMismatch)
        );
    }
}
