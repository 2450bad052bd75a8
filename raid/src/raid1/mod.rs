//! raid1: an N-way mirror with a write-intent bitmap.
//!
//! * Writes (and discards, write-zeroes) go to every live member and
//!   complete when all of them answered; they succeed if at least one
//!   in-sync member took them. A member that fails an I/O is dropped from
//!   the array at once: the event counter goes up and the surviving members'
//!   superblocks record it *before* the failed request completes, so after
//!   a crash the failed member is still known to be stale. The last
//!   in-sync member is never dropped for an I/O error: as md does with its
//!   last working disk, that request fails and the member stays, so a full
//!   file system or a passing fault costs the requests it hits, not the
//!   data (only a superblock it cannot write takes it out).
//! * A member dropped because its file system was full is kept aside
//!   ("parked") with its device: the background resync task tries to
//!   re-add it after 30 s, then after twice as long each time (at most
//!   10 min), until it is back in sync; a re-add that again finds no
//!   space parks it again. Members that failed otherwise stay out until
//!   someone re-adds or replaces them, as in md.
//! * A write whose caller stops waiting for it (its future dropped: a
//!   host's connection torn down) is finished in the background, holding
//!   its region passes and in-flight marks until every member answered and
//!   the members that failed it are dropped (see `abandoned.rs`).
//! * A write is acknowledged only once every member drop made before it
//!   has been recorded on the superblocks (as md holds writes while a
//!   superblock change is pending): a write that went to fewer members
//!   than the superblocks say are in sync would otherwise be overwritten
//!   by the next open's resync from another member.
//! * Reads go round-robin to in-sync members; a failed read drops that
//!   member and is retried on the next one (into a fresh buffer).
//! * The write-intent bitmap (see `bitmap.rs`) limits resync after a member
//!   returns or after a crash to the regions that may differ.
//! * Resync (see `resync.rs`) copies regions from an in-sync member to the
//!   recovering ones under a per-region lock that writes also take (shared),
//!   so a copy never overwrites newer data. A rebuild records checkpoints in
//!   the superblocks and goes on from the last one after a restart.
//! * Which members are in sync at open is what the freshest superblock's
//!   slot table says (highest event counter), not each member's own count:
//!   a crash in the middle of writing the superblocks may leave an in-sync
//!   member's copy one event behind, while leaving the in-sync state is
//!   always recorded on the other members first.
//! * The steady-state write (one region already dirty, its stripe open, a
//!   two-way mirror) waits for no lock and allocates only its members'
//!   I/O as one owned future; every read runs in the trait method's own
//!   future, with no nested one. The rest takes the general, boxed path.
//!
//! Decisions: a new array is assumed clean (the thin pool above zeroes or
//! copies every block before first use, and fresh extents are zeroed), so
//! creation costs no initial sync; pass `initial_sync` to copy member 0 to
//! the others anyway. After any restart the dirty regions are resynced from
//! one in-sync member (there is no "clean shutdown" flag: leftover bits only
//! cost a bounded copy). The array size is fixed at creation.

mod abandoned;
mod bitmap;
mod resync;
pub mod superblock;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as SyncMutex, OnceLock, RwLock as SyncRwLock, Weak};
use std::task::Poll;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::future::{join_all, BoxFuture, FutureExt, Shared};
use tokio::sync::{Mutex, Notify};
use tracing::{debug, info, warn};

use crate::bits::{BITMAP_BLOCK, BITS_PER_BLOCK};
use crate::buf;
use crate::device::{check_io, check_range, BlockDevice, BlockError, BlockResult, DeviceRef};
use crate::gate::{Gate, Pass};

use abandoned::{MemberResults, MemberWrites, Unsettled};
use bitmap::{InFlight, WriteIntent};
pub use resync::{ResyncProgress, DEFAULT_CHECKPOINT_BYTES, READD_FIRST, READD_MAX};
use superblock::{read_newest, Geometry, Slot, SlotState, Superblock, MAX_MEMBERS, SB_BYTES};

/// Default bitmap region size.
pub const DEFAULT_REGION_BYTES: u64 = 4 << 20;
/// Number of region lock stripes.
const LOCK_STRIPES: u64 = 64;
/// How long [`Raid1::close`] waits for members that left to take the
/// superblock write that tells them so (a hanging member must not hold a
/// shutdown for ever).
pub const DEPARTED_WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How to create an array.
#[derive(Debug, Clone)]
pub struct Raid1Options {
    /// Bytes per bitmap region (power of two).
    pub region_bytes: u64,
    /// Copy member 0 to the others after creation instead of assuming the
    /// members already hold the same data.
    pub initial_sync: bool,
}

impl Default for Raid1Options {
    fn default() -> Self {
        Raid1Options {
            region_bytes: DEFAULT_REGION_BYTES,
            initial_sync: false,
        }
    }
}

/// How to open an existing array ([`Raid1::open_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Raid1OpenOptions {
    /// Recovery when the in-sync members are lost for good: if none of
    /// them is present, assemble a new array (new UUID) from the present
    /// member that left last, whose data is then older than what hosts
    /// were acknowledged (and in the regions its bitmap marks dirty,
    /// possibly older still: writes in flight when it left, or regions not
    /// yet caught up after a re-add); the other present members are
    /// rebuilt from it and the missing slots become empty. Should a lost
    /// member come back, it belongs to the old array and is refused next
    /// to the new one.
    pub assemble_stale: bool,
}

/// Health of one slot, for [`Raid1Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberHealth {
    /// Present and in sync.
    InSync,
    /// Present, receiving writes, waiting for (or in) resync.
    Recovering,
    /// Not present (failed or not found); needs resync when it returns.
    Missing,
    /// No member assigned.
    Empty,
}

/// A snapshot of the array's state.
#[derive(Debug, Clone)]
pub struct Raid1Status {
    /// Array UUID.
    pub array_uuid: [u8; 16],
    /// Event counter.
    pub events: u64,
    /// Health per slot.
    pub members: Vec<MemberHealth>,
    /// Regions marked dirty in the bitmap.
    pub dirty_regions: u64,
    /// Whether any slot is not in sync.
    pub degraded: bool,
}

#[derive(Clone)]
struct Member {
    slot: usize,
    /// Unique per join, so a member that fails and returns is a new one.
    join_id: u64,
    dev: DeviceRef,
    /// `None` when in sync; `Some(full)` while recovering.
    recovering: Option<bool>,
}

