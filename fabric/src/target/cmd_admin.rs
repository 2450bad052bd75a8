//! Admin command dispatch, and the small commands: Keep Alive, Abort and
//! Asynchronous Event Request.

use bytes::Bytes;

use crate::wire::opcode::admin;
use crate::wire::{Command, Status};

use super::queue::{Failure, Outcome, Queue, Session};
use super::request::{Op, Transfer};
use super::{cmd_features, cmd_identify, cmd_log_page};

pub(crate) fn parse(q: &Queue, s: &Session, cmd: &Command) -> Result<(Op, Transfer), Failure> {
    match cmd.opcode {
        admin::IDENTIFY => cmd_identify::parse(s, cmd),
        admin::GET_LOG_PAGE => cmd_log_page::parse(q, s, cmd),
        admin::SET_FEATURES | admin::GET_FEATURES => cmd_features::parse(s, cmd),
        admin::ASYNC_EVENT_REQUEST => Ok((Op::AsyncEventRequest, Transfer::None)),
        admin::KEEP_ALIVE => Ok((Op::KeepAlive, Transfer::None)),
        admin::ABORT if !s.ctrl.is_discovery() => Ok((Op::Abort, Transfer::None)),
        _ => Err(Status::INVALID_OPCODE.into()),
    }
}

pub(crate) async fn execute(
    q: &Queue,
    s: &Session,
    cmd: &Command,
    op: Op,
    data: Option<Bytes>,
) -> Result<Outcome, Failure> {
    match op {
        Op::KeepAlive => Ok(Outcome::none()),
        // Commands complete as they arrive: there is never one to abort.
        Op::Abort => Ok(Outcome::result(1)),
        Op::AsyncEventRequest => {
            let rx = s.ctrl.wait_event()?;
            tokio::select! {
                dw0 = rx => dw0.map(|d| Outcome::result(d as u64)).map_err(|_| Status::ABORTED_SQ_DELETION.into()),
                _ = q.token().cancelled() => Err(Status::ABORTED_SQ_DELETION.into()),
            }
        }
        Op::Identify { cns, cntid, csi } => cmd_identify::execute(q, s, cmd, cns, cntid, csi),
        Op::GetLogPage(g) => cmd_log_page::execute(q, s, cmd, g),
        Op::SetFeatures { fid, save } => cmd_features::set(s, cmd, fid, save, data),
        Op::GetFeatures { fid, select } => cmd_features::get(s, cmd, fid, select),
        _ => Err(Status::INVALID_OPCODE.into()),
    }
}
