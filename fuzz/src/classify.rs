//! Target `classify`: the packet classifier the XDP and TC programs share
//! (`probe_common::parse`), on arbitrary frames.
//!
//! Invariants checked on every frame:
//! - an ingress answer is for one of our probes: TCP/UDP local port in the reserved
//!   range, ICMP identifier ours, a TCP answer (direct or quoted) carries the cookie
//!   recomputed with `probe_common::cookie::cookie`, class and protocol agree;
//! - `classify_into` gives the same answer whatever its output slot held before (the XDP
//!   program reuses per-CPU scratch memory);
//! - an egress probe has a reserved port or our ICMP identifier, and the answers a target
//!   or a router would send to it (SYN-ACK, echo reply, UDP reply, ICMP error quoting
//!   it) classify back to the very key it was stamped under.

use probe_common::{
    config::ProbeConfig,
    cookie::cookie,
    counters::{TcReason, XdpReason},
    craft::{build, Eth, Ip, L4},
    family,
    parse::{classify, classify_egress, classify_into, tcp_flags, Answer},
    proto,
    record::{AnswerClass, StampKey},
};

use crate::probe_config;

/// Runs both classifiers on `frame` and checks their invariants.
///
/// # Panics
/// When an invariant breaks (that is the finding).
pub fn check(frame: &[u8]) {
    let cfg = probe_config();
    let got = classify(frame, &cfg);
    let mut slot = stale_answer();
    let again = classify_into(frame, &cfg, &mut slot);
    assert_eq!(
        got.map(|_| ()),
        again,
        "classify and classify_into disagree"
    );
    if let Ok(answer) = got {
        assert_eq!(
            answer, slot,
            "classify_into kept stale fields of its output slot"
        );
        check_answer(frame, &cfg, &answer);
    }
    match classify_egress(frame, &cfg) {
        Ok((key, reason)) => check_egress(frame, &cfg, &key, reason),
        Err(r) => assert!(
            matches!(r, TcReason::Malformed | TcReason::NotOurs),
            "egress refused with {r:?}"
        ),
    }
}

/// An output slot full of leftovers from some earlier frame.
fn stale_answer() -> Answer {
    Answer {
        class: AnswerClass::Unreachable,
        key: StampKey {
            local: [0xaa; 16],
            remote: [0x55; 16],
            local_port: 0xffff,
            remote_port: 0xffff,
            proto: 0xff,
            family: 0xff,
            _pad: [0xff; 2],
            seq: u32::MAX,
        },
        reporter: [0xcc; 16],
        answer_seq: u32::MAX,
        icmp_type: 0xff,
        icmp_code: 0xff,
        tcp_flags: 0xff,
        ttl: 0xff,
        cookie_ok: true,
    }
}

fn is_v4_padded(a: &[u8; 16]) -> bool {
    a[4..].iter().all(|&b| b == 0)
}

fn check_key_shape(key: &StampKey) {
    assert!(
        key.family == family::V4 || key.family == family::V6,
        "family {}",
        key.family
    );
    if key.family == family::V4 {
        assert!(
            is_v4_padded(&key.local) && is_v4_padded(&key.remote),
            "IPv4 key with bytes past the address: {key:?}"
        );
    }
    assert_eq!(key._pad, [0; 2], "key padding must be zero (hash key)");
}

