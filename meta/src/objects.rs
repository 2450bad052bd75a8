//! Helpers over the cluster objects: their kinds, names and revisions, and
//! typed access to the `Object` envelope.

use crate::proto::{
    object, Cluster, ControllerNode, DiskNode, Host, Object, ObjectKind, Operation, Snapshot,
    Volume,
};

/// The name under which the single cluster object is stored.
pub const CLUSTER_NAME_KEY: &str = "cluster";

/// Separates the volume and the snapshot in a snapshot's key (`vol@snap`).
pub const SNAPSHOT_SEPARATOR: char = '@';

/// A cluster object type that lives in the [`Object`] envelope.
pub trait MetaObject: Sized {
    /// Its kind.
    const KIND: ObjectKind;
    /// Unwraps it from the envelope (None when the envelope holds another kind).
    fn from_object(object: Object) -> Option<Self>;
    /// Wraps it in the envelope.
    fn into_object(self) -> Object;
}

macro_rules! meta_object {
    ($t:ident, $variant:ident, $kind:ident) => {
        impl MetaObject for $t {
            const KIND: ObjectKind = ObjectKind::$kind;
            fn from_object(object: Object) -> Option<Self> {
                match object.kind {
                    Some(object::Kind::$variant(o)) => Some(o),
                    _ => None,
                }
            }
            fn into_object(self) -> Object {
                Object {
                    kind: Some(object::Kind::$variant(self)),
                }
            }
        }
    };
}

meta_object!(Cluster, Cluster, Cluster);
meta_object!(DiskNode, DiskNode, DiskNode);
meta_object!(ControllerNode, ControllerNode, ControllerNode);
meta_object!(Host, Host, Host);
meta_object!(Volume, Volume, Volume);
meta_object!(Snapshot, Snapshot, Snapshot);
meta_object!(Operation, Operation, Operation);

/// The key of a snapshot: `volume@name`.
pub fn snapshot_key(volume: &str, name: &str) -> String {
    format!("{volume}{SNAPSHOT_SEPARATOR}{name}")
}

/// The kind of an object (Unspecified for an empty envelope).
pub fn kind_of(object: &Object) -> ObjectKind {
    match &object.kind {
        Some(object::Kind::Cluster(_)) => ObjectKind::Cluster,
        Some(object::Kind::DiskNode(_)) => ObjectKind::DiskNode,
        Some(object::Kind::ControllerNode(_)) => ObjectKind::ControllerNode,
        Some(object::Kind::Host(_)) => ObjectKind::Host,
        Some(object::Kind::Volume(_)) => ObjectKind::Volume,
        Some(object::Kind::Snapshot(_)) => ObjectKind::Snapshot,
        Some(object::Kind::Operation(_)) => ObjectKind::Operation,
        None => ObjectKind::Unspecified,
    }
}

/// The name an object is stored under (snapshots: `volume@name`; the
/// cluster: [`CLUSTER_NAME_KEY`]).
pub fn key_name(object: &Object) -> String {
    match &object.kind {
        Some(object::Kind::Cluster(_)) | None => CLUSTER_NAME_KEY.to_string(),
        Some(object::Kind::DiskNode(o)) => o.name.clone(),
        Some(object::Kind::ControllerNode(o)) => o.name.clone(),
        Some(object::Kind::Host(o)) => o.name.clone(),
        Some(object::Kind::Volume(o)) => o.name.clone(),
        Some(object::Kind::Snapshot(o)) => snapshot_key(&o.volume, &o.name),
        Some(object::Kind::Operation(o)) => o.name.clone(),
    }
}

/// The (revision, create_revision) of an object.
pub fn revisions(object: &Object) -> (u64, u64) {
    match &object.kind {
        Some(object::Kind::Cluster(o)) => (o.revision, o.create_revision),
        Some(object::Kind::DiskNode(o)) => (o.revision, o.create_revision),
        Some(object::Kind::ControllerNode(o)) => (o.revision, o.create_revision),
        Some(object::Kind::Host(o)) => (o.revision, o.create_revision),
        Some(object::Kind::Volume(o)) => (o.revision, o.create_revision),
        Some(object::Kind::Snapshot(o)) => (o.revision, o.create_revision),
        Some(object::Kind::Operation(o)) => (o.revision, o.create_revision),
        None => (0, 0),
    }
}

/// Sets the revision of an object, and its create_revision when unset.
pub fn stamp(object: &mut Object, revision: u64) {
    let (rev, create) = match &mut object.kind {
        Some(object::Kind::Cluster(o)) => (&mut o.revision, &mut o.create_revision),
        Some(object::Kind::DiskNode(o)) => (&mut o.revision, &mut o.create_revision),
        Some(object::Kind::ControllerNode(o)) => (&mut o.revision, &mut o.create_revision),
        Some(object::Kind::Host(o)) => (&mut o.revision, &mut o.create_revision),
        Some(object::Kind::Volume(o)) => (&mut o.revision, &mut o.create_revision),
        Some(object::Kind::Snapshot(o)) => (&mut o.revision, &mut o.create_revision),
        Some(object::Kind::Operation(o)) => (&mut o.revision, &mut o.create_revision),
        None => return,
    };
    *rev = revision;
    if *create == 0 {
        *create = revision;
    }
}

/// The lower-case, human name of a kind (`disk node`).
pub fn kind_label(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Cluster => "cluster",
        ObjectKind::DiskNode => "disk node",
        ObjectKind::ControllerNode => "controller node",
        ObjectKind::Host => "host",
        ObjectKind::Volume => "volume",
        ObjectKind::Snapshot => "snapshot",
        ObjectKind::Operation => "operation",
        ObjectKind::Unspecified => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_and_stamping() {
        let mut object = Snapshot {
            name: "s1".into(),
            volume: "v1".into(),
            ..Default::default()
        }
        .into_object();
        assert_eq!(kind_of(&object), ObjectKind::Snapshot);
        assert_eq!(key_name(&object), "v1@s1");
        stamp(&mut object, 7);
        stamp(&mut object, 9);
        assert_eq!(revisions(&object), (9, 7));
        assert!(Volume::from_object(object.clone()).is_none());
        assert_eq!(Snapshot::from_object(object).map(|s| s.revision), Some(9));
    }
}
