//! Real processes on the hosts of an emulated LAN ([`crate::netns`]):
//! auth-svc and index-svc on host 0, one peer-agent per other host, the
//! `p2p` CLI run inside an agent's namespace against its control socket
//! (a file, so reachable from every namespace), and gRPC channels from the
//! test process into any namespace.
//!
//! The test process itself stays in the machine's own namespace, where the
//! LAN's addresses do not exist. [`channel_in`] reaches a namespace by
//! opening each TCP connection on a short-lived thread that first moves
//! into that namespace (`setns`); the socket stays there once made, so the
//! rest of the connection runs on the test's tokio runtime as usual.
//!
//! Ownership: a [`MultiHost`] owns the temp dir, the LAN and the two service
//! processes; each [`HostAgent`] owns its process. Processes are killed
//! (SIGKILL, which also ends a SIGSTOPped one) and reaped on drop, before
//! the LAN's namespaces are deleted; a panicking test prints the tail of
//! every log.

use p2p_services::tls::ClientTls;
use p2p_services::tls::issue::{CertDir, Role as CertRole};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use p2p_proto::agent::v1::agent_control_client::AgentControlClient;
use p2p_proto::auth::v1::account_service_client::AccountServiceClient;
use p2p_proto::auth::v1::auth_service_client::AuthServiceClient;
use p2p_proto::auth::v1::{CreateUserRequest, LoginRequest, Role};
use p2p_proto::index::v1::index_service_client::IndexServiceClient;
use p2p_proto::index::v1::{ListPeersRequest, Peer, PeerState};
use tonic::transport::{Channel, Uri};

use crate::netns::{Host, HostQueue, Lan, LanError, LinkShape};
use crate::{ADMIN_PASSWORD, ADMIN_USER, AgentHandle, USER_PASSWORD, binary};

/// auth-svc's port on the services host.
pub const AUTH_PORT: u16 = 50051;
/// index-svc's port on the services host.
pub const INDEX_PORT: u16 = 50052;
/// Every agent's PeerService port on its own host.
pub const PEER_PORT: u16 = 50053;

/// How long a process may take to become healthy (debug builds hash the
/// admin password with Argon2 at start).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound on one `p2p` invocation.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound on one TCP connect into a namespace.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of each log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// Why a test cannot run on an emulated LAN, or `None` when it can. Under
/// `CI=true` (where the tests run as root) an unavailable LAN is a failure,
/// not a skip.
///
/// # Panics
/// Under `CI=true` when no LAN can be built.
pub fn skip_reason() -> Option<String> {
    let reason = Lan::unavailable_reason()?;
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "multi-host tests must run in CI, but: {reason}");
    Some(reason)
}

/// A lazy gRPC channel to `addr` (`ip:port`) as seen from inside `host`'s
/// namespace: `127.0.0.1` is that host's loopback.
pub fn channel_in(host: &Host, addr: &str, tls: &ClientTls) -> Channel {
    let netns = host.netns.clone();
    let connector = tower::service_fn(move |uri: Uri| {
        let netns = netns.clone();
        async move {
            let authority = uri
                .authority()
                .ok_or_else(|| std::io::Error::other(format!("no host:port in {uri}")))?;
            let addr: SocketAddr = authority.as_str().parse().map_err(|e| {
                std::io::Error::other(format!("{authority} is not an ip:port: {e}"))
            })?;
            connect_in(netns, addr).await.map(TokioIo::new)
        }
    });
    p2p_services::client::endpoint(addr, tls)
        .expect("a valid ip:port")
        .connect_with_connector_lazy(connector)
}