/// The members taking I/O, as one snapshot (replaced, never changed).
struct Live {
    members: Vec<Member>,
    /// Indices of the in-sync members (the ones reads may use).
    in_sync: Vec<usize>,
}

impl std::ops::Deref for Live {
    type Target = [Member];
    fn deref(&self) -> &[Member] {
        &self.members
    }
}

struct MetaState {
    events: u64,
    slots: Vec<Slot>,
    /// Per slot: the write sequence of its member's next superblock (which
    /// copy it goes to; see `superblock.rs`).
    sb_seq: Vec<u64>,
}

/// An N-way mirror.
pub struct Raid1 {
    geo: Geometry,
    array_uuid: [u8; 16],
    members: SyncRwLock<Arc<Live>>,
    /// Serialises superblock and bitmap updates.
    meta: Mutex<MetaState>,
    intent: WriteIntent,
    locks: Vec<Gate>,
    degraded: AtomicBool,
    /// Smallest transfer limit of the live members.
    max_transfer: AtomicU64,
    next_read: AtomicUsize,
    next_join: AtomicU64,
    wake_resync: Notify,
    /// Members dropped for lack of space, with their devices, to re-add.
    parked: SyncMutex<Vec<(usize, DeviceRef)>>,
    progress: SyncMutex<ResyncProgress>,
    /// Bytes a rebuild copies between two checkpoints.
    checkpoint_bytes: AtomicU64,
    /// Bitmap clearing passes run so far (bumped under `meta`): a flush may
    /// clear bits only if no pass ran since its member flushes began.
    clearing_passes: AtomicU64,
    /// Superblock writes to members that left, by device (`device_key`),
    /// done or not.
    departed_writes: SyncMutex<Vec<(usize, Shared<BoxFuture<'static, ()>>)>>,
    /// Whether this open assembled a new array from a stale member
    /// ([`Raid1OpenOptions::assemble_stale`] taking effect).
    assembled_stale: bool,
    /// Members dropped from the live set (under `meta`) since the last
    /// superblock commit: writes wait for that commit before they are
    /// acknowledged.
    uncommitted_drops: AtomicU64,
    /// Writes given up by their callers still being finished in the
    /// background (see `abandoned.rs`), and their end.
    background: AtomicU64,
    background_done: Notify,
    /// This array, for the tasks that finish writes given up.
    me: OnceLock<Weak<Raid1>>,
}

/// A device's identity while this process holds it.
fn device_key(dev: &DeviceRef) -> usize {
    Arc::as_ptr(dev) as *const () as usize
}

/// Held region locks, with their stripes (no allocation for the common
/// single-region case).
enum RegionGuards<'a> {
    One(usize, Pass<'a>),
    Many(Vec<(usize, Pass<'a>)>),
}

impl RegionGuards<'_> {
    /// Keep the passes without this guard (see [`Pass::detach`]); returns
    /// the stripes to leave.
    fn detach(self) -> Vec<usize> {
        match self {
            RegionGuards::One(s, pass) => {
                pass.detach();
                vec![s]
            }
            RegionGuards::Many(passes) => passes
                .into_iter()
                .map(|(s, pass)| {
                    pass.detach();
                    s
                })
                .collect(),
        }
    }
}

enum Op {
    Write(Bytes),
    Zeroes(u64),
    Discard(u64),
}

/// The future of one member I/O, as the trait returns it.
type MemberIo<'a, T = ()> = Pin<Box<dyn Future<Output = BlockResult<T>> + Send + 'a>>;

impl Op {
    /// Start the operation on `dev`. Through the trait object, not the
    /// `Arc` forwarding impl, which would box one more future.
    fn start<'a>(&self, dev: &'a DeviceRef, lba: u64) -> MemberIo<'a> {
        let dev = dev.as_ref();
        match self {
            Op::Write(d) => dev.write(lba, d.clone()),
            Op::Zeroes(n) => dev.write_zeroes(lba, *n),
            Op::Discard(n) => dev.discard(lba, *n),
        }
    }
}

/// Run two member I/Os concurrently and return both results (a lighter
/// `join` for the two boxed futures of a two-way mirror).
fn join2<'a, T: 'a>(
    mut a: MemberIo<'a, T>,
    mut b: MemberIo<'a, T>,
) -> impl Future<Output = (BlockResult<T>, BlockResult<T>)> + 'a {
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(move |cx| {
        if ra.is_none() {
            if let Poll::Ready(r) = a.as_mut().poll(cx) {
                ra = Some(r);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(r) = b.as_mut().poll(cx) {
                rb = Some(r);
            }
        }
        match (ra.take(), rb.take()) {
            (Some(x), Some(y)) => Poll::Ready((x, y)),
            (x, y) => {
                (ra, rb) = (x, y);
                Poll::Pending
            }
        }
    })
}

/// The members (by slot) whose result is an error, with the error.
fn failures(live: &[Member], results: Vec<BlockResult<()>>) -> Vec<(usize, BlockError)> {
    live.iter()
        .zip(results)
        .filter_map(|(m, r)| r.err().map(|e| (m.slot, e)))
        .collect()
}

/// Make the present member that left last (the highest event count among
/// the stale ones, the lowest slot of equals) the only in-sync member of a
/// new array, the other present members replacements to rebuild from it,
/// and every slot without a present member empty. Returns the new array's
/// UUID and the chosen slot. A replacement that was being rebuilt in full
/// holds only part of the data and is never chosen.
fn assemble_stale(
    members: &mut [Member],
    events_by_slot: &[(usize, u64)],
    slots: &mut [Slot],
) -> BlockResult<([u8; 16], usize)> {
    let chosen = events_by_slot
        .iter()
        .filter(|(slot, _)| slots.get(*slot).map(|s| s.state) == Some(SlotState::Stale))
        .max_by_key(|(slot, events)| (*events, std::cmp::Reverse(*slot)))
        .map(|(slot, _)| *slot)
        .ok_or_else(|| {
            BlockError::Offline(
                "raid1: no member that left the array is present to assemble from (a \
                 replacement that was being rebuilt holds only part of the data)"
                    .into(),
            )
        })?;
    for m in members.iter_mut() {
        m.recovering = (m.slot != chosen).then_some(true);
    }
    for (i, slot) in slots.iter_mut().enumerate() {
        slot.resync_from = 0;
        if !members.iter().any(|m| m.slot == i) {
            *slot = Slot {
                uuid: [0; 16],
                state: SlotState::Empty,
                resync_from: 0,
            };
        }
    }
    Ok((new_uuid(), chosen))
}

