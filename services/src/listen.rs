//! Binding a TCP listen address (`--listen`, `METRICS_LISTEN`, ...) the
//! same way in every binary, with the one error that names the address.
//! Below both [`crate::serve`] and [`crate::metrics`], which bind through it.

use tokio::net::TcpListener;

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: &str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        addr: addr.to_string(),
        source,
    })
}

/// A listen address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source} (is another process using the port?)")]
pub struct BindError {
    /// The address as given.
    pub addr: String,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}
