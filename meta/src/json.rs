//! JSON output of the public types: enum fields are written by their proto
//! names (`NODE_STATE_ONLINE`) instead of numbers, as the proto JSON mapping
//! does. Used by the generated code through `#[serde(serialize_with)]`.

use serde::Serializer;

/// A generated protobuf enum that can name its values.
pub trait ProtoEnum: Sized + TryFrom<i32> {
    /// The value's name in the .proto file.
    fn proto_name(&self) -> &'static str;
}

macro_rules! proto_enums {
    ($($t:ident),*) => {$(
        impl ProtoEnum for crate::proto::$t {
            fn proto_name(&self) -> &'static str {
                self.as_str_name()
            }
        }
    )*};
}

proto_enums!(
    NodeState,
    PathRole,
    AnaState,
    SnapshotState,
    OperationState,
    ObjectKind,
    NodeKind,
    EventType,
    RaftRole
);

/// Writes an enum field by name (or as its number when unknown).
pub fn enum_name<E: ProtoEnum, S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    match E::try_from(*value) {
        Ok(e) => s.serialize_str(e.proto_name()),
        Err(_) => s.serialize_i32(*value),
    }
}

/// The short lower-case name of an enum value for tables: `NODE_STATE_ONLINE`
/// becomes `online`.
pub fn short_name<E: ProtoEnum>(value: i32) -> String {
    let Ok(e) = E::try_from(value) else {
        return value.to_string();
    };
    let full = e.proto_name();
    // Generated names start with the enum's name in upper snake case.
    let trimmed = ENUM_PREFIXES
        .iter()
        .find_map(|p| full.strip_prefix(p))
        .unwrap_or(full);
    trimmed.to_ascii_lowercase().replace('_', "-")
}

/// Prefixes of the generated enum value names.
const ENUM_PREFIXES: &[&str] = &[
    "NODE_STATE_",
    "PATH_ROLE_",
    "ANA_STATE_",
    "SNAPSHOT_STATE_",
    "OPERATION_STATE_",
    "OBJECT_KIND_",
    "NODE_KIND_",
    "EVENT_TYPE_",
    "RAFT_ROLE_",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{AnaState, NodeState};

    #[test]
    fn short_names_drop_the_prefix() {
        assert_eq!(short_name::<NodeState>(NodeState::Online as i32), "online");
        assert_eq!(
            short_name::<AnaState>(AnaState::NonOptimized as i32),
            "non-optimized"
        );
        assert_eq!(short_name::<NodeState>(99), "99");
    }

    #[test]
    fn objects_serialize_enums_by_name() {
        let node = crate::proto::ControllerNode {
            name: "c1".into(),
            state: NodeState::Offline as i32,
            ..Default::default()
        };
        let json = serde_json::to_value(&node).expect("serializes");
        assert_eq!(json["state"], "NODE_STATE_OFFLINE");
        assert_eq!(json["name"], "c1");
    }
}
