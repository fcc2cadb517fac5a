//! The peer-agent: one per machine. It holds the user's session, shares
//! files in place, serves their chunks to other agents over
//! `p2p.peer.v1.PeerService/FetchChunks`, downloads from the swarm, and
//! offers the local control API `p2p.agent.v1.AgentControl` to the `p2p`
//! CLI and other tools.
//!
//! Code map:
//! - [`config`]: the clap `Config`.
//! - [`store`]: the agent's SQLite database (the only SQL);
//!   [`holdings`]: the in-memory view of what we hold, written through;
//!   [`integrity`]: held files checked against the disk, and withdrawn
//!   when the user deleted, moved or edited them.
//! - [`disk`]: positional chunk I/O, hashing, the final verify-and-rename;
//!   [`space`]: the free-space check before a download writes anything.
//! - [`upload`]: the FetchChunks server with its limits; [`rate`]: the token
//!   bucket and rate meters; [`stats`]: transfer counters.
//! - [`session`]: login, token refresh, registration and heartbeat.
//! - [`picker`]: the pure piece picker; [`download`]: the swarm download
//!   engine.
//! - [`control`]: the AgentControl handlers (glue only).
//!
//! [`run`] owns every task it starts: the two gRPC servers, the metrics
//! endpoint, the session's heartbeat, the held-file sweep and the downloads
//! all stop when the shutdown future resolves.

pub mod config;
pub mod control;
pub mod disk;
pub mod download;
pub mod error;
pub mod holdings;
pub mod integrity;
pub mod picker;
pub mod rate;
pub mod session;
pub mod space;
pub mod stats;
pub mod store;
pub mod upload;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::agent::v1::agent_control_server::AgentControlServer;
use p2p_proto::peer::v1::peer_service_server::PeerServiceServer;
use p2p_services::auth::{RequireAuth, TokenVerifier};
use p2p_services::client::MAX_MESSAGE_BYTES;
use p2p_services::metrics;
use p2p_services::serve::GrpcServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Command, Config};
pub use error::Error;

use crate::control::Control;
use crate::download::{DownloadContext, Downloads};
use crate::holdings::Holdings;
use crate::session::{Session, SessionConfig};
use crate::stats::Stats;
use crate::store::Store;
use crate::upload::{ChunkServer, Uploads};

/// Runs the agent: the PeerService on `peer_listener` (token required),
/// AgentControl on `control_listener` (loopback unless allowed), until
/// `shutdown` resolves. Logs in at start when the config names a user.
pub async fn run(
    config: Config,
    peer_listener: TcpListener,
    control_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let local = |l: &TcpListener| {
        l.local_addr()
            .map_err(|e| Error::io("listener has no local address", e))
    };
    config.check_control_addr(local(&control_listener)?)?;
    let advertise_addr = config.advertise_for(local(&peer_listener)?);
    let data_dir = config.data_dir.clone();
    for dir in [
        data_dir.clone(),
        data_dir.join("partial"),
        config.downloads_dir(),
    ] {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }

    let stop = CancellationToken::new();
    let holdings = Arc::new(Holdings::load(Store::open(&data_dir).await?).await?);
    let stats = Arc::new(Stats::default());
    let uploads = Arc::new(Uploads::new(
        holdings.clone(),
        config.max_upload_rate,
        config.max_uploads,
        config.upload_stall_timeout,
        stats.clone(),
        config.corrupt_uploads,
        stop.clone(),
    ));
    if config.corrupt_uploads {
        tracing::warn!("fault injection: every chunk served is corrupted (--corrupt-uploads)");
    }
    let session = Arc::new(Session::new(
        SessionConfig {
            auth_url: config.auth_url.clone(),
            index_url: config.index_url.clone(),
            advertise_addr: advertise_addr.clone(),
            data_dir: data_dir.clone(),
        },
        uploads.clone(),
        stats.clone(),
        stop.clone(),
    )?);
    let downloads = Downloads::new(Arc::new(DownloadContext::new(
        session.clone(),
        holdings.clone(),
        stats.clone(),
        data_dir.join("partial"),
        stop.clone(),
    )));
    let _metrics = metrics::spawn(&config.metrics_listen, stop.clone().cancelled_owned()).await?;

    let verifier = TokenVerifier::remote(&config.auth_url);
    if let Err(err) = verifier.refresh().await {
        tracing::warn!(%err, "starting without signing keys; they are fetched when the first token arrives");
    }
    let auto_login = match (&config.user, &config.password) {
        (Some(user), Some(password)) => Some(tokio::spawn(login_until_done(
            session.clone(),
            user.clone(),
            password.clone(),
            stop.clone(),
        ))),
        _ => None,
    };

    let peer_service = PeerServiceServer::new(ChunkServer::new(uploads))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let control_service = AgentControlServer::new(Control::new(
        session.clone(),
        holdings.clone(),
        downloads.clone(),
        stats,
        config.downloads_dir(),
        stop.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tracing::info!(advertise = %advertise_addr, data_dir = %data_dir.display(), "agent starting");

    let peer_server = GrpcServer::new()
        .add_service(RequireAuth::new(peer_service, verifier))
        .serve(peer_listener, stop.clone().cancelled_owned());
    let control_server = GrpcServer::new()
        .add_service(control_service)
        .serve(control_listener, stop.clone().cancelled_owned());
    let servers = async {
        let result = tokio::try_join!(peer_server, control_server);
        stop.cancel();
        result
    };
    let watcher = async {
        tokio::select! {
            () = shutdown => stop.cancel(),
            () = stop.cancelled() => {}
        }
        downloads.shutdown().await;
    };
    let sweep = integrity::sweep(holdings.clone(), session.clone(), stop.clone());
    let (result, (), ()) = tokio::join!(servers, watcher, sweep);
    if let Some(task) = auto_login {
        task.abort();
    }
    session.stop_heartbeat();
    result?;
    Ok(())
}

/// Logs in with the configured credentials, retrying while auth-svc is
/// unreachable; gives up on a refused password.
async fn login_until_done(
    session: Arc<Session>,
    user: String,
    password: String,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(500);
    loop {
        match session.login(&user, &password).await {
            Ok(_) => return,
            Err(Error::AuthUnavailable(reason)) => {
                tracing::warn!(%reason, retry_in = ?delay, "cannot log in yet");
            }
            Err(err) => {
                tracing::error!(%err, user = %user, "unattended login refused; log in with `p2p login`");
                return;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
