//! The raw TCP mesh baseline of `p2p-bench swarm`: the same swarm with
//! nothing but TCP, in the same run, to tell what the emulated LAN and
//! these two cores cost from what our protocol costs.
//!
//! The seeder hands out each 64 KiB block of the file once, to whichever
//! downloader asks next, and every downloader forwards each block it gets
//! from the seeder to every other downloader. A downloader asks the seeder
//! for more only while its forwarding keeps up (at most
//! [`FORWARD_BACKLOG`] blocks waiting on any peer, with small socket send
//! buffers so that a busy uplink shows), so the seeder's blocks go to the
//! downloaders whose uplinks have room: BitTorrent's super-seeding, pulled
//! instead of pushed. There is no TLS, no hashing, no index and no
//! control traffic beyond a one-byte request and a 12-byte block header,
//! and one single-threaded process per host (as aria2c is). Downloaders
//! write each block at its offset in a file (to the page cache, no fsync,
//! as aria2c does). Its CPU per GiB is what the kernel's TCP through veth,
//! bridge and `tbf` costs before any protocol adds to it.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use p2p_tests::netns::{Host, Lan};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;

use crate::case::Baseline;
use crate::links::sample_rtt;
use crate::payload::file_hash;
use crate::process::spawn;
use crate::usage::cpu_time;

/// The port every mesh node listens on.
pub const PORT: u16 = 7000;
/// What the seeder hands out, and a downloader forwards, at a time.
const BLOCK: u64 = 64 * 1024;
/// Blocks a downloader has asked the seeder for and not yet received.
const REQUESTS_AHEAD: usize = 4;
/// A downloader asks for no more while a peer has this many of its
/// blocks still to take.
const FORWARD_BACKLOG: usize = 2;
/// Socket send buffers: small, so that a full uplink holds writes back.
const SEND_BUFFER: u32 = 128 * 1024;
/// The header of a block: its offset (u64) and length (u32), big-endian.
const HEADER: usize = 12;
/// How long a node waits for its connections to be made: the others are
/// started at the same moment, so a refused connect is tried again. Long
/// enough for TCP's fifth SYN (sent 31 s in): a SYN that meets a link
/// queue full of data is dropped like any packet.
const CONNECT_WINDOW: Duration = Duration::from_secs(60);

/// One node of the mesh (`p2p-bench mesh-node`, started by [`mesh_case`]).
#[derive(clap::Args)]
pub struct NodeArgs {
    /// The file: read by the seeder, written by a downloader.
    #[arg(long)]
    file: PathBuf,
    /// Downloaders in the mesh.
    #[arg(long)]
    n: u32,
    /// The file's size in bytes.
    #[arg(long)]
    size: u64,
    /// Where this node listens.
    #[arg(long)]
    listen: SocketAddr,
    /// This downloader's number; absent for the seeder.
    #[arg(long)]
    index: Option<u32>,
    /// The seeder's address (downloaders only).
    #[arg(long)]
    seeder: Option<SocketAddr>,
    /// Every downloader's address, in order (downloaders only).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<SocketAddr>,
    /// Created once a downloader has the whole file.
    #[arg(long)]
    done: Option<PathBuf>,
    /// Written when the node exits: its user and system CPU seconds.
    #[arg(long)]
    cpu_to: PathBuf,
}

/// Runs one node on a single-threaded runtime until its part is done.
pub fn node(args: NodeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match args.index {
            None => seed(&args).await,
            Some(index) => download(&args, index).await,
        }
    })?;
    let (user, system) = cpu_time(std::process::id()).context("cannot read this node's CPU")?;
    std::fs::write(&args.cpu_to, format!("{user} {system}\n"))?;
    Ok(())
}

/// A listener whose accepted sockets have [`SEND_BUFFER`].
fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.set_send_buffer_size(SEND_BUFFER)?;
    socket.bind(addr)?;
    Ok(socket.listen(1024)?)
}

