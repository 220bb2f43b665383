//! A minimal PNG encoder: 8-bit palette images, no filtering, zlib by miniz_oxide.

/// The PNG file of a `width` x `height` image of palette indices (row by row).
///
/// # Panics
/// `pixels` does not hold `width * height` indices, or the palette is empty or holds
/// more than 256 colours.
pub fn encode(width: u32, height: u32, palette: &[[u8; 3]], pixels: &[u8]) -> Vec<u8> {
    let w = usize::try_from(width).expect("width");
    assert_eq!(pixels.len(), w * usize::try_from(height).expect("height"));
    assert!(!palette.is_empty() && palette.len() <= 256);
    let mut raw = Vec::with_capacity(pixels.len() + pixels.len() / w.max(1));
    for row in pixels.chunks(w.max(1)) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // 8 bits per index, colour type 3 (palette), deflate, no filter method, no interlace.
    ihdr.extend_from_slice(&[8, 3, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"PLTE", &palette.concat());
    chunk(
        &mut out,
        b"IDAT",
        &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 9),
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).expect("chunk size").to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_a_well_formed_file() {
        let png = super::encode(3, 2, &[[255, 255, 255], [0, 0, 0]], &[0, 1, 0, 1, 0, 1]);
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(&png[16..24], &[0, 0, 0, 3, 0, 0, 0, 2]);
        assert!(png.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xae, 0x42, 0x60, 0x82]));
        let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
        let len = u32::from_be_bytes(png[idat - 4..idat].try_into().unwrap()) as usize;
        let raw =
            miniz_oxide::inflate::decompress_to_vec_zlib(&png[idat + 4..idat + 4 + len]).unwrap();
        assert_eq!(raw, [0, 0, 1, 0, 0, 1, 0, 1]);
    }
}
