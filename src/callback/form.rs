//! Form callbacks: KLS old version (`call=user_publish…`) and nginx-rtmp's
//! `on_publish` (`call=publish…`) and `on_play` (`call=play…`), all
//! `application/x-www-form-urlencoded`.
//!
//! The literal `nil` and the empty string mean "absent" for every field, as real
//! KLS senders write them. Push URL parameters come from the first of these
//! places that carries any: (1) extra form fields, (2) the query of `tcurl`,
//! (3) a `?query` appended to `name`. A parameter found in two places with
//! different values is refused rather than guessed at.

use super::{client_ip, domain, named, printable, Callback, CallbackError, Event, Format, Params};

/// Fields that are part of the callback itself, not URL parameters.
const KLS_FIELDS: &[&str] = &[
    "app",
    "name",
    "tcurl",
    "call",
    "vdoid",
    "close_mode",
    "swfurl",
    "flashver",
];
/// nginx-rtmp's own fields; `time` and `timestamp` come with `on_update`
/// (seconds since the publish began, stream time in ms).
const NGINX_FIELDS: &[&str] = &[
    "app",
    "name",
    "tcurl",
    "call",
    "addr",
    "clientid",
    "type",
    "flashver",
    "swfurl",
    "pageurl",
    "time",
    "timestamp",
];
/// nginx-rtmp's fields of a play (`call=play` adds `start`, `duration` and
/// `reset`, the player's request; `update_play` has `time` and `timestamp`).
const NGINX_PLAY_FIELDS: &[&str] = &[
    "app",
    "name",
    "tcurl",
    "call",
    "addr",
    "clientid",
    "flashver",
    "swfurl",
    "pageurl",
    "time",
    "timestamp",
    "start",
    "duration",
    "reset",
];

/// Parses a form callback body. The `call` value decides the dialect; whether
/// that dialect is switched on is for the caller (the decision) to say.
pub fn parse_form(body: &[u8]) -> Result<Callback, CallbackError> {
    let pairs = decode_pairs(body, "form field")?;

    let call = single(&pairs, "call")?.ok_or_else(|| CallbackError::Missing("call".into()))?;
    let (format, event) = match call {
        "user_publish" => (Format::KlsV1, Event::Start),
        "user_publish_done" => (Format::KlsV1, Event::End),
        "publish" => (Format::NginxRtmp, Event::Start),
        "publish_done" => (Format::NginxRtmp, Event::End),
        "update_publish" => (Format::NginxRtmp, Event::Update),
        "play" => (Format::NginxRtmp, Event::Play),
        "play_done" => (Format::NginxRtmp, Event::PlayEnd),
        "update_play" => (Format::NginxRtmp, Event::PlayUpdate),
        _ => return Err(CallbackError::UnknownCall),
    };
    let core = match format {
        Format::NginxRtmp if event.is_play() => NGINX_PLAY_FIELDS,
        Format::NginxRtmp => NGINX_FIELDS,
        _ => KLS_FIELDS,
    };
    // Every core field at most once, whether or not this dialect uses it.
    for f in core {
        single(&pairs, f)?;
    }

    let app = named("app", required(&pairs, "app")?.to_string())?;
    let raw_name = required(&pairs, "name")?;
    let (stream, name_query) = match raw_name.split_once('?') {
        Some((s, q)) => (s, Some(q)),
        None => (raw_name, None),
    };
    let stream = named("name", stream.to_string())?;
    let tcurl = required(&pairs, "tcurl")?;
    let url = IngestUrl::parse(tcurl)?;
    let domain = domain("tcurl", url.host)?;

    // Push parameters, by precedence.
    let extra: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| !core.contains(&k.as_str()))
        .cloned()
        .collect();
    let tcurl_params = match url.query {
        Some(q) => decode_pairs(q.as_bytes(), "tcurl query parameter")?,
        None => Vec::new(),
    };
    let name_params = match name_query {
        Some(q) => decode_pairs(q.as_bytes(), "name query parameter")?,
        None => Vec::new(),
    };
    let params = merge_params([extra, tcurl_params, name_params])?;

    let close_mode = match optional(&pairs, "close_mode")? {
        None => None,
        Some("1") => Some(1),
        Some("2") => Some(2),
        Some(_) => return Err(CallbackError::field("close_mode", "must be 1 or 2")),
    };

    let (session, client_ip) = match format {
        Format::NginxRtmp => {
            let addr = optional(&pairs, "addr")?;
            let ip = match addr {
                Some(a) => client_ip("addr", a)?,
                None => None,
            };
            // nginx-rtmp numbers clients per server, so the ingest host:port is
            // part of the identity: two servers can both have a client 1.
            let session = optional(&pairs, "clientid")?.map(|id| {
                format!(
                    "{}@{}/{}",
                    id,
                    ip.as_deref().unwrap_or("-"),
                    url.authority.to_ascii_lowercase()
                )
            });
            (session, ip)
        }
        _ => (optional(&pairs, "vdoid")?.map(str::to_string), None),
    };
    if let Some(s) = &session {
        super::check_name(s).map_err(|p| CallbackError::field("session identity", p))?;
    }

    Ok(Callback {
        format,
        event,
        app,
        stream,
        domain: Some(domain),
        event_time_ms: None,
        session,
        params,
        client_ip,
        client_port: None,
        node: None,
        close_mode,
    })
}

