//! Joining a real LAN, on an emulated one (real processes in network
//! namespaces, `p2p_tests::netns`): the servers set themselves up with
//! `--state-dir` and no certificate is made by hand; workstations join with
//! `p2p join` (an address and fingerprint, mDNS, or an invite with a join
//! token), a file moves between them, and a workstation whose address
//! changes keeps serving. Every wait is bounded.

use std::time::{Duration, Instant};

use p2p_proto::auth::v1 as auth_pb;
use p2p_proto::auth::v1::account_service_client::AccountServiceClient;
use p2p_proto::auth::v1::auth_service_client::AuthServiceClient;
use p2p_proto::auth::v1::enrollment_service_client::EnrollmentServiceClient;
use p2p_services::client::with_bearer;
use p2p_services::tls::ClientTls;
use p2p_tests::multihost::{AUTH_PORT, HostAgent, MultiHost, rate, skip_reason};
use p2p_tests::{
    ADMIN_PASSWORD, ADMIN_USER, AgentHandle, USER_PASSWORD, assert_same_content, eventually,
    random_file,
};
use tonic::Code;

macro_rules! skip_without_lan {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// Link rate of every host: fast enough for small files, still a LAN.
const LINK_MBIT: u32 = 200;

/// `p2p join` with a password, as a person types it.
async fn join_with_password(agent: &HostAgent, args: &[&str], user: &str) -> p2p_tests::CliOutput {
    let mut all = vec!["--json", "join"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--user", user, "--password-stdin"]);
    agent
        .p2p_with_stdin(&all, Some(&format!("{USER_PASSWORD}\n")))
        .await
}

/// An access token for `user` from auth-svc, asked from the services host.
async fn token(mh: &MultiHost, user: &str, password: &str) -> String {
    mh.access_token(user, password).await
}

/// An invite from the admin's point of view, made through auth-svc (as
/// `p2p invite --token-for USER` does), with `uses` and `ttl`.
async fn join_token(mh: &MultiHost, user: &str, uses: u32, ttl: Duration) -> String {
    let admin = token(mh, ADMIN_USER, ADMIN_PASSWORD).await;
    EnrollmentServiceClient::new(
        mh.auth_channel_from(0, &ClientTls::from_ca_file(&mh.certs().ca_cert()).unwrap()),
    )
    .create_join_token(with_bearer(
        auth_pb::CreateJoinTokenRequest {
            username: user.into(),
            uses,
            ttl_seconds: ttl.as_secs(),
            description: "test".into(),
        },
        &admin,
    ))
    .await
    .unwrap_or_else(|s| panic!("create a join token: {s}"))
    .into_inner()
    .secret
}

fn invite(mh: &MultiHost, token: Option<String>) -> String {
    p2p_services::invite::Invite {
        server: mh.lan().host(0).socket(AUTH_PORT),
        fingerprint: mh.ca_fingerprint(),
        token,
    }
    .encode()
}

#[tokio::test(flavor = "multi_thread")]
async fn workstations_join_by_address_by_mdns_and_by_invite_and_a_file_moves() {
    skip_without_lan!();
    let mh = MultiHost::start_self_setup(4, rate(LINK_MBIT)).await;
    for user in ["alice", "bob", "carol"] {
        mh.create_user(user).await;
    }
    let fingerprint = mh.ca_fingerprint();
    let server = mh.lan().host(0).addr.to_string();

    // By address and fingerprint, as the server printed it.
    let mut alice = mh.add_joining_agent(1, "alice", &[]);
    let joined =
        join_with_password(&alice, &[&server, "--fingerprint", &fingerprint], "alice").await;
    assert!(joined.success(), "join by address: {joined}");
    let report = joined.json();
    assert_eq!(report["ca_fingerprint"], fingerprint.as_str());
    assert_eq!(report["address"], mh.lan().host(1).addr.to_string());
    assert_eq!(report["agent_logged_in"], true, "{joined}");
    alice.wait_started().await;
    // A script that joins at every start (compose) changes nothing the
    // second time.
    let cert = std::fs::read(alice.data_dir().join("deployment/agent.pem")).unwrap();
    let again = alice
        .p2p_ok(&[
            "--json",
            "join",
            &server,
            "--fingerprint",
            &fingerprint,
            "--if-not-joined",
        ])
        .await;
    assert_eq!(again.json()["already_joined"], true, "{again}");
    assert_eq!(
        std::fs::read(alice.data_dir().join("deployment/agent.pem")).unwrap(),
        cert
    );

    // With no address at all: found by mDNS, trusted by the fingerprint.
    let mut bob = mh.add_joining_agent(2, "bob", &[]);
    let joined = join_with_password(
        &bob,
        &["--fingerprint", &fingerprint, "--browse", "4s"],
        "bob",
    )
    .await;
    assert!(joined.success(), "join by mDNS: {joined}");
    assert_eq!(joined.json()["address"], mh.lan().host(2).addr.to_string());
    bob.wait_started().await;

    // An unattended machine: an invite with a join token; the agent logs
    // in with its certificate, holding no password.
    let mut carol = mh.add_joining_agent(3, "carol", &[]);
    let secret = join_token(&mh, "carol", 1, Duration::from_secs(600)).await;
    let joined = carol
        .p2p(&["--json", "join", &invite(&mh, Some(secret))])
        .await;
    assert!(joined.success(), "join by invite: {joined}");
    carol.wait_started().await;
    let status = eventually(
        Duration::from_secs(30),
        "carol's agent to log in with its certificate",
        || async {
            let status = carol.status().await;
            (status.logged_in && !status.peer_id.is_empty()).then_some(status)
        },
    )
    .await;
    assert_eq!(status.user.expect("user").username, "carol");
    assert_eq!(
        status.advertise_addr,
        mh.lan().host(3).socket(p2p_tests::multihost::PEER_PORT)
    );

    let original = random_file(&mh.scratch_dir("input"), 6 * 1024 * 1024, 28);
    let id = alice.share(&original).await;
    for (agent, name) in [(&bob, "bob"), (&carol, "carol")] {
        let got = agent.get(&id, &mh.scratch_dir(name).join("copy.bin")).await;
        assert_same_content(&original, &got);
    }

    // A joined agent logs itself in with its certificate when it starts
    // again (a reboot), though it keeps no password...
    alice.restart().await;
    eventually(
        Duration::from_secs(30),
        "alice's agent to log in by itself after a restart",
        || async {
            let status = alice.status().await;
            (status.logged_in && status.user.is_some_and(|u| u.username == "alice")).then_some(())
        },
    )
    .await;
    // ...until its user logs out: then it stays out across restarts.
    alice.p2p_ok(&["logout"]).await;
    alice.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = alice.status().await;
    assert!(
        !status.logged_in,
        "logged in again after an explicit logout: {status:?}"
    );
    alice.login("alice", USER_PASSWORD).await;
    alice.restart().await;
    eventually(
        Duration::from_secs(30),
        "alice's agent to log in by itself after a login",
        || async { alice.status().await.logged_in.then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workstation_whose_address_changes_keeps_serving_within_30_s() {
    skip_without_lan!();
    let mut mh = MultiHost::start_self_setup(3, rate(LINK_MBIT)).await;
    mh.create_user("alice").await;
    mh.create_user("bob").await;
    let fingerprint = mh.ca_fingerprint();
    let server = mh.lan().host(0).addr.to_string();
    let mut alice = mh.add_joining_agent(1, "alice", &[]);
    let mut bob = mh.add_joining_agent(2, "bob", &[]);
    for (agent, name) in [(&alice, "alice"), (&bob, "bob")] {
        let joined =
            join_with_password(agent, &[&server, "--fingerprint", &fingerprint], name).await;
        assert!(joined.success(), "{name} joins: {joined}");
    }
    alice.wait_started().await;
    bob.wait_started().await;
    let original = random_file(&mh.scratch_dir("input"), 4 * 1024 * 1024, 29);
    let id = alice.share(&original).await;
    let old_peer = alice.status().await.peer_id;

    // A new DHCP lease: the old address is gone, a new one appears.
    let new_ip = std::net::Ipv4Addr::new(10, 77, mh.lan().host(1).addr.octets()[2], 201);
    mh.lan_mut()
        .host_mut(1)
        .change_address(new_ip)
        .unwrap_or_else(|e| panic!("change alice's address: {e}"));
    let changed = Instant::now();
    let new_addr = format!("{new_ip}:{}", p2p_tests::multihost::PEER_PORT);
    eventually(
        Duration::from_secs(30),
        "alice's agent to register at its new address",
        || async {
            let status = alice.status().await;
            (status.advertise_addr == new_addr && status.peer_id != old_peer).then_some(())
        },
    )
    .await;
    // Only alice holds the file: bob's download must reach her new
    // address, whose certificate names it.
    let got = bob.get(&id, &mh.scratch_dir("bob").join("copy.bin")).await;
    assert_same_content(&original, &got);
    let took = changed.elapsed();
    eprintln!("downloaded from the moved holder {took:?} after its address changed");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let status = alice.status().await;
    assert_eq!(
        status.cert_address,
        new_ip.to_string(),
        "the renewed certificate names the new address"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_fingerprints_spent_tokens_foreign_addresses_and_disabled_accounts_are_refused() {
    skip_without_lan!();
    let mh = MultiHost::start_self_setup(3, rate(LINK_MBIT)).await;
    mh.create_user("dave").await;
    let server = mh.lan().host(0).addr.to_string();
    let agent = mh.add_joining_agent(1, "dave", &[]);

    // Another CA's fingerprint: refused before anything is sent, naming
    // both fingerprints.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let refused = join_with_password(&agent, &[&server, "--fingerprint", &wrong], "dave").await;
    assert!(!refused.success(), "a wrong fingerprint: {refused}");
    let text = refused.to_string();
    assert!(
        text.contains(&wrong) && text.contains(&mh.ca_fingerprint()),
        "{text}"
    );
    assert!(!agent.data_dir().join("deployment/deployment.json").exists());

    // A join token works as many times as it was made for, and then never.
    let secret = join_token(&mh, "dave", 1, Duration::from_secs(600)).await;
    let first = agent
        .p2p(&["--json", "join", &invite(&mh, Some(secret.clone()))])
        .await;
    assert!(first.success(), "{first}");
    let again = agent
        .p2p(&["--json", "join", &invite(&mh, Some(secret))])
        .await;
    assert_eq!(again.code, Some(4), "a spent token: {again}");
    let expired = join_token(&mh, "dave", 5, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late = agent
        .p2p(&["--json", "join", &invite(&mh, Some(expired))])
        .await;
    assert_eq!(late.code, Some(4), "an expired token: {late}");

    // A request naming another address is never signed.
    let tls = ClientTls::from_ca_file(&mh.certs().ca_cert()).unwrap();
    let dave = token(&mh, "dave", USER_PASSWORD).await;
    let other = mh.lan().host(2).addr.to_string();
    let mut params = rcgen::CertificateParams::new(vec![other.clone()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let mut enroll = EnrollmentServiceClient::new(mh.auth_channel_from(1, &tls));
    let refused = enroll
        .issue_agent_certificate(with_bearer(
            auth_pb::IssueAgentCertificateRequest {
                csr_pem: csr,
                join_token: String::new(),
            },
            &dave,
        ))
        .await
        .expect_err("a request for another host's address");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains(&other), "{}", refused.message());

    // A disabled account's agent gets no new certificate and no peer token.
    let joined = p2p_tests::joined_state(agent.data_dir());
    let admin = token(&mh, ADMIN_USER, ADMIN_PASSWORD).await;
    AccountServiceClient::new(mh.auth_channel_from(0, &tls))
        .set_disabled(with_bearer(
            auth_pb::SetDisabledRequest {
                username: "dave".into(),
                disabled: true,
            },
            &admin,
        ))
        .await
        .expect("disable dave");
    let (key_pem, csr) = p2p_services::tls::issue::new_key_and_request().unwrap();
    drop(key_pem);
    let renewal = EnrollmentServiceClient::new(mh.auth_channel_from(1, &joined))
        .issue_agent_certificate(auth_pb::IssueAgentCertificateRequest {
            csr_pem: csr,
            join_token: String::new(),
        })
        .await
        .expect_err("renewal for a disabled account");
    assert_eq!(renewal.code(), Code::Unauthenticated, "{renewal:?}");
    let peer_token = AuthServiceClient::new(mh.auth_channel_from(1, &tls))
        .issue_peer_token(with_bearer(
            auth_pb::IssuePeerTokenRequest {
                agent_public_key: p2p_services::auth::AgentKey::generate().public_base64url(),
            },
            &dave,
        ))
        .await
        .expect_err("a peer token for a disabled account");
    assert!(
        matches!(
            peer_token.code(),
            Code::Unauthenticated | Code::PermissionDenied
        ),
        "{peer_token:?}"
    );
    let login = AuthServiceClient::new(mh.auth_channel_from(1, &joined))
        .login(auth_pb::LoginRequest::default())
        .await
        .expect_err("a certificate login for a disabled account");
    assert_eq!(login.code(), Code::Unauthenticated, "{login:?}");
}
