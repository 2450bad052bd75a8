use std::sync::Arc;

use super::*;
use crate::device::{BlockDevice, BlockError, DeviceRef};
use crate::{buf, Bytes, MemoryDevice};

const BS: usize = 4096;
const TB: u64 = 64 << 10; // thin block in tests: 64 KiB = 16 device blocks

fn devs(data_bytes: u64) -> (Arc<MemoryDevice>, Arc<MemoryDevice>) {
    (
        Arc::new(MemoryDevice::new(data_bytes, 4096)),
        Arc::new(MemoryDevice::new(1 << 20, 4096)),
    )
}

fn opts() -> ThinOptions {
    ThinOptions {
        block_bytes: TB,
        low_water_blocks: Some(2),
    }
}

async fn pool(data: &Arc<MemoryDevice>, meta: &Arc<MemoryDevice>) -> Arc<ThinPool> {
    ThinPool::format(
        data.clone() as DeviceRef,
        meta.clone() as DeviceRef,
        &opts(),
    )
    .await
    .unwrap()
}

async fn reopen(data: &Arc<MemoryDevice>, meta: &Arc<MemoryDevice>) -> BlockResult_<Arc<ThinPool>> {
    ThinPool::open(
        data.clone() as DeviceRef,
        meta.clone() as DeviceRef,
        &opts(),
    )
    .await
}

type BlockResult_<T> = crate::BlockResult<T>;

fn block(v: u8) -> Bytes {
    Bytes::from(vec![v; BS])
}

async fn byte(dev: &ThinDevice, lba: u64) -> u8 {
    dev.read(lba, buf::alloc(BS)).await.unwrap()[0]
}

#[tokio::test]
async fn overcommitted_device_allocates_on_first_write_and_discard_frees() {
    let (data, meta) = devs(8 * TB);
    let pool = pool(&data, &meta).await;
    // 1 GiB virtual on 512 KiB of data.
    let thin = pool.create_thin(1, (1 << 30) / BS as u64).await.unwrap();
    assert_eq!(byte(&thin, 100_000).await, 0);
    assert_eq!(pool.status().free_data_blocks, 8);
    thin.write(100_000, block(5)).await.unwrap();
    thin.write(100_001, block(6)).await.unwrap();
    assert_eq!(pool.status().free_data_blocks, 7);
    assert_eq!(byte(&thin, 100_000).await, 5);
    assert_eq!(byte(&thin, 100_001).await, 6);
    // The rest of the new block reads as zeroes.
    assert_eq!(byte(&thin, 100_002).await, 0);
    thin.discard(100_000 / 16 * 16, 16).await.unwrap();
    assert_eq!(byte(&thin, 100_000).await, 0);
    thin.flush().await.unwrap();
    assert_eq!(pool.status().free_data_blocks, 8);
    assert_eq!(pool.mapped_blocks(1).unwrap(), 0);
}

#[tokio::test]
async fn snapshots_share_blocks_and_copy_on_write() {
    let (data, meta) = devs(16 * TB);
    let pool = pool(&data, &meta).await;
    let origin = pool.create_thin(1, 64 * 16).await.unwrap();
    for b in 0..4u64 {
        origin.write(b * 16, block(b as u8 + 1)).await.unwrap();
    }
    let snap = pool.snapshot(1, 2).await.unwrap();
    assert_eq!(pool.status().free_data_blocks, 12, "nothing copied yet");
    origin.write(0, block(9)).await.unwrap();
    assert_eq!(byte(&origin, 0).await, 9);
    assert_eq!(byte(&snap, 0).await, 1);
    // Copy on write kept the rest of the block.
    origin.write(17, block(8)).await.unwrap();
    assert_eq!(byte(&origin, 16).await, 2);
    assert_eq!(byte(&snap, 17).await, 0);
    // Snapshot of a snapshot, then writes to the middle one.
    let snap2 = pool.snapshot(2, 3).await.unwrap();
    snap.write(32, block(7)).await.unwrap();
    assert_eq!(byte(&snap2, 32).await, 3);
    assert_eq!(byte(&snap, 32).await, 7);
    assert_eq!(byte(&origin, 32).await, 3);
    pool.delete_thin(2).await.unwrap();
    assert!(matches!(
        snap.read(0, buf::alloc(BS)).await,
        Err(BlockError::Offline(_))
    ));
    assert_eq!(byte(&snap2, 0).await, 1);
    pool.delete_thin(3).await.unwrap();
    pool.delete_thin(1).await.unwrap();
    pool.commit().await.unwrap();
    let st = pool.status();
    assert_eq!(st.free_data_blocks, 16);
    assert_eq!(st.thin_devices, 0);
}

