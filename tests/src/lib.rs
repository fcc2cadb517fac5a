//! Test support for the end-to-end tests: real `auth-svc`, `index-svc` and
//! `peer-agent` processes on loopback, driven through the `p2p` CLI and the
//! generated clients.
//!
//! Ownership: a [`Cluster`] owns the temp dir and the two service processes;
//! each [`Agent`] owns its process. Every process is killed (SIGKILL) and
//! reaped on drop, so a failing test leaves nothing running. Each process
//! writes stdout and stderr to a log file in the temp dir; when a test
//! panics, the drop prints the tail of every log so the failure explains
//! itself.
//!
//! [`netns`] builds an emulated multi-host LAN from network namespaces for
//! the tests and benchmarks that need real links.
//!
//! Binaries are the ones `cargo build --workspace --bins` put next to the
//! test executable (target/debug). Ports are chosen by binding
//! 127.0.0.1:0 and releasing the port just before the process binds it; a
//! process that loses that race is started once more on fresh ports.

pub mod audit;
pub mod hostile;
pub mod multihost;
pub mod netns;
pub mod seed;

use std::future::Future;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use p2p_proto::agent::v1::agent_control_client::AgentControlClient;
use p2p_proto::agent::v1::{ListFilesRequest, NetworkFile, StatusRequest, StatusResponse};
use p2p_proto::auth::v1::account_service_client::AccountServiceClient;
use p2p_proto::auth::v1::auth_service_client::AuthServiceClient;
use p2p_proto::auth::v1::{CreateUserRequest, IssuePeerTokenRequest, LoginRequest, Role};
use p2p_proto::index::v1::index_service_client::IndexServiceClient;
use p2p_proto::peer::v1::peer_service_client::PeerServiceClient;
use p2p_services::local::Target;
use p2p_services::tls::ClientTls;
use p2p_services::tls::issue::{CertDir, Role as CertRole};
use rand::{RngCore, SeedableRng};
use tonic::transport::Channel;

/// The admin every cluster bootstraps with.
pub const ADMIN_USER: &str = "admin";
/// The admin's password.
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
/// A password good enough for the accounts tests create.
pub const USER_PASSWORD: &str = "user-password-for-tests";

/// How long a process may take to become healthy. Debug builds hash the
/// admin password with Argon2 at start, which takes a few seconds.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound on any single `p2p` invocation.
const CLI_TIMEOUT: Duration = Duration::from_secs(180);
/// Lines of each log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Environment variable naming a directory to take the binaries from
/// instead of the target dir (for example a release build).
pub const BIN_DIR_ENV: &str = "P2P_TEST_BIN_DIR";

/// The path of a workspace binary: in `P2P_TEST_BIN_DIR` when set, else
/// built next to the test executable.
///
/// # Panics
/// When the binary was not built, with the command that builds it.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let exe = std::env::current_exe().expect("the test executable has a path");
            // target/debug/deps/<test>-<hash> → target/debug
            let mut dir = exe
                .parent()
                .expect("test executable directory")
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1, released for a process to bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// Polls `check` every 100 ms until it yields `Some`, for at most
/// `timeout`, and returns the value. Conditions are awaited this way, never
/// with a bare sleep.
///
/// # Panics
/// When the deadline passes, naming `what` was awaited.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `size` pseudo-random bytes derived from `seed` to `dir/name`-like
/// path `dir/random-<seed>-<size>.bin` and returns the path. The same seed
/// gives the same content, so two calls can make identical or different
/// files on purpose.
pub fn random_file(dir: &Path, size: usize, seed: u64) -> PathBuf {
    let path = dir.join(format!("random-{seed}-{size}.bin"));
    write_random(&path, size, seed);
    path
}

/// Writes `size` pseudo-random bytes derived from `seed` to `path`.
pub fn write_random(path: &Path, size: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(path).expect("create random file"));
    let mut block = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len());
        rng.fill_bytes(&mut block[..n]);
        file.write_all(&block[..n]).expect("write random file");
        left -= n;
    }
    file.flush().expect("flush random file");
}