fn check_answer(frame: &[u8], cfg: &ProbeConfig, a: &Answer) {
    assert!(
        frame.len() >= 14,
        "answer from a frame shorter than Ethernet"
    );
    let key = &a.key;
    check_key_shape(key);
    if key.family == family::V4 {
        assert!(is_v4_padded(&a.reporter), "IPv4 reporter {:?}", a.reporter);
    }
    let v4 = key.family == family::V4;
    match key.proto {
        proto::TCP => {
            assert!(
                cfg.owns_port(key.local_port),
                "TCP answer to port {}",
                key.local_port
            );
            assert!(a.cookie_ok, "TCP answer without a checked cookie");
            let want = cookie(
                &cfg.cookie_key,
                &key.local,
                &key.remote,
                key.local_port,
                key.remote_port,
            );
            assert_eq!(key.seq, want, "TCP answer whose key is not our cookie");
        }
        proto::UDP => {
            assert!(
                cfg.owns_port(key.local_port),
                "UDP answer to port {}",
                key.local_port
            );
            assert_eq!(key.seq, 0);
            assert!(!a.cookie_ok);
        }
        proto::ICMP | proto::ICMPV6 => {
            assert_eq!(key.local_port, cfg.icmp_id, "echo answer with another id");
            assert_eq!(
                key.proto == proto::ICMP,
                v4,
                "ICMP version and IP family mixed"
            );
            assert_eq!(key.seq, 0);
            assert!(!a.cookie_ok);
        }
        p => panic!("answer for protocol {p}"),
    }
    let icmp_error = (v4 && matches!(a.icmp_type, 3 | 11)) || (!v4 && matches!(a.icmp_type, 1 | 3));
    match a.class {
        AnswerClass::Open => {
            assert_eq!(key.proto, proto::TCP);
            let f = a.tcp_flags;
            assert_eq!(
                f & (tcp_flags::SYN | tcp_flags::ACK),
                tcp_flags::SYN | tcp_flags::ACK
            );
            assert_eq!(f & tcp_flags::RST, 0);
        }
        AnswerClass::Closed => {
            assert_eq!(key.proto, proto::TCP);
            let f = a.tcp_flags;
            assert_eq!(
                f & (tcp_flags::RST | tcp_flags::ACK),
                tcp_flags::RST | tcp_flags::ACK
            );
        }
        AnswerClass::EchoReply => {
            assert!(matches!(key.proto, proto::ICMP | proto::ICMPV6));
            assert_eq!(a.icmp_type, if v4 { 0 } else { 129 });
        }
        AnswerClass::UdpReply => assert_eq!(key.proto, proto::UDP),
        AnswerClass::Unreachable => assert!(icmp_error, "ICMP type {}", a.icmp_type),
    }
    if !matches!(a.class, AnswerClass::Open | AnswerClass::Closed) {
        assert_eq!(
            (a.answer_seq, a.tcp_flags),
            (0, 0),
            "TCP fields on a non-TCP answer"
        );
    }
}

fn check_egress(frame: &[u8], cfg: &ProbeConfig, key: &StampKey, reason: TcReason) {
    check_key_shape(key);
    match reason {
        TcReason::StampedSyn => {
            assert_eq!(key.proto, proto::TCP);
            assert!(cfg.owns_port(key.local_port));
        }
        TcReason::StampedUdp => {
            assert_eq!(key.proto, proto::UDP);
            assert!(cfg.owns_port(key.local_port));
            assert_eq!(key.seq, 0);
        }
        TcReason::StampedEcho => {
            assert!(matches!(key.proto, proto::ICMP | proto::ICMPV6));
            assert_eq!(key.local_port, cfg.icmp_id);
            assert_eq!(key.seq, 0);
        }
        r => panic!("egress stamped with {r:?}"),
    }
    let ours = key.proto != proto::TCP
        || key.seq
            == cookie(
                &cfg.cookie_key,
                &key.local,
                &key.remote,
                key.local_port,
                key.remote_port,
            );
    let mut buf = [0u8; 1024];
    // The target's own answer.
    let n = direct_answer(&mut buf, key).expect("answer to a stamped probe fits");
    expect_key(&buf[..n], cfg, key, ours, "direct answer");
    // A router's ICMP error quoting the probe as it left.
    if let Some(n) = icmp_error(&mut buf, frame, key) {
        expect_key(&buf[..n], cfg, key, ours, "ICMP error quoting the probe");
    }
}

/// An answer to a stamped probe must classify under the stamp's key (or be refused as
/// a bad cookie when the probe's sequence number was not our cookie).
fn expect_key(answer: &[u8], cfg: &ProbeConfig, key: &StampKey, ours: bool, what: &str) {
    match classify(answer, cfg) {
        Ok(a) if ours => assert_eq!(&a.key, key, "{what}: key differs from the stamp"),
        Err(XdpReason::BadCookie) if !ours => {}
        r => panic!("{what} to a stamped probe {key:?} classified as {r:?}"),
    }
}

fn eth() -> Eth {
    Eth {
        dst: [2, 0, 0, 0, 0, 1],
        src: [2, 0, 0, 0, 0, 2],
        vlan: None,
    }
}