fn new_uuid() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

impl Raid1 {
    /// Flush and leave the write-intent bitmap clean, after the last write
    /// (a shutdown): two flush passes, since a region is cleared by the
    /// first pass that finds it untouched since the previous one. The next
    /// open then resyncs nothing. Then wait, up to
    /// [`DEPARTED_WRITE_WAIT`], for the superblock writes that tell members
    /// which left that they did ([`Raid1::tell_departed`]): a process that
    /// exits right after a member left would otherwise leave it believing
    /// itself in sync.
    pub async fn close(&self) -> BlockResult<()> {
        if tokio::time::timeout(DEPARTED_WRITE_WAIT, self.background_writes_done())
            .await
            .is_err()
        {
            warn!(
                "raid1 close: writes given up by their callers did not finish within {:?}",
                DEPARTED_WRITE_WAIT
            );
        }
        // A failing flush is what makes a member leave: wait for it to be
        // told either way.
        let flushed = match self.flush().await {
            Ok(()) => self.flush().await,
            Err(e) => Err(e),
        };
        let told = self.departed_writes_done(None);
        if tokio::time::timeout(DEPARTED_WRITE_WAIT, told)
            .await
            .is_err()
        {
            warn!(
                "raid1 close: a member that left did not take its superblock write within {:?}; \
                 alone, it may still assemble with the data it had when it left",
                DEPARTED_WRITE_WAIT
            );
        }
        flushed
    }

    /// The clearing pass of a flush whose member flushes began when
    /// `passes` clearing passes had run. A region untouched since the last
    /// pass had its writes done before that pass, so they are durable only
    /// if this flush's member flushes began after it: when another flush
    /// ran a pass in between (flushes overlap), this one clears nothing.
    async fn clear_quiet_regions(&self, meta: &mut MetaState, passes: u64) -> BlockResult<()> {
        if self.degraded.load(Ordering::SeqCst)
            || self.clearing_passes.load(Ordering::SeqCst) != passes
        {
            return Ok(());
        }
        // Counted once the scan is done: a flush that reads the new count
        // starts its member flushes after every write this scan took as
        // flushed had completed (counted before, a flush starting during
        // the scan could clear a region whose last write it never covered).
        let blocks = self.intent.clear_quiet();
        self.clearing_passes.fetch_add(1, Ordering::SeqCst);
        if !blocks.is_empty() {
            self.write_bitmap(meta, &blocks, &[], false).await?;
        }
        Ok(())
    }

    /// Whether `dev` holds a raid1 member superblock (of any array).
    pub async fn is_member(dev: &DeviceRef) -> bool {
        read_newest(dev).await.is_ok()
    }

    /// Create a new array over `devs` (slot `i` = `devs[i]`), writing fresh
    /// superblocks and an empty bitmap to each.
    pub async fn create(devs: Vec<DeviceRef>, opts: &Raid1Options) -> BlockResult<Arc<Raid1>> {
        let first = devs
            .first()
            .ok_or_else(|| BlockError::Unsupported("raid1 needs at least one member".into()))?;
        if devs.len() > MAX_MEMBERS {
            return Err(BlockError::Unsupported(format!(
                "at most {MAX_MEMBERS} members"
            )));
        }
        let bs = first.block_size();
        if devs.iter().any(|d| d.block_size() != bs) {
            return Err(BlockError::Unsupported(
                "raid1 members differ in block size".into(),
            ));
        }
        let smallest = devs.iter().map(|d| d.num_blocks()).min().unwrap_or(0);
        let geo = Geometry::plan(bs, smallest, opts.region_bytes)?;
        let mut slots = Vec::new();
        let mut members = Vec::new();
        for (i, dev) in devs.into_iter().enumerate() {
            let sync_later = opts.initial_sync && i > 0;
            slots.push(Slot {
                uuid: new_uuid(),
                state: if sync_later {
                    SlotState::Rebuilding
                } else {
                    SlotState::InSync
                },
                resync_from: 0,
            });
            members.push(Member {
                slot: i,
                join_id: i as u64,
                dev,
                recovering: sync_later.then_some(true),
            });
        }
        let meta = MetaState {
            events: 1,
            sb_seq: vec![0; slots.len()],
            slots,
        };
        let raid = Raid1::assemble(geo, new_uuid(), members, meta);
        {
            let mut meta = raid.meta.lock().await;
            for m in raid.live().iter() {
                raid.clear_superblocks(&m.dev).await?;
            }
            raid.write_whole_bitmap(&raid.live()).await?;
            raid.commit_meta(&mut meta).await?;
        }
        info!(uuid = %uuid::Uuid::from_bytes(raid.array_uuid), blocks = geo.data_blocks, "raid1 created");
        Ok(raid.into_arc())
    }

    /// Open an existing array from the member devices found (any order,
    /// missing ones left out). Stale members are recognised by their event
    /// counter and put into recovery; devices of the array whose superblock
    /// does not match its slot table (members replaced since) are ignored
    /// with a warning; devices of different arrays are an error.
    pub async fn open(devs: Vec<DeviceRef>) -> BlockResult<Arc<Raid1>> {
        Raid1::open_with(devs, Raid1OpenOptions::default()).await
    }

