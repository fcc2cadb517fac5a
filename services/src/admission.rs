//! Admission control: a bounded number of calls in flight, a bounded wait
//! for a slot, and load shed with `RESOURCE_EXHAUSTED` plus a `retry-after`
//! hint instead of a queue that grows for seconds.
//!
//! [`Admission`] wraps a tonic service the way [`crate::auth::RequireAuth`]
//! does. A call holds its slot until the handler returns its response; a
//! server stream (WatchFiles) gives the slot back once its headers are
//! sent, so long-lived streams never starve short calls. The `retry-after`
//! metadata (whole seconds) is the one hint every service sends when it
//! refuses for load; [`retry_after`] reads it on the client side.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::Status;
use tonic::body::Body;
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;

/// The metadata key of the retry hint, in whole seconds.
pub const RETRY_AFTER: &str = "retry-after";

/// `status` with a `retry-after` hint of `wait`, rounded up to whole
/// seconds (at least 1).
pub fn with_retry_after(mut status: Status, wait: Duration) -> Status {
    let secs = wait.as_millis().div_ceil(1000).max(1) as u64;
    status
        .metadata_mut()
        .insert(RETRY_AFTER, MetadataValue::from(secs));
    status
}

/// The `retry-after` hint of a refusal, when it carries one.
pub fn retry_after(status: &Status) -> Option<Duration> {
    status
        .metadata()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// How many calls may run at once and how long a call may wait for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls running at once.
    pub max_in_flight: usize,
    /// Longest a call waits for a slot before it is shed.
    pub max_wait: Duration,
    /// The hint sent with a shed call.
    pub retry_after: Duration,
}

/// Wraps a tonic service with [`Limits`]; see the module doc.
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    slots: Arc<Semaphore>,
    limits: Limits,
    service: &'static str,
    exempt: &'static [&'static str],
}

impl<S> Admission<S> {
    /// `inner` behind `limits`; `service` names it in metrics and logs.
    pub fn new(inner: S, limits: Limits, service: &'static str) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            limits,
            service,
            exempt: &[],
        }
    }

    /// Methods (full paths) that take no slot: calls the service answers
    /// from memory and bounds itself (a queue that refuses when full), so
    /// they never wait behind calls that need the database.
    pub fn with_exempt(mut self, exempt: &'static [&'static str]) -> Self {
        self.exempt = exempt;
        self
    }
}

impl<S: NamedService> NamedService for Admission<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Admission<S>
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
        // The clone that was polled ready is the one that serves the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let slots = self.slots.clone();
        let limits = self.limits;
        let service = self.service;
        let exempt = self.exempt.contains(&request.uri().path());
        Box::pin(async move {
            if exempt {
                return inner.call(request).await;
            }
            let permit = match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => tokio::time::timeout(limits.max_wait, slots.acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok),
            };
            let Some(_permit) = permit else {
                let method = request.uri().path().rsplit('/').next().unwrap_or("");
                crate::metrics::counter(
                    "p2p_calls_shed_total",
                    "Calls refused with RESOURCE_EXHAUSTED because every slot stayed busy.",
                    &[("service", service), ("method", method)],
                )
                .inc();
                tracing::debug!(path = %request.uri().path(), "call shed: at capacity");
                let status = with_retry_after(
                    Status::resource_exhausted(format!(
                        "{service} is at capacity ({} calls in flight); retry after the hinted delay",
                        limits.max_in_flight
                    )),
                    limits.retry_after,
                );
                return Ok(status.into_http());
            };
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_hint_rounds_up_to_whole_seconds() {
        let status = with_retry_after(
            Status::resource_exhausted("busy"),
            Duration::from_millis(1_200),
        );
        assert_eq!(retry_after(&status), Some(Duration::from_secs(2)));
        let status = with_retry_after(Status::resource_exhausted("busy"), Duration::ZERO);
        assert_eq!(retry_after(&status), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(&Status::resource_exhausted("busy")), None);
    }
}
