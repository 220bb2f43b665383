//! DNS checks over UDP, sans-IO: [`encode_query`] builds the datagram,
//! [`parse_response`] validates and decodes the answer, [`judge`] turns it into a
//! [`Reason`].
//!
//! Parsing is bounds-checked everywhere and never panics: a malformed datagram is a
//! [`DnsError::Malformed`] with the byte offset. Name compression is followed with at
//! most [`MAX_JUMPS`] pointers, each pointing strictly backwards, and names of at most
//! 255 wire bytes. A datagram with another id is [`DnsError::WrongId`]
//! ([`DnsError::is_stray`]): the engine drops it and keeps waiting.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use thiserror::Error;

use super::{result::Reason, spec::DnsSpec};

/// Record type A (IPv4 address).
pub const TYPE_A: u16 = 1;
/// Record type NS.
pub const TYPE_NS: u16 = 2;
/// Record type CNAME.
pub const TYPE_CNAME: u16 = 5;
/// Record type PTR.
pub const TYPE_PTR: u16 = 12;
/// Record type TXT.
pub const TYPE_TXT: u16 = 16;
/// Record type AAAA (IPv6 address).
pub const TYPE_AAAA: u16 = 28;
/// Class IN.
pub const CLASS_IN: u16 = 1;
/// Most compression pointers followed while reading one name.
pub const MAX_JUMPS: usize = 32;

const HEADER_LEN: usize = 12;

/// Why a query could not be built or a datagram is not a valid answer to it.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DnsError {
    /// The name to query is not a valid DNS name.
    #[error("invalid DNS name {name:?}: {detail}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What was wrong.
        detail: String,
    },
    /// The datagram answers another query (the engine keeps waiting).
    #[error("DNS response id {got:#06x} does not match query id {expected:#06x}")]
    WrongId {
        /// Our query's id.
        expected: u16,
        /// The datagram's id.
        got: u16,
    },
    /// The QR bit is clear: a query, not a response.
    #[error("DNS message is a query, not a response (QR bit clear)")]
    NotResponse,
    /// The response's question is not ours.
    #[error("DNS response question does not match the query: {detail}")]
    QuestionMismatch {
        /// What differed.
        detail: String,
    },
    /// The datagram is not a well-formed DNS message.
    #[error("malformed DNS response at byte {offset}: {detail}")]
    Malformed {
        /// Offset of the offending byte or field.
        offset: usize,
        /// What was wrong.
        detail: String,
    },
}

impl DnsError {
    /// Whether the datagram is simply not the answer to our query (another id): drop it
    /// and keep waiting rather than fail the probe.
    #[must_use]
    pub fn is_stray(&self) -> bool {
        matches!(self, DnsError::WrongId { .. })
    }
}

/// One answer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsAnswer {
    /// Owner name (presentation form, no trailing dot; `.` for the root).
    pub name: String,
    /// Record type.
    pub rtype: u16,
    /// Record class.
    pub class: u16,
    /// Time to live, seconds.
    pub ttl: u32,
    /// Data: the address for A/AAAA, the concatenated strings for TXT (lossy UTF-8), the
    /// name for CNAME/NS/PTR, lower-case hex otherwise.
    pub data: String,
}

/// A parsed response to our query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsResponse {
    /// Message id (equal to the query's).
    pub id: u16,
    /// Response code (4 bits; 0 = NOERROR, 3 = NXDOMAIN).
    pub rcode: u8,
    /// AA bit.
    pub authoritative: bool,
    /// TC bit: the answer did not fit the datagram (answers may be missing).
    pub truncated: bool,
    /// RA bit.
    pub recursion_available: bool,
    /// Answer section records.
    pub answers: Vec<DnsAnswer>,
}

fn invalid(name: &str, detail: String) -> DnsError {
    DnsError::InvalidName {
        name: name.to_owned(),
        detail,
    }
}

fn malformed(offset: usize, detail: impl Into<String>) -> DnsError {
    DnsError::Malformed {
        offset,
        detail: detail.into(),
    }
}

