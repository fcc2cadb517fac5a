//! The peer-agent: one per machine. It holds the user's session, shares
//! files in place, serves their chunks to other agents over
//! `p2p.peer.v1.PeerService/FetchChunks`, downloads from the swarm, and
//! offers the local control API `p2p.agent.v1.AgentControl` to the `p2p`
//! CLI and other tools.
//!
//! Code map (ARCHITECTURE.md draws it as a tree; each module uses only
//! those listed after it):
//! - [`control`]: the AgentControl handlers and [`web`]: the web app
//!   (pages, live feeds, uploads and the browser checks), both glue over
//!   [`api`]: the agent's behaviour as front ends see it (every rule,
//!   check and message).
//! - [`upload`]: the serving side, the PeerService with its limits (the
//!   source end of WatchHoldings included).
//! - [`download`]: the swarm download engine (the downloader end of
//!   WatchHoldings included).
//! - [`session`]: login, token refresh, registration and heartbeat;
//!   [`index_client`]: the index replicas, spread and failed over;
//!   [`unattended`]: the `--user` login that retries until it works.
//! - [`exchange`]: the WatchHoldings contract both ends keep.
//! - [`holdings`]: the held-file state: what we hold, its SQLite store
//!   (the only SQL), the fingerprints and the sweep that withdraws files
//!   the user deleted, moved or edited.
//! - [`picker`]: the pure piece picker; [`space`]: the free-space check
//!   before a download writes anything; [`disk`]: positional chunk I/O,
//!   hashing, the final verify-and-rename; [`stats`]: transfer counters;
//!   [`config`]: the clap `Config`.
//! - [`rate`]: the token bucket and rate meters; [`error`]: the one error
//!   type; [`size`]: byte counts for people.
//!
//! [`run`] owns every task it starts: the gRPC servers, the web app, the metrics
//! endpoint, the session's heartbeat and unattended login, the held-file
//! sweep and the downloads all stop when the shutdown future resolves.

pub mod address;
pub mod api;
pub mod config;
pub mod control;
pub mod disk;
pub mod download;
pub mod enrollment;
pub mod entry;
pub mod error;
pub mod exchange;
pub mod holdings;
pub mod index_client;
pub mod listing;
pub mod picker;
pub mod rate;
pub mod session;
pub mod size;
pub mod space;
pub mod stats;
pub mod unattended;
pub mod upload;
pub mod web;

use std::future::Future;
use std::sync::Arc;

use p2p_proto::agent::v1::agent_control_server::AgentControlServer;
use p2p_proto::peer::v1::peer_service_server::PeerServiceServer;
use p2p_services::auth::{RequireAuth, TokenVerifier};
use p2p_services::client::MAX_MESSAGE_BYTES;
use p2p_services::serve::GrpcServer;
use p2p_services::{local, metrics};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Command, Config};
pub use error::Error;

use crate::api::AgentApi;
use crate::control::Control;
use crate::download::{DownloadContext, Downloads};
use crate::entry::EntryLinks;
use crate::holdings::Holdings;
use crate::holdings::store::Store;
use crate::session::{Session, SessionConfig};
use crate::stats::Stats;
use crate::upload::{ChunkServer, Uploads};

