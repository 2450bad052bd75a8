//! The pool's metadata in memory: mapping trees, reference counts, free
//! space, and the copy-on-write rules that keep the last commit intact.
//!
//! Every reachable page is cached (8 bytes per mapped thin block: about
//! 8 MiB of RAM per TiB provisioned at 1 MiB blocks). Reference counts of
//! pages and data blocks are not stored on disk: open walks every tree and
//! counts. That keeps a commit down to the changed pages plus the device
//! table, and there is no space map that could disagree with the trees.
//!
//! Copy-on-write rules:
//! * a page may be changed in place only if it was allocated in the current
//!   transaction ("fresh") and has one reference; otherwise it is
//!   shadowed: copied to a new page, and if it was shared its children gain
//!   a reference (the copy now points at them too);
//! * pages and data blocks freed in a transaction are only reusable after
//!   the commit that stops referring to them is durable (they wait in the
//!   pending lists), because the previous commit may still point at them;
//! * a data block is written in place only if it and every page on its path
//!   have one reference, and none of them lost a sharer since the last
//!   durable commit; otherwise the write provisions a new block. (Without
//!   the second part, a block that became exclusive by a copy-on-write
//!   break would be overwritten in place while the last commit still shares
//!   it, and a crash would show the write through the other device.)

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet as StdHashSet};
use std::hash::{BuildHasherDefault, Hasher};

use super::metadata::{
    corrupt, decode_devs, decode_map, encode_devs, encode_map, span, DevEntry, MapPage, Superblock,
    DEVS_PER_PAGE, FANOUT, FIRST_PAGE, MAX_LEVELS, PAGE,
};
use crate::buf;
use crate::device::{BlockError, BlockResult, DeviceRef};

/// Hashes page and block numbers (already well spread, never chosen by an
/// attacker: they come from our own allocator or a checksummed page) with
/// one multiplication instead of SipHash: this is on every I/O's path.
#[derive(Default)]
pub(crate) struct NumberHasher(u64);

impl Hasher for NumberHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<NumberHasher>>;
type HashSet<K> = StdHashSet<K, BuildHasherDefault<NumberHasher>>;

/// A thin device's tree.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DevInfo {
    pub root: u64,
    pub levels: u8,
    pub size: u64,
}

/// Where a thin block lives and whether it may be written in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub block: u64,
    pub exclusive: bool,
}

/// Everything a commit writes, taken from the state in one go.
pub(crate) struct CommitBatch {
    pub pages: Vec<(u64, Vec<u8>)>,
    pub superblock: Vec<u8>,
    pub txn: u64,
    release_pages: Vec<u64>,
    release_data: Vec<u64>,
}

pub(crate) struct State {
    pub block_size: u32,
    pub block_bytes: u64,
    pages: HashMap<u64, MapPage>,
    page_refs: Vec<u32>,
    fresh: HashSet<u64>,
    free_pages: Vec<u64>,
    pending_pages: Vec<u64>,
    table_pages: Vec<u64>,
    data_refs: Vec<u32>,
    free_data: Vec<u64>,
    pending_data: Vec<u64>,
    /// Data blocks and pages that lost a sharer, with the transaction that
    /// did it; they count as shared until that transaction is durable.
    unshared_data: HashMap<u64, u64>,
    unshared_pages: HashMap<u64, u64>,
    pub devices: BTreeMap<u64, DevInfo>,
    /// Last durable transaction.
    pub txn: u64,
    /// Transaction being built.
    building: u64,
    pub dirty: bool,
    pub failed: Option<String>,
}

fn no_meta_space() -> BlockError {
    BlockError::NoSpace("thin pool metadata device is full".into())
}

impl State {
    /// An empty pool.
    pub fn new(block_size: u32, block_bytes: u64, data_blocks: u64, meta_pages: u64) -> State {
        let mut st = State {
            block_size,
            block_bytes,
            pages: HashMap::default(),
            page_refs: vec![0; meta_pages as usize],
            fresh: HashSet::default(),
            free_pages: Vec::new(),
            pending_pages: Vec::new(),
            table_pages: Vec::new(),
            data_refs: vec![0; data_blocks as usize],
            free_data: Vec::new(),
            pending_data: Vec::new(),
            unshared_data: HashMap::default(),
            unshared_pages: HashMap::default(),
            devices: BTreeMap::new(),
            txn: 0,
            building: 1,
            dirty: true,
            failed: None,
        };
        st.rebuild_free_lists();
        st
    }

