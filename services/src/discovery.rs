//! Finding the servers on the LAN with DNS-SD over multicast DNS
//! (RFC 6762/6763), so a new machine can join without being told an address.
//!
//! auth-svc [`announce`]s one instance of [`SERVICE_TYPE`] with TXT records
//! naming the protocol version, the CA fingerprint to pin and where index-svc
//! listens; clients [`browse`] for a bounded time and dial what they [`Found`].
//! The protocol is the `mdns-sd` crate's; this module only chooses what to
//! publish and turns what comes back into plain values.
//!
//! Both sides use IPv4 on non-loopback interfaces only: this is a LAN tool,
//! and loopback interfaces normally cannot carry multicast. The announcement
//! follows the machine's addresses: the daemon re-reads them every
//! [`ADDRESS_CHECK_INTERVAL`] and publishes what a DHCP lease change adds
//! or removes.
//!
//! Ownership: each `mdns-sd` daemon is one OS thread. An [`Announcer`] owns
//! its daemon and shuts it down on drop; [`browse`] owns its daemon for the
//! length of the call, also when the future is dropped early.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

/// The DNS-SD service type auth-svc announces.
pub const SERVICE_TYPE: &str = "_p2p-transfer._tcp.local.";

/// How often the announcing daemon re-reads the machine's addresses, so a
/// DHCP lease change is published within this long.
pub const ADDRESS_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// How long dropping an [`Announcer`] waits for the daemon to send its
/// goodbye packets and stop.
const SHUTDOWN_WAIT: Duration = Duration::from_millis(500);

/// The longest DNS label, and so the longest instance name (RFC 1035).
const MAX_LABEL_BYTES: usize = 63;

/// What to do when discovery cannot work on this network.
const PASS_ADDRESS: &str = "multicast may be blocked on this host or network; \
     pass the server's address instead (for example --auth 10.0.0.1:50051)";