    /// [`Raid1::open`] with options.
    pub async fn open_with(
        devs: Vec<DeviceRef>,
        opts: Raid1OpenOptions,
    ) -> BlockResult<Arc<Raid1>> {
        let mut found = Vec::new();
        for dev in devs {
            match read_newest(&dev).await {
                Ok(sb) => found.push((sb, dev)),
                Err(e) => warn!(error = %e, "raid1 open: device has no usable superblock; ignored"),
            }
        }
        // Devices of two arrays given as one: which is meant cannot be told
        // (the freshest superblock could be the other array's), so nothing
        // is assembled.
        let mut arrays = found.iter().map(|(sb, _)| sb.array_uuid);
        if let Some(first) = arrays.next() {
            if let Some(other) = arrays.find(|u| *u != first) {
                return Err(BlockError::Unsupported(format!(
                    "raid1 open: the devices belong to different arrays ({} and {}); list the members of one",
                    uuid::Uuid::from_bytes(first),
                    uuid::Uuid::from_bytes(other)
                )));
            }
        }
        let fresh = found
            .iter()
            .map(|(sb, _)| sb)
            .max_by_key(|sb| sb.events)
            .cloned()
            .ok_or_else(|| {
                BlockError::Unsupported("raid1 open needs at least one member".into())
            })?;
        let mut members: Vec<Member> = Vec::new();
        let mut member_events: Vec<u64> = Vec::new();
        let mut sb_seq = vec![0; fresh.slots.len()];
        for (sb, dev) in found {
            let slot = sb.member_index as usize;
            let owner = fresh.slots.get(slot);
            if sb.array_uuid != fresh.array_uuid || owner.map(|s| s.uuid) != Some(sb.member_uuid) {
                warn!(
                    slot,
                    "device is not (or no longer) a member of this raid1; ignored"
                );
                continue;
            }
            let g = &fresh.geometry;
            if dev.num_blocks() < g.data_offset.saturating_add(g.data_blocks) {
                warn!(slot, "member is smaller than the array; ignored");
                continue;
            }
            if sb.geometry != fresh.geometry || dev.block_size() != fresh.geometry.block_size {
                return Err(BlockError::Medium(format!(
                    "raid1 member {slot}: geometry differs from the array's"
                )));
            }
            if let Some(i) = members.iter().position(|m| m.slot == slot) {
                if member_events[i] >= sb.events {
                    continue;
                }
                members.remove(i);
                member_events.remove(i);
            }
            // The freshest slot table decides, not the member's own event
            // count: a member leaves the in-sync state only by an event
            // recorded on the others first, while a crash in the middle of
            // a commit may leave an in-sync member's superblock behind.
            let state = owner.map(|s| s.state).unwrap_or(SlotState::Empty);
            let recovering = match state {
                SlotState::InSync => None,
                SlotState::Rebuilding => Some(true),
                _ => Some(false),
            };
            members.push(Member {
                slot,
                join_id: slot as u64,
                dev,
                recovering,
            });
            member_events.push(sb.events);
            sb_seq[slot] = sb.seq + 1;
        }
        // Each present member's own event count, by slot.
        let events_by_slot: Vec<(usize, u64)> =
            members.iter().map(|m| m.slot).zip(member_events).collect();
        members.sort_by_key(|m| m.slot);
        let in_sync_missing: Vec<usize> = (0..fresh.slots.len())
            .filter(|&slot| fresh.slots[slot].state == SlotState::InSync)
            .filter(|&slot| !members.iter().any(|m| m.slot == slot))
            .collect();
        let mut array_uuid = fresh.array_uuid;
        let mut slots = fresh.slots;
        let mut forced = None;
        if opts.assemble_stale && members.iter().all(|m| m.recovering.is_some()) {
            let (uuid, slot) = assemble_stale(&mut members, &events_by_slot, &mut slots)?;
            array_uuid = uuid;
            forced = Some(slot);
        }
        let geo = fresh.geometry;
        let mut raid = Raid1::assemble(
            geo,
            array_uuid,
            Vec::new(),
            MetaState {
                events: fresh.events,
                slots,
                sb_seq,
            },
        );
        // Union of the in-sync members' bitmaps; a damaged block counts as dirty.
        for m in members.iter().filter(|m| m.recovering.is_none()) {
            for blk in 0..geo.bitmap_blocks() {
                let data = m
                    .dev
                    .read(geo.bitmap_lba(blk), buf::alloc(BITMAP_BLOCK))
                    .await?;
                if !raid.intent.dirty.merge_block(blk, &data) {
                    warn!(
                        slot = m.slot,
                        block = blk,
                        "raid1 bitmap block damaged; treating its regions as dirty"
                    );
                    raid.intent.dirty.fill_block(blk);
                }
            }
        }
        if let Some(slot) = forced {
            raid.assembled_stale = true;
            warn!(
                slot,
                new_uuid = %uuid::Uuid::from_bytes(array_uuid),
                dirty_regions = raid.intent.dirty.count(),
                "raid1 assembled from a member that left the array: writes acknowledged \
                 after it left are not on it, and the regions its bitmap marks dirty (in \
                 flight when it left, or not yet caught up after a re-add) may be older \
                 still; the missing members now belong to the old array"
            );
        }
        let mut in_sync = members.iter_mut().filter(|m| m.recovering.is_none());
        if in_sync.next().is_none() {
            return Err(BlockError::Offline(format!(
                "raid1: no in-sync member found: the members given left the array or \
                 were being rebuilt; its data is on the missing member(s) of slot(s) \
                 {in_sync_missing:?}"
            )));
        }
        if raid.intent.dirty.count() > 0 {
            // After a crash the in-sync members may differ in dirty regions:
            // the lowest slot is the source, the others resync from it.
            for m in in_sync {
                m.recovering = Some(false);
            }
        }
        {
            let mut meta = raid.meta.lock().await;
            for (i, slot) in meta.slots.iter_mut().enumerate() {
                let live = members.iter().find(|m| m.slot == i);
                slot.state = match (live.map(|m| m.recovering), slot.state) {
                    (_, SlotState::Empty) => SlotState::Empty,
                    (Some(None), _) => SlotState::InSync,
                    (_, SlotState::Rebuilding) | (Some(Some(true)), _) => SlotState::Rebuilding,
                    _ => SlotState::Stale,
                };
                if slot.state != SlotState::Rebuilding {
                    slot.resync_from = 0;
                }
            }
            for (i, m) in members.iter_mut().enumerate() {
                m.join_id = i as u64;
            }
            raid.next_join.store(members.len() as u64, Ordering::SeqCst);
            raid.set_members(members);
            raid.write_whole_bitmap(&raid.live()).await?;
            meta.events += 1;
            raid.commit_meta(&mut meta).await?;
        }
        let st = raid.status().await;
        info!(uuid = %uuid::Uuid::from_bytes(raid.array_uuid), members = ?st.members, dirty = st.dirty_regions, "raid1 opened");
        Ok(raid.into_arc())
    }

    /// The array shared, knowing itself (for the tasks of `abandoned.rs`).
    fn into_arc(self) -> Arc<Raid1> {
        let raid = Arc::new(self);
        let _ = raid.me.set(Arc::downgrade(&raid));
        raid
    }

