//! The backends `fabricd target` can serve as namespaces, from their
//! command-line form (`mem:1G`, `file:/var/tmp/disk0.img:8G`,
//! `raid1:/d/a.img,/d/b.img:4G`, ...) to an open [`DeviceRef`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, Context};
use raid::{
    parse_size, BackgroundTask, DeviceRef, FileDevice, FileOptions, MemberHealth, MemoryDevice,
    NullDevice, Raid1, Raid1OpenOptions, Raid1Options, RateLimit,
};

/// A namespace backend: `mem:SIZE`, `null:SIZE`, `file:PATH[:SIZE]` or
/// `raid1:PATH,PATH[,...][:SIZE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceSpec {
    /// RAM, lost on exit.
    Memory(u64),
    /// Discards writes, reads zeroes.
    Null(u64),
    /// A file (created and sized when SIZE is given) or a block device.
    File(PathBuf, Option<u64>),
    /// A mirror (raid1) over files or block devices, missing files created
    /// and sized like `File` when SIZE is given (see [`NamespaceSpec::open`]
    /// for when the mirror itself is created).
    Raid1(Vec<PathBuf>, Option<u64>),
}

/// An open namespace backend and what must run beside it.
pub struct OpenNamespace {
    /// The device served.
    pub device: DeviceRef,
    /// A raid1's resync (brings back members that missed writes, fills
    /// replacements); stop it after the last I/O.
    pub resync: Option<BackgroundTask>,
    /// The mirror itself when the backend is a raid1.
    pub raid1: Option<Arc<Raid1>>,
}

impl OpenNamespace {
    /// After the last I/O: stop the resync, then flush (a raid1 is closed,
    /// which leaves its bitmap clean).
    pub async fn close(self) -> anyhow::Result<()> {
        if let Some(resync) = self.resync {
            resync.stop().await.context("raid1 resync")?;
        }
        match self.raid1 {
            Some(raid) => raid.close().await?,
            None => self.device.flush().await?,
        }
        Ok(())
    }
}

/// `PATH[:SIZE]`: what follows the last colon is a size when it starts
/// with a digit (and must then be a valid one), else part of the path.
fn path_and_size(rest: &str) -> Result<(&str, Option<u64>), String> {
    match rest.rsplit_once(':') {
        Some((path, v)) if !path.is_empty() && v.starts_with(|c: char| c.is_ascii_digit()) => {
            let size = parse_size(v).map_err(|e| e.to_string())?;
            Ok((path, Some(size)))
        }
        _ => Ok((rest, None)),
    }
}

impl FromStr for NamespaceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let size = |v: &str| parse_size(v).map_err(|e| format!("{s:?}: {e}"));
        match s.split_once(':') {
            Some(("mem", v)) => Ok(NamespaceSpec::Memory(size(v)?)),
            Some(("null", v)) => Ok(NamespaceSpec::Null(size(v)?)),
            Some(("file", rest)) if !rest.is_empty() => {
                let (path, size) = path_and_size(rest).map_err(|e| format!("{s:?}: {e}"))?;
                Ok(NamespaceSpec::File(path.into(), size))
            }
            Some(("raid1", rest)) => {
                let (paths, size) = path_and_size(rest).map_err(|e| format!("{s:?}: {e}"))?;
                let paths: Vec<PathBuf> = paths.split(',').map(PathBuf::from).collect();
                if paths.len() < 2 || paths.iter().any(|p| p.as_os_str().is_empty()) {
                    return Err(format!(
                        "{s:?}: raid1 needs two or more comma-separated paths"
                    ));
                }
                let distinct: std::collections::HashSet<_> = paths.iter().collect();
                if distinct.len() != paths.len() {
                    return Err(format!("{s:?}: a raid1 path is given twice"));
                }
                Ok(NamespaceSpec::Raid1(paths, size))
            }
            _ => Err(format!(
                "{s:?}: expected mem:SIZE, null:SIZE, file:PATH[:SIZE] or raid1:PATH,PATH[:SIZE]"
            )),
        }
    }
}

impl NamespaceSpec {
    /// The files or block devices the backend uses.
    pub fn paths(&self) -> &[PathBuf] {
        match self {
            NamespaceSpec::Memory(_) | NamespaceSpec::Null(_) => &[],
            NamespaceSpec::File(path, _) => std::slice::from_ref(path),
            NamespaceSpec::Raid1(paths, _) => paths,
        }
    }

