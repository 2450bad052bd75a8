//! Thin devices and snapshots on a pool over raid1, against one flat model
//! per device, with member failures, resyncs and pool reopens in between.

use std::sync::Arc;

use proptest::prelude::*;
use raid::model::Model;
use raid::raid1::MemberHealth;
use raid::{
    BlockDevice, DeviceRef, FaultDevice, MemoryDevice, Raid1, Raid1Options, RateLimit, ThinDevice,
    ThinOptions, ThinPool,
};

use crate::common::*;

const DEV_BLOCKS: u64 = 256;

#[derive(Debug, Clone)]
enum Op {
    Write(usize, u64, u64),
    Read(usize, u64, u64),
    Discard(usize, u64, u64),
    Snapshot(usize),
    Delete(usize),
    Flush,
    Reopen,
    Fail(usize),
    Return(usize),
    Resync,
}

fn op() -> impl Strategy<Value = Op> {
    let r = (0usize..8, 0u64..DEV_BLOCKS, 1u64..40);
    prop_oneof![
        6 => r.clone().prop_map(|(d, l, n)| Op::Write(d, l, n)),
        4 => r.clone().prop_map(|(d, l, n)| Op::Read(d, l, n)),
        2 => r.prop_map(|(d, l, n)| Op::Discard(d, l, n)),
        2 => (0usize..8).prop_map(Op::Snapshot),
        1 => (0usize..8).prop_map(Op::Delete),
        2 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => (0usize..2).prop_map(Op::Fail),
        1 => (0usize..2).prop_map(Op::Return),
        1 => Just(Op::Resync),
    ]
}

fn opts() -> ThinOptions {
    ThinOptions {
        block_bytes: 64 << 10,
        low_water_blocks: None,
    }
}

proptest! {
    #![proptest_config(config(24))]

    #[test]
    fn thin_snapshots_over_raid1_match_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(async {
            let members: Vec<Arc<FaultDevice>> = (0..2).map(|_| faulty(17 << 20)).collect();
            let r1 = Raid1Options { region_bytes: 1 << 20, ..Default::default() };
            let raid = Raid1::create(refs(&members), &r1).await.unwrap();
            let meta: DeviceRef = Arc::new(MemoryDevice::new(1 << 20, BS as u32));
            let mut pool = ThinPool::format(raid.clone(), meta.clone(), &opts()).await.unwrap();
            let mut devs: Vec<(ThinDevice, Model)> = vec![(pool.create_thin(0, DEV_BLOCKS).await.unwrap(), Model::new(BS, DEV_BLOCKS))];
            let mut next_id = 1;
            let mut failed = [false; 2];
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
                    Op::Read(d, l, n) => {
                        let (dev, model) = &devs[d % devs.len()];
                        let (l, n) = clamp(l, n, DEV_BLOCKS);
                        assert!(read(dev, l, n).await == model.read(l, n), "dev {} read {l}+{n}", dev.id());
                    }
                    Op::Discard(d, l, n) => {
                        let k = d % devs.len();
                        let (dev, model) = &mut devs[k];
                        let (l, n) = clamp(l, n, DEV_BLOCKS);
                        dev.discard(l, n).await.unwrap();
                        model.zero(l, n);
                    }
                    Op::Snapshot(d) if devs.len() < 8 => {
                        let (origin, model) = &devs[d % devs.len()];
                        let snap = pool.snapshot(origin.id(), next_id).await.unwrap();
                        let model = model.clone();
                        devs.push((snap, model));
                        next_id += 1;
                    }
                    Op::Delete(d) if devs.len() > 1 => {
                        let (dev, _) = devs.remove(d % devs.len());
                        pool.delete_thin(dev.id()).await.unwrap();
                    }
                    Op::Snapshot(_) | Op::Delete(_) => {}
                    Op::Flush => devs[0].0.flush().await.unwrap(),
                    Op::Reopen => {
                        pool.commit().await.unwrap();
                        let ids: Vec<u64> = devs.iter().map(|(d, _)| d.id()).collect();
                        let models: Vec<Model> = devs.drain(..).map(|(_, m)| m).collect();
                        drop(pool);
                        pool = ThinPool::open(raid.clone(), meta.clone(), &opts()).await.unwrap();
                        let mut reopened = pool.thin_ids();
                        reopened.sort();
                        let mut want = ids.clone();
                        want.sort();
                        assert_eq!(reopened, want);
                        for (id, model) in ids.into_iter().zip(models) {
                            devs.push((pool.open_thin(id).unwrap(), model));
                        }
                    }
                    Op::Fail(m) => {
                        let other = 1 - m;
                        let st = raid.status().await;
                        if !failed[other] && st.members[other] == MemberHealth::InSync {
                            failed[m] = true;
                            members[m].set_failed(true);
                        }
                    }
                    Op::Return(m) => {
                        members[m].set_failed(false);
                        failed[m] = false;
                        if raid.status().await.members[m] == MemberHealth::Missing {
                            raid.readd_member(members[m].clone()).await.unwrap();
                        }
                    }
                    Op::Resync => raid.resync_now(&RateLimit::default()).await.unwrap(),
                }
            }
            for (dev, model) in &devs {
                assert!(read(dev, 0, DEV_BLOCKS).await == model.read(0, DEV_BLOCKS), "final check of {}", dev.id());
            }
        });
    }
}
