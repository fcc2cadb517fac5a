//! auth-svc's memory under a burst of logins: every login hashes with
//! Argon2id's 19 MiB of working memory, and auth-svc keeps at most one such
//! buffer per core however many logins arrive at once (agents restarting
//! together), instead of growing by 19 MiB for each login that ran at the
//! same time.

use p2p_tests::{ADMIN_PASSWORD, ADMIN_USER, Cluster, ClusterOptions};

/// Argon2id's working memory with the default parameters.
const HASH_MEMORY_BYTES: u64 = 19 << 20;
/// Logins sent at once.
const BURST: usize = 32;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/PID/status")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_logins_keeps_auth_svc_to_one_hash_buffer_per_core() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let pid = cluster
        .service_pids()
        .into_iter()
        .find_map(|(name, pid)| (name == "auth-svc").then_some(pid))
        .expect("auth-svc runs");
    // One login first, so the first buffers and caches are there.
    cluster.access_token(ADMIN_USER, ADMIN_PASSWORD).await;
    let before = rss_bytes(pid);
    for _ in 0..2 {
        let logins: Vec<_> = (0..BURST)
            .map(|_| {
                let client = cluster.auth_client();
                tokio::spawn(async move {
                    let mut client = client;
                    client
                        .login(p2p_proto::auth::v1::LoginRequest {
                            username: ADMIN_USER.into(),
                            password: ADMIN_PASSWORD.into(),
                        })
                        .await
                        .expect("login")
                })
            })
            .collect();
        for login in logins {
            login.await.expect("login task");
        }
    }
    let grown = rss_bytes(pid).saturating_sub(before);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    // One buffer per core at most, plus room for connections and caches;
    // one buffer per login in flight would be BURST x 19 MiB.
    let bound = cores * HASH_MEMORY_BYTES + (24 << 20);
    assert!(
        grown <= bound,
        "auth-svc grew by {} MiB over {BURST} logins at once (bound {} MiB for {cores} cores)",
        grown >> 20,
        bound >> 20
    );
}
