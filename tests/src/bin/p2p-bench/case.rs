//! The swarm benchmark's records: what `p2p-bench swarm` is asked to run
//! ([`SwarmPlan`]) and what one run of one case measured ([`SwarmCase`],
//! with an [`AgentRecord`] per agent and a [`Baseline`] per baseline).
//! `swarm` and the baselines fill them in and `report` and `plot` read
//! them; they live apart from all of those so that none imports another
//! back.

use std::time::Duration;

use p2p_tests::netns::{HostQueue, LinkShape};

use crate::links::{LinkUse, LoadedRtt};

/// Bytes on the wire per byte of TCP payload on these links: a 1,514-byte
/// Ethernet frame carries 1,448 bytes (MSS with timestamps). A host's link
/// bound counts it, so no transfer over TCP can reach 1.0.
pub const TCP_FRAMING: f64 = 1514.0 / 1448.0;

/// What `p2p-bench swarm` runs.
pub struct SwarmPlan {
    pub ns: Vec<usize>,
    pub sizes: Vec<u64>,
    pub rate_mbit: u32,
    /// A mixed LAN's downloader classes (empty: every host at `rate_mbit`
    /// and N from `ns`).
    pub classes: Vec<HostClass>,
    /// The seeder's class (its link; it adds no downloader), by name.
    pub seeder_class: Option<String>,
    pub delay_ms: u64,
    pub http: bool,
    pub bt: bool,
    pub mesh: bool,
    pub runs: usize,
    pub timeout: Duration,
    pub queue_ms: u64,
    pub host_queue: HostQueue,
    pub env: AgentEnv,
    /// MiB the agents share and fetch before the measured file (0: none).
    pub warm_up_mib: u64,
}

/// Hosts that share a link: `count` downloaders with `down_mbit` down and
/// `up_mbit` up (`--class wifi=4:30/10`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HostClass {
    pub name: String,
    pub count: usize,
    pub down_mbit: u32,
    pub up_mbit: u32,
}

impl HostClass {
    /// Parses `NAME=COUNT:DOWN/UP` (rates in Mbit/s).
    pub fn parse(s: &str) -> Result<Self, String> {
        let usage =
            || format!("expected NAME=COUNT:DOWN/UP in Mbit/s, e.g. wifi=4:30/10; got {s:?}");
        let (name, link) = s.split_once('=').ok_or_else(usage)?;
        let (count, rates) = link.split_once(':').ok_or_else(usage)?;
        let (down, up) = rates.split_once('/').ok_or_else(usage)?;
        let number = |v: &str| v.trim().parse::<u32>().ok().filter(|&v| v > 0);
        let (Some(count), Some(down_mbit), Some(up_mbit)) =
            (number(count), number(down), number(up))
        else {
            return Err(usage());
        };
        if name.is_empty() {
            return Err(usage());
        }
        Ok(Self {
            name: name.to_string(),
            count: count as usize,
            down_mbit,
            up_mbit,
        })
    }

    /// Its hosts' links.
    pub fn shape(&self, base: LinkShape) -> LinkShape {
        LinkShape {
            rate_mbit: Some(self.up_mbit),
            down_mbit: Some(self.down_mbit),
            ..base
        }
    }
}

/// Who is on one case's LAN: the downloaders' classes, in the order of
/// their hosts, and the seeder's link.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Mix {
    pub classes: Vec<HostClass>,
    pub seeder: HostClass,
}

impl Mix {
    /// N downloaders and the seeder, every link at `rate_mbit` each way.
    pub fn uniform(n: usize, rate_mbit: u32) -> Self {
        let class = HostClass {
            name: "all".into(),
            count: n,
            down_mbit: rate_mbit,
            up_mbit: rate_mbit,
        };
        Self {
            seeder: HostClass {
                count: 0,
                ..class.clone()
            },
            classes: vec![class],
        }
    }

    /// The downloaders' classes, the seeder on the one named `seeder`
    /// (the first class when `None`).
    pub fn of(classes: Vec<HostClass>, seeder: Option<&str>) -> Result<Self, String> {
        let seeder = match seeder {
            None => classes.first(),
            Some(name) => classes.iter().find(|c| c.name == name),
        }
        .ok_or_else(|| format!("--seeder-class {seeder:?} names no --class"))?;
        Ok(Self {
            seeder: HostClass {
                count: 0,
                ..seeder.clone()
            },
            classes,
        })
    }

    /// How many downloaders.
    pub fn n(&self) -> usize {
        self.classes.iter().map(|c| c.count).sum()
    }

