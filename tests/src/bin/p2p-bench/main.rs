//! `p2p-bench`: the benchmarks that prove (or disprove) the point of the
//! project, printing figures and writing them to `bench-results/`.
//!
//! - `swarm`: an emulated LAN (network namespaces, links shaped with `tc`),
//!   one seeder and N downloaders fetching the same file at once, against a
//!   central HTTP server on the seeder host and BitTorrent (aria2c with
//!   opentracker) on the same LAN in the same run, and against the
//!   Kurose & Ross lower bounds; with index requests per downloader per
//!   second and agents' CPU-seconds per GiB delivered. Needs root.
//! - `datapath`: one FetchChunks source to one downloader on loopback,
//!   against a raw TCP copy of the same bytes between two processes, with
//!   the peak RSS of both agents.
//! - `hash`: BLAKE3 throughput on one core and on all cores, and the time
//!   `p2p share` takes on a large file.
//!
//! Build in release mode first: `cargo build --release --workspace --bins`,
//! then run `target/release/p2p-bench --help`. The binaries it starts are
//! taken from the directory it runs from.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use p2p_tests::netns::{DEFAULT_QUEUE, Host, Lan, LinkSample, LinkShape};

mod bittorrent;
mod mesh;

use bittorrent::bittorrent_case;
use mesh::mesh_case;

#[derive(Parser)]
#[command(
    name = "p2p-bench",
    about = "Benchmarks for P2P File Transfer; results go to --out as JSON, CSV and SVG."
)]
struct Cli {
    /// Directory for result files.
    #[arg(long, default_value = "bench-results", global = true)]
    out: PathBuf,
    /// TLS on the data path (FetchChunks). Off runs the agents with
    /// --peer-insecure-plaintext; auth-svc and index-svc keep TLS either way.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, global = true)]
    data_path_tls: bool,
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Swarm distribution on an emulated LAN vs HTTP and the theoretical bounds (root).
    Swarm {
        /// Downloader counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "4,8,16,32")]
        n: Vec<usize>,
        /// File sizes in MiB, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "64,256")]
        size_mib: Vec<u64>,
        /// Link rate of every host, each way, in Mbit/s.
        #[arg(long, default_value_t = 100)]
        rate_mbit: u32,
        /// One-way delay added on every host's link, in ms (needs sch_netem).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Skip the HTTP baseline (it takes N times longer than the swarm).
        #[arg(long)]
        no_http: bool,
        /// Skip the BitTorrent baseline (aria2c + opentracker, Debian packages).
        #[arg(long)]
        no_bt: bool,
        /// Skip the raw TCP mesh baseline (the optimal schedule over plain
        /// TCP: the floor any swarm reaches on this LAN and these cores).
        #[arg(long)]
        no_mesh: bool,
        /// Runs of every case; the table shows the median and the range.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Give up on one case after this many seconds.
        #[arg(long, default_value_t = 900)]
        timeout_s: u64,
        /// Base name of the result files (`<name>.json`, `.csv`, `.svg`).
        #[arg(long, default_value = "swarm")]
        name: String,
        /// How long a packet may wait in a shaped link's queue, in ms (the
        /// `tbf` latency; a diagnostic: the published figures use 100).
        #[arg(long, default_value_t = DEFAULT_QUEUE.as_millis() as u64)]
        queue_ms: u64,
        /// An environment variable for every agent, the seeder included
        /// (KEY=VALUE, repeatable), to compare an agent setting, e.g.
        /// P2P_MAX_UPLOAD_RATE=94Mbit. Recorded in the JSON.
        #[arg(long = "agent-env", value_parser = parse_env_pair)]
        agent_env: Vec<(String, String)>,
        /// An environment variable for the seeder only, applied after
        /// --agent-env (KEY=VALUE, repeatable), e.g. P2P_MAX_UPLOADS=2.
        #[arg(long = "seeder-env", value_parser = parse_env_pair)]
        seeder_env: Vec<(String, String)>,
    },
    /// FetchChunks on loopback vs raw TCP, with peak RSS.
    Datapath {
        /// File size in MiB.
        #[arg(long, default_value_t = 2048)]
        size_mib: u64,
    },
    /// BLAKE3 throughput and `p2p share` time.
    Hash {
        /// File size in MiB.
        #[arg(long, default_value_t = 2048)]
        size_mib: u64,
    },
    /// (internal) raw TCP sink: accept one connection, count bytes.
    #[command(hide = true)]
    TcpSink {
        listen: String,
        /// Write what arrives to this file (then fsync) instead of dropping it.
        #[arg(long)]
        to_file: Option<PathBuf>,
    },
    /// (internal) raw TCP source: send a file to an address.
    #[command(hide = true)]
    TcpSource { addr: String, file: PathBuf },
    /// (internal) one node of the raw TCP mesh baseline.
    #[command(hide = true)]
    MeshNode(mesh::NodeArgs),
}

/// Every process of a run speaks TLS as deployed: one CA in a temp dir and
/// one certificate per host address, made on first use.
static TLS: std::sync::OnceLock<(tempfile::TempDir, bool)> = std::sync::OnceLock::new();

/// Points `command` at the run's CA and at the certificate for `ip`.
fn with_tls(command: &mut Command, ip: &str) -> Result<()> {
    let (dir, data_path_tls) = TLS.get().context("TLS is set up first in main")?;
    let certs = p2p_services::tls::issue::CertDir::new(dir.path());
    let (ca, _) = certs.ensure_ca()?;
    let name = format!("host-{ip}");
    certs.ensure_leaf(
        &ca,
        &name,
        &[ip.to_string(), "127.0.0.1".into(), "localhost".into()],
        p2p_services::tls::issue::Role::Agent,
        false,
    )?;
    command
        .env("P2P_TLS_CA", certs.ca_cert())
        .env("P2P_TLS_CERT", certs.cert(&name))
        .env("P2P_TLS_KEY", certs.key(&name));
    if !data_path_tls {
        command.env("P2P_PEER_INSECURE_PLAINTEXT", "true");
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let _ = TLS.set((tempfile::tempdir()?, cli.data_path_tls));
    match cli.command {
        Bench::Swarm {
            n,
            size_mib,
            rate_mbit,
            delay_ms,
            no_http,
            no_bt,
            no_mesh,
            runs,
            timeout_s,
            name,
            queue_ms,
            agent_env,
            seeder_env,
        } => {
            std::fs::create_dir_all(&cli.out)?;
            swarm(
                &cli.out.join(name),
                &SwarmPlan {
                    ns: n,
                    sizes: size_mib,
                    rate_mbit,
                    delay_ms,
                    http: !no_http,
                    bt: !no_bt,
                    mesh: !no_mesh,
                    runs: runs.max(1),
                    timeout: Duration::from_secs(timeout_s),
                    queue_ms,
                    env: AgentEnv {
                        all: agent_env,
                        seeder: seeder_env,
                    },
                },
            )
        }
        Bench::Datapath { size_mib } => {
            std::fs::create_dir_all(&cli.out)?;
            datapath(&cli.out, size_mib)
        }
        Bench::Hash { size_mib } => {
            std::fs::create_dir_all(&cli.out)?;
            hash(&cli.out, size_mib)
        }
        Bench::TcpSink { listen, to_file } => tcp_sink(&listen, to_file.as_deref()),
        Bench::TcpSource { addr, file } => tcp_source(&addr, &file),
        Bench::MeshNode(args) => mesh::node(args),
    }
}

/// The directory holding the built binaries (the one this runs from).
fn bin(name: &str) -> Result<PathBuf> {
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

/// Writes `size` pseudo-random bytes (BLAKE3 XOF of `seed`) to `path`.
fn random_file(path: &Path, size: u64, seed: u64) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut xof = blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

fn file_hash(path: &Path) -> Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path)?;
    Ok(hasher.finalize())
}

/// Peak resident set of a running process, from /proc.
fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system) a running process has used so far, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_time(pid).map(|(user, system)| user + system)
}