/// BLAKE3 of a whole file, for byte-for-byte comparisons without holding
/// both files in memory.
pub fn file_hash(path: &Path) -> blake3::Hash {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(file)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hasher.finalize()
}

/// Asserts two files have identical content.
pub fn assert_same_content(expected: &Path, actual: &Path) {
    let (e, a) = (file_hash(expected), file_hash(actual));
    assert_eq!(
        e,
        a,
        "{} differs from {}",
        actual.display(),
        expected.display()
    );
}

/// The database behind the cluster's services.
#[derive(Debug, Clone, Default)]
pub enum Database {
    /// A SQLite file per service in the temp dir.
    #[default]
    Sqlite,
    /// One fresh PostgreSQL database per service.
    Postgres { auth_url: String, index_url: String },
}

/// How to start a [`Cluster`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Where auth-svc and index-svc keep their state.
    pub database: Database,
    /// Extra environment for index-svc (for example a short lease).
    pub index_env: Vec<(String, String)>,
    /// Extra environment for auth-svc (for example a short token lifetime).
    pub auth_env: Vec<(String, String)>,
    /// index-svc processes on the one index database (0 means 1); agents
    /// are given all of them in `--index-url`.
    pub index_replicas: usize,
}

impl ClusterOptions {
    /// Options for a PostgreSQL-backed cluster, or `None` (with the reason
    /// printed) when no PostgreSQL server is configured for tests.
    pub async fn postgres() -> Option<Self> {
        let auth_url = p2p_services::db::testing::fresh_postgres_database().await?;
        let index_url = p2p_services::db::testing::fresh_postgres_database().await?;
        Some(Self {
            database: Database::Postgres {
                auth_url,
                index_url,
            },
            ..Self::default()
        })
    }
}

/// One child process with its log, restartable on the same ports.
struct Process {
    name: String,
    program: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    /// Address probed with grpc.health.v1 to know it is up: `host:port`
    /// or a Unix socket path.
    health_addr: String,
    /// How the probe verifies it.
    health_tls: ClientTls,
    child: Option<Child>,
}

impl Process {
    fn spawn(&mut self) -> Result<(), String> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let _ = writeln!(log, "===== starting {} =====", self.name);
        let stderr = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = std::process::Command::new(&self.program);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        let child = command
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Spawns the process and waits until it reports healthy.
    async fn start(&mut self) -> Result<(), String> {
        self.spawn()?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "{} exited during start-up with {status}",
                    self.name
                ));
            }
            let healthy = match Target::parse(&self.health_addr) {
                Target::Unix(path) => p2p_services::local::probe_unix(&path, "").await,
                Target::Tcp(addr) => p2p_services::health::probe(&addr, "", &self.health_tls).await,
            };
            if healthy.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not healthy at {} after {START_TIMEOUT:?}",
                    self.name, self.health_addr
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL and reap. A no-op when not running.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit; SIGKILL after that.
    /// SIGTERM, then waits up to 60 s; SIGKILL after that. Returns whether
    /// the process exited on its own.
    async fn terminate(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        false
    }

    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn log_tail(&self) -> String {
        let Ok(file) = std::fs::File::open(&self.log) else {
            return format!("(no log at {})", self.log.display());
        };
        let lines: Vec<String> = std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines[start..].join("\n")
    }

    fn print_log_if_panicking(&self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last {LOG_TAIL_LINES} lines of {} ({}) -----\n{}\n----- end of {} -----",
                self.name,
                self.log.display(),
                self.log_tail(),
                self.name
            );
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        self.print_log_if_panicking();
    }
}

/// Starts a process, retrying once on fresh ports when the first attempt
/// dies at start-up (the port it was given was taken in the meantime).
async fn start_with_retry(mut make: impl FnMut() -> Process) -> Process {
    let mut first = make();
    match first.start().await {
        Ok(()) => first,
        Err(first_error) => {
            let log = first.log_tail();
            drop(first);
            let mut second = make();
            if let Err(e) = second.start().await {
                panic!(
                    "{e} (first attempt: {first_error})\n{}\n--- first attempt's log ---\n{log}",
                    second.log_tail()
                );
            }
            second
        }
    }
}

