//! Judging a parsed response against a check's expectations, and turning parser errors
//! into result reasons.
//!
//! Conditions are checked in order: status, header, body substring, body regex; the
//! first one that fails gives the [`Reason`]. The body is the bounded one the parser
//! kept ([`Response::body`], at most `max_body` bytes).

use regex::bytes::{Regex, RegexBuilder};

use super::response::{HttpError, Response};
use crate::engine::{
    result::Reason,
    spec::{HttpExpect, StatusRange},
};

/// Most memory a compiled body regex may take (`RegexBuilder::size_limit`).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The parts of an [`HttpExpect`] that are compiled once per check, not per probe.
#[derive(Clone, Debug)]
pub struct CompiledExpect {
    /// The regex source and its compiled form (bytes regex: bodies need not be UTF-8).
    body_regex: Option<(String, Regex)>,
}

impl CompiledExpect {
    /// Compiles `expect.body_regex` (size-limited to [`REGEX_SIZE_LIMIT`]).
    ///
    /// # Errors
    /// The regex's syntax error, or [`regex::Error::CompiledTooBig`].
    pub fn new(expect: &HttpExpect) -> Result<Self, regex::Error> {
        let body_regex = match &expect.body_regex {
            Some(src) => Some((
                src.clone(),
                RegexBuilder::new(src)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()?,
            )),
            None => None,
        };
        Ok(Self { body_regex })
    }
}

