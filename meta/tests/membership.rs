//! Membership change online: a one-replica group grows to three (the new
//! replicas catch up through a snapshot, since the log was compacted), then
//! loses its first replica, and keeps serving throughout; the removed
//! replica, still running, refuses requests in words.

mod support;

use std::collections::BTreeMap;

use meta::proto::{CreateClusterRequest, CreateHostRequest, Host};
use support::*;

fn host(i: usize) -> CreateHostRequest {
    CreateHostRequest {
        name: format!("h{i}"),
        nqn: format!("nqn.2014-08.org.nvmexpress:uuid:{i}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_three_then_remove_the_first() {
    let dir = temp_dir();
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let (l, a) = listener().await;
        listeners.push(l);
        peers.insert(id, a);
    }
    let mut listeners = listeners.into_iter();
    let first_peers = BTreeMap::from([(1, peers[&1].clone())]);
    let r1 = start(
        args(1, dir.path(), &first_peers, false),
        listeners.next().expect("l1"),
    );
    leader_known(&r1).await;
    let c1 = r1.client();
    c1.create_cluster(CreateClusterRequest {
        name: "grow".into(),
        ..Default::default()
    })
    .await
    .expect("cluster");
    // More writes than compact_after (20), so the log no longer starts at
    // the beginning and joiners need a snapshot.
    for i in 0..30 {
        c1.create_host(host(i)).await.expect("host");
    }
    let status = c1.status().await.expect("status");
    assert!(status.first_log_index > 20, "log compacted: {status:?}");

    // A replica that does not run yet is refused (it would cost the quorum).
    let err = c1
        .add_replica(2, &peers[&2])
        .await
        .expect_err("replica 2 is not running");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("--join"), "{}", err.message());

    let r2 = start(
        args(2, dir.path(), &peers, true),
        listeners.next().expect("l2"),
    );
    let r3 = start(
        args(3, dir.path(), &peers, true),
        listeners.next().expect("l3"),
    );
    for r in [&r2, &r3] {
        let added = c1.add_replica(r.id, &r.address).await.expect("add replica");
        assert!(added.replicas.iter().any(|m| m.id == r.id && m.voter));
        let c = r.client();
        // A linearizable read through the new replica sees every host.
        let (hosts, _) = eventually("the new replica to serve", || async {
            c.list::<Host>("").await.ok()
        })
        .await;
        assert_eq!(hosts.len(), 30);
    }
    let err = c1
        .add_replica(2, &r2.address)
        .await
        .expect_err("already a member");
    assert_eq!(err.code(), tonic::Code::AlreadyExists);

    // Remove the first replica (the leader): the other two elect a leader
    // and keep every object.
    c1.remove_replica(1).await.expect("remove replica 1");
    // Still running, the removed replica refuses in words what it could
    // no longer see through (a write the leader would commit behind its
    // back, a read it could not bring up to date).
    let alone =
        meta::MetaClient::new(&r1.address, std::time::Duration::from_secs(1)).expect("client");
    // Polled with reads: a write sent before it applied the removal could
    // still commit.
    let removed = eventually("replica 1 to apply its removal", || async {
        let err = alone.list::<Host>("").await.err()?;
        err.message()
            .contains("was removed from the group")
            .then_some(err)
    })
    .await;
    assert_eq!(removed.code(), tonic::Code::Unavailable, "{removed:?}");
    assert!(removed.message().contains(&r2.address), "{removed:?}");
    let err = alone.create_host(host(98)).await.expect_err("refused");
    assert!(
        err.message().contains("was removed from the group"),
        "{err:?}"
    );
    // Its status says so (Raft alone would call it a follower).
    let status = alone.status().await.expect("status of the removed replica");
    assert_eq!(
        status.role,
        meta::proto::RaftRole::Removed as i32,
        "{status:?}"
    );
    r1.stop().await;
    let both = format!("{},{}", r2.address, r3.address);
    let c = meta::MetaClient::new(&both, std::time::Duration::from_secs(20)).expect("client");
    c.create_host(host(99)).await.expect("write after removal");
    assert_eq!(c.list::<Host>("").await.expect("list").0.len(), 31);
    let status = leader_known(&r2).await;
    assert!(status.leader_id == 2 || status.leader_id == 3, "{status:?}");
    assert_eq!(
        status.replicas.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![2, 3]
    );
    r2.stop().await;
    r3.stop().await;
}
