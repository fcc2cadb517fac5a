//! Prometheus metrics for operators: one process-wide registry, handles
//! that are cheap to clone and update (atomics), the tower layer that
//! [`crate::serve::GrpcServer`] puts around every server to count RPCs and
//! their latency by method and gRPC status, and a tiny HTTP endpoint that
//! serves `GET /metrics` in the Prometheus text format.
//!
//! Services register domain metrics by name; asking twice for the same name
//! and labels returns the same series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Latency buckets in seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Default)]
struct HistogramData {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

enum Series {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicI64>),
    Histogram(Arc<HistogramData>),
}

struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<String, Series>,
}

#[derive(Default)]
struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_labels(labels: &[(&str, &str)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn series<T>(
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: &[(&str, &str)],
    make: impl FnOnce() -> Series,
    pick: impl Fn(&Series) -> Option<T>,
) -> T {
    let mut families = registry()
        .families
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let family = families.entry(name).or_insert_with(|| Family {
        help,
        kind,
        series: BTreeMap::new(),
    });
    assert!(
        family.kind == kind,
        "metric {name} registered with two kinds"
    );
    let entry = family
        .series
        .entry(render_labels(labels))
        .or_insert_with(make);
    pick(entry).unwrap_or_else(|| unreachable!("metric {name} kind checked above"))
}

/// A monotonically increasing count.
#[derive(Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution of observations (seconds, by default buckets).
#[derive(Clone)]
pub struct Histogram(Arc<HistogramData>);

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, value: f64) {
        for (bound, bucket) in BUCKETS.iter().zip(&self.0.buckets) {
            if value <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0
            .sum_micros
            .fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }
    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }
}

/// The counter `name` with `labels`, registered on first use.
pub fn counter(name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Counter {
    series(
        name,
        help,
        Kind::Counter,
        labels,
        || Series::Counter(Arc::default()),
        |s| match s {
            Series::Counter(c) => Some(Counter(c.clone())),
            _ => None,
        },
    )
}

/// The gauge `name` with `labels`, registered on first use.
pub fn gauge(name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Gauge {
    series(
        name,
        help,
        Kind::Gauge,
        labels,
        || Series::Gauge(Arc::default()),
        |s| match s {
            Series::Gauge(g) => Some(Gauge(g.clone())),
            _ => None,
        },
    )
}

/// The histogram `name` with `labels`, registered on first use.
pub fn histogram(name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Histogram {
    series(
        name,
        help,
        Kind::Histogram,
        labels,
        || {
            Series::Histogram(Arc::new(HistogramData {
                buckets: BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
                ..Default::default()
            }))
        },
        |s| match s {
            Series::Histogram(h) => Some(Histogram(h.clone())),
            _ => None,
        },
    )
}

fn with_label(labels: &str, extra: &str) -> String {
    match (labels.is_empty(), extra.is_empty()) {
        (true, true) => String::new(),
        (true, false) => format!("{{{extra}}}"),
        (false, true) => format!("{{{labels}}}"),
        (false, false) => format!("{{{labels},{extra}}}"),
    }
}

/// Every registered metric in the Prometheus text exposition format.
pub fn render() -> String {
    let families = registry()
        .families
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    for (name, family) in families.iter() {
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {name} {}", family.help);
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, series) in &family.series {
            match series {
                Series::Counter(c) => {
                    let _ = writeln!(
                        out,
                        "{name}{} {}",
                        with_label(labels, ""),
                        c.load(Ordering::Relaxed)
                    );
                }
                Series::Gauge(g) => {
                    let _ = writeln!(
                        out,
                        "{name}{} {}",
                        with_label(labels, ""),
                        g.load(Ordering::Relaxed)
                    );
                }
                Series::Histogram(h) => {
                    for (bound, bucket) in BUCKETS.iter().zip(&h.buckets) {
                        let le = format!("le=\"{bound}\"");
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {}",
                            with_label(labels, &le),
                            bucket.load(Ordering::Relaxed)
                        );
                    }
                    let count = h.count.load(Ordering::Relaxed);
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {count}",
                        with_label(labels, "le=\"+Inf\"")
                    );
                    let _ = writeln!(
                        out,
                        "{name}_sum{} {}",
                        with_label(labels, ""),
                        h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
                    );
                    let _ = writeln!(out, "{name}_count{} {count}", with_label(labels, ""));
                }
            }
        }
    }
    out
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves. Each
/// connection gets one request and a bounded time to send it.
pub async fn serve<F>(listener: TcpListener, shutdown: F)
where
    F: Future<Output = ()> + Send,
{
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else { continue };
                if connections.len() > 64 {
                    continue;
                }
                connections.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), answer(&mut stream)).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

