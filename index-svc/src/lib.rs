//! index-svc: the network's file index. It knows which files exist, which
//! peers hold which chunks of them, how busy each peer is, and which peers a
//! downloader should use. It never carries file data.
//!
//! Modules: [`store`] (all SQL), [`batch`] (write-behind of heartbeats and
//! bitfields), [`cache`] (what a replica remembers), [`lease`] (online
//! state from time),
//! [`selection`] (source scoring), [`events`] (the WatchFiles change log
//! cursor), [`listing`] (paging and name filter), [`peer`] (peer ids and
//! load), [`service`] (the gRPC handlers), [`error`].
//!
//! [`run`] owns four background pieces besides the server: the flusher
//! (writes the queued renewals and holdings, see [`batch`]), the registrar
//! (writes registrations in groups, one commit each, see [`batch`]), the
//! housekeeping task (metric gauges, pruning of old events and reports) and
//! the metrics endpoint. All stop when the shutdown future resolves, and
//! `run` waits for the flusher and the registrar (which write what is
//! left) and the housekeeping task before returning.

pub mod advertise;
pub mod batch;
pub mod cache;
pub mod error;
pub mod events;
pub mod lease;
pub mod listing;
pub mod peer;
pub mod selection;
pub mod service;
pub mod store;

use std::future::Future;
use std::time::Duration;

use p2p_services::config::parse_duration;

use clap::{Parser, Subcommand};
use p2p_proto::index::v1::index_service_server::IndexServiceServer;
use p2p_services::admission::Admission;
use p2p_services::auth::{RequireAuth, TokenVerifier};
use p2p_services::client::MAX_MESSAGE_BYTES;
use p2p_services::metrics;
use p2p_services::serve::GrpcServer;
use p2p_services::telemetry::TelemetryArgs;
use p2p_services::time::now_ms;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::Error;
use lease::Lease;
use service::IndexApi;
use store::Store;

/// How often gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// How often old events and reports are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Events older than this are pruned; a watcher further behind has long
/// gone.
const EVENT_RETENTION: Duration = Duration::from_secs(3600);
/// Reports older than this are pruned (they stopped counting long before).
const REPORT_RETENTION: Duration = Duration::from_secs(1800);

/// index-svc's configuration: flags with environment fallbacks.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "index-svc",
    version,
    about = "The P2P network's file index and source selection"
)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "INDEX_LISTEN", default_value = "0.0.0.0:50052")]
    pub listen: String,
    /// sqlite://PATH or postgres://USER:PASS@HOST/DB. Default:
    /// sqlite://STATE/index.db with --state-dir, else sqlite://index.db.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where auth-svc publishes its token signing keys (`host:port`).
    #[arg(long, env = "P2P_AUTH_URL", default_value = "127.0.0.1:50051")]
    pub auth_url: String,
    /// Networks (comma-separated CIDRs) whose addresses agents may
    /// advertise although they call from another address (NAT, container
    /// gateways). By default an agent may advertise only its own source
    /// address.
    #[arg(long, env = "INDEX_ALLOW_ADVERTISE_NETWORKS", default_value = "", value_parser = advertise::parse_networks)]
    pub allow_advertise_networks: advertise::AdvertisePolicy,
    /// How long a peer stays online after its last heartbeat (e.g. 15s, 1500ms).
    #[arg(long, env = "INDEX_LEASE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// How often agents are told to heartbeat; must be under --lease-ttl.
    #[arg(long, env = "INDEX_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// How often queued heartbeats and bitfield updates are written, in one
    /// transaction (e.g. 500ms). Replicas agree on who is online and who
    /// holds what within about this long. Capped at half the slack between
    /// --heartbeat-interval and --lease-ttl.
    #[arg(long, env = "INDEX_FLUSH_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub flush_interval: Duration,
    /// Most calls served at once; more wait up to --max-queue-wait for a
    /// slot and are then refused with RESOURCE_EXHAUSTED and a retry-after
    /// hint.
    #[arg(long, env = "INDEX_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,
    /// Longest a call waits for a slot before it is shed (e.g. 250ms).
    #[arg(long, env = "INDEX_MAX_QUEUE_WAIT", default_value = "250ms", value_parser = parse_duration)]
    pub max_queue_wait: Duration,
    /// Address for Prometheus `GET /metrics`; empty disables it.
    #[arg(long, env = "METRICS_LISTEN", default_value = "0.0.0.0:9102")]
    pub metrics_listen: String,
    /// TLS: index-svc serves with --tls-cert/--tls-key and verifies
    /// auth-svc against --tls-ca.
    #[command(flatten)]
    pub tls: p2p_services::tls::TlsArgs,
    /// The state dir: first start makes the deployment's CA and the
    /// servers' certificate there, unless auth-svc sharing it did already.
    #[command(flatten)]
    pub setup: p2p_services::tls::setup::ServerSetupArgs,
    /// Logging.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Run a one-off command instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-off commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Ask a running index-svc whether it serves (exit 0) or not (exit 1).
    ///
    /// It verifies the server's certificate with --tls-ca (P2P_TLS_CA), or
    /// calls in clear with --insecure-plaintext; both go before or after
    /// `healthcheck`.
    Healthcheck {
        /// Server to ask; defaults to --listen with 0.0.0.0 replaced by 127.0.0.1.
        #[arg(long)]
        addr: Option<String>,
    },
    /// Shell completions and the man page.
    #[command(flatten)]
    Manual(p2p_services::manual::Manual),
}

