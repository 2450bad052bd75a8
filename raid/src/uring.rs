//! io_uring submission and completion, integrated with tokio.
//!
//! One [`Ring`] per open file. Callers submit under a short lock; a reaper
//! task wakes when the ring's fd becomes readable (completions posted), hands
//! each result to its waiting future and submits any backlog. Every buffer
//! and the file itself are owned by the in-flight operation until its
//! completion is reaped, so a dropped future never leaves the kernel writing
//! into freed memory or into a reused fd.
//!
//! This is the only module of the crate with `unsafe` code.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{oneshot, Notify};

/// What an in-flight operation keeps alive until the kernel is done with it.
enum Keep {
    Nothing,
    Read(BytesMut),
    Write(Bytes),
}

struct Op {
    tx: Option<oneshot::Sender<Done>>,
    keep: Keep,
    _file: Arc<File>,
}

/// The kernel's result and, for reads, the filled buffer.
struct Done {
    result: i32,
    buf: Option<BytesMut>,
}

struct Inner {
    ring: IoUring,
    ops: Slab<Op>,
    backlog: VecDeque<squeue::Entry>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the reaper: the ring was closed, or a submit failed.
    wake: Notify,
    is_closed: std::sync::atomic::AtomicBool,
}

/// An io_uring instance with its reaper task.
pub(crate) struct Ring {
    shared: Arc<Shared>,
}

