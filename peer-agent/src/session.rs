//! The user's session, held by the agent: tokens from auth-svc (kept in
//! memory only, refreshed before they expire), the peer id the index gave
//! us, and the heartbeat loop that keeps our lease and load current.
//!
//! The heartbeat loop is a task owned by [`Session`] (aborted on logout
//! and when the session is dropped) that also watches the shutdown token.
//! It tolerates auth-svc being down while the access token is valid, and
//! the index being down (backing off, `index_reachable` false); when the
//! index answers again, or forgets us, it registers again and re-announces
//! every holding.
//!
//! It sits on the held-file state ([`crate::holdings`]): it announces what
//! is held, and tells the index when the sweep withdraws a file (it
//! implements [`Withdraw`]). It never reaches into serving: the upload
//! limits in our load come from [`SessionConfig`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use p2p_proto::auth::v1 as auth_pb;
use p2p_proto::auth::v1::account_service_client::AccountServiceClient;
use p2p_proto::auth::v1::auth_service_client::AuthServiceClient;
use p2p_proto::index::v1 as index_pb;
use p2p_proto::index::v1::index_service_client::IndexServiceClient;
use p2p_services::auth::{AgentKey, PEER_PROOF_TTL, PeerIdentity};
use p2p_services::client::with_bearer;
use p2p_services::manifest::FileId;
use p2p_services::time::now_ms;
use p2p_services::tls::ClientTls;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::error::{Error, is_transport_failure};
use crate::holdings::Holdings;
use crate::holdings::integrity::Withdraw;
use crate::holdings::store::Kind;
use crate::index_client::IndexClient;
use crate::stats::{RATE_WINDOW_SECS, Stats};
use crate::unattended::Unattended;

/// How long a proof made for one source is sent again before a new one is
/// signed (proofs live [`PEER_PROOF_TTL`]).
const PROOF_REUSE: Duration = Duration::from_secs(60);
/// Most sources whose proofs are cached at once.
const MAX_CACHED_PROOFS: usize = 1024;

/// Our data-path token from auth-svc.
#[derive(Debug, Clone)]
struct PeerToken {
    token: String,
    expires_at_ms: i64,
    obtained_at_ms: i64,
}

impl PeerToken {
    fn wants_renewal(&self, now: i64) -> bool {
        let life = (self.expires_at_ms - self.obtained_at_ms).max(0);
        now >= self.obtained_at_ms + life * 3 / 4
    }
}

/// Deadline of one call to the index or auth-svc.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat interval until the index says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Retry delays while the index or auth-svc is down.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Tokens {
    access: String,
    access_expires_at_ms: i64,
    obtained_at_ms: i64,
    refresh: String,
    user: auth_pb::User,
}

impl Tokens {
    fn from_pair(pair: auth_pb::TokenPair) -> Self {
        Self {
            access: pair.access_token,
            access_expires_at_ms: pair.access_expires_at_ms,
            obtained_at_ms: now_ms(),
            refresh: pair.refresh_token,
            user: pair.user.unwrap_or_default(),
        }
    }

    /// Refresh once three quarters of the token's life is gone.
    fn wants_refresh(&self, now: i64) -> bool {
        let life = (self.access_expires_at_ms - self.obtained_at_ms).max(0);
        now >= self.obtained_at_ms + life * 3 / 4
    }

    fn still_valid(&self, now: i64) -> bool {
        now + 1_000 < self.access_expires_at_ms
    }
}

/// Addresses the session talks to, and what it announces about this agent.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// auth-svc URL.
    pub auth_url: String,
    /// index-svc replicas' URLs, comma-separated (see [`IndexClient`]).
    pub index_url: String,
    /// How auth-svc and index-svc are verified.
    pub control_tls: ClientTls,
    /// How sources' PeerServices are verified (the data path).
    pub peer_tls: ClientTls,
    /// Where other agents reach our PeerService.
    pub advertise: Advertise,
    /// For the free-disk figure.
    pub data_dir: PathBuf,
    /// The cap on concurrent uploads reported in our load (`--max-uploads`,
    /// 0: unlimited); the chunk server enforces it.
    pub max_uploads: u32,
    /// The upload rate limit reported in our load (`--max-upload-rate`, 0:
    /// unlimited); the chunk server enforces it.
    pub max_upload_rate_bps: u64,
}