/// The seeder: answers every one-byte request with the next block nobody
/// has had yet, and with an empty block once there is none.
async fn seed(args: &NodeArgs) -> Result<()> {
    let file = Arc::new(std::fs::File::open(&args.file)?);
    let listener = listen(args.listen)?;
    let next = Arc::new(AtomicU64::new(0));
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..args.n {
        let (mut stream, _) = tokio::time::timeout(CONNECT_WINDOW, listener.accept())
            .await
            .context("a downloader never connected to the seeder")??;
        stream.set_nodelay(true)?;
        let (file, next, size) = (file.clone(), next.clone(), args.size);
        sends.spawn(async move {
            let mut buf = vec![0u8; HEADER + BLOCK as usize];
            loop {
                if stream.read_u8().await.is_err() {
                    return anyhow::Ok(());
                }
                let at = next.fetch_add(BLOCK, Ordering::Relaxed);
                let len = size.saturating_sub(at).min(BLOCK) as usize;
                put_header(&mut buf, at, len);
                file.read_exact_at(&mut buf[HEADER..HEADER + len], at)?;
                stream.write_all(&buf[..HEADER + len]).await?;
                if len == 0 {
                    // Requests still under way are read and dropped:
                    // closing with them unread would reset the
                    // connection and lose the last blocks in flight.
                    stream.shutdown().await?;
                    let mut rest = Vec::new();
                    let _ =
                        tokio::time::timeout(CONNECT_WINDOW, stream.read_to_end(&mut rest)).await;
                    return Ok(());
                }
            }
        });
    }
    while let Some(sent) = sends.join_next().await {
        sent??;
    }
    Ok(())
}

fn put_header(buf: &mut [u8], at: u64, len: usize) {
    buf[..8].copy_from_slice(&at.to_be_bytes());
    buf[8..HEADER].copy_from_slice(&(len as u32).to_be_bytes());
}

/// One peer's forwarding stream, and how many blocks wait on it.
struct Forward {
    queue: tokio::sync::mpsc::UnboundedSender<Arc<[u8]>>,
    waiting: Arc<AtomicUsize>,
    /// Set once the connection is made.
    connected: Arc<AtomicBool>,
}

/// A downloader's shared counters.
struct Progress {
    /// Bytes of the file written so far, from anyone.
    have: AtomicU64,
    /// Woken on every block received and every block forwarded.
    changed: Notify,
}

/// A downloader: blocks from the seeder, forwarded to every other
/// downloader, and every peer's blocks from that peer.
async fn download(args: &NodeArgs, index: u32) -> Result<()> {
    let size = args.size;
    let out = std::fs::File::create(&args.file)?;
    out.set_len(size)?;
    let out = Arc::new(out);
    let progress = Arc::new(Progress {
        have: AtomicU64::new(0),
        changed: Notify::new(),
    });
    let listener = listen(args.listen)?;
    let others = args.peers.len().saturating_sub(1);
    let receiving = {
        let (out, progress) = (out.clone(), progress.clone());
        tokio::spawn(async move {
            let mut receives = tokio::task::JoinSet::new();
            for _ in 0..others {
                let (mut stream, _) = tokio::time::timeout(CONNECT_WINDOW, listener.accept())
                    .await
                    .context("a downloader never connected to forward its blocks")??;
                let (out, progress) = (out.clone(), progress.clone());
                receives.spawn(async move {
                    let mut buf = vec![0u8; HEADER + BLOCK as usize];
                    while receive(&mut stream, &mut buf, &out, &progress, &[])
                        .await?
                        .is_some()
                    {}
                    anyhow::Ok(())
                });
            }
            while let Some(received) = receives.join_next().await {
                received??;
            }
            anyhow::Ok(())
        })
    };
    let mut forwards = tokio::task::JoinSet::new();
    let mut peers = Vec::new();
    for (j, &peer) in args.peers.iter().enumerate() {
        if j as u32 == index {
            continue;
        }
        let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<Arc<[u8]>>();
        let waiting = Arc::new(AtomicUsize::new(0));
        let connected = Arc::new(AtomicBool::new(false));
        peers.push(Forward {
            queue,
            waiting: waiting.clone(),
            connected: connected.clone(),
        });
        let progress = progress.clone();
        // Every connection is made at once, beside the seeder's: blocks
        // for a peer not reached yet wait in its queue.
        forwards.spawn(async move {
            let mut stream = connect(peer).await?;
            connected.store(true, Ordering::Relaxed);
            while let Some(block) = rx.recv().await {
                stream.write_all(&block).await?;
                waiting.fetch_sub(1, Ordering::Relaxed);
                progress.changed.notify_one();
            }
            stream.shutdown().await?;
            anyhow::Ok(())
        });
    }
    let seeder = args.seeder.context("a downloader needs --seeder")?;
    let (mut from_seeder, mut ask_seeder) = connect(seeder).await?.into_split();
    let asked = Arc::new(AtomicUsize::new(0));
    let exhausted = Arc::new(AtomicBool::new(false));
    let asking = {
        let (progress, asked, exhausted) = (progress.clone(), asked.clone(), exhausted.clone());
        let backlog: Vec<(Arc<AtomicBool>, Arc<AtomicUsize>)> = peers
            .iter()
            .map(|p| (p.connected.clone(), p.waiting.clone()))
            .collect();
        tokio::spawn(async move {
            while !exhausted.load(Ordering::Relaxed) {
                let changed = progress.changed.notified();
                // A peer not reached yet does not hold the others back.
                let behind = backlog
                    .iter()
                    .filter(|(connected, _)| connected.load(Ordering::Relaxed))
                    .map(|(_, w)| w.load(Ordering::Relaxed))
                    .max()
                    .unwrap_or(0);
                if asked.load(Ordering::Relaxed) < REQUESTS_AHEAD && behind < FORWARD_BACKLOG {
                    asked.fetch_add(1, Ordering::Relaxed);
                    // The seeder closes once it has handed out the last
                    // block; a request still under way then fails, and
                    // the blocks read below tell whether that was the end.
                    if ask_seeder.write_u8(1).await.is_err() {
                        break;
                    }
                } else {
                    changed.await;
                }
            }
            anyhow::Ok(())
        })
    };
    let mut buf = vec![0u8; HEADER + BLOCK as usize];
    while receive(&mut from_seeder, &mut buf, &out, &progress, &peers)
        .await?
        .is_some()
    {
        asked.fetch_sub(1, Ordering::Relaxed);
        progress.changed.notify_one();
    }
    exhausted.store(true, Ordering::Relaxed);
    progress.changed.notify_one();
    drop(peers);
    asking.await??;
    while progress.have.load(Ordering::Relaxed) < size {
        let changed = progress.changed.notified();
        if progress.have.load(Ordering::Relaxed) >= size {
            break;
        }
        tokio::time::timeout(CONNECT_WINDOW, changed)
            .await
            .context("no block arrived for 60 s")?;
    }
    if let Some(done) = &args.done {
        std::fs::write(done, b"")?;
    }
    receiving.await??;
    while let Some(forwarded) = forwards.join_next().await {
        forwarded??;
    }
    Ok(())
}

