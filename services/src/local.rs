//! Serving an API to this machine only, and reaching it: a Unix-domain
//! socket that only its owner may connect to ([`bind_private`],
//! [`connect_unix`]), and for the cases a socket cannot serve (another
//! network namespace, a container's published port) a random token kept in
//! a file only the owner can read ([`ControlToken`]), checked by one tower
//! wrapper ([`RequireToken`]) before any handler runs.
//!
//! Who can reach the API is decided by the file system: the socket is
//! created with mode 0600 inside a 0700 directory and only then moved to
//! its final name, so there is no moment when another user could connect;
//! the token file is written the same way.
//!
//! **Architecture Invariant:** a service served through this module never
//! sees an unauthenticated TCP call: [`RequireToken`] answers it first.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rand::RngCore;
use subtle::ConstantTimeEq;
use tokio::net::{UnixListener, UnixStream};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint};

/// Metadata key on the `Unauthenticated` status [`RequireToken`] answers
/// with, so a client can tell "bring the control token" apart from any
/// other unauthenticated answer. Its value is the hint given at
/// construction (for example the token file's path).
pub const TOKEN_REQUIRED_KEY: &str = "p2p-control-token-required";

/// Bytes of randomness in a [`random_secret`].
const SECRET_BYTES: usize = 32;

/// A fresh secret from the OS's generator: 32 random bytes as hex. The one
/// source of the control token, web session ids, CSRF tokens and the web
/// app's one-time links.
pub fn random_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Where a local API is: a Unix socket path or a TCP `host:port` (or URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A Unix-domain socket.
    Unix(PathBuf),
    /// `host:port`, `http://host:port` or `https://host:port`.
    Tcp(String),
}

impl Target {
    /// Parses `unix:/path`, a path (anything with a `/`, or ending in
    /// `.sock`), or a TCP address.
    pub fn parse(text: &str) -> Self {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            return Self::Unix(PathBuf::from(path));
        }
        let is_url = text.starts_with("http://") || text.starts_with("https://");
        if !is_url && (text.contains('/') || text.ends_with(".sock")) {
            return Self::Unix(PathBuf::from(text));
        }
        Self::Tcp(text.to_string())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "{}", path.display()),
            Self::Tcp(addr) => f.write_str(addr),
        }
    }
}

/// What went wrong making a private socket or token file.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A file system step failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Something that is not a socket is in the way; it is never removed.
    #[error(
        "{} exists and is not a socket; refusing to replace it (move it away, or choose another path)",
        .0.display()
    )]
    NotASocket(PathBuf),
    /// A live server already answers on the socket.
    #[error(
        "{} is in use by another running process (is another agent using this data dir?)",
        .0.display()
    )]
    InUse(PathBuf),
    /// The socket or token file did not end up private (a file system that
    /// ignores modes, or someone raced us).
    #[error("{} is not private after creating it (mode {mode:o}, owner uid {uid}); refusing to serve on it", path.display())]
    NotPrivate {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        uid: u32,
    },
}

fn io_error(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LocalError {
    let path = path.to_path_buf();
    move |source| LocalError::Io {
        context,
        path,
        source,
    }
}

/// A listening Unix socket that only this user can connect to. The socket
/// file is removed when this value (or the [`SocketFile`] taken from it)
/// drops, unless something else has replaced it meanwhile.
#[derive(Debug)]
pub struct PrivateSocket {
    /// The listener, for [`crate::serve::GrpcServer::serve_unix`].
    pub listener: UnixListener,
    /// The socket file's guard.
    pub file: SocketFile,
}

/// Removes a socket file on drop if it is still the one we bound.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds a Unix socket at `path` with mode 0600, owned by this process's
/// user. A stale socket file (nobody answers on it) is replaced; a live one
/// or anything that is not a socket is an error. The socket is bound inside
/// a fresh 0700 directory next to `path`, made 0600, then renamed into
/// place, so nobody else can connect at any point; the result is checked.
pub async fn bind_private(path: &Path) -> Result<PrivateSocket, LocalError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(LocalError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io_error("cannot remove the stale socket", path))?;
        }
        Ok(_) => return Err(LocalError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("cannot inspect", path)(e)),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".socket-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&parent)
        .map_err(io_error("cannot create a private directory in", &parent))?;
    let staged = staging.path().join("s");
    let listener = UnixListener::bind(&staged).map_err(io_error("cannot listen on", &staged))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error("cannot restrict", &staged))?;
    std::fs::rename(&staged, path).map_err(io_error("cannot move the socket to", path))?;
    let meta = check_private(path)?;
    Ok(PrivateSocket {
        listener,
        file: SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    })
}

