//! Shared setup for peer-agent's integration tests: a real auth-svc and
//! index-svc, and agents, all in this process on ephemeral loopback ports
//! with temporary data dirs, driven through the generated AgentControl
//! client over each agent's control socket. Every server runs in a task owned by its handle; dropping the
//! handle signals shutdown, so nothing outlives its test.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use p2p_proto::agent::v1 as pb;
use p2p_proto::agent::v1::agent_control_client::AgentControlClient;
use p2p_proto::auth::v1 as auth_pb;
use p2p_proto::auth::v1::auth_service_client::AuthServiceClient;
use p2p_proto::index::v1 as index_pb;
use p2p_services::client::channel;
use p2p_services::tls::ClientTls;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(30);
/// The bootstrap admin's password.
pub const ADMIN_PASSWORD: &str = "admin-password-1";

/// A server running in a task; dropping it signals shutdown.
pub use p2p_services::serve::testing::SpawnedServer as Server;

async fn listener() -> (tokio::net::TcpListener, String) {
    p2p_services::serve::testing::ephemeral_listener()
        .await
        .expect("bind an ephemeral port")
}

/// auth-svc and index-svc, with a temp dir for everything.
pub struct Cluster {
    pub auth: Server,
    pub index: Server,
    pub dir: tempfile::TempDir,
}

/// How to start an agent.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    pub max_upload_rate: Option<String>,
    pub max_uploads: Option<u32>,
    pub corrupt_uploads: bool,
}

/// An agent running in this process.
pub struct Agent {
    pub name: String,
    pub control: AgentControlClient<Channel>,
    pub peer_addr: String,
    pub data_dir: PathBuf,
    pub server: Server,
}

impl Cluster {
    /// Starts auth-svc (admin / [`ADMIN_PASSWORD`]) and index-svc.
    pub async fn start() -> Self {
        p2p_services::telemetry::init(p2p_services::telemetry::LogFormat::Text);
        let dir = tempfile::tempdir().expect("temp dir");
        let (auth_listener, auth_addr) = listener().await;
        let auth_config = auth_svc::Config::try_parse_from([
            "auth-svc",
            "--database-url",
            &format!("sqlite://{}", dir.path().join("auth.db").display()),
            "--admin-password",
            ADMIN_PASSWORD,
            "--metrics-listen",
            "",
            // In-process and on loopback; the TLS paths are proven by the
            // end-to-end tests in tests/.
            "--insecure-plaintext",
        ])
        .expect("auth flags");
        let auth = Server::spawn(auth_addr.clone(), |shutdown| async move {
            auth_svc::run(auth_config, auth_listener, shutdown)
                .await
                .expect("auth-svc runs");
        });
        let (index_listener, index_addr) = listener().await;
        let index_config = index_svc::Config::try_parse_from([
            "index-svc",
            "--database-url",
            &format!("sqlite://{}", dir.path().join("index.db").display()),
            "--auth-url",
            &format!("http://{auth_addr}"),
            "--lease-ttl",
            "5s",
            "--heartbeat-interval",
            "1s",
            "--metrics-listen",
            "",
            "--insecure-plaintext",
        ])
        .expect("index flags");
        let index = Server::spawn(index_addr.clone(), |shutdown| async move {
            index_svc::run(index_config, index_listener, shutdown)
                .await
                .expect("index-svc runs");
        });
        Self { auth, index, dir }
    }

    /// Starts an agent named `name` (not logged in).
    pub async fn agent(&self, name: &str, options: AgentOptions) -> Agent {
        let data_dir = self.dir.path().join(name);
        let (peer_listener, peer_addr) = listener().await;
        let mut args = vec![
            "peer-agent".to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--index-url".into(),
            format!("http://{}", self.index.addr),
            "--auth-url".into(),
            format!("http://{}", self.auth.addr),
            "--metrics-listen".into(),
            String::new(),
            "--insecure-plaintext".into(),
        ];
        if let Some(rate) = &options.max_upload_rate {
            args.extend(["--max-upload-rate".into(), rate.clone()]);
        }
        if let Some(max) = options.max_uploads {
            args.extend(["--max-uploads".into(), max.to_string()]);
        }
        if options.corrupt_uploads {
            args.push("--corrupt-uploads".into());
        }
        let config = peer_agent::Config::try_parse_from(args).expect("agent flags");
        let server = Server::spawn(peer_addr.clone(), |shutdown| async move {
            peer_agent::run(config, peer_listener, None, None, shutdown)
                .await
                .expect("agent runs");
        });
        let socket = data_dir.join("control.sock");
        eventually(|| async { p2p_services::local::probe_unix(&socket, "").await.ok() }).await;
        let control = AgentControlClient::new(p2p_services::local::unix_channel(&socket));
        Agent {
            name: name.to_string(),
            control,
            peer_addr,
            data_dir,
            server,
        }
    }