#[tokio::test]
async fn committed_state_survives_reopen() {
    let (data, meta) = devs(16 * TB);
    let pool = pool(&data, &meta).await;
    let a = pool.create_thin(1, 600 * 16).await.unwrap();
    for b in [0u64, 1, 509, 599] {
        a.write(b * 16 + 3, block(b as u8 + 1)).await.unwrap();
    }
    pool.snapshot(1, 2).await.unwrap();
    a.write(3, block(77)).await.unwrap();
    a.flush().await.unwrap();
    let txn = pool.status().transaction_id;
    a.write(16 * 509 + 3, block(99)).await.unwrap(); // not flushed
    drop((a, pool));
    let pool = reopen(&data, &meta).await.unwrap();
    assert_eq!(pool.status().transaction_id, txn);
    let a = pool.open_thin(1).unwrap();
    let s = pool.open_thin(2).unwrap();
    assert_eq!(byte(&a, 3).await, 77);
    assert_eq!(byte(&s, 3).await, 1);
    assert_eq!(byte(&s, 16 * 599 + 3).await, (599 + 1) as u8);
    assert_eq!(
        byte(&a, 16 * 509 + 3).await,
        510_u64 as u8,
        "unflushed write is gone"
    );
    assert_eq!(pool.status().free_data_blocks, 16 - 5);
    assert!(pool.open_thin(3).is_err());
}

#[tokio::test]
async fn full_pool_fails_cleanly_and_resumes_after_growth() {
    let (data, meta) = devs(2 * TB);
    let pool = pool(&data, &meta).await;
    let mut low = pool.low_water();
    let thin = pool.create_thin(1, 10 * 16).await.unwrap();
    thin.write(0, block(1)).await.unwrap();
    thin.write(16, block(2)).await.unwrap();
    assert!(*low.borrow_and_update());
    let err = thin.write(32, block(3)).await.unwrap_err();
    assert!(matches!(err, BlockError::NoSpace(_)), "{err}");
    // Existing blocks are still writable and intact.
    thin.write(1, block(4)).await.unwrap();
    assert_eq!(byte(&thin, 0).await, 1);
    data.resize(8 * TB);
    thin.write(32, block(3)).await.unwrap();
    assert_eq!(byte(&thin, 32).await, 3);
    assert_eq!(pool.status().data_blocks, 8);
    assert!(!*low.borrow_and_update());
    thin.flush().await.unwrap();
    drop((thin, pool));
    let pool = reopen(&data, &meta).await.unwrap();
    assert_eq!(byte(&pool.open_thin(1).unwrap(), 32).await, 3);
}

