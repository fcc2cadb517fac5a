//! `p2p-churn`: the churn soak. Starts auth-svc, index-svc and N agents
//! (default 6) as processes from the binaries next to this one, then for a
//! fixed time (default 10 minutes) every agent, in its own loop, shares new
//! files, downloads listed files to new paths, deletes, moves and edits
//! what it holds, and now and then is killed and restarted.
//!
//! The report says what users would have seen: every `get` is timed and
//! sorted (done and byte-identical, failed with its message, hung past the
//! give-up time), "no file named" for a file the agent itself listed is
//! counted as a bug, and auth-svc's and index-svc's RSS is sampled once
//! every agent is logged in and at the end. Gets of a file whose sharer
//! edited the original may fail (no copy may be left); they must still end
//! in time and say why. It prints a summary and writes `<out>/churn.json`;
//! the exit code is 1 when a get hung, a listed file was "not found", or a
//! finished download differs from what was shared.
//!
//! Ownership: the cluster owns every process (killed on drop); the agent
//! loops are tasks in one `JoinSet` that end at the deadline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use p2p_tests::{AgentHandle as _, AgentOptions, Cluster, ClusterOptions, USER_PASSWORD};
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

/// The agent's promise: a download with no usable source ends after 60 s
/// (peer-agent's `NO_SOURCE_GIVE_UP`); a get is "hung" past this plus
/// [`GIVE_UP_MARGIN`].
const GIVE_UP: Duration = Duration::from_secs(60);
const GIVE_UP_MARGIN: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "p2p-churn",
    about = "Churn soak: agents share, download, delete, move and edit files while restarting."
)]
struct Cli {
    /// Directory for the JSON results.
    #[arg(long, env = "P2P_LOAD_OUT", default_value = "bench-results")]
    out: PathBuf,
    /// Agents in the swarm.
    #[arg(long, default_value_t = 6)]
    agents: usize,
    /// How long to churn, in seconds.
    #[arg(long, default_value_t = 600)]
    duration_secs: u64,
    /// Size of each shared file, in KiB.
    #[arg(long, default_value_t = 2048)]
    file_kib: usize,
    /// Seed for the random choices.
    #[arg(long, default_value_t = 14)]
    seed: u64,
}

/// A file some agent shared, with the hash every download must match.
#[derive(Debug, Clone)]
struct Known {
    file_id: String,
    hash: blake3::Hash,
    /// Its sharer edited the original: unless someone downloaded it
    /// before, no copy is left, and a get must fail clearly and in time.
    edited: bool,
}

/// What happened, across every agent.
#[derive(Debug, Default, serde::Serialize)]
struct Report {
    gets: u64,
    gets_done: u64,
    gets_failed: u64,
    gets_hung: u64,
    /// Gets of files whose original was edited (they may fail, clearly).
    gets_of_edited_files: u64,
    not_found_for_listed_file: u64,
    content_mismatches: u64,
    longest_get_ms: u64,
    failures_by_message: BTreeMap<String, u64>,
    shares: u64,
    deletes: u64,
    moves: u64,
    edits: u64,
    restarts: u64,
    rss_start_kib: BTreeMap<String, u64>,
    rss_end_kib: BTreeMap<String, u64>,
}

struct Shared {
    known: Mutex<Vec<Known>>,
    report: Mutex<Report>,
}

impl Shared {
    fn report(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Vec<Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.out)?;
    let cluster = Arc::new(Cluster::start(ClusterOptions::default()).await);
    let shared = Arc::new(Shared {
        known: Mutex::new(Vec::new()),
        report: Mutex::new(Report::default()),
    });
    let mut agents = Vec::new();
    for n in 0..cli.agents {
        agents.push(
            cluster
                .add_user_agent(&format!("churn{n}"), AgentOptions::default())
                .await,
        );
    }
    // After every login (Argon2 takes its memory once), so growth is churn's.
    shared.report().rss_start_kib = services_rss(&cluster);
    let deadline = Instant::now() + Duration::from_secs(cli.duration_secs);
    let mut loops = JoinSet::new();
    for (n, agent) in agents.into_iter().enumerate() {
        let (cluster, shared) = (cluster.clone(), shared.clone());
        let seed = cli.seed.wrapping_add(n as u64);
        let file_bytes = cli.file_kib * 1024;
        loops.spawn(async move {
            churn(agent, n, &cluster, &shared, deadline, seed, file_bytes).await;
        });
    }
    while let Some(joined) = loops.join_next().await {
        if let Err(err) = joined {
            eprintln!("an agent loop failed: {err}");
        }
    }
    shared.report().rss_end_kib = services_rss(&cluster);
    let report = std::mem::take(&mut *shared.report());
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(cli.out.join("churn.json"), &json)?;
    println!("{json}");
    let bad = report.gets_hung + report.not_found_for_listed_file + report.content_mismatches;
    if bad > 0 {
        eprintln!("churn found {bad} broken promises");
        std::process::exit(1);
    }
    Ok(())
}

