//! Faults across real hosts of an emulated LAN (network namespaces on a
//! bridge, links shaped with tbf): a holder's cable pulled mid-download,
//! index-svc gone for a while, and an agent that sleeps (SIGSTOP) past its
//! lease and wakes up. Services run on host 0, each agent on its own host,
//! driven with the `p2p` CLI inside its namespace. Needs root; skipped with
//! the reason printed otherwise (never under CI=true). Every test ends with
//! the "nothing lost" audit.

use p2p_tests::AgentHandle as _;
use std::time::{Duration, Instant};

use p2p_proto::agent::v1::DownloadRequest;
use p2p_proto::index::v1::LocateSourcesRequest;
use p2p_services::client::with_bearer;
use p2p_tests::audit::{HonestAgent, assert_nothing_lost};
use p2p_tests::multihost::{HostAgent, MultiHost, cut, rate, restore, skip_reason};
use p2p_tests::{USER_PASSWORD, assert_same_content, eventually, random_file};
use tonic::Code;

/// Every link's rate, each way: slow enough that transfers take measurable
/// time, fast enough that the tests stay short.
const LINK_MBIT: u32 = 200;
/// index-svc flags for quick lease expiry.
const FAST_LEASES: &[&str] = &["--lease-ttl", "2s", "--heartbeat-interval", "500ms"];
/// How long index-svc stays down in the outage test.
const INDEX_OUTAGE: Duration = Duration::from_secs(12);
/// How long the sleeping agent stays stopped: well past the 2 s lease.
const SLEEP: Duration = Duration::from_secs(6);

