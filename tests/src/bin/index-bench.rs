//! index-bench: drives index-svc's hot paths (Heartbeat and LocateSources)
//! from many simulated peers and reports requests per second and p50/p99
//! latency per RPC, printed and written to
//! `bench-results/index-<backend>.json`.
//!
//! By default it starts auth-svc (SQLite in a temp dir) and index-svc (on
//! `--database-url`) in-process, so load generator and servers share the
//! machine; with `--index-url` it drives a running index instead. Setup
//! registers `--peers` peers and publishes `--files` files, each held by
//! `--holders-per-file` peers (one of them partial). Not a test: run it
//! with `cargo run --release -p p2p-tests --bin index-bench -- --help`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use p2p_proto::auth::v1::LoginRequest;
use p2p_proto::auth::v1::auth_service_client::AuthServiceClient;
use p2p_proto::index::v1 as pb;
use p2p_proto::index::v1::index_service_client::IndexServiceClient;
use p2p_services::client::{channel, with_bearer};
use p2p_services::db::{Backend, redact};
use p2p_services::manifest::Bitfield;
use p2p_services::tls::ClientTls;
use rand::Rng;
use rand::seq::SliceRandom;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Flags of the benchmark.
#[derive(Debug, Parser)]
#[command(
    name = "index-bench",
    about = "Load-test index-svc's Heartbeat and LocateSources"
)]
struct Args {
    /// Index database for the in-process index-svc (sqlite://PATH or
    /// postgres://...; use an empty PostgreSQL database). Default: SQLite in
    /// a temp dir.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Drive a running index-svc instead of starting one.
    #[arg(long, requires = "auth_url")]
    index_url: Option<String>,
    /// auth-svc of the running index (with --index-url).
    #[arg(long)]
    auth_url: Option<String>,
    /// Account to log in as against a running auth-svc.
    #[arg(long, default_value = "admin")]
    username: String,
    /// Its password (the in-process auth-svc uses this as the admin's).
    #[arg(
        long,
        env = "P2P_ADMIN_PASSWORD",
        default_value = "bench-admin-password"
    )]
    password: String,
    /// Simulated peers.
    #[arg(long, default_value_t = 1000)]
    peers: u32,
    /// Files published.
    #[arg(long, default_value_t = 10_000)]
    files: u32,
    /// Holders per file (the publisher, complete ones, and one partial).
    #[arg(long, default_value_t = 3)]
    holders_per_file: u32,
    /// Chunks per file.
    #[arg(long, default_value_t = 16)]
    chunks_per_file: u32,
    /// Concurrent workers during setup and the measured run.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Length of the measured run, in seconds.
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
    /// Share of measured calls that are LocateSources (the rest Heartbeat).
    #[arg(long, default_value_t = 0.5)]
    locate_share: f64,
    /// Result file; default bench-results/index-<backend>.json.
    #[arg(long)]
    out: Option<String>,
}

/// Servers started in-process; dropping the senders stops them.
struct InProcess {
    _stops: Vec<oneshot::Sender<()>>,
    _tasks: JoinSet<()>,
    _dir: tempfile::TempDir,
}

