//! The agent's behaviour as its front ends see it: one [`AgentApi`] that
//! the gRPC control API ([`crate::control`]) and the web app
//! ([`crate::web`]) both call, so every rule, check and message a user
//! meets lives here once. Front ends only translate: requests in, and
//! results or [`Error`]s out (to a `tonic::Status` or an HTML page).
//!
//! It trusts its caller: each front end decides who may reach it (the
//! control socket's permissions, the control token, a web session that
//! began with a one-time link from [`AgentApi::open_web`]). Whoever passes
//! acts with the agent's OS permissions ([`AgentApi::os_account`]) when it
//! names a path to share or download to.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2p_proto::agent::v1 as pb;
use p2p_proto::auth::v1 as auth_pb;
use p2p_proto::index::v1 as index_pb;
use p2p_services::client::with_bearer;
use p2p_services::invite;
use p2p_services::manifest::{FileId, Manifest, validate_name, wire};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::download::{Downloads, Progress, resolve_destination};
use crate::entry::{EntryLink, EntryLinks};
use crate::error::Error;
use crate::holdings::Holdings;
use crate::holdings::fingerprint::{Fingerprint, compare};
use crate::holdings::store::Kind;
use crate::listing::Page;
use crate::session::Session;
use crate::stats::Stats;

/// Largest page asked of the index when listing every file.
const LIST_PAGE: u32 = 1000;
/// Largest page a front end may ask for (the index's own limit).
pub const MAX_LIST_PAGE: u32 = 1000;
/// Most pages read when listing (1,000,000 files).
const MAX_PAGES: usize = 1000;
/// How often [`AgentApi::follow_files`] re-checks without an index event
/// (this agent's own downloads change the listing too).
const FOLLOW_EVERY: Duration = Duration::from_secs(2);
/// How long a finished or failed download stays in [`AgentApi::transfers`].
const KEEP_FINISHED: Duration = Duration::from_secs(30 * 60);
/// Uses of a join token made with an invite when none are asked for.
pub const INVITE_TOKEN_USES: u32 = 1;
/// Lifetime of a join token made with an invite when none is asked for.
pub const INVITE_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// What to share: a file on this machine.
#[derive(Debug, Clone, Default)]
pub struct ShareOptions {
    /// Absolute path of the file.
    pub path: String,
    /// Name in the network; empty means the file's own name.
    pub name: String,
    /// MIME type; empty means guessed from the name.
    pub mime_type: String,
    /// Also remove earlier shares of this path whose content changed.
    pub replace: bool,
}

/// What a finished share published.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The file as the index lists it.
    pub file: Option<index_pb::FileInfo>,
    /// The index already had this content.
    pub already_published: bool,
    /// Its size.
    pub size_bytes: u64,
    /// For a folder, what was left out: symbolic links and special files
    /// (relative paths), never followed.
    pub skipped: Vec<String>,
}

/// One download some front end asked for, with where it goes.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// The destination this request gave.
    pub destination: PathBuf,
    /// The latest state.
    pub progress: Progress,
}

/// The agent's behaviour, shared by every front end.
#[derive(Debug, Clone)]
pub struct AgentApi {
    session: Arc<Session>,
    holdings: Arc<Holdings>,
    downloads: Arc<Downloads>,
    stats: Arc<Stats>,
    downloads_dir: PathBuf,
    shutdown: CancellationToken,
    transfers: Arc<Mutex<Vec<Watched>>>,
    entry: Arc<EntryLinks>,
    os_account: Arc<str>,
}