/// auth-svc and index-svc running as processes on loopback, with a temp dir
/// for their databases, the agents' data dirs and every log.
pub struct Cluster {
    auth: Process,
    index: Process,
    /// index-svc replicas beyond the first, on the same database.
    more_index: Vec<Process>,
    auth_addr: String,
    index_addr: String,
    /// The cluster's CA and every certificate it issued.
    certs: CertDir,
    tls: ClientTls,
    // Declared last so the processes die before their files are removed.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts auth-svc (with the admin [`ADMIN_USER`] / [`ADMIN_PASSWORD`])
    /// and index-svc, and waits until both are healthy.
    ///
    /// # Panics
    /// When a binary is missing or a service does not come up.
    pub async fn start(options: ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("p2p-e2e-")
            .tempdir()
            .expect("create the cluster's temp dir");
        let (auth_db, index_db) = match &options.database {
            Database::Sqlite => (
                p2p_services::db::testing::sqlite_url(dir.path(), "auth.db"),
                p2p_services::db::testing::sqlite_url(dir.path(), "index.db"),
            ),
            Database::Postgres {
                auth_url,
                index_url,
            } => (auth_url.clone(), index_url.clone()),
        };
        let loopback: &[&str] = &[];
        let certs = p2p_services::tls::testing::make(
            &dir.path().join("tls"),
            &[
                ("auth", loopback, CertRole::Server),
                ("index", loopback, CertRole::Server),
            ],
        )
        .expect("make the cluster's certificates");
        let tls = p2p_services::tls::testing::client(&certs);

        let auth_program = binary("auth-svc");
        let auth_log = dir.path().join("auth-svc.log");
        let auth = start_with_retry(|| {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut env = vec![
                ("AUTH_LISTEN".to_string(), addr.clone()),
                ("DATABASE_URL".to_string(), auth_db.clone()),
                ("P2P_ADMIN_USER".to_string(), ADMIN_USER.to_string()),
                ("P2P_ADMIN_PASSWORD".to_string(), ADMIN_PASSWORD.to_string()),
                ("METRICS_LISTEN".to_string(), String::new()),
            ];
            env.extend(tls_env(&certs, "auth"));
            // auth-svc holds the cluster's CA key, so EnrollmentService
            // answers (GetDeployment, agent certificates, invites); a test
            // cluster does not announce itself on the LAN.
            env.push(("P2P_CA_KEY".into(), certs.ca_key().display().to_string()));
            env.push(("P2P_NO_ANNOUNCE".into(), "true".into()));
            env.extend(options.auth_env.iter().cloned());
            Process {
                name: "auth-svc".into(),
                program: auth_program.clone(),
                env,
                log: auth_log.clone(),
                health_addr: addr,
                health_tls: tls.clone(),
                child: None,
            }
        })
        .await;
        let auth_addr = auth.health_addr.clone();

        let index_program = binary("index-svc");
        let index_log = dir.path().join("index-svc.log");
        let make_index = |index_log: PathBuf| {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut env = vec![
                ("INDEX_LISTEN".to_string(), addr.clone()),
                ("DATABASE_URL".to_string(), index_db.clone()),
                ("P2P_AUTH_URL".to_string(), auth_addr.clone()),
                ("METRICS_LISTEN".to_string(), String::new()),
                // Short leases so a killed agent stops being offered quickly.
                ("INDEX_LEASE_TTL".to_string(), "5s".to_string()),
                ("INDEX_HEARTBEAT_INTERVAL".to_string(), "1s".to_string()),
            ];
            env.extend(tls_env(&certs, "index"));
            env.extend(options.index_env.iter().cloned());
            Process {
                name: "index-svc".into(),
                program: index_program.clone(),
                env,
                log: index_log,
                health_addr: addr,
                health_tls: tls.clone(),
                child: None,
            }
        };
        // One after another: each waits until the one before has migrated.
        let index = start_with_retry(|| make_index(index_log.clone())).await;
        let mut more_index = Vec::new();
        for i in 1..options.index_replicas.max(1) {
            let log = dir.path().join(format!("index-svc-{i}.log"));
            more_index.push(start_with_retry(|| make_index(log.clone())).await);
        }
        let index_addr = index.health_addr.clone();

        Cluster {
            auth,
            index,
            more_index,
            auth_addr,
            index_addr,
            certs,
            tls,
            dir,
        }
    }

