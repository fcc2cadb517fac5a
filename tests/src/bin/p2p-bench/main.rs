//! `p2p-bench`: the benchmarks that prove (or disprove) the point of the
//! project, printing figures and writing them to `bench-results/`.
//!
//! - `swarm`: an emulated LAN (network namespaces, links shaped with `tc`),
//!   one seeder and N downloaders fetching the same file at once, against a
//!   central HTTP server on the seeder host and BitTorrent (aria2c with
//!   opentracker) on the same LAN in the same run, and against the
//!   Kurose & Ross lower bounds; with index requests per downloader per
//!   second and agents' CPU-seconds per GiB delivered. Needs root.
//! - `datapath`: one source to one downloader on loopback with TLS, as
//!   `p2p-chunks/1` frames and with FetchChunks, beside a raw TCP copy
//!   that fsyncs and curl fetching from nginx over HTTPS, interleaved
//!   `--runs` times: throughput and CPU-seconds per GiB on each side.
//! - `hash`: BLAKE3 throughput on one core and on all cores, and the time
//!   `p2p share` takes on a large file.
//! - `folder`: a folder of many small files to N downloaders on the
//!   emulated LAN, against aria2c with a multi-file torrent. Needs root.
//!
//! Build in release mode first: `cargo build --release --workspace --bins`,
//! then run `target/release/p2p-bench --help`. The binaries it starts are
//! taken from the directory it runs from.
//!
//! This file is the command line and nothing else. Where the rest lives:
//! - `swarm`: runs the swarm benchmark's cases, with `links` (what the
//!   links carried and their round-trip times), the baselines
//!   `bittorrent` (aria2c) and `mesh` (raw TCP), and `case` (the plan and
//!   what a case measured); `report` prints the tables and writes the
//!   result files, `plot` draws the SVG.
//! - `datapath`, `hash` and `folder`: the other benchmarks (`folder`
//!   reuses `bittorrent` for its baseline).
//! - Below them all: `cluster` (auth-svc, index-svc and agents with TLS as
//!   deployed), `process` (child processes), `usage` (CPU and memory from
//!   /proc), `payload` (the test file and its hash), `stats` (medians and
//!   ranges).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use p2p_tests::netns::{DEFAULT_QUEUE, HostQueue};

mod bittorrent;
mod case;
mod cluster;
mod datapath;
mod folder;
mod hash;
mod links;
mod mesh;
mod payload;
mod plot;
mod process;
mod report;
mod stats;
mod swarm;
mod usage;