/// Whether `status` is accepted by `ranges` (an empty list means the default 200-399).
#[must_use]
pub fn status_accepted(ranges: &[StatusRange], status: u16) -> bool {
    if ranges.is_empty() {
        return (200..=399).contains(&status);
    }
    ranges.iter().any(|r| (r.lo..=r.hi).contains(&status))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Judges `resp` against `expect` (with `compiled`, made by [`CompiledExpect::new`] from
/// the same `expect`):
/// - status not in `statuses` → [`Reason::Status`];
/// - `header` (case-insensitive name) absent, or no value of it contains the expected
///   value (case-sensitive substring) → [`Reason::HeaderMismatch`];
/// - body without `body_contains` or not matching `body_regex` → [`Reason::BodyMismatch`];
/// - otherwise [`Reason::Ok`].
///
/// If `compiled` was made from another regex than `expect.body_regex`, the result is
/// [`Reason::Local`] (a bug in the caller, not the target's fault).
#[must_use]
pub fn judge(expect: &HttpExpect, compiled: &CompiledExpect, resp: &Response) -> Reason {
    if !status_accepted(&expect.statuses, resp.status) {
        return Reason::Status { code: resp.status };
    }
    if let Some((name, value)) = &expect.header {
        if !resp.header_values(name).any(|v| v.contains(value.as_str())) {
            return Reason::HeaderMismatch { name: name.clone() };
        }
    }
    if let Some(needle) = &expect.body_contains {
        if !contains(&resp.body, needle.as_bytes()) {
            return Reason::BodyMismatch;
        }
    }
    if let Some(src) = &expect.body_regex {
        match &compiled.body_regex {
            Some((s, re)) if s == src => {
                if !re.is_match(&resp.body) {
                    return Reason::BodyMismatch;
                }
            }
            _ => {
                return Reason::Local {
                    detail: format!("body regex {src:?} was not compiled for this check"),
                }
            }
        }
    }
    Reason::Ok
}

/// The reason of a probe whose response failed to parse: a close before the end is
/// [`Reason::ConnectionClosed`] (phase `"headers"` or `"body"`), anything else
/// [`Reason::Protocol`] with the error's message.
#[must_use]
pub fn error_reason(e: &HttpError) -> Reason {
    match e {
        HttpError::Closed { phase, .. } => Reason::ConnectionClosed { phase },
        other => Reason::Protocol {
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::http::response::{Limits, Progress, ResponseParser};

    fn resp(raw: &str) -> Response {
        let mut p = ResponseParser::new(Limits::default());
        if p.feed(raw.as_bytes()).unwrap() == Progress::NeedMore {
            p.finish_eof().unwrap();
        }
        p.into_response().unwrap()
    }

    fn check(expect: &HttpExpect, raw: &str) -> Reason {
        let compiled = CompiledExpect::new(expect).unwrap();
        judge(expect, &compiled, &resp(raw))
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
                      X-Role: primary\r\nContent-Length: 17\r\n\r\n{\"status\":\"up\"}\r\n";

    #[test]
    fn default_expectation() {
        let e = HttpExpect::default();
        assert_eq!(check(&e, OK), Reason::Ok);
        assert_eq!(
            check(&e, "HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n"),
            Reason::Ok
        );
        assert_eq!(
            check(&e, "HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n"),
            Reason::Status { code: 503 }
        );
        assert_eq!(
            check(&e, "HTTP/1.0 404 Not Found\r\n\r\n"),
            Reason::Status { code: 404 }
        );
    }

    #[test]
    fn status_ranges() {
        let ranges = [
            StatusRange { lo: 200, hi: 200 },
            StatusRange { lo: 401, hi: 403 },
        ];
        assert!(status_accepted(&ranges, 200));
        assert!(status_accepted(&ranges, 401));
        assert!(status_accepted(&ranges, 403));
        assert!(!status_accepted(&ranges, 204));
        assert!(!status_accepted(&ranges, 404));
        assert!(status_accepted(&[], 204));
        assert!(!status_accepted(&[], 404));
    }

    #[test]
    fn header_condition() {
        let mut e = HttpExpect {
            header: Some(("x-role".into(), "primary".into())),
            ..HttpExpect::default()
        };
        assert_eq!(check(&e, OK), Reason::Ok);
        e.header = Some(("X-Role".into(), "replica".into()));
        assert_eq!(
            check(&e, OK),
            Reason::HeaderMismatch {
                name: "X-Role".into()
            }
        );
        e.header = Some(("X-Missing".into(), String::new()));
        assert_eq!(
            check(&e, OK),
            Reason::HeaderMismatch {
                name: "X-Missing".into()
            }
        );
        e.header = Some(("content-type".into(), "text/plain".into()));
        assert_eq!(check(&e, OK), Reason::Ok);
    }

    #[test]
    fn body_conditions() {
        let mut e = HttpExpect {
            body_contains: Some("\"up\"".into()),
            ..HttpExpect::default()
        };
        assert_eq!(check(&e, OK), Reason::Ok);
        e.body_contains = Some("down".into());
        assert_eq!(check(&e, OK), Reason::BodyMismatch);
        e.body_contains = None;
        e.body_regex = Some(r#"^\{"status":"(up|degraded)"\}"#.into());
        assert_eq!(check(&e, OK), Reason::Ok);
        e.body_regex = Some(r"^down".into());
        assert_eq!(check(&e, OK), Reason::BodyMismatch);
        // Status is judged first.
        assert_eq!(
            check(&e, "HTTP/1.1 500 x\r\nContent-Length: 0\r\n\r\n"),
            Reason::Status { code: 500 }
        );
        // Non-UTF-8 bodies are fine.
        e.body_regex = Some(r"ok$".into());
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n";
        let mut p = ResponseParser::new(Limits::default());
        p.feed(raw.as_bytes()).unwrap();
        p.feed(b"\xff\xfeok").unwrap();
        let compiled = CompiledExpect::new(&e).unwrap();
        assert_eq!(judge(&e, &compiled, p.response().unwrap()), Reason::Ok);
    }

    #[test]
    fn truncated_body_is_matched_as_kept() {
        let e = HttpExpect {
            body_contains: Some("needle".into()),
            ..HttpExpect::default()
        };
        let compiled = CompiledExpect::new(&e).unwrap();
        let limits = Limits {
            max_body: 8,
            ..Limits::default()
        };
        let mut p = ResponseParser::new(limits);
        p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nxxxxxxxxxxxxxxneedle")
            .unwrap();
        let r = p.response().unwrap();
        assert!(r.truncated);
        assert_eq!(judge(&e, &compiled, r), Reason::BodyMismatch);
    }

    #[test]
    fn regex_compile_errors_and_mismatch() {
        let mut e = HttpExpect {
            body_regex: Some("(".into()),
            ..HttpExpect::default()
        };
        assert!(CompiledExpect::new(&e).is_err());
        e.body_regex = Some(r"\w{1000}\w{1000}\w{1000}".into());
        assert!(matches!(
            CompiledExpect::new(&e),
            Err(regex::Error::CompiledTooBig(_))
        ));
        e.body_regex = Some("up".into());
        let none = CompiledExpect::new(&HttpExpect::default()).unwrap();
        assert!(matches!(judge(&e, &none, &resp(OK)), Reason::Local { .. }));
    }

    #[test]
    fn error_reasons() {
        let closed = HttpError::Closed {
            phase: "body",
            offset: 10,
            detail: "x".into(),
        };
        assert_eq!(
            error_reason(&closed),
            Reason::ConnectionClosed { phase: "body" }
        );
        let e = HttpError::Protocol {
            offset: 3,
            detail: "bad".into(),
        };
        assert_eq!(
            error_reason(&e),
            Reason::Protocol {
                detail: "invalid HTTP response at byte 3: bad".into()
            }
        );
        assert!(matches!(
            error_reason(&HttpError::HeadersTooLarge { limit: 16 }),
            Reason::Protocol { .. }
        ));
    }
}
