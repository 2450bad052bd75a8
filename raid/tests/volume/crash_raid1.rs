//! Crash harness for raid1 alone: three members on one power supply, each
//! behind a volatile write cache. Random writes, discards, flushes, member
//! failures, returns, replacements and resyncs run until the power is cut
//! after a random number of writes and flushes (so inside any of them:
//! a bitmap update, a superblock commit, a resync or its checkpoint). Each
//! member then keeps a random part of its unflushed writes. After reopen
//! and resync:
//! * the array opens, resyncs and ends healthy, every member present
//!   (a return or replacement the cut interrupted is done again);
//! * every member's superblock reads back with the same event counter and
//!   slot table;
//! * the members hold identical data (the bitmap covered every region that
//!   could differ), and every block reads as its value at the last
//!   completed flush or a value written after it;
//! * after two flushes no region is dirty, and a reopen without a crash
//!   finds nothing to resync and the same data.

use std::sync::Arc;

use proptest::prelude::*;
use raid::model::CrashModel;
use raid::raid1::superblock::read_newest;
use raid::raid1::MemberHealth;
use raid::{BlockDevice, FaultDevice, Power, Raid1, Raid1Options, RateLimit};

use crate::common::*;

const MEMBER: u64 = 4 << 20;

#[derive(Debug, Clone)]
enum Op {
    Write(u64, u64),
    Discard(u64, u64),
    Flush,
    Fail(usize),
    Return(usize),
    Replace(usize),
    Resync,
}

fn op() -> impl Strategy<Value = Op> {
    let r = (0u64..800, 1u64..24);
    prop_oneof![
        8 => r.clone().prop_map(|(l, n)| Op::Write(l, n)),
        1 => r.prop_map(|(l, n)| Op::Discard(l, n)),
        3 => Just(Op::Flush),
        2 => (0usize..3).prop_map(Op::Fail),
        2 => (0usize..3).prop_map(Op::Return),
        1 => (0usize..3).prop_map(Op::Replace),
        2 => Just(Op::Resync),
    ]
}

fn opts() -> Raid1Options {
    Raid1Options {
        region_bytes: 256 << 10,
        ..Default::default()
    }
}

/// Open, resync and check what the harness promises; returns the array.
async fn recover(members: &[Arc<FaultDevice>], model: &mut CrashModel) -> Arc<Raid1> {
    let raid = Raid1::open(refs(members))
        .await
        .expect("raid1 opens after a crash");
    raid.set_resync_checkpoint_bytes(512 << 10);
    // A return or replacement the cut interrupted is done again.
    for (slot, m) in members.iter().enumerate() {
        if raid.status().await.members[slot] == MemberHealth::Missing
            && raid.readd_member(m.clone()).await.is_err()
        {
            raid.replace_member(slot, m.clone())
                .await
                .expect("replace again");
        }
    }
    raid.resync_now(&RateLimit::default())
        .await
        .expect("resync after a crash");
    let st = raid.status().await;
    assert!(!st.degraded, "{st:?}");
    assert_eq!(st.members, vec![MemberHealth::InSync; members.len()]);
    let mut sbs = Vec::new();
    for m in members {
        sbs.push(read_newest(&**m).await.expect("superblock decodes"));
    }
    for sb in &sbs {
        assert_eq!(sb.events, st.events, "every member has the latest events");
        assert_eq!(
            sb.slots, sbs[0].slots,
            "every member has the same slot table"
        );
    }
    let size = raid.num_blocks();
    let copy0 = read(&*members[0], raid.data_offset(), size).await;
    for m in &members[1..] {
        assert!(
            copy0 == read(&**m, raid.data_offset(), size).await,
            "mirrors differ after resync"
        );
    }
    let back = read(&*raid, 0, size).await;
    let bs = raid.block_size() as usize;
    for (lba, block) in back.chunks(bs).enumerate() {
        assert!(
            model.allows(lba as u64, block),
            "block {lba} holds a value never written, or lost a flushed one"
        );
        model.settle(lba as u64, block);
    }
    raid
}

