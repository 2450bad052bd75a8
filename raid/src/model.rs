//! Reference models for tests: the trivially correct answer a composite
//! must agree with.
//!
//! [`Model`] is a flat byte vector. [`CrashModel`] tracks, per block, every
//! value a read may legally return after a power loss: the value at the
//! last completed flush, plus any value written since.

use std::collections::HashMap;

/// A block device as a plain vector of bytes.
#[derive(Clone, Debug)]
pub struct Model {
    block_size: usize,
    data: Vec<u8>,
}

impl Model {
    /// A zeroed device of `blocks` blocks of `block_size` bytes.
    pub fn new(block_size: usize, blocks: u64) -> Model {
        Model {
            block_size,
            data: vec![0; block_size * blocks as usize],
        }
    }

    /// Bytes of `blocks` blocks at `lba`.
    pub fn read(&self, lba: u64, blocks: u64) -> &[u8] {
        let (a, b) = self.range(lba, blocks);
        &self.data[a..b]
    }

    /// Store `data` at `lba`.
    pub fn write(&mut self, lba: u64, data: &[u8]) {
        let a = lba as usize * self.block_size;
        self.data[a..a + data.len()].copy_from_slice(data);
    }

    /// Zero `blocks` blocks at `lba` (discard and write-zeroes alike).
    pub fn zero(&mut self, lba: u64, blocks: u64) {
        let (a, b) = self.range(lba, blocks);
        self.data[a..b].fill(0);
    }

    fn range(&self, lba: u64, blocks: u64) -> (usize, usize) {
        let a = lba as usize * self.block_size;
        (a, a + blocks as usize * self.block_size)
    }
}

/// What each block may contain after a crash.
#[derive(Clone, Debug)]
pub struct CrashModel {
    block_size: usize,
    durable: Model,
    /// Values written to a block since the last flush (in order).
    since_flush: HashMap<u64, Vec<Vec<u8>>>,
}

impl CrashModel {
    /// A zeroed device.
    pub fn new(block_size: usize, blocks: u64) -> CrashModel {
        CrashModel {
            block_size,
            durable: Model::new(block_size, blocks),
            since_flush: HashMap::new(),
        }
    }

    /// Record a completed write (zeroes are written as zero bytes).
    pub fn write(&mut self, lba: u64, data: &[u8]) {
        for (i, block) in data.chunks(self.block_size).enumerate() {
            self.since_flush
                .entry(lba + i as u64)
                .or_default()
                .push(block.to_vec());
        }
    }

    /// Record a completed flush: the latest values become durable.
    pub fn flush(&mut self) {
        for (lba, values) in self.since_flush.drain() {
            if let Some(last) = values.last() {
                self.durable.write(lba, last);
            }
        }
    }

    /// The value the block must have if no crash happened.
    pub fn latest(&self, lba: u64) -> &[u8] {
        match self.since_flush.get(&lba).and_then(|v| v.last()) {
            Some(v) => v,
            None => self.durable.read(lba, 1),
        }
    }

    /// Whether `data` is a legal content of block `lba` after a crash.
    pub fn allows(&self, lba: u64, data: &[u8]) -> bool {
        self.durable.read(lba, 1) == data
            || self
                .since_flush
                .get(&lba)
                .is_some_and(|vs| vs.iter().any(|v| v == data))
    }

    /// After a crash and a successful check: the device now holds exactly
    /// `data` in block `lba`, and that is durable.
    pub fn settle(&mut self, lba: u64, data: &[u8]) {
        self.since_flush.remove(&lba);
        self.durable.write(lba, data);
    }
}
