//! The bounds-checked packet classifier shared by the XDP and TC programs.
//!
//! It is generic over [`Frame`], so the kernel programs run it on packet memory (every
//! read checked against `data_end`) and host tests run it on byte slices. It never
//! loops over packet contents: VLAN tags are unrolled (at most two, 802.1ad QinQ) and
//! IPv6 extension headers are not followed (our probes never carry them, so an answer
//! never does either).

use crate::{
    config::ProbeConfig,
    cookie::cookie,
    counters::{TcReason, XdpReason},
    family, proto,
    record::{AnswerClass, StampKey},
};

/// Read access to one frame, starting at the Ethernet header.
pub trait Frame {
    /// Read a `T` at byte offset `off`, or `None` if it would cross the end of the frame.
    fn load<T: Copy>(&self, off: usize) -> Option<T>;
    /// Length of the frame in bytes. Used for length-field checks, which compare
    /// numbers instead of reading at a far offset (the verifier only tracks packet
    /// ranges up to 64 KiB and dislikes large variable offsets).
    fn frame_len(&self) -> usize;
}

impl Frame for [u8] {
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len()
    }

    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        let end = off.checked_add(core::mem::size_of::<T>())?;
        if end > self.len() {
            return None;
        }
        // SAFETY: the range [off, end) is inside the slice; read_unaligned has no
        // alignment requirement and `T: Copy` (plain data in all our uses).
        Some(unsafe { core::ptr::read_unaligned(self.as_ptr().add(off).cast::<T>()) })
    }
}

const ETH_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

#[inline(always)]
fn be16_at(h: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([h[i], h[i + 1]])
}

#[inline(always)]
fn be32_at(h: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]])
}

/// Offset of the L3 header and its ethertype, after at most two VLAN tags.
///
/// Every header is read as one fixed-size array first: a constant-size bounds check
/// per header is what the verifier can follow; field reads then come from the copy.
#[inline(always)]
fn ethernet<F: Frame + ?Sized>(f: &F) -> Result<(usize, u16), Malformed> {
    let h: [u8; ETH_LEN] = f.load(0).ok_or(Malformed::Eth)?;
    let mut ethertype = u16::from_be_bytes([h[12], h[13]]);
    let mut off = ETH_LEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag: [u8; 4] = f.load(off).ok_or(Malformed::Eth)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += 4;
        if ethertype == ETH_P_8021Q {
            let tag: [u8; 4] = f.load(off).ok_or(Malformed::Eth)?;
            ethertype = u16::from_be_bytes([tag[2], tag[3]]);
            off += 4;
        }
    }
    Ok((off, ethertype))
}

/// Offset of the L3 header (after the Ethernet header and at most two VLAN tags), or
/// `None` for a frame too short to hold them.
#[inline(always)]
pub fn l3_offset<F: Frame + ?Sized>(f: &F) -> Option<usize> {
    ethernet(f).ok().map(|(off, _)| off)
}

/// Which layer a malformed frame broke at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Malformed {
    Eth,
    Ipv4,
    Ipv6,
    L4,
}

/// A parsed IP header.
#[derive(Clone, Copy)]
struct Ip {
    family: u8,
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    ttl: u8,
    /// Offset of the transport header.
    l4: usize,
    /// End of the IP datagram (its length field; the frame's end for a quote, which
    /// is cut short by design). Ethernet padding beyond it is not part of the packet.
    end: usize,
}

/// Why an IP header is not worth looking into.
#[derive(Clone, Copy)]
enum IpSkip {
    Malformed(Malformed),
    Fragment,
}

#[inline(always)]
fn v4addr(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = b[0];
    a[1] = b[1];
    a[2] = b[2];
    a[3] = b[3];
    a
}

