//! The local control API, `p2p.agent.v1.AgentControl`: glue between the
//! generated messages and the session, holdings and download engine.
//!
//! Whoever can call it acts as the agent's logged-in user, so it trusts
//! only callers who could open its Unix socket (mode 0600: the agent's own
//! user) or, on the optional TCP listener, who present the token from the
//! 0600 token file; `p2p_services::local` enforces both before a handler
//! runs, so handlers here check no caller identity.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use p2p_proto::agent::v1 as pb;
use p2p_proto::agent::v1::agent_control_server::AgentControl;
use p2p_proto::auth::v1 as auth_pb;
use p2p_proto::index::v1 as index_pb;
use p2p_services::client::with_bearer;
use p2p_services::manifest::{FileId, Manifest, validate_name, wire};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::download::{Downloads, Progress, Stage, resolve_destination};
use crate::error::Error;
use crate::holdings::Holdings;
use crate::integrity::{Fingerprint, compare};
use crate::session::Session;
use crate::stats::Stats;
use crate::store::Kind;

/// Largest page asked of the index when listing every file.
const LIST_PAGE: u32 = 1000;
/// Most pages read when listing (1,000,000 files).
const MAX_PAGES: usize = 1000;

/// The AgentControl implementation.
#[derive(Debug, Clone)]
pub struct Control {
    session: Arc<Session>,
    holdings: Arc<Holdings>,
    downloads: Arc<Downloads>,
    stats: Arc<Stats>,
    downloads_dir: PathBuf,
    shutdown: CancellationToken,
}

