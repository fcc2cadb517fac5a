//! Join tokens through the authority and its store, with no gRPC: making,
//! listing, revoking and spending them, every case once on SQLite and once
//! on PostgreSQL.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration;

use auth_svc::Config;
use auth_svc::authority::{AccountRef, Authority};
use auth_svc::error::{Error, JoinTokenRejection};
use auth_svc::join_token;
use auth_svc::store::Store;
use clap::Parser;
use p2p_services::auth::{AUDIENCE, Claims, ISSUER, Role};
use support::{ADMIN, ADMIN_PASSWORD, TestDb};
use tonic::{Code, Status};

on_both_backends!(
    a_token_works_once_per_use_then_is_used_up,
    an_expired_token_is_refused,
    a_revoked_token_is_refused_and_revoking_again_is_fine,
    an_unknown_token_is_refused_and_says_what_to_do,
    racing_for_the_last_use_only_one_machine_wins,
    a_disabled_account_is_refused_without_spending_a_use,
    only_admins_make_list_and_revoke_tokens,
    limits_and_unknown_accounts_are_refused,
    tokens_are_listed_newest_first_with_their_account,
    deleting_the_account_deletes_its_tokens,
);

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const PRINTER_PASSWORD: &str = "printer-password";

/// An authority on `db` and the bootstrap admin's claims.
async fn authority(db: &TestDb) -> (Arc<Authority>, Claims) {
    let config = Config::try_parse_from([
        "auth-svc",
        "--database-url",
        &db.url,
        "--admin-password",
        ADMIN_PASSWORD,
        "--metrics-listen",
        "",
    ])
    .expect("test config parses");
    let authority = Arc::new(Authority::start(&config).await.expect("authority starts"));
    let admin = claims_of(&authority, ADMIN, ADMIN_PASSWORD).await;
    (authority, admin)
}

/// Claims as `RequireAuth` would hand them to a handler after a login.
async fn claims_of(authority: &Authority, username: &str, password: &str) -> Claims {
    let session = authority
        .login(username, password, None)
        .await
        .unwrap_or_else(|e| panic!("login as {username}: {e}"));
    Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: session.account.id,
        name: session.account.username,
        role: session.account.role,
        iat: 0,
        exp: i64::MAX,
        jti: join_token::new_id(),
    }
}

/// Creates the account `printer`, whose machines join with tokens.
async fn printer(authority: &Authority, admin: &Claims) {
    authority
        .create_user(admin, "printer", PRINTER_PASSWORD, Role::User)
        .await
        .expect("create printer");
}

/// The status a refusal becomes on the wire.
fn status(err: Error) -> Status {
    err.into()
}

#[track_caller]
fn assert_refused(result: Result<auth_svc::account::Account, Error>, code: Code, needle: &str) {
    match result {
        Ok(account) => panic!("expected {code:?} {needle:?}, got {account:?}"),
        Err(err) => {
            let status = status(err);
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(needle),
                "{:?} lacks {needle:?}",
                status.message()
            );
        }
    }
}

async fn a_token_works_once_per_use_then_is_used_up(db: TestDb) {
    let (authority, admin) = authority(&db).await;
    printer(&authority, &admin).await;
    let (record, secret) = authority
        .create_join_token(&admin, "printer", 2, DAY, "lab printers")
        .await
        .expect("create");
    assert_eq!(
        (record.uses, record.uses_left, record.revoked),
        (2, 2, false)
    );
    assert_eq!(record.username, "printer");
    assert_eq!(record.created_by, ADMIN);
    assert_eq!(record.description, "lab printers");
    assert!(join_token::looks_like_secret(&secret));

    for left in [1, 0] {
        let account = authority.redeem_join_token(&secret).await.expect("redeem");
        assert_eq!(account.username, "printer");
        let listed = authority.list_join_tokens(&admin).await.unwrap();
        assert_eq!(listed[0].uses_left, left);
    }
    let refused = authority.redeem_join_token(&secret).await;
    assert!(matches!(
        refused,
        Err(Error::JoinToken(JoinTokenRejection::Spent))
    ));
    assert_refused(
        authority.redeem_join_token(&secret).await,
        Code::Unauthenticated,
        "used up",
    );
    assert_eq!(
        authority.list_join_tokens(&admin).await.unwrap()[0].uses_left,
        0,
        "refusals spend nothing and never go below zero"
    );
}