/// Parse an IPv4 header at `off`. `quoted`: inside an ICMP error, where the quote
/// may be cut short, so the total length is not checked against the frame.
#[inline(always)]
fn ipv4<F: Frame + ?Sized>(f: &F, off: usize, quoted: bool) -> Result<Ip, IpSkip> {
    let m = IpSkip::Malformed(if quoted {
        Malformed::L4
    } else {
        Malformed::Ipv4
    });
    let h: [u8; 20] = f.load(off).ok_or(m)?;
    if h[0] >> 4 != 4 {
        return Err(m);
    }
    let hlen = usize::from(h[0] & 0x0f) * 4;
    if hlen < 20 {
        return Err(m);
    }
    // Options: the whole header must be inside the frame.
    if hlen > 20 && f.load::<u8>(off + hlen - 1).is_none() {
        return Err(m);
    }
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if total < hlen {
        return Err(m);
    }
    if !quoted && off + total > f.frame_len() {
        return Err(m);
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    if !quoted && frag & 0x3fff != 0 {
        return Err(IpSkip::Fragment);
    }
    Ok(Ip {
        family: family::V4,
        ttl: h[8],
        proto: h[9],
        src: v4addr(&h[12..16]),
        dst: v4addr(&h[16..20]),
        l4: off + hlen,
        end: if quoted { f.frame_len() } else { off + total },
    })
}

#[inline(always)]
fn ipv6<F: Frame + ?Sized>(f: &F, off: usize, quoted: bool) -> Result<Ip, IpSkip> {
    let m = IpSkip::Malformed(if quoted {
        Malformed::L4
    } else {
        Malformed::Ipv6
    });
    let h: [u8; 8] = f.load(off).ok_or(m)?;
    let src: [u8; 16] = f.load(off + 8).ok_or(m)?;
    let dst: [u8; 16] = f.load(off + 24).ok_or(m)?;
    if h[0] >> 4 != 6 {
        return Err(m);
    }
    let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    if !quoted && off + 40 + payload > f.frame_len() {
        return Err(m);
    }
    let next = h[6];
    if !quoted && next == proto::IPV6_FRAGMENT {
        return Err(IpSkip::Fragment);
    }
    Ok(Ip {
        family: family::V6,
        proto: next,
        ttl: h[7],
        src,
        dst,
        l4: off + 40,
        end: if quoted {
            f.frame_len()
        } else {
            off + 40 + payload
        },
    })
}

#[inline(always)]
fn ip<F: Frame + ?Sized>(f: &F, off: usize, ethertype: u16) -> Result<Ip, XdpReason> {
    let r = match ethertype {
        ETH_P_IP => ipv4(f, off, false),
        ETH_P_IPV6 => ipv6(f, off, false),
        _ => return Err(XdpReason::NotIp),
    };
    r.map_err(|e| match e {
        IpSkip::Fragment => XdpReason::Fragment,
        IpSkip::Malformed(m) => malformed(m),
    })
}

#[inline(always)]
fn malformed(m: Malformed) -> XdpReason {
    match m {
        Malformed::Eth => XdpReason::MalformedEth,
        Malformed::Ipv4 => XdpReason::MalformedIpv4,
        Malformed::Ipv6 => XdpReason::MalformedIpv6,
        Malformed::L4 => XdpReason::MalformedL4,
    }
}

/// An answer to one of our probes, as classified from a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// What kind of answer.
    pub class: AnswerClass,
    /// The probe it answers: the key its egress stamp was stored under.
    pub key: StampKey,
    /// Who sent it (the target, or the router behind an ICMP error).
    pub reporter: [u8; 16],
    /// The answer's TCP sequence number (0 if not TCP).
    pub answer_seq: u32,
    /// ICMP type and code of the answer (0 for TCP/UDP).
    pub icmp_type: u8,
    /// ICMP code of the answer.
    pub icmp_code: u8,
    /// TCP flags of the answer.
    pub tcp_flags: u8,
    /// TTL / hop limit of the answer.
    pub ttl: u8,
    /// Whether a cookie was checked and valid (TCP answers and quoted TCP probes).
    pub cookie_ok: bool,
}

impl Default for Answer {
    fn default() -> Self {
        Self {
            class: AnswerClass::Open,
            key: StampKey::default(),
            reporter: [0; 16],
            answer_seq: 0,
            icmp_type: 0,
            icmp_code: 0,
            tcp_flags: 0,
            ttl: 0,
            cookie_ok: false,
        }
    }
}