/// Checks that `path` is owned by this user and has no group or other bits.
fn check_private(path: &Path) -> Result<std::fs::Metadata, LocalError> {
    let meta = std::fs::symlink_metadata(path).map_err(io_error("cannot inspect", path))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 || meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(LocalError::NotPrivate {
            path: path.to_path_buf(),
            mode,
            uid: meta.uid(),
        });
    }
    Ok(meta)
}

/// Connects to the Unix socket at `path` now, so a missing socket
/// (`NotFound`), another user's socket (`PermissionDenied`) or a dead one
/// (`ConnectionRefused`) is an `io::Error` of that kind. Later reconnects
/// go to the same path.
pub async fn connect_unix(path: &Path) -> Result<Channel, std::io::Error> {
    endpoint()
        .connect_with_connector(connector(path))
        .await
        .map_err(|e| innermost_io_error(&e))
}

/// A channel to the Unix socket at `path` that connects on its first call.
pub fn unix_channel(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(connector(path))
}

fn endpoint() -> Endpoint {
    // The URI is required by the API but unused: the connector picks the
    // socket.
    Endpoint::from_static("http://localhost").connect_timeout(Duration::from_secs(5))
}

fn connector(
    path: &Path,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<UnixStream>,
    Error = std::io::Error,
    Future = impl Future<Output = Result<TokioIo<UnixStream>, std::io::Error>> + Send,
> + Send
+ Clone
+ 'static {
    let path = Arc::new(path.to_path_buf());
    tower::service_fn(move |_: http::Uri| {
        let path = path.clone();
        async move { Ok(TokioIo::new(UnixStream::connect(&*path).await?)) }
    })
}

/// The `io::Error` at the bottom of a transport error's chain, keeping its
/// kind; other errors become `io::ErrorKind::Other` with the chain's text.
fn innermost_io_error(err: &(dyn std::error::Error + 'static)) -> std::io::Error {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut last = err.to_string();
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return std::io::Error::new(io.kind(), io.to_string());
        }
        last = e.to_string();
        current = e.source();
    }
    std::io::Error::other(last)
}

/// Asks the server on the Unix socket at `path` whether `service` (empty:
/// the whole server) is serving, like [`crate::health::probe`] for TCP.
pub async fn probe_unix(path: &Path, service: &str) -> Result<(), String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let channel = connect_unix(path)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest {
        service: service.to_string(),
    });
    let response = tokio::time::timeout(Duration::from_secs(3), check)
        .await
        .map_err(|_| format!("{} did not answer in time", path.display()))?
        .map_err(|s| format!("health check failed: {}", s.message()))?;
    match response.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("{} reports {other:?}", path.display())),
    }
}

/// A random secret that a TCP caller must present as `authorization:
/// Bearer <token>`. It proves the caller could read the token file, which
/// only the owner can.
#[derive(Clone)]
pub struct ControlToken(Arc<str>);

impl fmt::Debug for ControlToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ControlToken(..)")
    }
}

impl ControlToken {
    /// A fresh token, written to `path` (mode 0600, replacing an older
    /// token atomically).
    pub fn create(path: &Path) -> Result<Self, LocalError> {
        let token = random_secret();
        let staged = path.with_extension("token.new");
        match std::fs::remove_file(&staged) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("cannot remove", &staged)(e)),
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged)
            .map_err(io_error("cannot create", &staged))?;
        file.write_all(format!("{token}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error("cannot write", &staged))?;
        check_private(&staged)?;
        std::fs::rename(&staged, path).map_err(io_error("cannot move the token to", path))?;
        Ok(Self(token.into()))
    }

    /// Reads the token a server wrote to `path`.
    pub fn read(path: &Path) -> Result<Self, std::io::Error> {
        let text = std::fs::read_to_string(path)?;
        let token = text.trim();
        if token.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the token file is empty",
            ));
        }
        Ok(Self(token.into()))
    }

    /// The secret, for an `authorization: Bearer` header.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether an `authorization` header value carries this token,
    /// compared in constant time.
    fn admits(&self, header: Option<&http::HeaderValue>) -> bool {
        let Some(presented) = header
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
        else {
            return false;
        };
        same_secret(presented.trim(), &self.0)
    }
}

