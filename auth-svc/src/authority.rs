//! The authority: what auth-svc does, independent of gRPC. Logins with
//! throttling, token issue and rotation, and the account rules (who may do
//! what, the last admin). The gRPC handlers in [`crate::api`] only convert
//! messages and call these methods.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use p2p_services::auth::{Claims, PublicKey, Role, TokenVerifier};
use p2p_services::metrics::{self, Counter, Gauge};
use p2p_services::time::now_ms;

use crate::account::{self, Account};
use crate::config::Config;
use crate::error::{Error, JoinTokenRejection};
use crate::join_token::{self, JoinTokenRecord};
use crate::keyring::{self, KEY_MAX_AGE, KeyRing};
use crate::password;
use crate::store::{NewRefreshToken, Store, StoredKey};
use crate::throttle::{self, AttemptLocks, ClientAddr};
use crate::tokens::{self, AccessToken, KeyPair, PeerToken, Signer};

/// A successful login or refresh.
#[derive(Debug, Clone)]
pub struct Session {
    /// The signed access token.
    pub access: AccessToken,
    /// The opaque refresh token (only its hash is stored).
    pub refresh_token: String,
    /// Refresh token expiry, Unix milliseconds.
    pub refresh_expires_at_ms: i64,
    /// Whose session it is.
    pub account: Account,
}

/// How an account is named in a request.
#[derive(Debug, Clone)]
pub enum AccountRef {
    /// By stable id.
    Id(String),
    /// By username.
    Username(String),
}

/// Login and account counters.
#[derive(Clone)]
struct Metrics {
    logins_succeeded: Counter,
    logins_failed: Counter,
    logins_throttled: Counter,
    users: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    fn new() -> Self {
        const LOGINS: &str = "p2p_auth_logins_total";
        const HELP: &str = "Login attempts by result.";
        Self {
            logins_succeeded: metrics::counter(LOGINS, HELP, &[("result", "succeeded")]),
            logins_failed: metrics::counter(LOGINS, HELP, &[("result", "failed")]),
            logins_throttled: metrics::counter(LOGINS, HELP, &[("result", "throttled")]),
            users: metrics::gauge("p2p_auth_users", "Accounts that exist.", &[]),
        }
    }
}

/// auth-svc's state and rules. Shared by both gRPC services.
#[derive(Debug)]
pub struct Authority {
    store: Store,
    keys: RwLock<Arc<KeyRing>>,
    /// Held while the key ring reloads, so concurrent reloads do not pile up.
    reloading: tokio::sync::Mutex<()>,
    verifier: TokenVerifier,
    verify_window: Duration,
    access_ttl: Duration,
    refresh_ttl: Duration,
    min_password_length: usize,
    attempts: AttemptLocks,
    metrics: Metrics,
}

impl Authority {
    /// Opens the database, loads (or on first start creates) the signing
    /// key, and creates the admin when there are no accounts yet.
    pub async fn start(config: &Config) -> Result<Self, Error> {
        config.validate()?;
        let store = Store::open(&config.database_url()).await?;
        let verify_window = keyring::verify_window(config.access_token_ttl);
        let stored = load_or_create_keys(&store).await?;
        let ring = KeyRing::from_stored(&stored, now_ms(), verify_window)?;
        let verifier = TokenVerifier::with_keys(ring.published.clone());
        let authority = Self {
            store,
            keys: RwLock::new(Arc::new(ring)),
            reloading: tokio::sync::Mutex::new(()),
            verifier,
            verify_window,
            access_ttl: config.access_token_ttl,
            refresh_ttl: config.refresh_token_ttl,
            min_password_length: config.min_password_length,
            attempts: AttemptLocks::default(),
            metrics: Metrics::new(),
        };
        authority
            .bootstrap_admin(
                &config.admin_user,
                config.admin_password.clone(),
                config.admin_password_file().as_deref(),
            )
            .await?;
        authority.update_user_gauge().await;
        Ok(authority)
    }

    /// Closes the database pool.
    pub async fn close(&self) {
        self.store.close().await;
    }