/// Fill `k` in place (no temporaries: the XDP stack is 512 bytes in all).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn set_key(
    k: &mut StampKey,
    fam: u8,
    local: &[u8; 16],
    remote: &[u8; 16],
    lp: u16,
    rp: u16,
    pr: u8,
    seq: u32,
) {
    k.local = *local;
    k.remote = *remote;
    k.local_port = lp;
    k.remote_port = rp;
    k.proto = pr;
    k.family = fam;
    k._pad = [0; 2];
    k.seq = seq;
}

/// The key of an egress probe.
#[inline(always)]
fn key(fam: u8, local: [u8; 16], remote: [u8; 16], lp: u16, rp: u16, pr: u8, seq: u32) -> StampKey {
    StampKey {
        local,
        remote,
        local_port: lp,
        remote_port: rp,
        proto: pr,
        family: fam,
        _pad: [0; 2],
        seq,
    }
}

#[inline(always)]
fn is_echo_reply(family: u8, t: u8) -> bool {
    (family == family::V4 && t == 0) || (family == family::V6 && t == 129)
}

#[inline(always)]
fn is_echo_request(family: u8, t: u8) -> bool {
    (family == family::V4 && t == 8) || (family == family::V6 && t == 128)
}

#[inline(always)]
fn is_icmp_error(family: u8, t: u8) -> bool {
    // v4: destination unreachable, time exceeded; v6: destination unreachable, time exceeded.
    (family == family::V4 && (t == 3 || t == 11)) || (family == family::V6 && (t == 1 || t == 3))
}

/// ICMP goes with IPv4 and ICMPv6 with IPv6; any other pairing is not ours.
#[inline(always)]
fn icmp_matches_family(pr: u8, fam: u8) -> bool {
    (pr == proto::ICMP) == (fam == family::V4)
}

/// Classify a received frame: an answer to one of our probes, or the reason it is not.
///
/// # Errors
/// The [`XdpReason`] that ends the frame's processing when it is not a valid answer.
#[inline(always)]
pub fn classify<F: Frame + ?Sized>(f: &F, cfg: &ProbeConfig) -> Result<Answer, XdpReason> {
    let mut out = Answer::default();
    classify_into(f, cfg, &mut out)?;
    Ok(out)
}

