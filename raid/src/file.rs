//! A regular file or a block device, accessed with O_DIRECT through io_uring.
//!
//! O_DIRECT is required: a filesystem that refuses it (tmpfs before Linux
//! 6.6, for one) gives a clear error instead of a silent fallback to the
//! page cache, because a storage node that acknowledges writes from its
//! page cache loses them on a crash. Buffers that are not aligned to the block size are copied into an
//! aligned bounce buffer first.
//!
//! A device holding our own metadata (a raid1 member, a thin pool's disks)
//! has one opener: it is opened exclusively ([`FileOptions::shared`]
//! false, the default), with an exclusive `flock` and, for a block
//! device, `O_EXCL`, which the kernel refuses while it is mounted or held
//! by md, dm or another exclusive opener. A second daemon started on the
//! same disks (or one disk named twice) then fails before it reads or
//! writes a byte, instead of both writing superblocks under each other.
//! A plain exported disk may be shared (several targets exporting one
//! shared device to a multipathing host): a shared `flock`, which still
//! keeps an exclusive opener out.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::buf;
use crate::device::{check_io, check_range, BlockDevice, BlockError, BlockResult};
use crate::uring::Ring;

/// How to open a [`FileDevice`].
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// For a regular file: create it if missing and extend it to this size;
    /// a file already larger is refused (it is never shrunk, and serving
    /// it at a size other than the one asked for would surprise).
    /// Without a size the file must exist and its current size is used.
    /// Ignored for a block device.
    pub size: Option<u64>,
    /// Logical block size exported (default 4096). Must be at least the
    /// underlying device's logical block size.
    pub block_size: u32,
    /// io_uring submission slots.
    pub queue_depth: u32,
    /// Whether other processes may open the device at the same time (all
    /// of them shared), rather than this one alone.
    pub shared: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            size: None,
            block_size: 4096,
            queue_depth: 256,
            shared: false,
        }
    }
}

/// A file or block device used with O_DIRECT.
pub struct FileDevice {
    path: PathBuf,
    file: Arc<File>,
    ring: Ring,
    block_size: u32,
    num_blocks: u64,
    is_block_device: bool,
}

/// An I/O error on `path`, named. A file system out of space (or the
/// user's quota) is [`BlockError::NoSpace`]: the device is not broken, and
/// an NVMe host gets Capacity Exceeded (ENOSPC to its application).
fn err(path: &Path, what: &str, e: io::Error) -> BlockError {
    let message = format!("{}: {what}: {e}", path.display());
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => BlockError::NoSpace(message),
        _ => BlockError::Io(io::Error::new(e.kind(), message)),
    }
}

/// Takes the lock that marks `file` as served, exclusive or `shared`
/// (held until it is closed).
fn lock(path: &Path, file: &File, shared: bool) -> BlockResult<()> {
    use rustix::fs::{flock, FlockOperation};
    let operation = if shared {
        FlockOperation::NonBlockingLockShared
    } else {
        FlockOperation::NonBlockingLockExclusive
    };
    flock(file, operation).map_err(|e| {
        let e = io::Error::from(e);
        if e.kind() == io::ErrorKind::WouldBlock {
            let why = if shared {
                "in use: another process (another fabricd?) or this one has it open \
                 as its own (a raid1 member)"
            } else {
                "in use: another process (another fabricd?) or this one has it open; \
                 a disk that holds a raid1 member's metadata is served once"
            };
            err(
                path,
                "cannot open",
                io::Error::new(io::ErrorKind::ResourceBusy, why),
            )
        } else {
            err(path, "lock", e)
        }
    })
}

