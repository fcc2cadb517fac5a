//! `p2p-bench datapath`: one source to one downloader on loopback with TLS,
//! in the same run and interleaved, `--runs` times: a raw TCP copy between
//! two processes that writes and fsyncs (this binary's hidden `tcp-source`
//! and `tcp-sink` subcommands), two agents moving chunks as `p2p-chunks/1`
//! frames, two agents kept to FetchChunks (`--no-chunk-framing`, the path
//! every agent used before the framing), and `curl` fetching the file over
//! HTTPS from nginx (one worker, certificate from our own CA), its output
//! fsynced too. Each run starts at the next case, and every case writes
//! its copy into memory just freed ([`warm_free_pages`]). For each:
//! throughput, CPU seconds per GiB on each side (only what was spent
//! during the transfer) and the load average when it ran; the medians
//! with their range.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use p2p_tests::netns::Host;

use crate::cluster::{self, start_loopback_agent_with, start_services};
use crate::payload::{file_hash, random_file};
use crate::process::{Proc, bin, spawn, wait_until};
use crate::usage::{cpu_seconds, peak_rss_bytes};

/// Where nginx listens.
const NGINX_PORT: u16 = 50443;
const GIB: f64 = (1u64 << 30) as f64;

/// What is measured side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    RawTcp,
    Framed,
    FetchChunks,
    CurlNginx,
}

impl Case {
    const ALL: [Case; 4] = [
        Case::RawTcp,
        Case::Framed,
        Case::FetchChunks,
        Case::CurlNginx,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::RawTcp => "raw TCP + fsync",
            Case::Framed => "agents, p2p-chunks/1 frames",
            Case::FetchChunks => "agents, FetchChunks",
            Case::CurlNginx => "curl + nginx (HTTPS) + fsync",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Case::RawTcp => "raw_tcp_fsync",
            Case::Framed => "framed",
            Case::FetchChunks => "fetchchunks",
            Case::CurlNginx => "curl_nginx",
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
struct Sample {
    seconds: f64,
    source_cpu_s: f64,
    downloader_cpu_s: f64,
    source_rss: u64,
    downloader_rss: u64,
    load: f64,
}

/// Runs the benchmark `runs` times on a `size_mib` file; prints the figures
/// and writes them to the JSON file `out`.
pub fn datapath(out: &Path, size_mib: u64, runs: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let size = size_mib << 20;
    let me = std::env::current_exe()?;
    let mut procs = Vec::new();
    start_services(&Host::loopback(), dir.path(), &mut procs)?;
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www)?;
    let nginx = start_nginx(dir.path(), &www)?;
    let ca = cluster::tls_files("127.0.0.1")?[0].clone();

    let mut samples: Vec<(Case, Sample)> = Vec::new();
    for run in 0..runs {
        // One file for the raw copy and curl (served from www), one per
        // agent pair (each pair shares its own content, so no agent of an
        // earlier run is ever a source).
        let plain = www.join("payload.bin");
        random_file(&plain, size, 1000 + run as u64)?;
        // Each run starts at the next case, so no case always follows the
        // same one.
        for case in Case::ALL.iter().cycle().skip(run).take(Case::ALL.len()) {
            let case = *case;
            let sample = match case {
                Case::RawTcp => raw_tcp_copy(&me, &plain, &dir.path().join("tcp-copy.bin"))?,
                Case::CurlNginx => curl(&nginx, &ca, &dir.path().join("curl-copy.bin"), &plain)?,
                Case::Framed | Case::FetchChunks => {
                    agents(dir.path(), case, run, size, case == Case::FetchChunks)?
                }
            };
            println!(
                "run {run}: {:<30} {:>8.1} MiB/s  source {:.2} CPU-s/GiB  downloader {:.2} CPU-s/GiB  load {:.2}",
                case.name(),
                size as f64 / sample.seconds / 1048576.0,
                sample.source_cpu_s / (size as f64 / GIB),
                sample.downloader_cpu_s / (size as f64 / GIB),
                sample.load
            );
            samples.push((case, sample));
        }
        let _ = std::fs::remove_file(&plain);
    }

    let gib = size as f64 / GIB;
    println!("\ndata path, {size_mib} MiB on loopback with TLS, median [min–max] of {runs}:");
    let mut json = serde_json::Map::new();
    json.insert("size_bytes".into(), size.into());
    json.insert("runs".into(), runs.into());
    let raw_median = figures(&samples, Case::RawTcp, |s| size as f64 / s.seconds).0;
    for case in Case::ALL {
        let mibs = figures(&samples, case, |s| size as f64 / s.seconds / 1048576.0);
        let src = figures(&samples, case, |s| s.source_cpu_s / gib);
        let dst = figures(&samples, case, |s| s.downloader_cpu_s / gib);
        let load = figures(&samples, case, |s| s.load);
        let share = figures(&samples, case, |s| {
            size as f64 / s.seconds / raw_median * 100.0
        });
        println!(
            "  {:<30} {} MiB/s ({} % of raw)  source {} CPU-s/GiB  downloader {} CPU-s/GiB  load {}",
            case.name(),
            show(mibs, 0),
            show(share, 0),
            show(src, 2),
            show(dst, 2),
            show(load, 2)
        );
        let rss = samples
            .iter()
            .filter(|(c, _)| *c == case)
            .map(|(_, s)| (s.source_rss, s.downloader_rss))
            .fold((0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1)));
        json.insert(
            case.key().into(),
            serde_json::json!({
                "mib_per_s": triple(mibs), "percent_of_raw_tcp": triple(share),
                "source_cpu_s_per_gib": triple(src), "downloader_cpu_s_per_gib": triple(dst),
                "load_average": triple(load),
                "source_peak_rss_bytes": rss.0, "downloader_peak_rss_bytes": rss.1,
            }),
        );
    }
    std::fs::write(
        out,
        serde_json::to_string_pretty(&serde_json::Value::Object(json))?,
    )?;
    println!("wrote {}", out.display());
    drop((nginx, procs));
    Ok(())
}

