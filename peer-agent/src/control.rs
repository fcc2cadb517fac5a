//! The local control API, `p2p.agent.v1.AgentControl`: glue between the
//! generated messages and [`AgentApi`], where the behaviour lives.
//!
//! Whoever can call it acts as the agent's logged-in user, so it trusts
//! only callers who could open its Unix socket (mode 0600: the agent's own
//! user) or, on the optional TCP listener, who present the token from the
//! 0600 token file; `p2p_services::local` enforces both before a handler
//! runs, so handlers here check no caller identity.

use std::pin::Pin;

use futures::Stream;
use p2p_proto::agent::v1 as pb;
use p2p_proto::agent::v1::agent_control_server::AgentControl;
use p2p_proto::auth::v1 as auth_pb;
use p2p_proto::index::v1 as index_pb;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::api::{AgentApi, ShareOptions};
use crate::download::{Progress, Stage};
use crate::listing;

/// The AgentControl implementation.
#[derive(Debug, Clone)]
pub struct Control {
    api: AgentApi,
}

impl Control {
    /// The control API over the agent's behaviour.
    pub fn new(api: AgentApi) -> Self {
        Self { api }
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
        let (user, peer_id) = self.api.login(&request.username, &request.password).await?;
        Ok(Response::new(pb::LoginResponse {
            user: Some(user),
            peer_id,
        }))
    }

