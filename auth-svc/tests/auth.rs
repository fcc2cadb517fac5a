//! auth-svc through the network: a real server on 127.0.0.1:0, the
//! generated clients, every case once on SQLite and once on PostgreSQL.

#[macro_use]
mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p2p_proto::auth::v1::{
    ChangePasswordRequest, CreateUserRequest, DeleteUserRequest, GetSigningKeysRequest,
    IssuePeerTokenRequest, ListUsersRequest, LogoutRequest, PeerToken, RefreshRequest,
    Role as PbRole, RotateSigningKeyRequest, SetDisabledRequest, SetRoleRequest, SigningKeys, User,
    WhoAmIRequest,
};
use p2p_services::auth::{
    AUDIENCE, AgentKey, Claims, ISSUER, PEER_PROOF_TTL, Role, TokenError, TokenVerifier,
};
use std::time::{Duration, Instant};

use p2p_proto::auth::v1::LoginRequest;
use p2p_services::client::with_bearer;
use p2p_services::time::now_ms;
use tonic::{Code, Status};

use auth_svc::store::{Store, StoredKey};
use auth_svc::tokens::{KeyPair, Signer};
use support::{ADMIN, ADMIN_PASSWORD, DEADLINE, TestDb, TestServer, assert_status, retry_after};

on_both_backends!(
    admin_bootstrap_creates_an_admin_who_can_log_in,
    created_user_logs_in_and_sees_itself,
    refresh_rotates_and_reuse_revokes_the_whole_login,
    logout_revokes_the_refresh_token_and_is_idempotent,
    user_calling_account_service_is_denied,
    calls_without_a_token_are_unauthenticated,
    token_signed_by_another_key_is_rejected,
    expired_token_is_rejected,
    alg_none_token_is_rejected,
    wrong_audience_or_issuer_is_rejected,
    restart_keeps_users_keys_and_sessions,
    disabled_user_cannot_refresh_log_in_or_ask_who_it_is,
    deleted_user_sessions_stop_working,
    weak_duplicate_and_bad_usernames_are_rejected_and_nothing_is_created,
    unknown_user_and_wrong_password_fail_alike,
    concurrent_correct_logins_of_one_account_all_succeed,
    guessing_from_one_host_does_not_lock_out_the_owner_on_another,
    spraying_many_accounts_from_one_host_is_slowed_for_that_host,
    repeated_failures_back_off_until_a_success_clears_them,
    unknown_usernames_are_throttled_like_real_ones,
    last_admin_cannot_be_deleted_demoted_or_disabled,
    changing_own_password_keeps_this_session_and_revokes_others,
    other_services_verify_tokens_with_the_published_keys,
    peer_token_verifies_only_with_a_proof_from_its_agent_key_for_this_peer,
    peer_token_lives_as_long_as_an_access_token,
    peer_token_is_refused_by_auth_svc_itself,
    peer_token_needs_an_access_token_and_a_usable_agent_key,
    disabled_or_deleted_user_gets_no_peer_token,
    rotation_signs_with_a_new_key_and_old_tokens_keep_verifying,
    only_admins_rotate_signing_keys,
    another_replica_signs_with_the_rotated_key_within_seconds,
    keys_retired_long_ago_stop_verifying_everywhere,
);

const ALICE_PASSWORD: &str = "alice-password";

async fn create_user(server: &TestServer, admin: &str, username: &str, password: &str) -> User {
    server
        .accounts()
        .create_user(with_bearer(
            CreateUserRequest {
                username: username.into(),
                password: password.into(),
                role: PbRole::Unspecified as i32,
            },
            admin,
        ))
        .await
        .unwrap_or_else(|s| panic!("create {username}: {s:?}"))
        .into_inner()
}

async fn who_am_i(server: &TestServer, access: &str) -> Result<User, Status> {
    server
        .auth()
        .who_am_i(with_bearer(WhoAmIRequest {}, access))
        .await
        .map(|r| r.into_inner())
}

