//! Get Features and Set Features.

use bytes::Bytes;

use crate::wire::identify::oaes;
use crate::wire::opcode::{admin, feature};
use crate::wire::{Command, Status};

use super::queue::{Failure, Outcome, Session};
use super::request::{Op, Transfer};

/// SEL value of Get Features asking for the supported capabilities.
const SELECT_CAPABILITIES: u8 = 3;
/// Capability bit: the feature is changeable.
const CAP_CHANGEABLE: u64 = 1 << 2;

/// Features this controller answers. Interrupt Coalescing and Interrupt
/// Vector Configuration are prohibited on fabrics (Invalid Field, as the
/// Linux target answers).
fn known(discovery: bool, fid: u8) -> bool {
    if discovery {
        return matches!(fid, feature::ASYNC_EVENT_CONFIG | feature::KEEP_ALIVE_TIMER);
    }
    matches!(
        fid,
        feature::ARBITRATION
            | feature::POWER_MANAGEMENT
            | feature::TEMPERATURE_THRESHOLD
            | feature::ERROR_RECOVERY
            | feature::VOLATILE_WRITE_CACHE
            | feature::NUMBER_OF_QUEUES
            | feature::WRITE_ATOMICITY
            | feature::ASYNC_EVENT_CONFIG
            | feature::KEEP_ALIVE_TIMER
            | feature::HOST_IDENTIFIER
    )
}

fn changeable(fid: u8) -> bool {
    matches!(
        fid,
        feature::VOLATILE_WRITE_CACHE
            | feature::NUMBER_OF_QUEUES
            | feature::ASYNC_EVENT_CONFIG
            | feature::KEEP_ALIVE_TIMER
    )
}

pub(crate) fn parse(s: &Session, cmd: &Command) -> Result<(Op, Transfer), Failure> {
    let fid = cmd.cdw10 as u8;
    if !known(s.ctrl.is_discovery(), fid) {
        return Err(Status::INVALID_FIELD.into());
    }
    if cmd.opcode == admin::GET_FEATURES {
        let select = ((cmd.cdw10 >> 8) & 7) as u8;
        if select > SELECT_CAPABILITIES {
            return Err(Status::INVALID_FIELD.into());
        }
        let transfer = if fid == feature::HOST_IDENTIFIER && select != SELECT_CAPABILITIES {
            // Only the extended (128-bit) host identifier exists on fabrics.
            if cmd.cdw11 & 1 == 0 {
                return Err(Status::INVALID_FIELD.into());
            }
            Transfer::ToHost(16)
        } else {
            Transfer::None
        };
        Ok((Op::GetFeatures { fid, select }, transfer))
    } else {
        Ok((
            Op::SetFeatures {
                fid,
                save: cmd.cdw10 & (1 << 31) != 0,
            },
            Transfer::None,
        ))
    }
}

pub(crate) fn get(s: &Session, _cmd: &Command, fid: u8, select: u8) -> Result<Outcome, Failure> {
    let ctrl = &s.ctrl;
    if select == SELECT_CAPABILITIES {
        return Ok(Outcome::result(if changeable(fid) {
            CAP_CHANGEABLE
        } else {
            0
        }));
    }
    let default = select != 0;
    let value: u64 = match fid {
        feature::TEMPERATURE_THRESHOLD => 343,
        feature::VOLATILE_WRITE_CACHE => (default || ctrl.write_cache()) as u64,
        feature::NUMBER_OF_QUEUES => {
            let n = if default {
                ctrl.limits.max_io_queues
            } else {
                ctrl.io_queues()
            } as u64
                - 1;
            n | n << 16
        }
        feature::ASYNC_EVENT_CONFIG => {
            if default {
                0
            } else {
                ctrl.aen_config() as u64
            }
        }
        feature::KEEP_ALIVE_TIMER => ctrl.kato_ms() as u64,
        feature::HOST_IDENTIFIER => return Ok(Outcome::data(ctrl.host.id.to_vec())),
        _ => 0,
    };
    Ok(Outcome::result(value))
}

pub(crate) fn set(
    s: &Session,
    cmd: &Command,
    fid: u8,
    save: bool,
    _data: Option<Bytes>,
) -> Result<Outcome, Failure> {
    let ctrl = &s.ctrl;
    if save {
        return Err(Status::FEATURE_NOT_SAVEABLE.into());
    }
    match fid {
        feature::NUMBER_OF_QUEUES => {
            let (nsqr, ncqr) = (cmd.cdw11 & 0xffff, cmd.cdw11 >> 16);
            if nsqr == 0xffff || ncqr == 0xffff {
                return Err(Status::INVALID_FIELD.into());
            }
            let n = ctrl.grant_io_queues(nsqr.min(ncqr) + 1) as u64 - 1;
            Ok(Outcome::result(n | n << 16))
        }
        feature::ASYNC_EVENT_CONFIG => {
            let supported = if ctrl.is_discovery() {
                oaes::DISCOVERY_CHANGE
            } else {
                oaes::NAMESPACE_ATTRIBUTE | oaes::ANA_CHANGE
            };
            ctrl.set_aen_config(cmd.cdw11 & supported);
            Ok(Outcome::none())
        }
        feature::KEEP_ALIVE_TIMER => {
            ctrl.set_kato_ms(cmd.cdw11);
            Ok(Outcome::none())
        }
        feature::VOLATILE_WRITE_CACHE => {
            ctrl.set_write_cache(cmd.cdw11 & 1 != 0);
            Ok(Outcome::none())
        }
        feature::HOST_IDENTIFIER => Err(Status::COMMAND_SEQUENCE_ERROR.into()),
        _ => Err(Status::FEATURE_NOT_CHANGEABLE.into()),
    }
}
