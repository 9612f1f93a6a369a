//! The PNG resolution chunk: plotters writes no pHYs, so LaTeX and viewers would guess the size.

use std::path::Path;

use crate::{Error, Result};

/// Resolution recorded in the PNG files (pHYs chunk); figures are about 2400 px wide, i.e. 8 inches.
pub const PNG_DPI: f64 = 300.0;

/// CRC-32 (IEEE, as PNG uses it) of `bytes`.
pub(super) fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Insert (or replace) the pHYs chunk of a PNG file so that viewers and LaTeX see `dpi`.
pub fn set_png_dpi(path: &Path, dpi: f64) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    const SIG: [u8; 8] = [137, 80, 78, 71, 13, 10, 26, 10];
    if bytes.len() < 33 || bytes[..8] != SIG || &bytes[12..16] != b"IHDR" {
        return Err(Error::internal(format!(
            "{}: not a PNG file",
            path.display()
        )));
    }
    let ppm = (dpi / 0.0254).round() as u32;
    let mut chunk = Vec::with_capacity(21);
    chunk.extend_from_slice(&9u32.to_be_bytes());
    let mut body = b"pHYs".to_vec();
    body.extend_from_slice(&ppm.to_be_bytes());
    body.extend_from_slice(&ppm.to_be_bytes());
    body.push(1); // unit: metre
    chunk.extend_from_slice(&body);
    chunk.extend_from_slice(&crc32(&body).to_be_bytes());
    // Copy chunks, dropping any existing pHYs and inserting ours right after IHDR.
    let mut out = bytes[..8].to_vec();
    let mut pos = 8;
    while pos + 12 <= bytes.len() {
        let len = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        let end = pos + 12 + len;
        if end > bytes.len() {
            return Err(Error::internal(format!(
                "{}: truncated PNG chunk",
                path.display()
            )));
        }
        let kind = &bytes[pos + 4..pos + 8];
        if kind != b"pHYs" {
            out.extend_from_slice(&bytes[pos..end]);
        }
        if kind == b"IHDR" {
            out.extend_from_slice(&chunk);
        }
        pos = end;
    }
    std::fs::write(path, out).map_err(|e| Error::io(path, e))
}