async fn refresh(
    server: &TestServer,
    token: &str,
) -> Result<p2p_proto::auth::v1::TokenPair, Status> {
    server
        .auth()
        .refresh(RefreshRequest {
            refresh_token: token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// `IssuePeerToken` for the agent key `agent_public_key` (base64url).
async fn issue_peer_token_for(
    server: &TestServer,
    access: &str,
    agent_public_key: &str,
) -> Result<PeerToken, Status> {
    server
        .auth()
        .issue_peer_token(with_bearer(
            IssuePeerTokenRequest {
                agent_public_key: agent_public_key.into(),
            },
            access,
        ))
        .await
        .map(|r| r.into_inner())
}

/// `IssuePeerToken` for `agent`'s public key.
async fn issue_peer_token(
    server: &TestServer,
    access: &str,
    agent: &AgentKey,
) -> Result<PeerToken, Status> {
    issue_peer_token_for(server, access, &agent.public_base64url()).await
}

/// A proof from `agent` for fetching from `source_peer_id`, made now.
fn proof(agent: &AgentKey, source_peer_id: &str) -> String {
    agent.prove(source_peer_id, now_ms() / 1000, PEER_PROOF_TTL)
}

async fn rotate(server: &TestServer, access: &str) -> Result<SigningKeys, Status> {
    server
        .accounts()
        .rotate_signing_key(with_bearer(RotateSigningKeyRequest {}, access))
        .await
        .map(|r| r.into_inner())
}

/// The kids `GetSigningKeys` lists, in its order.
async fn published_kids(server: &TestServer) -> Vec<String> {
    let keys = server
        .auth()
        .get_signing_keys(GetSigningKeysRequest {})
        .await
        .expect("GetSigningKeys")
        .into_inner();
    keys.keys.into_iter().map(|k| k.kid).collect()
}

/// The `kid` header of a token.
fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("token header")
        .kid
        .expect("kid")
}

/// Polls `condition` until it holds, panicking after the test deadline.
async fn eventually<F, Fut>(what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// A signer holding the server's real private key, read from its database,
/// to mint tokens the server would sign except for one deliberate flaw.
async fn server_signer(db: &TestDb) -> Signer {
    let store = Store::open(&db.url).await.expect("open store");
    let keys = store.signing_keys().await.expect("keys");
    store.close().await;
    let newest = keys.first().expect("a signing key exists");
    Signer::new(KeyPair::from_der(&newest.kid, &newest.private_key_der).expect("key")).unwrap()
}

fn claims_for(user: &User, exp: i64) -> Claims {
    Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: user.id.clone(),
        name: user.username.clone(),
        role: Role::Admin,
        iat: now_ms() / 1000,
        exp,
        jti: "test".into(),
    }
}

async fn admin_bootstrap_creates_an_admin_who_can_log_in(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let pair = server.login(ADMIN, ADMIN_PASSWORD).await;
    let user = pair.user.expect("token pair names the user");
    assert_eq!(user.username, ADMIN);
    assert_eq!(user.role, PbRole::Admin as i32);
    assert!(pair.access_expires_at_ms > now_ms());
    assert!(pair.refresh_expires_at_ms > pair.access_expires_at_ms);
    let me = who_am_i(&server, &pair.access_token).await.unwrap();
    assert_eq!(me.id, user.id);
    let users = server
        .accounts()
        .list_users(with_bearer(ListUsersRequest {}, &pair.access_token))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(users.len(), 1);
    server.stop().await;
}

async fn created_user_logs_in_and_sees_itself(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    let created = create_user(&server, &admin, "alice", ALICE_PASSWORD).await;
    assert_eq!(created.role, PbRole::User as i32, "role defaults to user");
    assert!(!created.disabled);
    let pair = server.login("alice", ALICE_PASSWORD).await;
    let me = who_am_i(&server, &pair.access_token).await.unwrap();
    assert_eq!(me.username, "alice");
    assert_eq!(me.id, created.id);
    server.stop().await;
}

async fn refresh_rotates_and_reuse_revokes_the_whole_login(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let first = server.login(ADMIN, ADMIN_PASSWORD).await;
    let second = refresh(&server, &first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    who_am_i(&server, &second.access_token).await.unwrap();

    assert_status(
        refresh(&server, &first.refresh_token).await,
        Code::Unauthenticated,
        "already used",
    );
    // The reuse revoked the family, so the thief's or the owner's newer
    // token is dead too.
    assert_status(
        refresh(&server, &second.refresh_token).await,
        Code::Unauthenticated,
        "revoked",
    );
    // Another login is unaffected.
    let other = server.login(ADMIN, ADMIN_PASSWORD).await;
    refresh(&server, &other.refresh_token).await.unwrap();
    assert_status(
        refresh(&server, "not-a-token").await,
        Code::Unauthenticated,
        "unknown refresh token",
    );
    assert_status(refresh(&server, "").await, Code::InvalidArgument, "empty");
    server.stop().await;
}

async fn logout_revokes_the_refresh_token_and_is_idempotent(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let pair = server.login(ADMIN, ADMIN_PASSWORD).await;
    let logout = LogoutRequest {
        refresh_token: pair.refresh_token.clone(),
    };
    server.auth().logout(logout.clone()).await.unwrap();
    assert_status(
        refresh(&server, &pair.refresh_token).await,
        Code::Unauthenticated,
        "revoked",
    );
    server.auth().logout(logout).await.unwrap();
    server
        .auth()
        .logout(LogoutRequest {
            refresh_token: "never-issued".into(),
        })
        .await
        .unwrap();
    server.stop().await;
}

async fn user_calling_account_service_is_denied(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    create_user(&server, &admin, "alice", ALICE_PASSWORD).await;
    let alice = server.login("alice", ALICE_PASSWORD).await.access_token;
    let mut accounts = server.accounts();
    assert_status(
        accounts
            .create_user(with_bearer(
                CreateUserRequest {
                    username: "mallory".into(),
                    password: "mallory-password".into(),
                    role: PbRole::Admin as i32,
                },
                &alice,
            ))
            .await,
        Code::PermissionDenied,
        "admin role",
    );
    assert_status(
        accounts
            .list_users(with_bearer(ListUsersRequest {}, &alice))
            .await,
        Code::PermissionDenied,
        "admin role",
    );
    assert_status(
        accounts
            .set_role(with_bearer(
                SetRoleRequest {
                    username: "alice".into(),
                    role: PbRole::Admin as i32,
                },
                &alice,
            ))
            .await,
        Code::PermissionDenied,
        "admin role",
    );
    assert_status(
        accounts
            .change_password(with_bearer(
                ChangePasswordRequest {
                    username: ADMIN.into(),
                    old_password: String::new(),
                    new_password: "taken-over-now".into(),
                },
                &alice,
            ))
            .await,
        Code::PermissionDenied,
        "only an admin",
    );
    server.login(ADMIN, ADMIN_PASSWORD).await;
    server.stop().await;
}

async fn calls_without_a_token_are_unauthenticated(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    assert_status(
        server.auth().who_am_i(WhoAmIRequest {}).await,
        Code::Unauthenticated,
        "missing access token",
    );
    assert_status(
        server.accounts().list_users(ListUsersRequest {}).await,
        Code::Unauthenticated,
        "missing access token",
    );
    assert_status(
        who_am_i(&server, "garbage").await,
        Code::Unauthenticated,
        "invalid access token",
    );
    server.stop().await;
}

async fn token_signed_by_another_key_is_rejected(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let pair = server.login(ADMIN, ADMIN_PASSWORD).await;
    let admin = pair.user.expect("user");
    let exp = now_ms() / 1000 + 600;

    // A stranger's key under a kid nobody published.
    let stranger = Signer::new(KeyPair::generate()).unwrap();
    let forged = stranger.sign(&claims_for(&admin, exp)).unwrap();
    assert_status(
        who_am_i(&server, &forged).await,
        Code::Unauthenticated,
        "unknown key",
    );

    // A stranger's key claiming the server's kid: the signature fails.
    let real_kid = server_signer(&db).await.kid().to_string();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(real_kid);
    let der = KeyPair::generate().to_der().unwrap();
    let forged = jsonwebtoken::encode(
        &header,
        &claims_for(&admin, exp),
        &jsonwebtoken::EncodingKey::from_ed_der(&der),
    )
    .unwrap();
    assert_status(
        who_am_i(&server, &forged).await,
        Code::Unauthenticated,
        "invalid access token",
    );
    server.stop().await;
}

async fn expired_token_is_rejected(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server
        .login(ADMIN, ADMIN_PASSWORD)
        .await
        .user
        .expect("user");
    let signer = server_signer(&db).await;
    // Well past the verifier's leeway.
    let expired = signer
        .sign(&claims_for(&admin, now_ms() / 1000 - 300))
        .unwrap();
    assert_status(
        who_am_i(&server, &expired).await,
        Code::Unauthenticated,
        "expired",
    );
    let fresh = signer
        .sign(&claims_for(&admin, now_ms() / 1000 + 300))
        .unwrap();
    who_am_i(&server, &fresh).await.unwrap();
    server.stop().await;
}

async fn alg_none_token_is_rejected(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server
        .login(ADMIN, ADMIN_PASSWORD)
        .await
        .user
        .expect("user");
    let kid = server_signer(&db).await.kid().to_string();
    let header = serde_json::json!({ "alg": "none", "typ": "JWT", "kid": kid });
    let claims = claims_for(&admin, now_ms() / 1000 + 600);
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(serde_json::to_string(&claims).unwrap())
    );
    assert_status(
        who_am_i(&server, &unsigned).await,
        Code::Unauthenticated,
        "invalid access token",
    );
    // Also with HS256 (the classic key-confusion attempt).
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"public key bytes"),
    )
    .unwrap();
    assert_status(
        who_am_i(&server, &hs).await,
        Code::Unauthenticated,
        "not accepted",
    );
    server.stop().await;
}

