//! Encoding the HTTP/1.1 request of a check.
//!
//! The request is `METHOD path HTTP/1.1`, then `Host`, `User-Agent: sonde/<version>`,
//! `Connection: close` (or `keep-alive` when the check reuses connections), the extra
//! headers of the spec, and the empty line. An extra header named `Host`, `User-Agent`
//! or `Connection` replaces the default one instead of duplicating it.
//!
//! Config validation is the main guard against header injection; [`encode_request`]
//! refuses it again (CR, LF, NUL and other control bytes) rather than send it.

use std::net::Ipv6Addr;

use thiserror::Error;

use crate::engine::spec::HttpSpec;

/// The `User-Agent` sent with every request: `sonde/<crate version>`.
pub const USER_AGENT: &str = concat!("sonde/", env!("CARGO_PKG_VERSION"));

/// Why a request could not be encoded (a spec that config validation should have
/// refused).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RequestError {
    /// The method is empty or not an HTTP token.
    #[error("invalid request method {method:?}: must be a non-empty HTTP token (e.g. GET)")]
    Method {
        /// The method as given.
        method: String,
    },
    /// The path does not start with '/'.
    #[error("invalid request path {path:?}: must start with '/'")]
    PathStart {
        /// The path as given.
        path: String,
    },
    /// The path holds a space or control byte (request-line injection).
    #[error("invalid request path {path:?}: forbidden byte 0x{byte:02x} at offset {offset}")]
    PathByte {
        /// The path as given.
        path: String,
        /// The offending byte.
        byte: u8,
        /// Its offset in the path.
        offset: usize,
    },
    /// A header name is empty or not an HTTP token.
    #[error("invalid header name {name:?}: must be a non-empty HTTP token")]
    HeaderName {
        /// The name as given.
        name: String,
    },
    /// A header value (or the Host) holds CR, LF, NUL or another control byte.
    #[error("invalid value of header {name:?}: forbidden byte 0x{byte:02x} at offset {offset}")]
    HeaderValue {
        /// The header name.
        name: String,
        /// The offending byte.
        byte: u8,
        /// Its offset in the value.
        offset: usize,
    },
}

/// Whether `b` may appear in an HTTP token (method, header name; RFC 9110 `tchar`).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

fn check_value(name: &str, value: &str) -> Result<(), RequestError> {
    match value
        .bytes()
        .position(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        Some(offset) => Err(RequestError::HeaderValue {
            name: name.to_owned(),
            byte: value.as_bytes()[offset],
            offset,
        }),
        None => Ok(()),
    }
}

fn check_path(path: &str) -> Result<(), RequestError> {
    if !path.starts_with('/') {
        return Err(RequestError::PathStart {
            path: path.to_owned(),
        });
    }
    match path.bytes().position(|b| b <= b' ' || b == 0x7f) {
        Some(offset) => Err(RequestError::PathByte {
            path: path.to_owned(),
            byte: path.as_bytes()[offset],
            offset,
        }),
        None => Ok(()),
    }
}

