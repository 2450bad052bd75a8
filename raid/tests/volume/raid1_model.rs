//! raid1 against the flat model, with member failures, returns,
//! replacements, resyncs and full file systems between the I/O.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use raid::model::Model;
use raid::raid1::MemberHealth;
use raid::{BlockDevice, BlockError, FaultDevice, Raid1, Raid1Options, RateLimit};

use crate::common::*;

#[derive(Debug, Clone)]
enum Op {
    Write(u64, u64),
    Read(u64, u64),
    Discard(u64, u64),
    Flush,
    Fail(usize),
    Return(usize),
    Replace(usize),
    Resync,
    /// The member's file system fills up: writes from this data block on
    /// fail with no space.
    Full(usize, u64),
    /// Its space comes back.
    Space(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let r = (0u64..800, 1u64..80);
    prop_oneof![
        5 => r.clone().prop_map(|(l, n)| Op::Write(l, n)),
        4 => r.clone().prop_map(|(l, n)| Op::Read(l, n)),
        1 => r.prop_map(|(l, n)| Op::Discard(l, n)),
        2 => Just(Op::Flush),
        2 => (0usize..3).prop_map(Op::Fail),
        2 => (0usize..3).prop_map(Op::Return),
        1 => (0usize..3).prop_map(Op::Replace),
        2 => Just(Op::Resync),
        1 => (0usize..3, 0u64..800).prop_map(|(m, l)| Op::Full(m, l)),
        1 => (0usize..3).prop_map(Op::Space),
    ]
}

/// Members that can still serve reads once `failed` ones are gone.
async fn good_sources(raid: &Raid1, failed: &[bool]) -> usize {
    let st = raid.status().await;
    (0..3)
        .filter(|&i| st.members[i] == MemberHealth::InSync && !failed[i])
        .count()
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn raid1_matches_the_model_through_failures_and_resyncs(ops in proptest::collection::vec(op(), 1..60)) {
        run(async {
            let mut members: Vec<Arc<FaultDevice>> = (0..3).map(|_| faulty(4 << 20)).collect();
            let opts = Raid1Options { region_bytes: 256 << 10, ..Default::default() };
            let raid = Raid1::create(refs(&members), &opts).await.unwrap();
            let size = raid.num_blocks();
            let mut model = Model::new(BS, size);
            let mut failed = [false; 3];
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Write(l, n) => {
                        let (l, n) = clamp(l, n, size);
                        let data = pattern(i as u64, n);
                        // A write only fails when every in-sync member is
                        // out of space; it then left the data as it was.
                        match raid.write(l, Bytes::copy_from_slice(&data)).await {
                            Ok(()) => model.write(l, &data),
                            Err(BlockError::NoSpace(_)) => {}
                            Err(e) => panic!("write {l}+{n}: {e}"),
                        }
                    }
                    Op::Read(l, n) => {
                        let (l, n) = clamp(l, n, size);
                        assert!(read(&*raid, l, n).await == model.read(l, n), "read {l}+{n}");
                    }
                    Op::Discard(l, n) => {
                        let (l, n) = clamp(l, n, size);
                        raid.discard(l, n).await.unwrap();
                        model.zero(l, n);
                    }
                    Op::Flush => raid.flush().await.unwrap(),
                    Op::Fail(m) => {
                        failed[m] = true;
                        if good_sources(&raid, &failed).await == 0 {
                            failed[m] = false;
                        } else {
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
                    Op::Replace(m) => {
                        if raid.status().await.members[m] == MemberHealth::Missing {
                            members[m] = faulty(4 << 20);
                            failed[m] = false;
                            raid.replace_member(m, members[m].clone()).await.unwrap();
                        }
                    }
                    Op::Resync => raid.resync_now(&RateLimit::default()).await.unwrap(),
                    Op::Full(m, l) => members[m].set_full_from(Some(raid.data_offset() + l)),
                    Op::Space(m) => members[m].set_full_from(None),
                }
            }
            // Bring everyone back, resync, and check every mirror copy.
            for (m, dev) in members.iter().enumerate() {
                dev.set_failed(false);
                dev.set_full_from(None);
                if raid.status().await.members[m] == MemberHealth::Missing {
                    raid.readd_member(dev.clone()).await.unwrap();
                }
            }
            raid.resync_now(&RateLimit::default()).await.unwrap();
            let st = raid.status().await;
            assert!(!st.degraded, "{st:?}");
            for m in &members {
                assert!(read(&**m, raid.data_offset(), size).await == model.read(0, size));
            }
        });
    }
}
