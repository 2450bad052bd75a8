//! The load generator: connect to a controller, keep `iodepth` I/Os in
//! flight on each I/O queue, and measure.
//!
//! One task per queue issues raw Read and Write commands straight on its
//! queue (no block-device layer, no copies: writes send one shared buffer)
//! and keeps its own histograms, merged at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fabric::host::{rw_command, HostController, HostOptions};
use fabric::target::{PortAddress, TransportKind};
use fabric::transport::{CommandResult, HostData, HostQueue, TransportError};
use fabric::wire::log_page::subtype;
use fabric::wire::opcode::io;
use fabric::wire::status::Status;
use fabric::wire::tcp::Digests;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinHandle;

use crate::cpu;
use crate::pattern;
use crate::report::{CpuReport, DirectionReport, RunReport, RunSetup, VerifyReport};
use crate::stats::IoStats;
use crate::workload::{Direction, OpStream, Workload};

/// Deepest queue a run may ask for (queue entries are at most 1024).
pub const MAX_IODEPTH: u32 = 1023;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Target address.
    pub address: PortAddress,
    /// Subsystem NQN; `None`: the first NVM subsystem in the discovery log.
    pub nqn: Option<String>,
    /// Namespace ID.
    pub nsid: u32,
    /// Access pattern.
    pub workload: Workload,
    /// Reads in percent for randrw.
    pub read_mix: u8,
    /// Bytes per I/O.
    pub io_size: u64,
    /// Outstanding I/Os per queue.
    pub iodepth: u32,
    /// I/O queues (one connection each).
    pub queues: u16,
    /// Measured time; `None` with `ios`: until that many I/Os.
    pub time: Option<Duration>,
    /// Measured I/Os to issue (all queues together).
    pub ios: Option<u64>,
    /// Time run before measuring.
    pub ramp: Duration,
    /// Write a pattern, check every read of written blocks and read every
    /// written block back at the end.
    pub verify: bool,
    /// Start of the region used, in bytes.
    pub offset: u64,
    /// Length of the region; `None`: to the end of the namespace.
    pub size: Option<u64>,
    /// Host NQN; `None`: a random UUID NQN.
    pub hostnqn: Option<String>,
    /// NVMe/TCP header and data digests.
    pub digests: bool,
    /// Seed of offsets and of the verify pattern.
    pub seed: u64,
    /// TCP: how long a queue waiting for responses reads without sleeping.
    pub poll: Duration,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    /// The transport or the controller failed.
    #[error("{context}: {source}")]
    Transport {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: TransportError,
    },
    /// The run cannot be done as asked.
    #[error("{0}")]
    Invalid(String),
    /// CPU times could not be read.
    #[error("cannot read CPU times: {0}")]
    Cpu(#[from] std::io::Error),
    /// The caller stopped the run before it started (Ctrl-C while
    /// connecting).
    #[error("interrupted before the run started")]
    Interrupted,
}

fn failed(context: impl Into<String>) -> impl FnOnce(TransportError) -> PerfError {
    let context = context.into();
    move |source| PerfError::Transport { context, source }
}

/// [`failed`], with `hint` added when the target refused the Connect
/// command's parameters (an NQN it does not serve, a host it does not allow),
/// and a question when the peer did not speak NVMe-oF (no answer, or one
/// that broke the protocol).
fn connect_failed(
    context: impl Into<String>,
    hint: &'static str,
) -> impl FnOnce(TransportError) -> PerfError {
    let context = context.into();
    move |source| {
        let hint = match &source {
            TransportError::Status(s) if s.same_code(Status::CONNECT_INVALID_PARAMETERS) => hint,
            TransportError::Timeout(_) | TransportError::Protocol(_) => {
                "is this an NVMe-oF target's port?"
            }
            _ => "",
        };
        let context = if hint.is_empty() {
            context
        } else {
            format!("{context} ({hint})")
        };
        PerfError::Transport { context, source }
    }
}

/// Resolves once `stop` is set (looked at every 50 ms).
async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Longest `--poll-us`: 10 ms.
const MAX_POLL: Duration = Duration::from_millis(10);

