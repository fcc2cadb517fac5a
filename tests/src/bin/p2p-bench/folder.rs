//! `p2p-bench folder`: a folder of many small files (seeded random sizes,
//! nested folders) shared with `p2p share DIR` on the seeder and fetched
//! with `p2p get NAME` by N downloaders at once on the emulated LAN; then,
//! on the same LAN in the same run, the same tree through aria2c with a
//! multi-file torrent (`bittorrent`). Every downloaded tree is checked
//! byte for byte against the original. Per run it records the share time,
//! each downloader's time, and when each downloader's tree build began
//! (its hidden staging folder appeared), so the download and the
//! finalize (copy out of the partial file, hash, syncfs, rename) are
//! timed apart.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use p2p_tests::netns::{HostQueue, Lan, LinkShape};
use rand::{Rng, RngCore, SeedableRng};

use crate::bittorrent::{Seeded, await_leechers};
use crate::cluster;
use crate::process::bin;
use crate::stats::Spread;
use crate::usage::cpu_seconds;

/// What `p2p-bench folder` runs.
pub struct FolderPlan {
    /// Files in the tree.
    pub files: usize,
    /// Smallest and largest file, in KiB (sizes uniform between them).
    pub min_kib: u64,
    pub max_kib: u64,
    /// Downloaders.
    pub n: usize,
    pub rate_mbit: u32,
    pub runs: usize,
    pub timeout: Duration,
    /// Also run aria2c with a multi-file torrent.
    pub bt: bool,
}

/// What one run measured.
#[derive(serde::Serialize)]
struct FolderRun {
    /// `p2p share DIR` on the seeder: scan, hash, publish.
    share_s: f64,
    /// Each downloader's `p2p get`, from the common start until it returned.
    per_host_s: Vec<f64>,
    /// When each downloader began building the tree (its staging folder
    /// appeared): the chunks were all in by then. `None` when the poll
    /// missed it.
    finalize_start_s: Vec<Option<f64>>,
    /// CPU-seconds of every agent, the seeder included.
    agents_cpu_s: f64,
    /// aria2c leechers' times, when the baseline ran.
    bt_per_host_s: Option<Vec<f64>>,
    bt_cpu_s: Option<f64>,
}

/// Makes the tree once, runs it `runs` times, prints a table and writes
/// `<base>.json`.
pub fn folder(base: &Path, plan: &FolderPlan) -> Result<()> {
    if let Some(reason) = Lan::unavailable_reason() {
        bail!("the folder benchmark needs network namespaces: {reason}");
    }
    if plan.min_kib == 0 || plan.max_kib < plan.min_kib {
        bail!("--min-kib must be at least 1 and at most --max-kib");
    }
    let work = tempfile::tempdir()?;
    let root = work.path().join("seed").join("tree");
    let made = Instant::now();
    let bytes = make_tree(&root, plan, 30)?;
    eprintln!(
        "made {} files, {:.1} MiB, in {:.1} s",
        plan.files,
        bytes as f64 / 1048576.0,
        made.elapsed().as_secs_f64()
    );
    let want = tree_hashes(&root)?;
    let shape = LinkShape {
        rate_mbit: Some(plan.rate_mbit),
        down_mbit: None,
        delay: None,
        queue: None,
        host_queue: HostQueue::default(),
    };
    let mut runs = Vec::new();
    for run in 0..plan.runs {
        let r = folder_run(&root, &want, plan, shape)?;
        println!(
            "run {}: share {:.2} s; ours slowest {:.2} s, median {:.2} s (tree build from {}); aria2 slowest {}, median {}",
            run + 1,
            r.share_s,
            max(&r.per_host_s),
            Spread::of(r.per_host_s.clone()).map_or(0.0, |s| s.median()),
            r.finalize_start_s
                .iter()
                .map(|s| s.map_or("-".into(), |s| format!("{s:.2}")))
                .collect::<Vec<_>>()
                .join("/"),
            r.bt_per_host_s
                .as_ref()
                .map_or("-".into(), |v| format!("{:.2} s", max(v))),
            r.bt_per_host_s.as_ref().map_or("-".into(), |v| format!(
                "{:.2} s",
                Spread::of(v.clone()).map_or(0.0, |s| s.median())
            )),
        );
        runs.push(r);
    }
    report(base, plan, bytes, &runs)
}

/// The largest of some times.
fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