macro_rules! skip_without_lan {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// Waits until `agent` holds at least `bytes` verified bytes of `file_id`.
async fn until_holding(agent: &HostAgent, file_id: &str, bytes: u64) {
    eventually(
        Duration::from_secs(60),
        "the download to make progress",
        || async {
            let file = agent.network_file(file_id).await?;
            (file.local_bytes >= bytes).then_some(())
        },
    )
    .await;
}

/// Whether the index offers `peer_id` as a source of `file_id` to `asker`.
async fn offered(mh: &MultiHost, token: &str, file_id: &str, asker: &str, peer_id: &str) -> bool {
    mh.index_client()
        .locate_sources(with_bearer(
            LocateSourcesRequest {
                file_id: file_id.into(),
                peer_id: asker.into(),
                limit: 64,
                ..Default::default()
            },
            token,
        ))
        .await
        .is_ok_and(|r| r.into_inner().sources.iter().any(|s| s.peer_id == peer_id))
}

async fn audit(mh: &MultiHost, token: &str, published: &[String], honest: &[&HostAgent]) {
    let mut views = Vec::new();
    for agent in honest {
        views.push(HonestAgent::of(*agent).await);
    }
    assert_nothing_lost(mh.index_client(), token, published, &views).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn download_finishes_when_a_holder_is_cut_off_and_the_holder_rejoins_when_restored() {
    skip_without_lan!();
    let mh = MultiHost::start(4, rate(LINK_MBIT), FAST_LEASES).await;
    let mut alice = mh.add_user_agent(1, "alice", &[]).await;
    let erin = mh.add_user_agent(2, "erin", &[]).await;
    let bob = mh.add_user_agent(3, "bob", &[]).await;
    let size = 48 * 1024 * 1024;
    let original = random_file(&mh.scratch_dir("input"), size, 71);
    let id = alice.share(&original).await;
    let copy = mh.scratch_dir("erin-input").join("same.bin");
    std::fs::copy(&original, &copy).unwrap();
    assert_eq!(erin.share(&copy).await, id);
    let token = mh.access_token("bob", USER_PASSWORD).await;
    let alice_id = alice.status().await.peer_id;

    let dest = mh.scratch_dir("out").join("copy.bin");
    let started = Instant::now();
    let (got, cut_at) = tokio::join!(bob.get(&id, &dest), async {
        until_holding(&bob, &id, size as u64 / 5).await;
        cut(alice.host());
        started.elapsed()
    });
    eprintln!(
        "holder cut after {cut_at:?}; download done after {:?}",
        started.elapsed()
    );
    assert_same_content(&original, &got);
    let have = bob.network_file(&id).await.expect("listed");
    assert_eq!(have.local_bytes, size as u64);

    eventually(
        Duration::from_secs(20),
        "the index to list the cut-off holder OFFLINE",
        || async { (mh.is_online(&token, &alice_id).await == Some(false)).then_some(()) },
    )
    .await;
    assert!(alice.is_running(), "the cut-off agent died");
    let status = alice.status().await;
    assert!(status.logged_in, "the cut-off agent lost its session");

    restore(alice.host());
    eventually(
        Duration::from_secs(45),
        "the restored holder to heartbeat and be listed ONLINE again",
        || async { (mh.is_online(&token, &alice_id).await == Some(true)).then_some(()) },
    )
    .await;
    let bob_id = bob.status().await.peer_id;
    eventually(
        Duration::from_secs(15),
        "the restored holder to be offered as a source again",
        || async {
            offered(&mh, &token, &id, &bob_id, &alice_id)
                .await
                .then_some(())
        },
    )
    .await;
    audit(&mh, &token, &[id], &[&alice, &erin, &bob]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sources_uploads_wait_in_its_hosts_bulk_band_unless_marking_is_off() {
    skip_without_lan!();
    let mh = MultiHost::start(4, rate(LINK_MBIT), &[]).await;
    let alice = mh.add_user_agent(1, "alice", &[]).await;
    let carol = mh
        .add_user_agent(2, "carol", &["--upload-dscp", "off"])
        .await;
    let bob = mh.add_user_agent(3, "bob", &[]).await;
    let size = 8 * 1024 * 1024;
    let from_alice = random_file(&mh.scratch_dir("alice-input"), size, 81);
    let from_carol = random_file(&mh.scratch_dir("carol-input"), size, 82);
    let alice_file = alice.share(&from_alice).await;
    let carol_file = carol.share(&from_carol).await;
    let bands = |agent: &HostAgent| {
        agent
            .host()
            .sent_by_band()
            .expect("read the host's queue")
            .expect("the host's queue has bands")
    };
    let (alice_before, carol_before, bob_before) = (bands(&alice), bands(&carol), bands(&bob));

    let out = mh.scratch_dir("out");
    assert_same_content(&from_alice, &bob.get(&alice_file, &out.join("a.bin")).await);
    assert_same_content(&from_carol, &bob.get(&carol_file, &out.join("c.bin")).await);

    let sent = |agent: &HostAgent, before: (u64, u64)| {
        let (first, bulk) = bands(agent);
        (first - before.0, bulk - before.1)
    };
    let (alice_first, alice_bulk) = sent(&alice, alice_before);
    let (carol_first, carol_bulk) = sent(&carol, carol_before);
    let (bob_first, bob_bulk) = sent(&bob, bob_before);
    eprintln!(
        "sent, first band / bulk band: alice {alice_first} / {alice_bulk}, \
         carol {carol_first} / {carol_bulk}, bob {bob_first} / {bob_bulk}"
    );
    // The chunks a marked source sends wait in the bulk band; what it
    // sends besides (heartbeats, holdings) does not.
    assert!(
        alice_bulk >= size as u64,
        "alice's uploads were not marked bulk"
    );
    assert!(
        alice_first < size as u64 / 4,
        "alice's uploads went in the first band"
    );
    // `--upload-dscp off`: every packet in the first band.
    assert!(carol_first >= size as u64, "carol's uploads were not sent");
    assert_eq!(carol_bulk, 0, "carol marked her uploads though told not to");
    // The downloader's requests and acknowledgements are never bulk (a
    // connection a peer opens to its own framed listener may be: a few
    // packets).
    assert!(
        bob_bulk < 4096 && bob_first > 16 * bob_bulk,
        "the downloader's requests and acknowledgements were marked bulk"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn index_outage_spares_running_downloads_and_new_ones_fail_clearly_until_it_returns() {
    skip_without_lan!();
    let mut mh = MultiHost::start(4, rate(LINK_MBIT), &[]).await;
    let alice = mh
        .add_user_agent(1, "alice", &["--max-upload-rate", "8MiB"])
        .await;
    let bob = mh.add_user_agent(2, "bob", &[]).await;
    let carol = mh.add_user_agent(3, "carol", &[]).await;
    let size = 24 * 1024 * 1024;
    let original = random_file(&mh.scratch_dir("input"), size, 72);
    let id = alice.share(&original).await;

    let bob_dest = mh.scratch_dir("out-b").join("copy.bin");
    let carol_dest = mh.scratch_dir("out-c").join("copy.bin");
    let carol_dest_arg = carol_dest.to_str().unwrap().to_string();
    let (got, outage_started) = tokio::join!(bob.get(&id, &bob_dest), async {
        until_holding(&bob, &id, 2 * 1024 * 1024).await;
        mh.stop_index();
        let outage_started = Instant::now();

        let refused = carol.p2p(&["get", &id, "-o", &carol_dest_arg]).await;
        assert!(
            !refused.success(),
            "a download started without the index: {refused}"
        );
        assert!(
            refused.stderr.contains("index service unreachable"),
            "the failure does not say the index is down: {refused}"
        );
        let status = carol
            .control()
            .download(DownloadRequest {
                file: id.clone(),
                destination: carol_dest_arg.clone(),
                force: false,
            })
            .await;
        let code = match status {
            Err(status) => status.code(),
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Err(status) => break status.code(),
                        Ok(Some(_)) => continue,
                        Ok(None) => panic!("a download finished without the index"),
                    }
                }
            }
        };
        assert_eq!(code, Code::Unavailable);
        outage_started
    });
    assert_same_content(&original, &got);
    assert!(
        outage_started.elapsed() < INDEX_OUTAGE,
        "the running download only finished after {:?}, past the outage",
        outage_started.elapsed()
    );
    assert!(!carol_dest.exists(), "a failed download left a file behind");

    // The outage lasts its full length, then the index comes back.
    tokio::time::sleep(INDEX_OUTAGE.saturating_sub(outage_started.elapsed())).await;
    mh.start_index().await;
    let got = carol.get(&id, &carol_dest).await;
    assert_same_content(&original, &got);

    let token = mh.access_token("carol", USER_PASSWORD).await;
    let bob_id = bob.status().await.peer_id;
    let carol_id = carol.status().await.peer_id;
    eventually(
        Duration::from_secs(30),
        "bob to re-announce the file it finished during the outage",
        || async {
            offered(&mh, &token, &id, &carol_id, &bob_id)
                .await
                .then_some(())
        },
    )
    .await;
    audit(&mh, &token, &[id], &[&alice, &bob, &carol]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_sleeps_past_its_lease_is_offered_again_after_waking() {
    skip_without_lan!();
    let mh = MultiHost::start(3, rate(LINK_MBIT), FAST_LEASES).await;
    let mut alice = mh.add_user_agent(1, "alice", &[]).await;
    let bob = mh.add_user_agent(2, "bob", &[]).await;
    let original = random_file(&mh.scratch_dir("input"), 4 * 1024 * 1024, 73);
    let id = alice.share(&original).await;
    let token = mh.access_token("bob", USER_PASSWORD).await;
    let alice_id = alice.status().await.peer_id;
    let bob_id = bob.status().await.peer_id;
    assert!(offered(&mh, &token, &id, &bob_id, &alice_id).await);

    let pid = alice.pid();
    alice.pause();
    let slept = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the sleeping agent to stop being offered",
        || async { (!offered(&mh, &token, &id, &bob_id, &alice_id).await).then_some(()) },
    )
    .await;
    assert_eq!(mh.is_online(&token, &alice_id).await, Some(false));
    tokio::time::sleep(SLEEP.saturating_sub(slept.elapsed())).await;

    alice.resume();
    eventually(
        Duration::from_secs(20),
        "the woken agent to be offered again",
        || async {
            offered(&mh, &token, &id, &bob_id, &alice_id)
                .await
                .then_some(())
        },
    )
    .await;
    assert_eq!(mh.is_online(&token, &alice_id).await, Some(true));
    assert!(alice.is_running());
    assert_eq!(alice.pid(), pid, "the agent was restarted, not woken");
    assert_eq!(
        alice.status().await.peer_id,
        alice_id,
        "the woken agent got a new identity"
    );

    let got = bob.get(&id, &mh.scratch_dir("out").join("copy.bin")).await;
    assert_same_content(&original, &got);
    audit(&mh, &token, &[id], &[&alice, &bob]).await;
}
