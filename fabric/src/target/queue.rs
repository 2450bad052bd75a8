//! One queue (one transport connection): the two-step life of every command.
//!
//! 1. [`Queue::prepare`] parses and validates a command and says what data
//!    the transport must move ([`Transfer`]), or fails it with a status.
//! 2. The transport fetches host data if any, then awaits
//!    [`Queue::execute`], which runs the command and gives the completion
//!    and any data for the host.
//!
//! Commands of one queue may execute concurrently; the transport keeps them
//! in flight up to the queue depth.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::wire::command::PSDT_SGL;
use crate::wire::opcode::{admin, FABRICS};
use crate::wire::{Command, Completion, Status};

use super::controller::Controller;
use super::port::Port;
use super::request::{Op, Request, Response, Transfer};
use super::{cmd_admin, cmd_fabrics, cmd_io, Target, TransportCaps};

/// In-capsule data accepted on an admin queue (Connect data and more).
pub const ADMIN_INLINE_DATA: u32 = 8192;

/// What a connected queue belongs to.
pub(crate) struct Session {
    pub ctrl: Arc<Controller>,
    pub qid: u16,
    pub sqsize: u16,
    pub sq_flow_disabled: bool,
}

/// The result of executing a command: its completion dwords and data.
pub(crate) struct Outcome {
    pub result: u64,
    pub data: Option<Bytes>,
    pub close_queue: bool,
}

impl Outcome {
    pub fn none() -> Outcome {
        Outcome {
            result: 0,
            data: None,
            close_queue: false,
        }
    }
    pub fn result(result: u64) -> Outcome {
        Outcome {
            result,
            data: None,
            close_queue: false,
        }
    }
    pub fn data(data: Vec<u8>) -> Outcome {
        Outcome {
            result: 0,
            data: Some(Bytes::from(data)),
            close_queue: false,
        }
    }
}

/// The status of a failed command and the result dword to report with it.
pub(crate) struct Failure {
    pub status: Status,
    pub result: u32,
}

impl From<Status> for Failure {
    fn from(status: Status) -> Failure {
        Failure { status, result: 0 }
    }
}

/// Why a transport closes a connection when
/// [`Queue::stalled_past_keep_alive`] says so.
pub const STALLED: &str = "controller gone or process stalled past the keep-alive timeout";

/// A queue of the target core, driven by one transport connection.
pub struct Queue {
    pub(crate) target: Arc<Target>,
    pub(crate) port: Arc<Port>,
    pub(crate) caps: TransportCaps,
    session: OnceLock<Session>,
    sq_head: AtomicU32,
    token: CancellationToken,
    connect_deadline: tokio::time::Instant,
}

impl Queue {
    /// A new, unconnected queue on `port`.
    pub fn new(target: Arc<Target>, port: Arc<Port>, caps: TransportCaps) -> Arc<Queue> {
        let token = target.shutdown_token().child_token();
        let connect_deadline = tokio::time::Instant::now() + target.config().connect_timeout;
        Arc::new(Queue {
            target,
            port,
            caps,
            session: OnceLock::new(),
            sq_head: AtomicU32::new(0),
            token,
            connect_deadline,
        })
    }

