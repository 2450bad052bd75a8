//! [`ThinPool`]: allocation, provisioning, commits, snapshots, growth.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::future::try_join_all;
use tokio::sync::{watch, Mutex};
use tracing::{info, warn};

use super::cache::MapCache;
use super::device::ThinDevice;
use super::metadata::{corrupt, Superblock, FIRST_PAGE, PAGE};
use super::state::{read_page, Mapping, State};
use crate::buf;
use crate::device::{BlockError, BlockResult, DeviceRef};
use crate::gate::Gate;
use crate::task::BackgroundTask;

/// Default thin block size.
pub const DEFAULT_BLOCK_BYTES: u64 = 1 << 20;
const BLOCK_LOCKS: u64 = 64;

/// How to format or open a pool.
#[derive(Debug, Clone)]
pub struct ThinOptions {
    /// Bytes per thin block (a power of two, a multiple of the device
    /// block size); only used by `format`, `open` reads it from disk.
    pub block_bytes: u64,
    /// Raise the low-water notice when free data blocks drop to this
    /// many; `None` means a tenth of the pool.
    pub low_water_blocks: Option<u64>,
}

impl Default for ThinOptions {
    fn default() -> Self {
        ThinOptions {
            block_bytes: DEFAULT_BLOCK_BYTES,
            low_water_blocks: None,
        }
    }
}

/// A snapshot of the pool's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    /// Id of the last committed transaction.
    pub transaction_id: u64,
    /// Bytes per thin block.
    pub block_bytes: u64,
    /// Thin blocks in the data device.
    pub data_blocks: u64,
    /// Data blocks free (including those freed since the last commit).
    pub free_data_blocks: u64,
    /// Pages in the metadata device.
    pub meta_pages: u64,
    /// Metadata pages free (including those freed since the last commit).
    pub free_meta_pages: u64,
    /// Number of thin devices and snapshots.
    pub thin_devices: usize,
    /// Whether free space is at or below the low-water mark.
    pub low_water: bool,
    /// Why the pool stopped taking writes, if it did.
    pub failed: Option<String>,
}

/// Per thin device: each I/O passes the gate; snapshot, delete, resize and
/// unmapping close it (waiting for the I/O in flight).
pub(crate) struct DevGate {
    pub id: u64,
    pub io: Gate,
    pub deleted: AtomicBool,
    pub size: AtomicU64,
    /// Its mappings, for lookups without the state lock.
    pub cache: MapCache,
}

/// A pool of thin blocks on a data device, described by a metadata device.
pub struct ThinPool {
    pub(crate) data: DeviceRef,
    meta: DeviceRef,
    pub(crate) block_size: u32,
    /// Device blocks per thin block.
    pub(crate) bpb: u64,
    state: SyncMutex<State>,
    commit_lock: Mutex<()>,
    block_locks: Vec<Mutex<()>>,
    gates: SyncMutex<HashMap<u64, Arc<DevGate>>>,
    low_water_blocks: AtomicU64,
    low_water: watch::Sender<bool>,
}

fn meta_pages(meta: &DeviceRef) -> u64 {
    meta.num_blocks() * meta.block_size() as u64 / PAGE as u64
}

impl ThinPool {
    /// Make a new, empty pool (any previous content is forgotten).
    pub async fn format(
        data: DeviceRef,
        meta: DeviceRef,
        opts: &ThinOptions,
    ) -> BlockResult<Arc<ThinPool>> {
        let bs = data.block_size();
        if meta.block_size() != bs || bs as usize > PAGE {
            return Err(BlockError::Unsupported(format!(
                "thin pool devices need the same block size of at most {PAGE} bytes"
            )));
        }
        if !opts.block_bytes.is_power_of_two() || opts.block_bytes < bs as u64 {
            return Err(BlockError::Unsupported(format!(
                "thin block size {} is not a power of two of at least one block",
                opts.block_bytes
            )));
        }
        if meta_pages(&meta) <= FIRST_PAGE + 1 {
            return Err(BlockError::Unsupported(
                "thin metadata device is too small".into(),
            ));
        }
        let data_blocks = data.num_blocks() * bs as u64 / opts.block_bytes;
        let state = State::new(bs, opts.block_bytes, data_blocks, meta_pages(&meta));
        // Invalidate both slots so no older pool on these devices survives.
        for slot in 0..FIRST_PAGE {
            write_page(&meta, bs, slot, &[0u8; PAGE]).await?;
        }
        let pool = ThinPool::assemble(data, meta, state, opts);
        pool.commit().await?;
        info!(
            data_blocks,
            block_bytes = opts.block_bytes,
            "thin pool formatted"
        );
        Ok(pool)
    }

