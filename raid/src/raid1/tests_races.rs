//! Interleavings found by an adversarial review: writes whose callers stop
//! waiting, a write acknowledged while a member's drop is not yet on the
//! superblocks, and a resync pass that fails.

use std::time::Duration;

use super::tests::{block, opts};
use super::*;
use crate::fault::FaultDevice;
use crate::task::RateLimit;
use crate::MemoryDevice;

const MB: u64 = 1 << 20;

fn memory() -> DeviceRef {
    Arc::new(MemoryDevice::new(8 * MB, 4096))
}

/// A memory device whose writes can be made to fail slowly, whose reads
/// can be made to fail, whose writes below a block can be held, and whose
/// next write can be delayed and carried out apart from its future (as an
/// io_uring op or a remote command is: dropping the future does not stop
/// it).
struct Controlled {
    inner: DeviceRef,
    fail_writes: AtomicBool,
    fail_reads: AtomicBool,
    hold_below: AtomicU64,
    release: Notify,
    delay_next_ms: AtomicU64,
}

impl Controlled {
    fn new(inner: DeviceRef) -> Arc<Controlled> {
        Arc::new(Controlled {
            inner,
            fail_writes: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
            hold_below: AtomicU64::new(0),
            release: Notify::new(),
            delay_next_ms: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl BlockDevice for Controlled {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }
    async fn read(&self, lba: u64, buf: BytesMut) -> BlockResult<BytesMut> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(BlockError::Medium("injected read error".into()));
        }
        self.inner.read(lba, buf).await
    }
    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Err(BlockError::Medium("injected write error".into()));
        }
        if lba < self.hold_below.load(Ordering::SeqCst) {
            self.release.notified().await;
        }
        let delay = self.delay_next_ms.swap(0, Ordering::SeqCst);
        if delay > 0 {
            let inner = self.inner.clone();
            return tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                inner.write(lba, data).await
            })
            .await
            .map_err(|e| BlockError::Offline(e.to_string()))?;
        }
        self.inner.write(lba, data).await
    }
    async fn flush(&self) -> BlockResult<()> {
        self.inner.flush().await
    }
    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        self.inner.write_zeroes(lba, blocks).await
    }
    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        self.inner.discard(lba, blocks).await
    }
}

/// Reads block `lba` four times (round-robin over the in-sync members).
async fn four_reads(raid: &Raid1, lba: u64) -> Vec<u8> {
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(raid.read(lba, buf::alloc(4096)).await.unwrap()[0]);
    }
    seen
}

/// A two-way mirror over a memory device and `b`, block 5 holding 1s,
/// flushed.
async fn mirror_over(b: DeviceRef) -> Arc<Raid1> {
    let raid = Raid1::create(vec![memory(), b], &opts()).await.unwrap();
    raid.write(5, block(1)).await.unwrap();
    raid.flush().await.unwrap();
    raid
}

/// Gives up on writing 2s to block 5 after `after`.
async fn give_up_writing_2(raid: &Raid1, after: Duration) {
    let w = tokio::time::timeout(after, raid.write(5, block(2))).await;
    assert!(w.is_err(), "the caller gave up");
}

/// After three flushes, every read of block 5 finds 2s and the member
/// that failed the write has left.
async fn twos_on_the_member_left(raid: &Raid1) {
    for _ in 0..3 {
        raid.flush().await.unwrap();
    }
    let seen = four_reads(raid, 5).await;
    let st = raid.status().await;
    assert!(seen.iter().all(|&v| v == 2), "{seen:?}; {st:?}");
    assert!(st.degraded, "the member that failed the write left: {st:?}");
}

/// Three flushes leave region 0 dirty while its given-up write is being
/// finished; then waits for it.
async fn kept_dirty_until_finished(raid: &Raid1) {
    for _ in 0..3 {
        raid.flush().await.unwrap();
    }
    assert!(
        raid.intent.dirty.get(0),
        "region 0 clean while its write runs"
    );
    finished(raid).await;
}

/// Waits until the writes given up have been finished in the background.
async fn finished(raid: &Raid1) {
    tokio::time::timeout(Duration::from_secs(10), raid.background_writes_done())
        .await
        .expect("writes given up finish");
}

/// A write whose caller stops waiting while one member is slow to fail
/// it: finished in the background, it drops that member; the members
/// never disagree on a block the array calls in sync.
#[tokio::test]
async fn a_write_its_caller_gave_up_on_still_drops_the_member_that_failed_it() {
    let b = Controlled::new(memory());
    let raid = mirror_over(b.clone()).await;
    b.fail_writes.store(true, Ordering::SeqCst);
    give_up_writing_2(&raid, Duration::from_millis(50)).await;
    kept_dirty_until_finished(&raid).await;
    b.fail_writes.store(false, Ordering::SeqCst);
    twos_on_the_member_left(&raid).await;
}

