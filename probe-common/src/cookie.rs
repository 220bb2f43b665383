//! The stateless TCP cookie: the initial sequence number of a SYN probe is a keyed hash
//! of its 4-tuple (as ZMap and masscan do), so an answer can be validated without any
//! per-probe state: a SYN-ACK or RST must acknowledge `cookie + 1`.
//!
//! SipHash-1-3 over the addresses and ports, truncated to 32 bits. One round per word
//! keeps it cheap enough for XDP while still keyed (an off-path attacker who does not
//! know the per-run key cannot forge answers).

#[inline(always)]
fn sipround(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

#[inline(always)]
fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    sipround(v);
    v[0] ^= m;
}

#[inline(always)]
fn word(b: &[u8; 16], hi: bool) -> u64 {
    let o = if hi { 0 } else { 8 };
    u64::from_le_bytes([
        b[o],
        b[o + 1],
        b[o + 2],
        b[o + 3],
        b[o + 4],
        b[o + 5],
        b[o + 6],
        b[o + 7],
    ])
}

/// Cookie for a probe from `local:local_port` to `remote:remote_port`.
///
/// Addresses are 16 bytes; IPv4 uses the first four (the rest zero), as in
/// [`crate::record::StampKey`].
#[inline(always)]
#[must_use]
pub fn cookie(
    key: &[u64; 2],
    local: &[u8; 16],
    remote: &[u8; 16],
    local_port: u16,
    remote_port: u16,
) -> u32 {
    let mut v = [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ];
    compress(&mut v, word(local, true));
    compress(&mut v, word(local, false));
    compress(&mut v, word(remote, true));
    compress(&mut v, word(remote, false));
    compress(
        &mut v,
        (u64::from(local_port) << 16) | u64::from(remote_port) | (40u64 << 56),
    );
    v[2] ^= 0xff;
    sipround(&mut v);
    sipround(&mut v);
    sipround(&mut v);
    let h = v[0] ^ v[1] ^ v[2] ^ v[3];
    (h ^ (h >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::cookie;

    fn a(x: u8) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[198, 18, 0, x]);
        b
    }

    #[test]
    fn depends_on_every_input() {
        let k = [1, 2];
        let base = cookie(&k, &a(1), &a(2), 40000, 80);
        assert_eq!(base, cookie(&k, &a(1), &a(2), 40000, 80), "deterministic");
        assert_ne!(base, cookie(&[1, 3], &a(1), &a(2), 40000, 80), "key");
        assert_ne!(base, cookie(&k, &a(3), &a(2), 40000, 80), "local");
        assert_ne!(base, cookie(&k, &a(1), &a(3), 40000, 80), "remote");
        assert_ne!(base, cookie(&k, &a(1), &a(2), 40001, 80), "local port");
        assert_ne!(base, cookie(&k, &a(1), &a(2), 40000, 81), "remote port");
        assert_ne!(base, cookie(&k, &a(2), &a(1), 80, 40000), "direction");
    }

    #[test]
    fn spreads_over_the_32_bit_space() {
        // Consecutive ports must not give clustered cookies: count distinct top nibbles.
        let k = [0xdead_beef, 0x1234_5678];
        let mut seen = [false; 16];
        for p in 0..256u16 {
            seen[(cookie(&k, &a(1), &a(2), 40000 + p, 80) >> 28) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "top nibbles seen: {seen:?}");
    }
}
