//! raid0 over linear (and a plain member) against the flat model.

use std::sync::Arc;

use proptest::prelude::*;
use raid::model::Model;
use raid::{BlockDevice, DeviceRef, Linear, MemoryDevice, Raid0};

use crate::common::*;

#[derive(Debug, Clone)]
enum Op {
    Write(u64, u64),
    Read(u64, u64),
    Discard(u64, u64),
    Zeroes(u64, u64),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    let r = (0u64..400, 1u64..40);
    prop_oneof![
        4 => r.clone().prop_map(|(l, n)| Op::Write(l, n)),
        4 => r.clone().prop_map(|(l, n)| Op::Read(l, n)),
        1 => r.clone().prop_map(|(l, n)| Op::Discard(l, n)),
        1 => r.prop_map(|(l, n)| Op::Zeroes(l, n)),
        1 => Just(Op::Flush),
    ]
}

fn mem(blocks: u64) -> DeviceRef {
    Arc::new(MemoryDevice::new(blocks * BS as u64, BS as u32))
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn raid0_over_linear_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(async {
            let linear: DeviceRef = Arc::new(Linear::new(vec![mem(50), mem(90)]).unwrap());
            let dev = Raid0::new(vec![linear, mem(140), mem(150)], 16384).unwrap();
            let size = dev.num_blocks();
            assert_eq!(size, 35 * 4 * 3);
            let mut model = Model::new(BS, size);
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Write(l, n) => {
                        let (l, n) = clamp(l, n, size);
                        let data = pattern(i as u64, n);
                        write(&dev, l, &data).await;
                        model.write(l, &data);
                    }
                    Op::Read(l, n) => {
                        let (l, n) = clamp(l, n, size);
                        assert!(read(&dev, l, n).await == model.read(l, n), "read {l}+{n}");
                    }
                    Op::Discard(l, n) => {
                        let (l, n) = clamp(l, n, size);
                        dev.discard(l, n).await.unwrap();
                        model.zero(l, n);
                    }
                    Op::Zeroes(l, n) => {
                        let (l, n) = clamp(l, n, size);
                        dev.write_zeroes(l, n).await.unwrap();
                        model.zero(l, n);
                    }
                    Op::Flush => dev.flush().await.unwrap(),
                }
            }
            assert!(read(&dev, 0, size).await == model.read(0, size));
        });
    }
}