/// Reads one block from `stream` into `buf` (header and data, reused for
/// every block of the stream) and writes it at its offset, queueing a copy
/// for every peer in `forward_to`; `None` at the end of the stream (or the
/// seeder's empty block).
async fn receive(
    stream: &mut (impl AsyncReadExt + Unpin),
    buf: &mut [u8],
    out: &std::fs::File,
    progress: &Progress,
    forward_to: &[Forward],
) -> Result<Option<()>> {
    let (header, data) = buf.split_at_mut(HEADER);
    match stream.read_exact(header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let at = u64::from_be_bytes(header[..8].try_into()?);
    let len = u32::from_be_bytes(header[8..].try_into()?) as usize;
    if len == 0 {
        return Ok(None);
    }
    if len as u64 > BLOCK {
        bail!("a block of {len} bytes");
    }
    stream
        .read_exact(&mut data[..len])
        .await
        .with_context(|| format!("the stream ended inside the block at {at}"))?;
    out.write_all_at(&data[..len], at)?;
    progress.have.fetch_add(len as u64, Ordering::Relaxed);
    if !forward_to.is_empty() {
        let block: Arc<[u8]> = Arc::from(&buf[..HEADER + len]);
        for peer in forward_to {
            peer.waiting.fetch_add(1, Ordering::Relaxed);
            peer.queue
                .send(block.clone())
                .ok()
                .context("a forwarding stream failed")?;
        }
    } else {
        progress.changed.notify_one();
    }
    Ok(Some(()))
}

/// Connects to `addr` with [`SEND_BUFFER`], trying again while it is not
/// listening yet.
async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let deadline = Instant::now() + CONNECT_WINDOW;
    loop {
        let socket = TcpSocket::new_v4()?;
        socket.set_send_buffer_size(SEND_BUFFER)?;
        let attempt = tokio::time::timeout_at(deadline.into(), socket.connect(addr)).await;
        match attempt {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            // Not listening yet: it was started at the same moment.
            Ok(Err(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => return Err(e).with_context(|| format!("cannot connect to {addr}")),
            Err(_) => bail!("cannot connect to {addr} within {CONNECT_WINDOW:?}"),
        }
    }
}

/// Runs the mesh once: the seeder on host 1 with `source`, N downloaders
/// on hosts 2…, all started at once; checks every copy against the source.
pub fn mesh_case(
    lan: &Lan,
    n: usize,
    source: &Path,
    dir: &Path,
    timeout: Duration,
    rtt_at: Duration,
) -> Result<Baseline> {
    let me = std::env::current_exe()?;
    let size = std::fs::metadata(source)?.len();
    let peers = (0..n)
        .map(|i| lan.host(i + 2).socket(PORT))
        .collect::<Vec<_>>()
        .join(",");
    let node = |host: &Host, file: &Path, cpu_to: &Path| {
        let mut c = host.command(&me);
        c.args([
            "mesh-node",
            "--n",
            &n.to_string(),
            "--size",
            &size.to_string(),
        ])
        .args(["--listen", &host.socket(PORT)])
        .arg("--file")
        .arg(file)
        .arg("--cpu-to")
        .arg(cpu_to);
        c
    };
    let seeder = lan.host(1);
    let mut cpu_files = vec![dir.join("mesh-seeder.cpu")];
    let seed = spawn(
        node(seeder, source, &cpu_files[0]),
        "mesh seeder",
        &dir.join("mesh-seeder.log"),
    )?;
    let started = Instant::now();
    let rtt = sample_rtt([seeder.clone(), lan.host(2).clone()], PORT, rtt_at);
    let mut downloaders = Vec::new();
    for i in 0..n {
        let out = dir.join(format!("mesh{i}.bin"));
        let done = dir.join(format!("mesh{i}.done"));
        let cpu = dir.join(format!("mesh{i}.cpu"));
        let mut c = node(lan.host(i + 2), &out, &cpu);
        c.args(["--index", &i.to_string(), "--peers", &peers])
            .args(["--seeder", &seeder.socket(PORT)])
            .arg("--done")
            .arg(&done);
        let log = dir.join(format!("mesh{i}.log"));
        let proc = spawn(c, "mesh downloader", &log)?;
        cpu_files.push(cpu);
        downloaders.push((proc, out, done, log, None::<f64>));
    }
    let mut nodes = vec![(seed, dir.join("mesh-seeder.log"))];
    while downloaders.iter().any(|d| d.4.is_none()) {
        if started.elapsed() > timeout {
            bail!("raw TCP mesh N={n} timed out");
        }
        for (proc, _, done, log, at) in downloaders.iter_mut().filter(|d| d.4.is_none()) {
            if done.exists() {
                *at = Some(started.elapsed().as_secs_f64());
            } else if let Some(status) = proc.0.try_wait()? {
                bail!("a mesh node exited early ({status}): {}", log_tail(log));
            }
        }
        if let Some(status) = nodes[0].0.0.try_wait()?
            && !status.success()
        {
            bail!("the mesh seeder failed: {}", log_tail(&nodes[0].1));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let per_host_s: Vec<f64> = downloaders.iter().filter_map(|d| d.4).collect();
    let loaded_rtt = rtt.join().ok().flatten();
    let want = file_hash(source)?;
    for (proc, out, _, log, _) in downloaders {
        if file_hash(&out)? != want {
            bail!("the mesh's {} does not match the source", out.display());
        }
        std::fs::remove_file(&out)?;
        nodes.push((proc, log));
    }
    // Every node exits once it has sent what it forwards.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (proc, log) in &mut nodes {
        loop {
            match proc.0.try_wait()? {
                Some(status) if status.success() => break,
                Some(status) => bail!("a mesh node failed ({status}): {}", log_tail(log)),
                None if Instant::now() > deadline => bail!("a mesh node did not exit"),
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    let (mut user, mut system) = (0.0, 0.0);
    for cpu in &cpu_files {
        let text = std::fs::read_to_string(cpu)?;
        let mut fields = text.split_whitespace().map(str::parse::<f64>);
        match (fields.next(), fields.next()) {
            (Some(Ok(u)), Some(Ok(s))) => (user, system) = (user + u, system + s),
            _ => bail!("{} holds no CPU times", cpu.display()),
        }
    }
    let gib = n as f64 * size as f64 / f64::from(1u32 << 30);
    Ok(Baseline::new(per_host_s, (user, system), gib, loaded_rtt))
}

/// What a failed node said: its `Error:` line and the causes below it
/// (the backtrace after them left out), for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let said: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Error:"))
        .take_while(|l| !l.starts_with("Stack backtrace"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if said.is_empty() {
        format!("see {}", log.display())
    } else {
        said.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_header_names_offset_and_length() {
        let mut buf = [0u8; HEADER];
        put_header(&mut buf, (5 << 32) + 7, 65536);
        assert_eq!(
            u64::from_be_bytes(buf[..8].try_into().unwrap()),
            (5 << 32) + 7
        );
        assert_eq!(u32::from_be_bytes(buf[8..].try_into().unwrap()), 65536);
    }
}
