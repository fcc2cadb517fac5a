//! `files-bench`: the network's listing at 30,000 entries. Starts auth-svc,
//! index-svc and one logged-in peer-agent from the binaries next to this
//! one, publishes `--entries` tiny manifests through index-svc's
//! PublishFile (as [`p2p_tests::seed`] does), then measures, `--runs`
//! times each:
//!
//! - index-svc ListFiles, first page of 100, per sort: p50/p99 of
//!   `--calls` sequential calls on an otherwise idle index;
//! - `p2p ls` (first page): wall time of the command;
//! - the web Files page: time and bytes of `GET /files` (curl, a logged-in
//!   web session);
//! - one change: the bytes an open `/events/files` feed receives when one
//!   entry is published elsewhere (SSE keep-alives left out).
//!
//! It prints the medians with their range and writes
//! `<out>/files-<entries>.json`. Build in release mode first
//! (`cargo build --release --workspace --bins`), then run
//! `target/release/files-bench`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use p2p_proto::index::v1 as pb;
use p2p_services::client::with_bearer;
use p2p_tests::{AgentHandle as _, Cluster, ClusterOptions, USER_PASSWORD};
use serde::Serialize;
use tokio::io::AsyncReadExt;

#[derive(Debug, Parser)]
#[command(about = "Measure the Files listing at a network's size")]
struct Args {
    /// Entries to publish before measuring.
    #[arg(long, default_value_t = 30_000)]
    entries: u64,
    /// Runs of each measurement (the median and range are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// ListFiles calls per sort and run.
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// Where to write the JSON figures.
    #[arg(long, default_value = "bench-results")]
    out: std::path::PathBuf,
}

/// Median, minimum and maximum of some runs.
#[derive(Debug, Serialize)]
struct Figure {
    median: f64,
    min: f64,
    max: f64,
}

