//! Free space under sparse backing files: writes into a sparse file's holes
//! fail with no space (Capacity Exceeded to the host; a raid1 member
//! leaves) once its file system fills. A warning at start names file
//! systems whose files could outgrow them, and a watch while the target
//! runs warns as free space runs out.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::namespace::NamespaceSpec;

/// A file system holding sparse backing files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSystemSpace {
    /// A backing file on it (names it in messages).
    pub path: PathBuf,
    /// Bytes its backing files may still grow by (their holes).
    pub growth: u64,
    /// Bytes free for an unprivileged writer.
    pub free: u64,
}

impl FileSystemSpace {
    /// Whether the files could grow by more than is free.
    fn short(&self) -> bool {
        self.growth > self.free
    }

    fn describe(&self) -> String {
        format!(
            "the sparse backing files on the file system of {} can grow by {} but {} \
             are free",
            self.path.display(),
            approximate(self.growth),
            approximate(self.free)
        )
    }
}

/// Bytes to one decimal, in GiB, or MiB below 1 GiB.
fn approximate(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    }
}

/// Per file system, the sparse backing files of `specs`: how much they may
/// still grow and how much is free. File systems that cannot be read are
/// left out.
pub fn file_system_space(specs: &[NamespaceSpec]) -> Vec<FileSystemSpace> {
    use std::os::unix::fs::MetadataExt;
    // Per file system (device number): a path on it, and how much its
    // files may still grow.
    let mut growth: std::collections::BTreeMap<u64, (PathBuf, u64)> = Default::default();
    for path in specs.iter().flat_map(|s| s.paths()) {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let holes = meta.len().saturating_sub(meta.blocks().saturating_mul(512));
        let entry = growth
            .entry(meta.dev())
            .or_insert_with(|| (path.clone(), 0));
        entry.1 = entry.1.saturating_add(holes);
    }
    growth
        .into_values()
        .filter_map(|(path, growth)| {
            let fs = rustix::fs::statvfs(&path).ok()?;
            let free = fs.f_bavail.saturating_mul(fs.f_frsize);
            Some(FileSystemSpace { path, growth, free })
        })
        .collect()
}

/// Warnings for file systems whose sparse backing files (of `specs`) could
/// grow by more than the space left on them.
pub fn overcommitted_file_systems(specs: &[NamespaceSpec]) -> Vec<String> {
    file_system_space(specs)
        .iter()
        .filter(|fs| fs.short())
        .map(|fs| {
            format!(
                "{}: writes into their unallocated blocks will fail with no space \
                 (Capacity Exceeded) once it fills",
                fs.describe()
            )
        })
        .collect()
}

/// What the watch has to say about one file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpaceNotice {
    /// Its files could outgrow it, newly or with half the free space of
    /// the last warning.
    Short(String),
    /// It has room for its files' growth again.
    Room(String),
}

/// Free space over time: a file system is warned about when its files
/// could outgrow it, and again each time its free space has halved since
/// the last warning (an overcommitted one warned at start is heard of
/// again as it fills, not every minute); it is reported once when it has
/// room again.
#[derive(Debug, Default)]
pub struct SpaceWatch {
    /// Per short file system (by its path), the free bytes at the last
    /// warning.
    warned: HashMap<PathBuf, u64>,
}

impl SpaceWatch {
    /// A watch that knows of the warnings given at start for `now`.
    pub fn starting_from(now: &[FileSystemSpace]) -> SpaceWatch {
        SpaceWatch {
            warned: now
                .iter()
                .filter(|fs| fs.short())
                .map(|fs| (fs.path.clone(), fs.free))
                .collect(),
        }
    }

