//! How `fabric-ctl` prints objects: aligned tables for people, JSON for
//! scripts.

use meta::json::short_name;
use meta::placement::free_bytes;
use meta::proto::{
    AnaState, Cluster, ControllerNode, DiskNode, Host, NodeState, Operation, OperationState,
    PathRole, RaftRole, Replica, Snapshot, SnapshotState, StatusResponse, Volume,
};
use raid::format_size;
use serde::Serialize;

/// A text table with left-aligned columns.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            padded.join("  ").trim_end().to_string() + "\n"
        };
        let mut out = line(self.headers.clone());
        for row in &self.rows {
            out += &line(row.iter().map(String::as_str).collect());
        }
        out
    }
}

/// An object `fabric-ctl` can print.
pub trait Show: Serialize {
    /// Column headers of a listing.
    const HEADERS: &'static [&'static str];
    /// The object as a listing row.
    fn row(&self) -> Vec<String>;
    /// The object in detail (default: its row as a one-row table).
    fn details(&self) -> String {
        let mut t = Table::new(Self::HEADERS);
        t.row(self.row());
        t.render()
    }
}

/// Prints one object.
pub fn print_one<T: Show>(object: &T, json: bool) {
    if json {
        println!("{}", to_json(object));
    } else {
        print!("{}", object.details());
    }
}

/// Prints a listing (JSON: the items and the revision of the listing).
pub fn print_list<T: Show>(items: &[T], revision: u64, json: bool) {
    if json {
        #[derive(Serialize)]
        struct Listing<'a, T> {
            items: &'a [T],
            revision: u64,
        }
        println!("{}", to_json(&Listing { items, revision }));
    } else {
        let mut t = Table::new(T::HEADERS);
        for item in items {
            t.row(item.row());
        }
        print!("{}", t.render());
    }
}

/// Pretty JSON of a value.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

impl Show for Cluster {
    const HEADERS: &'static [&'static str] = &[
        "NAME",
        "EXTENT",
        "RAID0-CHUNK",
        "THIN-BLOCK",
        "RAID1-REGION",
        "REVISION",
    ];
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            format_size(self.extent_size_bytes),
            format_size(self.raid0_chunk_bytes),
            format_size(self.thin_block_bytes),
            format_size(self.raid1_region_bytes),
            self.revision.to_string(),
        ]
    }
}

impl Show for DiskNode {
    const HEADERS: &'static [&'static str] = &[
        "NAME", "ADDRESS", "CAPACITY", "FREE", "DOMAIN", "STATE", "EXTENTS",
    ];
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.address.clone(),
            format_size(self.capacity_bytes),
            format_size(free_bytes(self)),
            or_dash(&self.failure_domain),
            short_name::<NodeState>(self.state),
            self.extents.len().to_string(),
        ]
    }
    fn details(&self) -> String {
        let mut t = Table::new(Self::HEADERS);
        t.row(self.row());
        let mut extents = Table::new(&["OFFSET", "LENGTH", "VOLUME", "LEG", "GROUP", "MEMBER"]);
        for e in &self.extents {
            extents.row(vec![
                format_size(e.offset_bytes),
                format_size(e.length_bytes),
                e.volume.clone(),
                e.leg.to_string(),
                e.group.to_string(),
                e.member.to_string(),
            ]);
        }
        format!("{}\n{}", t.render(), extents.render())
    }
}

impl Show for ControllerNode {
    const HEADERS: &'static [&'static str] = &["NAME", "ADDRESS", "STATE"];
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.address.clone(),
            short_name::<NodeState>(self.state),
        ]
    }
}

impl Show for Host {
    const HEADERS: &'static [&'static str] = &["NAME", "NQN"];
    fn row(&self) -> Vec<String> {
        vec![self.name.clone(), self.nqn.clone()]
    }
}

