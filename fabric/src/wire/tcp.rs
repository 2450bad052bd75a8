//! NVMe/TCP PDUs: the common header, each PDU type, header and data digests
//! (CRC32C) and a decoder that cuts complete PDUs out of a receive buffer.
//!
//! The decoder is pure: it takes bytes and returns PDUs or a fatal error that
//! carries what a C2HTermReq/H2CTermReq needs (fatal error status, the
//! offending field's offset and the offending header).

use bytes::{BufMut, Bytes, BytesMut};

use super::command::{Command, SQE_SIZE};
use super::completion::{Completion, CQE_SIZE};
use super::le::{array_at, put_u16, put_u32, u16_at, u32_at};

/// PDU types.
pub mod pdu_type {
    /// Initialize connection request.
    pub const IC_REQ: u8 = 0x00;
    /// Initialize connection response.
    pub const IC_RESP: u8 = 0x01;
    /// Host to controller terminate connection request.
    pub const H2C_TERM_REQ: u8 = 0x02;
    /// Controller to host terminate connection request.
    pub const C2H_TERM_REQ: u8 = 0x03;
    /// Command capsule.
    pub const CAPSULE_CMD: u8 = 0x04;
    /// Response capsule.
    pub const CAPSULE_RESP: u8 = 0x05;
    /// Host to controller data.
    pub const H2C_DATA: u8 = 0x06;
    /// Controller to host data.
    pub const C2H_DATA: u8 = 0x07;
    /// Ready to transfer.
    pub const R2T: u8 = 0x09;
}

/// PDU flags.
pub mod flags {
    /// A header digest follows the header.
    pub const HDGST: u8 = 1 << 0;
    /// A data digest follows the data.
    pub const DDGST: u8 = 1 << 1;
    /// Last data PDU of a transfer.
    pub const LAST_PDU: u8 = 1 << 2;
    /// C2HData: the command succeeded; no response capsule follows.
    pub const SUCCESS: u8 = 1 << 3;
}

/// Fatal error statuses carried by TermReq PDUs.
pub mod fes {
    /// Invalid PDU header field.
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    /// PDU sequence error.
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    /// Header digest error.
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    /// Data transfer out of range.
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    /// Data transfer limit exceeded.
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    /// Unsupported parameter.
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Length of the common header.
pub const COMMON_HEADER_LEN: usize = 8;
/// Length of a digest.
pub const DIGEST_LEN: usize = 4;
/// ICReq/ICResp length.
pub const IC_LEN: usize = 128;
/// Header length of TermReq, CapsuleResp, data and R2T PDUs.
pub const SHORT_HEADER_LEN: usize = 24;
/// Header length of a command capsule.
pub const CAPSULE_CMD_HEADER_LEN: usize = COMMON_HEADER_LEN + SQE_SIZE;
/// Most header bytes of an offending PDU echoed in a TermReq.
pub const TERM_REQ_MAX_DATA: usize = 128;

/// The header length each PDU type must have.
pub fn header_len(pdu_type: u8) -> Option<usize> {
    Some(match pdu_type {
        pdu_type::IC_REQ | pdu_type::IC_RESP => IC_LEN,
        pdu_type::CAPSULE_CMD => CAPSULE_CMD_HEADER_LEN,
        pdu_type::H2C_TERM_REQ
        | pdu_type::C2H_TERM_REQ
        | pdu_type::CAPSULE_RESP
        | pdu_type::H2C_DATA
        | pdu_type::C2H_DATA
        | pdu_type::R2T => SHORT_HEADER_LEN,
        _ => return None,
    })
}

/// CRC32C digest as carried on the wire.
pub fn digest(data: &[u8]) -> [u8; 4] {
    crc32c::crc32c(data).to_le_bytes()
}

/// Which digests a connection negotiated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    /// Header digest.
    pub header: bool,
    /// Data digest.
    pub data: bool,
}

/// DGST field bits of ICReq/ICResp.
pub mod dgst {
    /// Header digest enable.
    pub const HEADER: u8 = 1 << 0;
    /// Data digest enable.
    pub const DATA: u8 = 1 << 1;
}

/// Initialize connection request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcReq {
    /// PDU format version (0).
    pub pfv: u16,
    /// Host PDU data alignment (dwords, 0's based).
    pub hpda: u8,
    /// Digests requested.
    pub digests: Digests,
    /// Maximum outstanding R2Ts per command (0's based).
    pub maxr2t: u32,
}

/// Initialize connection response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcResp {
    /// PDU format version (0).
    pub pfv: u16,
    /// Controller PDU data alignment (dwords, 0's based).
    pub cpda: u8,
    /// Digests enabled.
    pub digests: Digests,
    /// Maximum data bytes in one H2CData PDU.
    pub maxh2cdata: u32,
}

