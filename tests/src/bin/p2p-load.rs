//! `p2p-load`: the load generator. Starts auth-svc, index-svc and one
//! peer-agent as processes from the binaries next to this one, then
//!
//! 1. models a LAN against index-svc for a fixed time: N simulated agents
//!    (default 1,000) register and heartbeat at the agents' interval
//!    (`--heartbeat-secs`, 5 s as index-svc asks by default), and M of them
//!    (`--downloading`) also download the way the agent engine calls the
//!    index: LocateSources when a download starts and every
//!    `--locate-secs`, UpdateHoldings with the growing bitfield every
//!    `--announce-ms` and once complete, then the next file. Calls refused
//!    with RESOURCE_EXHAUSTED count as shed (not errors) and the simulated
//!    agent waits the `retry-after` hint, as agents do. It reports p50/p99/max
//!    per RPC, shed and failed calls, and each index-svc's CPU and RSS
//!    (`--index-replicas` start several on one database; agents are spread
//!    over them). With `--listers`, people on the Files view call
//!    ListFiles (a first page, sorted and counted) meanwhile, over
//!    `--listed-entries` published beforehand;
//! 2. runs M concurrent FetchChunks callers (default 100) against the agent,
//!    started with `--max-upload-rate` and `--max-uploads`: aggregate
//!    bytes/s against the limit, how many calls were refused with
//!    ResourceExhausted and how fast, p99 chunk latency of admitted
//!    streams, and the agent's peak RSS.
//!
//! It prints a table and writes `<out>/load-<backend>.json`. Build in
//! release mode first (`cargo build --release --workspace --bins`), then run
//! `target/release/p2p-load` (add `--postgres` with P2P_TEST_POSTGRES_URL
//! set, or `--index-database-url`, for PostgreSQL).
//!
//! Ownership: child processes are killed on drop; every simulated agent and
//! caller is a task in a `JoinSet` that ends at the run's deadline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use p2p_proto::agent::v1::ShareRequest;
use p2p_proto::agent::v1::agent_control_client::AgentControlClient;
use p2p_proto::auth::v1::account_service_client::AccountServiceClient;
use p2p_proto::auth::v1::auth_service_client::AuthServiceClient;
use p2p_proto::auth::v1::{CreateUserRequest, LoginRequest, Role};
use p2p_proto::index::v1::index_service_client::IndexServiceClient;
use p2p_proto::index::v1::{
    FileSort, HeartbeatRequest, ListFilesRequest, LocateSourcesRequest, Manifest, PeerLoad,
    PublishFileRequest, RegisterPeerRequest, UpdateHoldingsRequest,
};
use p2p_proto::peer::v1::peer_service_client::PeerServiceClient;
use p2p_proto::peer::v1::{ChunkRange, FetchChunksRequest};
use p2p_services::client::{MAX_MESSAGE_BYTES, with_bearer};
use p2p_services::tls::ClientTls;
use p2p_services::tls::issue::{CertDir, Role as CertRole};
use rand::{Rng, RngCore, SeedableRng};
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(
    name = "p2p-load",
    about = "Load generator: simulated agents against index-svc, concurrent FetchChunks callers against one agent."
)]
struct Cli {
    /// Directory for the JSON results.
    #[arg(long, env = "P2P_LOAD_OUT", default_value = "bench-results")]
    out: PathBuf,
    /// index-svc's (and auth-svc's) database: fresh PostgreSQL databases on
    /// the server named by P2P_TEST_POSTGRES_URL.
    #[arg(long, env = "P2P_LOAD_POSTGRES")]
    postgres: bool,
    /// index-svc's database URL (default: a SQLite file in a temp dir).
    #[arg(long, env = "P2P_LOAD_INDEX_DATABASE_URL")]
    index_database_url: Option<String>,
    /// Simulated agents against index-svc.
    #[arg(long, env = "P2P_LOAD_AGENTS", default_value_t = 1000)]
    agents: usize,
    /// Users the simulated agents are spread over.
    #[arg(long, env = "P2P_LOAD_USERS", default_value_t = 10)]
    users: usize,
    /// HTTP/2 connections the simulated agents share.
    #[arg(long, env = "P2P_LOAD_CONNECTIONS", default_value_t = 100)]
    connections: usize,
    /// Files published for the agents to locate and hold.
    #[arg(long, env = "P2P_LOAD_FILES", default_value_t = 50)]
    files: usize,
    /// Seconds between one simulated agent's heartbeats (index-svc's
    /// default --heartbeat-interval is 5 s).
    #[arg(long, env = "P2P_LOAD_HEARTBEAT_SECS", default_value_t = 5)]
    heartbeat_secs: u64,
    /// Of the agents, how many are downloading at any time.
    #[arg(long, env = "P2P_LOAD_DOWNLOADING", default_value_t = 100)]
    downloading: usize,
    /// Seconds between a download's LocateSources calls (the agent asks
    /// the index at the start and then every `RELOCATE_EVERY`, 8 s, in
    /// peer-agent's `download/coordinator.rs`).
    #[arg(long, env = "P2P_LOAD_LOCATE_SECS", default_value_t = 8)]
    locate_secs: u64,
    /// Milliseconds between a download's UpdateHoldings (the agent
    /// coalesces them to one per `ANNOUNCE_EVERY`, 5 s, in peer-agent's
    /// `download/coordinator.rs`).
    #[arg(long, env = "P2P_LOAD_ANNOUNCE_MS", default_value_t = 5000)]
    announce_ms: u64,
    /// Announcements a download takes to complete (its length in
    /// --announce-ms steps: 8 × 5 s, a 40 s download).
    #[arg(long, env = "P2P_LOAD_DOWNLOAD_STEPS", default_value_t = 8)]
    download_steps: u32,
    /// Seconds at the start of the index run whose Heartbeat, LocateSources
    /// and UpdateHoldings calls are left out of the figures (the
    /// registration storm); RegisterPeer is always counted.
    #[arg(long, env = "P2P_LOAD_WARMUP_SECS", default_value_t = 0)]
    warmup_secs: u64,
    /// index-svc processes started on the one index database.
    #[arg(long, env = "P2P_LOAD_INDEX_REPLICAS", default_value_t = 1)]
    index_replicas: usize,
    /// Length of the index run, in seconds.
    #[arg(long, env = "P2P_LOAD_INDEX_SECS", default_value_t = 45)]
    index_secs: u64,
    /// Concurrent FetchChunks callers against the agent.
    #[arg(long, env = "P2P_LOAD_CALLERS", default_value_t = 100)]
    callers: usize,
    /// The agent's --max-upload-rate.
    #[arg(long, env = "P2P_LOAD_MAX_UPLOAD_RATE", default_value = "40MiB")]
    max_upload_rate: String,
    /// The agent's --max-uploads.
    #[arg(long, env = "P2P_LOAD_MAX_UPLOADS", default_value_t = 8)]
    max_uploads: u32,
    /// Size of the file the agent serves, in MiB.
    #[arg(long, env = "P2P_LOAD_FILE_MIB", default_value_t = 64)]
    file_mib: u64,
    /// Length of the FetchChunks run, in seconds.
    #[arg(long, env = "P2P_LOAD_FETCH_SECS", default_value_t = 30)]
    fetch_secs: u64,
    /// Tiny entries published before the index run, so the listers below
    /// page through a network of this size (30,000 for the Files view's
    /// figure).
    #[arg(long, env = "P2P_LOAD_LISTED_ENTRIES", default_value_t = 0)]
    listed_entries: u64,
    /// People looking at the Files view during the index run: each calls
    /// ListFiles for a first page of 100 (a sort picked at random, the
    /// total counted) every --list-ms.
    #[arg(long, env = "P2P_LOAD_LISTERS", default_value_t = 0)]
    listers: usize,
    /// Milliseconds between one lister's ListFiles calls.
    #[arg(long, env = "P2P_LOAD_LIST_MS", default_value_t = 1000)]
    list_ms: u64,
    /// Skip the index run.
    #[arg(long)]
    skip_index: bool,
    /// Skip the FetchChunks run.
    #[arg(long)]
    skip_fetch: bool,
}

