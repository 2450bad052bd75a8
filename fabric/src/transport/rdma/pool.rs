//! Pre-registered memory: fixed-size slots carved from one region that is
//! registered once, when the device is first used. Nothing is registered on
//! the I/O path. A transfer larger than a slot takes several slots; a
//! request for more slots than are free waits (the command is queued, not
//! failed).

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::verbs::{Access, MemoryRegion, ProtectionDomain, Sge};

/// A pool of equal slots in one registered region.
pub struct SlotPool {
    region: MemoryRegion,
    slot_size: usize,
    free: Mutex<Vec<u32>>,
    available: Arc<Semaphore>,
    slots: u32,
    /// Whether peers may write the region (a host's pool): then its bytes
    /// are never lent out as shared buffers.
    remote_writable: bool,
}

impl SlotPool {
    /// `count` slots of `slot_size` bytes, registered with `access`.
    pub fn new(
        pd: &Arc<ProtectionDomain>,
        count: u32,
        slot_size: usize,
        access: Access,
    ) -> std::io::Result<Arc<SlotPool>> {
        let region = MemoryRegion::new(pd, count as usize * slot_size, access)?;
        Ok(Arc::new(SlotPool {
            region,
            slot_size,
            free: Mutex::new((0..count).rev().collect()),
            available: Arc::new(Semaphore::new(count as usize)),
            slots: count,
            remote_writable: access.remote_write,
        }))
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Number of slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Slots free right now.
    pub fn free_slots(&self) -> usize {
        self.available.available_permits()
    }

    /// Remote key of the region.
    pub fn rkey(&self) -> u32 {
        self.region.rkey()
    }

    /// The SGE of `len` bytes at the start of slot `i`.
    pub fn sge(&self, i: u32, len: usize) -> Sge {
        Sge {
            addr: self.addr(i),
            len: len.min(self.slot_size) as u32,
            lkey: self.region.lkey(),
        }
    }

    /// Address of slot `i`.
    pub fn addr(&self, i: u32) -> u64 {
        self.region.addr() + i as u64 * self.slot_size as u64
    }

    /// A buffer of `len` bytes (at least one slot), waiting while the pool
    /// is exhausted. `None` when `len` can never fit.
    pub async fn get(self: &Arc<Self>, len: usize) -> Option<PoolBuf> {
        let n = len.div_ceil(self.slot_size).max(1);
        if n > self.slots as usize {
            return None;
        }
        let permit = self
            .available
            .clone()
            .acquire_many_owned(n as u32)
            .await
            .ok()?;
        Some(self.take(n, len, permit))
    }

    fn take(self: &Arc<Self>, n: usize, len: usize, permit: OwnedSemaphorePermit) -> PoolBuf {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let at = free.len() - n;
        let slots = free.split_off(at);
        drop(free);
        PoolBuf {
            pool: self.clone(),
            slots,
            len,
            _permit: permit,
        }
    }

    /// Copy into slot `i` at `off`.
    ///
    /// Sound because a slot belongs to one [`PoolBuf`] at a time and its
    /// owner copies only while no work request uses it.
    fn write_slot(&self, i: u32, off: usize, src: &[u8]) {
        // SAFETY: see above; bounds are checked by `write_at`.
        unsafe { self.region.write_at(i as usize * self.slot_size + off, src) }
    }

    fn read_slot(&self, i: u32, off: usize, dst: &mut [u8]) {
        // SAFETY: as `write_slot`.
        unsafe { self.region.read_at(i as usize * self.slot_size + off, dst) }
    }
}

/// Slots owned by one transfer; returned to the pool when dropped.
///
/// The owner must not drop it while a work request uses its memory: the
/// transports await every posted request (completions arrive even when a
/// queue pair fails, as flushes) before letting go of the buffer.
pub struct PoolBuf {
    pool: Arc<SlotPool>,
    slots: Vec<u32>,
    len: usize,
    _permit: OwnedSemaphorePermit,
}

impl PoolBuf {
    /// Bytes this buffer holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces of the buffer: (offset in the buffer, local SGE).
    pub fn pieces(&self) -> impl Iterator<Item = (usize, Sge)> + '_ {
        let size = self.pool.slot_size;
        self.slots.iter().enumerate().filter_map(move |(k, &slot)| {
            let off = k * size;
            (off < self.len).then(|| (off, self.pool.sge(slot, (self.len - off).min(size))))
        })
    }

    /// Remote address and key of a one-slot buffer, for a keyed SGL.
    pub fn remote(&self) -> (u64, u32) {
        (self.pool.addr(self.slots[0]), self.pool.rkey())
    }

    /// Copy `src` in (at most `len` bytes).
    pub fn copy_in(&mut self, src: &[u8]) {
        let size = self.pool.slot_size;
        for (k, chunk) in src[..src.len().min(self.len)].chunks(size).enumerate() {
            self.pool.write_slot(self.slots[k], 0, chunk);
        }
    }

