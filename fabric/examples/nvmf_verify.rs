//! Connect to an NVMe-oF subsystem with the fabric host library (TCP or
//! RDMA), write patterns of several sizes across a namespace, read them
//! back and compare. Exits non-zero on any error or mismatch. Used by the
//! guest tier for interoperability with the Linux kernel target and for our
//! own host against our own target.
//!
//! usage: nvmf_verify ADDRESS NQN [NSID] [ROUNDS] [QUEUE_SIZE]  (a QUEUE_SIZE given is asked for as is, above the controller's limit too)
//!   e.g. nvmf_verify rdma://10.77.0.1:4420 nqn.2026-11.io.fabric:target 1 64

use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use fabric::host::{HostController, HostOptions};
use fabric::target::PortAddress;
use raid::{buf, BlockDevice};

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        bail!("usage: nvmf_verify ADDRESS NQN [NSID] [ROUNDS] [QUEUE_SIZE]");
    }
    let address: PortAddress = args[1].parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let nqn = &args[2];
    let nsid: u32 = args.get(3).map_or(Ok(1), |s| s.parse()).context("NSID")?;
    let rounds: u64 = args
        .get(4)
        .map_or(Ok(32), |s| s.parse())
        .context("ROUNDS")?;
    let queue_size: u16 = args
        .get(5)
        .map_or(Ok(32), |s| s.parse())
        .context("QUEUE_SIZE")?;
    anyhow::ensure!(queue_size >= 2, "QUEUE_SIZE must be at least 2");
    let opts = HostOptions {
        io_queues: 2,
        queue_size,
        // A size given is asked for as is: the guest tier checks that a
        // target refuses one above its limit.
        queue_size_exact: args.get(5).is_some(),
        ..Default::default()
    };
    let ctrl = HostController::connect(&address, nqn, &opts)
        .await
        .with_context(|| format!("connect to {nqn} at {address}"))?;
    println!(
        "connected: cntlid {} model {:?} mdts {:?} io queues {}",
        ctrl.cntlid,
        ctrl.identify.model,
        ctrl.identify.max_transfer_bytes(),
        ctrl.io_queue_count()
    );
    let ns = Arc::new(ctrl.namespace(nsid).await.context("identify namespace")?);
    let bs = ns.block_size() as u64;
    let blocks = ns.num_blocks();
    println!("namespace {nsid}: {blocks} blocks of {bs} bytes");
    let sizes = [bs as usize, 16 * 1024, 128 * 1024, 1 << 20];
    let mut tasks = Vec::new();
    for r in 0..rounds {
        let ns = ns.clone();
        let len = sizes[(r % sizes.len() as u64) as usize].max(bs as usize);
        // Each round owns its own 1 MiB area, so concurrent rounds never overlap.
        let area = ((1u64 << 20) / bs).max(1);
        let lba = (r * area) % (blocks - blocks % area).max(area);
        tasks.push(tokio::spawn(async move {
            let data = pattern(r, len);
            ns.write(lba, Bytes::from(data.clone())).await?;
            let back = ns.read(lba, buf::alloc(len)).await?;
            anyhow::Ok((lba, back[..] == data[..]))
        }));
    }
    let mut bad = 0;
    for t in tasks {
        let (lba, ok) = t.await??;
        if !ok {
            eprintln!("mismatch at LBA {lba}");
            bad += 1;
        }
    }
    ns.flush().await?;
    let (_, groups) = ctrl.ana_log().await.unwrap_or_default();
    ctrl.disconnect().await;
    if bad > 0 {
        bail!("{bad} of {rounds} transfers read back wrong data");
    }
    println!("verified {rounds} transfers ({} ANA groups)", groups.len());
    Ok(())
}
