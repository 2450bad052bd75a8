//! Splitting one request into pieces on member devices and merging the
//! results, without copying data.
//!
//! A read buffer is cut with `BytesMut::split_off` into one part per piece;
//! the parts are read concurrently and glued back with `unsplit`, which is
//! free when the parts are still adjacent (the usual case: every backend
//! hands back the buffer it was given). Write data is cut with
//! `Bytes::slice`, which only bumps a reference count. Members are called
//! through `&dyn BlockDevice` (`as_ref`), not through the forwarding impl
//! for `Arc`, which would box a second future per piece.

use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;

use crate::device::{BlockResult, DeviceRef};

/// A contiguous run of blocks of one request that lives on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Index of the device in the composite's member list.
    pub dev: usize,
    /// First block on that device.
    pub lba: u64,
    /// Number of blocks.
    pub blocks: u64,
}

/// Cut `buf` into consecutive parts of `lens` bytes each (which must add up
/// to `buf.len()`).
pub(crate) fn cut(mut buf: BytesMut, lens: impl Iterator<Item = usize>) -> Vec<BytesMut> {
    let mut parts = Vec::new();
    for len in lens {
        let rest = buf.split_off(len);
        parts.push(std::mem::replace(&mut buf, rest));
    }
    parts
}

/// Glue parts back together in order (zero-copy when they are adjacent).
pub(crate) fn glue(parts: Vec<BytesMut>) -> BytesMut {
    let mut iter = parts.into_iter();
    let mut out = iter.next().unwrap_or_default();
    for part in iter {
        out.unsplit(part);
    }
    out
}

/// Read `pieces` (in request order) from `devs` into `buf`.
pub(crate) async fn read(
    devs: &[DeviceRef],
    pieces: &[Piece],
    block_size: usize,
    buf: BytesMut,
) -> BlockResult<BytesMut> {
    if let [p] = pieces {
        return devs[p.dev].as_ref().read(p.lba, buf).await;
    }
    let parts = cut(buf, pieces.iter().map(|p| p.blocks as usize * block_size));
    let reads = pieces
        .iter()
        .zip(parts)
        .map(|(p, part)| devs[p.dev].as_ref().read(p.lba, part));
    Ok(glue(try_join_all(reads).await?))
}

/// Write `data` split along `pieces` (in request order) to `devs`.
pub(crate) async fn write(
    devs: &[DeviceRef],
    pieces: &[Piece],
    block_size: usize,
    data: Bytes,
) -> BlockResult<()> {
    if let [p] = pieces {
        return devs[p.dev].as_ref().write(p.lba, data).await;
    }
    let mut at = 0;
    let writes = pieces.iter().map(|p| {
        let len = p.blocks as usize * block_size;
        let part = data.slice(at..at + len);
        at += len;
        devs[p.dev].as_ref().write(p.lba, part)
    });
    try_join_all(writes).await.map(|_| ())
}

/// Discard (or, with `zero`, write zeroes to) every piece.
pub(crate) async fn discard(devs: &[DeviceRef], pieces: &[Piece], zero: bool) -> BlockResult<()> {
    let ops = pieces.iter().map(|p| {
        let dev = &devs[p.dev];
        async move {
            if zero {
                dev.write_zeroes(p.lba, p.blocks).await
            } else {
                dev.discard(p.lba, p.blocks).await
            }
        }
    });
    try_join_all(ops).await.map(|_| ())
}

/// Flush every device.
pub(crate) async fn flush(devs: &[DeviceRef]) -> BlockResult<()> {
    try_join_all(devs.iter().map(|d| d.flush()))
        .await
        .map(|_| ())
}

/// `x / unit` and `x % unit` for a power-of-two `unit` (every block,
/// region, chunk and thin block size is one), without a division
/// instruction, which costs tens of cycles on the I/O path.
#[inline]
pub(crate) fn div_rem_pow2(x: u64, unit: u64) -> (u64, u64) {
    debug_assert!(unit.is_power_of_two());
    (x >> unit.trailing_zeros(), x & unit.wrapping_sub(1))
}

/// Split the block range `lba..lba+blocks` at multiples of `unit` blocks:
/// yields (first block, block count) per unit touched.
pub(crate) fn units(lba: u64, blocks: u64, unit: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = lba + blocks;
    let mut at = lba;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let next = ((at / unit) + 1).saturating_mul(unit).min(end);
        let item = (at, next - at);
        at = next;
        Some(item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_split_at_boundaries() {
        let v: Vec<_> = units(3, 10, 4).collect();
        assert_eq!(v, vec![(3, 1), (4, 4), (8, 4), (12, 1)]);
        assert_eq!(units(0, 0, 4).count(), 0);
        assert_eq!(units(4, 4, 4).collect::<Vec<_>>(), vec![(4, 4)]);
    }

    #[test]
    fn cut_and_glue_round_trip() {
        let mut buf = crate::buf::alloc(4096 * 3);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i / 4096) as u8;
        }
        let ptr = buf.as_ptr();
        let parts = cut(buf, [4096, 8192].into_iter());
        assert_eq!(parts[1][0], 1);
        let back = glue(parts);
        assert_eq!(back.as_ptr(), ptr);
        assert_eq!(back.len(), 4096 * 3);
        assert_eq!(back[8192], 2);
    }
}