/// [`classify`], writing the answer into `out` (which may be map memory: the XDP
/// program keeps it off its small stack). `out` is only meaningful on `Ok`.
///
/// # Errors
/// The [`XdpReason`] that ends the frame's processing when it is not a valid answer.
#[inline(always)]
pub fn classify_into<F: Frame + ?Sized>(
    f: &F,
    cfg: &ProbeConfig,
    out: &mut Answer,
) -> Result<(), XdpReason> {
    if cfg.enabled == 0 {
        return Err(XdpReason::Disabled);
    }
    let (l3, ethertype) = ethernet(f).map_err(malformed)?;
    let ip = ip(f, l3, ethertype)?;
    let l4 = ip.l4;
    out.reporter = ip.src;
    out.ttl = ip.ttl;
    out.answer_seq = 0;
    out.icmp_type = 0;
    out.icmp_code = 0;
    out.tcp_flags = 0;
    out.cookie_ok = false;
    match ip.proto {
        proto::TCP => {
            let h: [u8; 20] = f.load(l4).ok_or(XdpReason::MalformedL4)?;
            let sport = be16_at(&h, 0);
            let dport = be16_at(&h, 2);
            let ack = be32_at(&h, 8);
            let fl = h[13];
            let hlen = usize::from(h[12] >> 4) * 4;
            if hlen < 20
                || l4 + hlen > ip.end
                || (hlen > 20 && f.load::<u8>(l4 + hlen - 1).is_none())
            {
                return Err(XdpReason::MalformedL4);
            }
            if !cfg.owns_port(dport) {
                return Err(XdpReason::NotOurs);
            }
            out.class = if fl & tcp_flags::RST != 0 {
                AnswerClass::Closed
            } else if fl & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN | tcp_flags::ACK {
                AnswerClass::Open
            } else {
                return Err(XdpReason::OtherTcp);
            };
            let probe_seq = ack.wrapping_sub(1);
            // An RST without ACK acknowledges nothing, so it cannot prove it answers us.
            if fl & tcp_flags::ACK == 0
                || probe_seq != cookie(&cfg.cookie_key, &ip.dst, &ip.src, dport, sport)
            {
                return Err(XdpReason::BadCookie);
            }
            set_key(
                &mut out.key,
                ip.family,
                &ip.dst,
                &ip.src,
                dport,
                sport,
                proto::TCP,
                probe_seq,
            );
            out.answer_seq = be32_at(&h, 4);
            out.tcp_flags = fl;
            out.cookie_ok = true;
            Ok(())
        }
        proto::UDP => {
            let h: [u8; 8] = f.load(l4).ok_or(XdpReason::MalformedL4)?;
            if l4 + 8 > ip.end {
                return Err(XdpReason::MalformedL4);
            }
            let sport = be16_at(&h, 0);
            let dport = be16_at(&h, 2);
            if !cfg.owns_port(dport) {
                return Err(XdpReason::NotOurs);
            }
            out.class = AnswerClass::UdpReply;
            set_key(
                &mut out.key,
                ip.family,
                &ip.dst,
                &ip.src,
                dport,
                sport,
                proto::UDP,
                0,
            );
            Ok(())
        }
        proto::ICMP | proto::ICMPV6 => {
            // ICMP for IPv4 and ICMPv6 for IPv6 only.
            if !icmp_matches_family(ip.proto, ip.family) {
                return Err(XdpReason::OtherL4);
            }
            let h: [u8; 8] = f.load(l4).ok_or(XdpReason::MalformedL4)?;
            if l4 + 8 > ip.end {
                return Err(XdpReason::MalformedL4);
            }
            let (t, code) = (h[0], h[1]);
            out.icmp_type = t;
            out.icmp_code = code;
            if is_echo_reply(ip.family, t) {
                let id = be16_at(&h, 4);
                if id != cfg.icmp_id {
                    return Err(XdpReason::NotOurs);
                }
                out.class = AnswerClass::EchoReply;
                set_key(
                    &mut out.key,
                    ip.family,
                    &ip.dst,
                    &ip.src,
                    id,
                    be16_at(&h, 6),
                    ip.proto,
                    0,
                );
                return Ok(());
            }
            if !is_icmp_error(ip.family, t) {
                return Err(XdpReason::NotOurs);
            }
            out.class = AnswerClass::Unreachable;
            quoted(f, cfg, ip.family, l4 + 8, out)
        }
        _ => Err(XdpReason::OtherL4),
    }
}

/// An ICMP error: is the packet it quotes (at `inner_off`) one of our probes? Fills
/// `out.key` and `out.cookie_ok` from the quoted probe.
#[inline(always)]
fn quoted<F: Frame + ?Sized>(
    f: &F,
    cfg: &ProbeConfig,
    fam: u8,
    inner_off: usize,
    out: &mut Answer,
) -> Result<(), XdpReason> {
    let inner = if fam == family::V4 {
        ipv4(f, inner_off, true)
    } else {
        ipv6(f, inner_off, true)
    }
    .map_err(|_| XdpReason::MalformedL4)?;
    // RFC 792 guarantees the first 8 bytes of the quoted transport header.
    let h: [u8; 8] = f.load(inner.l4).ok_or(XdpReason::MalformedL4)?;
    let a = be16_at(&h, 0);
    let b = be16_at(&h, 2);
    let c = be32_at(&h, 4);
    match inner.proto {
        proto::TCP => {
            if !cfg.owns_port(a) {
                return Err(XdpReason::NotOurs);
            }
            if c != cookie(&cfg.cookie_key, &inner.src, &inner.dst, a, b) {
                return Err(XdpReason::BadCookie);
            }
            set_key(
                &mut out.key,
                inner.family,
                &inner.src,
                &inner.dst,
                a,
                b,
                proto::TCP,
                c,
            );
            out.cookie_ok = true;
        }
        proto::UDP => {
            if !cfg.owns_port(a) {
                return Err(XdpReason::NotOurs);
            }
            set_key(
                &mut out.key,
                inner.family,
                &inner.src,
                &inner.dst,
                a,
                b,
                proto::UDP,
                0,
            );
        }
        proto::ICMP | proto::ICMPV6 if icmp_matches_family(inner.proto, inner.family) => {
            // The quoted echo request: type in the high byte of `a`, id and seq in `c`.
            let id = (c >> 16) as u16;
            if !is_echo_request(inner.family, (a >> 8) as u8) || id != cfg.icmp_id {
                return Err(XdpReason::NotOurs);
            }
            set_key(
                &mut out.key,
                inner.family,
                &inner.src,
                &inner.dst,
                id,
                c as u16,
                inner.proto,
                0,
            );
        }
        _ => return Err(XdpReason::NotOurs),
    }
    Ok(())
}