/// One case's values of `f`, as (median, min, max).
fn figures(samples: &[(Case, Sample)], case: Case, f: impl Fn(&Sample) -> f64) -> (f64, f64, f64) {
    let v: Vec<f64> = samples
        .iter()
        .filter(|(c, _)| *c == case)
        .map(|(_, s)| f(s))
        .collect();
    median(&v)
}

/// (median, min, max) of `v`.
fn median(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => (0.0, 0.0, 0.0),
        n => (v[n / 2], v[0], v[n - 1]),
    }
}

fn show((median, min, max): (f64, f64, f64), digits: usize) -> String {
    format!("{median:.digits$} [{min:.digits$}–{max:.digits$}]")
}

fn triple((median, min, max): (f64, f64, f64)) -> serde_json::Value {
    serde_json::json!({ "median": median, "min": min, "max": max })
}

/// The 1-minute load average now.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Two fresh agents on loopback: `a` shares a new file, `b` gets it, each
/// one's CPU counted from just before the get to just after.
fn agents(
    dir: &Path,
    case: Case,
    run: usize,
    size: u64,
    fetch_chunks_only: bool,
) -> Result<Sample> {
    let here = dir.join(format!("{}-{run}", case.key()));
    std::fs::create_dir_all(&here)?;
    let env: &[(&str, &str)] = if fetch_chunks_only {
        &[("P2P_NO_CHUNK_FRAMING", "true")]
    } else {
        &[]
    };
    let slot = if fetch_chunks_only { 2 } else { 0 };
    let a = start_loopback_agent_with(&here, "a", slot, env)?;
    let b = start_loopback_agent_with(&here, "b", slot + 1, env)?;
    let name = format!("payload-{}-{run}.bin", case.key());
    let source = here.join(&name);
    random_file(&source, size, 2000 + run as u64 * 10 + slot as u64)?;
    let p2p = bin("p2p")?;
    cluster::share(Command::new(&p2p), &here.join("a"), &source)?;
    let copy = here.join("copy.bin");
    warm_free_pages(&copy, size)?;
    let load = load_average();
    let (cpu_a, cpu_b) = (cpu_seconds(a.0.id()), cpu_seconds(b.0.id()));
    let started = Instant::now();
    let got = Command::new(&p2p)
        .env("P2P_DATA_DIR", here.join("b"))
        .args(["--json", "get", &name, "-o"])
        .arg(&copy)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let seconds = started.elapsed().as_secs_f64();
    if !got.status.success() {
        bail!("download failed: {}", String::from_utf8_lossy(&got.stderr));
    }
    let sample = Sample {
        seconds,
        source_cpu_s: cpu_seconds(a.0.id()).unwrap_or(0.0) - cpu_a.unwrap_or(0.0),
        downloader_cpu_s: cpu_seconds(b.0.id()).unwrap_or(0.0) - cpu_b.unwrap_or(0.0),
        source_rss: peak_rss_bytes(a.0.id()).unwrap_or(0),
        downloader_rss: peak_rss_bytes(b.0.id()).unwrap_or(0),
        load,
    };
    if file_hash(&copy)? != file_hash(&source)? {
        bail!("downloaded copy differs");
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&here);
    Ok(sample)
}