/// Where other agents reach this agent's PeerService.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advertise {
    /// This `host:port`, as given (`--advertise`, or a listen address
    /// that names a host).
    Fixed(String),
    /// The address the index sees our calls come from, with this port:
    /// it follows the machine when its address changes.
    Observed {
        /// The PeerService's port.
        port: u16,
    },
}

/// The agent's session with auth-svc and the index.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    auth: RwLock<Channel>,
    index: RwLock<Arc<IndexClient>>,
    /// The address the index recorded for us at the last registration.
    advertised: RwLock<String>,
    /// The address the index last saw our calls come from.
    observed_ip: RwLock<Option<String>>,
    /// The peer id we had before our address changed, named in the next
    /// registration so the index retires it.
    previous_peer: Mutex<Option<String>>,
    /// Woken when the index sees us at another address than the one it
    /// recorded (see [`Session::address_changed`]).
    address_changed: tokio::sync::Notify,
    tokens: RwLock<Option<Tokens>>,
    peer_id: PeerIdentity,
    agent_key: AgentKey,
    peer_token: Mutex<Option<PeerToken>>,
    peer_token_lock: tokio::sync::Mutex<()>,
    proofs: Mutex<HashMap<String, (String, i64)>>,
    index_reachable: AtomicBool,
    /// Held while a holding is reported to the index, so reports reach it
    /// in the order their states were read: a stale partial report cannot
    /// overtake a later "complete".
    report_lock: tokio::sync::Mutex<()>,
    /// Files whose last report to the index failed; the heartbeat reports
    /// their current state again until one succeeds.
    unreported: Mutex<HashSet<FileId>>,
    registration_refused: Mutex<Option<String>>,
    refresh_lock: tokio::sync::Mutex<()>,
    heartbeat: Mutex<Option<JoinHandle<()>>>,
    unattended: Mutex<Option<Unattended>>,
    holdings: Arc<Holdings>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop_unattended();
        self.stop_heartbeat();
    }
}

impl Session {
    /// A logged-out session that announces `holdings` whenever it
    /// registers.
    pub fn new(
        config: SessionConfig,
        holdings: Arc<Holdings>,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) -> Result<Self, Error> {
        let channel = |url: &str, flag: &str| {
            p2p_services::client::channel(url, &config.control_tls)
                .map_err(|e| Error::Config(format!("{flag} {url:?} is not a usable URL: {e}")))
        };
        let advertised = match &config.advertise {
            Advertise::Fixed(addr) => addr.clone(),
            Advertise::Observed { .. } => String::new(),
        };
        Ok(Self {
            auth: RwLock::new(channel(&config.auth_url, "--auth-url")?),
            index: RwLock::new(Arc::new(IndexClient::new(
                &config.index_url,
                &config.control_tls,
            )?)),
            advertised: RwLock::new(advertised),
            observed_ip: RwLock::new(None),
            previous_peer: Mutex::new(None),
            address_changed: tokio::sync::Notify::new(),
            config,
            tokens: RwLock::new(None),
            peer_id: PeerIdentity::default(),
            agent_key: AgentKey::generate(),
            peer_token: Mutex::new(None),
            peer_token_lock: tokio::sync::Mutex::new(()),
            proofs: Mutex::new(HashMap::new()),
            index_reachable: AtomicBool::new(false),
            report_lock: tokio::sync::Mutex::new(()),
            unreported: Mutex::new(HashSet::new()),
            registration_refused: Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            heartbeat: Mutex::new(None),
            unattended: Mutex::new(None),
            holdings,
            stats,
            shutdown,
        })
    }

    /// The addresses this session uses.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The logged-in user, if any.
    pub fn user(&self) -> Option<auth_pb::User> {
        self.read_tokens().as_ref().map(|t| t.user.clone())
    }

    /// Our peer id at the index, once registered.
    pub fn peer_id(&self) -> Option<String> {
        self.peer_id.get()
    }

