//! Who may use an agent's web app: only a browser that came in through a
//! one-time link from `p2p web`, which only the agent's own OS user can
//! run, and then only with the password of the account the agent is
//! logged in as. Loopback is open to every OS user of the machine; these
//! tests are that other user, with curl run as another uid.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use p2p_tests::{AgentHandle as _, AgentOptions, Cluster, ClusterOptions, USER_PASSWORD};

/// `nobody` on most systems.
const OTHER_UID: u32 = 65534;
/// Bound on one HTTP request.
const REQUEST_SECONDS: &str = "20";

/// Why the tests that switch users cannot run, or `None` when they can.
/// Under `CI=true` not being root is a failure, not a skip.
fn not_root_reason() -> Option<&'static str> {
    if rustix::process::geteuid().is_root() {
        return None;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "the web access tests must run as root in CI");
    Some("not running as root, so cannot act as another OS user")
}

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    /// The value of our session cookie in a `Set-Cookie` header, if set.
    fn session_cookie(&self) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            if !name.eq_ignore_ascii_case("set-cookie") {
                return None;
            }
            let pair = value.trim().split(';').next()?;
            let (k, v) = pair.split_once('=')?;
            (k == "p2p_session" && !v.is_empty()).then(|| v.to_string())
        })
    }

    /// The CSRF token of the first form on the page.
    fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self
            .body
            .find(marker)
            .unwrap_or_else(|| panic!("no csrf field in {}", self.body))
            + marker.len();
        self.body[start..]
            .split('"')
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// Runs curl (as `uid` when given) and parses what came back.
async fn curl(uid: Option<u32>, args: &[&str]) -> Answer {
    let mut command = tokio::process::Command::new("curl");
    command
        .args(["-sS", "-i", "--max-time", REQUEST_SECONDS])
        .args(args)
        .kill_on_drop(true);
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    let output = command
        .output()
        .await
        .expect("run curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {args:?}: {}{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Every page and feed of the web app.
const PAGES: &[&str] = &[
    "/",
    "/login",
    "/files",
    "/share",
    "/downloads",
    "/peers",
    "/status",
    "/accounts",
    "/events/files",
    "/events/downloads",
    "/events/sharing",
    "/enter",
    "/enter?ticket=0000000000000000000000000000000000000000000000000000000000000000",
];

#[tokio::test(flavor = "multi_thread")]
async fn another_os_user_gets_nothing_through_the_web_app() {
    if let Some(reason) = not_root_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default()).await;
    cluster.create_user("bob", false).await;
    let alice = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let before = alice.status().await;
    let web = alice.web_addr().to_string();
    let origin = format!("Origin: http://{web}");

    // A file only the agent's OS user can read, and a folder only it may
    // write to.
    let private = cluster.scratch_dir("private");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = private.join("owner-only-secret.bin");
    p2p_tests::write_random(&secret, 64 << 10, 7);
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let planted = private.join("planted-by-another-user");
    // Something to try to download: a file alice shared.
    let shared = p2p_tests::random_file(&cluster.scratch_dir("shared"), 32 << 10, 8);
    let file_id = alice.share(&shared).await;

    // Let the other user walk to the socket, so only its own mode stops
    // `p2p web` (the temp dirs are 0700 otherwise).
    for dir in [cluster.dir(), alice.data_dir()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let mut p2p_web = alice.p2p_command(&["web", "--no-open"]);
    p2p_web.uid(OTHER_UID).gid(OTHER_UID);
    let output = p2p_web.output().await.expect("run p2p web as another user");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(
        !stdout.contains("ticket"),
        "another user got a link: {stdout}"
    );

    let refused = |answer: &Answer, what: &str| {
        assert_eq!(answer.status, 403, "{what}: {answer:?}");
        assert!(
            answer.body.contains("p2p web"),
            "{what} does not say how to get in: {}",
            answer.body
        );
        assert!(answer.session_cookie().is_none(), "{what} set a session");
    };
    for page in PAGES {
        let answer = curl(Some(OTHER_UID), &[&format!("http://{web}{page}")]).await;
        let what = format!("GET {page}");
        if page.starts_with("/enter") {
            assert_eq!(answer.status, 403, "{what}: {answer:?}");
            assert!(answer.session_cookie().is_none(), "{what} set a session");
        } else {
            refused(&answer, &what);
        }
    }

    let secret_path = secret.display().to_string();
    let planted_path = planted.display().to_string();
    let forms: Vec<(&str, Vec<String>)> = vec![
        (
            "/login",
            vec!["username=bob".into(), format!("password={USER_PASSWORD}")],
        ),
        (
            "/login",
            vec!["username=mallory".into(), "password=guess".into()],
        ),
        ("/logout", vec![]),
        (
            "/files/download",
            vec![
                format!("file={file_id}"),
                format!("destination={planted_path}"),
            ],
        ),
        ("/files/cancel", vec![format!("file={file_id}")]),
        (
            "/files/remove",
            vec![format!("file={file_id}"), "network=true".into()],
        ),
        ("/share/path", vec![format!("path={secret_path}")]),
        (
            "/accounts/add",
            vec![
                "username=mallory".into(),
                "password=mallory-password".into(),
                "role=admin".into(),
            ],
        ),
        (
            "/accounts/role",
            vec!["username=bob".into(), "role=admin".into()],
        ),
        (
            "/accounts/disabled",
            vec!["username=alice".into(), "disabled=true".into()],
        ),
        (
            "/accounts/password",
            vec!["username=alice".into(), "password=taken-over-1".into()],
        ),
        ("/accounts/delete", vec!["username=alice".into()]),
    ];
    for (path, fields) in &forms {
        let mut args = vec!["-X".to_string(), "POST".into(), "-H".into(), origin.clone()];
        for field in fields
            .iter()
            .chain(std::iter::once(&"csrf=forged".to_string()))
        {
            args.push("--data-urlencode".into());
            args.push(field.clone());
        }
        args.push(format!("http://{web}{path}"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&curl(Some(OTHER_UID), &args).await, &format!("POST {path}"));
    }
    let upload = curl(
        Some(OTHER_UID),
        &[
            "-H",
            &origin,
            "-F",
            "csrf=forged",
            "-F",
            "file=planted;filename=planted.bin",
            &format!("http://{web}/share/upload"),
        ],
    )
    .await;
    refused(&upload, "POST /share/upload");

    // The agent is still its owner's, and nothing was published or written.
    let after = alice.status().await;
    assert_eq!(
        after.user.as_ref().map(|u| u.username.as_str()),
        Some("alice"),
        "the agent's account changed"
    );
    assert_eq!(
        after.peer_id, before.peer_id,
        "the agent's session restarted"
    );
    let listing = alice.p2p_ok(&["--json", "ls"]).await.stdout;
    assert!(!listing.contains("owner-only-secret"), "{listing}");
    assert!(!listing.contains("planted"), "{listing}");
    assert!(
        listing.contains(&file_id),
        "alice's file is gone: {listing}"
    );
    assert!(!planted.exists(), "a file was written for another user");
    let uploads = alice.data_dir().join("uploads");
    let uploaded = std::fs::read_dir(&uploads).map_or(0, |d| d.count());
    assert_eq!(
        uploaded,
        0,
        "something was uploaded to {}",
        uploads.display()
    );
}

/// Opens `link` as the owner and returns the answer.
async fn open(link: &str) -> Answer {
    curl(None, &[link]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_web_link_opens_one_session_once_and_then_needs_the_agents_password() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    cluster.create_user("bob", false).await;
    let alice = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let web = alice.web_addr().to_string();
    let link = alice.web_link().await;
    assert!(
        link.starts_with(&format!("http://{web}/enter?ticket=")),
        "{link}"
    );

    let first = open(&link).await;
    assert_eq!(first.status, 303, "{first:?}");
    assert!(first.head.contains("location: /login"), "{first:?}");
    let cookie = first.session_cookie().expect("a session cookie");
    let again = open(&link).await;
    assert_eq!(again.status, 403, "the same link opened twice: {again:?}");
    assert!(again.body.contains("p2p web"), "{}", again.body);
    assert!(again.session_cookie().is_none());

    // The session shows only the login form until the password is given,
    // and the form takes only the agent's own account.
    let with_cookie = format!("Cookie: p2p_session={cookie}");
    let files = curl(None, &["-H", &with_cookie, &format!("http://{web}/files")]).await;
    assert_eq!(files.status, 303, "{files:?}");
    let form = curl(None, &["-H", &with_cookie, &format!("http://{web}/login")]).await;
    assert_eq!(form.status, 200, "{form:?}");
    assert!(form.body.contains("logged in as"), "{}", form.body);
    let csrf = form.csrf();
    let post = |username: &'static str, password: &'static str| {
        let (with_cookie, csrf, web) = (with_cookie.clone(), csrf.clone(), web.clone());
        async move {
            curl(
                None,
                &[
                    "-H",
                    &with_cookie,
                    "-H",
                    &format!("Origin: http://{web}"),
                    "--data-urlencode",
                    &format!("csrf={csrf}"),
                    "--data-urlencode",
                    &format!("username={username}"),
                    "--data-urlencode",
                    &format!("password={password}"),
                    &format!("http://{web}/login"),
                ],
            )
            .await
        }
    };
    let as_bob = post("bob", USER_PASSWORD).await;
    assert_eq!(as_bob.status, 403, "{as_bob:?}");
    assert!(
        as_bob.body.contains("logged in as alice"),
        "{}",
        as_bob.body
    );
    let wrong = post("alice", "not-the-password").await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert_eq!(
        alice.status().await.user.map(|u| u.username).as_deref(),
        Some("alice"),
        "a web login switched the agent's account"
    );
    let right = post("alice", USER_PASSWORD).await;
    assert_eq!(right.status, 303, "{right:?}");
    let logged_in = right.session_cookie().expect("a new session id");
    assert_ne!(logged_in, cookie, "the session id was not renewed");
    let files = curl(
        None,
        &[
            "-H",
            &format!("Cookie: p2p_session={logged_in}"),
            &format!("http://{web}/files"),
        ],
    )
    .await;
    assert_eq!(files.status, 200, "{files:?}");
    assert!(files.body.contains("Logged in as alice"), "{}", files.body);
    // The id used before the password is worth nothing now.
    let old = curl(None, &["-H", &with_cookie, &format!("http://{web}/files")]).await;
    assert_eq!(old.status, 403, "{old:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_web_link_older_than_its_lifetime_is_refused() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let options = AgentOptions {
        env: vec![("P2P_WEB_LINK_LIFETIME".into(), "1s".into())],
        ..AgentOptions::default()
    };
    let agent = cluster.add_agent("a", options).await;
    let link = agent.web_link().await;
    // The point is time passing: nothing to wait on but the clock.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = open(&link).await;
    assert_eq!(late.status, 403, "{late:?}");
    assert!(late.body.contains("works once"), "{}", late.body);
    assert!(late.session_cookie().is_none());
    let fresh = open(&agent.web_link().await).await;
    assert_eq!(fresh.status, 303, "a fresh link was refused: {fresh:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn p2p_web_says_when_the_web_app_is_off() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let options = AgentOptions {
        env: vec![("P2P_WEB_LISTEN".into(), String::new())],
        ..AgentOptions::default()
    };
    let agent = cluster.add_agent("a", options).await;
    let output = agent.p2p(&["web", "--no-open"]).await;
    assert!(!output.success(), "{output}");
    assert!(output.stderr.contains("--web-listen"), "{output}");
}
