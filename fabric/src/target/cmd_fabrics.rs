//! Fabrics commands: Connect, Property Get/Set and Disconnect.

use bytes::Bytes;

use crate::wire::fabrics::{
    connect_cmd_offset, connect_data_offset, connect_error_location, property, Capabilities,
    ConnectCommand, ConnectData, PropertyCommand, CATTR_DISABLE_SQ_FLOW, CONNECT_DATA_LEN,
    VERSION_1_4,
};
use crate::wire::opcode::fctype;
use crate::wire::{Command, Status, CNTLID_DYNAMIC, DISCOVERY_NQN};

use super::controller::{Controller, HostIdentity, DISCOVERY_DEFAULT_KATO_MS};
use super::queue::{Failure, Outcome, Queue, Session};
use super::request::{Op, Transfer};

pub(crate) fn parse(
    _q: &Queue,
    session: Option<&Session>,
    cmd: &Command,
) -> Result<(Op, Transfer), Failure> {
    let admin = session.map(|s| s.qid == 0);
    match cmd.fctype() {
        fctype::CONNECT => {
            if session.is_some() {
                return Err(Status::COMMAND_SEQUENCE_ERROR.into());
            }
            Ok((
                Op::Connect(ConnectCommand::from_command(cmd)),
                Transfer::ToController(CONNECT_DATA_LEN as u32),
            ))
        }
        fctype::PROPERTY_GET | fctype::PROPERTY_SET => match admin {
            None => Err(Status::COMMAND_SEQUENCE_ERROR.into()),
            Some(false) => Err(Status::INVALID_OPCODE.into()),
            Some(true) if !PropertyCommand::size_valid(cmd) => Err(Status::INVALID_FIELD.into()),
            Some(true) => {
                let p = PropertyCommand::from_command(cmd);
                let op = if cmd.fctype() == fctype::PROPERTY_GET {
                    Op::PropertyGet(p)
                } else {
                    Op::PropertySet(p)
                };
                Ok((op, Transfer::None))
            }
        },
        fctype::DISCONNECT => match admin {
            None => Err(Status::COMMAND_SEQUENCE_ERROR.into()),
            Some(true) => Err(Status::INVALID_FIELD.into()),
            Some(false) => Ok((Op::Disconnect, Transfer::None)),
        },
        _ => match admin {
            None => Err(Status::COMMAND_SEQUENCE_ERROR.into()),
            Some(_) => Err(Status::INVALID_OPCODE.into()),
        },
    }
}

fn invalid(offset: u16, in_data: bool) -> Failure {
    Failure {
        status: Status::CONNECT_INVALID_PARAMETERS,
        result: connect_error_location(offset, in_data),
    }
}