    /// Copy the first `n` bytes out into a new buffer aligned for direct I/O.
    pub fn copy_out(&self, n: usize) -> Bytes {
        let n = n.min(self.len);
        let mut out: BytesMut = raid::buf::alloc(n);
        let size = self.pool.slot_size;
        for (k, chunk) in out.chunks_mut(size).enumerate() {
            self.pool.read_slot(self.slots[k], 0, chunk);
        }
        out.freeze()
    }

    /// The first `n` bytes as a shared buffer: the slot itself, without a
    /// copy, when they fit in one slot of a region no peer can write (the
    /// slot returns to the pool when the last reference drops); otherwise
    /// a copy.
    pub fn into_bytes(self, n: usize) -> Bytes {
        let len = n.min(self.len);
        if self.slots.len() == 1 && len <= self.pool.slot_size && !self.pool.remote_writable {
            Bytes::from_owner(LentSlot { buf: self, len })
        } else {
            self.copy_out(len)
        }
    }
}

/// A one-slot [`PoolBuf`] lent out as the storage of a [`Bytes`]: no work
/// request uses it any more, and its region has no remote write access.
struct LentSlot {
    buf: PoolBuf,
    len: usize,
}

impl AsRef<[u8]> for LentSlot {
    fn as_ref(&self) -> &[u8] {
        let pool = &self.buf.pool;
        let off = self.buf.slots[0] as usize * pool.slot_size;
        // SAFETY: the slot belongs to this buffer alone until it drops, its
        // owner posts nothing on it once lent (`into_bytes` consumed it) and
        // no peer holds a key that writes the region (`remote_writable`).
        unsafe { pool.region.slice(off, self.len) }
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        free.extend_from_slice(&self.slots);
        // The permit returns with `_permit`, after the slots are back.
    }
}

/// Equal buffers in one region that only the local device uses (no remote
/// access): buffer `i` starts at `i * slot_size`.
struct LocalBuffers {
    region: MemoryRegion,
    slot_size: usize,
    count: u32,
}

impl LocalBuffers {
    fn new(
        pd: &Arc<ProtectionDomain>,
        count: u32,
        slot_size: usize,
    ) -> std::io::Result<LocalBuffers> {
        let access = Access {
            remote_read: false,
            remote_write: false,
        };
        Ok(LocalBuffers {
            region: MemoryRegion::new(pd, count as usize * slot_size, access)?,
            slot_size,
            count,
        })
    }

    /// Offset of buffer `i` in the region, if `i` is a buffer and `len`
    /// bytes fit in it.
    fn offset(&self, i: u32, len: usize) -> Option<usize> {
        (i < self.count && len <= self.slot_size).then(|| i as usize * self.slot_size)
    }

    /// The SGE of the first `len` bytes of buffer `i`.
    fn sge(&self, i: u32, len: usize) -> Sge {
        Sge {
            addr: self.region.addr() + i as u64 * self.slot_size as u64,
            len: len as u32,
            lkey: self.region.lkey(),
        }
    }
}

/// Receive buffers posted once and reposted after each completion: slot `i`
/// is always the receive with work request index `i`.
pub struct RecvBuffers(LocalBuffers);

impl RecvBuffers {
    /// `count` receive buffers of `slot_size` bytes.
    pub fn new(
        pd: &Arc<ProtectionDomain>,
        count: u32,
        slot_size: usize,
    ) -> std::io::Result<RecvBuffers> {
        LocalBuffers::new(pd, count, slot_size).map(RecvBuffers)
    }

    /// The SGE of buffer `i`.
    pub fn sge(&self, i: u32) -> Sge {
        self.0.sge(i, self.0.slot_size)
    }

    /// Copy the `len` bytes received into buffer `i` (`None` if `i` or
    /// `len` is out of range).
    ///
    /// Called after the receive completed and before it is posted again,
    /// so no work request uses the buffer meanwhile.
    pub fn take(&self, i: u32, len: usize) -> Option<Bytes> {
        let off = self.0.offset(i, len)?;
        let mut out = vec![0u8; len];
        // SAFETY: in range (checked); the receive completed and is not
        // reposted until after this copy (see above).
        unsafe { self.0.region.read_at(off, &mut out) };
        Some(Bytes::from(out))
    }
}

/// Send buffers, one per command slot of a queue: slot `i` carries the
/// capsule of the command with ID `i`, so it is free again once that
/// command's send completed.
pub struct SendBuffers(LocalBuffers);

impl SendBuffers {
    /// `count` send buffers of `slot_size` bytes.
    pub fn new(
        pd: &Arc<ProtectionDomain>,
        count: u32,
        slot_size: usize,
    ) -> std::io::Result<SendBuffers> {
        LocalBuffers::new(pd, count, slot_size).map(SendBuffers)
    }

    /// Fill buffer `i` with `parts` (concatenated) and return its SGE;
    /// `None` if it does not fit.
    ///
    /// The caller owns slot `i` (the command ID) and has no send of it in
    /// flight.
    pub fn fill(&self, i: u32, parts: &[&[u8]]) -> Option<Sge> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut off = self.0.offset(i, len)?;
        for p in parts {
            // SAFETY: in range (checked); the slot's previous send completed
            // (the caller's contract above).
            unsafe { self.0.region.write_at(off, p) };
            off += p.len();
        }
        Some(self.0.sge(i, len))
    }
}
