//! What each subcommand does: one client call, then printing.

use meta::client::Followed;
use meta::objects::{key_name, kind_of, snapshot_key, MetaObject};
use meta::proto::{
    Cluster, ControllerNode, ControllerNodeSpec, CreateClusterRequest, CreateHostRequest,
    CreateVolumeRequest, DiskNode, DiskNodeSpec, EventType, Host, NodeKind, ObjectKind, Operation,
    OperationState, Snapshot, UpdateOperationRequest, Volume,
};
use meta::MetaClient;

use crate::args::{ClusterCmd, Command, HostCmd, NodeCmd, OpCmd, SnapCmd, VolCmd};
use crate::output::{print_list, print_one, to_json, ReplicaRow, Show};

/// Runs one subcommand against the meta group.
pub async fn run(client: &MetaClient, command: Command, json: bool) -> anyhow::Result<()> {
    match command {
        Command::Cluster(cmd) => cluster(client, cmd, json).await,
        Command::Dn(cmd) => disk_node(client, cmd, json).await,
        Command::Cn(cmd) => controller_node(client, cmd, json).await,
        Command::Host(cmd) => host(client, cmd, json).await,
        Command::Vol(cmd) => volume(client, cmd, json).await,
        Command::Snap(cmd) => snapshot(client, cmd, json).await,
        Command::Op(cmd) => operation(client, cmd, json).await,
        Command::Watch { after } => watch(client, after, json).await,
        Command::Completions { .. } => Ok(()),
    }
}

async fn get<T: MetaObject + Show>(
    client: &MetaClient,
    name: &str,
    json: bool,
) -> anyhow::Result<()> {
    print_one(&client.get::<T>(name).await?, json);
    Ok(())
}

async fn list<T: MetaObject + Show>(
    client: &MetaClient,
    volume: &str,
    json: bool,
) -> anyhow::Result<()> {
    let (items, revision) = client.list::<T>(volume).await?;
    print_list(&items, revision, json);
    Ok(())
}

async fn delete(
    client: &MetaClient,
    kind: ObjectKind,
    name: &str,
    json: bool,
) -> anyhow::Result<()> {
    let revision = client.delete(kind, name).await?;
    if json {
        println!(
            "{}",
            to_json(&serde_json::json!({ "deleted": name, "revision": revision }))
        );
    } else {
        println!(
            "deleted {} {name} (revision {revision})",
            meta::objects::kind_label(kind)
        );
    }
    Ok(())
}

async fn cluster(client: &MetaClient, cmd: ClusterCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Create {
            name,
            extent_size,
            raid0_chunk,
            thin_block,
            raid1_region,
        } => {
            let req = CreateClusterRequest {
                name,
                extent_size_bytes: extent_size.unwrap_or(0),
                raid0_chunk_bytes: raid0_chunk.unwrap_or(0),
                thin_block_bytes: thin_block.unwrap_or(0),
                raid1_region_bytes: raid1_region.unwrap_or(0),
            };
            print_one(&client.create_cluster(req).await?, json);
        }
        ClusterCmd::Get => get::<Cluster>(client, "", json).await?,
        ClusterCmd::Delete => delete(client, ObjectKind::Cluster, "cluster", json).await?,
        ClusterCmd::List => {
            let status = client.status().await?;
            let rows: Vec<ReplicaRow> = status
                .replicas
                .into_iter()
                .map(|replica| ReplicaRow {
                    leader: replica.id == status.leader_id,
                    replica,
                })
                .collect();
            print_list(&rows, status.revision, json);
        }
        ClusterCmd::Status => print_one(&client.status().await?, json),
        ClusterCmd::AddReplica { id, address } => {
            let members = client.add_replica(id, &address).await?;
            let rows: Vec<ReplicaRow> = members
                .replicas
                .into_iter()
                .map(|replica| ReplicaRow {
                    replica,
                    leader: false,
                })
                .collect();
            print_list(&rows, 0, json);
        }
        ClusterCmd::RemoveReplica { id } => {
            let members = client.remove_replica(id).await?;
            let rows: Vec<ReplicaRow> = members
                .replicas
                .into_iter()
                .map(|replica| ReplicaRow {
                    replica,
                    leader: false,
                })
                .collect();
            print_list(&rows, 0, json);
        }
    }
    Ok(())
}

async fn disk_node(
    client: &MetaClient,
    cmd: NodeCmd<crate::args::DiskNodeArgs>,
    json: bool,
) -> anyhow::Result<()> {
    let spec = |a: crate::args::DiskNodeArgs| DiskNodeSpec {
        name: a.name,
        address: a.address,
        capacity_bytes: a.capacity,
        failure_domain: a.failure_domain.unwrap_or_default(),
    };
    match cmd {
        NodeCmd::Create(a) => print_one(&client.create_disk_node(spec(a)).await?, json),
        NodeCmd::Register(a) => print_one(&client.register_disk_node(spec(a)).await?, json),
        NodeCmd::Heartbeat { name } => heartbeat(client, NodeKind::Disk, &name, json).await?,
        NodeCmd::Get { name } => get::<DiskNode>(client, &name, json).await?,
        NodeCmd::List => list::<DiskNode>(client, "", json).await?,
        NodeCmd::Delete { name } => delete(client, ObjectKind::DiskNode, &name, json).await?,
    }
    Ok(())
}

