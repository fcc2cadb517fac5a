//! An emulated LAN on one machine: each host is a network namespace with
//! its own address, joined by a veth pair to a bridge that lives in a
//! "switch" namespace of its own, so nothing touches the machine's real
//! network. Links can be shaped with `tc` (token bucket rate each way, up
//! and down apart, netem delay where the kernel has it), cut and restored.
//! A host's own egress queue (its upload) sorts its packets in two bands
//! as Linux's default queue does, so a bulk DSCP waits behind the rest
//! ([`HostQueue`]); the switch's port towards a host is one FIFO.
//!
//! Addresses (10.77.0.0/24) exist only inside the namespaces a [`Lan`]
//! creates; every namespace is deleted when the `Lan` drops, and the first
//! `Lan` a process creates first deletes those a killed run left (named
//! for a process that no longer exists). Needs root and iproute2;
//! [`Lan::unavailable_reason`] says why a test must skip.

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How a host's link is shaped, both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkShape {
    /// Rate limit in megabits per second each way, or the host's upload
    /// alone when `down_mbit` is set; `None` leaves it unshaped.
    pub rate_mbit: Option<u32>,
    /// The host's download rate in megabits per second when it differs
    /// from its upload (a Wi-Fi laptop: 30 down, 10 up); `None`:
    /// `rate_mbit` both ways.
    pub down_mbit: Option<u32>,
    /// One-way delay added on the host's egress (needs sch_netem).
    pub delay: Option<Duration>,
    /// How long a packet may wait in a rate-limited link's queue (`tbf`
    /// latency; in each band of [`HostQueue::Bands`]); `None`:
    /// [`DEFAULT_QUEUE`].
    pub queue: Option<Duration>,
    /// How the host's own egress queue (its upload) orders what waits in
    /// it. The switch's port towards the host (its download) is one FIFO
    /// whatever this says.
    pub host_queue: HostQueue,
}

/// How a host's own egress queue orders the packets waiting in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostQueue {
    /// Two bands, the way Linux's default queue (`pfifo_fast`, which this
    /// kernel has) sorts a host's own packets: those whose TOS byte asks
    /// for throughput (the legacy bits `0x08`, which a bulk DSCP such as
    /// AF11 carries) wait until the rest have gone. Each band holds
    /// [`LinkShape::queue`] of the rate. Built as `tbf` with an `htb`
    /// of two priorities under it, since this kernel has no `prio` qdisc.
    #[default]
    Bands,
    /// One FIFO for every packet, as the switch's port is (the model of
    /// every figure before 2026-12-07).
    Fifo,
}

impl std::str::FromStr for HostQueue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bands" => Ok(Self::Bands),
            "fifo" => Ok(Self::Fifo),
            _ => Err(format!("`{s}` is no host queue: bands or fifo")),
        }
    }
}

/// A shaped link's queue unless told otherwise: 100 ms of the rate.
pub const DEFAULT_QUEUE: Duration = Duration::from_millis(100);

/// Why a LAN could not be built or changed.
#[derive(Debug, thiserror::Error)]
pub enum LanError {
    /// An `ip`/`tc` command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A command could not be started at all.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

static NEXT_LAN: AtomicU32 = AtomicU32::new(0);
/// Whether this process has swept the namespaces killed runs left.
static SWEPT: std::sync::Once = std::sync::Once::new();

/// Deletes namespace `name`, killing what still runs in it first (its
/// processes would keep its interfaces).
fn remove_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// The prefix of every namespace of LAN number `lan` of process `pid`:
/// `p2p<pid>x<lan>`, then `sw` for its switch and `h<i>` for its hosts.
fn lan_tag(pid: u32, lan: u32) -> String {
    format!("p2p{pid}x{lan}")
}

/// The process a [`Lan`]'s namespace was made by, from its name (see
/// [`lan_tag`]).
fn netns_owner(name: &str) -> Option<u32> {
    let (pid, _) = name.strip_prefix("p2p")?.split_once('x')?;
    pid.parse().ok()
}

/// Deletes the namespaces of LANs whose process is gone: a benchmark or
/// test killed before its `Lan` dropped (Ctrl-C, a timeout) leaves its
/// hosts, their agents and their addresses behind.
fn sweep_left_behind() {
    for name in netns_names() {
        let Some(pid) = netns_owner(&name) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing network namespace {name}: process {pid}, which made it, is gone");
            remove_netns(&name);
        }
    }
}