async fn wrong_audience_or_issuer_is_rejected(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server
        .login(ADMIN, ADMIN_PASSWORD)
        .await
        .user
        .expect("user");
    let signer = server_signer(&db).await;
    let exp = now_ms() / 1000 + 600;
    let wrong_aud = Claims {
        aud: "some-other-system".into(),
        ..claims_for(&admin, exp)
    };
    assert_status(
        who_am_i(&server, &signer.sign(&wrong_aud).unwrap()).await,
        Code::Unauthenticated,
        "wrong credential: this service takes an access token",
    );
    let wrong_iss = Claims {
        iss: "someone-else".into(),
        ..claims_for(&admin, exp)
    };
    assert_status(
        who_am_i(&server, &signer.sign(&wrong_iss).unwrap()).await,
        Code::Unauthenticated,
        "invalid access token",
    );
    server.stop().await;
}

async fn restart_keeps_users_keys_and_sessions(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    create_user(&server, &admin, "alice", ALICE_PASSWORD).await;
    let alice = server.login("alice", ALICE_PASSWORD).await;
    let keys_before = server
        .auth()
        .get_signing_keys(GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    server.stop().await;

    // A different admin password on restart must not matter: the admin
    // exists already.
    let server = TestServer::start(&db, &["--admin-password", "another-password"]).await;
    let keys_after = server
        .auth()
        .get_signing_keys(GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys_before, keys_after);
    let me = who_am_i(&server, &alice.access_token).await.unwrap();
    assert_eq!(me.username, "alice");
    refresh(&server, &alice.refresh_token).await.unwrap();
    server.login("alice", ALICE_PASSWORD).await;
    server.login(ADMIN, ADMIN_PASSWORD).await;
    server.stop().await;
}

async fn disabled_user_cannot_refresh_log_in_or_ask_who_it_is(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    create_user(&server, &admin, "alice", ALICE_PASSWORD).await;
    let alice = server.login("alice", ALICE_PASSWORD).await;
    let set_disabled = |disabled| {
        with_bearer(
            SetDisabledRequest {
                username: "alice".into(),
                disabled,
            },
            &admin,
        )
    };
    let updated = server
        .accounts()
        .set_disabled(set_disabled(true))
        .await
        .unwrap()
        .into_inner();
    assert!(updated.disabled);
    assert_status(
        refresh(&server, &alice.refresh_token).await,
        Code::Unauthenticated,
        "log in again",
    );
    assert_status(
        who_am_i(&server, &alice.access_token).await,
        Code::Unauthenticated,
        "disabled or deleted",
    );
    assert_status(
        server.try_login("alice", ALICE_PASSWORD).await,
        Code::Unauthenticated,
        "disabled",
    );
    server
        .accounts()
        .set_disabled(set_disabled(false))
        .await
        .unwrap();
    server.login("alice", ALICE_PASSWORD).await;
    server.stop().await;
}

async fn deleted_user_sessions_stop_working(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    let created = create_user(&server, &admin, "alice", ALICE_PASSWORD).await;
    let alice = server.login("alice", ALICE_PASSWORD).await;
    server
        .accounts()
        .delete_user(with_bearer(
            DeleteUserRequest {
                user_id: created.id,
                username: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap();
    assert_status(
        refresh(&server, &alice.refresh_token).await,
        Code::Unauthenticated,
        "log in again",
    );
    assert_status(
        who_am_i(&server, &alice.access_token).await,
        Code::Unauthenticated,
        "disabled or deleted",
    );
    assert_status(
        server.try_login("alice", ALICE_PASSWORD).await,
        Code::Unauthenticated,
        "wrong username or password",
    );
    assert_status(
        server
            .accounts()
            .delete_user(with_bearer(
                DeleteUserRequest {
                    user_id: String::new(),
                    username: "alice".into(),
                },
                &admin,
            ))
            .await,
        Code::NotFound,
        "no such user",
    );
    server.stop().await;
}

async fn weak_duplicate_and_bad_usernames_are_rejected_and_nothing_is_created(db: TestDb) {
    let server = TestServer::start(&db, &["--min-password-length", "10"]).await;
    let admin = server.admin_token().await;
    let create = |username: &str, password: &str| {
        with_bearer(
            CreateUserRequest {
                username: username.into(),
                password: password.into(),
                role: PbRole::User as i32,
            },
            &admin,
        )
    };
    let mut accounts = server.accounts();
    assert_status(
        accounts.create_user(create("alice", "short")).await,
        Code::InvalidArgument,
        "at least 10 characters",
    );
    let too_long = "x".repeat(65);
    for bad in ["", too_long.as_str(), "bell\u{7}", "has space", "slash/y"] {
        assert_status(
            accounts
                .create_user(create(bad, "long-enough-password"))
                .await,
            Code::InvalidArgument,
            "username",
        );
    }
    assert_status(
        accounts
            .create_user(create(ADMIN, "long-enough-password"))
            .await,
        Code::AlreadyExists,
        "already exists",
    );
    let users = accounts
        .list_users(with_bearer(ListUsersRequest {}, &admin))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(users.len(), 1, "only the admin exists: {users:?}");
    assert_status(
        server.try_login("alice", "short").await,
        Code::Unauthenticated,
        "wrong username or password",
    );
    server.stop().await;
}

async fn unknown_user_and_wrong_password_fail_alike(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let unknown = server
        .try_login("nobody", "whatever-password")
        .await
        .unwrap_err();
    let wrong = server
        .try_login(ADMIN, "whatever-password")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(unknown.code(), wrong.code());
    assert_eq!(unknown.message(), wrong.message());
    server.stop().await;
}

/// Logs in from `host`, retrying while the answer is "wait" (with the
/// test deadline), and returns the first answer that is not.
async fn login_once_admitted(
    server: &TestServer,
    host: &str,
    username: &str,
    password: &str,
) -> Result<p2p_proto::auth::v1::TokenPair, Status> {
    let started = Instant::now();
    loop {
        match server.try_login_from(host, username, password).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    started.elapsed() < DEADLINE,
                    "still throttled after {DEADLINE:?}: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answer => return answer,
        }
    }
}

async fn concurrent_correct_logins_of_one_account_all_succeed(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    create_user(&server, &admin, "alice", ALICE_PASSWORD).await;
    // Someone else's failures change nothing for them either.
    for _ in 0..6 {
        let _ = server
            .try_login_from("127.0.0.9", "alice", "guess-guess")
            .await;
    }
    let mut logins = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let mut auth = server.auth();
        logins.spawn(async move {
            auth.login(LoginRequest {
                username: "alice".into(),
                password: ALICE_PASSWORD.into(),
            })
            .await
        });
    }
    let mut succeeded = 0;
    while let Some(login) = logins.join_next().await {
        login
            .expect("login task")
            .expect("a correct login succeeds");
        succeeded += 1;
    }
    assert_eq!(succeeded, 12);
    server.stop().await;
}

async fn guessing_from_one_host_does_not_lock_out_the_owner_on_another(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    create_user(&server, &admin, "alice", ALICE_PASSWORD).await;
    let mut refused = 0;
    for _ in 0..20 {
        match server
            .try_login_from("127.0.0.2", "alice", "guess-guess")
            .await
        {
            Err(s) if s.code() == Code::Unauthenticated => {}
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains("from this address for alice"), "{s:?}");
                refused += 1;
            }
            other => panic!("a guess got {other:?}"),
        }
    }
    assert!(refused > 0, "the guessing host was slowed down");
    let started = Instant::now();
    server
        .try_login_from("127.0.0.3", "alice", ALICE_PASSWORD)
        .await
        .expect("the owner on another host gets in");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "and at once ({:?})",
        started.elapsed()
    );
    server.stop().await;
}

