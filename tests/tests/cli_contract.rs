//! The `p2p` client against a scripted AgentControl server on a real
//! socket: every command's text and JSON output, and how each gRPC error
//! becomes a message and an exit code. This pins the client to the
//! contract independently of the real daemon.

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use p2p_proto::agent::v1 as agent;
use p2p_proto::agent::v1::agent_control_server::{AgentControl, AgentControlServer};
use p2p_proto::auth::v1 as auth;
use p2p_proto::index::v1 as index;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

const FILE_ID: &str = "aabbccddeeff00112233445566778899";
const FILE_NAME: &str = "talk.mp4";

/// A fake agent: logged out until `Login` with password "right"; knows one
/// file; records the last Download and Share requests.
#[derive(Default)]
struct ScriptedAgent {
    logged_in: AtomicBool,
    last_download: Mutex<Option<agent::DownloadRequest>>,
    last_share: Mutex<Option<agent::ShareRequest>>,
    last_invite: Mutex<Option<agent::CreateInviteRequest>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl ScriptedAgent {
    fn session(&self) -> Result<(), Status> {
        if self.logged_in.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Status::failed_precondition(
                "the agent is not logged in: call Login",
            ))
        }
    }

    fn known(&self, file: &str) -> Result<(), Status> {
        if file == FILE_NAME || FILE_ID.starts_with(file) && !file.is_empty() {
            Ok(())
        } else {
            // As the real agent marks it: the file is unknown to the network.
            let mut status = Status::not_found(format!("no file {file}"));
            status
                .metadata_mut()
                .insert("p2p-missing", "network-file".parse().unwrap());
            Err(status)
        }
    }
}

fn file_info() -> index::FileInfo {
    index::FileInfo {
        file_id: FILE_ID.into(),
        name: FILE_NAME.into(),
        size_bytes: 4 * 1024 * 1024,
        mime_type: "video/mp4".into(),
        owner_id: "u1".into(),
        owner_name: "alice".into(),
        added_at_ms: 1_714_572_180_000,
        online_holders: 3,
        complete_copies: 2,
        chunk_size_bytes: 256 * 1024,
        chunk_count: 16,
        kind: index::EntryKind::File as i32,
        entry_count: 0,
    }
}

fn user(name: &str, role: auth::Role) -> auth::User {
    auth::User {
        id: format!("id-{name}"),
        username: name.into(),
        role: role as i32,
        disabled: false,
        created_at_ms: 1_714_572_180_000,
    }
}

#[tonic::async_trait]
impl AgentControl for ScriptedAgent {
    async fn login(
        &self,
        request: Request<agent::LoginRequest>,
    ) -> Result<Response<agent::LoginResponse>, Status> {
        let request = request.into_inner();
        if request.password != "right" {
            return Err(Status::unauthenticated("invalid username or password"));
        }
        self.logged_in.store(true, Ordering::SeqCst);
        Ok(Response::new(agent::LoginResponse {
            user: Some(user(&request.username, auth::Role::Admin)),
            peer_id: "peer-1".into(),
        }))
    }

    async fn logout(
        &self,
        _: Request<agent::LogoutRequest>,
    ) -> Result<Response<agent::LogoutResponse>, Status> {
        self.logged_in.store(false, Ordering::SeqCst);
        Ok(Response::new(agent::LogoutResponse {}))
    }

    type ShareStream = BoxStream<agent::ShareProgress>;

