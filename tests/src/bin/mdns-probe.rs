//! mdns-probe: runs one side of LAN discovery (`p2p_services::discovery`)
//! as its own process, so a test can put the announcing and the browsing
//! side in different network namespaces. Prints JSON lines on stdout.
//!
//! - `announce`: announces an instance, prints `{"announced": FULLNAME}`,
//!   and keeps announcing until stdin closes or `--max-lifetime` passes,
//!   then unregisters (goodbye packets) and exits.
//! - `browse`: browses for `--wait`, prints `[{instance, host, addrs, port,
//!   txt, dial}]` and exits.
//!
//! Not a tool for users; `p2p` will browse through the library.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use p2p_services::config::parse_duration;
use p2p_services::discovery;
use tokio::io::AsyncReadExt;

/// Flags of the probe.
#[derive(Debug, Parser)]
#[command(
    name = "mdns-probe",
    about = "Announce or browse _p2p-transfer._tcp over mDNS"
)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Announce one instance until stdin closes.
    Announce {
        /// Instance name.
        #[arg(long)]
        instance: String,
        /// Port to announce.
        #[arg(long)]
        port: u16,
        /// A TXT entry `key=value`; repeat for more.
        #[arg(long = "txt")]
        txt: Vec<String>,
        /// Stop announcing after this long even if stdin stays open.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        max_lifetime: Duration,
    },
    /// Browse and print what was found.
    Browse {
        /// How long to browse.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        wait: Duration,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Args::parse().mode {
        Mode::Announce {
            instance,
            port,
            txt,
            max_lifetime,
        } => {
            let mut entries = Vec::new();
            for entry in &txt {
                let Some((key, value)) = entry.split_once('=') else {
                    bail!("--txt {entry:?}: expected key=value");
                };
                entries.push((key, value.to_string()));
            }
            let announcer = discovery::announce(&instance, port, &entries)?;
            println!(
                "{}",
                serde_json::json!({ "announced": announcer.fullname() })
            );
            let mut sink = Vec::new();
            let _ =
                tokio::time::timeout(max_lifetime, tokio::io::stdin().read_to_end(&mut sink)).await;
            drop(announcer);
        }
        Mode::Browse { wait } => {
            let found = discovery::browse(wait).await?;
            let list: Vec<serde_json::Value> = found
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "instance": f.instance,
                        "host": f.host,
                        "addrs": f.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "port": f.port,
                        "txt": f.txt,
                        "fp": f.fingerprint(),
                        "dial": f.dial_addrs(),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string(&list).context("printing what was found")?
            );
        }
    }
    Ok(())
}