    /// Waits until no write given up by its caller is still being finished.
    async fn background_writes_done(&self) {
        loop {
            let done = self.background_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.background.load(Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    }

    /// Waits until every member drop made so far is on the superblocks,
    /// committing them itself if the commit that should have did not run
    /// to its end (its caller gave up).
    async fn drops_committed(&self) -> BlockResult<()> {
        if self.uncommitted_drops.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        let mut meta = self.meta.lock().await;
        if self.uncommitted_drops.load(Ordering::SeqCst) != 0 {
            self.commit_meta(&mut meta).await?;
        }
        Ok(())
    }

    fn assemble(
        geo: Geometry,
        array_uuid: [u8; 16],
        members: Vec<Member>,
        meta: MetaState,
    ) -> Raid1 {
        let raid = Raid1 {
            geo,
            array_uuid,
            members: SyncRwLock::new(Arc::new(Live {
                members: Vec::new(),
                in_sync: Vec::new(),
            })),
            meta: Mutex::new(meta),
            intent: WriteIntent::new(geo.regions()),
            locks: (0..LOCK_STRIPES).map(|_| Gate::new()).collect(),
            degraded: AtomicBool::new(false),
            max_transfer: AtomicU64::new(u64::MAX),
            next_read: AtomicUsize::new(0),
            next_join: AtomicU64::new(members.len() as u64),
            wake_resync: Notify::new(),
            parked: SyncMutex::new(Vec::new()),
            progress: SyncMutex::new(ResyncProgress::default()),
            checkpoint_bytes: AtomicU64::new(DEFAULT_CHECKPOINT_BYTES),
            clearing_passes: AtomicU64::new(0),
            departed_writes: SyncMutex::new(Vec::new()),
            assembled_stale: false,
            uncommitted_drops: AtomicU64::new(0),
            background: AtomicU64::new(0),
            background_done: Notify::new(),
            me: OnceLock::new(),
        };
        raid.set_members(members);
        raid
    }

    /// Member block where array data starts.
    pub fn data_offset(&self) -> u64 {
        self.geo.data_offset
    }

    /// Blocks per bitmap region.
    pub fn region_blocks(&self) -> u64 {
        self.geo.region_blocks()
    }

    /// Whether this open assembled a new array from a member that had
    /// left (`--assemble-stale` took effect).
    pub fn assembled_stale(&self) -> bool {
        self.assembled_stale
    }

    /// The slot of `dev` while it is a live member.
    pub fn slot_of(&self, dev: &DeviceRef) -> Option<usize> {
        let key = device_key(dev);
        self.live()
            .iter()
            .find(|m| device_key(&m.dev) == key)
            .map(|m| m.slot)
    }

    /// The array's state.
    pub async fn status(&self) -> Raid1Status {
        let meta = self.meta.lock().await;
        let live = self.live();
        Raid1Status {
            array_uuid: self.array_uuid,
            events: meta.events,
            members: meta
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| match live.iter().find(|m| m.slot == i) {
                    Some(m) if m.recovering.is_none() => MemberHealth::InSync,
                    Some(_) => MemberHealth::Recovering,
                    None if s.state == SlotState::Empty => MemberHealth::Empty,
                    None => MemberHealth::Missing,
                })
                .collect(),
            dirty_regions: self.intent.dirty.count(),
            degraded: self.degraded.load(Ordering::SeqCst),
        }
    }

    /// Take member `slot` out of the array (as if it had failed); refused
    /// for the last in-sync member.
    pub async fn fail_member(&self, slot: usize) -> BlockResult<()> {
        let mut meta = self.meta.lock().await;
        if self.no_in_sync_left(&[slot]) {
            return Err(BlockError::Unsupported(format!(
                "slot {slot} is the last in-sync member"
            )));
        }
        let dev = self.live_device(slot);
        self.drop_member(&mut meta, slot, "failed by request");
        self.commit_meta(&mut meta).await?;
        self.tell_departed(&meta, dev.into_iter().map(|d| (slot, d)).collect());
        Ok(())
    }

    /// Bring back a member that left (same disk, recognised by its
    /// superblock): it resyncs only the regions dirty in the bitmap.
    pub async fn readd_member(&self, dev: DeviceRef) -> BlockResult<()> {
        self.departed_writes_done(Some(&dev)).await;
        let sb = read_newest(&dev).await?;
        let mut meta = self.meta.lock().await;
        let slot = sb.member_index as usize;
        let owner = meta.slots.get(slot).copied();
        if sb.array_uuid != self.array_uuid
            || owner.map(|s| s.uuid) != Some(sb.member_uuid)
            || sb.geometry != self.geo
            || dev.num_blocks() < self.geo.data_offset + self.geo.data_blocks
        {
            return Err(BlockError::Unsupported(format!(
                "device is not the member of slot {slot}; use replace_member"
            )));
        }
        // A rebuild it had begun goes on from its checkpoint: what it
        // missed while away is dirty in the bitmap.
        let full = owner.filter(|s| s.state == SlotState::Rebuilding);
        let from = full.map(|s| s.resync_from);
        let (uuid, seq) = (sb.member_uuid, sb.seq + 1);
        self.join(&mut meta, slot, dev, uuid, from, Some(seq)).await
    }

    /// Put a new disk into `slot` (empty or missing): it is rebuilt in full.
    pub async fn replace_member(&self, slot: usize, dev: DeviceRef) -> BlockResult<()> {
        self.departed_writes_done(Some(&dev)).await;
        if dev.block_size() != self.geo.block_size
            || dev.num_blocks() < self.geo.data_offset + self.geo.data_blocks
        {
            return Err(BlockError::Unsupported(
                "replacement is too small or has another block size".into(),
            ));
        }
        let mut meta = self.meta.lock().await;
        if slot >= meta.slots.len() {
            return Err(BlockError::Unsupported(format!("no slot {slot}")));
        }
        self.join(&mut meta, slot, dev, new_uuid(), Some(0), None)
            .await
    }

    /// Add `dev` as the member of `slot`: rebuilt in full from region
    /// `rebuild_from` on (`Some`), or resynced where dirty (`None`). A
    /// returning member's superblocks go on from write sequence `sb_seq`;
    /// a new disk's (`None`) are cleared first.
    async fn join(
        &self,
        meta: &mut MetaState,
        slot: usize,
        dev: DeviceRef,
        uuid: [u8; 16],
        rebuild_from: Option<u64>,
        sb_seq: Option<u64>,
    ) -> BlockResult<()> {
        let full = rebuild_from.is_some();
        if self.live().iter().any(|m| m.slot == slot) {
            return Err(BlockError::Unsupported(format!(
                "slot {slot} is in use; fail it first"
            )));
        }
        if sb_seq.is_none() {
            self.clear_superblocks(&dev).await?;
        }
        meta.sb_seq[slot] = sb_seq.unwrap_or(0);
        let member = Member {
            slot,
            join_id: self.next_join.fetch_add(1, Ordering::SeqCst),
            dev,
            recovering: Some(full),
        };
        self.write_whole_bitmap(std::slice::from_ref(&member))
            .await?;
        meta.slots[slot] = Slot {
            uuid,
            state: if full {
                SlotState::Rebuilding
            } else {
                SlotState::Stale
            },
            resync_from: rebuild_from.unwrap_or(0),
        };
        meta.events += 1;
        let mut members = self.live().to_vec();
        members.push(member);
        members.sort_by_key(|m| m.slot);
        self.set_members(members);
        self.commit_meta(meta).await?;
        info!(slot, full, "raid1 member joined; resync pending");
        self.wake_resync.notify_one();
        Ok(())
    }

    fn live(&self) -> Arc<Live> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_members(&self, members: Vec<Member>) {
        let degraded = members.iter().any(|m| m.recovering.is_some());
        let max = members.iter().map(|m| m.dev.max_transfer_bytes()).min();
        self.max_transfer
            .store(max.unwrap_or(u64::MAX), Ordering::SeqCst);
        let in_sync = (0..members.len())
            .filter(|&i| members[i].recovering.is_none())
            .collect();
        *self.members.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Live { members, in_sync });
        self.degraded.fetch_or(degraded, Ordering::SeqCst);
    }

