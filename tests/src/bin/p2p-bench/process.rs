//! The child processes a benchmark starts: where their binaries are, a
//! handle that kills its process when dropped, and polling for a condition
//! with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The directory holding the built binaries (the one this runs from).
pub fn bin(name: &str) -> Result<PathBuf> {
    let dir = std::env::current_exe()?
        .parent()
        .context("binary has no directory")?
        .to_path_buf();
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: run `cargo build --release --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` with its stdout dropped and its stderr to `log`.
pub fn spawn(mut command: Command, what: &'static str, log: &Path) -> Result<Proc> {
    let log = std::fs::File::create(log)?;
    command.stdout(Stdio::null()).stderr(log);
    Ok(Proc(
        command
            .spawn()
            .with_context(|| format!("starting {what}"))?,
    ))
}

/// Polls `check` every 100 ms until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {limit:?} waiting for {what}")
}
