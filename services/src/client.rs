//! Channels from one service to another, and the credential headers they
//! carry: the bearer token, and on the data path the peer proof
//! ([`PEER_PROOF_HEADER`]; what it proves is `crate::auth`'s business).
//! Every channel is TLS unless the caller's [`ClientTls`] says plaintext.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::tls::{ClientTls, TlsError};

/// The metadata key that carries the peer proof beside `authorization`.
pub const PEER_PROOF_HEADER: &str = "x-p2p-peer-proof";

/// HTTP/2 flow-control windows for every channel and server: large enough
/// that one stream can fill a LAN link with multi-megabyte chunks in flight.
pub const STREAM_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// Connection-level HTTP/2 window.
pub const CONNECTION_WINDOW_BYTES: u32 = 64 * 1024 * 1024;
/// Largest HTTP/2 frame every server accepts. Channels keep h2's 16 KiB
/// default for what they receive: with 1 MiB frames a 256 KiB chunk came as
/// one DATA frame (h2 fell from 3.0 % to 2.1 % of a swarm's CPU samples,
/// CPU per GiB within the noise), but a peer flooding a holdings stream
/// then got up to 115 k small updates into our buffers before we hung up,
/// against at most 66 k with 16 KiB frames.
pub const MAX_FRAME_BYTES: u32 = 1024 * 1024;
/// Largest gRPC message any of our services accepts or sends: a 64 MiB chunk
/// plus framing, or a 100 GiB file's manifest.
pub const MAX_MESSAGE_BYTES: usize = 80 * 1024 * 1024;

/// A lazily connecting channel to `addr` (`host:port`, or a URL whose
/// scheme agrees with `tls`) with the project's HTTP/2 settings. With TLS
/// the server's certificate must be signed by the deployment's CA and name
/// the dialled host or IP address. The first RPC connects; a down server
/// surfaces as `Unavailable` on that RPC, never at construction.
pub fn channel(addr: &str, tls: &ClientTls) -> Result<Channel, TlsError> {
    Ok(endpoint(addr, tls)?.connect_lazy())
}

/// A lazily connecting channel like [`channel`] to `addr`, one address
/// (`ip:port`) that the DNS name `server_name` resolved to: it connects to
/// that address, and with TLS the certificate must name `server_name`.
pub fn channel_to_resolved(
    addr: &str,
    server_name: &str,
    tls: &ClientTls,
) -> Result<Channel, TlsError> {
    Ok(tuned(addr, tls, tls.config_for_name(server_name))?.connect_lazy())
}

/// The endpoint behind [`channel`], for callers that want to connect eagerly.
pub fn endpoint(addr: &str, tls: &ClientTls) -> Result<Endpoint, TlsError> {
    tuned(addr, tls, tls.config())
}

fn tuned(
    addr: &str,
    tls: &ClientTls,
    config: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Endpoint, TlsError> {
    let endpoint = Endpoint::from_shared(tls.url(addr)?)?;
    let endpoint = match config {
        Some(config) => endpoint.tls_config(config)?,
        None => endpoint,
    };
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES))
}

/// Wraps `message` in a request carrying `authorization: Bearer <token>`.
pub fn with_bearer<T>(message: T, access_token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = MetadataValue::try_from(format!("Bearer {access_token}")) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Wraps `message` in a FetchChunks-style request carrying a peer token
/// and the proof made for the source it goes to.
pub fn with_peer_credentials<T>(message: T, peer_token: &str, proof: &str) -> tonic::Request<T> {
    let mut request = with_bearer(message, peer_token);
    if let Ok(value) = MetadataValue::try_from(proof) {
        request.metadata_mut().insert(PEER_PROOF_HEADER, value);
    }
    request
}

/// Fills in `host` where an address list (`a:1,:2`) leaves it out (`:2`):
/// how auth-svc tells joining agents "the index is on my host".
pub fn fill_host(list: &str, host: &str) -> String {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| match entry.strip_prefix(':') {
            Some(port) => format!("{host}:{port}"),
            None => entry.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod fill_host_tests {
    #[test]
    fn an_empty_host_is_the_given_one() {
        assert_eq!(super::fill_host(":50052", "10.0.0.1"), "10.0.0.1:50052");
        assert_eq!(super::fill_host("idx1:1, :2", "srv"), "idx1:1,srv:2");
    }
}
