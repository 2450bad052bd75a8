//! NVMe/TCP: a connection per queue, PDUs framed by [`crate::wire::tcp`].

mod batch;
mod host;
mod target;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::tcp::OwnedReadHalf;

use crate::target::{TransportCaps, TransportKind};
use crate::wire::tcp::{Decoded, Pdu, PduDecoder};

use super::reschedule::reschedule;
use super::TransportError;

/// In-capsule data accepted on I/O queues by default (16 KiB: a 4 KiB write
/// never needs an R2T round trip).
pub const DEFAULT_INLINE_DATA: u32 = 16384;

/// Least free room in a receive buffer before a read.
const MIN_READ_ROOM: usize = 16 * 1024;
/// Least capacity of a new receive buffer (one size for the common case, so
/// that the allocator hands the same blocks back and forth instead of
/// growing and trimming its heap).
const READ_BUFFER: usize = 64 * 1024;

/// The capacity of the buffer `rbuf`'s bytes must move to before the next
/// read, if they must: room for the rest of the PDU in progress (a large
/// PDU is read into one buffer, not grown and copied piece by piece) and
/// [`MIN_READ_ROOM`], so that small PDUs are read many at a time. When more
/// than [`MIN_READ_ROOM`] bytes are waiting in `rbuf`, a PDU nearly complete
/// in a nearly full buffer is finished in place rather than moved.
fn read_buffer_needed(rbuf: &BytesMut) -> Option<usize> {
    let missing = PduDecoder::missing(rbuf).unwrap_or(0);
    let need = if rbuf.len() > MIN_READ_ROOM {
        missing
    } else {
        missing.max(MIN_READ_ROOM)
    };
    (rbuf.capacity() - rbuf.len() < need).then(|| (rbuf.len() + need).max(READ_BUFFER))
}

/// Time allowed for connection initialization (ICReq/ICResp).
const IC_TIMEOUT: Duration = Duration::from_secs(10);

/// The NVMe/TCP transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpTransport {
    /// In-capsule data accepted on I/O queues (target side).
    pub inline_data_size: u32,
    /// Target side: how long a connection whose commands have all completed
    /// keeps reading its socket without sleeping, so that a host at low
    /// queue depth finds it awake (no wake-up per command) [default: 0,
    /// off]. Costs up to this much CPU each time a connection goes idle.
    pub poll: Duration,
}

impl Default for TcpTransport {
    fn default() -> Self {
        TcpTransport {
            inline_data_size: DEFAULT_INLINE_DATA,
            poll: Duration::ZERO,
        }
    }
}

impl TcpTransport {
    fn caps(&self) -> TransportCaps {
        TransportCaps {
            kind: TransportKind::Tcp,
            inline_data_size: self.inline_data_size,
            keyed_sgls: false,
            sgl_descriptors: 1,
        }
    }
}

/// Read without sleeping for up to `period` (without a deadline if it lies
/// beyond what the clock can say) while `go_on` holds, letting the other
/// ready tasks run between attempts; `None` when it gave up. Both sides'
/// idle polling.
async fn poll_read(
    rd: &OwnedReadHalf,
    rbuf: &mut BytesMut,
    period: Duration,
    mut go_on: impl FnMut() -> bool,
) -> Option<std::io::Result<usize>> {
    let until = Instant::now().checked_add(period);
    loop {
        match rd.try_read_buf(rbuf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            r => return Some(r),
        }
        // The yield before the check: a host's submitter, woken by the
        // response just handled, sends its next command in it.
        reschedule().await;
        if !go_on() || until.is_some_and(|u| Instant::now() >= u) {
            return None;
        }
    }
}

/// Read until the decoder yields one PDU (connection initialization).
async fn read_one_pdu<R: AsyncRead + Unpin>(
    rd: &mut R,
    dec: &PduDecoder,
    buf: &mut BytesMut,
) -> Result<Pdu, TransportError> {
    let fut = async {
        loop {
            match dec.decode(buf) {
                Ok(Some(Decoded::Pdu(p))) => return Ok(p),
                Ok(Some(Decoded::BadDataDigest(_))) => {
                    return Err(TransportError::Protocol(
                        "data digest error during initialization".into(),
                    ))
                }
                Ok(None) => {}
                Err(e) => return Err(TransportError::Protocol(e.to_string())),
            }
            buf.reserve(256);
            let n = rd
                .read_buf(buf)
                .await
                .map_err(|e| TransportError::io("read", e))?;
            if n == 0 {
                return Err(TransportError::Closed(
                    "peer closed the connection during initialization".into(),
                ));
            }
        }
    };
    tokio::time::timeout(IC_TIMEOUT, fut)
        .await
        .map_err(|_| TransportError::Timeout(IC_TIMEOUT))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp::pdu_type;

    /// `len` bytes of a C2HData PDU of `plen` bytes in a buffer of `cap`.
    fn partial_pdu(plen: u32, len: usize, cap: usize) -> BytesMut {
        let mut b = BytesMut::with_capacity(cap);
        b.extend_from_slice(&[pdu_type::C2H_DATA, 0, 24, 24]);
        b.extend_from_slice(&plen.to_le_bytes());
        b.resize(len, 0);
        b
    }

    #[test]
    fn receive_buffers_grow_for_the_whole_pdu_and_only_when_needed() {
        // The rest of a nearly complete large PDU fits: finished in place.
        let b = partial_pdu(100_000, 99_990, 100_000);
        assert!(b.capacity() >= 100_000);
        assert_eq!(read_buffer_needed(&b), None);
        // A small one moves, for room to read the PDUs after it too.
        let b = partial_pdu(1000, 990, 1000);
        assert_eq!(read_buffer_needed(&b), Some(READ_BUFFER));
        // A large PDU gets room for all of it at once.
        let b = partial_pdu(200_000, 100, 4096);
        assert_eq!(read_buffer_needed(&b), Some(200_000));
        // Between PDUs: at least MIN_READ_ROOM free.
        let b = BytesMut::with_capacity(100);
        assert_eq!(read_buffer_needed(&b), Some(READ_BUFFER));
        let b = BytesMut::with_capacity(MIN_READ_ROOM);
        assert_eq!(read_buffer_needed(&b), None);
    }
}
