//! `fabricd target` as a child process: started, awaited until it logs
//! `ready`, measured (its CPU time) and stopped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A running `fabricd target`.
pub struct Fabricd {
    child: Child,
    log: PathBuf,
}

/// The last non-empty line of a log file.
pub fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
        .trim()
        .to_string()
}

impl Fabricd {
    /// Start `bin target ARGS`, logging to `log`, and wait (up to `timeout`)
    /// for its `ready` line.
    pub fn start(
        bin: &Path,
        args: &[String],
        log: &Path,
        timeout: Duration,
    ) -> anyhow::Result<Fabricd> {
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(bin)
            .arg("target")
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut d = Fabricd {
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            if std::fs::read_to_string(log).is_ok_and(|t| t.contains("ready")) {
                return Ok(d);
            }
            if let Some(status) = d.child.try_wait()? {
                bail!("fabricd exited ({status}): {}", last_line(log));
            }
            if Instant::now() >= deadline {
                bail!("fabricd not ready after {timeout:?}: {}", last_line(log));
            }
            // A log file has no readiness notification: poll it.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// CPU time the process has used so far.
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        let path = format!("/proc/{}/stat", self.child.id());
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        perf::cpu::parse_process_stat(&text).with_context(|| format!("unexpected {path}"))
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Fabricd {
    fn drop(&mut self) {
        // SIGTERM lets it close its connections; SIGKILL if it lingers.
        // One that has exited already (it failed) needs neither.
        if !self.is_running() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(std::process::Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in fabricd's `ready: serving on ADDRESS[, ...]` log line.
pub fn ready_address(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("ready"))?;
    let (_, rest) = line.split_once("serving on ")?;
    let addr = rest.split([',', ' ']).next()?.trim();
    addr.contains("://").then(|| addr.to_string())
}