    /// Our peer id as the PeerService guard sees it: peer tokens naming
    /// anything else are refused.
    pub fn identity(&self) -> PeerIdentity {
        self.peer_id.clone()
    }

    /// Whether the last call to the index got through.
    pub fn index_reachable(&self) -> bool {
        self.index_reachable.load(Ordering::Relaxed)
    }

    /// Why the index refused our last registration (its own words), if it
    /// answered with a refusal rather than being unreachable.
    pub fn registration_refused(&self) -> Option<String> {
        self.registration_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn read_tokens(&self) -> std::sync::RwLockReadGuard<'_, Option<Tokens>> {
        self.tokens.read().unwrap_or_else(|e| e.into_inner())
    }

    fn set_tokens(&self, tokens: Option<Tokens>) {
        *self.peer_token.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = tokens;
    }

    fn set_peer_id(&self, peer_id: Option<String>) {
        self.peer_id.set(peer_id);
    }

    /// What to send `source_peer_id` on FetchChunks: our peer token and a
    /// proof for that source alone, signed with our agent key. Our access
    /// token never goes to a peer. The peer token is renewed once three
    /// quarters of its life are gone (a valid one is used while auth-svc is
    /// down); proofs are cached per source for [`PROOF_REUSE`].
    pub async fn peer_credentials(&self, source_peer_id: &str) -> Result<(String, String), Error> {
        let token = self.peer_token().await?;
        let now_secs = now_ms() / 1000;
        let mut proofs = self.proofs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((proof, made_secs)) = proofs.get(source_peer_id)
            && now_secs - made_secs < PROOF_REUSE.as_secs() as i64
        {
            return Ok((token, proof.clone()));
        }
        if proofs.len() >= MAX_CACHED_PROOFS {
            proofs.clear();
        }
        let proof = self
            .agent_key
            .prove(source_peer_id, now_secs, PEER_PROOF_TTL);
        proofs.insert(source_peer_id.to_string(), (proof.clone(), now_secs));
        Ok((token, proof))
    }