    fn update_degraded(&self, meta: &MetaState) {
        let degraded = self.live().iter().any(|m| m.recovering.is_some())
            || meta
                .slots
                .iter()
                .any(|s| s.state != SlotState::InSync && s.state != SlotState::Empty);
        self.degraded.store(degraded, Ordering::SeqCst);
    }

    /// Remove `slot` from the live set (no I/O; call `commit_meta` after);
    /// false if it was not there.
    fn drop_member(&self, meta: &mut MetaState, slot: usize, why: &str) -> bool {
        let live = self.live();
        if !live.iter().any(|m| m.slot == slot) {
            return false;
        }
        warn!(slot, why, "raid1 member dropped; array degraded");
        // Counted before the smaller set is seen: a write to it must find
        // the drop pending (`drops_committed`).
        self.uncommitted_drops.fetch_add(1, Ordering::SeqCst);
        self.set_members(live.iter().filter(|m| m.slot != slot).cloned().collect());
        if let Some(s) = meta.slots.get_mut(slot) {
            if s.state == SlotState::InSync {
                s.state = SlotState::Stale;
            }
        }
        meta.events += 1;
        self.degraded.store(true, Ordering::SeqCst);
        true
    }

    /// Keep a member that left for lack of space, to re-add it later.
    fn park(&self, slot: usize, dev: DeviceRef) {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        if !parked.iter().any(|(s, _)| *s == slot) {
            info!(
                slot,
                "raid1 member out of space; it is re-added once space returns"
            );
            parked.push((slot, dev));
        }
        // The resync task schedules the re-add.
        self.wake_resync.notify_one();
    }

    /// Whether a member waits to be re-added once its space returns.
    pub fn has_parked(&self) -> bool {
        !self
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Re-add the members that left for lack of space (they resync what
    /// they missed); returns how many rejoined. One that still finds no
    /// space stays parked; one that cannot rejoin for another reason (its
    /// slot was re-added or replaced meanwhile) is let go.
    pub async fn readd_parked(&self) -> usize {
        let parked = std::mem::take(&mut *self.parked.lock().unwrap_or_else(|e| e.into_inner()));
        let mut rejoined = 0;
        for (slot, dev) in parked {
            match self.readd_member(dev.clone()).await {
                Ok(()) => rejoined += 1,
                Err(e @ BlockError::NoSpace(_)) => {
                    debug!(slot, error = %e, "raid1 member still out of space");
                    self.park(slot, dev);
                }
                Err(e) => warn!(slot, error = %e, "raid1 member not re-added"),
            }
        }
        rejoined
    }

    /// Whether the `failed` slots include every live in-sync member.
    fn no_in_sync_left(&self, failed: &[usize]) -> bool {
        let live = self.live();
        live.in_sync
            .iter()
            .filter_map(|&i| live.members.get(i))
            .all(|m| failed.contains(&m.slot))
    }

    /// Drop the members that failed an I/O (`what`, with each one's error)
    /// and record it on the others. If every in-sync member failed, one of
    /// them stays in the array and its error is returned: the request
    /// fails, the array keeps its data. The one kept is the first that
    /// only ran out of space, else the first in-sync one: a full file
    /// system leaves a device that still reads and overwrites.
    async fn drop_failed_members(
        &self,
        meta: &mut MetaState,
        failed: Vec<(usize, BlockError)>,
        what: &str,
    ) -> BlockResult<()> {
        if failed.is_empty() {
            return Ok(());
        }
        let slots: Vec<usize> = failed.iter().map(|(slot, _)| *slot).collect();
        let keep = if self.no_in_sync_left(&slots) {
            let live = self.live();
            let in_sync = |slot: usize| {
                live.iter()
                    .any(|m| m.slot == slot && m.recovering.is_none())
            };
            failed
                .iter()
                .filter(|(slot, _)| in_sync(*slot))
                .min_by_key(|(_, e)| !matches!(e, BlockError::NoSpace(_)))
                .map(|(slot, _)| *slot)
        } else {
            None
        };
        let (mut kept_error, mut departed) = (None, Vec::new());
        for (slot, e) in failed {
            if Some(slot) == keep {
                debug!(slot, error = %e, "{what} on the last in-sync member; it stays");
                kept_error = Some(e);
                continue;
            }
            let dev = self.live_device(slot);
            if self.drop_member(meta, slot, &format!("{what}: {e}")) {
                if let Some(dev) = dev {
                    if matches!(e, BlockError::NoSpace(_)) {
                        self.park(slot, dev.clone());
                    }
                    departed.push((slot, dev));
                }
            }
        }
        if !departed.is_empty() {
            self.commit_meta(meta).await?;
            self.tell_departed(meta, departed);
        }
        kept_error.map_or(Ok(()), Err)
    }

    /// The device of live member `slot`.
    fn live_device(&self, slot: usize) -> Option<DeviceRef> {
        self.live()
            .iter()
            .find(|m| m.slot == slot)
            .map(|m| m.dev.clone())
    }

    /// Tell members that have just left the array (after the others have
    /// committed it) that they are stale: each is written the array's new
    /// superblock, where its own slot is no longer in sync. Many failures
    /// (a bad sector, a full file system, a request) leave the superblock
    /// writable. Then, if such a member comes back alone at the next start
    /// (the others' disks missing), it refuses to serve the array instead
    /// of serving the data it had when it left (as md would). Best effort,
    /// in the background (a member that hangs must not hold the metadata
    /// lock): one that cannot be written is where it would have been
    /// anyway. A rejoin of the device waits for its write first
    /// ([`Raid1::departed_writes_done`]), so that the write cannot land
    /// over a newer copy.
    fn tell_departed(&self, meta: &MetaState, departed: Vec<(usize, DeviceRef)>) {
        let mut pending = self
            .departed_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.retain(|(_, write)| write.peek().is_none());
        for (slot, dev) in departed {
            let sb = self.superblock(meta, slot);
            let lba = self.geo.superblock_lba(sb.seq);
            let key = device_key(&dev);
            let task = tokio::spawn(async move {
                let written = async {
                    dev.write(lba, buf::aligned(&sb.encode())).await?;
                    dev.flush().await
                };
                match written.await {
                    Ok(()) => debug!(
                        slot,
                        "raid1 member that left marked stale on its own superblock"
                    ),
                    Err(e) => {
                        debug!(slot, error = %e, "raid1 member that left cannot be marked stale")
                    }
                }
            });
            let done: BoxFuture<'static, ()> = Box::pin(async move {
                let _ = task.await;
            });
            pending.push((key, done.shared()));
        }
    }

