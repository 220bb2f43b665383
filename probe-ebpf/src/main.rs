//! sonde's kernel programs.
//!
//! - `sonde_tc_egress` (TC, egress): stamps the kernel send time of each of our probes
//!   (TCP SYN from a reserved port, ICMP echo with our identifier, UDP from a reserved
//!   port) into an LRU map keyed by the probe's flow and cookie.
//! - `sonde_xdp` (XDP, ingress): classifies answers to those probes (SYN-ACK, RST, echo
//!   reply, ICMP error quoting a probe, UDP reply), validates the TCP cookie, computes the
//!   kernel RTT against the egress stamp and hands a record to userspace through a ring
//!   buffer. Consumed answers are dropped; everything else passes untouched. A SYN-ACK
//!   goes on to the host's TCP stack, which resets it, or, with `xdp_reset` set in the
//!   config, is turned into that RST here and sent back out (`XDP_TX`).
//!
//! All parsing lives in `probe_common::parse` so it is unit-tested on the host; this file
//! only binds it to packet memory, maps and verdicts. Every exit bumps one per-reason
//! counter.
#![no_std]
#![no_main]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys are passed by reference on purpose: a by-value key is copied onto the 512-byte BPF stack"
)]

use aya_ebpf::{
    bindings::{
        xdp_action, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_UNSPEC,
    },
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
    macros::{classifier, map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use probe_common::{
    config::ProbeConfig,
    counters::{TcReason, XdpReason},
    parse::{classify_egress, classify_into, l3_offset, Answer, Frame},
    record::{flags, AnswerClass, AnswerRecord, StampKey},
    reset::{reset_headers, RESET_BUF},
    EVENTS_BYTES, EVENTS_WAKEUP_BYTES, STAMPS_CAPACITY,
};

#[map(name = "SONDE_CONFIG")]
static CONFIG: Array<ProbeConfig> = Array::with_max_entries(1, 0);

#[map(name = "SONDE_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "SONDE_STAMPS")]
static STAMPS: LruHashMap<StampKey, u64> = LruHashMap::with_max_entries(STAMPS_CAPACITY, 0);

/// Scratch space for the answer being classified (too big for the BPF stack).
#[map(name = "SONDE_SCRATCH")]
static SCRATCH: PerCpuArray<Answer> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for the headers of an RST built from a SYN-ACK.
#[map(name = "SONDE_RESET")]
static RESET: PerCpuArray<[u8; RESET_BUF]> = PerCpuArray::with_max_entries(1, 0);

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
    let reason = xdp_classify(&ctx);
    bump(&XDP_COUNTERS, reason as u32);
    match reason {
        // A SYN-ACK to our probe goes on to the prober's own TCP stack, which holds no
        // socket on the probe's port and so resets it, as it does for zmap: the
        // target keeps no half-open connection, and userspace sends no RST. With
        // `xdp_reset`, the RST is built here and leaves at once.
        XdpReason::AnswerOpen => match config() {
            Some(cfg) if cfg.xdp_reset != 0 => xdp_reset(&ctx),
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
    let mut swapped = [0u8; 12];
    let mut i = 0;
    while i < 6 {
        swapped[i] = macs[i + 6];
        swapped[i + 6] = macs[i];
        i += 1;
    }
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

#[inline(always)]
fn xdp_classify(ctx: &XdpContext) -> XdpReason {
    let Some(cfg) = config() else {
        return XdpReason::Disabled;
    };
    let pkt = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    // The answer is built in per-CPU map memory, not on the 512-byte stack.
    let Some(answer) = SCRATCH.get_ptr_mut(0) else {
        return XdpReason::Disabled;
    };
    // SAFETY: per-CPU slot, exclusively ours for the duration of this program run.
    let answer = unsafe { &mut *answer };
    if let Err(r) = classify_into(&pkt, &cfg, answer) {
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
    // SAFETY: the value is copied out before the entry can be evicted or removed.
    if let Some(t) = unsafe { STAMPS.get(&answer.key) } {
        tx_ns = *t;
        rec_flags |= flags::STAMPED;
        // One answer per stamp: a duplicate answer is recorded without a kernel RTT.
        let _ = STAMPS.remove(&answer.key);
    } else {
        bump(&XDP_COUNTERS, XdpReason::NoStamp as u32);
    }
    let Some(mut entry) = EVENTS.reserve::<AnswerRecord>(0) else {
        return XdpReason::RingFull;
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
    let wake = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= EVENTS_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(wake));
    match answer.class {
        AnswerClass::Open => XdpReason::AnswerOpen,
        AnswerClass::Closed => XdpReason::AnswerClosed,
        AnswerClass::EchoReply => XdpReason::AnswerEcho,
        AnswerClass::Unreachable => XdpReason::AnswerUnreachable,
        AnswerClass::UdpReply => XdpReason::AnswerUdp,
    }
}

/// Passes every frame. Not attached by sonde itself: labs attach it to the target's
/// end of a veth pair, because a veth hands the frames its XDP program sends back
/// (`XDP_TX`, the resets of `xdp_reset`) only to a peer with an XDP program.
#[xdp]
pub fn sonde_xdp_peer(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[classifier]
pub fn sonde_tc_egress(ctx: TcContext) -> i32 {
    let reason = tc_stamp(&ctx);
    bump(&TC_COUNTERS, reason as u32);
    // Never interfere: let the next program (or the default action) decide.
    TC_ACT_UNSPEC
}

/// Headers we need from an outgoing probe: Ethernet + VLAN + IPv6 + TCP.
const EGRESS_PULL: u32 = 18 + 4 + 60 + 20;

#[inline(always)]
fn tc_stamp(ctx: &TcContext) -> TcReason {
    let Some(cfg) = config() else {
        return TcReason::Disabled;
    };
    // Probes from raw sockets are linear, but make sure the headers are in the linear
    // part so direct packet access sees them.
    let want = if ctx.len() < EGRESS_PULL {
        ctx.len()
    } else {
        EGRESS_PULL
    };
    if ctx.data_end() - ctx.data() < want as usize && ctx.pull_data(want).is_err() {
        return TcReason::Malformed;
    }
    let pkt = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let (key, reason) = match classify_egress(&pkt, &cfg) {
        Ok(k) => k,
        Err(r) => return r,
    };
    // SAFETY: helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if STAMPS.insert(&key, &now, 0).is_err() {
        return TcReason::StampFailed;
    }
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