/// This process's OS account as `name (uid N)`, the name read from
/// `/etc/passwd` when it is there.
fn os_account() -> String {
    let uid = rustix::process::geteuid().as_raw();
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        });
    match name {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// A download followed for [`AgentApi::transfers`].
#[derive(Debug)]
struct Watched {
    destination: PathBuf,
    progress: watch::Receiver<Progress>,
    finished_at: Option<Instant>,
}

impl AgentApi {
    /// The API over the agent's parts.
    pub fn new(
        session: Arc<Session>,
        holdings: Arc<Holdings>,
        downloads: Arc<Downloads>,
        stats: Arc<Stats>,
        downloads_dir: PathBuf,
        entry: EntryLinks,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            session,
            holdings,
            downloads,
            stats,
            downloads_dir,
            shutdown,
            transfers: Arc::default(),
            entry: Arc::new(entry),
            os_account: os_account().into(),
        }
    }

    /// The OS account whose permissions the agent has, as `name (uid N)`:
    /// every path a front end names is read or written as this account.
    pub fn os_account(&self) -> &str {
        &self.os_account
    }

    /// A one-time link that lets one browser into the web app. Only a front
    /// end reserved for the agent's own OS user (the control API) offers it.
    pub fn open_web(&self) -> Result<EntryLink, Error> {
        self.entry.issue()
    }

    /// How long a one-time link stays good.
    pub fn web_link_lifetime(&self) -> Duration {
        self.entry.lifetime()
    }

    /// Spends a one-time link's ticket; true when it was good.
    pub fn enter_web(&self, ticket: &str) -> bool {
        self.entry.redeem(ticket)
    }

    /// The agent's session with auth-svc and index-svc.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Where downloads land by default.
    pub fn downloads_dir(&self) -> &Path {
        &self.downloads_dir
    }

    /// The agent's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.session.config().data_dir
    }

    /// Fails with [`Error::NotLoggedIn`] unless a user is logged in.
    pub fn require_login(&self) -> Result<auth_pb::User, Error> {
        self.session.user().ok_or(Error::NotLoggedIn)
    }

    fn peer_id(&self) -> Result<String, Error> {
        self.session.peer_id().ok_or_else(|| {
            if self.session.user().is_none() {
                Error::NotLoggedIn
            } else if let Some(reason) = self.session.registration_refused() {
                Error::FailedPrecondition(format!(
                    "the index refused to register this agent: {reason}; the agent advertises \
                     {} and registers on its next retry once that is fixed",
                    match self.session.advertised() {
                        addr if addr.is_empty() => "the address the index sees it at".to_string(),
                        addr => format!("{addr} (set with --advertise or PEER_ADVERTISE)"),
                    }
                ))
            } else if self.session.index_reachable() {
                // The index answers: it is not the cause, so do not call it
                // unreachable.
                Error::FailedPrecondition(
                    "this agent is registering with the index right now: try again in a moment"
                        .into(),
                )
            } else {
                Error::IndexUnavailable(
                    "this agent is not registered with the index yet; it keeps retrying".into(),
                )
            }
        })
    }

    /// Logs the agent in as `username` (replacing any session or
    /// unattended login) and returns the user and our peer id.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(auth_pb::User, String), Error> {
        if username.trim().is_empty() {
            return Err(Error::InvalidArgument("username is empty".into()));
        }
        let result = self.session.login(username.trim(), password).await;
        if result.is_ok() {
            crate::enrollment::remember_logout(&self.session.config().data_dir, false);
        }
        result
    }

    /// A person proving who they are to a front end that has no session of
    /// its own (the web app): the password is always checked with
    /// auth-svc. When the agent is already logged in as that account (for
    /// example unattended), its session is left running; when it is logged
    /// in as another account, that stays the owner's choice and the login
    /// is refused ([`Error::OtherAccount`]) without asking auth-svc; when it
    /// is not logged in, it logs in as that account, as
    /// [`AgentApi::login`] does.
    pub async fn log_in_person(
        &self,
        username: &str,
        password: &str,
    ) -> Result<auth_pb::User, Error> {
        let username = username.trim();
        if username.is_empty() {
            return Err(Error::InvalidArgument("username is empty".into()));
        }
        match self.session.user() {
            Some(current) if current.username == username => {
                self.session.check_password(username, password).await?;
                Ok(current)
            }
            Some(current) => Err(Error::OtherAccount {
                current: current.username,
                asked: username.to_string(),
            }),
            None => Ok(self.login(username, password).await?.0),
        }
    }

    /// Ends the agent's session.
    pub async fn logout(&self) {
        self.session.logout().await;
        // A joined agent stays logged out across restarts until a login.
        crate::enrollment::remember_logout(&self.session.config().data_dir, true);
    }

    /// Every network file whose name contains `name_contains`.
    async fn list_network(&self, name_contains: &str) -> Result<Vec<index_pb::FileInfo>, Error> {
        let request = pb::ListFilesRequest {
            name_contains: name_contains.to_string(),
            ..Default::default()
        };
        Ok(self.list_index(&request).await?.files)
    }

    /// The index's answer to a listing: one page, or (`page_size` 0)
    /// every page, with the total when asked for.
    async fn list_index(
        &self,
        request: &pb::ListFilesRequest,
    ) -> Result<index_pb::ListFilesResponse, Error> {
        let all = request.page_size == 0;
        let mut listed = index_pb::ListFilesResponse::default();
        let mut page_token = request.page_token.clone();
        for page_number in 0..MAX_PAGES {
            let ask = index_pb::ListFilesRequest {
                name_contains: request.name_contains.clone(),
                page_size: if all { LIST_PAGE } else { request.page_size },
                page_token: page_token.clone(),
                sort: request.sort,
                descending: request.descending,
                owner_name: request.owner_name.clone(),
                kind: request.kind,
                include_total: request.include_total && page_number == 0,
            };
            let page = self
                .session
                .call_index(|mut c, t| async move { c.list_files(with_bearer(ask, &t)).await })
                .await?;
            listed.files.extend(page.files);
            listed.total_count = listed.total_count.or(page.total_count);
            listed.next_page_token = page.next_page_token;
            if !all || listed.next_page_token.is_empty() {
                break;
            }
            page_token = std::mem::take(&mut listed.next_page_token);
        }
        Ok(listed)
    }

    /// One page of the network's entries (`page_size` 0: all of them) in
    /// the request's order and filters, with this agent's local state of
    /// each.
    pub async fn list_files(
        &self,
        request: &pb::ListFilesRequest,
    ) -> Result<pb::ListFilesResponse, Error> {
        if request.page_size > MAX_LIST_PAGE {
            return Err(Error::InvalidArgument(format!(
                "page_size {} is over {MAX_LIST_PAGE}; page through with next_page_token, \
                 or ask for 0 to list everything",
                request.page_size
            )));
        }
        let listed = self.list_index(request).await?;
        Ok(pb::ListFilesResponse {
            files: listed
                .files
                .into_iter()
                .map(|f| self.network_file(f))
                .collect(),
            next_page_token: listed.next_page_token,
            total_count: listed.total_count,
        })
    }

    /// What is directly inside the folder entry `path` names (an entry,
    /// optionally followed by `/` and a path inside it): `limit` entries
    /// (0: 100, at most 1000) from `offset`, and how many there are.
    pub async fn list_folder(
        &self,
        path: &str,
        offset: u32,
        limit: u32,
    ) -> Result<pb::ListFolderResponse, Error> {
        self.require_login()?;
        let (entry, inner) = match path.split_once('/') {
            Some((entry, inner)) => (entry, inner.trim_end_matches('/')),
            None => (path, ""),
        };
        let file_id = self.resolve_file(entry).await?;
        let request = index_pb::GetFileRequest {
            file_id: file_id.to_string(),
        };
        let response = self
            .session
            .call_index(|mut c, t| async move { c.get_file(with_bearer(request, &t)).await })
            .await?;
        let info = response.file.clone().unwrap_or_default();
        let manifest = checked_manifest(
            &file_id,
            response.manifest.ok_or_else(|| {
                Error::NotFound(format!("the index has no manifest of {file_id}"))
            })?,
        )?;
        let folder = manifest.folder.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} is a file, not a folder; `p2p ls` lists the network's entries",
                manifest.name
            ))
        })?;
        let children = folder.children(inner).ok_or_else(|| {
            Error::NotFound(format!(
                "{} has no folder at {inner:?}; `p2p ls {}/` lists its top",
                manifest.name, manifest.name
            ))
        })?;
        let limit = match limit {
            0 => 100,
            n => n.min(1000),
        } as usize;
        let total = children.len() as u32;
        let entries = children
            .into_iter()
            .skip(offset as usize)
            .take(limit)
            .map(|c| pb::FolderEntry {
                name: c.name,
                is_folder: c.is_folder,
                size_bytes: c.size_bytes,
                file_count: c.file_count,
            })
            .collect();
        Ok(pb::ListFolderResponse {
            folder: Some(self.network_file(info)),
            path: inner.to_string(),
            entries,
            total,
        })
    }

    /// The index's live feed of file changes (`WatchFiles`), from now on
    /// (`after_seq` 0) or after a position an earlier stream reached (its
    /// last event's `resume_after_seq`), on whichever replica answers.
    pub async fn watch_files(
        &self,
        after_seq: i64,
    ) -> Result<tonic::Streaming<index_pb::FileEvent>, Error> {
        self.session
            .call_index(|mut c, t| async move {
                c.watch_files(with_bearer(index_pb::WatchFilesRequest { after_seq }, &t))
                    .await
            })
            .await
    }

    /// Follows one page of the listing (`request` as for
    /// [`AgentApi::list_files`]): calls `send` with the page at once, then
    /// with each change to it, until `send` returns false or the agent
    /// shuts down, or `until` resolves (the viewer went away: a view with
    /// nothing new to send would not notice otherwise). Both front ends'
    /// live views are this one loop.
    ///
    /// It follows index-svc's `WatchFiles` by cursor and applies each event
    /// to the page ([`Page`]): a published or re-held file is one row
    /// added, updated or moved, a deleted one a row removed. It lists the
    /// page again only when it (re)connects to the feed, and then sends
    /// the differences. This agent's own state of the shown rows (a
    /// download moving) is looked at every [`FOLLOW_EVERY`], without asking
    /// the index.
    pub async fn follow_files<F, Fut>(
        &self,
        request: &pb::ListFilesRequest,
        until: impl std::future::Future<Output = ()>,
        mut send: F,
    ) where
        F: FnMut(Result<pb::FileChange, Error>) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        tokio::pin!(until);
        let mut page: Option<Page> = None;
        let mut watch: Option<tonic::Streaming<index_pb::FileEvent>> = None;
        let mut listed = false;
        // Where the feed got to, so a replacement stream (another replica,
        // after a failover) carries on from there instead of from "now".
        let mut resume_after = 0;
        let mut tick = tokio::time::interval(FOLLOW_EVERY);
        loop {
            if watch.is_none() {
                // Subscribed before listing: an event between the two is
                // applied to a page that may already show it, which is
                // harmless (an upsert of the same row sends nothing).
                watch = self.watch_files(resume_after).await.ok();
                listed = false;
            }
            if !listed {
                let changes = match self.list_files(request).await {
                    Ok(response) => {
                        listed = true;
                        match &mut page {
                            Some(page) => page.replace(&response).into_iter().map(Ok).collect(),
                            None => {
                                page = Some(Page::new(request, &response));
                                vec![Ok(pb::FileChange {
                                    change: Some(pb::file_change::Change::Page(response)),
                                    ..Default::default()
                                })]
                            }
                        }
                    }
                    Err(err) => vec![Err(err)],
                };
                for change in changes {
                    if !send(change).await {
                        return;
                    }
                }
            }
            let changes = tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = &mut until => return,
                _ = tick.tick() => match &mut page {
                    Some(page) => page.refresh(|f| self.network_file(f)),
                    None => Vec::new(),
                },
                event = next_change(&mut watch) => match (event, &mut page) {
                    (Some(event), Some(page)) => {
                        resume_after = resume_after.max(event.resume_after_seq);
                        self.apply_event(page, request, event).await
                    }
                    (Some(event), None) => {
                        resume_after = resume_after.max(event.resume_after_seq);
                        Vec::new()
                    }
                    (None, _) => {
                        watch = None;
                        Vec::new()
                    }
                },
            };
            for change in changes {
                if !send(Ok(change)).await {
                    return;
                }
            }
        }
    }

    /// The changes one index event makes to a followed page, with the new
    /// total when the request counts and the event may have moved it.
    async fn apply_event(
        &self,
        page: &mut Page,
        request: &pb::ListFilesRequest,
        event: index_pb::FileEvent,
    ) -> Vec<pb::FileChange> {
        let kind = index_pb::FileEventKind::try_from(event.kind)
            .unwrap_or(index_pb::FileEventKind::Unspecified);
        let (change, recount) = match (kind, event.file) {
            (index_pb::FileEventKind::Deleted, file) => {
                let name = file.map(|f| f.name).unwrap_or_default();
                (page.remove(&event.file_id), page.may_count(&name))
            }
            (_, Some(file)) => {
                let counted = kind == index_pb::FileEventKind::Published && page.matches(&file);
                (page.upsert(self.network_file(file)), counted)
            }
            (_, None) => (None, false),
        };
        let mut changes: Vec<pb::FileChange> = change.into_iter().collect();
        if request.include_total && recount {
            let count = pb::ListFilesRequest {
                page_size: 1,
                page_token: String::new(),
                ..request.clone()
            };
            if let Ok(counted) = self.list_index(&count).await {
                changes.push(pb::FileChange {
                    total_count: counted.total_count,
                    ..Default::default()
                });
            }
        }
        changes
    }

    /// Resolves a file id, unique id prefix or exact name to a full id.
    pub async fn resolve_file(&self, query: &str) -> Result<FileId, Error> {
        let query = query.trim();
        if query.is_empty() {
            return Err(Error::InvalidArgument(
                "name the file: its id, a unique id prefix, or its exact name".into(),
            ));
        }
        if let Ok(id) = FileId::parse(query) {
            return Ok(id);
        }
        let lower = query.to_ascii_lowercase();
        let local = self.holdings.all();
        // Only a query that could be an id prefix needs every file; a name
        // is filtered by the index, so a big network costs one page.
        let could_be_id = query.chars().all(|c| c.is_ascii_hexdigit());
        // (index-svc takes filters of up to 255 bytes.)
        let filter = if could_be_id || query.len() > 255 {
            ""
        } else {
            query
        };
        let network = match self.list_network(filter).await {
            Ok(files) => files,
            Err(err) if local.is_empty() => return Err(err),
            Err(_) => Vec::new(),
        };
        let mut ids: Vec<(String, String)> = network
            .iter()
            .map(|f| (f.file_id.clone(), f.name.clone()))
            .chain(
                local
                    .iter()
                    .map(|h| (h.file_id.to_string(), h.manifest.name.clone())),
            )
            .collect();
        ids.sort();
        ids.dedup_by(|a, b| a.0 == b.0);
        let by_name: Vec<&(String, String)> = ids.iter().filter(|(_, n)| n == query).collect();
        let matches: Vec<&(String, String)> = if by_name.is_empty() {
            ids.iter()
                .filter(|(id, _)| id.starts_with(&lower))
                .collect()
        } else {
            by_name
        };
        match matches.as_slice() {
            [] => Err(Error::UnknownFile(format!(
                "no file named {query:?} or with an id starting with it; run `p2p ls` to see the files"
            ))),
            [(id, _)] => Ok(FileId::parse(id)?),
            many => Err(Error::Ambiguous(format!(
                "{query:?} matches {} files ({}); use a longer id prefix",
                many.len(),
                many.iter()
                    .take(5)
                    .map(|(id, name)| format!("{} {name}", &id[..12.min(id.len())]))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    async fn manifest_of(&self, file_id: &FileId) -> Result<Manifest, Error> {
        let request = index_pb::GetFileRequest {
            file_id: file_id.to_string(),
        };
        let response = self
            .session
            .call_index(|mut c, t| async move { c.get_file(with_bearer(request, &t)).await })
            .await;
        let response = response.map_err(|err| not_in_network(file_id, err))?;
        checked_manifest(
            file_id,
            response.manifest.ok_or_else(|| {
                Error::NotFound(format!("the index has no manifest for {file_id}"))
            })?,
        )
    }

    /// Hashes the file at `options.path`, records it as shared, publishes
    /// it and serves it. `on_progress(hashed_bytes, total_bytes)` is called
    /// while hashing; when it returns false (the caller went away) the
    /// share stops with [`Error::Cancelled`].
    pub async fn share(
        &self,
        options: ShareOptions,
        mut on_progress: impl FnMut(u64, u64) -> bool + Send,
    ) -> Result<Shared, Error> {
        self.require_login()?;
        let path = PathBuf::from(options.path.trim());
        if !path.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "{:?} is not an absolute path; the agent may run in another directory",
                options.path
            )));
        }
        let meta = std::fs::metadata(&path)
            .map_err(|e| Error::io(format!("cannot share {}", path.display()), e))?;
        if !meta.is_file() && !meta.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{} is neither a regular file nor a folder",
                path.display()
            )));
        }
        let name = if options.name.trim().is_empty() {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            options.name.trim().to_string()
        };
        validate_name(&name)?;
        let mime_type = if options.mime_type.trim().is_empty() {
            mime_guess::from_path(&name)
                .first_or_octet_stream()
                .essence_str()
                .to_string()
        } else {
            options.mime_type.trim().to_string()
        };
        let peer_id = self.peer_id()?;
        let hashed = Arc::new(AtomicU64::new(0));
        let cancel = Arc::new(AtomicBool::new(false));
        let (total, before, skipped, hashing) = if meta.is_dir() {
            let root = path.clone();
            let scan = tokio::task::spawn_blocking(move || crate::disk::folder::scan(&root))
                .await
                .map_err(|e| Error::io("folder scan failed", std::io::Error::other(e)))??;
            let before = crate::holdings::fingerprint::of_folder(
                &path,
                scan.files.iter().map(|(p, _)| p.as_str()),
            )
            .map_err(|e| Error::io(format!("cannot share {}", path.display()), e))?;
            let skipped = scan.skipped.clone();
            for link in &skipped {
                tracing::info!(folder = %path.display(), entry = %link, "not shared: a symbolic link or special file");
            }
            let hashing = tokio::spawn(crate::disk::folder::hash_folder(
                path.clone(),
                name,
                scan.clone(),
                hashed.clone(),
                cancel.clone(),
            ));
            (scan.total_bytes(), before, skipped, hashing)
        } else {
            let before = Fingerprint::of(&path)
                .map_err(|e| Error::io(format!("cannot share {}", path.display()), e))?;
            let hashing = tokio::spawn(crate::disk::hash_into_manifest(
                path.clone(),
                name,
                mime_type,
                hashed.clone(),
                cancel.clone(),
            ));
            (meta.len(), before, Vec::new(), hashing)
        };
        let _stop_hashing = StopOnDrop(cancel.clone());
        tokio::pin!(hashing);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let manifest = loop {
            tokio::select! {
                joined = &mut hashing => {
                    break joined.map_err(|e| Error::io("hashing task failed", std::io::Error::other(e)))??;
                }
                _ = tick.tick() => {
                    if !on_progress(hashed.load(Ordering::Relaxed), total) {
                        return Err(Error::Cancelled);
                    }
                }
                () = self.shutdown.cancelled() => return Err(Error::ShuttingDown),
            }
        };
        if compare(&before, crate::holdings::fingerprint_of(&manifest, &path)).is_some() {
            return Err(Error::InvalidArgument(format!(
                "{} changed while it was being hashed; share it again once it is written",
                path.display()
            )));
        }
        self.holdings
            .add_shared(manifest.clone(), &path, before)
            .await?;
        let publish = index_pb::PublishFileRequest {
            manifest: Some(wire::to_proto(&manifest)),
            peer_id,
        };
        let published = self
            .session
            .call_index(|mut c, t| async move { c.publish_file(with_bearer(publish, &t)).await })
            .await?;
        tracing::info!(file = %manifest.file_id(), path = %path.display(), created = published.created, "sharing");
        if options.replace {
            self.replace_changed(&path, &manifest.file_id()).await;
        }
        Ok(Shared {
            file: published.file,
            already_published: !published.created,
            size_bytes: manifest.size_bytes,
            skipped,
        })
    }

    /// Removes, locally and from the network, earlier shares of `path`
    /// whose content changed on disk (all but `current`). Best effort: the
    /// new file is shared either way.
    async fn replace_changed(&self, path: &Path, current: &FileId) {
        let old = self.holdings.all().into_iter().filter(|h| {
            h.file_id != *current
                && h.snapshot().kind == Kind::Shared
                && h.snapshot().path == path
                && !self.holdings.verify(h)
        });
        for holding in old.collect::<Vec<_>>() {
            let file_id = holding.file_id.to_string();
            if let Some(peer_id) = self.session.peer_id()
                && let Err(err) = self.session.stop_sharing(&peer_id, &file_id).await
            {
                tracing::warn!(file = %file_id, %err, "cannot withdraw the replaced file");
            }
            let delete = index_pb::DeleteFileRequest {
                file_id: file_id.clone(),
            };
            if let Err(err) = self
                .session
                .call_index(|mut c, t| async move { c.delete_file(with_bearer(delete, &t)).await })
                .await
            {
                tracing::warn!(file = %file_id, %err, "cannot remove the replaced file from the network");
            }
            if let Err(err) = self.holdings.remove(&holding.file_id).await {
                tracing::warn!(file = %file_id, %err, "cannot forget the replaced file");
            }
            tracing::info!(old = %file_id, new = %current, path = %path.display(), "replaced a changed share");
        }
    }

    fn network_file(&self, file: index_pb::FileInfo) -> pb::NetworkFile {
        let local = FileId::parse(&file.file_id)
            .ok()
            .and_then(|id| self.local_view(&id));
        let (local_state, local_bytes, local_path, local_problem) =
            local.unwrap_or((pb::LocalState::None, 0, String::new(), String::new()));
        pb::NetworkFile {
            file: Some(file),
            local_state: local_state as i32,
            local_bytes,
            local_path,
            local_problem,
        }
    }

    fn local_view(&self, id: &FileId) -> Option<(pb::LocalState, u64, String, String)> {
        if let Some(progress) = self.downloads.progress(id) {
            return Some((
                pb::LocalState::Downloading,
                progress.have_bytes,
                String::new(),
                String::new(),
            ));
        }
        let holding = self.holdings.get(id)?;
        let state = holding.snapshot();
        let path = state.path.to_string_lossy().into_owned();
        if let Some(problem) = holding.problem() {
            return Some((pb::LocalState::None, 0, path, problem.to_string()));
        }
        Some(match state.kind {
            Kind::Partial => (
                pb::LocalState::Partial,
                holding.held_bytes(),
                String::new(),
                String::new(),
            ),
            Kind::Shared | Kind::Downloaded => (
                pb::LocalState::Complete,
                holding.manifest.size_bytes,
                path,
                String::new(),
            ),
        })
    }

    /// Starts (or joins) the download of `file` (id, id prefix or exact
    /// name, optionally followed by `/` and a path inside a folder to get
    /// only that file or subfolder) to `destination` (empty: the downloads
    /// dir) and returns its progress and the resolved destination.
    pub async fn download(
        &self,
        file: &str,
        destination: &str,
        force: bool,
    ) -> Result<(watch::Receiver<Progress>, PathBuf), Error> {
        self.require_login()?;
        // A name never holds `/`: what follows one is a path in a folder.
        let (entry, inner) = match file.split_once('/') {
            Some((entry, inner)) => (entry, inner.trim_end_matches('/')),
            None => (file, ""),
        };
        let file_id = self.resolve_file(entry).await?;
        // One call for the manifest and the first sources; GetFile only
        // when an older index leaves the manifest out.
        let (manifest, located) =
            match crate::download::locate_with_manifest(&self.session, &file_id).await {
                Ok(mut located) => match located.manifest.take() {
                    Some(manifest) => (checked_manifest(&file_id, manifest)?, Some(located)),
                    None => (self.manifest_of(&file_id).await?, Some(located)),
                },
                Err(err) => return Err(not_in_network(&file_id, err)),
            };
        let only = if inner.is_empty() {
            None
        } else {
            let folder = manifest.folder.as_ref().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{} is a file, not a folder: get it without \"/{inner}\"",
                    manifest.name
                ))
            })?;
            Some(folder.select(inner).ok_or_else(|| {
                Error::NotFound(format!(
                    "{} has no file or folder at {inner:?}; `p2p ls {}/` lists what it holds",
                    manifest.name, manifest.name
                ))
            })?)
        };
        let leaf = match &only {
            Some(part) => part
                .base
                .rsplit('/')
                .next()
                .unwrap_or(&part.base)
                .to_string(),
            None => manifest.name.clone(),
        };
        let destination = resolve_destination(&self.downloads_dir, destination, &leaf, force)?;
        let rx = self
            .downloads
            .start(manifest, destination.clone(), located, only)?;
        let mut transfers = self.lock_transfers();
        transfers.retain(|w| w.destination != destination);
        transfers.push(Watched {
            destination: destination.clone(),
            progress: rx.clone(),
            finished_at: None,
        });
        Ok((rx, destination))
    }

    fn lock_transfers(&self) -> std::sync::MutexGuard<'_, Vec<Watched>> {
        self.transfers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Downloads asked for through any front end, newest first: running
    /// ones and those that ended in the last half hour.
    pub fn transfers(&self) -> Vec<Transfer> {
        let now = Instant::now();
        let mut transfers = self.lock_transfers();
        for watched in transfers.iter_mut() {
            if watched.finished_at.is_none() && watched.progress.borrow().is_final() {
                watched.finished_at = Some(now);
            }
        }
        transfers.retain(|w| w.finished_at.is_none_or(|at| now - at < KEEP_FINISHED));
        transfers
            .iter()
            .rev()
            .map(|w| Transfer {
                destination: w.destination.clone(),
                progress: w.progress.borrow().clone(),
            })
            .collect()
    }

    /// Stops the running download of `file`.
    pub async fn cancel(&self, file: &str) -> Result<FileId, Error> {
        let file_id = self.resolve_file(file).await?;
        if !self.downloads.cancel(&file_id) {
            return Err(Error::NotFound(format!(
                "no download of {file_id} is running"
            )));
        }
        Ok(file_id)
    }

    /// Stops holding `file`: cancels its download, withdraws it from the
    /// index, deletes a downloaded copy (never a shared original) and, with
    /// `network`, removes the file from the network (owner or admin).
    pub async fn remove(&self, file: &str, network: bool) -> Result<FileId, Error> {
        let file_id = self.resolve_file(file).await?;
        if self.downloads.cancel(&file_id) {
            wait_until_stopped(&self.downloads, &file_id).await;
        }
        if let Some(peer_id) = self.session.peer_id() {
            let stop = index_pb::StopSharingRequest {
                peer_id,
                file_id: file_id.to_string(),
            };
            if let Err(err) = self
                .session
                .call_index(|mut c, t| async move { c.stop_sharing(with_bearer(stop, &t)).await })
                .await
            {
                tracing::warn!(file = %file_id, %err, "cannot tell the index we stopped sharing");
            }
        }
        // The bytes go first and the record after, so `rm` frees a full
        // disk: the database write may need the space the file held.
        if let Some(holding) = self.holdings.get(&file_id) {
            let state = holding.snapshot();
            // A shared file is the user's own: it is never deleted. Nor is
            // whatever now sits where a changed download was.
            if state.kind != Kind::Shared && holding.problem().is_none() {
                let removed = if holding.manifest.folder.is_some() && state.kind == Kind::Downloaded
                {
                    tokio::fs::remove_dir_all(&state.path).await
                } else {
                    tokio::fs::remove_file(&state.path).await
                };
                match removed {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::io(
                            format!("cannot delete {}", state.path.display()),
                            e,
                        ));
                    }
                }
            }
            self.holdings.remove(&file_id).await?;
        }
        if network {
            let delete = index_pb::DeleteFileRequest {
                file_id: file_id.to_string(),
            };
            self.session
                .call_index(|mut c, t| async move { c.delete_file(with_bearer(delete, &t)).await })
                .await?;
        }
        Ok(file_id)
    }

    /// The agent's session, addresses, load and counters.
    pub fn status(&self) -> pb::StatusResponse {
        let config = self.session.config();
        let user = self.session.user();
        let s = &self.stats;
        let counters = pb::TransferCounters {
            bytes_uploaded: Stats::get(&s.bytes_uploaded),
            bytes_downloaded: Stats::get(&s.bytes_downloaded),
            chunks_served: Stats::get(&s.chunks_served),
            chunks_downloaded: Stats::get(&s.chunks_downloaded),
            chunks_rejected: Stats::get(&s.chunks_rejected),
            chunks_from_partial_sources: Stats::get(&s.chunks_from_partial_sources),
            chunks_served_while_downloading: Stats::get(&s.chunks_served_while_downloading),
            chunks_served_framed: Stats::get(&s.chunks_served_framed),
            holdings_streams_served: Stats::get(&s.holdings_streams_served),
            holdings_streams_framed: Stats::get(&s.holdings_streams_framed),
        };
        let held = self.holdings.all();
        let shared_files = held
            .iter()
            .filter(|h| h.is_complete() && h.problem().is_none())
            .count() as u32;
        let partials: Vec<_> = held.iter().filter(|h| !h.is_complete()).collect();
        let held_file_problems = held
            .iter()
            .filter_map(|h| {
                Some(pb::HeldFileProblem {
                    problem: h.problem()?.to_string(),
                    file_id: h.file_id.to_string(),
                    name: h.manifest.name.clone(),
                    path: h.snapshot().path.to_string_lossy().into_owned(),
                })
            })
            .collect();
        // Read afresh: the address follower renews the certificate.
        let joined = crate::enrollment::Joined::load(&config.data_dir)
            .ok()
            .flatten();
        let cert = joined.as_ref().and_then(|j| j.cert_info().ok());
        pb::StatusResponse {
            logged_in: user.is_some(),
            user,
            peer_id: self.session.peer_id().unwrap_or_default(),
            advertise_addr: self.session.advertised(),
            index_url: config.index_url.clone(),
            auth_url: config.auth_url.clone(),
            data_dir: config.data_dir.to_string_lossy().into_owned(),
            index_reachable: self.session.index_reachable(),
            load: Some(self.session.load()),
            active_downloads: self.downloads.running_count() as u32,
            counters: Some(counters),
            shared_files,
            partial_bytes: partials.iter().map(|h| h.held_bytes()).sum(),
            partial_downloads: partials.len() as u32,
            held_file_problems,
            free_disk_bytes: crate::disk::free_disk_bytes(&config.data_dir),
            login_error: self.session.login_error().unwrap_or_default(),
            ca_fingerprint: joined
                .as_ref()
                .map(|j| j.deployment.ca_fingerprint.clone())
                .unwrap_or_default(),
            cert_address: cert
                .as_ref()
                .and_then(|c| c.names.first().cloned())
                .unwrap_or_default(),
            cert_not_after_ms: cert.as_ref().map_or(0, |c| c.not_after * 1000),
        }
    }

    /// The network's peers with their load.
    pub async fn list_peers(
        &self,
        request: index_pb::ListPeersRequest,
    ) -> Result<index_pb::ListPeersResponse, Error> {
        self.session
            .call_index(|mut c, t| async move { c.list_peers(with_bearer(request, &t)).await })
            .await
    }

    /// Creates an account (admins only; auth-svc decides).
    pub async fn create_user(
        &self,
        request: auth_pb::CreateUserRequest,
    ) -> Result<auth_pb::User, Error> {
        self.session
            .call_accounts(|mut c, t| async move { c.create_user(with_bearer(request, &t)).await })
            .await
    }

    /// Every account (admins only).
    pub async fn list_users(&self) -> Result<Vec<auth_pb::User>, Error> {
        let request = auth_pb::ListUsersRequest {};
        let users = self
            .session
            .call_accounts(|mut c, t| async move { c.list_users(with_bearer(request, &t)).await })
            .await?;
        Ok(users.users)
    }

    /// Deletes an account (admins only; never the last admin).
    pub async fn delete_user(&self, request: auth_pb::DeleteUserRequest) -> Result<(), Error> {
        self.session
            .call_accounts(|mut c, t| async move { c.delete_user(with_bearer(request, &t)).await })
            .await?;
        Ok(())
    }

    /// Changes an account's role (admins only; never the last admin).
    pub async fn set_role(&self, request: auth_pb::SetRoleRequest) -> Result<auth_pb::User, Error> {
        self.session
            .call_accounts(|mut c, t| async move { c.set_role(with_bearer(request, &t)).await })
            .await
    }

    /// Disables or re-enables an account (admins only).
    pub async fn set_disabled(
        &self,
        request: auth_pb::SetDisabledRequest,
    ) -> Result<auth_pb::User, Error> {
        self.session
            .call_accounts(|mut c, t| async move { c.set_disabled(with_bearer(request, &t)).await })
            .await
    }

    /// Sets a new password: an admin resetting anyone's, or a user their
    /// own with the old one.
    pub async fn change_password(
        &self,
        request: auth_pb::ChangePasswordRequest,
    ) -> Result<(), Error> {
        self.session
            .call_accounts(
                |mut c, t| async move { c.change_password(with_bearer(request, &t)).await },
            )
            .await?;
        Ok(())
    }

    /// An invite for another machine (admins only; auth-svc decides): the
    /// server this agent reaches auth-svc at, the deployment CA's
    /// fingerprint (from `GetDeployment`, over the TLS this agent already
    /// trusts), and, when `token_for_username` is set, a new join token for
    /// that account ([`INVITE_TOKEN_USES`] and [`INVITE_TOKEN_TTL`] unless
    /// asked otherwise). The token's secret is only in the invite text.
    pub async fn create_invite(
        &self,
        request: pb::CreateInviteRequest,
    ) -> Result<pb::Invite, Error> {
        let server = invite_server(&self.session.config().auth_url)?;
        let deployment = self
            .session
            .call_enrollment(|mut c, _| async move {
                c.get_deployment(auth_pb::GetDeploymentRequest {}).await
            })
            .await?;
        if !invite::is_fingerprint(&deployment.ca_fingerprint) {
            return Err(Error::Remote {
                service: "auth",
                status: tonic::Status::internal(format!(
                    "auth-svc named its CA by {:?}, not sha256: and 64 hex digits; \
                     check that it runs the same version as this agent",
                    deployment.ca_fingerprint
                )),
            });
        }
        let username = request.token_for_username.trim().to_string();
        let (token, secret) = if username.is_empty() {
            (None, None)
        } else {
            let create = auth_pb::CreateJoinTokenRequest {
                username,
                uses: if request.uses == 0 {
                    INVITE_TOKEN_USES
                } else {
                    request.uses
                },
                ttl_seconds: if request.ttl_seconds == 0 {
                    INVITE_TOKEN_TTL.as_secs()
                } else {
                    request.ttl_seconds
                },
                description: request.description,
            };
            let created = self
                .session
                .call_enrollment(|mut c, t| async move {
                    c.create_join_token(with_bearer(create, &t)).await
                })
                .await?;
            (created.token, Some(created.secret))
        };
        let text = invite::Invite {
            server: server.clone(),
            fingerprint: deployment.ca_fingerprint.clone(),
            token: secret,
        }
        .encode();
        Ok(pb::Invite {
            invite: text,
            server,
            ca_fingerprint: deployment.ca_fingerprint,
            token,
        })
    }

    /// Every join token, newest first (admins only).
    pub async fn list_join_tokens(&self) -> Result<Vec<auth_pb::JoinToken>, Error> {
        let request = auth_pb::ListJoinTokensRequest {};
        let listed = self
            .session
            .call_enrollment(|mut c, t| async move {
                c.list_join_tokens(with_bearer(request, &t)).await
            })
            .await?;
        Ok(listed.tokens)
    }

    /// Revokes a join token at once (admins only). Idempotent.
    pub async fn revoke_join_token(&self, id: &str) -> Result<(), Error> {
        let id = id.trim();
        if id.is_empty() {
            return Err(Error::InvalidArgument(
                "name the join token to revoke by its id (`p2p join-tokens` lists them)".into(),
            ));
        }
        let request = auth_pb::RevokeJoinTokenRequest { id: id.to_string() };
        self.session
            .call_enrollment(|mut c, t| async move {
                c.revoke_join_token(with_bearer(request, &t)).await
            })
            .await?;
        Ok(())
    }
}

