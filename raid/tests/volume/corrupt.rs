//! Metadata read back from a device is untrusted: damage that still has a
//! valid checksum (a bug elsewhere, a stale copy) must give an error or a
//! consistent open, never a panic. Each case damages one byte of one
//! metadata page, re-seals the page checksum so the damage gets past it,
//! opens, and drives the result.

use std::sync::Arc;

use proptest::prelude::*;
use raid::{
    buf, BlockDevice, Bytes, DeviceRef, MemoryDevice, Raid1, Raid1Options, ThinOptions, ThinPool,
};

use crate::common::*;

fn opts() -> ThinOptions {
    ThinOptions {
        block_bytes: 64 << 10,
        low_water_blocks: None,
    }
}

/// Apply `xor` at byte `at` of the 4 KiB page at block `page` and fix the
/// checksum the format keeps there.
async fn damage(
    dev: &DeviceRef,
    page: u64,
    at: usize,
    xor: u8,
    crc_at: usize,
    crc_over: std::ops::Range<usize>,
) {
    let mut b = dev.read(page, buf::alloc(BS)).await.unwrap();
    b[at] ^= xor;
    let crc = crc32c::crc32c(&b[crc_over]);
    b[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    dev.write(page, b.freeze()).await.unwrap();
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn damaged_thin_metadata_never_panics(page in 0u64..12, at in 8usize..BS, xor in 1u8..=255) {
        run(async {
            let data: DeviceRef = Arc::new(MemoryDevice::new(4 << 20, BS as u32));
            let meta: DeviceRef = Arc::new(MemoryDevice::new(256 << 10, BS as u32));
            let pool = ThinPool::format(data.clone(), meta.clone(), &opts()).await.unwrap();
            for id in 0..3 {
                let t = pool.create_thin(id, 600 * 16).await.unwrap();
                t.write([0, 509 * 16, 250 * 16][id as usize], Bytes::from(vec![id as u8 + 1; BS])).await.unwrap();
            }
            pool.snapshot(1, 7).await.unwrap();
            pool.commit().await.unwrap();
            drop(pool);
            // Superblocks keep their CRC at the end; pages over bytes 8.. at 4.
            if page < 2 {
                damage(&meta, page, at.min(BS - 5), xor, BS - 4, 0..BS - 4).await;
            } else {
                damage(&meta, page, at, xor, 4, 8..BS).await;
            }
            if let Ok(pool) = ThinPool::open(data, meta, &opts()).await {
                for id in pool.thin_ids() {
                    let t = pool.open_thin(id).unwrap();
                    let n = t.num_blocks().min(600 * 16);
                    for lba in (0..n).step_by(16 * 101) {
                        let _ = t.read(lba, buf::alloc(BS)).await;
                        let _ = t.write(lba, Bytes::from(vec![9; BS])).await;
                    }
                    let _ = t.discard(0, n.min(64)).await;
                }
                let _ = pool.snapshot(1, 99).await;
                let _ = pool.commit().await;
            }
        });
    }

    #[test]
    fn damaged_raid1_superblock_never_panics(at in 0usize..BS - 4, xor in 1u8..=255) {
        run(async {
            let members = vec![faulty(4 << 20), faulty(4 << 20)];
            let o = Raid1Options { region_bytes: 256 << 10, ..Default::default() };
            Raid1::create(refs(&members), &o).await.unwrap();
            let m0: DeviceRef = members[0].clone();
            damage(&m0, 0, at, xor, BS - 4, 0..BS - 4).await;
            if let Ok(raid) = Raid1::open(refs(&members)).await {
                let _ = raid.write(0, Bytes::from(vec![1; BS])).await;
                let _ = raid.read(0, buf::alloc(BS)).await;
                let _ = raid.resync_now(&raid::RateLimit::default()).await;
            }
        });
    }
}