/// The names `ip netns list` prints (each line is a name, then maybe an
/// id); none if it cannot run.
fn netns_names() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn run(args: &[&str]) -> Result<Output, LanError> {
    let command = args.join(" ");
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|source| LanError::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(LanError::Command {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// One emulated machine.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace name.
    pub netns: String,
    /// The host's address on the LAN.
    pub addr: Ipv4Addr,
    switch_ns: String,
    switch_port: String,
}

impl Host {
    /// This machine itself, as a host at 127.0.0.1: commands run directly.
    /// It cannot be cut or shaped.
    pub fn loopback() -> Self {
        Self {
            netns: String::new(),
            addr: Ipv4Addr::LOCALHOST,
            switch_ns: String::new(),
            switch_port: String::new(),
        }
    }

    /// A command that runs `program` inside this host's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        if self.netns.is_empty() {
            return Command::new(program);
        }
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).arg(program);
        command
    }

    /// A tokio command that runs `program` inside this host's namespace.
    pub fn tokio_command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        tokio::process::Command::from(self.command(program))
    }

    /// Pulls the cable: the host keeps running but reaches nobody.
    pub fn cut(&self) -> Result<(), LanError> {
        run(&[
            "ip",
            "-n",
            &self.switch_ns,
            "link",
            "set",
            &self.switch_port,
            "down",
        ])
        .map(drop)
    }

    /// Plugs the cable back in.
    pub fn restore(&self) -> Result<(), LanError> {
        run(&[
            "ip",
            "-n",
            &self.switch_ns,
            "link",
            "set",
            &self.switch_port,
            "up",
        ])
        .map(drop)
    }

    /// Replaces the shaping of this host's link, both directions: the
    /// host side's egress is its upload, the switch side's its download.
    pub fn shape(&self, shape: LinkShape) -> Result<(), LanError> {
        shape_dev(&self.netns, "eth0", shape, true)?;
        let down = LinkShape {
            rate_mbit: shape.down_mbit.or(shape.rate_mbit),
            host_queue: HostQueue::Fifo,
            ..shape
        };
        shape_dev(&self.switch_ns, &self.switch_port, down, false)
    }

    /// Bytes this host has sent through each band of its egress queue
    /// ([`HostQueue::Bands`]) since its link was shaped: the first band,
    /// then the bulk one. `None` when its queue has no bands.
    pub fn sent_by_band(&self) -> Result<Option<(u64, u64)>, LanError> {
        let out = tc(&self.netns, "-s class show dev eth0")?;
        let text = String::from_utf8_lossy(&out.stdout);
        // `class htb 2:10 ...` then ` Sent <bytes> bytes <packets> pkt ...`.
        let sent = |class: &str| -> Option<u64> {
            let mut lines = text.lines();
            lines.find(|l| l.split_whitespace().nth(2) == Some(class))?;
            let line = lines.next()?;
            line.split_whitespace()
                .skip_while(|w| *w != "Sent")
                .nth(1)?
                .parse()
                .ok()
        };
        Ok(sent(FIRST_BAND).zip(sent(BULK_BAND)))
    }

    /// `host:port` on this host.
    pub fn socket(&self, port: u16) -> String {
        format!("{}:{port}", self.addr)
    }

    /// Moves the host to `new` (in 10.77.0.0/24, not used by another host),
    /// the way a DHCP lease change does: the old address goes, then the new
    /// one comes, on the same link; running processes see both events.
    /// `self.addr` follows. Use [`Lan::host_mut`] to keep the `Lan`'s view
    /// current.
    pub fn change_address(&mut self, new: Ipv4Addr) -> Result<(), LanError> {
        assert!(
            !self.netns.is_empty(),
            "the loopback host's address cannot change"
        );
        let old = format!("{}/24", self.addr);
        let new_cidr = format!("{new}/24");
        run(&["ip", "-n", &self.netns, "addr", "del", &old, "dev", "eth0"])?;
        run(&[
            "ip",
            "-n",
            &self.netns,
            "addr",
            "add",
            &new_cidr,
            "dev",
            "eth0",
        ])?;
        self.addr = new;
        Ok(())
    }
}

/// The classes of [`HostQueue::Bands`]: the first band, and the bulk one
/// served only when the first is empty.
const FIRST_BAND: &str = "2:10";
const BULK_BAND: &str = "2:20";

/// Runs `tc` with `args` (split on whitespace) in namespace `netns`.
fn tc(netns: &str, args: &str) -> Result<Output, LanError> {
    let mut command = vec!["ip", "netns", "exec", netns, "tc"];
    command.extend(args.split_whitespace());
    run(&command)
}