impl Config {
    /// The lease policy, checked: the TTL must allow at least one heartbeat.
    pub fn lease(&self) -> Result<Lease, Error> {
        if self.lease_ttl < Duration::from_millis(100) {
            return Err(Error::Config {
                flag: "lease-ttl",
                reason: format!("{:?} is too short; use at least 100ms", self.lease_ttl),
            });
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.lease_ttl {
            return Err(Error::Config {
                flag: "heartbeat-interval",
                reason: format!(
                    "{:?} must be above zero and below --lease-ttl ({:?})",
                    self.heartbeat_interval, self.lease_ttl
                ),
            });
        }
        Ok(Lease {
            ttl: self.lease_ttl,
            heartbeat_interval: self.heartbeat_interval,
        })
    }

    /// The flush interval in effect: the flag, capped so a queued renewal
    /// is written well before the lease it renews lapses.
    pub fn flush_interval(&self) -> Result<Duration, Error> {
        if self.flush_interval.is_zero() {
            return Err(Error::Config {
                flag: "flush-interval",
                reason: "must be above zero (e.g. 500ms)".into(),
            });
        }
        let slack = self.lease_ttl.saturating_sub(self.heartbeat_interval) / 2;
        Ok(self
            .flush_interval
            .min(slack)
            .max(Duration::from_millis(10)))
    }

    /// How many calls run at once and how long one waits for a slot.
    pub fn admission(&self) -> Result<p2p_services::admission::Limits, Error> {
        if self.max_in_flight == 0 {
            return Err(Error::Config {
                flag: "max-in-flight",
                reason: "must be at least 1".into(),
            });
        }
        Ok(p2p_services::admission::Limits {
            max_in_flight: self.max_in_flight,
            max_wait: self.max_queue_wait,
            retry_after: Duration::from_secs(1),
        })
    }

    /// The address `healthcheck` probes.
    pub fn probe_addr(&self) -> String {
        match &self.command {
            Some(Command::Healthcheck { addr: Some(addr) }) => addr.clone(),
            _ => self.listen.replace("0.0.0.0", "127.0.0.1"),
        }
    }
}

/// Refreshes the gauges and prunes old rows until `stop` is cancelled.
async fn housekeeping(store: Store, lease: Lease, stop: CancellationToken) {
    let peers_online = metrics::gauge(
        "p2p_index_peers_online",
        "Peers whose lease has not lapsed.",
        &[],
    );
    let files = metrics::gauge("p2p_index_files", "Files in the index.", &[]);
    let mut gauges = tokio::time::interval(GAUGE_INTERVAL);
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = gauges.tick() => {
                let now = now_ms();
                match store.count_peers_seen_after(lease.online_after(now)).await {
                    Ok(n) => peers_online.set(n),
                    Err(err) => tracing::warn!(%err, "cannot count online peers"),
                }
                match store.count_files().await {
                    Ok(n) => files.set(n),
                    Err(err) => tracing::warn!(%err, "cannot count files"),
                }
            }
            _ = prune.tick() => {
                let now = now_ms();
                let result = store
                    .prune(
                        now - EVENT_RETENTION.as_millis() as i64,
                        now - REPORT_RETENTION.as_millis() as i64,
                    )
                    .await;
                match result {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "pruned old events and reports"),
                    Err(err) => tracing::warn!(%err, "cannot prune old events and reports"),
                }
            }
        }
    }
}