/// The labels of `name` (`.` is the root; one trailing dot allowed).
fn query_labels(name: &str) -> Result<Vec<&[u8]>, DnsError> {
    if name == "." {
        return Ok(Vec::new());
    }
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(invalid(name, "empty name (the root is \".\")".into()));
    }
    if trimmed.len() > 253 {
        let n = trimmed.len();
        return Err(invalid(name, format!("{n} bytes long, more than 253")));
    }
    if let Some(i) = trimmed.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        let b = trimmed.as_bytes()[i];
        return Err(invalid(
            name,
            format!("byte 0x{b:02x} at offset {i} is not printable ASCII"),
        ));
    }
    let mut labels = Vec::new();
    let mut off = 0;
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(invalid(name, format!("empty label at offset {off}")));
        }
        if label.len() > 63 {
            let n = label.len();
            return Err(invalid(
                name,
                format!("label at offset {off} is {n} bytes, more than 63"),
            ));
        }
        labels.push(label.as_bytes());
        off += label.len() + 1;
    }
    Ok(labels)
}

/// Appends a query for `name` / `qtype` (class IN, RD set, one question, no EDNS) with
/// message id `id` to `out`. The name's case is preserved.
///
/// # Errors
/// [`DnsError::InvalidName`] for an empty name, an empty label (except the root `.`), a
/// label over 63 bytes, a name over 253 bytes, or a byte that is not printable ASCII.
/// Nothing is appended then.
pub fn encode_query(id: u16, name: &str, qtype: u16, out: &mut Vec<u8>) -> Result<(), DnsError> {
    let labels = query_labels(name)?;
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in labels {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(())
}

fn get<'a>(buf: &'a [u8], at: usize, len: usize, what: &str) -> Result<&'a [u8], DnsError> {
    at.checked_add(len)
        .and_then(|end| buf.get(at..end))
        .ok_or_else(|| {
            malformed(
                at,
                format!(
                    "{what} ({len} bytes) runs past the end of the {}-byte message",
                    buf.len()
                ),
            )
        })
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// Reads a possibly compressed name at `start`: its labels and the offset just past it
/// (past the first pointer, if any).
fn read_name(buf: &[u8], start: usize) -> Result<(Vec<&[u8]>, usize), DnsError> {
    let mut labels = Vec::new();
    let mut pos = start;
    let mut end = None;
    let (mut jumps, mut wire_len) = (0, 0usize);
    loop {
        let Some(&len) = buf.get(pos) else {
            return Err(malformed(pos, "name runs past the end of the message"));
        };
        match len & 0xC0 {
            0x00 => {
                wire_len += 1 + usize::from(len);
                if wire_len > 255 {
                    return Err(malformed(pos, "name longer than 255 bytes"));
                }
                if len == 0 {
                    return Ok((labels, end.unwrap_or(pos + 1)));
                }
                labels.push(get(buf, pos + 1, usize::from(len), "label")?);
                pos += 1 + usize::from(len);
            }
            0xC0 => {
                let lo = get(buf, pos + 1, 1, "compression pointer")?[0];
                let target = (usize::from(len & 0x3F) << 8) | usize::from(lo);
                if target >= pos {
                    return Err(malformed(
                        pos,
                        format!("compression pointer to {target} does not point backwards"),
                    ));
                }
                jumps += 1;
                if jumps > MAX_JUMPS {
                    return Err(malformed(
                        pos,
                        format!("more than {MAX_JUMPS} compression pointers (loop?)"),
                    ));
                }
                end.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return Err(malformed(pos, format!("reserved label type 0x{len:02x}"))),
        }
    }
}

/// Presentation form of a name: labels joined by dots, `.`, `\` and non-printable bytes
/// escaped (`\.`, `\DDD`); the root is `.`.
fn render_name(labels: &[&[u8]]) -> String {
    if labels.is_empty() {
        return ".".into();
    }
    let mut s = String::new();
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        for &b in *label {
            match b {
                b'.' | b'\\' => {
                    s.push('\\');
                    s.push(char::from(b));
                }
                0x21..=0x7e => s.push(char::from(b)),
                _ => {
                    let _ = write!(s, "\\{b:03}");
                }
            }
        }
    }
    s
}

