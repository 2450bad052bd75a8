use super::*;
use crate::fault::{FaultDevice, Power};
use crate::task::RateLimit;
use crate::MemoryDevice;

const MB: u64 = 1 << 20;

fn members(n: usize, bytes: u64) -> Vec<Arc<FaultDevice>> {
    (0..n)
        .map(|_| Arc::new(FaultDevice::new(Arc::new(MemoryDevice::new(bytes, 4096)))))
        .collect()
}

fn refs(m: &[Arc<FaultDevice>]) -> Vec<DeviceRef> {
    m.iter().map(|d| d.clone() as DeviceRef).collect()
}

pub(super) fn opts() -> Raid1Options {
    Raid1Options {
        region_bytes: 256 << 10,
        ..Default::default()
    }
}

pub(super) fn block(v: u8) -> Bytes {
    Bytes::from(vec![v; 4096])
}

async fn member_block(m: &FaultDevice, raid: &Raid1, lba: u64) -> u8 {
    m.read(lba + raid.data_offset(), buf::alloc(4096))
        .await
        .unwrap()[0]
}

#[tokio::test]
async fn mirrors_writes_and_survives_a_member_failure() {
    let m = members(3, 8 * MB);
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    raid.write(5, block(1)).await.unwrap();
    for d in &m {
        assert_eq!(member_block(d, &raid, 5).await, 1);
    }
    m[1].set_failed(true);
    raid.write(6, block(2)).await.unwrap();
    let st = raid.status().await;
    assert_eq!(
        st.members,
        vec![
            MemberHealth::InSync,
            MemberHealth::Missing,
            MemberHealth::InSync
        ]
    );
    assert!(st.degraded);
    for _ in 0..4 {
        assert_eq!(raid.read(6, buf::alloc(4096)).await.unwrap()[0], 2);
    }
    // Reads survive losing another member mid-read.
    m[0].set_failed(true);
    for _ in 0..4 {
        assert_eq!(raid.read(5, buf::alloc(4096)).await.unwrap()[0], 1);
    }
    m[2].set_failed(true);
    assert!(matches!(
        raid.read(5, buf::alloc(4096)).await,
        Err(BlockError::Offline(_))
    ));
    // The last in-sync member failed that read but stays: once it works
    // again, so does the array.
    m[2].set_failed(false);
    assert_eq!(raid.read(5, buf::alloc(4096)).await.unwrap()[0], 1);
    assert!(matches!(
        raid.fail_member(2).await,
        Err(BlockError::Unsupported(m)) if m.contains("last in-sync")
    ));
}

/// Both members' files sit on one full file system from array block 100
/// on (blocks written before can be written again, new ones cannot): a
/// write at block 200 fails with no space.
async fn fill_up(raid: &Raid1, m: &[Arc<FaultDevice>]) {
    let full_from = raid.data_offset() + 100;
    for d in m {
        d.set_full_from(Some(full_from));
    }
    assert!(matches!(
        raid.write(200, block(2)).await,
        Err(BlockError::NoSpace(_))
    ));
}

#[tokio::test]
async fn a_full_file_system_fails_writes_and_keeps_the_data_online() {
    let m = members(2, 8 * MB);
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    raid.write(5, block(1)).await.unwrap();
    fill_up(&raid, &m).await;
    // One member went (as md would), the other stays with the data.
    let st = raid.status().await;
    assert_eq!(
        st.members,
        vec![MemberHealth::InSync, MemberHealth::Missing]
    );
    assert!(matches!(
        raid.write(201, block(2)).await,
        Err(BlockError::NoSpace(_))
    ));
    for _ in 0..3 {
        assert_eq!(raid.read(5, buf::alloc(4096)).await.unwrap()[0], 1);
    }
    raid.write(6, block(3)).await.unwrap();
    raid.flush().await.unwrap();
    // Space comes back: writes work, the member returns and resyncs.
    for d in &m {
        d.set_full_from(None);
    }
    raid.write(200, block(4)).await.unwrap();
    raid.readd_member(m[1].clone()).await.unwrap();
    raid.resync_now(&RateLimit::default()).await.unwrap();
    assert!(!raid.status().await.degraded);
    for (lba, v) in [(5, 1), (6, 3), (200, 4)] {
        for d in &m {
            assert_eq!(member_block(d, &raid, lba).await, v, "lba {lba}");
        }
    }
}