/// Runs the agent until `shutdown` resolves: the PeerService on
/// `peer_listener` (token required), AgentControl on its private Unix
/// socket ([`Config::control_socket`], removed again on the way out) and,
/// when `control_tcp` is given, also there behind the control token
/// (loopback unless allowed), and the web app on `web` when given
/// (loopback unless allowed). Logs in at start when the config names a
/// user, and keeps trying until it succeeds.
pub async fn run(
    config: Config,
    peer_listener: TcpListener,
    control_tcp: Option<TcpListener>,
    web: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let mut shutdown = Box::pin(shutdown);
    let joined = if config.servers_by_flags() {
        None
    } else {
        tokio::select! {
            joined = wait_for_join(&config.data_dir) => Some(joined?),
            () = &mut shutdown => return Ok(()),
        }
    };
    let local = |l: &TcpListener| {
        l.local_addr()
            .map_err(|e| Error::io("listener has no local address", e))
    };
    if let Some(listener) = &control_tcp {
        config.check_control_addr(local(listener)?)?;
    }
    let web_url = match &web {
        Some(listener) => {
            let bound = local(listener)?;
            config.check_web_addr(bound)?;
            Some(config.web_url_for(bound)?)
        }
        None => None,
    };
    if rustix::process::geteuid().is_root() {
        tracing::warn!(
            "running as root: paths named through the control API and the web app are read and \
             written as root, anywhere on this machine; run the agent as the user whose files \
             it shares"
        );
    }
    let advertise = config.advertise_for(local(&peer_listener)?);
    let data_dir = config.data_dir.clone();
    for dir in [
        data_dir.clone(),
        data_dir.join("partial"),
        config.downloads_dir(),
    ] {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }

    config.tls.warn_if_plaintext("peer-agent");
    let servers = Servers::of(&config, joined.as_ref())?;
    let Servers {
        auth_url,
        index_url,
        control_tls,
        peer_server_tls,
        peer_tls,
    } = servers;
    let index_urls = index_client::parse_urls(&index_url);
    if index_urls.is_empty() {
        return Err(Error::Config(
            "--index-url: name at least one index (host:port, several separated by commas)".into(),
        ));
    }
    for (url, flag) in std::iter::once((&auth_url, "--auth-url"))
        .chain(index_urls.iter().map(|u| (u, "--index-url")))
    {
        control_tls
            .url(url)
            .map_err(|e| Error::Config(format!("{flag}: {e}")))?;
    }
    let socket = local::bind_private(&config.control_socket()).await?;
    let control_token = match &control_tcp {
        Some(_) => Some(local::ControlToken::create(&config.control_token_file())?),
        None => None,
    };

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
            auth_url: auth_url.clone(),
            index_url: index_url.clone(),
            control_tls: control_tls.clone(),
            peer_tls,
            advertise: advertise.clone(),
            data_dir: data_dir.clone(),
            max_uploads: config.max_uploads,
            max_upload_rate_bps: config.max_upload_rate,
        },
        holdings.clone(),
        stats.clone(),
        stop.clone(),
    )?);
    // The framings (chunks and holdings) need ALPN, so TLS;
    // --no-chunk-framing emulates an agent from before them.
    let framing =
        session.config().peer_tls.is_tls() && peer_server_tls.is_some() && !config.no_chunk_framing;
    let downloads = Downloads::new(Arc::new(
        DownloadContext::new(
            session.clone(),
            holdings.clone(),
            stats.clone(),
            data_dir.join("partial"),
            stop.clone(),
        )
        .with_framing(framing),
    ));
    let _metrics = metrics::spawn(&config.metrics_listen, stop.clone().cancelled_owned()).await?;

    let verifier = TokenVerifier::remote(&auth_url, control_tls);
    if let Err(err) = verifier.refresh().await {
        tracing::warn!(%err, "starting without signing keys; they are fetched when the first token arrives");
    }
    match (&config.user, &config.password, &joined) {
        (Some(user), Some(password), _) => {
            session.login_unattended(user.clone(), password.clone());
        }
        (_, _, Some(joined))
            if joined.deployment.login == enrollment::StartLogin::Certificate
                && !enrollment::logged_out(&data_dir) =>
        {
            session.login_unattended_with_certificate(joined.deployment.username.clone());
        }
        _ => {}
    }

    let (framed_tx, framed_rx) = tokio::sync::mpsc::channel(upload::framed::QUEUE);
    let framed_server = upload::framed::serve(
        upload::framed::FramedServer {
            uploads: uploads.clone(),
            verifier: verifier.clone(),
            identity: session.identity(),
        },
        framed_rx,
        stop.clone(),
    );
    let peer_service = PeerServiceServer::new(ChunkServer::new(uploads))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let api = AgentApi::new(
        session.clone(),
        holdings.clone(),
        downloads.clone(),
        stats,
        config.downloads_dir(),
        EntryLinks::new(web_url, config.web_link_lifetime),
        stop.clone(),
    );
    let control = AgentControlServer::new(Control::new(api.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tracing::info!(advertise = ?advertise, data_dir = %data_dir.display(), "agent starting");

    let follower = address::follow(
        session.clone(),
        joined,
        peer_server_tls.clone(),
        stop.clone(),
    );
    let peer_server = GrpcServer::new().tls(peer_server_tls);
    let peer_server = if framing {
        peer_server
            .beside(
                p2p_services::framing::ALPN,
                framed_tx.clone(),
                config.upload_dscp,
            )
            // Holdings are news a downloader waits for, not bulk: unmarked.
            .beside(p2p_services::framing::HOLDINGS_ALPN, framed_tx, None)
    } else {
        drop(framed_tx);
        peer_server
    };
    let peer_server = peer_server
        .add_service(RequireAuth::peer(
            peer_service,
            verifier,
            session.identity(),
        ))
        .serve(peer_listener, stop.clone().cancelled_owned());
    let local::PrivateSocket {
        listener: socket_listener,
        file: socket_file,
    } = socket;
    tracing::info!(socket = %socket_file.path().display(), "control API on its Unix socket");
    let socket_server = GrpcServer::new()
        .add_service(control.clone())
        .serve_unix(socket_listener, stop.clone().cancelled_owned());
    let tcp_server = async {
        match (control_tcp, control_token) {
            (Some(listener), Some(token)) => {
                let token_file = config.control_token_file();
                tracing::info!(token_file = %token_file.display(), "control API also on TCP, token required");
                GrpcServer::new()
                    .add_service(local::RequireToken::new(
                        control,
                        token,
                        token_file.display().to_string(),
                    ))
                    .serve(listener, stop.clone().cancelled_owned())
                    .await
            }
            _ => Ok(()),
        }
    };
    let web_server = async {
        match web {
            Some(listener) => {
                web::serve(api, listener, config.web_allow_host.clone(), stop.clone()).await
            }
            None => Ok(()),
        }
    };
    let servers = async {
        let grpc =
            async { tokio::try_join!(peer_server, socket_server, tcp_server).map_err(Error::from) };
        let result = tokio::try_join!(grpc, web_server);
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
    let sweep = holdings::integrity::sweep(holdings.clone(), session.clone(), stop.clone());
    let (result, (), (), (), ()) = tokio::join!(servers, watcher, sweep, follower, framed_server);
    session.stop_unattended();
    session.stop_heartbeat();
    drop(socket_file);
    result?;
    Ok(())
}

/// Where the servers are and how every link is secured: from the flags, or
/// from what `p2p join` left in the data dir.
struct Servers {
    auth_url: String,
    index_url: String,
    control_tls: p2p_services::tls::ClientTls,
    peer_server_tls: Option<p2p_services::tls::ServerTls>,
    peer_tls: p2p_services::tls::ClientTls,
}

impl Servers {
    fn of(config: &Config, joined: Option<&enrollment::Joined>) -> Result<Self, Error> {
        let Some(joined) = joined else {
            let (peer_server_tls, peer_tls) = config.peer_tls()?;
            return Ok(Self {
                auth_url: config
                    .auth_url
                    .clone()
                    .unwrap_or_else(|| "127.0.0.1:50051".into()),
                index_url: config
                    .index_url
                    .clone()
                    .unwrap_or_else(|| "127.0.0.1:50052".into()),
                control_tls: config.tls.client()?,
                peer_server_tls,
                peer_tls,
            });
        };
        let (peer_server_tls, peer_tls) = if config.peer_insecure_plaintext {
            tracing::warn!(
                "--peer-insecure-plaintext: chunks and peer tokens cross the network in clear"
            );
            (None, p2p_services::tls::ClientTls::Plaintext)
        } else {
            (
                Some(p2p_services::tls::ServerTls::from_pem(
                    &joined.cert_pem,
                    &joined.key_pem,
                )?),
                p2p_services::tls::ClientTls::from_ca_pem(&joined.ca_pem),
            )
        };
        tracing::info!(
            auth = %joined.deployment.auth_url,
            index = %joined.deployment.index_url,
            fingerprint = %joined.deployment.ca_fingerprint,
            "joined deployment"
        );
        Ok(Self {
            auth_url: joined.deployment.auth_url.clone(),
            index_url: joined.deployment.index_url.clone(),
            control_tls: joined.client_tls(),
            peer_server_tls,
            peer_tls,
        })
    }
}

/// The file an agent waiting for `p2p join` keeps in its data dir, so
/// `p2p join` knows to wait for it to start and log it in.
pub const WAITING_FOR_JOIN_FILE: &str = "waiting-for-join";

/// What `p2p join` left in `data_dir`, waited for when it is not there
/// yet: an agent installed and started before its machine joined (a
/// systemd unit) then goes on by itself once `p2p join` ran.
async fn wait_for_join(data_dir: &std::path::Path) -> Result<enrollment::Joined, Error> {
    let mut told = false;
    let marker = data_dir.join(WAITING_FOR_JOIN_FILE);
    loop {
        if let Some(joined) = enrollment::Joined::load(data_dir)? {
            let _ = std::fs::remove_file(&marker);
            return Ok(joined);
        }
        if !told {
            std::fs::create_dir_all(data_dir)
                .and_then(|()| std::fs::write(&marker, std::process::id().to_string()))
                .map_err(|e| Error::io(format!("cannot write {}", marker.display()), e))?;
            tracing::warn!(
                data_dir = %data_dir.display(),
                "not joined to a deployment yet: run `p2p join SERVER --fingerprint sha256:...` \
                 (or `p2p join` to find servers on this LAN); this agent starts once it has"
            );
            told = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
