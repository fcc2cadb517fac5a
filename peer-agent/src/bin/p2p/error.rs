//! What can go wrong in the `p2p` client, worded as what to do next, and
//! the one place that turns a gRPC status from the agent into such an error.

use tonic::Code;

/// A failed command. The `Display` text is what the user reads; the exit
/// code lets scripts tell the cases apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent's control port did not answer.
    #[error(
        "cannot reach the agent at {addr}: is peer-agent running? start it with `peer-agent` or set P2P_AGENT ({detail})"
    )]
    AgentUnreachable { addr: String, detail: String },
    /// The agent went away while a download was running (killed, crashed
    /// or restarted); its verified chunks are kept.
    #[error(
        "the agent stopped during the download of {file} ({detail}): start peer-agent again and run the same command; it resumes from the verified chunks"
    )]
    AgentStopped { file: String, detail: String },
    /// The agent's control socket does not exist.
    #[error(
        "cannot reach the agent: there is no control socket at {0}: is peer-agent running with this data dir? \
         start it with `peer-agent --data-dir DIR`, or point P2P_DATA_DIR (or --agent / P2P_AGENT) at it"
    )]
    NoAgentSocket(String),
    /// The socket or token file is another user's.
    #[error(
        "cannot reach the agent: permission denied on {0}: this agent belongs to another user; \
         run `p2p` as that user, or start your own peer-agent with its own --data-dir"
    )]
    AgentOfAnotherUser(String),
    /// The control token for a TCP agent could not be read.
    #[error(
        "cannot read the agent's control token {path}: {detail}; pass --agent-token-file \
         (P2P_AGENT_TOKEN_FILE) naming the agent's <data-dir>/control.token, or use its Unix socket"
    )]
    AgentToken { path: String, detail: String },
    /// The agent refused the call for want of its control token.
    #[error(
        "the agent refused the call: {0}; pass --agent-token-file (P2P_AGENT_TOKEN_FILE) or --data-dir"
    )]
    AgentTokenRefused(String),
    /// The agent has no session.
    #[error("not logged in: run `p2p login`")]
    NotLoggedIn,
    /// Wrong username or password.
    #[error("login failed: wrong username or password")]
    BadCredentials,
    /// No network file matches what the user typed.
    #[error("no file named {0}: run `p2p ls` to see the network's files")]
    NoSuchFile(String),
    /// A local path to share does not exist or is unreadable by the agent.
    #[error("cannot share {path}: {detail}")]
    NoSuchPath { path: String, detail: String },
    /// No account with that name.
    #[error("no user named {0}: run `p2p users ls`")]
    NoSuchUser(String),
    /// No join token with that id.
    #[error("no join token has id {0}: run `p2p join-tokens` to see their ids")]
    NoSuchJoinToken(String),
    /// The destination exists and `--force` was not given.
    #[error(
        "{0}: the destination already exists: pass --force to replace it, or -o to choose another"
    )]
    DestinationExists(String),
    /// The session's role does not allow the operation.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The request was malformed or ambiguous; the agent's message says how.
    #[error("{0}")]
    Invalid(String),
    /// Too many attempts; try again later.
    #[error("{0}: wait a minute and try again")]
    TooMany(String),
    /// The agent could not reach the index or auth service, or is shutting down.
    #[error("the agent cannot do that right now: {0}")]
    Unavailable(String),
    /// The download stream ended before the file was in place.
    #[error(
        "the download of {0} stopped before it finished: run `p2p get {0}` again to resume, or `p2p status` to see why"
    )]
    DownloadInterrupted(String),
    /// Reading a password or username from the terminal or stdin failed.
    #[error("cannot read the {what}: {source}")]
    Input {
        what: &'static str,
        source: std::io::Error,
    },
    /// Standard input had no password.
    #[error(
        "no password given: type it at the prompt, pipe it with --password-stdin, or set P2P_PASSWORD"
    )]
    NoPassword,
    /// A path cannot be made absolute.
    #[error("cannot resolve the path {path}: {source}")]
    Path {
        path: String,
        source: std::io::Error,
    },
    /// auth-svc refused the credential given to `p2p join`.
    #[error("the server refused to join this machine: {0}")]
    JoinRefused(String),
    /// Anything else the agent reported.
    #[error("the agent reported an error ({code:?}): {message}")]
    Agent { code: Code, message: String },
}