/// Why announcing or browsing failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The mDNS daemon (a thread with multicast sockets) could not start or
    /// stopped answering.
    #[error("cannot run the mDNS responder: {source}; {PASS_ADDRESS}")]
    Daemon {
        /// What mdns-sd reported.
        #[source]
        source: mdns_sd::Error,
    },
    /// The instance name cannot be a DNS-SD instance name.
    #[error("cannot announce {instance:?}: {reason}; choose a shorter or plainer name")]
    InvalidInstance {
        /// The name as given.
        instance: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A TXT entry cannot be published (empty key, `=` in the key,
    /// non-ASCII key, or key and value longer than 255 bytes together).
    #[error("cannot announce TXT entry {key:?}: {reason}")]
    InvalidTxt {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// mdns-sd refused the service record.
    #[error("cannot build the DNS-SD record for {instance:?}: {source}")]
    Record {
        /// The instance name.
        instance: String,
        /// What mdns-sd reported.
        #[source]
        source: mdns_sd::Error,
    },
    /// The daemon did not take the registration.
    #[error("cannot announce {instance:?} on the LAN: {source}; {PASS_ADDRESS}")]
    Register {
        /// The instance name.
        instance: String,
        /// What mdns-sd reported.
        #[source]
        source: mdns_sd::Error,
    },
    /// The daemon did not start the browse.
    #[error("cannot browse the LAN for {SERVICE_TYPE}: {source}; {PASS_ADDRESS}")]
    Browse {
        /// What mdns-sd reported.
        #[source]
        source: mdns_sd::Error,
    },
}

/// One mdns-sd daemon thread, told to stop when dropped (without waiting:
/// [`Announcer`] and [`browse`] wait where they can afford to).
struct Daemon {
    inner: ServiceDaemon,
    stopped: bool,
}

impl Daemon {
    /// Starts a daemon on IPv4, non-loopback interfaces only.
    fn start() -> Result<Self, DiscoveryError> {
        let inner = ServiceDaemon::new().map_err(|source| DiscoveryError::Daemon { source })?;
        let daemon = Self {
            inner,
            stopped: false,
        };
        // Commands run in order on the daemon thread, so these apply before
        // any later register or browse.
        daemon
            .inner
            .disable_interface(vec![IfKind::IPv6, IfKind::LoopbackV4])
            .map_err(|source| DiscoveryError::Daemon { source })?;
        Ok(daemon)
    }

    /// Asks the daemon to send goodbyes and stop; returns its reply channel.
    fn stop(&mut self) -> Option<mdns_sd::Receiver<mdns_sd::DaemonStatus>> {
        if std::mem::replace(&mut self.stopped, true) {
            return None;
        }
        match self.inner.shutdown() {
            Ok(status) => Some(status),
            Err(err) => {
                tracing::debug!(%err, "mDNS daemon already stopped");
                None
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Announces one service instance until dropped. Dropping it unregisters
/// the instance (goodbye packets) and stops the daemon, blocking the
/// dropping thread at most half a second for the daemon to confirm.
pub struct Announcer {
    daemon: Daemon,
    fullname: String,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("fullname", &self.fullname)
            .finish_non_exhaustive()
    }
}

impl Announcer {
    /// The announced DNS-SD name: escaped instance name + [`SERVICE_TYPE`].
    pub fn fullname(&self) -> &str {
        &self.fullname
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        if let Err(err) = self.daemon.inner.unregister(&self.fullname) {
            tracing::debug!(%err, fullname = %self.fullname, "mDNS unregister not sent");
        }
        if let Some(status) = self.daemon.stop()
            && status.recv_timeout(SHUTDOWN_WAIT).is_err()
        {
            tracing::debug!(fullname = %self.fullname, "mDNS daemon did not confirm its shutdown");
        }
    }
}

/// Announces `instance` (a human name such as "auth-svc on HOSTNAME") of
/// [`SERVICE_TYPE`] at `port` (the gRPC port) with the TXT records `txt`,
/// on every non-loopback IPv4 interface, under the host name
/// `<this machine's host name>.local.`. Keys we use: `v` = `1`, `fp` = the
/// CA fingerprint `sha256:<64 hex>`, `index` = index-svc's address
/// (`:50052` meaning this host, or `10.0.0.1:50052`).
///
/// Addresses are detected by the daemon and follow changes (see
/// [`ADDRESS_CHECK_INTERVAL`]); a machine with no LAN address yet starts
/// announcing when it gets one.
pub fn announce(
    instance: &str,
    port: u16,
    txt: &[(&str, String)],
) -> Result<Announcer, DiscoveryError> {
    check_instance(instance)?;
    for (key, value) in txt {
        check_txt(key, value)?;
    }
    let host = format!("{}.local.", host_label(&this_host_name()));
    let properties: Vec<(&str, &str)> = txt.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let info = ServiceInfo::new(SERVICE_TYPE, instance, &host, (), port, &properties[..])
        .map_err(|source| DiscoveryError::Record {
            instance: instance.to_string(),
            source,
        })?
        .enable_addr_auto();
    let fullname = info.get_fullname().to_string();

    let daemon = Daemon::start()?;
    daemon
        .inner
        .set_ip_check_interval(ADDRESS_CHECK_INTERVAL.as_secs() as u32)
        .map_err(|source| DiscoveryError::Daemon { source })?;
    daemon
        .inner
        .register(info)
        .map_err(|source| DiscoveryError::Register {
            instance: instance.to_string(),
            source,
        })?;
    tracing::info!(%fullname, %host, port, "announcing on the LAN (mDNS)");
    Ok(Announcer { daemon, fullname })
}

/// One server found on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The instance name as announced, unescaped ("auth-svc on HOSTNAME").
    pub instance: String,
    /// The announcing host's mDNS name ("hostname.local.").
    pub host: String,
    /// Its addresses, sorted (IPv4 before IPv6).
    pub addrs: Vec<IpAddr>,
    /// The announced port (auth-svc's gRPC port).
    pub port: u16,
    /// The TXT records; keys lower-cased (DNS-SD keys are case-insensitive),
    /// a key without a value maps to "".
    pub txt: BTreeMap<String, String>,
}

impl Found {
    /// The "fp" TXT value, if any (the CA fingerprint, `sha256:<64 hex>`;
    /// not checked here: the caller pins it).
    pub fn fingerprint(&self) -> Option<&str> {
        self.txt.get("fp").map(String::as_str)
    }

    /// `addr:port` strings to dial, IPv4 first (IPv6 in brackets).
    /// IPv6 link-local addresses are left out: dialling one needs the
    /// interface it was seen on, which `addrs` does not carry.
    pub fn dial_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<IpAddr> = self
            .addrs
            .iter()
            .copied()
            .filter(|addr| !matches!(addr, IpAddr::V6(v6) if v6.is_unicast_link_local()))
            .collect();
        addrs.sort_by_key(|addr| (addr.is_ipv6(), *addr));
        addrs.dedup();
        addrs
            .into_iter()
            .map(|addr| std::net::SocketAddr::new(addr, self.port).to_string())
            .collect()
    }
}

/// Browses the LAN for [`SERVICE_TYPE`] for `wait`, then returns every
/// instance resolved by then and not withdrawn, one per instance name,
/// sorted by instance name. Never blocks the async runtime.
pub async fn browse(wait: Duration) -> Result<Vec<Found>, DiscoveryError> {
    let mut daemon = Daemon::start()?;
    let events = daemon
        .inner
        .browse(SERVICE_TYPE)
        .map_err(|source| DiscoveryError::Browse { source })?;
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv_async()).await {
            Err(_elapsed) => break,
            Ok(Err(_closed)) => {
                tracing::debug!("mDNS browse ended before its deadline");
                break;
            }
            Ok(Ok(ServiceEvent::ServiceResolved(service))) => match found_from(&service) {
                Some(found) => seen.resolved(found),
                None => tracing::debug!(fullname = %service.fullname, "ignored a foreign name"),
            },
            Ok(Ok(ServiceEvent::ServiceRemoved(_, fullname))) => {
                if let Some(instance) = instance_of(&fullname) {
                    seen.removed(&instance);
                }
            }
            Ok(Ok(_)) => {}
        }
    }
    if let Some(status) = daemon.stop() {
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, status.recv_async()).await;
    }
    Ok(seen.into_sorted())
}

