//! Each `p2p` command as one function over the agent's control API. They
//! turn arguments into requests, views into output, and statuses into
//! `Error`s that say what to do.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use p2p_proto::agent::v1 as agent;
use p2p_proto::agent::v1::agent_control_client::AgentControlClient;
use p2p_proto::auth::v1 as auth;
use p2p_proto::index::v1 as index;
use p2p_services::local::Target;
use serde::Serialize;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::{
    AgentArgs, Command, InviteArgs, JoinTokensCommand, LoginArgs, LsKind, LsPage, LsSort,
    PasswordArgs, UsersCommand,
};
use crate::error::{Error, Subject, explain, is_broken_connection};
use crate::progress::Progress;
use crate::view::{
    self, DownloadEvent, FileRow, FolderRow, InviteView, JoinTokenRow, PeerRow, SharedFile,
    StatusView, UserRow, WebLinkView,
};

/// How output is written: JSON documents for scripts or text for people.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// One JSON document per command (JSON lines for `get`).
    pub json: bool,
    /// Draw progress bars on stderr (a terminal, and not `--json`).
    pub bars: bool,
}

impl Output {
    fn json<T: Serialize>(&self, value: &T) {
        // Serialising our own plain structs cannot fail.
        let text = serde_json::to_string(value).unwrap_or_default();
        println!("{text}");
    }

    /// Prints `view` as JSON for scripts, or as `text` renders it for people.
    pub fn show<T: Serialize>(&self, view: &T, text: impl FnOnce(&T) -> String) {
        if self.json {
            self.json(view);
        } else {
            print!("{}", text(view));
        }
    }
}

/// The client type every command uses: the control API with the token
/// added to each call when talking TCP.
type Client = AgentControlClient<InterceptedService<Channel, ControlToken>>;

/// A connected control client plus what error messages need to know.
pub struct Session {
    client: Client,
    addr: String,
    out: Output,
}

/// Adds `authorization: Bearer <control token>` to every call, when there
/// is a token.
#[derive(Clone)]
pub struct ControlToken(Option<MetadataValue<Ascii>>);

impl Interceptor for ControlToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl Session {
    /// The control API client.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// Connects to the agent eagerly, so "agent not running" (or "not yours")
/// is told apart from errors the agent itself reports.
pub async fn connect(agent: &AgentArgs, out: Output) -> Result<Session, Error> {
    let target = agent.target();
    let (channel, token) = match &target {
        Target::Unix(path) => (connect_socket(path).await?, ControlToken(None)),
        Target::Tcp(addr) => {
            let unreachable = |detail: String| Error::AgentUnreachable {
                addr: addr.clone(),
                detail,
            };
            let endpoint =
                p2p_services::client::endpoint(addr, &p2p_services::tls::ClientTls::Plaintext)
                    .map_err(|e| unreachable(e.to_string()))?;
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| unreachable(source_chain(&e)))?;
            (channel, read_token(agent)?)
        }
    };
    let client = AgentControlClient::with_interceptor(channel, token)
        .max_decoding_message_size(p2p_services::client::MAX_MESSAGE_BYTES);
    Ok(Session {
        client,
        addr: target.to_string(),
        out,
    })
}

/// Connects to the agent's Unix socket, naming the socket and what to do
/// when it is missing, not ours, or dead.
async fn connect_socket(path: &Path) -> Result<Channel, Error> {
    let shown = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    p2p_services::local::connect_unix(path)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NoAgentSocket(shown.display().to_string()),
            std::io::ErrorKind::PermissionDenied => {
                Error::AgentOfAnotherUser(shown.display().to_string())
            }
            _ => Error::AgentUnreachable {
                addr: shown.display().to_string(),
                detail: e.to_string(),
            },
        })
}

/// The control token for a TCP agent. A missing default token file means
/// none is sent (the agent then says which file it wants); a token file the
/// user named must be readable.
fn read_token(agent: &AgentArgs) -> Result<ControlToken, Error> {
    let (path, named) = agent.token_file();
    let shown = std::path::absolute(&path)
        .unwrap_or_else(|_| path.clone())
        .display()
        .to_string();
    match p2p_services::local::ControlToken::read(&path) {
        Ok(token) => {
            let value =
                format!("Bearer {}", token.secret())
                    .parse()
                    .map_err(|_| Error::AgentToken {
                        path: shown,
                        detail: "the token is not valid header text".into(),
                    })?;
            Ok(ControlToken(Some(value)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => Ok(ControlToken(None)),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(Error::AgentOfAnotherUser(shown))
        }
        Err(e) => Err(Error::AgentToken {
            path: shown,
            detail: e.to_string(),
        }),
    }
}

/// The innermost cause of a transport error, which is the useful part
/// ("Connection refused") rather than "transport error".
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        message = inner.to_string();
        source = inner.source();
    }
    message
}

