//! `p2p-bench hash`: BLAKE3 throughput in memory on one core and on all
//! cores, and the time `p2p share` takes on a file of the same size (read
//! from disk, hash, publish) through an agent on loopback.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Result;
use p2p_tests::netns::Host;

use crate::cluster::{self, start_loopback_agent, start_services};
use crate::payload::random_file;
use crate::process::bin;

/// Runs the benchmark on a `size_mib` file; prints the figures and writes
/// `hash.json` to `out`.
pub fn hash(out: &Path, size_mib: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let size = size_mib << 20;
    let source = dir.path().join("payload.bin");
    random_file(&source, size, 11)?;
    let data = std::fs::read(&source)?;
    let started = Instant::now();
    let one = blake3::hash(&data);
    let single_bps = size as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut hasher = blake3::Hasher::new();
    hasher.update_rayon(&data);
    let all = hasher.finalize();
    let multi_bps = size as f64 / started.elapsed().as_secs_f64();
    assert_eq!(one, all);
    drop(data);

    let mut procs = Vec::new();
    start_services(&Host::loopback(), dir.path(), &mut procs)?;
    let agent = start_loopback_agent(dir.path(), "a", 0)?;
    let started = Instant::now();
    cluster::share(Command::new(bin("p2p")?), &dir.path().join("a"), &source)?;
    let share_s = started.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "BLAKE3 on {size_mib} MiB in memory: one core {:.0} MiB/s, {cores} cores {:.0} MiB/s",
        single_bps / 1048576.0,
        multi_bps / 1048576.0
    );
    println!(
        "`p2p share` of a {size_mib} MiB file (read from disk, hash, publish): {share_s:.2} s ({:.0} MiB/s)",
        size as f64 / share_s / 1048576.0
    );
    let json = serde_json::json!({
        "size_bytes": size, "cores": cores, "blake3_one_core_bytes_per_s": single_bps,
        "blake3_all_cores_bytes_per_s": multi_bps, "p2p_share_s": share_s,
    });
    std::fs::write(out.join("hash.json"), serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}/hash.json", out.display());
    drop((agent, procs));
    Ok(())
}
