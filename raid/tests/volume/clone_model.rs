//! Clone against the flat model: writes, discards, hydration and reopen in
//! any order; the source never changes.

use std::sync::Arc;

use proptest::prelude::*;
use raid::model::Model;
use raid::{BlockDevice, CloneDevice, DeviceRef, MemoryDevice, RateLimit};

use crate::common::*;

const BLOCKS: u64 = 200;

#[derive(Debug, Clone)]
enum Op {
    Write(u64, u64),
    Read(u64, u64),
    Discard(u64, u64),
    Flush,
    Hydrate,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let r = (0u64..BLOCKS, 1u64..40);
    prop_oneof![
        4 => r.clone().prop_map(|(l, n)| Op::Write(l, n)),
        4 => r.clone().prop_map(|(l, n)| Op::Read(l, n)),
        1 => r.prop_map(|(l, n)| Op::Discard(l, n)),
        1 => Just(Op::Flush),
        1 => Just(Op::Hydrate),
        1 => Just(Op::Reopen),
    ]
}

fn mem(blocks: u64) -> DeviceRef {
    Arc::new(MemoryDevice::new(blocks * BS as u64, BS as u32))
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn clone_matches_the_model(ops in proptest::collection::vec(op(), 1..50)) {
        run(async {
            let (src, dst, meta) = (mem(BLOCKS), mem(BLOCKS + 7), mem(4));
            let original = pattern(9999, BLOCKS);
            write(&*src, 0, &original).await;
            let mut model = Model::new(BS, BLOCKS);
            model.write(0, &original);
            let mut clone = CloneDevice::create(src.clone(), dst.clone(), meta.clone(), 32 << 10).await.unwrap();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Write(l, n) => {
                        let (l, n) = clamp(l, n, BLOCKS);
                        let data = pattern(i as u64, n);
                        write(&*clone, l, &data).await;
                        model.write(l, &data);
                    }
                    Op::Read(l, n) => {
                        let (l, n) = clamp(l, n, BLOCKS);
                        assert!(read(&*clone, l, n).await == model.read(l, n), "read {l}+{n}");
                    }
                    Op::Discard(l, n) => {
                        let (l, n) = clamp(l, n, BLOCKS);
                        clone.discard(l, n).await.unwrap();
                        model.zero(l, n);
                    }
                    Op::Flush => clone.flush().await.unwrap(),
                    Op::Hydrate => {
                        clone.hydrate_now(&RateLimit::default()).await.unwrap();
                        assert!(clone.progress().complete());
                    }
                    Op::Reopen => {
                        clone.flush().await.unwrap();
                        let before = clone.progress().regions_hydrated;
                        drop(clone);
                        clone = CloneDevice::open(src.clone(), dst.clone(), meta.clone()).await.unwrap();
                        assert_eq!(clone.progress().regions_hydrated, before);
                    }
                }
            }
            assert!(read(&*clone, 0, BLOCKS).await == model.read(0, BLOCKS));
            assert!(read(&*src, 0, BLOCKS).await == original, "the source is never written");
        });
    }
}
