//! The meta group as three `fabricd meta` processes on loopback: leader
//! failover without losing acknowledged writes, a restart of every replica
//! (after log compaction) with every object back, an isolated leader that
//! cannot commit, concurrent clients whose history is linearizable, and a
//! second process refused on a data directory in use, and a watch that
//! resumes on another replica when its own stops.
//!
//! Ports are picked free at test time; data lives in a temp dir under the
//! target dir; every process is killed when its guard drops, on failure too.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meta::lincheck::{self, CdgInput, CdgOutput, CreateDeleteGet, Operation};
use meta::peer::raft_peer_client::RaftPeerClient;
use meta::peer::IsolateRequest;
use meta::proto::{
    ControllerNode, ControllerNodeSpec, CreateClusterRequest, CreateHostRequest,
    CreateVolumeRequest, DiskNode, DiskNodeSpec, Host, Operation as MetaOperation, RaftRole,
    Snapshot, StatusResponse, Volume,
};
use meta::MetaClient;
use tonic::Code;

const GIB: u64 = 1 << 30;

/// One `fabricd meta` process.
struct Replica {
    id: u64,
    address: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn start(&mut self) {
        assert!(self.child.is_none(), "replica {} already runs", self.id);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = log.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_fabricd"))
            .arg("meta")
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn fabricd meta");
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush anything beyond what is already durable.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn client(&self) -> MetaClient {
        MetaClient::new(&self.address, Duration::from_secs(3)).expect("client")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three replicas of one group.
struct Group {
    replicas: Vec<Replica>,
    dir: tempfile::TempDir,
}

/// `127.0.0.1:PORT` with a free port.
fn free_address() -> String {
    format!("127.0.0.1:{}", common::free_port())
}

impl Group {
    fn start(extra: &[&str]) -> Group {
        let dir = tempfile::Builder::new()
            .prefix("meta-cluster-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir");
        let peers: BTreeMap<u64, String> = (1..=3).map(|id| (id, free_address())).collect();
        let peer_list = peers
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let replicas = peers
            .iter()
            .map(|(id, address)| {
                let mut args = vec![
                    format!("--id={id}"),
                    format!("--listen={address}"),
                    format!("--peers={peer_list}"),
                    format!("--data-dir={}", dir.path().join(format!("r{id}")).display()),
                    "--tick-ms=50".into(),
                    "--request-timeout-ms=2000".into(),
                ];
                args.extend(extra.iter().map(|s| s.to_string()));
                let mut r = Replica {
                    id: *id,
                    address: address.clone(),
                    args,
                    log: dir.path().join(format!("r{id}.log")),
                    child: None,
                };
                r.start();
                r
            })
            .collect();
        Group { replicas, dir }
    }

    fn endpoints(&self) -> String {
        self.replicas
            .iter()
            .map(|r| r.address.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn client(&self) -> MetaClient {
        MetaClient::new(&self.endpoints(), Duration::from_secs(20)).expect("client")
    }

    fn replica(&mut self, id: u64) -> &mut Replica {
        self.replicas
            .iter_mut()
            .find(|r| r.id == id)
            .expect("replica id")
    }

    fn logs(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until the running replicas agree on a leader; returns its id.
    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut leaders = Vec::new();
            for r in self.replicas.iter().filter(|r| r.child.is_some()) {
                if let Ok(s) = r.client().status().await {
                    leaders.push((
                        s.leader_id,
                        s.role == RaftRole::Leader as i32 && s.id == r.id,
                    ));
                }
            }
            let running = self.replicas.iter().filter(|r| r.child.is_some()).count();
            if leaders.len() == running && !leaders.is_empty() {
                let id = leaders[0].0;
                if id != 0
                    && leaders.iter().all(|(l, _)| *l == id)
                    && leaders.iter().any(|(_, me)| *me)
                {
                    return id;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within 20 s (logs in {})",
                self.logs().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn host(name: &str, value: &str) -> CreateHostRequest {
    CreateHostRequest {
        name: name.into(),
        nqn: format!("nqn.2014-08.org.nvmexpress:uuid:{value}"),
    }
}

async fn create_cluster(c: &MetaClient) {
    c.create_cluster(CreateClusterRequest {
        name: "test".into(),
        ..Default::default()
    })
    .await
    .expect("create cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_keeps_acknowledged_writes() {
    let mut group = Group::start(&[]);
    let leader = group.leader().await;
    let client = Arc::new(group.client());
    create_cluster(&client).await;

    // A writer keeps creating hosts while the leader is killed.
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..60 {
                let name = format!("h{i}");
                if client.create_host(host(&name, &name)).await.is_ok() {
                    acknowledged.push(name);
                }
            }
            acknowledged
        })
    };
    // Kill once the writer is under way.
    let c = group.client();
    let start = Instant::now();
    while c.list::<Host>("").await.expect("list").0.len() < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "writer makes no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    group.replica(leader).kill();
    let killed_at = Instant::now();
    // A write sent to a survivor right away is forwarded to the dead leader,
    // then re-proposed under the new one: it must succeed, not time out.
    let survivor = group
        .replicas
        .iter()
        .find(|r| r.id != leader)
        .expect("survivor");
    let probe = MetaClient::new(&survivor.address, Duration::from_secs(15)).expect("client");
    probe
        .create_host(host("after-kill", "after-kill"))
        .await
        .expect("a write through a follower during failover");
    eprintln!(
        "write acknowledged {:?} after the leader was killed",
        killed_at.elapsed()
    );
    let status = probe.status().await.expect("status");
    assert!(
        status.leader_id != 0 && status.leader_id != leader,
        "{status:?}"
    );

    let acknowledged = writer.await.expect("writer");
    assert!(
        acknowledged.len() >= 30,
        "too few writes succeeded: {}",
        acknowledged.len()
    );
    let (hosts, _) = client.list::<Host>("").await.expect("list");
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    for name in &acknowledged {
        assert!(
            names.contains(&name.as_str()),
            "acknowledged host {name} lost"
        );
    }

    // The killed replica comes back and catches up from its own disk and the log.
    group.replica(leader).start();
    let target = client.status().await.expect("status").revision;
    let back = group.replica(leader).client();
    let deadline = Instant::now() + Duration::from_secs(20);
    while back.status().await.map(|s| s.revision).unwrap_or(0) < target {
        assert!(
            Instant::now() < deadline,
            "restarted replica did not catch up; its log:\n{}",
            std::fs::read_to_string(&group.replica(leader).log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every object of every kind, as listed through the group.
async fn everything(c: &MetaClient) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        c.list::<DiskNode>("").await.expect("disk nodes").0,
        c.list::<ControllerNode>("").await.expect("controllers").0,
        c.list::<Host>("").await.expect("hosts").0,
        c.list::<Volume>("").await.expect("volumes").0,
        c.list::<Snapshot>("").await.expect("snapshots").0,
        c.list::<MetaOperation>("").await.expect("operations").0,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_of_every_replica_after_compaction_restores_every_object() {
    let mut group = Group::start(&["--compact-after=10"]);
    group.leader().await;
    let c = group.client();
    create_cluster(&c).await;
    for (name, domain) in [("d1", "a"), ("d2", "b"), ("d3", "c")] {
        c.create_disk_node(DiskNodeSpec {
            name: name.into(),
            address: "tcp:127.0.0.1:4420".into(),
            capacity_bytes: 64 * GIB,
            failure_domain: domain.into(),
        })
        .await
        .expect("disk node");
    }
    for name in ["c1", "c2"] {
        c.create_controller_node(ControllerNodeSpec {
            name: name.into(),
            address: "tcp:127.0.0.1:4430".into(),
        })
        .await
        .expect("controller node");
    }
    for i in 0..25 {
        c.create_host(host(&format!("h{i}"), &format!("v{i}")))
            .await
            .expect("host");
    }
    c.create_volume(CreateVolumeRequest {
        name: "v1".into(),
        size_bytes: 8 * GIB,
        replicas: 3,
        legs: 2,
        hosts: vec!["h1".into()],
        ..Default::default()
    })
    .await
    .expect("volume");
    c.create_snapshot("v1", "s1").await.expect("snapshot");
    let before = everything(&c).await;
    let revision = c.status().await.expect("status").revision;

    // Every replica has compacted its log and applied everything.
    for r in &group.replicas {
        let rc = r.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status: StatusResponse = loop {
            let s = rc.status().await.expect("status");
            if s.revision == revision {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "replica {} did not apply everything",
                r.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            status.first_log_index > 20,
            "replica {} did not compact: {status:?}",
            r.id
        );
    }

    for r in &mut group.replicas {
        r.kill();
    }
    // The group recorded its members' addresses: no --peers this time.
    for r in &mut group.replicas {
        r.args.retain(|a| !a.starts_with("--peers="));
        r.start();
    }
    group.leader().await;
    let c = group.client();
    assert_eq!(
        everything(&c).await,
        before,
        "objects changed across the restart"
    );
    // And the group still takes writes.
    c.create_host(host("after", "after"))
        .await
        .expect("write after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_cannot_commit() {
    let mut group = Group::start(&["--fault-injection"]);
    let old = group.leader().await;
    let c = group.client();
    create_cluster(&c).await;
    let old_address = group.replica(old).address.clone();
    let mut peer = RaftPeerClient::connect(format!("http://{old_address}"))
        .await
        .expect("peer client");
    peer.isolate(IsolateRequest { isolated: true })
        .await
        .expect("isolate");

    // The old leader alone cannot commit: the write fails one way or another.
    let alone = group.replica(old).client();
    let err = alone
        .create_host(host("minority", "minority"))
        .await
        .expect_err("a write on an isolated leader must not be acknowledged");
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Unavailable),
        "unexpected error {err:?}"
    );

    // The majority elects a new leader and commits.
    let others: Vec<String> = group
        .replicas
        .iter()
        .filter(|r| r.id != old)
        .map(|r| r.address.clone())
        .collect();
    let majority = MetaClient::new(&others.join(","), Duration::from_secs(20)).expect("client");
    majority
        .create_host(host("majority", "majority"))
        .await
        .expect("majority write");
    let status = majority.status().await.expect("status");
    assert_ne!(
        status.leader_id, old,
        "the isolated replica still leads the majority"
    );

    // After healing, the group agrees: the majority's write is there, the
    // minority's is not.
    peer.isolate(IsolateRequest { isolated: false })
        .await
        .expect("heal");
    let leader = group.leader().await;
    assert_ne!(leader, old);
    let c = group.replica(old).client();
    let deadline = Instant::now() + Duration::from_secs(20);
    let hosts = loop {
        if let Ok((hosts, _)) = c.list::<Host>("").await {
            break hosts;
        }
        assert!(
            Instant::now() < deadline,
            "the healed replica does not serve"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, vec!["majority"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_are_linearizable_across_a_failover() {
    let mut group = Group::start(&[]);
    let leader = group.leader().await;
    create_cluster(&group.client()).await;
    let epoch = Instant::now();
    let endpoints: Vec<String> = group.replicas.iter().map(|r| r.address.clone()).collect();

    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client_id in 0..4usize {
        let done = done.clone();
        // Each client prefers a different replica, then falls back on the others.
        let mut order = endpoints.clone();
        order.rotate_left(client_id % endpoints.len());
        let client = MetaClient::new(&order.join(","), Duration::from_secs(10)).expect("client");
        tasks.push(tokio::spawn(async move {
            let mut history = Vec::new();
            for seq in 0..40u64 {
                // A fixed pseudo-random mix over three keys.
                let pick = (seq * 7 + client_id as u64 * 13) % 9;
                let key = format!("k{}", pick % 3);
                let input = match pick / 3 {
                    0 => CdgInput::Create(format!("c{client_id}-{seq}")),
                    1 => CdgInput::Delete,
                    _ => CdgInput::Get,
                };
                let call = epoch.elapsed().as_nanos() as u64;
                let output = match &input {
                    CdgInput::Create(v) => match client.create_host(host(&key, v)).await {
                        Ok(_) => Some(CdgOutput::Ok),
                        Err(e) if e.code() == Code::AlreadyExists => Some(CdgOutput::AlreadyExists),
                        Err(_) => None,
                    },
                    CdgInput::Delete => {
                        match client.delete(meta::proto::ObjectKind::Host, &key).await {
                            Ok(_) => Some(CdgOutput::Ok),
                            Err(e) if e.code() == Code::NotFound => Some(CdgOutput::NotFound),
                            Err(_) => None,
                        }
                    }
                    CdgInput::Get => match client.get::<Host>(&key).await {
                        Ok(h) => Some(CdgOutput::Value(
                            h.nqn
                                .trim_start_matches("nqn.2014-08.org.nvmexpress:uuid:")
                                .to_string(),
                        )),
                        Err(e) if e.code() == Code::NotFound => Some(CdgOutput::NotFound),
                        Err(_) => continue, // a failed read has no effect
                    },
                };
                let returned = output.map(|o| (epoch.elapsed().as_nanos() as u64, o));
                history.push(Operation {
                    key,
                    call,
                    returned,
                    input,
                });
                done.fetch_add(1, Ordering::SeqCst);
            }
            history
        }));
    }
    // Fail the leader over while the clients run.
    let deadline = Instant::now() + Duration::from_secs(20);
    while done.load(Ordering::SeqCst) < 30 {
        assert!(Instant::now() < deadline, "clients make no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    group.replica(leader).kill();

    let mut history = Vec::new();
    for t in tasks {
        history.extend(t.await.expect("client task"));
    }
    let completed = history.iter().filter(|o| o.returned.is_some()).count();
    assert!(completed >= 80, "too few operations completed: {completed}");
    if let Err(key) = lincheck::check::<CreateDeleteGet>(&history) {
        panic!("history of key {key} is not linearizable: {history:#?}");
    }
}

/// A second `fabricd meta` on a running replica's data directory (a
/// mistyped `--data-dir`, a start script run twice) is refused in words,
/// and the running replica is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_in_use_is_refused() {
    let g = Group::start(&[]);
    g.leader().await;
    let mut args: Vec<String> = g.replicas[0]
        .args
        .iter()
        .filter(|a| !a.starts_with("--listen=") && !a.starts_with("--peers="))
        .cloned()
        .collect();
    args.push(format!("--listen={}", free_address()));
    let out = Command::new(env!("CARGO_BIN_EXE_fabricd"))
        .args(["meta", "--log-level", "debug"])
        .args(&args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run fabricd meta");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second replica started: {err}");
    assert!(err.contains("in use by another process"), "{err}");
    assert!(
        err.contains("DEBUG"),
        "--log-level debug not applied: {err}"
    );
    g.replicas[0]
        .client()
        .status()
        .await
        .expect("the first replica still answers");
}

/// A watch follows the group across the loss of the replica it reads from:
/// it resumes on another after the last revision it saw, with no change
/// missed or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_on_another_replica() {
    let mut g = Group::start(&[]);
    g.leader().await;
    let c = g.client();
    create_cluster(&c).await;
    let after = c.status().await.expect("status").revision;
    // Its first endpoint, where it starts, is replica 1.
    let watcher = g.client();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move { watcher.follow(after, |f| tx.send(f).is_ok()).await });
    c.create_host(host("h1", "1")).await.expect("h1");
    assert_eq!(next_followed(&mut rx).await.as_deref(), Some("h1"));
    g.replica(1).kill();
    c.create_host(host("h2", "2")).await.expect("h2");
    assert_eq!(
        next_followed(&mut rx).await,
        None,
        "no word of the broken stream"
    );
    assert_eq!(next_followed(&mut rx).await.as_deref(), Some("h2"));
}

/// The name of the next object followed, or None when the watch resumes.
async fn next_followed(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<meta::client::Followed>,
) -> Option<String> {
    use meta::client::Followed;
    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        Ok(Some(Followed::Event(e))) => {
            Some(meta::objects::key_name(&e.object.unwrap_or_default()))
        }
        Ok(Some(Followed::Resuming { .. })) => None,
        other => panic!("the watch ended: {other:?}"),
    }
}
