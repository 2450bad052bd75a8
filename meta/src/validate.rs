//! Checks of client requests before anything is proposed: names, addresses,
//! NQNs and sizes, and the defaults of the cluster settings. Every message
//! names the offending field.

use crate::error::MetaError;
use crate::proto::{CreateClusterRequest, CreateVolumeRequest, ObjectKind};

/// Default extent allocation unit: 1 GiB.
pub const DEFAULT_EXTENT_BYTES: u64 = 1 << 30;
/// Default raid0 chunk: 16 KiB.
pub const DEFAULT_RAID0_CHUNK_BYTES: u64 = 16 << 10;
/// Default thin block: 1 MiB.
pub const DEFAULT_THIN_BLOCK_BYTES: u64 = 1 << 20;
/// Default raid1 region: 4 MiB.
pub const DEFAULT_RAID1_REGION_BYTES: u64 = 4 << 20;
/// Longest object name.
pub const MAX_NAME_LEN: usize = 63;
/// Longest NQN (NVMe base specification).
pub const MAX_NQN_LEN: usize = 223;
/// Most members of a raid1 group, legs, and controllers of a volume.
pub const MAX_REPLICAS: u32 = 3;
/// Most legs of a volume.
pub const MAX_LEGS: u32 = 64;
/// Most controllers (active or standby) of a volume.
pub const MAX_CONTROLLERS: u32 = 16;
/// Most hosts allowed to connect to one volume (each is checked on every
/// Connect; a Raft entry should stay small).
pub const MAX_VOLUME_HOSTS: usize = 1024;

fn invalid(msg: String) -> MetaError {
    MetaError::InvalidArgument(msg)
}

/// A name: 1 to 63 characters of `[A-Za-z0-9._-]`, starting alphanumeric.
pub fn name(field: &str, value: &str) -> Result<(), MetaError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} '{value}' is not a valid name (1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -, starting with a letter or digit)"
        )))
    }
}

/// A network address: 1 to 255 printable characters without spaces.
pub fn address(field: &str, value: &str) -> Result<(), MetaError> {
    if !value.is_empty() && value.len() <= 255 && value.chars().all(|c| c.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(invalid(format!("{field} '{value}' is not a valid address")))
    }
}

/// An NVMe qualified name.
pub fn nqn(value: &str) -> Result<(), MetaError> {
    if value.starts_with("nqn.")
        && value.len() <= MAX_NQN_LEN
        && value.chars().all(|c| c.is_ascii_graphic())
    {
        Ok(())
    } else {
        Err(invalid(format!(
            "nqn '{value}' is not a valid NQN (nqn.yyyy-mm.reverse.domain:..., at most {MAX_NQN_LEN} characters)"
        )))
    }
}

/// A failure-domain tag: empty or a name.
pub fn failure_domain(value: &str) -> Result<(), MetaError> {
    if value.is_empty() {
        Ok(())
    } else {
        name("failure_domain", value)
    }
}

/// Most bytes of the message recorded with an operation's step.
pub const MAX_STEP_MESSAGE_LEN: usize = 4096;

/// The message recorded with an operation's step: at most
/// [`MAX_STEP_MESSAGE_LEN`] bytes (every object lives in the Raft log, its
/// snapshots and the watch history).
pub fn step_message(value: &str) -> Result<(), MetaError> {
    if value.len() <= MAX_STEP_MESSAGE_LEN {
        Ok(())
    } else {
        Err(invalid(format!(
            "message of {} bytes is over the {MAX_STEP_MESSAGE_LEN}-byte bound",
            value.len()
        )))
    }
}

/// A known, specified object kind.
pub fn kind(value: i32) -> Result<ObjectKind, MetaError> {
    ObjectKind::try_from(value)
        .ok()
        .filter(|k| *k != ObjectKind::Unspecified)
        .ok_or_else(|| invalid(format!("kind {value} is not an object kind")))
}

fn power_of_two(field: &str, value: u64) -> Result<(), MetaError> {
    if value.is_power_of_two() {
        Ok(())
    } else {
        Err(invalid(format!("{field} {value} is not a power of two")))
    }
}

