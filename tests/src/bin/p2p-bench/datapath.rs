//! `p2p-bench datapath`: one FetchChunks source to one downloader on
//! loopback, against a raw TCP copy of the same bytes between two
//! processes (this binary's hidden `tcp-source` and `tcp-sink`
//! subcommands), with both agents' CPU time and peak RSS.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use p2p_tests::netns::Host;

use crate::cluster::{self, start_loopback_agent, start_services};
use crate::payload::{file_hash, random_file};
use crate::process::bin;
use crate::usage::{cpu_seconds, peak_rss_bytes};

/// Runs the benchmark on a `size_mib` file; prints the figures and writes
/// `datapath.json` to `out`.
pub fn datapath(out: &Path, size_mib: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let size = size_mib << 20;
    let source = dir.path().join("payload.bin");
    random_file(&source, size, 7)?;
    let me = std::env::current_exe()?;

    // Raw TCP baselines: two processes, kernel loopback, 1 MiB reads; once
    // dropping the bytes, once writing them to a file and fsyncing it (what
    // a download has to do as well).
    let tcp_s = raw_tcp_copy(&me, &source, None)?;
    let tcp_bps = size as f64 / tcp_s;
    let tcp_disk_s = raw_tcp_copy(&me, &source, Some(&dir.path().join("tcp-copy.bin")))?;
    let tcp_disk_bps = size as f64 / tcp_disk_s;
    let _ = std::fs::remove_file(dir.path().join("tcp-copy.bin"));

    // FetchChunks: services and two agents on loopback.
    let mut procs = Vec::new();
    let local = Host::loopback();
    start_services(&local, dir.path(), &mut procs)?;
    let a = start_loopback_agent(dir.path(), "a", 0)?;
    let b = start_loopback_agent(dir.path(), "b", 1)?;
    let p2p = bin("p2p")?;
    cluster::share(Command::new(&p2p), &dir.path().join("a"), &source)?;
    let copy = dir.path().join("copy.bin");
    let started = Instant::now();
    let mut get = Command::new(&p2p)
        .env("P2P_DATA_DIR", dir.path().join("b"))
        .args(["--json", "get", "payload.bin", "-o"])
        .arg(&copy)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // When the last chunk was in: the agent's progress stream sends each
    // state when the next one begins, so the last `downloading` line leaves
    // as verification starts. The rest is the whole-file hash, fsync and
    // rename.
    let mut chunks_in_s = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(
        get.stdout.take().context("get stdout")?,
    )) {
        if line?.contains("\"downloading\"") {
            chunks_in_s = Some(started.elapsed().as_secs_f64());
        }
    }
    let got = get.wait_with_output()?;
    let ours_s = started.elapsed().as_secs_f64();
    if !got.status.success() {
        bail!("download failed: {}", String::from_utf8_lossy(&got.stderr));
    }
    let chunks_in_s = chunks_in_s.unwrap_or(ours_s);
    if file_hash(&copy)? != file_hash(&source)? {
        bail!("downloaded copy differs");
    }
    let ours_bps = size as f64 / ours_s;
    let rss_a = peak_rss_bytes(a.0.id()).unwrap_or(0);
    let rss_b = peak_rss_bytes(b.0.id()).unwrap_or(0);
    let ratio = ours_bps / tcp_bps;
    let transfer_bps = size as f64 / chunks_in_s;
    let (cpu_a, cpu_b) = (
        cpu_seconds(a.0.id()).unwrap_or(0.0),
        cpu_seconds(b.0.id()).unwrap_or(0.0),
    );
    println!("data path, {size_mib} MiB on loopback:");
    println!("  raw TCP     {:>8.1} MiB/s", tcp_bps / 1048576.0);
    println!(
        "  raw TCP to a file + fsync {:>8.1} MiB/s",
        tcp_disk_bps / 1048576.0
    );
    println!(
        "  FetchChunks {:>8.1} MiB/s  ({:.1}% of raw TCP, includes hashing and the final whole-file check)",
        ours_bps / 1048576.0,
        ratio * 100.0
    );
    println!(
        "  chunks only {:>8.1} MiB/s  ({:.1}% of raw TCP: until the last chunk was verified and written, {:.2} s of {:.2} s)",
        transfer_bps / 1048576.0,
        transfer_bps / tcp_bps * 100.0,
        chunks_in_s,
        ours_s
    );
    println!(
        "  vs raw TCP to a file: {:.1}% (whole download), {:.1}% (chunks only)",
        ours_bps / tcp_disk_bps * 100.0,
        transfer_bps / tcp_disk_bps * 100.0
    );
    println!("  CPU time    source agent {cpu_a:.2} s, downloading agent {cpu_b:.2} s");
    println!(
        "  peak RSS    source agent {:.1} MiB, downloading agent {:.1} MiB",
        rss_a as f64 / 1048576.0,
        rss_b as f64 / 1048576.0
    );
    let json = serde_json::json!({
        "size_bytes": size, "raw_tcp_bytes_per_s": tcp_bps, "fetchchunks_bytes_per_s": ours_bps,
        "ratio": ratio, "source_agent_peak_rss_bytes": rss_a, "downloader_agent_peak_rss_bytes": rss_b,
        "raw_tcp_s": tcp_s, "raw_tcp_to_file_s": tcp_disk_s, "raw_tcp_to_file_bytes_per_s": tcp_disk_bps,
        "ratio_to_raw_tcp_to_file": ours_bps / tcp_disk_bps, "fetchchunks_s": ours_s, "last_chunk_in_s": chunks_in_s,
        "chunks_only_bytes_per_s": transfer_bps, "chunks_only_ratio": transfer_bps / tcp_bps,
        "source_agent_cpu_s": cpu_a, "downloader_agent_cpu_s": cpu_b,
    });
    std::fs::write(
        out.join("datapath.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("wrote {}/datapath.json", out.display());
    drop((a, b, procs));
    Ok(())
}

/// Seconds one raw TCP copy of `source` takes between two processes.
fn raw_tcp_copy(me: &Path, source: &Path, to_file: Option<&Path>) -> Result<f64> {
    let mut sink = Command::new(me);
    sink.args(["tcp-sink", "127.0.0.1:0"]);
    if let Some(path) = to_file {
        sink.arg("--to-file").arg(path);
    }
    let mut sink = sink.stdout(Stdio::piped()).spawn()?;
    let mut sink_out = std::io::BufReader::new(sink.stdout.take().context("sink stdout")?);
    let mut addr = String::new();
    std::io::BufRead::read_line(&mut sink_out, &mut addr)?;
    let started = Instant::now();
    let status = Command::new(me)
        .args(["tcp-source", addr.trim()])
        .arg(source)
        .status()?;
    let mut result = String::new();
    sink_out.read_to_string(&mut result)?;
    sink.wait()?;
    if !status.success() {
        bail!("raw TCP copy failed");
    }
    Ok(started.elapsed().as_secs_f64())
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
