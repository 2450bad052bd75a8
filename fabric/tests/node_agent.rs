//! `fabricd target --meta`: the target registers with a `fabricd meta`
//! replica as a disk node and keeps it online with heartbeats; it cannot
//! be deleted while online, a frozen one goes offline (and is registered
//! again if deleted meanwhile), a second daemon
//! with the same name waits for it (also one that comes back after another
//! took its name over), an outage of the meta group is logged once and
//! recovered from, and a stopped target is marked offline as it stops.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meta::proto::{CreateClusterRequest, DiskNode, NodeState, ObjectKind};
use meta::MetaClient;

use common::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_fabricd");

/// A `fabricd` process with its log in a file, killed when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(role: &str, args: &[String], log: PathBuf) -> Daemon {
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(BIN)
            .arg(role)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn fabricd");
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send the process a signal (`STOP`, `CONT`).
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGTERM, and wait for the process to exit.
    fn terminate(mut self) -> String {
        self.signal("TERM");
        let status = self.child.wait().expect("wait for fabricd");
        assert!(status.success(), "{status}: {}", self.log());
        self.log()
    }

    /// Wait until the log has `text`.
    fn wait_for(&self, text: &str) {
        wait(|| self.log().contains(text).then_some(()))
            .unwrap_or_else(|| panic!("no {text:?} in the log:\n{}", self.log()));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `f` every 50 ms for up to 30 s.
fn wait<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_meta(dir: &Path, port: u16) -> Daemon {
    let args = [
        format!("--listen=127.0.0.1:{port}"),
        format!("--data-dir={}", dir.join("meta").display()),
        "--tick-ms=50".into(),
        "--offline-after-secs=2".into(),
    ];
    let meta = Daemon::start("meta", &args, dir.join("meta.log"));
    meta.wait_for("meta replica serving");
    meta
}

/// A target registering as dn1; `extra` flags added.
fn start_target(dir: &Path, meta_port: u16, port: u16, log: &str, extra: &[&str]) -> Daemon {
    let mut args = vec![
        format!("--listen=tcp://127.0.0.1:{port}"),
        "--namespace=mem:64M".into(),
        "--namespace=null:1G".into(),
        format!("--meta=127.0.0.1:{meta_port}"),
        "--node-name=dn1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let target = Daemon::start("target", &args, dir.join(log));
    target.wait_for("ready: serving");
    target
}

/// dn1 as the group has it, once `ok` holds for it (within 30 s).
async fn node_when(client: &MetaClient, ok: impl Fn(&DiskNode) -> bool) -> DiskNode {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let last = client.get::<DiskNode>("dn1").await;
        if let Ok(node) = &last {
            if ok(node) {
                return node.clone();
            }
        }
        assert!(Instant::now() < end, "dn1 never as expected: {last:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_registers_heartbeats_and_goes_offline() {
    let dir = tempfile::Builder::new()
        .prefix("node-agent-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let dir = dir.path().to_path_buf();
    let meta_port = free_port();
    let mut meta = start_meta(&dir, meta_port);
    let client =
        MetaClient::new(&format!("127.0.0.1:{meta_port}"), Duration::from_secs(5)).unwrap();
    client
        .create_cluster(CreateClusterRequest {
            name: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let online = NodeState::Online as i32;

    let (port_a, port_b) = (free_port(), free_port());
    let a = start_target(
        &dir,
        meta_port,
        port_a,
        "a.log",
        &["--failure-domain=rack1"],
    );
    let node = node_when(&client, |n| n.state == online).await;
    assert_eq!(node.address, format!("tcp:127.0.0.1:{port_a}"));
    assert_eq!(node.capacity_bytes, (64 << 20) + (1 << 30));
    assert_eq!(node.failure_domain, "rack1");
    a.wait_for("registered with the meta group as a disk node");

    // Heartbeats keep it online past the 2 s offline timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(client.get::<DiskNode>("dn1").await.unwrap().state, online);

    // A second daemon under the same name does not take it over.
    let b = start_target(&dir, meta_port, port_b, "b.log", &[]);
    b.wait_for("another node has this name");
    let node = client.get::<DiskNode>("dn1").await.unwrap();
    assert_eq!(node.address, format!("tcp:127.0.0.1:{port_a}"));
    drop(b);

    // An operator cannot delete it while it runs.
    let err = client
        .delete(ObjectKind::DiskNode, "dn1")
        .await
        .expect_err("an online node was deleted");
    assert!(err.to_string().contains("'dn1' is online"), "{err}");

    // Frozen (as by a network cut): marked offline. Deleted then, it is
    // registered again when it is back.
    let offline = NodeState::Offline as i32;
    a.signal("STOP");
    node_when(&client, |n| n.state == offline).await;
    client.delete(ObjectKind::DiskNode, "dn1").await.unwrap();
    a.signal("CONT");
    node_when(&client, |n| n.state == online).await;
    a.wait_for("registering it again");

    // Frozen again: marked offline; a new daemon at another port then takes
    // the name over.
    a.signal("STOP");
    node_when(&client, |n| n.state == offline).await;
    let b = start_target(&dir, meta_port, port_b, "b2.log", &[]);
    let at_b = format!("tcp:127.0.0.1:{port_b}");
    let node = node_when(&client, |n| n.state == online && n.address == at_b).await;
    // Given no failure domain, it keeps the one recorded.
    assert_eq!(node.failure_domain, "rack1");
    b.wait_for(&format!(
        "address of this disk node changes from 'tcp:127.0.0.1:{port_a}' to '{at_b}'"
    ));
    // The first daemon back: its heartbeats name its own address, so they
    // are refused and it waits for the name instead of keeping b's record
    // online.
    a.signal("CONT");
    a.wait_for(&format!(
        "is registered at {at_b}, not at tcp:127.0.0.1:{port_a}"
    ));
    a.wait_for(&format!(
        "is online at {at_b}, not at tcp:127.0.0.1:{port_a}"
    ));
    drop(a);
    let node = client.get::<DiskNode>("dn1").await.unwrap();
    assert_eq!((node.state, node.address), (online, at_b));

    // The meta group goes away and comes back: one warning, then the
    // recovery, and the target served on throughout.
    drop(meta);
    b.wait_for("the target keeps serving and retries");
    meta = start_meta(&dir, meta_port);
    b.wait_for("meta group reachable again");
    node_when(&client, |n| n.state == online).await;
    assert_eq!(
        b.log().matches("the target keeps serving").count(),
        1,
        "{}",
        b.log()
    );

    // Stopped (SIGTERM): offline by the time the process has exited, not
    // after the timeout.
    let log = b.terminate();
    assert!(
        log.contains("meta group told: this disk node stops"),
        "{log}"
    );
    let node = client.get::<DiskNode>("dn1").await.unwrap();
    assert_eq!(node.state, offline);
    // Marked so by the last word, not by the timeout.
    let log = meta.log();
    let line = log
        .lines()
        .find(|l| l.contains("heartbeat: marking Offline"));
    assert!(line.is_some_and(|l| l.contains("stopping=true")), "{log}");
    drop(meta);
}
