//! The two load generators: fio through the Linux host, and fabric-perf.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::matrix::Case;

/// What a client reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientResult {
    /// I/Os completed.
    pub ios: u64,
    /// I/Os per second.
    pub iops: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// The client's own CPU seconds, when it reports them.
    pub cpu_s: Option<f64>,
}

fn output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!("{what} failed ({}): {}", out.status, last.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// fio (libaio, O_DIRECT, one job) on `device` for `seconds`.
pub fn fio(device: &Path, case: &Case, seconds: u64) -> anyhow::Result<ClientResult> {
    let json = output(
        Command::new("fio")
            .arg("--name=bench")
            .arg(format!("--filename={}", device.display()))
            .args([
                "--ioengine=libaio",
                "--direct=1",
                "--numjobs=1",
                "--time_based",
            ])
            .arg(format!("--rw={}", case.workload))
            .arg(format!("--bs={}", case.block_size))
            .arg(format!("--iodepth={}", case.iodepth))
            .arg(format!("--runtime={seconds}"))
            .args(["--lat_percentiles=1", "--output-format=json"]),
        "fio",
    )?;
    parse_fio(&json)
}

fn percentile(dir: &Value, p: &str) -> Option<f64> {
    ["lat_ns", "clat_ns"]
        .iter()
        .find_map(|k| dir.get(k)?.get("percentile")?.get(p)?.as_f64())
        .map(|ns| ns / 1000.0)
}

/// The figures of fio's JSON output (read and write added up; latencies of
/// the direction that did the most I/O).
pub fn parse_fio(json: &str) -> anyhow::Result<ClientResult> {
    // fio may print notes before the JSON document.
    let start = json.find('{').context("fio printed no JSON")?;
    let v: Value = serde_json::from_str(&json[start..]).context("fio's JSON output")?;
    let job = v
        .get("jobs")
        .and_then(|j| j.get(0))
        .context("fio's JSON has no job")?;
    let dirs: Vec<&Value> = ["read", "write"]
        .iter()
        .filter_map(|d| job.get(d))
        .collect();
    let ios = |d: &Value| d.get("total_ios").and_then(Value::as_u64).unwrap_or(0);
    let main = dirs
        .iter()
        .max_by_key(|d| ios(d))
        .context("fio's job has no read or write figures")?;
    if job.get("error").and_then(Value::as_i64).unwrap_or(0) != 0 {
        bail!("fio reports error {}", job["error"]);
    }
    Ok(ClientResult {
        ios: dirs.iter().map(|d| ios(d)).sum(),
        iops: dirs
            .iter()
            .filter_map(|d| d.get("iops").and_then(Value::as_f64))
            .sum(),
        p50_us: percentile(main, "50.000000").unwrap_or(0.0),
        p99_us: percentile(main, "99.000000").unwrap_or(0.0),
        cpu_s: None,
    })
}

/// fabric-perf against `address`/`nqn` namespace `nsid` for `seconds`.
pub fn fabric_perf(
    bin: &Path,
    address: &str,
    nqn: &str,
    nsid: u32,
    case: &Case,
    seconds: u64,
) -> anyhow::Result<ClientResult> {
    let json = output(
        Command::new(bin)
            .args(["--address", address, "--nqn", nqn, "--json", "--quiet"])
            .arg(format!("--nsid={nsid}"))
            .arg(format!("--workload={}", case.workload))
            .arg(format!("--block-size={}", case.block_size))
            .arg(format!("--iodepth={}", case.iodepth))
            .arg(format!("--time={seconds}s")),
        "fabric-perf",
    )?;
    let r: perf::report::RunReport =
        serde_json::from_str(&json).context("fabric-perf's JSON output")?;
    // No latency when no I/O completed: the row has no I/Os and fails.
    let latency = r.latency.unwrap_or_default();
    Ok(ClientResult {
        ios: r.ios,
        iops: r.iops,
        p50_us: latency.p50_us,
        p99_us: latency.p99_us,
        cpu_s: Some(r.cpu.process_s),
    })
}

/// Write every block of namespace `nsid` (`bytes` long) once through
/// fabric-perf, 128 KiB sequential writes 16 deep: a RAM backend, ours or
/// the kernel's brd, then has all its memory in place, so that no
/// measurement pays for first touches the other side already had.
pub fn fill(bin: &Path, address: &str, nqn: &str, nsid: u32, bytes: u64) -> anyhow::Result<()> {
    const BLOCK: u64 = 128 << 10;
    output(
        Command::new(bin)
            .args(["--address", address, "--nqn", nqn, "--quiet"])
            .arg(format!("--nsid={nsid}"))
            .args(["--workload=write", "--block-size=128K", "--iodepth=16"])
            .arg(format!("--ios={}", bytes.div_ceil(BLOCK))),
        "fabric-perf (fill)",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_json_figures() {
        let json = r#"note: something
        {"jobs":[{"error":0,
          "read":{"total_ios":3000,"iops":300.5,
                  "lat_ns":{"percentile":{"50.000000":120000,"99.000000":900000}},
                  "clat_ns":{"percentile":{"50.000000":1,"99.000000":2}}},
          "write":{"total_ios":0,"iops":0.0,"clat_ns":{}}}]}"#;
        let r = parse_fio(json).unwrap();
        assert_eq!(r.ios, 3000);
        assert!((r.iops - 300.5).abs() < 1e-9);
        assert!((r.p50_us - 120.0).abs() < 1e-9);
        assert!((r.p99_us - 900.0).abs() < 1e-9);
        assert!(parse_fio("no json").is_err());
        assert!(parse_fio(r#"{"jobs":[]}"#).is_err());
    }

    #[test]
    fn fio_clat_is_the_fallback() {
        let json = r#"{"jobs":[{"write":{"total_ios":10,"iops":1.0,
            "clat_ns":{"percentile":{"50.000000":5000,"99.000000":8000}}}}]}"#;
        let r = parse_fio(json).unwrap();
        assert_eq!((r.p50_us, r.p99_us), (5.0, 8.0));
    }
}
