//! The BitTorrent baseline of `p2p-bench swarm`: aria2c and opentracker
//! (Debian's packages) on the same emulated LAN, in the same run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use p2p_tests::netns::{Host, Lan};

use crate::case::Baseline;
use crate::links::sample_rtt;
use crate::payload::file_hash;
use crate::process::spawn;
use crate::usage::cpu_time;

/// Builds a single-file .torrent of `path` (256 KiB pieces, like our
/// chunks) announcing to `announce`; returns the info hash in hex.
const MAKE_TORRENT: &str = r#"
import hashlib, os, sys
path, announce, out = sys.argv[1:4]
def be(x):
    if isinstance(x, int): return b"i%de" % x
    if isinstance(x, str): x = x.encode()
    if isinstance(x, bytes): return b"%d:" % len(x) + x
    return b"d" + b"".join(be(k) + be(v) for k, v in sorted(x.items())) + b"e"
pieces = b""
with open(path, "rb") as f:
    while True:
        block = f.read(262144)
        if not block: break
        pieces += hashlib.sha1(block).digest()
info = {"length": os.path.getsize(path), "name": os.path.basename(path),
        "piece length": 262144, "pieces": pieces}
open(out, "wb").write(be({"announce": announce, "info": info}))
print(hashlib.sha1(be(info)).hexdigest())
"#;

/// The BitTorrent baseline on the same LAN: opentracker on host 0, an
/// aria2c seeder on host 1 with the same file, N aria2c leechers that keep
/// seeding (`--seed-ratio=0.0`) with no peer limit (`--bt-max-peers=0`).
pub fn bittorrent_case(
    lan: &Lan,
    n: usize,
    source: &Path,
    dir: &Path,
    timeout: Duration,
    rtt_at: Duration,
) -> Result<Baseline> {
    let tracker = lan.host(0);
    let seeder = lan.host(1);
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
    // Debian's opentracker runs in whitelist mode and chroots into its root
    // dir before it reads the whitelist, so that path is relative to it.
    let root = dir.join("tracker-root");
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("whitelist.txt"), format!("{info_hash}\n"))?;
    use std::os::unix::fs::PermissionsExt;
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
    let _tracker = spawn(ot, "opentracker", &dir.join("opentracker.log"))?;
    std::thread::sleep(Duration::from_millis(500));
    let aria2 = |host: &Host, dl_dir: &Path, hook: Option<&Path>| {
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
        c.arg(&torrent);
        c
    };
    let seed_dir = source.parent().context("source has a parent")?;
    let seed = spawn(
        aria2(seeder, seed_dir, None),
        "aria2c seeder",
        &dir.join("aria2-seeder.log"),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let hook = dir.join("bt-done.sh");
    std::fs::write(&hook, "#!/bin/sh\ntouch \"$3.done\"\n")?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    let name = source.file_name().context("source has a name")?;
    let started = Instant::now();
    let rtt = sample_rtt([seeder.clone(), lan.host(2).clone()], 6881, rtt_at);
    let mut leechers = Vec::new();
    for i in 0..n {
        let dl = dir.join(format!("bt{i}"));
        std::fs::create_dir_all(&dl)?;
        let proc = spawn(
            aria2(lan.host(i + 2), &dl, Some(&hook)),
            "aria2c leecher",
            &dir.join(format!("aria2-{i}.log")),
        )?;
        let out = dl.join(name);
        leechers.push((proc, out, None::<f64>));
    }
    while leechers.iter().any(|l| l.2.is_none()) {
        if started.elapsed() > timeout {
            bail!("BitTorrent baseline N={n} timed out");
        }
        for (proc, out, done) in leechers.iter_mut().filter(|l| l.2.is_none()) {
            if let Some(status) = proc.0.try_wait()? {
                bail!("aria2c exited early: {status}");
            }
            let mut marker = out.clone().into_os_string();
            marker.push(".done");
            if Path::new(&marker).exists() {
                *done = Some(started.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let per_host_s: Vec<f64> = leechers.iter().filter_map(|l| l.2).collect();
    let loaded_rtt = rtt.join().ok().flatten();
    let (user, system) = std::iter::once(&seed)
        .chain(leechers.iter().map(|l| &l.0))
        .filter_map(|p| cpu_time(p.0.id()))
        .fold((0.0, 0.0), |(u, s), (pu, ps)| (u + pu, s + ps));
    let want = file_hash(source)?;
    for (_, out, _) in &leechers {
        if file_hash(out)? != want {
            bail!("aria2c's {} does not match the source", out.display());
        }
    }
    let gib = n as f64 * std::fs::metadata(source)?.len() as f64 / f64::from(1u32 << 30);
    Ok(Baseline::new(per_host_s, (user, system), gib, loaded_rtt))
}
