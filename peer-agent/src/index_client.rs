//! The agent's one client for index-svc: every replica named by
//! `--index-url` (a comma-separated list), one of them preferred.
//!
//! An entry that is an IP address is one replica. An entry that is a DNS
//! name is one replica per address it resolves to: the agent connects to
//! each address and, over TLS, checks that the certificate names the name.
//! Names are resolved before the first call (each lookup bounded by
//! [`RESOLVE_TIMEOUT`]), again every [`RESOLVE_EVERY`], and again when
//! every replica failed a call (at most once per [`RESOLVE_AGAIN_AFTER`]),
//! the call then going on to any address that is new. A lookup that fails
//! keeps the addresses the name had, so a DNS hiccup never drops replicas
//! that answer; a name that never resolved fails calls with UNAVAILABLE
//! naming it, and the session retries them as it does for a stopped index.
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

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
/// How often the names in `--index-url` are looked up again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// Deadline of one name's lookup.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Least time between two lookups made because every replica failed.
pub const RESOLVE_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// Splits a `--index-url` value into its entries.
pub fn parse_urls(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// One `--index-url` entry, ready to dial or to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// An IP address: one replica at this place.
    Address(Place),
    /// A DNS name: one replica per address it resolves to.
    Name {
        /// `https` or `http`.
        scheme: String,
        /// The name, which the replicas' certificates must show.
        host: String,
        /// The port every address is dialled on.
        port: u16,
    },
}

/// Reads one `--index-url` entry (`host:port` or `scheme://host:port`;
/// without a port, the scheme's). `tls` gives the scheme and checks one
/// that is written out.
fn parse_entry(entry: &str, tls: &ClientTls) -> Result<Entry, String> {
    let url = tls.url(entry).map_err(|e| e.to_string())?;
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", &url));
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.starts_with('[') {
        return Ok(Entry::Address(Place::dialled(url)));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| {
                    format!("{entry:?}: the port {port:?} is not a number from 1 to 65535")
                })?;
            (host, port)
        }
        None if scheme == "https" => (authority, 443),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err(format!("{entry:?} names no host"));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(Entry::Address(Place::dialled(url)));
    }
    Ok(Entry::Name {
        scheme: scheme.to_string(),
        host: host.to_string(),
        port,
    })
}

/// Where one replica is: the URL dialled and, for an address a name
/// resolved to, that name (what its certificate must show).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Place {
    url: String,
    name: Option<String>,
}

impl Place {
    fn dialled(url: String) -> Self {
        Self { url, name: None }
    }

    fn resolved(scheme: &str, name: &str, addr: SocketAddr) -> Self {
        Self {
            url: format!("{scheme}://{addr}"),
            name: Some(name.to_string()),
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{} ({name})", self.url),
            None => f.write_str(&self.url),
        }
    }
}

#[derive(Debug)]
struct Replica {
    place: Place,
    channel: Channel,
    failed_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn new(place: Place, tls: &ClientTls) -> Result<Self, String> {
        let channel = match &place.name {
            Some(name) => p2p_services::client::channel_to_resolved(&place.url, name, tls),
            None => p2p_services::client::channel(&place.url, tls),
        }
        .map_err(|e| format!("--index-url {place}: not a usable URL: {e}"))?;
        Ok(Self {
            place,
            channel,
            failed_until: Mutex::new(None),
        })
    }

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

/// The replicas for `wanted`, in that order: a place already in `current`
/// keeps its replica (its connection and its failure mark), a new one gets
/// a new replica from `make`, and places no longer wanted are dropped.
fn reconcile(
    current: &[Arc<Replica>],
    wanted: &[Place],
    mut make: impl FnMut(&Place) -> Option<Replica>,
) -> Vec<Arc<Replica>> {
    let mut seen = HashSet::new();
    wanted
        .iter()
        .filter(|place| seen.insert(*place))
        .filter_map(|place| match current.iter().find(|r| &r.place == place) {
            Some(replica) => Some(replica.clone()),
            None => make(place).map(Arc::new),
        })
        .collect()
}

/// The order to try `replicas` in: `preferred`, then the others that have
/// not failed lately, then those that have (a call is never refused only
/// because every replica failed a moment ago).
fn order(replicas: &[Arc<Replica>], preferred: usize, now: Instant) -> Vec<usize> {
    let n = replicas.len();
    if n == 0 {
        return Vec::new();
    }
    let start = preferred % n;
    let ring: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
    let (mut usable, failed): (Vec<usize>, Vec<usize>) =
        ring.into_iter().partition(|&i| replicas[i].usable(now));
    usable.extend(failed);
    usable
}

/// Looks `host` up, bounded by [`RESOLVE_TIMEOUT`]; the addresses sorted,
/// each once.
async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => {
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                Err("it resolves to no address".into())
            } else {
                Ok(addrs)
            }
        }
        Ok(Err(e)) => Err(format!("looking it up failed: {e}")),
        Err(_) => Err(format!(
            "looking it up took longer than {RESOLVE_TIMEOUT:?}"
        )),
    }
}

