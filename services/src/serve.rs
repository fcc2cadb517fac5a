//! Serving a set of tonic services the same way in every binary: standard
//! `grpc.health.v1` health (each service reported by name, and the whole
//! server under ""), server reflection (v1 and v1alpha, so every grpcurl
//! version can `list` and `describe`; `list` shows the server's own
//! services, health and reflection), HTTP/2 windows sized for bulk chunk
//! transfer, TCP_NODELAY, TLS (unless the binary was told plaintext), and
//! graceful shutdown on the future passed in.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::client::{CONNECTION_WINDOW_BYTES, MAX_FRAME_BYTES, STREAM_WINDOW_BYTES};
use crate::dscp::Dscp;

/// Why a server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the descriptor set.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The listener has no local address.
    #[error("listener has no local address: {0}")]
    LocalAddr(#[source] std::io::Error),
    /// The TLS identity could not be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The services one binary exposes, built up with [`GrpcServer::add_service`] and
/// started with [`GrpcServer::serve`].
pub struct GrpcServer {
    routes: Routes,
    names: Vec<&'static str>,
    tls: Option<crate::tls::ServerTls>,
    beside: Vec<Beside>,
}

/// The TLS connections that negotiated another protocol than HTTP/2 by
/// ALPN: where a server hands them over.
pub type BesideSender =
    tokio::sync::mpsc::Sender<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// Another protocol served on the same TLS listener, chosen by ALPN.
#[derive(Clone)]
struct Beside {
    protocol: &'static [u8],
    connections: BesideSender,
    mark: Option<Dscp>,
}

impl Default for GrpcServer {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcServer {
    /// A server with no application services yet.
    pub fn new() -> Self {
        Self {
            routes: Routes::default(),
            names: Vec::new(),
            tls: None,
            beside: Vec::new(),
        }
    }

    /// Serves TLS with this identity; `None` serves plaintext h2c (only
    /// when the operator asked for it, or in an in-process test).
    pub fn tls(mut self, tls: Option<crate::tls::ServerTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Also offers `protocol` by ALPN on the TLS listener (preferred to
    /// HTTP/2 when a client offers both) and hands each connection that
    /// negotiates it to `connections`, whose owner serves it; when that
    /// channel is full or closed the connection is dropped. Without TLS
    /// there is no ALPN, and only gRPC is served. With `mark`, every packet
    /// the server sends on those connections carries that DSCP (an agent
    /// marks its uploads as bulk: [`Dscp::BULK`]).
    pub fn beside(
        mut self,
        protocol: &'static [u8],
        connections: BesideSender,
        mark: Option<Dscp>,
    ) -> Self {
        self.beside.push(Beside {
            protocol,
            connections,
            mark,
        });
        self
    }

    /// Adds a service; its name is reported as SERVING by health.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// Serves on `listener` until `shutdown` resolves, then drains in-flight
    /// calls and returns.
    pub async fn serve<F>(mut self, listener: TcpListener, shutdown: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send,
    {
        let addr: SocketAddr = listener.local_addr().map_err(ServeError::LocalAddr)?;
        let tls = self.tls.clone();
        let beside = std::mem::take(&mut self.beside);
        tracing::info!(%addr, services = ?self.names, tls = tls.is_some(), "serving gRPC");
        let (routes, shutdown) = self.with_standard_services(shutdown).await?;
        let router = tonic::transport::Server::builder()
            .layer(crate::metrics::RpcMetricsLayer)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .max_frame_size(Some(MAX_FRAME_BYTES))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_routes(routes);
        match tls {
            // Handshakes run in our own acceptor, so the identity can be
            // replaced while serving (`ServerTls::replace`).
            Some(tls) => {
                let protocols: Vec<&[u8]> = beside.iter().map(|b| b.protocol).collect();
                let (streams, accept) =
                    crate::tls::server::accept(listener, tls.acceptor_for(&protocols)?);
                let incoming = tokio_stream::StreamExt::filter_map(
                    tokio_stream::wrappers::ReceiverStream::new(streams),
                    move |accepted| hand_over(accepted, &beside),
                );
                let serve = router.serve_with_incoming_shutdown(incoming, shutdown);
                let (served, ()) = tokio::join!(serve, accept);
                served?;
            }
            None => {
                let incoming = TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(Duration::from_secs(60)));
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await?;
            }
        }
        tracing::info!(%addr, "server stopped");
        Ok(())
    }
}

/// Hands a connection that negotiated one of the `beside` protocols to
/// its owner; gives back the rest for gRPC.
fn hand_over(
    accepted: std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    beside: &[Beside],
) -> Option<std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    let stream = match accepted {
        Ok(stream) => stream,
        Err(err) => return Some(Err(err)),
    };
    let protocol = crate::tls::server::negotiated(&stream);
    let Some(to) = beside.iter().find(|b| Some(b.protocol) == protocol) else {
        return Some(Ok(stream));
    };
    if let Some(mark) = to.mark
        && let Err(err) = mark.mark(stream.get_ref().0)
    {
        tracing::debug!(%mark, %err, "cannot mark a connection; it is served unmarked");
    }
    if let Err(err) = to.connections.try_send(stream) {
        tracing::debug!(protocol = %String::from_utf8_lossy(to.protocol), %err, "dropping a connection: its server is busy or gone");
    }
    None
}

/// The services every server adds to its own: health and both versions
/// of reflection.
const STANDARD_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// A reflection builder that lists the server's own services (`names`)
/// and the standard ones, not every service in the descriptor set: a
/// grpcurl user takes `list` as what the server serves.
fn reflection(names: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    names.iter().chain(&STANDARD_SERVICES).fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(p2p_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
        |builder, name| builder.with_service_name(*name),
    )
}

impl GrpcServer {
    /// Serves on a Unix-domain socket (see [`crate::local::bind_private`])
    /// until `shutdown` resolves, with the same health and reflection as
    /// [`GrpcServer::serve`]; TCP tuning does not apply.
    pub async fn serve_unix<F>(self, listener: UnixListener, shutdown: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send,
    {
        // The listener's own address may be a staging name (see
        // `local::bind_private`); the caller logs the socket's real path.
        let names = self.names.clone();
        let (routes, shutdown) = self.with_standard_services(shutdown).await?;
        tracing::info!(services = ?names, "serving gRPC on a Unix socket");
        tonic::transport::Server::builder()
            .layer(crate::metrics::RpcMetricsLayer)
            .max_frame_size(Some(MAX_FRAME_BYTES))
            .add_routes(routes)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
            .await?;
        tracing::info!(services = ?names, "Unix socket server stopped");
        Ok(())
    }

    /// The application routes plus health (every service SERVING until
    /// `shutdown`, then NOT_SERVING) and reflection, and the shutdown
    /// future that flips health.
    async fn with_standard_services<F>(
        self,
        shutdown: F,
    ) -> Result<(Routes, impl Future<Output = ()> + Send), ServeError>
    where
        F: Future<Output = ()> + Send,
    {
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in &self.names {
            reporter
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        let reflection_v1 = reflection(&self.names).build_v1()?;
        let reflection_v1alpha = reflection(&self.names).build_v1alpha()?;
        let routes = self
            .routes
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let names = self.names;
        let shutdown = async move {
            shutdown.await;
            for name in &names {
                reporter
                    .set_service_status(*name, ServingStatus::NotServing)
                    .await;
            }
            reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
        };
        Ok((routes, shutdown))
    }
}

/// Servers run in-process by tests and benchmarks: each in a task owned by
/// its handle, on an ephemeral loopback port, stopped when the handle drops.
pub mod testing {
    use std::future::Future;
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    /// Binds `127.0.0.1:0` and returns the listener with its address.
    pub async fn ephemeral_listener() -> std::io::Result<(TcpListener, String)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        Ok((listener, addr))
    }

    /// A server running in a task; dropping the handle signals shutdown.
    pub struct SpawnedServer {
        /// Where it listens.
        pub addr: String,
        stop: Option<oneshot::Sender<()>>,
        task: Option<JoinHandle<()>>,
    }

    impl SpawnedServer {
        /// Runs `run(shutdown)` in a task; `shutdown` resolves when the
        /// handle is stopped or dropped.
        pub fn spawn<F>(
            addr: String,
            run: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
        ) -> Self
        where
            F: Future<Output = ()> + Send + 'static,
        {
            let (stop, stopped) = oneshot::channel::<()>();
            let shutdown = Box::pin(async move {
                let _ = stopped.await;
            });
            Self {
                addr,
                stop: Some(stop),
                task: Some(tokio::spawn(run(shutdown))),
            }
        }

        /// Signals shutdown and waits up to `wait` for the server to
        /// return. Errs when it does not stop in time or its task panicked.
        pub async fn stop(mut self, wait: Duration) -> Result<(), String> {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            match self.task.take() {
                Some(task) => match tokio::time::timeout(wait, task).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(err)) => Err(format!("server task failed: {err}")),
                    Err(_) => Err(format!("server did not stop within {wait:?}")),
                },
                None => Ok(()),
            }
        }
    }

    impl Drop for SpawnedServer {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}