/// Opens a TCP connection from inside `netns` (the machine's own namespace
/// when empty).
async fn connect_in(netns: String, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    if netns.is_empty() {
        return tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other(format!("connect to {addr} timed out")))?;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A fresh thread each time: setns changes the calling thread for good.
    std::thread::Builder::new()
        .name("netns-connect".into())
        .spawn(move || {
            let result = (|| {
                let ns = std::fs::File::open(format!("/run/netns/{netns}"))?;
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                let stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
                stream.set_nodelay(true)?;
                stream.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(stream)
            })();
            let _ = tx.send(result);
        })?;
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the netns connect thread died"))??;
    tokio::net::TcpStream::from_std(stream)
}

/// Whether the gRPC server behind `channel` reports SERVING.
async fn healthy(channel: Channel) -> bool {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = client.check(tonic_health::pb::HealthCheckRequest::default());
    matches!(
        tokio::time::timeout(Duration::from_secs(3), check).await,
        Ok(Ok(response)) if response.get_ref().status == 1
    )
}

/// One process started inside a host's namespace, restartable with the
/// same arguments, killed on drop.
pub struct HostProcess {
    name: String,
    host: Host,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    /// `ip:port` probed for health, as seen from inside the host, or a Unix
    /// socket path.
    health_addr: String,
    /// How the probe verifies it.
    health_tls: ClientTls,
    /// A CA file the process makes at start: the probe trusts it once it
    /// exists (servers that set themselves up).
    health_ca: Option<PathBuf>,
    child: Option<Child>,
}