async fn an_expired_token_is_refused(db: TestDb) {
    let (authority, admin) = authority(&db).await;
    printer(&authority, &admin).await;
    let (record, secret) = authority
        .create_join_token(&admin, "printer", 5, DAY, "")
        .await
        .unwrap();
    let store = Store::open(&db.url).await.unwrap();
    let hash = join_token::secret_hash(&secret);
    let before = store
        .redeem_join_token(&hash, record.expires_at_ms - 1)
        .await
        .expect("good until its expiry");
    assert_eq!(before.username, "printer");
    let at_expiry = store.redeem_join_token(&hash, record.expires_at_ms).await;
    assert!(
        matches!(
            at_expiry,
            Err(Error::JoinToken(JoinTokenRejection::Expired))
        ),
        "{at_expiry:?}"
    );
    assert_refused(
        store
            .redeem_join_token(&hash, record.expires_at_ms + 1)
            .await,
        Code::Unauthenticated,
        "join token expired: ask an admin for a new invite: p2p invite --token-for USER",
    );
    store.close().await;

    // Through the authority, with the real clock.
    let (_, short) = authority
        .create_join_token(&admin, "printer", 1, Duration::from_millis(1), "")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + support::DEADLINE;
    loop {
        match authority.redeem_join_token(&short).await {
            Err(Error::JoinToken(JoinTokenRejection::Expired)) => break,
            // Redeemed within its millisecond: a fast machine. Spent then.
            Err(Error::JoinToken(JoinTokenRejection::Spent)) => break,
            Ok(_) => {}
            Err(err) => panic!("{err}"),
        }
        assert!(std::time::Instant::now() < deadline);
    }
}

async fn a_revoked_token_is_refused_and_revoking_again_is_fine(db: TestDb) {
    let (authority, admin) = authority(&db).await;
    printer(&authority, &admin).await;
    let (record, secret) = authority
        .create_join_token(&admin, "printer", 10, DAY, "")
        .await
        .unwrap();
    authority.redeem_join_token(&secret).await.expect("good");
    authority
        .revoke_join_token(&admin, &record.id)
        .await
        .expect("revoke");
    authority
        .revoke_join_token(&admin, &record.id)
        .await
        .expect("revoking twice is fine");
    assert_refused(
        authority.redeem_join_token(&secret).await,
        Code::Unauthenticated,
        "join token revoked: ask an admin for a new invite",
    );
    let listed = authority.list_join_tokens(&admin).await.unwrap();
    assert!(listed[0].revoked);
    assert_eq!(listed[0].uses_left, 9);

    let unknown = authority
        .revoke_join_token(&admin, "0123456789abcdef")
        .await;
    let status = status(unknown.unwrap_err());
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("p2p join-tokens"), "{status:?}");
    let empty = status_of(authority.revoke_join_token(&admin, " ").await);
    assert_eq!(empty.code(), Code::InvalidArgument);
}

fn status_of<T: std::fmt::Debug>(result: Result<T, Error>) -> Status {
    status(result.expect_err("expected a refusal"))
}

async fn an_unknown_token_is_refused_and_says_what_to_do(db: TestDb) {
    let (authority, _admin) = authority(&db).await;
    for guess in [
        join_token::new_secret(),
        String::new(),
        "p2pjt_short".into(),
        "x".repeat(100_000),
    ] {
        let result = authority.redeem_join_token(&guess).await;
        assert!(
            matches!(result, Err(Error::JoinToken(JoinTokenRejection::Unknown))),
            "{result:?}"
        );
        assert_refused(
            result,
            Code::Unauthenticated,
            "unknown join token: ask an admin for a new invite: p2p invite --token-for USER",
        );
    }
}

async fn racing_for_the_last_use_only_one_machine_wins(db: TestDb) {
    let (authority, admin) = authority(&db).await;
    printer(&authority, &admin).await;
    let (_, secret) = authority
        .create_join_token(&admin, "printer", 3, DAY, "")
        .await
        .unwrap();
    for _ in 0..2 {
        authority.redeem_join_token(&secret).await.unwrap();
    }
    let (wins, spent) = race(&authority, &secret, 12).await;
    assert_eq!(
        (wins, spent),
        (1, 11),
        "exactly one machine gets the last use"
    );

    // And many uses at once: exactly as many winners as uses.
    let (_, secret) = authority
        .create_join_token(&admin, "printer", 5, DAY, "")
        .await
        .unwrap();
    let (wins, spent) = race(&authority, &secret, 16).await;
    assert_eq!((wins, spent), (5, 11));
    let listed = authority.list_join_tokens(&admin).await.unwrap();
    assert!(listed.iter().all(|t| t.uses_left == 0), "{listed:?}");
}

/// Redeems `secret` from `machines` tasks at once; (won, refused as spent).
async fn race(authority: &Arc<Authority>, secret: &str, machines: usize) -> (usize, usize) {
    let start = Arc::new(tokio::sync::Barrier::new(machines));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..machines {
        let authority = Arc::clone(authority);
        let secret = secret.to_string();
        let start = Arc::clone(&start);
        tasks.spawn(async move {
            start.wait().await;
            authority.redeem_join_token(&secret).await
        });
    }
    let (mut won, mut spent) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            Ok(account) => {
                assert_eq!(account.username, "printer");
                won += 1;
            }
            Err(Error::JoinToken(JoinTokenRejection::Spent)) => spent += 1,
            Err(err) => panic!("unexpected refusal: {err}"),
        }
    }
    (won, spent)
}