async fn spraying_many_accounts_from_one_host_is_slowed_for_that_host(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    create_user(&server, &admin, "alice", ALICE_PASSWORD).await;
    let mut failures = 0;
    let mut refusal = None;
    for i in 0..60 {
        let user = format!("user{i}");
        match server
            .try_login_from("127.0.0.4", &user, "guess-guess")
            .await
        {
            Err(s) if s.code() == Code::Unauthenticated => failures += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                refusal = Some(s);
                break;
            }
            other => panic!("a guess got {other:?}"),
        }
    }
    let refusal = refusal.expect("the spraying host is refused at some point");
    assert!(
        failures > 20,
        "20 failures are free ({failures} before refusal)"
    );
    assert!(
        refusal
            .message()
            .starts_with("too many failed logins from this address; try again in "),
        "{refusal:?}"
    );
    assert!(retry_after(&refusal) >= 1);
    server
        .try_login_from("127.0.0.5", "alice", ALICE_PASSWORD)
        .await
        .expect("other hosts are unaffected");
    server.stop().await;
}

async fn repeated_failures_back_off_until_a_success_clears_them(db: TestDb) {
    const HOST: &str = "127.0.0.6";
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    create_user(&server, &admin, "alice", ALICE_PASSWORD).await;
    create_user(&server, &admin, "bob", "bob-password").await;
    for _ in 0..4 {
        assert_status(
            server.try_login_from(HOST, "alice", "guess-guess").await,
            Code::Unauthenticated,
            "wrong username or password",
        );
    }
    // Even the right password waits now, with a hint how long.
    let first = server
        .try_login_from(HOST, "alice", ALICE_PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(
        first.message(),
        "too many failed logins from this address for alice; try again in 1 s"
    );
    assert_eq!(retry_after(&first), 1);
    // Another account from the same host is not affected.
    server
        .try_login_from(HOST, "bob", "bob-password")
        .await
        .expect("bob logs in");

    // Once the wait is over a guess is checked again, and the wait doubles.
    assert_status(
        login_once_admitted(&server, HOST, "alice", "guess-guess").await,
        Code::Unauthenticated,
        "wrong username or password",
    );
    let second = server
        .try_login_from(HOST, "alice", "guess-guess")
        .await
        .unwrap_err();
    assert_eq!(retry_after(&second), 2, "{second:?}");

    // The right password gets in once the wait is over, and clears the count:
    // the next three failures are free again.
    login_once_admitted(&server, HOST, "alice", ALICE_PASSWORD)
        .await
        .expect("the right password gets in after the wait");
    for _ in 0..3 {
        assert_status(
            server.try_login_from(HOST, "alice", "guess-guess").await,
            Code::Unauthenticated,
            "wrong username or password",
        );
    }
    server.stop().await;
}

async fn unknown_usernames_are_throttled_like_real_ones(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    create_user(&server, &admin, "alice", ALICE_PASSWORD).await;
    let mut answers = Vec::new();
    for (host, name) in [("127.0.0.7", "alice"), ("127.0.0.8", "ghost")] {
        let mut seen = Vec::new();
        for _ in 0..6 {
            let status = server
                .try_login_from(host, name, "guess-guess")
                .await
                .unwrap_err();
            seen.push((status.code(), status.message().replace(name, "NAME")));
        }
        answers.push(seen);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0][4].0, Code::ResourceExhausted, "{:?}", answers[0]);
    server.stop().await;
}