async fn controller_node(
    client: &MetaClient,
    cmd: NodeCmd<crate::args::ControllerNodeArgs>,
    json: bool,
) -> anyhow::Result<()> {
    let spec = |a: crate::args::ControllerNodeArgs| ControllerNodeSpec {
        name: a.name,
        address: a.address,
    };
    match cmd {
        NodeCmd::Create(a) => print_one(&client.create_controller_node(spec(a)).await?, json),
        NodeCmd::Register(a) => print_one(&client.register_controller_node(spec(a)).await?, json),
        NodeCmd::Heartbeat { name } => heartbeat(client, NodeKind::Controller, &name, json).await?,
        NodeCmd::Get { name } => get::<ControllerNode>(client, &name, json).await?,
        NodeCmd::List => list::<ControllerNode>(client, "", json).await?,
        NodeCmd::Delete { name } => delete(client, ObjectKind::ControllerNode, &name, json).await?,
    }
    Ok(())
}

async fn heartbeat(
    client: &MetaClient,
    kind: NodeKind,
    name: &str,
    json: bool,
) -> anyhow::Result<()> {
    let reply = client.heartbeat(kind, name).await?;
    if json {
        println!("{}", to_json(&reply));
    } else {
        println!(
            "heartbeat sent for {name} (revision {}; offline after {} s of silence)",
            reply.revision, reply.offline_after_secs
        );
    }
    Ok(())
}

async fn host(client: &MetaClient, cmd: HostCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        HostCmd::Create { name, nqn } => print_one(
            &client.create_host(CreateHostRequest { name, nqn }).await?,
            json,
        ),
        HostCmd::Get { name } => get::<Host>(client, &name, json).await?,
        HostCmd::List => list::<Host>(client, "", json).await?,
        HostCmd::Delete { name } => delete(client, ObjectKind::Host, &name, json).await?,
    }
    Ok(())
}

async fn volume(client: &MetaClient, cmd: VolCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        VolCmd::Create {
            name,
            size,
            replicas,
            legs,
            active,
            standby,
            hosts,
        } => {
            let req = CreateVolumeRequest {
                name,
                size_bytes: size,
                replicas: replicas.unwrap_or(0),
                legs: legs.unwrap_or(0),
                active_controllers: active.unwrap_or(0),
                standby_controllers: standby,
                hosts,
            };
            print_one(&client.create_volume(req).await?, json);
        }
        VolCmd::Get { name } => get::<Volume>(client, &name, json).await?,
        VolCmd::List => list::<Volume>(client, "", json).await?,
        VolCmd::Delete { name } => delete(client, ObjectKind::Volume, &name, json).await?,
    }
    Ok(())
}

async fn snapshot(client: &MetaClient, cmd: SnapCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        SnapCmd::Create { volume, name } => {
            print_one(&client.create_snapshot(&volume, &name).await?, json)
        }
        SnapCmd::Get { volume, name } => {
            print_one(&client.get_snapshot(&volume, &name).await?, json)
        }
        SnapCmd::List { volume } => {
            list::<Snapshot>(client, volume.as_deref().unwrap_or(""), json).await?
        }
        SnapCmd::Delete { volume, name } => {
            delete(
                client,
                ObjectKind::Snapshot,
                &snapshot_key(&volume, &name),
                json,
            )
            .await?
        }
    }
    Ok(())
}

async fn operation(client: &MetaClient, cmd: OpCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        OpCmd::Get { name } => get::<Operation>(client, &name, json).await?,
        OpCmd::List => list::<Operation>(client, "", json).await?,
        OpCmd::Delete { name } => delete(client, ObjectKind::Operation, &name, json).await?,
        OpCmd::Cancel { name, reason } => {
            let op = client.get::<Operation>(&name).await?;
            // The first step not done: the steps before it are, so the
            // group accepts it as failed. A finished operation has none
            // left, or is refused by the group as already finished.
            let step = op
                .steps
                .iter()
                .position(|s| s.state != OperationState::Done as i32)
                .unwrap_or(0);
            let cancelled = client
                .update_operation(UpdateOperationRequest {
                    name,
                    // Refused if it moved since it was read: read it again.
                    expected_revision: op.revision,
                    step: u32::try_from(step).unwrap_or(u32::MAX),
                    state: OperationState::Failed as i32,
                    message: reason,
                })
                .await?;
            print_one(&cancelled, json);
        }
    }
    Ok(())
}

async fn watch(client: &MetaClient, after: Option<u64>, json: bool) -> anyhow::Result<()> {
    let after = match after {
        Some(a) => a,
        None => client.status().await?.revision,
    };
    let mut failed = None;
    client
        .follow(after, |followed| {
            let event = match followed {
                Followed::Event(event) => event,
                Followed::Resuming {
                    after_revision,
                    why,
                } => {
                    eprintln!("fabric-ctl: watch: {why}; resuming after revision {after_revision}");
                    return true;
                }
            };
            if json {
                return match serde_json::to_string(&event) {
                    Ok(line) => {
                        println!("{line}");
                        true
                    }
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                };
            }
            let object = event.object.unwrap_or_default();
            let kind = meta::objects::kind_label(kind_of(&object));
            let verb = if event.r#type == EventType::Delete as i32 {
                "deleted"
            } else {
                "put"
            };
            println!("{} {verb} {kind} {}", event.revision, key_name(&object));
            true
        })
        .await?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