async fn start_in_process(
    args: &Args,
    database_url: &str,
) -> anyhow::Result<(String, String, InProcess)> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let auth_db = format!("sqlite://{}", dir.path().join("auth.db").display());
    let mut tasks = JoinSet::new();
    let mut stops = Vec::new();

    let auth_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let auth_addr = auth_listener.local_addr()?.to_string();
    let auth_config = auth_svc::Config::try_parse_from([
        "auth-svc",
        "--database-url",
        &auth_db,
        "--admin-password",
        &args.password,
        "--insecure-plaintext",
        "--metrics-listen",
        "",
    ])?;
    let (stop, stopped) = oneshot::channel::<()>();
    stops.push(stop);
    tasks.spawn(async move {
        if let Err(err) = auth_svc::run(auth_config, auth_listener, async {
            let _ = stopped.await;
        })
        .await
        {
            eprintln!("auth-svc failed: {err}");
        }
    });

    let index_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let index_addr = index_listener.local_addr()?.to_string();
    // A long lease: the run heartbeats random peers, not each one on time.
    let index_config = index_svc::Config::try_parse_from([
        "index-svc",
        "--database-url",
        database_url,
        "--auth-url",
        &auth_addr,
        "--lease-ttl",
        "10m",
        "--heartbeat-interval",
        "5s",
        "--insecure-plaintext",
        "--metrics-listen",
        "",
    ])?;
    wait_serving(&auth_addr, "p2p.auth.v1.AuthService").await?;
    let (stop, stopped) = oneshot::channel::<()>();
    stops.push(stop);
    tasks.spawn(async move {
        if let Err(err) = index_svc::run(index_config, index_listener, async {
            let _ = stopped.await;
        })
        .await
        {
            eprintln!("index-svc failed: {err}");
        }
    });
    wait_serving(&index_addr, "p2p.index.v1.IndexService").await?;
    Ok((
        auth_addr,
        index_addr,
        InProcess {
            _stops: stops,
            _tasks: tasks,
            _dir: dir,
        },
    ))
}

async fn wait_serving(addr: &str, service: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match p2p_services::health::probe(addr, service, &ClientTls::Plaintext).await {
            Ok(()) => return Ok(()),
            Err(err) if Instant::now() > deadline => {
                bail!("{service} at {addr} never served: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn random_load(rng: &mut impl Rng) -> pb::PeerLoad {
    let max_uploads = 8;
    let max_rate = 100_000_000;
    pb::PeerLoad {
        active_uploads: rng.gen_range(0..=max_uploads),
        max_uploads,
        upload_rate_bps: rng.gen_range(0..max_rate),
        max_upload_rate_bps: max_rate,
        uploaded_bytes_last_60s: rng.gen_range(0..max_rate * 60),
        free_disk_bytes: 1 << 40,
    }
}

fn random_manifest(index: u32, chunks: u32, rng: &mut impl Rng) -> pb::Manifest {
    let chunk = 64 * 1024u32;
    let mut hashes = vec![0u8; chunks as usize * 32];
    rng.fill(hashes.as_mut_slice());
    let mut file_hash = vec![0u8; 32];
    rng.fill(file_hash.as_mut_slice());
    pb::Manifest {
        file_id: String::new(),
        name: format!("bench-file-{index:05}.bin"),
        size_bytes: u64::from(chunks) * u64::from(chunk) - 1,
        mime_type: "application/octet-stream".into(),
        chunk_size_bytes: chunk,
        chunk_hashes: hashes,
        file_hash,
        ..Default::default()
    }
}

/// Runs `count` jobs with `workers` in flight at once; fails on the first
/// error.
async fn in_parallel<F, Fut, T>(count: u32, workers: usize, job: F) -> anyhow::Result<Vec<T>>
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut set = JoinSet::new();
    let mut results = Vec::with_capacity(count as usize);
    for i in 0..count {
        if set.len() >= workers
            && let Some(done) = set.join_next().await
        {
            results.push(done??);
        }
        set.spawn(job(i));
    }
    while let Some(done) = set.join_next().await {
        results.push(done??);
    }
    Ok(results)
}

/// Latencies and errors of one RPC during the measured run.
#[derive(Default)]
struct Samples {
    latencies_us: Vec<u64>,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        for (k, v) in other.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
    }

    fn record(&mut self, started: Instant, result: Result<(), tonic::Status>) {
        match result {
            Ok(()) => self
                .latencies_us
                .push(started.elapsed().as_micros().try_into().unwrap_or(u64::MAX)),
            Err(status) => {
                self.errors += 1;
                *self
                    .error_kinds
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
            }
        }
    }

    fn summary(&mut self, seconds: f64) -> serde_json::Value {
        self.latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.latencies_us.is_empty() {
                return 0.0;
            }
            let at = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
            self.latencies_us[at] as f64 / 1000.0
        };
        serde_json::json!({
            "requests": self.latencies_us.len(),
            "errors": self.errors,
            "error_codes": self.error_kinds,
            "requests_per_second": (self.latencies_us.len() as f64 / seconds).round(),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
        })
    }
}