    /// The cluster's CA and certificates.
    pub fn certs(&self) -> &CertDir {
        &self.certs
    }

    /// How clients verify the cluster's services.
    pub fn tls(&self) -> &ClientTls {
        &self.tls
    }

    /// `host:port` of auth-svc.
    pub fn auth_addr(&self) -> &str {
        &self.auth_addr
    }

    /// `host:port` of index-svc.
    pub fn index_addr(&self) -> &str {
        &self.index_addr
    }

    /// The cluster's temp dir (logs, databases, agents' data dirs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh directory inside the temp dir, for test input files.
    pub fn scratch_dir(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        path
    }

    /// The process ids of auth-svc and index-svc while they run (for RSS
    /// samples in soaks).
    pub fn service_pids(&self) -> Vec<(&'static str, u32)> {
        [("auth-svc", &self.auth), ("index-svc", &self.index)]
            .into_iter()
            .filter_map(|(name, p)| Some((name, p.child.as_ref()?.id())))
            .collect()
    }

    /// Kills auth-svc (SIGKILL), as in an outage.
    pub fn stop_auth(&mut self) {
        self.auth.kill();
    }

    /// Starts auth-svc again on the same address and database.
    pub async fn start_auth(&mut self) {
        if let Err(e) = self.auth.start().await {
            panic!("{e}\n{}", self.auth.log_tail());
        }
    }

    /// Kills index-svc (SIGKILL).
    pub fn stop_index(&mut self) {
        self.index.kill();
    }

    /// Starts index-svc again on the same address and database.
    pub async fn start_index(&mut self) {
        if let Err(e) = self.index.start().await {
            panic!("{e}\n{}", self.index.log_tail());
        }
    }

    fn index_replica(&mut self, replica: usize) -> &mut Process {
        match replica {
            0 => &mut self.index,
            n => &mut self.more_index[n - 1],
        }
    }

    /// Kills index replica `replica` (0 is the first) with SIGKILL.
    pub fn stop_index_replica(&mut self, replica: usize) {
        self.index_replica(replica).kill();
    }

    /// Starts index replica `replica` again on its address.
    pub async fn start_index_replica(&mut self, replica: usize) {
        let process = self.index_replica(replica);
        if let Err(e) = process.start().await {
            panic!("{e}\n{}", process.log_tail());
        }
    }