impl Config {
    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.setup.database_url(
            self.database_url.as_deref(),
            "index.db",
            "sqlite://index.db",
        )
    }
}

/// Serves IndexService on `listener` until `shutdown` resolves: opens and
/// migrates the database, warms the signing-key cache (starting anyway when
/// auth-svc is down: keys are fetched on demand later), and serves every
/// RPC behind token verification.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let lease = config.lease()?;
    let flush_interval = config.flush_interval()?;
    let admission = config.admission()?;
    config.tls.warn_if_plaintext("index-svc");
    let tls = config.setup.resolve(&config.tls)?;
    if let Some(pki) = &tls.pki {
        p2p_services::tls::setup::log_setup(pki, "index-svc");
    }
    let server_tls = tls.server;
    let client_tls = match tls.client {
        Some(client) => client,
        None => config.tls.client()?,
    };
    client_tls.url(&config.auth_url)?;
    let store = Store::open(&config.database_url()).await?;
    let verifier = TokenVerifier::remote(&config.auth_url, client_tls);
    match verifier.refresh().await {
        Ok(count) => tracing::info!(count, auth_url = %config.auth_url, "signing keys cached"),
        Err(err) => {
            tracing::warn!(%err, "starting without signing keys; they are fetched when the first token arrives")
        }
    }
    let stop = CancellationToken::new();
    let _metrics = metrics::spawn(&config.metrics_listen, stop.clone().cancelled_owned()).await?;
    let housekeeper = tokio::spawn(housekeeping(store.clone(), lease, stop.clone()));
    let queue = batch::WriteBehind::new(flush_interval);
    let flusher = tokio::spawn(batch::flusher(queue.clone(), store.clone(), stop.clone()));
    let (registrations, waiting) = batch::Registrations::new(batch::MAX_PENDING_REGISTRATIONS);
    let registrar = tokio::spawn(batch::registrar(waiting, store.clone(), stop.clone()));

    let api = IndexApi::new(
        store,
        queue,
        registrations,
        lease,
        config.allow_advertise_networks.clone(),
        stop.clone(),
    );
    let server = IndexServiceServer::new(api)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let server_stop = stop.clone();
    let result = GrpcServer::new()
        .tls(server_tls)
        .add_service(
            Admission::new(RequireAuth::new(server, verifier), admission, "index-svc")
                // A heartbeat is a cached owner check and a slot in the
                // bounded write-behind queue (which sheds by itself).
                .with_exempt(&["/p2p.index.v1.IndexService/Heartbeat"]),
        )
        .serve(listener, async move {
            shutdown.await;
            server_stop.cancel();
        })
        .await;
    stop.cancel();
    if let Err(err) = flusher.await {
        tracing::warn!(%err, "flush task failed");
    }
    if let Err(err) = registrar.await {
        tracing::warn!(%err, "registration task failed");
    }
    if let Err(err) = housekeeper.await {
        tracing::warn!(%err, "housekeeping task failed");
    }
    result.map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_must_fit_in_the_lease() {
        let config = Config::try_parse_from([
            "index-svc",
            "--lease-ttl",
            "2s",
            "--heartbeat-interval",
            "3s",
        ])
        .expect("flags parse");
        assert!(matches!(
            config.lease(),
            Err(Error::Config {
                flag: "heartbeat-interval",
                ..
            })
        ));
        let config = Config::try_parse_from(["index-svc"]).expect("defaults parse");
        assert_eq!(
            config.lease().expect("default lease").ttl,
            Duration::from_secs(15)
        );
        assert_eq!(config.probe_addr(), "127.0.0.1:50052");
    }
}