struct Fleet {
    client: IndexServiceClient<Channel>,
    token: String,
    peers: Vec<String>,
    files: Vec<String>,
    chunks: u32,
}

async fn worker(fleet: Arc<Fleet>, until: Instant, locate_share: f64) -> (Samples, Samples) {
    let mut heartbeat = Samples::default();
    let mut locate = Samples::default();
    let mut client = fleet.client.clone();
    let timeout = Duration::from_secs(5);
    while Instant::now() < until {
        let (is_locate, peer, file, load, wanted) = {
            let mut rng = rand::thread_rng();
            let is_locate = rng.gen_bool(locate_share.clamp(0.0, 1.0));
            let peer = fleet.peers.choose(&mut rng).cloned().unwrap_or_default();
            let file = fleet.files.choose(&mut rng).cloned().unwrap_or_default();
            let load = random_load(&mut rng);
            let mut wanted = Bitfield::empty(fleet.chunks);
            for i in 0..fleet.chunks {
                if rng.gen_bool(0.5) {
                    wanted.set(i);
                }
            }
            (is_locate, peer, file, load, wanted)
        };
        let started = Instant::now();
        if is_locate {
            let request = with_bearer(
                pb::LocateSourcesRequest {
                    file_id: file,
                    peer_id: peer,
                    wanted: wanted.as_bytes().to_vec(),
                    limit: 0,
                    include_manifest: false,
                },
                &fleet.token,
            );
            let result = tokio::time::timeout(timeout, client.locate_sources(request))
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("bench timeout")))
                .map(|_| ());
            locate.record(started, result);
        } else {
            let request = with_bearer(
                pb::HeartbeatRequest {
                    peer_id: peer,
                    load: Some(load),
                },
                &fleet.token,
            );
            let result = tokio::time::timeout(timeout, client.heartbeat(request))
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("bench timeout")))
                .map(|_| ());
            heartbeat.record(started, result);
        }
    }
    (heartbeat, locate)
}