    /// Every index replica's address, as agents get them in `--index-url`.
    pub fn index_urls(&self) -> String {
        std::iter::once(&self.index)
            .chain(&self.more_index)
            .map(|p| p.health_addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client of auth-svc's AuthService.
    pub fn auth_client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(channel(&self.auth_addr, &self.tls))
    }

    /// A client of auth-svc's AccountService.
    pub fn account_client(&self) -> AccountServiceClient<Channel> {
        AccountServiceClient::new(channel(&self.auth_addr, &self.tls))
    }

    /// A client of index-svc (calls need a bearer token: see
    /// [`Cluster::access_token`]).
    pub fn index_client(&self) -> IndexServiceClient<Channel> {
        IndexServiceClient::new(channel(&self.index_addr, &self.tls))
            .max_decoding_message_size(p2p_services::client::MAX_MESSAGE_BYTES)
    }

    /// An access token for `username`, straight from auth-svc.
    pub async fn access_token(&self, username: &str, password: &str) -> String {
        self.auth_client()
            .login(LoginRequest {
                username: username.into(),
                password: password.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("login as {username}: {s}"))
            .into_inner()
            .access_token
    }

    /// What a downloader logged in as `username` sends the agent whose
    /// peer id is `source_peer_id`: a peer token for a fresh agent key and
    /// a proof for that source.
    pub async fn peer_credentials(
        &self,
        username: &str,
        password: &str,
        source_peer_id: &str,
    ) -> PeerCredentials {
        let access = self.access_token(username, password).await;
        let key = p2p_services::auth::AgentKey::generate();
        let token = self
            .auth_client()
            .issue_peer_token(p2p_services::client::with_bearer(
                IssuePeerTokenRequest {
                    agent_public_key: key.public_base64url(),
                },
                &access,
            ))
            .await
            .unwrap_or_else(|s| panic!("peer token for {username}: {s}"))
            .into_inner()
            .token;
        let now = p2p_services::time::now_ms() / 1000;
        let proof = key.prove(source_peer_id, now, p2p_services::auth::PEER_PROOF_TTL);
        PeerCredentials { token, proof }
    }

    /// A client of the PeerService at `addr`, verifying its certificate
    /// against the cluster's CA.
    pub fn peer_client(&self, addr: &str) -> PeerServiceClient<Channel> {
        PeerServiceClient::new(channel(addr, &self.tls))
            .max_decoding_message_size(p2p_services::client::MAX_MESSAGE_BYTES)
    }

    /// A server identity signed by the cluster's CA for 127.0.0.1 (for the
    /// hostile peers a modified agent would run with a real certificate).
    pub fn loopback_identity(&self, name: &str) -> p2p_services::tls::ServerTls {
        issue_agent_cert(&self.certs, name, &["127.0.0.1"]);
        p2p_services::tls::ServerTls::from_files(&self.certs.cert(name), &self.certs.key(name))
            .expect("read the certificate just issued")
    }

    /// Creates an account (as the admin) with [`USER_PASSWORD`].
    pub async fn create_user(&self, username: &str, admin: bool) {
        let token = self.access_token(ADMIN_USER, ADMIN_PASSWORD).await;
        let role = if admin { Role::Admin } else { Role::User };
        self.account_client()
            .create_user(p2p_services::client::with_bearer(
                CreateUserRequest {
                    username: username.into(),
                    password: USER_PASSWORD.into(),
                    role: role as i32,
                },
                &token,
            ))
            .await
            .unwrap_or_else(|s| panic!("create user {username}: {s}"));
    }

    /// Creates the user `name` (password [`USER_PASSWORD`]), starts an
    /// agent named after it and logs it in as that user.
    pub async fn add_user_agent(&self, name: &str, options: AgentOptions) -> Agent {
        self.create_user(name, false).await;
        let agent = self.add_agent(name, options).await;
        agent.login(name, USER_PASSWORD).await;
        agent
    }

    /// Starts a peer-agent process named `name` (its data dir and log are
    /// named after it) and waits until its control API is healthy on its
    /// Unix socket (`<data dir>/control.sock`; also on TCP with
    /// [`AgentOptions::tcp_control`]). The agent is not logged in: see
    /// [`AgentHandle::login`].
    pub async fn add_agent(&self, name: &str, options: AgentOptions) -> Agent {
        let data_dir = self.dir.path().join(name);
        std::fs::create_dir_all(&data_dir).expect("create agent data dir");
        let control_socket = data_dir.join("control.sock");
        let program = binary("peer-agent");
        let log = self.dir.path().join(format!("{name}.log"));
        let cert_name = format!("agent-{name}");
        issue_agent_cert(&self.certs, &cert_name, &["127.0.0.1"]);
        let process = start_with_retry(|| {
            let peer = format!("127.0.0.1:{}", free_port());
            let mut env = vec![
                ("PEER_LISTEN".to_string(), peer.clone()),
                ("PEER_ADVERTISE".to_string(), peer.clone()),
                ("P2P_DATA_DIR".to_string(), data_dir.display().to_string()),
                ("P2P_INDEX_URL".to_string(), self.index_urls()),
                ("P2P_AUTH_URL".to_string(), self.auth_addr.clone()),
                ("METRICS_LISTEN".to_string(), String::new()),
                (
                    "P2P_WEB_LISTEN".to_string(),
                    format!("127.0.0.1:{}", free_port()),
                ),
            ];
            env.extend(tls_env(&self.certs, &cert_name));
            if let Some(rate) = &options.max_upload_rate {
                env.push(("P2P_MAX_UPLOAD_RATE".into(), rate.clone()));
            }
            if let Some(uploads) = options.max_uploads {
                env.push(("P2P_MAX_UPLOADS".into(), uploads.to_string()));
            }
            if options.corrupt_uploads {
                env.push(("P2P_CORRUPT_UPLOADS".into(), "true".into()));
            }
            if options.tcp_control {
                let control = format!("127.0.0.1:{}", free_port());
                env.push(("AGENT_CONTROL".into(), control));
            }
            env.extend(options.env.iter().cloned());
            Process {
                name: format!("peer-agent {name}"),
                program: program.clone(),
                env,
                log: log.clone(),
                health_addr: control_socket.display().to_string(),
                health_tls: ClientTls::Plaintext,
                child: None,
            }
        })
        .await;
        let control_tcp = process
            .env
            .iter()
            .find(|(k, _)| k == "AGENT_CONTROL")
            .map(|(_, v)| v.clone());
        let peer_addr = process
            .env
            .iter()
            .find(|(k, _)| k == "PEER_LISTEN")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let web_addr = process
            .env
            .iter()
            .find(|(k, _)| k == "P2P_WEB_LISTEN")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Agent {
            name: name.to_string(),
            control_socket,
            control_tcp,
            web_addr,
            peer_addr,
            data_dir,
            process,
        }
    }
}

/// How to start an [`Agent`].
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// `--max-upload-rate` (for example "2MiB"); unlimited when `None`.
    pub max_upload_rate: Option<String>,
    /// `--max-uploads`; the agent's default when `None`.
    pub max_uploads: Option<u32>,
    /// Fault injection: serve corrupted chunks (`--corrupt-uploads`).
    pub corrupt_uploads: bool,
    /// Also serve the control API on a loopback TCP port
    /// (`--control-listen`, token required).
    pub tcp_control: bool,
    /// Any other environment for the agent.
    pub env: Vec<(String, String)>,
}

impl AgentOptions {
    /// Limits uploads to `rate` (a peer-agent rate such as "1MiB").
    pub fn max_upload_rate(mut self, rate: &str) -> Self {
        self.max_upload_rate = Some(rate.to_string());
        self
    }