async fn last_admin_cannot_be_deleted_demoted_or_disabled(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    let mut accounts = server.accounts();
    assert_status(
        accounts
            .delete_user(with_bearer(
                DeleteUserRequest {
                    user_id: String::new(),
                    username: ADMIN.into(),
                },
                &admin,
            ))
            .await,
        Code::FailedPrecondition,
        "last enabled admin",
    );
    let demote = |username: &str| {
        with_bearer(
            SetRoleRequest {
                username: username.into(),
                role: PbRole::User as i32,
            },
            &admin,
        )
    };
    assert_status(
        accounts.set_role(demote(ADMIN)).await,
        Code::FailedPrecondition,
        "last enabled admin",
    );
    assert_status(
        accounts
            .set_disabled(with_bearer(
                SetDisabledRequest {
                    username: ADMIN.into(),
                    disabled: true,
                },
                &admin,
            ))
            .await,
        Code::FailedPrecondition,
        "last enabled admin",
    );
    // With a second admin, the first may step down.
    create_user(&server, &admin, "carol", "carol-password").await;
    let promoted = accounts
        .set_role(with_bearer(
            SetRoleRequest {
                username: "carol".into(),
                role: PbRole::Admin as i32,
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(promoted.role, PbRole::Admin as i32);
    let demoted = accounts.set_role(demote(ADMIN)).await.unwrap().into_inner();
    assert_eq!(demoted.role, PbRole::User as i32);
    // The demoted admin's unexpired token no longer carries admin rights.
    assert_status(
        accounts
            .list_users(with_bearer(ListUsersRequest {}, &admin))
            .await,
        Code::PermissionDenied,
        "admin role",
    );
    server.stop().await;
}

async fn changing_own_password_keeps_this_session_and_revokes_others(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    create_user(&server, &admin, "alice", ALICE_PASSWORD).await;
    let here = server.login("alice", ALICE_PASSWORD).await;
    let elsewhere = server.login("alice", ALICE_PASSWORD).await;
    let change = |old: &str, new: &str| {
        with_bearer(
            ChangePasswordRequest {
                username: String::new(),
                old_password: old.into(),
                new_password: new.into(),
            },
            &here.access_token,
        )
    };
    let mut accounts = server.accounts();
    assert_status(
        accounts
            .change_password(change("not-the-password", "brand-new-password"))
            .await,
        Code::PermissionDenied,
        "old password is wrong",
    );
    assert_status(
        accounts
            .change_password(change(ALICE_PASSWORD, "tiny"))
            .await,
        Code::InvalidArgument,
        "at least 8",
    );
    accounts
        .change_password(change(ALICE_PASSWORD, "brand-new-password"))
        .await
        .unwrap();
    assert_status(
        refresh(&server, &elsewhere.refresh_token).await,
        Code::Unauthenticated,
        "revoked",
    );
    refresh(&server, &here.refresh_token).await.unwrap();
    assert_status(
        server.try_login("alice", ALICE_PASSWORD).await,
        Code::Unauthenticated,
        "wrong username or password",
    );
    server.login("alice", "brand-new-password").await;

    // An admin resets someone else's password without the old one.
    accounts
        .change_password(with_bearer(
            ChangePasswordRequest {
                username: "alice".into(),
                old_password: String::new(),
                new_password: "reset-by-admin".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    server.login("alice", "reset-by-admin").await;
    server.stop().await;
}

async fn other_services_verify_tokens_with_the_published_keys(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let keys = server
        .auth()
        .get_signing_keys(GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.issuer, ISSUER);
    assert_eq!(keys.audience, AUDIENCE);
    assert_eq!(keys.keys.len(), 1);
    assert_eq!(keys.keys[0].alg, "EdDSA");

    let pair = server.login(ADMIN, ADMIN_PASSWORD).await;
    let verifier = TokenVerifier::remote(&server.url(), server.tls.clone());
    let claims = verifier.verify(&pair.access_token).await.unwrap();
    assert_eq!(claims.name, ADMIN);
    assert_eq!(claims.role, Role::Admin);
    assert_eq!(claims.sub, pair.user.expect("user").id);
    assert_eq!(
        claims.exp * 1000,
        pair.access_expires_at_ms,
        "the advertised expiry is the token's"
    );
    server.stop().await;
}

async fn peer_token_verifies_only_with_a_proof_from_its_agent_key_for_this_peer(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    let alice = create_user(&server, &admin, "alice", ALICE_PASSWORD).await;
    let access = server.login("alice", ALICE_PASSWORD).await.access_token;
    let agent = AgentKey::generate();
    let peer = issue_peer_token(&server, &access, &agent).await.unwrap();

    let verifier = TokenVerifier::remote(&server.url(), server.tls.clone());
    let for_a = proof(&agent, "peer-a");
    let claims = verifier
        .verify_peer(&peer.token, Some(&for_a), Some("peer-a"))
        .await
        .unwrap();
    assert_eq!(claims.sub, alice.id);
    assert_eq!(claims.name, "alice");
    assert_eq!(claims.cnf, agent.public_base64url());
    assert_eq!(claims.exp * 1000, peer.expires_at_ms);

    // The same token serves every source, each with its own proof.
    verifier
        .verify_peer(&peer.token, Some(&proof(&agent, "peer-b")), Some("peer-b"))
        .await
        .unwrap();
    // peer-a cannot replay what it was sent to peer-b ...
    assert!(matches!(
        verifier
            .verify_peer(&peer.token, Some(&for_a), Some("peer-b"))
            .await,
        Err(TokenError::WrongPeer)
    ));
    // ... nor make a proof of its own: only the token's agent key counts.
    let other = AgentKey::generate();
    assert!(matches!(
        verifier
            .verify_peer(&peer.token, Some(&proof(&other, "peer-b")), Some("peer-b"))
            .await,
        Err(TokenError::Invalid(_))
    ));
    assert!(matches!(
        verifier
            .verify_peer(&peer.token, None, Some("peer-a"))
            .await,
        Err(TokenError::MissingProof)
    ));
    // An access token is not a peer token, whatever proof comes with it.
    assert!(matches!(
        verifier
            .verify_peer(&access, Some(&for_a), Some("peer-a"))
            .await,
        Err(TokenError::WrongCredential { .. })
    ));
    assert!(matches!(
        verifier.verify(&peer.token).await,
        Err(TokenError::WrongCredential { .. })
    ));
    let again = issue_peer_token(&server, &access, &agent).await.unwrap();
    assert_ne!(again.token, peer.token, "every peer token has its own jti");
    server.stop().await;
}

async fn peer_token_lives_as_long_as_an_access_token(db: TestDb) {
    let server = TestServer::start(&db, &["--access-token-ttl", "7m"]).await;
    let admin = server.admin_token().await;
    let ttl_ms = Duration::from_secs(7 * 60).as_millis() as i64;
    let before_ms = now_ms();
    let peer = issue_peer_token(&server, &admin, &AgentKey::generate())
        .await
        .unwrap();
    let lifetime_ms = peer.expires_at_ms - before_ms;
    assert!(
        lifetime_ms <= ttl_ms && lifetime_ms > ttl_ms - 2_000,
        "peer token lives {lifetime_ms} ms, access tokens {ttl_ms} ms"
    );
    let claims: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(peer.token.split('.').nth(1).expect("payload"))
            .expect("base64url payload"),
    )
    .expect("JSON claims");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        7 * 60
    );
    server.stop().await;
}

async fn peer_token_is_refused_by_auth_svc_itself(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    let agent = AgentKey::generate();
    let peer = issue_peer_token(&server, &admin, &agent)
        .await
        .unwrap()
        .token;
    assert_status(
        who_am_i(&server, &peer).await,
        Code::Unauthenticated,
        "wrong credential: this service takes an access token",
    );
    assert_status(
        server
            .accounts()
            .create_user(with_bearer(
                CreateUserRequest {
                    username: "mallory".into(),
                    password: "mallory-password".into(),
                    role: PbRole::Admin as i32,
                },
                &peer,
            ))
            .await,
        Code::Unauthenticated,
        "wrong credential: this service takes an access token",
    );
    assert_status(
        issue_peer_token(&server, &peer, &agent).await,
        Code::Unauthenticated,
        "wrong credential: this service takes an access token",
    );
    assert_status(
        rotate(&server, &peer).await,
        Code::Unauthenticated,
        "wrong credential: this service takes an access token",
    );
    assert_eq!(published_kids(&server).await.len(), 1, "nothing rotated");
    server.stop().await;
}

async fn peer_token_needs_an_access_token_and_a_usable_agent_key(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let agent = AgentKey::generate();
    assert_status(
        server
            .auth()
            .issue_peer_token(IssuePeerTokenRequest {
                agent_public_key: agent.public_base64url(),
            })
            .await,
        Code::Unauthenticated,
        "missing access token",
    );
    let admin = server.admin_token().await;
    let mut identity = [0u8; 32];
    identity[0] = 1;
    for (key, needle) in [
        (String::new(), "agent_public_key is required"),
        ("peer-a".to_string(), "agent_public_key must be"),
        (
            URL_SAFE_NO_PAD.encode([7u8; 31]),
            "expected 32 bytes, got 31",
        ),
        (
            URL_SAFE_NO_PAD.encode([7u8; 64]),
            "expected 32 bytes, got 64",
        ),
        ("+/".repeat(21), "bad base64url"),
        (URL_SAFE_NO_PAD.encode(identity), "not a usable Ed25519"),
    ] {
        assert_status(
            issue_peer_token_for(&server, &admin, &key).await,
            Code::InvalidArgument,
            needle,
        );
    }
    issue_peer_token(&server, &admin, &agent).await.unwrap();
    server.stop().await;
}

async fn disabled_or_deleted_user_gets_no_peer_token(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    create_user(&server, &admin, "alice", ALICE_PASSWORD).await;
    let created = create_user(&server, &admin, "bob", "bob-password").await;
    let alice = server.login("alice", ALICE_PASSWORD).await.access_token;
    let bob = server.login("bob", "bob-password").await.access_token;
    let agent = AgentKey::generate();
    issue_peer_token(&server, &alice, &agent).await.unwrap();
    server
        .accounts()
        .set_disabled(with_bearer(
            SetDisabledRequest {
                username: "alice".into(),
                disabled: true,
            },
            &admin,
        ))
        .await
        .unwrap();
    assert_status(
        issue_peer_token(&server, &alice, &agent).await,
        Code::Unauthenticated,
        "disabled or deleted",
    );
    server
        .accounts()
        .delete_user(with_bearer(
            DeleteUserRequest {
                user_id: created.id,
                username: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap();
    assert_status(
        issue_peer_token(&server, &bob, &agent).await,
        Code::Unauthenticated,
        "disabled or deleted",
    );
    server.stop().await;
}

async fn rotation_signs_with_a_new_key_and_old_tokens_keep_verifying(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let before = server.login(ADMIN, ADMIN_PASSWORD).await;
    let old_kid = kid_of(&before.access_token);
    assert_eq!(published_kids(&server).await, vec![old_kid.clone()]);
    let agent = AgentKey::generate();
    let old_peer = issue_peer_token(&server, &before.access_token, &agent)
        .await
        .unwrap();
    assert_eq!(kid_of(&old_peer.token), old_kid);
    let early = TokenVerifier::remote(&server.url(), server.tls.clone());
    early.verify(&before.access_token).await.unwrap();

    let rotated = rotate(&server, &before.access_token).await.unwrap();
    let kids: Vec<String> = rotated.keys.iter().map(|k| k.kid.clone()).collect();
    assert_eq!(kids.len(), 2, "{kids:?}");
    let new_kid = kids[0].clone();
    assert_ne!(new_kid, old_kid);
    assert_eq!(kids[1], old_kid, "the old key is still published");
    assert_eq!(rotated.issuer, ISSUER);
    assert_eq!(published_kids(&server).await, kids);

    // Tokens signed before keep working, here and elsewhere.
    who_am_i(&server, &before.access_token).await.unwrap();
    early.verify(&before.access_token).await.unwrap();
    let late = TokenVerifier::remote(&server.url(), server.tls.clone());
    late.verify(&before.access_token).await.unwrap();

    // Everything signed from now on carries the new kid.
    let after = server.login(ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(kid_of(&after.access_token), new_kid);
    late.verify(&after.access_token).await.unwrap();
    who_am_i(&server, &after.access_token).await.unwrap();
    let refreshed = refresh(&server, &before.refresh_token).await.unwrap();
    assert_eq!(kid_of(&refreshed.access_token), new_kid);
    let peer = issue_peer_token(&server, &before.access_token, &agent)
        .await
        .unwrap();
    assert_eq!(kid_of(&peer.token), new_kid);
    late.verify_peer(&peer.token, Some(&proof(&agent, "peer-a")), Some("peer-a"))
        .await
        .unwrap();
    early
        .verify_peer(
            &old_peer.token,
            Some(&proof(&agent, "peer-a")),
            Some("peer-a"),
        )
        .await
        .unwrap();
    late.verify_peer(
        &old_peer.token,
        Some(&proof(&agent, "peer-b")),
        Some("peer-b"),
    )
    .await
    .unwrap();

    // And the rotation survives a restart.
    server.stop().await;
    let server = TestServer::start(&db, &[]).await;
    assert_eq!(published_kids(&server).await, kids);
    let again = server.login(ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(kid_of(&again.access_token), new_kid);
    who_am_i(&server, &before.access_token).await.unwrap();
    TokenVerifier::remote(&server.url(), server.tls.clone())
        .verify_peer(
            &old_peer.token,
            Some(&proof(&agent, "peer-a")),
            Some("peer-a"),
        )
        .await
        .unwrap();
    server.stop().await;
}

async fn only_admins_rotate_signing_keys(db: TestDb) {
    let server = TestServer::start(&db, &[]).await;
    let admin = server.admin_token().await;
    create_user(&server, &admin, "alice", ALICE_PASSWORD).await;
    let alice = server.login("alice", ALICE_PASSWORD).await.access_token;
    assert_status(
        rotate(&server, &alice).await,
        Code::PermissionDenied,
        "admin role",
    );
    assert_status(
        server
            .accounts()
            .rotate_signing_key(RotateSigningKeyRequest {})
            .await,
        Code::Unauthenticated,
        "missing access token",
    );
    assert_eq!(published_kids(&server).await.len(), 1, "nothing rotated");
    server.stop().await;
}

async fn another_replica_signs_with_the_rotated_key_within_seconds(db: TestDb) {
    let one = TestServer::start(&db, &[]).await;
    let two = TestServer::start(&db, &[]).await;
    let admin = one.admin_token().await;
    let old_kid = kid_of(&admin);
    assert_eq!(published_kids(&two).await, vec![old_kid.clone()]);

    let rotated = rotate(&one, &admin).await.unwrap();
    let new_kid = rotated.keys[0].kid.clone();
    let took = eventually("replica two publishes the new key", || async {
        published_kids(&two).await.first() == Some(&new_kid)
    })
    .await;
    println!("replica two saw the rotation after {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(published_kids(&two).await, published_kids(&one).await);

    let from_two = two.login(ADMIN, ADMIN_PASSWORD).await.access_token;
    assert_eq!(
        kid_of(&from_two),
        new_kid,
        "replica two signs with the new key"
    );
    let from_one = one.login(ADMIN, ADMIN_PASSWORD).await.access_token;
    who_am_i(&two, &from_one).await.unwrap();
    who_am_i(&one, &from_two).await.unwrap();
    who_am_i(&two, &admin).await.unwrap();
    one.stop().await;
    two.stop().await;
}

async fn keys_retired_long_ago_stop_verifying_everywhere(db: TestDb) {
    let server = TestServer::start(&db, &["--access-token-ttl", "1m"]).await;
    let old = server.admin_token().await;
    let old_kid = kid_of(&old);
    let verifier = TokenVerifier::remote(&server.url(), server.tls.clone());
    verifier.verify(&old).await.unwrap();
    assert_eq!(verifier.cached_keys(), 1);

    // Rotate behind the server's back as if it had happened ten minutes ago,
    // far beyond the old key's window (1 min access and peer tokens, plus
    // slack).
    let ten_minutes_ago = now_ms() - 600_000;
    let key = KeyPair::generate();
    let store = Store::open(&db.url).await.expect("open store");
    store
        .rotate_signing_key(
            &StoredKey {
                kid: key.kid.clone(),
                private_key_der: key.to_der().unwrap(),
                created_at_ms: ten_minutes_ago,
                retired_at_ms: None,
            },
            ten_minutes_ago,
            0,
        )
        .await
        .expect("rotate");
    store.close().await;

    eventually("the server stops publishing the old key", || async {
        published_kids(&server).await == [key.kid.clone()]
    })
    .await;
    assert_status(
        who_am_i(&server, &old).await,
        Code::Unauthenticated,
        "unknown key",
    );
    assert_eq!(verifier.refresh().await.unwrap(), 1);
    assert!(
        matches!(verifier.verify(&old).await, Err(TokenError::UnknownKey(kid)) if kid == old_kid),
        "a verifier forgets a key auth-svc no longer publishes"
    );
    let new = server.admin_token().await;
    assert_eq!(kid_of(&new), key.kid);
    verifier.verify(&new).await.unwrap();
    server.stop().await;
}