/// Runs one command.
pub async fn run(session: &mut Session, command: Command) -> Result<(), Error> {
    match command {
        Command::Login(args) => login(session, args).await,
        Command::Logout => logout(session).await,
        Command::Ls {
            filter,
            watch: false,
            page,
        } => ls(session, filter.unwrap_or_default(), page).await,
        Command::Ls {
            filter,
            watch: true,
            page,
        } => ls_watch(session, filter.unwrap_or_default(), page).await,
        Command::Share { paths, replace } => share(session, paths, replace).await,
        Command::Get {
            file,
            output,
            force,
        } => get(session, file, output, force).await,
        Command::Cancel { file } => cancel(session, file).await,
        Command::Rm { file, network } => rm(session, file, network).await,
        Command::Peers { all } => peers(session, all).await,
        Command::Status => status(session).await,
        Command::Web { no_open } => web(session, no_open).await,

        Command::Users(UsersCommand::Add {
            name,
            admin,
            password,
        }) => users_add(session, name, admin, password).await,
        Command::Users(UsersCommand::Ls) => users_ls(session).await,
        Command::Users(UsersCommand::Rm { name }) => users_rm(session, name).await,
        Command::Invite(args) => invite(session, args).await,
        Command::JoinTokens { action: None } => join_tokens(session).await,
        Command::JoinTokens {
            action: Some(JoinTokensCommand::Revoke { id }),
        } => revoke_join_token(session, id).await,
    }
}

#[derive(Serialize)]
struct Done<'a> {
    ok: bool,
    message: &'a str,
}

fn done(out: Output, message: &str) {
    if out.json {
        out.json(&Done { ok: true, message });
    } else {
        println!("{message}");
    }
}

async fn login(session: &mut Session, args: LoginArgs) -> Result<(), Error> {
    let username = match args.user {
        Some(user) => user,
        None => prompt_line("username")?,
    };
    let password = read_password(&args.password, "password")?;
    let response = session
        .client
        .login(agent::LoginRequest {
            username: username.clone(),
            password,
        })
        .await
        .map_err(|s| explain(s, Subject::Login))?
        .into_inner();
    let user = response.user.map(UserRow::from_proto);
    if session.out.json {
        #[derive(Serialize)]
        struct LoggedIn {
            user: Option<UserRow>,
            peer_id: String,
        }
        session.out.json(&LoggedIn {
            user,
            peer_id: response.peer_id,
        });
    } else {
        let role = user.map_or("user", |u| u.role);
        println!("logged in as {username} ({role}) on {}", session.addr);
    }
    Ok(())
}

async fn logout(session: &mut Session) -> Result<(), Error> {
    session
        .client
        .logout(agent::LogoutRequest {})
        .await
        .map_err(|s| explain(s, Subject::General))?;
    done(session.out, "logged out; files stay on disk");
    Ok(())
}

/// Entries per page of `p2p ls` when `--limit` is not given.
const LS_PAGE: u32 = 100;

/// What `p2p ls` asks the agent for: one page (`page_size` > 0) or all.
fn ls_request(filter: &str, page: &LsPage, json: bool) -> agent::ListFilesRequest {
    let all = page.all || (json && page.page.is_none() && page.limit.is_none());
    agent::ListFilesRequest {
        name_contains: filter.to_string(),
        page_size: if all {
            0
        } else {
            page.limit.unwrap_or(LS_PAGE)
        },
        page_token: String::new(),
        sort: match page.sort {
            None => index::FileSort::Unspecified,
            Some(LsSort::Name) => index::FileSort::Name,
            Some(LsSort::Size) => index::FileSort::Size,
            Some(LsSort::Date) => index::FileSort::Added,
            Some(LsSort::Holders) => index::FileSort::Holders,
        } as i32,
        descending: page.desc,
        owner_name: page.owner.clone().unwrap_or_default(),
        kind: page.kind.map(|k| match k {
            LsKind::File => index::EntryKind::File as i32,
            LsKind::Folder => index::EntryKind::Folder as i32,
        }),
        include_total: !all,
    }
}

