//! sonde's kernel programs.
//!
//! - `sonde_tc_egress` (TC, egress): stamps the kernel send time of each of our probes
//!   (TCP SYN from a reserved port, ICMP echo with our identifier, UDP from a reserved
//!   port) into a direct-mapped array, in the slot its flow and cookie hash to
//!   (`probe_common::stamp`).
//! - `sonde_xdp` (XDP, ingress): classifies answers to those probes (SYN-ACK, RST, echo
//!   reply, ICMP error quoting a probe, UDP reply), validates the TCP cookie, computes the
//!   kernel RTT against the egress stamp and hands a record to userspace through a ring
//!   buffer. Consumed answers are dropped; everything else passes untouched. A SYN-ACK
//!   goes on to the host's TCP stack, which resets it, unless the config's `reset` says
//!   the XDP program (turned into that RST here and sent back out, `XDP_TX`) or
//! - `sonde_tc_ingress` (TC, ingress) does: the same RST, made of the SYN-ACK's skb and
//!   sent back out of the interface with `bpf_redirect`, past the host's IP and TCP stack.
//!   With the config's `ingress` at `TC` (a veth, where XDP copies every frame) it also
//!   does what `sonde_xdp` does, and `sonde_xdp` passes everything.
//!
//! All parsing lives in `probe_common::parse` so it is unit-tested on the host; this file
//! only binds it to packet memory, maps and verdicts. Every exit bumps one per-reason
//! counter.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        xdp_action, BPF_F_PSEUDO_HDR, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
        TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::{
        bpf_ktime_get_ns, bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_tail,
        bpf_xdp_store_bytes,
    },
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use probe_common::{
    config::{ingress, reset, ProbeConfig},
    counters::{TcReason, XdpReason},
    parse::{classify_egress, classify_into, l3_offset, Answer, Frame},
    record::{flags, AnswerClass, AnswerRecord},
    reset::{reset_headers, reset_tcp_header, swapped_macs, RESET_BUF},
    stamp, EVENTS_BYTES, EVENTS_WAKEUP_BYTES,
};

#[map(name = "SONDE_CONFIG")]
static CONFIG: Array<ProbeConfig> = Array::with_max_entries(1, 0);

// The answer rings, one per residue of `StampKey::ring` (names: `MAP_EVENTS`).
#[map(name = "SONDE_EVENTS0")]
static EVENTS0: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "SONDE_EVENTS1")]
static EVENTS1: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "SONDE_EVENTS2")]
static EVENTS2: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "SONDE_EVENTS3")]
static EVENTS3: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "SONDE_EVENTS4")]
static EVENTS4: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "SONDE_EVENTS5")]
static EVENTS5: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "SONDE_EVENTS6")]
static EVENTS6: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "SONDE_EVENTS7")]
static EVENTS7: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
const _: () = assert!(probe_common::EVENT_RINGS == 8, "one static per ring above");

#[map(name = "SONDE_STAMPS")]
static STAMPS: Array<u64> = Array::with_max_entries(stamp::SLOTS, 0);

/// Scratch space for the answer being classified (too big for the BPF stack).
#[map(name = "SONDE_SCRATCH")]
static SCRATCH: PerCpuArray<Answer> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for the headers of an RST built from a SYN-ACK.
#[map(name = "SONDE_RESET")]
static RESET: PerCpuArray<[u8; RESET_BUF]> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for the TC program's checksum difference: the SYN-ACK's TCP header
/// (up to 60 bytes) in words 0..15, the reset's (20 bytes) in words 15..20.
#[map(name = "SONDE_TC_SCRATCH")]
static TC_SCRATCH: PerCpuArray<[u32; 20]> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SONDE_XDP_COUNTERS")]
static XDP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XdpReason::COUNT, 0);

#[map(name = "SONDE_TC_COUNTERS")]
static TC_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TcReason::COUNT, 0);

/// Packet memory between `start` and `end`, every read bounds-checked for the verifier.
struct Packet {
    start: usize,
    end: usize,
}