/// One run: `ops` on `n` members (at most 3) of `bs`-byte blocks until the power
/// is cut after `cut` writes and flushes, then the crash (`seeds`) and the
/// checks of [`recover`]. Operation ranges are in 4 KiB units whatever
/// `bs`, so that a power cut tears unflushed 4 KiB writes (superblocks,
/// bitmap blocks, data) at `bs` granularity.
fn power_loss_run(ops: Vec<Op>, cut: u64, seeds: [u64; 3], bs: usize, n: usize) {
    let k = (BS / bs) as u64;
    run(async {
        let power = Power::new();
        let mut members: Vec<Arc<FaultDevice>> =
            (0..n).map(|_| powered_of(MEMBER, bs, &power)).collect();
        let raid = Raid1::create(refs(&members), &opts()).await.unwrap();
        raid.set_resync_checkpoint_bytes(512 << 10);
        let size = raid.num_blocks();
        let mut model = CrashModel::new(bs, size);
        let mut failed = vec![false; n];
        power.cut_after(cut);
        for (i, op) in ops.into_iter().enumerate() {
            if power.is_off() {
                break;
            }
            // Until the cut, every operation must work; after it the
            // results do not matter (a write may still have landed).
            let must = |ok: bool, what: &str| assert!(ok || power.is_off(), "{what} failed");
            let stamp = i as u64;
            if matches!(op, Op::Fail(m) | Op::Return(m) | Op::Replace(m) if m >= n) {
                continue;
            }
            match op {
                Op::Write(l, n) => {
                    let io = CrashIo::Write(l * k, n * k);
                    crash_io(&*raid, &mut model, &power, stamp, io, size).await
                }
                Op::Discard(l, n) => {
                    let io = CrashIo::Discard(l * k, n * k);
                    crash_io(&*raid, &mut model, &power, stamp, io, size).await
                }
                Op::Flush => {
                    crash_io(&*raid, &mut model, &power, stamp, CrashIo::Flush, size).await
                }
                Op::Fail(m) => {
                    // Keep an in-sync member that works.
                    let st = raid.status().await;
                    let others = (0..n)
                        .filter(|&o| o != m && !failed[o] && st.members[o] == MemberHealth::InSync)
                        .count();
                    if others > 0 {
                        failed[m] = true;
                        members[m].set_failed(true);
                    }
                }
                Op::Return(m) => {
                    failed[m] = false;
                    members[m].set_failed(false);
                    if raid.status().await.members[m] == MemberHealth::Missing {
                        let r = raid.readd_member(members[m].clone()).await;
                        must(r.is_ok(), "readd");
                    }
                }
                Op::Replace(m) => {
                    if raid.status().await.members[m] == MemberHealth::Missing {
                        members[m] = powered_of(MEMBER, bs, &power);
                        failed[m] = false;
                        let r = raid.replace_member(m, members[m].clone()).await;
                        must(r.is_ok(), "replace");
                    }
                }
                Op::Resync => {
                    let r = raid.resync_now(&RateLimit::default()).await;
                    must(r.is_ok(), "resync");
                }
            }
        }
        drop(raid);
        crash_all(&members, &seeds, &power).await;

        let raid = recover(&members, &mut model).await;
        // Healthy again: the bitmap empties, and a clean reopen finds
        // nothing to do and the same data.
        raid.flush().await.unwrap();
        raid.flush().await.unwrap();
        assert_eq!(raid.status().await.dirty_regions, 0);
        let before = read(&*raid, 0, size).await;
        drop(raid);
        let raid = Raid1::open(refs(&members)).await.unwrap();
        let st = raid.status().await;
        assert_eq!((st.degraded, st.dirty_regions), (false, 0), "{st:?}");
        assert!(read(&*raid, 0, size).await == before);
    });
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn raid1_survives_power_loss_anywhere(
        ops in proptest::collection::vec(op(), 1..40),
        cut in 0u64..250,
        seeds in any::<[u64; 3]>(),
    ) {
        power_loss_run(ops, cut, seeds, BS, 3);
    }

    /// Members with 512-byte sectors: a cut can tear a 4 KiB superblock
    /// commit, and the array opens from the member's other copy (with one
    /// member, or one left in sync, nothing else could open it).
    #[test]
    fn raid1_survives_power_loss_on_512_byte_sectors(
        ops in proptest::collection::vec(op(), 1..40),
        cut in 0u64..250,
        seeds in any::<[u64; 3]>(),
        n in 1usize..=3,
    ) {
        power_loss_run(ops, cut, seeds, 512, n);
    }
}