/// The `host:port` an invite names for auth-svc: this agent's
/// `--auth-url` without its scheme or path, so the new machine dials what
/// this one does.
pub fn invite_server(auth_url: &str) -> Result<String, Error> {
    let url = auth_url.trim();
    let rest = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/');
    let server = rest.split('/').next().unwrap_or_default();
    invite::check_server(server).map_err(|err| {
        Error::FailedPrecondition(format!(
            "this agent's --auth-url {url:?} cannot go in an invite ({err}); \
             give the agent --auth-url HOST:PORT as other machines reach auth-svc"
        ))
    })?;
    Ok(server.to_string())
}

/// The next event of the feed; `None` when it ended or broke. Pending
/// forever while there is no feed.
async fn next_change(
    watch: &mut Option<tonic::Streaming<index_pb::FileEvent>>,
) -> Option<index_pb::FileEvent> {
    match watch {
        Some(stream) => stream.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Waits (bounded) for a cancelled download's task to let go of its files.
async fn wait_until_stopped(downloads: &Downloads, file: &FileId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while downloads.progress(file).is_some() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An index NOT_FOUND for `file_id`, in the user's words.
fn not_in_network(file_id: &FileId, err: Error) -> Error {
    match err {
        Error::Remote { status, .. } if status.code() == tonic::Code::NotFound => {
            Error::UnknownFile(format!(
                "file {file_id} is not in the network; run `p2p ls` to see the files"
            ))
        }
        err => err,
    }
}

/// The index's manifest for `file_id`, refused unless it describes that
/// content (the id is derived from the whole-file hash and sizes).
fn checked_manifest(file_id: &FileId, manifest: index_pb::Manifest) -> Result<Manifest, Error> {
    let manifest = wire::from_proto(manifest)?;
    if manifest.file_id() != *file_id {
        return Err(Error::Corrupt(format!(
            "the index's manifest for {file_id} describes other content; refusing to download"
        )));
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invite_names_auth_svc_as_host_and_port() {
        for (url, server) in [
            ("https://auth.lan:50051", "auth.lan:50051"),
            ("http://10.0.0.5:50051/", "10.0.0.5:50051"),
            ("auth:50051", "auth:50051"),
            (" https://[fe80::1]:50051 ", "[fe80::1]:50051"),
        ] {
            assert_eq!(invite_server(url).unwrap(), server, "{url}");
        }
        for url in ["https://auth.lan", "", "https://:50051"] {
            let err = invite_server(url).unwrap_err();
            assert!(err.to_string().contains("--auth-url"), "{url}: {err}");
        }
    }
}
