//! Shared test setup: a database per test (SQLite file or fresh
//! PostgreSQL database), a real auth-svc on 127.0.0.1:0 that stops when
//! dropped, generated clients, and small assertions on gRPC statuses.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use auth_svc::Config;
use clap::Parser;
use p2p_proto::auth::v1::account_service_client::AccountServiceClient;
use p2p_proto::auth::v1::auth_service_client::AuthServiceClient;
use p2p_proto::auth::v1::{LoginRequest, TokenPair};
use p2p_services::db::testing;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The bootstrap admin's credentials in every test server.
pub const ADMIN: &str = "admin";
/// The bootstrap admin's password.
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

/// How long any single wait in a test may take.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A database for one test; a SQLite file lives as long as this value.
pub struct TestDb {
    /// URL to pass to `--database-url`.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A new SQLite file in a temporary directory.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = testing::sqlite_url(dir.path(), "auth.db");
        Self {
            url,
            _dir: Some(dir),
        }
    }

    /// A new PostgreSQL database, or None (with the reason printed) when no
    /// server is configured.
    pub async fn postgres() -> Option<Self> {
        testing::fresh_postgres_database()
            .await
            .map(|url| Self { url, _dir: None })
    }
}

/// A running auth-svc.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The server's throwaway CA and certificate (auth-svc serves TLS).
    pub certs: p2p_services::tls::issue::CertDir,
    /// How clients verify it.
    pub tls: p2p_services::tls::ClientTls,
    _certs_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), auth_svc::Error>>>,
}

impl TestServer {
    /// Starts auth-svc on `db` with the test admin and extra flags, and
    /// waits until it answers health checks.
    pub async fn start(db: &TestDb, extra: &[&str]) -> Self {
        // Server logs show up in failing tests' output (RUST_LOG filters).
        p2p_services::telemetry::init(p2p_services::telemetry::LogFormat::Text);
        let certs_dir = tempfile::tempdir().expect("certs dir");
        let certs = p2p_services::tls::testing::make(
            certs_dir.path(),
            &[("auth", &[], p2p_services::tls::issue::Role::Server)],
        )
        .expect("make certificates");
        let tls = p2p_services::tls::testing::client(&certs);
        let cert = certs.cert("auth").display().to_string();
        let key = certs.key("auth").display().to_string();
        let mut args = vec![
            "auth-svc",
            "--database-url",
            &db.url,
            "--metrics-listen",
            "",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ];
        if !extra.contains(&"--admin-password") {
            args.extend_from_slice(&["--admin-password", ADMIN_PASSWORD]);
        }
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).expect("test config parses");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(auth_svc::run(config, listener, async move {
            let _ = stopped.await;
        }));
        let server = Self {
            addr,
            certs,
            tls,
            _certs_dir: certs_dir,
            stop: Some(stop),
            task: Some(task),
        };
        server.wait_until_serving().await;
        server
    }

    async fn wait_until_serving(&self) {
        let started = Instant::now();
        loop {
            if let Some(task) = &self.task
                && task.is_finished()
            {
                panic!("auth-svc exited during start-up");
            }
            if p2p_services::health::probe(&self.addr.to_string(), "", &self.tls)
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "auth-svc did not become healthy within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server gracefully and waits for `run` to return Ok.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("auth-svc stops within the deadline")
                .expect("auth-svc task did not panic")
                .expect("auth-svc run returned Ok");
        }
    }

    /// `host:port` for clients.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn channel(&self) -> Channel {
        p2p_services::client::channel(&self.addr.to_string(), &self.tls).expect("channel")
    }

    /// An AuthService client.
    pub fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel())
    }

    /// An AccountService client.
    pub fn accounts(&self) -> AccountServiceClient<Channel> {
        AccountServiceClient::new(self.channel())
    }

    /// An AuthService client whose connections come from `ip`: Linux
    /// accepts any 127.0.0.0/8 source on loopback, so tests can play
    /// several hosts.
    pub fn auth_from(&self, ip: &str) -> AuthServiceClient<Channel> {
        let ip: IpAddr = ip.parse().expect("test source address");
        let channel = p2p_services::client::endpoint(&self.addr.to_string(), &self.tls)
            .expect("endpoint")
            .local_address(Some(ip))
            .connect_lazy();
        AuthServiceClient::new(channel)
    }

    /// Logs in from the source address `ip`.
    pub async fn try_login_from(
        &self,
        ip: &str,
        username: &str,
        password: &str,
    ) -> Result<TokenPair, Status> {
        self.auth_from(ip)
            .login(LoginRequest {
                username: username.into(),
                password: password.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Logs in, panicking on failure.
    pub async fn login(&self, username: &str, password: &str) -> TokenPair {
        self.try_login(username, password)
            .await
            .unwrap_or_else(|s| panic!("login as {username} failed: {s:?}"))
    }

    /// Logs in.
    pub async fn try_login(&self, username: &str, password: &str) -> Result<TokenPair, Status> {
        self.auth()
            .login(LoginRequest {
                username: username.into(),
                password: password.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Logs in as the bootstrap admin and returns the access token.
    pub async fn admin_token(&self) -> String {
        self.login(ADMIN, ADMIN_PASSWORD).await.access_token
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Asserts a call failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needle: &str) {
    match result {
        Ok(value) => panic!("expected {code:?} containing {needle:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "wrong code: {status:?}");
            assert!(
                status.message().contains(needle),
                "message {:?} lacks {needle:?}",
                status.message()
            );
        }
    }
}

/// The `retry-after` hint (seconds) of a throttled login.
#[track_caller]
pub fn retry_after(status: &Status) -> u64 {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no retry-after hint in {status:?}"))
}

/// Runs the listed async test cases (each `async fn(TestDb)`) once on
/// SQLite and once on PostgreSQL (skipped with a printed reason when no
/// server is configured).
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::support::TestDb::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = crate::support::TestDb::postgres().await else {
                        return;
                    };
                    super::$case(db).await;
                }
            )*
        }
    };
}