    fn rebuild_free_lists(&mut self) {
        self.free_pages = (FIRST_PAGE..self.page_refs.len() as u64)
            .rev()
            .filter(|&p| self.page_refs[p as usize] == 0)
            .collect();
        self.free_data = (0..self.data_refs.len() as u64)
            .rev()
            .filter(|&b| self.data_refs[b as usize] == 0)
            .collect();
    }

    pub fn data_blocks(&self) -> u64 {
        self.data_refs.len() as u64
    }

    pub fn meta_pages(&self) -> u64 {
        self.page_refs.len() as u64
    }

    /// Free data blocks now, and freed ones waiting for a commit.
    pub fn free_data(&self) -> (u64, u64) {
        (self.free_data.len() as u64, self.pending_data.len() as u64)
    }

    /// Free metadata pages now, and freed ones waiting for a commit.
    pub fn free_pages(&self) -> (u64, u64) {
        (
            self.free_pages.len() as u64,
            self.pending_pages.len() as u64,
        )
    }

    /// Take in grown devices; returns whether anything grew.
    pub fn grow(&mut self, data_blocks: u64, meta_pages: u64) -> bool {
        let mut grew = false;
        if data_blocks > self.data_blocks() {
            let old = self.data_blocks();
            self.data_refs.resize(data_blocks as usize, 0);
            self.free_data.extend((old..data_blocks).rev());
            grew = true;
        }
        if meta_pages > self.meta_pages() {
            let old = self.meta_pages().max(FIRST_PAGE);
            self.page_refs.resize(meta_pages as usize, 0);
            self.free_pages.extend((old..meta_pages).rev());
            grew = true;
        }
        self.dirty |= grew;
        grew
    }

    fn dev(&self, id: u64) -> BlockResult<DevInfo> {
        self.devices
            .get(&id)
            .copied()
            .ok_or_else(|| BlockError::Offline(format!("thin device {id} does not exist")))
    }

    /// The mapping of thin block `vb` of device `id`.
    pub fn lookup(&self, id: u64, vb: u64) -> Option<Mapping> {
        let dev = self.devices.get(&id)?;
        let mut page = dev.root;
        let mut exclusive = true;
        for level in (0..dev.levels).rev() {
            let node = self.pages.get(&page)?;
            exclusive &= self.page_refs.get(page as usize) == Some(&1)
                && !self.unshared_pages.contains_key(&page);
            let entry = *node.entries.get(((vb / span(level)) % FANOUT) as usize)?;
            if entry == 0 {
                return None;
            }
            if level == 0 {
                let block = entry - 1;
                exclusive &= self.data_refs.get(block as usize) == Some(&1)
                    && !self.unshared_data.contains_key(&block);
                return Some(Mapping { block, exclusive });
            }
            page = entry;
        }
        None
    }

    fn alloc_page(&mut self, page: MapPage) -> BlockResult<u64> {
        let p = self.free_pages.pop().ok_or_else(no_meta_space)?;
        self.page_refs[p as usize] = 1;
        self.fresh.insert(p);
        self.pages.insert(p, page);
        Ok(p)
    }

    /// A page number holding `p`'s content that may be changed in place.
    fn shadow(&mut self, p: u64) -> BlockResult<u64> {
        let refs = self.page_refs[p as usize];
        if refs == 1 && self.fresh.contains(&p) {
            return Ok(p);
        }
        let copy = self
            .pages
            .get(&p)
            .cloned()
            .ok_or_else(|| corrupt(format!("page {p} missing from cache")))?;
        if refs > 1 {
            for &e in copy.entries.iter().filter(|&&e| e != 0) {
                if copy.level == 0 {
                    self.data_refs[(e - 1) as usize] += 1;
                } else {
                    self.page_refs[e as usize] += 1;
                }
            }
        }
        let new = self.alloc_page(copy)?;
        if self.unshared_pages.contains_key(&p) {
            self.unshared_pages.insert(new, self.building);
        }
        if refs > 1 {
            self.page_refs[p as usize] -= 1;
        } else {
            self.page_refs[p as usize] = 0;
            self.pages.remove(&p);
            self.pending_pages.push(p);
        }
        Ok(new)
    }

