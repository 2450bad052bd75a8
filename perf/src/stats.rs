//! Latency histograms and the counters of one direction of I/O.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p99_9_us: f64,
    /// Maximum.
    pub max_us: f64,
}

/// I/Os, bytes and latencies of one direction (or of all I/O).
#[derive(Clone, Debug)]
pub struct IoStats {
    /// I/Os completed.
    pub ios: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// I/Os that completed with an error status.
    pub errors: u64,
    latency: Histogram<u64>,
}

impl Default for IoStats {
    fn default() -> Self {
        IoStats {
            ios: 0,
            bytes: 0,
            errors: 0,
            // Nanoseconds, 3 significant digits, growing as needed.
            latency: Histogram::new(3).expect("3 significant digits is a valid precision"),
        }
    }
}

impl IoStats {
    /// Count one I/O of `bytes` that took `latency`.
    pub fn record(&mut self, bytes: u64, latency: Duration) {
        self.ios += 1;
        self.bytes += bytes;
        let ns = latency.as_nanos().min(u64::MAX as u128) as u64;
        // An auto-resizing histogram takes any value.
        let _ = self.latency.record(ns.max(1));
    }

    /// Add `other`'s counts.
    pub fn merge(&mut self, other: &IoStats) {
        self.ios += other.ios;
        self.bytes += other.bytes;
        self.errors += other.errors;
        let _ = self.latency.add(&other.latency);
    }

    /// The latency percentiles.
    pub fn latency(&self) -> LatencySummary {
        if self.latency.is_empty() {
            return LatencySummary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        let at = |q: f64| us(self.latency.value_at_quantile(q));
        LatencySummary {
            mean_us: self.latency.mean() / 1000.0,
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p99_9_us: at(0.999),
            max_us: us(self.latency.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut s = IoStats::default();
        for i in 1..=1000u64 {
            s.record(4096, Duration::from_micros(i));
        }
        let l = s.latency();
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p90_us - 900.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 1.0, "{l:?}");
        assert!((l.mean_us - 500.5).abs() < 1.0, "{l:?}");
        assert_eq!(s.ios, 1000);
        assert_eq!(s.bytes, 4096 * 1000);
    }

    #[test]
    fn merge_adds_counts_and_samples() {
        let mut a = IoStats::default();
        let mut b = IoStats::default();
        a.record(10, Duration::from_micros(100));
        b.record(20, Duration::from_millis(10));
        b.errors = 2;
        a.merge(&b);
        assert_eq!((a.ios, a.bytes, a.errors), (2, 30, 2));
        assert!((a.latency().max_us - 10_000.0).abs() < 10.0);
        assert_eq!(IoStats::default().latency(), LatencySummary::default());
    }
}