/// CPU time a running process has used so far, from /proc, as (user,
/// system) seconds. Kept apart because on this VM the system share also
/// pays the host's fault on every page of memory touched for the first
/// time in a while (BENCHMARKS.md, Swarm v4), which the user share mostly
/// does not.
fn cpu_time(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Option<f64> {
        Some(fields.get(i)?.parse::<u64>().ok()? as f64 / CLOCK_TICKS_PER_SECOND)
    };
    Some((ticks(11)?, ticks(12)?))
}

/// USER_HZ: 100 on every Linux architecture we run on (`getconf CLK_TCK`).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Busy and total jiffies of the whole machine, from the first line of
/// /proc/stat, to turn into a utilisation over an interval.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait are the 4th and 5th values.
    let idle = values.get(3)? + values.get(4)?;
    Some((total - idle, total))
}

/// Share of all cores busy between two [`machine_jiffies`] readings.
fn utilisation(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (before?, after?);
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64)
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(mut command: Command, what: &'static str, log: &Path) -> Result<Proc> {
    let log = std::fs::File::create(log)?;
    command.stdout(Stdio::null()).stderr(log);
    Ok(Proc(
        command
            .spawn()
            .with_context(|| format!("starting {what}"))?,
    ))
}

/// Polls `check` every 100 ms until it returns true or `limit` passes.
fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

/// Shares `file` with `p2p` (the `Command`, on whichever host runs it)
/// `--json share` through the agent with data dir `data`.
fn share(mut p2p: Command, data: &Path, file: &Path) -> Result<()> {
    let shared = p2p
        .env("P2P_DATA_DIR", data)
        .args(["--json", "share"])
        .arg(file)
        .output()?;
    if !shared.status.success() {
        bail!("share failed: {}", String::from_utf8_lossy(&shared.stderr));
    }
    Ok(())
}

/// What `p2p` (the `Command`, on whichever host runs it) `--json status`
/// says about the agent with data dir `data`; `None` when it printed no
/// JSON.
fn status(mut p2p: Command, data: &Path) -> std::io::Result<Option<serde_json::Value>> {
    let output = p2p
        .env("P2P_DATA_DIR", data)
        .args(["--json", "status"])
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok()))
}

/// Whether the agent with data dir `data` has a peer id yet.
fn registered(p2p: Command, data: &Path) -> bool {
    status(p2p, data)
        .ok()
        .flatten()
        .and_then(|v| v.get("peer_id").or_else(|| v.get("peerId")).cloned())
        .and_then(|v| v.as_str().map(|s| !s.is_empty()))
        .unwrap_or(false)
}

/// Finds a numeric field by name anywhere in a JSON document.
fn find_u64(value: &serde_json::Value, key: &str) -> Option<u64> {
    match value {
        serde_json::Value::Object(map) => map
            .get(key)
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .or_else(|| map.values().find_map(|v| find_u64(v, key))),
        serde_json::Value::Array(items) => items.iter().find_map(|v| find_u64(v, key)),
        _ => None,
    }
}

const ADMIN_PASSWORD: &str = "bench-admin-password";