impl Show for Volume {
    const HEADERS: &'static [&'static str] = &[
        "NAME", "SIZE", "REPLICAS", "LEGS", "ACTIVE", "STANDBY", "HOSTS",
    ];
    fn row(&self) -> Vec<String> {
        let with_role = |role: PathRole| {
            let names: Vec<&str> = self
                .paths
                .iter()
                .filter(|p| p.role == role as i32)
                .map(|p| p.controller.as_str())
                .collect();
            or_dash(&names.join(","))
        };
        vec![
            self.name.clone(),
            format_size(self.size_bytes),
            self.replicas.to_string(),
            self.legs.len().to_string(),
            with_role(PathRole::Active),
            with_role(PathRole::Standby),
            or_dash(&self.hosts.join(",")),
        ]
    }
    fn details(&self) -> String {
        let mut t = Table::new(Self::HEADERS);
        t.row(self.row());
        let mut paths = Table::new(&["CONTROLLER", "ROLE", "ANA"]);
        for p in &self.paths {
            paths.row(vec![
                p.controller.clone(),
                short_name::<PathRole>(p.role),
                short_name::<AnaState>(p.ana_state),
            ]);
        }
        let mut layout = Table::new(&[
            "LEG",
            "OWNER",
            "GROUP",
            "SIZE",
            "MEMBER",
            "DISK-NODE",
            "OFFSET",
        ]);
        for leg in &self.legs {
            for (g, group) in leg.groups.iter().enumerate() {
                for (m, member) in group.members.iter().enumerate() {
                    layout.row(vec![
                        leg.index.to_string(),
                        leg.owner.clone(),
                        g.to_string(),
                        format_size(group.size_bytes),
                        m.to_string(),
                        member.disk_node.clone(),
                        format_size(member.offset_bytes),
                    ]);
                }
            }
        }
        format!(
            "{}NQN  {}\n\n{}\n{}",
            t.render(),
            self.nqn,
            paths.render(),
            layout.render()
        )
    }
}

impl Show for Snapshot {
    const HEADERS: &'static [&'static str] = &["VOLUME", "NAME", "STATE", "OPERATION"];
    fn row(&self) -> Vec<String> {
        vec![
            self.volume.clone(),
            self.name.clone(),
            short_name::<SnapshotState>(self.state),
            self.operation.clone(),
        ]
    }
}

impl Show for Operation {
    const HEADERS: &'static [&'static str] =
        &["NAME", "KIND", "TARGET", "STATE", "STEPS-DONE", "REVISION"];
    fn row(&self) -> Vec<String> {
        let done = self
            .steps
            .iter()
            .filter(|s| s.state == OperationState::Done as i32)
            .count();
        vec![
            self.name.clone(),
            self.kind.clone(),
            self.target.clone(),
            short_name::<OperationState>(self.state),
            format!("{done}/{}", self.steps.len()),
            self.revision.to_string(),
        ]
    }
    fn details(&self) -> String {
        let mut t = Table::new(Self::HEADERS);
        t.row(self.row());
        let mut steps = Table::new(&["STEP", "NAME", "STATE", "MESSAGE"]);
        for (i, s) in self.steps.iter().enumerate() {
            steps.row(vec![
                i.to_string(),
                s.name.clone(),
                short_name::<OperationState>(s.state),
                or_dash(&s.message),
            ]);
        }
        format!("{}\n{}", t.render(), steps.render())
    }
}

impl Show for StatusResponse {
    const HEADERS: &'static [&'static str] = &[
        "ID",
        "ROLE",
        "LEADER",
        "TERM",
        "COMMIT",
        "APPLIED",
        "FIRST-LOG",
        "REVISION",
    ];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            short_name::<RaftRole>(self.role),
            self.leader_id.to_string(),
            self.term.to_string(),
            self.commit_index.to_string(),
            self.applied_index.to_string(),
            self.first_log_index.to_string(),
            self.revision.to_string(),
        ]
    }
}

/// A replica with whether it leads, for `cluster list`.
#[derive(Serialize)]
pub struct ReplicaRow {
    /// The member.
    #[serde(flatten)]
    pub replica: Replica,
    /// Whether it is the leader.
    pub leader: bool,
}

impl Show for ReplicaRow {
    const HEADERS: &'static [&'static str] = &["ID", "ADDRESS", "VOTER", "LEADER"];
    fn row(&self) -> Vec<String> {
        vec![
            self.replica.id.to_string(),
            self.replica.address.clone(),
            if self.replica.voter { "yes" } else { "no" }.into(),
            if self.leader { "*" } else { "" }.into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["wide-cell".into(), "x".into()]);
        assert_eq!(t.render(), "A          LONGER\nwide-cell  x\n");
    }

    #[test]
    fn declared_nodes_show_unknown_state() {
        let n = ControllerNode {
            name: "c1".into(),
            address: "a".into(),
            ..Default::default()
        };
        assert_eq!(n.row(), vec!["c1", "a", "unknown"]);
        assert!(
            to_json(&n).contains("\"NODE_STATE_UNKNOWN\""),
            "{}",
            to_json(&n)
        );
    }
}
