//! Buffers aligned for direct I/O.

use bytes::{Buf, Bytes, BytesMut};

/// Alignment of buffers from [`alloc`]: enough for O_DIRECT on any device
/// with a logical block size up to 4 KiB.
pub const IO_ALIGN: usize = 4096;

/// A zero-filled buffer of `len` bytes whose start is aligned to [`IO_ALIGN`].
///
/// Splitting it at multiples of the block size (`split_to`, `split_off`)
/// keeps every part aligned to the block size.
pub fn alloc(len: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(len + IO_ALIGN);
    let pad = buf.as_ptr().align_offset(IO_ALIGN);
    buf.resize(pad + len, 0);
    buf.advance(pad);
    buf
}

/// A copy of `data` in a buffer from [`alloc`] (for metadata writes that
/// may go to an O_DIRECT device).
pub fn aligned(data: &[u8]) -> Bytes {
    let mut b = alloc(data.len());
    b.copy_from_slice(data);
    b.freeze()
}

/// Whether `data` starts at an address that is a multiple of `align`.
pub fn is_aligned(data: &[u8], align: usize) -> bool {
    align <= 1 || (data.as_ptr() as usize) % align == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_is_aligned_zeroed_and_splits_aligned() {
        for len in [0, 512, 4096, 12288, 131072] {
            let mut b = alloc(len);
            assert_eq!(b.len(), len);
            assert!(is_aligned(&b, IO_ALIGN));
            assert!(b.iter().all(|&x| x == 0));
            if len >= 8192 {
                let tail = b.split_off(4096);
                assert!(is_aligned(&tail, IO_ALIGN));
                b.unsplit(tail);
                assert_eq!(b.len(), len);
            }
        }
    }
}