fn shape_dev(netns: &str, dev: &str, shape: LinkShape, with_delay: bool) -> Result<(), LanError> {
    let _ = tc(netns, &format!("qdisc del dev {dev} root"));
    let delay = shape.delay.filter(|_| with_delay);
    match (shape.rate_mbit, delay) {
        (None, None) => Ok(()),
        (Some(rate), None) => {
            // Burst: at least 10 ms worth of bytes so the bucket does not
            // starve a fast sender between timer ticks.
            let burst = (u64::from(rate) * 1_000_000 / 8 / 100).max(64 * 1024);
            let queue = shape.queue.unwrap_or(DEFAULT_QUEUE);
            let here = |args: String| tc(netns, &args).map(drop);
            here(format!(
                "qdisc add dev {dev} root handle 1: tbf rate {rate}mbit burst {burst} latency {}us",
                queue.as_micros()
            ))?;
            if shape.host_queue == HostQueue::Fifo {
                return Ok(());
            }
            // Under the bucket, strict priority: both classes may take
            // the whole rate and the first is served first. Each band is
            // a byte FIFO of `queue` at the rate, as the bucket's own was.
            let band_bytes = (u128::from(rate) * 1_000_000 / 8 * queue.as_micros() / 1_000_000)
                .max(u128::from(burst));
            // Unclassified packets go to the first band, 2:10.
            here(format!(
                "qdisc add dev {dev} parent 1:1 handle 2: htb default 10"
            ))?;
            here(format!(
                "class add dev {dev} parent 2: classid 2:1 htb rate 10gbit quantum 200000"
            ))?;
            for (band, priority) in [(FIRST_BAND, 0), (BULK_BAND, 1)] {
                here(format!(
                    "class add dev {dev} parent 2:1 classid {band} htb rate 10gbit quantum 200000 prio {priority}"
                ))?;
                here(format!(
                    "qdisc add dev {dev} parent {band} bfifo limit {band_bytes}"
                ))?;
            }
            // pfifo_fast's bulk band: IPTOS_TOS(tos) is 0x08-0x0e.
            here(format!(
                "filter add dev {dev} parent 2: protocol ip prio 1 u32 match ip tos 0x08 0x18 flowid {BULK_BAND}"
            ))
        }
        (rate, Some(delay)) => {
            let rate = rate
                .map(|rate| format!("rate {rate}mbit"))
                .unwrap_or_default();
            tc(
                netns,
                &format!(
                    "qdisc add dev {dev} root netem delay {}us {rate} limit 100000",
                    delay.as_micros()
                ),
            )
            .map(drop)
        }
    }
}

/// A set of hosts on one bridge. Deleted on drop.
#[derive(Debug)]
pub struct Lan {
    switch_ns: String,
    hosts: Vec<Host>,
}

impl Lan {
    /// `None` when this process can build LANs, otherwise why not (so a
    /// test can print the reason and skip).
    pub fn unavailable_reason() -> Option<String> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Some("network namespaces need root".into());
        }
        match Command::new("ip").args(["netns", "list"]).output() {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "`ip netns` does not work here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(err) => Some(format!("iproute2 (`ip`) is not installed: {err}")),
        }
    }

    /// Builds `count` hosts (at most 200) with links shaped by `shape`.
    pub fn create(count: usize, shape: LinkShape) -> Result<Self, LanError> {
        assert!(count <= 200, "a Lan holds at most 200 hosts");
        SWEPT.call_once(sweep_left_behind);
        let tag = lan_tag(std::process::id(), NEXT_LAN.fetch_add(1, Ordering::Relaxed));
        let switch_ns = format!("{tag}sw");
        run(&["ip", "netns", "add", &switch_ns])?;
        let mut lan = Self {
            switch_ns: switch_ns.clone(),
            hosts: Vec::new(),
        };
        run(&[
            "ip", "-n", &switch_ns, "link", "add", "br0", "type", "bridge",
        ])?;
        run(&["ip", "-n", &switch_ns, "link", "set", "br0", "up"])?;
        for i in 0..count {
            let netns = format!("{tag}h{i}");
            run(&["ip", "netns", "add", &netns])?;
            let addr = Ipv4Addr::new(10, 77, 0, (i + 1) as u8);
            let port = format!("h{i}");
            lan.hosts.push(Host {
                netns: netns.clone(),
                addr,
                switch_ns: switch_ns.clone(),
                switch_port: port.clone(),
            });
            run(&[
                "ip", "-n", &switch_ns, "link", "add", &port, "type", "veth", "peer", "name",
                "eth0", "netns", &netns,
            ])?;
            run(&[
                "ip", "-n", &switch_ns, "link", "set", &port, "master", "br0", "up",
            ])?;
            run(&[
                "ip",
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", &netns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
            lan.hosts[i].shape(shape)?;
        }
        Ok(lan)
    }

    /// Host `i` (0-based).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Host `i` (0-based), to change it (for example
    /// [`Host::change_address`]).
    pub fn host_mut(&mut self, i: usize) -> &mut Host {
        &mut self.hosts[i]
    }

    /// Every host.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for host in &self.hosts {
            remove_netns(&host.netns);
        }
        remove_netns(&self.switch_ns);
    }
}