    /// A verifier that accepts exactly the tokens this authority's keys
    /// verify. Clones share the key cache, which every reload replaces.
    pub fn verifier(&self) -> TokenVerifier {
        self.verifier.clone()
    }

    /// The public keys, for `GetSigningKeys`: the key that signs and every
    /// retired key whose tokens may still be valid.
    pub async fn public_keys(&self) -> Vec<PublicKey> {
        self.keys().await.published.clone()
    }

    fn current_keys(&self) -> Arc<KeyRing> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The key ring to sign with, reloaded first when it is older than
    /// [`KEY_MAX_AGE`] (the periodic reload is failing or late).
    async fn keys(&self) -> Arc<KeyRing> {
        if self.current_keys().older_than(KEY_MAX_AGE)
            && let Err(err) = self.reload_keys(KEY_MAX_AGE).await
        {
            tracing::warn!(%err, "cannot reload signing keys; using the ones loaded");
        }
        self.current_keys()
    }

    /// Reloads the key ring from the database unless it was loaded less
    /// than `max_age` ago (`Duration::ZERO` always reloads), so rotations
    /// made by any replica take effect here, and installs the published
    /// keys in this authority's verifier before the new key signs.
    pub async fn reload_keys(&self, max_age: Duration) -> Result<(), Error> {
        let _reloading = self.reloading.lock().await;
        let before = self.current_keys();
        if !before.older_than(max_age) {
            return Ok(());
        }
        let stored = self.store.signing_keys().await?;
        let ring = KeyRing::from_stored(&stored, now_ms(), self.verify_window)?;
        if ring.signer.kid() != before.signer.kid() {
            tracing::info!(kid = ring.signer.kid(), "signing with a new key");
        }
        self.verifier.install(ring.published.clone());
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
        Ok(())
    }

    /// Makes a new signing key that signs from now on (admin only). The
    /// old one keeps verifying for [`keyring::verify_window`]. Returns the
    /// keys now published.
    pub async fn rotate_signing_key(&self, caller: &Claims) -> Result<Vec<PublicKey>, Error> {
        let admin = self.require_admin(caller).await?;
        let key = KeyPair::generate();
        let now = now_ms();
        let stored = StoredKey {
            kid: key.kid.clone(),
            private_key_der: key.to_der()?,
            created_at_ms: now,
            retired_at_ms: None,
        };
        let forget_before_ms = now - self.verify_window.as_millis() as i64;
        self.store
            .rotate_signing_key(&stored, now, forget_before_ms)
            .await?;
        self.reload_keys(Duration::ZERO).await?;
        tracing::info!(by = %admin.username, kid = %key.kid, "rotated the token signing key");
        Ok(self.current_keys().published.clone())
    }

    async fn bootstrap_admin(
        &self,
        username: &str,
        password: Option<String>,
        password_file: Option<&std::path::Path>,
    ) -> Result<(), Error> {
        if self.store.count_accounts().await? > 0 {
            return Ok(());
        }
        let (password, generated) = match password {
            Some(p) => (p, false),
            None => (password::generate(), true),
        };
        let admin = Account {
            id: uuid::Uuid::new_v4().to_string(),
            username: username.to_string(),
            role: Role::Admin,
            disabled: false,
            created_at_ms: now_ms(),
        };
        let hash = password::hash(password.clone()).await?;
        if self.store.create_first_account(&admin, &hash).await? {
            if generated {
                if let Some(file) = password_file {
                    write_secret(file, &format!("{username}\n{password}\n"))?;
                    tracing::warn!(file = %file.display(), "the first admin's name and password are also in this file (mode 0600); delete it once you changed the password");
                }
                // The one place a password reaches the log, on purpose: the
                // operator has no other way to learn it.
                tracing::warn!(
                    username,
                    password = %password,
                    "created the first admin with a generated password; it is shown only once, \
                     change it with AccountService/ChangePassword"
                );
            } else {
                tracing::info!(username, "created the first admin");
            }
        }
        Ok(())
    }

