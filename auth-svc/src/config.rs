//! auth-svc's configuration: one clap struct, every flag with an environment
//! fallback, validated once at start-up with errors that name the flag.

use std::time::Duration;

use p2p_services::config::parse_duration;

use clap::{Parser, Subcommand};
use p2p_services::telemetry::TelemetryArgs;

use crate::error::Error;

/// Everything auth-svc is told at start-up.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "auth-svc",
    version,
    about = "Accounts, logins and tokens for the P2P File Transfer network"
)]
pub struct Config {
    /// Optional one-shot command instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address the gRPC server listens on.
    #[arg(long, env = "AUTH_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: String,

    /// Database URL: sqlite://PATH (created if missing) or
    /// postgres://USER:PASS@HOST/DB. Default: sqlite://STATE/auth.db with
    /// --state-dir, else sqlite://auth.db.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Username of the admin created on first start (when there are no accounts).
    #[arg(long, env = "P2P_ADMIN_USER", default_value = "admin")]
    pub admin_user: String,

    /// Password of that admin. When absent on first start a strong one is
    /// generated and logged once.
    #[arg(long, env = "P2P_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// Lifetime of access tokens, e.g. "15m", "900s", "1h".
    #[arg(long, env = "ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_duration)]
    pub access_token_ttl: Duration,

    /// Lifetime of refresh tokens, e.g. "30d", "12h".
    #[arg(long, env = "REFRESH_TOKEN_TTL", default_value = "30d", value_parser = parse_duration)]
    pub refresh_token_ttl: Duration,

    /// Shortest password accepted for new accounts and password changes.
    #[arg(long, env = "MIN_PASSWORD_LENGTH", default_value_t = 8)]
    pub min_password_length: usize,

    /// Address of the Prometheus /metrics endpoint; empty disables it.
    #[arg(long, env = "METRICS_LISTEN", default_value = "0.0.0.0:9101")]
    pub metrics_listen: String,

    /// TLS flags (auth-svc serves TLS; `--tls-ca` is used by `healthcheck`).
    #[command(flatten)]
    pub tls: p2p_services::tls::TlsArgs,

    /// The state dir: first start makes the CA, the server certificate and
    /// the admin's password there (see `Config::admin_password_file`).
    #[command(flatten)]
    pub setup: p2p_services::tls::setup::ServerSetupArgs,

    /// PEM key of the deployment's CA, for an operator who brings their own
    /// CA (`p2p-certs ca`; --tls-ca is its certificate): auth-svc then signs
    /// agents' certificates with it. With --state-dir the CA made there is
    /// used instead.
    #[arg(long, env = "P2P_CA_KEY")]
    pub ca_key: Option<std::path::PathBuf>,

    /// How long an agent's certificate lives (e.g. 7d, 36h). Agents renew
    /// at two thirds of it, and at once when their address changes.
    #[arg(long, env = "P2P_AGENT_CERT_LIFETIME", default_value = "7d", value_parser = parse_duration)]
    pub agent_cert_lifetime: Duration,

    /// Where joining agents are told index-svc is (`host:port`, several
    /// comma-separated); an empty host (`:50052`) means the host they
    /// reached auth-svc at.
    #[arg(long, env = "P2P_AGENT_INDEX_URL", default_value = ":50052")]
    pub agent_index_url: String,

    /// Do not announce this server on the LAN by mDNS (DNS-SD
    /// `_p2p-transfer._tcp`), which lets `p2p join` find it without an
    /// address.
    #[arg(long, env = "P2P_NO_ANNOUNCE")]
    pub no_announce: bool,

    /// Logging flags.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// One-shot commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Ask a running auth-svc whether it is serving; exits 0 when it is, 1 otherwise.
    ///
    /// It verifies the server's certificate with --tls-ca (P2P_TLS_CA), or
    /// calls in clear with --insecure-plaintext; both go before or after
    /// `healthcheck`.
    Healthcheck {
        /// Address to probe; defaults to --listen with 0.0.0.0 replaced by 127.0.0.1.
        #[arg(long)]
        addr: Option<String>,
    },
    /// Shell completions and the man page.
    #[command(flatten)]
    Manual(p2p_services::manual::Manual),
}

/// Password lengths below this are refused even when configured lower.
pub const MIN_PASSWORD_LENGTH_FLOOR: usize = 1;

impl Config {
    /// Checks the values clap cannot check alone.
    pub fn validate(&self) -> Result<(), Error> {
        if self.agent_cert_lifetime < Duration::from_secs(3600) {
            return Err(Error::Config {
                flag: "--agent-cert-lifetime",
                message: "must be at least 1h (agents renew at two thirds of it)".into(),
            });
        }
        if self.access_token_ttl < Duration::from_secs(1) {
            return Err(Error::Config {
                flag: "--access-token-ttl",
                message: "must be at least 1s".into(),
            });
        }
        if self.refresh_token_ttl <= self.access_token_ttl {
            return Err(Error::Config {
                flag: "--refresh-token-ttl",
                message: format!(
                    "must be longer than --access-token-ttl ({}s)",
                    self.access_token_ttl.as_secs()
                ),
            });
        }
        if self.min_password_length < MIN_PASSWORD_LENGTH_FLOOR {
            return Err(Error::Config {
                flag: "--min-password-length",
                message: format!("must be at least {MIN_PASSWORD_LENGTH_FLOOR}"),
            });
        }
        if let Err(problem) = crate::account::validate_username(&self.admin_user) {
            return Err(Error::Config {
                flag: "--admin-user",
                message: problem,
            });
        }
        if let Some(password) = &self.admin_password
            && let Err(problem) =
                crate::account::validate_password(password, self.min_password_length)
        {
            return Err(Error::Config {
                flag: "--admin-password",
                message: problem,
            });
        }
        Ok(())
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.setup
            .database_url(self.database_url.as_deref(), "auth.db", "sqlite://auth.db")
    }

    /// Where the generated admin password is written once, next to the
    /// state (mode 0600), when there is a state dir.
    pub fn admin_password_file(&self) -> Option<std::path::PathBuf> {
        self.setup
            .state_dir
            .as_ref()
            .map(|dir| dir.join("admin-password"))
    }

    /// Where `healthcheck` connects by default: the listen address, with a
    /// wildcard host replaced by loopback.
    pub fn probe_addr(&self) -> String {
        self.listen
            .replace("0.0.0.0", "127.0.0.1")
            .replace("[::]", "[::1]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = Config::try_parse_from(["auth-svc"]).expect("defaults parse");
        assert_eq!(config.access_token_ttl, Duration::from_secs(900));
        assert_eq!(config.refresh_token_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(config.min_password_length, 8);
        assert_eq!(config.probe_addr(), "127.0.0.1:50051");
    }

    #[test]
    fn refresh_ttl_must_outlive_access_ttl() {
        let config = Config::try_parse_from([
            "auth-svc",
            "--access-token-ttl",
            "1h",
            "--refresh-token-ttl",
            "30m",
        ])
        .expect("parses");
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("--refresh-token-ttl"), "{err}");
    }
}