/// Fills the cluster defaults and checks the sizes fit together.
pub fn cluster(req: &mut CreateClusterRequest) -> Result<(), MetaError> {
    name("name", &req.name)?;
    let default = |v: &mut u64, d: u64| {
        if *v == 0 {
            *v = d;
        }
    };
    default(&mut req.extent_size_bytes, DEFAULT_EXTENT_BYTES);
    default(&mut req.raid0_chunk_bytes, DEFAULT_RAID0_CHUNK_BYTES);
    default(&mut req.thin_block_bytes, DEFAULT_THIN_BLOCK_BYTES);
    default(&mut req.raid1_region_bytes, DEFAULT_RAID1_REGION_BYTES);
    power_of_two("extent_size_bytes", req.extent_size_bytes)?;
    power_of_two("raid0_chunk_bytes", req.raid0_chunk_bytes)?;
    power_of_two("thin_block_bytes", req.thin_block_bytes)?;
    power_of_two("raid1_region_bytes", req.raid1_region_bytes)?;
    let largest = req
        .thin_block_bytes
        .max(req.raid1_region_bytes)
        .max(req.raid0_chunk_bytes);
    if req.extent_size_bytes < largest {
        return Err(invalid(format!(
            "extent_size_bytes {} is smaller than a thin block, raid1 region or raid0 chunk ({largest})",
            req.extent_size_bytes
        )));
    }
    Ok(())
}

/// Checks a volume request (zero counts mean defaults).
pub fn volume(req: &CreateVolumeRequest) -> Result<(), MetaError> {
    name("name", &req.name)?;
    if req.size_bytes == 0 || req.size_bytes % 4096 != 0 {
        return Err(invalid(format!(
            "size_bytes {} must be a positive multiple of 4096",
            req.size_bytes
        )));
    }
    if req.replicas > MAX_REPLICAS {
        return Err(invalid(format!(
            "replicas {} is more than {MAX_REPLICAS}",
            req.replicas
        )));
    }
    if req.legs > MAX_LEGS {
        return Err(invalid(format!(
            "legs {} is more than {MAX_LEGS}",
            req.legs
        )));
    }
    if req.active_controllers > MAX_CONTROLLERS
        || req.standby_controllers.unwrap_or(0) > MAX_CONTROLLERS
    {
        return Err(invalid(format!(
            "at most {MAX_CONTROLLERS} active and {MAX_CONTROLLERS} standby controllers"
        )));
    }
    if req.hosts.len() > MAX_VOLUME_HOSTS {
        return Err(invalid(format!(
            "hosts: {} listed, at most {MAX_VOLUME_HOSTS}",
            req.hosts.len()
        )));
    }
    for host in &req.hosts {
        name("host", host)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("name", "vol-1.a_b").is_ok());
        for bad in ["", "-x", "a b", "a/b", "a@b", &"x".repeat(64)] {
            let err = name("name", bad).expect_err(bad);
            assert!(err.to_string().starts_with("name '"), "{err}");
        }
    }

    #[test]
    fn step_messages_are_bounded() {
        assert!(step_message("").is_ok());
        assert!(step_message(&"x".repeat(MAX_STEP_MESSAGE_LEN)).is_ok());
        let err = step_message(&"x".repeat(MAX_STEP_MESSAGE_LEN + 1)).expect_err("over the bound");
        assert!(err.to_string().contains("4097 bytes"), "{err}");
    }

    #[test]
    fn cluster_defaults_and_size_rules() {
        let mut req = CreateClusterRequest {
            name: "c".into(),
            ..Default::default()
        };
        cluster(&mut req).expect("defaults are valid");
        assert_eq!(req.extent_size_bytes, DEFAULT_EXTENT_BYTES);
        assert_eq!(req.raid0_chunk_bytes, 16 << 10);
        req.extent_size_bytes = 1 << 20;
        let err = cluster(&mut req).expect_err("extent below raid1 region");
        assert!(err.to_string().contains("extent_size_bytes"));
        req.extent_size_bytes = 3 << 30;
        assert!(cluster(&mut req).is_err());
    }

    #[test]
    fn volume_rules() {
        let mut req = CreateVolumeRequest {
            name: "v".into(),
            size_bytes: 1 << 30,
            ..Default::default()
        };
        volume(&req).expect("valid");
        req.size_bytes = 1000;
        assert!(volume(&req)
            .expect_err("unaligned")
            .to_string()
            .contains("size_bytes"));
        req.size_bytes = 1 << 30;
        req.replicas = 4;
        assert!(volume(&req)
            .expect_err("too many")
            .to_string()
            .contains("replicas"));
        req.replicas = 2;
        req.hosts = vec!["h".into(); MAX_VOLUME_HOSTS];
        volume(&req).expect("hosts at the bound");
        req.hosts.push("h".into());
        assert!(volume(&req)
            .expect_err("too many hosts")
            .to_string()
            .starts_with("hosts: 1025 listed"));
        assert!(nqn("nqn.2014-08.org.nvmexpress:uuid:1").is_ok());
        assert!(nqn("iqn.x").is_err());
    }
}