/// Splits and decodes `a=b&c=d`. `+` is a space; percent-escapes must decode to
/// UTF-8. Empty segments are skipped; a segment without `=` has an empty value.
pub(super) fn decode_pairs(
    body: &[u8],
    what: &str,
) -> Result<Vec<(String, String)>, CallbackError> {
    let mut out = Vec::new();
    for seg in body.split(|b| *b == b'&') {
        if seg.is_empty() {
            continue;
        }
        let (k, v) = match seg.iter().position(|b| *b == b'=') {
            Some(i) => (&seg[..i], &seg[i + 1..]),
            None => (seg, &[][..]),
        };
        let k = decode(k)
            .ok_or_else(|| CallbackError::Body(format!("has a {what} name that is not UTF-8")))?;
        if k.is_empty() {
            return Err(CallbackError::Body(format!(
                "has a {what} with an empty name"
            )));
        }
        let v = decode(v).ok_or_else(|| {
            CallbackError::invalid(format!("{what} `{}`", printable(&k)), "is not valid UTF-8")
        })?;
        out.push((k, v));
    }
    Ok(out)
}

fn decode(raw: &[u8]) -> Option<String> {
    // Nothing to decode (the usual token value): one copy.
    if !raw.iter().any(|b| *b == b'+' || *b == b'%') {
        return String::from_utf8(raw.to_vec()).ok();
    }
    let plus: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&plus).collect();
    String::from_utf8(bytes).ok()
}

/// The value of a field that may appear at most once (`None` if absent).
fn single<'a>(pairs: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, CallbackError> {
    let mut found = None;
    for (k, v) in pairs {
        if k == name {
            if found.is_some() {
                return Err(CallbackError::field(name, "is given more than once"));
            }
            found = Some(v.as_str());
        }
    }
    Ok(found)
}

/// Like [`single`], with `nil` and blank meaning absent.
fn optional<'a>(
    pairs: &'a [(String, String)],
    name: &str,
) -> Result<Option<&'a str>, CallbackError> {
    Ok(single(pairs, name)?.filter(|v| !v.is_empty() && *v != "nil"))
}

fn required<'a>(pairs: &'a [(String, String)], name: &str) -> Result<&'a str, CallbackError> {
    optional(pairs, name)?.ok_or_else(|| CallbackError::Missing(name.to_string()))
}

/// Takes the first source that carries any parameter. A later source may
/// repeat a name only with the same value.
fn merge_params(sources: [Vec<(String, String)>; 3]) -> Result<Params, CallbackError> {
    let mut params = Params::default();
    let mut chosen = false;
    for source in sources {
        if source.is_empty() {
            continue;
        }
        if !chosen {
            for (k, v) in source {
                params.insert(k, v)?;
            }
            chosen = true;
        } else {
            for (k, v) in source {
                if params.get(&k).is_some_and(|have| have != v) {
                    return Err(CallbackError::invalid(
                        format!("URL param `{}`", printable(&k)),
                        "is given in two places with different values",
                    ));
                }
            }
        }
    }
    Ok(params)
}