const ADMIN_PASSWORD: &str = "load-admin-password";
const USER_PASSWORD: &str = "load-user-password";
/// Seconds at the start of the FetchChunks run left out of the rate (the
/// bucket starts empty and callers are still connecting).
const FETCH_WARMUP: Duration = Duration::from_secs(2);
/// Upper bound on one RPC of the load.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process killed when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("exe dir")?.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: run `cargo build --release --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// The run's CA and certificates (every service and the agent use TLS, as
/// deployed), and how callers verify them.
static TLS: std::sync::OnceLock<(CertDir, ClientTls)> = std::sync::OnceLock::new();

fn tls() -> &'static ClientTls {
    &TLS.get().expect("certificates are made first in main").1
}

/// The TLS flags of the binary whose certificate is `name`.
fn tls_args(name: &str) -> Vec<String> {
    let certs = &TLS.get().expect("certificates are made first in main").0;
    vec![
        "--tls-ca".into(),
        certs.ca_cert().display().to_string(),
        "--tls-cert".into(),
        certs.cert(name).display().to_string(),
        "--tls-key".into(),
        certs.key(name).display().to_string(),
    ]
}

async fn spawn(
    name: &str,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
    health: &str,
) -> Result<Proc> {
    let log = std::fs::File::create(log)?;
    let child = Command::new(binary(name)?)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {name}"))?;
    let mut proc = Proc { child };
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe(health).await.is_err() {
        if let Some(status) = proc.child.try_wait()? {
            bail!("{name} exited at start with {status}");
        }
        if Instant::now() > deadline {
            bail!("{name} not healthy at {health} after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(proc)
}

/// (VmRSS, VmHWM) of a process, in bytes.
fn memory_bytes(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds (user + system) a process used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 12th and 13th of them, in clock ticks (100 per second on Linux).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Latencies, sheds and errors of one kind of call.
#[derive(Debug, Default)]
struct Calls {
    latencies_us: Vec<u64>,
    shed: u64,
    errors: BTreeMap<String, u64>,
}

impl Calls {
    /// Records a call; returns the wait a shed call asks for.
    fn record<T>(
        &mut self,
        started: Instant,
        result: &Result<T, tonic::Status>,
    ) -> Option<Duration> {
        match result {
            Ok(_) => self.latencies_us.push(started.elapsed().as_micros() as u64),
            Err(status)
                if status.code() == Code::ResourceExhausted
                    && p2p_services::admission::retry_after(status).is_some() =>
            {
                self.shed += 1;
                return p2p_services::admission::retry_after(status);
            }
            Err(status) => {
                *self
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1
            }
        }
        None
    }

    fn merge(&mut self, other: Calls) {
        self.latencies_us.extend(other.latencies_us);
        self.shed += other.shed;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }

    fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let rank = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[rank] as f64 / 1000.0
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn summary(&mut self, secs: f64) -> serde_json::Value {
        let ok = self.latencies_us.len() as u64;
        serde_json::json!({
            "ok": ok,
            "shed": self.shed,
            "errors": self.error_count(),
            "errors_by_code": self.errors,
            "per_second": ok as f64 / secs,
            "p50_ms": self.percentile_ms(0.50),
            "p99_ms": self.percentile_ms(0.99),
            "max_ms": self.percentile_ms(1.0),
        })
    }
}

/// Every RPC a simulated agent makes.
#[derive(Debug, Default)]
struct AgentCalls {
    register: Calls,
    heartbeat: Calls,
    locate: Calls,
    update: Calls,
    list: Calls,
}

/// A channel to a service or agent PeerService (TLS).
fn channel(addr: &str) -> Result<Channel> {
    Ok(p2p_services::client::channel(addr, tls())?)
}

async fn login(auth: &str, user: &str, password: &str) -> Result<String> {
    Ok(AuthServiceClient::new(channel(auth)?)
        .login(LoginRequest {
            username: user.into(),
            password: password.into(),
        })
        .await
        .with_context(|| format!("log in as {user}"))?
        .into_inner()
        .access_token)
}

/// A synthetic manifest: valid geometry, random hashes (no data exists).
fn synthetic_manifest(i: usize, rng: &mut impl RngCore) -> Manifest {
    let chunk_size = 256 * 1024u32;
    let chunks = 8 + (i % 120);
    let mut hashes = vec![0u8; chunks * 32];
    rng.fill_bytes(&mut hashes);
    let mut file_hash = vec![0u8; 32];
    rng.fill_bytes(&mut file_hash);
    Manifest {
        name: format!("load-{i}.bin"),
        size_bytes: chunks as u64 * u64::from(chunk_size),
        mime_type: "application/octet-stream".into(),
        chunk_size_bytes: chunk_size,
        chunk_hashes: hashes,
        file_hash,
        ..Default::default()
    }
}

fn load(rng: &mut impl Rng) -> PeerLoad {
    PeerLoad {
        active_uploads: rng.gen_range(0..8),
        max_uploads: 8,
        upload_rate_bps: rng.gen_range(0..50_000_000),
        max_upload_rate_bps: 50_000_000,
        uploaded_bytes_last_60s: rng.gen_range(0..1_000_000_000),
        free_disk_bytes: 100_000_000_000,
    }
}

/// How a simulated agent uses the index.
#[derive(Debug, Clone, Copy)]
struct Pattern {
    heartbeat: Duration,
    /// `Some` for a downloading agent.
    download: Option<DownloadPattern>,
}

#[derive(Debug, Clone, Copy)]
struct DownloadPattern {
    locate_every: Duration,
    announce_every: Duration,
    steps: u32,
}

/// A download in progress: the file and the chunks verified so far.
struct Download {
    file: usize,
    held: Vec<u8>,
    chunks: u32,
    step: u32,
    /// Whether the first LocateSources (which also fetches the manifest,
    /// as the agent's does) was made.
    located: bool,
}

impl Download {
    fn start(file: usize, chunks: u32) -> Self {
        Self {
            file,
            held: vec![0; (chunks as usize).div_ceil(8)],
            chunks,
            step: 0,
            located: false,
        }
    }

    /// Marks the next share of chunks verified; true once complete.
    fn advance(&mut self, steps: u32) -> bool {
        self.step += 1;
        let upto = (u64::from(self.chunks) * u64::from(self.step) / u64::from(steps.max(1)))
            .min(u64::from(self.chunks)) as u32;
        for c in 0..upto {
            self.held[(c / 8) as usize] |= 0x80 >> (c % 8);
        }
        upto >= self.chunks
    }
}

/// Runs one call with the load's deadline and records it; a shed call
/// makes the simulated agent wait the hinted delay, as agents back off.
async fn timed<T>(
    calls: &mut Calls,
    deadline: tokio::time::Instant,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Option<T> {
    let started = Instant::now();
    let result = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("timeout")));
    if let Some(wait) = calls.record(started, &result) {
        let jitter = Duration::from_millis(rand::random::<u64>() % 1000);
        tokio::time::sleep_until((tokio::time::Instant::now() + wait + jitter).min(deadline)).await;
    }
    result.ok().map(tonic::Response::into_inner)
}

/// One person on the Files view until `deadline`: a first page of 100 in
/// a random order, counted, every `every`.
async fn lister(
    mut index: IndexServiceClient<Channel>,
    token: Arc<String>,
    every: Duration,
    measure_from: tokio::time::Instant,
    deadline: tokio::time::Instant,
) -> AgentCalls {
    let mut calls = AgentCalls::default();
    let mut warmup = Calls::default();
    // People do not look in step: each starts at a random point of the
    // period, as the simulated agents' heartbeats do.
    let offset = every.mul_f64(rand::random::<f64>());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sorts = [
        FileSort::Unspecified,
        FileSort::Name,
        FileSort::Size,
        FileSort::Added,
        FileSort::Holders,
    ];
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return calls,
            _ = tick.tick() => {}
        }
        let request = ListFilesRequest {
            page_size: 100,
            sort: sorts[rand::random::<usize>() % sorts.len()] as i32,
            descending: rand::random(),
            include_total: true,
            ..Default::default()
        };
        let target = if tokio::time::Instant::now() < measure_from {
            &mut warmup
        } else {
            &mut calls.list
        };
        timed(
            target,
            deadline,
            index.list_files(with_bearer(request, &token)),
        )
        .await;
    }
}

/// One simulated agent until `deadline`.
async fn simulated_agent(
    i: usize,
    mut index: IndexServiceClient<Channel>,
    token: Arc<String>,
    files: Arc<Vec<(String, u32)>>,
    pattern: Pattern,
    measure_from: tokio::time::Instant,
    deadline: tokio::time::Instant,
) -> AgentCalls {
    // Calls made before `measure_from` land here and are not reported.
    let mut warmup = Calls::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
    let mut calls = AgentCalls::default();
    // Spread the agents' start over one heartbeat interval.
    let offset = pattern.heartbeat.mul_f64(rng.r#gen::<f64>());
    tokio::time::sleep_until((tokio::time::Instant::now() + offset).min(deadline)).await;
    let request = RegisterPeerRequest {
        advertise_addr: format!("10.{}.{}.{}:50053", i / 65536, (i / 256) % 256, i % 256),
        load: Some(load(&mut rng)),
        agent_version: "p2p-load".into(),
        ..Default::default()
    };
    let Some(registered) = timed(
        &mut calls.register,
        deadline,
        index.register_peer(with_bearer(request, &token)),
    )
    .await
    else {
        return calls;
    };
    let peer_id = registered.peer_id;
    let now = tokio::time::Instant::now();
    let mut heartbeat = tokio::time::interval_at(now + pattern.heartbeat, pattern.heartbeat);
    // Idle agents never tick these.
    let far = Duration::from_secs(86_400);
    let dl = pattern.download;
    let mut locate = tokio::time::interval_at(now, dl.map_or(far, |d| d.locate_every));
    let mut announce = tokio::time::interval_at(
        now + dl.map_or(far, |d| d.announce_every),
        dl.map_or(far, |d| d.announce_every),
    );
    let mut download = dl.map(|_| {
        let file = rng.gen_range(0..files.len());
        Download::start(file, files[file].1)
    });
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return calls,
            _ = heartbeat.tick() => {
                let request = HeartbeatRequest {
                    peer_id: peer_id.clone(),
                    load: Some(load(&mut rng)),
                };
                let target = if tokio::time::Instant::now() < measure_from { &mut warmup } else { &mut calls.heartbeat };
                timed(target, deadline, index.heartbeat(with_bearer(request, &token))).await;
            }
            _ = locate.tick(), if download.is_some() => {
                let Some(d) = &mut download else { continue };
                let request = LocateSourcesRequest {
                    file_id: files[d.file].0.clone(),
                    peer_id: peer_id.clone(),
                    wanted: d.held.iter().map(|b| !b).collect::<Vec<u8>>(),
                    limit: 16,
                    include_manifest: !d.located,
                };
                d.located = true;
                // The wanted field must not mark chunks past the end.
                let mut request = request;
                let spare = request.wanted.len() * 8 - d.chunks as usize;
                if let Some(last) = request.wanted.last_mut() {
                    *last &= 0xffu8 << spare;
                }
                let target = if tokio::time::Instant::now() < measure_from { &mut warmup } else { &mut calls.locate };
                timed(target, deadline, index.locate_sources(with_bearer(request, &token))).await;
            }
            _ = announce.tick(), if download.is_some() => {
                let (Some(d), Some(p)) = (&mut download, dl) else { continue };
                let complete = d.advance(p.steps);
                let request = UpdateHoldingsRequest {
                    peer_id: peer_id.clone(),
                    file_id: files[d.file].0.clone(),
                    bitfield: if complete { Vec::new() } else { d.held.clone() },
                    complete,
                };
                let target = if tokio::time::Instant::now() < measure_from { &mut warmup } else { &mut calls.update };
                timed(target, deadline, index.update_holdings(with_bearer(request, &token))).await;
                if complete {
                    let file = rng.gen_range(0..files.len());
                    *d = Download::start(file, files[file].1);
                    locate.reset_immediately();
                }
            }
        }
    }
}

