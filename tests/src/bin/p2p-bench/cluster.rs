//! The P2P processes a benchmark starts, with TLS as deployed: auth-svc and
//! index-svc on one host, agents logged in as the admin and registered
//! with the index, and the `p2p` commands that share a file or ask an agent
//! for its status. Every one is a [`Proc`] owned by its caller.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use p2p_tests::netns::{Host, Lan};

use crate::process::{Proc, bin, spawn, wait_until};

/// Every process of a run speaks TLS as deployed: one CA in a temp dir and
/// one certificate per host address, made on first use.
static TLS: std::sync::OnceLock<(tempfile::TempDir, bool)> = std::sync::OnceLock::new();

/// Makes the run's certificate directory, once, before anything starts;
/// `data_path_tls` off has the agents' FetchChunks in plaintext.
pub fn set_up_tls(data_path_tls: bool) -> Result<()> {
    let _ = TLS.set((tempfile::tempdir()?, data_path_tls));
    Ok(())
}

/// The run's CA certificate, and the certificate and key for `ip` (made
/// on first use): the files every process of the run, nginx included,
/// presents or trusts.
pub fn tls_files(ip: &str) -> Result<[std::path::PathBuf; 3]> {
    let (dir, _) = TLS.get().context("TLS is set up first in main")?;
    let certs = p2p_services::tls::issue::CertDir::new(dir.path());
    let (ca, _) = certs.ensure_ca()?;
    let name = format!("host-{ip}");
    certs.ensure_leaf(
        &ca,
        &name,
        &[ip.to_string(), "127.0.0.1".into(), "localhost".into()],
        p2p_services::tls::issue::Role::Agent,
        false,
    )?;
    Ok([certs.ca_cert(), certs.cert(&name), certs.key(&name)])
}

/// Points `command` at the run's CA and at the certificate for `ip`.
fn with_tls(command: &mut Command, ip: &str) -> Result<()> {
    let (_, data_path_tls) = TLS.get().context("TLS is set up first in main")?;
    let [ca, cert, key] = tls_files(ip)?;
    command
        .env("P2P_TLS_CA", ca)
        .env("P2P_TLS_CERT", cert)
        .env("P2P_TLS_KEY", key);
    if !*data_path_tls {
        command.env("P2P_PEER_INSECURE_PLAINTEXT", "true");
    }
    Ok(())
}

const ADMIN_PASSWORD: &str = "bench-admin-password";