/// The parts of a push URL (`tcurl`) the rules use.
struct IngestUrl<'a> {
    /// `host[:port]`, without user info.
    authority: &'a str,
    /// Host without port or brackets.
    host: &'a str,
    /// Query string, if any.
    query: Option<&'a str>,
}

impl<'a> IngestUrl<'a> {
    fn parse(s: &'a str) -> Result<Self, CallbackError> {
        let bad = || CallbackError::field("tcurl", "must be a URL like rtmp://host/app");
        let (before_query, query) = match s.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (s, None),
        };
        let (scheme, rest) = before_query.split_once("://").ok_or_else(bad)?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(bad());
        }
        let authority = rest.split('/').next().unwrap_or_default();
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let host = if let Some(inner) = authority.strip_prefix('[') {
            inner.split_once(']').map(|(h, _)| h).ok_or_else(bad)?
        } else {
            authority.split(':').next().unwrap_or_default()
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(IngestUrl {
            authority,
            host,
            query,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_START: &str = "app=live&name=asdf&swfurl=nil&flashver=nil&tcurl=rtmp://test.uplive.ks-cdn.com/live&call=user_publish&vdoid=123456";
    const SEED_END: &str = "app=live&name=asdf&swfurl=nil&flashver=nil&tcurl=rtmp://test.uplive.ks-cdn.com/live&call=user_publish_done&close_mode=nil&vdoid=123456";
    const REAL_EMPTY_VDOID: &str = "app=live&name=LIVE0000081&swfurl=nil&flashver=nil&tcurl=rtmp://iwanvi1.uplive.ks-cdn.com/live&call=user_publish&vdoid=";
    const NGINX: &str = "app=live&flashver=FMLE/3.0%20(compatible%3B%20Lavf59.27&swfurl=&tcurl=rtmp://127.0.0.1:19350/live&pageurl=&addr=127.0.0.1&clientid=1&call=publish&name=cam1&type=live&t=123&k=good";

    fn err(body: &str) -> CallbackError {
        parse_form(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn seed_samples_parse() {
        let c = parse_form(SEED_START.as_bytes()).unwrap();
        assert_eq!(c.format, Format::KlsV1);
        assert_eq!(c.event, Event::Start);
        assert_eq!(c.app, "live");
        assert_eq!(c.stream, "asdf");
        assert_eq!(c.domain.as_deref(), Some("test.uplive.ks-cdn.com"));
        assert_eq!(c.session.as_deref(), Some("123456"));
        assert!(c.params.is_empty());
        let c = parse_form(SEED_END.as_bytes()).unwrap();
        assert_eq!(c.event, Event::End);
        assert_eq!(c.close_mode, None, "close_mode=nil is absent");
    }

    #[test]
    fn empty_vdoid_is_absent() {
        let c = parse_form(REAL_EMPTY_VDOID.as_bytes()).unwrap();
        assert_eq!(c.session, None);
        assert_eq!(c.stream, "LIVE0000081");
    }

    #[test]
    fn nginx_rtmp_form_parses() {
        let c = parse_form(NGINX.as_bytes()).unwrap();
        assert_eq!(c.format, Format::NginxRtmp);
        assert_eq!(c.event, Event::Start);
        assert_eq!(c.stream, "cam1");
        assert_eq!(c.params.get("t"), Some("123"));
        assert_eq!(c.params.get("k"), Some("good"));
        assert_eq!(
            c.params.len(),
            2,
            "core fields are not params: {:?}",
            c.params
        );
        assert_eq!(c.client_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(c.session.as_deref(), Some("1@127.0.0.1/127.0.0.1:19350"));
        let done = NGINX.replace("call=publish", "call=publish_done");
        assert_eq!(parse_form(done.as_bytes()).unwrap().event, Event::End);
    }

    /// nginx-rtmp's `on_update`, as captured from Debian's module: the same
    /// session as the publish, `time`/`timestamp` its own fields, not params.
    #[test]
    fn nginx_rtmp_update_parses() {
        let update = "app=live&flashver=FMLE/3.0%20(compatible%3B%20Lavf59.27&swfurl=&tcurl=rtmp://127.0.0.1:19351/live&pageurl=&addr=127.0.0.1&clientid=1&call=update_publish&time=2&timestamp=1500&name=cam9&t=123&k=abc";
        let c = parse_form(update.as_bytes()).unwrap();
        assert_eq!((c.format, c.event), (Format::NginxRtmp, Event::Update));
        assert_eq!(c.stream, "cam9");
        assert_eq!(c.params.len(), 2, "{:?}", c.params);
        assert_eq!(c.session.as_deref(), Some("1@127.0.0.1/127.0.0.1:19351"));
        let twice = format!("{update}&time=3");
        assert!(parse_form(twice.as_bytes()).is_err(), "time given twice");
    }

    #[test]
    fn params_precedence_extra_then_tcurl_then_name() {
        let c = parse_form(format!("{SEED_START}&t=1&k=a").as_bytes()).unwrap();
        assert_eq!(c.params.get("k"), Some("a"));
        let b = SEED_START.replace("/live&", "/live%3Ft%3D2%26k%3Db&");
        let c = parse_form(b.as_bytes()).unwrap();
        assert_eq!(c.params.get("k"), Some("b"));
        assert_eq!(c.params.get("t"), Some("2"));
        let b = SEED_START.replace("name=asdf", "name=asdf%3Ft%3D3%26k%3Dc");
        let c = parse_form(b.as_bytes()).unwrap();
        assert_eq!(c.stream, "asdf");
        assert_eq!(c.params.get("k"), Some("c"));
        // extra fields win; the other place agreeing is fine
        let b = format!(
            "{}&t=2&k=b",
            SEED_START.replace("/live&", "/live%3Ft%3D2%26k%3Db&")
        );
        assert_eq!(parse_form(b.as_bytes()).unwrap().params.get("k"), Some("b"));
    }

    #[test]
    fn a_token_in_two_places_with_different_values_is_refused() {
        let b = format!(
            "{}&t=2&k=x",
            SEED_START.replace("/live&", "/live%3Ft%3D2%26k%3Db&")
        );
        let e = err(&b);
        assert!(
            e.to_string().contains("`k`") && e.to_string().contains("two places"),
            "{e}"
        );
        assert!(!e.to_string().contains("=b"));
    }

    #[test]
    fn repeated_fields() {
        let e = err(&format!("{SEED_START}&name=other"));
        assert_eq!(e, CallbackError::field("name", "is given more than once"));
        let e = err(&format!("{SEED_START}&k=1&k=2"));
        assert!(e.to_string().contains("`k`"), "{e}");
        assert!(parse_form(format!("{SEED_START}&k=1&k=1").as_bytes()).is_ok());
    }

    #[test]
    fn required_fields() {
        for f in ["app", "name", "tcurl", "call"] {
            let b: Vec<&str> = SEED_START
                .split('&')
                .filter(|p| !p.starts_with(&format!("{f}=")))
                .collect();
            assert_eq!(err(&b.join("&")), CallbackError::Missing(f.into()), "{f}");
        }
        let e = err(&SEED_START.replace("app=live", "app=nil"));
        assert_eq!(e, CallbackError::Missing("app".into()));
    }

    /// nginx-rtmp's `on_play`, `on_play_done` and `update_play`, as captured
    /// from Debian's module (ffmpeg playing `…/live/cam1?t=1&k=3`): the
    /// player's own fields are not params, its query args are.
    #[test]
    fn nginx_rtmp_play_parses() {
        let play = "app=live&flashver=LNX%209,0,124,2&swfurl=&tcurl=rtmp://127.0.0.1:40539/live&pageurl=&addr=127.0.0.1&clientid=3&call=play&name=cam1&start=4294965296&duration=0&reset=0&t=1&k=3";
        let c = parse_form(play.as_bytes()).unwrap();
        assert_eq!((c.format, c.event), (Format::NginxRtmp, Event::Play));
        assert_eq!((c.app.as_str(), c.stream.as_str()), ("live", "cam1"));
        assert_eq!(c.params.get("t"), Some("1"));
        assert_eq!(c.params.get("k"), Some("3"));
        assert_eq!(
            c.params.len(),
            2,
            "start, duration, reset are not params: {:?}",
            c.params
        );
        let done = "app=live&flashver=LNX%209,0,124,2&swfurl=&tcurl=rtmp://127.0.0.1:40539/live&pageurl=&addr=127.0.0.1&clientid=3&call=play_done&name=cam1&t=1&k=3";
        let c = parse_form(done.as_bytes()).unwrap();
        assert_eq!(c.event, Event::PlayEnd);
        assert_eq!(c.params.len(), 2, "{:?}", c.params);
        let update = done.replace("call=play_done", "call=update_play&time=4&timestamp=4000");
        let c = parse_form(update.as_bytes()).unwrap();
        assert_eq!(c.event, Event::PlayUpdate);
        assert_eq!(c.params.len(), 2, "{:?}", c.params);
        // A player's `start` arg beside nginx-rtmp's own: ambiguous, refused.
        let e = err(&format!("{play}&start=5"));
        assert_eq!(e, CallbackError::field("start", "is given more than once"));
        // KLS's old version has no play: `call=play` is nginx-rtmp's.
        assert!(parse_form(
            SEED_START
                .replace("call=user_publish", "call=play")
                .as_bytes()
        )
        .is_ok_and(|c| c.format == Format::NginxRtmp));
    }

    #[test]
    fn call_values() {
        assert_eq!(
            err(&SEED_START.replace("call=user_publish", "call=playing")),
            CallbackError::UnknownCall
        );
        assert_eq!(
            err(&SEED_START.replace("call=user_publish", "call=USER_PUBLISH")),
            CallbackError::UnknownCall
        );
    }

    #[test]
    fn close_mode_is_1_or_2() {
        assert_eq!(
            parse_form(
                SEED_END
                    .replace("close_mode=nil", "close_mode=1")
                    .as_bytes()
            )
            .unwrap()
            .close_mode,
            Some(1)
        );
        assert_eq!(
            parse_form(
                SEED_END
                    .replace("close_mode=nil", "close_mode=2")
                    .as_bytes()
            )
            .unwrap()
            .close_mode,
            Some(2)
        );
        assert_eq!(
            parse_form(SEED_END.replace("close_mode=nil", "close_mode=").as_bytes())
                .unwrap()
                .close_mode,
            None
        );
        let e = err(&SEED_END.replace("close_mode=nil", "close_mode=3"));
        assert!(e.to_string().contains("close_mode"), "{e}");
    }

    #[test]
    fn tcurl_must_be_a_url() {
        for bad in ["nothing", "rtmp://", "rtmp:///live", "://host/live"] {
            let e = err(&SEED_START.replace("rtmp://test.uplive.ks-cdn.com/live", bad));
            assert!(e.to_string().contains("tcurl"), "{bad}: {e}");
        }
        let c = parse_form(
            SEED_START
                .replace("test.uplive.ks-cdn.com", "u:p@[::1]:1935")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.domain.as_deref(), Some("::1"));
        let c = parse_form(
            SEED_START
                .replace("test.uplive.ks-cdn.com", "Push.EXAMPLE.com:1935")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.domain.as_deref(), Some("push.example.com"));
    }

    #[test]
    fn plus_and_percent_decoding() {
        let c = parse_form(SEED_START.replace("name=asdf", "name=a+b%20c").as_bytes()).unwrap();
        assert_eq!(c.stream, "a b c");
        let c = parse_form(
            SEED_START
                .replace("name=asdf", "name=%E7%9B%B4%E6%92%AD")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.stream, "直播");
        let e = err(&SEED_START.replace("name=asdf", "name=%ff"));
        assert!(e.to_string().contains("name"), "{e}");
        let e = err(&SEED_START.replace("name=asdf", "name=a%00b"));
        assert!(e.to_string().contains("control"), "{e}");
        let e = err(&SEED_START.replace("app=live", "%ff=live"));
        assert!(matches!(e, CallbackError::Body(_)), "{e}");
    }

    #[test]
    fn empty_body_is_missing_call() {
        assert_eq!(err(""), CallbackError::Missing("call".into()));
    }
}
