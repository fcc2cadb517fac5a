//! The address follows the machine. On a LAN addresses come from DHCP and
//! change; this task notices and repairs everything that named the old one:
//!
//! - every [`CHECK_EVERY`] it asks the kernel which source address it would
//!   use towards the index (a UDP socket's `connect`, which sends nothing);
//!   the index also tells, in each heartbeat, the address it sees
//!   ([`Session::address_changed`]);
//! - when either changed, the connections to auth-svc and the index are
//!   made anew (the old ones look alive until keepalive gives up), a joined
//!   agent gets a certificate for the new address (renewing with the
//!   current one) and presents it on the next handshake, and the agent
//!   registers again naming its old peer id, so the index stops offering
//!   the old address at once;
//! - a joined agent also renews when two thirds of its certificate's life
//!   are gone, and at start when the certificate does not name the address
//!   the index sees.
//!
//! The task is owned by [`crate::run`] and stops with the shutdown token.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use p2p_services::tls::ServerTls;
use tokio_util::sync::CancellationToken;

use crate::enrollment::Joined;
use crate::error::Error;
use crate::session::{Advertise, Session};

/// How often the local address is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Wait before trying a failed renewal again.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Why the follower acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The machine's address changed.
    Moved,
    /// The certificate is due, or does not name our address.
    Renew,
}

/// What the follower keeps between checks.
struct Follower {
    session: Arc<Session>,
    joined: Option<Joined>,
    server_tls: Option<ServerTls>,
    local: Option<IpAddr>,
    retry_at: Option<tokio::time::Instant>,
}

/// Runs until `stop` fires. `joined` is what `p2p join` left (none when the
/// agent was configured by flags: it then only follows its address);
/// `server_tls` is the PeerService's identity, replaced on renewal.
pub async fn follow(
    session: Arc<Session>,
    joined: Option<Joined>,
    server_tls: Option<ServerTls>,
    stop: CancellationToken,
) {
    let mut follower = Follower {
        local: None,
        session,
        joined,
        server_tls,
        retry_at: None,
    };
    follower.local = follower.route_source().await;
    loop {
        let change = tokio::select! {
            () = stop.cancelled() => return,
            () = follower.session.address_changed() => Some(Change::Moved),
            () = tokio::time::sleep(CHECK_EVERY) => follower.check().await,
        };
        if let Some(change) = change {
            follower.act(change).await;
        }
    }
}

impl Follower {
    /// Adopts a certificate `p2p join` wrote since (the machine joined
    /// again, say after its certificate expired while it was off).
    fn adopt_rejoin(&mut self) {
        let Some(current) = &self.joined else {
            return;
        };
        let Ok(Some(on_disk)) = Joined::load(&self.session.config().data_dir) else {
            return;
        };
        if on_disk.cert_pem == current.cert_pem {
            return;
        }
        if on_disk.deployment.auth_url != current.deployment.auth_url
            || on_disk.ca_pem != current.ca_pem
        {
            tracing::warn!(
                auth = %on_disk.deployment.auth_url,
                "this machine joined another deployment; restart the agent to use it"
            );
            return;
        }
        if let Some(server) = &self.server_tls
            && let Err(err) = server.replace(&on_disk.cert_pem, &on_disk.key_pem)
        {
            tracing::warn!(%err, "cannot use the certificate p2p join wrote");
            return;
        }
        if let Err(err) = self.session.reconnect(&on_disk.client_tls()) {
            tracing::warn!(%err, "cannot reconnect with the certificate p2p join wrote");
        }
        tracing::info!("using the certificate p2p join wrote");
        self.joined = Some(on_disk);
        self.retry_at = None;
    }

    /// What changed since the last check, if anything.
    async fn check(&mut self) -> Option<Change> {
        self.adopt_rejoin();
        let local = self.route_source().await;
        if local.is_some() && local != self.local {
            tracing::info!(from = ?self.local, to = ?local, "this machine's address changed");
            self.local = local;
            return Some(Change::Moved);
        }
        if self
            .retry_at
            .is_some_and(|at| tokio::time::Instant::now() < at)
        {
            return None;
        }
        let joined = self.joined.as_ref()?;
        let info = joined.cert_info().ok()?;
        let now = chrono::Utc::now().timestamp();
        if info.renewal_due(now) {
            return Some(Change::Renew);
        }
        let observed = self.session.observed_ip();
        let follows = matches!(self.session.config().advertise, Advertise::Observed { .. });
        match observed {
            Some(ip) if follows && !info.names(&ip) => Some(Change::Renew),
            _ => None,
        }
    }

    async fn act(&mut self, change: Change) {
        if change == Change::Moved {
            let tls = match &self.joined {
                Some(joined) => joined.client_tls(),
                None => self.session.config().control_tls.clone(),
            };
            if let Err(err) = self.session.reconnect(&tls) {
                tracing::warn!(%err, "cannot reconnect to the servers");
            }
        }
        if self.joined.is_some() {
            match self.renew().await {
                Ok(()) => self.retry_at = None,
                Err(err) => {
                    tracing::warn!(%err, retry_in = ?RETRY_AFTER, "cannot renew this agent's certificate");
                    self.retry_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
                }
            }
        }
        if change == Change::Moved {
            match self.session.register_after_move().await {
                Ok(()) => {
                    tracing::info!(advertised = %self.session.advertised(), "registered at the new address")
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot register at the new address yet; the heartbeat retries")
                }
            }
        }
    }

    /// A new certificate for the address auth-svc sees now, presented from
    /// the next handshake on.
    async fn renew(&mut self) -> Result<(), Error> {
        let Some(joined) = &self.joined else {
            return Ok(());
        };
        let renewed = joined.renew().await?;
        if let Some(server) = &self.server_tls {
            server.replace(&renewed.cert_pem, &renewed.key_pem)?;
        }
        self.session.reconnect(&renewed.client_tls())?;
        if let Ok(info) = renewed.cert_info() {
            tracing::info!(names = ?info.names, not_after = info.not_after, "renewed this agent's certificate");
        }
        self.joined = Some(renewed);
        Ok(())
    }

    /// The source address the kernel picks towards the first index replica.
    async fn route_source(&self) -> Option<IpAddr> {
        let first = crate::index_client::parse_urls(&self.session.config().index_url)
            .into_iter()
            .next()?;
        let authority = first
            .split_once("://")
            .map_or(first.as_str(), |(_, rest)| rest)
            .split('/')
            .next()?
            .to_string();
        let target: SocketAddr = match authority.parse() {
            Ok(addr) => addr,
            Err(_) => tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::lookup_host(authority.as_str()),
            )
            .await
            .ok()?
            .ok()?
            .next()?,
        };
        route_source(target)
    }
}

/// The local address the kernel would send from towards `target`; no
/// packet is sent.
pub fn route_source(target: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = match target {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_to_loopback_leaves_from_loopback() {
        assert_eq!(
            route_source("127.0.0.1:9".parse().unwrap()),
            Some("127.0.0.1".parse().unwrap())
        );
    }
}
