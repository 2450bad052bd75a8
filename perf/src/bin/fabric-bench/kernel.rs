//! The Linux kernel NVMe-oF target (nvmet) set up through configfs, with
//! null_blk and a RAM disk (brd) as the backends equivalent to ours.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

const NVMET: &str = "/sys/kernel/config/nvmet";

/// Run a command; fail with its stderr.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The size in bytes of block device `name` (like "ram0").
fn device_size(name: &str) -> anyhow::Result<u64> {
    let path = format!("/sys/block/{name}/size");
    let sectors: u64 = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {path}"))?
        .trim()
        .parse()
        .with_context(|| format!("unexpected {path}"))?;
    Ok(sectors * 512)
}

/// (Re)load null_blk and brd with one `gib`-GiB device each: /dev/nullb0
/// (completions inline, like our null backend) and /dev/ram0.
fn load_backends(gib: u64) -> anyhow::Result<()> {
    // Earlier tests in the same guest may have loaded them with other sizes.
    let _ = sh("rmmod", &["null_blk"]);
    let _ = sh("rmmod", &["brd"]);
    sh(
        "modprobe",
        &[
            "null_blk",
            "nr_devices=1",
            &format!("gb={gib}"),
            "bs=4096",
            "irqmode=0",
        ],
    )?;
    sh(
        "modprobe",
        &["brd", "rd_nr=1", &format!("rd_size={}", gib << 20)],
    )
}

/// Load the backends (`gib` GiB each) and serve them as subsystem `nqn`:
/// null_blk as namespace 1, the RAM disk as 2. Also returns the two
/// devices' sizes in bytes, which our namespaces copy.
pub fn target_with_backends(nqn: &str, gib: u64) -> anyhow::Result<(KernelTarget, (u64, u64))> {
    load_backends(gib)?;
    let sizes = (device_size("nullb0")?, device_size("ram0")?);
    let k = KernelTarget::new(nqn, &[(1, "/dev/nullb0"), (2, "/dev/ram0")])?;
    Ok((k, sizes))
}

/// A kernel target subsystem with its namespaces and ports.
pub struct KernelTarget {
    subsystem: PathBuf,
    ports: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value)
        .with_context(|| format!("cannot write {value:?} to {}", path.display()))
}

fn mkdir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir(path).with_context(|| format!("cannot create {}", path.display()))
}

impl KernelTarget {
    /// Subsystem `nqn` open to any host, with `(nsid, device)` namespaces.
    pub fn new(nqn: &str, namespaces: &[(u32, &str)]) -> anyhow::Result<KernelTarget> {
        sh("modprobe", &["-a", "nvmet", "nvmet-tcp", "nvme-tcp"])?;
        let subsystem = Path::new(NVMET).join("subsystems").join(nqn);
        mkdir(&subsystem)?;
        let t = KernelTarget {
            subsystem: subsystem.clone(),
            ports: Vec::new(),
        };
        write(&subsystem.join("attr_allow_any_host"), "1")?;
        for (nsid, dev) in namespaces {
            let ns = subsystem.join("namespaces").join(nsid.to_string());
            mkdir(&ns)?;
            write(&ns.join("device_path"), dev)?;
            write(&ns.join("enable"), "1")?;
        }
        Ok(t)
    }

    /// Expose the subsystem on port `id`: `transport` (tcp, rdma) at `addr:svc`.
    pub fn add_port(
        &mut self,
        id: u16,
        transport: &str,
        addr: &str,
        svc: u16,
    ) -> anyhow::Result<()> {
        if transport == "rdma" {
            sh("modprobe", &["-a", "nvmet-rdma", "nvme-rdma"])?;
        }
        let port = Path::new(NVMET).join("ports").join(id.to_string());
        mkdir(&port)?;
        self.ports.push(port.clone());
        write(&port.join("addr_trtype"), transport)?;
        write(&port.join("addr_adrfam"), "ipv4")?;
        write(&port.join("addr_traddr"), addr)?;
        write(&port.join("addr_trsvcid"), &svc.to_string())?;
        let name = self
            .subsystem
            .file_name()
            .context("subsystem path has no name")?;
        let link = port.join("subsystems").join(name);
        std::os::unix::fs::symlink(&self.subsystem, &link)
            .with_context(|| format!("cannot enable {transport} port {addr}:{svc}"))
    }
}

impl Drop for KernelTarget {
    fn drop(&mut self) {
        let name = self.subsystem.file_name().map(|n| n.to_owned());
        for port in &self.ports {
            if let Some(n) = &name {
                let _ = std::fs::remove_file(port.join("subsystems").join(n));
            }
            let _ = std::fs::remove_dir(port);
        }
        if let Ok(entries) = std::fs::read_dir(self.subsystem.join("namespaces")) {
            for e in entries.flatten() {
                let _ = std::fs::write(e.path().join("enable"), "0");
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.subsystem);
    }
}