impl FileDevice {
    /// Open `path` for direct I/O, locked against a second opener. Must be
    /// called inside a tokio runtime.
    pub fn open(path: impl AsRef<Path>, opts: &FileOptions) -> BlockResult<FileDevice> {
        let path = path.as_ref();
        let bs = opts.block_size;
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return Err(BlockError::Unsupported(format!(
                "block size {bs} must be a power of two from 512 to 64K"
            )));
        }
        let (exists, is_block_device) = match std::fs::metadata(path) {
            Ok(m) if !m.is_file() && !m.file_type().is_block_device() => {
                return Err(BlockError::Unsupported(format!(
                    "{}: not a regular file or a block device",
                    path.display()
                )))
            }
            Ok(m) => (true, m.file_type().is_block_device()),
            Err(_) => (false, false),
        };
        if opts.size.is_some_and(|s| s > i64::MAX as u64) {
            return Err(BlockError::Unsupported(format!(
                "{}: size larger than a file can be",
                path.display()
            )));
        }
        if !exists && opts.size.is_none() {
            return Err(err(
                path,
                "cannot open",
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such file (give a size to create it)",
                ),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(opts.size.is_some() && !is_block_device)
            .truncate(false)
            .custom_flags(if is_block_device && !opts.shared {
                libc::O_DIRECT | libc::O_EXCL
            } else {
                libc::O_DIRECT
            })
            .open(path)
            .map_err(|e| {
                let why = match e.raw_os_error() {
                    Some(libc::EBUSY) if is_block_device => Some((
                        io::ErrorKind::ResourceBusy,
                        "the block device is in use (mounted, part of md or dm, or opened by \
                         another fabricd)",
                    )),
                    Some(libc::EINVAL) => Some((
                        io::ErrorKind::Unsupported,
                        "the filesystem does not support O_DIRECT (tmpfs before Linux 6.6?); \
                         use a block device or a disk-backed filesystem",
                    )),
                    _ => None,
                };
                match why {
                    Some((kind, why)) => err(path, "cannot open", io::Error::new(kind, why)),
                    None => err(path, "cannot open", e),
                }
            })?;
        // Not removed when the lock fails: the holder may have created it.
        lock(path, &file, opts.shared)?;
        let opened = Self::open_file(path, file, opts);
        if opened.is_err() && !exists {
            // Leave nothing behind from a create that failed.
            let _ = std::fs::remove_file(path);
        }
        opened
    }

    /// The rest of [`FileDevice::open`] once `file` is open.
    fn open_file(path: &Path, file: std::fs::File, opts: &FileOptions) -> BlockResult<FileDevice> {
        let bs = opts.block_size;
        let meta = file.metadata().map_err(|e| err(path, "stat", e))?;
        let is_block_device = meta.file_type().is_block_device();
        let bytes = if is_block_device {
            let lbs = block_device_logical_block_size(meta.rdev()).unwrap_or(512);
            if bs < lbs {
                return Err(BlockError::Unsupported(format!(
                    "{}: block size {bs} is smaller than the device's logical block size {lbs}",
                    path.display()
                )));
            }
            let mut f = &file;
            f.seek(SeekFrom::End(0)).map_err(|e| err(path, "size", e))?
        } else if meta.file_type().is_file() {
            match opts.size {
                Some(size) if size > meta.len() => {
                    file.set_len(size).map_err(|e| err(path, "extend", e))?;
                    size
                }
                Some(size) if size < meta.len() => {
                    return Err(BlockError::Unsupported(format!(
                        "{}: is {} bytes, larger than the size given ({size}); \
                         a file is never shrunk (give no size to use it whole)",
                        path.display(),
                        meta.len()
                    )));
                }
                Some(size) => size,
                None => meta.len(),
            }
        } else {
            return Err(BlockError::Unsupported(format!(
                "{}: not a regular file or a block device",
                path.display()
            )));
        };
        let num_blocks = bytes / bs as u64;
        if num_blocks == 0 {
            return Err(BlockError::Unsupported(format!(
                "{}: smaller than one {bs}-byte block",
                path.display()
            )));
        }
        let ring = Ring::new(opts.queue_depth).map_err(|e| err(path, "io_uring unavailable", e))?;
        Ok(FileDevice {
            path: path.to_path_buf(),
            file: Arc::new(file),
            ring,
            block_size: bs,
            num_blocks,
            is_block_device,
        })
    }

    /// The path this device was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path is a block device (rather than a regular file).
    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    fn offset(&self, lba: u64) -> u64 {
        lba * self.block_size as u64
    }

    fn io_err(&self, what: &str, e: io::Error) -> BlockError {
        err(&self.path, what, e)
    }
}

/// The logical block size of a block device, from sysfs.
fn block_device_logical_block_size(rdev: u64) -> Option<u32> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let text = std::fs::read_to_string(format!(
        "/sys/dev/block/{major}:{minor}/queue/logical_block_size"
    ))
    .or_else(|_| {
        std::fs::read_to_string(format!(
            "/sys/dev/block/{major}:{minor}/../queue/logical_block_size"
        ))
    })
    .ok()?;
    text.trim().parse().ok()
}

