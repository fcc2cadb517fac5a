//! The agent's one error type and its one conversion to `tonic::Status`.
//! Messages name what went wrong and what to do about it.

use std::path::PathBuf;

use tonic::{Code, Status};

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or setting is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] p2p_services::listen::BindError),
    /// The control socket or token file could not be made.
    #[error("control API: {0}")]
    Local(#[from] p2p_services::local::LocalError),
    /// A gRPC server failed.
    #[error(transparent)]
    Serve(#[from] p2p_services::serve::ServeError),
    /// The agent's database could not be opened.
    #[error(transparent)]
    Db(#[from] p2p_services::db::DbError),
    /// A query on the agent's database failed.
    #[error("agent database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the agent was doing, naming the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No session: the user must log in.
    #[error("not logged in: run `p2p login`")]
    NotLoggedIn,
    /// The index cannot be reached.
    #[error(
        "index service unreachable ({0}); check that index-svc runs and --index-url points at it"
    )]
    IndexUnavailable(String),
    /// The auth service cannot be reached.
    #[error("auth service unreachable ({0}); check that auth-svc runs and --auth-url points at it")]
    AuthUnavailable(String),
    /// Another service answered with an error, passed on as it came.
    #[error("{service}: {}", status.message())]
    Remote {
        /// Which service.
        service: &'static str,
        /// What it said.
        status: Status,
    },
    /// Something asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// No network file has that name, id or id prefix (unlike
    /// [`Error::NotFound`], which may name a local path or a download).
    #[error("{0}")]
    UnknownFile(String),
    /// A download or copy would not fit on a filesystem.
    #[error(
        "needs {}, {} free on {}{}; free some space or choose another destination with -o",
        crate::size::human(*.needed_bytes),
        crate::size::human(*.free_bytes),
        .mount_point.display(),
        if *.reserve_bytes > 0 {
            format!(" ({} more is kept free for the agent's database)", crate::size::human(*.reserve_bytes))
        } else {
            String::new()
        }
    )]
    NoSpace {
        /// Bytes the operation needs there.
        needed_bytes: u64,
        /// Bytes that must stay free there besides.
        reserve_bytes: u64,
        /// Bytes free there.
        free_bytes: u64,
        /// The filesystem's mount point.
        mount_point: PathBuf,
    },
    /// A name or prefix matches several files.
    #[error("{0}")]
    Ambiguous(String),
    /// The request is unusable as given.
    #[error("{0}")]
    InvalidArgument(String),
    /// A manifest, name or bitfield was refused.
    #[error(transparent)]
    Manifest(#[from] p2p_services::manifest::ManifestError),
    /// The destination exists and `force` was not given.
    #[error("{} already exists; pass --force to replace it", .0.display())]
    DestinationExists(PathBuf),
    /// The download was cancelled.
    #[error("download cancelled; verified chunks are kept, download again to resume")]
    Cancelled,
    /// No online peer could serve the missing chunks for a while. Not
    /// "unavailable": retrying at once will not help until a holder is
    /// back.
    #[error("{0}")]
    NoSources(String),
    /// All chunks verified but the whole file does not match.
    #[error("{0}")]
    Corrupt(String),
    /// The agent is stopping.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// What was asked cannot be done in the agent's present state; the
    /// message says what would make it possible.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A browser tried to sign in as another account than the one the
    /// agent is logged in as: the agent's account is its owner's choice.
    #[error(
        "this agent is logged in as {current}, and its web app signs in only as that account; \
         to use {asked} on this machine, run `p2p login {asked}` here"
    )]
    OtherAccount {
        /// The account the agent is logged in as.
        current: String,
        /// The account the browser asked for.
        asked: String,
    },
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Classifies a status from the index: transport failures mean the
    /// index is down, anything else is its answer.
    pub fn from_index(status: Status) -> Self {
        if is_transport_failure(&status) {
            Self::IndexUnavailable(status.message().to_string())
        } else {
            Self::Remote {
                service: "index",
                status,
            }
        }
    }

    /// Like [`Error::from_index`] for auth-svc.
    pub fn from_auth(status: Status) -> Self {
        if is_transport_failure(&status) {
            Self::AuthUnavailable(status.message().to_string())
        } else {
            Self::Remote {
                service: "auth",
                status,
            }
        }
    }
}

/// Metadata key set on a NotFound status when the missing thing is a
/// network file (not a local path or a running download), so the client
/// says "no file named …" only then.
pub const MISSING_KEY: &str = "p2p-missing";
/// The [`MISSING_KEY`] value for an unknown network file.
pub const MISSING_NETWORK_FILE: &str = "network-file";

/// Whether a status means the server could not be reached at all.
pub fn is_transport_failure(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::NotLoggedIn => Status::failed_precondition(message),
            Error::IndexUnavailable(_) | Error::AuthUnavailable(_) | Error::ShuttingDown => {
                Status::unavailable(message)
            }
            Error::Remote { status, .. } => Status::new(status.code(), message),
            Error::NotFound(_) => Status::not_found(message),
            Error::UnknownFile(_) => {
                let mut status = Status::not_found(message);
                status.metadata_mut().insert(
                    MISSING_KEY,
                    tonic::metadata::MetadataValue::from_static(MISSING_NETWORK_FILE),
                );
                status
            }
            Error::NoSpace { .. } | Error::FailedPrecondition(_) | Error::NoSources(_) => {
                Status::failed_precondition(message)
            }
            Error::OtherAccount { .. } => Status::permission_denied(message),
            Error::Ambiguous(_) | Error::InvalidArgument(_) | Error::Manifest(_) => {
                Status::invalid_argument(message)
            }
            Error::DestinationExists(_) => Status::already_exists(message),
            Error::Cancelled => Status::cancelled(message),
            Error::Corrupt(_) => Status::data_loss(message),
            Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Status::not_found(message)
            }
            Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                Status::failed_precondition(message)
            }
            Error::Io { ref source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Status::permission_denied(message)
            }
            Error::Io { .. } => Status::internal(message),
            Error::Config(_)
            | Error::Bind(_)
            | Error::Local(_)
            | Error::Serve(_)
            | Error::Db(_)
            | Error::Sql(_) => Status::internal(message),
        }
    }
}

impl From<p2p_services::tls::TlsError> for Error {
    fn from(err: p2p_services::tls::TlsError) -> Self {
        Error::Config(err.to_string())
    }
}
