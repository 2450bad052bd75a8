//! The result of one fabric-perf run: printed as text, or as JSON for
//! scripts (fabric-bench reads it back).

use serde::{Deserialize, Serialize};

use crate::stats::{IoStats, LatencySummary};

/// One direction's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectionReport {
    /// I/Os completed.
    pub ios: u64,
    /// I/Os per second.
    pub iops: f64,
    /// Megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// I/Os that completed with an error status.
    #[serde(default)]
    pub errors: u64,
    /// Latency percentiles (none when no I/O completed).
    pub latency: Option<LatencySummary>,
}

impl DirectionReport {
    /// Figures of `stats` over `seconds`.
    pub fn new(stats: &IoStats, seconds: f64) -> DirectionReport {
        let per_s = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        DirectionReport {
            ios: stats.ios,
            iops: per_s(stats.ios),
            mb_per_s: per_s(stats.bytes) / 1e6,
            errors: stats.errors,
            latency: (stats.ios > 0).then(|| stats.latency()),
        }
    }

    /// The direction's report when it issued any I/O (completed or failed).
    pub fn of_any(stats: &IoStats, seconds: f64) -> Option<DirectionReport> {
        (stats.ios > 0 || stats.errors > 0).then(|| DirectionReport::new(stats, seconds))
    }
}

/// CPU time over the measured window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuReport {
    /// This process's CPU seconds (user + system, all threads).
    pub process_s: f64,
    /// This process's CPU microseconds per I/O (none without I/O).
    pub process_us_per_io: Option<f64>,
    /// The whole machine's busy CPU seconds (from /proc/stat).
    pub system_busy_s: f64,
    /// The whole machine's busy CPU seconds per million I/Os (none
    /// without I/O).
    pub system_s_per_million_ios: Option<f64>,
}

/// The verify result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Logical blocks read back and compared.
    pub blocks_checked: u64,
    /// Blocks that did not hold what was written.
    pub mismatches: u64,
}

/// What the run was.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSetup {
    /// Target address.
    pub address: String,
    /// Subsystem NQN.
    pub nqn: String,
    /// Namespace ID.
    pub nsid: u32,
    /// Access pattern.
    pub workload: String,
    /// Share of reads in percent.
    pub read_percent: u8,
    /// Bytes per I/O.
    pub io_size: u64,
    /// Outstanding I/Os per queue.
    pub iodepth: u32,
    /// I/O queues (connections) used.
    pub queues: u16,
}

/// The result of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// What ran.
    pub setup: RunSetup,
    /// Length of the measured window (after the ramp).
    pub seconds: f64,
    /// I/Os completed in the window.
    pub ios: u64,
    /// I/Os per second.
    pub iops: f64,
    /// Megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// I/Os that completed with an error status.
    pub errors: u64,
    /// Latency of all I/Os (none when no I/O completed).
    pub latency: Option<LatencySummary>,
    /// Reads, if any were issued.
    pub read: Option<DirectionReport>,
    /// Writes, if any were issued.
    pub write: Option<DirectionReport>,
    /// CPU time.
    pub cpu: CpuReport,
    /// Verify result, with `--verify`.
    pub verify: Option<VerifyReport>,
    /// The run was stopped early (Ctrl-C); the figures cover the time run.
    #[serde(default)]
    pub interrupted: bool,
    /// The error that ended the run early (a connection lost): the figures
    /// cover the time until then, and a verify pass did not read back.
    #[serde(default)]
    pub failure: Option<String>,
}

