//! Crash harness for clone: the destination and the hydration map on one
//! power supply behind volatile write caches, the source read-only. Random
//! writes, discards, flushes and hydration run until the power is cut
//! after a random number of writes and flushes (so inside a copy, a write
//! or a map update); each device keeps a random part of what it had not
//! flushed. Then:
//! * the clone reopens (its map checks out);
//! * every block reads as its value at the last completed flush (the
//!   source's, for blocks never written) or a value written after it;
//! * hydration resumes and completes without changing what reads return;
//! * the destination alone then holds it all: reopened over a source that
//!   fails every I/O, every block still reads back.

use std::sync::Arc;

use proptest::prelude::*;
use raid::model::CrashModel;
use raid::{
    BlockDevice, CloneDevice, DeviceRef, ErrorDevice, FaultDevice, MemoryDevice, Power, RateLimit,
};

use crate::common::*;

const BLOCKS: u64 = 200;
const REGION: u64 = 32 << 10;

#[derive(Debug, Clone)]
enum Op {
    Write(u64, u64),
    Discard(u64, u64),
    Flush,
    Hydrate,
}

fn op() -> impl Strategy<Value = Op> {
    let r = (0u64..BLOCKS, 1u64..24);
    prop_oneof![
        6 => r.clone().prop_map(|(l, n)| Op::Write(l, n)),
        1 => r.prop_map(|(l, n)| Op::Discard(l, n)),
        3 => Just(Op::Flush),
        1 => Just(Op::Hydrate),
    ]
}

/// Every block of `dev`, each checked against and settled in `model`.
async fn check(dev: &dyn BlockDevice, model: &mut CrashModel) -> Vec<u8> {
    let back = read(dev, 0, BLOCKS).await;
    for (lba, block) in back.chunks(BS).enumerate() {
        assert!(
            model.allows(lba as u64, block),
            "block {lba} holds a value never written, or lost a flushed one"
        );
        model.settle(lba as u64, block);
    }
    back
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn clone_survives_power_loss_anywhere(
        ops in proptest::collection::vec(op(), 1..40),
        cut in 0u64..300,
        seeds in any::<[u64; 2]>(),
    ) {
        run(async {
            let source: DeviceRef = Arc::new(MemoryDevice::new(BLOCKS * BS as u64, BS as u32));
            let original = pattern(9999, BLOCKS);
            write(&*source, 0, &original).await;
            let power = Power::new();
            let dest = powered(BLOCKS * BS as u64, &power);
            let meta = powered(4 * BS as u64, &power);
            let devs = [dest.clone(), meta.clone()];
            let clone = CloneDevice::create(source.clone(), dest.clone(), meta.clone(), REGION)
                .await
                .unwrap();
            let mut model = CrashModel::new(BS, BLOCKS);
            model.write(0, &original);
            model.flush();
            power.cut_after(cut);
            for (i, op) in ops.into_iter().enumerate() {
                if power.is_off() {
                    break;
                }
                let must = |ok: bool, what: &str| assert!(ok || power.is_off(), "{what} failed");
                match op {
                    Op::Write(l, n) => {
                        crash_io(&*clone, &mut model, &power, i as u64, CrashIo::Write(l, n), BLOCKS).await
                    }
                    Op::Discard(l, n) => {
                        crash_io(&*clone, &mut model, &power, i as u64, CrashIo::Discard(l, n), BLOCKS).await
                    }
                    Op::Flush => crash_io(&*clone, &mut model, &power, i as u64, CrashIo::Flush, BLOCKS).await,
                    Op::Hydrate => {
                        let r = clone.hydrate_now(&RateLimit::default()).await;
                        must(r.is_ok(), "hydration");
                    }
                }
            }
            drop(clone);
            crash_all(&devs, &seeds, &power).await;

            let to = |d: &Arc<FaultDevice>| d.clone() as DeviceRef;
            let clone = CloneDevice::open(source.clone(), to(&dest), to(&meta))
                .await
                .expect("the clone reopens after a crash");
            let seen = check(&*clone, &mut model).await;
            clone.hydrate_now(&RateLimit::default()).await.unwrap();
            assert!(clone.progress().complete());
            assert!(read(&*clone, 0, BLOCKS).await == seen, "hydration changed what reads return");
            drop(clone);
            let gone: DeviceRef = Arc::new(ErrorDevice::new(BS as u32, BLOCKS, "source gone"));
            let clone = CloneDevice::open(gone, to(&dest), to(&meta)).await.unwrap();
            assert!(clone.progress().complete());
            assert!(read(&*clone, 0, BLOCKS).await == seen, "the destination misses data");
            assert!(read(&*source, 0, BLOCKS).await == original, "the source is never written");
        });
    }
}