fn parse_rr(buf: &[u8], at: usize) -> Result<(DnsAnswer, usize), DnsError> {
    let (labels, next) = read_name(buf, at)?;
    let fixed = get(buf, next, 10, "record header")?;
    let (rtype, class) = (be16(fixed, 0), be16(fixed, 2));
    let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    let start = next + 10;
    let rdata = get(buf, start, usize::from(be16(fixed, 8)), "record data")?;
    let wrong_len = |want: usize| {
        let n = rdata.len();
        malformed(
            start,
            format!("type {rtype} record data is {n} bytes, expected {want}"),
        )
    };
    let data = match rtype {
        TYPE_A => Ipv4Addr::from(<[u8; 4]>::try_from(rdata).map_err(|_| wrong_len(4))?).to_string(),
        TYPE_AAAA => {
            Ipv6Addr::from(<[u8; 16]>::try_from(rdata).map_err(|_| wrong_len(16))?).to_string()
        }
        TYPE_TXT => {
            let mut text = Vec::new();
            let mut i = 0;
            while i < rdata.len() {
                let n = usize::from(rdata[i]);
                text.extend_from_slice(
                    get(rdata, i + 1, n, "TXT string").map_err(|_| {
                        malformed(start + i, "TXT string runs past the record data")
                    })?,
                );
                i += 1 + n;
            }
            String::from_utf8_lossy(&text).into_owned()
        }
        TYPE_CNAME | TYPE_NS | TYPE_PTR => {
            let (name, end) = read_name(buf, start)?;
            if end != start + rdata.len() {
                return Err(malformed(
                    start,
                    "name does not fill the record data exactly",
                ));
            }
            render_name(&name)
        }
        _ => rdata.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }),
    };
    let answer = DnsAnswer {
        name: render_name(&labels),
        rtype,
        class,
        ttl,
        data,
    };
    Ok((answer, start + rdata.len()))
}

/// Parses `buf` as the response to our query (`id`, `name`, `qtype`): QR set, same id,
/// opcode QUERY, the question echoing ours (name case-insensitively, type, class IN; a
/// response without question is accepted only with a non-zero rcode), then the answer
/// section. Authority and additional sections are not read. When TC is set, answers
/// cut by the truncation are dropped instead of failing.
///
/// # Errors
/// [`DnsError::WrongId`] (keep waiting), [`DnsError::NotResponse`],
/// [`DnsError::QuestionMismatch`], [`DnsError::Malformed`] (with the byte offset), or
/// [`DnsError::InvalidName`] if `name` itself is invalid.
pub fn parse_response(
    buf: &[u8],
    id: u16,
    name: &str,
    qtype: u16,
) -> Result<DnsResponse, DnsError> {
    let want = query_labels(name)?;
    let Some(header) = buf.get(..HEADER_LEN) else {
        let n = buf.len();
        return Err(malformed(
            n,
            format!("{n} bytes, shorter than the 12-byte header"),
        ));
    };
    let got = be16(header, 0);
    if got != id {
        return Err(DnsError::WrongId { expected: id, got });
    }
    let flags = be16(header, 2);
    if flags & 0x8000 == 0 {
        return Err(DnsError::NotResponse);
    }
    let opcode = (flags >> 11) & 0xF;
    if opcode != 0 {
        return Err(malformed(2, format!("opcode {opcode}, expected 0 (QUERY)")));
    }
    let rcode = (flags & 0xF) as u8;
    let truncated = flags & 0x0200 != 0;
    let mismatch = |detail: String| DnsError::QuestionMismatch { detail };
    let mut pos = HEADER_LEN;
    match be16(header, 4) {
        0 if rcode != 0 => {}
        0 => return Err(mismatch("no question in a NOERROR response".into())),
        1 => {
            let (labels, next) = read_name(buf, pos)?;
            let fixed = get(buf, next, 4, "question type and class")?;
            let same = labels.len() == want.len()
                && labels
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.eq_ignore_ascii_case(b));
            if !same {
                let (got, want) = (render_name(&labels), render_name(&want));
                return Err(mismatch(format!("name {got} instead of {want}")));
            }
            let (t, c) = (be16(fixed, 0), be16(fixed, 2));
            if t != qtype {
                return Err(mismatch(format!("type {t} instead of {qtype}")));
            }
            if c != CLASS_IN {
                return Err(mismatch(format!("class {c} instead of 1 (IN)")));
            }
            pos = next + 4;
        }
        n => return Err(mismatch(format!("{n} questions instead of 1"))),
    }
    let count = be16(header, 6);
    let mut answers = Vec::with_capacity(usize::from(count).min(32));
    for _ in 0..count {
        match parse_rr(buf, pos) {
            Ok((answer, next)) => {
                answers.push(answer);
                pos = next;
            }
            Err(_) if truncated => break,
            Err(e) => return Err(e),
        }
    }
    Ok(DnsResponse {
        id,
        rcode,
        authoritative: flags & 0x0400 != 0,
        truncated,
        recursion_available: flags & 0x0080 != 0,
        answers,
    })
}

