//! auth-svc's one error type and its one mapping to gRPC status codes.

use p2p_services::db::DbError;
use p2p_services::listen::BindError;
use p2p_services::serve::ServeError;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::throttle::ThrottleScope;

/// Everything that can go wrong in auth-svc, in domain terms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag has a value auth-svc cannot use.
    #[error("invalid {flag}: {message}")]
    Config {
        /// The flag, e.g. `--access-token-ttl`.
        flag: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A listen address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The database could not be opened or migrated.
    #[error(transparent)]
    OpenDatabase(#[from] DbError),
    /// A query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] p2p_services::tls::TlsError),
    /// The metrics endpoint failed.
    #[error("metrics endpoint failed: {0}")]
    Metrics(String),
    /// Unknown user or wrong password; deliberately the same error.
    #[error("wrong username or password")]
    BadCredentials,
    /// Too many recent failed logins for the account from the client's
    /// address, or from that address altogether.
    #[error("too many failed logins {scope}; try again in {retry_after_secs} s")]
    Throttled {
        /// Which count refused the attempt.
        scope: ThrottleScope,
        /// Seconds until an attempt is accepted again.
        retry_after_secs: u64,
    },
    /// The username breaks the naming rules.
    #[error("invalid username: {0}")]
    InvalidUsername(String),
    /// The new password breaks the strength rules.
    #[error("{0}")]
    WeakPassword(String),
    /// Some other request field is unusable.
    #[error("{0}")]
    InvalidArgument(String),
    /// The username is taken.
    #[error("user {0:?} already exists; pick another username")]
    UserExists(String),
    /// No account by that name or id.
    #[error("no such user: {0}")]
    UserNotFound(String),
    /// The change would leave no enabled admin.
    #[error("{0:?} is the last enabled admin; make another admin first")]
    LastAdmin(String),
    /// A refresh token cannot be used.
    #[error("{0}")]
    Refresh(RefreshRejection),
    /// The account behind a valid token is disabled or gone.
    #[error("account {0:?} is disabled or deleted; ask an administrator")]
    AccountUnusable(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A join token cannot be used.
    #[error("{0}")]
    JoinToken(JoinTokenRejection),
    /// A usable join token whose account is disabled.
    #[error("the join token's account {0:?} is disabled; ask an administrator to enable it")]
    JoinTokenAccountDisabled(String),
    /// No join token has that id.
    #[error("no join token has id {0:?}; `p2p join-tokens` lists them")]
    JoinTokenNotFound(String),
    /// No usable credential came with a call that needs one.
    #[error("{0}")]
    Unauthenticated(String),
    /// This server cannot do that as configured.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A bug or a broken invariant; details go to the log, not the client.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a refresh token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefreshRejection {
    /// Never issued (or already deleted with its account).
    #[error("unknown refresh token: log in again")]
    Unknown,
    /// Past its expiry.
    #[error("refresh token expired: log in again")]
    Expired,
    /// Revoked by logout, a password change, or an administrator.
    #[error("refresh token revoked: log in again")]
    Revoked,
    /// Already exchanged once: treated as stolen.
    #[error(
        "refresh token was already used; every session of this login is now revoked as a precaution: log in again"
    )]
    Reused,
}

/// Why a join token was refused. Each says which, and what to do; an
/// unknown token says no more than that, so a guess learns nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenRejection {
    /// Not a token auth-svc knows (never made, mistyped, or its account
    /// was deleted).
    #[error("unknown join token: {ASK_FOR_INVITE}")]
    Unknown,
    /// Past its expiry.
    #[error("join token expired: {ASK_FOR_INVITE}")]
    Expired,
    /// Revoked by an admin.
    #[error("join token revoked: {ASK_FOR_INVITE}")]
    Revoked,
    /// Every use already spent.
    #[error("join token used up (every use is spent): {ASK_FOR_INVITE}")]
    Spent,
}

/// What to do about a refused join token.
const ASK_FOR_INVITE: &str = "ask an admin for a new invite: p2p invite --token-for USER";

/// Metadata key of a throttled login's answer: whole seconds to wait
/// before the next attempt is accepted (the same hint every service sends
/// when it sheds load).
pub use p2p_services::admission::RETRY_AFTER;

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::BadCredentials
            | Error::Refresh(_)
            | Error::AccountUnusable(_)
            | Error::JoinToken(_)
            | Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::Throttled {
                retry_after_secs, ..
            } => {
                let mut status = Status::resource_exhausted(message);
                status
                    .metadata_mut()
                    .insert(RETRY_AFTER, MetadataValue::from(retry_after_secs));
                status
            }
            Error::InvalidUsername(_) | Error::WeakPassword(_) | Error::InvalidArgument(_) => {
                Status::invalid_argument(message)
            }
            Error::UserExists(_) => Status::already_exists(message),
            Error::UserNotFound(_) | Error::JoinTokenNotFound(_) => Status::not_found(message),
            Error::LastAdmin(_) => Status::failed_precondition(message),
            Error::PermissionDenied(_) | Error::JoinTokenAccountDisabled(_) => {
                Status::permission_denied(message)
            }
            Error::Database(_) | Error::OpenDatabase(_) => {
                tracing::error!(error = %message, "database failure");
                Status::unavailable("auth-svc cannot reach its database; try again shortly")
            }
            Error::Config { .. }
            | Error::Bind(_)
            | Error::Serve(_)
            | Error::Tls(_)
            | Error::Metrics(_)
            | Error::Internal(_) => {
                tracing::error!(error = %message, "internal failure");
                Status::internal("auth-svc hit an internal error; the server log has details")
            }
        }
    }
}