    /// Our current peer token, from auth-svc when due.
    async fn peer_token(&self) -> Result<String, Error> {
        let now = now_ms();
        let cached = self
            .peer_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(cached) = &cached
            && !cached.wants_renewal(now)
        {
            return Ok(cached.token.clone());
        }
        let _guard = self.peer_token_lock.lock().await;
        let access = self.access_token().await?;
        let mut client = AuthServiceClient::new(self.auth_channel());
        let issued = tokio::time::timeout(
            CALL_TIMEOUT,
            client.issue_peer_token(with_bearer(
                auth_pb::IssuePeerTokenRequest {
                    agent_public_key: self.agent_key.public_base64url(),
                },
                &access,
            )),
        )
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("auth-svc did not answer in time")));
        match issued {
            Ok(issued) => {
                let issued = issued.into_inner();
                let fresh = PeerToken {
                    token: issued.token.clone(),
                    expires_at_ms: issued.expires_at_ms,
                    obtained_at_ms: now,
                };
                *self.peer_token.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
                Ok(issued.token)
            }
            Err(status) => match cached {
                Some(cached) if now + 1_000 < cached.expires_at_ms => {
                    tracing::warn!(error = %status.message(), "cannot renew the peer token; using it until it expires");
                    Ok(cached.token)
                }
                _ => Err(Error::from_auth(status)),
            },
        }
    }

    /// Logs in by hand (this replaces any unattended login still
    /// retrying), registers with the index (if it answers) and starts the
    /// heartbeat. Returns the user and our peer id (empty while the index
    /// is unreachable; the heartbeat keeps trying).
    pub async fn login(
        self: &Arc<Self>,
        username: &str,
        password: &str,
    ) -> Result<(auth_pb::User, String), Error> {
        self.stop_unattended();
        self.authenticate(username, password).await
    }

    /// Logs in as `user` in the background, retrying with backoff until it
    /// works (see [`crate::unattended`]); a manual login or logout stops it.
    pub fn login_unattended(self: &Arc<Self>, user: String, password: String) {
        self.login_unattended_as(user.clone(), user, password);
    }

    /// Like [`Session::login_unattended`], logging in with this agent's
    /// certificate instead of a password (a machine joined with a join
    /// token); `name` is the account, for status.
    pub fn login_unattended_with_certificate(self: &Arc<Self>, name: String) {
        self.login_unattended_as(name, String::new(), String::new());
    }

    fn login_unattended_as(self: &Arc<Self>, name: String, user: String, password: String) {
        let session = Arc::downgrade(self);
        let log_in = move || {
            let (session, user, password) = (session.clone(), user.clone(), password.clone());
            async move {
                // Held only for the attempt, never while waiting for the next.
                let session = session.upgrade()?;
                Some(session.authenticate(&user, &password).await.map(|_| ()))
            }
        };
        let task = Unattended::start(name, log_in, self.shutdown.clone());
        *self.unattended.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    /// Stops the unattended login, if it is still trying.
    pub fn stop_unattended(&self) {
        self.unattended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Why the unattended login has not worked yet and when it tries
    /// again; `None` when logged in or not trying.
    pub fn login_error(&self) -> Option<String> {
        if self.read_tokens().is_some() {
            return None;
        }
        let attempts = self
            .unattended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()?
            .attempts()?;
        Some(attempts.describe(tokio::time::Instant::now()))
    }

    /// auth-svc's `Login` with a password, bounded by [`CALL_TIMEOUT`]: the
    /// one call behind both a real login and a password check.
    async fn password_login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<auth_pb::TokenPair, Error> {
        let mut client = AuthServiceClient::new(self.auth_channel());
        Ok(tokio::time::timeout(
            CALL_TIMEOUT,
            client.login(auth_pb::LoginRequest {
                username: username.to_string(),
                password: password.to_string(),
            }),
        )
        .await
        .map_err(|_| Error::AuthUnavailable("login timed out".into()))?
        .map_err(Error::from_auth)?
        .into_inner())
    }

    /// Checks `password` for `username` with auth-svc without touching
    /// this agent's session: a login whose new session is revoked at once.
    /// Returns the account as auth-svc sees it now.
    pub async fn check_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<auth_pb::User, Error> {
        let pair = self.password_login(username, password).await?;
        let mut client = AuthServiceClient::new(self.auth_channel());
        let revoke = client.logout(auth_pb::LogoutRequest {
            refresh_token: pair.refresh_token,
        });
        if let Err(err) = tokio::time::timeout(CALL_TIMEOUT, revoke)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("timed out")))
        {
            tracing::warn!(error = %err.message(), "could not revoke the password check's session");
        }
        pair.user.ok_or_else(|| {
            Error::AuthUnavailable("auth-svc answered a login without the account".into())
        })
    }

    /// The login itself, shared by [`Session::login`] and the unattended
    /// retries.
    async fn authenticate(
        self: &Arc<Self>,
        username: &str,
        password: &str,
    ) -> Result<(auth_pb::User, String), Error> {
        let pair = self.password_login(username, password).await?;
        self.stop_heartbeat();
        let tokens = Tokens::from_pair(pair);
        let user = tokens.user.clone();
        self.set_tokens(Some(tokens));
        self.set_peer_id(None);
        if let Err(err) = self.register().await {
            tracing::warn!(%err, "cannot register with the index yet; will keep trying");
        }
        // Fetched now so downloads keep working if auth-svc goes down later.
        if let Err(err) = self.peer_token().await {
            tracing::warn!(%err, "no peer token yet; downloads will ask again");
        }
        self.start_heartbeat();
        tracing::info!(user = %user.username, peer_id = ?self.peer_id(), "logged in");
        Ok((user, self.peer_id().unwrap_or_default()))
    }

    /// Stops heartbeating, revokes the refresh token (best effort) and
    /// forgets the session.
    pub async fn logout(&self) {
        self.stop_unattended();
        self.stop_heartbeat();
        let tokens = self
            .tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.set_peer_id(None);
        if let Some(tokens) = tokens {
            let mut client = AuthServiceClient::new(self.auth_channel());
            let revoke = client.logout(auth_pb::LogoutRequest {
                refresh_token: tokens.refresh,
            });
            if let Err(err) = tokio::time::timeout(CALL_TIMEOUT, revoke)
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("timed out")))
            {
                tracing::warn!(error = %err.message(), "could not revoke the session at auth-svc");
            }
        }
    }

    /// Stops the heartbeat task, if running.
    pub fn stop_heartbeat(&self) {
        if let Some(task) = self
            .heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }

    fn start_heartbeat(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let shutdown = self.shutdown.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = heartbeat_loop(weak) => {}
            }
        });
        if let Some(old) = self
            .heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    /// A current access token, refreshed when due. While auth-svc is down a
    /// still-valid token is used as is.
    pub async fn access_token(&self) -> Result<String, Error> {
        let tokens = self.read_tokens().clone().ok_or(Error::NotLoggedIn)?;
        let now = now_ms();
        if !tokens.wants_refresh(now) {
            return Ok(tokens.access);
        }
        let _guard = self.refresh_lock.lock().await;
        let current = self.read_tokens().clone().ok_or(Error::NotLoggedIn)?;
        if current.refresh != tokens.refresh {
            return Ok(current.access);
        }
        let mut client = AuthServiceClient::new(self.auth_channel());
        let refreshed = tokio::time::timeout(
            CALL_TIMEOUT,
            client.refresh(auth_pb::RefreshRequest {
                refresh_token: current.refresh.clone(),
            }),
        )
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("refresh timed out")));
        match refreshed {
            Ok(pair) => {
                let fresh = Tokens::from_pair(pair.into_inner());
                let access = fresh.access.clone();
                self.set_tokens(Some(fresh));
                Ok(access)
            }
            Err(status) if current.still_valid(now_ms()) => {
                tracing::warn!(error = %status.message(), "cannot refresh the access token; using it until it expires");
                Ok(current.access)
            }
            Err(status) if status.code() == Code::Unauthenticated => {
                tracing::warn!(error = %status.message(), "session ended by auth-svc");
                self.set_tokens(None);
                Err(Error::NotLoggedIn)
            }
            Err(status) => Err(Error::from_auth(status)),
        }
    }

    /// The index replicas this session calls.
    pub fn index(&self) -> Arc<IndexClient> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The channel to auth-svc.
    pub fn auth_channel(&self) -> Channel {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// New connections to auth-svc and the index, made with `tls` (a
    /// renewed client certificate): after our address changed, the old
    /// ones are dead but look alive until keepalive gives up on them.
    pub fn reconnect(&self, tls: &ClientTls) -> Result<(), Error> {
        let auth = p2p_services::client::channel(&self.config.auth_url, tls)
            .map_err(|e| Error::Config(format!("--auth-url: {e}")))?;
        let index = IndexClient::new(&self.config.index_url, tls)?;
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = auth;
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(index);
        Ok(())
    }

    /// The `host:port` other agents reach us at, as the index recorded it
    /// (empty before the first registration when it is observed).
    pub fn advertised(&self) -> String {
        self.advertised
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The address the index last saw our calls come from.
    pub fn observed_ip(&self) -> Option<String> {
        self.observed_ip
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves when the index saw our calls come from another address
    /// than the one it records for us.
    pub async fn address_changed(&self) {
        self.address_changed.notified().await;
    }

    /// Notes what address the index saw; wakes [`Session::address_changed`]
    /// when we advertise an observed address and this one differs.
    fn note_observed(&self, observed: &str) {
        if observed.is_empty() {
            return;
        }
        *self.observed_ip.write().unwrap_or_else(|e| e.into_inner()) = Some(observed.to_string());
        if let Advertise::Observed { .. } = self.config.advertise {
            let advertised = self.advertised();
            let host = advertised
                .rsplit_once(':')
                .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
                .unwrap_or_default();
            if !host.is_empty() && host != observed {
                self.address_changed.notify_one();
            }
        }
    }

    /// Registers again after our address changed, naming the peer id we
    /// had so the index stops offering the old address at once.
    pub async fn register_after_move(&self) -> Result<(), Error> {
        if let Some(old) = self.peer_id() {
            *self.previous_peer.lock().unwrap_or_else(|e| e.into_inner()) = Some(old);
        }
        self.set_peer_id(None);
        if self.read_tokens().is_none() {
            return Ok(());
        }
        self.register().await.map(|_| ())
    }

    /// Calls the index with a current token, a deadline per attempt,
    /// failover between replicas ([`IndexClient::call`]) and reachability
    /// bookkeeping. `call` gets a client and the token; it is cloned for
    /// each replica tried.
    pub async fn call_index<R, F, Fut>(&self, call: F) -> Result<R, Error>
    where
        F: FnOnce(IndexServiceClient<Channel>, String) -> Fut + Clone,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let token = self.access_token().await?;
        let result = self
            .index()
            .call(move |client| call(client, token.clone()))
            .await;
        match result {
            Ok(response) => {
                self.index_reachable.store(true, Ordering::Relaxed);
                Ok(response.into_inner())
            }
            Err(status) => {
                if is_transport_failure(&status) {
                    self.index_reachable.store(false, Ordering::Relaxed);
                } else {
                    self.index_reachable.store(true, Ordering::Relaxed);
                }
                Err(Error::from_index(status))
            }
        }
    }

    /// Calls auth-svc's AccountService with a current token.
    pub async fn call_accounts<R, F, Fut>(&self, call: F) -> Result<R, Error>
    where
        F: FnOnce(AccountServiceClient<Channel>, String) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let token = self.access_token().await?;
        tokio::time::timeout(
            CALL_TIMEOUT,
            call(AccountServiceClient::new(self.auth_channel()), token),
        )
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("auth-svc did not answer in time")))
        .map(tonic::Response::into_inner)
        .map_err(Error::from_auth)
    }

    /// Our current load, as reported to the index.
    pub fn load(&self) -> index_pb::PeerLoad {
        let stats = &self.stats;
        index_pb::PeerLoad {
            active_uploads: stats.active_uploads.load(Ordering::Relaxed),
            max_uploads: self.config.max_uploads,
            upload_rate_bps: stats.upload_meter.rate_bps(RATE_WINDOW_SECS),
            max_upload_rate_bps: self.config.max_upload_rate_bps,
            uploaded_bytes_last_60s: stats.upload_meter.total_over(60),
            free_disk_bytes: crate::disk::free_disk_bytes(&self.config.data_dir),
        }
    }

    /// Registers (again) with the index and re-announces every holding.
    /// Returns the heartbeat interval the index asks for.
    async fn register(&self) -> Result<Duration, Error> {
        let (advertise_addr, advertise_port) = match &self.config.advertise {
            Advertise::Fixed(addr) => (addr.clone(), 0),
            Advertise::Observed { port } => (String::new(), u32::from(*port)),
        };
        let replaces_peer_id = self
            .previous_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        let request = index_pb::RegisterPeerRequest {
            advertise_addr,
            advertise_port,
            replaces_peer_id,
            load: Some(self.load()),
            agent_version: concat!("peer-agent ", env!("CARGO_PKG_VERSION")).to_string(),
        };
        let result = self
            .call_index(|mut c, t| async move { c.register_peer(with_bearer(request, &t)).await })
            .await;
        *self
            .registration_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = match &result {
            Err(Error::Remote { status, .. }) => Some(status.message().to_string()),
            _ => None,
        };
        let response = result?;
        self.previous_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if !response.advertise_addr.is_empty() {
            *self.advertised.write().unwrap_or_else(|e| e.into_inner()) =
                response.advertise_addr.clone();
        }
        if !response.observed_ip.is_empty() {
            *self.observed_ip.write().unwrap_or_else(|e| e.into_inner()) =
                Some(response.observed_ip.clone());
        }
        tracing::info!(peer_id = %response.peer_id, advertised = %self.advertised(), "registered with the index");
        self.set_peer_id(Some(response.peer_id.clone()));
        self.announce_all(&response.peer_id).await;
        let interval = Duration::from_millis(response.heartbeat_interval_ms);
        Ok(if interval.is_zero() {
            DEFAULT_HEARTBEAT
        } else {
            interval.clamp(Duration::from_millis(200), Duration::from_secs(60))
        })
    }

    async fn heartbeat(&self, peer_id: &str) -> Result<(), Error> {
        let request = index_pb::HeartbeatRequest {
            peer_id: peer_id.to_string(),
            load: Some(self.load()),
        };
        let response = self
            .call_index(|mut c, t| async move { c.heartbeat(with_bearer(request, &t)).await })
            .await?;
        self.note_observed(&response.observed_ip);
        Ok(())
    }

    /// Tells the index what we hold of every file (after registering, since
    /// the index may have forgotten us).
    async fn announce_all(&self, peer_id: &str) {
        for holding in self.holdings.all() {
            self.report(peer_id, &holding.file_id).await;
        }
    }

    /// Reports again each holding whose last report failed.
    async fn report_unreported(&self, peer_id: &str) {
        let files: HashSet<FileId> = std::mem::take(&mut *self.unreported_files());
        if !files.is_empty() {
            tracing::info!(files = files.len(), "reporting holdings the index missed");
        }
        for file in files {
            self.report(peer_id, &file).await;
        }
    }

    fn unreported_files(&self) -> std::sync::MutexGuard<'_, HashSet<FileId>> {
        self.unreported.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes whether the report of `file` reached the index.
    fn reported(&self, file: &FileId, outcome: &Result<(), Error>) {
        let mut unreported = self.unreported_files();
        if outcome.is_ok() {
            unreported.remove(file);
        } else {
            unreported.insert(file.clone());
        }
    }

    /// Reports the current state of our holding of `file`: withdrawn when it
    /// changed on disk, complete or the chunks we have, published again
    /// when the index lost a file we share. Read under the report lock, so
    /// the index ends with the latest state.
    async fn report(&self, peer_id: &str, file: &FileId) {
        let _ordered = self.report_lock.lock().await;
        let Some(holding) = self.holdings.get(file) else {
            self.unreported_files().remove(file);
            return;
        };
        let state = holding.snapshot();
        if state.problem.is_some() {
            // The index may still list it from before we restarted.
            let outcome = self.stop_sharing(peer_id, file.as_str()).await;
            if let Err(err) = &outcome {
                tracing::debug!(%file, %err, "cannot withdraw a changed file");
            }
            self.reported(file, &outcome);
            return;
        }
        if state.kind == Kind::Partial && state.bitfield.count() == 0 {
            self.unreported_files().remove(file);
            return;
        }
        let complete = state.kind != Kind::Partial;
        let mut outcome = self
            .update_holdings(peer_id, file.as_str(), &state.bitfield, complete)
            .await;
        if let Err(Error::Remote { status, .. }) = &outcome
            && status.code() == Code::NotFound
            && state.kind == Kind::Shared
        {
            let manifest = p2p_services::manifest::wire::to_proto(&holding.manifest);
            let request = index_pb::PublishFileRequest {
                manifest: Some(manifest),
                peer_id: peer_id.to_string(),
            };
            outcome = self
                .call_index(
                    |mut c, t| async move { c.publish_file(with_bearer(request, &t)).await },
                )
                .await
                .map(|_| ());
            if let Err(err) = &outcome {
                tracing::warn!(%file, %err, "cannot republish a shared file");
            }
        } else if let Err(err) = &outcome {
            tracing::warn!(%file, %err, "cannot announce a holding; the heartbeat retries");
        }
        self.reported(file, &outcome);
    }

    /// Tells the index which chunks of `file_id` we hold. A failed report
    /// is made again, from the holding's state then, by the heartbeat.
    pub async fn announce(
        &self,
        peer_id: &str,
        file_id: &FileId,
        bitfield: &p2p_services::manifest::Bitfield,
        complete: bool,
    ) -> Result<(), Error> {
        let outcome = {
            let _ordered = self.report_lock.lock().await;
            self.update_holdings(peer_id, file_id.as_str(), bitfield, complete)
                .await
        };
        self.reported(file_id, &outcome);
        outcome
    }

    async fn update_holdings(
        &self,
        peer_id: &str,
        file_id: &str,
        bitfield: &p2p_services::manifest::Bitfield,
        complete: bool,
    ) -> Result<(), Error> {
        let request = index_pb::UpdateHoldingsRequest {
            peer_id: peer_id.to_string(),
            file_id: file_id.to_string(),
            bitfield: if complete {
                Vec::new()
            } else {
                bitfield.as_bytes().to_vec()
            },
            complete,
        };
        self.call_index(|mut c, t| async move { c.update_holdings(with_bearer(request, &t)).await })
            .await
            .map(|_| ())
    }
}

