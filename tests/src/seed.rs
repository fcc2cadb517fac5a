//! Fills a real index-svc with many entries quickly, for the tests and
//! benchmarks of a big network's listing: concurrent `PublishFile` calls
//! with tiny manifests (one chunk, a hash per entry, no holder), through
//! the same gRPC API agents use. Nothing is written to disk but the
//! index's own database.

use std::time::{Duration, Instant};

use futures::StreamExt;
use p2p_proto::index::v1 as pb;
use p2p_proto::index::v1::index_service_client::IndexServiceClient;
use p2p_services::client::with_bearer;
use tonic::Code;
use tonic::transport::Channel;

use crate::{Agent, AgentOptions, Cluster, USER_PASSWORD};

/// Calls in flight at once while seeding.
const IN_FLIGHT: usize = 32;

/// The manifest of entry `n` named `name`: `n + 1` bytes in one 64 KiB
/// chunk, with hashes derived from `n` and `salt` so every entry has its
/// own file id.
pub fn tiny_manifest(name: &str, n: u64, salt: u64) -> pb::Manifest {
    let seed = format!("{salt}:{n}");
    pb::Manifest {
        name: name.to_string(),
        size_bytes: n + 1,
        mime_type: "text/plain".into(),
        chunk_size_bytes: 64 * 1024,
        chunk_hashes: blake3::hash(format!("chunk {seed}").as_bytes())
            .as_bytes()
            .to_vec(),
        file_hash: blake3::hash(format!("file {seed}").as_bytes())
            .as_bytes()
            .to_vec(),
        ..Default::default()
    }
}

/// Publishes `count` entries named by `name(n)` as the user whose access
/// token is `token`, and returns how long it took. A call the index sheds
/// (RESOURCE_EXHAUSTED, UNAVAILABLE) is retried; any other error panics.
pub async fn publish_many(
    index: IndexServiceClient<Channel>,
    token: &str,
    count: u64,
    salt: u64,
    name: impl Fn(u64) -> String,
) -> Duration {
    let started = Instant::now();
    let calls = futures::stream::iter(0..count).map(|n| {
        let mut index = index.clone();
        let manifest = tiny_manifest(&name(n), n, salt);
        async move {
            loop {
                let request = with_bearer(
                    pb::PublishFileRequest {
                        manifest: Some(manifest.clone()),
                        peer_id: String::new(),
                    },
                    token,
                );
                match index.publish_file(request).await {
                    Ok(_) => return,
                    Err(s) if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(s) => panic!("publish {}: {s}", manifest.name),
                }
            }
        }
    });
    calls.buffer_unordered(IN_FLIGHT).collect::<Vec<()>>().await;
    started.elapsed()
}

/// Two publishers for a listing: `alice`, logged in on an agent (the
/// viewer), and `bob`, with no agent; the agent and both access tokens.
pub struct Publishers {
    /// alice's agent.
    pub agent: Agent,
    /// alice's access token.
    pub alice: String,
    /// bob's access token.
    pub bob: String,
}

impl Publishers {
    /// Makes both users on `cluster` and starts alice's agent.
    pub async fn start(cluster: &Cluster) -> Self {
        let agent = cluster
            .add_user_agent("alice", AgentOptions::default())
            .await;
        cluster.create_user("bob", false).await;
        Self {
            agent,
            alice: cluster.access_token("alice", USER_PASSWORD).await,
            bob: cluster.access_token("bob", USER_PASSWORD).await,
        }
    }
}