    /// Starts an agent and logs it in as the admin.
    pub async fn logged_in_agent(&self, name: &str, options: AgentOptions) -> Agent {
        let mut agent = self.agent(name, options).await;
        agent.login("admin", ADMIN_PASSWORD).await;
        agent
    }

    /// An access token for the admin, straight from auth-svc.
    pub async fn admin_token(&self) -> String {
        let mut auth = AuthServiceClient::new(
            channel(&self.auth.addr, &ClientTls::Plaintext).expect("auth channel"),
        );
        eventually(|| {
            let mut auth = auth.clone();
            async move {
                auth.login(auth_pb::LoginRequest {
                    username: "admin".into(),
                    password: ADMIN_PASSWORD.into(),
                })
                .await
                .ok()
                .map(|r| r.into_inner().access_token)
            }
        })
        .await;
        auth.login(auth_pb::LoginRequest {
            username: "admin".into(),
            password: ADMIN_PASSWORD.into(),
        })
        .await
        .expect("admin login")
        .into_inner()
        .access_token
    }

    /// The admin's credentials for fetching from the agent whose peer id
    /// is `source_peer_id`: a peer token for a fresh agent key and a proof
    /// for that source.
    pub async fn admin_peer_credentials(&self, source_peer_id: &str) -> (String, String) {
        let access = self.admin_token().await;
        let key = p2p_services::auth::AgentKey::generate();
        let token = AuthServiceClient::new(
            channel(&self.auth.addr, &ClientTls::Plaintext).expect("auth channel"),
        )
        .issue_peer_token(p2p_services::client::with_bearer(
            auth_pb::IssuePeerTokenRequest {
                agent_public_key: key.public_base64url(),
            },
            &access,
        ))
        .await
        .expect("issue a peer token")
        .into_inner()
        .token;
        let now = p2p_services::time::now_ms() / 1000;
        let proof = key.prove(source_peer_id, now, p2p_services::auth::PEER_PROOF_TTL);
        (token, proof)
    }

    /// Writes `len` pseudo-random bytes (from `seed`) to a file in the temp dir.
    pub fn random_file(&self, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        let path = self.dir.path().join("sources").join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("sources dir");
        std::fs::write(&path, &data).expect("write source file");
        (path, data)
    }
}

impl Agent {
    /// Logs in (retrying while the services start) and waits until the
    /// agent is registered with the index.
    pub async fn login(&mut self, user: &str, password: &str) {
        let control = self.control.clone();
        let response = eventually(|| {
            let mut control = control.clone();
            async move {
                control
                    .login(pb::LoginRequest {
                        username: user.into(),
                        password: password.into(),
                    })
                    .await
                    .ok()
            }
        })
        .await
        .into_inner();
        if response.peer_id.is_empty() {
            eventually(|| async { Some(self.status().await.peer_id).filter(|p| !p.is_empty()) })
                .await;
        }
    }

    /// The agent's status.
    pub async fn status(&self) -> pb::StatusResponse {
        self.control
            .clone()
            .status(pb::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    /// The agent's transfer counters.
    pub async fn counters(&self) -> pb::TransferCounters {
        self.status().await.counters.expect("counters")
    }

    /// Shares `path` and returns the published file.
    pub async fn share(&self, path: &Path) -> index_pb::FileInfo {
        let mut stream = self
            .control
            .clone()
            .share(pb::ShareRequest {
                path: path.display().to_string(),
                name: String::new(),
                mime_type: String::new(),
                replace: false,
            })
            .await
            .expect("share starts")
            .into_inner();
        let mut last = None;
        while let Some(progress) = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("share progresses")
            .expect("share succeeds")
        {
            last = Some(progress);
        }
        last.and_then(|p| p.file)
            .expect("the last message carries the file")
    }

    /// Downloads `file` to `destination` and returns the last progress
    /// message, or the status the stream ended with.
    pub async fn download(
        &self,
        file: &str,
        destination: &str,
        force: bool,
    ) -> Result<pb::DownloadProgress, tonic::Status> {
        let mut stream = self
            .control
            .clone()
            .download(pb::DownloadRequest {
                file: file.into(),
                destination: destination.into(),
                force,
            })
            .await?
            .into_inner();
        let mut last = None;
        loop {
            match tokio::time::timeout(WAIT, stream.message())
                .await
                .expect("download progresses")?
            {
                Some(progress) => last = Some(progress),
                None => return last.ok_or_else(|| tonic::Status::internal("no progress")),
            }
        }
    }

    /// This agent's view of one network file.
    pub async fn network_file(&self, file_id: &str) -> Option<pb::NetworkFile> {
        self.control
            .clone()
            .list_files(pb::ListFilesRequest::default())
            .await
            .expect("list files")
            .into_inner()
            .files
            .into_iter()
            .find(|f| f.file.as_ref().is_some_and(|i| i.file_id == file_id))
    }
}

/// Polls `probe` until it yields a value, failing the test after [`WAIT`].
pub async fn eventually<T, F, Fut>(mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