async fn setup(
    client: &IndexServiceClient<Channel>,
    token: &str,
    args: &Args,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let peers = in_parallel(args.peers, args.workers, |i| {
        let mut client = client.clone();
        let token = token.to_string();
        async move {
            let load = random_load(&mut rand::thread_rng());
            let request = with_bearer(
                pb::RegisterPeerRequest {
                    advertise_addr: format!(
                        "10.{}.{}.{}:7000",
                        i / 65536,
                        (i / 256) % 256,
                        i % 256
                    ),
                    load: Some(load),
                    agent_version: "index-bench".into(),
                    ..Default::default()
                },
                &token,
            );
            Ok(client.register_peer(request).await?.into_inner().peer_id)
        }
    })
    .await
    .context("registering peers")?;
    let peers = Arc::new(peers);
    let holders = args.holders_per_file.max(1);
    let chunks = args.chunks_per_file.max(1);
    let files = in_parallel(args.files, args.workers, |i| {
        let mut client = client.clone();
        let token = token.to_string();
        let peers = Arc::clone(&peers);
        async move {
            let (manifest, chosen) = {
                let mut rng = rand::thread_rng();
                let chosen: Vec<String> = peers
                    .choose_multiple(&mut rng, holders as usize)
                    .cloned()
                    .collect();
                (random_manifest(i, chunks, &mut rng), chosen)
            };
            let publisher = chosen.first().cloned().unwrap_or_default();
            let request = with_bearer(
                pb::PublishFileRequest {
                    manifest: Some(manifest),
                    peer_id: publisher,
                },
                &token,
            );
            let file_id = client
                .publish_file(request)
                .await?
                .into_inner()
                .file
                .map(|f| f.file_id)
                .unwrap_or_default();
            let last = chosen.len().saturating_sub(1);
            for (n, peer) in chosen.iter().enumerate().skip(1) {
                let partial = n == last && holders > 2;
                let bitfield = if partial {
                    let mut field = Bitfield::empty(chunks);
                    for c in (0..chunks).step_by(2) {
                        field.set(c);
                    }
                    field.as_bytes().to_vec()
                } else {
                    Vec::new()
                };
                let request = with_bearer(
                    pb::UpdateHoldingsRequest {
                        peer_id: peer.clone(),
                        file_id: file_id.clone(),
                        bitfield,
                        complete: !partial,
                    },
                    &token,
                );
                client.update_holdings(request).await?;
            }
            Ok(file_id)
        }
    })
    .await
    .context("publishing files")?;
    let peers = Arc::try_unwrap(peers).unwrap_or_else(|shared| (*shared).clone());
    Ok((peers, files))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    p2p_services::telemetry::init(p2p_services::telemetry::LogFormat::Text);
    let (database_url, _keep_dir) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("index.db").display());
            (url, Some(dir))
        }
    };
    let (auth_addr, index_addr, servers, backend) = match &args.index_url {
        Some(index) => (
            args.auth_url.clone().unwrap_or_default(),
            index.clone(),
            None,
            "external".to_string(),
        ),
        None => {
            let backend = match Backend::of_url(&database_url) {
                Some(Backend::Sqlite) => "sqlite",
                Some(Backend::Postgres) => "postgres",
                None => bail!("unsupported --database-url {}", redact(&database_url)),
            };
            let (auth, index, servers) = start_in_process(&args, &database_url).await?;
            (auth, index, Some(servers), backend.to_string())
        }
    };

    let mut auth = AuthServiceClient::new(channel(&auth_addr, &ClientTls::Plaintext)?);
    let token = auth
        .login(LoginRequest {
            username: args.username.clone(),
            password: args.password.clone(),
        })
        .await
        .context("logging in")?
        .into_inner()
        .access_token;
    let client = IndexServiceClient::new(channel(&index_addr, &ClientTls::Plaintext)?);

    println!(
        "index-bench: {backend}, {} peers, {} files x {} holders, {} workers",
        args.peers, args.files, args.holders_per_file, args.workers
    );
    let setup_started = Instant::now();
    let (peers, files) = setup(&client, &token, &args).await?;
    let setup_secs = setup_started.elapsed().as_secs_f64();
    println!(
        "setup done in {setup_secs:.1}s; measuring for {}s",
        args.duration_secs
    );

    let fleet = Arc::new(Fleet {
        client,
        token,
        peers,
        files,
        chunks: args.chunks_per_file.max(1),
    });
    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration_secs);
    let mut set = JoinSet::new();
    for _ in 0..args.workers.max(1) {
        set.spawn(worker(Arc::clone(&fleet), until, args.locate_share));
    }
    let mut heartbeat = Samples::default();
    let mut locate = Samples::default();
    while let Some(done) = set.join_next().await {
        let (h, l) = done?;
        heartbeat.merge(h);
        locate.merge(l);
    }
    let seconds = started.elapsed().as_secs_f64();
    let total = heartbeat.latencies_us.len() + locate.latencies_us.len();
    let result = serde_json::json!({
        "backend": backend,
        "database_url": if args.index_url.is_some() { String::new() } else { redact(&database_url) },
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "in_process_servers": servers.is_some(),
        "peers": args.peers,
        "files": args.files,
        "holders_per_file": args.holders_per_file,
        "chunks_per_file": args.chunks_per_file,
        "workers": args.workers,
        "locate_share": args.locate_share,
        "setup_seconds": (setup_secs * 10.0).round() / 10.0,
        "measured_seconds": (seconds * 10.0).round() / 10.0,
        "total_requests_per_second": (total as f64 / seconds).round(),
        "rpcs": {
            "Heartbeat": heartbeat.summary(seconds),
            "LocateSources": locate.summary(seconds),
        },
    });
    let text = serde_json::to_string_pretty(&result)?;
    println!("{text}");
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| format!("bench-results/index-{backend}.json"));
    if let Some(parent) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&out, text + "\n").with_context(|| format!("writing {out}"))?;
    println!("wrote {out}");
    drop(servers);
    Ok(())
}
