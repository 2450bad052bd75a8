//! Helpers shared by the tests.

use std::future::Future;
use std::sync::Arc;

use proptest::test_runner::Config;
use raid::{buf, BlockDevice, Bytes, DeviceRef, FaultDevice, MemoryDevice, Power};

/// Block size used throughout.
pub const BS: usize = 4096;

/// Proptest config: `default` cases unless PROPTEST_CASES says otherwise.
pub fn config(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Run a future to completion on a fresh single-threaded runtime.
pub fn run<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// `blocks` blocks, each starting with a unique stamp so any two writes differ.
pub fn pattern(stamp: u64, blocks: u64) -> Vec<u8> {
    pattern_of(stamp, blocks, BS)
}

/// [`pattern`] in blocks of `bs` bytes.
pub fn pattern_of(stamp: u64, blocks: u64, bs: usize) -> Vec<u8> {
    let mut v = vec![0u8; blocks as usize * bs];
    for (i, block) in v.chunks_mut(bs).enumerate() {
        let tag = stamp * 1000 + i as u64;
        block.fill(tag as u8 | 1);
        block[..8].copy_from_slice(&tag.to_le_bytes());
    }
    v
}

/// A memory device behind a fault injector.
pub fn faulty(bytes: u64) -> Arc<FaultDevice> {
    Arc::new(FaultDevice::new(Arc::new(MemoryDevice::new(
        bytes, BS as u32,
    ))))
}

/// A memory device behind a fault injector with a volatile write cache.
pub fn volatile(bytes: u64) -> Arc<FaultDevice> {
    Arc::new(FaultDevice::volatile(Arc::new(MemoryDevice::new(
        bytes, BS as u32,
    ))))
}

/// A volatile device on `power` (see [`raid::Power`]).
pub fn powered(bytes: u64, power: &Arc<Power>) -> Arc<FaultDevice> {
    powered_of(bytes, BS, power)
}

/// [`powered`] with blocks of `bs` bytes: a power cut tears unflushed
/// writes at that granularity.
pub fn powered_of(bytes: u64, bs: usize, power: &Arc<Power>) -> Arc<FaultDevice> {
    Arc::new(
        FaultDevice::volatile(Arc::new(MemoryDevice::new(bytes, bs as u32)))
            .on_power(power.clone()),
    )
}

/// The crash after a power cut: each device keeps a random part (by its
/// seed) of what it had not flushed; then the power comes back.
pub async fn crash_all(devs: &[Arc<FaultDevice>], seeds: &[u64], power: &Power) {
    for (dev, seed) in devs.iter().zip(seeds.iter().cycle()) {
        dev.crash(*seed).await.expect("crash");
    }
    power.restore();
}

/// As device references.
pub fn refs(devs: &[Arc<FaultDevice>]) -> Vec<DeviceRef> {
    devs.iter().map(|d| d.clone() as DeviceRef).collect()
}

/// Read `blocks` blocks.
pub async fn read(dev: &dyn BlockDevice, lba: u64, blocks: u64) -> Vec<u8> {
    dev.read(lba, buf::alloc(blocks as usize * dev.block_size() as usize))
        .await
        .expect("read")
        .to_vec()
}

/// Write `data`.
pub async fn write(dev: &dyn BlockDevice, lba: u64, data: &[u8]) {
    dev.write(lba, Bytes::copy_from_slice(data))
        .await
        .expect("write");
}

/// A write, discard or flush of a crash run.
pub enum CrashIo {
    Write(u64, u64),
    Discard(u64, u64),
    Flush,
}

/// Apply `io` (its range clamped to `size` blocks) to `dev` and to `model`.
/// Until the power cut it must succeed; after it the result does not matter
/// (a write may still have landed, so the model takes it either way).
pub async fn crash_io<D: BlockDevice + ?Sized>(
    dev: &D,
    model: &mut raid::model::CrashModel,
    power: &Power,
    stamp: u64,
    io: CrashIo,
    size: u64,
) {
    let must = |ok: bool, what: &str| assert!(ok || power.is_off(), "{what} failed");
    let bs = dev.block_size() as usize;
    match io {
        CrashIo::Write(l, n) => {
            let (l, n) = clamp(l, n, size);
            let data = pattern_of(stamp, n, bs);
            let r = dev.write(l, data.clone().into()).await;
            model.write(l, &data);
            must(r.is_ok(), "write");
        }
        CrashIo::Discard(l, n) => {
            let (l, n) = clamp(l, n, size);
            let r = dev.discard(l, n).await;
            model.write(l, &vec![0; n as usize * bs]);
            must(r.is_ok(), "discard");
        }
        CrashIo::Flush => {
            let ok = dev.flush().await.is_ok();
            if ok {
                model.flush();
            }
            must(ok, "flush");
        }
    }
}

/// Clamp a generated range to a device of `size` blocks.
pub fn clamp(lba: u64, blocks: u64, size: u64) -> (u64, u64) {
    let lba = lba % size;
    (lba, blocks.clamp(1, size - lba))
}