/// Writes `size` bytes beside `copy` and deletes them, just before a case
/// starts its clock, so that every case writes its copy into memory the
/// guest freed a moment ago. In this VM, memory freed for more than about
/// two seconds goes back to the host (virtio-balloon free page reporting),
/// and writing the page cache into it costs a host fault per page: 1 GiB
/// took 0.2 s to write into memory just freed and 0.85 s five seconds
/// later. Without this, whichever case had just written its source file
/// (the agents' own, each pair sharing new content) met that cost and the
/// others did not.
fn warm_free_pages(copy: &Path, size: u64) -> Result<()> {
    let scratch = copy.with_extension("warm");
    let mut out = std::fs::File::create(&scratch)?;
    let block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    drop(out);
    std::fs::remove_file(&scratch)?;
    Ok(())
}

/// nginx serving `www` over HTTPS on loopback with the run's certificate
/// for 127.0.0.1: one process, no master, access log off.
fn start_nginx(dir: &Path, www: &Path) -> Result<Proc> {
    let [_, cert, key] = cluster::tls_files("127.0.0.1")?;
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(&prefix)?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nuser root;\n\
             error_log {p}/error.log;\npid {p}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
               fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
               server {{\n    listen 127.0.0.1:{NGINX_PORT} ssl;\n    ssl_certificate {cert};\n\
                 ssl_certificate_key {key};\n    ssl_protocols TLSv1.3;\n    root {www};\n  }}\n}}\n",
            p = prefix.display(),
            cert = cert.display(),
            key = key.display(),
            www = www.display(),
        ),
    )?;
    let mut nginx = Command::new("nginx");
    nginx
        .arg("-p")
        .arg(&prefix)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .arg("-c")
        .arg(&conf);
    let proc = spawn(nginx, "nginx", &prefix.join("stderr.log"))?;
    wait_until(
        std::time::Duration::from_secs(10),
        "nginx to listen",
        || TcpStream::connect(("127.0.0.1", NGINX_PORT)).is_ok(),
    )?;
    Ok(proc)
}

