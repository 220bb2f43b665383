//! Target `dns_response`: the DNS answer parser of DNS checks
//! (`sonde::engine::dns::parse_response`) on arbitrary datagrams.
//!
//! Input: 1 selector byte (the query's name and type: [`query_of`]), then the datagram.
//! The query id is taken from the datagram, so the parser always gets past the id check.
//!
//! Invariants: never panics; a datagram with any other id is [`DnsError::WrongId`]
//! (stray, the engine keeps waiting); a parsed response keeps the id, a 4-bit rcode and
//! at most ANCOUNT answers, an A/AAAA answer's data is an address; judging and error
//! reasons never panic; our own query, answered as is, parses.

use std::net::{Ipv4Addr, Ipv6Addr};

use sonde::engine::{
    dns::{
        encode_query, error_reason, judge, parse_response, DnsError, CLASS_IN, TYPE_A, TYPE_AAAA,
        TYPE_CNAME, TYPE_NS, TYPE_PTR, TYPE_TXT,
    },
    spec::DnsSpec,
};

const NAMES: [&str; 3] = ["example.test", "www.Example.TEST.", "."];
const TYPES: [u16; 7] = [
    TYPE_A, TYPE_AAAA, TYPE_TXT, TYPE_CNAME, TYPE_NS, TYPE_PTR, 15,
];

/// The query (name, type) a selector byte stands for.
#[must_use]
pub fn query_of(sel: u8) -> (&'static str, u16) {
    let s = usize::from(sel);
    (
        NAMES[s % NAMES.len()],
        TYPES[(s / NAMES.len()) % TYPES.len()],
    )
}

/// Parses one datagram as the answer to the selected query.
///
/// # Panics
/// When an invariant breaks.
pub fn check(data: &[u8]) {
    let Some((&sel, dgram)) = data.split_first() else {
        return;
    };
    let (name, qtype) = query_of(sel);
    let id = dgram
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let result = parse_response(dgram, id, name, qtype);
    match &result {
        Ok(r) => {
            assert_eq!(r.id, id);
            assert!(r.rcode <= 15);
            let ancount = usize::from(u16::from_be_bytes([dgram[6], dgram[7]]));
            assert!(r.answers.len() <= ancount, "more answers than ANCOUNT");
            let qdcount = u16::from_be_bytes([dgram[4], dgram[5]]);
            assert!(
                qdcount == 1 || r.rcode != 0,
                "NOERROR without question accepted"
            );
            for a in &r.answers {
                assert!(!a.name.is_empty());
                match a.rtype {
                    TYPE_A => assert!(a.data.parse::<Ipv4Addr>().is_ok(), "A data {:?}", a.data),
                    TYPE_AAAA => assert!(a.data.parse::<Ipv6Addr>().is_ok(), "{:?}", a.data),
                    _ => {}
                }
            }
            for expect_answer in [None, r.answers.first().map(|a| a.data.clone())] {
                let spec = DnsSpec {
                    name: name.to_owned(),
                    qtype,
                    expect_rcode: 0,
                    expect_answer,
                };
                let _ = judge(&spec, r);
            }
        }
        Err(e) => {
            assert!(
                !matches!(e, DnsError::WrongId { .. }),
                "own id refused: {e}"
            );
            let _ = (e.to_string(), error_reason(e), e.is_stray());
        }
    }
    if dgram.len() >= 12 {
        let other = parse_response(dgram, id ^ 0x8001, name, qtype);
        assert!(
            matches!(other, Err(ref e) if e.is_stray()),
            "another id must be a stray datagram, got {other:?}"
        );
    }
    // Our own query with QR set and nothing else changed is a valid empty answer.
    let mut q = Vec::new();
    encode_query(id, name, qtype, &mut q).expect("the selected names are valid");
    q[2] |= 0x80;
    let echo = parse_response(&q, id, name, qtype).expect("own query echoed back parses");
    assert!(echo.answers.is_empty());
}