async fn ls(session: &mut Session, filter: String, page: LsPage) -> Result<(), Error> {
    if filter.contains('/') {
        return ls_folder(session, filter).await;
    }
    let mut request = ls_request(&filter, &page, session.out.json);
    let wanted = page.page.unwrap_or(1);
    let mut response;
    let mut number = 1;
    let mut total = None;
    loop {
        response = session
            .client
            .list_files(request.clone())
            .await
            .map_err(|s| explain(s, Subject::General))?
            .into_inner();
        total = total.or(response.total_count);
        if number == wanted || response.next_page_token.is_empty() {
            break;
        }
        request.page_token = std::mem::take(&mut response.next_page_token);
        request.include_total = false;
        number += 1;
    }
    if request.page_size > 0 {
        if number < wanted {
            eprintln!("there are only {number} pages; this is the last");
        }
        let pages = total.map(|t| t.div_ceil(u64::from(request.page_size)).max(1));
        let mut hint = match (pages, total) {
            (Some(pages), Some(total)) => format!("page {number} of {pages} ({total} entries)"),
            _ => format!("page {number}"),
        };
        if !response.next_page_token.is_empty() {
            hint.push_str(&format!(
                "; next: --page {}, or --all for every entry",
                number + 1
            ));
        }
        eprintln!("{hint}");
    }
    let narrowed = page.owner.is_some() || page.kind.is_some();
    print_files(session, &filter, narrowed, response);
    Ok(())
}

/// `p2p ls NAME/path`: what is inside a folder entry, every page.
async fn ls_folder(session: &mut Session, path: String) -> Result<(), Error> {
    let mut rows = Vec::new();
    let mut header = None;
    loop {
        let page = session
            .client
            .list_folder(agent::ListFolderRequest {
                path: path.clone(),
                offset: rows.len() as u32,
                limit: 1000,
            })
            .await
            .map_err(|s| explain(s, Subject::File(&path)))?
            .into_inner();
        let done =
            page.entries.is_empty() || rows.len() + page.entries.len() >= page.total as usize;
        rows.extend(page.entries.iter().map(FolderRow::from_proto));
        header.get_or_insert(page);
        if done {
            break;
        }
    }
    let header = header.unwrap_or_default();
    if session.out.json {
        #[derive(Serialize)]
        struct Listing<'a> {
            folder: Option<FileRow>,
            path: &'a str,
            entries: &'a [FolderRow],
        }
        session.out.json(&Listing {
            folder: header.folder.map(FileRow::from_proto),
            path: &header.path,
            entries: &rows,
        });
        return Ok(());
    }
    for row in &rows {
        println!("{}", row.line());
    }
    if let Some(problem) = header
        .folder
        .as_ref()
        .map(|f| f.local_problem.as_str())
        .filter(|p| !p.is_empty())
    {
        eprintln!("this agent's copy: {problem}");
    }
    Ok(())
}

