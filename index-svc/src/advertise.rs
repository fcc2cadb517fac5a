//! Which advertised addresses the index accepts. An agent names the
//! `host:port` where others reach its PeerService, and every downloader
//! then dials it, so an unchecked address would let any user point the
//! whole network at any host:port on the LAN. The rule: the advertised host
//! must be the caller's own source address (a DNS name must resolve to it),
//! unless the operator allows its network with `--allow-advertise-networks`
//! (for NAT, or containers that reach the index through a gateway).

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

/// Longest an advertised name may take to resolve.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The operator's exceptions to "advertise your own address".
#[derive(Debug, Clone, Default)]
pub struct AdvertisePolicy {
    allowed: Vec<IpNet>,
}

/// Parses `--allow-advertise-networks`: comma-separated CIDRs (a bare
/// address counts as a /32 or /128).
pub fn parse_networks(text: &str) -> Result<AdvertisePolicy, String> {
    let mut allowed = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let net = part
            .parse::<IpNet>()
            .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("{part:?} is not a network such as 10.0.0.0/8"))?;
        allowed.push(net);
    }
    Ok(AdvertisePolicy { allowed })
}

/// The host and port of an `advertise_addr`, checked for shape.
pub fn split(addr: &str, max_bytes: usize) -> Result<(&str, u16), String> {
    if addr.is_empty() {
        return Err(
            "advertise_addr is empty: send the host:port of the agent's PeerService".into(),
        );
    }
    if addr.len() > max_bytes {
        return Err(format!(
            "advertise_addr is {} bytes; at most {max_bytes}",
            addr.len()
        ));
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("advertise_addr {addr:?} is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(format!("advertise_addr {addr:?} has no usable host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host, p)),
        _ => Err(format!("advertise_addr {addr:?} has no valid port")),
    }
}

impl AdvertisePolicy {
    /// Whether `ip` lies in a network the operator allowed.
    fn allows(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// The operator's networks, for messages.
    pub fn networks(&self) -> String {
        let list: Vec<String> = self.allowed.iter().map(ToString::to_string).collect();
        list.join(",")
    }

    /// Decides on `host`'s resolved addresses (`resolved`, all of them)
    /// for a call that came from `caller`. Pure: resolution happens in
    /// [`AdvertisePolicy::check`].
    pub fn decide(
        &self,
        addr: &str,
        resolved: &[IpAddr],
        caller: Option<IpAddr>,
    ) -> Result<(), String> {
        let resolved: Vec<IpAddr> = resolved.iter().map(|ip| ip.to_canonical()).collect();
        let caller = caller.map(|ip| ip.to_canonical());
        if resolved.is_empty() {
            return Err(format!(
                "advertise_addr {addr:?} does not resolve to any address"
            ));
        }
        if resolved
            .iter()
            .all(|ip| Some(*ip) == caller || self.allows(*ip))
        {
            return Ok(());
        }
        let seen = caller.map_or_else(|| "an unknown address".to_string(), |ip| ip.to_string());
        let allowed = if self.allowed.is_empty() {
            String::new()
        } else {
            format!(" (allowed networks: {})", self.networks())
        };
        Err(format!(
            "advertise_addr {addr:?} is not this agent's own address: the index saw the call come \
             from {seen}{allowed}; advertise {seen}:PORT, or ask the operator to allow that network \
             with --allow-advertise-networks"
        ))
    }

    /// Resolves `host` (bounded by [`RESOLVE_TIMEOUT`]) and decides.
    pub async fn check(
        &self,
        addr: &str,
        host: &str,
        port: u16,
        caller: Option<IpAddr>,
    ) -> Result<(), String> {
        let resolved: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
                    .await
                {
                    Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
                    Ok(Err(err)) => {
                        return Err(format!("advertise_addr {addr:?} does not resolve: {err}"));
                    }
                    Err(_) => {
                        return Err(format!(
                            "advertise_addr {addr:?} did not resolve within {RESOLVE_TIMEOUT:?}"
                        ));
                    }
                }
            }
        };
        self.decide(addr, &resolved, caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn own_address_is_accepted_and_another_is_refused_naming_what_was_seen() {
        let policy = AdvertisePolicy::default();
        assert!(
            policy
                .decide("10.0.0.5:50053", &[ip("10.0.0.5")], Some(ip("10.0.0.5")))
                .is_ok()
        );
        let err = policy
            .decide("10.0.0.9:22", &[ip("10.0.0.9")], Some(ip("10.0.0.5")))
            .unwrap_err();
        assert!(err.contains("10.0.0.5"), "{err}");
    }

    #[test]
    fn mapped_ipv6_callers_match_their_ipv4_address() {
        let policy = AdvertisePolicy::default();
        assert!(
            policy
                .decide("10.0.0.5:1", &[ip("10.0.0.5")], Some(ip("::ffff:10.0.0.5")))
                .is_ok()
        );
    }

    #[test]
    fn allowed_networks_admit_other_addresses_and_only_those() {
        let policy = parse_networks("172.16.0.0/12, 192.168.7.7").unwrap();
        assert!(
            policy
                .decide("172.18.0.4:1", &[ip("172.18.0.4")], Some(ip("10.0.0.1")))
                .is_ok()
        );
        assert!(
            policy
                .decide("192.168.7.7:1", &[ip("192.168.7.7")], None)
                .is_ok()
        );
        assert!(
            policy
                .decide("10.1.1.1:1", &[ip("10.1.1.1")], Some(ip("10.0.0.1")))
                .is_err()
        );
        assert!(parse_networks("not-a-net").is_err());
    }

    #[test]
    fn a_name_must_resolve_only_to_acceptable_addresses() {
        let policy = AdvertisePolicy::default();
        let both = [ip("10.0.0.5"), ip("10.0.0.6")];
        assert!(
            policy
                .decide("peer:1", &both, Some(ip("10.0.0.5")))
                .is_err()
        );
        assert!(policy.decide("peer:1", &[], Some(ip("10.0.0.5"))).is_err());
    }

    #[test]
    fn advertised_addresses_must_be_host_and_port() {
        assert_eq!(split("10.0.0.5:50053", 100).unwrap(), ("10.0.0.5", 50053));
        assert!(split("agent-1.lan:7000", 100).is_ok());
        assert_eq!(split("[::1]:7000", 100).unwrap(), ("::1", 7000));
        for bad in ["", "host", "host:0", ":80", "a b:80"] {
            assert!(split(bad, 100).is_err(), "{bad:?}");
        }
        assert!(split(&"a".repeat(200), 100).is_err());
    }
}
