//! The agent's one client for index-svc: every replica named by
//! `--index-url` (a comma-separated list), one of them preferred.
//!
//! Each agent starts on a random replica, so a LAN's agents spread over
//! them, and stays there while it answers (its calls then reach the
//! database in the order it made them). A call that fails for transport
//! reasons (UNAVAILABLE, DEADLINE_EXCEEDED) or is shed
//! (RESOURCE_EXHAUSTED with `retry-after`) marks that replica as failed
//! for [`FAILED_FOR`] (or the hinted delay) and is tried once on each other
//! replica at once, so a stopped replica is left within one call and no
//! caller (a download, the heartbeat) sees it fail while another answers.
//! Every attempt has a deadline; with several replicas it is
//! [`ATTEMPT_TIMEOUT`], so a replica that hangs is left within seconds.
//! Only RPCs that are safe to repeat go through here (all of the index's
//! are: registration, heartbeats, holdings and publishing are idempotent).

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use p2p_proto::index::v1::index_service_client::IndexServiceClient;
use p2p_services::client::MAX_MESSAGE_BYTES;
use p2p_services::tls::ClientTls;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::error::{Error, is_transport_failure};

/// How long a replica that failed a call is passed over.
pub const FAILED_FOR: Duration = Duration::from_secs(5);
/// Deadline of one attempt when other replicas could answer instead.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of one attempt on the only replica.
pub const SOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Splits a `--index-url` value into its replicas' URLs.
pub fn parse_urls(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

#[derive(Debug)]
struct Replica {
    url: String,
    channel: Channel,
    failed_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn usable(&self, now: Instant) -> bool {
        self.failed_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|until| now >= until)
    }

    fn fail_for(&self, wait: Duration) {
        *self.failed_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + wait);
    }

    fn recovered(&self) {
        *self.failed_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Calls to index-svc, spread over its replicas; see the module doc.
#[derive(Debug)]
pub struct IndexClient {
    replicas: Vec<Replica>,
    preferred: AtomicUsize,
}

/// Whether another replica should be asked after `status`, and for how
/// long the one that answered it is passed over.
fn failover(status: &Status) -> Option<Duration> {
    if is_transport_failure(status) {
        return Some(FAILED_FOR);
    }
    if status.code() == Code::ResourceExhausted {
        // Only a refusal for load carries the hint; "page too large" does
        // not and would fail the same way everywhere.
        return p2p_services::admission::retry_after(status);
    }
    None
}

impl IndexClient {
    /// A client for the replicas in `urls` (a `--index-url` value), each
    /// verified with `tls`. Connections are made on first use.
    pub fn new(urls: &str, tls: &ClientTls) -> Result<Self, Error> {
        let urls = parse_urls(urls);
        if urls.is_empty() {
            return Err(Error::Config(
                "--index-url names no index (give host:port, or several separated by commas)"
                    .into(),
            ));
        }
        let replicas = urls
            .into_iter()
            .map(|url| {
                let channel = p2p_services::client::channel(&url, tls).map_err(|e| {
                    Error::Config(format!("--index-url {url:?} is not a usable URL: {e}"))
                })?;
                Ok(Replica {
                    url,
                    channel,
                    failed_until: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let preferred = rand::random::<u32>() as usize % replicas.len();
        Ok(Self {
            replicas,
            preferred: AtomicUsize::new(preferred),
        })
    }

    /// The replicas' URLs, in `--index-url` order.
    pub fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.url.clone()).collect()
    }

    /// The URL calls go to first right now.
    pub fn preferred_url(&self) -> &str {
        &self.replicas[self.preferred.load(Ordering::Relaxed) % self.replicas.len()].url
    }

    fn client(replica: &Replica) -> IndexServiceClient<Channel> {
        IndexServiceClient::new(replica.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The order to try replicas in: the preferred one, then the others
    /// that have not failed lately, then those that have (a call is never
    /// refused only because every replica failed a moment ago).
    fn order(&self) -> Vec<usize> {
        let n = self.replicas.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let now = Instant::now();
        let ring: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        let (mut usable, failed): (Vec<usize>, Vec<usize>) = ring
            .into_iter()
            .partition(|&i| self.replicas[i].usable(now));
        usable.extend(failed);
        usable
    }

    /// Runs `call` on one replica after another until one answers with
    /// anything but a transport failure or a shed; returns the last
    /// answer. `call` is cloned for each attempt.
    pub async fn call<R, F, Fut>(&self, call: F) -> Result<tonic::Response<R>, Status>
    where
        F: FnOnce(IndexServiceClient<Channel>) -> Fut + Clone,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let timeout = if self.replicas.len() > 1 {
            ATTEMPT_TIMEOUT
        } else {
            SOLE_TIMEOUT
        };
        let mut last = Status::unavailable("no index replica was tried");
        for index in self.order() {
            let replica = &self.replicas[index];
            let attempt = call.clone();
            let result = tokio::time::timeout(timeout, attempt(Self::client(replica)))
                .await
                .unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "the index at {} did not answer within {timeout:?}",
                        replica.url
                    )))
                });
            match result {
                Ok(response) => {
                    replica.recovered();
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(status) => match failover(&status) {
                    Some(wait) if self.replicas.len() > 1 => {
                        tracing::debug!(replica = %replica.url, code = ?status.code(),
                            error = %status.message(), "index replica failed a call; trying another");
                        replica.fail_for(wait);
                        last = status;
                    }
                    _ => return Err(status),
                },
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_url_takes_a_list() {
        assert_eq!(
            parse_urls(" a:1, b:2 ,,c:3"),
            vec!["a:1".to_string(), "b:2".into(), "c:3".into()]
        );
        assert!(parse_urls(" , ").is_empty());
    }

    #[test]
    fn only_transport_failures_and_sheds_move_to_another_replica() {
        assert_eq!(
            failover(&Status::unavailable("connection refused")),
            Some(FAILED_FOR)
        );
        assert_eq!(failover(&Status::not_found("no file")), None);
        assert_eq!(
            failover(&Status::resource_exhausted("page too large")),
            None
        );
        let shed = p2p_services::admission::with_retry_after(
            Status::resource_exhausted("busy"),
            Duration::from_secs(2),
        );
        assert_eq!(failover(&shed), Some(Duration::from_secs(2)));
    }

    #[tokio::test]
    async fn a_failed_replica_is_tried_last() {
        let client =
            IndexClient::new("127.0.0.1:1,127.0.0.1:2", &ClientTls::Plaintext).expect("client");
        client.preferred.store(0, Ordering::Relaxed);
        assert_eq!(client.order(), vec![0, 1]);
        client.replicas[0].fail_for(FAILED_FOR);
        assert_eq!(client.order(), vec![1, 0]);
        client.replicas[0].recovered();
        assert_eq!(client.order(), vec![0, 1]);
    }
}