    async fn logout(
        &self,
        _: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        self.api.logout().await;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    type ShareStream = BoxStream<pb::ShareProgress>;

    async fn share(
        &self,
        request: Request<pb::ShareRequest>,
    ) -> Result<Response<Self::ShareStream>, Status> {
        self.api.require_login()?;
        let (tx, rx) = mpsc::channel(4);
        let api = self.api.clone();
        let request = request.into_inner();
        let options = ShareOptions {
            path: request.path,
            name: request.name,
            mime_type: request.mime_type,
            replace: request.replace,
        };
        // Owned by the response stream: when the caller goes away, the
        // progress callback sees the closed channel, the share stops and
        // the hashing is cancelled.
        tokio::spawn(async move {
            let progress = tx.clone();
            let result = api
                .share(options, move |hashed_bytes, total_bytes| {
                    let update = pb::ShareProgress {
                        hashed_bytes,
                        total_bytes,
                        file: None,
                        already_published: false,
                        skipped: Vec::new(),
                    };
                    // A full channel only drops one progress tick.
                    !matches!(
                        progress.try_send(Ok(update)),
                        Err(mpsc::error::TrySendError::Closed(_))
                    )
                })
                .await;
            let last = result.map(|shared| pb::ShareProgress {
                hashed_bytes: shared.size_bytes,
                total_bytes: shared.size_bytes,
                file: shared.file,
                already_published: shared.already_published,
                skipped: shared.skipped,
            });
            let _ = tx.send(last.map_err(Status::from)).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_files(
        &self,
        request: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        Ok(Response::new(
            self.api.list_files(&request.into_inner()).await?,
        ))
    }

    async fn list_folder(
        &self,
        request: Request<pb::ListFolderRequest>,
    ) -> Result<Response<pb::ListFolderResponse>, Status> {
        let request = request.into_inner();
        let listing = self
            .api
            .list_folder(&request.path, request.offset, request.limit)
            .await?;
        Ok(Response::new(listing))
    }

    type WatchFilesStream = BoxStream<pb::ListFilesResponse>;

    /// The older whole-listing stream, kept for older clients: the
    /// followed page with every change applied, sent whole.
    async fn watch_files(
        &self,
        request: Request<pb::ListFilesRequest>,
    ) -> Result<Response<Self::WatchFilesStream>, Status> {
        self.api.require_login()?;
        let request = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let api = self.api.clone();
        // Owned by the response stream: it ends when the caller goes away
        // (the send fails) or the agent shuts down.
        tokio::spawn(async move {
            let mut rows = Vec::new();
            let mut shown: Option<Vec<pb::NetworkFile>> = None;
            let gone = tx.clone();
            api.follow_files(&request, async move { gone.closed().await }, |change| {
                let item = match change {
                    Ok(change) => {
                        listing::apply_change(&mut rows, &change);
                        (shown.as_ref() != Some(&rows)).then(|| {
                            shown = Some(rows.clone());
                            Ok(pb::ListFilesResponse {
                                files: rows.clone(),
                                ..Default::default()
                            })
                        })
                    }
                    Err(err) => Some(Err(Status::from(err))),
                };
                let tx = tx.clone();
                async move {
                    match item {
                        Some(item) => tx.send(item).await.is_ok(),
                        None => !tx.is_closed(),
                    }
                }
            })
            .await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type FollowFilesStream = BoxStream<pb::FileChange>;

    async fn follow_files(
        &self,
        request: Request<pb::ListFilesRequest>,
    ) -> Result<Response<Self::FollowFilesStream>, Status> {
        self.api.require_login()?;
        let request = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let api = self.api.clone();
        // Owned by the response stream, as for WatchFiles.
        tokio::spawn(async move {
            let gone = tx.clone();
            api.follow_files(&request, async move { gone.closed().await }, |change| {
                let tx = tx.clone();
                async move { tx.send(change.map_err(Status::from)).await.is_ok() }
            })
            .await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type DownloadStream = BoxStream<pb::DownloadProgress>;

    async fn download(
        &self,
        request: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let request = request.into_inner();
        let (rx, destination) = self
            .api
            .download(&request.file, &request.destination, request.force)
            .await?;
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
        self.api.cancel(&request.into_inner().file).await?;
        Ok(Response::new(pb::CancelResponse {}))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let request = request.into_inner();
        self.api.remove(&request.file, request.network).await?;
        Ok(Response::new(pb::RemoveResponse {}))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.api.status()))
    }

    async fn open_web(
        &self,
        _: Request<pb::OpenWebRequest>,
    ) -> Result<Response<pb::OpenWebResponse>, Status> {
        let link = self.api.open_web()?;
        Ok(Response::new(pb::OpenWebResponse {
            url: link.url,
            expires_in_seconds: u32::try_from(link.lifetime.as_secs()).unwrap_or(u32::MAX),
        }))
    }

    async fn list_peers(
        &self,
        request: Request<index_pb::ListPeersRequest>,
    ) -> Result<Response<index_pb::ListPeersResponse>, Status> {
        let peers = self.api.list_peers(request.into_inner()).await?;
        Ok(Response::new(peers))
    }

    async fn create_user(
        &self,
        request: Request<auth_pb::CreateUserRequest>,
    ) -> Result<Response<auth_pb::User>, Status> {
        let user = self.api.create_user(request.into_inner()).await?;
        Ok(Response::new(user))
    }

    async fn list_users(
        &self,
        _: Request<auth_pb::ListUsersRequest>,
    ) -> Result<Response<auth_pb::ListUsersResponse>, Status> {
        let users = self.api.list_users().await?;
        Ok(Response::new(auth_pb::ListUsersResponse { users }))
    }

    async fn delete_user(
        &self,
        request: Request<auth_pb::DeleteUserRequest>,
    ) -> Result<Response<auth_pb::DeleteUserResponse>, Status> {
        self.api.delete_user(request.into_inner()).await?;
        Ok(Response::new(auth_pb::DeleteUserResponse {}))
    }

    async fn create_invite(
        &self,
        request: Request<pb::CreateInviteRequest>,
    ) -> Result<Response<pb::Invite>, Status> {
        let invite = self.api.create_invite(request.into_inner()).await?;
        Ok(Response::new(invite))
    }

    async fn list_join_tokens(
        &self,
        _: Request<auth_pb::ListJoinTokensRequest>,
    ) -> Result<Response<auth_pb::ListJoinTokensResponse>, Status> {
        let tokens = self.api.list_join_tokens().await?;
        Ok(Response::new(auth_pb::ListJoinTokensResponse { tokens }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<auth_pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<auth_pb::RevokeJoinTokenResponse>, Status> {
        self.api.revoke_join_token(&request.into_inner().id).await?;
        Ok(Response::new(auth_pb::RevokeJoinTokenResponse {}))
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
