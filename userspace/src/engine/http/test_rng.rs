//! A tiny deterministic PRNG (xorshift64) for property-style tests, without new deps.

/// xorshift64 generator; the same seed always gives the same sequence.
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator from a non-zero seed (zero is replaced).
    pub(crate) fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A random byte.
    pub(crate) fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// Randomly mutates `v` a few times: flip, insert, delete, truncate, duplicate.
    pub(crate) fn mutate(&mut self, v: &mut Vec<u8>) {
        for _ in 0..=self.below(4) {
            let len = v.len();
            match self.below(6) {
                0 if len > 0 => {
                    let i = self.below(len);
                    v[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    v[i] = self.byte();
                }
                2 => {
                    let i = self.below(len + 1);
                    let b = self.byte();
                    v.insert(i, b);
                }
                3 if len > 0 => {
                    v.remove(self.below(len));
                }
                4 => v.truncate(self.below(len + 1)),
                _ if len > 0 => {
                    let a = self.below(len);
                    let b = (a + 1 + self.below(16)).min(len);
                    let slice = v[a..b].to_vec();
                    let at = self.below(v.len() + 1);
                    v.splice(at..at, slice);
                }
                _ => v.push(self.byte()),
            }
        }
    }
}