/// When the names were last looked up, and why none gave a replica.
#[derive(Debug, Default)]
struct Resolution {
    at: Option<Instant>,
    problem: Option<String>,
}

/// Calls to index-svc, spread over its replicas; see the module doc.
#[derive(Debug)]
pub struct IndexClient {
    entries: Vec<Entry>,
    tls: ClientTls,
    replicas: RwLock<Arc<Vec<Arc<Replica>>>>,
    preferred: AtomicUsize,
    resolution: tokio::sync::Mutex<Resolution>,
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
    /// verified with `tls`. Connections are made, and names looked up, on
    /// first use.
    pub fn new(urls: &str, tls: &ClientTls) -> Result<Self, Error> {
        let urls = parse_urls(urls);
        if urls.is_empty() {
            return Err(Error::Config(
                "--index-url names no index (give host:port, or several separated by commas)"
                    .into(),
            ));
        }
        let entries = urls
            .iter()
            .map(|url| parse_entry(url, tls).map_err(|e| Error::Config(format!("--index-url {e}"))))
            .collect::<Result<Vec<_>, Error>>()?;
        let fixed: Vec<Place> = entries
            .iter()
            .filter_map(|entry| match entry {
                Entry::Address(place) => Some(place.clone()),
                Entry::Name { .. } => None,
            })
            .collect();
        let mut problem = None;
        let replicas = reconcile(&[], &fixed, |place| {
            Replica::new(place.clone(), tls)
                .map_err(|e| problem = Some(e))
                .ok()
        });
        if let Some(problem) = problem {
            return Err(Error::Config(problem));
        }
        Ok(Self {
            entries,
            tls: tls.clone(),
            preferred: AtomicUsize::new(rand::random::<u32>() as usize),
            replicas: RwLock::new(Arc::new(replicas)),
            resolution: tokio::sync::Mutex::new(Resolution::default()),
        })
    }

