//! The services' own command lines as an operator types them: TLS flags
//! after `healthcheck` as well as before, help that mentions them, and a
//! removed flag refused with what replaced it.

use p2p_tests::AgentHandle as _;
use p2p_tests::{AgentOptions, Cluster, ClusterOptions};

/// Runs `binary ARGS` with a clean environment; returns the exit code and
/// what it printed on both streams.
async fn run(binary: &str, args: &[&str]) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(p2p_tests::binary(binary))
        .env_clear()
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {binary}: {e}"));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), printed)
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_takes_tls_flags_after_the_subcommand_and_documents_them() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let ca = cluster.certs().ca_cert().display().to_string();
    for (binary, addr) in [
        ("auth-svc", cluster.auth_addr()),
        ("index-svc", cluster.index_addr()),
    ] {
        let (code, printed) = run(binary, &["healthcheck", "--addr", addr, "--tls-ca", &ca]).await;
        assert_eq!(
            code,
            Some(0),
            "{binary} healthcheck --tls-ca after it: {printed}"
        );
        let (code, printed) = run(binary, &["--tls-ca", &ca, "healthcheck", "--addr", addr]).await;
        assert_eq!(
            code,
            Some(0),
            "{binary} --tls-ca before healthcheck: {printed}"
        );

        let (code, help) = run(binary, &["healthcheck", "--help"]).await;
        assert_eq!(code, Some(0), "{help}");
        for flag in ["--tls-ca", "--insecure-plaintext"] {
            assert!(
                help.contains(flag),
                "{binary} healthcheck --help lacks {flag}:\n{help}"
            );
        }
    }

    let a = cluster.add_agent("alice", AgentOptions::default()).await;
    let data_dir = a.data_dir().display().to_string();
    let (code, printed) = run("peer-agent", &["healthcheck", "--data-dir", &data_dir]).await;
    assert_eq!(
        code,
        Some(0),
        "peer-agent healthcheck --data-dir after it: {printed}"
    );
    let (code, help) = run("peer-agent", &["healthcheck", "--help"]).await;
    assert_eq!(code, Some(0), "{help}");
    assert!(help.contains("--data-dir"), "{help}");
    assert!(help.contains("no TLS"), "{help}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_removed_control_flag_is_refused_saying_what_replaced_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = p2p_tests::free_port();
    let (code, printed) = run(
        "peer-agent",
        &[
            "--data-dir",
            &dir.path().display().to_string(),
            "--control",
            &format!("127.0.0.1:{port}"),
        ],
    )
    .await;
    assert_eq!(code, Some(2), "{printed}");
    assert!(printed.contains("--control was removed"), "{printed}");
    assert!(printed.contains("--control-listen"), "{printed}");
    assert!(printed.contains("control.sock"), "{printed}");
    assert!(
        !dir.path().join("control.token").exists(),
        "the agent started a token-protected listener"
    );
}

#[tokio::test]
async fn every_binary_prints_its_completions_and_man_page_without_a_server() {
    for (binary, subcommand) in [
        ("auth-svc", "healthcheck"),
        ("index-svc", "healthcheck"),
        ("peer-agent", "healthcheck"),
        ("p2p", "share"),
        ("p2p-certs", "agent"),
    ] {
        for shell in ["bash", "zsh", "fish"] {
            let (code, printed) = run(binary, &["completions", shell]).await;
            assert_eq!(code, Some(0), "{binary} completions {shell}: {printed}");
            assert!(
                printed.contains(subcommand) && printed.contains(binary),
                "{binary} completions {shell} does not complete {subcommand}: {printed}"
            );
        }
        let (code, printed) = run(binary, &["man"]).await;
        assert_eq!(code, Some(0), "{binary} man: {printed}");
        assert!(
            printed.starts_with(".ie") || printed.contains(".TH"),
            "{binary} man is no roff: {printed}"
        );
        assert!(
            printed.contains(subcommand),
            "{binary} man does not name {subcommand}"
        );
        let (code, printed) = run(binary, &["completions", "tcsh"]).await;
        assert_eq!(code, Some(2), "{binary} completions tcsh: {printed}");
        assert!(
            printed.contains("bash"),
            "{binary} does not list the shells it knows: {printed}"
        );
    }
}
