//! Identify: controller, namespace, active namespace list, namespace
//! identification descriptors, and the command set specific variants.

use crate::wire::fabrics::VERSION_1_4;
use crate::wire::identify::{
    cmic, encode_descriptors, encode_nsid_list, oaes, oncs, ControllerType, IdentifyController,
    IDENTIFY_LEN,
};
use crate::wire::opcode::cns;
use crate::wire::{Command, Status, NSID_ALL};

use super::queue::{Failure, Outcome, Queue, Session};
use super::request::{Op, Transfer};
use super::subsystem::{ANA_GROUPS, MAX_NAMESPACES};

/// CTRATT: 128-bit host identifier, traffic based keep alive.
const CTRATT: u32 = 1 << 0 | 1 << 6;
/// LPA: commands supported and effects log, extended Get Log Page data.
const LPA: u8 = 1 << 1 | 1 << 2;
/// ANACAP: every state reportable; group IDs do not change.
const ANACAP: u8 = 0x1f | 1 << 6;
/// VWC: a volatile write cache is present; Flush with NSID FFFFFFFFh works.
const VWC: u8 = 0x07;

pub(crate) fn parse(s: &Session, cmd: &Command) -> Result<(Op, Transfer), Failure> {
    let c = cmd.cdw10 as u8;
    let allowed = if s.ctrl.is_discovery() {
        c == cns::CONTROLLER
    } else {
        matches!(
            c,
            cns::NAMESPACE
                | cns::CONTROLLER
                | cns::ACTIVE_NAMESPACES
                | cns::NAMESPACE_DESCRIPTORS
                | cns::CS_NAMESPACE
                | cns::CS_CONTROLLER
                | cns::CS_ACTIVE_NAMESPACES
        )
    };
    if !allowed {
        return Err(Status::INVALID_FIELD.into());
    }
    let op = Op::Identify {
        cns: c,
        cntid: (cmd.cdw10 >> 16) as u16,
        csi: (cmd.cdw11 >> 24) as u8,
    };
    Ok((op, Transfer::ToHost(IDENTIFY_LEN as u32)))
}

pub(crate) fn execute(
    q: &Queue,
    s: &Session,
    cmd: &Command,
    c: u8,
    _cntid: u16,
    csi: u8,
) -> Result<Outcome, Failure> {
    let sub = &s.ctrl.subsystem;
    let nsid = cmd.nsid;
    match c {
        cns::CONTROLLER => Ok(Outcome::data(identify_controller(q, s).encode())),
        cns::NAMESPACE => {
            if nsid == 0 || nsid == NSID_ALL || nsid > MAX_NAMESPACES {
                return Err(Status::INVALID_NAMESPACE.into());
            }
            // An inactive NSID reads as zeroes.
            Ok(Outcome::data(sub.namespace(nsid).map_or_else(
                || vec![0; IDENTIFY_LEN],
                |ns| ns.identify().encode(),
            )))
        }
        cns::ACTIVE_NAMESPACES | cns::CS_ACTIVE_NAMESPACES => {
            if nsid >= 0xffff_fffe || (c == cns::CS_ACTIVE_NAMESPACES && csi != 0) {
                return Err(Status::INVALID_NAMESPACE.into());
            }
            let ids = sub
                .namespaces()
                .into_iter()
                .map(|n| n.nsid)
                .filter(|&id| id > nsid);
            Ok(Outcome::data(encode_nsid_list(ids)))
        }
        cns::NAMESPACE_DESCRIPTORS => {
            let ns = sub
                .namespace(nsid)
                .ok_or(Failure::from(Status::INVALID_NAMESPACE))?;
            Ok(Outcome::data(encode_descriptors(&ns.descriptors())))
        }
        cns::CS_NAMESPACE => {
            if csi != 0 {
                return Err(Status::INVALID_FIELD.into());
            }
            sub.namespace(nsid)
                .ok_or(Failure::from(Status::INVALID_NAMESPACE))?;
            Ok(Outcome::data(vec![0; IDENTIFY_LEN]))
        }
        cns::CS_CONTROLLER => {
            if csi != 0 {
                return Err(Status::INVALID_FIELD.into());
            }
            Ok(Outcome::data(vec![0; IDENTIFY_LEN]))
        }
        _ => Err(Status::INVALID_FIELD.into()),
    }
}

fn identify_controller(q: &Queue, s: &Session) -> IdentifyController {
    let ctrl = &s.ctrl;
    let sub = &ctrl.subsystem;
    let limits = ctrl.limits;
    let mdts = (limits.max_transfer / 4096).trailing_zeros() as u8;
    let discovery = ctrl.is_discovery();
    let mut sgls = 1u32; // SGLs supported, byte aligned
    if limits.keyed_sgls {
        sgls |= 1 << 2;
    }
    if limits.inline_data_size > 0 {
        sgls |= 1 << 20; // offset addressing of in-capsule data
    }
    IdentifyController {
        vid: 0,
        serial: sub.serial.clone(),
        model: sub.model.clone(),
        firmware: env!("CARGO_PKG_VERSION").into(),
        ieee: [0; 3],
        cmic: if discovery {
            0
        } else {
            cmic::MULTI_PORT | cmic::MULTI_CONTROLLER | cmic::ANA
        },
        mdts,
        cntlid: ctrl.cntlid,
        version: VERSION_1_4,
        oaes: if discovery {
            oaes::DISCOVERY_CHANGE
        } else {
            oaes::NAMESPACE_ATTRIBUTE | oaes::ANA_CHANGE
        },
        ctratt: CTRATT,
        cntrltype: if discovery {
            ControllerType::Discovery
        } else {
            ControllerType::Io
        } as u8,
        oacs: 0,
        acl: 3,
        aerl: (super::controller::MAX_AERS - 1) as u8,
        frmw: 0x03,
        lpa: LPA,
        elpe: (super::controller::ERROR_LOG_ENTRIES - 1) as u8,
        wctemp: 343,
        cctemp: 373,
        kas: 1,
        anatt: if discovery { 0 } else { 10 },
        anacap: if discovery { 0 } else { ANACAP },
        anagrpmax: if discovery { 0 } else { ANA_GROUPS },
        nanagrpid: if discovery { 0 } else { ANA_GROUPS },
        sqes: 0x66,
        cqes: 0x44,
        maxcmd: limits.max_queue_entries,
        nn: if discovery { 0 } else { MAX_NAMESPACES },
        oncs: if discovery {
            0
        } else {
            oncs::DSM | oncs::WRITE_ZEROES
        },
        vwc: if discovery { 0 } else { VWC },
        sgls,
        mnan: if discovery { 0 } else { MAX_NAMESPACES },
        subnqn: sub.nqn.clone(),
        ioccsz: (64 + q.caps.inline_data_size) / 16,
        iorcsz: 1,
        icdoff: 0,
        fcatt: 0,
        msdbd: limits.sgl_descriptors,
    }
}
