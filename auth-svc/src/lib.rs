//! auth-svc: accounts, logins and tokens for the P2P File Transfer network.
//!
//! The only service that knows passwords (Argon2id, [`password`]). It signs
//! short-lived access tokens with an Ed25519 key kept in its database
//! ([`tokens`]), hands out rotating refresh tokens stored only as hashes,
//! and publishes its public keys so every other service verifies tokens
//! locally. [`authority`] holds the rules, [`api`] the gRPC glue, [`store`]
//! all SQL, [`throttle`] the login limits, [`keyring`] which keys sign and
//! verify, [`join_token`] the join tokens unattended machines enroll with.
//!
//! [`run`] serves until the shutdown future resolves; tests call it with a
//! listener on `127.0.0.1:0`:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use clap::Parser;
//! let config = auth_svc::Config::try_parse_from([
//!     "auth-svc", "--database-url", "sqlite://auth.db", "--admin-password", "change-me-now",
//!     "--metrics-listen", "",
//! ])?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! auth_svc::run(config, listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod account;
pub mod api;
pub mod authority;
pub mod config;
pub mod enrollment;
pub mod error;
pub mod join_token;
pub mod keyring;
pub mod password;
pub mod store;
pub mod throttle;
pub mod tokens;

use std::future::Future;
use std::sync::Arc;

use p2p_proto::auth::v1::account_service_server::AccountServiceServer;
use p2p_proto::auth::v1::auth_service_server::AuthServiceServer;
use p2p_proto::auth::v1::enrollment_service_server::EnrollmentServiceServer;
use p2p_services::auth::RequireAuth;
use p2p_services::metrics;
use p2p_services::serve::GrpcServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use crate::config::{Command, Config};
pub use crate::error::Error;

/// Opens the database (bootstrapping keys and the first admin), then serves
/// `AuthService` and `AccountService` (plus health and reflection) on
/// `listener` and metrics on `--metrics-listen`, and reloads the signing
/// keys every [`keyring::KEY_RELOAD_INTERVAL`], until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.tls.warn_if_plaintext("auth-svc");
    let tls = config.setup.resolve(&config.tls)?;
    let ca = match (&tls.pki, &config.ca_key, &config.tls.tls_ca) {
        (Some(pki), _, _) => {
            p2p_services::tls::setup::log_setup(pki, "auth-svc");
            Some(enrollment::Ca::from_files(
                &pki.certs.ca_key(),
                &pki.certs.ca_cert(),
            )?)
        }
        (None, Some(key), Some(cert)) => Some(enrollment::Ca::from_files(key, cert)?),
        (None, Some(_), None) => {
            return Err(Error::Config {
                flag: "--ca-key",
                message: "needs --tls-ca, the certificate of that CA".into(),
            });
        }
        (None, None, _) => None,
    };
    // Agents renew with their current certificate as client certificate.
    let server_tls = match (tls.server, &ca) {
        (Some(server), Some(ca)) => Some(server.verify_clients_with(ca.cert_pem())?),
        (server, _) => server,
    };
    let authority = Arc::new(authority::Authority::start(&config).await?);
    let verifier = authority.verifier();
    let _announcer = match (&ca, config.no_announce) {
        (Some(ca), false) => announce(&listener, ca.fingerprint(), &config.agent_index_url),
        _ => None,
    };
    let enrollment = Arc::new(enrollment::Enrollment::new(
        Arc::clone(&authority),
        ca,
        config.agent_cert_lifetime,
        config.agent_index_url.clone(),
    ));

    // The metrics endpoint and the key reloader stop when the gRPC server's
    // shutdown fires (the sender is dropped). The metrics task is aborted at
    // the latest when its handle drops at the end of this function; the
    // reloader belongs to `background`, shut down before the pool closes.
    let (stop_background, background_stopped) = tokio::sync::watch::channel(());
    let mut metrics_stopped = background_stopped.clone();
    let _metrics = metrics::spawn(&config.metrics_listen, async move {
        let _ = metrics_stopped.changed().await;
    })
    .await?;
    let mut background = JoinSet::new();
    background.spawn(reload_keys_until_stopped(
        Arc::clone(&authority),
        background_stopped,
    ));

    let auth = RequireAuth::new(
        AuthServiceServer::new(api::AuthApi::new(Arc::clone(&authority))),
        verifier.clone(),
    )
    .with_public(api::PUBLIC_METHODS);
    let accounts = RequireAuth::new(
        AccountServiceServer::new(api::AccountApi::new(Arc::clone(&authority))),
        verifier,
    );
    let enroll = RequireAuth::new(
        EnrollmentServiceServer::new(enrollment::EnrollmentApi::new(enrollment)),
        authority.verifier(),
    )
    .with_public(enrollment::PUBLIC_METHODS);
    let served = GrpcServer::new()
        .tls(server_tls)
        .add_service(auth)
        .add_service(accounts)
        .add_service(enroll)
        .serve(listener, async move {
            shutdown.await;
            drop(stop_background);
        })
        .await;
    background.shutdown().await;
    authority.close().await;
    Ok(served?)
}

/// Reloads the signing keys every [`keyring::KEY_RELOAD_INTERVAL`], so this
/// replica signs with, and accepts tokens of, a key another replica made,
/// until `stopped` fires.
async fn reload_keys_until_stopped(
    authority: Arc<authority::Authority>,
    mut stopped: watch::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(keyring::KEY_RELOAD_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = ticks.tick() => {
                if let Err(err) = authority.reload_keys(std::time::Duration::ZERO).await {
                    tracing::warn!(%err, "cannot reload signing keys; using the ones loaded");
                }
            }
        }
    }
}

/// Announces this auth-svc on the LAN (mDNS) until dropped; a failure is
/// logged, never fatal: joining by address still works.
fn announce(
    listener: &TcpListener,
    fingerprint: &str,
    index_url: &str,
) -> Option<p2p_services::discovery::Announcer> {
    let port = listener.local_addr().ok()?.port();
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let txt = [
        ("v", "1".to_string()),
        ("fp", fingerprint.to_string()),
        ("index", index_url.to_string()),
    ];
    match p2p_services::discovery::announce(&format!("auth-svc on {host}"), port, &txt) {
        Ok(announcer) => {
            tracing::info!(port, "announced on the LAN by mDNS");
            Some(announcer)
        }
        Err(err) => {
            tracing::warn!(%err, "cannot announce on the LAN; machines can still join by address");
            None
        }
    }
}
