//! The benchmark matrix: its workloads, and one measured sample.

use serde::{Deserialize, Serialize};

/// One workload of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    /// Label in tables ("4k randread QD1").
    pub label: &'static str,
    /// fio / fabric-perf access pattern.
    pub workload: &'static str,
    /// Bytes per I/O.
    pub block_size: u64,
    /// Queue depth.
    pub iodepth: u32,
}

/// The four workloads of the side-by-side benchmark.
pub const CASES: [Case; 4] = [
    Case {
        label: "4k randread QD1",
        workload: "randread",
        block_size: 4096,
        iodepth: 1,
    },
    Case {
        label: "4k randread QD32",
        workload: "randread",
        block_size: 4096,
        iodepth: 32,
    },
    Case {
        label: "4k randwrite QD32",
        workload: "randwrite",
        block_size: 4096,
        iodepth: 32,
    },
    Case {
        label: "128k read QD8",
        workload: "read",
        block_size: 128 << 10,
        iodepth: 8,
    },
];

/// Which target served a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// `fabricd target`.
    Ours,
    /// The Linux kernel target (nvmet).
    Kernel,
}

impl Side {
    /// Name in samples and tables.
    pub fn name(self) -> &'static str {
        match self {
            Side::Ours => "ours",
            Side::Kernel => "kernel",
        }
    }
}

/// The backend pair: ours and the kernel's equivalent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Our `null:` namespace against null_blk.
    Null,
    /// Our `mem:` namespace against a RAM disk (brd).
    Mem,
}

impl Backend {
    /// The namespace ID both targets serve it under.
    pub fn nsid(self) -> u32 {
        match self {
            Backend::Null => 1,
            Backend::Mem => 2,
        }
    }

    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Null => "null",
            Backend::Mem => "mem",
        }
    }
}

/// The client that generated the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Client {
    /// fio through the Linux NVMe-oF host (nvme connect).
    Fio,
    /// fabric-perf, our own host stack.
    FabricPerf,
}

impl Client {
    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Client::Fio => "fio",
            Client::FabricPerf => "fabric-perf",
        }
    }
}

/// One measured run of one client against one target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// tcp or rdma.
    pub transport: String,
    /// Backend name.
    pub backend: String,
    /// Workload label.
    pub case: String,
    /// Client name.
    pub client: String,
    /// ours or kernel.
    pub side: String,
    /// Repetition (0-based).
    pub rep: u32,
    /// Why there are no numbers, if there are none.
    pub error: Option<String>,
    /// The transport is not available here (not built in, no RDMA device):
    /// not a failure of the benchmark.
    #[serde(default)]
    pub unavailable: bool,
    /// I/Os completed.
    pub ios: u64,
    /// I/Os per second.
    pub iops: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Machine-wide busy CPU seconds over the client's run.
    pub system_busy_s: f64,
    /// CPU seconds of the guest's vCPU threads over the run, as the machine
    /// running QEMU counts them (in a `ci/guest-run` guest).
    #[serde(default)]
    pub vcpu_s: Option<f64>,
    /// CPU seconds of our target process over the run (ours only).
    pub target_cpu_s: Option<f64>,
    /// CPU seconds of the client process (fabric-perf only).
    pub client_cpu_s: Option<f64>,
}

/// Where the benchmark ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// In the QEMU guest: ours and the kernel target, fio and fabric-perf.
    Guest,
    /// On this machine's loopback: ours and fabric-perf only.
    Native,
    /// Both targets alone in the QEMU guest, fabric-perf on this machine
    /// (TCP through forwarded ports): the guest's CPU is the target's.
    Split,
    /// Both targets alone in one QEMU guest, fio and fabric-perf in a
    /// second one on the same virtual Ethernet (TCP and RDMA): the first
    /// guest's CPU is the target's.
    Pair,
}

impl Mode {
    /// Name in results and file names.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Guest => "guest",
            Mode::Native => "native",
            Mode::Split => "split",
            Mode::Pair => "pair",
        }
    }

    /// Whether the kernel target is measured next to ours.
    pub fn has_kernel(self) -> bool {
        self != Mode::Native
    }
}

/// Everything one `fabric-bench run` measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleSet {
    /// Where it ran.
    pub mode: Mode,
    /// Kernel release of the machine that ran the targets (a guest's in
    /// guest, split and pair modes).
    pub kernel: String,
    /// CPUs of the machine that ran the targets.
    pub cpus: usize,
    /// Seconds per sample.
    pub seconds: f64,
    /// Repetitions.
    pub reps: u32,
    /// The samples in the order they ran.
    pub samples: Vec<Sample>,
}

/// Whether an error message says the transport is not available in this
/// build or on this machine (RDMA not built in, or no RDMA device); any
/// other failure, "resource temporarily unavailable" included, is one.
pub fn is_unavailable(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not built in this version") || m.contains("no rdma device")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_messages_are_recognised() {
        assert!(is_unavailable(
            "fabricd: error: the RDMA transport is not built in this version"
        ));
        assert!(is_unavailable(
            "no RDMA device found: RDMA listeners and connections are unavailable on this machine"
        ));
        assert!(!is_unavailable("connection refused"));
        assert!(!is_unavailable(
            "Resource temporarily unavailable (os error 11)"
        ));
    }

    #[test]
    fn names_round_trip_through_json() {
        assert_eq!(
            serde_json::to_string(&Client::FabricPerf).unwrap(),
            "\"fabric-perf\""
        );
        assert_eq!(serde_json::to_string(&Side::Kernel).unwrap(), "\"kernel\"");
        assert_eq!(Backend::Mem.nsid(), 2);
    }
}
