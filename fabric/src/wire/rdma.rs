//! NVMe/RDMA connection private data: what the host sends with the rdma_cm
//! connect request, what the controller answers with the accept, and the
//! status of a reject.

use super::le::{put_u16, u16_at};

/// Record format 1.0.
pub const RECFMT: u16 = 0;
/// Length of the request and accept private data.
pub const PRIVATE_DATA_LEN: usize = 32;

/// Reasons a controller rejects a connection request.
pub mod reject {
    /// Invalid private data length.
    pub const INVALID_LEN: u16 = 0x01;
    /// Invalid record format.
    pub const INVALID_RECFMT: u16 = 0x02;
    /// Invalid queue ID.
    pub const INVALID_QID: u16 = 0x03;
    /// Invalid host SQ size.
    pub const INVALID_HSQSIZE: u16 = 0x04;
    /// Invalid host RQ size.
    pub const INVALID_HRQSIZE: u16 = 0x05;
    /// No resources.
    pub const NO_RESOURCES: u16 = 0x06;
    /// Invalid IRD.
    pub const INVALID_IRD: u16 = 0x07;
    /// Invalid ORD.
    pub const INVALID_ORD: u16 = 0x08;
}

/// The host's connect request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Record format.
    pub recfmt: u16,
    /// Queue ID.
    pub qid: u16,
    /// Host receive queue size (entries).
    pub hrqsize: u16,
    /// Host send queue size (0's based).
    pub hsqsize: u16,
    /// Controller ID (I/O queues; informational).
    pub cntlid: u16,
}

impl ConnectRequest {
    /// Decode; `Err` with the reject status when malformed (shorter than
    /// the 32 bytes of the record, or another record format). Longer
    /// private data is accepted: some fabrics pad it.
    pub fn decode(b: &[u8]) -> Result<ConnectRequest, u16> {
        if b.len() < PRIVATE_DATA_LEN {
            return Err(reject::INVALID_LEN);
        }
        let r = ConnectRequest {
            recfmt: u16_at(b, 0),
            qid: u16_at(b, 2),
            hrqsize: u16_at(b, 4),
            hsqsize: u16_at(b, 6),
            cntlid: u16_at(b, 8),
        };
        if r.recfmt != RECFMT {
            return Err(reject::INVALID_RECFMT);
        }
        Ok(r)
    }

    /// Encode as 32 bytes.
    pub fn encode(&self) -> [u8; PRIVATE_DATA_LEN] {
        let mut b = [0u8; PRIVATE_DATA_LEN];
        put_u16(&mut b, 0, self.recfmt);
        put_u16(&mut b, 2, self.qid);
        put_u16(&mut b, 4, self.hrqsize);
        put_u16(&mut b, 6, self.hsqsize);
        put_u16(&mut b, 8, self.cntlid);
        b
    }
}

/// The controller's accept: its receive queue size.
pub fn encode_accept(crqsize: u16) -> [u8; PRIVATE_DATA_LEN] {
    let mut b = [0u8; PRIVATE_DATA_LEN];
    put_u16(&mut b, 0, RECFMT);
    put_u16(&mut b, 2, crqsize);
    b
}

/// Decode an accept: the controller's receive queue size.
pub fn decode_accept(b: &[u8]) -> Option<u16> {
    (b.len() >= 4 && u16_at(b, 0) == RECFMT).then(|| u16_at(b, 2))
}

/// A reject's private data.
pub fn encode_reject(status: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    put_u16(&mut b, 0, RECFMT);
    put_u16(&mut b, 2, status);
    b
}

/// Decode a reject's status.
pub fn decode_reject(b: &[u8]) -> Option<u16> {
    (b.len() >= 4).then(|| u16_at(b, 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects() {
        let r = ConnectRequest {
            recfmt: 0,
            qid: 2,
            hrqsize: 128,
            hsqsize: 127,
            cntlid: 5,
        };
        assert_eq!(ConnectRequest::decode(&r.encode()), Ok(r));
        assert_eq!(ConnectRequest::decode(&[0; 4]), Err(reject::INVALID_LEN));
        // Short of the CNTLID and the reserved bytes of the record.
        assert_eq!(ConnectRequest::decode(&[0; 9]), Err(reject::INVALID_LEN));
        let mut padded = r.encode().to_vec();
        padded.resize(56, 0);
        assert_eq!(ConnectRequest::decode(&padded), Ok(r));
        let mut bad = r.encode();
        bad[0] = 1;
        assert_eq!(ConnectRequest::decode(&bad), Err(reject::INVALID_RECFMT));
        assert_eq!(decode_accept(&encode_accept(32)), Some(32));
        assert_eq!(
            decode_reject(&encode_reject(reject::INVALID_QID)),
            Some(reject::INVALID_QID)
        );
    }
}