async fn a_disabled_account_is_refused_without_spending_a_use(db: TestDb) {
    let (authority, admin) = authority(&db).await;
    printer(&authority, &admin).await;
    let (_, secret) = authority
        .create_join_token(&admin, "printer", 1, DAY, "")
        .await
        .unwrap();
    authority
        .set_disabled(&admin, "printer", true)
        .await
        .unwrap();
    assert_refused(
        authority.redeem_join_token(&secret).await,
        Code::PermissionDenied,
        "\"printer\" is disabled",
    );
    let refused_new = status_of(
        authority
            .create_join_token(&admin, "printer", 1, DAY, "")
            .await,
    );
    assert_eq!(refused_new.code(), Code::InvalidArgument, "{refused_new:?}");
    authority
        .set_disabled(&admin, "printer", false)
        .await
        .unwrap();
    let account = authority
        .redeem_join_token(&secret)
        .await
        .expect("the use was kept");
    assert_eq!(account.username, "printer");
}

async fn only_admins_make_list_and_revoke_tokens(db: TestDb) {
    let (authority, admin) = authority(&db).await;
    printer(&authority, &admin).await;
    let (record, _) = authority
        .create_join_token(&admin, "printer", 1, DAY, "")
        .await
        .unwrap();
    let user = claims_of(&authority, "printer", PRINTER_PASSWORD).await;
    let denied = [
        status_of(
            authority
                .create_join_token(&user, "printer", 1, DAY, "")
                .await,
        ),
        status_of(authority.list_join_tokens(&user).await),
        status_of(authority.revoke_join_token(&user, &record.id).await),
    ];
    for status in denied {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("admin role"), "{status:?}");
    }

    // The role is read again, not taken from the token: a demoted admin's
    // claims still say admin.
    authority
        .create_user(&admin, "second", "second-password", Role::Admin)
        .await
        .unwrap();
    let second = claims_of(&authority, "second", "second-password").await;
    authority
        .set_role(&admin, "second", Role::User)
        .await
        .unwrap();
    assert_eq!(second.role, Role::Admin);
    let demoted = status_of(authority.list_join_tokens(&second).await);
    assert_eq!(demoted.code(), Code::PermissionDenied);
    assert!(!authority.list_join_tokens(&admin).await.unwrap()[0].revoked);
}

async fn limits_and_unknown_accounts_are_refused(db: TestDb) {
    let (authority, admin) = authority(&db).await;
    printer(&authority, &admin).await;
    let cases = [
        (0, DAY, ""),
        (1001, DAY, ""),
        (1, Duration::ZERO, ""),
        (1, Duration::from_secs(31 * 24 * 60 * 60), ""),
        (1, DAY, "line\nbreak"),
    ];
    for (uses, ttl, description) in cases {
        let refused = status_of(
            authority
                .create_join_token(&admin, "printer", uses, ttl, description)
                .await,
        );
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    let long = "d".repeat(201);
    let refused = status_of(
        authority
            .create_join_token(&admin, "printer", 1, DAY, &long)
            .await,
    );
    assert!(refused.message().contains("200"), "{refused:?}");
    let nobody = status_of(
        authority
            .create_join_token(&admin, "nobody", 1, DAY, "")
            .await,
    );
    assert_eq!(nobody.code(), Code::NotFound, "{nobody:?}");
    assert!(
        authority.list_join_tokens(&admin).await.unwrap().is_empty(),
        "nothing was made"
    );
}

async fn tokens_are_listed_newest_first_with_their_account(db: TestDb) {
    let (authority, admin) = authority(&db).await;
    printer(&authority, &admin).await;
    let mut made = Vec::new();
    for (n, who) in ["printer", ADMIN, "printer"].iter().enumerate() {
        let (record, _) = authority
            .create_join_token(&admin, who, 1, DAY, &format!("batch {n}"))
            .await
            .unwrap();
        made.push(record);
        // Distinct creation times, so the order is by time alone.
        let after = made.last().map(|r| r.created_at_ms).unwrap_or_default();
        while p2p_services::time::now_ms() <= after {
            tokio::task::yield_now().await;
        }
    }
    let listed = authority.list_join_tokens(&admin).await.unwrap();
    made.reverse();
    assert_eq!(listed, made);
}

async fn deleting_the_account_deletes_its_tokens(db: TestDb) {
    let (authority, admin) = authority(&db).await;
    printer(&authority, &admin).await;
    let (_, secret) = authority
        .create_join_token(&admin, "printer", 1, DAY, "")
        .await
        .unwrap();
    authority
        .delete_user(&admin, &AccountRef::Username("printer".into()))
        .await
        .unwrap();
    assert!(authority.list_join_tokens(&admin).await.unwrap().is_empty());
    assert!(matches!(
        authority.redeem_join_token(&secret).await,
        Err(Error::JoinToken(JoinTokenRejection::Unknown))
    ));
}