impl HostProcess {
    /// A process to run on `host`, probed at `health_addr` (a
    /// `host:port` verified with `health_tls`, or a Unix socket path).
    fn new(
        name: impl Into<String>,
        host: &Host,
        program: PathBuf,
        args: Vec<String>,
        log: PathBuf,
        health_addr: String,
        health_tls: ClientTls,
    ) -> Self {
        Self {
            name: name.into(),
            host: host.clone(),
            program,
            args,
            log,
            health_addr,
            health_tls,
            health_ca: None,
            child: None,
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let _ = writeln!(log, "===== starting {} =====", self.name);
        let stderr = log.try_clone().map_err(|e| e.to_string())?;
        // `ip netns exec` execs the program, so the child's pid is the
        // program's own (SIGSTOP and /proc reach the real process).
        let child = self
            .host
            .command(&self.program)
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Spawns the process and waits until it reports healthy.
    async fn start(&mut self) -> Result<(), String> {
        self.spawn()?;
        if let Some(ca) = &self.health_ca {
            let deadline = Instant::now() + START_TIMEOUT;
            while !ca.exists() {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{} made no CA at {} within {START_TIMEOUT:?}\n{}",
                        self.name,
                        ca.display(),
                        self.log_tail()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.health_tls = ClientTls::from_ca_file(ca).map_err(|e| e.to_string())?;
        }
        let channel = match p2p_services::local::Target::parse(&self.health_addr) {
            p2p_services::local::Target::Unix(path) => p2p_services::local::unix_channel(&path),
            p2p_services::local::Target::Tcp(addr) => {
                channel_in(&self.host, &addr, &self.health_tls)
            }
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "{} exited during start-up with {status}\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            if healthy(channel.clone()).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not healthy at {} after {START_TIMEOUT:?}\n{}",
                    self.name,
                    self.health_addr,
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL and reap; a no-op when not running.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let child = self.child.as_ref().expect("the process is running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a live pid");
        rustix::process::kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("signal {signal:?} to {}: {e}", self.name));
    }

    fn log_tail(&self) -> String {
        let Ok(file) = std::fs::File::open(&self.log) else {
            return format!("(no log at {})", self.log.display());
        };
        let lines: Vec<String> = std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of {} ({}) -----\n{}\n----- end of {} -----",
                self.name,
                self.log.display(),
                self.log_tail(),
                self.name
            );
        }
    }
}

/// auth-svc and index-svc on host 0 of an emulated LAN whose other hosts
/// are free for agents.
pub struct MultiHost {
    auth: HostProcess,
    index: HostProcess,
    certs: CertDir,
    tls: ClientTls,
    // Declared after the processes: they die before the LAN goes, and the
    // LAN goes before the files.
    lan: Lan,
    dir: tempfile::TempDir,
}

impl MultiHost {
    /// Builds a LAN of `hosts` hosts (host 0 for the services) with every
    /// link shaped by `shape`, and starts auth-svc and index-svc (with
    /// `index_args` added, for example a short `--lease-ttl`).
    ///
    /// # Panics
    /// When the LAN cannot be built or a service does not come up.
    pub async fn start(hosts: usize, shape: LinkShape, index_args: &[&str]) -> MultiHost {
        let dir = tempfile::Builder::new()
            .prefix("p2p-multihost-")
            .tempdir()
            .expect("create the temp dir");
        let lan = Lan::create(hosts, shape).unwrap_or_else(|e| panic!("build the LAN: {e}"));
        let services = lan.host(0).clone();
        let sqlite = |name: &str| p2p_services::db::testing::sqlite_url(dir.path(), name);
        let services_ip = services.addr.to_string();
        let certs = p2p_services::tls::testing::make(
            &dir.path().join("tls"),
            &[
                ("auth", &[services_ip.as_str()], CertRole::Server),
                ("index", &[services_ip.as_str()], CertRole::Server),
            ],
        )
        .expect("make the LAN's certificates");
        let tls = p2p_services::tls::testing::client(&certs);
        let tls_args = |name: &str| -> Vec<String> {
            vec![
                "--tls-ca".into(),
                certs.ca_cert().display().to_string(),
                "--tls-cert".into(),
                certs.cert(name).display().to_string(),
                "--tls-key".into(),
                certs.key(name).display().to_string(),
            ]
        };
        let mut auth = HostProcess::new(
            "auth-svc",
            &services,
            binary("auth-svc"),
            [
                "--listen",
                &format!("0.0.0.0:{AUTH_PORT}"),
                "--metrics-listen",
                "",
                "--database-url",
                &sqlite("auth.db"),
                "--admin-user",
                ADMIN_USER,
            ]
            .map(String::from)
            .to_vec(),
            dir.path().join("auth-svc.log"),
            services.socket(AUTH_PORT),
            tls.clone(),
        );
        auth.args
            .extend(["--admin-password".into(), ADMIN_PASSWORD.into()]);
        auth.args.extend(tls_args("auth"));
        auth.start().await.unwrap_or_else(|e| panic!("{e}"));
        let mut args: Vec<String> = [
            "--listen",
            &format!("0.0.0.0:{INDEX_PORT}"),
            "--metrics-listen",
            "",
            "--database-url",
            &sqlite("index.db"),
            "--auth-url",
            &services.socket(AUTH_PORT),
        ]
        .map(String::from)
        .to_vec();
        args.extend(tls_args("index"));
        args.extend(index_args.iter().map(|a| a.to_string()));
        let mut index = HostProcess::new(
            "index-svc",
            &services,
            binary("index-svc"),
            args,
            dir.path().join("index-svc.log"),
            services.socket(INDEX_PORT),
            tls.clone(),
        );
        index.start().await.unwrap_or_else(|e| panic!("{e}"));
        MultiHost {
            auth,
            index,
            certs,
            tls,
            lan,
            dir,
        }
    }