    fn has_names(&self) -> bool {
        self.entries
            .iter()
            .any(|entry| matches!(entry, Entry::Name { .. }))
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Replica>>> {
        self.replicas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Looks the names up when they never were or [`RESOLVE_EVERY`] has
    /// passed. Only the first caller waits for a lookup, unless there is
    /// no replica yet to call meanwhile.
    async fn resolve_if_due(&self) {
        if !self.has_names() {
            return;
        }
        let mut resolution = if self.snapshot().is_empty() {
            self.resolution.lock().await
        } else {
            match self.resolution.try_lock() {
                Ok(guard) => guard,
                Err(_) => return,
            }
        };
        if resolution.at.is_none_or(|at| at.elapsed() >= RESOLVE_EVERY) {
            self.resolve(&mut resolution).await;
        }
    }

    /// Looks the names up again after every replica failed, unless that
    /// was done within [`RESOLVE_AGAIN_AFTER`]. Whether it looked them up.
    async fn resolve_after_failure(&self) -> bool {
        if !self.has_names() {
            return false;
        }
        let mut resolution = self.resolution.lock().await;
        if resolution
            .at
            .is_some_and(|at| at.elapsed() < RESOLVE_AGAIN_AFTER)
        {
            return false;
        }
        self.resolve(&mut resolution).await;
        true
    }

    /// Looks every name up and replaces the replica set: the fixed
    /// addresses, then each name's addresses (or, when its lookup fails,
    /// the ones it had).
    async fn resolve(&self, resolution: &mut Resolution) {
        let current = self.snapshot();
        let mut wanted = Vec::new();
        let mut problems = Vec::new();
        for entry in &self.entries {
            match entry {
                Entry::Address(place) => wanted.push(place.clone()),
                Entry::Name { scheme, host, port } => match lookup(host, *port).await {
                    Ok(addrs) => {
                        let places: Vec<Place> = addrs
                            .iter()
                            .map(|&addr| Place::resolved(scheme, host, addr))
                            .collect();
                        let before: Vec<&Place> = current
                            .iter()
                            .map(|r| &r.place)
                            .filter(|p| p.name.as_deref() == Some(host))
                            .collect();
                        if before != places.iter().collect::<Vec<_>>() {
                            tracing::info!(name = %host, addresses = ?addrs,
                                "index name resolved; each address is a replica");
                        }
                        wanted.extend(places);
                    }
                    Err(why) => {
                        let kept: Vec<Place> = current
                            .iter()
                            .map(|r| r.place.clone())
                            .filter(|p| p.name.as_deref() == Some(host))
                            .collect();
                        tracing::warn!(name = %host, error = %why, kept = kept.len(),
                            "cannot resolve the index name; keeping the addresses it had");
                        problems.push(format!(
                            "the index name {host:?} (--index-url) gives no address: {why}"
                        ));
                        wanted.extend(kept);
                    }
                },
            }
        }
        let replicas = reconcile(&current, &wanted, |place| {
            Replica::new(place.clone(), &self.tls)
                .map_err(|e| tracing::warn!(error = %e, "skipping an index address"))
                .ok()
        });
        let preferred = current
            .get(self.preferred.load(Ordering::Relaxed) % current.len().max(1))
            .and_then(|old| replicas.iter().position(|r| r.place == old.place))
            .unwrap_or_else(|| rand::random::<u32>() as usize);
        self.preferred.store(preferred, Ordering::Relaxed);
        *self.replicas.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(replicas);
        resolution.at = Some(Instant::now());
        resolution.problem = (!problems.is_empty()).then(|| problems.join("; "));
    }

    fn client(replica: &Replica) -> IndexServiceClient<Channel> {
        IndexServiceClient::new(replica.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Runs `call` on one replica after another until one answers with
    /// anything but a transport failure or a shed; returns the last
    /// answer. `call` is cloned for each attempt.
    pub async fn call<R, F, Fut>(&self, call: F) -> Result<tonic::Response<R>, Status>
    where
        F: FnOnce(IndexServiceClient<Channel>) -> Fut + Clone,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        self.resolve_if_due().await;
        let mut tried = HashSet::new();
        let mut last = None;
        if let Some(answer) = self.try_each(&call, &mut tried, &mut last).await {
            return answer;
        }
        // Every replica failed: the names may point somewhere else now.
        if self.resolve_after_failure().await
            && let Some(answer) = self.try_each(&call, &mut tried, &mut last).await
        {
            return answer;
        }
        Err(match last {
            Some(status) => status,
            None => Status::unavailable(self.no_replica().await),
        })
    }

    /// Why there is no replica to call.
    async fn no_replica(&self) -> String {
        let resolution = self.resolution.lock().await;
        resolution
            .problem
            .clone()
            .unwrap_or_else(|| "no index replica to call (--index-url)".into())
    }

    /// Tries `call` on each replica not in `tried`, in [`order`]. `Some`
    /// is the answer to return; `None` means each failed over, the last
    /// failure in `last`.
    async fn try_each<R, F, Fut>(
        &self,
        call: &F,
        tried: &mut HashSet<Place>,
        last: &mut Option<Status>,
    ) -> Option<Result<tonic::Response<R>, Status>>
    where
        F: FnOnce(IndexServiceClient<Channel>) -> Fut + Clone,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let replicas = self.snapshot();
        let timeout = if replicas.len() > 1 {
            ATTEMPT_TIMEOUT
        } else {
            SOLE_TIMEOUT
        };
        let preferred = self.preferred.load(Ordering::Relaxed);
        for index in order(&replicas, preferred, Instant::now()) {
            let replica = &replicas[index];
            if !tried.insert(replica.place.clone()) {
                continue;
            }
            let attempt = call.clone();
            let result = tokio::time::timeout(timeout, attempt(Self::client(replica)))
                .await
                .unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "the index at {} did not answer within {timeout:?}",
                        replica.place
                    )))
                });
            match result {
                Ok(response) => {
                    replica.recovered();
                    self.preferred.store(index, Ordering::Relaxed);
                    return Some(Ok(response));
                }
                Err(status) => match failover(&status) {
                    Some(wait) => {
                        tracing::debug!(replica = %replica.place, code = ?status.code(),
                            error = %status.message(), "index replica failed a call; trying another");
                        replica.fail_for(wait);
                        *last = Some(status);
                    }
                    None => return Some(Err(status)),
                },
            }
        }
        None
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
        let replicas = client.snapshot();
        let now = Instant::now();
        assert_eq!(order(&replicas, 0, now), vec![0, 1]);
        replicas[0].fail_for(FAILED_FOR);
        assert_eq!(order(&replicas, 0, now), vec![1, 0]);
        replicas[0].recovered();
        assert_eq!(order(&replicas, 0, now), vec![0, 1]);
    }

    #[test]
    fn entries_are_addresses_or_names_to_look_up() {
        let tls = ClientTls::from_ca_pem("");
        let address = |url: &str| Entry::Address(Place::dialled(url.to_string()));
        assert_eq!(
            parse_entry("10.0.0.7:50052", &tls),
            Ok(address("https://10.0.0.7:50052"))
        );
        assert_eq!(
            parse_entry("https://[fd00::7]:50052", &tls),
            Ok(address("https://[fd00::7]:50052"))
        );
        assert_eq!(
            parse_entry("index.lan:50052", &tls),
            Ok(Entry::Name {
                scheme: "https".into(),
                host: "index.lan".into(),
                port: 50052
            })
        );
        assert_eq!(
            parse_entry("http://index.lan", &ClientTls::Plaintext),
            Ok(Entry::Name {
                scheme: "http".into(),
                host: "index.lan".into(),
                port: 80
            })
        );
        let err = parse_entry("index.lan:http", &tls).expect_err("a port that is no number");
        assert!(err.contains("\"http\""), "{err}");
        assert!(parse_entry(":50052", &tls).is_err());
        let err = parse_entry("http://index.lan:1", &tls).expect_err("plaintext under TLS");
        assert!(err.contains("--insecure-plaintext"), "{err}");
    }

    #[tokio::test]
    async fn a_new_resolution_keeps_the_replicas_it_still_names() {
        let tls = ClientTls::Plaintext;
        let place = |ip: &str| {
            Place::resolved(
                "http",
                "index.lan",
                format!("{ip}:50052").parse().expect("addr"),
            )
        };
        let make = |p: &Place| Replica::new(p.clone(), &tls).ok();
        let first = reconcile(&[], &[place("10.0.0.1"), place("10.0.0.2")], make);
        assert_eq!(first.len(), 2);
        first[1].fail_for(FAILED_FOR);

        let wanted = [place("10.0.0.3"), place("10.0.0.2"), place("10.0.0.3")];
        let second = reconcile(&first, &wanted, make);
        let urls: Vec<&str> = second.iter().map(|r| r.place.url.as_str()).collect();
        assert_eq!(urls, ["http://10.0.0.3:50052", "http://10.0.0.2:50052"]);
        assert!(
            Arc::ptr_eq(&second[1], &first[1]),
            "10.0.0.2 keeps its replica"
        );
        assert!(
            !second[1].usable(Instant::now()),
            "and its failure mark with it"
        );
        assert_eq!(second[0].place.name.as_deref(), Some("index.lan"));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_nothing_fails_calls_naming_it() {
        let client =
            IndexClient::new("no-such-index.invalid:50052", &ClientTls::Plaintext).expect("client");
        let err = client
            .call(|mut c| async move {
                c.get_file(p2p_proto::index::v1::GetFileRequest::default())
                    .await
            })
            .await
            .expect_err("nothing to call");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            err.message().contains("\"no-such-index.invalid\""),
            "{}",
            err.message()
        );
    }

    /// A TLS server on 127.0.0.1 whose certificate names only `names`.
    async fn tls_server_named(
        dir: &std::path::Path,
        names: &[&str],
    ) -> (p2p_services::serve::testing::SpawnedServer, ClientTls) {
        use p2p_services::tls::issue::{CertDir, Role};
        let certs = CertDir::new(dir);
        let (ca, _) = certs.ensure_ca().expect("CA");
        let hosts: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        certs
            .ensure_leaf(&ca, "index", &hosts, Role::Server, true)
            .expect("leaf");
        let identity =
            p2p_services::tls::ServerTls::from_files(&certs.cert("index"), &certs.key("index"))
                .expect("identity");
        let (listener, addr) = p2p_services::serve::testing::ephemeral_listener()
            .await
            .expect("listener");
        let server = p2p_services::serve::testing::SpawnedServer::spawn(addr, |shutdown| async {
            let _ = p2p_services::serve::GrpcServer::new()
                .tls(Some(identity))
                .serve(listener, shutdown)
                .await;
        });
        let tls = ClientTls::from_ca_file(&certs.ca_cert()).expect("CA file");
        (server, tls)
    }

    /// What a call through `client` meets: UNIMPLEMENTED once the TLS
    /// handshake succeeded (the server serves only health), UNAVAILABLE
    /// when the certificate was refused.
    async fn call_code(client: &IndexClient) -> Code {
        let answer = client
            .call(|mut c| async move {
                c.get_file(p2p_proto::index::v1::GetFileRequest::default())
                    .await
            })
            .await;
        match answer {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }

    #[tokio::test]
    async fn a_name_is_dialled_by_address_and_its_certificate_checked_against_the_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (server, tls) = tls_server_named(dir.path(), &["localhost"]).await;
        let port = server.addr.rsplit_once(':').expect("port").1;

        let by_name = IndexClient::new(&format!("localhost:{port}"), &tls).expect("client");
        assert_eq!(call_code(&by_name).await, Code::Unimplemented);
        let replicas = by_name.snapshot();
        assert!(!replicas.is_empty());
        for replica in replicas.iter() {
            assert_eq!(replica.place.name.as_deref(), Some("localhost"));
            assert!(
                !replica.place.url.contains("localhost"),
                "dialled by address: {}",
                replica.place.url
            );
        }

        // The certificate names only `localhost`: dialling its address
        // without the name is refused, so the name is what was checked.
        let by_address = IndexClient::new(&server.addr, &tls).expect("client");
        assert_eq!(call_code(&by_address).await, Code::Unavailable);
    }

    #[tokio::test]
    async fn a_certificate_for_another_name_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (server, tls) = tls_server_named(dir.path(), &["index.example", "127.0.0.1"]).await;
        let port = server.addr.rsplit_once(':').expect("port").1;
        let client = IndexClient::new(&format!("localhost:{port}"), &tls).expect("client");
        assert_eq!(call_code(&client).await, Code::Unavailable);
    }
}