    /// The class of each downloader, in host order.
    pub fn downloader_classes(&self) -> Vec<&HostClass> {
        self.classes
            .iter()
            .flat_map(|c| std::iter::repeat_n(c, c.count))
            .collect()
    }

    /// The time, with TCP framing, a host of `class` needs at least to
    /// receive `size` bytes: its own download link, or the seeder's upload
    /// when that is slower (every byte leaves the seeder once).
    pub fn class_bound_s(&self, class: &HostClass, size: u64) -> f64 {
        let mbit = class.down_mbit.min(self.seeder.up_mbit);
        size as f64 * 8.0 * TCP_FRAMING / (f64::from(mbit) * 1e6)
    }

    /// The Kurose & Ross bound of the whole swarm without framing:
    /// max(F/u_seeder, F/d_min, N·F/(u_seeder + Σ u_i)).
    pub fn p2p_bound_s(&self, size: u64) -> f64 {
        let bits = size as f64 * 8.0;
        let mbps = |mbit: u32| f64::from(mbit) * 1e6;
        let d_min = self.classes.iter().map(|c| c.down_mbit).min().unwrap_or(1);
        let all_up: f64 = mbps(self.seeder.up_mbit)
            + self
                .classes
                .iter()
                .map(|c| c.count as f64 * mbps(c.up_mbit))
                .sum::<f64>();
        (bits / mbps(self.seeder.up_mbit))
            .max(bits / mbps(d_min))
            .max(self.n() as f64 * bits / all_up)
    }

    /// The client-server bound: the seeder uploads N copies.
    pub fn cs_bound_s(&self, size: u64) -> f64 {
        let bits = size as f64 * 8.0;
        let d_min = self.classes.iter().map(|c| c.down_mbit).min().unwrap_or(1);
        (self.n() as f64 * bits / (f64::from(self.seeder.up_mbit) * 1e6))
            .max(bits / (f64::from(d_min) * 1e6))
    }

    /// The slowest of `per_host_s` (downloader times in host order) in
    /// each class, over that class's bound: (class, slowest, × bound).
    pub fn slowest_per_class(&self, per_host_s: &[f64], size: u64) -> Vec<(String, f64, f64)> {
        let of = self.downloader_classes();
        self.classes
            .iter()
            .filter_map(|class| {
                let slowest = per_host_s
                    .iter()
                    .zip(&of)
                    .filter(|(_, c)| c.name == class.name)
                    .map(|(t, _)| *t)
                    .reduce(f64::max)?;
                Some((
                    class.name.clone(),
                    slowest,
                    slowest / self.class_bound_s(class, size),
                ))
            })
            .collect()
    }
}

/// Environment the bench adds to the agents it starts.
#[derive(Debug)]
pub struct AgentEnv {
    /// For every agent.
    pub all: Vec<(String, String)>,
    /// For the seeder only, after `all`.
    pub seeder: Vec<(String, String)>,
}

