//! From samples to rows: medians over the repetitions of each side, the
//! ratios ours/kernel, and the table in Markdown.

use serde::Serialize;

use crate::matrix::{Mode, Sample, SampleSet};

/// The medians of one side of one row.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Repetitions that produced numbers.
    pub reps: usize,
    /// I/Os per second.
    pub iops: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// CPU seconds per million I/Os, as the run's [`CpuMeasure`] counts
    /// them.
    pub cpu_s_per_mio: f64,
    /// CPU seconds per million I/Os by the guest's own clock (its
    /// `/proc/stat` busy time); natively the same as `cpu_s_per_mio`.
    pub guest_busy_s_per_mio: f64,
    /// Our target process's CPU microseconds per I/O (ours only).
    pub target_us_per_io: Option<f64>,
}

/// One side's result: numbers, or why there are none.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Medians.
    Figures(Figures),
    /// The transport is not available in this build.
    Unavailable(String),
    /// Every repetition failed.
    Failed(String),
    /// Not run in this mode.
    NotRun,
}

impl Outcome {
    fn figures(&self) -> Option<&Figures> {
        match self {
            Outcome::Figures(f) => Some(f),
            _ => None,
        }
    }
}

/// One row: a transport, backend, workload and client, both sides.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// tcp or rdma.
    pub transport: String,
    /// Backend.
    pub backend: String,
    /// Workload label.
    pub case: String,
    /// Client.
    pub client: String,
    /// Our target.
    pub ours: Outcome,
    /// The kernel target.
    pub kernel: Outcome,
    /// IOPS ours / kernel.
    pub iops_ratio: Option<f64>,
    /// IOPS per CPU second, ours / kernel.
    pub iops_per_cpu_ratio: Option<f64>,
    /// The same by the guest's own clock (differs only when the run's
    /// measure is [`CpuMeasure::VcpuThreads`]).
    pub iops_per_guest_busy_ratio: Option<f64>,
    /// p99 latency ours / kernel (below 1: ours is faster).
    pub p99_ratio: Option<f64>,
}

/// fabric-perf's IOPS over fio's for one workload, on each target: whether
/// the load generator keeps up with the Linux host.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClientRatio {
    /// tcp or rdma.
    pub transport: String,
    /// Backend.
    pub backend: String,
    /// Workload label.
    pub case: String,
    /// On our target.
    pub ours: Option<f64>,
    /// On the kernel target.
    pub kernel: Option<f64>,
}

/// What a run's CPU figures count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuMeasure {
    /// The guest's vCPU threads' run time on the machine running QEMU
    /// (`ci/guest-run`'s count, known for every sample of the run).
    VcpuThreads,
    /// The guest's busy time from its own `/proc/stat` (ticks: it misses
    /// part of the vCPUs' run time).
    GuestBusy,
    /// Natively: our target's plus fabric-perf's process time (the
    /// machine is shared with other work).
    Processes,
}

impl CpuMeasure {
    /// What it counts, for the line under the table.
    fn describe(self) -> &'static str {
        match self {
            CpuMeasure::VcpuThreads => "the run time of the guest's vCPU threads (in split and pair modes, the targets' guest's) on the machine running QEMU, counted by `ci/guest-run`; the last column is the ratio by the guest's own count (busy ticks in its `/proc/stat`), which misses part of that time",
            CpuMeasure::GuestBusy => "the guest's busy time from its own `/proc/stat`",
            CpuMeasure::Processes => "our target's plus fabric-perf's process time",
        }
    }
}

/// All rows of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Where it ran.
    pub mode: Mode,
    /// What its CPU figures count.
    pub cpu_measure: CpuMeasure,
    /// Rows in the order they ran.
    pub rows: Vec<Row>,
    /// fabric-perf against fio, for the workloads both ran.
    pub clients: Vec<ClientRatio>,
}

