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

    /// Database URL: sqlite://PATH (created if missing) or postgres://USER:PASS@HOST/DB.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://auth.db")]
    pub database_url: String,

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