    /// Also serves the control API on loopback TCP, behind the token (see
    /// [`Agent::control_tcp_addr`]).
    pub fn tcp_control(mut self) -> Self {
        self.tcp_control = true;
        self
    }

    /// A malicious agent that corrupts every chunk it serves.
    pub fn corrupt_uploads(mut self) -> Self {
        self.corrupt_uploads = true;
        self
    }
}

/// What a `p2p` invocation printed and how it ended.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Whether the command exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Stdout as one JSON document (the last line, for `get`'s JSON lines).
    pub fn json(&self) -> serde_json::Value {
        let text = self.stdout.trim();
        let last = text.lines().last().unwrap_or_default();
        serde_json::from_str(text)
            .or_else(|_| serde_json::from_str(last))
            .unwrap_or_else(|e| panic!("p2p printed no JSON ({e}):\n{self}"))
    }

    /// Stdout as JSON lines (`get --json`).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// What a test does with an agent, wherever it runs (on loopback,
/// [`Agent`], or on a host of an emulated LAN, [`multihost::HostAgent`]):
/// implementors say how to reach its control API and run `p2p` against it;
/// everything else is written once here.
// Test support only: the futures are awaited in place, never spawned, so
// they need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait AgentHandle {
    /// The agent's name in this test (also its user for `add_user_agent`).
    fn name(&self) -> &str;

    /// The agent's data dir.
    fn data_dir(&self) -> &Path;

    /// A generated client of the agent's control API.
    fn control(&self) -> AgentControlClient<Channel>;

    /// A `p2p ARGS` command aimed at this agent, with a clean environment.
    fn p2p_command(&self, args: &[&str]) -> tokio::process::Command;