    /// Like [`MultiHost::start`], but the servers set themselves up as a
    /// real LAN's do: both get `--state-dir` (one directory) and no TLS
    /// flags, so the first start makes the CA and the server certificate,
    /// and auth-svc announces itself by mDNS. Agents join with
    /// [`MultiHost::add_joining_agent`] and `p2p join`.
    pub async fn start_self_setup(hosts: usize, shape: LinkShape) -> MultiHost {
        let dir = tempfile::Builder::new()
            .prefix("p2p-join-")
            .tempdir()
            .expect("create the temp dir");
        let lan = Lan::create(hosts, shape).unwrap_or_else(|e| panic!("build the LAN: {e}"));
        let services = lan.host(0).clone();
        let state = dir.path().join("server");
        let certs = CertDir::new(p2p_services::tls::setup::pki_dir(&state));
        let state_arg = state.display().to_string();
        let mut auth = HostProcess::new(
            "auth-svc",
            &services,
            binary("auth-svc"),
            [
                "--listen",
                &format!("0.0.0.0:{AUTH_PORT}"),
                "--metrics-listen",
                "",
                "--state-dir",
                &state_arg,
                "--admin-user",
                ADMIN_USER,
                "--admin-password",
                ADMIN_PASSWORD,
                "--agent-index-url",
                &format!(":{INDEX_PORT}"),
                "--agent-cert-lifetime",
                "1d",
            ]
            .map(String::from)
            .to_vec(),
            dir.path().join("auth-svc.log"),
            services.socket(AUTH_PORT),
            ClientTls::Plaintext,
        );
        auth.health_ca = Some(certs.ca_cert());
        auth.start().await.unwrap_or_else(|e| panic!("{e}"));
        let tls = auth.health_tls.clone();
        let mut index = HostProcess::new(
            "index-svc",
            &services,
            binary("index-svc"),
            [
                "--listen",
                &format!("0.0.0.0:{INDEX_PORT}"),
                "--metrics-listen",
                "",
                "--state-dir",
                &state_arg,
                "--auth-url",
                &services.socket(AUTH_PORT),
                "--lease-ttl",
                "6s",
                "--heartbeat-interval",
                "1s",
            ]
            .map(String::from)
            .to_vec(),
            dir.path().join("index-svc.log"),
            services.socket(INDEX_PORT),
            tls.clone(),
        );
        index.start().await.unwrap_or_else(|e| panic!("{e}"));
        MultiHost {
            auth,
            index,
            certs,
            tls,
            lan,
            dir,
        }
    }

    /// The CA fingerprint of a self-set-up LAN, as an operator reads it.
    pub fn ca_fingerprint(&self) -> String {
        p2p_services::tls::pem_fingerprint(
            std::fs::read(self.certs.ca_cert()).expect("read the LAN's CA"),
        )
        .expect("the CA's fingerprint")
    }