    /// What changed since the last observation.
    pub fn observe(&mut self, now: &[FileSystemSpace]) -> Vec<SpaceNotice> {
        let mut notices = Vec::new();
        for fs in now {
            let last = self.warned.get(&fs.path).copied();
            match (fs.short(), last) {
                (true, Some(free)) if fs.free > free / 2 => {}
                (true, _) => {
                    self.warned.insert(fs.path.clone(), fs.free);
                    notices.push(SpaceNotice::Short(format!(
                        "{}: writes into their unallocated blocks fail with no space once \
                         it fills",
                        fs.describe()
                    )));
                }
                (false, Some(_)) => {
                    self.warned.remove(&fs.path);
                    notices.push(SpaceNotice::Room(format!(
                        "{} again: room for all of it",
                        fs.describe()
                    )));
                }
                (false, None) => {}
            }
        }
        notices
    }
}

/// How often the running target looks at free space.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(60);

/// Watch the file systems of `specs`' sparse backing files every
/// `interval` while the target runs, logging [`SpaceWatch`]'s notices.
pub fn spawn_watch(specs: Vec<NamespaceSpec>, interval: Duration) -> tokio::task::JoinHandle<()> {
    let specs = std::sync::Arc::new(specs);
    let look = move || {
        let specs = specs.clone();
        tokio::task::spawn_blocking(move || file_system_space(&specs))
    };
    tokio::spawn(async move {
        let Ok(first) = look().await else {
            return;
        };
        if first.is_empty() {
            return; // no backing files
        }
        let mut watch = SpaceWatch::starting_from(&first);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Ok(now) = look().await else {
                return;
            };
            for notice in watch.observe(&now) {
                match notice {
                    SpaceNotice::Short(m) => tracing::warn!("{m}"),
                    SpaceNotice::Room(m) => tracing::info!("{m}"),
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_files_larger_than_the_free_space_are_named() {
        let dir = std::env::temp_dir().join(format!("fabric-space-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.img");
        // Far more than any test machine's disk; a sparse file costs nothing.
        std::fs::File::create(&big)
            .unwrap()
            .set_len(4 << 40)
            .unwrap();
        let small = dir.join("small.img");
        std::fs::write(&small, vec![1u8; 8192]).unwrap();
        let spec = |s: &str| s.parse::<NamespaceSpec>().unwrap();
        let warnings = overcommitted_file_systems(&[
            spec(&format!("file:{}", small.display())),
            spec(&format!("raid1:{},{}", big.display(), small.display())),
            spec("mem:1M"),
        ]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("can grow by 4096.0 GiB"),
            "{}",
            warnings[0]
        );
        assert!(
            overcommitted_file_systems(&[spec(&format!("file:{}", small.display()))]).is_empty()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_watch_warns_as_free_space_runs_out_and_once_when_it_is_back() {
        const G: u64 = 1 << 30;
        let space = |free: u64| {
            vec![FileSystemSpace {
                path: "/d/a.img".into(),
                growth: 8 * G,
                free,
            }]
        };
        let short = |n: &[SpaceNotice]| matches!(n, [SpaceNotice::Short(_)]);
        // Room at start: nothing until the files could outgrow it.
        let mut watch = SpaceWatch::starting_from(&space(20 * G));
        assert!(watch.observe(&space(9 * G)).is_empty());
        let n = watch.observe(&space(6 * G));
        assert!(short(&n), "{n:?}");
        assert!(matches!(&n[0], SpaceNotice::Short(m) if m.contains("6.0 GiB are free")));
        // Again only once the free space has halved since.
        assert!(watch.observe(&space(4 * G)).is_empty());
        assert!(short(&watch.observe(&space(3 * G))));
        assert!(watch.observe(&space(2 * G)).is_empty());
        let n = watch.observe(&space(G / 2));
        assert!(matches!(&n[..], [SpaceNotice::Short(m)] if m.contains("512.0 MiB are free")));
        // Room again: said once.
        assert!(matches!(
            &watch.observe(&space(9 * G))[..],
            [SpaceNotice::Room(_)]
        ));
        assert!(watch.observe(&space(9 * G)).is_empty());
        // Short at start: the start's warning counts.
        let mut watch = SpaceWatch::starting_from(&space(4 * G));
        assert!(watch.observe(&space(3 * G)).is_empty());
        assert!(short(&watch.observe(&space(2 * G))));
    }
}
