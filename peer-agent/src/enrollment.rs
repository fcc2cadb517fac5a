//! This machine's membership of a deployment: what `p2p join` learns and
//! keeps in `<data-dir>/deployment/`, and how the agent renews it.
//!
//! - `deployment.json`: where auth-svc and index-svc are, the CA's
//!   fingerprint, the account and how the agent logs in at start;
//! - `ca.pem`: the only CA this agent trusts, learned from the server by
//!   its fingerprint ([`p2p_services::tls::pin`]);
//! - `agent.pem` / `agent-key.pem` (0600): this agent's certificate chain,
//!   naming the address auth-svc saw it at, and the key it made itself.
//!
//! [`trust`] and [`join_trusted`] make them; [`Joined::renew`] replaces the certificate (a new
//! key each time) with the current one as TLS client certificate, which is
//! what auth-svc accepts for renewal. The key never leaves this machine;
//! the CA key never leaves the server.

use std::path::{Path, PathBuf};

use p2p_proto::auth::v1 as auth_pb;
use p2p_proto::auth::v1::auth_service_client::AuthServiceClient;
use p2p_proto::auth::v1::enrollment_service_client::EnrollmentServiceClient;
use p2p_services::client::with_bearer;
use p2p_services::tls::{ClientTls, issue, pin};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::error::Error;

/// The directory in the data dir.
pub const DIR: &str = "deployment";
/// auth-svc's port when the server is given without one.
pub const DEFAULT_AUTH_PORT: u16 = 50051;
/// Deadline of each call while joining or renewing.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// How the agent logs in by itself at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartLogin {
    /// Not at all: the user logs in (`p2p login`, the web app). What an
    /// operator may write in `deployment.json` for a shared machine.
    Manual,
    /// With its certificate, as the account it joined as, unless the user
    /// logged out (see [`logged_out`]): what `p2p join` writes, so an agent
    /// that starts with the machine serves at once.
    Certificate,
}

/// The file that says the user logged out, so the agent does not log
/// itself in again at its next start.
const LOGGED_OUT_FILE: &str = "logged-out";

/// Whether the user of the agent in `data_dir` logged out (and has not
/// logged in since).
pub fn logged_out(data_dir: &Path) -> bool {
    data_dir.join(DIR).join(LOGGED_OUT_FILE).exists()
}

/// Records a logout (`true`) or a login (`false`) of a joined agent; an
/// agent that never joined keeps nothing.
pub fn remember_logout(data_dir: &Path, out: bool) {
    let dir = data_dir.join(DIR);
    if !dir.join("deployment.json").exists() {
        return;
    }
    let marker = dir.join(LOGGED_OUT_FILE);
    let result = if out {
        std::fs::write(&marker, b"")
    } else {
        match std::fs::remove_file(&marker) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    };
    if let Err(err) = result {
        tracing::warn!(path = %marker.display(), %err, "cannot record the login state");
    }
}

/// `deployment.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// auth-svc, `host:port`.
    pub auth_url: String,
    /// index-svc replicas, as `--index-url` takes them.
    pub index_url: String,
    /// The CA's SPKI fingerprint.
    pub ca_fingerprint: String,
    /// The account this machine joined as.
    pub username: String,
    /// How the agent logs in at start.
    pub login: StartLogin,
}

/// The joined state, read from (or written to) the data dir.
#[derive(Clone)]
pub struct Joined {
    dir: PathBuf,
    /// Where the servers are and how to log in.
    pub deployment: Deployment,
    /// The CA, PEM.
    pub ca_pem: String,
    /// This agent's certificate chain, PEM.
    pub cert_pem: String,
    /// Its key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("dir", &self.dir)
            .field("deployment", &self.deployment)
            .finish_non_exhaustive()
    }
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The addresses and names it is valid for.
    pub names: Vec<String>,
    /// When it became valid, Unix seconds.
    pub not_before: i64,
    /// When it expires, Unix seconds.
    pub not_after: i64,
}

impl CertInfo {
    /// Whether it is time to renew at `now` (Unix seconds): two thirds of
    /// its life are gone.
    pub fn renewal_due(&self, now: i64) -> bool {
        now >= self.not_before + (self.not_after - self.not_before) * 2 / 3
    }

    /// Whether it names `ip`.
    pub fn names(&self, ip: &str) -> bool {
        self.names.iter().any(|n| n == ip)
    }
}

fn io(what: &str, path: &Path, err: std::io::Error) -> Error {
    Error::io(format!("cannot {what} {}", path.display()), err)
}