    /// Point thin block `vb` of `id` at `block` (or unmap it); returns the
    /// data block it pointed to before, whose reference the caller drops
    /// with [`State::release_data`].
    pub fn remap(&mut self, id: u64, vb: u64, block: Option<u64>) -> BlockResult<Option<u64>> {
        let mut dev = self.dev(id)?;
        if block.is_none() && self.lookup(id, vb).is_none() {
            return Ok(None);
        }
        self.dirty = true;
        let root = if dev.root == 0 {
            self.alloc_page(MapPage::empty(dev.levels - 1))?
        } else {
            self.shadow(dev.root)?
        };
        dev.root = root;
        self.devices.insert(id, dev);
        let mut page = root;
        for level in (1..dev.levels).rev() {
            let idx = ((vb / span(level)) % FANOUT) as usize;
            let child = self.pages.get(&page).map_or(0, |n| n.entries[idx]);
            let child = if child == 0 {
                self.alloc_page(MapPage::empty(level - 1))?
            } else {
                self.shadow(child)?
            };
            if let Some(node) = self.pages.get_mut(&page) {
                node.entries[idx] = child;
            }
            page = child;
        }
        let idx = (vb % FANOUT) as usize;
        let node = self
            .pages
            .get_mut(&page)
            .ok_or_else(|| corrupt("leaf vanished"))?;
        let old = std::mem::replace(&mut node.entries[idx], block.map_or(0, |b| b + 1));
        Ok(old.checked_sub(1))
    }

    /// Take a free data block (reference count 1), if any.
    pub fn alloc_data(&mut self) -> Option<u64> {
        let b = self.free_data.pop()?;
        self.data_refs[b as usize] = 1;
        Some(b)
    }

    /// Give back a block from [`State::alloc_data`] that was never mapped.
    pub fn unalloc_data(&mut self, b: u64) {
        self.data_refs[b as usize] = 0;
        self.free_data.push(b);
    }

    /// Drop one reference to data block `b`.
    pub fn release_data(&mut self, b: u64) {
        if let Some(r) = self.data_refs.get_mut(b as usize) {
            *r = r.saturating_sub(1);
            if *r == 0 {
                self.pending_data.push(b);
            } else {
                self.unshared_data.insert(b, self.building);
            }
        }
    }

    /// Drop one reference to page `p`, freeing what only it referred to.
    fn release_page(&mut self, p: u64) {
        let mut stack = vec![p];
        while let Some(p) = stack.pop() {
            let Some(r) = self.page_refs.get_mut(p as usize).filter(|r| **r > 0) else {
                continue;
            };
            *r -= 1;
            if *r > 0 {
                self.unshared_pages.insert(p, self.building);
                continue;
            }
            let Some(node) = self.pages.remove(&p) else {
                continue;
            };
            for &e in node.entries.iter().filter(|&&e| e != 0) {
                if node.level == 0 {
                    self.release_data(e - 1);
                } else {
                    stack.push(e);
                }
            }
            if self.fresh.remove(&p) {
                self.free_pages.push(p);
            } else {
                self.pending_pages.push(p);
            }
        }
    }

    /// Add a thin device with nothing mapped.
    pub fn create(&mut self, id: u64, size: u64) -> BlockResult<()> {
        if self.devices.contains_key(&id) {
            return Err(BlockError::Unsupported(format!(
                "thin device {id} already exists"
            )));
        }
        let levels = super::metadata::levels_for(size.div_ceil(self.blocks_per_block()));
        self.devices.insert(
            id,
            DevInfo {
                root: 0,
                levels,
                size,
            },
        );
        self.dirty = true;
        Ok(())
    }

    /// Add `id` sharing every block of `origin`.
    pub fn snapshot(&mut self, origin: u64, id: u64) -> BlockResult<DevInfo> {
        let dev = self.dev(origin)?;
        if self.devices.contains_key(&id) {
            return Err(BlockError::Unsupported(format!(
                "thin device {id} already exists"
            )));
        }
        if dev.root != 0 {
            self.page_refs[dev.root as usize] += 1;
        }
        self.devices.insert(id, dev);
        self.dirty = true;
        Ok(dev)
    }