/// Poll `raid`'s status until `done` holds, for at most 20 s.
async fn wait_status(raid: &Raid1, done: impl Fn(&Raid1Status) -> bool) -> Raid1Status {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let st = raid.status().await;
        if done(&st) || tokio::time::Instant::now() > deadline {
            return st;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_member_that_left_for_space_returns_by_itself() {
    let m = members(2, 8 * MB);
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    // The task runs from the start, as in fabricd: the member leaving
    // must wake it.
    let task = raid.start_resync_with(RateLimit::default(), std::time::Duration::from_millis(20));
    // Let it reach its idle wait (this runtime has one thread).
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    raid.write(5, block(1)).await.unwrap();
    fill_up(&raid, &m).await;
    // Still full: each re-add finds no space in its resync and parks the
    // member again (each join and each drop counts an event); the array
    // stays degraded and serves.
    let events = raid.status().await.events;
    let st = wait_status(&raid, |s| s.events >= events + 4).await;
    assert!(st.events >= events + 4, "no re-add tried: {st:?}");
    assert!(raid.has_parked() || st.members[1] == MemberHealth::Recovering);
    assert!(raid.status().await.degraded);
    assert_eq!(raid.read(5, buf::alloc(4096)).await.unwrap()[0], 1);
    // Space comes back: the member rejoins and resyncs with no one's help.
    for d in &m {
        d.set_full_from(None);
    }
    raid.write(200, block(4)).await.unwrap();
    let st = wait_status(&raid, |s| !s.degraded).await;
    assert_eq!(st.members, vec![MemberHealth::InSync; 2]);
    assert!(!raid.has_parked());
    for (lba, v) in [(5, 1), (200, 4)] {
        for d in &m {
            assert_eq!(member_block(d, &raid, lba).await, v, "lba {lba}");
        }
    }
    task.stop().await.unwrap();
}

#[tokio::test]
async fn a_member_that_failed_otherwise_is_not_re_added() {
    let m = members(2, 8 * MB);
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    m[1].set_failed(true);
    raid.write(5, block(1)).await.unwrap();
    assert_eq!(raid.status().await.members[1], MemberHealth::Missing);
    assert!(!raid.has_parked());
    m[1].set_failed(false);
    assert_eq!(raid.readd_parked().await, 0);
    assert_eq!(raid.status().await.members[1], MemberHealth::Missing);
}

/// A member that leaves (out of space here; a bad sector or a request do
/// the same) is told so on its own superblock: brought back alone at the
/// next start, it refuses to serve the array, whose newer data is on the
/// missing member, instead of serving what it had when it left; with that
/// member it catches up.
#[tokio::test]
async fn a_member_that_left_refuses_to_serve_alone() {
    let m = members(2, 8 * MB);
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    raid.write(300, block(1)).await.unwrap();
    m[1].set_full_from(Some(raid.data_offset() + 250));
    raid.write(300, block(2)).await.unwrap();
    assert_eq!(raid.status().await.members[1], MemberHealth::Missing);
    raid.departed_writes_done(None).await;
    drop(raid);
    m[1].set_full_from(None);
    let err = Raid1::open(vec![m[1].clone()])
        .await
        .err()
        .expect("a member that left, alone");
    assert!(
        matches!(&err, BlockError::Offline(e) if e.contains("slot(s) [0]")),
        "{err}"
    );
    let raid = Raid1::open(refs(&m)).await.unwrap();
    assert_eq!(
        raid.status().await.members,
        vec![MemberHealth::InSync, MemberHealth::Recovering]
    );
    raid.resync_now(&RateLimit::default()).await.unwrap();
    assert_eq!(member_block(&m[1], &raid, 300).await, 2);
    raid.fail_member(0).await.unwrap();
    raid.write(300, block(3)).await.unwrap();
    raid.departed_writes_done(None).await;
    drop(raid);
    let err = Raid1::open(vec![m[0].clone()])
        .await
        .err()
        .expect("failed by request, alone");
    assert!(err.to_string().contains("slot(s) [1]"), "{err}");
    let raid = Raid1::open(refs(&m)).await.unwrap();
    assert_eq!(raid.read(300, buf::alloc(4096)).await.unwrap()[0], 3);
}

/// A close right after a member left (a shutdown) waits for the write
/// that tells it so: the process may exit next, and the member must not
/// come back alone believing itself in sync.
#[tokio::test]
async fn close_waits_until_a_member_that_left_is_told() {
    let m = members(2, 8 * MB);
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    raid.write(300, block(1)).await.unwrap();
    raid.fail_member(1).await.unwrap();
    raid.write(300, block(2)).await.unwrap();
    raid.close().await.unwrap();
    drop(raid);
    let err = Raid1::open(vec![m[1].clone()])
        .await
        .err()
        .expect("a member that left, alone after a close");
    assert!(err.to_string().contains("slot(s) [0]"), "{err}");
}

/// Recovery when the in-sync member is lost for good: only on request,
/// the member that left last becomes a new array with the data it had
/// when it left; the one that left before it is rebuilt from it, the lost
/// slot is empty, and the lost member, should it come back, is refused
/// next to the new array but still opens alone as the old one.
#[tokio::test]
async fn a_member_that_left_assembles_a_new_array_on_request() {
    let m = members(3, 8 * MB);
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    raid.write(300, block(1)).await.unwrap();
    raid.fail_member(2).await.unwrap();
    raid.write(300, block(2)).await.unwrap();
    raid.fail_member(1).await.unwrap();
    raid.write(300, block(3)).await.unwrap();
    raid.close().await.unwrap();
    drop(raid);
    let stale = || vec![m[2].clone() as DeviceRef, m[1].clone()];
    let err = Raid1::open(stale())
        .await
        .err()
        .expect("refused by default");
    assert!(err.to_string().contains("slot(s) [0]"), "{err}");
    let force = Raid1OpenOptions {
        assemble_stale: true,
    };
    let raid = Raid1::open_with(stale(), force).await.unwrap();
    assert!(raid.assembled_stale());
    assert_eq!(
        raid.status().await.members,
        vec![
            MemberHealth::Empty,
            MemberHealth::InSync,
            MemberHealth::Recovering
        ]
    );
    assert_eq!(raid.read(300, buf::alloc(4096)).await.unwrap()[0], 2);
    assert_eq!(raid.slot_of(&(m[1].clone() as DeviceRef)), Some(1));
    raid.resync_now(&RateLimit::default()).await.unwrap();
    assert_eq!(member_block(&m[2], &raid, 300).await, 2);
    raid.write(301, block(4)).await.unwrap();
    raid.close().await.unwrap();
    drop(raid);
    let err = Raid1::open(refs(&m)).await.err().expect("two arrays now");
    assert!(err.to_string().contains("different arrays"), "{err}");
    let old = Raid1::open(vec![m[0].clone()]).await.unwrap();
    assert_eq!(old.read(300, buf::alloc(4096)).await.unwrap()[0], 3);
    drop(old);
    let new = Raid1::open_with(stale(), force).await.unwrap();
    // In sync now: the option changes nothing.
    assert!(!new.assembled_stale());
    assert_eq!(new.status().await.members[1..], [MemberHealth::InSync; 2]);
    assert_eq!(new.read(301, buf::alloc(4096)).await.unwrap()[0], 4);
}

/// A member that was being rebuilt holds only part of the data: it is
/// never what a new array is assembled from.
#[tokio::test]
async fn a_rebuilding_member_does_not_assemble_alone() {
    let m = members(3, 8 * MB);
    let raid = Raid1::create(refs(&m[..2]), &opts()).await.unwrap();
    raid.write(300, block(1)).await.unwrap();
    raid.fail_member(1).await.unwrap();
    raid.replace_member(1, m[2].clone()).await.unwrap();
    raid.close().await.unwrap();
    drop(raid);
    let force = Raid1OpenOptions {
        assemble_stale: true,
    };
    let err = Raid1::open_with(vec![m[2].clone()], force)
        .await
        .err()
        .expect("a replacement that never finished, alone");
    assert!(err.to_string().contains("no member that left"), "{err}");
}

/// A member told that it left (above) rejoins in the same run: the re-add
/// waits for that superblock write and goes on from its copy, and once
/// caught up the member is in sync on its own superblock again.
#[tokio::test]
async fn a_member_told_it_left_rejoins_and_catches_up() {
    let m = members(2, 8 * MB);
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    m[1].set_full_from(Some(raid.data_offset() + 250));
    raid.write(300, block(2)).await.unwrap();
    m[1].set_full_from(None);
    assert_eq!(raid.readd_parked().await, 1);
    raid.resync_now(&RateLimit::default()).await.unwrap();
    assert_eq!(raid.status().await.members, vec![MemberHealth::InSync; 2]);
    raid.departed_writes_done(None).await;
    drop(raid);
    let alone = Raid1::open(vec![m[1].clone()]).await.unwrap();
    assert_eq!(alone.read(300, buf::alloc(4096)).await.unwrap()[0], 2);
}

#[tokio::test]
async fn returning_member_resyncs_only_dirty_regions() {
    let m = members(2, 8 * MB);
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    // Make everything clean: two quiet flushes clear the bits.
    raid.write(0, block(1)).await.unwrap();
    raid.flush().await.unwrap();
    raid.flush().await.unwrap();
    assert_eq!(raid.status().await.dirty_regions, 0);
    raid.fail_member(1).await.unwrap();
    raid.write(64 * 3, block(7)).await.unwrap(); // region 3
    raid.flush().await.unwrap();
    raid.flush().await.unwrap();
    assert_eq!(
        raid.status().await.dirty_regions,
        1,
        "no clearing while degraded"
    );
    assert_eq!(member_block(&m[1], &raid, 64 * 3).await, 0);
    raid.readd_member(m[1].clone()).await.unwrap();
    assert_eq!(raid.status().await.members[1], MemberHealth::Recovering);
    raid.resync_now(&RateLimit::default()).await.unwrap();
    let p = raid.resync_progress();
    assert_eq!(p.bytes_copied, 256 << 10, "only the one dirty region");
    assert_eq!(p.passes, 1);
    assert_eq!(member_block(&m[1], &raid, 64 * 3).await, 7);
    let st = raid.status().await;
    assert!(!st.degraded);
    assert_eq!(st.members, vec![MemberHealth::InSync; 2]);
}

#[tokio::test]
async fn overlapping_flushes_keep_the_bit_of_a_write_neither_flushed() {
    let m = members(2, 8 * MB);
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    raid.write(0, block(1)).await.unwrap();
    raid.flush().await.unwrap();
    raid.flush().await.unwrap();
    assert_eq!(raid.status().await.dirty_regions, 0);
    raid.write(0, block(2)).await.unwrap(); // region 0 dirty again
    raid.flush().await.unwrap();
    // Two flushes whose member flushes are done; then a write to region 0
    // that neither flushed; then their clearing passes, one after the
    // other. The second pass must not take the region for quiet.
    let passes = raid.clearing_passes.load(Ordering::SeqCst);
    raid.write(1, block(3)).await.unwrap();
    for _ in 0..2 {
        let mut meta = raid.meta.lock().await;
        raid.clear_quiet_regions(&mut meta, passes).await.unwrap();
    }
    assert_eq!(raid.status().await.dirty_regions, 1);
    // Flushes that began after the write clear it.
    raid.flush().await.unwrap();
    raid.flush().await.unwrap();
    assert_eq!(raid.status().await.dirty_regions, 0);
}

#[tokio::test]
async fn replacement_is_rebuilt_in_full_in_the_background() {
    let m = members(2, 4 * MB);
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    for i in 0..raid.num_blocks() {
        raid.write(i, block(i as u8)).await.unwrap();
    }
    m[0].set_failed(true);
    raid.write(0, block(99)).await.unwrap();
    let new = Arc::new(FaultDevice::new(Arc::new(MemoryDevice::new(4 * MB, 4096))));
    raid.replace_member(0, new.clone()).await.unwrap();
    let task = raid.start_resync(RateLimit::new(0));
    while raid.status().await.degraded {
        tokio::task::yield_now().await;
    }
    task.stop().await.unwrap();
    assert_eq!(
        raid.resync_progress().bytes_copied,
        raid.num_blocks() * 4096
    );
    m[1].set_failed(true);
    assert_eq!(raid.read(0, buf::alloc(4096)).await.unwrap()[0], 99);
    for i in 1..raid.num_blocks() {
        assert_eq!(raid.read(i, buf::alloc(4096)).await.unwrap()[0], i as u8);
    }
}

#[tokio::test]
async fn reopen_recognises_a_stale_member() {
    let m = members(2, 8 * MB);
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    raid.write(1, block(1)).await.unwrap();
    m[0].set_failed(true);
    raid.write(1, block(2)).await.unwrap();
    drop(raid);
    m[0].set_failed(false);
    // Both come back; member 0 has an old event counter.
    let raid = Raid1::open(refs(&m)).await.unwrap();
    let st = raid.status().await;
    assert_eq!(
        st.members,
        vec![MemberHealth::Recovering, MemberHealth::InSync]
    );
    for _ in 0..4 {
        assert_eq!(raid.read(1, buf::alloc(4096)).await.unwrap()[0], 2);
    }
    raid.resync_now(&RateLimit::default()).await.unwrap();
    assert_eq!(member_block(&m[0], &raid, 1).await, 2);
    // An unrelated disk is not taken for a member.
    let other = members(1, 8 * MB);
    Raid1::create(refs(&other), &opts()).await.unwrap();
    assert!(raid.readd_member(other[0].clone()).await.is_err());
    // Nor opened with one: which array is meant cannot be told.
    let err = Raid1::open(vec![other[0].clone(), m[1].clone()])
        .await
        .err()
        .expect("devices of two arrays");
    assert!(err.to_string().contains("different arrays"), "{err}");
}

#[tokio::test]
async fn corrupt_superblocks_are_errors_not_panics() {
    let m = members(1, 4 * MB);
    m[0].write(0, Bytes::from(vec![0xAB; 4096])).await.unwrap();
    assert!(matches!(
        Raid1::open(refs(&m)).await,
        Err(BlockError::Unsupported(_))
    ));
    let tiny: DeviceRef = Arc::new(MemoryDevice::new(4096, 4096));
    assert!(Raid1::create(vec![tiny], &opts()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_during_a_background_rebuild_reach_every_member() {
    let m = members(2, 6 * MB);
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    let blocks = raid.num_blocks();
    for i in 0..blocks {
        raid.write(i, block(1)).await.unwrap();
    }
    m[1].set_failed(true);
    raid.write(0, block(2)).await.unwrap();
    let new = Arc::new(FaultDevice::new(Arc::new(MemoryDevice::new(6 * MB, 4096))));
    raid.replace_member(1, new.clone()).await.unwrap();
    // A slow rebuild, so that writers and the copy overlap.
    let task = raid.start_resync(RateLimit::new(8 * MB));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let raid = raid.clone();
            tokio::spawn(async move {
                for i in (w..blocks).step_by(4 * 7) {
                    raid.write(i, block(10 + w as u8)).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    while raid.status().await.degraded {
        tokio::task::yield_now().await;
    }
    task.stop().await.unwrap();
    let off = raid.data_offset();
    let a = m[0]
        .read(off, buf::alloc((blocks * 4096) as usize))
        .await
        .unwrap();
    let b = new
        .read(off, buf::alloc((blocks * 4096) as usize))
        .await
        .unwrap();
    assert!(a == b, "mirrors differ after a rebuild under load");
    for w in 0..4u64 {
        assert_eq!(member_block(&new, &raid, w).await, 10 + w as u8);
    }
}

#[tokio::test]
async fn initial_sync_copies_member_zero_to_the_others() {
    let m = members(2, 4 * MB);
    let off = Geometry::plan(4096, 1024, 256 << 10).unwrap().data_offset;
    m[0].write(off + 3, block(9)).await.unwrap();
    m[1].write(off + 3, block(4)).await.unwrap();
    let o = Raid1Options {
        initial_sync: true,
        ..opts()
    };
    let raid = Raid1::create(refs(&m), &o).await.unwrap();
    assert_eq!(raid.status().await.members[1], MemberHealth::Recovering);
    // Until the sync is done, reads come from member 0 only.
    for _ in 0..4 {
        assert_eq!(raid.read(3, buf::alloc(4096)).await.unwrap()[0], 9);
    }
    raid.resync_now(&RateLimit::default()).await.unwrap();
    assert_eq!(member_block(&m[1], &raid, 3).await, 9);
    assert!(!raid.status().await.degraded);
}

/// 8 MiB members (28 regions of 256 KiB of data) with every block written
/// and flushed, then clean in the bitmap, and member 1 replaced by a new
/// disk: a full rebuild is pending. Checkpoints every 4 regions.
async fn pending_rebuild(power: &Arc<Power>) -> (Arc<Raid1>, Arc<FaultDevice>, Arc<FaultDevice>) {
    let vol = || {
        Arc::new(
            FaultDevice::volatile(Arc::new(MemoryDevice::new(8 * MB, 4096)))
                .on_power(power.clone()),
        )
    };
    let (m0, m1) = (vol(), vol());
    let raid = Raid1::create(vec![m0.clone(), m1.clone()], &opts())
        .await
        .unwrap();
    assert_eq!(raid.geo.regions(), 28);
    for i in 0..raid.num_blocks() {
        raid.write(i, block(i as u8 | 1)).await.unwrap();
    }
    raid.flush().await.unwrap();
    raid.flush().await.unwrap();
    assert_eq!(raid.status().await.dirty_regions, 0);
    raid.fail_member(1).await.unwrap();
    let new = vol();
    raid.replace_member(1, new.clone()).await.unwrap();
    raid.set_resync_checkpoint_bytes(4 * (256 << 10));
    (raid, m0, new)
}

async fn checkpoint_on(dev: &FaultDevice, slot: usize) -> u64 {
    read_newest(dev).await.unwrap().slots[slot].resync_from
}

async fn assert_rebuilt(raid: &Raid1, m0: &FaultDevice, new: &FaultDevice) {
    assert!(!raid.status().await.degraded);
    let n = raid.num_blocks() as usize * 4096;
    let off = raid.data_offset();
    let (a, b) = (
        m0.read(off, buf::alloc(n)).await.unwrap(),
        new.read(off, buf::alloc(n)).await.unwrap(),
    );
    assert!(a == b, "the rebuilt member differs from the source");
    m0.set_failed(true);
    for i in (0..raid.num_blocks()).step_by(37) {
        assert_eq!(
            raid.read(i, buf::alloc(4096)).await.unwrap()[0],
            i as u8 | 1
        );
    }
}

#[tokio::test]
async fn a_rebuild_checkpoints_only_every_interval() {
    let power = Power::new();
    let (raid, m0, new) = pending_rebuild(&power).await;
    raid.resync_now(&RateLimit::default()).await.unwrap();
    let p = raid.resync_progress();
    assert_eq!(p.bytes_copied, 28 * (256 << 10));
    // After regions 4, 8, ..., 24; none at the end (the pass promotes).
    assert_eq!(p.checkpoints, 6);
    assert_eq!(
        checkpoint_on(&m0, 1).await,
        0,
        "an in-sync slot has no checkpoint"
    );
    assert_rebuilt(&raid, &m0, &new).await;
}

#[tokio::test]
async fn a_rebuild_cut_by_a_crash_resumes_from_its_checkpoint() {
    let power = Power::new();
    let (raid, m0, new) = pending_rebuild(&power).await;
    // 20 writes and flushes into the rebuild: one write per region, five
    // per checkpoint (target flush, two superblocks, two flushes).
    power.cut_after(20);
    assert!(raid.resync_now(&RateLimit::default()).await.is_err());
    let went_past = raid.resync_progress().regions_done;
    drop(raid);
    m0.crash(11).await.unwrap();
    new.crash(12).await.unwrap();
    power.restore();
    let cp = checkpoint_on(&new, 1).await;
    assert!(cp > 0 && cp < 28, "checkpoint {cp}");
    assert!(
        cp + 4 >= went_past,
        "checkpoint {cp} is more than an interval behind {went_past}"
    );
    let raid = Raid1::open(vec![m0.clone(), new.clone()]).await.unwrap();
    assert_eq!(
        raid.status().await.members,
        vec![MemberHealth::InSync, MemberHealth::Recovering]
    );
    // A write below the checkpoint while the rebuild waits: its region is
    // dirty, so it is copied again too.
    raid.write(1, block(1)).await.unwrap(); // same content as before
    raid.resync_now(&RateLimit::default()).await.unwrap();
    assert_eq!(
        raid.resync_progress().bytes_copied,
        (28 - cp + 1) * (256 << 10),
        "only the regions from the checkpoint on, and the dirty one"
    );
    assert_rebuilt(&raid, &m0, &new).await;
}

#[tokio::test(start_paused = true)]
async fn a_stopped_rebuild_goes_on_from_where_it_stopped() {
    let power = Power::new();
    let (raid, m0, new) = pending_rebuild(&power).await;
    raid.set_resync_checkpoint_bytes(u64::MAX);
    // One region per (virtual) second; stop while it waits after the sixth.
    let task = raid.start_resync(RateLimit::new(256 << 10));
    tokio::time::sleep(std::time::Duration::from_millis(5500)).await;
    task.stop().await.unwrap();
    let p = raid.resync_progress();
    assert_eq!(p.checkpoints, 1, "a stop leaves a checkpoint");
    let cp = checkpoint_on(&m0, 1).await;
    assert_eq!(cp, 6, "regions 0..=5 were copied when it stopped");
    let before = p.bytes_copied;
    assert_eq!(before, 6 * (256 << 10));
    raid.resync_now(&RateLimit::default()).await.unwrap();
    assert_eq!(
        raid.resync_progress().bytes_copied - before,
        (28 - cp) * (256 << 10)
    );
    assert_rebuilt(&raid, &m0, &new).await;
}

#[tokio::test]
async fn a_crash_inside_a_readd_leaves_the_array_openable() {
    // The re-add writes the returning member's bitmap and superblock, then
    // the others' superblocks; a crash between those used to leave the
    // only up-to-date member with an older event count than the freshest
    // slot table, and the array refused to open. Cut at every point.
    for cut in 0..12 {
        let power = Power::new();
        let m: Vec<Arc<FaultDevice>> = (0..3)
            .map(|_| {
                Arc::new(
                    FaultDevice::volatile(Arc::new(MemoryDevice::new(4 * MB, 4096)))
                        .on_power(power.clone()),
                )
            })
            .collect();
        let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
        raid.write(5, block(1)).await.unwrap();
        m[0].set_failed(true);
        raid.write(5, block(2)).await.unwrap();
        m[1].set_failed(true);
        raid.write(5, block(3)).await.unwrap();
        raid.flush().await.unwrap();
        m[0].set_failed(false);
        power.cut_after(cut);
        let readd = raid.readd_member(m[0].clone()).await;
        assert_eq!(readd.is_ok(), !power.is_off());
        drop(raid);
        for (i, d) in m.iter().enumerate() {
            d.crash(i as u64 + 1).await.unwrap();
        }
        power.restore();
        let raid = Raid1::open(refs(&m))
            .await
            .unwrap_or_else(|e| panic!("cut after {cut}: {e}"));
        assert_eq!(raid.status().await.members[2], MemberHealth::InSync);
        raid.resync_now(&RateLimit::default()).await.unwrap();
        for d in &m {
            assert_eq!(member_block(d, &raid, 5).await, 3, "cut after {cut}");
        }
    }
}

#[tokio::test]
async fn a_rebuild_survives_a_crash_at_any_point() {
    // Cut the power at every write or flush of a rebuild with checkpoints:
    // inside copies, checkpoints (targets flushed before the superblocks
    // say so) and the promotion (likewise). The crash keeps a different
    // random part of the caches each time; the reopened array must finish
    // the rebuild with every block intact.
    for cut in 0.. {
        let power = Power::new();
        let (raid, m0, new) = pending_rebuild(&power).await;
        power.cut_after(cut);
        let done = raid.resync_now(&RateLimit::default()).await.is_ok();
        assert_eq!(done, !power.is_off());
        drop(raid);
        m0.crash(cut * 2 + 1).await.unwrap();
        new.crash(cut * 2 + 2).await.unwrap();
        power.restore();
        let raid = Raid1::open(vec![m0.clone(), new.clone()]).await.unwrap();
        raid.resync_now(&RateLimit::default()).await.unwrap();
        assert_rebuilt(&raid, &m0, &new).await;
        if done {
            break;
        }
    }
}

#[tokio::test]
async fn a_superblock_commit_torn_on_every_member_falls_back_to_the_other_copy() {
    // 512-byte sectors: a 4 KiB superblock write is eight of them, and a
    // power cut can leave some new and the rest old.
    let m: Vec<Arc<FaultDevice>> = (0..2)
        .map(|_| Arc::new(FaultDevice::new(Arc::new(MemoryDevice::new(8 * MB, 512)))))
        .collect();
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    raid.write(16, Bytes::from(vec![7; 4096])).await.unwrap();
    raid.close().await.unwrap();
    drop(raid);
    let sb_sectors = 2 * SB_BYTES as u64 / 512;
    for _ in 0..3 {
        let before: Vec<Bytes> = join_all(
            m.iter()
                .map(|d| d.read(0, buf::alloc(sb_sectors as usize * 512))),
        )
        .await
        .into_iter()
        .map(|r| r.unwrap().freeze())
        .collect();
        let events = Raid1::open(refs(&m)).await.unwrap().status().await.events;
        // The open committed to both members; tear that commit on each:
        // the second half of the copy it wrote goes back to what it was.
        for (d, old) in m.iter().zip(&before) {
            let now = d.read(0, buf::alloc(old.len())).await.unwrap();
            let changed: Vec<u64> = (0..sb_sectors)
                .filter(|&s| {
                    let r = s as usize * 512..(s as usize + 1) * 512;
                    now[r.clone()] != old[r]
                })
                .collect();
            let (first, last) = (changed[0], changed[changed.len() - 1]);
            assert!(last - first < 8, "one copy written: sectors {changed:?}");
            let copy_start = first / 8 * 8;
            let r = (copy_start as usize + 4) * 512..(copy_start as usize + 8) * 512;
            d.write(copy_start + 4, old.slice(r)).await.unwrap();
            assert!(
                Superblock::decode(&d.read(copy_start, buf::alloc(SB_BYTES)).await.unwrap())
                    .is_err()
            );
        }
        // The other copy holds the commit before: the array opens from
        // it, whole and in sync, with its data.
        let raid = Raid1::open(refs(&m)).await.unwrap();
        let st = raid.status().await;
        assert_eq!(st.members, vec![MemberHealth::InSync; 2]);
        assert_eq!(st.events, events, "the torn commit's event is redone");
        assert_eq!(
            raid.read(16, buf::alloc(4096)).await.unwrap()[..],
            [7; 4096]
        );
        raid.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_replacement_disk_keeps_no_superblock_of_its_past() {
    // A disk that was a member of another array: its copies there have a
    // higher write sequence than this array's first commit to it.
    let old = members(1, 8 * MB);
    drop(Raid1::create(refs(&old), &opts()).await.unwrap());
    for _ in 0..3 {
        drop(Raid1::open(refs(&old)).await.unwrap());
    }
    let m = members(2, 8 * MB);
    let raid = Raid1::create(refs(&m), &opts()).await.unwrap();
    m[1].set_failed(true);
    raid.write(0, block(3)).await.unwrap();
    raid.replace_member(1, old[0].clone()).await.unwrap();
    let ours = read_newest(&*m[0]).await.unwrap().array_uuid;
    let sb = read_newest(&*old[0]).await.unwrap();
    assert_eq!((sb.array_uuid, sb.member_index), (ours, 1));
    raid.resync_now(&RateLimit::default()).await.unwrap();
    raid.close().await.unwrap();
    drop(raid);
    let raid = Raid1::open(vec![m[0].clone(), old[0].clone()])
        .await
        .unwrap();
    assert_eq!(raid.status().await.members, vec![MemberHealth::InSync; 2]);
    assert_eq!(raid.read(0, buf::alloc(4096)).await.unwrap()[0], 3);
}

#[tokio::test]
async fn an_array_made_before_version_3_opens_and_keeps_its_one_copy() {
    let m = members(2, 8 * MB);
    let mut geometry = Geometry::plan(4096, m[0].num_blocks(), 256 << 10).unwrap();
    geometry.superblock_copies = 1;
    let slots: Vec<Slot> = (0..2u8)
        .map(|i| Slot {
            uuid: [i + 1; 16],
            state: SlotState::InSync,
            resync_from: 0,
        })
        .collect();
    for (i, d) in m.iter().enumerate() {
        let sb = Superblock {
            array_uuid: [9; 16],
            member_uuid: slots[i].uuid,
            member_index: i as u32,
            events: 3,
            geometry,
            slots: slots.clone(),
            seq: 0,
        };
        d.write(0, buf::aligned(&sb.encode())).await.unwrap();
    }
    // Its bitmap blocks were never written: all regions read as dirty.
    let raid = Raid1::open(refs(&m)).await.unwrap();
    raid.write(3, block(5)).await.unwrap();
    raid.resync_now(&RateLimit::default()).await.unwrap();
    raid.close().await.unwrap();
    drop(raid);
    for d in &m {
        let sb = read_newest(&**d).await.unwrap();
        assert_eq!(sb.geometry.superblock_copies, 1);
        assert!(sb.events > 3);
        // Block 1 is still its bitmap, not a second copy.
        let b1 = d.read(1, buf::alloc(4096)).await.unwrap();
        assert!(Superblock::decode(&b1).is_err());
    }
    let raid = Raid1::open(refs(&m)).await.unwrap();
    let st = raid.status().await;
    assert_eq!(
        (st.members, st.dirty_regions),
        (vec![MemberHealth::InSync; 2], 0)
    );
    assert_eq!(raid.read(3, buf::alloc(4096)).await.unwrap()[0], 5);
}