fn names_equal(a: &str, b: &str) -> bool {
    let strip = |s: &str| -> String {
        let s = s.strip_suffix('.').filter(|r| !r.is_empty()).unwrap_or(s);
        s.to_ascii_lowercase()
    };
    strip(a) == strip(b)
}

fn answer_matches(answer: &DnsAnswer, expected: &str) -> bool {
    match answer.rtype {
        TYPE_A | TYPE_AAAA => match (
            expected.trim().parse::<IpAddr>(),
            answer.data.parse::<IpAddr>(),
        ) {
            (Ok(want), Ok(got)) => want == got,
            _ => false,
        },
        TYPE_CNAME | TYPE_NS | TYPE_PTR => names_equal(&answer.data, expected.trim()),
        _ => answer.data == expected,
    }
}

/// Judges a response: rcode other than `expect_rcode` → [`Reason::DnsRcode`]; with
/// `expect_answer`, no answer whose data equals it → [`Reason::DnsAnswerMismatch`]
/// (A/AAAA compared as addresses, CNAME/NS/PTR as names ignoring case and a trailing
/// dot, others as strings); otherwise [`Reason::Ok`].
#[must_use]
pub fn judge(spec: &DnsSpec, resp: &DnsResponse) -> Reason {
    if resp.rcode != spec.expect_rcode {
        return Reason::DnsRcode { rcode: resp.rcode };
    }
    match &spec.expect_answer {
        Some(want) if !resp.answers.iter().any(|a| answer_matches(a, want)) => {
            Reason::DnsAnswerMismatch
        }
        _ => Reason::Ok,
    }
}