/// The control-plane processes of one run: auth-svc and index-svc on one host.
pub fn start_services(host: &Host, dir: &Path, procs: &mut Vec<Proc>) -> Result<()> {
    let mut auth = host.command(bin("auth-svc")?);
    auth.args(["--listen", "0.0.0.0:50051", "--metrics-listen", ""])
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("auth.db").display()))
        .env("P2P_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("RUST_LOG", "warn");
    with_tls(&mut auth, &host.addr.to_string())?;
    procs.push(spawn(auth, "auth-svc", &dir.join("auth.log"))?);
    let mut index = host.command(bin("index-svc")?);
    index
        .args([
            "--listen",
            "0.0.0.0:50052",
            "--metrics-listen",
            "0.0.0.0:9102",
        ])
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("index.db").display()))
        .arg("--auth-url")
        .arg(host.socket(50051))
        .env("RUST_LOG", "warn");
    with_tls(&mut index, &host.addr.to_string())?;
    procs.push(spawn(index, "index-svc", &dir.join("index.log"))?);
    for (binary, listen) in [
        ("auth-svc", "0.0.0.0:50051"),
        ("index-svc", "0.0.0.0:50052"),
    ] {
        let path = bin(binary)?;
        wait_until(Duration::from_secs(30), binary, || {
            let mut probe = host.command(&path);
            if with_tls(&mut probe, &host.addr.to_string()).is_err() {
                return false;
            }
            probe
                .args(["--listen", listen, "healthcheck"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })?;
    }
    Ok(())
}

/// Starts an agent on `host`, logged in as the admin, with `env` added, and
/// waits until it is registered with the index.
pub fn start_agent(
    host: &Host,
    services: &Host,
    dir: &Path,
    name: &str,
    env: &[(String, String)],
) -> Result<Proc> {
    let data = dir.join(name);
    std::fs::create_dir_all(&data)?;
    let mut agent = host.command(bin("peer-agent")?);
    agent
        .args([
            "--listen",
            "0.0.0.0:50053",
            "--metrics-listen",
            "",
            "--web-listen",
            "",
        ])
        .arg("--advertise")
        .arg(host.socket(50053))
        .arg("--data-dir")
        .arg(&data)
        .arg("--index-url")
        .arg(services.socket(50052))
        .arg("--auth-url")
        .arg(services.socket(50051))
        .env("P2P_USER", "admin")
        .env("P2P_PASSWORD", ADMIN_PASSWORD)
        .env(
            "RUST_LOG",
            std::env::var("P2P_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)));
    with_tls(&mut agent, &host.addr.to_string())?;
    let proc = spawn(agent, "peer-agent", &dir.join(format!("{name}.log")))?;
    let p2p = bin("p2p")?;
    wait_until(
        Duration::from_secs(60),
        &format!("agent {name} to register"),
        || registered(host.command(&p2p), &data),
    )?;
    Ok(proc)
}

/// The P2P processes of a benchmark LAN: auth-svc and index-svc on host
/// 0, the seeder's agent on host 1, one agent per downloader on hosts 2..
pub struct LanAgents {
    /// auth-svc, then index-svc.
    pub services: Vec<Proc>,
    pub seeder: Proc,
    pub peers: Vec<Proc>,
}

/// Starts [`LanAgents`] for `n` downloaders on `lan`, data dirs `seeder`
/// and `peerI` under `dir`; the seeder gets `seeder_env`, the others `env`.
pub fn start_lan_agents(
    lan: &Lan,
    n: usize,
    dir: &Path,
    seeder_env: &[(String, String)],
    env: &[(String, String)],
) -> Result<LanAgents> {
    let services = lan.host(0);
    let mut procs = Vec::new();
    start_services(services, dir, &mut procs)?;
    let seeder = start_agent(lan.host(1), services, dir, "seeder", seeder_env)?;
    let peers = (0..n)
        .map(|i| start_agent(lan.host(i + 2), services, dir, &format!("peer{i}"), env))
        .collect::<Result<_>>()?;
    Ok(LanAgents {
        services: procs,
        seeder,
        peers,
    })
}

/// Starts agent number `i` on loopback (no namespaces), with the services
/// of [`start_services`] on loopback too, and waits until it is registered.
pub fn start_loopback_agent(dir: &Path, name: &str, i: u16) -> Result<Proc> {
    start_loopback_agent_with(dir, name, i, &[])
}

/// [`start_loopback_agent`] with more environment for the agent.
pub fn start_loopback_agent_with(
    dir: &Path,
    name: &str,
    i: u16,
    env: &[(&str, &str)],
) -> Result<Proc> {
    let data = dir.join(name);
    std::fs::create_dir_all(&data)?;
    let mut agent = Command::new(bin("peer-agent")?);
    agent
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", 50153 + i * 100))
        .args([
            "--metrics-listen",
            "",
            "--web-listen",
            "",
            "--index-url",
            "127.0.0.1:50052",
            "--auth-url",
            "127.0.0.1:50051",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("P2P_USER", "admin")
        .env("P2P_PASSWORD", ADMIN_PASSWORD)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied());
    with_tls(&mut agent, "127.0.0.1")?;
    let proc = spawn(agent, "peer-agent", &dir.join(format!("{name}.log")))?;
    let p2p = bin("p2p")?;
    wait_until(Duration::from_secs(60), "agent to register", || {
        registered(Command::new(&p2p), &data)
    })?;
    Ok(proc)
}

/// Shares `file` with `p2p` (the `Command`, on whichever host runs it)
/// `--json share` through the agent with data dir `data`.
pub fn share(mut p2p: Command, data: &Path, file: &Path) -> Result<()> {
    let shared = p2p
        .env("P2P_DATA_DIR", data)
        .args(["--json", "share"])
        .arg(file)
        .output()?;
    if !shared.status.success() {
        bail!("share failed: {}", String::from_utf8_lossy(&shared.stderr));
    }
    Ok(())
}

/// Starts `p2p` (the `Command`, on whichever host runs it) `--json get
/// NAME -o OUT` through the agent with data dir `data`; its stderr is kept
/// for [`finished`].
pub fn get(mut p2p: Command, data: &Path, name: &str, out: &Path) -> Result<Proc> {
    let child = p2p
        .env("P2P_DATA_DIR", data)
        .args(["--json", "get", name, "-o"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(Proc(child))
}

/// Whether the `p2p get` of [`get`] returned; an error with what it
/// printed when it failed.
pub fn finished(get: &mut Proc) -> Result<bool> {
    let Some(status) = get.0.try_wait()? else {
        return Ok(false);
    };
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = get.0.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        bail!("a download failed: {err}");
    }
    Ok(true)
}

/// What `p2p` (the `Command`, on whichever host runs it) `--json status`
/// says about the agent with data dir `data`; `None` when it printed no
/// JSON.
pub fn status(mut p2p: Command, data: &Path) -> std::io::Result<Option<serde_json::Value>> {
    let output = p2p
        .env("P2P_DATA_DIR", data)
        .args(["--json", "status"])
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok()))
}

/// Whether the agent with data dir `data` has a peer id yet.
fn registered(p2p: Command, data: &Path) -> bool {
    status(p2p, data)
        .ok()
        .flatten()
        .and_then(|v| v.get("peer_id").or_else(|| v.get("peerId")).cloned())
        .and_then(|v| v.as_str().map(|s| !s.is_empty()))
        .unwrap_or(false)
}