/// Prints the medians with their ranges and writes `<base>.json`.
fn report(base: &Path, plan: &FolderPlan, bytes: u64, runs: &[FolderRun]) -> Result<()> {
    let ours_max = Spread::of(runs.iter().map(|r| max(&r.per_host_s)));
    let ours_median = Spread::of(
        runs.iter()
            .filter_map(|r| Spread::of(r.per_host_s.clone()).map(|s| s.median())),
    );
    let share = Spread::of(runs.iter().map(|r| r.share_s));
    // Per run: how long the slowest downloader spent after its chunks were
    // in (copy out of the partial file, per-file hash, syncfs, rename).
    let finalize = Spread::of(runs.iter().filter_map(|r| {
        r.per_host_s
            .iter()
            .zip(&r.finalize_start_s)
            .filter_map(|(done, start)| start.map(|s| done - s))
            .reduce(f64::max)
    }));
    let bt_max = Spread::of(
        runs.iter()
            .filter_map(|r| r.bt_per_host_s.as_deref().map(max)),
    );
    let bt_median = Spread::of(runs.iter().filter_map(|r| {
        r.bt_per_host_s
            .clone()
            .and_then(Spread::of)
            .map(|s| s.median())
    }));
    let ratio = Spread::of(runs.iter().filter_map(|r| {
        r.bt_per_host_s
            .as_deref()
            .map(|bt| max(&r.per_host_s) / max(bt))
    }));
    let bound_s = bytes as f64 / (f64::from(plan.rate_mbit) * 1e6 / 8.0);
    println!(
        "\n{} files of {}-{} KiB ({:.1} MiB) to N = {} at {} Mbit/s, {} runs, median (range):",
        plan.files,
        plan.min_kib,
        plan.max_kib,
        bytes as f64 / 1048576.0,
        plan.n,
        plan.rate_mbit,
        runs.len()
    );
    println!("  bound F/u             {bound_s:.2} s");
    println!("  p2p share             {} s", Spread::show(share, 2));
    println!("  ours, slowest host    {} s", Spread::show(ours_max, 2));
    println!("  ours, median host     {} s", Spread::show(ours_median, 2));
    println!("  ours, tree build      {} s", Spread::show(finalize, 2));
    println!("  aria2, slowest host   {} s", Spread::show(bt_max, 2));
    println!("  aria2, median host    {} s", Spread::show(bt_median, 2));
    println!("  ours / aria2 slowest  {}", Spread::show(ratio, 2));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let json = serde_json::json!({
        "files": plan.files, "min_kib": plan.min_kib, "max_kib": plan.max_kib,
        "bytes": bytes, "n": plan.n, "rate_mbit": plan.rate_mbit,
        "bound_s": bound_s, "loadavg_after": load.trim(),
        "share_s": share, "ours_slowest_s": ours_max, "ours_median_s": ours_median,
        "ours_tree_build_s": finalize, "aria2_slowest_s": bt_max,
        "aria2_median_s": bt_median, "ours_over_aria2_slowest": ratio,
        "runs": runs,
    });
    let path = base.with_extension("json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Writes `plan.files` files of seeded random sizes and content under
/// `root`, spread over nested folders (`dNN/dNN/fNNNNN.bin`, up to 100
/// folders of up to 10 subfolders); returns the bytes written.
fn make_tree(root: &Path, plan: &FolderPlan, seed: u64) -> Result<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; (plan.max_kib as usize) << 10];
    let mut total = 0;
    for i in 0..plan.files {
        let dir = root
            .join(format!("d{:02}", i % 100))
            .join(format!("d{:02}", (i / 100) % 10));
        std::fs::create_dir_all(&dir)?;
        let size = rng.gen_range(plan.min_kib << 10..=plan.max_kib << 10) as usize;
        rng.fill_bytes(&mut buf[..size]);
        std::fs::write(dir.join(format!("f{i:05}.bin")), &buf[..size])?;
        total += size as u64;
    }
    Ok(total)
}

/// Every file under `root` (relative path) with its BLAKE3 hash, and every
/// folder (as `None`), so two trees compare equal only when they hold the
/// same files with the same bytes and the same folders.
fn tree_hashes(root: &Path) -> Result<BTreeMap<String, Option<blake3::Hash>>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let path = entry.path();
            let relative = path
                .strip_prefix(root)?
                .to_str()
                .context("a path that is not UTF-8")?
                .to_string();
            if entry.file_type()?.is_dir() {
                out.insert(relative, None);
                pending.push(path);
            } else {
                let mut hasher = blake3::Hasher::new();
                let mut file = std::fs::File::open(&path)?;
                let mut data = Vec::new();
                file.read_to_end(&mut data)?;
                hasher.update(&data);
                out.insert(relative, Some(hasher.finalize()));
            }
        }
    }
    Ok(out)
}