    /// Waits until the superblock writes to members that left (see
    /// [`Raid1::tell_departed`]) have ended: those to `dev`, or all.
    async fn departed_writes_done(&self, dev: Option<&DeviceRef>) {
        let key = dev.map(device_key);
        let writes: Vec<_> = self
            .departed_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(k, _)| key.is_none_or(|key| *k == key))
            .map(|(_, write)| write.clone())
            .collect();
        join_all(writes).await;
    }

    /// The superblock of member `slot` as of `meta`.
    fn superblock(&self, meta: &MetaState, slot: usize) -> Superblock {
        Superblock {
            array_uuid: self.array_uuid,
            member_uuid: meta.slots[slot].uuid,
            member_index: slot as u32,
            events: meta.events,
            geometry: self.geo,
            slots: meta.slots.clone(),
            seq: meta.sb_seq[slot],
        }
    }

    /// Write every live member's superblock and flush; members that fail
    /// are dropped and the rest written again.
    async fn commit_meta(&self, meta: &mut MetaState) -> BlockResult<()> {
        loop {
            let live = self.live();
            if !live.iter().any(|m| m.recovering.is_none()) {
                return Err(BlockError::Offline("raid1: no in-sync member left".into()));
            }
            let writes = live.iter().map(|m| {
                let sb = self.superblock(meta, m.slot);
                let lba = self.geo.superblock_lba(sb.seq);
                async move {
                    m.dev.write(lba, buf::aligned(&sb.encode())).await?;
                    m.dev.flush().await
                }
            });
            let results = join_all(writes).await;
            // A written copy stays; the next write goes to the other one.
            for (m, r) in live.iter().zip(&results) {
                if r.is_ok() {
                    meta.sb_seq[m.slot] += 1;
                }
            }
            let failed: Vec<usize> = live
                .iter()
                .zip(results)
                .filter(|(_, r)| r.is_err())
                .map(|(m, _)| m.slot)
                .collect();
            if failed.is_empty() {
                // Every drop so far was made under `meta`, which the
                // caller holds: this commit recorded all of them.
                self.uncommitted_drops.store(0, Ordering::SeqCst);
                self.update_degraded(meta);
                return Ok(());
            }
            for slot in failed {
                self.drop_member(meta, slot, "superblock write failed");
            }
        }
    }

    /// Zero both superblock copies of a disk that becomes a member, so
    /// that none it held before (of another array, or of an earlier member
    /// of this one) can outlive its first commit.
    async fn clear_superblocks(&self, dev: &DeviceRef) -> BlockResult<()> {
        let copies = self.geo.superblock_copies as u64;
        let blocks = copies * SB_BYTES as u64 / self.geo.block_size as u64;
        dev.write_zeroes(0, blocks).await
    }

    /// Write all bitmap blocks to `members` (used when a member joins).
    async fn write_whole_bitmap(&self, members: &[Member]) -> BlockResult<()> {
        for m in members {
            for blk in 0..self.geo.bitmap_blocks() {
                let img = self.intent.dirty.encode_block(blk, &[]);
                m.dev
                    .write(self.geo.bitmap_lba(blk), buf::aligned(&img))
                    .await?;
            }
            m.dev.flush().await?;
        }
        Ok(())
    }

    /// Write bitmap `blocks` (with `extra` bits on) to every live member;
    /// flush if `durable`. Members that fail are dropped.
    async fn write_bitmap(
        &self,
        meta: &mut MetaState,
        blocks: &[u64],
        extra: &[u64],
        durable: bool,
    ) -> BlockResult<()> {
        let live = self.live();
        let images: Vec<(u64, Vec<u8>)> = blocks
            .iter()
            .map(|&b| (b, self.intent.dirty.encode_block(b, extra)))
            .collect();
        let writes = live.iter().map(|m| {
            let images = &images;
            async move {
                for (blk, img) in images {
                    m.dev
                        .write(self.geo.bitmap_lba(*blk), buf::aligned(img))
                        .await?;
                }
                if durable {
                    m.dev.flush().await?;
                }
                Ok::<(), BlockError>(())
            }
        });
        let results = join_all(writes).await;
        self.drop_failed_members(meta, failures(&live, results), "bitmap write failed")
            .await
    }

    /// Make the bits of regions `first..=last` dirty on disk, then in memory.
    async fn mark_dirty(&self, first: u64, last: u64) -> BlockResult<()> {
        let mut meta = self.meta.lock().await;
        let clean = self.intent.clean_in(first, last);
        if clean.is_empty() {
            return Ok(());
        }
        let mut blocks: Vec<u64> = clean.iter().map(|r| r / BITS_PER_BLOCK).collect();
        blocks.dedup();
        self.write_bitmap(&mut meta, &blocks, &clean, true).await?;
        for r in clean {
            self.intent.dirty.set(r, true);
        }
        Ok(())
    }

    /// Shared locks on the stripes of regions `first..=last`, in order.
    async fn lock_regions(&self, first: u64, last: u64) -> RegionGuards<'_> {
        if first == last {
            let s = (first % LOCK_STRIPES) as usize;
            return RegionGuards::One(s, self.locks[s].enter().await);
        }
        let mut stripes: Vec<u64> = if last - first + 1 >= LOCK_STRIPES {
            (0..LOCK_STRIPES).collect()
        } else {
            (first..=last).map(|r| r % LOCK_STRIPES).collect()
        };
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            let s = s as usize;
            guards.push((s, self.locks[s].enter().await));
        }
        RegionGuards::Many(guards)
    }

    /// Admit a write of regions `first..=last` without waiting, if it is
    /// the steady state: one region, already dirty, its stripe open.
    fn admit_now(&self, first: u64, last: u64) -> Option<(InFlight<'_>, RegionGuards<'_>)> {
        if first != last {
            return None;
        }
        let inflight = self.intent.begin(first, last);
        if !self.intent.all_dirty(first, last) {
            return None;
        }
        let s = (first % LOCK_STRIPES) as usize;
        let pass = self.locks[s].try_enter()?;
        Some((inflight, RegionGuards::One(s, pass)))
    }

    /// Any write, waiting as needed: bits made durable, regions locked.
    async fn write_op(&self, lba: u64, blocks: u64, op: Op) -> BlockResult<()> {
        if blocks == 0 {
            return Ok(());
        }
        let (first, last) = (
            self.geo.region_of(lba),
            self.geo.region_of(lba + blocks - 1),
        );
        let inflight = self.intent.begin(first, last);
        if !self.intent.all_dirty(first, last) {
            self.mark_dirty(first, last).await?;
        }
        let locks = self.lock_regions(first, last).await;
        let live = self.live();
        let at = lba + self.geo.data_offset;
        let members = live.clone();
        let io: MemberWrites = Box::pin(async move {
            MemberResults::Many(join_all(members.iter().map(|m| op.start(&m.dev, at))).await)
        });
        Unsettled::new(self, live, (first, last), io, inflight, locks)
            .run()
            .await
    }

    /// An in-sync member, round-robin.
    fn pick_in_sync<'a>(&self, live: &'a Live) -> BlockResult<&'a Member> {
        let k = match live.in_sync.len() {
            0 | 1 => 0,
            n => {
                let turn = self.next_read.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    turn & (n - 1)
                } else {
                    turn % n
                }
            }
        };
        live.in_sync
            .get(k)
            .and_then(|&i| live.members.get(i))
            .ok_or_else(|| BlockError::Offline("raid1: no in-sync member".into()))
    }

    /// Read member blocks at `member_lba` from an in-sync member, dropping
    /// members that fail.
    async fn read_in_sync(&self, member_lba: u64, buf: BytesMut) -> BlockResult<BytesMut> {
        let len = buf.len();
        let live = self.live();
        let m = self.pick_in_sync(&live)?;
        match m.dev.as_ref().read(member_lba, buf).await {
            Ok(b) => Ok(b),
            Err(e) => Box::pin(self.read_again(member_lba, len, m.slot, e)).await,
        }
    }

    /// After member `slot` failed a read with `e`: drop it and read from
    /// the others (into fresh buffers) until one answers; the last in-sync
    /// member's error is the read's.
    async fn read_again(
        &self,
        member_lba: u64,
        len: usize,
        mut slot: usize,
        mut e: BlockError,
    ) -> BlockResult<BytesMut> {
        loop {
            let mut meta = self.meta.lock().await;
            self.drop_failed_members(&mut meta, vec![(slot, e)], "read failed")
                .await?;
            drop(meta);
            let live = self.live();
            let m = self.pick_in_sync(&live)?;
            match m.dev.as_ref().read(member_lba, buf::alloc(len)).await {
                Ok(b) => return Ok(b),
                Err(err) => (slot, e) = (m.slot, err),
            }
        }
    }
}