async fn answer(stream: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut read = 0;
    while read < buf.len() {
        let n = stream.read(&mut buf[read..]).await?;
        if n == 0 {
            break;
        }
        read += n;
        if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let request = String::from_utf8_lossy(&buf[..read]);
    let (status, body) = if request.starts_with("GET /metrics ") || request.starts_with("GET / ") {
        ("200 OK", render())
    } else {
        ("404 Not Found", "try GET /metrics\n".to_string())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds `addr` and serves metrics there in a task owned by the returned
/// handle (dropping it stops the server). An empty `addr` disables metrics.
pub async fn spawn(
    addr: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<MetricsServer>, crate::listen::BindError> {
    if addr.trim().is_empty() {
        return Ok(None);
    }
    let listener = crate::listen::bind(addr).await?;
    let local = listener.local_addr().ok();
    let task = tokio::spawn(serve(listener, shutdown));
    Ok(Some(MetricsServer { task, local }))
}

/// A running metrics endpoint; aborts its task when dropped.
pub struct MetricsServer {
    task: tokio::task::JoinHandle<()>,
    local: Option<std::net::SocketAddr>,
}

impl MetricsServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.local
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The tower layer that counts every RPC by method and gRPC status and
/// records its latency (time to response headers, and stream end).
#[derive(Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body + Unpin,
{
    type Response = http::Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_string();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let header_status = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok(response.map(|body| MetricsBody {
                body,
                method,
                started,
                status: header_status,
                done: false,
            }))
        })
    }
}

/// A response body that records the RPC's status when it ends.
pub struct MetricsBody<B> {
    body: B,
    method: String,
    started: Instant,
    status: Option<String>,
    done: bool,
}

fn code_name(code: &str) -> &'static str {
    match code.parse::<i32>().map(tonic::Code::from) {
        Ok(tonic::Code::Ok) => "OK",
        Ok(tonic::Code::Cancelled) => "Cancelled",
        Ok(tonic::Code::InvalidArgument) => "InvalidArgument",
        Ok(tonic::Code::DeadlineExceeded) => "DeadlineExceeded",
        Ok(tonic::Code::NotFound) => "NotFound",
        Ok(tonic::Code::AlreadyExists) => "AlreadyExists",
        Ok(tonic::Code::PermissionDenied) => "PermissionDenied",
        Ok(tonic::Code::ResourceExhausted) => "ResourceExhausted",
        Ok(tonic::Code::FailedPrecondition) => "FailedPrecondition",
        Ok(tonic::Code::Aborted) => "Aborted",
        Ok(tonic::Code::OutOfRange) => "OutOfRange",
        Ok(tonic::Code::Unimplemented) => "Unimplemented",
        Ok(tonic::Code::Internal) => "Internal",
        Ok(tonic::Code::Unavailable) => "Unavailable",
        Ok(tonic::Code::DataLoss) => "DataLoss",
        Ok(tonic::Code::Unauthenticated) => "Unauthenticated",
        _ => "Unknown",
    }
}

impl<B> MetricsBody<B> {
    fn finish(&mut self, status: Option<&str>) {
        if self.done {
            return;
        }
        self.done = true;
        let code = code_name(status.or(self.status.as_deref()).unwrap_or("2"));
        counter(
            "p2p_rpc_requests_total",
            "gRPC calls handled, by method and status code",
            &[("method", &self.method), ("code", code)],
        )
        .inc();
        histogram(
            "p2p_rpc_duration_seconds",
            "gRPC call duration until the response ended, by method",
            &[("method", &self.method)],
        )
        .observe_duration(self.started.elapsed());
    }
}

impl<B> Drop for MetricsBody<B> {
    fn drop(&mut self) {
        // A body dropped before its end is a call the client abandoned.
        if !self.done {
            self.finish(Some("1"));
        }
    }
}

impl<B> http_body::Body for MetricsBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let status = trailers
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    self.finish(status.as_deref());
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Some("13")),
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_and_labels_share_a_series() {
        let a = counter("test_things_total", "things", &[("kind", "a")]);
        let b = counter("test_things_total", "things", &[("kind", "a")]);
        a.inc();
        b.inc_by(2);
        assert_eq!(a.get(), 3);
        let text = render();
        assert!(text.contains("# TYPE test_things_total counter"));
        assert!(text.contains("test_things_total{kind=\"a\"} 3"));
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = histogram("test_latency_seconds", "latency", &[]);
        h.observe(0.003);
        h.observe(2.0);
        let text = render();
        assert!(text.contains("test_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("test_latency_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("test_latency_seconds_count 2"));
    }
}