/// Header fields of H2CData, C2HData (CCCID, TTAG, DATAO, DATAL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    /// Command capsule CID.
    pub cccid: u16,
    /// Transfer tag (H2CData only).
    pub ttag: u16,
    /// Offset of this data in the command's data.
    pub datao: u32,
    /// Length of this data.
    pub datal: u32,
}

/// Ready to transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct R2t {
    /// Command capsule CID.
    pub cccid: u16,
    /// Transfer tag chosen by the controller.
    pub ttag: u16,
    /// Offset of the requested data.
    pub offset: u32,
    /// Length of the requested data.
    pub length: u32,
}

/// Terminate connection request (either direction).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TermReq {
    /// Fatal error status.
    pub fes: u16,
    /// Fatal error information (offset of the bad field).
    pub fei: u32,
    /// The offending PDU's header.
    pub data: Bytes,
}

/// The header part of a PDU, used for encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PduHeader {
    /// ICReq.
    IcReq(IcReq),
    /// ICResp.
    IcResp(IcResp),
    /// H2CTermReq (`true`) or C2HTermReq.
    TermReq {
        /// Host to controller.
        h2c: bool,
        /// Fatal error status.
        fes: u16,
        /// Fatal error information.
        fei: u32,
    },
    /// Command capsule.
    CapsuleCmd(Command),
    /// Response capsule.
    CapsuleResp(Completion),
    /// H2CData (`h2c`) or C2HData.
    Data {
        /// Host to controller.
        h2c: bool,
        /// Fields.
        hdr: DataHeader,
        /// Last data PDU of the transfer.
        last: bool,
        /// C2H only: command succeeded, no response capsule follows.
        success: bool,
    },
    /// R2T.
    R2t(R2t),
}

impl PduHeader {
    fn pdu_type(&self) -> u8 {
        match self {
            PduHeader::IcReq(_) => pdu_type::IC_REQ,
            PduHeader::IcResp(_) => pdu_type::IC_RESP,
            PduHeader::TermReq { h2c: true, .. } => pdu_type::H2C_TERM_REQ,
            PduHeader::TermReq { h2c: false, .. } => pdu_type::C2H_TERM_REQ,
            PduHeader::CapsuleCmd(_) => pdu_type::CAPSULE_CMD,
            PduHeader::CapsuleResp(_) => pdu_type::CAPSULE_RESP,
            PduHeader::Data { h2c: true, .. } => pdu_type::H2C_DATA,
            PduHeader::Data { h2c: false, .. } => pdu_type::C2H_DATA,
            PduHeader::R2t(_) => pdu_type::R2T,
        }
    }

    /// Whether this PDU carries a header digest when header digests are on:
    /// never the connection initialization PDUs, and never a TermReq (as
    /// Linux and SPDK expect: a peer ending the connection may not agree on
    /// digests any more).
    fn digestible(&self) -> bool {
        !matches!(
            self,
            PduHeader::IcReq(_) | PduHeader::IcResp(_) | PduHeader::TermReq { .. }
        )
    }

    /// Whether data in this PDU is protected by the data digest (TermReq
    /// data never is).
    pub fn data_digestible(&self) -> bool {
        matches!(self, PduHeader::CapsuleCmd(_) | PduHeader::Data { .. })
    }
}

