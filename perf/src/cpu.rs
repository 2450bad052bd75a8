//! CPU time for "CPU per I/O" figures: this process's (user + system, all
//! threads, from the kernel's nanosecond clock) and, from `/proc`, another
//! process's and the whole machine's busy time.

use std::time::Duration;

/// Clock ticks per second of `/proc` times (USER_HZ, 100 on Linux).
const USER_HZ: u64 = 100;

fn ticks(n: u64) -> Duration {
    Duration::from_millis(n * 1000 / USER_HZ)
}

/// CPU time used by this process so far (all threads, user + system), to
/// the nanosecond (`/proc`'s clock ticks are 10 ms: a short run would read
/// as none).
pub fn process_cpu() -> Duration {
    use rustix::time::{clock_gettime, ClockId};
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Machine-wide CPU time since boot, from `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemCpu {
    /// Time the CPUs were busy (everything but idle and iowait).
    pub busy: Duration,
    /// All CPU time (busy + idle), summed over CPUs.
    pub total: Duration,
}

impl SystemCpu {
    /// The busy and total time between `earlier` and `self`.
    pub fn since(&self, earlier: &SystemCpu) -> SystemCpu {
        SystemCpu {
            busy: self.busy.saturating_sub(earlier.busy),
            total: self.total.saturating_sub(earlier.total),
        }
    }
}

/// Machine-wide CPU time so far.
pub fn system_cpu() -> std::io::Result<SystemCpu> {
    let text = std::fs::read_to_string("/proc/stat")?;
    parse_system_stat(&text).ok_or_else(|| bad_format("/proc/stat"))
}

/// Where `ci/guest-run` publishes, inside its guest, the guest's vCPU
/// threads' run time in nanoseconds as the machine running QEMU counts it
/// (refreshed every 20 ms).
pub const VCPU_FILE: &str = "/run/ctl/vcpu-ns";

/// The guest's vCPU time so far, from [`VCPU_FILE`]; `None` outside a
/// `ci/guest-run` guest. The guest's own `/proc/stat` counts busy time
/// in ticks of its clock, and misses part of it (a fifth to a half in the
/// benchmark's two-guest runs on this 2-core machine).
pub fn guest_vcpu_time() -> std::io::Result<Option<Duration>> {
    read_vcpu_file(std::path::Path::new(VCPU_FILE))
}

fn read_vcpu_file(path: &std::path::Path) -> std::io::Result<Option<Duration>> {
    // The host rewrites the file in place: a read may catch it empty.
    for _ in 0..10 {
        match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
            Ok(text) => {
                if let Some(ns) = text.strip_suffix('\n').and_then(|t| t.parse().ok()) {
                    return Ok(Some(Duration::from_nanos(ns)));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(bad_format(&path.display().to_string()))
}

fn bad_format(path: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("unexpected format of {path}"),
    )
}

/// utime + stime of a `/proc/PID/stat` line. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_process_stat(text: &str) -> Option<Duration> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ticks(utime + stime))
}

/// The aggregate `cpu` line of `/proc/stat`.
pub fn parse_system_stat(text: &str) -> Option<SystemCpu> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]:
    // guest time is already counted in user, so only the first eight count.
    let all: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some(SystemCpu {
        busy: ticks(all - idle),
        total: ticks(all),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stat_with_odd_command_name() {
        let line =
            "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 300 0 0 0 150 25 0 0 20 0 3 0 1000 1000 10";
        assert_eq!(parse_process_stat(line), Some(Duration::from_millis(1750)));
        assert_eq!(parse_process_stat("12 (x) S 1 2"), None);
    }

    #[test]
    fn system_stat_busy_excludes_idle_and_iowait() {
        let text = "cpu  100 5 50 1000 40 3 2 0 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1\n";
        let s = parse_system_stat(text).unwrap();
        assert_eq!(s.busy, ticks(160));
        assert_eq!(s.total, ticks(1200));
        let later = SystemCpu {
            busy: ticks(260),
            total: ticks(1500),
        };
        assert_eq!(later.since(&s).busy, Duration::from_secs(1));
        assert_eq!(parse_system_stat("intr 1\n"), None);
    }

    #[test]
    fn vcpu_file_reads_whole_lines_only() {
        let dir = std::env::temp_dir().join(format!("vcpu-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("vcpu-ns");
        assert_eq!(read_vcpu_file(&f).unwrap(), None);
        std::fs::write(&f, "1500000000\n").unwrap();
        assert_eq!(
            read_vcpu_file(&f).unwrap(),
            Some(Duration::from_millis(1500))
        );
        // Caught mid-rewrite (no newline yet) or garbage: an error, not a number.
        std::fs::write(&f, "15").unwrap();
        assert!(read_vcpu_file(&f).is_err());
        std::fs::write(&f, "x\n").unwrap();
        assert!(read_vcpu_file(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_process_and_machine_are_readable() {
        let before = system_cpu().unwrap();
        let start = process_cpu();
        // Busy for a millisecond: less than one of /proc's clock ticks.
        let until = std::time::Instant::now() + Duration::from_millis(1);
        while std::time::Instant::now() < until {}
        assert!(process_cpu() > start);
        assert!(system_cpu().unwrap().total >= before.total);
    }
}