    async fn share(
        &self,
        request: Request<agent::ShareRequest>,
    ) -> Result<Response<Self::ShareStream>, Status> {
        self.session()?;
        let request = request.into_inner();
        if request.path.ends_with("missing.bin") {
            return Err(Status::not_found(format!(
                "{} does not exist",
                request.path
            )));
        }
        *self.last_share.lock().unwrap() = Some(request);
        let total = 4 * 1024 * 1024;
        let messages = vec![
            Ok(agent::ShareProgress {
                hashed_bytes: total / 2,
                total_bytes: total,
                ..Default::default()
            }),
            Ok(agent::ShareProgress {
                hashed_bytes: total,
                total_bytes: total,
                file: Some(file_info()),
                already_published: false,
                skipped: vec!["docs/link".into()],
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn list_folder(
        &self,
        request: Request<agent::ListFolderRequest>,
    ) -> Result<Response<agent::ListFolderResponse>, Status> {
        self.session()?;
        let request = request.into_inner();
        if request.path.trim_end_matches('/') != "Course" {
            return Err(Status::not_found(format!("no folder at {}", request.path)));
        }
        let entries = vec![
            agent::FolderEntry {
                name: "week 1".into(),
                is_folder: true,
                size_bytes: 3 * 1024 * 1024,
                file_count: 12,
            },
            agent::FolderEntry {
                name: "syllabus.pdf".into(),
                is_folder: false,
                size_bytes: 2048,
                file_count: 1,
            },
        ];
        let total = entries.len() as u32;
        Ok(Response::new(agent::ListFolderResponse {
            folder: None,
            path: String::new(),
            entries: entries.into_iter().skip(request.offset as usize).collect(),
            total,
        }))
    }

    async fn list_files(
        &self,
        request: Request<agent::ListFilesRequest>,
    ) -> Result<Response<agent::ListFilesResponse>, Status> {
        self.session()?;
        let filter = request.into_inner().name_contains.to_lowercase();
        let files = if FILE_NAME.contains(&filter) {
            vec![agent::NetworkFile {
                file: Some(file_info()),
                local_state: agent::LocalState::Partial as i32,
                local_bytes: 1024 * 1024,
                local_path: String::new(),
                local_problem: String::new(),
            }]
        } else {
            vec![]
        };
        Ok(Response::new(agent::ListFilesResponse {
            files,
            ..Default::default()
        }))
    }

    type WatchFilesStream = BoxStream<agent::ListFilesResponse>;

    /// Two listings (the file, then none), then the stream ends as when
    /// the agent stops.
    async fn watch_files(
        &self,
        request: Request<agent::ListFilesRequest>,
    ) -> Result<Response<Self::WatchFilesStream>, Status> {
        let first = self.list_files(request).await?.into_inner();
        let messages = vec![Ok(first), Ok(agent::ListFilesResponse::default())];
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    type FollowFilesStream = BoxStream<agent::FileChange>;

    /// The CLI follows with WatchFiles; this fake has no page to follow.
    async fn follow_files(
        &self,
        _request: Request<agent::ListFilesRequest>,
    ) -> Result<Response<Self::FollowFilesStream>, Status> {
        Err(Status::unimplemented("the fake agent follows no page"))
    }

    type DownloadStream = BoxStream<agent::DownloadProgress>;

    async fn download(
        &self,
        request: Request<agent::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        self.session()?;
        let request = request.into_inner();
        self.known(&request.file)?;
        if !request.force && std::path::Path::new(&request.destination).exists() {
            return Err(Status::already_exists(format!(
                "{} already exists",
                request.destination
            )));
        }
        let final_path = request.destination.clone();
        *self.last_download.lock().unwrap() = Some(request);
        let total = file_info().size_bytes;
        let event = |stage: agent::DownloadStage, have: u64| agent::DownloadProgress {
            stage: stage as i32,
            file_id: FILE_ID.into(),
            name: FILE_NAME.into(),
            total_bytes: total,
            have_bytes: have,
            rate_bps: 1024 * 1024,
            sources_in_use: 2,
            eta_ms: 2000,
            final_path: String::new(),
            resumed_chunks: 3,
        };
        let mut done = event(agent::DownloadStage::Done, total);
        done.final_path = final_path;
        let messages = vec![
            Ok(event(agent::DownloadStage::Locating, 0)),
            Ok(event(agent::DownloadStage::Downloading, total / 2)),
            Ok(event(agent::DownloadStage::Verifying, total)),
            Ok(done),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn cancel(
        &self,
        request: Request<agent::CancelRequest>,
    ) -> Result<Response<agent::CancelResponse>, Status> {
        self.session()?;
        let file = request.into_inner().file;
        // Like the real agent: an unknown file first, then a known one
        // that is not downloading.
        self.known(&file)?;
        if file != FILE_ID {
            return Err(Status::not_found(format!("no running download {file}")));
        }
        Ok(Response::new(agent::CancelResponse {}))
    }

    async fn remove(
        &self,
        request: Request<agent::RemoveRequest>,
    ) -> Result<Response<agent::RemoveResponse>, Status> {
        self.session()?;
        let request = request.into_inner();
        self.known(&request.file)?;
        if request.network {
            return Err(Status::permission_denied(
                "only the owner or an admin may delete a file",
            ));
        }
        Ok(Response::new(agent::RemoveResponse {}))
    }

    async fn status(
        &self,
        _: Request<agent::StatusRequest>,
    ) -> Result<Response<agent::StatusResponse>, Status> {
        let logged_in = self.logged_in.load(Ordering::SeqCst);
        Ok(Response::new(agent::StatusResponse {
            logged_in,
            user: logged_in.then(|| user("alice", auth::Role::User)),
            peer_id: "peer-1".into(),
            advertise_addr: "127.0.0.1:50053".into(),
            index_url: "http://127.0.0.1:50052".into(),
            auth_url: "http://127.0.0.1:50051".into(),
            data_dir: "/var/lib/p2p".into(),
            index_reachable: true,
            load: Some(index::PeerLoad {
                max_uploads: 8,
                max_upload_rate_bps: 2 * 1024 * 1024,
                ..Default::default()
            }),
            active_downloads: 1,
            login_error: String::new(),
            counters: Some(agent::TransferCounters {
                chunks_rejected: 2,
                chunks_from_partial_sources: 5,
                ..Default::default()
            }),
            shared_files: 4,
            ..Default::default()
        }))
    }

    async fn open_web(
        &self,
        _: Request<agent::OpenWebRequest>,
    ) -> Result<Response<agent::OpenWebResponse>, Status> {
        Ok(Response::new(agent::OpenWebResponse {
            url: format!("http://127.0.0.1:50055/enter?ticket={FILE_ID}"),
            expires_in_seconds: 120,
        }))
    }

    async fn list_peers(
        &self,
        _: Request<index::ListPeersRequest>,
    ) -> Result<Response<index::ListPeersResponse>, Status> {
        self.session()?;
        Ok(Response::new(index::ListPeersResponse {
            peers: vec![index::Peer {
                peer_id: "peer-0123456789abcdef".into(),
                advertise_addr: "10.0.0.7:50053".into(),
                user_id: "u2".into(),
                username: "bob".into(),
                state: index::PeerState::Online as i32,
                load: Some(index::PeerLoad {
                    active_uploads: 1,
                    max_uploads: 8,
                    ..Default::default()
                }),
                last_seen_ms: p2p_services::time::now_ms() - 2_000,
                agent_version: "0.1.0".into(),
                complete_files: 1,
            }],
        }))
    }

    async fn create_user(
        &self,
        request: Request<auth::CreateUserRequest>,
    ) -> Result<Response<auth::User>, Status> {
        self.session()?;
        let request = request.into_inner();
        if request.username == "taken" {
            return Err(Status::already_exists("username taken"));
        }
        Ok(Response::new(user(&request.username, request.role())))
    }

    async fn list_users(
        &self,
        _: Request<auth::ListUsersRequest>,
    ) -> Result<Response<auth::ListUsersResponse>, Status> {
        self.session()?;
        Ok(Response::new(auth::ListUsersResponse {
            users: vec![
                user("admin", auth::Role::Admin),
                user("bob", auth::Role::User),
            ],
        }))
    }

    async fn delete_user(
        &self,
        request: Request<auth::DeleteUserRequest>,
    ) -> Result<Response<auth::DeleteUserResponse>, Status> {
        self.session()?;
        match request.into_inner().username.as_str() {
            "admin" => Err(Status::failed_precondition(
                "the last admin cannot be deleted",
            )),
            "bob" => Ok(Response::new(auth::DeleteUserResponse {})),
            other => Err(Status::not_found(format!("no user {other}"))),
        }
    }

    async fn create_invite(
        &self,
        request: Request<agent::CreateInviteRequest>,
    ) -> Result<Response<agent::Invite>, Status> {
        self.session()?;
        let request = request.into_inner();
        *self.last_invite.lock().unwrap() = Some(request.clone());
        let username = request.token_for_username;
        match username.as_str() {
            "nobody" => return Err(Status::not_found("no such user: \"nobody\"")),
            "mallory" => {
                return Err(Status::permission_denied(
                    "this needs the admin role; ask an administrator",
                ));
            }
            _ => {}
        }
        let with_token = !username.is_empty();
        let invite = p2p_services::invite::Invite {
            server: INVITE_SERVER.into(),
            fingerprint: CA_FINGERPRINT.into(),
            token: with_token.then(|| JOIN_SECRET.to_string()),
        };
        Ok(Response::new(agent::Invite {
            invite: invite.encode(),
            server: INVITE_SERVER.into(),
            ca_fingerprint: CA_FINGERPRINT.into(),
            token: with_token.then(|| join_token("0123456789abcdef", &username, false)),
        }))
    }

    async fn list_join_tokens(
        &self,
        _: Request<auth::ListJoinTokensRequest>,
    ) -> Result<Response<auth::ListJoinTokensResponse>, Status> {
        self.session()?;
        Ok(Response::new(auth::ListJoinTokensResponse {
            tokens: vec![
                join_token("0123456789abcdef", "printer", false),
                join_token("fedcba9876543210", "lab", true),
            ],
        }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<auth::RevokeJoinTokenRequest>,
    ) -> Result<Response<auth::RevokeJoinTokenResponse>, Status> {
        self.session()?;
        match request.into_inner().id.as_str() {
            "0123456789abcdef" => Ok(Response::new(auth::RevokeJoinTokenResponse {})),
            other => Err(Status::not_found(format!(
                "no join token has id {other:?}; `p2p join-tokens` lists them"
            ))),
        }
    }
}

const INVITE_SERVER: &str = "auth.lan:50051";
const CA_FINGERPRINT: &str =
    "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const JOIN_SECRET: &str = "p2pjt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// A join token for `username`, one use of five left, far from expiry.
fn join_token(id: &str, username: &str, revoked: bool) -> auth::JoinToken {
    auth::JoinToken {
        id: id.into(),
        username: username.into(),
        uses_left: 1,
        uses: 5,
        expires_at_ms: 4_102_444_800_000, // 2100-01-01
        revoked,
        description: format!("{username} machines"),
        created_by: "admin".into(),
        created_at_ms: 1_714_572_180_000,
    }
}

/// The scripted agent served on 127.0.0.1:0 until dropped.
struct Fake {
    addr: String,
    agent: std::sync::Arc<ScriptedAgent>,
    _stop: tokio::sync::oneshot::Sender<()>,
    dir: tempfile::TempDir,
}

impl Fake {
    async fn start(logged_in: bool) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let agent = std::sync::Arc::new(ScriptedAgent::default());
        agent.logged_in.store(logged_in, Ordering::SeqCst);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = p2p_services::serve::GrpcServer::new()
            .add_service(AgentControlServer::from_arc(agent.clone()));
        // Owned by the test's runtime; ends when `_stop` drops.
        tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Fake {
            addr,
            agent,
            _stop: stop,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn p2p(&self, args: &[&str], stdin: Option<&str>) -> p2p_tests::CliOutput {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(p2p_tests::binary("p2p"))
            .env_clear()
            .env("P2P_AGENT", &self.addr)
            .env("TZ", "UTC")
            .current_dir(self.dir.path())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).await.unwrap();
        }
        drop(pipe);
        let output =
            tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
                .await
                .expect("p2p finished in time")
                .unwrap();
        p2p_tests::CliOutput {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

#[tokio::test]
async fn login_reads_the_password_from_stdin_and_reports_the_user() {
    let fake = Fake::start(false).await;
    let out = fake
        .p2p(&["login", "alice", "--password-stdin"], Some("right\n"))
        .await;
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.starts_with("logged in as alice (admin)"),
        "{out}"
    );

    let out = fake
        .p2p(
            &["--json", "login", "alice", "--password-stdin"],
            Some("right\n"),
        )
        .await;
    assert_eq!(out.json()["peer_id"], "peer-1", "{out}");
}

#[tokio::test]
async fn wrong_password_exits_4_with_a_clear_message() {
    let fake = Fake::start(false).await;
    let out = fake
        .p2p(&["login", "alice", "--password-stdin"], Some("wrong\n"))
        .await;
    assert_eq!(out.code, Some(4), "{out}");
    assert!(
        out.stderr
            .contains("login failed: wrong username or password"),
        "{out}"
    );
}

#[tokio::test]
async fn login_without_a_password_source_says_how_to_give_one() {
    let fake = Fake::start(false).await;
    let out = fake.p2p(&["login", "alice"], None).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("--password-stdin"), "{out}");
}

#[tokio::test]
async fn logged_out_agent_makes_every_command_say_to_log_in() {
    let fake = Fake::start(false).await;
    for args in [
        &["ls"][..],
        &["peers"],
        &["get", FILE_NAME],
        &["rm", FILE_NAME],
        &["users", "ls"],
    ] {
        let out = fake.p2p(args, None).await;
        assert_eq!(out.code, Some(4), "{args:?}: {out}");
        assert!(
            out.stderr.contains("not logged in: run `p2p login`"),
            "{args:?}: {out}"
        );
    }
}

#[tokio::test]
async fn ls_watch_prints_each_listing_until_the_agent_ends_it() {
    let fake = Fake::start(true).await;
    let out = fake.p2p(&["--json", "ls", "--watch"], None).await;
    let lines = out.json_lines();
    let listings: Vec<_> = lines.iter().filter(|l| l.get("files").is_some()).collect();
    assert_eq!(listings.len(), 2, "{out}");
    assert_eq!(
        lines.last().map(|l| l["ok"].clone()),
        Some(false.into()),
        "{out}"
    );
    assert_eq!(listings[0]["files"][0]["file_id"], FILE_ID);
    assert_eq!(listings[1]["files"].as_array().map(Vec::len), Some(0));
    assert!(!out.success(), "an ended watch is not a success: {out}");
    assert!(out.stderr.contains("ended the watch"), "{out}");
    let table = fake.p2p(&["ls", "--watch"], None).await;
    assert!(table.stdout.contains(FILE_NAME), "{table}");
    assert!(
        table.stdout.contains("no files in the network yet"),
        "{table}"
    );
}

#[tokio::test]
async fn web_prints_the_one_time_link_and_how_long_it_lasts() {
    let fake = Fake::start(true).await;
    let link = format!("http://127.0.0.1:50055/enter?ticket={FILE_ID}");
    let out = fake.p2p(&["web", "--no-open"], None).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains(&format!("  {link}\n")), "{out}");
    assert!(out.stdout.contains("works once, within 2m 00s"), "{out}");
    let json = fake.p2p(&["--json", "web", "--no-open"], None).await;
    assert_eq!(json.code, Some(0), "{json}");
    let value: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(value["url"], link.as_str());
    assert_eq!(value["expires_in_seconds"], 120);
}

#[tokio::test]
async fn ls_prints_the_table_and_json() {
    let fake = Fake::start(true).await;
    let out = fake.p2p(&["ls"], None).await;
    assert!(out.success(), "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "NAME", "SIZE", "TYPE", "OWNER", "ADDED", "HOLDERS", "LOCAL", "ID"
        ]
    );
    let row = lines[1];
    for cell in [
        FILE_NAME,
        "4.0 MiB",
        "video/mp4",
        "alice",
        "2024-05-01 14:03",
        "3/2",
        "25%",
        "aabbccddeeff",
    ] {
        assert!(row.contains(cell), "{cell} missing from {row:?}");
    }
    assert!(!row.contains(FILE_ID), "the full id should be shortened");

    let json = fake.p2p(&["--json", "ls"], None).await.json();
    assert_eq!(json["files"][0]["file_id"], FILE_ID);
    assert_eq!(json["files"][0]["local_bytes"], 1024 * 1024);

    let none = fake.p2p(&["ls", "nothing-like-this"], None).await;
    assert!(none.stdout.contains("no file name contains"), "{none}");
}

#[tokio::test]
async fn share_sends_an_absolute_path_and_prints_the_id() {
    let fake = Fake::start(true).await;
    let out = fake.p2p(&["share", "talk.mp4"], None).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains(FILE_ID), "{out}");
    let sent = fake.agent.last_share.lock().unwrap().clone().unwrap();
    let expected = fake.dir.path().join("talk.mp4");
    assert_eq!(sent.path, expected.to_str().unwrap());

    let json = fake
        .p2p(&["--json", "share", "talk.mp4"], None)
        .await
        .json();
    assert_eq!(json["shared"][0]["file_id"], FILE_ID);

    let missing = fake.p2p(&["share", "missing.bin"], None).await;
    assert_eq!(missing.code, Some(5), "{missing}");
    assert!(missing.stderr.contains("cannot share"), "{missing}");
}

#[tokio::test]
async fn ls_inside_a_folder_prints_its_subfolders_then_files() {
    let fake = Fake::start(true).await;
    let out = fake.p2p(&["ls", "Course/"], None).await;
    assert!(out.success(), "{out}");
    let lines: Vec<_> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("week 1/") && lines[0].contains("12 files"),
        "{out}"
    );
    assert!(lines[1].ends_with("syllabus.pdf"), "{out}");
    let json = fake.p2p(&["--json", "ls", "Course/"], None).await.json();
    assert_eq!(json["entries"][0]["is_folder"], true, "{json}");
    let missing = fake.p2p(&["ls", "Nope/"], None).await;
    assert!(!missing.success(), "{missing}");
}

#[tokio::test]
async fn get_streams_json_lines_and_prints_the_final_path() {
    let fake = Fake::start(true).await;
    let out = fake.p2p(&["get", FILE_NAME, "-o", "out.mp4"], None).await;
    assert!(out.success(), "{out}");
    let expected = fake.dir.path().join("out.mp4");
    assert_eq!(out.stdout.trim(), expected.to_str().unwrap());
    let sent = fake.agent.last_download.lock().unwrap().clone().unwrap();
    assert_eq!(sent.destination, expected.to_str().unwrap());
    assert!(!sent.force);

    let out = fake.p2p(&["--json", "get", FILE_NAME], None).await;
    let lines = out.json_lines();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[..3].iter().all(|l| l["event"] == "progress"));
    assert_eq!(lines[1]["stage"], "downloading");
    assert_eq!(lines[1]["sources_in_use"], 2);
    assert_eq!(lines[3]["event"], "done");
    assert_eq!(lines[3]["resumed_chunks"], 3);
}

#[tokio::test]
async fn get_refuses_an_existing_destination_unless_forced() {
    let fake = Fake::start(true).await;
    std::fs::write(fake.dir.path().join("out.mp4"), b"keep").unwrap();
    let out = fake.p2p(&["get", FILE_NAME, "-o", "out.mp4"], None).await;
    assert_eq!(out.code, Some(7), "{out}");
    assert!(out.stderr.contains("pass --force"), "{out}");
    let out = fake
        .p2p(&["get", FILE_NAME, "-o", "out.mp4", "--force"], None)
        .await;
    assert!(out.success(), "{out}");
}

#[tokio::test]
async fn unknown_file_exits_5_and_says_to_run_ls() {
    let fake = Fake::start(true).await;
    for args in [
        &["get", "nope.iso"][..],
        &["rm", "nope.iso"],
        &["cancel", "nope.iso"],
    ] {
        let out = fake.p2p(args, None).await;
        assert_eq!(out.code, Some(5), "{args:?}: {out}");
        assert!(
            out.stderr.contains("no file named nope.iso: run `p2p ls`"),
            "{args:?}: {out}"
        );
    }
}

#[tokio::test]
async fn cancel_by_name_sends_the_file_id() {
    let fake = Fake::start(true).await;
    let out = fake.p2p(&["cancel", FILE_NAME], None).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("verified chunks are kept"), "{out}");
}

#[tokio::test]
async fn network_removal_refused_names_the_rule() {
    let fake = Fake::start(true).await;
    let out = fake.p2p(&["rm", FILE_NAME, "--network"], None).await;
    assert_eq!(out.code, Some(6), "{out}");
    assert!(
        out.stderr
            .contains("only the owner of talk.mp4 or an admin"),
        "{out}"
    );
    let out = fake.p2p(&["--json", "rm", FILE_NAME], None).await;
    assert_eq!(out.json()["ok"], true, "{out}");
}

#[tokio::test]
async fn peers_and_status_render_for_people_and_scripts() {
    let fake = Fake::start(true).await;
    let peers = fake.p2p(&["peers"], None).await;
    assert!(peers.success(), "{peers}");
    assert!(peers.stdout.starts_with("PEER"), "{peers}");
    assert!(peers.stdout.contains("10.0.0.7:50053"), "{peers}");
    assert!(peers.stdout.contains("1/8"), "{peers}");
    assert!(peers.stdout.contains("ago"), "{peers}");

    let status = fake.p2p(&["status"], None).await;
    assert!(
        status.stdout.contains("logged in as alice (user)"),
        "{status}"
    );
    assert!(status.stdout.contains("limit 2.0 MiB/s"), "{status}");
    let json = fake.p2p(&["--json", "status"], None).await.json();
    assert_eq!(json["counters"]["chunks_from_partial_sources"], 5);
    assert_eq!(json["counters"]["chunks_rejected"], 2);
}

#[tokio::test]
async fn users_commands_map_agent_errors() {
    let fake = Fake::start(true).await;
    let out = fake
        .p2p(
            &["users", "add", "carol", "--admin", "--password-stdin"],
            Some("pw-pw-pw-pw\n"),
        )
        .await;
    assert!(out.stdout.contains("created carol (admin)"), "{out}");
    let taken = fake
        .p2p(
            &["users", "add", "taken", "--password-stdin"],
            Some("pw-pw-pw-pw\n"),
        )
        .await;
    assert!(
        taken.stderr.contains("user taken already exists"),
        "{taken}"
    );
    let ls = fake.p2p(&["users", "ls"], None).await;
    assert!(ls.stdout.starts_with("USER"), "{ls}");
    assert!(ls.stdout.contains("bob"), "{ls}");
    let last = fake.p2p(&["users", "rm", "admin"], None).await;
    assert_eq!(last.code, Some(1), "{last}");
    assert!(
        last.stderr.contains("the last admin cannot be deleted"),
        "{last}"
    );
    let missing = fake.p2p(&["users", "rm", "zed"], None).await;
    assert_eq!(missing.code, Some(5), "{missing}");
    assert!(missing.stderr.contains("no user named zed"), "{missing}");
}

#[tokio::test]
async fn invite_prints_the_join_command_and_sends_the_token_options() {
    let fake = Fake::start(true).await;
    let plain = fake.p2p(&["invite"], None).await;
    assert!(plain.success(), "{plain}");
    assert!(
        plain
            .stdout
            .starts_with("On the new machine, run:\n\n  p2p join 'p2p-invite:"),
        "{plain}"
    );
    assert!(plain.stdout.contains("carries no join token"), "{plain}");
    let sent = fake.agent.last_invite.lock().unwrap().clone().unwrap();
    assert_eq!(sent.token_for_username, "");

    let out = fake
        .p2p(
            &[
                "invite",
                "--token-for",
                "printer",
                "--uses",
                "5",
                "--expires",
                "7d",
                "--description",
                "lab printers",
            ],
            None,
        )
        .await;
    assert!(out.success(), "{out}");
    assert!(
        out.stdout
            .contains("join token 0123456789abcdef for printer"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("good for 5 machines until 2100-01-01 00:00"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("p2p join-tokens revoke 0123456789abcdef"),
        "{out}"
    );
    let sent = fake.agent.last_invite.lock().unwrap().clone().unwrap();
    assert_eq!(
        (
            sent.token_for_username.as_str(),
            sent.uses,
            sent.ttl_seconds
        ),
        ("printer", 5, 7 * 86_400)
    );
    assert_eq!(sent.description, "lab printers");

    let defaults = fake.p2p(&["invite", "--token-for", "printer"], None).await;
    assert!(defaults.success(), "{defaults}");
    let sent = fake.agent.last_invite.lock().unwrap().clone().unwrap();
    assert_eq!((sent.uses, sent.ttl_seconds), (1, 86_400));

    let json = fake
        .p2p(&["--json", "invite", "--token-for", "printer"], None)
        .await
        .json();
    let text = json["invite"].as_str().unwrap();
    let parsed = p2p_services::invite::Invite::parse(text).unwrap();
    assert_eq!(parsed.server, INVITE_SERVER);
    assert_eq!(parsed.token.as_deref(), Some(JOIN_SECRET));
    assert_eq!(json["server"], INVITE_SERVER);
    assert_eq!(json["ca_fingerprint"], CA_FINGERPRINT);
    assert_eq!(json["token"]["id"], "0123456789abcdef");
    assert_eq!(json["token"]["state"], "active");
    assert!(
        json["token"].get("secret").is_none(),
        "the secret is only in the invite"
    );
}

#[tokio::test]
async fn invite_errors_name_the_account_or_the_admin_rule() {
    let fake = Fake::start(true).await;
    let missing = fake.p2p(&["invite", "--token-for", "nobody"], None).await;
    assert_eq!(missing.code, Some(5), "{missing}");
    assert!(missing.stderr.contains("no user named nobody"), "{missing}");
    let denied = fake.p2p(&["invite", "--token-for", "mallory"], None).await;
    assert_eq!(denied.code, Some(6), "{denied}");
    assert!(
        denied.stderr.contains("only admins can make invites"),
        "{denied}"
    );
    let usage = fake.p2p(&["invite", "--uses", "3"], None).await;
    assert_eq!(
        usage.code,
        Some(2),
        "token options need --token-for: {usage}"
    );
    let logged_out = Fake::start(false).await;
    let out = logged_out.p2p(&["invite"], None).await;
    assert_eq!(out.code, Some(4), "{out}");
}

#[tokio::test]
async fn join_tokens_lists_for_people_and_scripts_and_revokes() {
    let fake = Fake::start(true).await;
    let table = fake.p2p(&["join-tokens"], None).await;
    assert!(table.success(), "{table}");
    let mut lines = table.stdout.lines();
    let header = lines.next().unwrap();
    for column in [
        "ID",
        "ACCOUNT",
        "USES LEFT",
        "EXPIRES",
        "STATE",
        "DESCRIPTION",
    ] {
        assert!(header.contains(column), "{table}");
    }
    let first = lines.next().unwrap();
    for cell in [
        "0123456789abcdef",
        "printer",
        "1/5",
        "2100-01-01 00:00",
        "active",
        "printer machines",
    ] {
        assert!(first.contains(cell), "{cell}: {table}");
    }
    assert!(lines.next().unwrap().contains("revoked"), "{table}");

    let json = fake.p2p(&["--json", "join-tokens"], None).await.json();
    assert_eq!(json["tokens"][0]["uses_left"], 1);
    assert_eq!(json["tokens"][1]["revoked"], true);
    assert_eq!(json["tokens"][1]["state"], "revoked");

    let revoked = fake
        .p2p(&["join-tokens", "revoke", "0123456789abcdef"], None)
        .await;
    assert!(revoked.success(), "{revoked}");
    assert!(
        revoked
            .stdout
            .contains("revoked join token 0123456789abcdef"),
        "{revoked}"
    );
    let json = fake
        .p2p(
            &["--json", "join-tokens", "revoke", "0123456789abcdef"],
            None,
        )
        .await
        .json();
    assert_eq!(json["ok"], true);
    let missing = fake.p2p(&["join-tokens", "revoke", "nope"], None).await;
    assert_eq!(missing.code, Some(5), "{missing}");
    assert!(
        missing.stderr.contains("no join token has id nope"),
        "{missing}"
    );
}