/// The ring's fd for the reactor; holds the ring (and so its fd) alive.
struct RingFd {
    fd: RawFd,
    _owner: Arc<Shared>,
}

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl Ring {
    /// A ring of `entries` submission slots; must be called inside a tokio
    /// runtime (the reaper runs on it).
    pub(crate) fn new(entries: u32) -> io::Result<Ring> {
        let ring = IoUring::new(entries)?;
        let raw = ring.as_raw_fd();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                ring,
                ops: Slab::new(),
                backlog: VecDeque::new(),
            }),
            wake: Notify::new(),
            is_closed: std::sync::atomic::AtomicBool::new(false),
        });
        let owner = RingFd {
            fd: raw,
            _owner: shared.clone(),
        };
        // SAFETY: `raw` is the io_uring fd owned by `shared.inner.ring`, which
        // `owner` keeps alive (and so open, and the same fd) for as long as
        // the AsyncFd exists.
        let fd = unsafe { AsyncFd::register_with_interest(owner, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        tokio::spawn(reap(shared.clone(), fd));
        Ok(Ring { shared })
    }

    /// Queue an operation and submit the queue. An entry, once queued,
    /// may reach the kernel with any later submit, so its op (and the
    /// memory it names) stays until its completion is reaped even when
    /// this submit fails: the reaper submits again (see [`reap`]).
    fn submit(
        &self,
        keep: Keep,
        file: &Arc<File>,
        make: impl FnOnce(&mut Keep) -> squeue::Entry,
    ) -> oneshot::Receiver<Done> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.shared.lock();
        let key = inner.ops.insert(Op {
            tx: Some(tx),
            keep,
            _file: file.clone(),
        });
        let op = &mut inner.ops[key];
        let entry = make(&mut op.keep).user_data(key as u64);
        let inner = &mut *inner;
        // SAFETY: the entry refers to memory owned by `inner.ops[key].keep`
        // (heap data that does not move when the Op moves) and to the fd of
        // `inner.ops[key]._file`; both live in the slab until the reaper
        // removes the op after its completion arrives.
        let pushed = unsafe { inner.ring.submission().push(&entry) };
        if pushed.is_err() {
            inner.backlog.push_back(entry);
        }
        if let Err(e) = inner.ring.submit() {
            tracing::debug!(error = %e, "io_uring submit failed; the reaper submits again");
            self.shared.wake.notify_one();
        }
        rx
    }

    async fn wait(rx: oneshot::Receiver<Done>) -> io::Result<Done> {
        let done = rx
            .await
            .map_err(|_| io::Error::other("io_uring reaper stopped"))?;
        if done.result < 0 {
            return Err(io::Error::from_raw_os_error(-done.result));
        }
        Ok(done)
    }

    /// Read `buf.len()` bytes at `offset`; a short read (end of file) fails.
    pub(crate) async fn read(
        &self,
        file: &Arc<File>,
        offset: u64,
        buf: BytesMut,
    ) -> io::Result<BytesMut> {
        let fd = types::Fd(file.as_raw_fd());
        let len = buf.len();
        let mut filled = 0usize;
        let mut buf = buf;
        while filled < len {
            let at = filled;
            let rx = self.submit(Keep::Read(buf), file, |keep| {
                let Keep::Read(b) = keep else { unreachable!() };
                let ptr = b[at..].as_mut_ptr();
                opcode::Read::new(fd, ptr, (len - at) as u32)
                    .offset(offset + at as u64)
                    .build()
            });
            let done = Self::wait(rx).await?;
            buf = done
                .buf
                .ok_or_else(|| io::Error::other("read lost its buffer"))?;
            if done.result == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "short read past the end of the file",
                ));
            }
            filled += done.result as usize;
        }
        Ok(buf)
    }

    /// Write all of `data` at `offset`.
    pub(crate) async fn write(&self, file: &Arc<File>, offset: u64, data: Bytes) -> io::Result<()> {
        let fd = types::Fd(file.as_raw_fd());
        let mut written = 0usize;
        while written < data.len() {
            let part = data.slice(written..);
            let rx = self.submit(Keep::Write(part), file, |keep| {
                let Keep::Write(b) = keep else { unreachable!() };
                opcode::Write::new(fd, b.as_ptr(), b.len() as u32)
                    .offset(offset + written as u64)
                    .build()
            });
            let done = Self::wait(rx).await?;
            if done.result == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "write made no progress",
                ));
            }
            written += done.result as usize;
        }
        Ok(())
    }

    /// fdatasync the file.
    pub(crate) async fn fsync(&self, file: &Arc<File>) -> io::Result<()> {
        let fd = types::Fd(file.as_raw_fd());
        let rx = self.submit(Keep::Nothing, file, |_| {
            opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
        });
        Self::wait(rx).await.map(|_| ())
    }

    /// fallocate(2) with `mode` over `len` bytes at `offset`.
    pub(crate) async fn fallocate(
        &self,
        file: &Arc<File>,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> io::Result<()> {
        let fd = types::Fd(file.as_raw_fd());
        let rx = self.submit(Keep::Nothing, file, |_| {
            opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(mode)
                .build()
        });
        Self::wait(rx).await.map(|_| ())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.shared
            .is_closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Complete every posted operation and submit the backlog: whether the
    /// ring is closed with nothing in flight any more, and whether the
    /// submit failed (to be tried again).
    fn drain(&self) -> (bool, bool) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let completed: Vec<(u64, i32)> = inner
            .ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (key, result) in completed {
            let Some(mut op) = inner.ops.try_remove(key as usize) else {
                tracing::error!(key, "io_uring completion for an unknown operation");
                continue;
            };
            let buf = match std::mem::replace(&mut op.keep, Keep::Nothing) {
                Keep::Read(b) => Some(b),
                _ => None,
            };
            if let Some(tx) = op.tx.take() {
                let _ = tx.send(Done { result, buf });
            }
        }
        while let Some(entry) = inner.backlog.pop_front() {
            // SAFETY: as in `Ring::submit`: the entry's memory and fd are
            // owned by its op in the slab until the op's completion is reaped.
            if unsafe { inner.ring.submission().push(&entry) }.is_err() {
                inner.backlog.push_front(entry);
                break;
            }
        }
        let failed = match inner.ring.submit() {
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(error = %e, "io_uring submit failed; trying again");
                true
            }
        };
        let done =
            self.is_closed.load(std::sync::atomic::Ordering::Acquire) && inner.ops.is_empty();
        (done, failed)
    }
}

/// How soon the reaper submits again after a failed submit (the kernel
/// short of memory or of room for completions: passing conditions).
const RESUBMIT_AFTER: std::time::Duration = std::time::Duration::from_millis(5);

async fn reap(shared: Arc<Shared>, fd: AsyncFd<RingFd>) {
    let mut resubmit = false;
    loop {
        tokio::select! {
            ready = fd.readable() => match ready {
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => {
                    tracing::error!(error = %e, "io_uring reaper cannot poll its ring");
                    return;
                }
            },
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(RESUBMIT_AFTER), if resubmit => {}
        }
        let (done, failed) = shared.drain();
        if done {
            return;
        }
        resubmit = failed;
    }
}