    /// Upper bound on one `p2p` invocation against this agent.
    fn cli_timeout(&self) -> Duration {
        CLI_TIMEOUT
    }

    /// The agent's Status, through the generated client.
    async fn status(&self) -> StatusResponse {
        self.control()
            .status(StatusRequest {})
            .await
            .unwrap_or_else(|s| panic!("status of {}: {s}", self.name()))
            .into_inner()
    }

    /// This agent's view of one network file, by id.
    async fn network_file(&self, file_id: &str) -> Option<NetworkFile> {
        self.control()
            .list_files(ListFilesRequest::default())
            .await
            .ok()?
            .into_inner()
            .files
            .into_iter()
            .find(|f| f.file.as_ref().is_some_and(|i| i.file_id == file_id))
    }

    /// Runs `p2p ARGS` against this agent.
    async fn p2p(&self, args: &[&str]) -> CliOutput {
        self.p2p_with_stdin(args, None).await
    }

    /// Runs `p2p ARGS` with `stdin` piped in (for `--password-stdin`).
    async fn p2p_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> CliOutput {
        use tokio::io::AsyncWriteExt;
        let mut command = self.p2p_command(args);
        if stdin.is_some() {
            command.stdin(Stdio::piped());
        }
        let mut child = command.spawn().expect("spawn p2p");
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .expect("write p2p stdin");
            drop(pipe);
        }
        let output = tokio::time::timeout(self.cli_timeout(), child.wait_with_output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "p2p {args:?} on {} ran over {:?}",
                    self.name(),
                    self.cli_timeout()
                )
            })
            .expect("wait for p2p");
        CliOutput {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs `p2p ARGS` and panics (with its output) unless it succeeds.
    async fn p2p_ok(&self, args: &[&str]) -> CliOutput {
        let output = self.p2p(args).await;
        assert!(
            output.success(),
            "p2p {args:?} on {} failed: {output}",
            self.name()
        );
        output
    }

    /// A one-time link into the agent's web app, from `p2p --json web
    /// --no-open`, as its owner.
    async fn web_link(&self) -> String {
        let output = self.p2p_ok(&["--json", "web", "--no-open"]).await;
        output.json()["url"]
            .as_str()
            .unwrap_or_else(|| panic!("no url from p2p web: {output}"))
            .to_string()
    }

    /// Logs the agent in through `p2p login --password-stdin`.
    async fn login(&self, username: &str, password: &str) {
        let output = self
            .p2p_with_stdin(
                &["login", username, "--password-stdin"],
                Some(&format!("{password}\n")),
            )
            .await;
        assert!(
            output.success(),
            "p2p login {username} on {} failed: {output}",
            self.name()
        );
    }

    /// Shares `path` through `p2p --json share` and returns the file id.
    async fn share(&self, path: &Path) -> String {
        let path = path.to_str().expect("utf-8 path");
        let output = self.p2p_ok(&["--json", "share", path]).await;
        let json = output.json();
        json["shared"][0]["file_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no file id in {json}"))
            .to_string()
    }

    /// Downloads `file` to `dest` through `p2p --json get` and returns the
    /// final path the agent reported.
    async fn get(&self, file: &str, dest: &Path) -> PathBuf {
        let dest = dest.to_str().expect("utf-8 path");
        let output = self.p2p_ok(&["--json", "get", file, "-o", dest]).await;
        let done = output.json();
        assert_eq!(done["event"], "done", "get did not finish: {output}");
        PathBuf::from(done["final_path"].as_str().expect("final_path"))
    }
}

/// A peer-agent process with its own data dir, control API and ports,
/// killed on drop.
pub struct Agent {
    name: String,
    control_socket: PathBuf,
    control_tcp: Option<String>,
    web_addr: String,
    peer_addr: String,
    data_dir: PathBuf,
    process: Process,
}

impl Agent {
    /// The control API's Unix socket (what `p2p` finds by default through
    /// `P2P_DATA_DIR`).
    pub fn control_socket(&self) -> &Path {
        &self.control_socket
    }

