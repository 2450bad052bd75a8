//! The Linux NVMe-oF host: `nvme connect`, the block devices of a
//! subsystem's namespaces, `nvme disconnect`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::kernel::sh;

/// A connected subsystem; disconnected when dropped.
pub struct Connection {
    nqn: String,
}

/// `nvme connect` to `nqn` at `transport://addr:svc`.
pub fn connect(
    transport: &str,
    addr: &str,
    svc: u16,
    nqn: &str,
    hostnqn: &str,
) -> anyhow::Result<Connection> {
    // The host driver of the transport (the kernel target loads it too, but
    // the pair mode's clients' guest has no kernel target).
    sh("modprobe", &[&format!("nvme-{transport}")])?;
    sh(
        "nvme",
        &[
            "connect",
            "-t",
            transport,
            "-a",
            addr,
            "-s",
            &svc.to_string(),
            "-n",
            nqn,
            &format!("--hostnqn={hostnqn}"),
        ],
    )?;
    Ok(Connection {
        nqn: nqn.to_string(),
    })
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The block device of namespace `nsid` of subsystem `nqn`, if it exists.
fn find_namespace(nqn: &str, nsid: u32) -> Option<PathBuf> {
    for sub in std::fs::read_dir("/sys/class/nvme-subsystem")
        .ok()?
        .flatten()
    {
        if read(&sub.path().join("subsysnqn")) != nqn {
            continue;
        }
        for e in std::fs::read_dir(sub.path()).ok()?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let is_disk = name.starts_with("nvme")
                && name.contains('n')
                && !name.contains('c')
                && name[4..].chars().all(|c| c.is_ascii_digit() || c == 'n');
            if is_disk && read(&e.path().join("nsid")) == nsid.to_string() {
                let dev = PathBuf::from("/dev").join(&name);
                return dev.exists().then_some(dev);
            }
        }
    }
    None
}

impl Connection {
    /// Wait (up to `timeout`) for namespace `nsid`'s device node.
    pub fn namespace(&self, nsid: u32, timeout: Duration) -> anyhow::Result<PathBuf> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(dev) = find_namespace(&self.nqn, nsid) {
                return Ok(dev);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no device for namespace {nsid} of {} after {timeout:?}",
                    self.nqn
                );
            }
            // Device nodes appear asynchronously (devtmpfs, no udev event to wait on).
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = sh("nvme", &["disconnect", "-n", &self.nqn]);
    }
}