/// Write a PDU's header (with header digest and padding) for `data_len`
/// bytes of data that the caller appends, followed by [`digest`] of the data
/// when `digests.data` is on and `data_len > 0`. `pda` is the receiver's
/// data alignment (dwords, 0's based).
pub fn encode_prefix(
    h: &PduHeader,
    data_len: usize,
    digests: Digests,
    pda: u8,
    out: &mut BytesMut,
) {
    let t = h.pdu_type();
    let hlen = header_len(t).unwrap_or(SHORT_HEADER_LEN);
    let hd = if digests.header && h.digestible() {
        DIGEST_LEN
    } else {
        0
    };
    let dd = if digests.data && h.data_digestible() && data_len > 0 {
        DIGEST_LEN
    } else {
        0
    };
    let align = (pda as usize + 1) * 4;
    let pdo = if data_len > 0 {
        (hlen + hd).div_ceil(align) * align
    } else {
        0
    };
    let plen = if data_len > 0 {
        pdo + data_len + dd
    } else {
        hlen + hd
    };
    let mut flags = 0u8;
    if hd > 0 {
        flags |= flags::HDGST;
    }
    if dd > 0 {
        flags |= flags::DDGST;
    }
    let mut hdr_buf = [0u8; IC_LEN];
    let hdr = &mut hdr_buf[..hlen];
    match h {
        PduHeader::IcReq(r) => {
            put_u16(hdr, 8, r.pfv);
            hdr[10] = r.hpda;
            hdr[11] = digest_bits(r.digests);
            put_u32(hdr, 12, r.maxr2t);
        }
        PduHeader::IcResp(r) => {
            put_u16(hdr, 8, r.pfv);
            hdr[10] = r.cpda;
            hdr[11] = digest_bits(r.digests);
            put_u32(hdr, 12, r.maxh2cdata);
        }
        PduHeader::TermReq { fes, fei, .. } => {
            put_u16(hdr, 8, *fes);
            put_u32(hdr, 10, *fei);
        }
        PduHeader::CapsuleCmd(c) => hdr[8..8 + SQE_SIZE].copy_from_slice(&c.encode()),
        PduHeader::CapsuleResp(c) => hdr[8..8 + CQE_SIZE].copy_from_slice(&c.encode()),
        PduHeader::Data {
            hdr: d,
            last,
            success,
            ..
        } => {
            put_u16(hdr, 8, d.cccid);
            put_u16(hdr, 10, d.ttag);
            put_u32(hdr, 12, d.datao);
            put_u32(hdr, 16, d.datal);
            if *last {
                flags |= flags::LAST_PDU;
            }
            if *success {
                flags |= flags::SUCCESS;
            }
        }
        PduHeader::R2t(r) => {
            put_u16(hdr, 8, r.cccid);
            put_u16(hdr, 10, r.ttag);
            put_u32(hdr, 12, r.offset);
            put_u32(hdr, 16, r.length);
        }
    }
    hdr[0] = t;
    hdr[1] = flags;
    hdr[2] = hlen as u8;
    hdr[3] = if data_len > 0 { pdo as u8 } else { 0 };
    put_u32(hdr, 4, plen as u32);
    // Room for the header only: the data may go out as a buffer of its own.
    out.reserve(pdo.max(hlen + hd));
    out.put_slice(hdr);
    if hd > 0 {
        out.put_slice(&digest(hdr));
    }
    if data_len > 0 {
        out.put_bytes(0, pdo - hlen - hd);
    }
}

/// Write the TermReq (C2H unless `h2c`) that answers a fatal PDU error. A
/// TermReq never has digests, and its data (the offending header) follows
/// its header directly, whatever the connection negotiated. The field
/// offset goes out only with the two statuses that define it.
pub fn encode_term(e: &PduError, h2c: bool, out: &mut BytesMut) {
    let fei = match e.fes {
        fes::INVALID_HEADER_FIELD | fes::UNSUPPORTED_PARAMETER => e.fei,
        _ => 0,
    };
    encode(
        &PduHeader::TermReq {
            h2c,
            fes: e.fes,
            fei,
        },
        &e.header,
        Digests::default(),
        0,
        out,
    );
}

/// Write a whole PDU: header, data and digests.
pub fn encode(h: &PduHeader, data: &[u8], digests: Digests, pda: u8, out: &mut BytesMut) {
    out.reserve(IC_LEN + data.len() + 2 * DIGEST_LEN);
    encode_prefix(h, data.len(), digests, pda, out);
    out.put_slice(data);
    if digests.data && h.data_digestible() && !data.is_empty() {
        out.put_slice(&digest(data));
    }
}

fn digest_bits(d: Digests) -> u8 {
    ((d.header as u8) * dgst::HEADER) | ((d.data as u8) * dgst::DATA)
}

fn digests_of(bits: u8) -> Digests {
    Digests {
        header: bits & dgst::HEADER != 0,
        data: bits & dgst::DATA != 0,
    }
}

/// A decoded PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pdu {
    /// ICReq.
    IcReq(IcReq),
    /// ICResp.
    IcResp(IcResp),
    /// H2CTermReq.
    H2cTermReq(TermReq),
    /// C2HTermReq.
    C2hTermReq(TermReq),
    /// Command capsule with its in-capsule data.
    CapsuleCmd {
        /// The command.
        cmd: Command,
        /// In-capsule data (may be empty).
        data: Bytes,
    },
    /// Response capsule.
    CapsuleResp(Completion),
    /// H2CData.
    H2cData {
        /// Fields.
        hdr: DataHeader,
        /// Last PDU of the transfer.
        last: bool,
        /// Data.
        data: Bytes,
    },
    /// C2HData.
    C2hData {
        /// Fields.
        hdr: DataHeader,
        /// Last PDU of the transfer.
        last: bool,
        /// The command succeeded (no response capsule follows).
        success: bool,
        /// Data.
        data: Bytes,
    },
    /// R2T.
    R2t(R2t),
}

