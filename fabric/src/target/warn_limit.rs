//! A cap on how often one kind of warning is logged: a device that fails
//! every I/O must not flood the log with a line per command. Up to a burst
//! per second goes through; the rest are counted and the count rides on the
//! next line let through.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets through at most `burst` warnings per second.
pub(crate) struct WarnLimit {
    burst: u32,
    window: Mutex<Window>,
}

struct Window {
    start: Option<Instant>,
    logged: u32,
    left_out: u64,
}

impl WarnLimit {
    /// A limit of `burst` warnings per second.
    pub(crate) const fn new(burst: u32) -> WarnLimit {
        WarnLimit {
            burst,
            window: Mutex::new(Window {
                start: None,
                logged: 0,
                left_out: 0,
            }),
        }
    }

    /// `Some(n)` to log this warning, `n` being how many were left out
    /// since the last one logged; `None` to leave it out.
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.start
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1))
        {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged >= self.burst {
            w.left_out += 1;
            return None;
        }
        w.logged += 1;
        Some(std::mem::take(&mut w.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_second_goes_through_and_the_rest_is_counted() {
        let limit = WarnLimit::new(3);
        let t0 = Instant::now();
        let admitted: Vec<Option<u64>> = (0..5).map(|_| limit.admit_at(t0)).collect();
        assert_eq!(admitted, [Some(0), Some(0), Some(0), None, None]);
        let t1 = t0 + Duration::from_millis(999);
        assert_eq!(limit.admit_at(t1), None);
        let t2 = t0 + Duration::from_secs(1);
        assert_eq!(limit.admit_at(t2), Some(3), "the three left out");
        assert_eq!(limit.admit_at(t2), Some(0));
    }
}