async fn index_run(
    cli: &Cli,
    auth: &str,
    index_addrs: &[String],
    index_pids: &[u32],
) -> Result<serde_json::Value> {
    let admin = login(auth, "admin", ADMIN_PASSWORD).await?;
    let mut tokens = Vec::new();
    for u in 0..cli.users.max(1) {
        let name = format!("load{u}");
        AccountServiceClient::new(channel(auth)?)
            .create_user(with_bearer(
                CreateUserRequest {
                    username: name.clone(),
                    password: USER_PASSWORD.into(),
                    role: Role::User as i32,
                },
                &admin,
            ))
            .await
            .with_context(|| format!("create user {name}"))?;
        tokens.push(Arc::new(login(auth, &name, USER_PASSWORD).await?));
    }
    // Connections alternate between the replicas, so agents (which share
    // connections by their number) are spread evenly over them.
    let channels: Vec<Channel> = (0..cli.connections.max(index_addrs.len()))
        .map(|c| channel(&index_addrs[c % index_addrs.len()]))
        .collect::<Result<_>>()?;
    let client = |i: usize| {
        IndexServiceClient::new(channels[i % channels.len()].clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut files = Vec::new();
    for i in 0..cli.files.max(1) {
        let manifest = synthetic_manifest(i, &mut rng);
        let chunks = (manifest.chunk_hashes.len() / 32) as u32;
        let published = client(i)
            .publish_file(with_bearer(
                PublishFileRequest {
                    manifest: Some(manifest),
                    peer_id: String::new(),
                },
                &tokens[i % tokens.len()],
            ))
            .await
            .context("publish a synthetic file")?
            .into_inner();
        files.push((
            published.file.map(|f| f.file_id).unwrap_or_default(),
            chunks,
        ));
    }
    let files = Arc::new(files);
    if cli.listed_entries > 0 {
        let took =
            p2p_tests::seed::publish_many(client(0), &tokens[0], cli.listed_entries, 7, |n| {
                format!("listed-{n:06}.txt")
            })
            .await;
        println!(
            "published {} entries to list in {took:.1?}",
            cli.listed_entries
        );
    }
    let secs = cli.index_secs.saturating_sub(cli.warmup_secs).max(1) as f64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cli.index_secs);
    let measure_from = tokio::time::Instant::now() + Duration::from_secs(cli.warmup_secs);
    let heartbeat = Duration::from_secs(cli.heartbeat_secs.max(1));
    let downloading = DownloadPattern {
        locate_every: Duration::from_secs(cli.locate_secs.max(1)),
        announce_every: Duration::from_millis(cli.announce_ms.max(50)),
        steps: cli.download_steps.max(1),
    };
    let cpu_before: Vec<f64> = index_pids.iter().map(|&p| cpu_secs(p)).collect();
    let own_cpu_before = cpu_secs(std::process::id());
    let run_started = Instant::now();
    let mut agents = JoinSet::new();
    for i in 0..cli.agents {
        let pattern = Pattern {
            heartbeat,
            download: (i < cli.downloading).then_some(downloading),
        };
        agents.spawn(simulated_agent(
            i,
            client(i),
            tokens[i % tokens.len()].clone(),
            files.clone(),
            pattern,
            measure_from,
            deadline,
        ));
    }
    for i in 0..cli.listers {
        agents.spawn(lister(
            client(i),
            tokens[i % tokens.len()].clone(),
            Duration::from_millis(cli.list_ms.max(10)),
            measure_from,
            deadline,
        ));
    }
    let mut total = AgentCalls::default();
    while let Some(joined) = agents.join_next().await {
        let calls = joined.context("a simulated agent panicked")?;
        total.register.merge(calls.register);
        total.heartbeat.merge(calls.heartbeat);
        total.locate.merge(calls.locate);
        total.update.merge(calls.update);
        total.list.merge(calls.list);
    }
    let elapsed = run_started.elapsed().as_secs_f64();
    let replicas: Vec<serde_json::Value> = index_pids
        .iter()
        .zip(&cpu_before)
        .map(|(&pid, before)| {
            let (rss, hwm) = memory_bytes(pid);
            serde_json::json!({
                "cpu_percent": (cpu_secs(pid) - before) / elapsed * 100.0,
                "rss_bytes": rss,
                "peak_rss_bytes": hwm,
            })
        })
        .collect();
    let generator_cpu_percent = (cpu_secs(std::process::id()) - own_cpu_before) / elapsed * 100.0;
    let machine_load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (rss, hwm) = memory_bytes(index_pids[0]);
    let shed = total.register.shed
        + total.heartbeat.shed
        + total.locate.shed
        + total.update.shed
        + total.list.shed;
    let all = total.register.latencies_us.len()
        + total.heartbeat.latencies_us.len()
        + total.locate.latencies_us.len()
        + total.update.latencies_us.len()
        + total.list.latencies_us.len();
    let errors = total.register.error_count()
        + total.heartbeat.error_count()
        + total.locate.error_count()
        + total.update.error_count()
        + total.list.error_count();
    Ok(serde_json::json!({
        "agents": cli.agents,
        "users": cli.users,
        "connections": cli.connections,
        "files": cli.files,
        "heartbeat_secs": cli.heartbeat_secs,
        "downloading": cli.downloading.min(cli.agents),
        "locate_secs": cli.locate_secs,
        "announce_ms": cli.announce_ms,
        "duration_secs": cli.index_secs,
        "warmup_secs": cli.warmup_secs,
        "requests_per_second": all as f64 / secs,
        "errors": errors,
        "shed": shed,
        "index_replicas": replicas,
        "generator_cpu_percent": generator_cpu_percent,
        "machine_loadavg_after": machine_load.trim(),
        "rpcs": {
            "RegisterPeer": total.register.summary(secs),
            "Heartbeat": total.heartbeat.summary(secs),
            "LocateSources": total.locate.summary(secs),
            "UpdateHoldings": total.update.summary(secs),
            "ListFiles": total.list.summary(secs),
        },
        "listed_entries": cli.listed_entries,
        "listers": cli.listers,
        "index_rss_bytes": rss,
        "index_peak_rss_bytes": hwm,
    }))
}

/// What one FetchChunks caller saw.
#[derive(Debug, Default)]
struct CallerSeen {
    admitted: u64,
    refused: u64,
    other_errors: BTreeMap<String, u64>,
    refusal_latency_us: Vec<u64>,
    chunk_latency_us: Vec<u64>,
}

/// What every FetchChunks caller shares.
struct FetchTarget {
    peer_addr: String,
    token: String,
    proof: String,
    file_id: String,
    chunks: u32,
    /// Bytes received after `window_start`.
    bytes_in_window: AtomicU64,
    window_start: tokio::time::Instant,
    deadline: tokio::time::Instant,
}

async fn fetch_caller(i: usize, target: Arc<FetchTarget>) -> CallerSeen {
    let FetchTarget {
        ref peer_addr,
        ref token,
        ref proof,
        ref file_id,
        chunks,
        ref bytes_in_window,
        window_start,
        deadline,
    } = *target;
    let mut seen = CallerSeen::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + i as u64);
    let Ok(channel) = channel(peer_addr) else {
        return seen;
    };
    let mut client = PeerServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    while tokio::time::Instant::now() < deadline {
        let count = 4.min(chunks);
        let start = rng.gen_range(0..=chunks - count);
        let request = FetchChunksRequest {
            file_id: file_id.clone(),
            ranges: vec![ChunkRange { start, count }],
            ..Default::default()
        };
        let started = Instant::now();
        let call = tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            call = client.fetch_chunks(p2p_services::client::with_peer_credentials(request, token, proof)) => call,
        };
        let mut stream = match call {
            Ok(response) => {
                seen.admitted += 1;
                response.into_inner()
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                seen.refused += 1;
                seen.refusal_latency_us
                    .push(started.elapsed().as_micros() as u64);
                // Go elsewhere for a moment, as a real downloader would.
                let pause = Duration::from_millis(rng.gen_range(50..250));
                tokio::time::sleep_until((tokio::time::Instant::now() + pause).min(deadline)).await;
                continue;
            }
            Err(status) => {
                *seen
                    .other_errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut last = Instant::now();
        loop {
            let message = tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                message = tokio::time::timeout(CALL_TIMEOUT, stream.message()) => message,
            };
            match message {
                Ok(Ok(Some(chunk))) => {
                    seen.chunk_latency_us
                        .push(last.elapsed().as_micros() as u64);
                    last = Instant::now();
                    if tokio::time::Instant::now() >= window_start {
                        bytes_in_window.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(status)) => {
                    *seen
                        .other_errors
                        .entry(format!("{:?}", status.code()))
                        .or_default() += 1;
                    break;
                }
                Err(_) => {
                    *seen.other_errors.entry("Stalled".into()).or_default() += 1;
                    break;
                }
            }
        }
    }
    seen
}

fn percentile_ms(values: &mut [u64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    values[((values.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

/// A health probe of `target`: `host:port` or a Unix socket path.
async fn probe(target: &str) -> Result<(), String> {
    match p2p_services::local::Target::parse(target) {
        p2p_services::local::Target::Unix(path) => p2p_services::local::probe_unix(&path, "").await,
        p2p_services::local::Target::Tcp(addr) => {
            p2p_services::health::probe(&addr, "", tls()).await
        }
    }
}

async fn fetch_run(cli: &Cli, dir: &Path, auth: &str, index: &str) -> Result<serde_json::Value> {
    let limit_bps = parse_rate(&cli.max_upload_rate)?;
    let peer = format!("127.0.0.1:{}", free_port()?);
    let data_dir = dir.join("agent");
    let control = data_dir.join("control.sock");
    std::fs::create_dir_all(&data_dir)?;
    let mut args: Vec<String> = [
        "--listen",
        &peer,
        "--metrics-listen",
        "",
        "--web-listen",
        "",
        "--data-dir",
        &data_dir.display().to_string(),
        "--index-url",
        index,
        "--auth-url",
        auth,
        "--max-upload-rate",
        &cli.max_upload_rate,
        "--max-uploads",
        &cli.max_uploads.to_string(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(tls_args("agent"));
    let agent = spawn(
        "peer-agent",
        &args,
        &[("P2P_USER", "admin"), ("P2P_PASSWORD", ADMIN_PASSWORD)],
        &dir.join("peer-agent.log"),
        &control.display().to_string(),
    )
    .await?;
    let file = dir.join("served.bin");
    write_random(&file, cli.file_mib << 20)?;
    let mut share = AgentControlClient::new(p2p_services::local::unix_channel(&control))
        .share(ShareRequest {
            path: file.display().to_string(),
            ..Default::default()
        })
        .await
        .context("share the served file")?
        .into_inner();
    let mut info = None;
    while let Some(progress) = share.message().await? {
        info = progress.file.or(info);
    }
    let info = info.context("the share stream ended without the file")?;
    let peer_id = AgentControlClient::new(p2p_services::local::unix_channel(&control))
        .status(p2p_proto::agent::v1::StatusRequest {})
        .await
        .context("the agent's status")?
        .into_inner()
        .peer_id;
    let access = login(auth, "admin", ADMIN_PASSWORD).await?;
    // Callers present what a real downloader does: a peer token for its
    // own key, and a proof for this one source.
    let key = p2p_services::auth::AgentKey::generate();
    let token = AuthServiceClient::new(channel(auth)?)
        .issue_peer_token(with_bearer(
            p2p_proto::auth::v1::IssuePeerTokenRequest {
                agent_public_key: key.public_base64url(),
            },
            &access,
        ))
        .await
        .context("a peer token for the agent")?
        .into_inner()
        .token;
    let proof = key.prove(
        &peer_id,
        p2p_services::time::now_ms() / 1000,
        p2p_services::auth::PEER_PROOF_TTL,
    );

    let start = tokio::time::Instant::now();
    let window_start = start + FETCH_WARMUP;
    let deadline = start + Duration::from_secs(cli.fetch_secs);
    let target = Arc::new(FetchTarget {
        peer_addr: peer.clone(),
        token,
        proof,
        file_id: info.file_id.clone(),
        chunks: info.chunk_count,
        bytes_in_window: AtomicU64::new(0),
        window_start,
        deadline,
    });
    let mut callers = JoinSet::new();
    for i in 0..cli.callers {
        callers.spawn(fetch_caller(i, target.clone()));
    }
    let mut all = CallerSeen::default();
    let mut ever_refused = 0;
    let mut never_admitted = 0;
    while let Some(joined) = callers.join_next().await {
        let seen = joined.context("a caller panicked")?;
        ever_refused += u64::from(seen.refused > 0);
        never_admitted += u64::from(seen.admitted == 0);
        all.admitted += seen.admitted;
        all.refused += seen.refused;
        all.refusal_latency_us.extend(seen.refusal_latency_us);
        all.chunk_latency_us.extend(seen.chunk_latency_us);
        for (code, n) in seen.other_errors {
            *all.other_errors.entry(code).or_default() += n;
        }
    }
    let window = deadline.duration_since(window_start).as_secs_f64();
    let rate = target.bytes_in_window.load(Ordering::Relaxed) as f64 / window;
    let (rss, hwm) = memory_bytes(agent.pid());
    drop(agent);
    Ok(serde_json::json!({
        "callers": cli.callers,
        "max_uploads": cli.max_uploads,
        "max_upload_rate_bps": limit_bps,
        "file_bytes": cli.file_mib << 20,
        "chunk_size_bytes": info.chunk_size_bytes,
        "duration_secs": cli.fetch_secs,
        "measured_secs": window,
        "bytes_per_second": rate,
        "rate_vs_limit": rate / limit_bps as f64,
        "streams_admitted": all.admitted,
        "calls_refused": all.refused,
        "callers_ever_refused": ever_refused,
        "callers_never_admitted": never_admitted,
        "refusal_p50_ms": percentile_ms(&mut all.refusal_latency_us, 0.5),
        "refusal_p99_ms": percentile_ms(&mut all.refusal_latency_us, 0.99),
        "refusal_max_ms": percentile_ms(&mut all.refusal_latency_us, 1.0),
        "chunks_received": all.chunk_latency_us.len(),
        "chunk_p50_ms": percentile_ms(&mut all.chunk_latency_us, 0.5),
        "chunk_p99_ms": percentile_ms(&mut all.chunk_latency_us, 0.99),
        "other_errors": all.other_errors,
        "agent_rss_bytes": rss,
        "agent_peak_rss_bytes": hwm,
    }))
}

fn write_random(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let mut rng = rand::rngs::StdRng::seed_from_u64(size);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        rng.fill_bytes(&mut block[..n]);
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(())
}

/// `40MiB`, `500KB`, `100Mbit` or bare bytes per second.
fn parse_rate(text: &str) -> Result<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let number: f64 = number.parse().with_context(|| format!("rate {text:?}"))?;
    let multiplier = match unit {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "mbit" => 1e6 / 8.0,
        other => bail!("unknown rate unit {other:?}"),
    };
    Ok((number * multiplier) as u64)
}

fn print_table(
    backend: &str,
    index: Option<&serde_json::Value>,
    fetch: Option<&serde_json::Value>,
) {
    println!("p2p-load, {backend}");
    if let Some(index) = index {
        println!(
            "\nindex-svc: {} agents ({} downloading) over {} s, {:.0} requests/s, {} shed, {} errors",
            index["agents"],
            index["downloading"],
            index["duration_secs"],
            index["requests_per_second"].as_f64().unwrap_or(0.0),
            index["shed"],
            index["errors"],
        );
        println!(
            "  load generator: CPU {:.0}% of one core; machine load average after: {}",
            index["generator_cpu_percent"].as_f64().unwrap_or(0.0),
            index["machine_loadavg_after"].as_str().unwrap_or("")
        );
        for (n, r) in index["index_replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            println!(
                "  replica {n}: CPU {:.0}% of one core, RSS {:.1} MiB, peak {:.1} MiB",
                r["cpu_percent"].as_f64().unwrap_or(0.0),
                r["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                r["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
            );
        }
        println!(
            "{:<16} {:>9} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "rpc", "ok", "shed", "errors", "per s", "p50 ms", "p99 ms", "max ms"
        );
        for rpc in [
            "RegisterPeer",
            "Heartbeat",
            "LocateSources",
            "UpdateHoldings",
            "ListFiles",
        ] {
            let r = &index["rpcs"][rpc];
            println!(
                "{:<16} {:>9} {:>7} {:>8} {:>9.1} {:>9.2} {:>9.2} {:>9.2}",
                rpc,
                r["ok"].as_u64().unwrap_or(0),
                r["shed"].as_u64().unwrap_or(0),
                r["errors"].as_u64().unwrap_or(0),
                r["per_second"].as_f64().unwrap_or(0.0),
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["max_ms"].as_f64().unwrap_or(0.0),
            );
        }
    }
    if let Some(f) = fetch {
        let mib = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / 1048576.0;
        println!(
            "\nFetchChunks: {} callers, --max-uploads {}, --max-upload-rate {:.1} MiB/s, over {:.0} s",
            f["callers"],
            f["max_uploads"],
            mib(&f["max_upload_rate_bps"]),
            f["measured_secs"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  aggregate rate     {:>10.2} MiB/s ({:.1}% of the limit)",
            mib(&f["bytes_per_second"]),
            f["rate_vs_limit"].as_f64().unwrap_or(0.0) * 100.0
        );
        println!(
            "  streams admitted   {:>10}   calls refused {} (by {} of {} callers; {} never admitted)",
            f["streams_admitted"],
            f["calls_refused"],
            f["callers_ever_refused"],
            f["callers"],
            f["callers_never_admitted"]
        );
        println!(
            "  refusal latency    p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            f["refusal_p50_ms"].as_f64().unwrap_or(0.0),
            f["refusal_p99_ms"].as_f64().unwrap_or(0.0),
            f["refusal_max_ms"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  chunk latency      p50 {:.2} ms, p99 {:.2} ms ({} chunks of {} KiB)",
            f["chunk_p50_ms"].as_f64().unwrap_or(0.0),
            f["chunk_p99_ms"].as_f64().unwrap_or(0.0),
            f["chunks_received"],
            f["chunk_size_bytes"].as_u64().unwrap_or(0) / 1024
        );
        println!(
            "  other errors       {}   agent peak RSS {:.1} MiB",
            f["other_errors"],
            mib(&f["agent_peak_rss_bytes"])
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let dir = tempfile::Builder::new().prefix("p2p-load-").tempdir()?;
    let certs = p2p_services::tls::testing::make(
        &dir.path().join("tls"),
        &[
            ("auth", &[], CertRole::Server),
            ("index", &[], CertRole::Server),
            ("agent", &[], CertRole::Agent),
        ],
    )?;
    let client_tls = p2p_services::tls::testing::client(&certs);
    let _ = TLS.set((certs, client_tls));
    let (backend, auth_db, index_db) = if cli.postgres {
        let auth = p2p_services::db::testing::fresh_postgres_database()
            .await
            .context("--postgres needs P2P_TEST_POSTGRES_URL naming a reachable server")?;
        let index = p2p_services::db::testing::fresh_postgres_database()
            .await
            .context("a second PostgreSQL database")?;
        ("postgres", auth, index)
    } else if let Some(url) = &cli.index_database_url {
        let backend = if url.starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        };
        (
            backend,
            p2p_services::db::testing::sqlite_url(dir.path(), "auth.db"),
            url.clone(),
        )
    } else {
        (
            "sqlite",
            p2p_services::db::testing::sqlite_url(dir.path(), "auth.db"),
            p2p_services::db::testing::sqlite_url(dir.path(), "index.db"),
        )
    };

    let auth_addr = format!("127.0.0.1:{}", free_port()?);
    let mut auth_args: Vec<String> = [
        "--listen",
        &auth_addr,
        "--database-url",
        &auth_db,
        "--metrics-listen",
        "",
    ]
    .map(String::from)
    .to_vec();
    auth_args.extend(tls_args("auth"));
    let _auth = spawn(
        "auth-svc",
        &auth_args,
        &[("P2P_ADMIN_PASSWORD", ADMIN_PASSWORD)],
        &dir.path().join("auth-svc.log"),
        &auth_addr,
    )
    .await?;
    let mut index_addrs = Vec::new();
    let mut index_procs = Vec::new();
    for replica in 0..cli.index_replicas.max(1) {
        let index_addr = format!("127.0.0.1:{}", free_port()?);
        let mut index_args: Vec<String> = [
            "--listen",
            &index_addr,
            "--database-url",
            &index_db,
            "--auth-url",
            &auth_addr,
            "--metrics-listen",
            "",
            "--lease-ttl",
            &format!("{}s", cli.heartbeat_secs * 3),
            "--heartbeat-interval",
            &format!("{}s", cli.heartbeat_secs),
            // The simulated agents advertise addresses on a made-up 10/8
            // LAN while calling from loopback, as an operator allows for NAT.
            "--allow-advertise-networks",
            "10.0.0.0/8",
        ]
        .map(String::from)
        .to_vec();
        index_args.extend(tls_args("index"));
        let index = spawn(
            "index-svc",
            &index_args,
            &[],
            &dir.path().join(format!("index-svc-{replica}.log")),
            &index_addr,
        )
        .await?;
        index_addrs.push(index_addr);
        index_procs.push(index);
    }
    let index_addr = index_addrs[0].clone();
    let index_pids: Vec<u32> = index_procs.iter().map(Proc::pid).collect();

    let index_result = if cli.skip_index {
        None
    } else {
        eprintln!(
            "index run: {} simulated agents for {} s on {backend}...",
            cli.agents, cli.index_secs
        );
        Some(index_run(&cli, &auth_addr, &index_addrs, &index_pids).await?)
    };
    let fetch_result = if cli.skip_fetch {
        None
    } else {
        eprintln!(
            "FetchChunks run: {} callers for {} s...",
            cli.callers, cli.fetch_secs
        );
        Some(fetch_run(&cli, dir.path(), &auth_addr, &index_addr).await?)
    };

    print_table(backend, index_result.as_ref(), fetch_result.as_ref());
    std::fs::create_dir_all(&cli.out)?;
    let replicas = match cli.index_replicas {
        0 | 1 => String::new(),
        n => format!("-{n}replicas"),
    };
    let path = cli.out.join(format!(
        "load-{backend}-{}agents{replicas}.json",
        cli.agents
    ));
    let report = serde_json::json!({
        "backend": backend,
        "index": index_result,
        "fetch": fetch_result,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("\nwrote {}", path.display());
    Ok(())
}