/// Bytes every host of a [`Lan`] has sent and received, sampled over time
/// at the switch (a host's upload is what its switch port receives).
#[derive(Debug, Clone)]
pub struct LinkSample {
    /// When the sample was read.
    pub at: std::time::Instant,
    /// Bytes sent by host `i` so far.
    pub sent: Vec<u64>,
    /// Bytes received by host `i` so far.
    pub received: Vec<u64>,
    /// `flows[to][from]`: bytes host `from` has sent to host `to` so far
    /// (IP packets through the bridge); empty when the switch cannot
    /// count flows (no nftables).
    pub flows: Vec<Vec<u64>>,
}

/// Samples every host's counters until [`LinkMeter::stop`]. One sampling
/// process lives in the switch namespace (no process per sample for the
/// link counters; the per-flow counters cost one `nft` per sample).
#[derive(Debug)]
pub struct LinkMeter {
    child: std::process::Child,
    reader: Option<std::thread::JoinHandle<Vec<LinkSample>>>,
}

/// Prints `/proc/net/dev` of its namespace every `argv[1]` seconds, then,
/// when `argv[2]` is `flows`, the bridge's flow counters as one JSON line
/// after `flows `; each dump followed by a line `.`.
const SAMPLER: &str = "import sys, time, subprocess\nevery = float(sys.argv[1])\nflows = sys.argv[2] == 'flows'\nwhile True:\n    with open('/proc/net/dev') as f:\n        sys.stdout.write(f.read())\n    if flows:\n        out = subprocess.run(['nft', '-j', 'list', 'set', 'bridge', 'p2pacct', 'flows'], capture_output=True, text=True).stdout\n        sys.stdout.write('flows ' + out.replace('\\n', '') + '\\n')\n    sys.stdout.write('.\\n')\n    sys.stdout.flush()\n    time.sleep(every)\n";

/// The nftables rules that count bytes per (source, destination) address
/// pair crossing the bridge: one hash lookup per packet.
const FLOW_RULES: &str = "add table bridge p2pacct\ndelete table bridge p2pacct\nadd table bridge p2pacct\nadd set bridge p2pacct flows { type ipv4_addr . ipv4_addr; size 4096; flags dynamic; counter; }\nadd chain bridge p2pacct pairs { type filter hook forward priority 0; }\nadd rule bridge p2pacct pairs update @flows { ip saddr . ip daddr }\n";

impl Lan {
    /// Starts sampling every host's link counters, and the bytes each host
    /// sent each other host, every `every`.
    pub fn link_meter(&self, every: Duration) -> Result<LinkMeter, LanError> {
        use std::io::{BufRead, Write};
        let flows = Command::new("ip")
            .args(["netns", "exec", &self.switch_ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()
            .and_then(|mut nft| {
                nft.stdin.take()?.write_all(FLOW_RULES.as_bytes()).ok()?;
                nft.wait().ok().filter(|s| s.success())
            })
            .is_some();
        let command = format!("ip netns exec {} python3 -c <sampler>", self.switch_ns);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.switch_ns, "python3", "-c", SAMPLER])
            .arg(every.as_secs_f64().to_string())
            .arg(if flows { "flows" } else { "links" })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|source| LanError::Spawn { command, source })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let ports: Vec<String> = self.hosts.iter().map(|h| h.switch_port.clone()).collect();
        let addrs: Vec<Ipv4Addr> = self.hosts.iter().map(|h| h.addr).collect();
        let reader = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut sent = vec![0; ports.len()];
            let mut received = vec![0; ports.len()];
            let mut flows = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "." {
                    samples.push(LinkSample {
                        at: std::time::Instant::now(),
                        sent: sent.clone(),
                        received: received.clone(),
                        flows: std::mem::take(&mut flows),
                    });
                    continue;
                }
                if let Some(json) = line.strip_prefix("flows ") {
                    flows = flow_matrix(json, &addrs);
                    continue;
                }
                let Some((name, counters)) = line.split_once(':') else {
                    continue;
                };
                let Some(i) = ports.iter().position(|p| p == name.trim()) else {
                    continue;
                };
                let fields: Vec<u64> = counters
                    .split_whitespace()
                    .filter_map(|f| f.parse().ok())
                    .collect();
                // /proc/net/dev: 8 receive counters, then 8 transmit ones.
                if let (Some(&rx), Some(&tx)) = (fields.first(), fields.get(8)) {
                    sent[i] = rx;
                    received[i] = tx;
                }
            }
            samples
        });
        Ok(LinkMeter {
            child,
            reader: Some(reader),
        })
    }
}

