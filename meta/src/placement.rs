//! Placement: where a new volume's extents and controllers go.
//!
//! A pure function of the cluster state, so it is deterministic and unit
//! tested, and any replica computes the same answer from the same state. The
//! replica that receives a create runs it; the state machine then re-checks
//! that every chosen range is still free when the command is applied, and a
//! lost race is retried (see `service`).
//!
//! Rules:
//! * A volume has `legs` legs; each leg starts with one raid1 group of
//!   `replicas` logical disks, each a contiguous range of one disk node sized
//!   to the leg (its share of the volume rounded up to whole extents). Ranges
//!   start on extent boundaries (first fit), so space is handed out in large
//!   units and freed ranges are reused.
//! * The members of a raid1 group are on distinct disk nodes and, among
//!   tagged nodes, in distinct failure domains (an untagged node is its own
//!   domain). Among the nodes that qualify, those with the most free space
//!   come first, then by name: the result spreads load and is reproducible.
//! * Active and standby controllers are distinct controller nodes, the least
//!   loaded (fewest volume paths) first, then by name. Leg `i` is owned by
//!   active controller `i mod active`.
//! * Nodes known to be offline are skipped. A node declared by an operator but
//!   never heard from (state unspecified) is eligible, so a cluster can be
//!   laid out before its agents run.

use std::collections::{BTreeMap, BTreeSet};

use crate::proto::{
    AnaState, Cluster, ControllerNode, ControllerPath, CreateVolumeRequest, DiskNode, Extent, Leg,
    LogicalDisk, NodeState, PathRole, Raid1Group, Volume,
};

/// Mirrors per raid1 group when the request says 0.
pub const DEFAULT_REPLICAS: u32 = 2;

/// Why a volume cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Not enough usable controller nodes.
    #[error(
        "volume needs {needed} distinct controller nodes ({active} active, {standby} standby) \
         but only {usable} are usable (not offline)"
    )]
    NotEnoughControllers {
        /// Active plus standby.
        needed: usize,
        /// Active controllers asked for.
        active: u32,
        /// Standby controllers asked for.
        standby: u32,
        /// Controller nodes not offline.
        usable: usize,
    },
    /// Not enough disk nodes for one raid1 group.
    #[error(
        "cannot place leg {leg}: its raid1 group needs {replicas} distinct disk nodes \
         (in distinct failure domains where tagged) with {bytes} contiguous free bytes each, \
         but only {found} qualify"
    )]
    NotEnoughDiskNodes {
        /// Leg index.
        leg: u32,
        /// Members needed.
        replicas: u32,
        /// Bytes per member.
        bytes: u64,
        /// Members that could be placed.
        found: usize,
    },
    /// The request or the cluster settings are unusable.
    #[error("{0}")]
    Invalid(String),
}

/// Whether `[offset, offset + length)` lies within the node's capacity and
/// overlaps none of its extents.
pub fn range_is_free(node: &DiskNode, offset: u64, length: u64) -> bool {
    let Some(end) = offset.checked_add(length) else {
        return false;
    };
    end <= node.capacity_bytes
        && node.extents.iter().all(|e| {
            end <= e.offset_bytes || e.offset_bytes.saturating_add(e.length_bytes) <= offset
        })
}

/// Free bytes of a node.
pub fn free_bytes(node: &DiskNode) -> u64 {
    let used: u64 = node.extents.iter().map(|e| e.length_bytes).sum();
    node.capacity_bytes.saturating_sub(used)
}

/// The lowest `align`-aligned offset where `length` bytes are free.
fn first_fit(node: &DiskNode, length: u64, align: u64) -> Option<u64> {
    let mut extents: Vec<&Extent> = node.extents.iter().collect();
    extents.sort_by_key(|e| e.offset_bytes);
    let mut candidate = 0u64;
    for e in extents {
        if candidate.checked_add(length)? <= e.offset_bytes {
            break;
        }
        let end = e.offset_bytes.saturating_add(e.length_bytes);
        candidate = candidate.max(end.div_ceil(align).checked_mul(align)?);
    }
    (candidate.checked_add(length)? <= node.capacity_bytes).then_some(candidate)
}