    /// Starts an agent on host `host` for `name` with no server flags and
    /// no certificate: only a data dir and a wildcard listen address, as a
    /// workstation's unit starts it. It waits for `p2p join` (see
    /// [`HostAgent::join`]); [`HostAgent::wait_started`] waits for it.
    pub fn add_joining_agent(&self, host: usize, name: &str, extra_args: &[&str]) -> HostAgent {
        let host = self.lan.host(host).clone();
        let data_dir = self.dir.path().join(name);
        std::fs::create_dir_all(&data_dir).expect("create agent data dir");
        let mut args: Vec<String> = [
            "--listen",
            &format!("0.0.0.0:{PEER_PORT}"),
            "--metrics-listen",
            "",
            "--web-listen",
            "",
            "--data-dir",
            &data_dir.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let mut process = HostProcess::new(
            format!("peer-agent {name}"),
            &host,
            binary("peer-agent"),
            args,
            self.dir.path().join(format!("{name}.log")),
            data_dir.join("control.sock").display().to_string(),
            ClientTls::Plaintext,
        );
        process.spawn().unwrap_or_else(|e| panic!("{e}"));
        HostAgent {
            name: name.to_string(),
            host,
            data_dir,
            process,
        }
    }

    /// The LAN's hosts, to change an address (DHCP).
    pub fn lan_mut(&mut self) -> &mut Lan {
        &mut self.lan
    }

    /// A channel to auth-svc opened from host `host` with `tls`, for calls
    /// a workstation makes itself.
    pub fn auth_channel_from(&self, host: usize, tls: &ClientTls) -> Channel {
        channel_in(self.lan.host(host), &self.auth.health_addr, tls)
    }

    /// The LAN (host 0 runs the services).
    pub fn lan(&self) -> &Lan {
        &self.lan
    }

    /// A fresh directory in the temp dir, for test input and output files.
    pub fn scratch_dir(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        path
    }

    /// A client of index-svc, connected from the services host.
    pub fn index_client(&self) -> IndexServiceClient<Channel> {
        IndexServiceClient::new(channel_in(
            &self.index.host,
            &self.index.health_addr,
            &self.tls,
        ))
        .max_decoding_message_size(p2p_services::client::MAX_MESSAGE_BYTES)
    }

    fn auth_channel(&self) -> Channel {
        channel_in(&self.auth.host, &self.auth.health_addr, &self.tls)
    }

    /// The LAN's CA and certificates.
    pub fn certs(&self) -> &CertDir {
        &self.certs
    }

    /// An access token for `username`, straight from auth-svc.
    pub async fn access_token(&self, username: &str, password: &str) -> String {
        AuthServiceClient::new(self.auth_channel())
            .login(LoginRequest {
                username: username.into(),
                password: password.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("login as {username}: {s}"))
            .into_inner()
            .access_token
    }

    /// Creates the user `name` with [`USER_PASSWORD`].
    pub async fn create_user(&self, name: &str) {
        let token = self.access_token(ADMIN_USER, ADMIN_PASSWORD).await;
        AccountServiceClient::new(self.auth_channel())
            .create_user(p2p_services::client::with_bearer(
                CreateUserRequest {
                    username: name.into(),
                    password: USER_PASSWORD.into(),
                    role: Role::User as i32,
                },
                &token,
            ))
            .await
            .unwrap_or_else(|s| panic!("create user {name}: {s}"));
    }

    /// Creates user `name`, starts an agent for it on host `host` (with
    /// `extra_args` such as `--max-upload-rate`), logs it in through the
    /// CLI and waits until the index lists it online.
    pub async fn add_user_agent(&self, host: usize, name: &str, extra_args: &[&str]) -> HostAgent {
        self.create_user(name).await;
        let host = self.lan.host(host).clone();
        let data_dir = self.dir.path().join(name);
        std::fs::create_dir_all(&data_dir).expect("create agent data dir");
        let services = self.lan.host(0);
        let cert_name = format!("agent-{name}");
        crate::issue_agent_cert(&self.certs, &cert_name, &[&host.addr.to_string()]);
        let mut args: Vec<String> = [
            "--listen",
            &format!("0.0.0.0:{PEER_PORT}"),
            "--advertise",
            &host.socket(PEER_PORT),
            "--metrics-listen",
            "",
            "--web-listen",
            "",
            "--data-dir",
            &data_dir.display().to_string(),
            "--index-url",
            &services.socket(INDEX_PORT),
            "--auth-url",
            &services.socket(AUTH_PORT),
            "--tls-ca",
            &self.certs.ca_cert().display().to_string(),
            "--tls-cert",
            &self.certs.cert(&cert_name).display().to_string(),
            "--tls-key",
            &self.certs.key(&cert_name).display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let mut process = HostProcess::new(
            format!("peer-agent {name}"),
            &host,
            binary("peer-agent"),
            args,
            self.dir.path().join(format!("{name}.log")),
            data_dir.join("control.sock").display().to_string(),
            ClientTls::Plaintext,
        );
        process.start().await.unwrap_or_else(|e| panic!("{e}"));
        let agent = HostAgent {
            name: name.to_string(),
            host,
            data_dir,
            process,
        };
        agent.login(name, USER_PASSWORD).await;
        let peer_id = agent.status().await.peer_id;
        assert!(!peer_id.is_empty(), "{name} did not register at login");
        agent
    }

    /// Kills index-svc (SIGKILL), as in an outage.
    pub fn stop_index(&mut self) {
        self.index.kill();
    }

    /// Starts index-svc again with the same address and database.
    pub async fn start_index(&mut self) {
        self.index.start().await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// The index's view of the peer with `peer_id` (offline ones included).
    pub async fn peer(&self, token: &str, peer_id: &str) -> Option<Peer> {
        self.index_client()
            .list_peers(p2p_services::client::with_bearer(
                ListPeersRequest {
                    include_offline: true,
                },
                token,
            ))
            .await
            .ok()?
            .into_inner()
            .peers
            .into_iter()
            .find(|p| p.peer_id == peer_id)
    }

    /// Whether the index lists `peer_id` as online.
    pub async fn is_online(&self, token: &str, peer_id: &str) -> Option<bool> {
        self.peer(token, peer_id)
            .await
            .map(|p| p.state == PeerState::Online as i32)
    }
}

/// A peer-agent on its own host of the LAN, killed on drop.
pub struct HostAgent {
    name: String,
    host: Host,
    data_dir: PathBuf,
    process: HostProcess,
}

impl HostAgent {
    /// The host it runs on.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Whether the process is alive (a stopped process is).
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The process id (stable across [`HostAgent::pause`]/[`HostAgent::resume`]).
    pub fn pid(&self) -> u32 {
        self.process.child.as_ref().expect("running").id()
    }

    /// Waits until the agent serves its control API (after `p2p join`).
    pub async fn wait_started(&mut self) {
        let channel = p2p_services::local::unix_channel(&self.data_dir.join("control.sock"));
        let deadline = Instant::now() + START_TIMEOUT;
        while !healthy(channel.clone()).await {
            assert!(
                Instant::now() < deadline,
                "{} did not start within {START_TIMEOUT:?} of joining\n{}",
                self.name,
                self.process.log_tail()
            );
            assert!(
                self.process.is_running(),
                "{} exited\n{}",
                self.name,
                self.process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the agent (SIGKILL, as a crash or power cut) and starts it
    /// again with the same arguments, waiting until it serves.
    pub async fn restart(&mut self) {
        self.process.kill();
        self.process.spawn().unwrap_or_else(|e| panic!("{e}"));
        self.wait_started().await;
    }

    /// The host it runs on, to change its address.
    pub fn host_mut(&mut self) -> &mut Host {
        &mut self.host
    }

    /// SIGSTOP: the machine went to sleep.
    pub fn pause(&self) {
        self.process.signal(rustix::process::Signal::STOP);
    }

    /// SIGCONT: the machine woke up.
    pub fn resume(&self) {
        self.process.signal(rustix::process::Signal::CONT);
    }
}

impl AgentHandle for HostAgent {
    fn cli_timeout(&self) -> Duration {
        CLI_TIMEOUT
    }

    /// Its data dir.
    fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The agent's name in this test (also its user).
    fn name(&self) -> &str {
        &self.name
    }

    /// A client of its control API, over its socket.
    fn control(&self) -> AgentControlClient<Channel> {
        AgentControlClient::new(p2p_services::local::unix_channel(
            &self.data_dir.join("control.sock"),
        ))
        .max_decoding_message_size(p2p_services::client::MAX_MESSAGE_BYTES)
    }

    /// `p2p ARGS` inside the agent's host, finding its socket through
    /// `P2P_DATA_DIR`.
    fn p2p_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = self.host.tokio_command(binary("p2p"));
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

/// Cuts `host`'s link, panicking with the reason on failure.
pub fn cut(host: &Host) {
    host.cut()
        .unwrap_or_else(|e: LanError| panic!("cut {}: {e}", host.netns));
}

/// Restores `host`'s link, panicking with the reason on failure.
pub fn restore(host: &Host) {
    host.restore()
        .unwrap_or_else(|e: LanError| panic!("restore {}: {e}", host.netns));
}

/// A link shape of `rate_mbit` each way, no delay (netem is not available
/// everywhere).
pub fn rate(rate_mbit: u32) -> LinkShape {
    LinkShape {
        rate_mbit: Some(rate_mbit),
        down_mbit: None,
        delay: None,
        queue: None,
        host_queue: HostQueue::default(),
    }
}