impl Pdu {
    /// This PDU's header as sent without digests: the data of a TermReq
    /// about it, for errors found after it was decoded.
    pub fn header_bytes(&self) -> Bytes {
        let (h, data_len) = match self {
            Pdu::IcReq(r) => (PduHeader::IcReq(*r), 0),
            Pdu::IcResp(r) => (PduHeader::IcResp(*r), 0),
            Pdu::H2cTermReq(t) | Pdu::C2hTermReq(t) => (
                PduHeader::TermReq {
                    h2c: matches!(self, Pdu::H2cTermReq(_)),
                    fes: t.fes,
                    fei: t.fei,
                },
                t.data.len(),
            ),
            Pdu::CapsuleCmd { cmd, data } => (PduHeader::CapsuleCmd(*cmd), data.len()),
            Pdu::CapsuleResp(c) => (PduHeader::CapsuleResp(*c), 0),
            Pdu::H2cData { hdr, last, data } => (
                PduHeader::Data {
                    h2c: true,
                    hdr: *hdr,
                    last: *last,
                    success: false,
                },
                data.len(),
            ),
            Pdu::C2hData {
                hdr,
                last,
                success,
                data,
            } => (
                PduHeader::Data {
                    h2c: false,
                    hdr: *hdr,
                    last: *last,
                    success: *success,
                },
                data.len(),
            ),
            Pdu::R2t(r) => (PduHeader::R2t(*r), 0),
        };
        let hlen = header_len(h.pdu_type()).unwrap_or(COMMON_HEADER_LEN);
        let mut out = BytesMut::new();
        encode_prefix(&h, data_len, Digests::default(), 0, &mut out);
        out.truncate(hlen);
        out.freeze()
    }
}

/// A fatal PDU error: the connection must be terminated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fatal NVMe/TCP PDU error (FES {fes:#x}, field offset {fei}): {reason}")]
pub struct PduError {
    /// Fatal error status for the TermReq.
    pub fes: u16,
    /// Offset of the offending field in the PDU header.
    pub fei: u32,
    /// What was wrong.
    pub reason: &'static str,
    /// The offending PDU's header bytes (at most 128).
    pub header: Bytes,
}

/// A PDU whose data failed its digest: not fatal, the command fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDigestMismatch {
    /// The PDU, with its data.
    pub pdu: Pdu,
}

/// What the decoder produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A complete, valid PDU.
    Pdu(Pdu),
    /// A complete PDU whose data digest did not match.
    BadDataDigest(DataDigestMismatch),
}

/// Which end of the connection decodes (what it may receive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The controller: receives ICReq, H2CTermReq, CapsuleCmd, H2CData.
    Controller,
    /// The host: receives ICResp, C2HTermReq, CapsuleResp, C2HData, R2T.
    Host,
}

/// Cuts PDUs out of a receive buffer.
#[derive(Clone, Debug)]
pub struct PduDecoder {
    /// Which side decodes.
    pub role: Role,
    /// Negotiated digests (none until the connection is initialized).
    pub digests: Digests,
    /// Largest data in one PDU accepted.
    pub max_data: usize,
}

impl PduDecoder {
    /// A decoder before connection initialization.
    pub fn new(role: Role, max_data: usize) -> PduDecoder {
        PduDecoder {
            role,
            digests: Digests::default(),
            max_data,
        }
    }