fn usable(state: i32) -> bool {
    state != NodeState::Offline as i32
}

/// Counts how many volume paths each controller serves.
fn controller_load(volumes: &[Volume]) -> BTreeMap<&str, usize> {
    let mut load = BTreeMap::new();
    for path in volumes.iter().flat_map(|v| &v.paths) {
        *load.entry(path.controller.as_str()).or_insert(0) += 1;
    }
    load
}

/// The subsystem NQN of a volume.
pub fn volume_nqn(name: &str) -> String {
    format!("nqn.2024-01.io.fabric:volume:{name}")
}

/// Places a new volume: its legs, raid1 groups and logical disks, and its
/// controller paths. Zero counts in `req` take their defaults.
pub fn place_volume(
    cluster: &Cluster,
    disk_nodes: &[DiskNode],
    controllers: &[ControllerNode],
    volumes: &[Volume],
    req: &CreateVolumeRequest,
) -> Result<Volume, PlacementError> {
    let extent = cluster.extent_size_bytes;
    if extent == 0 {
        return Err(PlacementError::Invalid(
            "the cluster's extent size is 0".into(),
        ));
    }
    let active = req.active_controllers.max(1);
    let replicas = if req.replicas == 0 {
        DEFAULT_REPLICAS
    } else {
        req.replicas
    };
    let legs = if req.legs == 0 { active } else { req.legs };
    if req.size_bytes == 0 {
        return Err(PlacementError::Invalid("volume size is 0".into()));
    }

    // Controllers.
    let load = controller_load(volumes);
    let mut candidates: Vec<&ControllerNode> =
        controllers.iter().filter(|c| usable(c.state)).collect();
    candidates.sort_by_key(|c| (load.get(c.name.as_str()).copied().unwrap_or(0), &c.name));
    let standby = req
        .standby_controllers
        .unwrap_or(u32::from(candidates.len() > active as usize));
    let needed = active as usize + standby as usize;
    if candidates.len() < needed {
        return Err(PlacementError::NotEnoughControllers {
            needed,
            active,
            standby,
            usable: candidates.len(),
        });
    }
    let paths: Vec<ControllerPath> = candidates
        .iter()
        .take(needed)
        .enumerate()
        .map(|(i, c)| {
            let is_active = i < active as usize;
            ControllerPath {
                controller: c.name.clone(),
                role: if is_active {
                    PathRole::Active
                } else {
                    PathRole::Standby
                } as i32,
                ana_state: if is_active {
                    AnaState::Optimized
                } else {
                    AnaState::Inaccessible
                } as i32,
            }
        })
        .collect();

    // Extents.
    let leg_bytes = req
        .size_bytes
        .div_ceil(u64::from(legs))
        .div_ceil(extent)
        .checked_mul(extent)
        .ok_or_else(|| PlacementError::Invalid("volume size overflows".into()))?;
    let mut nodes: Vec<DiskNode> = disk_nodes
        .iter()
        .filter(|n| usable(n.state))
        .cloned()
        .collect();
    let mut placed_legs = Vec::with_capacity(legs as usize);
    for leg in 0..legs {
        let mut fits: Vec<(usize, u64)> = nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| first_fit(n, leg_bytes, extent).map(|off| (i, off)))
            .collect();
        fits.sort_by(|a, b| {
            let (na, nb) = (&nodes[a.0], &nodes[b.0]);
            free_bytes(nb)
                .cmp(&free_bytes(na))
                .then_with(|| na.name.cmp(&nb.name))
        });
        let mut domains = BTreeSet::new();
        let mut chosen = Vec::with_capacity(replicas as usize);
        for (i, offset) in fits {
            let domain = &nodes[i].failure_domain;
            if !domain.is_empty() && !domains.insert(domain.clone()) {
                continue;
            }
            chosen.push((i, offset));
            if chosen.len() == replicas as usize {
                break;
            }
        }
        if chosen.len() < replicas as usize {
            return Err(PlacementError::NotEnoughDiskNodes {
                leg,
                replicas,
                bytes: leg_bytes,
                found: chosen.len(),
            });
        }
        let mut members = Vec::with_capacity(chosen.len());
        for (member, (i, offset)) in chosen.into_iter().enumerate() {
            let node = &mut nodes[i];
            node.extents.push(Extent {
                offset_bytes: offset,
                length_bytes: leg_bytes,
                volume: req.name.clone(),
                leg,
                group: 0,
                member: member as u32,
            });
            members.push(LogicalDisk {
                disk_node: node.name.clone(),
                offset_bytes: offset,
                length_bytes: leg_bytes,
            });
        }
        placed_legs.push(Leg {
            index: leg,
            owner: paths[leg as usize % active as usize].controller.clone(),
            groups: vec![Raid1Group {
                size_bytes: leg_bytes,
                members,
            }],
        });
    }

    Ok(Volume {
        name: req.name.clone(),
        size_bytes: req.size_bytes,
        replicas,
        nqn: volume_nqn(&req.name),
        legs: placed_legs,
        paths,
        hosts: req.hosts.clone(),
        revision: 0,
        create_revision: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn cluster() -> Cluster {
        Cluster {
            name: "t".into(),
            extent_size_bytes: GIB,
            ..Default::default()
        }
    }

    fn dn(name: &str, capacity_gib: u64, domain: &str) -> DiskNode {
        DiskNode {
            name: name.into(),
            capacity_bytes: capacity_gib * GIB,
            failure_domain: domain.into(),
            state: NodeState::Online as i32,
            ..Default::default()
        }
    }

    fn cn(name: &str) -> ControllerNode {
        ControllerNode {
            name: name.into(),
            state: NodeState::Online as i32,
            ..Default::default()
        }
    }

    fn req(name: &str, size_gib: u64, replicas: u32, legs: u32) -> CreateVolumeRequest {
        CreateVolumeRequest {
            name: name.into(),
            size_bytes: size_gib * GIB,
            replicas,
            legs,
            active_controllers: 1,
            ..Default::default()
        }
    }

    fn members(v: &Volume) -> Vec<Vec<&str>> {
        v.legs
            .iter()
            .flat_map(|l| &l.groups)
            .map(|g| g.members.iter().map(|m| m.disk_node.as_str()).collect())
            .collect()
    }

    #[test]
    fn raid1_members_land_on_distinct_nodes_with_most_free_space() {
        let nodes = [dn("a", 10, ""), dn("b", 20, ""), dn("c", 30, "")];
        let v =
            place_volume(&cluster(), &nodes, &[cn("c1")], &[], &req("v", 4, 2, 2)).expect("placed");
        // 4 GiB over 2 legs = 2 GiB per member; c and b have most space, and
        // after leg 0, c (28) and b (18) still lead.
        assert_eq!(members(&v), vec![vec!["c", "b"], vec!["c", "b"]]);
        assert_eq!(v.legs[1].groups[0].members[0].offset_bytes, 2 * GIB);
        assert_eq!(v.nqn, volume_nqn("v"));
    }

    #[test]
    fn tagged_members_use_distinct_failure_domains() {
        let nodes = [
            dn("a", 100, "rack1"),
            dn("b", 90, "rack1"),
            dn("c", 10, "rack2"),
        ];
        let v =
            place_volume(&cluster(), &nodes, &[cn("c1")], &[], &req("v", 1, 2, 1)).expect("placed");
        assert_eq!(members(&v), vec![vec!["a", "c"]]);
        let err = place_volume(&cluster(), &nodes, &[cn("c1")], &[], &req("v", 1, 3, 1))
            .expect_err("three domains needed, two exist");
        assert_eq!(
            err,
            PlacementError::NotEnoughDiskNodes {
                leg: 0,
                replicas: 3,
                bytes: GIB,
                found: 2
            }
        );
        assert!(err.to_string().contains("distinct disk nodes"));
    }

    #[test]
    fn offline_and_full_nodes_are_skipped() {
        let mut off = dn("off", 100, "");
        off.state = NodeState::Offline as i32;
        let mut full = dn("full", 2, "");
        full.extents.push(Extent {
            offset_bytes: 0,
            length_bytes: 2 * GIB,
            ..Default::default()
        });
        let nodes = [off, full, dn("x", 5, ""), dn("y", 5, "")];
        let v =
            place_volume(&cluster(), &nodes, &[cn("c1")], &[], &req("v", 3, 2, 1)).expect("placed");
        assert_eq!(members(&v), vec![vec!["x", "y"]]);
        let err = place_volume(&cluster(), &nodes, &[cn("c1")], &[], &req("v", 6, 2, 1))
            .expect_err("no node has 6 GiB");
        assert!(matches!(
            err,
            PlacementError::NotEnoughDiskNodes { found: 0, .. }
        ));
    }

    #[test]
    fn first_fit_reuses_freed_gaps_on_extent_boundaries() {
        let mut node = dn("a", 10, "");
        node.extents = vec![
            Extent {
                offset_bytes: 0,
                length_bytes: GIB,
                ..Default::default()
            },
            Extent {
                offset_bytes: 3 * GIB,
                length_bytes: GIB / 2,
                ..Default::default()
            },
        ];
        assert_eq!(first_fit(&node, 2 * GIB, GIB), Some(GIB));
        assert_eq!(first_fit(&node, 3 * GIB, GIB), Some(4 * GIB));
        assert_eq!(first_fit(&node, 7 * GIB, GIB), None);
        assert!(range_is_free(&node, GIB, 2 * GIB));
        assert!(!range_is_free(&node, 2 * GIB, 2 * GIB));
        assert!(!range_is_free(&node, 9 * GIB, 2 * GIB));
        assert!(!range_is_free(&node, u64::MAX, 2));
    }

    #[test]
    fn controllers_are_distinct_least_loaded_and_own_legs_round_robin() {
        let nodes = [dn("a", 100, ""), dn("b", 100, "")];
        let ctrls = [cn("c1"), cn("c2"), cn("c3")];
        let busy = Volume {
            paths: vec![ControllerPath {
                controller: "c1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut r = req("v", 4, 2, 4);
        r.active_controllers = 2;
        let v = place_volume(&cluster(), &nodes, &ctrls, &[busy], &r).expect("placed");
        let names: Vec<&str> = v.paths.iter().map(|p| p.controller.as_str()).collect();
        // c1 is busiest: c2, c3 active, c1 standby (the default with spares).
        assert_eq!(names, vec!["c2", "c3", "c1"]);
        assert_eq!(v.paths[2].role, PathRole::Standby as i32);
        assert_eq!(v.paths[2].ana_state, AnaState::Inaccessible as i32);
        let owners: Vec<&str> = v.legs.iter().map(|l| l.owner.as_str()).collect();
        assert_eq!(owners, vec!["c2", "c3", "c2", "c3"]);

        r.standby_controllers = Some(2);
        let err = place_volume(&cluster(), &nodes, &ctrls, &[], &r).expect_err("4 > 3");
        assert!(matches!(
            err,
            PlacementError::NotEnoughControllers {
                needed: 4,
                usable: 3,
                ..
            }
        ));
    }

    #[test]
    fn placement_is_deterministic() {
        let nodes: Vec<DiskNode> = (0..6).map(|i| dn(&format!("n{i}"), 50, "")).collect();
        let ctrls = [cn("c1"), cn("c2")];
        let a = place_volume(&cluster(), &nodes, &ctrls, &[], &req("v", 7, 3, 3));
        let b = place_volume(&cluster(), &nodes, &ctrls, &[], &req("v", 7, 3, 3));
        assert_eq!(a, b);
        let v = a.expect("placed");
        // 7 GiB over 3 legs rounds up to 3 GiB per member.
        assert!(v.legs.iter().all(|l| l.groups[0].size_bytes == 3 * GIB));
        for leg in &v.legs {
            let names: BTreeSet<&str> = leg.groups[0]
                .members
                .iter()
                .map(|m| m.disk_node.as_str())
                .collect();
            assert_eq!(names.len(), 3, "members of leg {} share a node", leg.index);
        }
    }
}
