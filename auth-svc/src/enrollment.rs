//! Joining machines: `p2p.auth.v1.EnrollmentService`. auth-svc holds the
//! deployment's CA key ([`Ca`]) and signs each agent's own key for exactly
//! the address the request came from, bound to its account, for
//! `--agent-cert-lifetime`. Who may ask:
//! - a logged-in user (an access token), for their own account;
//! - an unattended machine with a join token an admin made, for the
//!   token's account, spending one use;
//! - an agent renewing, with its current certificate as TLS client
//!   certificate, for the account that certificate names.
//!
//! Every path re-reads the account: a disabled one gets nothing. The CA key
//! never leaves this module; requests naming any other address are refused.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::auth::v1 as pb;
use p2p_proto::auth::v1::enrollment_service_server::EnrollmentService;
use p2p_services::auth::claims;
use p2p_services::tls::issue::{self, SignError};
use tonic::{Request, Response, Status};

use crate::account::Account;
use crate::api::user_to_proto;
use crate::authority::Authority;
use crate::error::Error;

/// Full paths of the methods that need no access token (they check their
/// own credential).
pub const PUBLIC_METHODS: &[&str] = &[
    "/p2p.auth.v1.EnrollmentService/GetDeployment",
    "/p2p.auth.v1.EnrollmentService/IssueAgentCertificate",
];

/// The deployment's CA as auth-svc holds it.
pub struct Ca {
    authority: issue::Authority,
    cert_pem: String,
    fingerprint: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// The CA whose key and certificate are these files.
    pub fn from_files(key: &std::path::Path, cert: &std::path::Path) -> Result<Self, Error> {
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read_to_string(path).map_err(|e| Error::Config {
                flag: "--ca-key",
                message: format!("cannot read the CA {what} {}: {e}", path.display()),
            })
        };
        let cert_pem = read(cert, "certificate")?;
        let authority = issue::Authority::from_pem(&read(key, "key")?, &cert_pem)?;
        Ok(Self {
            fingerprint: authority.fingerprint()?,
            authority,
            cert_pem,
        })
    }

    /// Its fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Its certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

/// What EnrollmentService needs.
#[derive(Debug)]
pub struct Enrollment {
    authority: Arc<Authority>,
    ca: Option<Ca>,
    lifetime: Duration,
    index_url: String,
}

impl Enrollment {
    /// Signs with `ca` (none: certificates are refused with a message that
    /// says how to give auth-svc one).
    pub fn new(
        authority: Arc<Authority>,
        ca: Option<Ca>,
        lifetime: Duration,
        index_url: String,
    ) -> Self {
        Self {
            authority,
            ca,
            lifetime,
            index_url,
        }
    }

    fn ca(&self) -> Result<&Ca, Error> {
        self.ca.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "this auth-svc holds no CA key, so it cannot sign agent certificates: start it \
                 with --state-dir (it makes its CA there), or give your CA with --ca-key and \
                 --tls-ca"
                    .into(),
            )
        })
    }

    /// Signs `csr_pem` for `account` at `address`.
    fn sign(
        &self,
        csr_pem: &str,
        address: IpAddr,
        account: Account,
        how: &str,
    ) -> Result<pb::AgentCertificate, Error> {
        let ca = self.ca()?;
        let (chain, not_after) = ca
            .authority
            .sign_agent_request(
                csr_pem,
                address,
                &account.username,
                &account.id,
                self.lifetime,
            )
            .map_err(|err| match err {
                SignError::Invalid(_) | SignError::OtherName { .. } => {
                    Error::InvalidArgument(err.to_string())
                }
            })?;
        tracing::info!(user = %account.username, %address, how, "signed an agent certificate");
        Ok(pb::AgentCertificate {
            cert_chain_pem: chain,
            address: address.to_string(),
            not_after_ms: (not_after.unix_timestamp_nanos() / 1_000_000) as i64,
            user: Some(user_to_proto(account)),
        })
    }
}

