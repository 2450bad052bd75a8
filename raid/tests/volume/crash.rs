//! Crash harness: a thin pool over raid1, every device behind a volatile
//! write cache. After random I/O, flushes and snapshots, power is cut (each
//! device keeps a random part of its unflushed writes), everything is
//! reopened, and then:
//! * raid1 must open, resync, and hold identical data on both members;
//! * the pool must open (its metadata walk checks every page and count);
//! * every block must read as its value at the last flush or a value
//!   written after it; nothing flushed may be lost;
//! * the recovered pool must keep working (write everything, reopen, read).

use std::sync::Arc;

use proptest::prelude::*;
use raid::model::CrashModel;
use raid::{
    BlockDevice, DeviceRef, FaultDevice, Raid1, Raid1Options, RateLimit, ThinDevice, ThinOptions,
    ThinPool,
};

use crate::common::*;

const DEV_BLOCKS: u64 = 128;

#[derive(Debug, Clone)]
enum Op {
    Write(usize, u64, u64),
    Discard(usize, u64, u64),
    Flush,
    Snapshot(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let r = (0usize..4, 0u64..DEV_BLOCKS, 1u64..24);
    prop_oneof![
        8 => r.clone().prop_map(|(d, l, n)| Op::Write(d, l, n)),
        2 => r.prop_map(|(d, l, n)| Op::Discard(d, l, n)),
        2 => Just(Op::Flush),
        1 => (0usize..4).prop_map(Op::Snapshot),
    ]
}

fn opts() -> ThinOptions {
    ThinOptions {
        block_bytes: 32 << 10,
        low_water_blocks: None,
    }
}

async fn open_stack(
    members: &[Arc<FaultDevice>],
    meta: &Arc<FaultDevice>,
) -> (Arc<Raid1>, Arc<ThinPool>) {
    let raid = Raid1::open(refs(members))
        .await
        .expect("raid1 reopens after a crash");
    raid.resync_now(&RateLimit::default())
        .await
        .expect("resync");
    let pool = ThinPool::open(raid.clone(), meta.clone() as DeviceRef, &opts())
        .await
        .expect("pool metadata is consistent");
    (raid, pool)
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn thin_over_raid1_survives_power_loss(ops in proptest::collection::vec(op(), 1..50), seeds in any::<[u64; 3]>()) {
        run(async {
            let members: Vec<Arc<FaultDevice>> = (0..2).map(|_| volatile(6 << 20)).collect();
            let meta = volatile(512 << 10);
            let r1 = Raid1Options { region_bytes: 256 << 10, ..Default::default() };
            let raid = Raid1::create(refs(&members), &r1).await.unwrap();
            let pool = ThinPool::format(raid.clone(), meta.clone() as DeviceRef, &opts()).await.unwrap();
            let mut devs: Vec<(ThinDevice, CrashModel)> = vec![(pool.create_thin(0, DEV_BLOCKS).await.unwrap(), CrashModel::new(BS, DEV_BLOCKS))];
            pool.commit().await.unwrap();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Write(d, l, n) => {
                        let k = d % devs.len();
                        let (dev, model) = &mut devs[k];
                        let (l, n) = clamp(l, n, DEV_BLOCKS);
                        let data = pattern(i as u64, n);
                        write(dev, l, &data).await;
                        model.write(l, &data);
                    }
                    Op::Discard(d, l, n) => {
                        let k = d % devs.len();
                        let (dev, model) = &mut devs[k];
                        let (l, n) = clamp(l, n, DEV_BLOCKS);
                        dev.discard(l, n).await.unwrap();
                        model.write(l, &vec![0u8; n as usize * BS]);
                    }
                    Op::Flush => {
                        devs[0].0.flush().await.unwrap();
                        devs.iter_mut().for_each(|(_, m)| m.flush());
                    }
                    // At most 5 devices of 16 thin blocks: the 160-block pool never fills.
                    Op::Snapshot(d) if devs.len() < 5 => {
                        let origin = devs[d % devs.len()].0.id();
                        let snap = pool.snapshot(origin, devs.len() as u64 + 100).await.unwrap();
                        pool.commit().await.unwrap();
                        devs.iter_mut().for_each(|(_, m)| m.flush());
                        let model = devs[d % devs.len()].1.clone();
                        devs.push((snap, model));
                    }
                    Op::Snapshot(_) => {}
                }
            }
            let ids: Vec<u64> = devs.iter().map(|(d, _)| d.id()).collect();
            let mut models: Vec<CrashModel> = devs.drain(..).map(|(_, m)| m).collect();
            drop((pool, raid));
            for (dev, seed) in members.iter().chain([&meta]).zip(seeds) {
                dev.crash(seed).await.unwrap();
            }

            let (raid, pool) = open_stack(&members, &meta).await;
            let size = raid.num_blocks();
            let copy0 = read(&*members[0], raid.data_offset(), size).await;
            assert!(copy0 == read(&*members[1], raid.data_offset(), size).await, "mirrors differ after resync");
            for (id, model) in ids.iter().zip(models.iter_mut()) {
                let dev = pool.open_thin(*id).expect("flushed snapshot exists");
                let back = read(&dev, 0, DEV_BLOCKS).await;
                for (lba, block) in back.chunks(BS).enumerate() {
                    assert!(model.allows(lba as u64, block), "device {id} block {lba} holds a value never written or lost a flushed one");
                    model.settle(lba as u64, block);
                }
                // The recovered pool keeps working.
                write(&dev, 0, &pattern(*id + 5000, DEV_BLOCKS)).await;
            }
            pool.commit().await.unwrap();
            drop((pool, raid));
            let (_raid, pool) = open_stack(&members, &meta).await;
            for id in &ids {
                let dev = pool.open_thin(*id).unwrap();
                assert!(read(&dev, 0, DEV_BLOCKS).await == pattern(*id + 5000, DEV_BLOCKS));
            }
        });
    }
}