impl Joined {
    /// The state in `data_dir`, or `None` when this machine has not joined.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, Error> {
        let dir = data_dir.join(DIR);
        let json = dir.join("deployment.json");
        let text = match std::fs::read_to_string(&json) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io("read", &json, err)),
        };
        let deployment: Deployment = serde_json::from_str(&text).map_err(|e| {
            Error::Config(format!(
                "{} is damaged ({e}); join again with `p2p join`",
                json.display()
            ))
        })?;
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| io("read", &path, e))
        };
        Ok(Some(Self {
            ca_pem: read("ca.pem")?,
            cert_pem: read("agent.pem")?,
            key_pem: read("agent-key.pem")?,
            deployment,
            dir,
        }))
    }

    /// Writes everything, each file through a temporary one so a reader
    /// (the agent waiting for a join) never sees half; `deployment.json`
    /// last, since its presence means "joined".
    fn save(&self) -> Result<(), Error> {
        issue::write(&self.dir.join("ca.pem"), &self.ca_pem, false)?;
        self.save_certificate()?;
        let json = serde_json::to_string_pretty(&self.deployment)
            .map_err(|e| Error::Config(format!("cannot encode the deployment: {e}")))?;
        Ok(issue::write(
            &self.dir.join("deployment.json"),
            &json,
            false,
        )?)
    }

    /// Writes the key, then the certificate.
    fn save_certificate(&self) -> Result<(), Error> {
        issue::write(&self.dir.join("agent-key.pem"), &self.key_pem, true)?;
        Ok(issue::write(
            &self.dir.join("agent.pem"),
            &self.cert_pem,
            false,
        )?)
    }

    /// What this agent's certificate is valid for, and until when.
    pub fn cert_info(&self) -> Result<CertInfo, Error> {
        let (names, not_before, not_after) = issue::names_and_validity(self.cert_pem.as_bytes())?;
        Ok(CertInfo {
            names,
            not_before,
            not_after,
        })
    }

    /// How to reach the servers: trusting only the deployment's CA and
    /// presenting this agent's certificate while it is valid. An expired
    /// one is left out: auth-svc would refuse the handshake, and with it a
    /// password login; the machine then joins again (`p2p join`).
    pub fn client_tls(&self) -> ClientTls {
        let trust = ClientTls::from_ca_pem(&self.ca_pem);
        let now = chrono::Utc::now().timestamp();
        match self.cert_info() {
            Ok(info) if info.not_after > now + 60 => {
                trust.with_identity(&self.cert_pem, &self.key_pem)
            }
            _ => {
                tracing::warn!(
                    "this agent's certificate has expired (the machine was off longer than its \
                     lifetime): run `p2p join` again"
                );
                trust
            }
        }
    }

    /// A new certificate for this agent (a new key too) from auth-svc,
    /// proving who it is with the current one; it names the address
    /// auth-svc sees now. Saved before it is returned.
    pub async fn renew(&self) -> Result<Joined, Error> {
        let channel = channel(&self.deployment.auth_url, &self.client_tls())?;
        let (key_pem, csr_pem) = issue::new_key_and_request()?;
        let issued = issue_certificate(&channel, csr_pem, None, None).await?;
        let renewed = Joined {
            cert_pem: issued.cert_chain_pem,
            key_pem,
            ..self.clone()
        };
        renewed.save_certificate()?;
        Ok(renewed)
    }
}

/// How the joining user proves who they are.
#[derive(Clone)]
pub enum Credential {
    /// Their account's password.
    Password {
        /// The account.
        username: String,
        /// Its password.
        password: String,
    },
    /// A join token an admin made (`p2p invite --token-for USER`).
    JoinToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Password { username, .. } => write!(f, "Password({username})"),
            Self::JoinToken(_) => write!(f, "JoinToken"),
        }
    }
}

/// `host[:port]` with auth-svc's port filled in.
pub fn server_addr(server: &str) -> String {
    let server = server
        .trim()
        .trim_start_matches("https://")
        .trim_end_matches('/');
    if server.starts_with('[') {
        return if server.contains("]:") {
            server.to_string()
        } else {
            format!("{server}:{DEFAULT_AUTH_PORT}")
        };
    }
    if let Ok(std::net::IpAddr::V6(_)) = server.parse::<std::net::IpAddr>() {
        return format!("[{server}]:{DEFAULT_AUTH_PORT}");
    }
    match server.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => server.to_string(),
        _ => format!("{server}:{DEFAULT_AUTH_PORT}"),
    }
}