#[async_trait]
impl BlockDevice for FileDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    fn max_transfer_bytes(&self) -> u64 {
        // A single read/write SQE carries a u32 length.
        1 << 30
    }

    async fn read(&self, lba: u64, buf: BytesMut) -> BlockResult<BytesMut> {
        check_io(self, lba, buf.len())?;
        if buf.is_empty() {
            return Ok(buf);
        }
        if buf::is_aligned(&buf, self.block_size as usize) {
            return self
                .ring
                .read(&self.file, self.offset(lba), buf)
                .await
                .map_err(|e| self.io_err("read", e));
        }
        let mut dst = buf;
        let bounce = self
            .ring
            .read(&self.file, self.offset(lba), buf::alloc(dst.len()))
            .await
            .map_err(|e| self.io_err("read", e))?;
        dst.copy_from_slice(&bounce);
        Ok(dst)
    }

    async fn write(&self, lba: u64, data: Bytes) -> BlockResult<()> {
        check_io(self, lba, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let data = if buf::is_aligned(&data, self.block_size as usize) {
            data
        } else {
            let mut b = buf::alloc(data.len());
            b.copy_from_slice(&data);
            b.freeze()
        };
        self.ring
            .write(&self.file, self.offset(lba), data)
            .await
            .map_err(|e| self.io_err("write", e))
    }

    async fn flush(&self) -> BlockResult<()> {
        self.ring
            .fsync(&self.file)
            .await
            .map_err(|e| self.io_err("flush", e))
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        self.zero_range(lba, blocks, libc::FALLOC_FL_ZERO_RANGE, "write zeroes")
            .await
    }

    async fn discard(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        self.zero_range(lba, blocks, libc::FALLOC_FL_PUNCH_HOLE, "discard")
            .await
    }
}