impl RunReport {
    /// Human-readable lines.
    pub fn text(&self) -> String {
        let s = &self.setup;
        let mut out = format!(
            "fabric-perf: {} bs={} iodepth={} queues={}{} on {} {} nsid {}\n",
            s.workload,
            raid::format_size(s.io_size),
            s.iodepth,
            s.queues,
            if s.workload == "randrw" {
                format!(" read={}%", s.read_percent)
            } else {
                String::new()
            },
            s.address,
            s.nqn,
            s.nsid,
        );
        out += &format!(
            "  all:   {:>10.0} IOPS {:>9.1} MB/s  {} I/Os in {:.2} s, {} errors{}\n",
            self.iops,
            self.mb_per_s,
            self.ios,
            self.seconds,
            self.errors,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        );
        out += &latency_line("  lat:  ", &self.latency);
        for (name, d) in [("read", &self.read), ("write", &self.write)] {
            if let Some(d) = d {
                out += &format!(
                    "  {name:<6} {:>10.0} IOPS {:>9.1} MB/s  {} I/Os, {} errors\n",
                    d.iops, d.mb_per_s, d.ios, d.errors
                );
                out += &latency_line("  lat:  ", &d.latency);
            }
        }
        let or_na = |v: Option<f64>, decimals: usize| {
            v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.decimals$}"))
        };
        out += &format!(
            "  cpu:   process {:.2} s ({} us/IO), machine busy {:.2} s ({} s per million I/Os)\n",
            self.cpu.process_s,
            or_na(self.cpu.process_us_per_io, 1),
            self.cpu.system_busy_s,
            or_na(self.cpu.system_s_per_million_ios, 2)
        );
        if let Some(v) = &self.verify {
            out += &format!(
                "  verify: {} blocks checked, {} mismatches{}\n",
                v.blocks_checked,
                v.mismatches,
                if self.failure.is_some() {
                    " (no read-back: the run failed)"
                } else {
                    ""
                }
            );
        }
        if let Some(f) = &self.failure {
            out += &format!("  failed: {f}\n");
        }
        out
    }
}

fn latency_line(prefix: &str, l: &Option<LatencySummary>) -> String {
    match l {
        Some(l) => format!(
            "{prefix}(us) p50 {:.0}, p90 {:.0}, p99 {:.0}, p99.9 {:.0}, max {:.0}, mean {:.1}\n",
            l.p50_us, l.p90_us, l.p99_us, l.p99_9_us, l.max_us, l.mean_us
        ),
        None => format!("{prefix}n/a (no I/O completed)\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn direction_rates_and_json_round_trip() {
        let mut st = IoStats::default();
        for _ in 0..500 {
            st.record(4096, Duration::from_micros(50));
        }
        let d = DirectionReport::new(&st, 2.0);
        assert_eq!(d.ios, 500);
        assert!((d.iops - 250.0).abs() < 1e-9);
        assert!((d.mb_per_s - 250.0 * 4096.0 / 1e6).abs() < 1e-9);
        let r = RunReport {
            ios: 500,
            iops: d.iops,
            read: Some(d),
            verify: Some(VerifyReport {
                blocks_checked: 3,
                mismatches: 1,
            }),
            ..Default::default()
        };
        let back: RunReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let text = r.text();
        assert!(text.contains("250 IOPS"), "{text}");
        assert!(text.contains("1 mismatches"), "{text}");
        assert!(!text.contains("write"), "{text}");
    }

    #[test]
    fn failed_io_is_reported_as_such_not_as_zeroes() {
        let mut writes = IoStats::default();
        writes.errors = 7;
        let w = DirectionReport::of_any(&writes, 1.0).expect("a write row");
        assert_eq!((w.ios, w.errors, w.latency), (0, 7, None));
        assert!(DirectionReport::of_any(&IoStats::default(), 1.0).is_none());
        let r = RunReport {
            errors: 7,
            write: Some(w),
            ..Default::default()
        };
        let text = r.text();
        assert!(text.contains("0 I/Os, 7 errors"), "{text}");
        assert!(text.contains("n/a (no I/O completed)"), "{text}");
        assert!(text.contains("(n/a us/IO)"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["latency"].is_null() && json["cpu"]["process_us_per_io"].is_null());
        assert_eq!(json["write"]["errors"], 7);
    }
}