    /// The size given in the spec, if any.
    fn size(&self) -> Option<u64> {
        match self {
            NamespaceSpec::Memory(size) | NamespaceSpec::Null(size) => Some(*size),
            NamespaceSpec::File(_, size) | NamespaceSpec::Raid1(_, size) => *size,
        }
    }

    /// Open the backend with `block_size`-byte blocks. A raid1 is created
    /// when every member is blank, else assembled from the members with a
    /// superblock, blank ones rebuilding missing members.
    pub async fn open(&self, block_size: u32) -> anyhow::Result<OpenNamespace> {
        self.open_with(block_size, Raid1OpenOptions::default())
            .await
    }

    /// [`NamespaceSpec::open`], assembling a raid1 with `raid1_open`.
    pub async fn open_with(
        &self,
        block_size: u32,
        raid1_open: Raid1OpenOptions,
    ) -> anyhow::Result<OpenNamespace> {
        let too_small = |size: u64| size < block_size as u64;
        if let Some(size) = self.size().filter(|s| s % u64::from(block_size) != 0) {
            bail!("size {size} is not a multiple of the {block_size}-byte block size");
        }
        let device: DeviceRef = match self {
            NamespaceSpec::Memory(size) if too_small(*size) => bail!(
                "memory namespace of {size} bytes is smaller than one {block_size}-byte block"
            ),
            NamespaceSpec::Null(size) if too_small(*size) => {
                bail!("null namespace of {size} bytes is smaller than one {block_size}-byte block")
            }
            NamespaceSpec::Memory(size) => match physical_memory() {
                Some(ram) if *size > ram => bail!(
                    "memory namespace of {} GiB is larger than this machine's memory ({} GiB); \
                     a mem: namespace keeps all its data in RAM",
                    size >> 30,
                    ram >> 30
                ),
                _ => Arc::new(MemoryDevice::new(*size, block_size)),
            },
            NamespaceSpec::Null(size) => Arc::new(NullDevice::new(*size, block_size)),
            NamespaceSpec::File(path, size) => open_file(path, *size, block_size, true)?,
            NamespaceSpec::Raid1(paths, size) => {
                return open_raid1(paths, *size, block_size, raid1_open).await
            }
        };
        Ok(OpenNamespace {
            device,
            resync: None,
            raid1: None,
        })
    }
}

/// Refuse a path that does not exist in a spec without a SIZE to create
/// it, before any namespace is opened: a raid1 assembled without a
/// mistyped member would mark it as having left, on disk, even though the
/// start then fails.
pub fn check_paths_exist(specs: &[NamespaceSpec]) -> anyhow::Result<()> {
    for (i, spec) in specs.iter().enumerate() {
        if spec.size().is_some() {
            continue;
        }
        if let Some(path) = spec.paths().iter().find(|p| !p.exists()) {
            bail!(
                "namespace {}: {} does not exist (give a SIZE to create it)",
                i + 1,
                path.display()
            );
        }
    }
    Ok(())
}