    /// Bytes still missing from the PDU at the front of `buf`, once its
    /// common header is there; call it after [`decode`](Self::decode)
    /// returned `Ok(None)`, which checked the PDU's length. Making room for
    /// them is the reader's business (decode never grows `buf`).
    pub fn missing(buf: &[u8]) -> Option<usize> {
        let plen = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?) as usize;
        Some(plen.saturating_sub(buf.len()))
    }

    /// Decode one PDU from the front of `buf`, or `Ok(None)` if it is not
    /// complete yet (read more). On a fatal error the connection must end.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Decoded>, PduError> {
        if buf.len() < COMMON_HEADER_LEN {
            return Ok(None);
        }
        let t = buf[0];
        let fl = buf[1];
        let hlen = buf[2] as usize;
        let pdo = buf[3] as usize;
        let plen = u32_at(buf, 4) as usize;
        let fail = |fes, fei, reason| fatal(buf, hlen, fes, fei, reason);

        let allowed = match self.role {
            Role::Controller => matches!(
                t,
                pdu_type::IC_REQ
                    | pdu_type::H2C_TERM_REQ
                    | pdu_type::CAPSULE_CMD
                    | pdu_type::H2C_DATA
            ),
            Role::Host => matches!(
                t,
                pdu_type::IC_RESP
                    | pdu_type::C2H_TERM_REQ
                    | pdu_type::CAPSULE_RESP
                    | pdu_type::C2H_DATA
                    | pdu_type::R2T
            ),
        };
        if !allowed {
            return Err(fail(
                fes::INVALID_HEADER_FIELD,
                0,
                "PDU type not valid in this direction",
            ));
        }
        let Some(want_hlen) = header_len(t) else {
            return Err(fail(fes::INVALID_HEADER_FIELD, 0, "unknown PDU type"));
        };
        if hlen != want_hlen {
            return Err(fail(
                fes::INVALID_HEADER_FIELD,
                2,
                "wrong header length for the PDU type",
            ));
        }
        let is_ic = matches!(t, pdu_type::IC_REQ | pdu_type::IC_RESP);
        let term = matches!(t, pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ);
        let has_hd = fl & flags::HDGST != 0;
        if is_ic && (has_hd || fl & flags::DDGST != 0) {
            return Err(fail(
                fes::INVALID_HEADER_FIELD,
                1,
                "digest flag on a connection initialization PDU",
            ));
        }
        // A TermReq is sent without a header digest; one that has it (and
        // says so) is read too.
        if !is_ic && !term && has_hd != self.digests.header {
            return Err(fail(
                fes::INVALID_HEADER_FIELD,
                1,
                "header digest flag does not match the negotiated setting",
            ));
        }
        let hd = if has_hd { DIGEST_LEN } else { 0 };
        let carries_data = matches!(
            t,
            pdu_type::CAPSULE_CMD
                | pdu_type::H2C_DATA
                | pdu_type::C2H_DATA
                | pdu_type::H2C_TERM_REQ
                | pdu_type::C2H_TERM_REQ
        );
        if plen < hlen + hd || (!carries_data && plen != hlen + hd) {
            return Err(fail(
                fes::INVALID_HEADER_FIELD,
                4,
                "PDU length does not fit its header",
            ));
        }
        let max_data = if term { 152 } else { self.max_data };
        let max_plen = 255 + max_data + DIGEST_LEN;
        if plen > max_plen {
            return Err(fail(
                fes::DATA_LIMIT_EXCEEDED,
                4,
                "PDU longer than the negotiated maximum",
            ));
        }
        if buf.len() < hlen + hd {
            return Ok(None);
        }
        if has_hd {
            let got: [u8; 4] = array_at(buf, hlen);
            if got != digest(&buf[..hlen]) {
                return Err(fail(fes::HEADER_DIGEST_ERROR, 0, "header digest mismatch"));
            }
        }
        // Data placement.
        let (data_start, data_len, dd) = if plen > hlen + hd {
            if term {
                (hlen + hd, plen - hlen - hd, 0)
            } else {
                let has_dd = fl & flags::DDGST != 0;
                if has_dd != self.digests.data {
                    return Err(fail(
                        fes::INVALID_HEADER_FIELD,
                        1,
                        "data digest flag does not match the negotiated setting",
                    ));
                }
                let dd = if has_dd { DIGEST_LEN } else { 0 };
                if pdo < hlen + hd || pdo + dd > plen {
                    return Err(fail(
                        fes::INVALID_HEADER_FIELD,
                        3,
                        "data offset outside the PDU",
                    ));
                }
                (pdo, plen - pdo - dd, dd)
            }
        } else {
            if fl & flags::DDGST != 0 {
                return Err(fail(
                    fes::INVALID_HEADER_FIELD,
                    1,
                    "data digest flag on a PDU without data",
                ));
            }
            (plen, 0, 0)
        };
        if data_len > max_data {
            return Err(fail(
                fes::DATA_LIMIT_EXCEEDED,
                4,
                "PDU data longer than the negotiated maximum",
            ));
        }
        if buf.len() < plen {
            return Ok(None);
        }
        let pdu = buf.split_to(plen).freeze();
        let data = pdu.slice(data_start..data_start + data_len);
        let digest_ok = dd == 0 || array_at::<4>(&pdu, data_start + data_len) == digest(&data);
        let h = &pdu[..hlen];
        let fail = |fes, fei, reason| fatal(&pdu, hlen, fes, fei, reason);
        let parsed = match t {
            pdu_type::IC_REQ => {
                let r = IcReq {
                    pfv: u16_at(h, 8),
                    hpda: h[10],
                    digests: digests_of(h[11]),
                    maxr2t: u32_at(h, 12),
                };
                if r.pfv != 0 {
                    return Err(fail(
                        fes::UNSUPPORTED_PARAMETER,
                        8,
                        "unsupported PDU format version",
                    ));
                }
                if r.hpda > 31 {
                    return Err(fail(
                        fes::UNSUPPORTED_PARAMETER,
                        10,
                        "host PDU data alignment out of range",
                    ));
                }
                Pdu::IcReq(r)
            }
            pdu_type::IC_RESP => {
                let r = IcResp {
                    pfv: u16_at(h, 8),
                    cpda: h[10],
                    digests: digests_of(h[11]),
                    maxh2cdata: u32_at(h, 12),
                };
                if r.pfv != 0 {
                    return Err(fail(
                        fes::UNSUPPORTED_PARAMETER,
                        8,
                        "unsupported PDU format version",
                    ));
                }
                if r.cpda > 31 {
                    return Err(fail(
                        fes::UNSUPPORTED_PARAMETER,
                        10,
                        "controller PDU data alignment out of range",
                    ));
                }
                if r.maxh2cdata < 4096 || r.maxh2cdata % 4 != 0 {
                    return Err(fail(
                        fes::UNSUPPORTED_PARAMETER,
                        12,
                        "MAXH2CDATA below 4096 or not a multiple of 4",
                    ));
                }
                Pdu::IcResp(r)
            }
            pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ => {
                let r = TermReq {
                    fes: u16_at(h, 8),
                    fei: u32_at(h, 10),
                    data,
                };
                if t == pdu_type::H2C_TERM_REQ {
                    Pdu::H2cTermReq(r)
                } else {
                    Pdu::C2hTermReq(r)
                }
            }
            pdu_type::CAPSULE_CMD => Pdu::CapsuleCmd {
                cmd: Command::decode(&array_at(h, 8)),
                data,
            },
            pdu_type::CAPSULE_RESP => Pdu::CapsuleResp(Completion::decode(&array_at(h, 8))),
            pdu_type::H2C_DATA | pdu_type::C2H_DATA => {
                let hdr = DataHeader {
                    cccid: u16_at(h, 8),
                    ttag: u16_at(h, 10),
                    datao: u32_at(h, 12),
                    datal: u32_at(h, 16),
                };
                if hdr.datal as usize != data_len {
                    return Err(fail(
                        fes::INVALID_HEADER_FIELD,
                        16,
                        "DATAL does not match the data carried",
                    ));
                }
                if data_len == 0 {
                    return Err(fail(fes::INVALID_HEADER_FIELD, 16, "data PDU without data"));
                }
                let last = fl & flags::LAST_PDU != 0;
                if t == pdu_type::H2C_DATA {
                    Pdu::H2cData { hdr, last, data }
                } else {
                    let success = fl & flags::SUCCESS != 0;
                    if success && !last {
                        return Err(fail(
                            fes::INVALID_HEADER_FIELD,
                            1,
                            "SUCCESS flag without LAST_PDU",
                        ));
                    }
                    Pdu::C2hData {
                        hdr,
                        last,
                        success,
                        data,
                    }
                }
            }
            _ => Pdu::R2t(R2t {
                cccid: u16_at(h, 8),
                ttag: u16_at(h, 10),
                offset: u32_at(h, 12),
                length: u32_at(h, 16),
            }),
        };
        Ok(Some(if digest_ok {
            Decoded::Pdu(parsed)
        } else {
            Decoded::BadDataDigest(DataDigestMismatch { pdu: parsed })
        }))
    }
}