#[tokio::test]
async fn devices_grow_and_metadata_damage_is_an_error() {
    let (data, meta) = devs(8 * TB);
    let pool = pool(&data, &meta).await;
    let t = pool.create_thin(1, 16).await.unwrap();
    t.write(0, block(1)).await.unwrap();
    pool.resize_thin(1, 1000 * 16).await.unwrap();
    assert_eq!(t.num_blocks(), 16000);
    t.write(999 * 16, block(2)).await.unwrap();
    assert_eq!(byte(&t, 0).await, 1);
    t.flush().await.unwrap();
    drop((t, pool));
    // Scribble over every page but the superblocks: open must refuse.
    let pages = meta.num_blocks();
    for p in 2..pages {
        meta.write(p, block(0xEE)).await.unwrap();
    }
    let err = reopen(&data, &meta).await.err().unwrap();
    assert!(matches!(err, BlockError::Medium(_)), "{err}");
    meta.write(0, block(0)).await.unwrap();
    meta.write(1, block(0)).await.unwrap();
    assert!(reopen(&data, &meta).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn periodic_commit_makes_writes_durable_without_a_flush() {
    let (data, meta) = devs(8 * TB);
    let pool = pool(&data, &meta).await;
    let t = pool.create_thin(1, 64).await.unwrap();
    t.write(0, block(3)).await.unwrap();
    let txn = pool.status().transaction_id;
    let task = pool.start_periodic_commit(std::time::Duration::from_secs(5));
    // The paused clock jumps straight to the next timer.
    while pool.status().transaction_id == txn {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    task.stop().await.unwrap();
    drop((t, pool));
    let pool = reopen(&data, &meta).await.unwrap();
    assert_eq!(byte(&pool.open_thin(1).unwrap(), 0).await, 3);
}

#[tokio::test]
async fn a_block_that_became_exclusive_is_written_in_place_again() {
    // Blocks shared with a deleted snapshot are the origin's alone after
    // the next commit; the origin's mapping cache still says "shared" for
    // them. Writes of any shape must look again rather than copy.
    let (data, meta) = devs(16 * TB);
    let pool = pool(&data, &meta).await;
    let origin = pool.create_thin(1, 64 * 16).await.unwrap();
    origin
        .write(0, Bytes::from(vec![1; 32 * BS]))
        .await
        .unwrap();
    pool.snapshot(1, 2).await.unwrap();
    pool.commit().await.unwrap();
    assert_eq!(byte(&origin, 3).await, 1); // caches "shared"
    assert_eq!(byte(&origin, 19).await, 1);
    pool.delete_thin(2).await.unwrap();
    pool.commit().await.unwrap();
    let mapped = |pool: &ThinPool| [0, 1].map(|vb| pool.state().lookup(1, vb).map(|m| m.block));
    let before = mapped(&pool);
    // One write across both thin blocks, one inside the first.
    origin
        .write(15, Bytes::from(vec![2; 2 * BS]))
        .await
        .unwrap();
    origin.write(3, block(3)).await.unwrap();
    assert_eq!(mapped(&pool), before, "written in place, nothing copied");
    for (lba, v) in [(0, 1), (3, 3), (15, 2), (16, 2), (17, 1), (31, 1)] {
        assert_eq!(byte(&origin, lba).await, v, "block {lba}");
    }
}

/// A device whose next read, once armed, returns its data only when
/// released.
struct HeldRead {
    inner: Arc<MemoryDevice>,
    armed: std::sync::atomic::AtomicBool,
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl BlockDevice for HeldRead {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }
    async fn read(&self, lba: u64, buf: bytes::BytesMut) -> BlockResult_<bytes::BytesMut> {
        let read = self.inner.read(lba, buf).await;
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        read
    }
    async fn write(&self, lba: u64, data: Bytes) -> BlockResult_<()> {
        self.inner.write(lba, data).await
    }
    async fn flush(&self) -> BlockResult_<()> {
        self.inner.flush().await
    }
    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult_<()> {
        self.inner.write_zeroes(lba, blocks).await
    }
    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult_<()> {
        self.inner.discard(lba, blocks).await
    }
}

#[tokio::test]
async fn a_write_in_place_while_another_copies_the_block_is_kept() {
    // The origin's write into a block shared with a snapshot copies it;
    // while it reads the block, the snapshot goes and a commit makes the
    // block the origin's alone, and a second write lands there in place.
    // The copy, taken before that write, must not replace the block.
    let (data, meta) = devs(16 * TB);
    let held = Arc::new(HeldRead {
        inner: data,
        armed: Default::default(),
        entered: Default::default(),
        release: Default::default(),
    });
    let pool = ThinPool::format(held.clone() as DeviceRef, meta as DeviceRef, &opts())
        .await
        .unwrap();
    let origin = Arc::new(pool.create_thin(1, 64 * 16).await.unwrap());
    origin
        .write(0, Bytes::from(vec![1; 16 * BS]))
        .await
        .unwrap();
    pool.snapshot(1, 2).await.unwrap();
    pool.commit().await.unwrap();
    held.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let copying = {
        let origin = origin.clone();
        tokio::spawn(async move { origin.write(0, block(5)).await })
    };
    held.entered.notified().await;
    pool.delete_thin(2).await.unwrap();
    pool.commit().await.unwrap();
    origin.write(8, block(7)).await.unwrap();
    held.release.notify_one();
    copying.await.unwrap().unwrap();
    for (lba, v) in [(0, 5), (1, 1), (8, 7), (15, 1)] {
        assert_eq!(byte(&origin, lba).await, v, "block {lba}");
    }
}