/// The gRPC glue.
#[derive(Debug, Clone)]
pub struct EnrollmentApi {
    inner: Arc<Enrollment>,
}

impl EnrollmentApi {
    /// Serves `enrollment`.
    pub fn new(enrollment: Arc<Enrollment>) -> Self {
        Self { inner: enrollment }
    }
}

/// The caller's source address; every TCP call has one.
fn caller<T>(request: &Request<T>) -> Result<IpAddr, Error> {
    request
        .remote_addr()
        .map(|addr| addr.ip().to_canonical())
        .ok_or_else(|| {
            Error::FailedPrecondition(
                "auth-svc cannot see this call's source address, so it cannot name it in a \
                 certificate"
                    .into(),
            )
        })
}

#[tonic::async_trait]
impl EnrollmentService for EnrollmentApi {
    async fn get_deployment(
        &self,
        _: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let ca = self.inner.ca()?;
        Ok(Response::new(pb::Deployment {
            ca_pem: ca.cert_pem.clone(),
            ca_fingerprint: ca.fingerprint.clone(),
            index_url: self.inner.index_url.clone(),
            agent_cert_lifetime_seconds: self.inner.lifetime.as_secs(),
        }))
    }

    async fn issue_agent_certificate(
        &self,
        request: Request<pb::IssueAgentCertificateRequest>,
    ) -> Result<Response<pb::AgentCertificate>, Status> {
        let address = caller(&request)?;
        let authority = &self.inner.authority;
        let (account, how) = if !request.get_ref().join_token.is_empty() {
            let account: Account =
                redeem_join_token(authority, request.get_ref().join_token.trim()).await?;
            (account, "join token")
        } else if let Ok(claims) = claims(&request) {
            let account = authority.usable_account(&claims.sub, &claims.name).await?;
            (account, "login")
        } else if let Some(certs) = request.peer_certs() {
            let leaf = certs.first().ok_or_else(|| {
                Error::Unauthenticated("the TLS client certificate chain is empty".into())
            })?;
            let id = issue::account_of(leaf).ok_or_else(|| {
                Error::Unauthenticated(
                    "this client certificate is not an agent's (it names no account); log in \
                     with p2p join instead"
                        .into(),
                )
            })?;
            (authority.usable_account(&id, &id).await?, "renewal")
        } else {
            return Err(Error::Unauthenticated(
                "a certificate needs a credential: log in first (p2p join asks for your \
                 password), give a join token from an admin (p2p invite --token-for USER), or \
                 renew with your current agent certificate"
                    .into(),
            )
            .into());
        };
        let signed = self
            .inner
            .sign(&request.get_ref().csr_pem, address, account, how)?;
        Ok(Response::new(signed))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreatedJoinToken>, Status> {
        let caller = claims(&request)?.clone();
        let message = request.into_inner();
        let (record, secret) = self
            .inner
            .authority
            .create_join_token(
                &caller,
                &message.username,
                message.uses,
                Duration::from_secs(message.ttl_seconds),
                &message.description,
            )
            .await?;
        Ok(Response::new(pb::CreatedJoinToken {
            token: Some(crate::join_token::to_proto(&record)),
            secret,
        }))
    }

    async fn list_join_tokens(
        &self,
        request: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        let caller = claims(&request)?.clone();
        let tokens = self.inner.authority.list_join_tokens(&caller).await?;
        Ok(Response::new(pb::ListJoinTokensResponse {
            tokens: tokens.iter().map(crate::join_token::to_proto).collect(),
        }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::RevokeJoinTokenResponse>, Status> {
        let caller = claims(&request)?.clone();
        self.inner
            .authority
            .revoke_join_token(&caller, &request.get_ref().id)
            .await?;
        Ok(Response::new(pb::RevokeJoinTokenResponse {}))
    }
}

async fn redeem_join_token(authority: &Authority, secret: &str) -> Result<Account, Error> {
    authority.redeem_join_token(secret).await
}