/// The control-plane processes of one run: auth-svc and index-svc on one host.
fn start_services(host: &Host, dir: &Path, procs: &mut Vec<Proc>) -> Result<()> {
    let mut auth = host.command(bin("auth-svc")?);
    auth.args(["--listen", "0.0.0.0:50051", "--metrics-listen", ""])
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("auth.db").display()))
        .env("P2P_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("RUST_LOG", "warn");
    with_tls(&mut auth, &host.addr.to_string())?;
    procs.push(spawn(auth, "auth-svc", &dir.join("auth.log"))?);
    let mut index = host.command(bin("index-svc")?);
    index
        .args([
            "--listen",
            "0.0.0.0:50052",
            "--metrics-listen",
            "0.0.0.0:9102",
        ])
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("index.db").display()))
        .arg("--auth-url")
        .arg(host.socket(50051))
        .env("RUST_LOG", "warn");
    with_tls(&mut index, &host.addr.to_string())?;
    procs.push(spawn(index, "index-svc", &dir.join("index.log"))?);
    for (binary, listen) in [
        ("auth-svc", "0.0.0.0:50051"),
        ("index-svc", "0.0.0.0:50052"),
    ] {
        let path = bin(binary)?;
        wait_until(Duration::from_secs(30), binary, || {
            let mut probe = host.command(&path);
            if with_tls(&mut probe, &host.addr.to_string()).is_err() {
                return false;
            }
            probe
                .args(["--listen", listen, "healthcheck"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })?;
    }
    Ok(())
}

/// `KEY=VALUE` for `--agent-env` and `--seeder-env`.
fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Environment the bench adds to the agents it starts.
#[derive(Debug)]
struct AgentEnv {
    /// For every agent.
    all: Vec<(String, String)>,
    /// For the seeder only, after `all`.
    seeder: Vec<(String, String)>,
}

impl AgentEnv {
    fn listed(vars: &[(String, String)]) -> Vec<String> {
        vars.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// Starts an agent on `host`, logged in as the admin, with `env` added, and
/// waits until it is registered with the index.
fn start_agent(
    host: &Host,
    services: &Host,
    dir: &Path,
    name: &str,
    env: &[(String, String)],
) -> Result<Proc> {
    let data = dir.join(name);
    std::fs::create_dir_all(&data)?;
    let mut agent = host.command(bin("peer-agent")?);
    agent
        .args([
            "--listen",
            "0.0.0.0:50053",
            "--metrics-listen",
            "",
            "--web-listen",
            "",
        ])
        .arg("--advertise")
        .arg(host.socket(50053))
        .arg("--data-dir")
        .arg(&data)
        .arg("--index-url")
        .arg(services.socket(50052))
        .arg("--auth-url")
        .arg(services.socket(50051))
        .env("P2P_USER", "admin")
        .env("P2P_PASSWORD", ADMIN_PASSWORD)
        .env(
            "RUST_LOG",
            std::env::var("P2P_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)));
    with_tls(&mut agent, &host.addr.to_string())?;
    let proc = spawn(agent, "peer-agent", &dir.join(format!("{name}.log")))?;
    let p2p = bin("p2p")?;
    wait_until(
        Duration::from_secs(60),
        &format!("agent {name} to register"),
        || registered(host.command(&p2p), &data),
    )?;
    Ok(proc)
}

/// What one agent did during a swarm case.
#[derive(serde::Serialize)]
struct AgentRecord {
    name: String,
    /// Seconds from the start until its `p2p get` returned (None: seeder).
    done_s: Option<f64>,
    bytes_uploaded: u64,
    bytes_downloaded: u64,
    chunks_from_partial_sources: u64,
    peak_rss_bytes: u64,
    cpu_s: f64,
    /// Of `cpu_s`, the user-space share.
    cpu_user_s: f64,
}

impl AgentRecord {
    /// Reads the counters of the agent on `host` and its process figures.
    fn collect(
        host: &Host,
        dir: &Path,
        proc: &Proc,
        name: &str,
        done_s: Option<f64>,
    ) -> Result<Self> {
        let json = status(host.command(bin("p2p")?), &dir.join(name))?.unwrap_or_default();
        let field = |key: &str| find_u64(&json, key).unwrap_or(0);
        let pid = proc.0.id();
        let (user, system) = cpu_time(pid).unwrap_or_default();
        Ok(Self {
            name: name.to_string(),
            done_s,
            bytes_uploaded: field("bytes_uploaded"),
            bytes_downloaded: field("bytes_downloaded"),
            chunks_from_partial_sources: field("chunks_from_partial_sources"),
            peak_rss_bytes: peak_rss_bytes(pid).unwrap_or(0),
            cpu_s: user + system,
            cpu_user_s: user,
        })
    }
}

struct SwarmCase {
    n: usize,
    size_bytes: u64,
    ours_s: f64,
    http_s: Option<f64>,
    cs_bound_s: f64,
    p2p_bound_s: f64,
    seeder_upload_multiple: f64,
    /// Everything every agent uploaded, over the N·F the downloaders needed:
    /// 1.0 means no byte crossed the network twice.
    upload_over_needed: f64,
    /// Share of both cores busy while the swarm ran.
    cpu_busy_swarm: Option<f64>,
    /// CPU seconds index-svc used during the case (auth-svc is negligible).
    index_cpu_s: f64,
    /// Share of both cores busy while the HTTP baseline ran.
    cpu_busy_http: Option<f64>,
    max_agent_rss_bytes: u64,
    agents: Vec<AgentRecord>,
    per_host_s: Vec<f64>,
    /// Index RPCs (every method) per downloader per second of the swarm.
    index_rps_per_downloader: Option<f64>,
    /// Of those, LocateSources and UpdateHoldings only.
    index_loop_rps_per_downloader: Option<f64>,
    /// Agents' CPU seconds (seeder and downloaders) per GiB delivered.
    agents_cpu_s_per_gib: f64,
    /// Of that, the user-space share.
    agents_user_s_per_gib: f64,
    /// How the links were used, from the switch's counters.
    links: Option<LinkUse>,
    bt: Option<Baseline>,
    mesh: Option<Baseline>,
    /// Why the raw TCP mesh did not finish, when it did not.
    mesh_failed: Option<String>,
    /// Round-trip times on the links mid-swarm.
    loaded_rtt: Option<LoadedRtt>,
}

/// How the swarm used the links, from counters sampled every
/// [`LINK_SAMPLE_EVERY`] at the switch: where the time above the bound went.
#[derive(Clone, serde::Serialize)]
struct LinkUse {
    /// Median over downloaders of when the first chunk's worth of bytes
    /// had arrived (start-up: the CLI, the index calls, the handshakes).
    first_chunk_s: f64,
    /// When the seeder had sent 99 % of what it sent.
    seeder_busy_s: f64,
    /// What the seeder sent until then over what its link could carry.
    seeder_link_use: f64,
    /// Median over downloaders of the time, between their first chunk and
    /// their end, their download link carried under half its rate.
    starved_s: f64,
    /// (seconds, seeder sent Mbit/s, downloaders' received Mbit/s: mean,
    /// min) per sample interval.
    timeline: Vec<(f64, f64, f64, f64)>,
}

const LINK_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// [`LinkUse`] of one run: host 1 is the seeder, hosts 2.. the downloaders
/// (finished after `done_s`).
fn link_use(
    samples: &[LinkSample],
    started: Instant,
    rate_bps: f64,
    done_s: &[f64],
) -> Option<LinkUse> {
    let first = samples.iter().rposition(|s| s.at <= started).unwrap_or(0);
    let samples = samples.get(first..)?;
    let base = samples.first()?;
    let t = |s: &LinkSample| s.at.saturating_duration_since(started).as_secs_f64();
    let n = done_s.len();
    let mut first_chunk = Vec::new();
    let mut starved = Vec::new();
    for (i, &done) in done_s.iter().enumerate() {
        let host = i + 2;
        let got = |s: &LinkSample| s.received[host].saturating_sub(base.received[host]);
        let Some(at) = samples.iter().find(|s| got(s) >= 256 * 1024) else {
            continue;
        };
        let from = t(at);
        first_chunk.push(from);
        let slow: f64 = samples
            .windows(2)
            .filter(|w| t(&w[0]) >= from && t(&w[1]) <= done)
            .filter(|w| {
                let secs = (t(&w[1]) - t(&w[0])).max(1e-3);
                (got(&w[1]) - got(&w[0])) as f64 / secs < rate_bps / 2.0
            })
            .map(|w| t(&w[1]) - t(&w[0]))
            .fold(0.0, |a, b| a + b);
        starved.push(slow);
    }
    let seeder_sent = |s: &LinkSample| s.sent[1].saturating_sub(base.sent[1]);
    let total = seeder_sent(samples.last()?);
    let busy = samples
        .iter()
        .find(|s| seeder_sent(s) as f64 >= 0.99 * total as f64)?;
    let seeder_busy_s = t(busy);
    let timeline = samples
        .windows(2)
        .map(|w| {
            let secs = (t(&w[1]) - t(&w[0])).max(1e-3);
            let mbit = |bytes: u64| bytes as f64 * 8.0 / 1e6 / secs;
            let rx: Vec<f64> = (2..n + 2)
                .map(|h| mbit(w[1].received[h].saturating_sub(w[0].received[h])))
                .collect();
            (
                t(&w[1]),
                mbit(seeder_sent(&w[1]) - seeder_sent(&w[0])),
                rx.iter().sum::<f64>() / n.max(1) as f64,
                rx.iter().copied().fold(f64::INFINITY, f64::min),
            )
        })
        .collect();
    Some(LinkUse {
        first_chunk_s: median(first_chunk)?,
        seeder_busy_s,
        seeder_link_use: seeder_sent(busy) as f64 / (rate_bps * seeder_busy_s.max(1e-3)),
        starved_s: median(starved)?,
        timeline,
    })
}

/// What a baseline (aria2c, the raw TCP mesh) did in one case.
#[derive(Clone, serde::Serialize)]
struct Baseline {
    /// Until the last downloader had the whole file.
    time_s: f64,
    per_host_s: Vec<f64>,
    /// Its processes' CPU seconds (seeder and downloaders) per GiB delivered.
    cpu_s_per_gib: f64,
    /// Of that, the user-space share.
    user_s_per_gib: f64,
    /// Round-trip times on the links mid-transfer.
    loaded_rtt: Option<LoadedRtt>,
}

impl Baseline {
    /// From each downloader's time and the processes' summed (user,
    /// system) CPU seconds, over `gib` delivered.
    fn new(
        per_host_s: Vec<f64>,
        (user, system): (f64, f64),
        gib: f64,
        loaded_rtt: Option<LoadedRtt>,
    ) -> Self {
        Self {
            time_s: per_host_s.iter().copied().fold(0.0, f64::max),
            per_host_s,
            cpu_s_per_gib: (user + system) / gib,
            user_s_per_gib: user / gib,
            loaded_rtt,
        }
    }
}

/// When the links' round-trip times are sampled, as a share of the P2P
/// bound after the start: mid-transfer for every N.
const RTT_SAMPLE_AT: f64 = 0.4;

/// TCP round-trip times of the connections that carry bulk data (over
/// 1 MiB sent), sampled once mid-transfer with `ss` in the seeder's and the
/// first downloader's namespace: how long a request, a holdings update or
/// a first byte waits behind the data queued on the links, against the
/// empty-link minimum. Medians over the connections, in ms.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
struct LoadedRtt {
    /// Seconds after the start.
    at_s: f64,
    seeder_srtt_ms: Option<f64>,
    seeder_min_rtt_ms: Option<f64>,
    downloader_srtt_ms: Option<f64>,
    downloader_min_rtt_ms: Option<f64>,
}

/// Samples [`LoadedRtt`] on `port` (either end) `at` from now, on a thread
/// of its own; `None` when `ss` is missing or failed.
fn sample_rtt(
    [seeder, downloader]: [Host; 2],
    port: u16,
    at: Duration,
) -> std::thread::JoinHandle<Option<LoadedRtt>> {
    let started = Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(at);
        let ss = |host: &Host| {
            let out = host
                .command("ss")
                .args(["-tinH", "state", "established"])
                .arg(format!("( sport = :{port} or dport = :{port} )"))
                .output()
                .ok()
                .filter(|o| o.status.success())?;
            Some(bulk_rtts(&String::from_utf8_lossy(&out.stdout)))
        };
        let seeder = ss(&seeder)?;
        let downloader = ss(&downloader)?;
        Some(LoadedRtt {
            at_s: started.elapsed().as_secs_f64(),
            seeder_srtt_ms: median(seeder.0),
            seeder_min_rtt_ms: median(seeder.1),
            downloader_srtt_ms: median(downloader.0),
            downloader_min_rtt_ms: median(downloader.1),
        })
    })
}

/// (smoothed, minimum) RTTs in ms of the connections in `ss -tin` output
/// that sent over 1 MiB.
fn bulk_rtts(ss: &str) -> (Vec<f64>, Vec<f64>) {
    let (mut srtt, mut min) = (Vec::new(), Vec::new());
    for line in ss.lines() {
        let field = |name: &str| line.split_whitespace().find_map(|f| f.strip_prefix(name));
        let sent = field("bytes_sent:").and_then(|v| v.parse::<u64>().ok());
        if sent.is_none_or(|sent| sent < 1 << 20) {
            continue;
        }
        if let Some(rtt) = field("rtt:").and_then(|v| v.split('/').next()?.parse().ok()) {
            srtt.push(rtt);
        }
        if let Some(rtt) = field("minrtt:").and_then(|v| v.parse().ok()) {
            min.push(rtt);
        }
    }
    (srtt, min)
}

/// The middle value (the upper one of an even count); `None` when empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// The index's RPC counters: (every method, LocateSources + UpdateHoldings).
fn index_requests(services: &Host) -> Option<(f64, f64)> {
    let out = services
        .command("curl")
        .args(["-sf", &format!("http://{}/metrics", services.socket(9102))])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut all, mut hot) = (0.0, 0.0);
    for line in text
        .lines()
        .filter(|l| l.starts_with("p2p_rpc_requests_total"))
    {
        let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
        all += value;
        if line.contains("LocateSources") || line.contains("UpdateHoldings") {
            hot += value;
        }
    }
    Some((all, hot))
}

#[allow(clippy::too_many_lines)]
fn swarm_case(
    n: usize,
    size_mib: u64,
    shape: LinkShape,
    (http, bt, mesh): (bool, bool, bool),
    timeout: Duration,
    env: &AgentEnv,
) -> Result<SwarmCase> {
    let size = size_mib << 20;
    let rate_bps = f64::from(shape.rate_mbit.unwrap_or(100)) * 1e6 / 8.0;
    let f = size as f64;
    let cs_bound_s = (n as f64 * f / rate_bps).max(f / rate_bps);
    let p2p_bound_s = (f / rate_bps).max(n as f64 * f / (rate_bps + n as f64 * rate_bps));

    let dir = tempfile::tempdir()?;
    if std::env::var_os("P2P_BENCH_KEEP").is_some() {
        eprintln!("keeping {}", dir.path().display());
    }
    let lan = Lan::create(n + 2, shape)?;
    let services = lan.host(0).clone();
    let seeder = lan.host(1).clone();
    let mut procs = Vec::new();
    start_services(&services, dir.path(), &mut procs)?;
    let p2p = bin("p2p")?;
    let seeder_env: Vec<(String, String)> = env.all.iter().chain(&env.seeder).cloned().collect();
    let seed_agent = start_agent(&seeder, &services, dir.path(), "seeder", &seeder_env)?;
    let mut agents = Vec::new();
    for i in 0..n {
        agents.push(start_agent(
            lan.host(i + 2),
            &services,
            dir.path(),
            &format!("peer{i}"),
            &env.all,
        )?);
    }
    let source = dir.path().join("seeder").join("payload.bin");
    random_file(&source, size, size_mib ^ n as u64)?;
    let want = file_hash(&source)?;
    share(seeder.command(&p2p), &dir.path().join("seeder"), &source)?;

    let index_before = index_requests(&services);
    let cpu_before = machine_jiffies();
    let meter = lan.link_meter(LINK_SAMPLE_EVERY).ok();
    std::thread::sleep(LINK_SAMPLE_EVERY * 2);
    let started = Instant::now();
    let rtt_at = Duration::from_secs_f64(p2p_bound_s * RTT_SAMPLE_AT);
    let rtt = sample_rtt([seeder.clone(), lan.host(2).clone()], 50053, rtt_at);
    let mut gets = Vec::new();
    for i in 0..n {
        let out = dir.path().join(format!("peer{i}")).join("payload-copy.bin");
        let child = lan
            .host(i + 2)
            .command(&p2p)
            .env("P2P_DATA_DIR", dir.path().join(format!("peer{i}")))
            .args(["--json", "get", "payload.bin", "-o"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        gets.push((Proc(child), out, None::<f64>));
    }
    let deadline = started + timeout;
    while gets.iter().any(|g| g.2.is_none()) {
        if Instant::now() > deadline {
            bail!("swarm case N={n} F={size_mib}MiB timed out");
        }
        for (proc, _, done) in gets.iter_mut().filter(|g| g.2.is_none()) {
            if let Some(status) = proc.0.try_wait()? {
                if !status.success() {
                    let mut err = String::new();
                    if let Some(mut e) = proc.0.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    bail!("a download failed: {err}");
                }
                *done = Some(started.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu_busy_swarm = utilisation(cpu_before, machine_jiffies());
    let loaded_rtt = rtt.join().ok().flatten();
    let swarm_s = started.elapsed().as_secs_f64();
    std::thread::sleep(LINK_SAMPLE_EVERY * 2);
    let samples = meter.map(|m| m.stop()).unwrap_or_default();
    let index_after = index_requests(&services);
    let per_downloader_s = n as f64 * swarm_s;
    let (index_rps_per_downloader, index_loop_rps_per_downloader) =
        match (index_before, index_after) {
            (Some((a0, h0)), Some((a1, h1))) => (
                Some((a1 - a0) / per_downloader_s),
                Some((h1 - h0) / per_downloader_s),
            ),
            _ => (None, None),
        };
    let index_cpu_s = procs
        .get(1)
        .and_then(|p| cpu_seconds(p.0.id()))
        .unwrap_or(0.0);
    let per_host_s: Vec<f64> = gets.iter().filter_map(|g| g.2).collect();
    let links = link_use(&samples, started, rate_bps, &per_host_s);
    let ours_s = per_host_s.iter().cloned().fold(0.0, f64::max);
    let mut records = vec![AgentRecord::collect(
        &seeder,
        dir.path(),
        &seed_agent,
        "seeder",
        None,
    )?];
    for (i, agent) in agents.iter().enumerate() {
        records.push(AgentRecord::collect(
            lan.host(i + 2),
            dir.path(),
            agent,
            &format!("peer{i}"),
            Some(per_host_s[i]),
        )?);
    }
    for (_, out, _) in &gets {
        if file_hash(out)? != want {
            bail!("{} does not match the source", out.display());
        }
    }
    let uploaded = records[0].bytes_uploaded;
    let all_uploaded: u64 = records.iter().map(|r| r.bytes_uploaded).sum();
    let max_agent_rss_bytes = records.iter().map(|r| r.peak_rss_bytes).max().unwrap_or(0);
    let gib_delivered = n as f64 * f / f64::from(1u32 << 30);
    let agents_cpu_s_per_gib = records.iter().map(|r| r.cpu_s).sum::<f64>() / gib_delivered;
    let agents_user_s_per_gib = records.iter().map(|r| r.cpu_user_s).sum::<f64>() / gib_delivered;
    drop(gets);
    drop(agents);
    drop(seed_agent);
    drop(procs);

    let bt = if bt {
        Some(bittorrent_case(
            &lan,
            n,
            &source,
            dir.path(),
            timeout,
            rtt_at,
        )?)
    } else {
        None
    };
    // A baseline that fails is a finding, not the end of the matrix: at
    // N = 32 the mesh's connections can wait out several lost SYNs.
    let (mesh, mesh_failed) = if mesh {
        match mesh_case(&lan, n, &source, dir.path(), timeout, rtt_at) {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    } else {
        (None, None)
    };

    let mut cpu_busy_http = None;
    let http_s = if http {
        let serve_dir = dir.path().join("seeder");
        let mut server = seeder.command("python3");
        server
            .args([
                "-m",
                "http.server",
                "8080",
                "--bind",
                "0.0.0.0",
                "--directory",
            ])
            .arg(&serve_dir);
        let _server = spawn(server, "http.server", &dir.path().join("http.log"))?;
        let url = format!("http://{}/payload.bin", seeder.socket(8080));
        wait_until(Duration::from_secs(20), "http server", || {
            lan.host(2)
                .command("curl")
                .args(["-sf", "-o", "/dev/null", "-r", "0-0", &url])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })?;
        let cpu_before = machine_jiffies();
        let started = Instant::now();
        let mut curls = Vec::new();
        for i in 0..n {
            let out = dir.path().join(format!("peer{i}")).join("payload-http.bin");
            let child = lan
                .host(i + 2)
                .command("curl")
                .args(["-sf", "-o"])
                .arg(&out)
                .arg(&url)
                .spawn()?;
            curls.push((Proc(child), None::<f64>));
        }
        while curls.iter().any(|c| c.1.is_none()) {
            if Instant::now() > started + timeout {
                bail!("HTTP baseline N={n} timed out");
            }
            for (proc, done) in curls.iter_mut().filter(|c| c.1.is_none()) {
                if let Some(status) = proc.0.try_wait()? {
                    if !status.success() {
                        bail!("curl failed: {status}");
                    }
                    *done = Some(started.elapsed().as_secs_f64());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        cpu_busy_http = utilisation(cpu_before, machine_jiffies());
        Some(curls.iter().filter_map(|c| c.1).fold(0.0, f64::max))
    } else {
        None
    };
    if std::env::var_os("P2P_BENCH_KEEP").is_some() {
        // Leave the logs and data for a post-mortem.
        std::mem::forget(dir);
    }
    Ok(SwarmCase {
        n,
        size_bytes: size,
        ours_s,
        http_s,
        cs_bound_s,
        p2p_bound_s,
        seeder_upload_multiple: uploaded as f64 / f,
        upload_over_needed: all_uploaded as f64 / (n as f64 * f),
        cpu_busy_swarm,
        index_cpu_s,
        cpu_busy_http,
        max_agent_rss_bytes,
        agents: records,
        per_host_s,
        index_rps_per_downloader,
        index_loop_rps_per_downloader,
        agents_cpu_s_per_gib,
        agents_user_s_per_gib,
        links,
        bt,
        mesh,
        mesh_failed,
        loaded_rtt,
    })
}

/// What `p2p-bench swarm` runs.
struct SwarmPlan {
    ns: Vec<usize>,
    sizes: Vec<u64>,
    rate_mbit: u32,
    delay_ms: u64,
    http: bool,
    bt: bool,
    mesh: bool,
    runs: usize,
    timeout: Duration,
    queue_ms: u64,
    env: AgentEnv,
}

/// Median and range of some figures.
#[derive(Clone, Copy, serde::Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    fn show(this: Option<Self>, digits: usize) -> String {
        match this {
            None => "-".into(),
            Some(s) if s.max - s.min < 1e-9 => format!("{:.digits$}", s.median),
            Some(s) => format!(
                "{:.digits$} ({:.digits$}-{:.digits$})",
                s.median, s.min, s.max
            ),
        }
    }
}

/// The runs of one (N, F) case, summarised.
struct CaseSummary<'a> {
    runs: Vec<&'a SwarmCase>,
}

impl CaseSummary<'_> {
    fn spread(&self, f: impl Fn(&SwarmCase) -> Option<f64>) -> Option<Spread> {
        Spread::of(self.runs.iter().filter_map(|c| f(c)))
    }

    fn json(&self) -> serde_json::Value {
        let c = self.runs[0];
        serde_json::json!({
            "n": c.n, "size_bytes": c.size_bytes, "runs": self.runs.len(),
            "p2p_bound_s": c.p2p_bound_s,
            "ours_s": self.spread(|c| Some(c.ours_s)),
            "ours_over_p2p_bound": self.spread(|c| Some(c.ours_s / c.p2p_bound_s)),
            "seeder_uploaded_multiple_of_f": self.spread(|c| Some(c.seeder_upload_multiple)),
            "index_requests_per_downloader_per_s": self.spread(|c| c.index_rps_per_downloader),
            "index_loop_requests_per_downloader_per_s": self.spread(|c| c.index_loop_rps_per_downloader),
            "cpu_busy_swarm": self.spread(|c| c.cpu_busy_swarm),
            "agents_cpu_s_per_gib": self.spread(|c| Some(c.agents_cpu_s_per_gib)),
            "agents_user_s_per_gib": self.spread(|c| Some(c.agents_user_s_per_gib)),
            "last_minus_median_downloader_s": self.spread(tail_s),
            "first_chunk_s": self.spread(|c| c.links.as_ref().map(|l| l.first_chunk_s)),
            "seeder_busy_s": self.spread(|c| c.links.as_ref().map(|l| l.seeder_busy_s)),
            "seeder_link_use": self.spread(|c| c.links.as_ref().map(|l| l.seeder_link_use)),
            "starved_s": self.spread(|c| c.links.as_ref().map(|l| l.starved_s)),
            "aria2_s": self.spread(|c| c.bt.as_ref().map(|b| b.time_s)),
            "aria2_over_p2p_bound": self.spread(|c| c.bt.as_ref().map(|b| b.time_s / c.p2p_bound_s)),
            "aria2_cpu_s_per_gib": self.spread(|c| c.bt.as_ref().map(|b| b.cpu_s_per_gib)),
            "aria2_user_s_per_gib": self.spread(|c| c.bt.as_ref().map(|b| b.user_s_per_gib)),
            "raw_mesh_s": self.spread(|c| c.mesh.as_ref().map(|m| m.time_s)),
            "raw_mesh_over_p2p_bound": self.spread(|c| c.mesh.as_ref().map(|m| m.time_s / c.p2p_bound_s)),
            "raw_mesh_cpu_s_per_gib": self.spread(|c| c.mesh.as_ref().map(|m| m.cpu_s_per_gib)),
            "raw_mesh_user_s_per_gib": self.spread(|c| c.mesh.as_ref().map(|m| m.user_s_per_gib)),
            "http_s": self.spread(|c| c.http_s),
        })
    }
}

/// Runs every (F, N) case `runs` times; writes `<base>.json` (every run
/// and the summaries), `<base>.csv` (one row per run) and `<base>.svg`.
fn swarm(base: &Path, plan: &SwarmPlan) -> Result<()> {
    if let Some(reason) = Lan::unavailable_reason() {
        bail!("the swarm benchmark needs network namespaces: {reason}");
    }
    if plan.delay_ms > 0 && !netem_available() {
        bail!(
            "--delay-ms needs the sch_netem qdisc, which this kernel does not have (`modprobe sch_netem` fails); run without --delay-ms"
        );
    }
    if plan.bt {
        for tool in ["aria2c", "opentracker"] {
            let found = Command::new("which")
                .arg(tool)
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                bail!(
                    "the BitTorrent baseline needs {tool}: apt-get install -y aria2 opentracker (or pass --no-bt)"
                );
            }
        }
    }
    let (rate_mbit, delay_ms) = (plan.rate_mbit, plan.delay_ms);
    let shape = LinkShape {
        rate_mbit: Some(rate_mbit),
        delay: (delay_ms > 0).then(|| Duration::from_millis(delay_ms)),
        queue: Some(Duration::from_millis(plan.queue_ms)),
    };
    let mut cases = Vec::new();
    let mut timeline = String::from(
        "n,size_mib,t_s,seeder_sent_mbit_s,downloaders_received_mbit_s_mean,downloaders_received_mbit_s_min\n",
    );
    println!(
        "{:>3} {:>8} {:>4} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9} {:>9} {:>8} {:>8}",
        "N",
        "F (MiB)",
        "run",
        "ours (s)",
        "aria2 (s)",
        "HTTP (s)",
        "ours/P2P",
        "seeder up",
        "idx rq/s",
        "CPU s/GiB",
        "user s/GiB",
        "aria2 s/GiB",
        "aria2 user",
        "tail (s)",
        "CPU",
        "RSS max",
        "1st chunk",
        "seed busy",
        "seed use",
        "starved"
    );
    for &size_mib in &plan.sizes {
        for &n in &plan.ns {
            for run in 0..plan.runs {
                let case = swarm_case(
                    n,
                    size_mib,
                    shape,
                    (plan.http, plan.bt, plan.mesh),
                    plan.timeout,
                    &plan.env,
                )?;
                let tail = tail_s(&case).unwrap_or(0.0);
                println!(
                    "{:>3} {:>8} {:>4} {:>9.2} {:>9} {:>9} {:>9.3} {:>9.3}F {:>8} {:>9.2} {:>9.2} {:>9} {:>9} {:>9.2} {:>6.0}% {:>5.0}MiB {:>9} {:>9} {:>8} {:>8}",
                    case.n,
                    size_mib,
                    run + 1,
                    case.ours_s,
                    case.bt
                        .as_ref()
                        .map_or("-".into(), |b| format!("{:.2}", b.time_s)),
                    case.http_s.map_or("-".into(), |s| format!("{s:.2}")),
                    case.ours_s / case.p2p_bound_s,
                    case.seeder_upload_multiple,
                    case.index_rps_per_downloader
                        .map_or("-".into(), |r| format!("{r:.2}")),
                    case.agents_cpu_s_per_gib,
                    case.agents_user_s_per_gib,
                    case.bt
                        .as_ref()
                        .map_or("-".into(), |b| format!("{:.2}", b.cpu_s_per_gib)),
                    case.bt
                        .as_ref()
                        .map_or("-".into(), |b| format!("{:.2}", b.user_s_per_gib)),
                    tail,
                    case.cpu_busy_swarm.unwrap_or(0.0) * 100.0,
                    case.max_agent_rss_bytes as f64 / 1048576.0,
                    links_cell(&case, |l| l.first_chunk_s, 2),
                    links_cell(&case, |l| l.seeder_busy_s, 2),
                    links_cell(&case, |l| l.seeder_link_use, 3),
                    links_cell(&case, |l| l.starved_s, 2),
                );
                let rtt_cell = |r: Option<&LoadedRtt>| {
                    r.map_or("-".to_string(), |r| {
                        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
                        format!(
                            "seeder {} (min {}), downloader {} (min {})",
                            ms(r.seeder_srtt_ms),
                            ms(r.seeder_min_rtt_ms),
                            ms(r.downloader_srtt_ms),
                            ms(r.downloader_min_rtt_ms)
                        )
                    })
                };
                println!(
                    "    RTT on the bulk connections mid-transfer (ms): ours {}; aria2 {}; raw mesh {}",
                    rtt_cell(case.loaded_rtt.as_ref()),
                    rtt_cell(case.bt.as_ref().and_then(|b| b.loaded_rtt.as_ref())),
                    rtt_cell(case.mesh.as_ref().and_then(|m| m.loaded_rtt.as_ref()))
                );
                if let Some(why) = &case.mesh_failed {
                    println!("    raw TCP mesh: failed: {why}");
                }
                if let Some(m) = &case.mesh {
                    println!(
                        "    raw TCP mesh: {:.2} s ({:.3} x the bound), CPU {:.2} s/GiB, user {:.2} s/GiB",
                        m.time_s,
                        m.time_s / case.p2p_bound_s,
                        m.cpu_s_per_gib,
                        m.user_s_per_gib
                    );
                }
                if run == 0
                    && let Some(links) = &case.links
                {
                    for (t, seeder, mean, min) in &links.timeline {
                        timeline.push_str(&format!(
                            "{n},{size_mib},{t:.2},{seeder:.1},{mean:.1},{min:.1}\n"
                        ));
                    }
                }
                cases.push(case);
            }
        }
    }
    let mut summaries: Vec<CaseSummary> = Vec::new();
    for c in &cases {
        match summaries
            .iter_mut()
            .find(|s| s.runs[0].n == c.n && s.runs[0].size_bytes == c.size_bytes)
        {
            Some(s) => s.runs.push(c),
            None => summaries.push(CaseSummary { runs: vec![c] }),
        }
    }
    println!("\nmedian (range) of {} run(s):", plan.runs);
    println!(
        "| N | F | ours (s) | ours / bound | seeder upload (F) | index req / downloader / s | agents CPU s / GiB | agents user s / GiB | last - median (s) | aria2 (s) | aria2 / bound | aria2 CPU s / GiB | aria2 user s / GiB | raw mesh (s) | raw mesh / bound | raw mesh CPU s / GiB | raw mesh user s / GiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &summaries {
        let c = s.runs[0];
        println!(
            "| {} | {} MiB | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.n,
            c.size_bytes >> 20,
            Spread::show(s.spread(|c| Some(c.ours_s)), 2),
            Spread::show(s.spread(|c| Some(c.ours_s / c.p2p_bound_s)), 2),
            Spread::show(s.spread(|c| Some(c.seeder_upload_multiple)), 3),
            Spread::show(s.spread(|c| c.index_rps_per_downloader), 2),
            Spread::show(s.spread(|c| Some(c.agents_cpu_s_per_gib)), 1),
            Spread::show(s.spread(|c| Some(c.agents_user_s_per_gib)), 1),
            Spread::show(s.spread(tail_s), 2),
            Spread::show(s.spread(|c| c.bt.as_ref().map(|b| b.time_s)), 2),
            Spread::show(
                s.spread(|c| c.bt.as_ref().map(|b| b.time_s / c.p2p_bound_s)),
                2
            ),
            Spread::show(s.spread(|c| c.bt.as_ref().map(|b| b.cpu_s_per_gib)), 1),
            Spread::show(s.spread(|c| c.bt.as_ref().map(|b| b.user_s_per_gib)), 1),
            Spread::show(s.spread(|c| c.mesh.as_ref().map(|m| m.time_s)), 2),
            Spread::show(
                s.spread(|c| c.mesh.as_ref().map(|m| m.time_s / c.p2p_bound_s)),
                2
            ),
            Spread::show(s.spread(|c| c.mesh.as_ref().map(|m| m.cpu_s_per_gib)), 1),
            Spread::show(s.spread(|c| c.mesh.as_ref().map(|m| m.user_s_per_gib)), 1),
        );
    }
    let runs: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            serde_json::json!({
                "n": c.n, "size_bytes": c.size_bytes, "rate_mbit": rate_mbit, "delay_ms": delay_ms,
                "ours_s": c.ours_s, "http_s": c.http_s, "p2p_bound_s": c.p2p_bound_s,
                "client_server_bound_s": c.cs_bound_s, "ours_over_p2p_bound": c.ours_s / c.p2p_bound_s,
                "seeder_uploaded_multiple_of_f": c.seeder_upload_multiple,
                "all_uploaded_over_n_f": c.upload_over_needed,
                "cpu_busy_swarm": c.cpu_busy_swarm, "cpu_busy_http": c.cpu_busy_http,
                "index_svc_cpu_s": c.index_cpu_s,
                "index_requests_per_downloader_per_s": c.index_rps_per_downloader,
                "links": c.links,
                "loaded_rtt": c.loaded_rtt,
                "queue_ms": plan.queue_ms,
                "agent_env": AgentEnv::listed(&plan.env.all),
                "seeder_env": AgentEnv::listed(&plan.env.seeder),
                "index_loop_requests_per_downloader_per_s": c.index_loop_rps_per_downloader,
                "agents_cpu_s": c.agents.iter().map(|a| a.cpu_s).sum::<f64>(),
                "agents_cpu_s_per_gib": c.agents_cpu_s_per_gib,
                "agents_user_s_per_gib": c.agents_user_s_per_gib,
                "aria2": c.bt,
                "raw_mesh": c.mesh,
                "raw_mesh_failed": c.mesh_failed,
                "max_agent_peak_rss_bytes": c.max_agent_rss_bytes,
                "per_host_s": c.per_host_s, "agents": c.agents,
            })
        })
        .collect();
    let summary: Vec<serde_json::Value> = summaries.iter().map(CaseSummary::json).collect();
    let path = |ext: &str| base.with_extension(ext);
    std::fs::write(
        path("json"),
        serde_json::to_string_pretty(&serde_json::json!({"summary": summary, "runs": runs}))?,
    )?;
    let mut csv = String::from(
        "n,size_mib,rate_mbit,ours_s,aria2_s,http_s,p2p_bound_s,client_server_bound_s,ours_over_p2p_bound,seeder_uploaded_multiple_of_f,all_uploaded_over_n_f,index_requests_per_downloader_per_s,agents_cpu_s_per_gib,agents_user_s_per_gib,aria2_cpu_s_per_gib,aria2_user_s_per_gib,cpu_busy_swarm,cpu_busy_http,max_agent_peak_rss_mib,raw_mesh_s,raw_mesh_cpu_s_per_gib,raw_mesh_user_s_per_gib\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    for c in &cases {
        csv += &format!(
            "{},{},{},{:.3},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{},{:.3},{:.3},{},{},{},{},{:.1},{},{},{}\n",
            c.n,
            c.size_bytes >> 20,
            rate_mbit,
            c.ours_s,
            opt(c.bt.as_ref().map(|b| b.time_s)),
            opt(c.http_s),
            c.p2p_bound_s,
            c.cs_bound_s,
            c.ours_s / c.p2p_bound_s,
            c.seeder_upload_multiple,
            c.upload_over_needed,
            opt(c.index_rps_per_downloader),
            c.agents_cpu_s_per_gib,
            c.agents_user_s_per_gib,
            opt(c.bt.as_ref().map(|b| b.cpu_s_per_gib)),
            opt(c.bt.as_ref().map(|b| b.user_s_per_gib)),
            opt(c.cpu_busy_swarm),
            opt(c.cpu_busy_http),
            c.max_agent_rss_bytes as f64 / 1048576.0,
            opt(c.mesh.as_ref().map(|m| m.time_s)),
            opt(c.mesh.as_ref().map(|m| m.cpu_s_per_gib)),
            opt(c.mesh.as_ref().map(|m| m.user_s_per_gib)),
        );
    }
    std::fs::write(path("csv"), csv)?;
    let medians: Vec<&SwarmCase> = summaries
        .iter()
        .map(|s| {
            let mut runs = s.runs.clone();
            runs.sort_by(|a, b| a.ours_s.total_cmp(&b.ours_s));
            runs[runs.len() / 2]
        })
        .collect();
    std::fs::write(path("svg"), swarm_svg(&medians, rate_mbit))?;
    std::fs::write(path("timeline.csv"), timeline)?;
    println!("wrote {}.{{json,csv,svg}}", base.display());
    Ok(())
}

/// How much longer the last downloader took than the median one.
fn tail_s(case: &SwarmCase) -> Option<f64> {
    let mut t = case.per_host_s.clone();
    t.sort_by(f64::total_cmp);
    Some(t.last()? - t.get(t.len() / 2)?)
}

/// One [`LinkUse`] figure of a run for the table, `-` when not measured.
fn links_cell(case: &SwarmCase, f: impl Fn(&LinkUse) -> f64, digits: usize) -> String {
    case.links
        .as_ref()
        .map_or("-".into(), |l| format!("{:.*}", digits, f(l)))
}

/// Whether `tc` can use netem here (it cannot on kernels built without it).
fn netem_available() -> bool {
    Command::new("modprobe")
        .args(["-q", "sch_netem"])
        .status()
        .is_ok_and(|s| s.success())
        || std::path::Path::new("/sys/module/sch_netem").exists()
}

/// A grouped bar chart per (N, F): ours, HTTP, P2P bound, client-server bound.
fn swarm_svg(cases: &[&SwarmCase], rate_mbit: u32) -> String {
    let max = cases
        .iter()
        .flat_map(|c| {
            [
                c.ours_s,
                c.bt.as_ref().map_or(0.0, |b| b.time_s),
                c.mesh.as_ref().map_or(0.0, |m| m.time_s),
                c.http_s.unwrap_or(0.0),
                c.cs_bound_s,
                c.p2p_bound_s,
            ]
        })
        .fold(1.0, f64::max);
    let group_w = 182.0;
    let height = 360.0;
    let plot_h = 260.0;
    let colors = [
        ("ours", "#2b7bb9"),
        ("aria2", "#8e44ad"),
        ("raw TCP mesh", "#7f8c8d"),
        ("HTTP", "#d9534f"),
        ("P2P bound", "#5cb85c"),
        ("C-S bound", "#f0ad4e"),
    ];
    // Wide enough for the legend too, which takes 100 px an entry.
    let width = (80.0 + group_w * cases.len() as f64).max(80.0 + 100.0 * colors.len() as f64);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='10' y='16' font-size='13'>Time to deliver F to all N downloaders (s, log scale), {rate_mbit} Mbit/s links</text>\n"
    );
    let y = |v: f64| {
        30.0 + plot_h - plot_h * (v.max(0.1).ln() - 0.1f64.ln()) / (max.ln() - 0.1f64.ln())
    };
    for (i, c) in cases.iter().enumerate() {
        let x0 = 60.0 + group_w * i as f64;
        let values = [
            Some(c.ours_s),
            c.bt.as_ref().map(|b| b.time_s),
            c.mesh.as_ref().map(|m| m.time_s),
            c.http_s,
            Some(c.p2p_bound_s),
            Some(c.cs_bound_s),
        ];
        for (j, v) in values.iter().enumerate() {
            if let Some(v) = v {
                let top = y(*v);
                svg += &format!(
                    "<rect x='{:.1}' y='{top:.1}' width='24' height='{:.1}' fill='{}'><title>{} {v:.2}s</title></rect>\n",
                    x0 + 26.0 * j as f64,
                    30.0 + plot_h - top,
                    colors[j].1,
                    colors[j].0
                );
            }
        }
        svg += &format!(
            "<text x='{:.1}' y='{:.1}'>N={} F={}MiB</text>\n<text x='{:.1}' y='{:.1}'>{:.2}x bound</text>\n",
            x0,
            30.0 + plot_h + 16.0,
            c.n,
            c.size_bytes >> 20,
            x0,
            30.0 + plot_h + 30.0,
            c.ours_s / c.p2p_bound_s
        );
    }
    for (j, (name, color)) in colors.iter().enumerate() {
        let x = 60.0 + 100.0 * j as f64;
        svg += &format!(
            "<rect x='{x}' y='{}' width='12' height='12' fill='{color}'/><text x='{}' y='{}'>{name}</text>\n",
            height - 30.0,
            x + 16.0,
            height - 20.0
        );
    }
    svg + "</svg>\n"
}

fn tcp_sink(listen: &str, to_file: Option<&Path>) -> Result<()> {
    let listener = TcpListener::bind(listen)?;
    println!("{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let (mut stream, _) = listener.accept()?;
    let mut out = to_file.map(std::fs::File::create).transpose()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let started = Instant::now();
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(out) = out.as_mut() {
            out.write_all(&buf[..n])?;
        }
        total += n as u64;
    }
    if let Some(out) = out {
        out.sync_all()?;
    }
    println!("{total} {}", started.elapsed().as_secs_f64());
    Ok(())
}

fn tcp_source(addr: &str, file: &Path) -> Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut input = std::fs::File::open(file)?;
    std::io::copy(&mut input, &mut stream)?;
    Ok(())
}

fn datapath(out: &Path, size_mib: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let size = size_mib << 20;
    let source = dir.path().join("payload.bin");
    random_file(&source, size, 7)?;
    let me = std::env::current_exe()?;

    // Raw TCP baselines: two processes, kernel loopback, 1 MiB reads; once
    // dropping the bytes, once writing them to a file and fsyncing it (what
    // a download has to do as well).
    let tcp_s = raw_tcp_copy(&me, &source, None)?;
    let tcp_bps = size as f64 / tcp_s;
    let tcp_disk_s = raw_tcp_copy(&me, &source, Some(&dir.path().join("tcp-copy.bin")))?;
    let tcp_disk_bps = size as f64 / tcp_disk_s;
    let _ = std::fs::remove_file(dir.path().join("tcp-copy.bin"));

    // FetchChunks: services and two agents on loopback.
    let mut procs = Vec::new();
    let local = Host::loopback();
    start_services(&local, dir.path(), &mut procs)?;
    let a = start_loopback_agent(dir.path(), "a", 0)?;
    let b = start_loopback_agent(dir.path(), "b", 1)?;
    let p2p = bin("p2p")?;
    share(Command::new(&p2p), &dir.path().join("a"), &source)?;
    let copy = dir.path().join("copy.bin");
    let started = Instant::now();
    let mut get = Command::new(&p2p)
        .env("P2P_DATA_DIR", dir.path().join("b"))
        .args(["--json", "get", "payload.bin", "-o"])
        .arg(&copy)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // When the last chunk was in: the agent's progress stream sends each
    // state when the next one begins, so the last `downloading` line leaves
    // as verification starts. The rest is the whole-file hash, fsync and
    // rename.
    let mut chunks_in_s = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(
        get.stdout.take().context("get stdout")?,
    )) {
        if line?.contains("\"downloading\"") {
            chunks_in_s = Some(started.elapsed().as_secs_f64());
        }
    }
    let got = get.wait_with_output()?;
    let ours_s = started.elapsed().as_secs_f64();
    if !got.status.success() {
        bail!("download failed: {}", String::from_utf8_lossy(&got.stderr));
    }
    let chunks_in_s = chunks_in_s.unwrap_or(ours_s);
    if file_hash(&copy)? != file_hash(&source)? {
        bail!("downloaded copy differs");
    }
    let ours_bps = size as f64 / ours_s;
    let rss_a = peak_rss_bytes(a.0.id()).unwrap_or(0);
    let rss_b = peak_rss_bytes(b.0.id()).unwrap_or(0);
    let ratio = ours_bps / tcp_bps;
    let transfer_bps = size as f64 / chunks_in_s;
    let (cpu_a, cpu_b) = (
        cpu_seconds(a.0.id()).unwrap_or(0.0),
        cpu_seconds(b.0.id()).unwrap_or(0.0),
    );
    println!("data path, {size_mib} MiB on loopback:");
    println!("  raw TCP     {:>8.1} MiB/s", tcp_bps / 1048576.0);
    println!(
        "  raw TCP to a file + fsync {:>8.1} MiB/s",
        tcp_disk_bps / 1048576.0
    );
    println!(
        "  FetchChunks {:>8.1} MiB/s  ({:.1}% of raw TCP, includes hashing and the final whole-file check)",
        ours_bps / 1048576.0,
        ratio * 100.0
    );
    println!(
        "  chunks only {:>8.1} MiB/s  ({:.1}% of raw TCP: until the last chunk was verified and written, {:.2} s of {:.2} s)",
        transfer_bps / 1048576.0,
        transfer_bps / tcp_bps * 100.0,
        chunks_in_s,
        ours_s
    );
    println!(
        "  vs raw TCP to a file: {:.1}% (whole download), {:.1}% (chunks only)",
        ours_bps / tcp_disk_bps * 100.0,
        transfer_bps / tcp_disk_bps * 100.0
    );
    println!("  CPU time    source agent {cpu_a:.2} s, downloading agent {cpu_b:.2} s");
    println!(
        "  peak RSS    source agent {:.1} MiB, downloading agent {:.1} MiB",
        rss_a as f64 / 1048576.0,
        rss_b as f64 / 1048576.0
    );
    let json = serde_json::json!({
        "size_bytes": size, "raw_tcp_bytes_per_s": tcp_bps, "fetchchunks_bytes_per_s": ours_bps,
        "ratio": ratio, "source_agent_peak_rss_bytes": rss_a, "downloader_agent_peak_rss_bytes": rss_b,
        "raw_tcp_s": tcp_s, "raw_tcp_to_file_s": tcp_disk_s, "raw_tcp_to_file_bytes_per_s": tcp_disk_bps,
        "ratio_to_raw_tcp_to_file": ours_bps / tcp_disk_bps, "fetchchunks_s": ours_s, "last_chunk_in_s": chunks_in_s,
        "chunks_only_bytes_per_s": transfer_bps, "chunks_only_ratio": transfer_bps / tcp_bps,
        "source_agent_cpu_s": cpu_a, "downloader_agent_cpu_s": cpu_b,
    });
    std::fs::write(
        out.join("datapath.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("wrote {}/datapath.json", out.display());
    drop((a, b, procs));
    Ok(())
}

/// Seconds one raw TCP copy of `source` takes between two processes.
fn raw_tcp_copy(me: &Path, source: &Path, to_file: Option<&Path>) -> Result<f64> {
    let mut sink = Command::new(me);
    sink.args(["tcp-sink", "127.0.0.1:0"]);
    if let Some(path) = to_file {
        sink.arg("--to-file").arg(path);
    }
    let mut sink = sink.stdout(Stdio::piped()).spawn()?;
    let mut sink_out = std::io::BufReader::new(sink.stdout.take().context("sink stdout")?);
    let mut addr = String::new();
    std::io::BufRead::read_line(&mut sink_out, &mut addr)?;
    let started = Instant::now();
    let status = Command::new(me)
        .args(["tcp-source", addr.trim()])
        .arg(source)
        .status()?;
    let mut result = String::new();
    sink_out.read_to_string(&mut result)?;
    sink.wait()?;
    if !status.success() {
        bail!("raw TCP copy failed");
    }
    Ok(started.elapsed().as_secs_f64())
}

fn start_loopback_agent(dir: &Path, name: &str, i: u16) -> Result<Proc> {
    let data = dir.join(name);
    std::fs::create_dir_all(&data)?;
    let mut agent = Command::new(bin("peer-agent")?);
    agent
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", 50153 + i * 100))
        .args([
            "--metrics-listen",
            "",
            "--web-listen",
            "",
            "--index-url",
            "127.0.0.1:50052",
            "--auth-url",
            "127.0.0.1:50051",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("P2P_USER", "admin")
        .env("P2P_PASSWORD", ADMIN_PASSWORD)
        .env("RUST_LOG", "warn");
    with_tls(&mut agent, "127.0.0.1")?;
    let proc = spawn(agent, "peer-agent", &dir.join(format!("{name}.log")))?;
    let p2p = bin("p2p")?;
    wait_until(Duration::from_secs(60), "agent to register", || {
        registered(Command::new(&p2p), &data)
    })?;
    Ok(proc)
}

fn hash(out: &Path, size_mib: u64) -> Result<()> {
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
    share(Command::new(bin("p2p")?), &dir.path().join("a"), &source)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_rtts_reads_only_connections_that_carried_data() {
        let ss = "\
ESTAB 0 0 10.77.0.2:50053 10.77.0.3:41000
\t bbr wscale:10,10 rto:260 rtt:59.479/26.657 ato:44 mss:1448 cwnd:200 bytes_sent:2632767 bytes_acked:2451320 minrtt:0.032 snd_wnd:65536
ESTAB 0 0 10.77.0.2:50053 10.77.0.4:41002
\t bbr wscale:10,10 rto:204 rtt:0.225/0.367 ato:40 mss:1448 cwnd:27 bytes_sent:10355 bytes_acked:10356 minrtt:0.012
ESTAB 0 0 10.77.0.2:50053 10.77.0.5:41004
\t bbr wscale:10,10 rto:240 rtt:38.827/4.412 ato:40 mss:1448 cwnd:52 bytes_sent:2536751 rcv_rtt:1.5 minrtt:0.023
";
        let (srtt, min) = bulk_rtts(ss);
        assert_eq!(srtt, vec![59.479, 38.827]);
        assert_eq!(min, vec![0.032, 0.023]);
        assert_eq!(median(srtt), Some(59.479));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn env_pairs_need_a_key() {
        assert_eq!(
            parse_env_pair("P2P_MAX_UPLOAD_RATE=94Mbit"),
            Ok(("P2P_MAX_UPLOAD_RATE".into(), "94Mbit".into()))
        );
        assert_eq!(parse_env_pair("A="), Ok(("A".into(), String::new())));
        assert!(parse_env_pair("=x").is_err());
        assert!(parse_env_pair("nothing").is_err());
    }
}
