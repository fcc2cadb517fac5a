//! Shared setup for index-svc's integration tests: a real auth-svc (one per
//! test binary, on its own runtime thread) and one or more real index-svc
//! servers per test on ephemeral ports, users with tokens, manifests of
//! generated content, and a bounded polling wait.
//!
//! Every index-svc runs in a task owned by its handle; dropping the handle
//! signals shutdown, so nothing outlives its test.

#![allow(dead_code)]

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use p2p_proto::auth::v1 as auth_pb;
use p2p_proto::auth::v1::account_service_client::AccountServiceClient;
use p2p_proto::auth::v1::auth_service_client::AuthServiceClient;
use p2p_proto::index::v1 as pb;
use p2p_proto::index::v1::index_service_client::IndexServiceClient;
use p2p_services::client::{channel, with_bearer};
use p2p_services::db::testing;
use p2p_services::tls::ClientTls;
use tonic::transport::Channel;

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(15);

const ADMIN_PASSWORD: &str = "admin-password-1";
const USER_PASSWORD: &str = "user-password-1";

/// The database backend a suite run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A server running in a task; dropping it signals shutdown.
pub use p2p_services::serve::testing::SpawnedServer as Server;

async fn listener() -> (tokio::net::TcpListener, String) {
    p2p_services::serve::testing::ephemeral_listener()
        .await
        .expect("bind an ephemeral port")
}

/// The auth-svc every test in the binary shares, with its users logged
/// in. Argon2 hashing in debug builds is slow enough that one auth-svc per
/// test starves the CPU; identities are all the index needs from it.
struct SharedAuth {
    addr: String,
    admin: User,
    bob: User,
    carol: User,
}

static AUTH: OnceLock<SharedAuth> = OnceLock::new();

/// Starts auth-svc on a runtime of its own (test runtimes end with their
/// test), creates the users and logs them in.
fn start_shared_auth() -> SharedAuth {
    let (ready, started) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("shared-auth-svc".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("auth runtime");
            runtime.block_on(async move {
                let dir = tempfile::tempdir().expect("temp dir");
                let auth_db = testing::sqlite_url(dir.path(), "auth.db");
                let config = auth_svc::Config::try_parse_from([
                    "auth-svc",
                    "--database-url",
                    &auth_db,
                    "--admin-password",
                    ADMIN_PASSWORD,
                    "--metrics-listen",
                    "",
                    "--insecure-plaintext",
                ])
                .expect("auth-svc flags");
                let (listener, addr) = listener().await;
                let server = tokio::spawn(auth_svc::run(config, listener, std::future::pending()));
                let admin = login(&addr, "admin", ADMIN_PASSWORD).await;
                let bob = create_user(&addr, &admin, "bob").await;
                let carol = create_user(&addr, &admin, "carol").await;
                let _ = ready.send(SharedAuth {
                    addr,
                    admin,
                    bob,
                    carol,
                });
                if let Ok(Err(err)) = server.await {
                    panic!("shared auth-svc failed: {err}");
                }
            });
        })
        .expect("spawn the auth thread");
    started
        .recv_timeout(WAIT * 4)
        .expect("shared auth-svc starts and logs its users in")
}

/// Logs in, retrying while auth-svc is still starting.
async fn login(addr: &str, username: &str, password: &str) -> User {
    let pair = eventually("auth-svc accepts a login", || async move {
        let mut client = AuthServiceClient::new(channel(addr, &ClientTls::Plaintext).ok()?);
        client
            .login(auth_pb::LoginRequest {
                username: username.to_string(),
                password: password.to_string(),
            })
            .await
            .ok()
            .map(|r| r.into_inner())
    })
    .await;
    let user = pair.user.expect("login returns the user");
    User {
        id: user.id,
        name: user.username,
        token: pair.access_token,
    }
}

/// Creates a plain user through AccountService and logs it in.
async fn create_user(addr: &str, admin: &User, username: &str) -> User {
    let mut accounts =
        AccountServiceClient::new(channel(addr, &ClientTls::Plaintext).expect("auth channel"));
    accounts
        .create_user(with_bearer(
            auth_pb::CreateUserRequest {
                username: username.to_string(),
                password: USER_PASSWORD.to_string(),
                role: auth_pb::Role::User as i32,
            },
            &admin.token,
        ))
        .await
        .expect("create user");
    login(addr, username, USER_PASSWORD).await
}

/// The shared auth-svc and one test's index database.
pub struct Cluster {
    auth: &'static SharedAuth,
    pub index_db: String,
    _dir: tempfile::TempDir,
}

/// A logged-in user: token and id.
#[derive(Clone)]
pub struct User {
    pub id: String,
    pub name: String,
    pub token: String,
}

impl Cluster {
    /// Picks a fresh index database (the shared auth-svc starts on first
    /// use); `None` when the PostgreSQL run is asked for but no server is
    /// configured.
    pub async fn start(db: Db) -> Option<Self> {
        p2p_services::telemetry::init(p2p_services::telemetry::LogFormat::Text);
        let dir = tempfile::tempdir().expect("temp dir");
        let index_db = match db {
            Db::Sqlite => testing::sqlite_url(dir.path(), "index.db"),
            Db::Postgres => testing::fresh_postgres_database().await?,
        };
        let auth = tokio::task::block_in_place(|| AUTH.get_or_init(start_shared_auth));
        Some(Self {
            auth,
            index_db,
            _dir: dir,
        })
    }

