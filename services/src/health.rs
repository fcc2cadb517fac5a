//! The container health probe. Scratch images have no shell or curl, so each
//! binary offers a `healthcheck` subcommand that calls `grpc.health.v1`.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Asks the server at `addr` whether `service` (empty: the whole server) is
/// serving. Returns a message fit for a person on failure.
pub async fn probe(addr: &str, service: &str, tls: &crate::tls::ClientTls) -> Result<(), String> {
    let endpoint = crate::client::endpoint(addr, tls)
        .map_err(|e| format!("bad address {addr}: {e}"))?
        .timeout(Duration::from_secs(3));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| format!("health check failed: {}", s.message()))?;
    match response.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("{addr} reports {other:?}")),
    }
}