#[async_trait]
impl BlockDevice for Raid1 {
    fn block_size(&self) -> u32 {
        self.geo.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.geo.data_blocks
    }

    fn max_transfer_bytes(&self) -> u64 {
        self.max_transfer.load(Ordering::Relaxed)
    }

    async fn read(&self, lba: u64, buf: BytesMut) -> BlockResult<BytesMut> {
        let len = buf.len();
        check_io(self, lba, len)?;
        // `read_in_sync` written out: a nested future would cost about a
        // tenth of the whole read (see benches/instructions.rs).
        let at = lba + self.geo.data_offset;
        let live = self.live();
        let m = self.pick_in_sync(&live)?;
        match m.dev.as_ref().read(at, buf).await {
            Ok(b) => Ok(b),
            Err(e) => Box::pin(self.read_again(at, len, m.slot, e)).await,
        }
    }

    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        let blocks = check_io(self, lba, data.len())?;
        // The steady state of a two-way mirror is admitted here without
        // waiting; everything else goes the general (boxed) way.
        let region = self.geo.region_of(lba);
        if let Some((inflight, locks)) = (blocks > 0)
            .then(|| self.admit_now(region, self.geo.region_of(lba + blocks - 1)))
            .flatten()
        {
            let live = self.live();
            if live.len() == 2 {
                let at = lba + self.geo.data_offset;
                let members = live.clone();
                let io: MemberWrites = Box::pin(async move {
                    let (a, b) = (&members[0], &members[1]);
                    let (ra, rb) = join2(
                        a.dev.as_ref().write(at, data.clone()),
                        b.dev.as_ref().write(at, data),
                    )
                    .await;
                    MemberResults::Two([ra, rb])
                });
                let write = Unsettled::new(self, live, (region, region), io, inflight, locks);
                return write.run().await;
            }
            // Not a two-way mirror: let go before the general path waits.
            drop((inflight, locks));
        }
        Box::pin(self.write_op(lba, blocks, Op::Write(data))).await
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)?;
        self.write_op(lba, blocks, Op::Zeroes(blocks)).await
    }

    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self, lba, blocks)?;
        self.write_op(lba, blocks, Op::Discard(blocks)).await
    }

    /// Flush every live member; then, if nothing is degraded, clear the
    /// bits of regions that have been quiet since the previous flush.
    async fn flush(&self) -> BlockResult<()> {
        let passes = self.clearing_passes.load(Ordering::SeqCst);
        let live = self.live();
        let results = join_all(live.iter().map(|m| m.dev.flush())).await;
        let mut meta = self.meta.lock().await;
        self.drop_failed_members(&mut meta, failures(&live, results), "flush failed")
            .await?;
        self.clear_quiet_regions(&mut meta, passes).await
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_races;
