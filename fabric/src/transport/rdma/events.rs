//! rdma_cm events as an async stream.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::verbs::{CmEvent, EventChannel};

struct ChannelFd(Arc<EventChannel>);

impl AsRawFd for ChannelFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.fd()
    }
}

/// An event channel whose events can be awaited.
pub struct CmEvents {
    fd: AsyncFd<ChannelFd>,
}

impl CmEvents {
    /// A new channel (must be called inside a tokio runtime).
    pub fn new() -> io::Result<CmEvents> {
        let ch = Arc::new(EventChannel::new()?);
        // SAFETY: the fd belongs to the channel, which the registered object
        // keeps alive for as long as the AsyncFd exists.
        let fd = unsafe { AsyncFd::register_with_interest(ChannelFd(ch), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(CmEvents { fd })
    }

    /// The channel (ids are created on it).
    pub fn channel(&self) -> Arc<EventChannel> {
        self.fd.get_ref().0.clone()
    }

    /// The next event.
    pub async fn next(&self) -> io::Result<CmEvent> {
        loop {
            if let Some(ev) = self.fd.get_ref().0.next_event()? {
                return Ok(ev);
            }
            let mut guard = self.fd.readable().await?;
            guard.clear_ready();
        }
    }
}
