//! The swarm benchmark: for every (F, N) case and run, an emulated LAN with
//! auth-svc and index-svc on host 0, the seeder on host 1 and N downloaders
//! on hosts 2.., all fetching the same file at once; then, on the same LAN,
//! the baselines: aria2c (`bittorrent`), the raw TCP mesh (`mesh`) and a
//! central HTTP server on the seeder host. What it measured goes into a
//! [`SwarmCase`]; `report` prints and writes the cases.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use p2p_tests::netns::{Host, Lan, LinkShape};

use crate::bittorrent::bittorrent_case;
use crate::case::{AgentEnv, AgentRecord, Mix, SwarmCase, SwarmPlan};
use crate::cluster;
use crate::links::{LINK_SAMPLE_EVERY, RTT_SAMPLE_AT, link_use, sample_rtt};
use crate::mesh::mesh_case;
use crate::payload::{file_hash, random_file};
use crate::process::{Proc, bin, spawn, wait_until};
use crate::report;
use crate::usage::{cpu_seconds, cpu_time, machine_jiffies, peak_rss_bytes, utilisation};

/// Runs every (F, N) case `runs` times; writes `<base>.json` (every run
/// and the summaries), `<base>.csv` (one row per run) and `<base>.svg`.
pub fn swarm(base: &Path, plan: &SwarmPlan) -> Result<()> {
    if let Some(reason) = Lan::unavailable_reason() {
        bail!("the swarm benchmark needs network namespaces: {reason}");
    }
    if plan.delay_ms > 0 && !netem_available() {
        bail!(
            "--delay-ms needs the sch_netem qdisc, which this kernel does not have (`modprobe sch_netem` fails); run without --delay-ms"
        );
    }
    if plan.bt {
        for tool in ["aria2c", "opentracker"] {
            let found = Command::new("which")
                .arg(tool)
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                bail!(
                    "the BitTorrent baseline needs {tool}: apt-get install -y aria2 opentracker (or pass --no-bt)"
                );
            }
        }
    }
    let shape = LinkShape {
        rate_mbit: Some(plan.rate_mbit),
        down_mbit: None,
        delay: (plan.delay_ms > 0).then(|| Duration::from_millis(plan.delay_ms)),
        queue: Some(Duration::from_millis(plan.queue_ms)),
        host_queue: plan.host_queue,
    };
    let mixes = if plan.classes.is_empty() {
        plan.ns
            .iter()
            .map(|&n| Mix::uniform(n, plan.rate_mbit))
            .collect()
    } else {
        vec![
            Mix::of(plan.classes.clone(), plan.seeder_class.as_deref())
                .map_err(anyhow::Error::msg)?,
        ]
    };
    let mut cases = Vec::new();
    let mut table = report::RunTable::start();
    for &size_mib in &plan.sizes {
        for mix in &mixes {
            for run in 0..plan.runs {
                let case = swarm_case(
                    mix,
                    size_mib,
                    shape,
                    (plan.http, plan.bt, plan.mesh),
                    plan.timeout,
                    &plan.env,
                    plan.warm_up_mib,
                )?;
                table.row(&case, size_mib, run);
                cases.push(case);
            }
        }
    }
    report::write(base, plan, &cases, table)
}

/// Whether `tc` can use netem here (it cannot on kernels built without it).
fn netem_available() -> bool {
    Command::new("modprobe")
        .args(["-q", "sch_netem"])
        .status()
        .is_ok_and(|s| s.success())
        || std::path::Path::new("/sys/module/sch_netem").exists()
}