    /// Completes once the target's connect timeout has passed since the
    /// queue was created without a successful Connect (never, once
    /// connected). Transports close such a connection, so that a peer that
    /// never sends Connect cannot hold a connection and its task for ever.
    pub async fn connect_timed_out(&self) {
        tokio::time::sleep_until(self.connect_deadline).await;
        if self.session.get().is_some() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether the transport must close this connection instead of running
    /// the commands it just received: the controller is gone, or this
    /// process stalled for long enough that the host may have given up on
    /// the controller (see [`Controller::stalled_past_keep_alive`]). Asked
    /// once per batch of received data, after a wait.
    pub fn stalled_past_keep_alive(&self) -> bool {
        self.session
            .get()
            .is_some_and(|s| s.ctrl.stalled_past_keep_alive())
    }

    /// Cancelled when the connection must close (controller torn down,
    /// target shutting down).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Queue ID once connected.
    pub fn qid(&self) -> Option<u16> {
        self.session.get().map(|s| s.qid)
    }

    /// The controller once connected.
    pub fn controller(&self) -> Option<&Arc<Controller>> {
        self.session.get().map(|s| &s.ctrl)
    }

    /// Whether the host disabled SQ flow control (then C2HData may carry
    /// the SUCCESS flag instead of a response capsule).
    pub fn sq_flow_disabled(&self) -> bool {
        self.session.get().is_some_and(|s| s.sq_flow_disabled)
    }

    /// In-capsule data this queue accepts.
    pub fn max_inline_data(&self) -> u32 {
        match self.qid() {
            Some(q) if q > 0 => self.caps.inline_data_size,
            _ => ADMIN_INLINE_DATA.max(self.caps.inline_data_size),
        }
    }

    /// Largest data transfer of one command.
    pub fn max_transfer(&self) -> u32 {
        self.target.config().max_transfer
    }

    /// Queue entries (SQSIZE + 1) once connected.
    pub fn depth(&self) -> Option<u32> {
        self.session.get().map(|s| s.sqsize as u32 + 1)
    }

    /// Commands a connection may have outstanding (received, response not
    /// yet handed to the wire) before the host is breaking the protocol:
    /// twice the queue depth, the slack the Linux target allows (a host may
    /// reuse a slot as soon as it sees the response, before the transport
    /// has finished with it), or twice `before_connect` entries while the
    /// queue is not connected. A transport closes a connection that goes
    /// over it, so that a host cannot make the target hold unbounded work.
    pub fn max_outstanding(&self, before_connect: u32) -> usize {
        2 * self.depth().unwrap_or(before_connect).max(1) as usize
    }

    pub(crate) fn set_session(&self, s: Session) -> bool {
        self.session.set(s).is_ok()
    }

    /// The connection ended: release the queue ID; the admin queue's end
    /// tears its controller down.
    pub fn close(&self) {
        if let Some(s) = self.session.get() {
            s.ctrl.detach_queue(s.qid);
        }
        self.token.cancel();
    }

    fn next_sq_head(&self) -> u16 {
        let depth = self.depth().unwrap_or(32);
        let head = self.sq_head.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        (head % depth) as u16
    }

    fn completion(&self, cid: u16, status: Status, result: u64, sq_head: u16) -> Completion {
        Completion {
            result: result as u32,
            result_hi: (result >> 32) as u32,
            sq_head,
            sq_id: self.qid().unwrap_or(0),
            cid,
            status,
        }
    }

    /// Fail command `cmd` with `status` (for errors the transport finds,
    /// such as an unsupported SGL type), recording it in the error log.
    pub fn fail(&self, cmd: &Command, status: Status) -> Response {
        self.fail_with(cmd, Failure { status, result: 0 }, self.next_sq_head())
    }

    fn fail_with(&self, cmd: &Command, f: Failure, sq_head: u16) -> Response {
        if let Some(s) = self.session.get() {
            if cmd.opcode != admin::ASYNC_EVENT_REQUEST || s.qid != 0 {
                s.ctrl
                    .record_error(s.qid, cmd.cid, f.status, cmd.nsid, cmd.slba());
            }
        }
        tracing::debug!(opcode = cmd.opcode, cid = cmd.cid, status = %f.status, "command failed");
        Response::completion(self.completion(cmd.cid, f.status, f.result as u64, sq_head))
    }

    /// Parse and validate `cmd`, whose data pointer describes `sgl_len`
    /// bytes. On success the transport moves `request.transfer` and calls
    /// [`Queue::execute`]; on failure it sends the response.
    pub fn prepare(&self, cmd: Command, sgl_len: u32) -> Result<Request, Response> {
        let head = self.next_sq_head();
        let session = self.session.get();
        if let Some(s) = session {
            s.ctrl.touch();
        }
        let parsed = if cmd.psdt() != PSDT_SGL || cmd.fuse() != 0 {
            Err(Failure::from(Status::INVALID_FIELD))
        } else if cmd.opcode == FABRICS {
            cmd_fabrics::parse(self, session, &cmd)
        } else {
            match session {
                None => Err(Status::COMMAND_SEQUENCE_ERROR.into()),
                Some(s) if s.qid == 0 => cmd_admin::parse(self, s, &cmd),
                Some(s) => cmd_io::parse(self, s, &cmd, sgl_len),
            }
        };
        let (op, transfer) = parsed.map_err(|f| self.fail_with(&cmd, f, head))?;
        let len = transfer.len();
        if len > self.max_transfer() {
            return Err(self.fail_with(&cmd, Status::INVALID_FIELD.into(), head));
        }
        if len != sgl_len {
            return Err(self.fail_with(&cmd, Status::SGL_INVALID_DATA_LENGTH.into(), head));
        }
        Ok(Request {
            cmd,
            transfer,
            op,
            sq_head: head,
            buffer: None,
        })
    }

    /// Execute a prepared request; `data` holds the host's data when the
    /// request's transfer is [`Transfer::ToController`].
    pub async fn execute(self: Arc<Self>, req: Request, data: Option<Bytes>) -> Response {
        let Request {
            cmd,
            transfer,
            op,
            sq_head,
            buffer,
        } = req;
        let data = match (transfer, data) {
            (Transfer::ToController(n), Some(d)) if d.len() >= n as usize => {
                Some(d.slice(..n as usize))
            }
            (Transfer::ToController(_), _) => {
                return self.fail_with(&cmd, Status::DATA_TRANSFER_ERROR.into(), sq_head);
            }
            _ => None,
        };
        let outcome = match op {
            Op::Connect(c) => cmd_fabrics::connect(&self, &cmd, c, data).await,
            op => match self.session.get() {
                None => Err(Status::COMMAND_SEQUENCE_ERROR.into()),
                Some(s) => match op {
                    Op::Connect(_) => unreachable!("handled above"),
                    Op::PropertyGet(p) => cmd_fabrics::property_get(s, p),
                    Op::PropertySet(p) => cmd_fabrics::property_set(s, p),
                    Op::Disconnect => Ok(Outcome {
                        close_queue: true,
                        ..Outcome::none()
                    }),
                    Op::Read { .. }
                    | Op::Write { .. }
                    | Op::Flush { .. }
                    | Op::WriteZeroes { .. }
                    | Op::DatasetManagement { .. } => {
                        cmd_io::execute(s, &cmd, op, data, buffer).await
                    }
                    op => cmd_admin::execute(&self, s, &cmd, op, data).await,
                },
            },
        };
        match outcome {
            Ok(o) => {
                let data = match (transfer, o.data) {
                    (Transfer::ToHost(n), Some(mut d)) => {
                        if d.len() < n as usize {
                            let mut v = d.to_vec();
                            v.resize(n as usize, 0);
                            d = Bytes::from(v);
                        }
                        Some(d.slice(..n as usize))
                    }
                    _ => None,
                };
                Response {
                    cqe: self.completion(cmd.cid, Status::SUCCESS, o.result, sq_head),
                    data,
                    close_queue: o.close_queue,
                }
            }
            Err(f) => self.fail_with(&cmd, f, sq_head),
        }
    }
}
