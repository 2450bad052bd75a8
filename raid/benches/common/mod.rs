//! Stacks and workloads shared by the benchmarks: every stack over memory
//! (or null) members, filled beforehand so that nothing is allocated while
//! measured, and called through `&dyn BlockDevice`.

// Each bench compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;

use async_trait::async_trait;
use raid::{
    BlockDevice, BlockResult, Bytes, BytesMut, DeviceRef, MemoryDevice, NullDevice, Raid1,
    Raid1Options, ThinOptions, ThinPool,
};

/// I/O size.
pub const BS: usize = 4096;
/// Size of every volume measured.
pub const VOLUME: u64 = 64 << 20;
/// Room for the raid1 superblock and bitmap in front of the data.
const RAID1_META: u64 = 2 << 20;

/// Random block addresses (xorshift64: deterministic, no dependency).
pub struct Lbas(pub u64);

impl Lbas {
    /// The next address below `blocks`.
    pub fn next(&mut self, blocks: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % blocks
    }
}

/// A memory device.
pub fn mem(bytes: u64) -> DeviceRef {
    Arc::new(MemoryDevice::new(bytes, BS as u32))
}

/// A null device.
pub fn null(bytes: u64) -> DeviceRef {
    Arc::new(NullDevice::new(bytes, BS as u32))
}

/// Write every block of `dev` once.
pub async fn fill(dev: &dyn BlockDevice) {
    let chunk = Bytes::from(vec![0x5A; 1 << 20]);
    let per = (chunk.len() / BS) as u64;
    let mut lba = 0;
    while lba + per <= dev.num_blocks() {
        dev.write(lba, chunk.clone()).await.unwrap();
        lba += per;
    }
}

/// raid1 over two members made by `member` (default 4 MiB regions).
pub async fn raid1_over(member: fn(u64) -> DeviceRef) -> DeviceRef {
    let size = VOLUME + RAID1_META;
    Raid1::create(vec![member(size), member(size)], &Raid1Options::default())
        .await
        .unwrap()
}

/// A thin device of the volume's size (default 1 MiB blocks) in a pool on
/// `data`.
pub async fn thin_over(data: DeviceRef) -> DeviceRef {
    let pool = ThinPool::format(data, mem(16 << 20), &ThinOptions::default())
        .await
        .unwrap();
    Arc::new(pool.create_thin(1, VOLUME / BS as u64).await.unwrap())
}

/// The least a layer can be under the `BlockDevice` trait: it forwards
/// every call to the device below (a write to two devices when given two,
/// joined as the peer joins them; a read from the first). Stacked twice
/// over the two members it shows what any two layers cost per I/O (one
/// boxed future each, and their polling), whatever they do.
pub struct Forward(pub Vec<DeviceRef>);

#[async_trait]
impl BlockDevice for Forward {
    fn block_size(&self) -> u32 {
        self.0[0].block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.0[0].num_blocks()
    }
    async fn read(&self, lba: u64, buf: BytesMut) -> BlockResult<BytesMut> {
        self.0[0].as_ref().read(lba, buf).await
    }
    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        if let [a, b] = &self.0[..] {
            let (x, y) = tokio::join!(
                a.as_ref().write(lba, data.clone()),
                b.as_ref().write(lba, data)
            );
            return x.and(y);
        }
        self.0[0].as_ref().write(lba, data).await
    }
    async fn flush(&self) -> BlockResult<()> {
        Ok(())
    }
    async fn write_zeroes(&self, _lba: u64, _blocks: u64) -> BlockResult<()> {
        Ok(())
    }
    async fn discard(&self, _lba: u64, _blocks: u64) -> BlockResult<()> {
        Ok(())
    }
}

/// The devices measured, all written once in full, so that every raid1
/// region is dirty (the bitmap's fast path, as in steady state) and every
/// thin block is provisioned and exclusive.
pub struct Stacks {
    /// Two plain members (the peer: write both, read one).
    pub members: [DeviceRef; 2],
    /// raid1 over two members.
    pub raid1: DeviceRef,
    /// A thin device in a pool over one member.
    pub thin: DeviceRef,
    /// A thin device in a pool over raid1 over two members.
    pub raid1_thin: DeviceRef,
    /// Two [`Forward`] layers over the two members.
    pub floor: DeviceRef,
}

/// Build and fill the stacks over members made by `member`.
pub async fn build(member: fn(u64) -> DeviceRef) -> Stacks {
    let members = [member(VOLUME), member(VOLUME)];
    let raid1 = raid1_over(member).await;
    let thin = thin_over(member(VOLUME)).await;
    let raid1_thin = thin_over(raid1_over(member).await).await;
    for d in members.iter().chain([&raid1, &thin, &raid1_thin]) {
        fill(&**d).await;
    }
    let floor = Arc::new(Forward(vec![Arc::new(Forward(members.to_vec()))]));
    Stacks {
        members,
        raid1,
        thin,
        raid1_thin,
        floor,
    }
}