/// The same when the caller gives up while the write waits to record the
/// failed member's drop.
#[tokio::test]
async fn a_write_given_up_while_recording_a_drop_still_records_it() {
    let b = Arc::new(FaultDevice::new(memory()));
    let raid = mirror_over(b.clone()).await;
    let meta = raid.meta.lock().await;
    b.fail_after_writes(0);
    give_up_writing_2(&raid, Duration::from_millis(50)).await;
    drop(meta);
    b.set_failed(false);
    finished(&raid).await;
    twos_on_the_member_left(&raid).await;
}

/// A write that went only to the members left after a drop is not
/// acknowledged until the drop is on the superblocks: acknowledged, it
/// survives a crash (the next open does not resync over it from the
/// member that left).
#[tokio::test]
async fn a_write_is_acknowledged_only_once_an_earlier_drop_is_recorded() {
    let (b_mem, a_mem) = (memory(), memory());
    let b = Arc::new(FaultDevice::new(b_mem.clone()));
    let a = Controlled::new(a_mem.clone());
    let raid = Raid1::create(
        vec![b.clone() as DeviceRef, a.clone() as DeviceRef],
        &opts(),
    )
    .await
    .unwrap();
    raid.write(5, block(1)).await.unwrap();
    raid.flush().await.unwrap();
    // A's superblock write (the drop's commit) hangs until released.
    a.hold_below.store(raid.data_offset(), Ordering::SeqCst);
    b.fail_after_writes(0);
    let r = raid.clone();
    let w1 = tokio::spawn(async move { r.write(6, block(9)).await });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!w1.is_finished(), "it waits for the drop's commit");
    let r = raid.clone();
    let w2 = tokio::spawn(async move { r.write(5, block(2)).await });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !w2.is_finished(),
        "not acknowledged before the drop is recorded"
    );
    a.hold_below.store(0, Ordering::SeqCst);
    a.release.notify_waiters();
    w1.await.unwrap().unwrap();
    w2.await.unwrap().unwrap();
    // The process dies (no close), the disks stay as they are.
    drop(raid);
    let again = Raid1::open(vec![b_mem, a_mem]).await.unwrap();
    again.resync_now(&RateLimit::default()).await.unwrap();
    let got = again.read(5, buf::alloc(4096)).await.unwrap()[0];
    assert_eq!(got, 2, "an acknowledged write was lost");
}

/// A read error on the only in-sync member fails that resync pass, not
/// the resync: a later pass brings the returning member back.
#[tokio::test]
async fn a_failed_resync_pass_is_tried_again() {
    let a = Controlled::new(memory());
    let b: DeviceRef = Arc::new(FaultDevice::new(memory()));
    let raid = Raid1::create(vec![a.clone() as DeviceRef, b.clone()], &opts())
        .await
        .unwrap();
    let task = raid.start_resync_with(RateLimit::default(), Duration::from_millis(20));
    raid.fail_member(1).await.unwrap();
    raid.write(5, block(7)).await.unwrap();
    a.fail_reads.store(true, Ordering::SeqCst);
    raid.readd_member(b.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.fail_reads.store(false, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut st = raid.status().await;
    while st.degraded && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        st = raid.status().await;
    }
    assert!(!st.degraded, "the member stays {:?}", st.members);
    task.stop().await.unwrap();
}

/// A write given up while one member's part of it is still under way
/// (in the kernel, say) keeps its region's bit until that part landed;
/// then the members agree.
#[tokio::test]
async fn a_given_up_write_still_landing_keeps_its_bit_until_it_landed() {
    let b = Controlled::new(memory());
    let raid = mirror_over(b.clone()).await;
    b.delay_next_ms.store(300, Ordering::SeqCst);
    give_up_writing_2(&raid, Duration::from_millis(20)).await;
    kept_dirty_until_finished(&raid).await;
    let seen = four_reads(&raid, 5).await;
    assert!(seen.iter().all(|&v| v == 2), "{seen:?}");
}

/// A discard given up while the member that failed it is being dropped:
/// the drop is still made, and the discard stands on the other member.
#[tokio::test]
async fn a_given_up_discard_drops_the_member_that_failed_it() {
    let b = Arc::new(FaultDevice::new(memory()));
    let raid = mirror_over(b.clone()).await;
    let meta = raid.meta.lock().await;
    b.fail_after_writes(0);
    // The discard fails on b and waits for `meta` to drop it.
    let w = tokio::time::timeout(Duration::from_millis(50), raid.discard(0, 16)).await;
    assert!(w.is_err(), "the caller gave up");
    drop(meta);
    finished(&raid).await;
    b.set_failed(false);
    let seen = four_reads(&raid, 5).await;
    assert!(seen.iter().all(|&v| v == 0), "{seen:?}");
    assert!(raid.status().await.degraded);
}
