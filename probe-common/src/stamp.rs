//! The egress stamp table: a direct-mapped array of send times, one `u64` per slot.
//!
//! TC egress stamps each probe into the slot its [`StampKey`] hashes to; XDP looks the
//! answer's key up in the same slot and clears it. It replaces an LRU hash map whose
//! update, lookup and delete took about 6 % of the machine at 175k SYN probes/s (its
//! buckets and LRU lists take locks shared by every CPU); an array slot is one
//! inlined bounds check and one 64-bit load or store, with no lock.
//!
//! A slot holds `tag << 48 | send time mod 2^48` (ns, `CLOCK_MONOTONIC`): one aligned
//! 64-bit word, so a reader on another CPU never sees half of a write. The tag is 16
//! more bits of the key's hash, so with the slot index 36 bits tell keys apart. Two
//! probes in one slot: the later overwrites the earlier, whose answer then finds no
//! stamp (counted `no_stamp`, userspace RTT) unless the later one's tag is the same
//! (one in 65,536): its answer then gets the later probe's send time, an RTT too short
//! by the time between the two sends. With 2^20 slots and 1,000 probes sent during one
//! RTT, that is about one answer in 70 million. 48 bits of nanoseconds wrap after 78
//! hours, far beyond any probe timeout.
//!
//! The same code runs in the BPF programs (no loops over bytes, no allocation) and in
//! host tests.

use crate::record::StampKey;

/// Slots in the stamp array (a power of two): 8 MiB of map memory.
pub const SLOTS: u32 = 1 << 20;
/// Bits of the send time kept in a slot.
const TIME_BITS: u32 = 48;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// Where a key's stamp lives and the tag that marks it as this key's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Index into the stamp array, below [`SLOTS`].
    pub index: u32,
    /// Stored in the slot's top 16 bits next to the send time.
    pub tag: u16,
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u64 {
    u64::from_ne_bytes([
        b[i],
        b[i + 1],
        b[i + 2],
        b[i + 3],
        b[i + 4],
        b[i + 5],
        b[i + 6],
        b[i + 7],
    ])
}

#[inline(always)]
fn mix(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 32)
}

/// The slot and tag of `key`: a 64-bit hash of every field (splitmix64's finaliser
/// at the end), the top 20 bits for the index and the low 16 for the tag.
#[inline(always)]
#[must_use]
pub fn slot(key: &StampKey) -> Slot {
    let mut h: u64 = 0x243F_6A88_85A3_08D3;
    h = mix(h, word(&key.local, 0));
    h = mix(h, word(&key.local, 8));
    h = mix(h, word(&key.remote, 0));
    h = mix(h, word(&key.remote, 8));
    h = mix(
        h,
        u64::from(key.local_port)
            | u64::from(key.remote_port) << 16
            | u64::from(key.proto) << 32
            | u64::from(key.family) << 40,
    );
    h = mix(h, u64::from(key.seq));
    h ^= h >> 30;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^= h >> 31;
    Slot {
        index: (h >> (64 - SLOTS.trailing_zeros())) as u32,
        tag: h as u16,
    }
}

/// The slot's value for a probe sent at `tx_ns`.
#[inline(always)]
#[must_use]
pub fn pack(tag: u16, tx_ns: u64) -> u64 {
    u64::from(tag) << TIME_BITS | (tx_ns & TIME_MASK)
}

/// The send time in slot value `v` for an answer with `tag` received at `rx_ns`:
/// `None` for an empty slot (0) or another key's stamp.
#[inline(always)]
#[must_use]
pub fn unpack(v: u64, tag: u16, rx_ns: u64) -> Option<u64> {
    if v == 0 || (v >> TIME_BITS) as u16 != tag {
        return None;
    }
    Some(rx_ns.wrapping_sub(rx_ns.wrapping_sub(v) & TIME_MASK))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::{pack, slot, unpack, SLOTS};
    use crate::{family, proto, record::StampKey};
    use std::collections::HashSet;

    fn key(port: u16, seq: u32) -> StampKey {
        StampKey {
            local: [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote: [
                198,
                19,
                (seq >> 8) as u8,
                seq as u8,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ],
            local_port: port,
            remote_port: 80,
            proto: proto::TCP,
            family: family::V4,
            _pad: [0; 2],
            seq,
        }
    }

    #[test]
    fn send_time_comes_back_for_its_key_only() {
        let k = key(40000, 7);
        let s = slot(&k);
        assert!(s.index < SLOTS);
        let tx = 1_234_567_890_123;
        let v = pack(s.tag, tx);
        assert_eq!(unpack(v, s.tag, tx + 250_000), Some(tx));
        assert_eq!(unpack(v, s.tag.wrapping_add(1), tx + 250_000), None);
        assert_eq!(unpack(0, s.tag, tx), None);
    }

    #[test]
    fn send_time_survives_the_48_bit_wrap() {
        let tag = 0xBEEF;
        // Sent just before the low 48 bits wrap, answered just after.
        let tx = (5 << 48) - 100;
        let v = pack(tag, tx);
        assert_eq!(unpack(v, tag, tx + 1_000), Some(tx));
        // The clock far beyond 2^48 ns (78 hours of uptime), RTT of 3 s.
        let tx = (1u64 << 60) + 12_345;
        assert_eq!(unpack(pack(tag, tx), tag, tx + 3_000_000_000), Some(tx));
    }

    #[test]
    fn every_field_of_the_key_moves_the_slot() {
        let base = key(40000, 7);
        let mut changed = [base; 7];
        changed[0].local[15] ^= 1;
        changed[1].remote[3] ^= 1;
        changed[2].local_port ^= 1;
        changed[3].remote_port ^= 1;
        changed[4].proto = proto::UDP;
        changed[5].family = family::V6;
        changed[6].seq ^= 1 << 31;
        for (i, k) in changed.iter().enumerate() {
            assert_ne!(slot(k), slot(&base), "field {i} does not change the slot");
        }
    }

    #[test]
    fn keys_spread_over_the_slots() {
        // 65,536 probes to one /16 from 16 source ports: a real sweep's keys differ in
        // a few bits only. Expected distinct slots for n keys in m slots: m(1-e^(-n/m)).
        let n = 65_536u32;
        let slots: HashSet<u32> = (0..n)
            .map(|i| slot(&key(40000 + (i % 16) as u16, i)).index)
            .collect();
        let m = f64::from(SLOTS);
        let expected = m * (1.0 - (-f64::from(n) / m).exp());
        let got = slots.len() as f64;
        assert!(
            got > expected * 0.99,
            "{got} distinct slots, expected about {expected}"
        );
    }
}