/// One agent's loop until `deadline`.
async fn churn(
    mut agent: p2p_tests::Agent,
    n: usize,
    cluster: &Cluster,
    shared: &Shared,
    deadline: Instant,
    seed: u64,
    file_bytes: usize,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let input = cluster.scratch_dir(&format!("churn{n}-input"));
    let out = cluster.scratch_dir(&format!("churn{n}-out"));
    let mut originals: Vec<(PathBuf, String)> = Vec::new();
    let mut downloads: Vec<PathBuf> = Vec::new();
    let mut step = 0u64;
    while Instant::now() < deadline {
        step += 1;
        let roll = rng.gen_range(0..100);
        if roll < 15 || shared.known().is_empty() {
            let path = input.join(format!("f{step}.bin"));
            p2p_tests::write_random(&path, file_bytes, rng.r#gen());
            let output = agent
                .p2p(&["--json", "share", path.to_str().unwrap_or("")])
                .await;
            if output.success() {
                let file_id = output.json()["shared"][0]["file_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                shared.known().push(Known {
                    file_id: file_id.clone(),
                    hash: p2p_tests::file_hash(&path),
                    edited: false,
                });
                originals.push((path, file_id));
                shared.report().shares += 1;
            }
        } else if roll < 65 {
            let pick = {
                // Mostly files that still have their content somewhere.
                let known = shared.known();
                let intact: Vec<&Known> = known.iter().filter(|k| !k.edited).collect();
                if intact.is_empty() || rng.gen_range(0..10) == 0 {
                    known[rng.gen_range(0..known.len())].clone()
                } else {
                    intact[rng.gen_range(0..intact.len())].clone()
                }
            };
            let dest = out.join(format!("g{step}.bin"));
            get(&agent, &pick, &dest, shared).await;
            if dest.exists() {
                downloads.push(dest);
            }
        } else if roll < 75 && !downloads.is_empty() {
            let victim = downloads.swap_remove(rng.gen_range(0..downloads.len()));
            let _ = std::fs::remove_file(victim);
            shared.report().deletes += 1;
        } else if roll < 85 && !downloads.is_empty() {
            let victim = downloads.swap_remove(rng.gen_range(0..downloads.len()));
            let _ = std::fs::rename(&victim, victim.with_extension("moved"));
            shared.report().moves += 1;
        } else if roll < 92 && !originals.is_empty() {
            let (victim, file_id) = originals.swap_remove(rng.gen_range(0..originals.len()));
            edit_in_place(&victim, rng.gen_range(0..file_bytes as u64));
            for known in shared.known().iter_mut().filter(|k| k.file_id == file_id) {
                known.edited = true;
            }
            shared.report().edits += 1;
        } else if roll >= 96 {
            agent.restart().await;
            if !agent.status().await.logged_in {
                agent.login(&format!("churn{n}"), USER_PASSWORD).await;
            }
            shared.report().restarts += 1;
        }
    }
}

/// One `p2p get`, timed and sorted into the report.
async fn get(agent: &p2p_tests::Agent, file: &Known, dest: &Path, shared: &Shared) {
    let listed = agent.network_file(&file.file_id).await.is_some();
    let started = Instant::now();
    let dest_arg = dest.to_str().unwrap_or("");
    let mut command = agent.p2p_command(&["get", &file.file_id, "-o", dest_arg]);
    let outcome = tokio::time::timeout(GIVE_UP + GIVE_UP_MARGIN, command.output()).await;
    let took = started.elapsed();
    let mut report = shared.report();
    report.gets += 1;
    if file.edited {
        report.gets_of_edited_files += 1;
    }
    report.longest_get_ms = report.longest_get_ms.max(took.as_millis() as u64);
    match outcome {
        Err(_) => report.gets_hung += 1,
        Ok(Err(err)) => {
            report.gets_failed += 1;
            *report
                .failures_by_message
                .entry(format!("cannot run p2p: {err}"))
                .or_default() += 1;
        }
        Ok(Ok(output)) if output.status.success() => {
            report.gets_done += 1;
            if !dest.exists() || p2p_tests::file_hash(dest) != file.hash {
                report.content_mismatches += 1;
            }
        }
        Ok(Ok(output)) => {
            report.gets_failed += 1;
            let stderr = String::from_utf8_lossy(&output.stderr);
            if listed && stderr.contains("no file named") {
                report.not_found_for_listed_file += 1;
            }
            *report
                .failures_by_message
                .entry(message_kind(&stderr))
                .or_default() += 1;
        }
    }
}

/// The stable part of an error message (ids, paths and numbers removed),
/// so the report groups alike failures.
fn message_kind(stderr: &str) -> String {
    let line = stderr.lines().last().unwrap_or_default();
    let words: Vec<&str> = line
        .split_whitespace()
        .filter(|w| !w.contains('/') && !w.chars().any(|c| c.is_ascii_digit()))
        .take(14)
        .collect();
    words.join(" ")
}

/// Overwrites a few bytes of `path` at `offset`, keeping its size.
fn edit_in_place(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
        let _ = file.write_all_at(b"edited", offset);
    }
}

/// VmRSS of auth-svc and index-svc, in KiB.
fn services_rss(cluster: &Cluster) -> BTreeMap<String, u64> {
    let mut rss = BTreeMap::new();
    for (name, pid) in cluster.service_pids() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        rss.insert(name.to_string(), kib);
    }
    rss
}
