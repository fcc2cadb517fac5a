//! LAN discovery (`p2p_services::discovery`) between two emulated hosts:
//! the `mdns-probe` binary announces in one network namespace and browses
//! in another on the same bridge, so every packet is real multicast on a
//! real (virtual) link. Needs root; skipped with the reason otherwise.
//! Loopback interfaces carry no multicast, so one namespace would prove
//! nothing.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use p2p_tests::eventually;
use p2p_tests::multihost::skip_reason;
use p2p_tests::netns::{Host, Lan, LinkShape};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const PROBE: &str = env!("CARGO_BIN_EXE_mdns-probe");
/// How long one browse listens.
const BROWSE_WAIT: Duration = Duration::from_secs(2);
/// Upper bound on one probe process, on top of its browse time.
const PROBE_SLACK: Duration = Duration::from_secs(15);
/// How long the browsing host may take to see what the announcer publishes.
const FIND_DEADLINE: Duration = Duration::from_secs(30);
const FINGERPRINT: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

macro_rules! skip_without_lan {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

fn probe_in(host: &Host) -> Command {
    let mut command = host.tokio_command(PROBE);
    command.kill_on_drop(true).stderr(Stdio::inherit());
    command
}

/// Starts announcing `instance` from `host` and waits until the probe says
/// it registered. The announcement lasts until the returned child drops.
async fn announce_from(host: &Host, instance: &str, port: u16, txt: &[&str]) -> Child {
    let mut command = probe_in(host);
    command
        .args([
            "announce",
            "--instance",
            instance,
            "--port",
            &port.to_string(),
        ])
        .args(txt.iter().flat_map(|entry| ["--txt", entry]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = command.spawn().expect("start mdns-probe announce");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(PROBE_SLACK, lines.next_line())
        .await
        .expect("mdns-probe announce answers in time")
        .expect("read mdns-probe's stdout")
        .expect("mdns-probe announce printed a line");
    let announced: Value = serde_json::from_str(&line).expect("a JSON line");
    assert!(
        announced["announced"]
            .as_str()
            .is_some_and(|name| name.starts_with(instance)),
        "unexpected announcement: {line}"
    );
    child
}

/// Browses from `host` once and returns what it found.
async fn browse_from(host: &Host) -> Vec<Value> {
    let mut command = probe_in(host);
    command
        .args([
            "browse",
            "--wait",
            &format!("{}ms", BROWSE_WAIT.as_millis()),
        ])
        .stdout(Stdio::piped());
    let output = tokio::time::timeout(BROWSE_WAIT + PROBE_SLACK, command.output())
        .await
        .expect("mdns-probe browse finishes in time")
        .expect("run mdns-probe browse");
    assert!(output.status.success(), "mdns-probe browse failed");
    serde_json::from_slice(&output.stdout).expect("browse prints a JSON list")
}

/// Browses from `host` until `instance` is found with the addresses `addrs`.
async fn find_from(host: &Host, instance: &str, addrs: &[&str]) -> Value {
    let what = format!("{instance:?} at {addrs:?} seen from {}", host.addr);
    eventually(FIND_DEADLINE, &what, || async {
        browse_from(host).await.into_iter().find(|found| {
            found["instance"] == instance && found["addrs"] == serde_json::json!(addrs)
        })
    })
    .await
}

#[tokio::test]
async fn other_host_finds_the_announcement_and_follows_an_address_change() {
    skip_without_lan!();
    let mut lan = Lan::create(2, LinkShape::default()).expect("build the LAN");
    let server = lan.host(0).clone();
    let client = lan.host(1).clone();
    let instance = "auth-svc on test";

    let _announcer = announce_from(
        &server,
        instance,
        50051,
        &["v=1", &format!("fp={FINGERPRINT}"), "index=:50052"],
    )
    .await;

    let found = find_from(&client, instance, &["10.77.0.1"]).await;
    assert_eq!(found["port"], 50051);
    assert_eq!(found["txt"]["v"], "1");
    assert_eq!(found["txt"]["index"], ":50052");
    assert_eq!(found["fp"], FINGERPRINT);
    assert_eq!(found["dial"], serde_json::json!(["10.77.0.1:50051"]));
    assert!(
        found["host"]
            .as_str()
            .is_some_and(|h| h.ends_with(".local.")),
        "host name in the record: {found}"
    );

    let new_addr = Ipv4Addr::new(10, 77, 0, 101);
    lan.host_mut(0)
        .change_address(new_addr)
        .expect("move the server to a new address");
    assert_eq!(lan.host(0).addr, new_addr);

    let moved = find_from(&client, instance, &["10.77.0.101"]).await;
    assert_eq!(moved["dial"], serde_json::json!(["10.77.0.101:50051"]));
    assert_eq!(moved["fp"], FINGERPRINT);
}