impl AgentEnv {
    /// `KEY=VALUE` each, as recorded in the JSON.
    pub fn listed(vars: &[(String, String)]) -> Vec<String> {
        vars.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// What one agent did during a swarm case.
#[derive(serde::Serialize)]
pub struct AgentRecord {
    pub name: String,
    /// Seconds from the start until its `p2p get` returned (None: seeder).
    pub done_s: Option<f64>,
    pub bytes_uploaded: u64,
    pub bytes_downloaded: u64,
    pub chunks_from_partial_sources: u64,
    pub peak_rss_bytes: u64,
    pub cpu_s: f64,
    /// Of `cpu_s`, the user-space share.
    pub cpu_user_s: f64,
}

impl AgentRecord {
    /// Leaves what the agent did after `before` (its peak RSS stays the
    /// whole run's).
    pub fn subtract(&mut self, before: &AgentRecord) {
        self.bytes_uploaded = self.bytes_uploaded.saturating_sub(before.bytes_uploaded);
        self.bytes_downloaded = self
            .bytes_downloaded
            .saturating_sub(before.bytes_downloaded);
        self.chunks_from_partial_sources = self
            .chunks_from_partial_sources
            .saturating_sub(before.chunks_from_partial_sources);
        self.cpu_s -= before.cpu_s;
        self.cpu_user_s -= before.cpu_user_s;
    }
}

/// One run of one (N, F) case: ours, the baselines and the bounds.
pub struct SwarmCase {
    pub n: usize,
    /// Who was on the LAN.
    pub mix: Mix,
    pub size_bytes: u64,
    pub ours_s: f64,
    pub http_s: Option<f64>,
    pub cs_bound_s: f64,
    pub p2p_bound_s: f64,
    pub seeder_upload_multiple: f64,
    /// Everything every agent uploaded, over the N·F the downloaders needed:
    /// 1.0 means no byte crossed the network twice.
    pub upload_over_needed: f64,
    /// Share of both cores busy while the swarm ran.
    pub cpu_busy_swarm: Option<f64>,
    /// CPU seconds index-svc used during the case (auth-svc is negligible).
    pub index_cpu_s: f64,
    /// Share of both cores busy while the HTTP baseline ran.
    pub cpu_busy_http: Option<f64>,
    pub max_agent_rss_bytes: u64,
    pub agents: Vec<AgentRecord>,
    pub per_host_s: Vec<f64>,
    /// Index RPCs (every method) per downloader per second of the swarm.
    pub index_rps_per_downloader: Option<f64>,
    /// Of those, LocateSources and UpdateHoldings only.
    pub index_loop_rps_per_downloader: Option<f64>,
    /// Agents' CPU seconds (seeder and downloaders) per GiB delivered.
    pub agents_cpu_s_per_gib: f64,
    /// Of that, the user-space share.
    pub agents_user_s_per_gib: f64,
    /// How the links were used, from the switch's counters.
    pub links: Option<LinkUse>,
    pub bt: Option<Baseline>,
    pub mesh: Option<Baseline>,
    /// Why the raw TCP mesh did not finish, when it did not.
    pub mesh_failed: Option<String>,
    /// Round-trip times on the links mid-swarm.
    pub loaded_rtt: Option<LoadedRtt>,
}

/// What a baseline (aria2c, the raw TCP mesh) did in one case.
#[derive(Clone, serde::Serialize)]
pub struct Baseline {
    /// Until the last downloader had the whole file.
    pub time_s: f64,
    pub per_host_s: Vec<f64>,
    /// Its processes' CPU seconds (seeder and downloaders) per GiB delivered.
    pub cpu_s_per_gib: f64,
    /// Of that, the user-space share.
    pub user_s_per_gib: f64,
    /// Round-trip times on the links mid-transfer.
    pub loaded_rtt: Option<LoadedRtt>,
}

impl Baseline {
    /// From each downloader's time and the processes' summed (user,
    /// system) CPU seconds, over `gib` delivered.
    pub fn new(
        per_host_s: Vec<f64>,
        (user, system): (f64, f64),
        gib: f64,
        loaded_rtt: Option<LoadedRtt>,
    ) -> Self {
        Self {
            time_s: per_host_s.iter().copied().fold(0.0, f64::max),
            per_host_s,
            cpu_s_per_gib: (user + system) / gib,
            user_s_per_gib: user / gib,
            loaded_rtt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_is_name_count_down_and_up() {
        assert_eq!(
            HostClass::parse("wifi=4:30/10"),
            Ok(HostClass {
                name: "wifi".into(),
                count: 4,
                down_mbit: 30,
                up_mbit: 10
            })
        );
        for bad in [
            "wifi=4:30",
            "wifi4:30/10",
            "=4:30/10",
            "wifi=0:30/10",
            "wifi=4:x/10",
        ] {
            assert!(HostClass::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_class_is_held_to_its_own_link() {
        let mix = Mix::of(
            vec![
                HostClass::parse("wired=4:100/100").unwrap(),
                HostClass::parse("wifi=4:30/10").unwrap(),
            ],
            None,
        )
        .unwrap();
        let f = 64 << 20;
        // The figures: 5.6 s for a wired host, 18.7 s for Wi-Fi.
        assert!((mix.class_bound_s(&mix.classes[0], f) - 5.61).abs() < 0.01);
        assert!((mix.class_bound_s(&mix.classes[1], f) - 18.71).abs() < 0.01);
        let slowest = mix.slowest_per_class(&[6.0, 7.0, 6.5, 6.2, 20.0, 19.0, 21.0, 19.5], f);
        assert_eq!(slowest[0].0, "wired");
        assert_eq!(slowest[0].1, 7.0);
        assert_eq!(slowest[1].1, 21.0);
        // A seeder on Wi-Fi bounds everyone by its upload.
        let slow_seeder = Mix::of(mix.classes.clone(), Some("wifi")).unwrap();
        assert!(slow_seeder.class_bound_s(&slow_seeder.classes[0], f) > 56.0);
        assert!(Mix::of(mix.classes, Some("dsl")).is_err());
    }

    #[test]
    fn a_uniform_lan_keeps_the_old_bound() {
        let mix = Mix::uniform(8, 100);
        let f = 64 << 20;
        assert!((mix.p2p_bound_s(f) - 5.37).abs() < 0.01);
        assert!((mix.cs_bound_s(f) - 8.0 * 5.37).abs() < 0.1);
    }
}
