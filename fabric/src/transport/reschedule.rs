//! Yielding to the runtime's other ready tasks without a system call, for
//! the transports' polling loops.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Yields once to the runtime's other ready tasks: the task wakes itself
/// and is queued again behind them. Unlike tokio's `yield_now`, which first
/// polls the I/O driver (an `epoll_wait` system call each time), the runtime
/// only polls its driver at its usual interval.
pub(crate) fn reschedule() -> impl Future<Output = ()> {
    Reschedule(false)
}

struct Reschedule(bool);

impl Future for Reschedule {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