impl FileDevice {
    /// Zero a range with fallocate `mode` (zero range, or punch hole for a
    /// discard); where the filesystem cannot, write zeroes, since a
    /// discarded range must read back as zeroes too.
    async fn zero_range(&self, lba: u64, blocks: u64, mode: i32, what: &str) -> BlockResult<()> {
        check_range(self, lba, blocks)?;
        if blocks == 0 {
            return Ok(());
        }
        let (off, len) = (self.offset(lba), blocks * self.block_size as u64);
        match self
            .ring
            .fallocate(&self.file, off, len, mode | libc::FALLOC_FL_KEEP_SIZE)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.write_zeroes_by_writing(off, len).await
            }
            Err(e) => Err(self.io_err(what, e)),
        }
    }

    async fn write_zeroes_by_writing(&self, mut off: u64, len: u64) -> BlockResult<()> {
        const STEP: u64 = 1 << 20;
        let zeroes = buf::alloc(STEP.min(len) as usize).freeze();
        let end = off + len;
        while off < end {
            let n = STEP.min(end - off) as usize;
            self.ring
                .write(&self.file, off, zeroes.slice(..n))
                .await
                .map_err(|e| self.io_err("write zeroes", e))?;
            off += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_system_is_no_space_and_other_errors_stay_io() {
        let path = Path::new("/data/disk0.img");
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            match err(path, "write", io::Error::from_raw_os_error(errno)) {
                BlockError::NoSpace(m) => assert!(m.starts_with("/data/disk0.img: write: "), "{m}"),
                other => panic!("errno {errno}: {other:?}"),
            }
        }
        let e = err(path, "read", io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(e, BlockError::Io(ref io) if io.to_string().contains("disk0.img: read")));
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tmp"));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[tokio::test]
    async fn direct_io_round_trip_with_unaligned_buffers_and_zeroing() {
        let path = scratch("filedev");
        let dev = FileDevice::open(
            &path,
            &FileOptions {
                size: Some(8 << 20),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(dev.num_blocks(), 2048);
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 256) as u8).collect();
        // Bytes from a Vec is usually not 4 KiB aligned: exercises the bounce path.
        dev.write(10, Bytes::from(data.clone())).await.unwrap();
        dev.flush().await.unwrap();
        let back = dev.read(10, buf::alloc(65536)).await.unwrap();
        assert_eq!(&back[..], &data[..]);
        let unaligned = BytesMut::from(&vec![1u8; 4097][..]).split_off(1);
        let back = dev.read(10, unaligned).await.unwrap();
        assert_eq!(&back[..], &data[..4096]);
        dev.write_zeroes(11, 2).await.unwrap();
        dev.discard(13, 1).await.unwrap();
        let back = dev.read(10, buf::alloc(5 * 4096)).await.unwrap();
        assert_eq!(&back[..4096], &data[..4096]);
        assert!(back[4096..4 * 4096].iter().all(|&b| b == 0));
        assert_eq!(&back[4 * 4096..], &data[4 * 4096..5 * 4096]);
        assert!(matches!(
            dev.read(2048, buf::alloc(4096)).await,
            Err(BlockError::OutOfRange { .. })
        ));
        drop(dev);
        // Reopen without a size: the file's size is used and the data is there.
        let dev = FileDevice::open(&path, &FileOptions::default()).unwrap();
        assert_eq!(dev.num_blocks(), 2048);
        let back = dev.read(10, buf::alloc(4096)).await.unwrap();
        assert_eq!(&back[..], &data[..4096]);
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn missing_file_without_size_is_a_clear_error() {
        let path = scratch("missing");
        let e = FileDevice::open(&path, &FileOptions::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("no such file"), "{e}");
    }

    #[tokio::test]
    async fn an_exclusive_opener_is_alone() {
        let path = scratch("locked");
        let opts = FileOptions {
            size: Some(1 << 20),
            ..Default::default()
        };
        let first = FileDevice::open(&path, &opts).unwrap();
        first.write(0, Bytes::from(vec![3u8; 4096])).await.unwrap();
        let e = FileDevice::open(&path, &opts).err().unwrap();
        assert!(
            matches!(&e, BlockError::Io(io) if io.kind() == io::ErrorKind::ResourceBusy),
            "{e:?}"
        );
        assert!(e.to_string().contains("in use"), "{e}");
        // Refused without touching the file, which stays the first's.
        let back = first.read(0, buf::alloc(4096)).await.unwrap();
        assert!(back.iter().all(|&b| b == 3));
        drop(first);
        // Shared openers coexist, and keep an exclusive one out.
        let shared = FileOptions {
            shared: true,
            ..Default::default()
        };
        let a = FileDevice::open(&path, &shared).unwrap();
        let b = FileDevice::open(&path, &shared).unwrap();
        let e = FileDevice::open(&path, &FileOptions::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("in use"), "{e}");
        drop((a, b));
        let again = FileDevice::open(&path, &FileOptions::default()).unwrap();
        assert_eq!(again.num_blocks(), 256);
        let e = FileDevice::open(&path, &shared).err().unwrap();
        assert!(e.to_string().contains("as its own"), "{e}");
        drop(again);
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn refused_paths_and_sizes_leave_nothing_behind() {
        let open = |path: &Path, size: u64| {
            let opts = FileOptions {
                size: Some(size),
                ..Default::default()
            };
            FileDevice::open(path, &opts).err().unwrap().to_string()
        };
        let path = scratch("refused");
        // Too small for one block: the new file is removed again.
        assert!(open(&path, 100).contains("smaller than one"));
        assert!(!path.exists());
        assert!(open(&path, u64::MAX).contains("larger than a file can be"));
        assert!(!path.exists());
        // A device that is neither a file nor a block device, and a directory.
        assert!(open(Path::new("/dev/null"), 1 << 20).contains("not a regular file"));
        assert!(open(path.parent().unwrap(), 1 << 20).contains("not a regular file"));
        // An existing file is kept whatever goes wrong.
        std::fs::write(&path, b"x").unwrap();
        assert!(open(&path, 100).contains("smaller than one"));
        assert!(path.exists());
        // A size smaller than the file: refused, the file left whole.
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        assert!(open(&path, 4096).contains("never shrunk"));
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 8192]);
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn many_concurrent_ios_complete() {
        let path = scratch("concurrent");
        let dev = Arc::new(
            FileDevice::open(
                &path,
                &FileOptions {
                    size: Some(4 << 20),
                    queue_depth: 8,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let dev = dev.clone();
            tasks.push(tokio::spawn(async move {
                let mut b = buf::alloc(4096);
                b.fill(i as u8);
                dev.write(i % 1024, b.freeze()).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for i in 0..200u64 {
            let back = dev.read(i, buf::alloc(4096)).await.unwrap();
            assert!(back.iter().all(|&b| b == i as u8));
        }
        std::fs::remove_file(&path).unwrap();
    }
}
