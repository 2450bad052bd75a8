//! Mutual TLS: three replicas (on 127.0.0.1, .2 and .3, each with its own
//! certificate) that serve only TLS form a group, forward to their leader
//! and answer a client whose certificate the CA signed; a plain-text
//! client, a client of another CA and a replica of another CA are
//! refused; neither a client's certificate nor another replica's can send
//! Raft messages as a replica.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use meta::cli::MetaArgs;
use meta::peer::raft_peer_client::RaftPeerClient;
use meta::peer::RaftBatch;
use meta::proto::{CreateClusterRequest, CreateHostRequest, Host};
use meta::tls::{endpoint, Tls, TLS_FLAGS};
use meta::MetaClient;
use protobuf::Message as _;
use support::pki::Party;
use support::*;
use tokio::net::TcpListener;
use tonic::Code;

fn tls_args(mut args: MetaArgs, party: &Party, ca: &std::path::Path) -> MetaArgs {
    args.tls_cert = Some(party.cert.clone());
    args.tls_key = Some(party.key.clone());
    args.tls_ca = Some(ca.to_path_buf());
    args
}

fn load(party: &Party, ca: &std::path::Path) -> Tls {
    Tls::load(Some(&party.cert), Some(&party.key), Some(ca), TLS_FLAGS)
        .expect("valid files")
        .expect("TLS")
}

/// The answer to one Raft message from replica `from` to `to`, sent to
/// `address` over TLS with `tls`.
async fn send_raft(address: &str, tls: &Tls, from: u64, to: u64) -> tonic::Status {
    let channel = endpoint(address, Some(tls))
        .expect("endpoint")
        .connect()
        .await
        .expect("TLS connection");
    let msg = raft::eraftpb::Message {
        from,
        to,
        ..Default::default()
    };
    let batch = RaftBatch {
        messages: vec![msg.write_to_bytes().expect("encode")],
    };
    RaftPeerClient::new(channel)
        .send(batch)
        .await
        .expect_err("refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_over_mutual_tls_refuses_strangers() {
    let dir = temp_dir();
    let pki = support::pki::make(dir.path());
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind(format!("127.0.0.{id}:0"))
            .await
            .expect("bind");
        peers.insert(id, l.local_addr().expect("address").to_string());
        listeners.push(l);
    }
    let replicas: Vec<Replica> = listeners
        .into_iter()
        .zip(1..)
        .map(|(l, id)| {
            let a = args(id, dir.path(), &peers, false);
            start(tls_args(a, &pki.replicas[id as usize - 1], &pki.ca), l)
        })
        .collect();
    let admin = load(&pki.client, &pki.ca);
    let client_of = |address: &str| {
        MetaClient::with_tls(address, Duration::from_secs(20), Some(&admin)).expect("client")
    };

    // The group elects over TLS; a follower forwards a write to the leader.
    let first = client_of(&replicas[0].address);
    let status = eventually("a leader over TLS", || async {
        first.status().await.ok().filter(|s| s.leader_id != 0)
    })
    .await;
    let follower = replicas
        .iter()
        .find(|r| r.id != status.leader_id)
        .expect("a follower");
    let via_follower = client_of(&follower.address);
    via_follower
        .create_cluster(CreateClusterRequest {
            name: "tls".into(),
            ..Default::default()
        })
        .await
        .expect("cluster through a follower");
    via_follower
        .create_host(CreateHostRequest {
            name: "h1".into(),
            nqn: "nqn.2014-08.org.nvmexpress:uuid:tls".into(),
        })
        .await
        .expect("host through a follower");
    for r in &replicas {
        let host: Host = client_of(&r.address).get("h1").await.expect("read back");
        assert_eq!(host.nqn, "nqn.2014-08.org.nvmexpress:uuid:tls");
    }

    // Refused: plain text, a client of another CA, and a client whose
    // certificate another CA signed (while trusting the right one).
    let address = &replicas[0].address;
    let short = Duration::from_secs(1);
    let plain = MetaClient::new(address, short).expect("client");
    let e = plain.status().await.expect_err("plain text refused");
    assert!(e.message().contains("If the replica serves TLS"), "{e:?}");
    let foreign = load(&pki.stranger, &pki.other_ca);
    let foreign = MetaClient::with_tls(address, short, Some(&foreign)).expect("client");
    let e = foreign.status().await.expect_err("another CA refused");
    assert!(e.message().contains("UnknownIssuer"), "{e:?}");
    assert!(e.message().contains("take this certificate"), "{e:?}");
    let impostor = load(&pki.stranger, &pki.ca);
    let impostor = MetaClient::with_tls(address, short, Some(&impostor)).expect("client");
    let e = impostor
        .status()
        .await
        .expect_err("a certificate of another CA refused");
    // How the refusal shows (an alert, a closed or broken connection)
    // depends on timing; the message names the replica.
    assert!(e.message().contains(address.as_str()), "{e:?}");

    // Raft, sent to replica 3: the administrator's certificate is the
    // CA's but names no replica's address, so its messages are refused
    // before they are parsed; replica 1's certificate passes that check,
    // but cannot speak for replica 2; as replica 1, this message (for
    // the wrong replica) fails only the next check.
    let third = &replicas[2].address;
    let refused = send_raft(third, &admin, 1, 3).await;
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let first_tls = load(&pki.replicas[0], &pki.ca);
    let impersonation = send_raft(third, &first_tls, 2, 3).await;
    assert_eq!(
        impersonation.code(),
        Code::PermissionDenied,
        "{impersonation:?}"
    );
    let misaddressed = send_raft(third, &first_tls, 1, 30).await;
    assert_eq!(
        misaddressed.code(),
        Code::InvalidArgument,
        "{misaddressed:?}"
    );

    // An address the transport could not match is refused at once; a
    // replica whose certificate another CA signed cannot be added.
    let e = client_of(&replicas[0].address)
        .add_replica(4, "127.0.0.1:7400/")
        .await
        .expect_err("not HOST:PORT");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let (l, a) = listener().await;
    let mut joiner_peers = peers.clone();
    joiner_peers.insert(4, a.clone());
    let joiner = start(
        tls_args(
            args(4, dir.path(), &joiner_peers, true),
            &pki.stranger,
            &pki.other_ca,
        ),
        l,
    );
    let e = client_of(&replicas[0].address)
        .add_replica(4, &a)
        .await
        .expect_err("a replica of another CA");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("cannot be reached"), "{}", e.message());
    joiner.stop().await;
    for r in replicas {
        r.stop().await;
    }
}
