//! NVMe/TCP: a connection per queue, PDUs framed by [`crate::wire::tcp`].

mod batch;
mod host;
mod target;

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::target::{TransportCaps, TransportKind};
use crate::wire::tcp::{Decoded, Pdu, PduDecoder};

use super::TransportError;

/// In-capsule data accepted on I/O queues by default (16 KiB: a 4 KiB write
/// never needs an R2T round trip).
pub const DEFAULT_INLINE_DATA: u32 = 16384;

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