    /// Open an existing pool at its last commit.
    ///
    /// Of the two superblock slots the valid one with the higher transaction
    /// id wins; if its trees are damaged that is an error (falling back to
    /// the older slot would silently lose flushed writes).
    pub async fn open(
        data: DeviceRef,
        meta: DeviceRef,
        opts: &ThinOptions,
    ) -> BlockResult<Arc<ThinPool>> {
        let bs = meta.block_size();
        if bs as usize > PAGE || meta_pages(&meta) <= FIRST_PAGE {
            return Err(BlockError::Unsupported("not a thin metadata device".into()));
        }
        let mut best: Option<Superblock> = None;
        let mut last_err = None;
        for slot in 0..FIRST_PAGE {
            match Superblock::decode(&read_page(&meta, bs, slot).await?) {
                Ok(sb) if best.as_ref().is_none_or(|b| sb.txn > b.txn) => best = Some(sb),
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
        }
        let sb = best.ok_or_else(|| last_err.unwrap_or_else(|| corrupt("no superblock")))?;
        if sb.block_size != bs || data.block_size() != bs {
            return Err(corrupt("block size differs from the devices'"));
        }
        let data_blocks = data.num_blocks() * bs as u64 / sb.block_bytes;
        let state = State::load(&meta, &sb, data_blocks, meta_pages(&meta)).await?;
        let opts = ThinOptions {
            block_bytes: sb.block_bytes,
            ..opts.clone()
        };
        let pool = ThinPool::assemble(data, meta, state, &opts);
        info!(txn = sb.txn, devices = sb.devices, "thin pool opened");
        Ok(pool)
    }

    fn assemble(
        data: DeviceRef,
        meta: DeviceRef,
        state: State,
        opts: &ThinOptions,
    ) -> Arc<ThinPool> {
        let lw = opts.low_water_blocks.unwrap_or(state.data_blocks() / 10);
        let pool = ThinPool {
            block_size: data.block_size(),
            bpb: opts.block_bytes / data.block_size() as u64,
            data,
            meta,
            state: SyncMutex::new(state),
            commit_lock: Mutex::new(()),
            block_locks: (0..BLOCK_LOCKS).map(|_| Mutex::new(())).collect(),
            gates: SyncMutex::new(HashMap::new()),
            low_water_blocks: AtomicU64::new(lw),
            low_water: watch::channel(false).0,
        };
        pool.check_low_water();
        Arc::new(pool)
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool's state.
    pub fn status(&self) -> PoolStatus {
        let st = self.state();
        let (free, pending) = st.free_data();
        let (free_pages, pending_pages) = st.free_pages();
        PoolStatus {
            transaction_id: st.txn,
            block_bytes: st.block_bytes,
            data_blocks: st.data_blocks(),
            free_data_blocks: free + pending,
            meta_pages: st.meta_pages(),
            free_meta_pages: free_pages + pending_pages,
            thin_devices: st.devices.len(),
            low_water: *self.low_water.borrow(),
            failed: st.failed.clone(),
        }
    }

    /// Ids of all thin devices and snapshots.
    pub fn thin_ids(&self) -> Vec<u64> {
        self.state().devices.keys().copied().collect()
    }

    /// Thin blocks mapped by device `id` (its share of the pool).
    pub fn mapped_blocks(&self, id: u64) -> BlockResult<u64> {
        self.state().mapped_blocks(id)
    }

    /// Watch the low-water notice: `true` while free space is at or below
    /// the mark (the cluster extends the pool when it turns on).
    pub fn low_water(&self) -> watch::Receiver<bool> {
        self.low_water.subscribe()
    }

    /// Change the low-water mark (in free thin blocks).
    pub fn set_low_water_mark(&self, blocks: u64) {
        self.low_water_blocks.store(blocks, Ordering::Relaxed);
        self.check_low_water();
    }

    fn check_low_water(&self) {
        let free = {
            let st = self.state();
            let (f, p) = st.free_data();
            f + p
        };
        let low = free <= self.low_water_blocks.load(Ordering::Relaxed);
        let was = self.low_water.send_replace(low);
        if low && !was {
            warn!(free, "thin pool free space reached the low-water mark");
        }
    }

    /// Take in growth of the data or metadata device (called by itself
    /// when space runs out; call it after extending the devices).
    pub fn grow(&self) -> bool {
        let data_blocks = self.data.num_blocks() / self.bpb;
        let grew = self.state().grow(data_blocks, meta_pages(&self.meta));
        if grew {
            info!(data_blocks, "thin pool grew");
            self.check_low_water();
        }
        grew
    }

    /// The gate of existing device `id` (made on first use).
    fn gate(&self, id: u64) -> BlockResult<Arc<DevGate>> {
        let size = self
            .state()
            .devices
            .get(&id)
            .map(|d| d.size)
            .ok_or_else(|| BlockError::Offline(format!("thin device {id} does not exist")))?;
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        Ok(gates
            .entry(id)
            .or_insert_with(|| {
                Arc::new(DevGate {
                    id,
                    io: Gate::new(),
                    deleted: AtomicBool::new(false),
                    size: AtomicU64::new(size),
                    cache: MapCache::new(),
                })
            })
            .clone())
    }

    fn forget_gate(&self, id: u64) {
        self.gates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    fn check_writable(&self) -> BlockResult<()> {
        match &self.state().failed {
            Some(why) => Err(BlockError::Offline(format!("thin pool failed: {why}"))),
            None => Ok(()),
        }
    }

    /// Create thin device `id` of `size` device blocks, nothing mapped.
    pub async fn create_thin(self: &Arc<Self>, id: u64, size: u64) -> BlockResult<ThinDevice> {
        self.check_writable()?;
        self.state().create(id, size)?;
        Ok(ThinDevice::new(self.clone(), self.gate(id)?))
    }

    /// Open thin device (or snapshot) `id`.
    pub fn open_thin(self: &Arc<Self>, id: u64) -> BlockResult<ThinDevice> {
        Ok(ThinDevice::new(self.clone(), self.gate(id)?))
    }

    /// Snapshot `origin` (a thin device or a snapshot) as `id`: waits for
    /// the origin's in-flight I/O, then shares all of its blocks.
    pub async fn snapshot(self: &Arc<Self>, origin: u64, id: u64) -> BlockResult<ThinDevice> {
        self.check_writable()?;
        let gate = self.gate(origin)?;
        let _quiet = gate.io.close().await;
        {
            // Every block of the origin is shared from now on.
            let mut st = self.state();
            st.snapshot(origin, id)?;
            gate.cache.clear();
        }
        info!(origin, id, "thin snapshot created");
        Ok(ThinDevice::new(self.clone(), self.gate(id)?))
    }

    /// Delete thin device `id`; open handles to it fail from now on.
    pub async fn delete_thin(&self, id: u64) -> BlockResult<()> {
        self.check_writable()?;
        let gate = self.gate(id)?;
        let _quiet = gate.io.close().await;
        self.state().delete(id)?;
        gate.deleted.store(true, Ordering::SeqCst);
        self.forget_gate(id);
        info!(id, "thin device deleted");
        Ok(())
    }

    /// Grow thin device `id` to `size` device blocks.
    pub async fn resize_thin(&self, id: u64, size: u64) -> BlockResult<()> {
        self.check_writable()?;
        let gate = self.gate(id)?;
        let _quiet = gate.io.close().await;
        self.state().resize(id, size)?;
        gate.size.store(size, Ordering::SeqCst);
        Ok(())
    }

    /// Commit: make every completed write durable and the metadata match.
    pub async fn commit(&self) -> BlockResult<()> {
        let _one = self.commit_lock.lock().await;
        let batch = {
            let mut st = self.state();
            if let Some(why) = &st.failed {
                return Err(BlockError::Offline(format!("thin pool failed: {why}")));
            }
            if st.dirty {
                Some(st.prepare_commit()?)
            } else {
                None
            }
        };
        let Some(batch) = batch else {
            return self.data.flush().await;
        };
        let result = async {
            self.data.flush().await?;
            try_join_all(
                batch
                    .pages
                    .iter()
                    .map(|(p, img)| write_page(&self.meta, self.block_size, *p, img)),
            )
            .await?;
            self.meta.flush().await?;
            write_page(
                &self.meta,
                self.block_size,
                batch.txn % FIRST_PAGE,
                &batch.superblock,
            )
            .await?;
            self.meta.flush().await
        }
        .await;
        let mut st = self.state();
        match result {
            Ok(()) => {
                st.finish_commit(batch);
                drop(st);
                self.check_low_water();
                Ok(())
            }
            Err(e) => {
                // The in-memory state has moved past what is on disk; stop
                // taking writes rather than guess (reopen recovers).
                warn!(error = %e, "thin pool commit failed; pool stops taking writes");
                st.failed = Some(format!("commit failed: {e}"));
                Err(e)
            }
        }
    }

    /// Commit every `interval` while the task runs.
    pub fn start_periodic_commit(self: &Arc<Self>, interval: Duration) -> BackgroundTask {
        let pool = self.clone();
        BackgroundTask::spawn(move |mut stop| async move {
            while !stop.sleep(interval).await {
                pool.commit().await?;
            }
            Ok(())
        })
    }

    /// Look up thin block `vb` of the device behind `gate`, through its
    /// cache.
    #[inline]
    pub(crate) fn lookup(&self, gate: &DevGate, vb: u64) -> Option<Mapping> {
        match gate.cache.get(vb) {
            Some(m) => Some(m),
            None => self.lookup_locked(gate, vb),
        }
    }

    /// The data block of thin block `vb` of the device behind `gate` if it
    /// may be written in place (mapped, and this device's alone).
    #[inline]
    pub(crate) fn exclusive_block(&self, gate: &DevGate, vb: u64) -> Option<u64> {
        let m = match gate.cache.get(vb) {
            Some(m) if m.exclusive => m,
            // Missing, or cached as shared: a sharer may have gone since.
            _ => self.lookup_locked(gate, vb)?,
        };
        m.exclusive.then_some(m.block)
    }

    /// Look the mapping up in the state and cache it.
    #[cold]
    fn lookup_locked(&self, gate: &DevGate, vb: u64) -> Option<Mapping> {
        let st = self.state();
        let m = st.lookup(gate.id, vb)?;
        gate.cache.put(vb, m);
        Some(m)
    }

    /// A free data block; on a full pool, first take in device growth and
    /// blocks freed since the last commit.
    async fn alloc_data(&self) -> BlockResult<u64> {
        for attempt in 0..2 {
            let got = self.state().alloc_data();
            if let Some(b) = got {
                self.check_low_water();
                return Ok(b);
            }
            if attempt == 0 && !self.grow() && self.state().free_data().1 > 0 {
                self.commit().await?;
            }
        }
        self.check_low_water();
        Err(BlockError::NoSpace(format!(
            "thin pool is full ({} blocks of {} bytes in use)",
            self.state().data_blocks(),
            self.bpb * self.block_size as u64
        )))
    }

    /// Point thin block `vb` of the device behind `gate` at `block`; on
    /// full metadata, grow or commit and retry once. Drops the reference to
    /// the block mapped before.
    async fn remap(&self, gate: &DevGate, vb: u64, block: Option<u64>) -> BlockResult<()> {
        self.remap_unless_exclusive(gate, vb, block, None)
            .await
            .map(|_| ())
    }

    /// Map thin block `vb` of the device behind `gate` to `block` (none:
    /// unmap), unless it still maps to `replaces` and that block has become
    /// this device's alone (a sharer went while the caller copied it):
    /// then nothing changes and the result is `false`, since writers may
    /// already have written that block in place. Checked and done under one
    /// state lock.
    async fn remap_unless_exclusive(
        &self,
        gate: &DevGate,
        vb: u64,
        block: Option<u64>,
        replaces: Option<u64>,
    ) -> BlockResult<bool> {
        for attempt in 0..2 {
            let result = {
                let mut st = self.state();
                let now_exclusive = replaces.is_some_and(|old| {
                    st.lookup(gate.id, vb)
                        .is_some_and(|m| m.exclusive && m.block == old)
                });
                if now_exclusive {
                    return Ok(false);
                }
                let result = st
                    .remap(gate.id, vb, block)
                    .map(|old| old.map(|o| st.release_data(o)));
                gate.cache.forget(vb);
                result
            };
            match result {
                Err(BlockError::NoSpace(_)) if attempt == 0 => {
                    if !self.grow() {
                        self.commit().await?;
                    }
                }
                other => return other.map(|_| true),
            }
        }
        Err(BlockError::NoSpace(
            "thin pool metadata device is full".into(),
        ))
    }

    /// Unmap thin block `vb` of the device behind `gate` (discard of a
    /// whole block).
    pub(crate) async fn unmap(&self, gate: &DevGate, vb: u64) -> BlockResult<()> {
        self.remap(gate, vb, None).await
    }

    /// Write `data` (or zeroes when `None`) to `blocks` device blocks at
    /// offset `off` inside thin block `vb` of the device behind `gate`,
    /// provisioning or breaking sharing as needed.
    pub(crate) async fn write_block(
        &self,
        gate: &DevGate,
        vb: u64,
        off: u64,
        blocks: u64,
        data: Option<Bytes>,
    ) -> BlockResult<()> {
        if let Some(block) = self.exclusive_block(gate, vb) {
            return self.put(block * self.bpb + off, blocks, data).await;
        }
        if data.is_none() && self.lookup(gate, vb).is_none() {
            return Ok(());
        }
        // Boxed: the per-I/O future stays small when nothing is provisioned.
        Box::pin(self.provision(gate, vb, off, blocks, data)).await
    }

    /// The slow path of [`ThinPool::write_block`]: a new block, filled from
    /// the shared one or with zeroes around the write, then mapped.
    async fn provision(
        &self,
        gate: &DevGate,
        vb: u64,
        off: u64,
        blocks: u64,
        data: Option<Bytes>,
    ) -> BlockResult<()> {
        let bs = self.block_size as usize;
        self.check_writable()?;
        let key = (gate.id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ vb) % BLOCK_LOCKS;
        let _provisioning = self.block_locks[key as usize].lock().await;
        // From the state itself: a cached "shared" may be out of date.
        let shared = match (self.lookup_locked(gate, vb), &data) {
            (
                Some(Mapping {
                    block,
                    exclusive: true,
                }),
                _,
            ) => return self.put(block * self.bpb + off, blocks, data).await,
            (None, None) => return Ok(()),
            (m, _) => m.map(|m| m.block),
        };
        let new = self.alloc_data().await?;
        let filled = async {
            let base = new * self.bpb;
            if off == 0 && blocks == self.bpb {
                return self.put(base, blocks, data.clone()).await;
            }
            match shared {
                Some(src) => {
                    let mut whole = self
                        .data
                        .read(src * self.bpb, buf::alloc(self.bpb as usize * bs))
                        .await?;
                    let range = off as usize * bs..(off + blocks) as usize * bs;
                    match &data {
                        Some(d) => whole[range].copy_from_slice(d),
                        None => whole[range].fill(0),
                    }
                    self.data.write(base, whole.freeze()).await
                }
                None => {
                    let tail = off + blocks;
                    let (head, rest) = (
                        self.data.write_zeroes(base, off),
                        self.data.write_zeroes(base + tail, self.bpb - tail),
                    );
                    let (a, b, c) =
                        tokio::join!(head, rest, self.put(base + off, blocks, data.clone()));
                    a.and(b).and(c)
                }
            }
        }
        .await;
        if let Err(e) = filled {
            self.state().unalloc_data(new);
            return Err(e);
        }
        match (
            self.remap_unless_exclusive(gate, vb, Some(new), shared)
                .await,
            shared,
        ) {
            // The copy is stale: in-place writes may have reached the
            // shared block since it was read. Write there instead.
            (Ok(false), Some(block)) => {
                self.state().unalloc_data(new);
                self.put(block * self.bpb + off, blocks, data).await
            }
            (Ok(_), _) => Ok(()),
            (Err(e), _) => {
                self.state().unalloc_data(new);
                Err(e)
            }
        }
    }

    async fn put(&self, lba: u64, blocks: u64, data: Option<Bytes>) -> BlockResult<()> {
        match data {
            Some(d) => self.data.as_ref().write(lba, d).await,
            None => self.data.as_ref().write_zeroes(lba, blocks).await,
        }
    }
}

async fn write_page(meta: &DeviceRef, block_size: u32, p: u64, img: &[u8]) -> BlockResult<()> {
    meta.write(p * (PAGE as u64 / block_size as u64), buf::aligned(img))
        .await
}
