//! An outgoing batch of PDUs, written with vectored writes: headers and
//! small payloads are encoded into one buffer, and data buffers go out as
//! they are instead of being copied into it (the copy was 8% of the target's
//! CPU time under 4 KiB reads).

use std::io::{self, IoSlice};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::wire::tcp::{digest, encode_prefix, Digests, PduHeader};

/// Data shorter than this is copied into the header buffer (an extra
/// segment costs more than the copy).
const COPY_BELOW: usize = 1024;
/// A batch stops growing at this many bytes...
const MAX_BYTES: usize = 256 * 1024;
/// ...or segments (well below the kernel's limit of 1024 per writev).
const MAX_SEGMENTS: usize = 256;

/// Initial room for headers: the buffer is taken back whole once a write
/// has dropped the headers split off it, so headers cost no allocation each.
const HEAD_CAPACITY: usize = 16 * 1024;

/// PDUs waiting to be written.
pub(super) struct Batch {
    head: BytesMut,
    /// Segments in order; `true` for data buffers given with [`Batch::push_data`].
    segments: Vec<(Bytes, bool)>,
    bytes: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            head: BytesMut::with_capacity(HEAD_CAPACITY),
            segments: Vec::new(),
            bytes: 0,
        }
    }
}

impl Batch {
    /// The buffer to encode headers and small payloads into.
    pub fn head(&mut self) -> &mut BytesMut {
        &mut self.head
    }

    /// Append a PDU: its header, `data` (as a segment of its own unless it is
    /// small) and the data digest when `digests` has one for it.
    pub fn push_pdu(&mut self, h: &PduHeader, data: Bytes, digests: Digests, pda: u8) {
        encode_prefix(h, data.len(), digests, pda, &mut self.head);
        if data.is_empty() {
            return;
        }
        let crc = (digests.data && h.data_digestible()).then(|| digest(&data));
        self.push_data(data);
        if let Some(crc) = crc {
            self.head.extend_from_slice(&crc);
        }
    }

    /// Append `data` after what is encoded so far.
    pub fn push_data(&mut self, data: Bytes) {
        if data.len() < COPY_BELOW {
            self.head.extend_from_slice(&data);
            return;
        }
        self.seal();
        self.bytes += data.len();
        self.segments.push((data, true));
    }

    fn seal(&mut self) {
        if !self.head.is_empty() {
            self.bytes += self.head.len();
            self.segments.push((self.head.split().freeze(), false));
        }
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.head.is_empty() && self.segments.is_empty()
    }

    /// Whether the batch should be written before more is added.
    pub fn is_full(&self) -> bool {
        self.bytes + self.head.len() >= MAX_BYTES || self.segments.len() >= MAX_SEGMENTS
    }

    /// Write everything, then hand each data buffer, now written, to `written`
    /// (for reuse).
    pub async fn write_to<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        mut written: impl FnMut(Bytes),
    ) -> io::Result<()> {
        self.seal();
        // On the stack, not a vector per write: `is_full` keeps most batches
        // within one chunk.
        let mut slices = [IoSlice::new(&[]); MAX_SEGMENTS];
        for chunk in self.segments.chunks(MAX_SEGMENTS) {
            for (slice, (s, _)) in slices.iter_mut().zip(chunk) {
                *slice = IoSlice::new(s);
            }
            let mut rest = &mut slices[..chunk.len()];
            while !rest.is_empty() {
                let n = wr.write_vectored(rest).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                IoSlice::advance_slices(&mut rest, n);
            }
        }
        self.bytes = 0;
        for (s, data) in self.segments.drain(..) {
            if data {
                written(s);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A writer that takes at most 5 bytes per call, to exercise partial writes.
    #[derive(Default)]
    struct Trickle(Vec<u8>);

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(5);
            self.0.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn segments_are_written_in_order_and_data_comes_back() {
        let big = Bytes::from(vec![b'd'; 2048]);
        let mut b = Batch::default();
        assert!(b.is_empty());
        b.head().extend_from_slice(b"h1");
        b.push_data(big.clone());
        b.head().extend_from_slice(b"t1");
        b.push_data(Bytes::from_static(b"small"));
        b.head().extend_from_slice(b"h2");
        let mut w = Trickle::default();
        let mut data = Vec::new();
        b.write_to(&mut w, |d| data.push(d)).await.unwrap();
        let mut want = b"h1".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"t1smallh2");
        assert_eq!(w.0, want);
        assert_eq!(data, vec![big], "only the large data buffer is handed back");
        assert!(b.is_empty());
    }

    #[test]
    fn full_by_bytes_or_segments() {
        let mut b = Batch::default();
        for _ in 0..63 {
            b.push_data(Bytes::from(vec![0; 4096]));
        }
        assert!(!b.is_full());
        b.push_data(Bytes::from(vec![0; 4096]));
        assert!(b.is_full());
        let mut s = Batch::default();
        for _ in 0..MAX_SEGMENTS / 2 {
            s.head().extend_from_slice(b"x");
            s.push_data(Bytes::from(vec![0; COPY_BELOW]));
        }
        assert!(s.is_full());
    }

    #[tokio::test]
    async fn more_segments_than_one_vectored_write_takes_stay_in_order() {
        let mut b = Batch::default();
        let mut want = Vec::new();
        for i in 0..MAX_SEGMENTS * 2 + 3 {
            let d = Bytes::from(vec![i as u8; COPY_BELOW]);
            want.extend_from_slice(&d);
            b.push_data(d);
        }
        let mut w = Trickle::default();
        let mut handed_back = 0;
        b.write_to(&mut w, |_| handed_back += 1).await.unwrap();
        assert_eq!(w.0, want);
        assert_eq!(handed_back, MAX_SEGMENTS * 2 + 3);
    }
}