    async fn update_user_gauge(&self) {
        match self.store.count_accounts().await {
            Ok(n) => self.metrics.users.set(n),
            Err(err) => tracing::warn!(%err, "cannot count accounts for the users gauge"),
        }
    }

    // --- sessions ---

    /// Checks a username and password and starts a session. Unknown users
    /// and wrong passwords fail alike, in the same time. Only failures are
    /// counted, per (username, `client`) and per `client`; while either
    /// count asks for a wait the attempt is refused (see [`throttle`]).
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<Session, Error> {
        let result = self.check_login(username, password, client).await;
        match &result {
            Ok(_) => self.metrics.logins_succeeded.inc(),
            Err(Error::Throttled { .. }) => self.metrics.logins_throttled.inc(),
            Err(_) => self.metrics.logins_failed.inc(),
        }
        let account = result?;
        self.new_session(account).await
    }

    /// Starts a session for the account an agent certificate is bound to
    /// (its TLS client certificate, verified against the CA by the TLS
    /// layer): how a machine joined with a join token logs in, holding no
    /// password. A disabled or deleted account gets nothing.
    pub async fn login_with_certificate(&self, account_id: &str) -> Result<Session, Error> {
        let account = self.usable_account(account_id, account_id).await?;
        self.metrics.logins_succeeded.inc();
        tracing::info!(username = %account.username, "logged in with an agent certificate");
        self.new_session(account).await
    }