    /// Remove a thin device, releasing what only it used.
    pub fn delete(&mut self, id: u64) -> BlockResult<()> {
        let dev = self.dev(id)?;
        self.devices.remove(&id);
        if dev.root != 0 {
            self.release_page(dev.root);
        }
        self.dirty = true;
        Ok(())
    }

    /// Grow a thin device to `size` device blocks, deepening its tree if
    /// needed (the old root becomes the first child of a new one).
    pub fn resize(&mut self, id: u64, size: u64) -> BlockResult<()> {
        let mut dev = self.dev(id)?;
        if size < dev.size {
            return Err(BlockError::Unsupported("thin devices cannot shrink".into()));
        }
        let want = super::metadata::levels_for(size.div_ceil(self.blocks_per_block()));
        if span(want) < size.div_ceil(self.blocks_per_block()) {
            return Err(BlockError::Unsupported("thin device too large".into()));
        }
        while dev.levels < want {
            if dev.root != 0 {
                let mut top = MapPage::empty(dev.levels);
                top.entries[0] = dev.root;
                dev.root = self.alloc_page(top)?;
            }
            dev.levels += 1;
        }
        dev.size = size;
        self.devices.insert(id, dev);
        self.dirty = true;
        Ok(())
    }

    /// Thin blocks mapped by device `id`.
    pub fn mapped_blocks(&self, id: u64) -> BlockResult<u64> {
        let dev = self.dev(id)?;
        let mut count = 0;
        let mut stack = vec![dev.root];
        while let Some(p) = stack.pop() {
            let Some(node) = self.pages.get(&p) else {
                continue;
            };
            for &e in node.entries.iter().filter(|&&e| e != 0) {
                if node.level == 0 {
                    count += 1;
                } else {
                    stack.push(e);
                }
            }
        }
        Ok(count)
    }

    pub fn blocks_per_block(&self) -> u64 {
        self.block_bytes / self.block_size as u64
    }

