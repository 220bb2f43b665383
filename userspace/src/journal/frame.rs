//! The on-disk frame of one record and its checksum.
//!
//! ```text
//! offset  size  field
//! 0       4     len    payload length in bytes, u32 little-endian (never 0)
//! 4       4     crc    CRC-32C of the bytes of len, seq and payload, u32 little-endian
//! 8       8     seq    sequence number, u64 little-endian
//! 16      len   payload: the record as JSON
//! ```
//!
//! The checksum covers the length too, so a flipped length is detected like a flipped
//! payload byte instead of sending the parser off to a wrong frame boundary.

/// Bytes of a frame before its payload (`len`, `crc`, `seq`).
pub const HEADER_BYTES: usize = 16;

/// CRC-32C (Castagnoli, reflected polynomial `0x82F63B78`) lookup table, built at
/// compile time.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32C of the concatenation of `parts` (table-driven, one byte at a time).
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &byte in *part {
            crc = CRC32C_TABLE[((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

/// Appends the frame of `payload` with sequence number `seq` to `out`.
///
/// The caller guarantees `0 < payload.len() <= u32::MAX`.
pub fn encode(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("payload length checked by the caller");
    let len_bytes = len.to_le_bytes();
    let seq_bytes = seq.to_le_bytes();
    let crc = crc32c(&[&len_bytes, &seq_bytes, payload]);
    out.reserve(HEADER_BYTES + payload.len());
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&seq_bytes);
    out.extend_from_slice(payload);
}

/// What [`parse`] found at an offset of a segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole frame with a valid checksum; the next one starts at `next`.
    Frame {
        /// Sequence number of the frame.
        seq: u64,
        /// The JSON payload.
        payload: &'a [u8],
        /// Offset right after this frame.
        next: usize,
    },
    /// The offset is the end of the bytes: no more frames.
    End,
    /// The bytes from the offset are not a valid frame (too short, zero length or a
    /// checksum mismatch); the text says which.
    Bad(String),
}

/// Parses the frame starting at `offset` of `buf`.
pub fn parse(buf: &[u8], offset: usize) -> Parsed<'_> {
    let rest = &buf[offset..];
    if rest.is_empty() {
        return Parsed::End;
    }
    if rest.len() < HEADER_BYTES {
        return Parsed::Bad(format!(
            "short frame header ({} of {HEADER_BYTES} bytes)",
            rest.len()
        ));
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(rest[8..16].try_into().expect("8 bytes"));
    if len == 0 {
        return Parsed::Bad("zero-length frame".to_string());
    }
    let end = HEADER_BYTES as u64 + u64::from(len);
    if end > rest.len() as u64 {
        return Parsed::Bad(format!(
            "short frame (header announces {len} payload bytes, {} remain)",
            rest.len() - HEADER_BYTES
        ));
    }
    let end = end as usize;
    let payload = &rest[HEADER_BYTES..end];
    let actual = crc32c(&[&rest[0..4], &rest[8..16], payload]);
    if actual != crc {
        return Parsed::Bad(format!(
            "checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
        ));
    }
    Parsed::Frame {
        seq,
        payload,
        next: offset + end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vectors() {
        assert_eq!(crc32c(&[b"123456789"]), 0xE306_9283);
        assert_eq!(crc32c(&[b"1234", b"56789"]), 0xE306_9283);
        assert_eq!(crc32c(&[b""]), 0);
        assert_eq!(crc32c(&[&[0u8; 32]]), 0x8A91_36AA);
    }

    #[test]
    fn frame_roundtrip_and_damage() {
        let mut buf = Vec::new();
        encode(7, b"{\"a\":1}", &mut buf);
        encode(8, b"[]", &mut buf);
        let Parsed::Frame { seq, payload, next } = parse(&buf, 0) else {
            panic!("first frame")
        };
        assert_eq!((seq, payload), (7, &b"{\"a\":1}"[..]));
        assert!(matches!(parse(&buf, next), Parsed::Frame { seq: 8, .. }));
        assert_eq!(parse(&buf, buf.len()), Parsed::End);
        assert!(matches!(parse(&buf[..next + 5], next), Parsed::Bad(_)));
        assert!(matches!(parse(&buf[..next + 17], next), Parsed::Bad(_)));
        let mut flipped = buf.clone();
        flipped[HEADER_BYTES + 2] ^= 0x01;
        assert!(matches!(parse(&flipped, 0), Parsed::Bad(m) if m.contains("checksum")));
        assert!(matches!(parse(&[0u8; 40], 0), Parsed::Bad(_)));
    }
}
