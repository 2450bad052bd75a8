//! Namespaces: a block device exposed under an NSID, with its identifiers
//! and ANA group.

use std::sync::Arc;

use raid::DeviceRef;

use crate::wire::identify::{
    nidt, IdentifyNamespace, NamespaceDescriptor, NMIC_SHARED, NSFEAT_OPTPERF,
};

/// One namespace of a subsystem.
pub struct Namespace {
    /// Namespace ID (1-based).
    pub nsid: u32,
    /// The storage behind it.
    pub device: DeviceRef,
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// UUID.
    pub uuid: [u8; 16],
    /// ANA group.
    pub ana_group: u32,
}

/// DLFEAT: deallocated blocks read as zeroes; Write Zeroes may deallocate.
const DLFEAT_ZEROES: u8 = 0x01 | 0x08;

impl Namespace {
    /// A namespace whose identifiers derive from the subsystem NQN and NSID,
    /// so that they are stable across restarts and identical on every
    /// controller that exports the same subsystem.
    pub fn new(subnqn: &str, nsid: u32, device: DeviceRef, ana_group: u32) -> Arc<Namespace> {
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("{subnqn}/ns/{nsid}").as_bytes(),
        );
        Arc::new(Namespace {
            nsid,
            device,
            nguid: *id.as_bytes(),
            uuid: *id.as_bytes(),
            ana_group,
        })
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.device.block_size()
    }

    /// Identify Namespace data.
    pub fn identify(&self) -> IdentifyNamespace {
        let blocks = self.device.num_blocks();
        let opt = self.device.optimal_io_blocks();
        IdentifyNamespace {
            nsze: blocks,
            ncap: blocks,
            nuse: blocks,
            nsfeat: if opt > 1 { NSFEAT_OPTPERF } else { 0 },
            nmic: NMIC_SHARED,
            dlfeat: DLFEAT_ZEROES,
            npwg: opt.saturating_sub(1).min(u16::MAX as u32) as u16,
            nows: opt.saturating_sub(1).min(u16::MAX as u32) as u16,
            anagrpid: self.ana_group,
            nguid: self.nguid,
            eui64: [0; 8],
            lbads: self.block_size().trailing_zeros() as u8,
        }
    }

    /// Namespace identification descriptors: NGUID, UUID and command set (NVM).
    pub fn descriptors(&self) -> Vec<NamespaceDescriptor> {
        vec![
            NamespaceDescriptor {
                nidt: nidt::NGUID,
                nid: self.nguid.to_vec(),
            },
            NamespaceDescriptor {
                nidt: nidt::UUID,
                nid: self.uuid.to_vec(),
            },
            NamespaceDescriptor {
                nidt: nidt::CSI,
                nid: vec![0],
            },
        ]
    }
}
