//! The BitTorrent baseline of `p2p-bench swarm` and `p2p-bench folder`:
//! aria2c and opentracker (Debian's packages) on the same emulated LAN, in
//! the same run, with a single-file or a multi-file torrent.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use p2p_tests::netns::{Host, Lan};

use crate::case::Baseline;
use crate::links::sample_rtt;
use crate::payload::file_hash;
use crate::process::{Proc, spawn};
use crate::usage::cpu_time;

/// Builds a .torrent of `path` (256 KiB pieces, like our chunks)
/// announcing to `announce`; returns the info hash in hex. A file makes a
/// single-file torrent; a folder a multi-file one (BEP 3: its files in path
/// order with their path components, pieces running across file ends).
const MAKE_TORRENT: &str = r#"
import hashlib, os, sys
path, announce, out = sys.argv[1:4]
def be(x):
    if isinstance(x, int): return b"i%de" % x
    if isinstance(x, str): x = x.encode()
    if isinstance(x, bytes): return b"%d:" % len(x) + x
    if isinstance(x, list): return b"l" + b"".join(be(v) for v in x) + b"e"
    return b"d" + b"".join(be(k) + be(v) for k, v in sorted(x.items())) + b"e"
if os.path.isdir(path):
    files = sorted(os.path.relpath(os.path.join(d, f), path)
                   for d, _, names in os.walk(path) for f in names)
else:
    files = None
pieces, block = [], b""
for name in files if files is not None else [""]:
    with open(os.path.join(path, name) if name else path, "rb") as f:
        while True:
            data = f.read(262144 - len(block))
            if not data: break
            block += data
            if len(block) == 262144:
                pieces.append(hashlib.sha1(block).digest())
                block = b""
if block: pieces.append(hashlib.sha1(block).digest())
info = {"name": os.path.basename(os.path.normpath(path)),
        "piece length": 262144, "pieces": b"".join(pieces)}
if files is None:
    info["length"] = os.path.getsize(path)
else:
    info["files"] = [{"length": os.path.getsize(os.path.join(path, f)),
                      "path": f.split(os.sep)} for f in files]
open(out, "wb").write(be({"announce": announce, "info": info}))
print(hashlib.sha1(be(info)).hexdigest())
"#;

/// A BitTorrent swarm ready for leechers: opentracker on host 0 of the
/// LAN and an aria2c seeder on host 1 holding `source` (a file or a
/// folder), with its `.torrent`.
pub struct Seeded {
    torrent: PathBuf,
    /// The aria2c seeder, for its CPU time.
    pub seeder: Proc,
    _tracker: Proc,
}

impl Seeded {
    /// Makes the torrent of `source` and starts the tracker and the seeder,
    /// their files and logs in `dir`.
    pub fn start(lan: &Lan, source: &Path, dir: &Path) -> Result<Self> {
        let tracker = lan.host(0);
        let torrent = dir.join("payload.torrent");
        let announce = format!("http://{}/announce", tracker.socket(6969));
        let made = Command::new("python3")
            .args(["-c", MAKE_TORRENT])
            .arg(source)
            .arg(&announce)
            .arg(&torrent)
            .output()?;
        if !made.status.success() {
            bail!(
                "cannot make the torrent: {}",
                String::from_utf8_lossy(&made.stderr)
            );
        }
        let info_hash = String::from_utf8_lossy(&made.stdout).trim().to_string();
        // Debian's opentracker runs in whitelist mode and chroots into its
        // root dir before it reads the whitelist, so that path is relative
        // to it.
        let root = dir.join("tracker-root");
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("whitelist.txt"), format!("{info_hash}\n"))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(
            root.join("whitelist.txt"),
            std::fs::Permissions::from_mode(0o644),
        )?;
        let mut ot = tracker.command("opentracker");
        ot.args([
            "-i",
            &tracker.addr.to_string(),
            "-p",
            "6969",
            "-P",
            "6969",
            "-d",
        ])
        .arg(&root)
        .args(["-w", "whitelist.txt"]);
        let tracker = spawn(ot, "opentracker", &dir.join("opentracker.log"))?;
        std::thread::sleep(Duration::from_millis(500));
        let seed_dir = source.parent().context("source has a parent")?;
        let seeder = spawn(
            aria2(lan.host(1), &torrent, seed_dir, None),
            "aria2c seeder",
            &dir.join("aria2-seeder.log"),
        )?;
        std::thread::sleep(Duration::from_secs(2));
        Ok(Self {
            torrent,
            seeder,
            _tracker: tracker,
        })
    }

    /// Starts an aria2c leecher on `host` downloading into `dl_dir`; it
    /// creates `done` when it has everything, and keeps seeding.
    pub fn leech(&self, host: &Host, dl_dir: &Path, done: &Path, log: &Path) -> Result<Proc> {
        std::fs::create_dir_all(dl_dir)?;
        let hook = dl_dir.with_extension("hook.sh");
        std::fs::write(&hook, format!("#!/bin/sh\ntouch '{}'\n", done.display()))?;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
        spawn(
            aria2(host, &self.torrent, dl_dir, Some(&hook)),
            "aria2c leecher",
            log,
        )
    }
}