    /// A plain user: `bob` or `carol`.
    pub async fn user(&self, username: &str) -> User {
        match username {
            "bob" => self.auth.bob.clone(),
            "carol" => self.auth.carol.clone(),
            other => panic!("no shared test user {other}"),
        }
    }

    /// The admin.
    pub async fn admin(&self) -> User {
        self.auth.admin.clone()
    }

    /// Starts an index-svc on the suite's database with `extra` flags and
    /// waits until it serves.
    pub async fn index(&self, extra: &[&str]) -> Server {
        let mut args = vec![
            "index-svc",
            "--database-url",
            &self.index_db,
            "--auth-url",
            &self.auth.addr,
            "--metrics-listen",
            "",
            "--insecure-plaintext",
        ];
        // The tests' peers advertise addresses on a made-up 10.0.0.0/8 LAN
        // while calling from loopback, as an operator allows for NAT.
        if !extra.contains(&"--allow-advertise-networks") {
            args.extend_from_slice(&["--allow-advertise-networks", "10.0.0.0/8"]);
        }
        args.extend_from_slice(extra);
        let config = index_svc::Config::try_parse_from(args).expect("index-svc flags");
        let (listener, addr) = listener().await;
        let server = Server::spawn(addr, |shutdown| async move {
            if let Err(err) = index_svc::run(config, listener, shutdown).await {
                panic!("index-svc failed: {err}");
            }
        });
        // Waiting until it serves also means its migrations are done, so
        // replicas started one after another never race to create tables.
        eventually("index-svc serves", || async {
            p2p_services::health::probe(
                &server.addr,
                "p2p.index.v1.IndexService",
                &ClientTls::Plaintext,
            )
            .await
            .ok()
        })
        .await;
        server
    }
}

/// An IndexService client that sends `token` with every call.
#[derive(Clone)]
pub struct Index {
    pub client: IndexServiceClient<Channel>,
    pub token: String,
}

impl Index {
    pub fn new(server: &Server, user: &User) -> Self {
        Self {
            client: IndexServiceClient::new(
                channel(&server.addr, &ClientTls::Plaintext).expect("index channel"),
            ),
            token: user.token.clone(),
        }
    }

    pub fn req<T>(&self, message: T) -> tonic::Request<T> {
        with_bearer(message, &self.token)
    }

    pub async fn register(&mut self, addr: &str, load: pb::PeerLoad) -> String {
        let request = self.req(pb::RegisterPeerRequest {
            advertise_addr: addr.to_string(),
            load: Some(load),
            agent_version: "test".into(),
            ..Default::default()
        });
        self.client
            .register_peer(request)
            .await
            .expect("register peer")
            .into_inner()
            .peer_id
    }

    pub async fn heartbeat(
        &mut self,
        peer_id: &str,
        load: pb::PeerLoad,
    ) -> Result<(), tonic::Status> {
        let request = self.req(pb::HeartbeatRequest {
            peer_id: peer_id.to_string(),
            load: Some(load),
        });
        self.client.heartbeat(request).await.map(|_| ())
    }

    pub async fn publish(
        &mut self,
        manifest: pb::Manifest,
        peer_id: &str,
    ) -> Result<pb::PublishFileResponse, tonic::Status> {
        let request = self.req(pb::PublishFileRequest {
            manifest: Some(manifest),
            peer_id: peer_id.to_string(),
        });
        self.client
            .publish_file(request)
            .await
            .map(|r| r.into_inner())
    }

    /// GetFile for `file_id`.
    pub async fn get_file(&mut self, file_id: &str) -> Result<pb::GetFileResponse, tonic::Status> {
        let request = self.req(pb::GetFileRequest {
            file_id: file_id.to_string(),
        });
        self.client.get_file(request).await.map(|r| r.into_inner())
    }