    async fn check_login(
        &self,
        username: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<Account, Error> {
        let addr = ClientAddr::new(client);
        // A name no account can have is counted for the address only, and
        // never reaches the database.
        let name = account::validate_username(username)
            .is_ok()
            .then_some(username);
        let _turn = self.attempts.turn(name.unwrap_or_default(), &addr).await;
        let failed = self.store.failed_logins(name, &addr).await?;
        if let Some((scope, wait)) = throttle::refusal(&failed, username, now_ms()) {
            let retry_after_secs = throttle::retry_after_secs(wait);
            tracing::info!(username, %addr, retry_after_secs, "login refused: recent failures");
            return Err(Error::Throttled {
                scope,
                retry_after_secs,
            });
        }
        let credentials = match name {
            Some(name) => self.store.credentials_of(name).await?,
            None => None,
        };
        let (account, hash) = match credentials {
            Some((account, hash)) => (Some(account), Some(hash)),
            None => (None, None),
        };
        let password_ok = name.is_some()
            && password.len() <= account::MAX_PASSWORD_BYTES
            && password::verify(hash, password.to_string()).await?;
        let account = match account {
            Some(account) if password_ok => account,
            _ => {
                let counts = self
                    .store
                    .record_failed_login(name, &addr, now_ms())
                    .await?;
                tracing::info!(
                    username,
                    %addr,
                    failures = counts.account_from_address.map(|f| f.count),
                    address_failures = counts.address.map(|f| f.count),
                    "login failed"
                );
                return Err(Error::BadCredentials);
            }
        };
        // The right password: whatever comes next, this address has no
        // more guessing to slow down for this account.
        self.store.clear_failed_logins(username, &addr).await?;
        if account.disabled {
            return Err(Error::AccountUnusable(account.username));
        }
        tracing::info!(username, %addr, "logged in");
        Ok(account)
    }

    fn new_tokens(&self, now: i64) -> (String, NewRefreshToken) {
        let refresh = tokens::new_refresh_token();
        let record = NewRefreshToken {
            token_hash: tokens::refresh_token_hash(&refresh),
            access_jti: uuid::Uuid::new_v4().to_string(),
            created_at_ms: now,
            expires_at_ms: now + self.refresh_ttl.as_millis() as i64,
        };
        (refresh, record)
    }

    fn session(
        &self,
        signer: &Signer,
        account: Account,
        refresh: String,
        record: &NewRefreshToken,
    ) -> Result<Session, Error> {
        let access = signer.issue(
            &account.id,
            &account.username,
            account.role,
            &record.access_jti,
            record.created_at_ms,
            self.access_ttl,
        )?;
        Ok(Session {
            access,
            refresh_token: refresh,
            refresh_expires_at_ms: record.expires_at_ms,
            account,
        })
    }

    async fn new_session(&self, account: Account) -> Result<Session, Error> {
        let (refresh, record) = self.new_tokens(now_ms());
        self.store.start_session(&account.id, &record).await?;
        self.session(&self.keys().await.signer, account, refresh, &record)
    }

    /// Exchanges a refresh token for a new pair; the old one stops working.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, Error> {
        if refresh_token.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "refresh_token is empty: send the refresh token from Login".into(),
            ));
        }
        let (refresh, record) = self.new_tokens(now_ms());
        let account = self
            .store
            .rotate_session(&tokens::refresh_token_hash(refresh_token), &record)
            .await?;
        self.session(&self.keys().await.signer, account, refresh, &record)
    }

    /// Revokes the session of a refresh token. Idempotent.
    pub async fn logout(&self, refresh_token: &str) -> Result<(), Error> {
        if refresh_token.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "refresh_token is empty: send the refresh token to revoke".into(),
            ));
        }
        self.store
            .end_session(&tokens::refresh_token_hash(refresh_token), now_ms())
            .await
    }

    /// The account with this id as it is now; fails if it is disabled or
    /// gone (`name` is for the message).
    pub async fn usable_account(&self, id: &str, name: &str) -> Result<Account, Error> {
        match self.store.account_by_id(id).await? {
            Some(account) if !account.disabled => Ok(account),
            _ => Err(Error::AccountUnusable(name.to_string())),
        }
    }

    /// The caller's account as it is now; fails if it was disabled or
    /// deleted since the token was issued.
    pub async fn who_am_i(&self, claims: &Claims) -> Result<Account, Error> {
        match self.store.account_by_id(&claims.sub).await? {
            Some(account) if !account.disabled => Ok(account),
            _ => Err(Error::AccountUnusable(claims.name.clone())),
        }
    }

    /// A peer token for the caller's agent, bound to `agent_public_key`
    /// (its `cnf`) and living as long as an access token: the agent proves
    /// each source call with that key, so one token serves every source.
    /// The caller's account must still exist and be enabled: a peer token
    /// outlives neither.
    pub async fn issue_peer_token(
        &self,
        caller: &Claims,
        agent_public_key: &str,
    ) -> Result<PeerToken, Error> {
        let agent_key =
            tokens::parse_agent_key(agent_public_key).map_err(Error::InvalidArgument)?;
        self.who_am_i(caller).await?;
        let jti = uuid::Uuid::new_v4().to_string();
        let token = self.keys().await.signer.issue_peer(
            &caller.sub,
            &caller.name,
            &agent_key,
            &jti,
            now_ms(),
            self.access_ttl,
        )?;
        tracing::debug!(username = %caller.name, "issued a peer token");
        Ok(token)
    }

    // --- account administration ---

    /// The caller, who must currently be an enabled admin: the role in the
    /// token may be up to one access-token lifetime old.
    async fn require_admin(&self, claims: &Claims) -> Result<Account, Error> {
        let caller = self.who_am_i(claims).await?;
        if caller.role != Role::Admin {
            return Err(Error::PermissionDenied(
                "this needs the admin role; ask an administrator".into(),
            ));
        }
        Ok(caller)
    }

    async fn find(&self, which: &AccountRef) -> Result<Account, Error> {
        let found = match which {
            AccountRef::Id(id) => self.store.account_by_id(id).await?,
            AccountRef::Username(name) => self.store.account_by_username(name).await?,
        };
        found.ok_or_else(|| {
            Error::UserNotFound(match which {
                AccountRef::Id(id) => format!("id {id:?}"),
                AccountRef::Username(name) => format!("{name:?}"),
            })
        })
    }

    /// Creates an account (admin only).
    pub async fn create_user(
        &self,
        caller: &Claims,
        username: &str,
        password: &str,
        role: Role,
    ) -> Result<Account, Error> {
        let admin = self.require_admin(caller).await?;
        account::validate_username(username).map_err(Error::InvalidUsername)?;
        account::validate_password(password, self.min_password_length)
            .map_err(Error::WeakPassword)?;
        let hash = password::hash(password.to_string()).await?;
        let account = Account {
            id: uuid::Uuid::new_v4().to_string(),
            username: username.to_string(),
            role,
            disabled: false,
            created_at_ms: now_ms(),
        };
        let created = self.store.create_account(&account, &hash).await?;
        tracing::info!(by = %admin.username, username, role = role.as_str(), "created account");
        self.update_user_gauge().await;
        Ok(created)
    }

    /// Every account (admin only).
    pub async fn list_users(&self, caller: &Claims) -> Result<Vec<Account>, Error> {
        self.require_admin(caller).await?;
        self.store.list_accounts().await
    }

    /// Deletes an account and its sessions (admin only; not the last admin).
    pub async fn delete_user(&self, caller: &Claims, which: &AccountRef) -> Result<(), Error> {
        let admin = self.require_admin(caller).await?;
        let target = self.find(which).await?;
        self.store.delete_account(&target.id).await?;
        tracing::info!(by = %admin.username, username = %target.username, "deleted account");
        self.update_user_gauge().await;
        Ok(())
    }

    /// Changes a password. Anyone may change their own with the old
    /// password; admins may reset anyone's. Other sessions are revoked.
    pub async fn change_password(
        &self,
        caller: &Claims,
        username: Option<&str>,
        old_password: &str,
        new_password: &str,
    ) -> Result<(), Error> {
        let me = self.who_am_i(caller).await?;
        let own = username.is_none_or(|name| name == me.username);
        account::validate_password(new_password, self.min_password_length)
            .map_err(Error::WeakPassword)?;
        let target = if own {
            let hash = self
                .store
                .credentials_of(&me.username)
                .await?
                .map(|(_, hash)| hash);
            if old_password.is_empty() {
                return Err(Error::InvalidArgument(
                    "old_password is required to change your own password".into(),
                ));
            }
            if !password::verify(hash, old_password.to_string()).await? {
                return Err(Error::PermissionDenied("old password is wrong".into()));
            }
            me
        } else {
            if me.role != Role::Admin {
                return Err(Error::PermissionDenied(
                    "only an admin may change another account's password".into(),
                ));
            }
            self.find(&AccountRef::Username(
                username.unwrap_or_default().to_string(),
            ))
            .await?
        };
        let hash = password::hash(new_password.to_string()).await?;
        let keep = own.then_some(caller.jti.as_str());
        self.store
            .set_password(&target.id, &hash, keep, now_ms())
            .await?;
        tracing::info!(by = %caller.name, username = %target.username, "changed password");
        Ok(())
    }

    /// Changes an account's role (admin only; never demotes the last admin).
    pub async fn set_role(
        &self,
        caller: &Claims,
        username: &str,
        role: Role,
    ) -> Result<Account, Error> {
        let admin = self.require_admin(caller).await?;
        let target = self
            .find(&AccountRef::Username(username.to_string()))
            .await?;
        let updated = self.store.set_role(&target.id, role).await?;
        tracing::info!(by = %admin.username, username, role = role.as_str(), "changed role");
        Ok(updated)
    }

    /// Disables or re-enables an account (admin only; never the last
    /// enabled admin). Disabling revokes its sessions at once.
    pub async fn set_disabled(
        &self,
        caller: &Claims,
        username: &str,
        disabled: bool,
    ) -> Result<Account, Error> {
        let admin = self.require_admin(caller).await?;
        let target = self
            .find(&AccountRef::Username(username.to_string()))
            .await?;
        let updated = self
            .store
            .set_disabled(&target.id, disabled, now_ms())
            .await?;
        tracing::info!(by = %admin.username, username, disabled, "changed account state");
        Ok(updated)
    }
}