impl Control {
    /// The control API over the agent's parts.
    pub fn new(
        session: Arc<Session>,
        holdings: Arc<Holdings>,
        downloads: Arc<Downloads>,
        stats: Arc<Stats>,
        downloads_dir: PathBuf,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            session,
            holdings,
            downloads,
            stats,
            downloads_dir,
            shutdown,
        }
    }

    fn peer_id(&self) -> Result<String, Error> {
        self.session.peer_id().ok_or_else(|| {
            if self.session.user().is_none() {
                Error::NotLoggedIn
            } else {
                Error::IndexUnavailable(
                    "this agent is not registered with the index yet; it keeps retrying".into(),
                )
            }
        })
    }

    /// Every network file whose name contains `name_contains`.
    async fn list_network(&self, name_contains: &str) -> Result<Vec<index_pb::FileInfo>, Error> {
        let mut files = Vec::new();
        let mut page_token = String::new();
        for _ in 0..MAX_PAGES {
            let request = index_pb::ListFilesRequest {
                name_contains: name_contains.to_string(),
                page_size: LIST_PAGE,
                page_token: page_token.clone(),
            };
            let page = self
                .session
                .call_index(|mut c, t| async move { c.list_files(with_bearer(request, &t)).await })
                .await?;
            files.extend(page.files);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        Ok(files)
    }

    /// Resolves a file id, unique id prefix or exact name to a full id.
    async fn resolve_file(&self, query: &str) -> Result<FileId, Error> {
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
        let network = match self.list_network("").await {
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
        let response = match response {
            Ok(response) => response,
            Err(Error::Remote { status, .. }) if status.code() == tonic::Code::NotFound => {
                return Err(Error::UnknownFile(format!(
                    "file {file_id} is not in the network; run `p2p ls` to see the files"
                )));
            }
            Err(err) => return Err(err),
        };
        let manifest =
            wire::from_proto(response.manifest.ok_or_else(|| {
                Error::NotFound(format!("the index has no manifest for {file_id}"))
            })?)?;
        if manifest.file_id() != *file_id {
            return Err(Error::Corrupt(format!(
                "the index's manifest for {file_id} describes other content; refusing to download"
            )));
        }
        Ok(manifest)
    }

    async fn share(
        &self,
        request: pb::ShareRequest,
        tx: mpsc::Sender<Result<pb::ShareProgress, Status>>,
    ) -> Result<(), Error> {
        let path = PathBuf::from(request.path.trim());
        if !path.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "{:?} is not an absolute path; the agent may run in another directory",
                request.path
            )));
        }
        let meta = std::fs::metadata(&path)
            .map_err(|e| Error::io(format!("cannot share {}", path.display()), e))?;
        if !meta.is_file() {
            return Err(Error::InvalidArgument(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let name = if request.name.trim().is_empty() {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            request.name.trim().to_string()
        };
        validate_name(&name)?;
        let mime_type = if request.mime_type.trim().is_empty() {
            mime_guess::from_path(&name)
                .first_or_octet_stream()
                .essence_str()
                .to_string()
        } else {
            request.mime_type.trim().to_string()
        };
        let peer_id = self.peer_id()?;
        let total = meta.len();
        let before = Fingerprint::of(&path)
            .map_err(|e| Error::io(format!("cannot share {}", path.display()), e))?;
        let hashed = Arc::new(AtomicU64::new(0));
        let cancel = Arc::new(AtomicBool::new(false));
        let hashing = tokio::spawn(crate::disk::hash_into_manifest(
            path.clone(),
            name,
            mime_type,
            hashed.clone(),
            cancel.clone(),
        ));
        let _stop_hashing = StopOnDrop(cancel.clone());
        tokio::pin!(hashing);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let manifest = loop {
            tokio::select! {
                joined = &mut hashing => {
                    break joined.map_err(|e| Error::io("hashing task failed", std::io::Error::other(e)))??;
                }
                _ = tick.tick() => {
                    let update = pb::ShareProgress {
                        hashed_bytes: hashed.load(Ordering::Relaxed),
                        total_bytes: total,
                        file: None,
                        already_published: false,
                    };
                    if tx.send(Ok(update)).await.is_err() {
                        return Err(Error::Cancelled);
                    }
                }
                () = self.shutdown.cancelled() => return Err(Error::ShuttingDown),
            }
        };
        if compare(&before, Fingerprint::of(&path)).is_some() {
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
        if request.replace {
            self.replace_changed(&path, &manifest.file_id()).await;
        }
        let last = pb::ShareProgress {
            hashed_bytes: manifest.size_bytes,
            total_bytes: manifest.size_bytes,
            file: published.file,
            already_published: !published.created,
        };
        let _ = tx.send(Ok(last)).await;
        Ok(())
    }

    /// Removes, locally and from the network, earlier shares of `path`
    /// whose content changed on disk (all but `current`). Best effort: the
    /// new file is shared either way.
    async fn replace_changed(&self, path: &std::path::Path, current: &FileId) {
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
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn progress_message(p: &Progress) -> pb::DownloadProgress {
    pb::DownloadProgress {
        stage: match p.stage {
            Stage::Locating => pb::DownloadStage::Locating,
            Stage::Downloading => pb::DownloadStage::Downloading,
            Stage::Verifying => pb::DownloadStage::Verifying,
            Stage::Done => pb::DownloadStage::Done,
            Stage::Failed => pb::DownloadStage::Unspecified,
        } as i32,
        file_id: p.file_id.to_string(),
        name: p.name.clone(),
        total_bytes: p.total_bytes,
        have_bytes: p.have_bytes,
        rate_bps: p.rate_bps,
        sources_in_use: p.sources_in_use,
        eta_ms: p.eta.map(|d| d.as_millis() as u64).unwrap_or(0),
        final_path: p
            .final_path
            .as_ref()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        resumed_chunks: p.resumed_chunks,
    }
}

/// The last message of one request's stream: its own destination's
/// outcome, since requests that joined a running download get their own copy.
fn final_item(p: &Progress, destination: &std::path::Path) -> Result<pb::DownloadProgress, Status> {
    if let Some(status) = &p.failure {
        return Err(status.clone());
    }
    if let Some((_, status)) = p.failed_copies.iter().find(|(to, _)| to == destination) {
        return Err(status.clone());
    }
    let mut message = progress_message(p);
    message.final_path = destination.to_string_lossy().into_owned();
    Ok(message)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentControl for Control {
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let request = request.into_inner();
        if request.username.trim().is_empty() {
            return Err(Error::InvalidArgument("username is empty".into()).into());
        }
        let (user, peer_id) = self
            .session
            .login(request.username.trim(), &request.password)
            .await?;
        Ok(Response::new(pb::LoginResponse {
            user: Some(user),
            peer_id,
        }))
    }

    async fn logout(
        &self,
        _: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        self.session.logout().await;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    type ShareStream = BoxStream<pb::ShareProgress>;

    async fn share(
        &self,
        request: Request<pb::ShareRequest>,
    ) -> Result<Response<Self::ShareStream>, Status> {
        if self.session.user().is_none() {
            return Err(Error::NotLoggedIn.into());
        }
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        let request = request.into_inner();
        // Owned by the response stream: when the caller goes away, the send
        // fails, the task stops and the hashing is cancelled.
        tokio::spawn(async move {
            if let Err(err) = this.share(request, tx.clone()).await {
                let _ = tx.send(Err(err.into())).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_files(
        &self,
        request: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        let filter = request.into_inner().name_contains;
        let network = self.list_network(&filter).await?;
        let files = network.into_iter().map(|f| self.network_file(f)).collect();
        Ok(Response::new(pb::ListFilesResponse { files }))
    }

    type DownloadStream = BoxStream<pb::DownloadProgress>;

    async fn download(
        &self,
        request: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let request = request.into_inner();
        if self.session.user().is_none() {
            return Err(Error::NotLoggedIn.into());
        }
        let file_id = self.resolve_file(&request.file).await?;
        let manifest = self.manifest_of(&file_id).await?;
        let destination = resolve_destination(
            &self.downloads_dir,
            &request.destination,
            &manifest.name,
            request.force,
        )?;
        let rx = self.downloads.start(manifest, destination.clone());
        // Each state is sent as soon as it is seen; the stream then waits
        // for the next change, so the client never lags one step behind.
        let stream = futures::stream::unfold((rx, Phase::First), move |(mut rx, phase)| {
            let destination = destination.clone();
            async move {
                match phase {
                    Phase::Finished => return None,
                    Phase::First => {}
                    Phase::Running => {
                        if rx.changed().await.is_err() {
                            // The download task ended; its last state is in the channel.
                            let last = rx.borrow().clone();
                            let item = match last.failure {
                                Some(_) => final_item(&last, &destination),
                                None if last.is_final() => final_item(&last, &destination),
                                None => Err(Status::aborted("the download stopped unexpectedly")),
                            };
                            return Some((item, (rx, Phase::Finished)));
                        }
                    }
                }
                let current = rx.borrow_and_update().clone();
                if current.is_final() {
                    return Some((final_item(&current, &destination), (rx, Phase::Finished)));
                }
                Some((Ok(progress_message(&current)), (rx, Phase::Running)))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let file_id = self.resolve_file(&request.into_inner().file).await?;
        if !self.downloads.cancel(&file_id) {
            return Err(Error::NotFound(format!("no download of {file_id} is running")).into());
        }
        Ok(Response::new(pb::CancelResponse {}))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let request = request.into_inner();
        let file_id = self.resolve_file(&request.file).await?;
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
                match tokio::fs::remove_file(&state.path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::io(
                            format!("cannot delete {}", state.path.display()),
                            e,
                        )
                        .into());
                    }
                }
            }
            self.holdings.remove(&file_id).await?;
        }
        if request.network {
            let delete = index_pb::DeleteFileRequest {
                file_id: file_id.to_string(),
            };
            self.session
                .call_index(|mut c, t| async move { c.delete_file(with_bearer(delete, &t)).await })
                .await?;
        }
        Ok(Response::new(pb::RemoveResponse {}))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
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
        Ok(Response::new(pb::StatusResponse {
            logged_in: user.is_some(),
            user,
            peer_id: self.session.peer_id().unwrap_or_default(),
            advertise_addr: config.advertise_addr.clone(),
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
        }))
    }

    async fn list_peers(
        &self,
        request: Request<index_pb::ListPeersRequest>,
    ) -> Result<Response<index_pb::ListPeersResponse>, Status> {
        let request = request.into_inner();
        let peers = self
            .session
            .call_index(|mut c, t| async move { c.list_peers(with_bearer(request, &t)).await })
            .await?;
        Ok(Response::new(peers))
    }

    async fn create_user(
        &self,
        request: Request<auth_pb::CreateUserRequest>,
    ) -> Result<Response<auth_pb::User>, Status> {
        let request = request.into_inner();
        let user = self
            .session
            .call_accounts(|mut c, t| async move { c.create_user(with_bearer(request, &t)).await })
            .await?;
        Ok(Response::new(user))
    }

    async fn list_users(
        &self,
        request: Request<auth_pb::ListUsersRequest>,
    ) -> Result<Response<auth_pb::ListUsersResponse>, Status> {
        let request = request.into_inner();
        let users = self
            .session
            .call_accounts(|mut c, t| async move { c.list_users(with_bearer(request, &t)).await })
            .await?;
        Ok(Response::new(users))
    }

    async fn delete_user(
        &self,
        request: Request<auth_pb::DeleteUserRequest>,
    ) -> Result<Response<auth_pb::DeleteUserResponse>, Status> {
        let request = request.into_inner();
        let done = self
            .session
            .call_accounts(|mut c, t| async move { c.delete_user(with_bearer(request, &t)).await })
            .await?;
        Ok(Response::new(done))
    }
}

/// Waits (bounded) for a cancelled download's task to let go of its files.
async fn wait_until_stopped(downloads: &Downloads, file: &FileId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while downloads.progress(file).is_some() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where a `Download` progress stream is: about to send the first state,
/// waiting for the next change, or done.
#[derive(Clone, Copy)]
enum Phase {
    First,
    Running,
    Finished,
}