/// Runs one case once on a LAN of its own: ours, then those of aria2c, the
/// raw TCP mesh and HTTP that are asked for, on the same hosts and file.
/// Host 0 (the services) has `shape`; the seeder and the downloaders the
/// links of their classes in `mix`.
#[allow(clippy::too_many_lines)]
fn swarm_case(
    mix: &Mix,
    size_mib: u64,
    shape: LinkShape,
    (http, bt, mesh): (bool, bool, bool),
    timeout: Duration,
    env: &AgentEnv,
    warm_up_mib: u64,
) -> Result<SwarmCase> {
    let n = mix.n();
    let size = size_mib << 20;
    let f = size as f64;
    let cs_bound_s = mix.cs_bound_s(size);
    let p2p_bound_s = mix.p2p_bound_s(size);
    let bps = |mbit: u32| f64::from(mbit) * 1e6 / 8.0;
    let seeder_up_bps = bps(mix.seeder.up_mbit);
    let down_bps: Vec<f64> = mix
        .downloader_classes()
        .iter()
        .map(|c| bps(c.down_mbit))
        .collect();

    let dir = tempfile::tempdir()?;
    if std::env::var_os("P2P_BENCH_KEEP").is_some() {
        eprintln!("keeping {}", dir.path().display());
    }
    let lan = Lan::create(n + 2, shape)?;
    lan.host(1).shape(mix.seeder.shape(shape))?;
    for (i, class) in mix.downloader_classes().iter().enumerate() {
        lan.host(i + 2).shape(class.shape(shape))?;
    }
    let services = lan.host(0).clone();
    let seeder = lan.host(1).clone();
    let p2p = bin("p2p")?;
    let seeder_env: Vec<(String, String)> = env.all.iter().chain(&env.seeder).cloned().collect();
    let cluster::LanAgents {
        services: procs,
        seeder: seed_agent,
        peers: agents,
    } = cluster::start_lan_agents(&lan, n, dir.path(), &seeder_env, &env.all)?;
    // Counters before the measured file: what a warm-up left (none).
    let before = if warm_up_mib > 0 {
        let warm_up = dir.path().join("seeder").join("warm-up.bin");
        random_file(&warm_up, warm_up_mib << 20, !(size_mib ^ n as u64))?;
        cluster::share(seeder.command(&p2p), &dir.path().join("seeder"), &warm_up)?;
        get_everywhere(&lan, dir.path(), n, "warm-up.bin", Instant::now(), timeout)
            .context("the warm-up file")?;
        agent_records(&lan, dir.path(), &seed_agent, &agents, None)?
    } else {
        Vec::new()
    };
    let source = dir.path().join("seeder").join("payload.bin");
    random_file(&source, size, size_mib ^ n as u64)?;
    let want = file_hash(&source)?;
    cluster::share(seeder.command(&p2p), &dir.path().join("seeder"), &source)?;

    let index_before = index_requests(&services);
    let cpu_before = machine_jiffies();
    let meter = lan.link_meter(LINK_SAMPLE_EVERY).ok();
    std::thread::sleep(LINK_SAMPLE_EVERY * 2);
    let started = Instant::now();
    let rtt_at = Duration::from_secs_f64(p2p_bound_s * RTT_SAMPLE_AT);
    let rtt = sample_rtt([seeder.clone(), lan.host(2).clone()], 50053, rtt_at);
    let gets = get_everywhere(&lan, dir.path(), n, "payload.bin", started, timeout)
        .with_context(|| format!("swarm case N={n} F={size_mib}MiB"))?;
    let cpu_busy_swarm = utilisation(cpu_before, machine_jiffies());
    let loaded_rtt = rtt.join().ok().flatten();
    let swarm_s = started.elapsed().as_secs_f64();
    std::thread::sleep(LINK_SAMPLE_EVERY * 2);
    let samples = meter.map(|m| m.stop()).unwrap_or_default();
    let index_after = index_requests(&services);
    let per_downloader_s = n as f64 * swarm_s;
    let (index_rps_per_downloader, index_loop_rps_per_downloader) =
        match (index_before, index_after) {
            (Some((a0, h0)), Some((a1, h1))) => (
                Some((a1 - a0) / per_downloader_s),
                Some((h1 - h0) / per_downloader_s),
            ),
            _ => (None, None),
        };
    let index_cpu_s = procs
        .get(1)
        .and_then(|p| cpu_seconds(p.0.id()))
        .unwrap_or(0.0);
    let per_host_s: Vec<f64> = gets.iter().filter_map(|g| g.2).collect();
    let links = link_use(&samples, started, seeder_up_bps, &down_bps, &per_host_s);
    let ours_s = per_host_s.iter().cloned().fold(0.0, f64::max);
    let mut records = agent_records(&lan, dir.path(), &seed_agent, &agents, Some(&per_host_s))?;
    for (record, before) in records.iter_mut().zip(&before) {
        record.subtract(before);
    }
    for (_, out, _) in &gets {
        if file_hash(out)? != want {
            bail!("{} does not match the source", out.display());
        }
    }
    let uploaded = records[0].bytes_uploaded;
    let all_uploaded: u64 = records.iter().map(|r| r.bytes_uploaded).sum();
    let max_agent_rss_bytes = records.iter().map(|r| r.peak_rss_bytes).max().unwrap_or(0);
    let gib_delivered = n as f64 * f / f64::from(1u32 << 30);
    let agents_cpu_s_per_gib = records.iter().map(|r| r.cpu_s).sum::<f64>() / gib_delivered;
    let agents_user_s_per_gib = records.iter().map(|r| r.cpu_user_s).sum::<f64>() / gib_delivered;
    drop(gets);
    drop(agents);
    drop(seed_agent);
    drop(procs);

    let bt = if bt {
        Some(bittorrent_case(
            &lan,
            n,
            &source,
            dir.path(),
            timeout,
            rtt_at,
        )?)
    } else {
        None
    };
    // A baseline that fails is a finding, not the end of the matrix: at
    // N = 32 the mesh's connections can wait out several lost SYNs.
    let (mesh, mesh_failed) = if mesh {
        match mesh_case(&lan, n, &source, dir.path(), timeout, rtt_at) {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    } else {
        (None, None)
    };

    let mut cpu_busy_http = None;
    let http_s = if http {
        let serve_dir = dir.path().join("seeder");
        let mut server = seeder.command("python3");
        server
            .args([
                "-m",
                "http.server",
                "8080",
                "--bind",
                "0.0.0.0",
                "--directory",
            ])
            .arg(&serve_dir);
        let _server = spawn(server, "http.server", &dir.path().join("http.log"))?;
        let url = format!("http://{}/payload.bin", seeder.socket(8080));
        wait_until(Duration::from_secs(20), "http server", || {
            lan.host(2)
                .command("curl")
                .args(["-sf", "-o", "/dev/null", "-r", "0-0", &url])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })?;
        let cpu_before = machine_jiffies();
        let started = Instant::now();
        let mut curls = Vec::new();
        for i in 0..n {
            let out = dir.path().join(format!("peer{i}")).join("payload-http.bin");
            let child = lan
                .host(i + 2)
                .command("curl")
                .args(["-sf", "-o"])
                .arg(&out)
                .arg(&url)
                .spawn()?;
            curls.push((Proc(child), None::<f64>));
        }
        while curls.iter().any(|c| c.1.is_none()) {
            if Instant::now() > started + timeout {
                bail!("HTTP baseline N={n} timed out");
            }
            for (proc, done) in curls.iter_mut().filter(|c| c.1.is_none()) {
                if let Some(status) = proc.0.try_wait()? {
                    if !status.success() {
                        bail!("curl failed: {status}");
                    }
                    *done = Some(started.elapsed().as_secs_f64());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        cpu_busy_http = utilisation(cpu_before, machine_jiffies());
        Some(curls.iter().filter_map(|c| c.1).fold(0.0, f64::max))
    } else {
        None
    };
    if std::env::var_os("P2P_BENCH_KEEP").is_some() {
        // Leave the logs and data for a post-mortem.
        std::mem::forget(dir);
    }
    Ok(SwarmCase {
        n,
        mix: mix.clone(),
        size_bytes: size,
        ours_s,
        http_s,
        cs_bound_s,
        p2p_bound_s,
        seeder_upload_multiple: uploaded as f64 / f,
        upload_over_needed: all_uploaded as f64 / (n as f64 * f),
        cpu_busy_swarm,
        index_cpu_s,
        cpu_busy_http,
        max_agent_rss_bytes,
        agents: records,
        per_host_s,
        index_rps_per_downloader,
        index_loop_rps_per_downloader,
        agents_cpu_s_per_gib,
        agents_user_s_per_gib,
        links,
        bt,
        mesh,
        mesh_failed,
        loaded_rtt,
    })
}

/// Runs `p2p get name` on every downloader at once and waits for all of
/// them, within `timeout` of `started`: each one's process, copy, and
/// seconds from `started` until it returned.
fn get_everywhere(
    lan: &Lan,
    dir: &Path,
    n: usize,
    name: &str,
    started: Instant,
    timeout: Duration,
) -> Result<Vec<(Proc, std::path::PathBuf, Option<f64>)>> {
    let p2p = bin("p2p")?;
    let mut gets = Vec::new();
    for i in 0..n {
        let data = dir.join(format!("peer{i}"));
        let out = data.join(format!("copy-of-{name}"));
        let get = cluster::get(lan.host(i + 2).command(&p2p), &data, name, &out)?;
        gets.push((get, out, None::<f64>));
    }
    let deadline = started + timeout;
    while gets.iter().any(|g| g.2.is_none()) {
        if Instant::now() > deadline {
            bail!("timed out after {} s", timeout.as_secs());
        }
        for (proc, _, done) in gets.iter_mut().filter(|g| g.2.is_none()) {
            if cluster::finished(proc)? {
                *done = Some(started.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(gets)
}

/// The index's RPC counters: (every method, LocateSources + UpdateHoldings).
fn index_requests(services: &Host) -> Option<(f64, f64)> {
    let out = services
        .command("curl")
        .args(["-sf", &format!("http://{}/metrics", services.socket(9102))])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut all, mut hot) = (0.0, 0.0);
    for line in text
        .lines()
        .filter(|l| l.starts_with("p2p_rpc_requests_total"))
    {
        let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
        all += value;
        if line.contains("LocateSources") || line.contains("UpdateHoldings") {
            hot += value;
        }
    }
    Some((all, hot))
}

/// Every agent's record: the seeder's (host 1), then each downloader's,
/// with the seconds `done` gives it (`None`: not the measured file).
fn agent_records(
    lan: &Lan,
    dir: &Path,
    seeder: &Proc,
    peers: &[Proc],
    done: Option<&[f64]>,
) -> Result<Vec<AgentRecord>> {
    let mut records = vec![agent_record(lan.host(1), dir, seeder, "seeder", None)?];
    for (i, agent) in peers.iter().enumerate() {
        let done_s = done.and_then(|d| d.get(i).copied());
        records.push(agent_record(
            lan.host(i + 2),
            dir,
            agent,
            &format!("peer{i}"),
            done_s,
        )?);
    }
    Ok(records)
}

/// Reads the counters of the agent on `host` and its process figures.
fn agent_record(
    host: &Host,
    dir: &Path,
    proc: &Proc,
    name: &str,
    done_s: Option<f64>,
) -> Result<AgentRecord> {
    let json = cluster::status(host.command(bin("p2p")?), &dir.join(name))?.unwrap_or_default();
    let field = |key: &str| find_u64(&json, key).unwrap_or(0);
    let pid = proc.0.id();
    let (user, system) = cpu_time(pid).unwrap_or_default();
    Ok(AgentRecord {
        name: name.to_string(),
        done_s,
        bytes_uploaded: field("bytes_uploaded"),
        bytes_downloaded: field("bytes_downloaded"),
        chunks_from_partial_sources: field("chunks_from_partial_sources"),
        peak_rss_bytes: peak_rss_bytes(pid).unwrap_or(0),
        cpu_s: user + system,
        cpu_user_s: user,
    })
}

/// Finds a numeric field by name anywhere in a JSON document.
fn find_u64(value: &serde_json::Value, key: &str) -> Option<u64> {
    match value {
        serde_json::Value::Object(map) => map
            .get(key)
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .or_else(|| map.values().find_map(|v| find_u64(v, key))),
        serde_json::Value::Array(items) => items.iter().find_map(|v| find_u64(v, key)),
        _ => None,
    }
}