/// The reason of a probe whose response failed to parse: [`Reason::Local`] for an
/// invalid query name (a config problem), [`Reason::Protocol`] otherwise.
#[must_use]
pub fn error_reason(e: &DnsError) -> Reason {
    let detail = e.to_string();
    match e {
        DnsError::InvalidName { .. } => Reason::Local { detail },
        _ => Reason::Protocol { detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::http::test_rng::XorShift;

    const ID: u16 = 0x1234;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = Vec::new();
        encode_query(ID, name, qtype, &mut q).unwrap();
        q
    }

    /// A response to `query(name, qtype)` with `rcode`, and `answers` raw records (their
    /// count goes in ANCOUNT).
    fn response(name: &str, qtype: u16, rcode: u8, answers: &[Vec<u8>]) -> Vec<u8> {
        let mut m = query(name, qtype);
        m[2] = 0x81; // QR, RD
        m[3] = 0x80 | rcode; // RA
        m[7] = answers.len() as u8;
        answers.iter().for_each(|a| m.extend_from_slice(a));
        m
    }

    /// A record owned by the question's name (pointer to offset 12).
    fn rr(rtype: u16, rdata: &[u8]) -> Vec<u8> {
        let mut r = vec![0xC0, 12];
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0x0e, 0x10]); // IN, ttl 3600
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(rdata);
        r
    }

    fn parse(m: &[u8]) -> Result<DnsResponse, DnsError> {
        parse_response(m, ID, "example.com", TYPE_A)
    }

    fn malformed_detail(m: &[u8]) -> String {
        match parse(m) {
            Err(DnsError::Malformed { detail, .. }) => detail,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn encodes_queries() {
        let q = query("Example.COM", TYPE_AAAA);
        let want = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\
                     \x07Example\x03COM\x00\x00\x1c\x00\x01";
        assert_eq!(q, want);
        assert_eq!(query("Example.COM.", TYPE_AAAA), want);
        assert_eq!(&query(".", 2)[12..], b"\x00\x00\x02\x00\x01");
        let l63 = "a".repeat(63);
        assert!(query_labels(&l63).is_ok());
        let n253 = [&l63[..], &l63, &l63, &"b".repeat(61)].join(".");
        assert_eq!(n253.len(), 253);
        assert!(query_labels(&n253).is_ok() && query_labels(&format!("{n253}.")).is_ok());
        let bad = |name: &str, want: &str| {
            let mut out = vec![];
            let e = encode_query(1, name, 1, &mut out).unwrap_err().to_string();
            assert!(e.contains(want), "{name:?}: {e}");
            assert!(out.is_empty());
        };
        bad("", "empty name");
        bad("..", "empty label at offset 0");
        bad("a..b", "empty label at offset 2");
        bad(".a", "empty label at offset 0");
        bad(&format!("x.{l63}b"), "label at offset 2 is 64 bytes");
        bad(&format!("{n253}x"), "254 bytes long");
        bad("a b.com", "byte 0x20 at offset 1");
        bad("caf\u{e9}.com", "not printable ASCII");
    }

    #[test]
    fn parses_answers_of_each_kind() {
        let cname = [&b"\x03www"[..], &[0xC0, 12]].concat();
        let txt = b"\x05hello\x00\x06 world";
        let m = response(
            "example.com",
            TYPE_A,
            0,
            &[
                rr(TYPE_A, &[192, 0, 2, 1]),
                rr(TYPE_AAAA, &Ipv6Addr::LOCALHOST.octets()),
                rr(TYPE_TXT, txt),
                rr(TYPE_CNAME, &cname),
                rr(15, &[0, 10, 0xC0, 12]),
            ],
        );
        let r = parse(&m).unwrap();
        assert_eq!(
            (r.id, r.rcode, r.truncated, r.recursion_available),
            (ID, 0, false, true)
        );
        let data: Vec<(&str, u16, &str)> = r
            .answers
            .iter()
            .map(|a| (a.name.as_str(), a.rtype, a.data.as_str()))
            .collect();
        assert_eq!(
            data,
            [
                ("example.com", TYPE_A, "192.0.2.1"),
                ("example.com", TYPE_AAAA, "::1"),
                ("example.com", TYPE_TXT, "hello world"),
                ("example.com", TYPE_CNAME, "www.example.com"),
                ("example.com", 15, "000ac00c"),
            ]
        );
        assert_eq!((r.answers[0].class, r.answers[0].ttl), (CLASS_IN, 3600));
        // Case-insensitive question, name escapes.
        assert!(parse_response(&m, ID, "EXAMPLE.com.", TYPE_A).is_ok());
        assert_eq!(
            render_name(&[b"a.b", b"c d\xff\\"]),
            "a\\.b.c\\032d\\255\\\\"
        );
    }

    #[test]
    fn header_and_question_checks() {
        let m = response("example.com", TYPE_A, 0, &[]);
        let e = parse_response(&m, 0x4321, "example.com", TYPE_A).unwrap_err();
        assert_eq!(
            e,
            DnsError::WrongId {
                expected: 0x4321,
                got: ID
            }
        );
        assert!(e.is_stray() && e.to_string().contains("0x1234"));
        assert_eq!(
            parse(&query("example.com", TYPE_A)),
            Err(DnsError::NotResponse)
        );
        let mismatch = |name: &str, t: u16| match parse_response(&m, ID, name, t) {
            Err(DnsError::QuestionMismatch { detail }) => detail,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            mismatch("example.org", TYPE_A),
            "name example.com instead of example.org"
        );
        assert_eq!(
            mismatch("www.example.com", TYPE_A),
            "name example.com instead of www.example.com"
        );
        assert_eq!(mismatch("example.com", TYPE_AAAA), "type 1 instead of 28");
        let mut opcode = m.clone();
        opcode[2] |= 0x10;
        assert!(malformed_detail(&opcode).contains("opcode 2"));
        let mut no_question = m[..12].to_vec();
        no_question[5] = 0;
        assert!(matches!(
            parse(&no_question),
            Err(DnsError::QuestionMismatch { .. })
        ));
        no_question[3] = 0x83; // NXDOMAIN
        assert_eq!(parse(&no_question).unwrap().rcode, 3);
        let mut two = m.clone();
        two[5] = 2;
        assert!(parse(&two).unwrap_err().to_string().contains("2 questions"));
        assert!(matches!(
            parse_response(&m, ID, "bad..name", TYPE_A),
            Err(DnsError::InvalidName { .. })
        ));
    }

    #[test]
    fn truncated_messages_fail_cleanly() {
        let m = response(
            "example.com",
            TYPE_A,
            0,
            &[rr(TYPE_A, &[1, 2, 3, 4]), rr(TYPE_TXT, b"\x02hi")],
        );
        assert!(parse(&m).is_ok());
        for len in 0..m.len() {
            match parse(&m[..len]) {
                Err(DnsError::Malformed { offset, .. }) => assert!(offset <= len),
                other => panic!("len {len}: {other:?}"),
            }
        }
        assert_eq!(
            malformed_detail(&m[..5]),
            "5 bytes, shorter than the 12-byte header"
        );
        // With TC set, a cut answer is dropped rather than failing.
        let mut tc = m[..m.len() - 2].to_vec();
        tc[2] |= 0x02;
        let r = parse(&tc).unwrap();
        assert!(r.truncated);
        assert_eq!(r.answers.len(), 1);
    }

    #[test]
    fn malformed_records() {
        let bad = |answer: Vec<u8>, want: &str| {
            let d = malformed_detail(&response("example.com", TYPE_A, 0, &[answer]));
            assert!(d.contains(want), "{d}");
        };
        bad(
            rr(TYPE_A, &[1, 2, 3, 4, 5]),
            "type 1 record data is 5 bytes, expected 4",
        );
        bad(rr(TYPE_AAAA, &[0; 4]), "expected 16");
        bad(rr(TYPE_TXT, b"\x05hi"), "TXT string runs past");
        bad(
            rr(TYPE_CNAME, &[0xC0, 12, 0]),
            "does not fill the record data",
        );
        bad(rr(TYPE_CNAME, &[3, b'w']), "runs past");
        let mut overrun = rr(TYPE_A, &[1, 2, 3, 4]);
        overrun[11] = 200;
        bad(overrun, "record data (200 bytes) runs past the end");
        bad(vec![0x40, 0], "reserved label type 0x40");
        bad(vec![0x80, 0], "reserved label type 0x80");
    }

    #[test]
    fn compression_pointer_abuse() {
        let m = response("example.com", TYPE_A, 0, &[]);
        let at = m.len();
        let with = |answer: &[u8]| {
            let mut m = m.clone();
            m[7] = 1;
            m.extend_from_slice(answer);
            malformed_detail(&m)
        };
        // Pointing at itself, forward, or past the end.
        let [hi, lo] = (at as u16 | 0xC000).to_be_bytes();
        assert!(with(&[hi, lo]).contains("does not point backwards"));
        assert!(with(&[0xC0, 0xFF]).contains("does not point backwards"));
        assert!(with(&[0xFF, 0xFF]).contains("does not point backwards"));
        // A loop made only of backward pointers: label "a", then a pointer to it.
        let [hi, lo] = (at as u16 | 0xC000).to_be_bytes();
        let d = with(&[1, b'a', hi, lo]);
        assert!(d.contains("more than 32 compression pointers"), "{d}");
        // The same loop with long labels hits the 255-byte name limit first.
        let mut long = vec![63];
        long.extend_from_slice(&[b'x'; 63]);
        long.extend_from_slice(&[hi, lo]);
        assert!(with(&long).contains("name longer than 255 bytes"));
        // A pointer into the header is backwards and inside the message: followed.
        let d = with(&[0xC0, 2]);
        assert!(!d.contains("pointer"), "{d}");
    }

    #[test]
    fn judging() {
        let spec = |rcode: u8, answer: Option<&str>| DnsSpec {
            name: "example.com".into(),
            qtype: TYPE_A,
            expect_rcode: rcode,
            expect_answer: answer.map(str::to_owned),
        };
        let v6 = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let m = response(
            "example.com",
            TYPE_A,
            0,
            &[
                rr(TYPE_A, &[10, 0, 0, 1]),
                rr(TYPE_AAAA, &v6),
                rr(TYPE_CNAME, b"\x03Www\xC0\x0C"),
                rr(TYPE_TXT, b"\x02v=\x03ok!"),
            ],
        );
        let r = parse(&m).unwrap();
        assert_eq!(judge(&spec(0, None), &r), Reason::Ok);
        assert_eq!(judge(&spec(3, None), &r), Reason::DnsRcode { rcode: 0 });
        for good in [
            "10.0.0.1",
            " 10.0.0.1 ",
            "2001:DB8:0:0::1",
            "www.EXAMPLE.com.",
            "v=ok!",
        ] {
            assert_eq!(judge(&spec(0, Some(good)), &r), Reason::Ok, "{good}");
        }
        for bad in ["10.0.0.2", "::1", "example.com", "v=ok", "", "."] {
            assert_eq!(
                judge(&spec(0, Some(bad)), &r),
                Reason::DnsAnswerMismatch,
                "{bad}"
            );
        }
        let nx = response("example.com", TYPE_A, 3, &[]);
        assert_eq!(
            judge(&spec(0, None), &parse(&nx).unwrap()),
            Reason::DnsRcode { rcode: 3 }
        );
        assert_eq!(judge(&spec(3, None), &parse(&nx).unwrap()), Reason::Ok);
        assert!(matches!(
            error_reason(&DnsError::NotResponse),
            Reason::Protocol { .. }
        ));
        let e = DnsError::InvalidName {
            name: String::new(),
            detail: String::new(),
        };
        assert!(matches!(error_reason(&e), Reason::Local { .. }));
    }

    #[test]
    fn random_and_mutated_datagrams_never_panic() {
        let mut rng = XorShift::new(0xd115);
        let valid = response(
            "example.com",
            TYPE_A,
            0,
            &[
                rr(TYPE_A, &[1, 2, 3, 4]),
                rr(TYPE_CNAME, b"\x01a\xC0\x0C"),
                rr(TYPE_TXT, b"\x01x"),
            ],
        );
        for i in 0..20_000 {
            let m = if i % 2 == 0 {
                let mut m = valid.clone();
                rng.mutate(&mut m);
                m
            } else {
                let mut m: Vec<u8> = (0..rng.below(80)).map(|_| rng.byte()).collect();
                if m.len() >= 3 {
                    m[..3].copy_from_slice(&[0x12, 0x34, 0x80]);
                }
                m
            };
            if let Ok(r) = parse(&m) {
                assert!(r.answers.len() <= m.len() / 11);
                let _ = judge(
                    &DnsSpec {
                        name: "x".into(),
                        qtype: 1,
                        expect_rcode: 0,
                        expect_answer: Some("1.2.3.4".into()),
                    },
                    &r,
                );
            }
        }
    }
}
