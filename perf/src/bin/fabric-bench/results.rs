//! Appending a run's table to perf/RESULTS.md, under this benchmark's own
//! heading (other benchmarks keep their own sections in the same file).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// The heading of this benchmark's section.
pub const SECTION: &str = "## NVMe-oF target: ours against the Linux kernel target (fabric-bench)";

/// `YYYY-MM-DD HH:MM UTC` of a Unix time.
pub fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Now, as [`utc_date`].
pub fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_date(secs)
}

/// The commit of the working tree (`git describe --always --dirty`).
pub fn commit() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// This machine: CPU model, CPUs, memory and kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib >> 20);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cpus} CPUs, {mem_gib} GiB, Linux {}",
        kernel.trim()
    )
}

/// Insert `entry` into this benchmark's section of `text`, newest first
/// (before the section's first entry, after its introduction); the section
/// is created at the end when missing.
pub fn insert_entry(text: &str, entry: &str) -> String {
    let entry = entry.trim_end();
    let Some(start) = text.find(SECTION) else {
        let mut out = if text.trim().is_empty() {
            "# Performance results\n".to_string()
        } else {
            text.trim_end().to_string() + "\n"
        };
        out += &format!("\n{SECTION}\n\n{entry}\n");
        return out;
    };
    let after = start + SECTION.len();
    let section_end = text[after..]
        .find("\n## ")
        .map_or(text.len(), |i| after + i + 1);
    let at = text[after..section_end]
        .find("\n### ")
        .map_or(section_end, |i| after + i + 1);
    let (head, tail) = text.split_at(at);
    let mut out = head.trim_end().to_string();
    out += &format!("\n\n{entry}\n");
    if !tail.is_empty() {
        out += "\n";
        out += tail;
    }
    out
}

/// Append `entry` to the section in the file at `path` (created if missing).
pub fn append(path: &Path, entry: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    std::fs::write(path, insert_entry(&text, entry))
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(951_782_400 + 3_723), "2000-02-29 01:02 UTC");
        assert_eq!(utc_date(1_798_761_600), "2027-01-01 00:00 UTC");
    }

    #[test]
    fn entries_go_into_our_section_newest_first() {
        let fresh = insert_entry("", "### run 1\nA");
        assert!(fresh.starts_with("# Performance results\n"));
        assert!(fresh.contains(SECTION));
        let with_other = format!("{fresh}\n## raid benchmarks\n\n### raid run\nR\n");
        let two = insert_entry(&with_other, "### run 2\nB");
        let (one, two_at) = (
            two.find("### run 1").unwrap(),
            two.find("### run 2").unwrap(),
        );
        assert!(two_at < one, "newest first: {two}");
        assert!(one < two.find("## raid benchmarks").unwrap(), "{two}");
        assert!(two.ends_with("### raid run\nR\n"));
        let other_first = insert_entry("# X\n\n## raid\n\nR\n", "### run");
        assert!(other_first.find("## raid").unwrap() < other_first.find(SECTION).unwrap());
        let intro = format!("{SECTION}\n\nHow it is measured.\n\n### old\nO\n");
        let with_intro = insert_entry(&intro, "### new\nN");
        let how = with_intro.find("How it is measured").unwrap();
        assert!(how < with_intro.find("### new").unwrap());
        assert!(with_intro.find("### new").unwrap() < with_intro.find("### old").unwrap());
    }
}