/// Refuse a file or device that two namespaces would share (each would
/// overwrite the other's data); paths are compared after resolving links.
pub fn check_distinct_paths(specs: &[NamespaceSpec]) -> anyhow::Result<()> {
    let mut seen = std::collections::HashMap::new();
    for (i, spec) in specs.iter().enumerate() {
        for path in spec.paths() {
            let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            if let Some(first) = seen.insert(key, i + 1) {
                bail!(
                    "namespaces {first} and {} both use {}",
                    i + 1,
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// The machine's RAM in bytes (`MemTotal` in `/proc/meminfo`).
pub(crate) fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Opens a file or block device: `shared` for a `file:` namespace (several
/// targets may export one shared disk), exclusive for a raid1 member.
fn open_file(
    path: &Path,
    size: Option<u64>,
    block_size: u32,
    shared: bool,
) -> anyhow::Result<DeviceRef> {
    let opts = FileOptions {
        size,
        block_size,
        shared,
        ..Default::default()
    };
    Ok(Arc::new(FileDevice::open(path, &opts)?))
}

/// Refuse a SIZE that differs from an existing raid1 member file's size: a
/// mirror's size is fixed when it is created, and growing the files would
/// only waste their space. Block devices have their own size; SIZE does not
/// apply to them.
fn check_member_size(path: &Path, size: Option<u64>) -> anyhow::Result<()> {
    let Some(size) = size else { return Ok(()) };
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.is_file() && meta.len() != size {
        bail!(
            "{} is a raid1 member file of {} bytes, not the SIZE given ({size}): an \
             existing mirror keeps its size, and SIZE must match its files or be left out",
            path.display(),
            meta.len()
        );
    }
    Ok(())
}

/// Whether `path` is a regular file shorter than one block and all zeroes
/// (too short to hold a superblock or to be opened as a device); one with
/// data is refused, never overwritten.
fn is_tiny_blank_file(path: &Path, block_size: u32) -> anyhow::Result<bool> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.is_file() || meta.len() >= u64::from(block_size) {
        return Ok(false);
    }
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if data.iter().any(|&b| b != 0) {
        return Err(holds_data(path));
    }
    Ok(true)
}

/// The refusal of a path that is neither a raid1 member nor blank.
fn holds_data(path: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{} holds data but no raid1 superblock; refusing to overwrite it",
        path.display()
    )
}

/// Bytes at the start of a member checked for blankness: the raid1
/// superblock and bitmap, and where partition tables, LVM labels and file
/// systems put their signatures.
const BLANK_CHECK_BYTES: u64 = 1 << 20;

/// Whether the first MiB of `dev` is all zeroes (a new file, a new or
/// discarded disk).
async fn is_blank(dev: &DeviceRef) -> anyhow::Result<bool> {
    let bs = u64::from(dev.block_size());
    let len = BLANK_CHECK_BYTES.min(dev.num_blocks() * bs) / bs * bs;
    let data = dev.read(0, raid::buf::alloc(len as usize)).await?;
    Ok(data.iter().all(|&b| b == 0))
}

/// Open a raid1. Decisions: a member is blank when its first MiB is zeroes
/// (a new file, created with SIZE, or a new or discarded disk). When no
/// member holds a raid1 superblock and all are blank the mirror is created:
/// over new files nothing is copied (they read zeroes alike); over existing
/// members the first is copied to the others in the background, since what
/// lies past a disk's first MiB is unknown. Otherwise the members
/// with a superblock assemble it (one that missed writes catches up from
/// the write-intent bitmap) and each blank one takes a missing member's
/// place and is rebuilt in full, in the background while I/O goes on. A
/// member with data but no superblock is refused, never overwritten, and
/// so is a blank one with no missing member to replace (a mirror does not
/// grow by adding a path). New files are created, and blank ones grown to
/// SIZE, only once the spec is accepted.
async fn open_raid1(
    paths: &[PathBuf],
    size: Option<u64>,
    block_size: u32,
    raid1_open: Raid1OpenOptions,
) -> anyhow::Result<OpenNamespace> {
    let mut members = Vec::new();
    // (path, device when it exists with content to copy over the others)
    let mut blank = Vec::new();
    for path in paths {
        if !path.exists() || is_tiny_blank_file(path, block_size)? {
            // Nothing there yet (an empty file too: a start cut short
            // between creating and sizing it, or one truncated to blank it).
            blank.push((path, None));
            continue;
        }
        // Opened at its size: a member is never grown (the mirror would
        // not grow with it), only a blank file that is to become one.
        let dev = open_file(path, None, block_size, false)?;
        if Raid1::is_member(&dev).await {
            check_member_size(path, size)?;
            members.push((path, dev));
        } else if is_blank(&dev)
            .await
            .with_context(|| format!("reading {}", path.display()))?
        {
            blank.push((path, Some(dev)));
        } else {
            return Err(holds_data(path));
        }
    }
    // Grows a blank file to SIZE (creating it when missing).
    let open_blank = |(path, dev): (&PathBuf, Option<DeviceRef>)| match (dev, size) {
        (Some(dev), None) => Ok(dev),
        (dev, size) => {
            drop(dev); // closed (and its lock released) before it is reopened
            open_file(path, size, block_size, false)
        }
    };
    let raid = if members.is_empty() {
        let opts = Raid1Options {
            initial_sync: blank.iter().any(|(_, dev)| dev.is_some()),
            ..Raid1Options::default()
        };
        let devs = blank
            .into_iter()
            .map(open_blank)
            .collect::<anyhow::Result<Vec<_>>>()?;
        Raid1::create(devs, &opts)
            .await
            .context("creating the raid1")?
    } else {
        let devs = members.iter().map(|(_, dev)| dev.clone()).collect();
        let raid = Raid1::open_with(devs, raid1_open)
            .await
            .context("assembling the raid1")?;
        if raid.assembled_stale() {
            // Which file is which slot, for the recovery's WARN (by slot).
            for (path, dev) in &members {
                let slot = raid.slot_of(dev);
                tracing::warn!(path = %path.display(), ?slot, "raid1 member after --assemble-stale");
            }
        }
        let status = raid.status().await;
        let free: Vec<usize> = status
            .members
            .iter()
            .enumerate()
            .filter(|(_, h)| matches!(h, MemberHealth::Missing | MemberHealth::Empty))
            .map(|(slot, _)| slot)
            .collect();
        if let Some((path, _)) = blank.get(free.len()) {
            bail!(
                "{} is blank but the raid1 has no missing member for it",
                path.display()
            );
        }
        for (member, slot) in blank.into_iter().zip(free) {
            let path = member.0;
            raid.replace_member(slot, open_blank(member)?)
                .await
                .with_context(|| format!("rebuilding onto {}", path.display()))?;
            tracing::warn!(path = %path.display(), slot, "raid1 member replaced; rebuilding");
        }
        raid
    };
    let resync = raid.start_resync(RateLimit::new(0));
    Ok(OpenNamespace {
        device: raid.clone(),
        resync: Some(resync),
        raid1: Some(raid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_specs_parse() {
        assert_eq!("mem:1G".parse(), Ok(NamespaceSpec::Memory(1 << 30)));
        assert_eq!("null:2T".parse(), Ok(NamespaceSpec::Null(2 << 40)));
        assert_eq!(
            "file:/a/b".parse(),
            Ok(NamespaceSpec::File("/a/b".into(), None))
        );
        assert_eq!(
            "file:/a/b:64M".parse(),
            Ok(NamespaceSpec::File("/a/b".into(), Some(64 << 20)))
        );
        assert_eq!(
            "file:/a:b".parse(),
            Ok(NamespaceSpec::File("/a:b".into(), None))
        );
        assert_eq!(
            "raid1:/a,/b:4G".parse(),
            Ok(NamespaceSpec::Raid1(
                vec!["/a".into(), "/b".into()],
                Some(4 << 30)
            ))
        );
        assert_eq!(
            "raid1:/a,/b,/c".parse(),
            Ok(NamespaceSpec::Raid1(
                vec!["/a".into(), "/b".into(), "/c".into()],
                None
            ))
        );
        for bad in [
            "mem:12X",
            "mem:",
            "disk:1G",
            "file:",
            "1G",
            "raid1:",
            "raid1:/a",
            "raid1:/a,:1G",
            "raid1:/a,,/b",
            "raid1:/a,/b,/a:1G",
            "file:/a:1Q",
            "raid1:/a,/b:4X",
        ] {
            assert!(bad.parse::<NamespaceSpec>().is_err(), "{bad}");
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fabric-ns-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn in_sync(ns: &OpenNamespace) {
        let raid = ns.raid1.as_ref().unwrap();
        for _ in 0..1000 {
            let st = raid.status().await;
            if st.members.iter().all(|h| *h == MemberHealth::InSync) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!(
            "raid1 not in sync after 10 s: {:?}",
            raid.status().await.members
        );
    }

    async fn close(ns: OpenNamespace) {
        ns.close().await.unwrap();
    }

    fn pattern(lba: u64) -> Vec<u8> {
        (0..8192u64).map(|i| (lba * 31 + i) as u8).collect()
    }

    #[tokio::test]
    async fn raid1_keeps_the_data_through_replacing_each_member() {
        let dir = scratch("replace");
        let (a, b) = (dir.join("a.img"), dir.join("b.img"));
        let spec: NamespaceSpec = format!("raid1:{},{}:16M", a.display(), b.display())
            .parse()
            .unwrap();
        let lbas = [0u64, 7, 1000, 3000];

        // New files: the mirror is created; write, flush, close.
        let ns = spec.open(4096).await.unwrap();
        for &lba in &lbas {
            ns.device
                .write(lba, raid::Bytes::from(pattern(lba)))
                .await
                .unwrap();
        }
        close(ns).await;

        // b is lost and comes back empty: rebuilt from a.
        std::fs::remove_file(&b).unwrap();
        let ns = spec.open(4096).await.unwrap();
        in_sync(&ns).await;
        close(ns).await;

        // Then a is lost: the array now comes from the rebuilt b alone,
        // then a is rebuilt from it.
        std::fs::remove_file(&a).unwrap();
        let ns = spec.open(4096).await.unwrap();
        for &lba in &lbas {
            let back = ns.device.read(lba, raid::buf::alloc(8192)).await.unwrap();
            assert_eq!(&back[..], &pattern(lba)[..], "lba {lba}");
        }
        in_sync(&ns).await;
        close(ns).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn raid1_is_created_over_blank_existing_members() {
        // As on new disks: the members exist and are all zeroes.
        // Past their first MiB they differ: the creation copies the first
        // member over the others, so that every block reads the same from
        // either.
        let dir = scratch("blank");
        let (a, b) = (dir.join("a.img"), dir.join("b.img"));
        let mut old = vec![0u8; 4 << 20];
        old[2 << 20..].fill(0xee);
        std::fs::write(&a, vec![0u8; 4 << 20]).unwrap();
        std::fs::write(&b, &old).unwrap();
        let spec: NamespaceSpec = format!("raid1:{},{}", a.display(), b.display())
            .parse()
            .unwrap();
        let ns = spec.open(4096).await.unwrap();
        in_sync(&ns).await;
        let tail = std::fs::read(&b).unwrap();
        assert!(
            tail[2 << 20..].iter().all(|&x| x == 0),
            "b was not synced from a"
        );
        ns.device
            .write(1, raid::Bytes::from(pattern(1)))
            .await
            .unwrap();
        close(ns).await;
        let ns = spec.open(4096).await.unwrap();
        let back = ns.device.read(1, raid::buf::alloc(8192)).await.unwrap();
        assert_eq!(&back[..], &pattern(1)[..]);
        close(ns).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn namespaces_do_not_share_a_file() {
        let specs = |list: &[&str]| -> Vec<NamespaceSpec> {
            list.iter().map(|s| s.parse().unwrap()).collect()
        };
        let ok = specs(&["file:/d/a:1G", "raid1:/d/b,/d/c:1G", "mem:1G", "mem:1G"]);
        assert!(check_distinct_paths(&ok).is_ok());
        let e = check_distinct_paths(&specs(&["file:/d/a:1G", "raid1:/d/b,/d/a:1G"]))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "namespaces 1 and 2 both use /d/a");
        // Through a symbolic link too.
        let dir = std::env::temp_dir().join(format!("fabric-ns-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), b"").unwrap();
        std::os::unix::fs::symlink(dir.join("a"), dir.join("l")).unwrap();
        let linked = [
            NamespaceSpec::File(dir.join("a"), None),
            NamespaceSpec::File(dir.join("l"), None),
        ];
        assert!(check_distinct_paths(&linked).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn sizes_the_backends_cannot_serve_are_refused() {
        async fn refusal(spec: &str) -> String {
            let spec: NamespaceSpec = spec.parse().unwrap();
            match spec.open(4096).await {
                Ok(_) => panic!("{spec:?} opened"),
                Err(e) => e.to_string(),
            }
        }
        for spec in ["mem:5000", "null:5000", "mem:1073741825", "null:1073741825"] {
            let e = refusal(spec).await;
            assert!(
                e.contains("not a multiple of the 4096-byte block size"),
                "{spec}: {e}"
            );
        }
        // No table for 16 TiB of RAM built up front: refused at once.
        let e = refusal("mem:16T").await;
        assert!(e.contains("larger than this machine's memory"), "{e}");
    }

    /// The last in-sync member lost: the member that left before it is
    /// refused alone, and with `--assemble-stale` becomes a new mirror,
    /// with a blank file given beside it rebuilt from it.
    #[tokio::test]
    async fn raid1_assembles_a_member_that_left_only_on_request() {
        let dir = scratch("stale");
        let (a, b, c) = (dir.join("a.img"), dir.join("b.img"), dir.join("c.img"));
        let spec = |x: &Path, y: &Path| -> NamespaceSpec {
            format!("raid1:{},{}:4M", x.display(), y.display())
                .parse()
                .unwrap()
        };
        let ns = spec(&a, &b).open(4096).await.unwrap();
        ns.device
            .write(3, raid::Bytes::from(pattern(3)))
            .await
            .unwrap();
        ns.raid1.as_ref().unwrap().fail_member(1).await.unwrap();
        ns.device
            .write(3, raid::Bytes::from(pattern(4)))
            .await
            .unwrap();
        close(ns).await;
        std::fs::remove_file(&a).unwrap();

        let err = spec(&b, &c).open(4096).await.err().unwrap();
        assert!(format!("{err:#}").contains("no in-sync member"), "{err:#}");
        assert!(!c.exists(), "nothing created for a refused spec");
        let force = Raid1OpenOptions {
            assemble_stale: true,
        };
        let ns = spec(&b, &c).open_with(4096, force).await.unwrap();
        in_sync(&ns).await;
        let data = ns.device.read(3, raid::buf::alloc(8192)).await.unwrap();
        assert_eq!(&data[..], &pattern(3)[..], "the data as it was when b left");
        close(ns).await;
        let alone = NamespaceSpec::Raid1(vec![c.clone()], None);
        let ns = alone.open(4096).await.unwrap();
        let data = ns.device.read(3, raid::buf::alloc(8192)).await.unwrap();
        assert_eq!(&data[..], &pattern(3)[..], "rebuilt onto c");
        close(ns).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn raid1_refuses_what_it_cannot_assemble() {
        let dir = scratch("refuse");
        let (a, b, c) = (dir.join("a.img"), dir.join("b.img"), dir.join("c.img"));
        // A member with data but no raid1 superblock is not overwritten.
        std::fs::write(&a, vec![0u8; 1 << 20]).unwrap();
        std::fs::write(&b, vec![7u8; 1 << 20]).unwrap();
        let spec: NamespaceSpec = format!("raid1:{},{}", a.display(), b.display())
            .parse()
            .unwrap();
        let err = spec.open(4096).await.err().unwrap();
        assert!(
            format!("{err:#}").contains("no raid1 superblock"),
            "{err:#}"
        );
        assert!(std::fs::read(&b).unwrap().iter().all(|&x| x == 7));

        // A new path beside a complete mirror does not grow it.
        std::fs::remove_file(&a).unwrap();
        std::fs::remove_file(&b).unwrap();
        let two: NamespaceSpec = format!("raid1:{},{}:4M", a.display(), b.display())
            .parse()
            .unwrap();
        close(two.open(4096).await.unwrap()).await;
        let three: NamespaceSpec =
            format!("raid1:{},{},{}:4M", a.display(), b.display(), c.display())
                .parse()
                .unwrap();
        let err = three.open(4096).await.err().unwrap();
        assert!(format!("{err:#}").contains("no missing member"), "{err:#}");
        assert!(!c.exists(), "nothing created for a refused spec");

        // A SIZE other than the members' is refused, larger or smaller,
        // and the files keep their size; without SIZE it assembles.
        for size in ["8M", "2M"] {
            let resized: NamespaceSpec = format!("raid1:{},{}:{size}", a.display(), b.display())
                .parse()
                .unwrap();
            let err = resized.open(4096).await.err().unwrap();
            assert!(format!("{err:#}").contains("keeps its size"), "{err:#}");
            assert_eq!(std::fs::metadata(&a).unwrap().len(), 4 << 20);
            assert_eq!(std::fs::metadata(&b).unwrap().len(), 4 << 20);
        }
        let unsized_spec: NamespaceSpec = format!("raid1:{},{}", a.display(), b.display())
            .parse()
            .unwrap();
        close(unsized_spec.open(4096).await.unwrap()).await;

        // A blank file in a refused spec is not grown.
        std::fs::write(&c, b"").unwrap();
        let refused: NamespaceSpec = format!("raid1:{},{}:8M", a.display(), c.display())
            .parse()
            .unwrap();
        assert!(refused.open(4096).await.is_err());
        assert_eq!(std::fs::metadata(&c).unwrap().len(), 0);
        // An empty file (a start cut short before sizing it, a truncate)
        // is blank: with SIZE it takes the lost member's place.
        std::fs::File::create(&b).unwrap();
        let ns = two.open(4096).await.unwrap();
        in_sync(&ns).await;
        close(ns).await;
        assert_eq!(std::fs::metadata(&b).unwrap().len(), 4 << 20);
        // One shorter than a block with data in it is not overwritten.
        std::fs::write(&b, b"x").unwrap();
        let err = two.open(4096).await.err().unwrap();
        assert!(format!("{err:#}").contains("holds data"), "{err:#}");
        assert_eq!(std::fs::read(&b).unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
