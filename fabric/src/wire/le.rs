//! Little-endian field access on byte slices that never panics: reads past
//! the end yield zero bytes, writes past the end are dropped. Callers check
//! lengths where a short buffer is an error.

/// Read a `u16` at `off`.
pub fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(array_at(b, off))
}

/// Read a `u32` at `off`.
pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(array_at(b, off))
}

/// Read a `u64` at `off`.
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(array_at(b, off))
}

/// Copy `N` bytes at `off` (zero-filled past the end).
pub fn array_at<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = b.get(off..) {
        let n = src.len().min(N);
        out[..n].copy_from_slice(&src[..n]);
    }
    out
}

/// Write `v` at `off`.
pub fn put_u16(b: &mut [u8], off: usize, v: u16) {
    put_bytes(b, off, &v.to_le_bytes());
}

/// Write `v` at `off`.
pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    put_bytes(b, off, &v.to_le_bytes());
}

/// Write `v` at `off`.
pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    put_bytes(b, off, &v.to_le_bytes());
}

/// Copy `src` to `off`, truncated at the end of `b`.
pub fn put_bytes(b: &mut [u8], off: usize, src: &[u8]) {
    if let Some(dst) = b.get_mut(off..) {
        let n = dst.len().min(src.len());
        dst[..n].copy_from_slice(&src[..n]);
    }
}

/// Write `s` as an ASCII field of `len` bytes padded with spaces (Identify
/// strings: serial, model, firmware).
pub fn put_padded(b: &mut [u8], off: usize, len: usize, s: &str) {
    let mut field = vec![b' '; len];
    let n = s.len().min(len);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
    put_bytes(b, off, &field);
}

/// Write `s` as a NUL-padded field of `len` bytes (NQNs, addresses).
pub fn put_nul_padded(b: &mut [u8], off: usize, len: usize, s: &str) {
    let mut field = vec![0u8; len];
    let n = s.len().min(len);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
    put_bytes(b, off, &field);
}

/// Read a NUL- or space-padded ASCII field as a string (invalid UTF-8 is
/// replaced, trailing NULs and spaces removed).
pub fn string_at(b: &[u8], off: usize, len: usize) -> String {
    let end = off.saturating_add(len).min(b.len());
    let field = b.get(off..end).unwrap_or(&[]);
    let field = match field.iter().position(|&c| c == 0) {
        Some(n) => &field[..n],
        None => field,
    };
    String::from_utf8_lossy(field).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_end_are_zero_and_writes_truncate() {
        let mut b = [0u8; 4];
        put_u32(&mut b, 0, 0x0403_0201);
        assert_eq!(u16_at(&b, 2), 0x0403);
        assert_eq!(u32_at(&b, 2), 0x0403);
        assert_eq!(u64_at(&b, 100), 0);
        put_u64(&mut b, 2, u64::MAX);
        assert_eq!(b, [1, 2, 0xff, 0xff]);
    }

    #[test]
    fn strings_round_trip() {
        let mut b = [0u8; 16];
        put_padded(&mut b, 0, 8, "abc");
        put_nul_padded(&mut b, 8, 8, "xyz");
        assert_eq!(string_at(&b, 0, 8), "abc");
        assert_eq!(string_at(&b, 8, 8), "xyz");
        assert_eq!(string_at(&b, 12, 100), "");
    }
}
