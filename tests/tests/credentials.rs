//! What a logged-in user running a modified agent can do with what other
//! agents send it, and what TLS stops. A rogue PeerService registered as a
//! holder records the credentials of the admin's agent downloading from it;
//! replaying them to auth-svc, index-svc or another peer must fail. Sources
//! whose certificate is not theirs are never fetched from.

use std::time::Duration;

use p2p_proto::auth::v1::CreateUserRequest;
use p2p_proto::index::v1::ListFilesRequest;
use p2p_proto::peer::v1::{ChunkRange, FetchChunksRequest};
use p2p_services::client::{with_bearer, with_peer_credentials};
use p2p_services::tls::ServerTls;
use p2p_services::tls::issue::Role as CertRole;
use p2p_tests::AgentHandle as _;
use p2p_tests::audit::{HonestAgent, assert_nothing_lost};
use p2p_tests::hostile::{HostilePeer, Misbehaviour};
use p2p_tests::{
    ADMIN_PASSWORD, ADMIN_USER, AgentOptions, Cluster, ClusterOptions, USER_PASSWORD,
    assert_same_content, random_file,
};
use tonic::Code;

const FILE_BYTES: usize = 4 * 1024 * 1024;
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The `aud` claim of a JWT, read without verifying it.
fn audience(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default()["aud"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_rogue_source_records_is_refused_everywhere_else() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    // A slow honest source, so the downloader also asks the rogue.
    let alice = cluster
        .add_user_agent("alice", AgentOptions::default().max_upload_rate("2MiB"))
        .await;
    let root = cluster.add_agent("root", AgentOptions::default()).await;
    root.login(ADMIN_USER, ADMIN_PASSWORD).await;
    let original = random_file(&cluster.scratch_dir("input"), FILE_BYTES, 81);
    let id = alice.share(&original).await;
    let content = std::fs::read(&original).expect("read the original");

    cluster.create_user("bob", false).await;
    let bob = cluster.access_token("bob", USER_PASSWORD).await;
    // Bob's rogue has a certificate from the operator for its address, as
    // any user's agent would: TLS alone does not stop it.
    let rogue = HostilePeer::start(
        Misbehaviour::Honest,
        content.clone(),
        cluster.index_client(),
        &bob,
        &id,
        Some(cluster.loopback_identity("bob-rogue")),
    )
    .await;
    // A registered source whose certificate the CA issued for another host.
    p2p_tests::issue_agent_cert(cluster.certs(), "elsewhere", &["10.99.0.1"]);
    let misnamed = HostilePeer::start(
        Misbehaviour::Honest,
        content.clone(),
        cluster.index_client(),
        &bob,
        &id,
        Some(
            ServerTls::from_files(
                &cluster.certs().cert("elsewhere"),
                &cluster.certs().key("elsewhere"),
            )
            .expect("read the misnamed certificate"),
        ),
    )
    .await;
    // And one whose certificate comes from a CA of its own.
    let foreign_dir = cluster.scratch_dir("foreign-ca");
    let foreign = p2p_services::tls::testing::make(
        &foreign_dir,
        &[("impostor", &["127.0.0.1"], CertRole::Agent)],
    )
    .expect("make a foreign CA");
    let impostor = HostilePeer::start(
        Misbehaviour::Honest,
        content,
        cluster.index_client(),
        &bob,
        &id,
        Some(
            ServerTls::from_files(&foreign.cert("impostor"), &foreign.key("impostor"))
                .expect("read the impostor's certificate"),
        ),
    )
    .await;

    let dest = cluster.scratch_dir("out").join("copy.bin");
    let got = tokio::time::timeout(DOWNLOAD_TIMEOUT, root.get(&id, &dest))
        .await
        .expect("the admin's download hung");
    assert_same_content(&original, &got);
    assert!(
        rogue.stats().requests() > 0,
        "the rogue was never asked, so the test proves nothing"
    );
    assert_eq!(
        misnamed.stats().requests(),
        0,
        "a source whose certificate names another host was fetched from"
    );
    assert_eq!(
        impostor.stats().requests(),
        0,
        "a source with a certificate from another CA was fetched from"
    );

    let recorded = rogue.stats().recorded_credentials();
    assert!(!recorded.is_empty(), "the rogue recorded nothing");
    let alice_id = alice.status().await.peer_id;
    for (token, proof) in &recorded {
        assert_eq!(
            audience(token),
            "p2p-peer",
            "the admin's agent sent a peer something other than a peer token"
        );
        let proof = proof.as_deref().expect("a peer proof beside the token");
        let refused = cluster
            .account_client()
            .create_user(with_bearer(
                CreateUserRequest {
                    username: "bob-the-admin".into(),
                    password: USER_PASSWORD.into(),
                    role: p2p_proto::auth::v1::Role::Admin as i32,
                },
                token,
            ))
            .await
            .expect_err("auth-svc accepted a replayed peer token");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        let refused = cluster
            .index_client()
            .list_files(with_bearer(ListFilesRequest::default(), token))
            .await
            .expect_err("index-svc accepted a replayed peer token");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        let fetch = FetchChunksRequest {
            file_id: id.clone(),
            ranges: vec![ChunkRange { start: 0, count: 1 }],
            ..Default::default()
        };
        let refused = cluster
            .peer_client(alice.peer_addr())
            .fetch_chunks(with_peer_credentials(fetch, token, proof))
            .await
            .expect_err("another peer accepted a replayed peer credential");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    // What an honest downloader sends alice works, so the refusals above
    // are about the replay, not the call.
    let fresh = cluster
        .peer_credentials("bob", USER_PASSWORD, &alice_id)
        .await;
    let mut stream = cluster
        .peer_client(alice.peer_addr())
        .fetch_chunks(fresh.request(FetchChunksRequest {
            file_id: id.clone(),
            ranges: vec![ChunkRange { start: 0, count: 1 }],
            ..Default::default()
        }))
        .await
        .expect("a fresh credential for alice is accepted")
        .into_inner();
    assert!(stream.message().await.expect("a chunk").is_some());
    let users = cluster
        .account_client()
        .list_users(with_bearer(
            p2p_proto::auth::v1::ListUsersRequest {},
            &cluster.access_token(ADMIN_USER, ADMIN_PASSWORD).await,
        ))
        .await
        .expect("list users")
        .into_inner()
        .users;
    assert!(
        users.iter().all(|u| u.username != "bob-the-admin"),
        "the replay made an account"
    );

    let admin = cluster.access_token(ADMIN_USER, ADMIN_PASSWORD).await;
    let honest = [HonestAgent::of(&alice).await, HonestAgent::of(&root).await];
    assert_nothing_lost(cluster.index_client(), &admin, &[id], &honest).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_access_token_sent_to_a_peer_service_is_told_which_credential_it_takes() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let original = random_file(&cluster.scratch_dir("input"), 64 * 1024, 63);
    let id = alice.share(&original).await;
    let access = cluster.access_token("alice", USER_PASSWORD).await;

    let refused = cluster
        .peer_client(alice.peer_addr())
        .fetch_chunks(with_bearer(
            FetchChunksRequest {
                file_id: id,
                ranges: vec![ChunkRange { start: 0, count: 1 }],
                ..Default::default()
            },
            &access,
        ))
        .await
        .expect_err("a PeerService accepted an access token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let message = refused.message();
    assert!(
        message.starts_with("wrong credential: this service takes a peer token"),
        "{message}"
    );
    assert!(message.contains("x-p2p-peer-proof"), "{message}");
    assert!(message.contains("not an access token"), "{message}");
    for leak in ["invalid", "JSON", "missing field", "cnf"] {
        assert!(!message.contains(leak), "{leak:?} in {message}");
    }
}
