//! The swarm benchmark's records: what `p2p-bench swarm` is asked to run
//! ([`SwarmPlan`]) and what one run of one case measured ([`SwarmCase`],
//! with an [`AgentRecord`] per agent and a [`Baseline`] per baseline).
//! `swarm` and the baselines fill them in and `report` and `plot` read
//! them; they live apart from all of those so that none imports another
//! back.

use std::time::Duration;

use crate::links::{LinkUse, LoadedRtt};

/// What `p2p-bench swarm` runs.
pub struct SwarmPlan {
    pub ns: Vec<usize>,
    pub sizes: Vec<u64>,
    pub rate_mbit: u32,
    pub delay_ms: u64,
    pub http: bool,
    pub bt: bool,
    pub mesh: bool,
    pub runs: usize,
    pub timeout: Duration,
    pub queue_ms: u64,
    pub env: AgentEnv,
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

/// One run of one (N, F) case: ours, the baselines and the bounds.
pub struct SwarmCase {
    pub n: usize,
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