pub(crate) async fn connect(
    q: &Queue,
    _cmd: &Command,
    c: ConnectCommand,
    data: Option<Bytes>,
) -> Result<Outcome, Failure> {
    let raw = data.unwrap_or_default();
    let d = ConnectData::decode(&raw).ok_or(Failure::from(Status::SGL_INVALID_DATA_LENGTH))?;
    if c.recfmt != 0 {
        return Err(Failure {
            status: Status::CONNECT_INCOMPATIBLE_FORMAT,
            result: connect_error_location(connect_cmd_offset::RECFMT, false),
        });
    }
    if !ConnectData::nqns_terminated(&raw) {
        return Err(invalid(connect_data_offset::SUBNQN, true));
    }
    // The discovery subsystem answers only on ports that serve it.
    let served = d.subnqn != DISCOVERY_NQN || q.port.discovery;
    let Some(sub) = q.target.subsystem(&d.subnqn).filter(|_| served) else {
        tracing::info!(subnqn = %d.subnqn, hostnqn = %d.hostnqn, "connect to unknown subsystem");
        return Err(invalid(connect_data_offset::SUBNQN, true));
    };
    if d.hostnqn.is_empty() {
        return Err(invalid(connect_data_offset::HOSTNQN, true));
    }
    if !sub.host_allowed(&d.hostnqn) {
        tracing::info!(subnqn = %d.subnqn, hostnqn = %d.hostnqn, "connect from a host not allowed");
        return Err(Failure {
            status: Status::CONNECT_INVALID_HOST,
            result: connect_error_location(connect_data_offset::HOSTNQN, true),
        });
    }
    let limits = q.target.limits(&q.caps);
    if c.sqsize == 0 || c.sqsize as u32 + 1 > limits.max_queue_entries as u32 {
        return Err(invalid(connect_cmd_offset::SQSIZE, false));
    }
    let sq_flow_disabled = c.cattr & CATTR_DISABLE_SQ_FLOW != 0;
    let ctrl = if c.qid == 0 {
        if d.cntlid != CNTLID_DYNAMIC {
            return Err(invalid(connect_data_offset::CNTLID, true));
        }
        let host = HostIdentity {
            nqn: d.hostnqn.clone(),
            id: d.hostid,
        };
        let token = q.target.shutdown_token().child_token();
        let kato_ms = if sub.is_discovery && c.kato_ms == 0 {
            DISCOVERY_DEFAULT_KATO_MS
        } else {
            c.kato_ms
        };
        let ctrl = sub
            .register_controller(|id| {
                Controller::new(
                    id,
                    sub.clone(),
                    q.port.clone(),
                    host,
                    kato_ms,
                    limits,
                    token,
                )
            })
            .ok_or(Failure::from(Status::CONNECT_CONTROLLER_BUSY))?;
        // The host's access revoked, or the subsystem removed, between the
        // checks above and the registration: the revocation's sweep of the
        // controllers may have run before this one was registered. Each
        // side changes its state before it looks at the other's, so one of
        // them sees the other.
        let still_exported = q
            .target
            .subsystem(&d.subnqn)
            .is_some_and(|s| std::sync::Arc::ptr_eq(&s, &sub));
        if !still_exported {
            ctrl.shutdown("subsystem removed during Connect");
            return Err(invalid(connect_data_offset::SUBNQN, true));
        }
        if !sub.host_allowed(&d.hostnqn) {
            ctrl.shutdown("host access revoked during Connect");
            return Err(Failure {
                status: Status::CONNECT_INVALID_HOST,
                result: connect_error_location(connect_data_offset::HOSTNQN, true),
            });
        }
        tracing::info!(cntlid = ctrl.cntlid, subnqn = %sub.nqn, hostnqn = %d.hostnqn, port = q.port.id, kato_ms, "controller created");
        ctrl
    } else {
        if sub.is_discovery {
            return Err(invalid(connect_cmd_offset::QID, false));
        }
        match sub.controller(d.cntlid) {
            Some(ctrl)
                if ctrl.host.nqn == d.hostnqn && ctrl.host.id == d.hostid && !ctrl.is_dead() =>
            {
                ctrl
            }
            _ => return Err(invalid(connect_data_offset::CNTLID, true)),
        }
    };
    if let Err(status) = ctrl.attach_queue(c.qid, q.token().clone()) {
        if c.qid == 0 {
            ctrl.shutdown("admin queue attach failed");
        }
        return Err(if status == Status::CONNECT_INVALID_PARAMETERS {
            invalid(connect_cmd_offset::QID, false)
        } else {
            status.into()
        });
    }
    let session = Session {
        ctrl: ctrl.clone(),
        qid: c.qid,
        sqsize: c.sqsize,
        sq_flow_disabled,
    };
    // A connection that closed before this Connect ran (a malformed PDU or
    // the host's close right behind it) has already run its clean-up, which
    // found no session: undo the attach here, or the queue ID (and, for an
    // admin queue, the controller) would stay taken for good.
    if !q.set_session(session) || q.token().is_cancelled() {
        ctrl.detach_queue(c.qid);
        return Err(Status::COMMAND_SEQUENCE_ERROR.into());
    }
    if c.qid == 0 {
        ctrl.start_keep_alive();
    }
    ctrl.touch();
    Ok(Outcome::result(ctrl.cntlid as u64))
}

pub(crate) fn property_get(s: &Session, p: PropertyCommand) -> Result<Outcome, Failure> {
    let ctrl = &s.ctrl;
    let value = match (p.offset, p.eight_bytes) {
        (property::CAP, true) => Capabilities {
            mqes: ctrl.limits.max_queue_entries - 1,
            timeout_500ms: 30,
        }
        .encode(),
        (property::VS, false) => VERSION_1_4 as u64,
        (property::CC, false) => ctrl.cc() as u64,
        (property::CSTS, false) => ctrl.csts() as u64,
        _ => return Err(Status::INVALID_FIELD.into()),
    };
    Ok(Outcome::result(value))
}

pub(crate) fn property_set(s: &Session, p: PropertyCommand) -> Result<Outcome, Failure> {
    match (p.offset, p.eight_bytes) {
        (property::CC, false) => {
            s.ctrl.write_cc(p.value as u32);
            Ok(Outcome::none())
        }
        _ => Err(Status::INVALID_FIELD.into()),
    }
}
