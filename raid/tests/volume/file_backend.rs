//! The stack on O_DIRECT files: raid1 over two files, a thin pool on it
//! with its metadata in a third file, a snapshot and a clone; everything
//! closed and reopened from the files.

use std::path::PathBuf;
use std::sync::Arc;

use raid::{
    BlockDevice, CloneDevice, DeviceRef, FileDevice, FileOptions, Raid1, Raid1Options, RateLimit,
    ThinOptions, ThinPool,
};

use crate::common::*;

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn file(path: &PathBuf, size: Option<u64>) -> DeviceRef {
    Arc::new(
        FileDevice::open(
            path,
            &FileOptions {
                size,
                ..Default::default()
            },
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn raid1_thin_snapshot_and_clone_on_files_survive_reopen() {
    let paths: Vec<PathBuf> = ["m0", "m1", "meta", "clone-dst", "clone-meta"]
        .iter()
        .map(|n| scratch(n))
        .collect();
    let thin_opts = ThinOptions {
        block_bytes: 256 << 10,
        low_water_blocks: None,
    };
    {
        let members = vec![
            file(&paths[0], Some(12 << 20)),
            file(&paths[1], Some(12 << 20)),
        ];
        let raid = Raid1::create(
            members,
            &Raid1Options {
                region_bytes: 1 << 20,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let pool = ThinPool::format(raid, file(&paths[2], Some(1 << 20)), &thin_opts)
            .await
            .unwrap();
        let vol = pool.create_thin(1, 1024).await.unwrap();
        write(&vol, 0, &pattern(1, 100)).await;
        pool.snapshot(1, 2).await.unwrap();
        write(&vol, 50, &pattern(2, 100)).await;
        vol.flush().await.unwrap();
    }
    let members = vec![file(&paths[0], None), file(&paths[1], None)];
    let raid = Raid1::open(members).await.unwrap();
    raid.resync_now(&RateLimit::default()).await.unwrap();
    let pool = ThinPool::open(raid, file(&paths[2], None), &thin_opts)
        .await
        .unwrap();
    let vol = pool.open_thin(1).unwrap();
    let snap: DeviceRef = Arc::new(pool.open_thin(2).unwrap());
    let mut want = pattern(1, 150);
    want[50 * BS..].copy_from_slice(&pattern(2, 100));
    assert!(read(&vol, 0, 150).await == want);
    assert!(read(&*snap, 0, 100).await == pattern(1, 100));
    // Clone the snapshot onto a file and hydrate it.
    let clone = CloneDevice::create(
        snap.clone(),
        file(&paths[3], Some(4 << 20)),
        file(&paths[4], Some(64 << 10)),
        1 << 20,
    )
    .await
    .unwrap();
    write(&*clone, 10, &pattern(3, 1)).await;
    clone.hydrate_now(&RateLimit::default()).await.unwrap();
    assert!(clone.progress().complete());
    let mut want = pattern(1, 100);
    want[10 * BS..11 * BS].copy_from_slice(&pattern(3, 1));
    assert!(read(&*clone, 0, 100).await == want);
    for p in paths {
        std::fs::remove_file(p).unwrap();
    }
}