    pub async fn list(
        &mut self,
        filter: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListFilesResponse, tonic::Status> {
        self.list_with(pb::ListFilesRequest {
            name_contains: filter.to_string(),
            page_size,
            page_token: page_token.to_string(),
            ..Default::default()
        })
        .await
    }

    /// ListFiles with every field of the request the caller's.
    pub async fn list_with(
        &mut self,
        request: pb::ListFilesRequest,
    ) -> Result<pb::ListFilesResponse, tonic::Status> {
        let request = self.req(request);
        self.client
            .list_files(request)
            .await
            .map(|r| r.into_inner())
    }

    /// The peers ListPeers lists (offline ones too when asked); panics on
    /// an error.
    pub async fn peers(&mut self, include_offline: bool) -> Vec<pb::Peer> {
        let request = self.req(pb::ListPeersRequest { include_offline });
        self.client
            .list_peers(request)
            .await
            .expect("list peers")
            .into_inner()
            .peers
    }

    pub async fn locate(
        &mut self,
        file_id: &str,
        caller: &str,
        wanted: Vec<u8>,
    ) -> Result<Vec<pb::Source>, tonic::Status> {
        let request = self.req(pb::LocateSourcesRequest {
            file_id: file_id.to_string(),
            peer_id: caller.to_string(),
            wanted,
            limit: 0,
            include_manifest: false,
        });
        self.client
            .locate_sources(request)
            .await
            .map(|r| r.into_inner().sources)
    }

    pub async fn update_holdings(
        &mut self,
        peer_id: &str,
        file_id: &str,
        bitfield: Vec<u8>,
        complete: bool,
    ) -> Result<(), tonic::Status> {
        let request = self.req(pb::UpdateHoldingsRequest {
            peer_id: peer_id.to_string(),
            file_id: file_id.to_string(),
            bitfield,
            complete,
        });
        self.client.update_holdings(request).await.map(|_| ())
    }
}

/// Chunk size the test manifests use (the smallest allowed).
pub const CHUNK: u32 = 64 * 1024;

/// A valid manifest for `chunks` chunks of content derived from `seed`
/// (the last chunk is a little short).
pub fn manifest(name: &str, seed: u64, chunks: u32) -> pb::Manifest {
    let size = u64::from(chunks) * u64::from(CHUNK) - 100;
    let mut whole = blake3::Hasher::new();
    let mut hashes = Vec::new();
    let mut remaining = size;
    let mut index = 0u64;
    while remaining > 0 {
        let len = remaining.min(u64::from(CHUNK)) as usize;
        let byte = (seed.wrapping_mul(31).wrapping_add(index) % 251) as u8;
        let data = vec![byte; len];
        hashes.extend_from_slice(blake3::hash(&data).as_bytes());
        whole.update(&data);
        remaining -= len as u64;
        index += 1;
    }
    pb::Manifest {
        file_id: String::new(),
        name: name.to_string(),
        size_bytes: size,
        mime_type: "application/octet-stream".into(),
        chunk_size_bytes: CHUNK,
        chunk_hashes: hashes,
        file_hash: whole.finalize().as_bytes().to_vec(),
        // v1: the index's tests publish manifests as older agents do.
        ..Default::default()
    }
}

/// A folder manifest of `files` (path and content, in any order) and
/// `empty_dirs`, cut into [`CHUNK`]-byte chunks, as an agent publishes it.
pub fn folder_manifest(name: &str, files: &[(&str, &[u8])], empty_dirs: &[&str]) -> pb::Manifest {
    use p2p_services::manifest::{Folder, FolderFile, Manifest, wire};
    let mut files = files.to_vec();
    files.sort_unstable_by_key(|(path, _)| *path);
    let mut hashes = Vec::new();
    let entries = files
        .iter()
        .map(|(path, data)| {
            for chunk in data.chunks(CHUNK as usize) {
                hashes.extend_from_slice(blake3::hash(chunk).as_bytes());
            }
            FolderFile {
                path: path.to_string(),
                size_bytes: data.len() as u64,
                file_hash: *blake3::hash(data).as_bytes(),
            }
        })
        .collect();
    let mut dirs: Vec<String> = empty_dirs.iter().map(|d| d.to_string()).collect();
    dirs.sort_unstable();
    let folder = Folder::new(entries, dirs, CHUNK).expect("a valid folder");
    wire::to_proto(&Manifest::for_folder(name.into(), folder, &hashes).expect("a valid manifest"))
}

/// [`manifest`] as a v2 manifest: with every chunk's BLAKE3 chaining value.
pub fn manifest_v2(name: &str, seed: u64, chunks: u32) -> pb::Manifest {
    let mut m = manifest(name, seed, chunks);
    let mut offset = 0u64;
    for index in 0..u64::from(chunks) {
        let len = (m.size_bytes - offset).min(u64::from(CHUNK)) as usize;
        let byte = (seed.wrapping_mul(31).wrapping_add(index) % 251) as u8;
        m.chunk_chaining_values
            .extend_from_slice(&p2p_services::manifest::tree::chaining_value(
                offset,
                &vec![byte; len],
            ));
        offset += len as u64;
    }
    m
}

/// An idle peer's load with limits.
pub fn idle() -> pb::PeerLoad {
    pb::PeerLoad {
        active_uploads: 0,
        max_uploads: 8,
        upload_rate_bps: 0,
        max_upload_rate_bps: 100_000_000,
        uploaded_bytes_last_60s: 0,
        free_disk_bytes: 1 << 40,
    }
}

/// A peer near its limits.
pub fn busy() -> pb::PeerLoad {
    pb::PeerLoad {
        active_uploads: 8,
        max_uploads: 8,
        upload_rate_bps: 95_000_000,
        max_upload_rate_bps: 100_000_000,
        uploaded_bytes_last_60s: 5_000_000_000,
        free_disk_bytes: 1 << 40,
    }
}

/// Polls `check` until it returns `Some`, every 50 ms, for at most
/// [`WAIT`]; panics naming `what` when time runs out.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs each listed `async fn(Db)` as two tests, `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Db::Postgres).await
                }
            )*
        }
    };
}