/// The answer the probe's target sends: SYN-ACK, echo reply or a UDP datagram back.
fn direct_answer(buf: &mut [u8], key: &StampKey) -> Option<usize> {
    let v4 = key.family == family::V4;
    let ip = Ip {
        family: key.family,
        src: key.remote,
        dst: key.local,
        ttl: 60,
        id: 0,
        options: &[],
    };
    let l4 = match key.proto {
        proto::TCP => L4::Tcp {
            sport: key.remote_port,
            dport: key.local_port,
            seq: 1,
            ack: key.seq.wrapping_add(1),
            flags: tcp_flags::SYN | tcp_flags::ACK,
            window: 1024,
            options: &[],
        },
        proto::UDP => L4::Udp {
            sport: key.remote_port,
            dport: key.local_port,
            payload: b"pong",
        },
        _ => L4::Icmp {
            kind: if v4 { 0 } else { 129 },
            code: 0,
            id: key.local_port,
            seq: key.remote_port,
            payload: b"",
        },
    };
    build(buf, Some(&eth()), &ip, &l4)
}

/// Offset of the IP header in `frame` (after up to two VLAN tags, as the parser reads).
fn l3_offset(frame: &[u8]) -> Option<usize> {
    let et = |o: usize| {
        frame
            .get(o..o + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let mut off = 14;
    let mut t = et(12)?;
    if t == 0x8100 || t == 0x88a8 {
        t = et(off + 2)?;
        off += 4;
        if t == 0x8100 {
            off += 4;
        }
    }
    Some(off)
}

/// A router's ICMP error to the probe's sender, quoting the probe from its IP header.
fn icmp_error(buf: &mut [u8], frame: &[u8], key: &StampKey) -> Option<usize> {
    let l3 = l3_offset(frame)?;
    let quoted = frame.get(l3..)?;
    let quoted = &quoted[..quoted.len().min(512)];
    let v4 = key.family == family::V4;
    let mut router = [0u8; 16];
    router[..4].copy_from_slice(&[198, 18, 0, 254]);
    if !v4 {
        router = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe,
        ];
    }
    let ip = Ip {
        family: key.family,
        src: router,
        dst: key.local,
        ttl: 60,
        id: 0,
        options: &[],
    };
    let l4 = L4::Icmp {
        kind: if v4 { 3 } else { 1 },
        code: if v4 { 3 } else { 4 },
        id: 0,
        seq: 0,
        payload: quoted,
    };
    build(buf, Some(&eth()), &ip, &l4)
}

/// Seed frames: answers of every class (IPv4, IPv6, VLAN, QinQ, IP options), ICMP
/// errors quoting each probe kind, and our own probes as the TC program sees them.
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let cfg = probe_config();
    let mut us4 = [0u8; 16];
    us4[..4].copy_from_slice(&[198, 18, 0, 1]);
    let mut them4 = [0u8; 16];
    them4[..4].copy_from_slice(&[198, 18, 0, 2]);
    let us6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let them6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let ck = |us: &[u8; 16], them: &[u8; 16], sp, dp| cookie(&cfg.cookie_key, us, them, sp, dp);
    let mut out = Vec::new();
    let mut add = |name: &str, vlan: Option<u16>, fam, src, dst, opts: &[u8], l4: L4<'_>| {
        let mut buf = [0u8; 512];
        let e = Eth { vlan, ..eth() };
        let ip = Ip {
            family: fam,
            src,
            dst,
            ttl: 61,
            id: 1,
            options: opts,
        };
        let n = build(&mut buf, Some(&e), &ip, &l4).expect("seed fits");
        out.push((format!("{name}.bin"), buf[..n].to_vec()));
    };
    let (v4, v6) = (family::V4, family::V6);
    let syn_ack = |us, them, sp, dp| L4::Tcp {
        sport: dp,
        dport: sp,
        seq: 777,
        ack: ck(us, them, sp, dp).wrapping_add(1),
        flags: tcp_flags::SYN | tcp_flags::ACK,
        window: 65535,
        options: &[2, 4, 5, 0xb4],
    };
    add(
        "syn_ack_v4",
        None,
        v4,
        them4,
        us4,
        &[],
        syn_ack(&us4, &them4, 61000, 80),
    );
    add(
        "syn_ack_v6",
        None,
        v6,
        them6,
        us6,
        &[],
        syn_ack(&us6, &them6, 61001, 443),
    );
    add(
        "syn_ack_vlan",
        Some(42),
        v4,
        them4,
        us4,
        &[],
        syn_ack(&us4, &them4, 61002, 443),
    );
    add(
        "syn_ack_ip_options",
        None,
        v4,
        them4,
        us4,
        &[1, 1, 1, 0],
        syn_ack(&us4, &them4, 61003, 22),
    );
    let mut rst = syn_ack(&us4, &them4, 61004, 81);
    if let L4::Tcp { ref mut flags, .. } = rst {
        *flags = tcp_flags::RST | tcp_flags::ACK;
    }
    add("rst_ack_v4", None, v4, them4, us4, &[], rst);
    let echo = |kind, seq| L4::Icmp {
        kind,
        code: 0,
        id: cfg.icmp_id,
        seq,
        payload: b"sonde-test",
    };
    add("echo_reply_v4", None, v4, them4, us4, &[], echo(0, 7));
    add("echo_reply_v6", None, v6, them6, us6, &[], echo(129, 8));
    let udp = |sport, dport| L4::Udp {
        sport,
        dport,
        payload: b"pong",
    };
    add("udp_reply_v4", None, v4, them4, us4, &[], udp(53, 61005));
    add("udp_reply_v6", None, v6, them6, us6, &[], udp(7, 61006));
    // Our probes as they leave (classify_egress), and quoted in ICMP errors.
    let syn = |us, them, sp, dp| L4::Tcp {
        sport: sp,
        dport: dp,
        seq: ck(us, them, sp, dp),
        ack: 0,
        flags: tcp_flags::SYN,
        window: 1024,
        options: &[],
    };
    add(
        "probe_syn_v4",
        None,
        v4,
        us4,
        them4,
        &[],
        syn(&us4, &them4, 61010, 80),
    );
    add(
        "probe_syn_v6",
        None,
        v6,
        us6,
        them6,
        &[],
        syn(&us6, &them6, 61011, 80),
    );
    add("probe_echo_v4", None, v4, us4, them4, &[], echo(8, 1));
    add("probe_echo_v6", None, v6, us6, them6, &[], echo(128, 2));
    add("probe_udp_v4", None, v4, us4, them4, &[], udp(61012, 53));
    let quote = |fam, src, dst, l4: L4<'_>| {
        let mut buf = [0u8; 256];
        let ip = Ip {
            family: fam,
            src,
            dst,
            ttl: 1,
            id: 9,
            options: &[],
        };
        let n = build(&mut buf, None, &ip, &l4).expect("quote fits");
        let hl = if fam == family::V4 { 20 } else { 40 };
        buf[..n.min(hl + 8)].to_vec()
    };
    let mut router4 = [0u8; 16];
    router4[..4].copy_from_slice(&[198, 18, 0, 254]);
    let q = quote(v4, us4, them4, syn(&us4, &them4, 61020, 80));
    let err = |kind, code, payload| L4::Icmp {
        kind,
        code,
        id: 0,
        seq: 0,
        payload,
    };
    add(
        "icmp_ttl_exceeded_quoting_syn",
        None,
        v4,
        router4,
        us4,
        &[],
        err(11, 0, &q),
    );
    let q = quote(v4, us4, them4, udp(61021, 53));
    add(
        "icmp_port_unreachable_quoting_udp",
        None,
        v4,
        them4,
        us4,
        &[],
        err(3, 3, &q),
    );
    let q = quote(v4, us4, them4, echo(8, 3));
    add(
        "icmp_host_unreachable_quoting_echo",
        None,
        v4,
        router4,
        us4,
        &[],
        err(3, 1, &q),
    );
    let q = quote(v6, us6, them6, udp(61022, 53));
    add(
        "icmpv6_port_unreachable_quoting_udp",
        None,
        v6,
        them6,
        us6,
        &[],
        err(1, 4, &q),
    );
    let q = quote(v6, us6, them6, echo(128, 4));
    add(
        "icmpv6_time_exceeded_quoting_echo",
        None,
        v6,
        them6,
        us6,
        &[],
        err(3, 0, &q),
    );
    // 802.1ad outer tag in front of the 802.1Q one (QinQ).
    let mut qinq = out[0].1.clone();
    qinq.splice(12..12, [0x88, 0xa8, 0x00, 0x07]);
    qinq.splice(16..16, [0x81, 0x00, 0x00, 0x2a]);
    out.push(("syn_ack_qinq.bin".to_owned(), qinq));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_classify_as_built() {
        let cfg = probe_config();
        for (name, frame) in seeds() {
            check(&frame);
            let ingress = classify(&frame[..], &cfg).is_ok();
            let egress = classify_egress(&frame[..], &cfg).is_ok();
            assert!(
                ingress != egress,
                "{name}: exactly one direction must accept it"
            );
            assert_eq!(egress, name.starts_with("probe_"), "{name}");
        }
    }
}