/// aria2c on `host` with `torrent` and `dl_dir`, seeding on with no
/// peer limit (`--seed-ratio=0.0`, `--bt-max-peers=0`).
fn aria2(host: &Host, torrent: &Path, dl_dir: &Path, hook: Option<&Path>) -> Command {
    let mut c = host.command("aria2c");
    c.arg(format!("--dir={}", dl_dir.display())).args([
        "--seed-ratio=0.0",
        "--bt-max-peers=0",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=true",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--bt-seed-unverified=true",
        "--listen-port=6881",
        "--bt-tracker-connect-timeout=5",
    ]);
    if let Some(hook) = hook {
        c.arg(format!("--on-bt-download-complete={}", hook.display()));
    }
    c.arg(torrent);
    c
}

/// Waits until every leecher's `done` marker exists, recording when (in
/// seconds since `started`); fails when one exits or `timeout` passes.
pub fn await_leechers(
    leechers: &mut [(Proc, PathBuf, Option<f64>)],
    started: Instant,
    timeout: Duration,
) -> Result<()> {
    while leechers.iter().any(|l| l.2.is_none()) {
        if started.elapsed() > timeout {
            bail!("the BitTorrent baseline timed out");
        }
        for (proc, marker, done) in leechers.iter_mut().filter(|l| l.2.is_none()) {
            if let Some(status) = proc.0.try_wait()? {
                bail!("aria2c exited early: {status}");
            }
            if marker.exists() {
                *done = Some(started.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The BitTorrent baseline on the same LAN: [`Seeded`] with the same
/// file, N aria2c leechers on hosts 2...
pub fn bittorrent_case(
    lan: &Lan,
    n: usize,
    source: &Path,
    dir: &Path,
    timeout: Duration,
    rtt_at: Duration,
) -> Result<Baseline> {
    let seeded = Seeded::start(lan, source, dir)?;
    let name = source.file_name().context("source has a name")?;
    let started = Instant::now();
    let rtt = sample_rtt([lan.host(1).clone(), lan.host(2).clone()], 6881, rtt_at);
    let mut leechers = Vec::new();
    for i in 0..n {
        let dl = dir.join(format!("bt{i}"));
        let done = dir.join(format!("bt{i}.done"));
        let proc = seeded.leech(
            lan.host(i + 2),
            &dl,
            &done,
            &dir.join(format!("aria2-{i}.log")),
        )?;
        leechers.push((proc, done, None::<f64>));
    }
    await_leechers(&mut leechers, started, timeout)?;
    let per_host_s: Vec<f64> = leechers.iter().filter_map(|l| l.2).collect();
    let loaded_rtt = rtt.join().ok().flatten();
    let (user, system) = std::iter::once(&seeded.seeder)
        .chain(leechers.iter().map(|l| &l.0))
        .filter_map(|p| cpu_time(p.0.id()))
        .fold((0.0, 0.0), |(u, s), (pu, ps)| (u + pu, s + ps));
    let want = file_hash(source)?;
    for i in 0..n {
        let out = dir.join(format!("bt{i}")).join(name);
        if file_hash(&out)? != want {
            bail!("aria2c's {} does not match the source", out.display());
        }
    }
    let gib = n as f64 * std::fs::metadata(source)?.len() as f64 / f64::from(1u32 << 30);
    Ok(Baseline::new(per_host_s, (user, system), gib, loaded_rtt))
}