impl Session {
    /// Tells the index we no longer hold any of `file_id`.
    pub async fn stop_sharing(&self, peer_id: &str, file_id: &str) -> Result<(), Error> {
        let request = index_pb::StopSharingRequest {
            peer_id: peer_id.to_string(),
            file_id: file_id.to_string(),
        };
        self.call_index(|mut c, t| async move { c.stop_sharing(with_bearer(request, &t)).await })
            .await
            .map(|_| ())
    }
}

impl Withdraw for Session {
    async fn withdraw(&self, file: &FileId) -> Result<(), Error> {
        match self.peer_id() {
            Some(peer_id) => self.stop_sharing(&peer_id, file.as_str()).await,
            None => Ok(()),
        }
    }
}

async fn heartbeat_loop(session: std::sync::Weak<Session>) {
    let mut interval = DEFAULT_HEARTBEAT;
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(this) = session.upgrade() else {
            return;
        };
        let outcome = match this.peer_id() {
            None => this.register().await.map(|i| interval = i),
            Some(peer_id) => {
                let was_reachable = this.index_reachable();
                match this.heartbeat(&peer_id).await {
                    Ok(()) if !was_reachable => {
                        tracing::info!("the index is back; registering again");
                        this.register().await.map(|i| interval = i)
                    }
                    Err(Error::Remote { status, .. }) if status.code() == Code::NotFound => {
                        tracing::info!("the index forgot this agent; registering again");
                        this.set_peer_id(None);
                        this.register().await.map(|i| interval = i)
                    }
                    Ok(()) => {
                        this.report_unreported(&peer_id).await;
                        Ok(())
                    }
                    other => other,
                }
            }
        };
        let delay = match outcome {
            Ok(()) => {
                backoff = BACKOFF_MIN;
                interval
            }
            Err(Error::NotLoggedIn) => {
                tracing::warn!("session ended; heartbeat stops (log in again)");
                return;
            }
            Err(Error::Remote { status, .. })
                if status.code() == Code::ResourceExhausted
                    && p2p_services::admission::retry_after(&status).is_some() =>
            {
                // Every replica is shedding: wait as long as asked, plus
                // jitter so agents shed together do not return together.
                let hint = p2p_services::admission::retry_after(&status).unwrap_or(BACKOFF_MAX);
                let delay = hint + Duration::from_millis(rand::random::<u64>() % 1000);
                tracing::info!(retry_in = ?delay, "the index is at capacity; heartbeat backs off");
                delay
            }
            Err(err) => {
                tracing::warn!(%err, retry_in = ?backoff, "heartbeat failed");
                let delay = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                delay
            }
        };
        drop(this);
        tokio::time::sleep(delay).await;
    }
}

/// Enrollment: the calls an admin's agent makes to invite machines.
impl Session {
    /// Calls auth-svc's EnrollmentService with a current token, as
    /// [`Session::call_accounts`] does for AccountService.
    pub async fn call_enrollment<R, F, Fut>(&self, call: F) -> Result<R, Error>
    where
        F: FnOnce(
            p2p_proto::auth::v1::enrollment_service_client::EnrollmentServiceClient<Channel>,
            String,
        ) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let token = self.access_token().await?;
        let client = p2p_proto::auth::v1::enrollment_service_client::EnrollmentServiceClient::new(
            self.auth_channel(),
        );
        tokio::time::timeout(CALL_TIMEOUT, call(client, token))
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("auth-svc did not answer in time")))
            .map(tonic::Response::into_inner)
            .map_err(Error::from_auth)
    }
}