impl Frame for Packet {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        let p = self.start + off;
        if p + core::mem::size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: [p, p + size_of::<T>()) was checked to lie inside packet memory.
        Some(unsafe { core::ptr::read_unaligned(p as *const T) })
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.end - self.start
    }
}

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn config() -> Option<ProbeConfig> {
    CONFIG.get(0).copied()
}

#[xdp]
pub fn sonde_xdp(ctx: XdpContext) -> u32 {
    let reason = match config() {
        Some(cfg) if cfg.ingress == ingress::XDP => classify_record(
            &Packet {
                start: ctx.data(),
                end: ctx.data_end(),
            },
            &cfg,
        ),
        // No config yet, or TC ingress classifies: pass everything.
        _ => XdpReason::Disabled,
    };
    bump(&XDP_COUNTERS, reason as u32);
    match reason {
        // A SYN-ACK to our probe goes on to the prober's own TCP stack, which holds no
        // socket on the probe's port and so resets it, as it does for zmap: the
        // target keeps no half-open connection, and userspace sends no RST. With
        // `reset::XDP`, the RST is built here and leaves at once; with `reset::TC` the
        // TC ingress program makes it.
        XdpReason::AnswerOpen => match config() {
            Some(cfg) if cfg.reset == reset::XDP => xdp_reset(&ctx),
            _ => xdp_action::XDP_PASS,
        },
        XdpReason::BadCookie
        | XdpReason::RingFull
        | XdpReason::AnswerClosed
        | XdpReason::AnswerEcho
        | XdpReason::AnswerUnreachable
        | XdpReason::AnswerUdp => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Turn the SYN-ACK in `ctx` (classified into `SCRATCH`: an answer to our probe with
/// a valid cookie) into the RST for it, in place, and send it back (`XDP_TX`): the
/// frame is cut to its Ethernet header (MACs swapped, VLAN tags kept) and the reset's
/// IP and TCP headers (`probe_common::reset`).
#[inline(always)]
fn xdp_reset(ctx: &XdpContext) -> u32 {
    let failed = |action| {
        bump(&XDP_COUNTERS, XdpReason::ResetFailed as u32);
        action
    };
    let pkt = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let (Some(answer), Some(buf)) = (SCRATCH.get_ptr(0), RESET.get_ptr_mut(0)) else {
        return failed(xdp_action::XDP_PASS);
    };
    // SAFETY: per-CPU slots, exclusively ours for the duration of this program run;
    // SCRATCH holds the answer this run classified.
    let (key, buf) = unsafe { (&(*answer).key, &mut *buf) };
    let (Some(l3), Some(n), Some(macs)) = (
        l3_offset(&pkt),
        reset_headers(key, buf),
        pkt.load::<[u8; 12]>(0),
    ) else {
        return failed(xdp_action::XDP_PASS);
    };
    let old = pkt.end - pkt.start;
    let new = l3 + n;
    if new > old || n > RESET_BUF {
        return failed(xdp_action::XDP_PASS);
    }
    // SAFETY: shrinking the frame (delta <= 0) by the helper; packet pointers taken
    // before are not used after it.
    if new < old && unsafe { bpf_xdp_adjust_tail(ctx.ctx, (new as i32) - (old as i32)) } != 0 {
        return failed(xdp_action::XDP_PASS);
    }
    let mut swapped = swapped_macs(macs);
    // SAFETY: the helper checks offset and length against the frame; both buffers
    // are ours and at least `len` bytes long.
    let stored = unsafe {
        bpf_xdp_store_bytes(ctx.ctx, l3 as u32, buf.as_mut_ptr().cast(), n as u32) == 0
            && bpf_xdp_store_bytes(ctx.ctx, 0, swapped.as_mut_ptr().cast(), 12) == 0
    };
    if !stored {
        // The frame is cut already: nothing sensible is left to pass on.
        return failed(xdp_action::XDP_DROP);
    }
    bump(&XDP_COUNTERS, XdpReason::ResetSent as u32);
    xdp_action::XDP_TX
}

/// Classify the frame in `pkt`; an answer to one of our probes is recorded in the
/// ring buffer with its kernel RTT, and left in `SCRATCH`. Shared by XDP and, with
/// `ingress::TC`, the TC ingress program.
#[inline(always)]
fn classify_record(pkt: &Packet, cfg: &ProbeConfig) -> XdpReason {
    // The answer is built in per-CPU map memory, not on the 512-byte stack.
    let Some(answer) = SCRATCH.get_ptr_mut(0) else {
        return XdpReason::Disabled;
    };
    // SAFETY: per-CPU slot, exclusively ours for the duration of this program run.
    let answer = unsafe { &mut *answer };
    if let Err(r) = classify_into(pkt, cfg, answer) {
        return r;
    }
    // SAFETY: helper with no arguments.
    let rx_ns = unsafe { bpf_ktime_get_ns() };
    let mut rec_flags = if answer.cookie_ok {
        flags::COOKIE_OK
    } else {
        0
    };
    let mut tx_ns = 0;
    let slot = stamp::slot(&answer.key);
    if let Some(t) = STAMPS.get_ptr_mut(slot.index).and_then(|p| {
        // SAFETY: an array slot, valid for the map's lifetime; one aligned 64-bit
        // load, never torn by a writer on another CPU.
        let v = unsafe { core::ptr::read_volatile(p) };
        let t = stamp::unpack(v, slot.tag, rx_ns)?;
        // One answer per stamp: a duplicate answer is recorded without a kernel RTT.
        // SAFETY: as above, one aligned 64-bit store.
        unsafe { core::ptr::write_volatile(p, 0) };
        Some(t)
    }) {
        tx_ns = t;
        rec_flags |= flags::STAMPED;
    } else {
        bump(&XDP_COUNTERS, XdpReason::NoStamp as u32);
    }
    // Each arm calls `emit` with its own ring: the verifier needs the map to be a
    // constant at every helper call.
    let emitted = match answer.key.ring(cfg.port_lo) {
        0 => emit(&EVENTS0, answer, rx_ns, tx_ns, rec_flags),
        1 => emit(&EVENTS1, answer, rx_ns, tx_ns, rec_flags),
        2 => emit(&EVENTS2, answer, rx_ns, tx_ns, rec_flags),
        3 => emit(&EVENTS3, answer, rx_ns, tx_ns, rec_flags),
        4 => emit(&EVENTS4, answer, rx_ns, tx_ns, rec_flags),
        5 => emit(&EVENTS5, answer, rx_ns, tx_ns, rec_flags),
        6 => emit(&EVENTS6, answer, rx_ns, tx_ns, rec_flags),
        _ => emit(&EVENTS7, answer, rx_ns, tx_ns, rec_flags),
    };
    if !emitted {
        return XdpReason::RingFull;
    }
    match answer.class {
        AnswerClass::Open => XdpReason::AnswerOpen,
        AnswerClass::Closed => XdpReason::AnswerClosed,
        AnswerClass::EchoReply => XdpReason::AnswerEcho,
        AnswerClass::Unreachable => XdpReason::AnswerUnreachable,
        AnswerClass::UdpReply => XdpReason::AnswerUdp,
    }
}

/// Write the record of `answer` into `ring`; `false` if the ring is full.
#[inline(always)]
fn emit(ring: &RingBuf, answer: &Answer, rx_ns: u64, tx_ns: u64, rec_flags: u8) -> bool {
    let Some(mut entry) = ring.reserve::<AnswerRecord>(0) else {
        return false;
    };
    // Fill the reserved slot in place: building the record on the stack first would
    // not fit in the 512-byte BPF stack next to the parser's state.
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` points to a reserved, exclusively owned ring-buffer slot of the
    // right size; every field is written before submit.
    unsafe {
        (*rec).rx_ns = rx_ns;
        (*rec).tx_ns = tx_ns;
        (*rec).rtt_ns = if tx_ns != 0 {
            rx_ns.saturating_sub(tx_ns)
        } else {
            0
        };
        (*rec).key = answer.key;
        (*rec).reporter = answer.reporter;
        (*rec).answer_seq = answer.answer_seq;
        (*rec).class = answer.class as u8;
        (*rec).icmp_type = answer.icmp_type;
        (*rec).icmp_code = answer.icmp_code;
        (*rec).tcp_flags = answer.tcp_flags;
        (*rec).flags = rec_flags;
        (*rec).ttl = answer.ttl;
        (*rec)._pad = [0; 2];
    }
    // Wake the reader only once a batch is waiting (see EVENTS_WAKEUP_BYTES);
    // readers poll every EVENTS_POLL_MS.
    let wake = if ring.query(u64::from(BPF_RB_AVAIL_DATA)) >= EVENTS_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(wake));
    true
}

/// Passes every frame. Not attached by sonde itself: labs attach it to the target's
/// end of a veth pair, because a veth hands the frames its XDP program sends back
/// (`XDP_TX`, the resets of `reset::XDP`) only to a peer with an XDP program.
#[xdp]
pub fn sonde_xdp_peer(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// TC ingress: with `reset::TC`, a SYN-ACK to a probe (valid cookie; XDP recorded
/// it and passed it on) becomes its RST in place and leaves again by the same
/// interface (`bpf_redirect` to its egress), without the host's IP and TCP stack. The
/// checksums are updated with the kernel's helpers, so any `ip_summed` state
/// (checksum offload on send, CHECKSUM_COMPLETE on receive) stays right. IPv4 only.
#[classifier]
pub fn sonde_tc_ingress(ctx: TcContext) -> i32 {
    let Some(cfg) = config() else {
        return TC_ACT_OK;
    };
    // The classifier and the reset each run in a BPF subprogram of their own, called
    // one after the other: the verifier allows 512 bytes of stack for the deepest
    // chain of calls, and either one alone takes most of it.
    let action = if cfg.ingress == ingress::TC {
        tc_answer(&ctx, &cfg)
    } else if cfg.reset == reset::TC && tc_syn_ack_v4(&ctx, &cfg) {
        WANT_RESET
    } else {
        TC_ACT_OK
    };
    if action != WANT_RESET {
        return action;
    }
    tc_reset(&ctx).unwrap_or_else(|| {
        // Untouched: the host's stack resets it.
        bump(&XDP_COUNTERS, XdpReason::ResetFailed as u32);
        TC_ACT_OK
    })
}

/// [`tc_answer`]'s verdict for an IPv4 SYN-ACK to reset with [`tc_reset`] (not a
/// `TC_ACT_*` value).
const WANT_RESET: i32 = i32::MIN;

/// With `ingress::TC`: what `sonde_xdp` does, here. Answers are recorded and
/// dropped, an IPv4 SYN-ACK is to be reset ([`WANT_RESET`]) when `reset` is `TC` and
/// otherwise goes to the stack (`reset::XDP` cannot apply here), everything else
/// goes on. A frame whose headers are not all in the skb's linear part is passed and
/// counted `not_linear` (no pull: it would cost every other packet); answers arrive
/// linear from the stacks that make them.
#[inline(never)]
fn tc_answer(ctx: &TcContext, cfg: &ProbeConfig) -> i32 {
    if ctx.data_end() - ctx.data() < linear_wanted(ctx) {
        bump(&XDP_COUNTERS, XdpReason::NotLinear as u32);
        return TC_ACT_OK;
    }
    let reason = classify_record(
        &Packet {
            start: ctx.data(),
            end: ctx.data_end(),
        },
        cfg,
    );
    bump(&XDP_COUNTERS, reason as u32);
    match reason {
        XdpReason::AnswerOpen if cfg.reset == reset::TC => {
            // SCRATCH holds this SYN-ACK's answer; IPv6 goes to the stack.
            // SAFETY: per-CPU slot, written by this program run's classification.
            let v4 = SCRATCH
                .get_ptr(0)
                .is_some_and(|a| unsafe { (*a).key.family } == probe_common::family::V4);
            if v4 {
                WANT_RESET
            } else {
                TC_ACT_OK
            }
        }
        XdpReason::BadCookie
        | XdpReason::RingFull
        | XdpReason::AnswerClosed
        | XdpReason::AnswerEcho
        | XdpReason::AnswerUnreachable
        | XdpReason::AnswerUdp => TC_ACT_SHOT,
        _ => TC_ACT_OK,
    }
}

/// Whether the frame is an IPv4 SYN-ACK to one of our probes with a valid cookie (its
/// answer is then in `SCRATCH`). A BPF subprogram (see `sonde_tc_ingress`).
#[inline(never)]
fn tc_syn_ack_v4(ctx: &TcContext, cfg: &ProbeConfig) -> bool {
    // A SYN-ACK is a small frame, linear as it arrives; anything whose headers are not
    // all linear is left to the stack (no pull: that would cost every other packet).
    if ctx.data_end() - ctx.data() < linear_wanted(ctx) {
        return false;
    }
    let pkt = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let Some(answer) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, exclusively ours for the duration of this program run.
    let answer = unsafe { &mut *answer };
    classify_into(&pkt, cfg, answer).is_ok()
        && answer.class == AnswerClass::Open
        && answer.key.family == probe_common::family::V4
}

/// Rewrite the SYN-ACK (checked by [`tc_syn_ack_v4`]) into its RST and redirect it;
/// `None` if that cannot be done with the frame still intact. A BPF subprogram (see
/// `sonde_tc_ingress`).
#[inline(never)]
fn tc_reset(ctx: &TcContext) -> Option<i32> {
    let pkt = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let l3 = l3_offset(&pkt)?;
    if l3 > 22 {
        return None;
    }
    let ip: [u8; 20] = pkt.load(l3)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if !(20..=60).contains(&ihl) {
        return None;
    }
    let l4 = l3 + ihl;
    let doff = usize::from(pkt.load::<u8>(l4 + 12)? >> 4) * 4;
    if !(20..=60).contains(&doff) {
        return None;
    }
    let macs: [u8; 12] = pkt.load(0)?;
    // The SYN-ACK's TCP header, options included, as the checksum saw it (its own
    // checksum field zeroed): one checksum difference to the reset's header replaces
    // the field-by-field updates.
    let words = TC_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, exclusively ours for the duration of this program run.
    let words = unsafe { &mut *words };
    // doff is 20..=60 and a multiple of 4: this is doff, in a form whose bounds the
    // verifier sees (20..=80, within the 80-byte slot).
    let old_len = 20 + ((doff - 20) & 0x3c);
    // SAFETY: `old_len` bytes (the header, 20..=60) into the 80-byte slot; the helper
    // checks the offset against the frame.
    let r = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            l4 as u32,
            words.as_mut_ptr().cast(),
            old_len as u32,
        )
    };
    if r != 0 {
        return None;
    }
    // Bytes 16 and 17 (the checksum) out, 18 and 19 (the urgent pointer) kept.
    words[4] &= u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    // The reset's TCP header (checksum field 0 here), for the probe classified into
    // SCRATCH by `tc_syn_ack_v4`.
    let answer = SCRATCH.get_ptr(0)?;
    // SAFETY: per-CPU slot, written by this program run's classification.
    let hdr = reset_tcp_header(unsafe { &(*answer).key });
    let mut i = 0;
    while i < 5 {
        words[15 + i] =
            u32::from_ne_bytes([hdr[4 * i], hdr[4 * i + 1], hdr[4 * i + 2], hdr[4 * i + 3]]);
        i += 1;
    }
    let (old, new) = words.split_at_mut(15);
    // SAFETY: both buffers are ours and hold the sizes given (multiples of 4, <= 60).
    let diff = unsafe {
        aya_ebpf::helpers::bpf_csum_diff(old.as_mut_ptr(), old_len as u32, new.as_mut_ptr(), 20, 0)
    };
    if diff < 0 {
        return None;
    }
    let be16 = |b: &[u8], i: usize| u64::from(u16::from_ne_bytes([b[i], b[i + 1]]));
    let csum = l4 + 16;
    let tot_old = be16(&ip, 2);
    let new_tot = ((ihl + 20) as u16).to_be_bytes();
    let tot_new = u64::from(u16::from_ne_bytes(new_tot));
    let ttl_old = be16(&ip, 8);
    let ttl_new = u64::from(u16::from_ne_bytes([64, ip[9]]));
    let len_old = u64::from(u16::from_ne_bytes((old_len as u16).to_be_bytes()));
    let len_new = u64::from(u16::from_ne_bytes(20u16.to_be_bytes()));
    // From here the frame changes: a failure drops it (the target sends its SYN-ACK
    // again), it is never passed on half rewritten.
    let rewrite = || -> Option<()> {
        // Checksums first, then the bytes. The header difference does not touch a
        // checksum the device will complete (CHECKSUM_PARTIAL); the length in the
        // pseudo header does.
        ctx.l4_csum_replace(csum, 0, diff as u64, 0).ok()?;
        ctx.l4_csum_replace(csum, len_old, len_new, 2 | u64::from(BPF_F_PSEUDO_HDR))
            .ok()?;
        ctx.l3_csum_replace(l3 + 10, tot_old, tot_new, 2).ok()?;
        ctx.l3_csum_replace(l3 + 10, ttl_old, ttl_new, 2).ok()?;
        // Addresses and MACs swap places: no checksum changes.
        let mut hdr = hdr;
        let c: [u8; 2] = ctx.load(csum).ok()?;
        hdr[16] = c[0];
        hdr[17] = c[1];
        ctx.store(l4, &hdr, 0).ok()?;
        let mut addrs = [0u8; 8];
        addrs[..4].copy_from_slice(&ip[16..20]);
        addrs[4..].copy_from_slice(&ip[12..16]);
        ctx.store(l3 + 12, &addrs, 0).ok()?;
        ctx.store(l3 + 2, &new_tot, 0).ok()?;
        ctx.store(l3 + 8, &64u8, 0).ok()?;
        ctx.store(0, &swapped_macs(macs), 0).ok()?;
        // SAFETY: trims the frame to its new length; no packet pointer is used after.
        (unsafe { bpf_skb_change_tail(ctx.skb.skb, (l4 + 20) as u32, 0) } == 0).then_some(())
    };
    if rewrite().is_none() {
        bump(&XDP_COUNTERS, XdpReason::ResetFailed as u32);
        return Some(TC_ACT_SHOT);
    }
    bump(&XDP_COUNTERS, XdpReason::ResetSent as u32);
    // SAFETY: the ifindex the frame came in on; flags 0 = its egress.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    Some(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

#[classifier]
pub fn sonde_tc_egress(ctx: TcContext) -> i32 {
    let reason = tc_stamp(&ctx);
    bump(&TC_COUNTERS, reason as u32);
    // Never interfere: let the next program (or the default action) decide.
    TC_ACT_UNSPEC
}

/// Headers we need from a probe or its answer: Ethernet + VLAN + IPv6 + TCP.
const HEADERS_MAX: u32 = 18 + 4 + 60 + 20;

/// How much of the frame must be linear to classify it: all of it, up to [`HEADERS_MAX`].
#[inline(always)]
fn linear_wanted(ctx: &TcContext) -> usize {
    ctx.len().min(HEADERS_MAX) as usize
}

#[inline(always)]
fn tc_stamp(ctx: &TcContext) -> TcReason {
    let Some(cfg) = config() else {
        return TcReason::Disabled;
    };
    // Probes leave raw sockets as linear skbs: one whose headers are not all in the
    // linear part is not ours. Pulling them in would cost every other packet of the
    // host (a TCP segment is a clone: the pull copies its head).
    if ctx.data_end() - ctx.data() < linear_wanted(ctx) {
        return TcReason::NotOurs;
    }
    let pkt = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let (key, reason) = match classify_egress(&pkt, &cfg) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let slot = stamp::slot(&key);
    let Some(p) = STAMPS.get_ptr_mut(slot.index) else {
        return TcReason::StampFailed;
    };
    // SAFETY: helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: an array slot, valid for the map's lifetime; one aligned 64-bit store,
    // which a reader on another CPU sees whole or not at all.
    unsafe { core::ptr::write_volatile(p, stamp::pack(slot.tag, now)) };
    reason
}

// Host builds (clippy over the workspace) get std's handler from dependencies.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
