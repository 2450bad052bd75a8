//! Node liveness from heartbeats, judged by the leader.
//!
//! Heartbeats are not replicated: the leader keeps the time it last heard
//! from each node in memory and proposes a state change only when a node
//! goes offline (no heartbeat for the timeout) or comes back. A new leader
//! has no history, so it gives every node a full timeout from the moment it
//! took over before marking anything offline. Nodes that never sent a
//! heartbeat (declared by an operator, state unspecified) are left alone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raft::StateRole;

use crate::node::MetaNode;
use crate::objects::MetaObject;
use crate::peer::{command, Command, SetNodeState};
use crate::proto::{ControllerNode, DiskNode, NodeKind, NodeState, ObjectKind};

/// The leader's record of heartbeats.
pub struct Liveness {
    timeout: Duration,
    last_seen: Mutex<HashMap<(NodeKind, String), Instant>>,
}

/// The command that sets a node's state, if it is recorded at `address`
/// (any address when empty).
pub fn set_state(kind: NodeKind, name: &str, address: &str, state: NodeState) -> Command {
    Command {
        kind: Some(command::Kind::SetNodeState(SetNodeState {
            kind: kind as i32,
            name: name.to_string(),
            state: state as i32,
            address: address.to_string(),
        })),
    }
}

impl Liveness {
    /// Marks nodes offline after `timeout` without a heartbeat.
    pub fn new(timeout: Duration) -> Self {
        Liveness {
            timeout,
            last_seen: Mutex::new(HashMap::new()),
        }
    }

    /// The offline timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Records a heartbeat.
    pub fn record(&self, kind: NodeKind, name: &str) {
        if let Ok(mut seen) = self.last_seen.lock() {
            seen.insert((kind, name.to_string()), Instant::now());
        }
    }

    /// Online nodes not heard from within the timeout (counting from
    /// `since`, when the leadership started, for nodes never heard from).
    fn overdue(&self, node: &MetaNode, since: Instant) -> Vec<(NodeKind, String)> {
        let online = NodeState::Online as i32;
        let mut nodes = Vec::new();
        if let Ok((items, _)) = node.reader().list(ObjectKind::DiskNode, "") {
            nodes.extend(
                items
                    .into_iter()
                    .filter_map(DiskNode::from_object)
                    .filter(|n| n.state == online)
                    .map(|n| (NodeKind::Disk, n.name)),
            );
        }
        if let Ok((items, _)) = node.reader().list(ObjectKind::ControllerNode, "") {
            nodes.extend(
                items
                    .into_iter()
                    .filter_map(ControllerNode::from_object)
                    .filter(|n| n.state == online)
                    .map(|n| (NodeKind::Controller, n.name)),
            );
        }
        let Ok(seen) = self.last_seen.lock() else {
            return Vec::new();
        };
        nodes
            .into_iter()
            .filter(|key| {
                let last = seen.get(key).copied().map_or(since, |t| t.max(since));
                last.elapsed() > self.timeout
            })
            .collect()
    }

    /// Runs for the life of the replica: while it leads, marks overdue nodes
    /// offline.
    pub async fn monitor(&self, node: MetaNode) {
        let mut leading_since: Option<(u64, Instant)> = None;
        let period = (self.timeout / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(period).await;
            let view = node.view();
            if view.stopped {
                return;
            }
            if view.role != StateRole::Leader {
                leading_since = None;
                continue;
            }
            let since = match leading_since {
                Some((term, t)) if term == view.term => t,
                _ => {
                    let now = Instant::now();
                    leading_since = Some((view.term, now));
                    now
                }
            };
            for (kind, name) in self.overdue(&node, since) {
                tracing::warn!(?kind, %name, "no heartbeat within {:?}: marking offline", self.timeout);
                if let Err(e) = node
                    .propose(&set_state(kind, &name, "", NodeState::Offline))
                    .await
                {
                    tracing::debug!(%name, "could not mark offline: {e}");
                }
            }
        }
    }
}
