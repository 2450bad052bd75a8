//! The command lines of fabric-perf and fabric-bench: help, and bad
//! arguments named in one line.

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fabric_perf_help_lists_every_flag() {
    let (code, out, _) = run(env!("CARGO_BIN_EXE_fabric-perf"), &["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--address",
        "--nqn",
        "--nsid",
        "--workload",
        "--rwmixread",
        "--block-size",
        "--iodepth",
        "--queues",
        "--time",
        "--ios",
        "--ramp",
        "--verify",
        "--offset",
        "--size",
        "--hostnqn",
        "--digests",
        "--seed",
        "--threads",
        "--json",
        "--quiet",
    ] {
        assert!(out.contains(flag), "{flag} missing from --help:\n{out}");
    }
}

#[test]
fn fabric_perf_bad_arguments_are_one_line_naming_them() {
    let exe = env!("CARGO_BIN_EXE_fabric-perf");
    for (args, named) in [
        (&["--address", "udp://1.2.3.4:5"][..], "udp://1.2.3.4:5"),
        (
            &["-a", "tcp://127.0.0.1:4420", "--iodepth", "0"][..],
            "--iodepth",
        ),
        (
            &["-a", "tcp://127.0.0.1:4420", "--workload", "zigzag"][..],
            "zigzag",
        ),
        (
            &["-a", "tcp://127.0.0.1:4420", "--time", "soon"][..],
            "soon",
        ),
        (
            &["-a", "tcp://127.0.0.1:4420", "--time", "0s"][..],
            "--time",
        ),
        (&["-a", "tcp://127.0.0.1:4420", "--ios", "0"][..], "--ios"),
        (
            &["-a", "tcp://127.0.0.1:4420", "--rwmixread", "70"][..],
            "--rwmixread",
        ),
        (&["--iodepth", "4"][..], "--address"),
        (&["-a", "tcp://127.0.0.1:4420", "-q", "-1"][..], "--iodepth"),
        (
            &["-a", "tcp://127.0.0.1:4420", "-b", "-4k"][..],
            "--block-size",
        ),
        (
            &["-a", "tcp://127.0.0.1:4420", "--size", "6000"][..],
            "--size 6000 must be a multiple of --block-size 4096",
        ),
        (
            &["-a", "tcp://127.0.0.1:4420", "--poll-us", "10001"][..],
            "--poll-us 10001",
        ),
        (
            &["-a", "tcp://127.0.0.1:4420", "-t", "1000000000s"][..],
            "too long",
        ),
    ] {
        let (code, _, err) = run(exe, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(named), "{args:?}: {err}");
    }
}

#[test]
fn fabric_perf_reports_an_unreachable_target() {
    // Port 1 on loopback: nothing listens there.
    let (code, _, err) = run(
        env!("CARGO_BIN_EXE_fabric-perf"),
        &["-a", "tcp://127.0.0.1:1", "-n", "nqn.x:y", "-t", "1s"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn fabric_bench_bad_arguments_are_one_line() {
    let exe = env!("CARGO_BIN_EXE_fabric-bench");
    let (code, _, err) = run(exe, &["run", "--transports", "udp"]);
    assert_eq!(code, 2);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("udp"), "{err}");
    let (code, _, err) = run(exe, &["report", "/nonexistent/dir"]);
    assert_eq!(code, 1);
    assert!(err.contains("samples.json"), "{err}");
}

/// `--check-args` (what perf/bench.sh runs before it boots a guest)
/// finds bad run options, including those found after parsing, and
/// measures nothing.
#[test]
fn fabric_bench_checks_run_options_without_running() {
    let exe = env!("CARGO_BIN_EXE_fabric-bench");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("run");
    let d = dir.to_str().unwrap();
    // fabricd is another crate's program: any file stands in for it here.
    let any = env!("CARGO_BIN_EXE_fabric-perf");
    for (args, named) in [
        (&["--reps", "0"][..], "--reps"),
        (
            &["--mode", "native", "--clients", "fio"][..],
            "--clients fio",
        ),
        (
            &["--mode", "split", "--transports", "rdma"][..],
            "--transports",
        ),
    ] {
        let full: Vec<&str> = ["run", "--out", d, "--check-args", "--fabricd", any]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let (code, _, err) = run(exe, &full);
        assert_ne!(code, 0, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(named), "{args:?}: {err}");
    }
    for mode in ["native", "pair"] {
        let (code, out, err) = run(
            exe,
            &[
                "run",
                "--mode",
                mode,
                "--out",
                d,
                "--check-args",
                "--fabricd",
                any,
            ],
        );
        assert_eq!(code, 0, "{mode}: {out}{err}");
    }
    assert!(!dir.exists(), "nothing measured, nothing written");
}

#[test]
fn fabric_bench_report_checks_rows_and_appends_results() {
    let dir = tempfile::tempdir().unwrap();
    let sample = |side: &str, iops: f64, error: Option<&str>| {
        serde_json::json!({
            "transport": "tcp", "backend": "null", "case": "4k randread QD1",
            "client": "fio", "side": side, "rep": 0, "error": error,
            "unavailable": false, "ios": (iops * 2.0) as u64, "iops": iops,
            "p50_us": 100.0, "p99_us": 200.0, "system_busy_s": 1.0,
            "target_cpu_s": null, "client_cpu_s": null
        })
    };
    let write = |samples: Vec<serde_json::Value>| {
        let set = serde_json::json!({
            "mode": "guest", "kernel": "6.1.0", "cpus": 2, "seconds": 2.0,
            "reps": 1, "samples": samples
        });
        std::fs::write(dir.path().join("samples.json"), set.to_string()).unwrap();
    };
    let exe = env!("CARGO_BIN_EXE_fabric-bench");
    let d = dir.path().to_str().unwrap();
    let results = dir.path().join("RESULTS.md");
    write(vec![
        sample("ours", 3000.0, None),
        sample("kernel", 1000.0, None),
    ]);
    let (code, out, err) = run(
        exe,
        &[
            "report",
            d,
            "--check",
            "--no-chart",
            "--results",
            results.to_str().unwrap(),
            "--command",
            "bench X",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("| 3000 | 1000 | 3.00 |"), "{out}");
    let md = std::fs::read_to_string(&results).unwrap();
    assert!(
        md.contains("command: `bench X`") && md.contains("| 3000 | 1000 | 3.00 |"),
        "{md}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["rows"][0]["iops_ratio"], 3.0);

    write(vec![
        sample("ours", 3000.0, None),
        sample("kernel", 0.0, Some("fio failed")),
    ]);
    let (code, _, err) = run(exe, &["report", d, "--check", "--no-chart"]);
    assert_eq!(code, 1);
    assert!(err.contains("kernel: fio failed"), "{err}");

    // A full stdout is an error message, not a panic.
    let out = Command::new(exe)
        .args(["report", d, "--no-chart"])
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write to stdout"), "{err}");
}

/// With no row that has numbers, the report still prints its table and
/// names every row on stderr; the chart alone is left out.
#[test]
fn fabric_bench_report_without_numbers_names_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let failed = |side: &str| {
        serde_json::json!({
            "transport": "tcp", "backend": "null", "case": "4k randread QD1",
            "client": "fabric-perf", "side": side, "rep": 0, "error": "it failed",
            "unavailable": false, "ios": 0, "iops": 0.0,
            "p50_us": 0.0, "p99_us": 0.0, "system_busy_s": 0.0,
            "target_cpu_s": null, "client_cpu_s": null
        })
    };
    let set = serde_json::json!({
        "mode": "native", "kernel": "6.1.0", "cpus": 2, "seconds": 2.0,
        "reps": 1, "samples": [failed("ours")]
    });
    std::fs::write(dir.path().join("samples.json"), set.to_string()).unwrap();
    let (code, out, err) = run(
        env!("CARGO_BIN_EXE_fabric-bench"),
        &["report", dir.path().to_str().unwrap(), "--check"],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("4k randread QD1"), "{out}");
    assert!(err.contains("no chart: no row has numbers"), "{err}");
    assert!(err.contains("ours: it failed"), "{err}");
    assert!(!dir.path().join("chart.png").exists());
}