impl LoadSpec {
    /// Check the values that do not depend on the target.
    pub fn validate(&self) -> Result<(), PerfError> {
        let bad = |m: String| Err(PerfError::Invalid(m));
        if self.io_size == 0 || self.io_size % 512 != 0 || self.io_size > u32::MAX as u64 {
            return bad(format!(
                "--block-size {} must be a non-zero multiple of 512 below 4G",
                self.io_size
            ));
        }
        if !(1..=MAX_IODEPTH).contains(&self.iodepth) {
            return bad(format!(
                "--iodepth {} must be from 1 to {MAX_IODEPTH}",
                self.iodepth
            ));
        }
        if self.queues == 0 {
            return bad("--queues must be at least 1".into());
        }
        if self.nsid == 0 || self.nsid == u32::MAX {
            return bad(format!(
                "--nsid {} must be from 1 to {} (one namespace)",
                self.nsid,
                u32::MAX - 1
            ));
        }
        if self.digests && self.address.kind != TransportKind::Tcp {
            return bad("--digests applies to tcp:// only".into());
        }
        if self.read_mix > 100 {
            return bad(format!("--rwmixread {} must be at most 100", self.read_mix));
        }
        if let Some(size) = self.size.filter(|s| s % self.io_size != 0) {
            return bad(format!(
                "--size {size} must be a multiple of --block-size {}",
                self.io_size
            ));
        }
        if self.time.is_none() && self.ios.is_none() {
            return bad("give a time or an I/O count".into());
        }
        if self.poll > MAX_POLL {
            return bad(format!(
                "--poll-us {} must be at most {}",
                self.poll.as_micros(),
                MAX_POLL.as_micros()
            ));
        }
        if !self.poll.is_zero() && self.address.kind != TransportKind::Tcp {
            return bad(
                "--poll-us applies to tcp:// only (RDMA completions are polled by each device)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Where the I/Os go: the region in units of the I/O size.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    nsid: u32,
    block_size: u64,
    io_size: u64,
    offset: u64,
    units: u64,
}

impl Geometry {
    fn lba(&self, unit: u64) -> u64 {
        (self.offset + unit * self.io_size) / self.block_size
    }

    fn io_blocks(&self) -> u32 {
        (self.io_size / self.block_size) as u32
    }

    /// Queue `i` of `n`'s share of the units: (first, count).
    fn share(&self, i: u64, n: u64) -> (u64, u64) {
        let first = self.units * i / n;
        (first, self.units * (i + 1) / n - first)
    }
}

/// Which units hold the verify pattern.
/// Most I/O units a verifying run covers: its table of written units
/// (and the list of them read back) is sized by the region, not by what the
/// run writes (64 GiB at 4 KiB; 2 MiB of bitmap).
const MAX_VERIFY_UNITS: u64 = 1 << 24;

struct Verifier {
    seed: u64,
    written: Vec<AtomicU64>,
}

impl Verifier {
    fn new(seed: u64, units: u64) -> Verifier {
        Verifier {
            seed,
            written: (0..units.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn mark(&self, unit: u64) {
        if let Some(w) = self.written.get((unit / 64) as usize) {
            w.fetch_or(1 << (unit % 64), Ordering::Relaxed);
        }
    }

    fn is_written(&self, unit: u64) -> bool {
        self.written
            .get((unit / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (unit % 64)) != 0)
    }

    fn written_units(&self) -> Vec<u64> {
        (0..self.written.len() as u64 * 64)
            .filter(|&u| self.is_written(u))
            .collect()
    }
}

/// Counters for the live progress line.
#[derive(Default)]
struct Live {
    ios: AtomicU64,
    bytes: AtomicU64,
}

/// What every queue's task shares.
struct Shared {
    geo: Geometry,
    measure_from: Instant,
    deadline: Option<Instant>,
    budget: Option<AtomicU64>,
    verify: Option<Verifier>,
    live: Option<Live>,
    write_data: Bytes,
    /// Set by the caller to end the run early (Ctrl-C).
    stop: Arc<AtomicBool>,
    /// Set by a queue whose connection failed: the others stop too.
    failed: AtomicBool,
    /// Error completions seen so far (for logging only the first few).
    errors_logged: AtomicU64,
}

/// Error completions logged one by one before the rest are only counted.
const LOGGED_ERRORS: u64 = 10;

impl Shared {
    /// Whether another I/O may start now.
    fn may_issue(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) || self.failed.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            return false;
        }
        match &self.budget {
            Some(b) if now >= self.measure_from => b
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                .is_ok(),
            _ => true,
        }
    }

    /// The data of a write to `unit`.
    fn data_for(&self, unit: u64) -> Bytes {
        match &self.verify {
            Some(v) => {
                let mut buf = BytesMut::zeroed(self.geo.io_size as usize);
                let bs = self.geo.block_size as usize;
                pattern::fill(&mut buf, self.geo.lba(unit), bs, v.seed);
                buf.freeze()
            }
            None => self.write_data.clone(),
        }
    }
}

/// One finished I/O.
struct Done {
    dir: Direction,
    unit: u64,
    check: bool,
    start: Instant,
    end: Instant,
    result: Result<CommandResult, TransportError>,
}

async fn issue(q: &dyn HostQueue, sh: &Shared, dir: Direction, unit: u64) -> Done {
    let g = &sh.geo;
    let (cmd, data, check) = match dir {
        Direction::Read => (
            rw_command(io::READ, g.nsid, g.lba(unit), g.io_blocks()),
            HostData::In(g.io_size as u32),
            sh.verify.as_ref().is_some_and(|v| v.is_written(unit)),
        ),
        Direction::Write => (
            rw_command(io::WRITE, g.nsid, g.lba(unit), g.io_blocks()),
            HostData::Out(sh.data_for(unit)),
            false,
        ),
    };
    let start = Instant::now();
    let result = q.submit(cmd, data).await;
    Done {
        dir,
        unit,
        check,
        start,
        end: Instant::now(),
        result,
    }
}

/// What one queue's task measured.
#[derive(Default)]
struct QueueStats {
    reads: IoStats,
    writes: IoStats,
    verify: VerifyReport,
    last_end: Option<Instant>,
}

impl QueueStats {
    /// Account for a finished I/O; a transport error (counted as a failed
    /// I/O) is returned, as the connection is gone.
    fn complete(&mut self, sh: &Shared, d: Done) -> Result<(), PerfError> {
        let measured = d.start >= sh.measure_from;
        let r = match d.result {
            Ok(r) => r,
            Err(e) => {
                if measured {
                    self.stats_of(d.dir).errors += 1;
                }
                return Err(failed("I/O failed")(e));
            }
        };
        if !r.cqe.status.is_success() {
            if measured {
                self.stats_of(d.dir).errors += 1;
            }
            // The first few, then only counted (one line per I/O would
            // bury the result when every I/O fails).
            match sh.errors_logged.fetch_add(1, Ordering::Relaxed) {
                n if n < LOGGED_ERRORS => {
                    tracing::warn!(status = %r.cqe.status, unit = d.unit, "I/O completed with an error")
                }
                LOGGED_ERRORS => tracing::warn!(
                    "more I/Os completed with an error: counted in the result, not logged"
                ),
                _ => {}
            }
            return Ok(());
        }
        if let Some(v) = &sh.verify {
            match d.dir {
                Direction::Write => v.mark(d.unit),
                Direction::Read if d.check => self.check(sh, v, d.unit, r.data.as_deref()),
                Direction::Read => {}
            }
        }
        if measured {
            self.stats_of(d.dir).record(sh.geo.io_size, d.end - d.start);
            self.last_end = Some(d.end);
            if let Some(live) = &sh.live {
                live.ios.fetch_add(1, Ordering::Relaxed);
                live.bytes.fetch_add(sh.geo.io_size, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn stats_of(&mut self, dir: Direction) -> &mut IoStats {
        match dir {
            Direction::Read => &mut self.reads,
            Direction::Write => &mut self.writes,
        }
    }

    fn check(&mut self, sh: &Shared, v: &Verifier, unit: u64, data: Option<&[u8]>) {
        let bs = sh.geo.block_size;
        let blocks = sh.geo.io_size / bs;
        self.verify.blocks_checked += blocks;
        self.verify.mismatches += match data {
            Some(d) if d.len() as u64 == sh.geo.io_size => {
                pattern::mismatched_blocks(d, sh.geo.lba(unit), bs as usize, v.seed)
            }
            _ => blocks,
        };
    }
}

/// Run the workload on one queue until the time or the I/O budget is spent,
/// or its connection fails (the error comes back with what was measured).
async fn drive_queue(
    q: Arc<dyn HostQueue>,
    sh: Arc<Shared>,
    mut ops: OpStream,
    iodepth: usize,
) -> (QueueStats, Option<PerfError>) {
    let mut stats = QueueStats::default();
    let mut inflight = FuturesUnordered::new();
    let mut error = None;
    loop {
        while error.is_none() && inflight.len() < iodepth && sh.may_issue() {
            let (dir, unit) = ops.next_op();
            inflight.push(issue(&*q, &sh, dir, unit));
        }
        let Some(done) = inflight.next().await else {
            break;
        };
        if let Err(e) = stats.complete(&sh, done) {
            sh.failed.store(true, Ordering::Relaxed);
            error.get_or_insert(e);
        }
    }
    (stats, error)
}

/// Issue `dir` once on each of `units` (queue `i` takes every n-th), with
/// `iodepth` in flight per queue: the verify pass's prefill and read-back.
/// The prefill ends early when the caller stops the run; the read-back
/// always completes (it checks what was written).
async fn sweep(
    queues: &[Arc<dyn HostQueue>],
    sh: &Shared,
    dir: Direction,
    units: &[u64],
    iodepth: usize,
) -> Result<VerifyReport, PerfError> {
    let per_queue = queues.iter().enumerate().map(|(i, q)| async move {
        let mut stats = QueueStats::default();
        let mut todo = units.iter().skip(i).step_by(queues.len());
        let mut inflight = FuturesUnordered::new();
        let stopped = || dir == Direction::Write && sh.stop.load(Ordering::Relaxed);
        loop {
            while inflight.len() < iodepth && !stopped() {
                let Some(&u) = todo.next() else { break };
                inflight.push(issue(&**q, sh, dir, u));
            }
            let Some(done) = inflight.next().await else {
                break;
            };
            stats.complete(sh, done)?;
        }
        let errors = stats.reads.errors + stats.writes.errors;
        if errors > 0 {
            return Err(PerfError::Invalid(format!(
                "{errors} I/Os of the verify pass failed"
            )));
        }
        Ok(stats.verify)
    });
    let mut total = VerifyReport::default();
    for r in futures::future::join_all(per_queue).await {
        let r = r?;
        total.blocks_checked += r.blocks_checked;
        total.mismatches += r.mismatches;
    }
    Ok(total)
}

/// The first NVM subsystem in the discovery log at `address`.
async fn discover_nqn(address: &PortAddress, opts: &HostOptions) -> Result<String, PerfError> {
    let entries = HostController::discover(address, opts)
        .await
        .map_err(connect_failed(
            format!("discovery at {address} failed"),
            "no discovery service on this port, or this host not allowed: give -n NQN",
        ))?;
    entries
        .into_iter()
        .find(|e| e.subtype == subtype::NVM)
        .map(|e| e.subnqn)
        .ok_or_else(|| {
            PerfError::Invalid(format!(
                "the discovery log at {address} lists no NVM subsystem"
            ))
        })
}

/// Connect, run `spec` and disconnect. With `progress`, a live line goes to
/// stderr every second.
pub async fn run(spec: &LoadSpec, progress: bool) -> Result<RunReport, PerfError> {
    run_stoppable(spec, progress, Arc::new(AtomicBool::new(false))).await
}

/// [`run`], ended early when `stop` is set (on Ctrl-C): no new I/O is
/// issued, those in flight complete, the verify pass still reads back what
/// was written, and the report covers the time until then, marked
/// interrupted.
pub async fn run_stoppable(
    spec: &LoadSpec,
    progress: bool,
    stop: Arc<AtomicBool>,
) -> Result<RunReport, PerfError> {
    spec.validate()?;
    let mut opts = HostOptions {
        io_queues: spec.queues,
        queue_size: (spec.iodepth + 1).max(32) as u16,
        digests: Digests {
            header: spec.digests,
            data: spec.digests,
        },
        poll: spec.poll,
        ..HostOptions::default()
    };
    if let Some(h) = &spec.hostnqn {
        opts.hostnqn = h.clone();
    }
    let connect = async {
        let nqn = match &spec.nqn {
            Some(n) => n.clone(),
            None => discover_nqn(&spec.address, &opts).await?,
        };
        let ctrl = HostController::connect(&spec.address, &nqn, &opts)
            .await
            .map_err(connect_failed(
                format!("cannot connect to {nqn} at {}", spec.address),
                "no such subsystem there, or this host not allowed on it",
            ))?;
        Ok::<_, PerfError>((nqn, ctrl))
    };
    let (nqn, ctrl) = tokio::select! {
        connected = connect => connected?,
        () = stopped(&stop) => return Err(PerfError::Interrupted),
    };
    let result = measure(spec, &ctrl, &nqn, progress, stop).await;
    ctrl.disconnect().await;
    result
}

async fn geometry(spec: &LoadSpec, ctrl: &HostController) -> Result<Geometry, PerfError> {
    let id = ctrl
        .identify_namespace(spec.nsid)
        .await
        .map_err(failed(format!("Identify Namespace {}", spec.nsid)))?;
    let bs = id.block_size() as u64;
    if bs == 0 || id.nsze == 0 {
        return Err(PerfError::Invalid(format!(
            "namespace {} is not active",
            spec.nsid
        )));
    }
    let capacity = id.nsze.saturating_mul(bs);
    for (flag, value) in [("--block-size", spec.io_size), ("--offset", spec.offset)] {
        if value % bs != 0 {
            return Err(PerfError::Invalid(format!(
                "{flag} {value} must be a multiple of namespace {}'s {bs}-byte blocks",
                spec.nsid
            )));
        }
    }
    if let Some(mdts) = ctrl.identify.max_transfer_bytes() {
        if spec.io_size > mdts {
            return Err(PerfError::Invalid(format!(
                "--block-size {} is above the controller's largest transfer ({mdts} bytes)",
                spec.io_size
            )));
        }
    }
    if spec.io_size / bs > 1 << 16 {
        return Err(PerfError::Invalid(format!(
            "--block-size {} is above 65536 blocks",
            spec.io_size
        )));
    }
    if spec.offset >= capacity {
        return Err(PerfError::Invalid(format!(
            "--offset {} is past the end of namespace {} ({capacity} bytes)",
            spec.offset, spec.nsid
        )));
    }
    let size = spec.size.unwrap_or(capacity - spec.offset);
    if spec.offset.checked_add(size).is_none_or(|e| e > capacity) {
        return Err(PerfError::Invalid(format!(
            "--offset {} plus --size {size} runs past the end of namespace {} ({capacity} bytes)",
            spec.offset, spec.nsid
        )));
    }
    let units = size / spec.io_size;
    if units < spec.queues as u64 {
        return Err(PerfError::Invalid(format!(
            "the region of {size} bytes holds {units} I/Os of --block-size {}, fewer than \
             --queues {} (each queue needs one)",
            spec.io_size, spec.queues
        )));
    }
    if spec.verify && units > MAX_VERIFY_UNITS {
        return Err(PerfError::Invalid(format!(
            "--verify tracks at most {MAX_VERIFY_UNITS} I/O units and this region has {units} \
             of {} bytes; give a smaller --size",
            spec.io_size
        )));
    }
    Ok(Geometry {
        nsid: spec.nsid,
        block_size: bs,
        io_size: spec.io_size,
        offset: spec.offset,
        units,
    })
}

fn start_progress(sh: Arc<Shared>, time: Option<Duration>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(live) = &sh.live else { return };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let (mut last_ios, mut last_bytes) = (0u64, 0u64);
        loop {
            tick.tick().await;
            let (ios, bytes) = (
                live.ios.load(Ordering::Relaxed),
                live.bytes.load(Ordering::Relaxed),
            );
            let now = Instant::now();
            let phase = if now < sh.measure_from {
                "ramp".to_string()
            } else {
                let t = (now - sh.measure_from).as_secs();
                time.map_or(format!("{t}s"), |d| format!("{t}/{}s", d.as_secs()))
            };
            eprint!(
                "\r\x1b[K[{phase}] {:>9} IOPS {:>9.1} MB/s {:>12} I/Os",
                ios - last_ios,
                (bytes - last_bytes) as f64 / 1e6,
                ios
            );
            (last_ios, last_bytes) = (ios, bytes);
        }
    })
}

async fn measure(
    spec: &LoadSpec,
    ctrl: &HostController,
    nqn: &str,
    progress: bool,
    stop: Arc<AtomicBool>,
) -> Result<RunReport, PerfError> {
    let geo = geometry(spec, ctrl).await?;
    let queues: Vec<Arc<dyn HostQueue>> = (0..ctrl.io_queue_count())
        .filter_map(|i| ctrl.io_queue(i))
        .collect();
    if queues.is_empty() {
        return Err(PerfError::Invalid(
            "the controller granted no I/O queue".into(),
        ));
    }
    let carried = queues
        .iter()
        .map(|q| u64::from(q.max_transfer()))
        .min()
        .unwrap_or(0);
    if spec.io_size > carried {
        return Err(PerfError::Invalid(format!(
            "--block-size {} is above the largest transfer this host's {} queues carry \
             ({carried} bytes)",
            spec.io_size, spec.address.kind
        )));
    }
    if queues.len() < spec.queues as usize {
        tracing::warn!(
            asked = spec.queues,
            granted = queues.len(),
            "fewer I/O queues than asked"
        );
    }
    let iodepth = spec.iodepth as usize;
    let mut sh = Shared {
        geo,
        measure_from: Instant::now(),
        deadline: None,
        budget: None,
        verify: spec.verify.then(|| Verifier::new(spec.seed, geo.units)),
        live: progress.then(Live::default),
        write_data: Bytes::from(vec![0xa5u8; geo.io_size as usize]),
        stop,
        failed: AtomicBool::new(false),
        errors_logged: AtomicU64::new(0),
    };
    let mut verify = VerifyReport::default();
    let writes = spec.workload.read_percent(spec.read_mix) < 100;
    if spec.verify && !writes {
        // A read-only workload verifies data written first.
        let all: Vec<u64> = (0..geo.units).collect();
        sweep(&queues, &sh, Direction::Write, &all, iodepth).await?;
    }
    let start = Instant::now();
    sh.measure_from = start + spec.ramp;
    sh.deadline = spec.time.map(|t| sh.measure_from + t);
    sh.budget = spec.ios.map(AtomicU64::new);
    let sh = Arc::new(sh);
    let n = queues.len() as u64;
    let tasks: Vec<_> = queues
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let (first, count) = geo.share(i as u64, n);
            let seed = spec.seed.wrapping_add(i as u64);
            let ops = OpStream::new(spec.workload, spec.read_mix, first, count, seed);
            tokio::spawn(drive_queue(q.clone(), sh.clone(), ops, iodepth))
        })
        .collect();
    let ticker = progress.then(|| start_progress(sh.clone(), spec.time));
    // The ramp, unless the run was stopped meanwhile (or before it).
    tokio::select! {
        () = tokio::time::sleep_until(sh.measure_from.into()) => {}
        () = stopped(&sh.stop) => {}
    }
    let (cpu0, sys0) = (cpu::process_cpu(), cpu::system_cpu()?);
    let mut reads = IoStats::default();
    let mut writes_st = IoStats::default();
    let mut last_end = None;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok((q, error)) => {
                reads.merge(&q.reads);
                writes_st.merge(&q.writes);
                verify.blocks_checked += q.verify.blocks_checked;
                verify.mismatches += q.verify.mismatches;
                last_end = last_end.max(q.last_end);
                if let Some(e) = error {
                    first_error.get_or_insert(e);
                }
            }
            Err(e) => {
                first_error.get_or_insert(PerfError::Invalid(format!("a queue task failed: {e}")));
            }
        }
    }
    let end = Instant::now();
    let (cpu1, sys1) = (cpu::process_cpu(), cpu::system_cpu()?);
    if let Some(t) = ticker {
        t.abort();
        eprint!("\r\x1b[K");
    }
    // A failed connection ends the run, but what it measured until then
    // is reported (the failure with it); the read-back needs the queues.
    let failure = first_error.map(|e| e.to_string());
    if let Some(v) = sh.verify.as_ref().filter(|_| failure.is_none()) {
        let back = sweep(&queues, &sh, Direction::Read, &v.written_units(), iodepth).await?;
        verify.blocks_checked += back.blocks_checked;
        verify.mismatches += back.mismatches;
    }
    let seconds = (last_end.unwrap_or(end).max(sh.measure_from) - sh.measure_from)
        .as_secs_f64()
        .max(1e-9);
    let mut all = reads.clone();
    all.merge(&writes_st);
    let process_s = cpu1.saturating_sub(cpu0).as_secs_f64();
    let system_busy_s = sys1.since(&sys0).busy.as_secs_f64();
    let per_io = |s: f64, scale: f64| (all.ios > 0).then(|| s * scale / all.ios as f64);
    let total = DirectionReport::new(&all, seconds);
    Ok(RunReport {
        setup: RunSetup {
            address: spec.address.to_string(),
            nqn: nqn.to_string(),
            nsid: spec.nsid,
            workload: spec.workload.name().to_string(),
            read_percent: spec.workload.read_percent(spec.read_mix),
            io_size: spec.io_size,
            iodepth: spec.iodepth,
            queues: queues.len() as u16,
        },
        seconds,
        ios: all.ios,
        iops: total.iops,
        mb_per_s: total.mb_per_s,
        errors: all.errors,
        latency: total.latency,
        read: DirectionReport::of_any(&reads, seconds),
        write: DirectionReport::of_any(&writes_st, seconds),
        cpu: CpuReport {
            process_s,
            process_us_per_io: per_io(process_s, 1e6),
            system_busy_s,
            system_s_per_million_ios: per_io(system_busy_s, 1e6),
        },
        verify: spec.verify.then_some(verify),
        interrupted: sh.stop.load(Ordering::Relaxed),
        failure,
    })
}
