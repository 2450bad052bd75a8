//! The `fabricd target` binary as a user runs it: the ready line, serving a
//! host, and one-line errors with a non-zero exit for bad input.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use fabric::host::{HostController, HostOptions};
use fabric::target::PortAddress;
use raid::{buf, BlockDevice};

use common::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_fabricd");

/// Kills the daemon when the test ends, pass or fail.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `fabricd target ARGS` and wait for its ready line; returns the
/// daemon and its log up to that line.
fn start(args: &[&str]) -> (Daemon, String) {
    let mut child = Command::new(BIN)
        .arg("target")
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let daemon = Daemon(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log.push_str(&line);
            log.push('\n');
            if line.contains("ready") {
                let _ = tx.send(std::mem::take(&mut log));
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("no ready line within 30 s");
    (daemon, line)
}

/// Run `fabricd target ARGS` expecting it to fail; returns (code, stderr).
fn fails(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).arg("target").args(args).output().unwrap();
    assert!(!out.status.success(), "fabricd {args:?} succeeded");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn one_line(s: &str) -> &str {
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {s}");
    lines[0]
}

#[test]
fn bad_input_gets_one_line_naming_it() {
    let (code, err) = fails(&["--namespace", "mem:12X"]);
    assert_eq!(code, 2);
    assert!(
        one_line(&err).contains("--namespace") && err.contains("12X"),
        "{err}"
    );

    let (code, err) = fails(&["--listen", "tcp://localhost:4420"]);
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("--listen"), "{err}");

    let (code, err) = fails(&["--bogus"]);
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("--bogus"), "{err}");

    let (_, err) = fails(&[
        "--namespace",
        "file:/nonexistent/dir/disk.img",
        "--listen",
        "tcp://127.0.0.1:0",
    ]);
    assert!(
        one_line(&err).contains("/nonexistent/dir/disk.img") && err.contains("does not exist"),
        "{err}"
    );
    // Checked before any namespace opens: a raid1 listed first is not
    // assembled without the mistyped member.
    let (_, err) = fails(&[
        "--namespace",
        "raid1:/nonexistent/a.img,/nonexistent/b.img:8M",
        "--namespace",
        "raid1:/nonexistent/c.img,/nonexistent/d.imgg",
        "--listen",
        "tcp://127.0.0.1:0",
    ]);
    assert!(
        one_line(&err).contains("namespace 2: /nonexistent/c.img does not exist"),
        "{err}"
    );

    let (code, err) = fails(&["--log-level", "inf"]);
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("--log-level"), "{err}");

    let (_, err) = fails(&["--max-transfer", "3K", "--listen", "tcp://127.0.0.1:0"]);
    assert!(one_line(&err).contains("--max-transfer"), "{err}");

    let (code, err) = fails(&["--worker-threads", "0"]);
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("--worker-threads"), "{err}");

    let (_, err) = fails(&["--tcp-poll-us", "20000", "--listen", "tcp://127.0.0.1:0"]);
    assert!(
        one_line(&err).contains("--tcp-poll-us") && err.contains("20000"),
        "{err}"
    );
    let (_, err) = fails(&["--rdma-poll-us", "20000", "--listen", "tcp://127.0.0.1:0"]);
    assert!(
        one_line(&err).contains("--rdma-poll-us") && err.contains("20000"),
        "{err}"
    );

    // Registration settings: refused before anything opens or listens.
    let (_, err) = fails(&["--node-name", "dn1", "--listen", "tcp://127.0.0.1:0"]);
    assert!(
        one_line(&err).contains("--node-name") && err.contains("--meta"),
        "{err}"
    );
    let (_, err) = fails(&[
        "--meta",
        "127.0.0.1:7400",
        "--meta-tls-cert",
        "/nonexistent/a.crt",
        "--meta-tls-key",
        "/nonexistent/a.key",
        "--meta-tls-ca",
        "/nonexistent/ca.crt",
        "--listen",
        "tcp://127.0.0.1:0",
    ]);
    assert!(
        one_line(&err).contains("--meta-tls-cert") && err.contains("/nonexistent/a.crt"),
        "{err}"
    );
    let (_, err) = fails(&["--meta", "127.0.0.1:7400", "--listen", "tcp://0.0.0.0:0"]);
    assert!(one_line(&err).contains("--advertise"), "{err}");

    let dir = std::env::temp_dir().join(format!("fabricd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "listen = [\"tcp://127.0.0.1:0\"]\nnamespace = [\"mem:1M\"]\n",
    )
    .unwrap();
    let (_, err) = fails(&["--config", cfg.to_str().unwrap()]);
    assert!(one_line(&err).contains("namespace"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://127.0.0.1:{}", taken.local_addr().unwrap().port());
    let (code, err) = fails(&["--listen", &addr]);
    assert_eq!(code, 1);
    assert!(
        one_line(&err).contains("cannot listen on") && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn serves_a_host_after_the_ready_line() {
    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("fabricd-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = format!("file:{}:8M", dir.join("disk.img").display());
    let (_daemon, line) = start(&[
        "--listen",
        &addr,
        "--nqn",
        "nqn.2026-11.io.fabric:cli",
        "--namespace",
        "mem:4M",
        "--namespace",
        &img,
        "--discovery",
        "--worker-threads",
        "3",
    ]);
    assert!(line.contains(&addr), "{line}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let address: PortAddress = addr.parse().unwrap();
        let entries = HostController::discover(&address, &HostOptions::default())
            .await
            .unwrap();
        assert_eq!(entries[0].subnqn, "nqn.2026-11.io.fabric:cli");
        let ctrl = HostController::connect(
            &address,
            "nqn.2026-11.io.fabric:cli",
            &HostOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1, 2]);
        for nsid in [1, 2] {
            let ns = ctrl.namespace(nsid).await.unwrap();
            ns.write(3, Bytes::from(vec![nsid as u8; 8192]))
                .await
                .unwrap();
            ns.flush().await.unwrap();
            let back = ns.read(3, buf::alloc(8192)).await.unwrap();
            assert!(back.iter().all(|&b| b == nsid as u8));
        }
        ctrl.disconnect().await;
    });
    drop(_daemon);
    // The file namespace kept the data.
    let data = std::fs::read(dir.join("disk.img")).unwrap();
    assert_eq!(data.len(), 8 << 20);
    assert!(data[3 * 4096..5 * 4096].iter().all(|&b| b == 2));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `signal` (TERM: the shutdown a service manager does; HUP: a closed
/// terminal's), then wait for the exit, which must be a clean one.
fn terminate(mut daemon: Daemon, signal: &str) {
    let pid = daemon.0.id().to_string();
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = daemon.0.wait().unwrap();
    assert!(status.success(), "fabricd exited with {status}");
}

#[test]
fn raid1_namespace_restarts_clean_with_its_data() {
    let dir = std::env::temp_dir().join(format!("fabricd-raid1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = format!(
        "raid1:{},{}:16M",
        dir.join("a.img").display(),
        dir.join("b.img").display()
    );
    let addr = format!("tcp://127.0.0.1:{}", free_port());
    let args = ["--listen", &addr, "--namespace", &spec];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let io = |write: bool| {
        rt.block_on(async {
            let address: PortAddress = addr.parse().unwrap();
            let ctrl = HostController::connect(
                &address,
                fabric::daemon::target::DEFAULT_NQN,
                &HostOptions::default(),
            )
            .await
            .unwrap();
            let ns = ctrl.namespace(1).await.unwrap();
            if write {
                ns.write(5, Bytes::from(vec![0x5a; 8192])).await.unwrap();
            }
            let back = ns.read(5, buf::alloc(8192)).await.unwrap();
            assert!(back.iter().all(|&b| b == 0x5a));
            ctrl.disconnect().await;
        })
    };

    let (daemon, log) = start(&args);
    assert!(log.contains("raid1 created"), "{log}");
    io(true);
    // A second daemon on the same disks (another port) is refused before it
    // writes anything: the first keeps serving, and stops clean below.
    let other = format!("tcp://127.0.0.1:{}", free_port());
    let (code, err) = fails(&["--listen", &other, "--namespace", &spec]);
    assert_eq!(code, 1);
    assert!(
        one_line(&err).contains("a.img: cannot open: in use"),
        "{err}"
    );
    let member = format!("file:{}", dir.join("b.img").display());
    let (code, err) = fails(&["--listen", &other, "--namespace", &member]);
    assert_eq!(code, 1);
    assert!(
        one_line(&err).contains("b.img: cannot open: in use"),
        "{err}"
    );
    io(false);
    terminate(daemon, "HUP");

    // A clean shutdown leaves both members in sync and nothing to resync,
    // after a hangup as after SIGTERM.
    let (daemon, log) = start(&args);
    assert!(log.contains("members=[InSync, InSync] dirty=0"), "{log}");
    io(false);
    terminate(daemon, "TERM");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rdma_listener_without_rdma_devices_still_serves_tcp() {
    let tcp = format!("tcp://127.0.0.1:{}", free_port());
    let (_daemon, log) = start(&["--listen", &tcp, "--listen", "rdma://127.0.0.1:4420"]);
    let line = log.lines().last().unwrap_or_default();
    if fabric::transport::rdma::RdmaTransport::available() {
        // A machine with RDMA devices serves both.
        assert!(line.contains("rdma://127.0.0.1:4420"), "{line}");
    } else {
        // The RDMA one waits for a device, and says so.
        assert!(
            line.contains(&tcp)
                && line.contains("rdma://127.0.0.1:4420 (waiting for an RDMA device)"),
            "{line}"
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ctrl = HostController::connect(
            &tcp.parse().unwrap(),
            fabric::daemon::target::DEFAULT_NQN,
            &HostOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1]);
    });
}

#[test]
fn rdma_only_without_rdma_devices_is_a_clear_error() {
    if fabric::transport::rdma::RdmaTransport::available() {
        return;
    }
    let (code, err) = fails(&["--listen", "rdma://127.0.0.1:4420"]);
    assert_eq!(code, 1);
    assert!(one_line(&err).contains("no RDMA device"), "{err}");
    // Two of them: the same (it used to run on, serving nothing).
    let (code, err) = fails(&[
        "--listen",
        "rdma://127.0.0.1:4420",
        "--listen",
        "rdma://127.0.0.1:4421",
    ]);
    assert_eq!(code, 1);
    assert!(one_line(&err).contains("no RDMA device"), "{err}");
}
