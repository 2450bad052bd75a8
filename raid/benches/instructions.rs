//! Instructions per 4 KiB random I/O of raid1 and thin, against the same
//! I/O done on the members directly, counted by callgrind.
//!
//! Time on a shared machine swings with the other tenants; an instruction
//! count does not. Run: `cargo bench -p raid --bench instructions`. The
//! binary runs itself again under `valgrind --tool=callgrind`, which dumps
//! its counters before and after every call of [`measured`]: the dump
//! taken after a call holds exactly that call's instructions. All cases run
//! in the same process. It prints instructions per I/O and each case's
//! ratio to its peer, the same I/O on plain members: a write goes to both
//! members (the two futures joined), a read to one. The goal (issue 5):
//! raid1 + thin over two memory members below 1.10 of the peer. The
//! `floor` cases put two layers that only forward each call over the same
//! members: the least any two layers cost under the `BlockDevice` trait.
//!
//! Each case issues `RAID_BENCH_IOS` (default 20000) I/Os one after the
//! other (queue depth 1) on one single-threaded tokio runtime, at random
//! block addresses of fully written memory devices, after a warm-up of a
//! tenth as many; every device is called through `&dyn BlockDevice`.
//! `RAID_BENCH_ONLY=name,name` runs only the named cases (for profiling
//! with `callgrind_annotate`).

mod common;

use std::process::Command;

use common::{build, mem, Lbas, Stacks, BS, VOLUME};
use raid::{buf, DeviceRef};
use tokio::runtime::Runtime;

/// Set in the child that runs under callgrind.
const CHILD: &str = "RAID_BENCH_CALLGRIND_CHILD";

/// Issues the given number of I/Os.
type Workload<'a> = Box<dyn FnMut(u64) + 'a>;

/// Everything counted for a case happens inside this call.
#[inline(never)]
fn measured(run: &mut dyn FnMut(u64), ios: u64) {
    run(std::hint::black_box(ios));
}

fn writes<'a>(rt: &'a Runtime, devs: Vec<DeviceRef>) -> Workload<'a> {
    let data = buf::aligned(&[0xC3; BS]);
    let blocks = VOLUME / BS as u64;
    let mut lbas = Lbas(0x9E37_79B9_7F4A_7C15);
    Box::new(move |ios| {
        rt.block_on(async {
            for _ in 0..ios {
                let lba = lbas.next(blocks);
                if let [a, b] = &devs[..] {
                    let (x, y) = tokio::join!(
                        a.as_ref().write(lba, data.clone()),
                        b.as_ref().write(lba, data.clone())
                    );
                    x.and(y).unwrap();
                } else {
                    devs[0].as_ref().write(lba, data.clone()).await.unwrap();
                }
            }
        })
    })
}

fn reads(rt: &Runtime, dev: DeviceRef) -> Workload<'_> {
    let blocks = VOLUME / BS as u64;
    let mut lbas = Lbas(0x9E37_79B9_7F4A_7C15);
    let mut buf = Some(buf::alloc(BS));
    Box::new(move |ios| {
        rt.block_on(async {
            let mut b = buf.take().expect("buffer");
            for _ in 0..ios {
                b = dev.as_ref().read(lbas.next(blocks), b).await.unwrap();
            }
            buf = Some(b);
        })
    })
}

/// (name, peer, workload) of every case over `s`.
fn cases<'a>(rt: &'a Runtime, s: &Stacks) -> Vec<(&'static str, &'static str, Workload<'a>)> {
    let [m0, m1] = s.members.clone();
    let (w2, w1, r1) = (
        "direct/two_members_write",
        "direct/one_member_write",
        "direct/one_member_read",
    );
    vec![
        (w2, "", writes(rt, vec![m0.clone(), m1])),
        (w1, "", writes(rt, vec![m0.clone()])),
        (r1, "", reads(rt, m0)),
        ("raid1/write", w2, writes(rt, vec![s.raid1.clone()])),
        ("thin/write", w1, writes(rt, vec![s.thin.clone()])),
        (
            "raid1_thin/write",
            w2,
            writes(rt, vec![s.raid1_thin.clone()]),
        ),
        ("raid1/read", r1, reads(rt, s.raid1.clone())),
        ("thin/read", r1, reads(rt, s.thin.clone())),
        ("raid1_thin/read", r1, reads(rt, s.raid1_thin.clone())),
        ("floor/write", w2, writes(rt, vec![s.floor.clone()])),
        ("floor/read", r1, reads(rt, s.floor.clone())),
    ]
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Under callgrind: run the cases, printing `name peer ios` for each in
/// the order of its dumps.
fn child() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ios: u64 = env_or("RAID_BENCH_IOS", 20_000);
    let only: String = env_or("RAID_BENCH_ONLY", String::new());
    let stacks = rt.block_on(build(mem));
    for (name, peer, mut run) in cases(&rt, &stacks) {
        if !only.is_empty() && !only.split(',').any(|o| o == name) {
            continue;
        }
        run(ios / 10);
        measured(&mut run, ios);
        let peer = if peer.is_empty() { "-" } else { peer };
        println!("{name} {peer} {ios}");
    }
}

/// The instruction count (`Ir`) of one callgrind dump.
fn instructions(file: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with("totals:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn parent() {
    let dir = std::env::temp_dir().join(format!("raid-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let out = dir.join("callgrind.out").display().to_string();
    let run = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={out}"))
        .args(["--dump-before=*::measured", "--dump-after=*::measured"])
        .arg(std::env::current_exe().expect("own executable"))
        .env(CHILD, "1")
        .output();
    let run = match run {
        Ok(r) if r.status.success() => r,
        Ok(r) => panic!(
            "callgrind run failed: {}",
            String::from_utf8_lossy(&r.stderr)
        ),
        Err(e) => {
            println!("cannot run valgrind ({e}); nothing measured");
            return;
        }
    };
    let mut rows: Vec<(String, String, f64)> = Vec::new();
    for (i, line) in String::from_utf8_lossy(&run.stdout).lines().enumerate() {
        let f: Vec<&str> = line.split(' ').collect();
        let [name, peer, ios] = f[..] else {
            panic!("unexpected line from the child: {line}");
        };
        // Dumps come in pairs per case: before (set-up) and after (the case).
        let dump = format!("{out}.{}", 2 * i + 2);
        let ir = instructions(&dump).unwrap_or_else(|| panic!("no count in {dump}"));
        let ios: f64 = ios.parse().expect("I/O count");
        rows.push((name.into(), peer.into(), ir as f64 / ios));
    }
    println!(
        "{:<26} {:>10} {:>8} {:>9}",
        "case", "Ir per IO", "vs peer", "added Ir"
    );
    for (name, peer, ir) in &rows {
        match rows.iter().find(|(n, _, _)| n == peer) {
            Some((_, _, p)) => println!("{name:<26} {ir:>10.0} {:>8.3} {:>+9.0}", ir / p, ir - p),
            None => println!("{name:<26} {ir:>10.0} {:>8}", "peer"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        child();
    } else {
        parent();
    }
}