/// The default `Host` value for a target: `host` (an IPv6 literal in brackets),
/// followed by `:port` unless `port` is the scheme's default (80, or 443 with TLS).
#[must_use]
pub fn default_host(host: &str, port: u16, tls: bool) -> String {
    let host = if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if port == if tls { 443 } else { 80 } {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// Appends the request of `spec` to `out`.
///
/// `Host` is `spec.host`, or `host_default` verbatim (see [`default_host`]). On error
/// nothing is appended.
///
/// # Errors
/// [`RequestError`] if the method, path, a header name or a value (Host included) would
/// break the request's framing: CR, LF, NUL or other control bytes, a path not starting
/// with '/', or a name that is not a token.
pub fn encode_request(
    spec: &HttpSpec,
    host_default: &str,
    out: &mut Vec<u8>,
) -> Result<(), RequestError> {
    if !check_token(&spec.method) {
        return Err(RequestError::Method {
            method: spec.method.clone(),
        });
    }
    check_path(&spec.path)?;
    let host = spec.host.as_deref().unwrap_or(host_default);
    check_value("Host", host)?;
    for (name, value) in &spec.headers {
        if !check_token(name) {
            return Err(RequestError::HeaderName { name: name.clone() });
        }
        check_value(name, value)?;
    }
    let has = |wanted: &str| {
        spec.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(wanted))
    };
    let mut defaults = Vec::with_capacity(3);
    if !has("host") {
        defaults.push(("Host", host));
    }
    if !has("user-agent") {
        defaults.push(("User-Agent", USER_AGENT));
    }
    if !has("connection") {
        let conn = if spec.keepalive {
            "keep-alive"
        } else {
            "close"
        };
        defaults.push(("Connection", conn));
    }
    for part in [
        spec.method.as_str(),
        " ",
        spec.path.as_str(),
        " HTTP/1.1\r\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    let fields = defaults
        .into_iter()
        .chain(spec.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    for (name, value) in fields {
        for part in [name, ": ", value, "\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::spec::HttpExpect;

    fn spec(method: &str, path: &str) -> HttpSpec {
        HttpSpec {
            method: method.into(),
            path: path.into(),
            host: None,
            headers: vec![],
            proxy_protocol: None,
            tls: None,
            keepalive: false,
            max_body: 1024,
            expect: HttpExpect::default(),
        }
    }

    fn enc(s: &HttpSpec) -> Result<String, RequestError> {
        let mut out = b"prefix".to_vec();
        let r = encode_request(s, "example.com", &mut out);
        if r.is_err() {
            assert_eq!(out, b"prefix", "nothing appended on error");
        }
        r.map(|()| String::from_utf8(out[6..].to_vec()).unwrap())
    }

    #[test]
    fn basic_get() {
        let got = enc(&spec("GET", "/health?x=1")).unwrap();
        let want = format!(
            "GET /health?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: {USER_AGENT}\r\n\
             Connection: close\r\n\r\n"
        );
        assert_eq!(got, want);
        assert!(USER_AGENT.starts_with("sonde/"));
    }

    #[test]
    fn keepalive_host_and_extra_headers() {
        let mut s = spec("HEAD", "/");
        s.keepalive = true;
        s.host = Some("api.example.org:8080".into());
        s.headers = vec![("X-Check".into(), "a\tb".into())];
        let got = enc(&s).unwrap();
        let want = format!(
            "HEAD / HTTP/1.1\r\nHost: api.example.org:8080\r\nUser-Agent: {USER_AGENT}\r\n\
             Connection: keep-alive\r\nX-Check: a\tb\r\n\r\n"
        );
        assert_eq!(got, want);
    }

    #[test]
    fn extra_headers_replace_defaults() {
        let mut s = spec("GET", "/");
        s.headers = vec![
            ("user-agent".into(), "lb-check".into()),
            ("HOST".into(), "other".into()),
            ("Connection".into(), "upgrade".into()),
        ];
        let got = enc(&s).unwrap();
        assert_eq!(
            got,
            "GET / HTTP/1.1\r\nuser-agent: lb-check\r\nHOST: other\r\nConnection: upgrade\r\n\r\n"
        );
    }

    #[test]
    fn refuses_injection() {
        assert!(matches!(
            enc(&spec("GET", "health")),
            Err(RequestError::PathStart { .. })
        ));
        assert!(matches!(
            enc(&spec("GET", "/a HTTP/1.1\r\nX: y")),
            Err(RequestError::PathByte {
                byte: b' ',
                offset: 2,
                ..
            })
        ));
        assert!(matches!(
            enc(&spec("GET", "/a\nb")),
            Err(RequestError::PathByte { byte: b'\n', .. })
        ));
        assert!(matches!(
            enc(&spec("GET", "/\0")),
            Err(RequestError::PathByte {
                byte: 0,
                offset: 1,
                ..
            })
        ));
        assert!(matches!(
            enc(&spec("", "/")),
            Err(RequestError::Method { .. })
        ));
        assert!(matches!(
            enc(&spec("GET /x", "/")),
            Err(RequestError::Method { .. })
        ));
        let mut s = spec("GET", "/");
        s.headers = vec![("X-A".into(), "v\r\nInjected: 1".into())];
        let e = enc(&s).unwrap_err();
        assert_eq!(
            e,
            RequestError::HeaderValue {
                name: "X-A".into(),
                byte: b'\r',
                offset: 1
            }
        );
        assert!(e.to_string().contains("offset 1"));
        s.headers = vec![("X A".into(), "v".into())];
        assert!(matches!(enc(&s), Err(RequestError::HeaderName { .. })));
        s.headers = vec![("X-A:".into(), "v".into())];
        assert!(matches!(enc(&s), Err(RequestError::HeaderName { .. })));
        s.headers = vec![];
        s.host = Some("evil\r\nX: 1".into());
        assert!(matches!(
            enc(&s),
            Err(RequestError::HeaderValue { byte: b'\r', .. })
        ));
    }

    #[test]
    fn default_host_forms() {
        assert_eq!(default_host("example.com", 80, false), "example.com");
        assert_eq!(default_host("example.com", 443, true), "example.com");
        assert_eq!(default_host("example.com", 443, false), "example.com:443");
        assert_eq!(default_host("10.0.0.1", 8080, false), "10.0.0.1:8080");
        assert_eq!(default_host("::1", 80, false), "[::1]");
        assert_eq!(default_host("fe80::1", 8443, true), "[fe80::1]:8443");
    }
}