fn fatal(b: &[u8], hlen: usize, fes: u16, fei: u32, reason: &'static str) -> PduError {
    let n = hlen
        .max(COMMON_HEADER_LEN)
        .min(b.len())
        .min(TERM_REQ_MAX_DATA);
    PduError {
        fes,
        fei,
        reason,
        header: Bytes::copy_from_slice(&b[..n]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::sgl::SglDescriptor;
    use crate::wire::status::Status;

    fn round_trip(h: PduHeader, data: &[u8], dg: Digests, role: Role) -> Pdu {
        let mut out = BytesMut::new();
        encode(&h, data, dg, 0, &mut out);
        let mut dec = PduDecoder::new(role, 1 << 20);
        dec.digests = dg;
        let dec = dec;
        // Feed byte by byte: incomplete input must ask for more.
        let mut buf = BytesMut::new();
        for (i, b) in out.iter().enumerate() {
            buf.put_u8(*b);
            match dec.decode(&mut buf).unwrap() {
                None => assert!(i + 1 < out.len()),
                Some(Decoded::Pdu(p)) => {
                    assert_eq!(i + 1, out.len());
                    assert!(buf.is_empty());
                    return p;
                }
                Some(Decoded::BadDataDigest(_)) => panic!("digest mismatch"),
            }
        }
        panic!("no PDU decoded");
    }

    #[test]
    fn every_pdu_round_trips_with_and_without_digests() {
        for dg in [
            Digests::default(),
            Digests {
                header: true,
                data: true,
            },
        ] {
            let cmd = Command {
                cid: 3,
                dptr: SglDescriptor::in_capsule(5),
                ..Command::new(1)
            };
            assert_eq!(
                round_trip(PduHeader::CapsuleCmd(cmd), b"hello", dg, Role::Controller),
                Pdu::CapsuleCmd {
                    cmd,
                    data: Bytes::from_static(b"hello")
                }
            );
            let cqe = Completion::new(3, Status::LBA_OUT_OF_RANGE);
            assert_eq!(
                round_trip(PduHeader::CapsuleResp(cqe), &[], dg, Role::Host),
                Pdu::CapsuleResp(cqe)
            );
            let hdr = DataHeader {
                cccid: 3,
                ttag: 1,
                datao: 0,
                datal: 4,
            };
            assert_eq!(
                round_trip(
                    PduHeader::Data {
                        h2c: true,
                        hdr,
                        last: true,
                        success: false
                    },
                    b"abcd",
                    dg,
                    Role::Controller
                ),
                Pdu::H2cData {
                    hdr,
                    last: true,
                    data: Bytes::from_static(b"abcd")
                }
            );
            assert_eq!(
                round_trip(
                    PduHeader::Data {
                        h2c: false,
                        hdr,
                        last: true,
                        success: true
                    },
                    b"abcd",
                    dg,
                    Role::Host
                ),
                Pdu::C2hData {
                    hdr,
                    last: true,
                    success: true,
                    data: Bytes::from_static(b"abcd")
                }
            );
            let r2t = R2t {
                cccid: 3,
                ttag: 1,
                offset: 0,
                length: 8192,
            };
            assert_eq!(
                round_trip(PduHeader::R2t(r2t), &[], dg, Role::Host),
                Pdu::R2t(r2t)
            );
        }
        let icreq = IcReq {
            pfv: 0,
            hpda: 0,
            digests: Digests {
                header: true,
                data: false,
            },
            maxr2t: 0,
        };
        assert_eq!(
            round_trip(
                PduHeader::IcReq(icreq),
                &[],
                Digests::default(),
                Role::Controller
            ),
            Pdu::IcReq(icreq)
        );
        let icresp = IcResp {
            pfv: 0,
            cpda: 0,
            digests: Digests::default(),
            maxh2cdata: 131072,
        };
        assert_eq!(
            round_trip(
                PduHeader::IcResp(icresp),
                &[],
                Digests::default(),
                Role::Host
            ),
            Pdu::IcResp(icresp)
        );
    }

    #[test]
    fn padding_follows_the_receivers_alignment() {
        let mut out = BytesMut::new();
        let hdr = DataHeader {
            cccid: 1,
            ttag: 0,
            datao: 0,
            datal: 4,
        };
        encode(
            &PduHeader::Data {
                h2c: false,
                hdr,
                last: true,
                success: false,
            },
            b"wxyz",
            Digests::default(),
            7,
            &mut out,
        );
        assert_eq!(out[3], 32); // pdo aligned to 32 bytes
        let dec = PduDecoder::new(Role::Host, 4096);
        let Some(Decoded::Pdu(Pdu::C2hData { data, .. })) = dec.decode(&mut out).unwrap() else {
            panic!()
        };
        assert_eq!(&data[..], b"wxyz");
    }

    #[test]
    fn malformed_headers_are_fatal_with_the_right_fes() {
        let dec = PduDecoder::new(Role::Controller, 8192);
        let mut cmd = BytesMut::new();
        encode(
            &PduHeader::CapsuleCmd(Command::new(2)),
            &[],
            Digests::default(),
            0,
            &mut cmd,
        );
        // wrong hlen
        let mut b = cmd.clone();
        b[2] = 70;
        assert_eq!(
            dec.decode(&mut b).unwrap_err().fes,
            fes::INVALID_HEADER_FIELD
        );
        // a host-bound PDU sent to the controller
        let mut b = cmd.clone();
        b[0] = pdu_type::R2T;
        assert_eq!(dec.decode(&mut b).unwrap_err().fei, 0);
        // unknown type
        let mut b = cmd.clone();
        b[0] = 0x42;
        assert!(dec.decode(&mut b).is_err());
        // header digest flag without negotiation
        let mut b = cmd.clone();
        b[1] |= flags::HDGST;
        assert!(dec.decode(&mut b).is_err());
        // plen smaller than the header
        let mut b = cmd.clone();
        b[4] = 10;
        assert!(dec.decode(&mut b).is_err());
        // plen too large
        let mut b = cmd.clone();
        b[4..8].copy_from_slice(&(1u32 << 30).to_le_bytes());
        assert_eq!(
            dec.decode(&mut b).unwrap_err().fes,
            fes::DATA_LIMIT_EXCEEDED
        );
        // header digest mismatch
        let mut dg = PduDecoder::new(Role::Controller, 8192);
        dg.digests.header = true;
        let mut b = BytesMut::new();
        encode(
            &PduHeader::CapsuleCmd(Command::new(2)),
            &[],
            Digests {
                header: true,
                data: false,
            },
            0,
            &mut b,
        );
        b[10] ^= 1;
        assert_eq!(dg.decode(&mut b).unwrap_err().fes, fes::HEADER_DIGEST_ERROR);
    }

    #[test]
    fn a_decoded_pdu_gives_back_the_header_it_was_sent_with() {
        let hdr = DataHeader {
            cccid: 3,
            ttag: 1,
            datao: 8,
            datal: 4,
        };
        let cmd = Command {
            cid: 3,
            dptr: SglDescriptor::in_capsule(4),
            ..Command::new(1)
        };
        let cases = [
            (PduHeader::CapsuleCmd(cmd), Role::Controller),
            (
                PduHeader::CapsuleResp(Completion::new(3, Status::INVALID_FIELD)),
                Role::Host,
            ),
            (
                PduHeader::Data {
                    h2c: true,
                    hdr,
                    last: true,
                    success: false,
                },
                Role::Controller,
            ),
            (
                PduHeader::R2t(R2t {
                    cccid: 3,
                    ttag: 2,
                    offset: 0,
                    length: 4096,
                }),
                Role::Host,
            ),
        ];
        for (h, role) in cases {
            let data: &[u8] = if h.data_digestible() { b"abcd" } else { &[] };
            let mut out = BytesMut::new();
            encode(&h, data, Digests::default(), 0, &mut out);
            let pdu = round_trip(h, data, Digests::default(), role);
            let hlen = header_len(out[0]).unwrap();
            assert_eq!(pdu.header_bytes(), out[..hlen], "{pdu:?}");
        }
    }

    #[test]
    fn term_requests_carry_no_digests_on_a_digest_connection() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let e = PduError {
            fes: fes::PDU_SEQUENCE_ERROR,
            fei: 0,
            reason: "test",
            header: Bytes::from_static(&[4, 0, 72, 0, 0, 0, 0, 0]),
        };
        let mut out = BytesMut::new();
        encode_term(&e, false, &mut out);
        // No HDGST/DDGST flags; plen = header + the offending bytes only.
        assert_eq!(out[1], 0);
        assert_eq!(
            u32_at(&out, 4) as usize,
            header_len(pdu_type::C2H_TERM_REQ).unwrap() + 8
        );
        let mut dec = PduDecoder::new(Role::Host, 1 << 20);
        dec.digests = dg;
        let mut buf = out.clone();
        match dec.decode(&mut buf) {
            Ok(Some(Decoded::Pdu(Pdu::C2hTermReq(t)))) => {
                assert_eq!(t.fes, fes::PDU_SEQUENCE_ERROR)
            }
            other => panic!("expected a C2HTermReq, got {other:?}"),
        }
        // A TermReq that has a header digest, and says so, is read too.
        let mut hdr = out[..header_len(pdu_type::C2H_TERM_REQ).unwrap()].to_vec();
        hdr[1] = flags::HDGST;
        let plen = u32_at(&out, 4) + 4;
        hdr[4..8].copy_from_slice(&plen.to_le_bytes());
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&hdr);
        buf.extend_from_slice(&digest(&hdr));
        buf.extend_from_slice(&e.header);
        assert!(matches!(
            dec.decode(&mut buf),
            Ok(Some(Decoded::Pdu(Pdu::C2hTermReq(_))))
        ));
    }

    #[test]
    fn data_digest_mismatch_is_reported_not_fatal() {
        let dg = Digests {
            header: false,
            data: true,
        };
        let mut b = BytesMut::new();
        encode(
            &PduHeader::CapsuleCmd(Command::new(1)),
            b"data",
            dg,
            0,
            &mut b,
        );
        let n = b.len();
        b[n - 5] ^= 0xff;
        let mut dec = PduDecoder::new(Role::Controller, 8192);
        dec.digests = dg;
        assert!(matches!(
            dec.decode(&mut b),
            Ok(Some(Decoded::BadDataDigest(_)))
        ));
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600), flags in 0u8..8) {
            let role = if flags & 1 == 0 { Role::Controller } else { Role::Host };
            let mut dec = PduDecoder::new(role, 4096);
            dec.digests = Digests { header: flags & 2 != 0, data: flags & 4 != 0 };
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..16 {
                match dec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }

        #[test]
        fn valid_headers_with_random_bodies_decode_or_fail_cleanly(t in 0u8..10, fl in 0u8..16, plen in 0u32..300, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let hlen = header_len(t).unwrap_or(24) as u8;
            let mut b = BytesMut::new();
            b.put_slice(&[t, fl, hlen, hlen, 0, 0, 0, 0]);
            b[4..8].copy_from_slice(&plen.to_le_bytes());
            b.put_slice(&body);
            let dec = PduDecoder::new(Role::Controller, 4096);
            let _ = dec.decode(&mut b);
        }
    }
}