/// Join tokens: what an admin makes for an unattended machine, and the one
/// thing a token may do, spend a use for its account (EnrollmentService
/// calls [`Authority::redeem_join_token`] before it signs one certificate).
impl Authority {
    /// Makes a join token for `username`'s account, good for `uses`
    /// certificates within `ttl` (admin only; the account must exist and
    /// be enabled). Returns the record and the secret, which is never
    /// stored and cannot be shown again.
    pub async fn create_join_token(
        &self,
        admin: &Claims,
        username: &str,
        uses: u32,
        ttl: Duration,
        description: &str,
    ) -> Result<(JoinTokenRecord, String), Error> {
        let admin = self.require_admin(admin).await?;
        let description = description.trim();
        join_token::check_limits(uses, ttl, description).map_err(Error::InvalidArgument)?;
        let target = self
            .find(&AccountRef::Username(username.trim().to_string()))
            .await?;
        if target.disabled {
            return Err(Error::InvalidArgument(format!(
                "account {:?} is disabled; enable it before making a join token for it",
                target.username
            )));
        }
        let secret = join_token::new_secret();
        let now = now_ms();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let record = JoinTokenRecord {
            id: join_token::new_id(),
            user_id: target.id,
            username: target.username,
            uses,
            uses_left: uses,
            expires_at_ms: now.saturating_add(ttl_ms),
            revoked: false,
            description: description.to_string(),
            created_by: admin.username,
            created_at_ms: now,
        };
        self.store
            .create_join_token(&record, &join_token::secret_hash(&secret))
            .await?;
        tracing::info!(
            by = %record.created_by,
            id = %record.id,
            username = %record.username,
            uses,
            "made a join token"
        );
        Ok((record, secret))
    }