/// Fails unless the tree at `copy` matches `want` entry for entry.
fn check_tree(copy: &Path, want: &BTreeMap<String, Option<blake3::Hash>>) -> Result<()> {
    let got = tree_hashes(copy)?;
    if &got != want {
        let differ = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .map(|(k, _)| k.as_str())
            .chain(
                got.keys()
                    .filter(|k| !want.contains_key(*k))
                    .map(String::as_str),
            )
            .take(5)
            .collect::<Vec<_>>();
        bail!(
            "{} does not match the shared tree ({} entries against {}; first differences: {differ:?})",
            copy.display(),
            got.len(),
            want.len()
        );
    }
    Ok(())
}

/// One run on a LAN of its own: auth-svc and index-svc on host 0, the
/// seeder on host 1, the N downloaders on hosts 2..; then aria2c on the
/// same hosts.
fn folder_run(
    root: &Path,
    want: &BTreeMap<String, Option<blake3::Hash>>,
    plan: &FolderPlan,
    shape: LinkShape,
) -> Result<FolderRun> {
    let n = plan.n;
    let dir = tempfile::tempdir()?;
    let lan = Lan::create(n + 2, shape)?;
    let seeder = lan.host(1).clone();
    let p2p = bin("p2p")?;
    let cluster::LanAgents {
        services: procs,
        seeder: seed_agent,
        peers: agents,
    } = cluster::start_lan_agents(&lan, n, dir.path(), &[], &[])?;
    let started = Instant::now();
    cluster::share(seeder.command(&p2p), &dir.path().join("seeder"), root)?;
    let share_s = started.elapsed().as_secs_f64();
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .context("the tree has a name")?;

    let started = Instant::now();
    let mut gets = Vec::new();
    for i in 0..n {
        let out = dir.path().join(format!("peer{i}")).join("copy");
        let get = cluster::get(
            lan.host(i + 2).command(&p2p),
            &dir.path().join(format!("peer{i}")),
            name,
            &out,
        )?;
        gets.push((get, out, None::<f64>, None::<f64>));
    }
    while gets.iter().any(|g| g.2.is_none()) {
        if started.elapsed() > plan.timeout {
            bail!("the folder download timed out after {:?}", plan.timeout);
        }
        for (proc, out, done, staging) in gets.iter_mut().filter(|g| g.2.is_none()) {
            if staging.is_none() && staging_exists(out) {
                *staging = Some(started.elapsed().as_secs_f64());
            }
            if cluster::finished(proc)? {
                *done = Some(started.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let per_host_s: Vec<f64> = gets.iter().filter_map(|g| g.2).collect();
    let finalize_start_s: Vec<Option<f64>> = gets.iter().map(|g| g.3).collect();
    let agents_cpu_s = std::iter::once(&seed_agent)
        .chain(&agents)
        .filter_map(|p| cpu_seconds(p.0.id()))
        .sum();
    for (_, out, _, _) in &gets {
        check_tree(out, want)?;
    }
    drop(gets);
    drop(agents);
    drop(seed_agent);
    drop(procs);

    let (bt_per_host_s, bt_cpu_s) = if plan.bt {
        let seeded = Seeded::start(&lan, root, dir.path())?;
        let started = Instant::now();
        let mut leechers = Vec::new();
        for i in 0..n {
            let done = dir.path().join(format!("bt{i}.done"));
            let proc = seeded.leech(
                lan.host(i + 2),
                &dir.path().join(format!("bt{i}")),
                &done,
                &dir.path().join(format!("aria2-{i}.log")),
            )?;
            leechers.push((proc, done, None::<f64>));
        }
        await_leechers(&mut leechers, started, plan.timeout)?;
        let cpu: f64 = std::iter::once(&seeded.seeder)
            .chain(leechers.iter().map(|l| &l.0))
            .filter_map(|p| cpu_seconds(p.0.id()))
            .sum();
        let times = leechers.iter().filter_map(|l| l.2).collect();
        drop(leechers);
        for i in 0..n {
            check_tree(&dir.path().join(format!("bt{i}")).join(name), want)?;
        }
        (Some(times), Some(cpu))
    } else {
        (None, None)
    };
    if std::env::var_os("P2P_BENCH_KEEP").is_some() {
        eprintln!("keeping {}", dir.path().display());
        std::mem::forget(dir);
    }
    Ok(FolderRun {
        share_s,
        per_host_s,
        finalize_start_s,
        agents_cpu_s,
        bt_per_host_s,
        bt_cpu_s,
    })
}

/// Whether the hidden staging folder `disk::folder` builds the tree of
/// `out` in exists yet (`.NAME.p2p-partial-TAG` beside it).
fn staging_exists(out: &Path) -> bool {
    let (Some(parent), Some(leaf)) = (out.parent(), out.file_name()) else {
        return false;
    };
    let prefix = format!(".{}.p2p-partial-", leaf.to_string_lossy());
    std::fs::read_dir(parent).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    })
}