/// What a browse has seen so far: the latest resolution of each instance.
#[derive(Debug, Default)]
struct Seen {
    by_instance: BTreeMap<String, Found>,
}

impl Seen {
    /// A (re)resolution replaces what was known about the instance: mdns-sd
    /// reports the whole current record set each time.
    fn resolved(&mut self, found: Found) {
        self.by_instance.insert(found.instance.clone(), found);
    }

    /// The instance said goodbye or expired.
    fn removed(&mut self, instance: &str) {
        self.by_instance.remove(instance);
    }

    /// One entry per instance, sorted by instance name.
    fn into_sorted(self) -> Vec<Found> {
        self.by_instance.into_values().collect()
    }
}

/// Turns mdns-sd's resolution into a [`Found`]; `None` for a name outside
/// [`SERVICE_TYPE`] or without addresses.
fn found_from(service: &mdns_sd::ResolvedService) -> Option<Found> {
    let instance = instance_of(&service.fullname)?;
    let mut addrs: Vec<IpAddr> = service
        .addresses
        .iter()
        .map(mdns_sd::ScopedIp::to_ip_addr)
        .collect();
    if addrs.is_empty() {
        return None;
    }
    addrs.sort();
    addrs.dedup();
    Some(Found {
        instance,
        host: service.host.clone(),
        addrs,
        port: service.port,
        txt: txt_map(
            service
                .txt_properties
                .iter()
                .map(|property| (property.key(), property.val())),
        ),
    })
}