/// `curl` fetching `served` (in nginx's root) to `copy`, then an fsync
/// of the copy; curl's CPU from `/usr/bin/time`, nginx's from /proc.
fn curl(nginx: &Proc, ca: &Path, copy: &Path, served: &Path) -> Result<Sample> {
    let name = served
        .file_name()
        .context("served file name")?
        .to_string_lossy();
    let times = copy.with_extension("time");
    warm_free_pages(copy, std::fs::metadata(served)?.len())?;
    let load = load_average();
    let nginx_cpu = cpu_seconds(nginx.0.id()).unwrap_or(0.0);
    let started = Instant::now();
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%U %S", "-o"])
        .arg(&times)
        .args(["curl", "-sS", "--fail", "--cacert"])
        .arg(ca)
        .arg("-o")
        .arg(copy)
        .arg(format!("https://127.0.0.1:{NGINX_PORT}/{name}"))
        .status()?;
    std::fs::File::open(copy)?.sync_all()?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("curl failed: {status}");
    }
    let curl_cpu = cpu_from_time(&times)?;
    let sample = Sample {
        seconds,
        source_cpu_s: cpu_seconds(nginx.0.id()).unwrap_or(0.0) - nginx_cpu,
        downloader_cpu_s: curl_cpu,
        source_rss: peak_rss_bytes(nginx.0.id()).unwrap_or(0),
        downloader_rss: 0,
        load,
    };
    if file_hash(copy)? != file_hash(served)? {
        bail!("curl's copy differs");
    }
    let _ = std::fs::remove_file(copy);
    let _ = std::fs::remove_file(&times);
    Ok(sample)
}

/// User + system seconds from a `/usr/bin/time -f "%U %S"` output file.
fn cpu_from_time(path: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(path)?;
    let line = text.lines().last().context("empty time output")?;
    line.split_whitespace()
        .map(|v| v.parse::<f64>().context("time output"))
        .sum()
}

/// One raw TCP copy of `source` between two processes, the sink writing
/// it to `copy` and fsyncing it; both processes' CPU from `/usr/bin/time`.
fn raw_tcp_copy(me: &Path, source: &Path, copy: &Path) -> Result<Sample> {
    let sink_times = copy.with_extension("sink-time");
    let source_times = copy.with_extension("source-time");
    warm_free_pages(copy, std::fs::metadata(source)?.len())?;
    let load = load_average();
    let mut sink = Command::new("/usr/bin/time")
        .args(["-f", "%U %S", "-o"])
        .arg(&sink_times)
        .arg(me)
        .args(["tcp-sink", "127.0.0.1:0", "--to-file"])
        .arg(copy)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut sink_out = std::io::BufReader::new(sink.stdout.take().context("sink stdout")?);
    let mut addr = String::new();
    std::io::BufRead::read_line(&mut sink_out, &mut addr)?;
    let started = Instant::now();
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%U %S", "-o"])
        .arg(&source_times)
        .arg(me)
        .args(["tcp-source", addr.trim()])
        .arg(source)
        .status()?;
    let mut result = String::new();
    sink_out.read_to_string(&mut result)?;
    sink.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("raw TCP copy failed");
    }
    let sample = Sample {
        seconds,
        source_cpu_s: cpu_from_time(&source_times)?,
        downloader_cpu_s: cpu_from_time(&sink_times)?,
        source_rss: 0,
        downloader_rss: 0,
        load,
    };
    for file in [copy, &sink_times, &source_times] {
        let _ = std::fs::remove_file(file);
    }
    Ok(sample)
}

/// `tcp-sink`: accepts one connection on `listen` (printing the address
/// it bound), reads it to the end, and prints the bytes and seconds.
pub fn tcp_sink(listen: &str, to_file: Option<&Path>) -> Result<()> {
    let listener = TcpListener::bind(listen)?;
    println!("{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let (mut stream, _) = listener.accept()?;
    let mut out = to_file.map(std::fs::File::create).transpose()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let started = Instant::now();
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(out) = out.as_mut() {
            out.write_all(&buf[..n])?;
        }
        total += n as u64;
    }
    if let Some(out) = out {
        out.sync_all()?;
    }
    println!("{total} {}", started.elapsed().as_secs_f64());
    Ok(())
}

/// `tcp-source`: sends `file` to `addr` over one connection.
pub fn tcp_source(addr: &str, file: &Path) -> Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut input = std::fs::File::open(file)?;
    std::io::copy(&mut input, &mut stream)?;
    Ok(())
}