/// `p2p ls --watch`: the listing again at every change, until Ctrl-C or
/// the agent stops.
async fn ls_watch(session: &mut Session, filter: String, page: LsPage) -> Result<(), Error> {
    let mut request = ls_request(&filter, &page, session.out.json);
    request.include_total = false;
    let narrowed = page.owner.is_some() || page.kind.is_some();
    let mut stream = session
        .client
        .watch_files(request)
        .await
        .map_err(|s| explain(s, Subject::General))?
        .into_inner();
    let mut first = true;
    loop {
        let next = tokio::select! {
            next = stream.message() => next,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match next.map_err(|s| explain(s, Subject::General))? {
            Some(listing) => {
                if !session.out.json {
                    if !first {
                        println!();
                    }
                    println!("{}", chrono::Local::now().format("%H:%M:%S"));
                }
                first = false;
                print_files(session, &filter, narrowed, listing);
            }
            None => {
                return Err(explain(
                    tonic::Status::unavailable("the agent ended the watch (it is shutting down?)"),
                    Subject::General,
                ));
            }
        }
    }
}

/// Prints a listing; `narrowed` when an owner or kind filter was given.
fn print_files(
    session: &Session,
    filter: &str,
    narrowed: bool,
    response: agent::ListFilesResponse,
) {
    let rows: Vec<FileRow> = response
        .files
        .into_iter()
        .map(FileRow::from_proto)
        .collect();
    if session.out.json {
        #[derive(Serialize)]
        struct Files {
            files: Vec<FileRow>,
        }
        session.out.json(&Files { files: rows });
    } else if rows.is_empty() && narrowed {
        println!("no entry matches these filters");
    } else if rows.is_empty() && filter.is_empty() {
        println!("no files in the network yet: share one with `p2p share PATH`");
    } else if rows.is_empty() {
        println!("no file name contains {filter:?}");
    } else {
        print!("{}", view::files_table(&rows));
    }
}

async fn share(session: &mut Session, paths: Vec<PathBuf>, replace: bool) -> Result<(), Error> {
    let mut shared = Vec::new();
    for path in paths {
        let absolute = absolute(&path)?;
        let shown = absolute.display().to_string();
        let mut stream = session
            .client
            .share(agent::ShareRequest {
                path: shown.clone(),
                name: String::new(),
                mime_type: String::new(),
                replace,
            })
            .await
            .map_err(|s| explain(s, Subject::Path(&shown)))?
            .into_inner();
        let progress = Progress::hashing(session.out.bars, &shown);
        let mut result = None;
        loop {
            let message = stream
                .message()
                .await
                .map_err(|s| explain(s, Subject::Path(&shown)))?;
            let Some(message) = message else { break };
            progress.update(message.hashed_bytes, message.total_bytes, None);
            for entry in &message.skipped {
                eprintln!(
                    "{shown}: skipped {entry} (a symbolic link or special file; never followed)"
                );
            }
            if let Some(file) = message.file {
                result = Some(SharedFile::from_proto(
                    shown.clone(),
                    file,
                    message.already_published,
                ));
            }
        }
        progress.finish();
        let Some(file) = result else {
            return Err(Error::Agent {
                code: tonic::Code::Unknown,
                message: format!(
                    "sharing {shown} ended without the published file: see the agent's log"
                ),
            });
        };
        if !session.out.json {
            println!("{}", file.line());
        }
        shared.push(file);
    }
    if session.out.json {
        #[derive(Serialize)]
        struct Shared {
            shared: Vec<SharedFile>,
        }
        session.out.json(&Shared { shared });
    }
    Ok(())
}

async fn get(
    session: &mut Session,
    file: String,
    output: Option<PathBuf>,
    force: bool,
) -> Result<(), Error> {
    let destination = match output {
        Some(path) => absolute(&path)?.display().to_string(),
        None => String::new(),
    };
    let mut stream = session
        .client
        .download(agent::DownloadRequest {
            file: file.clone(),
            destination,
            force,
        })
        .await
        .map_err(|s| explain(s, Subject::Download(&file)))?
        .into_inner();
    let progress = Progress::downloading(session.out.bars, &file);
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        let message = tokio::select! {
            message = stream.message() => message.map_err(|s| {
                progress.finish();
                let stopping = s.code() == tonic::Code::Unavailable
                    && s.message().contains("agent is shutting down");
                if is_broken_connection(&s) || stopping {
                    Error::AgentStopped { file: file.clone(), detail: s.message().to_string() }
                } else {
                    explain(s, Subject::Download(&file))
                }
            })?,
            _ = &mut interrupt => {
                progress.finish();
                eprintln!(
                    "detached: the agent keeps downloading {file}; `p2p ls` shows progress, `p2p cancel {file}` stops it"
                );
                return Err(Error::DownloadInterrupted(file));
            }
        };
        let Some(message) = message else {
            // The stream ended without the last state: the agent went away.
            progress.finish();
            return Err(Error::AgentStopped {
                file,
                detail: "the progress stream ended".into(),
            });
        };
        let event = DownloadEvent::from_proto(message);
        progress.update(
            event.have_bytes,
            event.total_bytes,
            Some(event.bar_message()),
        );
        if session.out.json {
            session.out.json(&event);
        }
        if event.is_done() {
            progress.finish();
            if !session.out.json {
                println!("{}", event.final_path);
            }
            return Ok(());
        }
    }
}