fn channel(addr: &str, tls: &ClientTls) -> Result<Channel, Error> {
    p2p_services::client::channel(addr, tls)
        .map_err(|e| Error::Config(format!("{addr:?} is not a usable server address: {e}")))
}

async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Error> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| {
            Error::AuthUnavailable(format!("{what} got no answer within {CALL_TIMEOUT:?}"))
        })?
        .map(tonic::Response::into_inner)
        .map_err(Error::from_auth)
}

async fn issue_certificate(
    channel: &Channel,
    csr_pem: String,
    access_token: Option<&str>,
    join_token: Option<String>,
) -> Result<auth_pb::AgentCertificate, Error> {
    let message = auth_pb::IssueAgentCertificateRequest {
        csr_pem,
        join_token: join_token.unwrap_or_default(),
    };
    let request = match access_token {
        Some(token) => with_bearer(message, token),
        None => tonic::Request::new(message),
    };
    let mut client = EnrollmentServiceClient::new(channel.clone());
    bounded(
        "asking for a certificate",
        client.issue_agent_certificate(request),
    )
    .await
}

/// A server whose CA was checked against the fingerprint the user gave,
/// before anything secret is sent to it.
#[derive(Debug, Clone)]
pub struct Trusted {
    /// auth-svc, `host:port`.
    pub auth_url: String,
    /// Its CA, PEM.
    pub ca_pem: String,
}

/// Checks that auth-svc at `server` is vouched for by the CA with
/// `fingerprint`, and learns that CA.
pub async fn trust(server: &str, fingerprint: &str) -> Result<Trusted, Error> {
    let auth_url = server_addr(server);
    let ca_pem = pin::fetch_pinned_ca(&auth_url, fingerprint)
        .await
        .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
    Ok(Trusted { auth_url, ca_pem })
}

/// Joins the deployment of a [`trust`]ed auth-svc, proving the account
/// with `credential`, and keeps what it learned in `data_dir` (replacing an
/// earlier join).
pub async fn join_trusted(
    data_dir: &Path,
    trusted: Trusted,
    credential: Credential,
) -> Result<Joined, Error> {
    let Trusted { auth_url, ca_pem } = trusted;
    let trust = ClientTls::from_ca_pem(&ca_pem);
    let auth = channel(&auth_url, &trust)?;
    let deployment = bounded(
        "GetDeployment",
        EnrollmentServiceClient::new(auth.clone()).get_deployment(auth_pb::GetDeploymentRequest {}),
    )
    .await?;
    let host = auth_url
        .rsplit_once(':')
        .map(|(host, _)| host)
        .unwrap_or(&auth_url);
    let index_url = p2p_services::client::fill_host(&deployment.index_url, host);
    let (key_pem, csr_pem) = issue::new_key_and_request()?;
    let (issued, login) = match credential {
        Credential::Password { username, password } => {
            let pair = bounded(
                "logging in",
                AuthServiceClient::new(auth.clone())
                    .login(auth_pb::LoginRequest { username, password }),
            )
            .await?;
            let issued = issue_certificate(&auth, csr_pem, Some(&pair.access_token), None).await;
            // The agent makes its own session; this one only served the join.
            let _ = bounded(
                "logging out",
                AuthServiceClient::new(auth.clone()).logout(auth_pb::LogoutRequest {
                    refresh_token: pair.refresh_token,
                }),
            )
            .await;
            (issued?, StartLogin::Certificate)
        }
        Credential::JoinToken(token) => (
            issue_certificate(&auth, csr_pem, None, Some(token)).await?,
            StartLogin::Certificate,
        ),
    };
    let joined = Joined {
        dir: data_dir.join(DIR),
        deployment: Deployment {
            auth_url,
            index_url,
            ca_fingerprint: deployment.ca_fingerprint,
            username: issued.user.map(|u| u.username).unwrap_or_default(),
            login,
        },
        ca_pem,
        cert_pem: issued.cert_chain_pem,
        key_pem,
    };
    joined.save()?;
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_a_port_gets_auth_svcs() {
        assert_eq!(server_addr("10.0.0.1"), "10.0.0.1:50051");
        assert_eq!(server_addr("10.0.0.1:7000"), "10.0.0.1:7000");
        assert_eq!(server_addr("auth.lan"), "auth.lan:50051");
        assert_eq!(server_addr("https://auth.lan:9/"), "auth.lan:9");
        assert_eq!(server_addr("[fd00::1]:7"), "[fd00::1]:7");
        assert_eq!(server_addr("fd00::1"), "[fd00::1]:50051");
    }
}
