//! Generates the protobuf types and the tonic services from `proto/`.
//!
//! The public types (package `fabric.meta.v1`) derive `serde::Serialize` so
//! that clients can print them as JSON; enum fields are written by name.

/// Enum-typed fields of the public messages, with their enum type.
const ENUM_FIELDS: &[(&str, &str)] = &[
    ("DiskNode.state", "NodeState"),
    ("ControllerNode.state", "NodeState"),
    ("ControllerPath.role", "PathRole"),
    ("ControllerPath.ana_state", "AnaState"),
    ("Snapshot.state", "SnapshotState"),
    ("OperationStep.state", "OperationState"),
    ("Operation.state", "OperationState"),
    ("ObjectRef.kind", "ObjectKind"),
    ("ListRequest.kind", "ObjectKind"),
    ("HeartbeatRequest.kind", "NodeKind"),
    ("UpdateOperationRequest.state", "OperationState"),
    ("WatchEvent.type", "EventType"),
    ("StatusResponse.role", "RaftRole"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = tonic_prost_build::configure()
        .type_attribute(".fabric.meta.v1", "#[derive(serde::Serialize)]");
    for (field, enum_type) in ENUM_FIELDS {
        builder = builder.field_attribute(
            format!(".fabric.meta.v1.{field}"),
            format!("#[serde(serialize_with = \"crate::json::enum_name::<{enum_type}, _>\")]"),
        );
    }
    // The internal package refers to the public one as `crate::proto`. Its
    // run leaves an empty file for the public package, so it goes first and
    // the public run below overwrites that file.
    tonic_prost_build::configure()
        .extern_path(".fabric.meta.v1", "crate::proto")
        .compile_protos(&["proto/peer.proto"], &["proto"])?;
    builder.compile_protos(&["proto/meta.proto"], &["proto"])?;
    Ok(())
}