/// `Cancel` takes an id or prefix; a name typed by the user is turned into
/// the id of the matching running download here.
async fn cancel(session: &mut Session, file: String) -> Result<(), Error> {
    let listed = session
        .client
        .list_files(agent::ListFilesRequest {
            name_contains: file.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| explain(s, Subject::File(&file)))?
        .into_inner();
    let id = listed
        .files
        .into_iter()
        .filter_map(|f| f.file)
        .find(|f| f.name == file)
        .map_or_else(|| file.clone(), |f| f.file_id);
    session
        .client
        .cancel(agent::CancelRequest { file: id })
        .await
        .map_err(|s| explain(s, Subject::File(&file)))?;
    done(
        session.out,
        &format!("cancelled {file}; verified chunks are kept, `p2p get {file}` resumes"),
    );
    Ok(())
}

async fn rm(session: &mut Session, file: String, network: bool) -> Result<(), Error> {
    session
        .client
        .remove(agent::RemoveRequest {
            file: file.clone(),
            network,
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::PermissionDenied => Error::PermissionDenied(format!(
                "only the owner of {file} or an admin can remove it from the network ({})",
                s.message()
            )),
            _ => explain(s, Subject::File(&file)),
        })?;
    let message = if network {
        format!("removed {file} from the network and from this agent")
    } else {
        format!("removed {file} from this agent; other peers keep their copies")
    };
    done(session.out, &message);
    Ok(())
}

async fn peers(session: &mut Session, all: bool) -> Result<(), Error> {
    let response = session
        .client
        .list_peers(index::ListPeersRequest {
            include_offline: all,
        })
        .await
        .map_err(|s| explain(s, Subject::General))?
        .into_inner();
    let rows: Vec<PeerRow> = response
        .peers
        .into_iter()
        .map(PeerRow::from_proto)
        .collect();
    if session.out.json {
        #[derive(Serialize)]
        struct Peers {
            peers: Vec<PeerRow>,
        }
        session.out.json(&Peers { peers: rows });
    } else if rows.is_empty() {
        println!("no peers online (`p2p peers --all` includes offline ones)");
    } else {
        print!("{}", view::peers_table(&rows, p2p_services::time::now_ms()));
    }
    Ok(())
}

async fn status(session: &mut Session) -> Result<(), Error> {
    let response = session
        .client
        .status(agent::StatusRequest {})
        .await
        .map_err(|s| explain(s, Subject::General))?
        .into_inner();
    let view = StatusView::from_proto(session.addr.clone(), response);
    session.out.show(&view, StatusView::text);
    Ok(())
}

async fn web(session: &mut Session, no_open: bool) -> Result<(), Error> {
    let response = session
        .client
        .open_web(agent::OpenWebRequest {})
        .await
        .map_err(|s| explain(s, Subject::General))?
        .into_inner();
    let view = WebLinkView::from_proto(response);
    session.out.show(&view, WebLinkView::text);
    if !no_open && desktop_present() {
        // The browser outlives us; xdg-open returns once it has handed the
        // link over.
        match std::process::Command::new("xdg-open")
            .arg(&view.url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(_) => {}
            Err(e) => eprintln!("could not start xdg-open ({e}); open the link by hand"),
        }
    }
    Ok(())
}

/// Whether a graphical session is there to open a browser in.
fn desktop_present() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

async fn users_add(
    session: &mut Session,
    name: String,
    admin: bool,
    password: PasswordArgs,
) -> Result<(), Error> {
    let password = read_password(&password, &format!("password for {name}"))?;
    let role = if admin {
        auth::Role::Admin
    } else {
        auth::Role::User
    };
    let user = session
        .client
        .create_user(auth::CreateUserRequest {
            username: name.clone(),
            password,
            role: role as i32,
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::AlreadyExists => Error::Invalid(format!("user {name} already exists")),
            tonic::Code::PermissionDenied => admins_only(),
            _ => explain(s, Subject::User(&name)),
        })?
        .into_inner();
    let user = UserRow::from_proto(user);
    if session.out.json {
        session.out.json(&user);
    } else {
        println!("created {} ({})", user.username, user.role);
    }
    Ok(())
}

async fn users_ls(session: &mut Session) -> Result<(), Error> {
    let response = session
        .client
        .list_users(auth::ListUsersRequest {})
        .await
        .map_err(|s| match s.code() {
            tonic::Code::PermissionDenied => admins_only(),
            _ => explain(s, Subject::General),
        })?
        .into_inner();
    let rows: Vec<UserRow> = response
        .users
        .into_iter()
        .map(UserRow::from_proto)
        .collect();
    if session.out.json {
        #[derive(Serialize)]
        struct Users {
            users: Vec<UserRow>,
        }
        session.out.json(&Users { users: rows });
    } else {
        print!("{}", view::users_table(&rows));
    }
    Ok(())
}

async fn users_rm(session: &mut Session, name: String) -> Result<(), Error> {
    session
        .client
        .delete_user(auth::DeleteUserRequest {
            user_id: String::new(),
            username: name.clone(),
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::PermissionDenied => admins_only(),
            _ => explain(s, Subject::User(&name)),
        })?;
    done(session.out, &format!("deleted {name}"));
    Ok(())
}

async fn invite(session: &mut Session, args: InviteArgs) -> Result<(), Error> {
    let token_for = args.token_for.unwrap_or_default();
    let request = agent::CreateInviteRequest {
        token_for_username: token_for.clone(),
        uses: args.uses,
        ttl_seconds: args.expires.as_secs(),
        description: args.description,
    };
    let invite = session
        .client
        .create_invite(request)
        .await
        .map_err(|s| match s.code() {
            tonic::Code::PermissionDenied => invites_for_admins_only(),
            _ => explain(s, Subject::User(&token_for)),
        })?
        .into_inner();
    let view = InviteView::from_proto(invite, p2p_services::time::now_ms());
    session.out.show(&view, InviteView::text);
    Ok(())
}

async fn join_tokens(session: &mut Session) -> Result<(), Error> {
    let response = session
        .client
        .list_join_tokens(auth::ListJoinTokensRequest {})
        .await
        .map_err(|s| match s.code() {
            tonic::Code::PermissionDenied => invites_for_admins_only(),
            _ => explain(s, Subject::General),
        })?
        .into_inner();
    let now_ms = p2p_services::time::now_ms();
    let rows: Vec<JoinTokenRow> = response
        .tokens
        .into_iter()
        .map(|t| JoinTokenRow::from_proto(t, now_ms))
        .collect();
    if session.out.json {
        #[derive(Serialize)]
        struct Tokens {
            tokens: Vec<JoinTokenRow>,
        }
        session.out.json(&Tokens { tokens: rows });
    } else {
        print!("{}", view::join_tokens_table(&rows));
    }
    Ok(())
}

async fn revoke_join_token(session: &mut Session, id: String) -> Result<(), Error> {
    session
        .client
        .revoke_join_token(auth::RevokeJoinTokenRequest { id: id.clone() })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::PermissionDenied => invites_for_admins_only(),
            _ => explain(s, Subject::JoinToken(&id)),
        })?;
    done(
        session.out,
        &format!("revoked join token {id}; machines that joined with it keep their certificates"),
    );
    Ok(())
}