/// Whether a presented secret (a token, a CSRF token) equals the expected
/// one, compared in time that does not depend on where they differ.
pub fn same_secret(presented: &str, expected: &str) -> bool {
    presented.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// Wraps a tonic service so every call must carry the [`ControlToken`];
/// other calls get `Unauthenticated` with [`TOKEN_REQUIRED_KEY`] set and a
/// message that says where the token is, without reaching the service.
#[derive(Clone)]
pub struct RequireToken<S> {
    inner: S,
    token: ControlToken,
    hint: Arc<str>,
}

impl<S> RequireToken<S> {
    /// `hint` tells a refused caller where the token is (a file path).
    pub fn new(inner: S, token: ControlToken, hint: impl Into<String>) -> Self {
        Self {
            inner,
            token,
            hint: hint.into().into(),
        }
    }
}

impl<S: NamedService> NamedService for RequireToken<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for RequireToken<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !self
            .token
            .admits(request.headers().get(http::header::AUTHORIZATION))
        {
            tracing::debug!(path = %request.uri().path(), "refused a call without the control token");
            let mut status = Status::unauthenticated(format!(
                "this API needs its control token over TCP: send `authorization: Bearer <token>` \
                 with the token from {} (readable only by the user running the server), \
                 or use its Unix socket",
                self.hint
            ));
            if let Ok(value) = self.hint.parse() {
                status.metadata_mut().insert(TOKEN_REQUIRED_KEY, value);
            }
            return Box::pin(async move { Ok(status.into_http()) });
        }
        // The clone that was polled ready is the one that serves the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(request).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn targets_are_told_apart_by_their_shape() {
        assert_eq!(
            Target::parse("/run/p2p/control.sock"),
            Target::Unix("/run/p2p/control.sock".into())
        );
        assert_eq!(
            Target::parse("unix:/tmp/a.sock"),
            Target::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            Target::parse("unix:///tmp/a"),
            Target::Unix("/tmp/a".into())
        );
        assert_eq!(
            Target::parse("./p2p-data/control.sock"),
            Target::Unix("./p2p-data/control.sock".into())
        );
        assert_eq!(
            Target::parse("127.0.0.1:50054"),
            Target::Tcp("127.0.0.1:50054".into())
        );
        assert_eq!(
            Target::parse("http://agent:50054"),
            Target::Tcp("http://agent:50054".into())
        );
    }

    #[test]
    fn token_is_admitted_only_as_a_bearer_with_the_exact_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.token");
        let token = ControlToken::create(&path).unwrap();
        let read = ControlToken::read(&path).unwrap();
        assert_eq!(read.secret(), token.secret());
        let header = |v: &str| http::HeaderValue::from_str(v).unwrap();
        assert!(token.admits(Some(&header(&format!("Bearer {}", token.secret())))));
        assert!(!token.admits(Some(&header(token.secret()))));
        assert!(!token.admits(Some(&header("Bearer wrong"))));
        assert!(!token.admits(None));
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = ControlToken::create(&path).unwrap();
        assert_ne!(again.secret(), token.secret(), "a new token each time");
    }

    #[tokio::test]
    async fn socket_is_private_replaces_a_stale_one_and_refuses_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let socket = bind_private(&path).await.unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(
            matches!(bind_private(&path).await, Err(LocalError::InUse(_))),
            "a live socket must not be replaced"
        );
        // A stale socket: the file stays but nobody listens.
        let PrivateSocket { listener, file } = socket;
        drop(listener);
        std::mem::forget(file);
        let again = bind_private(&path).await.unwrap();
        drop(again);
        assert!(!path.exists(), "the socket is removed when dropped");

        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(
            bind_private(&path).await,
            Err(LocalError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".socket-"))
            .collect();
        assert!(leftovers.is_empty(), "staging directories are cleaned up");
    }
}