use case::{AgentEnv, HostClass, SwarmPlan};

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
        /// Link rate of every host, each way, in Mbit/s (with --class: of
        /// the host running auth-svc and index-svc only).
        #[arg(long, default_value_t = 100)]
        rate_mbit: u32,
        /// A class of downloaders on a mixed LAN, NAME=COUNT:DOWN/UP in
        /// Mbit/s (repeatable, e.g. --class wired=4:100/100 --class
        /// wifi=4:30/10): N is their sum, and each class's slowest host is
        /// reported against its own link.
        #[arg(long = "class", value_parser = HostClass::parse, conflicts_with = "n")]
        classes: Vec<HostClass>,
        /// The class whose link the seeder has (it adds no downloader);
        /// default: the first --class.
        #[arg(long, requires = "classes")]
        seeder_class: Option<String>,
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
        /// How each host's own egress queue orders its packets: `bands`
        /// (Linux's default queue: packets marked for throughput, such as
        /// the agents' AF11 uploads, wait behind the rest) or `fifo` (one
        /// queue for everything, the model before 2026-12-07). The
        /// switch's ports are FIFOs either way.
        #[arg(long, default_value = "bands")]
        host_queue: HostQueue,
        /// An environment variable for every agent, the seeder included
        /// (KEY=VALUE, repeatable), to compare an agent setting, e.g.
        /// P2P_MAX_UPLOAD_RATE=94Mbit. Recorded in the JSON.
        #[arg(long = "agent-env", value_parser = parse_env_pair)]
        agent_env: Vec<(String, String)>,
        /// An environment variable for the seeder only, applied after
        /// --agent-env (KEY=VALUE, repeatable), e.g. P2P_MAX_UPLOADS=2.
        #[arg(long = "seeder-env", value_parser = parse_env_pair)]
        seeder_env: Vec<(String, String)>,
        /// Before the measured file, the same agents share and fetch a
        /// file of this many MiB, not measured (0: none): a LAN whose
        /// agents have run before, as an office's do, against agents
        /// started for the one file. Every figure but the time counts the
        /// measured file only.
        #[arg(long, default_value_t = 0)]
        warm_up_mib: u64,
    },
    /// FetchChunks on loopback vs raw TCP, with peak RSS.
    Datapath {
        /// File size in MiB.
        #[arg(long, default_value_t = 2048)]
        size_mib: u64,
        /// How many times to measure every case, interleaved.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Base name of the result file (`<name>.json`), so that sets of
        /// runs (an A/B's two sides) do not overwrite each other.
        #[arg(long, default_value = "datapath")]
        name: String,
    },
    /// BLAKE3 throughput and `p2p share` time.
    Hash {
        /// File size in MiB.
        #[arg(long, default_value_t = 2048)]
        size_mib: u64,
    },
    /// A folder of many small files to N downloaders on an emulated LAN vs
    /// aria2c with a multi-file torrent (root).
    Folder {
        /// Files in the folder (nested two levels deep, 100 x 10 folders).
        #[arg(long, default_value_t = 10_000)]
        files: usize,
        /// Smallest file in KiB (sizes are uniform, seeded).
        #[arg(long, default_value_t = 1)]
        min_kib: u64,
        /// Largest file in KiB.
        #[arg(long, default_value_t = 64)]
        max_kib: u64,
        /// Downloaders.
        #[arg(long, default_value_t = 4)]
        n: usize,
        /// Link rate of every host, each way, in Mbit/s.
        #[arg(long, default_value_t = 100)]
        rate_mbit: u32,
        /// Skip the BitTorrent baseline.
        #[arg(long)]
        no_bt: bool,
        /// Runs; the summary shows the median and the range.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Give up on one download after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        /// Base name of the result file (`<name>.json`).
        #[arg(long, default_value = "folder")]
        name: String,
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    cluster::set_up_tls(cli.data_path_tls)?;
    match cli.command {
        Bench::Swarm {
            n,
            size_mib,
            rate_mbit,
            classes,
            seeder_class,
            delay_ms,
            no_http,
            no_bt,
            no_mesh,
            runs,
            timeout_s,
            name,
            queue_ms,
            host_queue,
            agent_env,
            seeder_env,
            warm_up_mib,
        } => {
            std::fs::create_dir_all(&cli.out)?;
            swarm::swarm(
                &cli.out.join(name),
                &SwarmPlan {
                    ns: n,
                    sizes: size_mib,
                    rate_mbit,
                    classes,
                    seeder_class,
                    delay_ms,
                    http: !no_http,
                    bt: !no_bt,
                    mesh: !no_mesh,
                    runs: runs.max(1),
                    timeout: Duration::from_secs(timeout_s),
                    queue_ms,
                    host_queue,
                    env: AgentEnv {
                        all: agent_env,
                        seeder: seeder_env,
                    },
                    warm_up_mib,
                },
            )
        }
        Bench::Datapath {
            size_mib,
            runs,
            name,
        } => {
            std::fs::create_dir_all(&cli.out)?;
            datapath::datapath(&cli.out.join(format!("{name}.json")), size_mib, runs.max(1))
        }
        Bench::Hash { size_mib } => {
            std::fs::create_dir_all(&cli.out)?;
            hash::hash(&cli.out, size_mib)
        }
        Bench::Folder {
            files,
            min_kib,
            max_kib,
            n,
            rate_mbit,
            no_bt,
            runs,
            timeout_s,
            name,
        } => {
            std::fs::create_dir_all(&cli.out)?;
            folder::folder(
                &cli.out.join(name),
                &folder::FolderPlan {
                    files,
                    min_kib,
                    max_kib,
                    n,
                    rate_mbit,
                    runs: runs.max(1),
                    timeout: Duration::from_secs(timeout_s),
                    bt: !no_bt,
                },
            )
        }
        Bench::TcpSink { listen, to_file } => datapath::tcp_sink(&listen, to_file.as_deref()),
        Bench::TcpSource { addr, file } => datapath::tcp_source(&addr, &file),
        Bench::MeshNode(args) => mesh::node(args),
    }
}

/// `KEY=VALUE` for `--agent-env` and `--seeder-env`.
fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