/// fabric-perf / fio IOPS for every workload that has both clients' rows.
fn client_ratios(rows: &[Row]) -> Vec<ClientRatio> {
    let iops = |o: &Outcome| o.figures().map(|f| f.iops);
    rows.iter()
        .filter(|r| r.client == "fabric-perf")
        .filter_map(|fp| {
            let fio = rows.iter().find(|r| {
                r.client == "fio"
                    && r.transport == fp.transport
                    && r.backend == fp.backend
                    && r.case == fp.case
            })?;
            let side = |a: &Outcome, b: &Outcome| ratio(iops(a)?, iops(b)?);
            Some(ClientRatio {
                transport: fp.transport.clone(),
                backend: fp.backend.clone(),
                case: fp.case.clone(),
                ours: side(&fp.ours, &fio.ours),
                kernel: side(&fp.kernel, &fio.kernel),
            })
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn cpu_s(measure: CpuMeasure, s: &Sample) -> f64 {
    match measure {
        CpuMeasure::VcpuThreads => s.vcpu_s.unwrap_or(0.0),
        CpuMeasure::GuestBusy => s.system_busy_s,
        CpuMeasure::Processes => s.target_cpu_s.unwrap_or(0.0) + s.client_cpu_s.unwrap_or(0.0),
    }
}

fn guest_busy_s(measure: CpuMeasure, s: &Sample) -> f64 {
    match measure {
        CpuMeasure::Processes => cpu_s(measure, s),
        CpuMeasure::VcpuThreads | CpuMeasure::GuestBusy => s.system_busy_s,
    }
}

/// The vCPU threads' count when every sample with numbers has it (one
/// measure for the whole run), else the guest's own.
fn cpu_measure(set: &SampleSet) -> CpuMeasure {
    match set.mode {
        Mode::Native => CpuMeasure::Processes,
        Mode::Guest | Mode::Split | Mode::Pair => {
            let mut ok = set.samples.iter().filter(|s| s.error.is_none()).peekable();
            if ok.peek().is_some() && ok.all(|s| s.vcpu_s.is_some()) {
                CpuMeasure::VcpuThreads
            } else {
                CpuMeasure::GuestBusy
            }
        }
    }
}

fn outcome(measure: CpuMeasure, samples: &[&Sample]) -> Outcome {
    let ok: Vec<&&Sample> = samples
        .iter()
        .filter(|s| s.error.is_none() && s.ios > 0)
        .collect();
    if ok.is_empty() {
        let first = samples.iter().find_map(|s| s.error.clone());
        return match first {
            None => Outcome::NotRun,
            Some(e) if samples.iter().any(|s| s.unavailable) => Outcome::Unavailable(e),
            Some(e) => Outcome::Failed(e),
        };
    }
    let m = |f: &dyn Fn(&Sample) -> f64| median(ok.iter().map(|s| f(s)).collect());
    let target_us: Vec<f64> = ok
        .iter()
        .filter_map(|s| s.target_cpu_s.map(|c| c * 1e6 / s.ios as f64))
        .collect();
    Outcome::Figures(Figures {
        reps: ok.len(),
        iops: m(&|s| s.iops),
        p50_us: m(&|s| s.p50_us),
        p99_us: m(&|s| s.p99_us),
        cpu_s_per_mio: m(&|s| cpu_s(measure, s) * 1e6 / s.ios as f64),
        guest_busy_s_per_mio: m(&|s| guest_busy_s(measure, s) * 1e6 / s.ios as f64),
        target_us_per_io: (!target_us.is_empty()).then(|| median(target_us)),
    })
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// Group the samples into rows (in the order they first ran) and take medians.
pub fn summarize(set: &SampleSet) -> Summary {
    let measure = cpu_measure(set);
    let mut keys: Vec<(String, String, String, String)> = Vec::new();
    for s in &set.samples {
        let k = (
            s.transport.clone(),
            s.backend.clone(),
            s.case.clone(),
            s.client.clone(),
        );
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let rows = keys
        .into_iter()
        .map(|(transport, backend, case, client)| {
            let side = |name: &str| {
                let of: Vec<&Sample> = set
                    .samples
                    .iter()
                    .filter(|s| {
                        s.transport == transport
                            && s.backend == backend
                            && s.case == case
                            && s.client == client
                            && s.side == name
                    })
                    .collect();
                outcome(measure, &of)
            };
            let (ours, kernel) = (side("ours"), side("kernel"));
            let (o, k) = (ours.figures(), kernel.figures());
            let both = |f: &dyn Fn(&Figures, &Figures) -> Option<f64>| match (o, k) {
                (Some(o), Some(k)) => f(o, k),
                _ => None,
            };
            Row {
                iops_ratio: both(&|o, k| ratio(o.iops, k.iops)),
                iops_per_cpu_ratio: both(&|o, k| ratio(k.cpu_s_per_mio, o.cpu_s_per_mio)),
                iops_per_guest_busy_ratio: both(&|o, k| {
                    ratio(k.guest_busy_s_per_mio, o.guest_busy_s_per_mio)
                }),
                p99_ratio: both(&|o, k| ratio(o.p99_us, k.p99_us)),
                transport,
                backend,
                case,
                client,
                ours,
                kernel,
            }
        })
        .collect::<Vec<Row>>();
    Summary {
        mode: set.mode,
        cpu_measure: measure,
        clients: client_ratios(&rows),
        rows,
    }
}

/// Rows without numbers where numbers were due (unavailable transports
/// excepted): the CI check.
pub fn missing(summary: &Summary) -> Vec<String> {
    let mut out = Vec::new();
    for r in &summary.rows {
        let sides: &[(&str, &Outcome)] = match summary.mode {
            Mode::Guest | Mode::Split | Mode::Pair => &[("ours", &r.ours), ("kernel", &r.kernel)],
            Mode::Native => &[("ours", &r.ours)],
        };
        for (name, o) in sides {
            let why = match o {
                Outcome::Figures(f) if f.iops > 0.0 && f.p50_us > 0.0 && f.cpu_s_per_mio > 0.0 => {
                    continue
                }
                Outcome::Unavailable(_) => continue,
                Outcome::Figures(f) => format!("incomplete figures {f:?}"),
                Outcome::Failed(e) => e.clone(),
                Outcome::NotRun => "not run".to_string(),
            };
            out.push(format!(
                "{} {} {} {} {name}: {why}",
                r.transport, r.backend, r.case, r.client
            ));
        }
    }
    out
}

/// Whether any side of any row has figures (something to chart).
pub fn has_figures(summary: &Summary) -> bool {
    summary
        .rows
        .iter()
        .any(|r| matches!(r.ours, Outcome::Figures(_)) || matches!(r.kernel, Outcome::Figures(_)))
}

/// Rows with a side whose transport is unavailable in this build or on
/// this machine (RDMA natively).
pub fn unavailable_rows(summary: &Summary) -> usize {
    summary
        .rows
        .iter()
        .filter(|r| {
            matches!(r.ours, Outcome::Unavailable(_)) || matches!(r.kernel, Outcome::Unavailable(_))
        })
        .count()
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(o: &Outcome, f: impl Fn(&Figures) -> f64) -> String {
    match o {
        Outcome::Figures(x) => num(f(x)),
        Outcome::Unavailable(_) => "unavail.".into(),
        Outcome::Failed(_) => "failed".into(),
        Outcome::NotRun => "-".into(),
    }
}

fn ratio_cell(r: Option<f64>) -> String {
    r.map_or("-".into(), |v| format!("{v:.2}"))
}

/// The table in Markdown, with the reasons for missing numbers below it.
pub fn markdown(summary: &Summary) -> String {
    let mut out = String::new();
    match summary.mode {
        Mode::Guest | Mode::Split | Mode::Pair => {
            let by_vcpus = summary.cpu_measure == CpuMeasure::VcpuThreads;
            out += "| transport | backend | workload | client | IOPS ours | IOPS kernel | IOPS ratio | p50 µs ours / kernel | p99 µs ours / kernel | CPU s/M I/O ours / kernel | IOPS per CPU ratio |";
            out += if by_vcpus {
                " by the guest's clock |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
            } else {
                "\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
            };
            for r in &summary.rows {
                out += &format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} | {} |",
                    r.transport,
                    r.backend,
                    r.case,
                    r.client,
                    cell(&r.ours, |f| f.iops),
                    cell(&r.kernel, |f| f.iops),
                    ratio_cell(r.iops_ratio),
                    cell(&r.ours, |f| f.p50_us),
                    cell(&r.kernel, |f| f.p50_us),
                    cell(&r.ours, |f| f.p99_us),
                    cell(&r.kernel, |f| f.p99_us),
                    cell(&r.ours, |f| f.cpu_s_per_mio),
                    cell(&r.kernel, |f| f.cpu_s_per_mio),
                    ratio_cell(r.iops_per_cpu_ratio),
                );
                if by_vcpus {
                    out += &format!(" {} |", ratio_cell(r.iops_per_guest_busy_ratio));
                }
                out.push('\n');
            }
        }
        Mode::Native => {
            out += "| transport | backend | workload | client | IOPS | p50 µs | p99 µs | fabricd CPU µs/I/O | fabricd + fabric-perf CPU s/M I/O |\n";
            out += "|---|---|---|---|---:|---:|---:|---:|---:|\n";
            for r in &summary.rows {
                out += &format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    r.transport,
                    r.backend,
                    r.case,
                    r.client,
                    cell(&r.ours, |f| f.iops),
                    cell(&r.ours, |f| f.p50_us),
                    cell(&r.ours, |f| f.p99_us),
                    cell(&r.ours, |f| f.target_us_per_io.unwrap_or(0.0)),
                    cell(&r.ours, |f| f.cpu_s_per_mio),
                );
            }
        }
    }
    out += &format!("\nCPU: {}.\n", summary.cpu_measure.describe());
    if summary.mode == Mode::Guest && !summary.clients.is_empty() {
        out += "\nfabric-perf against fio on the same target (IOPS fabric-perf / fio):\n\n";
        out += "| transport | backend | workload | on ours | on the kernel target |\n";
        out += "|---|---|---|---:|---:|\n";
        for c in &summary.clients {
            out += &format!(
                "| {} | {} | {} | {} | {} |\n",
                c.transport,
                c.backend,
                c.case,
                ratio_cell(c.ours),
                ratio_cell(c.kernel)
            );
        }
    }
    let mut notes: Vec<String> = Vec::new();
    for r in &summary.rows {
        for (side, o) in [("ours", &r.ours), ("kernel", &r.kernel)] {
            if let Outcome::Unavailable(e) | Outcome::Failed(e) = o {
                let line = format!("{} {side}: {e}", r.transport);
                if !notes.contains(&line) {
                    notes.push(line);
                }
            }
        }
    }
    for n in notes {
        out += &format!("\n* {n}");
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(side: &str, rep: u32, iops: f64, busy: f64) -> Sample {
        Sample {
            transport: "tcp".into(),
            backend: "null".into(),
            case: "4k randread QD1".into(),
            client: "fio".into(),
            side: side.into(),
            rep,
            ios: (iops * 10.0) as u64,
            iops,
            p50_us: 100.0,
            p99_us: if side == "ours" { 200.0 } else { 400.0 },
            system_busy_s: busy,
            ..Default::default()
        }
    }

    fn set(samples: Vec<Sample>) -> SampleSet {
        SampleSet {
            mode: Mode::Guest,
            kernel: "6.1".into(),
            cpus: 2,
            seconds: 10.0,
            reps: 3,
            samples,
        }
    }

    #[test]
    fn medians_and_ratios() {
        let s = set(vec![
            sample("ours", 0, 3000.0, 10.0),
            sample("kernel", 0, 1000.0, 10.0),
            sample("ours", 1, 1000.0, 10.0),
            sample("kernel", 1, 2000.0, 10.0),
            sample("ours", 2, 2000.0, 10.0),
            sample("kernel", 2, 1500.0, 10.0),
        ]);
        let sum = summarize(&s);
        assert_eq!(sum.rows.len(), 1);
        let r = &sum.rows[0];
        assert!((r.iops_ratio.unwrap() - 2000.0 / 1500.0).abs() < 1e-9);
        // CPU per I/O: ours 10 s / 20000 ios (median), kernel 10 s / 15000.
        assert!((r.iops_per_cpu_ratio.unwrap() - 2000.0 / 1500.0).abs() < 1e-9);
        assert!((r.p99_ratio.unwrap() - 0.5).abs() < 1e-9);
        assert!(missing(&sum).is_empty());
        let md = markdown(&sum);
        assert!(
            md.contains("| tcp | null | 4k randread QD1 | fio | 2000 | 1500 | 1.33 |"),
            "{md}"
        );
    }

    #[test]
    fn failures_and_unavailable_sides() {
        let mut ours = sample("ours", 0, 0.0, 0.0);
        ours.error = Some("no RDMA device found".into());
        ours.unavailable = true;
        ours.transport = "rdma".into();
        let mut kernel = sample("kernel", 0, 1000.0, 1.0);
        kernel.transport = "rdma".into();
        let mut broken = sample("kernel", 0, 0.0, 0.0);
        broken.error = Some("fio exited 1".into());
        let sum = summarize(&set(vec![
            ours,
            kernel,
            sample("ours", 0, 10.0, 1.0),
            broken,
        ]));
        assert_eq!(sum.rows.len(), 2);
        assert!(matches!(sum.rows[0].ours, Outcome::Unavailable(_)));
        assert_eq!(sum.rows[0].iops_ratio, None);
        assert!(matches!(sum.rows[1].kernel, Outcome::Failed(_)));
        let m = missing(&sum);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].contains("fio exited 1"));
        let md = markdown(&sum);
        assert!(md.contains("unavail."), "{md}");
        assert!(md.contains("* rdma ours: no RDMA device found"), "{md}");
    }

    #[test]
    fn vcpu_threads_count_when_every_sample_has_them() {
        let with = |mut s: Sample, v: f64| {
            s.vcpu_s = Some(v);
            s
        };
        // Guest clock: ours 10 s, kernel 5 s for the same I/Os; the host
        // counted 4 s and 5 s.
        let both = set(vec![
            with(sample("ours", 0, 1000.0, 10.0), 4.0),
            with(sample("kernel", 0, 1000.0, 5.0), 5.0),
        ]);
        let sum = summarize(&both);
        assert_eq!(sum.cpu_measure, CpuMeasure::VcpuThreads);
        let r = &sum.rows[0];
        assert!((r.iops_per_cpu_ratio.unwrap() - 1.25).abs() < 1e-9);
        assert!((r.iops_per_guest_busy_ratio.unwrap() - 0.5).abs() < 1e-9);
        let md = markdown(&sum);
        assert!(md.contains("| 1.25 | 0.50 |"), "{md}");
        assert!(
            md.contains("CPU: the run time of the guest's vCPU threads"),
            "{md}"
        );
        // One sample without the host's count: the guest's clock for all.
        let mixed = set(vec![
            with(sample("ours", 0, 1000.0, 10.0), 4.0),
            sample("kernel", 0, 1000.0, 5.0),
        ]);
        let sum = summarize(&mixed);
        assert_eq!(sum.cpu_measure, CpuMeasure::GuestBusy);
        assert!((sum.rows[0].iops_per_cpu_ratio.unwrap() - 0.5).abs() < 1e-9);
        assert!(!markdown(&sum).contains("by the guest's clock"));
    }

    #[test]
    fn fabric_perf_is_compared_with_fio_on_each_target() {
        let fp = |mut s: Sample| {
            s.client = "fabric-perf".into();
            s
        };
        let sum = summarize(&set(vec![
            sample("ours", 0, 1000.0, 1.0),
            sample("kernel", 0, 2000.0, 1.0),
            fp(sample("ours", 0, 1500.0, 1.0)),
            fp(sample("kernel", 0, 1000.0, 1.0)),
        ]));
        assert_eq!(sum.clients.len(), 1);
        let c = &sum.clients[0];
        assert_eq!((c.ours, c.kernel), (Some(1.5), Some(0.5)));
        let md = markdown(&sum);
        assert!(
            md.contains("| tcp | null | 4k randread QD1 | 1.50 | 0.50 |"),
            "{md}"
        );
    }

    #[test]
    fn even_median() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
