//! CPU cost per 4 KiB random I/O of raid1 and thin over memory devices,
//! against writing the members directly.
//!
//! Every case runs on one single-threaded tokio runtime, and the time
//! reported is this thread's CPU time (from /proc/thread-self/schedstat,
//! falling back to wall time), so other load on a shared machine does not
//! count. Each iteration issues a batch of sequential (queue depth 1) I/Os
//! at random block addresses; the devices are fully written beforehand, so
//! no case allocates memory or thin blocks while measured. The goal: raid1
//! plus thin over two members within 10% of `direct/two_members_write`.
//! Time still moves with the other tenants' cache pressure; the
//! `instructions` bench counts instructions instead, which does not.
//!
//! Every case calls its device through `&dyn BlockDevice` (the cheapest
//! way in, without the forwarding impl for `Arc`).
//!
//! At the end a paired run alternates the baseline and raid1 + thin in long
//! batches and prints the median CPU-time ratio.
//!
//! Run: `cargo bench -p raid --bench overhead`.

mod common;

use std::time::{Duration, Instant};

use common::{build, fill, mem, null, raid1_over, thin_over, Lbas, BS, VOLUME};
use criterion::{criterion_group, Criterion, SamplingMode, Throughput};
use raid::{buf, DeviceRef};
use tokio::runtime::Runtime;

const BATCH: u64 = 256;

/// CPU time of the calling thread, if the kernel tells.
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Run `f` `iters` times; CPU time taken (wall time without schedstat).
fn measure(iters: u64, mut f: impl FnMut()) -> Duration {
    let (cpu, wall) = (thread_cpu(), Instant::now());
    for _ in 0..iters {
        f();
    }
    match (cpu, thread_cpu()) {
        (Some(a), Some(b)) => b - a,
        _ => wall.elapsed(),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(build(mem));
    let blocks = VOLUME / BS as u64;
    let data = buf::aligned(&[0xC3; BS]);
    let mut g = c.benchmark_group("4k_random");
    g.throughput(Throughput::Elements(BATCH));
    // schedstat moves in scheduler ticks: long, equal samples keep that
    // granularity under 2%.
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .measurement_time(Duration::from_secs(6));

    let writes = |rt: &Runtime, dev: &DeviceRef, lbas: &mut Lbas| {
        rt.block_on(async {
            for _ in 0..BATCH {
                dev.as_ref()
                    .write(lbas.next(blocks), data.clone())
                    .await
                    .unwrap();
            }
        })
    };
    let reads = |rt: &Runtime, dev: &DeviceRef, lbas: &mut Lbas| {
        rt.block_on(async {
            let mut b = buf::alloc(BS);
            for _ in 0..BATCH {
                b = dev.as_ref().read(lbas.next(blocks), b).await.unwrap();
            }
        })
    };

    let mut lbas = Lbas(0x9E37_79B9_7F4A_7C15);
    g.bench_function("direct/two_members_write", |b| {
        b.iter_custom(|n| {
            measure(n, || {
                rt.block_on(async {
                    for _ in 0..BATCH {
                        let lba = lbas.next(blocks);
                        let (x, y) = tokio::join!(
                            s.members[0].as_ref().write(lba, data.clone()),
                            s.members[1].as_ref().write(lba, data.clone())
                        );
                        x.unwrap();
                        y.unwrap();
                    }
                })
            })
        })
    });
    g.bench_function("raid1/write", |b| {
        b.iter_custom(|n| measure(n, || writes(&rt, &s.raid1, &mut lbas)))
    });
    g.bench_function("thin/write", |b| {
        b.iter_custom(|n| measure(n, || writes(&rt, &s.thin, &mut lbas)))
    });
    g.bench_function("raid1_thin/write", |b| {
        b.iter_custom(|n| measure(n, || writes(&rt, &s.raid1_thin, &mut lbas)))
    });
    g.bench_function("direct/one_member_read", |b| {
        b.iter_custom(|n| measure(n, || reads(&rt, &s.members[0], &mut lbas)))
    });
    g.bench_function("raid1/read", |b| {
        b.iter_custom(|n| measure(n, || reads(&rt, &s.raid1, &mut lbas)))
    });
    g.bench_function("raid1_thin/read", |b| {
        b.iter_custom(|n| measure(n, || reads(&rt, &s.raid1_thin, &mut lbas)))
    });
    g.finish();
}

/// Same-run A/B comparison for the goal: alternate long batches of writes
/// to both members directly and of writes through raid1 + thin over two
/// such members, and report the median of the per-round CPU-time ratios
/// (drift on a shared machine cancels out within a round). Rounds last
/// several hundred milliseconds: schedstat moves in scheduler ticks. Over memory
/// members this is the goal's ratio; over null members (no data copied)
/// the difference is the CPU the layers themselves add per I/O.
fn paired(label: &str, members: [DeviceRef; 2], stack: DeviceRef, ios: u64) {
    const ROUNDS: usize = 21;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let blocks = VOLUME / BS as u64;
    let data = buf::aligned(&[0xC3; BS]);
    let mut lbas = Lbas(0x2545_F491_4F6C_DD1D);
    let mut direct = Vec::new();
    let mut layered = Vec::new();
    for _ in 0..ROUNDS {
        direct.push(measure(1, || {
            rt.block_on(async {
                for _ in 0..ios {
                    let lba = lbas.next(blocks);
                    let (x, y) = tokio::join!(
                        members[0].as_ref().write(lba, data.clone()),
                        members[1].as_ref().write(lba, data.clone())
                    );
                    x.unwrap();
                    y.unwrap();
                }
            })
        }));
        layered.push(measure(1, || {
            rt.block_on(async {
                for _ in 0..ios {
                    let lba = lbas.next(blocks);
                    stack.as_ref().write(lba, data.clone()).await.unwrap();
                }
            })
        }));
    }
    let per_io = |d: &Duration| d.as_nanos() as f64 / ios as f64;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let ratios = direct
        .iter()
        .zip(&layered)
        .map(|(d, l)| per_io(l) / per_io(d))
        .collect();
    let (d, _, _) = median(direct.iter().map(per_io).collect());
    let (l, _, _) = median(layered.iter().map(per_io).collect());
    let (r, rmin, rmax) = median(ratios);
    println!(
        "paired {label}: {ROUNDS} rounds of {ios} 4k random writes; direct to both members {d:.0} ns/IO, raid1+thin {l:.0} ns/IO (+{:.0} ns); ratio median {r:.3} (min {rmin:.3}, max {rmax:.3})",
        l - d
    );
}

fn paired_runs() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(build(mem));
    paired(
        "memory members",
        s.members.clone(),
        s.raid1_thin.clone(),
        1 << 19,
    );
    drop(s);
    let stack = rt.block_on(async {
        let stack = thin_over(raid1_over(null).await).await;
        fill(&*stack).await;
        stack
    });
    paired("null members", [null(VOLUME), null(VOLUME)], stack, 1 << 22);
}

criterion_group!(benches, bench);

fn main() {
    benches();
    paired_runs();
    Criterion::default().configure_from_args().final_summary();
}