/// A response to `(name, qtype)` with id `id`, the question echoed, and `answers`
/// (already encoded records) appended.
fn response(id: u16, sel: u8, flags: u16, answers: &[Vec<u8>]) -> Vec<u8> {
    let (name, qtype) = query_of(sel);
    let mut m = Vec::new();
    encode_query(id, name, qtype, &mut m).expect("valid name");
    m[2..4].copy_from_slice(&flags.to_be_bytes());
    m[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
    for a in answers {
        m.extend_from_slice(a);
    }
    let mut input = vec![sel];
    input.extend_from_slice(&m);
    input
}

/// One record: owner `name` (wire form), type, TTL 300, `rdata`.
fn rr(name: &[u8], rtype: u16, rdata: &[u8]) -> Vec<u8> {
    let mut r = name.to_vec();
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&CLASS_IN.to_be_bytes());
    r.extend_from_slice(&300u32.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
    r
}

/// Selector of `(NAMES[n], TYPES[t])`.
fn sel(n: usize, t: usize) -> u8 {
    (n + NAMES.len() * t) as u8
}

/// Seed answers: A, AAAA, CNAME chain, TXT, MX (other type, hex data), PTR with an
/// uncompressed name, NXDOMAIN without question, a truncated (TC) answer.
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    // Pointer to the question's name, which starts right after the 12-byte header.
    let at_q: &[u8] = &[0xc0, 0x0c];
    let ok = 0x8580; // QR AA RD RA, NOERROR
    let mut out = vec![
        (
            "a.bin",
            response(0x1234, sel(0, 0), ok, &[rr(at_q, TYPE_A, &[198, 18, 0, 5])]),
        ),
        (
            "aaaa.bin",
            response(
                0x2345,
                sel(0, 1),
                ok,
                &[rr(
                    at_q,
                    TYPE_AAAA,
                    &Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10).octets(),
                )],
            ),
        ),
        (
            "cname_chain.bin",
            response(
                0x3456,
                sel(1, 0),
                ok,
                &[
                    rr(at_q, TYPE_CNAME, b"\x03web\xc0\x10"),
                    rr(b"\x03web\xc0\x10", TYPE_A, &[198, 18, 0, 6]),
                ],
            ),
        ),
        (
            "txt.bin",
            response(
                0x4567,
                sel(0, 2),
                ok,
                &[rr(at_q, TYPE_TXT, b"\x05hello\x00\x05world")],
            ),
        ),
        (
            "mx.bin",
            response(
                0x5678,
                sel(0, 6),
                ok,
                &[rr(at_q, 15, b"\x00\x0a\x04mail\xc0\x0c")],
            ),
        ),
        (
            "ptr.bin",
            response(
                0x6789,
                sel(2, 5),
                ok,
                &[rr(&[0], TYPE_PTR, b"\x04host\x07example\x04test\x00")],
            ),
        ),
    ];
    // NXDOMAIN with no question section at all.
    let mut nx = vec![sel(0, 0)];
    nx.extend_from_slice(&[0x78, 0x9a, 0x81, 0x83, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.push(("nxdomain_no_question.bin", nx));
    // TC set, ANCOUNT says 2, the second record is cut.
    let mut tc = response(
        0x89ab,
        sel(0, 0),
        ok | 0x0200,
        &[
            rr(at_q, TYPE_A, &[198, 18, 0, 7]),
            rr(at_q, TYPE_A, &[198, 18, 0, 8]),
        ],
    );
    tc.truncate(tc.len() - 6);
    out.push(("truncated.bin", tc));
    out.into_iter().map(|(n, v)| (n.to_owned(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse() {
        for (name, s) in seeds() {
            check(&s);
            let (q, t) = query_of(s[0]);
            let id = u16::from_be_bytes([s[1], s[2]]);
            let r = parse_response(&s[1..], id, q, t);
            assert!(r.is_ok(), "{name}: {r:?}");
            if name != "nxdomain_no_question.bin" {
                assert!(!r.unwrap().answers.is_empty(), "{name}");
            }
        }
    }
}