/// Classify an outgoing packet for the TC egress program: the stamp key of one of our
/// probes, or the reason it is not one.
///
/// # Errors
/// The [`TcReason`] when the packet is not a probe of ours.
#[inline(always)]
pub fn classify_egress<F: Frame + ?Sized>(
    f: &F,
    cfg: &ProbeConfig,
) -> Result<(StampKey, TcReason), TcReason> {
    if cfg.enabled == 0 {
        return Err(TcReason::Disabled);
    }
    let (l3, ethertype) = ethernet(f).map_err(|_| TcReason::Malformed)?;
    let ip = match ip(f, l3, ethertype) {
        Ok(ip) => ip,
        Err(XdpReason::NotIp | XdpReason::Fragment) => return Err(TcReason::NotOurs),
        Err(_) => return Err(TcReason::Malformed),
    };
    let l4 = ip.l4;
    let (src, dst) = (ip.src, ip.dst);
    match ip.proto {
        proto::TCP => {
            // The same header rules as for answers, so what is stamped could be matched.
            let h: [u8; 20] = f.load(l4).ok_or(TcReason::Malformed)?;
            let hlen = usize::from(h[12] >> 4) * 4;
            if hlen < 20 || l4 + hlen > ip.end {
                return Err(TcReason::Malformed);
            }
            let sport = be16_at(&h, 0);
            let dport = be16_at(&h, 2);
            let seq = be32_at(&h, 4);
            let fl = h[13];
            if !cfg.owns_port(sport) || fl & (tcp_flags::SYN | tcp_flags::ACK) != tcp_flags::SYN {
                return Err(TcReason::NotOurs);
            }
            Ok((
                key(ip.family, src, dst, sport, dport, proto::TCP, seq),
                TcReason::StampedSyn,
            ))
        }
        proto::UDP => {
            let h: [u8; 8] = f.load(l4).ok_or(TcReason::Malformed)?;
            if l4 + 8 > ip.end {
                return Err(TcReason::Malformed);
            }
            let sport = be16_at(&h, 0);
            let dport = be16_at(&h, 2);
            if !cfg.owns_port(sport) {
                return Err(TcReason::NotOurs);
            }
            Ok((
                key(ip.family, src, dst, sport, dport, proto::UDP, 0),
                TcReason::StampedUdp,
            ))
        }
        proto::ICMP | proto::ICMPV6 => {
            let h: [u8; 8] = f.load(l4).ok_or(TcReason::Malformed)?;
            if l4 + 8 > ip.end {
                return Err(TcReason::Malformed);
            }
            if !icmp_matches_family(ip.proto, ip.family) {
                return Err(TcReason::NotOurs);
            }
            let t = h[0];
            let id = be16_at(&h, 4);
            let seq = be16_at(&h, 6);
            if !is_echo_request(ip.family, t) || id != cfg.icmp_id {
                return Err(TcReason::NotOurs);
            }
            Ok((
                key(ip.family, src, dst, id, seq, ip.proto, 0),
                TcReason::StampedEcho,
            ))
        }
        _ => Err(TcReason::NotOurs),
    }
}