    /// `host:port` of the TCP control listener, when started with
    /// [`AgentOptions::tcp_control`].
    pub fn control_tcp_addr(&self) -> Option<&str> {
        self.control_tcp.as_deref()
    }

    /// The file the agent writes its TCP control token to.
    pub fn control_token_file(&self) -> PathBuf {
        self.data_dir.join("control.token")
    }

    /// `host:port` of the agent's web app.
    pub fn web_addr(&self) -> &str {
        &self.web_addr
    }

    /// `host:port` of the PeerService other agents fetch from.
    pub fn peer_addr(&self) -> &str {
        &self.peer_addr
    }

    /// Kills the agent with SIGKILL, as in a crash.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops the agent with SIGTERM, as `docker stop` does, and waits for
    /// it to exit. Panics with the agent's log if it has not exited after
    /// 60 s (it is then killed), since a clean shutdown never takes that long.
    pub async fn terminate(&mut self) {
        if !self.process.terminate().await {
            panic!(
                "{} did not exit within 60 s of SIGTERM\n{}",
                self.name,
                self.process.log_tail()
            );
        }
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Kills the agent if running and starts it again on the same ports and
    /// data dir, waiting until its control API is healthy.
    pub async fn restart(&mut self) {
        self.process.kill();
        if let Err(e) = self.process.start().await {
            panic!("{e}\n{}", self.process.log_tail());
        }
    }
}

impl AgentHandle for Agent {
    /// The agent's data dir (kept across [`Agent::restart`]).
    fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The agent's name in this test.
    fn name(&self) -> &str {
        &self.name
    }

    /// A generated client of the agent's control API, over its socket.
    fn control(&self) -> AgentControlClient<Channel> {
        AgentControlClient::new(p2p_services::local::unix_channel(&self.control_socket))
            .max_decoding_message_size(p2p_services::client::MAX_MESSAGE_BYTES)
    }

    /// A `p2p` command aimed at this agent, with a clean environment, for
    /// tests that need to drive the process themselves. It finds the agent
    /// the default way: the socket in `P2P_DATA_DIR`.
    fn p2p_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(binary("p2p"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("P2P_DATA_DIR", &self.data_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

/// A peer token and a proof for one source, as a downloader sends them.
#[derive(Debug, Clone)]
pub struct PeerCredentials {
    /// The peer token (bearer).
    pub token: String,
    /// The proof for the source.
    pub proof: String,
}

impl PeerCredentials {
    /// `message` carrying these credentials.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        p2p_services::client::with_peer_credentials(message, &self.token, &self.proof)
    }
}

/// A lazy channel to `addr`.
pub fn channel(addr: &str, tls: &ClientTls) -> Channel {
    p2p_services::client::channel(addr, tls).expect("a valid loopback address")
}

/// The environment that points a binary at its certificate `name` in
/// `certs` and at the CA.
pub fn tls_env(certs: &CertDir, name: &str) -> Vec<(String, String)> {
    vec![
        ("P2P_TLS_CA".into(), certs.ca_cert().display().to_string()),
        (
            "P2P_TLS_CERT".into(),
            certs.cert(name).display().to_string(),
        ),
        ("P2P_TLS_KEY".into(), certs.key(name).display().to_string()),
    ]
}

/// Issues (or keeps) the agent certificate `name` for `hosts`.
pub fn issue_agent_cert(certs: &CertDir, name: &str, hosts: &[&str]) {
    let (ca, _) = certs.ensure_ca().expect("the cluster's CA");
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    certs
        .ensure_leaf(&ca, name, &hosts, CertRole::Agent, false)
        .expect("issue an agent certificate");
}

/// How a joined agent in `data_dir` reaches the servers: its deployment's
/// CA and its own certificate as client certificate (what `p2p join`
/// left in `<data-dir>/deployment/`).
pub fn joined_state(data_dir: &Path) -> ClientTls {
    let dir = data_dir.join("deployment");
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("read {name} in {}: {e}", dir.display()))
    };
    ClientTls::from_ca_pem(read("ca.pem")).with_identity(read("agent.pem"), read("agent-key.pem"))
}