fn invites_for_admins_only() -> Error {
    Error::PermissionDenied(
        "only admins can make invites and join tokens: `p2p login` as an admin first".to_string(),
    )
}

fn admins_only() -> Error {
    Error::PermissionDenied(
        "only admins can manage accounts: `p2p login` as an admin first".to_string(),
    )
}

fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(|source| Error::Path {
        path: path.display().to_string(),
        source,
    })
}

/// The password from stdin, the environment or a no-echo prompt, in that
/// order of preference.
pub fn read_password(args: &PasswordArgs, prompt: &str) -> Result<String, Error> {
    let what = "password";
    if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|source| Error::Input { what, source })?;
        let password = line.trim_end_matches(['\r', '\n']).to_string();
        if password.is_empty() {
            return Err(Error::NoPassword);
        }
        return Ok(password);
    }
    if let Some(password) = &args.password {
        return Ok(password.clone());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::NoPassword);
    }
    let password = rpassword::prompt_password(format!("{prompt}: "))
        .map_err(|source| Error::Input { what, source })?;
    if password.is_empty() {
        return Err(Error::NoPassword);
    }
    Ok(password)
}

/// A line typed at a prompt on stderr.
pub fn prompt_line(what: &'static str) -> Result<String, Error> {
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "{what}: ");
    let _ = stderr.flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|source| Error::Input { what, source })?;
    Ok(line.trim().to_string())
}