/// `flows[to][from]` in bytes from `nft -j list set` output: every element
/// `{"elem": {"val": {"concat": [from, to]}, "counter": {"bytes": ..}}}`
/// between two of `addrs`. Empty when the output cannot be read.
fn flow_matrix(json: &str, addrs: &[Ipv4Addr]) -> Vec<Vec<u64>> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let host = |v: &serde_json::Value| {
        let addr: Ipv4Addr = v.as_str()?.parse().ok()?;
        addrs.iter().position(|a| *a == addr)
    };
    let mut matrix = vec![vec![0; addrs.len()]; addrs.len()];
    let elements = value["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["set"]["elem"].as_array())
        .flatten();
    for element in elements {
        let elem = &element["elem"];
        let pair = elem["val"]["concat"].as_array();
        let bytes = elem["counter"]["bytes"].as_u64();
        if let (Some([from, to]), Some(bytes)) = (pair.map(Vec::as_slice), bytes)
            && let (Some(from), Some(to)) = (host(from), host(to))
        {
            matrix[to][from] = bytes;
        }
    }
    matrix
}

impl LinkMeter {
    /// Stops sampling and returns the samples, oldest first.
    pub fn stop(mut self) -> Vec<LinkSample> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for LinkMeter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_names_the_process_that_made_it() {
        assert_eq!(netns_owner(&format!("{}h3", lan_tag(4242, 0))), Some(4242));
        assert_eq!(netns_owner("p2p4242x0h3"), Some(4242));
        assert_eq!(netns_owner("p2p4242x12sw"), Some(4242));
        assert_eq!(netns_owner("p2pfoo"), None);
        assert_eq!(netns_owner("other7x0"), None);
        assert_eq!(netns_owner("p2px0h1"), None);
    }

    #[test]
    fn namespaces_a_killed_run_left_are_removed() {
        if Lan::unavailable_reason().is_some() {
            return;
        }
        // A process that has exited: its pid names no process now.
        let mut child = Command::new("true").spawn().expect("spawn true");
        let dead = child.id();
        child.wait().expect("wait");
        if std::path::Path::new(&format!("/proc/{dead}")).exists() {
            return; // reused already; nothing to test with
        }
        let left = format!("{}h0", lan_tag(dead, 0));
        run(&["ip", "netns", "add", &left]).expect("add a namespace");
        let ours = format!("{}h0", lan_tag(std::process::id(), 999));
        run(&["ip", "netns", "add", &ours]).expect("add our own namespace");
        sweep_left_behind();
        let names = netns_names();
        remove_netns(&ours);
        remove_netns(&left);
        assert!(!names.contains(&left), "left behind: {names:?}");
        assert!(
            names.contains(&ours),
            "a live run's namespace was removed: {names:?}"
        );
    }

    #[test]
    fn flow_counters_become_a_matrix_of_hosts() {
        // What `nft -j list set` printed for two flows on nftables 1.0.6,
        // plus one from an address that is no host of the LAN.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, {"set": {"family": "bridge", "name": "flows", "table": "p2pacct", "type": ["ipv4_addr", "ipv4_addr"], "handle": 1, "size": 4096, "elem": [{"elem": {"val": {"concat": ["10.77.0.2", "10.77.0.3"]}, "counter": {"packets": 3, "bytes": 4500}}}, {"elem": {"val": {"concat": ["10.77.0.3", "10.77.0.1"]}, "counter": {"packets": 1, "bytes": 60}}}, {"elem": {"val": {"concat": ["10.9.9.9", "10.77.0.1"]}, "counter": {"packets": 1, "bytes": 99}}}], "stmt": [{"counter": null}]}}]}"#;
        let addrs: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(10, 77, 0, i)).collect();
        let flows = flow_matrix(json, &addrs);
        assert_eq!(flows[2][1], 4500, "host 1 sent host 2 4500 bytes");
        assert_eq!(flows[0][2], 60);
        assert_eq!(flows.iter().flatten().sum::<u64>(), 4560);
        assert!(flow_matrix("not json", &addrs).is_empty());
    }
}