impl Error {
    /// The process exit code for this error (see `p2p --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::AgentUnreachable { .. }
            | Error::AgentStopped { .. }
            | Error::NoAgentSocket(_)
            | Error::AgentOfAnotherUser(_)
            | Error::AgentToken { .. }
            | Error::AgentTokenRefused(_) => 3,
            Error::NotLoggedIn | Error::BadCredentials | Error::JoinRefused(_) => 4,
            Error::NoSuchFile(_)
            | Error::NoSuchPath { .. }
            | Error::NoSuchUser(_)
            | Error::NoSuchJoinToken(_) => 5,
            Error::PermissionDenied(_) => 6,
            Error::DestinationExists(_) => 7,
            _ => 1,
        }
    }
}

/// What the command was about when the agent answered with an error, so
/// NotFound and friends can name the right thing.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// Nothing in particular (status, ls, peers, logout).
    General,
    /// Logging in.
    Login,
    /// A network file named or identified by the user.
    File(&'a str),
    /// A download to a destination (the str is the file).
    Download(&'a str),
    /// A local path to share.
    Path(&'a str),
    /// An account.
    User(&'a str),
    /// A join token, by its id.
    JoinToken(&'a str),
}

/// Metadata the agent sets on a NotFound about a network file (the agent's
/// `error::MISSING_KEY` and `MISSING_NETWORK_FILE`).
const MISSING_KEY: &str = "p2p-missing";
const MISSING_NETWORK_FILE: &str = "network-file";

/// Whether a status was made on this side because the connection to the
/// agent broke (tonic keeps the transport error as its source), rather
/// than sent by the agent.
pub fn is_broken_connection(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    status.source().is_some()
        && matches!(
            status.code(),
            Code::Unknown | Code::Unavailable | Code::Internal | Code::Cancelled
        )
}

/// Explains a status from the agent in terms of what the user asked for.
pub fn explain(status: tonic::Status, subject: Subject<'_>) -> Error {
    let message = status.message().to_string();
    let unknown_file = status
        .metadata()
        .get(MISSING_KEY)
        .is_some_and(|v| v == MISSING_NETWORK_FILE);
    let mentions_session = {
        let m = message.to_ascii_lowercase();
        m.contains("log in") || m.contains("logged") || m.contains("login") || m.contains("session")
    };
    if status.code() == Code::Unauthenticated
        && status
            .metadata()
            .contains_key(p2p_services::local::TOKEN_REQUIRED_KEY)
    {
        return Error::AgentTokenRefused(message);
    }
    match (status.code(), subject) {
        (Code::Unauthenticated, Subject::Login) => Error::BadCredentials,
        (Code::Unauthenticated, _) => Error::NotLoggedIn,
        (Code::FailedPrecondition, _) if mentions_session => Error::NotLoggedIn,
        (Code::NotFound, Subject::File(name) | Subject::Download(name)) if unknown_file => {
            Error::NoSuchFile(name.to_string())
        }
        // Something else is missing (a held copy, a running download): the
        // agent's message says what.
        (Code::NotFound, Subject::File(_) | Subject::Download(_)) => Error::Invalid(message),
        (Code::NotFound, Subject::Path(path)) => Error::NoSuchPath {
            path: path.to_string(),
            detail: message,
        },
        (Code::NotFound, Subject::User(name)) => Error::NoSuchUser(name.to_string()),
        (Code::NotFound, Subject::JoinToken(id)) => Error::NoSuchJoinToken(id.to_string()),
        (Code::AlreadyExists, Subject::Download(_)) => Error::DestinationExists(message),
        (Code::PermissionDenied, Subject::Path(path)) => Error::NoSuchPath {
            path: path.to_string(),
            detail: message,
        },
        (Code::PermissionDenied, _) => Error::PermissionDenied(message),
        (Code::ResourceExhausted, _) => Error::TooMany(message),
        (Code::InvalidArgument | Code::AlreadyExists | Code::FailedPrecondition, _) => {
            Error::Invalid(message)
        }
        (Code::Unavailable, _) => Error::Unavailable(message),
        (code, _) => Error::Agent { code, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn unauthenticated_says_to_log_in() {
        let err = explain(Status::unauthenticated("no session"), Subject::General);
        assert_eq!(err.to_string(), "not logged in: run `p2p login`");
        assert_eq!(err.exit_code(), 4);
    }

    #[test]
    fn failed_precondition_about_the_session_says_to_log_in() {
        let err = explain(
            Status::failed_precondition("the agent is not logged in"),
            Subject::File("x"),
        );
        assert!(matches!(err, Error::NotLoggedIn));
    }

    #[test]
    fn other_failed_preconditions_keep_the_agents_words() {
        let err = explain(
            Status::failed_precondition("the last admin cannot be deleted"),
            Subject::User("admin"),
        );
        assert_eq!(err.to_string(), "the last admin cannot be deleted");
    }

    #[test]
    fn wrong_password_at_login_is_not_a_missing_session() {
        let err = explain(Status::unauthenticated("bad"), Subject::Login);
        assert!(matches!(err, Error::BadCredentials));
    }

    fn unknown_file(message: &str) -> Status {
        let mut status = Status::not_found(message);
        status
            .metadata_mut()
            .insert(MISSING_KEY, MISSING_NETWORK_FILE.parse().unwrap());
        status
    }

    #[test]
    fn a_missing_local_copy_is_not_a_missing_file() {
        let err = explain(
            Status::not_found("cannot open /d/a.iso: No such file or directory"),
            Subject::Download("a.iso"),
        );
        assert_eq!(
            err.to_string(),
            "cannot open /d/a.iso: No such file or directory"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn a_status_sent_by_the_agent_is_not_a_broken_connection() {
        assert!(!is_broken_connection(&Status::unknown("h2 protocol error")));
    }

    #[test]
    fn unknown_file_says_to_run_ls() {
        let err = explain(unknown_file("no such file"), Subject::File("a.iso"));
        assert_eq!(
            err.to_string(),
            "no file named a.iso: run `p2p ls` to see the network's files"
        );
        assert_eq!(err.exit_code(), 5);
    }

    #[test]
    fn existing_destination_says_to_force() {
        let err = explain(
            Status::already_exists("/tmp/a.iso exists"),
            Subject::Download("a.iso"),
        );
        assert!(err.to_string().contains("--force"));
        assert_eq!(err.exit_code(), 7);
    }

    #[test]
    fn a_refused_control_token_is_not_a_missing_login() {
        let mut status = Status::unauthenticated("this API needs its control token");
        status.metadata_mut().insert(
            p2p_services::local::TOKEN_REQUIRED_KEY,
            "/d/control.token".parse().unwrap(),
        );
        let err = explain(status, Subject::Login);
        assert!(matches!(err, Error::AgentTokenRefused(_)), "{err}");
        assert_eq!(err.exit_code(), 3);
    }

    #[test]
    fn another_users_socket_says_so() {
        let err = Error::AgentOfAnotherUser("/d/control.sock".into());
        assert!(
            err.to_string()
                .contains("this agent belongs to another user")
        );
        assert_eq!(err.exit_code(), 3);
    }

    #[test]
    fn unreachable_agent_says_how_to_start_it() {
        let err = Error::AgentUnreachable {
            addr: "127.0.0.1:50054".into(),
            detail: "connection refused".into(),
        };
        let text = err.to_string();
        assert!(
            text.starts_with("cannot reach the agent at 127.0.0.1:50054: is peer-agent running?")
        );
        assert!(text.contains("P2P_AGENT"));
        assert_eq!(err.exit_code(), 3);
    }
}