    /// Take everything the next commit writes; the state goes on with a new
    /// transaction at once.
    pub fn prepare_commit(&mut self) -> BlockResult<CommitBatch> {
        let devs: Vec<DevEntry> = self
            .devices
            .iter()
            .map(|(&id, d)| DevEntry {
                id,
                root: d.root,
                size: d.size,
                levels: d.levels,
            })
            .collect();
        let chunks: Vec<&[DevEntry]> = devs.chunks(DEVS_PER_PAGE).collect();
        let mut table = Vec::with_capacity(chunks.len());
        for _ in &chunks {
            let p = self.free_pages.pop().ok_or_else(no_meta_space)?;
            self.page_refs[p as usize] = 1;
            table.push(p);
        }
        let mut pages: Vec<(u64, Vec<u8>)> = self
            .fresh
            .iter()
            .filter_map(|p| self.pages.get(p).map(|node| (*p, encode_map(*p, node))))
            .collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let next = table.get(i + 1).copied().unwrap_or(0);
            pages.push((table[i], encode_devs(table[i], chunk, next)));
        }
        let txn = self.building;
        self.building += 1;
        let superblock = Superblock {
            block_size: self.block_size,
            txn,
            block_bytes: self.block_bytes,
            data_blocks: self.data_blocks(),
            meta_pages: self.meta_pages(),
            devtable: table.first().copied().unwrap_or(0),
            devices: devs.len() as u64,
        }
        .encode();
        let mut release_pages = std::mem::take(&mut self.pending_pages);
        release_pages.extend(std::mem::replace(&mut self.table_pages, table));
        self.fresh.clear();
        self.dirty = false;
        Ok(CommitBatch {
            pages,
            superblock,
            txn,
            release_pages,
            release_data: std::mem::take(&mut self.pending_data),
        })
    }

    /// The batch is durable: its transaction is current and what it freed
    /// can be reused.
    pub fn finish_commit(&mut self, batch: CommitBatch) {
        self.txn = batch.txn;
        self.unshared_data.retain(|_, t| *t > batch.txn);
        self.unshared_pages.retain(|_, t| *t > batch.txn);
        for p in batch.release_pages {
            self.page_refs[p as usize] = 0;
            self.free_pages.push(p);
        }
        self.free_data.extend(batch.release_data);
    }

    /// Rebuild the state of the commit `sb` describes, reading and checking
    /// every reachable page. `data_blocks`/`meta_pages` are the current
    /// device sizes (at least those recorded).
    pub async fn load(
        meta: &DeviceRef,
        sb: &Superblock,
        data_blocks: u64,
        meta_pages: u64,
    ) -> BlockResult<State> {
        if data_blocks < sb.data_blocks || meta_pages < sb.meta_pages {
            return Err(corrupt(
                "a pool device is smaller than the metadata records",
            ));
        }
        let mut st = State::new(sb.block_size, sb.block_bytes, sb.data_blocks, sb.meta_pages);
        st.txn = sb.txn;
        st.building = sb
            .txn
            .checked_add(1)
            .ok_or_else(|| corrupt("transaction id at its end"))?;
        st.dirty = false;
        let mut next = sb.devtable;
        let mut entries = Vec::new();
        while next != 0 {
            if !st.claim_page(next)? {
                return Err(corrupt(format!("device table loops back to page {next}")));
            }
            st.table_pages.push(next);
            let (devs, after) = decode_devs(next, &read_page(meta, sb.block_size, next).await?)?;
            entries.extend(devs);
            next = after;
        }
        if entries.len() as u64 != sb.devices {
            return Err(corrupt(format!(
                "device table holds {} devices, superblock says {}",
                entries.len(),
                sb.devices
            )));
        }
        for d in entries {
            let bpb = sb.block_bytes / sb.block_size as u64;
            if d.levels == 0 || d.levels > MAX_LEVELS || span(d.levels) < d.size.div_ceil(bpb) {
                return Err(corrupt(format!(
                    "thin device {}: bad tree depth {}",
                    d.id, d.levels
                )));
            }
            if st
                .devices
                .insert(
                    d.id,
                    DevInfo {
                        root: d.root,
                        levels: d.levels,
                        size: d.size,
                    },
                )
                .is_some()
            {
                return Err(corrupt(format!("thin device {} listed twice", d.id)));
            }
            if d.root != 0 {
                st.walk(meta, d.root, d.levels - 1).await?;
            }
        }
        let grew = st.grow(data_blocks, meta_pages);
        st.rebuild_free_lists();
        st.dirty = grew;
        Ok(st)
    }

    /// Count a reference to page `p` (first sight: returns true).
    fn claim_page(&mut self, p: u64) -> BlockResult<bool> {
        let r = self
            .page_refs
            .get_mut(p as usize)
            .filter(|_| p >= FIRST_PAGE)
            .ok_or_else(|| corrupt(format!("page number {p} out of range")))?;
        *r += 1;
        Ok(*r == 1)
    }

    async fn walk(&mut self, meta: &DeviceRef, root: u64, level: u8) -> BlockResult<()> {
        let mut stack = vec![(root, level)];
        while let Some((p, level)) = stack.pop() {
            if !self.claim_page(p)? {
                if self.pages.get(&p).map(|n| n.level) != Some(level) {
                    return Err(corrupt(format!("page {p} is shared at different levels")));
                }
                continue;
            }
            if self.table_pages.contains(&p) {
                return Err(corrupt(format!("page {p} is both a map and a table page")));
            }
            let node = decode_map(p, &read_page(meta, self.block_size, p).await?)?;
            if node.level != level {
                return Err(corrupt(format!(
                    "page {p} has level {} where {level} expected",
                    node.level
                )));
            }
            for &e in node.entries.iter().filter(|&&e| e != 0) {
                if level == 0 {
                    let r = self.data_refs.get_mut((e - 1) as usize).ok_or_else(|| {
                        corrupt(format!(
                            "page {p} maps data block {} beyond the pool",
                            e - 1
                        ))
                    })?;
                    *r += 1;
                } else {
                    stack.push((e, level - 1));
                }
            }
            self.pages.insert(p, node);
        }
        Ok(())
    }
}

/// Read metadata page `p`.
pub(crate) async fn read_page(
    meta: &DeviceRef,
    block_size: u32,
    p: u64,
) -> BlockResult<bytes::BytesMut> {
    let per = PAGE as u64 / block_size as u64;
    meta.read(p * per, buf::alloc(PAGE)).await
}