fn figure(mut values: Vec<f64>) -> Figure {
    values.sort_by(f64::total_cmp);
    Figure {
        median: values[values.len() / 2],
        min: values[0],
        max: values[values.len() - 1],
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[derive(Debug, Serialize)]
struct Report {
    entries: u64,
    seed_seconds: f64,
    load_average: String,
    list_files_ms: Vec<(String, Figure, Figure)>,
    p2p_ls_first_page_ms: Figure,
    files_page_ms: Figure,
    files_page_bytes: Figure,
    one_change_bytes: Figure,
}

/// `curl` with the session cookie: (seconds, bytes, body).
fn curl(args: &[&str]) -> (f64, usize, String) {
    let output = std::process::Command::new("curl")
        .args(["-sS", "-w", "\n%{time_total} %{size_download}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, stats) = text.rsplit_once('\n').unwrap_or(("", ""));
    let mut stats = stats.split_whitespace();
    let seconds = stats.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let bytes = stats.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (seconds, bytes, body.to_string())
}

/// The value of the first `name="csrf"` field in `html`.
fn csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap_or_default().to_string()
}

/// The `v` (version of the rows shown) in a Files page's live feed URL.
fn page_version(html: &str) -> String {
    html.split("&amp;v=")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .unwrap_or_default()
        .to_string()
}

/// A logged-in web session's cookie header.
async fn web_session(agent: &p2p_tests::Agent) -> String {
    let web = agent.web_addr().to_string();
    let link = agent.web_link().await;
    let head = std::process::Command::new("curl")
        .args(["-sS", "-i", &link])
        .output()
        .expect("open the link");
    let head = String::from_utf8_lossy(&head.stdout).into_owned();
    let cookie_of = |head: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix("set-cookie: p2p_session="))
            .and_then(|v| v.split(';').next())
            .map(str::to_string)
            .expect("a session cookie")
    };
    let cookie = format!("Cookie: p2p_session={}", cookie_of(&head));
    let (_, _, form) = curl(&["-H", &cookie, &format!("http://{web}/login")]);
    let login = std::process::Command::new("curl")
        .args([
            "-sS",
            "-i",
            "-H",
            &cookie,
            "-H",
            &format!("Origin: http://{web}"),
            "--data-urlencode",
            &format!("csrf={}", csrf(&form)),
            "--data-urlencode",
            "username=alice",
            "--data-urlencode",
            &format!("password={USER_PASSWORD}"),
            &format!("http://{web}/login"),
        ])
        .output()
        .expect("log in");
    format!(
        "Cookie: p2p_session={}",
        cookie_of(&String::from_utf8_lossy(&login.stdout))
    )
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let p2p_tests::seed::Publishers { agent, alice, bob } =
        p2p_tests::seed::Publishers::start(&cluster).await;
    let seeded =
        p2p_tests::seed::publish_many(cluster.index_client(), &alice, args.entries, 1, |n| {
            format!("entry-{n:06}.txt")
        })
        .await;
    println!("seeded {} entries in {seeded:.1?}", args.entries);

    let mut index = cluster.index_client();
    let mut list_files_ms = Vec::new();
    for (label, sort, descending) in [
        ("newest", pb::FileSort::Unspecified, false),
        ("name", pb::FileSort::Name, false),
        ("size desc", pb::FileSort::Size, true),
        ("holders desc", pb::FileSort::Holders, true),
        ("name, counted", pb::FileSort::Name, false),
    ] {
        let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let mut times = Vec::new();
            for _ in 0..args.calls {
                let started = Instant::now();
                index
                    .list_files(with_bearer(
                        pb::ListFilesRequest {
                            page_size: 100,
                            sort: sort as i32,
                            descending,
                            include_total: label.ends_with("counted"),
                            ..Default::default()
                        },
                        &alice,
                    ))
                    .await
                    .expect("list");
                times.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            times.sort_by(f64::total_cmp);
            p50s.push(percentile(&times, 0.5));
            p99s.push(percentile(&times, 0.99));
        }
        list_files_ms.push((label.to_string(), figure(p50s), figure(p99s)));
    }

    let mut ls = Vec::new();
    for _ in 0..args.runs {
        let started = Instant::now();
        agent.p2p_ok(&["ls"]).await;
        ls.push(started.elapsed().as_secs_f64() * 1000.0);
    }

    let session = web_session(&agent).await;
    let web = agent.web_addr().to_string();
    let (mut page_ms, mut page_bytes) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let (seconds, bytes, body) = curl(&["-H", &session, &format!("http://{web}/files")]);
        assert!(body.contains("entry-"), "no Files page: {body:.300}");
        page_ms.push(seconds * 1000.0);
        page_bytes.push(bytes as f64);
    }

    let mut change_bytes = Vec::new();
    for run in 0..args.runs {
        // The page as a browser has it just before the change: the feed
        // then has nothing to send until the change.
        let (_, _, body) = curl(&["-H", &session, &format!("http://{web}/files")]);
        let version = page_version(&body);
        let mut feed = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-N",
                "-H",
                &session,
                &format!("http://{web}/events/files?v={version}"),
            ])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("open the feed");
        let mut stdout = feed.stdout.take().expect("feed output");
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Newest first: this entry lands on the open first page.
        p2p_tests::seed::publish_many(cluster.index_client(), &bob, 1, 1000 + run as u64, |_| {
            format!("change-{run}.txt")
        })
        .await;
        let mut received = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buffer = [0u8; 65536];
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(500), stdout.read(&mut buffer)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
        let _ = feed.kill().await;
        let text = String::from_utf8_lossy(&received);
        // Keep-alive comments (lines starting with ':') are not the change.
        let bytes: usize = text
            .split_inclusive('\n')
            .filter(|l| !l.starts_with(':'))
            .map(str::len)
            .sum();
        assert!(text.contains(&format!("change-{run}.txt")), "{text:.500}");
        change_bytes.push(bytes as f64);
    }

    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let report = Report {
        entries: args.entries,
        seed_seconds: seeded.as_secs_f64(),
        load_average: load_average.trim().to_string(),
        list_files_ms,
        p2p_ls_first_page_ms: figure(ls),
        files_page_ms: figure(page_ms),
        files_page_bytes: figure(page_bytes),
        one_change_bytes: figure(change_bytes),
    };
    for (label, p50, p99) in &report.list_files_ms {
        println!(
            "ListFiles {label:>14}: p50 {:.2} ms ({:.2}-{:.2}), p99 {:.2} ms ({:.2}-{:.2})",
            p50.median, p50.min, p50.max, p99.median, p99.min, p99.max
        );
    }
    let show = |what: &str, f: &Figure| {
        println!("{what}: {:.1} ({:.1}-{:.1})", f.median, f.min, f.max);
    };
    show("p2p ls first page, ms", &report.p2p_ls_first_page_ms);
    show("Files page, ms", &report.files_page_ms);
    show("Files page, bytes", &report.files_page_bytes);
    show(
        "one change on an open page, bytes",
        &report.one_change_bytes,
    );
    println!("load average: {}", report.load_average);
    std::fs::create_dir_all(&args.out).expect("make the output dir");
    let path = args.out.join(format!("files-{}.json", args.entries));
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).expect("encode"),
    )
    .expect("write the figures");
    println!("wrote {}", path.display());
}