/// TXT entries as a map: keys lower-cased, a key without value maps to "",
/// an entry whose value is not UTF-8 is left out (nothing we publish is
/// binary), the first of repeated keys wins (RFC 6763 section 6.4).
fn txt_map<'a>(
    entries: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (key, value) in entries {
        if key.is_empty() {
            continue;
        }
        let value = match value {
            None => String::new(),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => text.to_string(),
                Err(_) => continue,
            },
        };
        map.entry(key.to_ascii_lowercase()).or_insert(value);
    }
    map
}

/// The instance name of a full DNS-SD name of [`SERVICE_TYPE`], with DNS
/// escapes (`\.`, `\\`, `\DDD`) undone; `None` for another service type.
fn instance_of(fullname: &str) -> Option<String> {
    let cut = fullname.len().checked_sub(SERVICE_TYPE.len() + 1)?;
    let (label, suffix) = (fullname.get(..cut)?, fullname.get(cut..)?);
    let suffix_ok = suffix.starts_with('.') && suffix[1..].eq_ignore_ascii_case(SERVICE_TYPE);
    (suffix_ok && !label.is_empty()).then(|| unescape_label(label))
}

/// Undoes DNS presentation-format escapes in one label.
fn unescape_label(label: &str) -> String {
    let mut bytes = Vec::with_capacity(label.len());
    let raw = label.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' || i + 1 == raw.len() {
            bytes.push(raw[i]);
            i += 1;
            continue;
        }
        let digits = raw
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(u8::is_ascii_digit));
        let decimal = digits
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse::<u8>().ok());
        match decimal {
            Some(byte) => {
                bytes.push(byte);
                i += 4;
            }
            None => {
                bytes.push(raw[i + 1]);
                i += 2;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn check_instance(instance: &str) -> Result<(), DiscoveryError> {
    let reason = if instance.trim().is_empty() {
        Some("the name is empty")
    } else if instance.len() > MAX_LABEL_BYTES {
        Some("a DNS-SD instance name is at most 63 bytes")
    } else if instance.chars().any(char::is_control) {
        Some("the name contains control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DiscoveryError::InvalidInstance {
            instance: instance.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn check_txt(key: &str, value: &str) -> Result<(), DiscoveryError> {
    let reason = if key.is_empty() {
        Some("the key is empty")
    } else if !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        Some("a key is printable ASCII")
    } else if key.contains('=') {
        Some("a key cannot contain '='")
    } else if key.len() + 1 + value.len() > 255 {
        Some("key=value is at most 255 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DiscoveryError::InvalidTxt {
            key: key.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// This machine's host name as the kernel reports it.
fn this_host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// A single DNS label for `.local.` from a host name: its first label, with
/// anything but letters, digits and `-` replaced by `-`, at most 63 bytes;
/// "p2p-host" when nothing usable is left.
fn host_label(host_name: &str) -> String {
    let first = host_name.split('.').next().unwrap_or_default();
    let label: String = first
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_LABEL_BYTES)
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "p2p-host".to_string()
    } else {
        label.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn found(instance: &str, addrs: &[IpAddr]) -> Found {
        Found {
            instance: instance.into(),
            host: "box.local.".into(),
            addrs: addrs.to_vec(),
            port: 50051,
            txt: BTreeMap::new(),
        }
    }

    #[test]
    fn txt_keys_are_lower_cased_and_valueless_keys_are_empty() {
        let map = txt_map([
            ("V", Some(&b"1"[..])),
            ("fp", Some(&b"sha256:ab"[..])),
            ("flag", None),
        ]);
        assert_eq!(map.get("v").map(String::as_str), Some("1"));
        assert_eq!(map.get("fp").map(String::as_str), Some("sha256:ab"));
        assert_eq!(map.get("flag").map(String::as_str), Some(""));
    }

    #[test]
    fn txt_first_of_repeated_keys_wins_and_binary_values_are_dropped() {
        let map = txt_map([
            ("index", Some(&b":50052"[..])),
            ("INDEX", Some(&b"10.0.0.9:50052"[..])),
            ("bin", Some(&[0xff, 0xfe][..])),
            ("", Some(&b"x"[..])),
        ]);
        assert_eq!(map.len(), 1);
        assert_eq!(map["index"], ":50052");
    }

    #[test]
    fn fingerprint_reads_the_fp_entry() {
        let mut server = found("a", &[]);
        assert_eq!(server.fingerprint(), None);
        server
            .txt
            .insert("fp".into(), format!("sha256:{}", "0".repeat(64)));
        assert_eq!(
            server.fingerprint(),
            Some(&*format!("sha256:{}", "0".repeat(64)))
        );
    }

    #[test]
    fn dial_addrs_put_ipv4_first_bracket_ipv6_and_skip_link_local() {
        let server = found(
            "a",
            &[
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
            ],
        );
        assert_eq!(
            server.dial_addrs(),
            [
                "10.0.0.1:50051",
                "10.0.0.2:50051",
                "[::1]:50051",
                "[fd00::1]:50051"
            ]
        );
    }

    #[test]
    fn seen_keeps_the_latest_resolution_per_instance_sorted_by_name() {
        let mut seen = Seen::default();
        let old = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let new = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
        seen.resolved(found("zeta", &[old]));
        seen.resolved(found("alpha", &[old]));
        seen.resolved(found("zeta", &[new]));
        let all = seen.into_sorted();
        let names: Vec<&str> = all.iter().map(|f| f.instance.as_str()).collect();
        assert_eq!(names, ["alpha", "zeta"]);
        assert_eq!(all[1].addrs, [new]);
    }

    #[test]
    fn seen_forgets_a_removed_instance() {
        let mut seen = Seen::default();
        seen.resolved(found("a", &[IpAddr::V4(Ipv4Addr::LOCALHOST)]));
        seen.resolved(found("b", &[IpAddr::V4(Ipv4Addr::LOCALHOST)]));
        seen.removed("a");
        let names: Vec<String> = seen.into_sorted().into_iter().map(|f| f.instance).collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn instance_names_are_cut_from_our_service_type_and_unescaped() {
        assert_eq!(
            instance_of("auth-svc on box._p2p-transfer._tcp.local.").as_deref(),
            Some("auth-svc on box")
        );
        assert_eq!(
            instance_of("auth-svc on box\\.lan._P2P-Transfer._tcp.local.").as_deref(),
            Some("auth-svc on box.lan")
        );
        assert_eq!(
            instance_of("a\\\\b\\032c._p2p-transfer._tcp.local.").as_deref(),
            Some("a\\b c")
        );
        assert_eq!(instance_of("printer._ipp._tcp.local."), None);
        assert_eq!(instance_of("._p2p-transfer._tcp.local."), None);
        assert_eq!(instance_of("_p2p-transfer._tcp.local."), None);
    }

    #[test]
    fn host_label_is_one_plain_dns_label() {
        assert_eq!(host_label("build-01.example.com"), "build-01");
        assert_eq!(host_label("Büro_PC"), "B-ro-PC");
        assert_eq!(host_label(""), "p2p-host");
        assert_eq!(host_label("___"), "p2p-host");
        assert_eq!(host_label(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn bad_names_and_txt_entries_are_refused_before_anything_starts() {
        assert!(matches!(
            announce("", 1, &[]),
            Err(DiscoveryError::InvalidInstance { .. })
        ));
        assert!(matches!(
            announce(&"n".repeat(64), 1, &[]),
            Err(DiscoveryError::InvalidInstance { .. })
        ));
        assert!(matches!(
            announce("ok", 1, &[("a=b", "1".into())]),
            Err(DiscoveryError::InvalidTxt { .. })
        ));
        assert!(matches!(
            announce("ok", 1, &[("fp", "f".repeat(300))]),
            Err(DiscoveryError::InvalidTxt { .. })
        ));
    }

    #[test]
    fn errors_say_to_pass_the_address_when_multicast_fails() {
        let err = DiscoveryError::Browse {
            source: mdns_sd::Error::Msg("join multicast group: Operation not permitted".into()),
        };
        assert!(
            err.to_string()
                .contains("pass the server's address instead")
        );
    }
}
