//! Everything that can go wrong in index-svc, and the one conversion from it
//! to a gRPC status.

use p2p_services::manifest::{FileId, ManifestError};
use tonic::Status;

use crate::peer::PeerId;

/// What went wrong, in the index's terms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag has a value that cannot work.
    #[error("invalid --{flag}: {reason}")]
    Config {
        /// The flag's long name.
        flag: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Open(#[from] p2p_services::db::DbError),
    /// A query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] p2p_services::serve::ServeError),
    /// The metrics endpoint could not listen.
    #[error(transparent)]
    Bind(#[from] p2p_services::listen::BindError),
    /// Stored data does not parse (a bug or a hand-edited database).
    #[error("corrupt index data: {0}")]
    Corrupt(String),
    /// A manifest, name, id or bitfield from the client is invalid.
    #[error("{0}")]
    InvalidManifest(#[from] ManifestError),
    /// Some other request field is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// A request asks for more than the limits allow.
    #[error("{0}")]
    TooLarge(String),
    /// No file with this id.
    #[error("no file {0} in the index (it may have been deleted)")]
    FileNotFound(FileId),
    /// No peer with this id.
    #[error("unknown peer {0}: register the agent again")]
    PeerNotFound(String),
    /// The peer belongs to another user.
    #[error("peer {0} belongs to another user; only its owner may act for it")]
    NotPeerOwner(PeerId),
    /// The advertised address is not the caller's own, nor allowed.
    #[error("{0}")]
    AdvertiseRefused(String),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] p2p_services::tls::TlsError),
    /// This replica is shutting down and takes no more registrations.
    #[error("this index replica is stopping; retry on another")]
    Stopping,
    /// The index is at capacity for this kind of write.
    #[error("the index is busy with {what}; retry in {retry_after:?}")]
    Busy {
        /// What is queued past its bound.
        what: &'static str,
        /// The hint sent to the caller.
        retry_after: std::time::Duration,
    },
    /// The file belongs to another user and the caller is no admin.
    #[error("file {0} was published by another user; only its owner or an admin may delete it")]
    NotFileOwner(FileId),
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::InvalidManifest(_) | Error::InvalidArgument(_) => {
                Status::invalid_argument(message)
            }
            Error::TooLarge(_) => Status::resource_exhausted(message),
            Error::Busy { retry_after, .. } => p2p_services::admission::with_retry_after(
                Status::resource_exhausted(message),
                retry_after,
            ),
            Error::FileNotFound(_) | Error::PeerNotFound(_) => Status::not_found(message),
            Error::Stopping => Status::unavailable(message),
            Error::NotPeerOwner(_) | Error::NotFileOwner(_) | Error::AdvertiseRefused(_) => {
                Status::permission_denied(message)
            }
            Error::Database(ref source) => {
                tracing::error!(error = %source, "query failed");
                match source {
                    sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => {
                        Status::unavailable("the index database is unavailable; retry shortly")
                    }
                    _ => Status::internal("the index database failed; see index-svc logs"),
                }
            }
            Error::Corrupt(_) => {
                tracing::error!(%message, "corrupt data");
                Status::internal(message)
            }
            Error::Config { .. }
            | Error::Open(_)
            | Error::Serve(_)
            | Error::Bind(_)
            | Error::Tls(_) => Status::internal(message),
        }
    }
}

impl Error {
    /// The same failure for another caller it refused too: a group commit
    /// answers many calls from one database error, which cannot be cloned.
    /// The kind that decides the status code is kept.
    pub fn for_another_caller(&self) -> Error {
        match self {
            Error::Database(sqlx::Error::PoolTimedOut) => {
                Error::Database(sqlx::Error::PoolTimedOut)
            }
            Error::Database(sqlx::Error::Io(err)) => Error::Database(sqlx::Error::Io(
                std::io::Error::new(err.kind(), err.to_string()),
            )),
            Error::Corrupt(message) => Error::Corrupt(message.clone()),
            Error::Stopping => Error::Stopping,
            other => Error::Database(sqlx::Error::Protocol(other.to_string())),
        }
    }
}