    /// Every join token, newest first (admin only).
    pub async fn list_join_tokens(&self, admin: &Claims) -> Result<Vec<JoinTokenRecord>, Error> {
        self.require_admin(admin).await?;
        self.store.list_join_tokens().await
    }

    /// Revokes a join token at once (admin only). Idempotent.
    pub async fn revoke_join_token(&self, admin: &Claims, id: &str) -> Result<(), Error> {
        let admin = self.require_admin(admin).await?;
        let id = id.trim();
        if id.is_empty() {
            return Err(Error::InvalidArgument(
                "id is empty: name the join token to revoke (`p2p join-tokens` lists them)".into(),
            ));
        }
        self.store.revoke_join_token(id).await?;
        tracing::info!(by = %admin.username, id, "revoked a join token");
        Ok(())
    }

    /// Spends one use; the bound account, which must not be disabled.
    /// A spent, expired, revoked or unknown token is refused with
    /// [`Error::JoinToken`] saying which; a disabled account with
    /// [`Error::JoinTokenAccountDisabled`], spending nothing.
    pub async fn redeem_join_token(&self, secret: &str) -> Result<Account, Error> {
        if !join_token::looks_like_secret(secret) {
            return Err(Error::JoinToken(JoinTokenRejection::Unknown));
        }
        let account = self
            .store
            .redeem_join_token(&join_token::secret_hash(secret), now_ms())
            .await?;
        if account.disabled {
            // Disabled after the use was taken: refuse all the same.
            return Err(Error::JoinTokenAccountDisabled(account.username));
        }
        tracing::info!(username = %account.username, "spent a join token use");
        Ok(account)
    }
}

/// Loads every signing key, newest first, creating one when none is in use
/// (on first start).
async fn load_or_create_keys(store: &Store) -> Result<Vec<StoredKey>, Error> {
    let stored = store.signing_keys().await?;
    if keyring::signing_key(&stored).is_some() {
        return Ok(stored);
    }
    let key = KeyPair::generate();
    store
        .add_signing_key(&StoredKey {
            kid: key.kid.clone(),
            private_key_der: key.to_der()?,
            created_at_ms: now_ms(),
            retired_at_ms: None,
        })
        .await?;
    tracing::info!(kid = %key.kid, "generated a new token signing key");
    // Read back: a concurrently starting replica may have stored its own.
    store.signing_keys().await
}

/// Writes `text` to a new file only its owner reads (0600), refusing to
/// replace one that exists.
fn write_secret(path: &std::path::Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        });
    written.map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))
}
