//! The web app in a real headless Chromium, driven over WebDriver
//! (chromedriver), against real auth-svc, index-svc and two agents: the
//! seed's windows used the way a person would, plus the browser attacks
//! the app must refuse. Screenshots of each page go to
//! `target/web-screenshots/` (or `P2P_WEB_SCREENSHOTS`); the README shows
//! copies from `docs/`.
//!
//! Needs Debian's `chromium` and `chromium-driver`. Without them the test
//! prints why it is skipped; under `CI=true` it fails instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use p2p_tests::{
    ADMIN_PASSWORD, ADMIN_USER, AgentHandle, AgentOptions, Cluster, ClusterOptions, USER_PASSWORD,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// How long any one thing the browser waits for may take.
const WAIT: Duration = Duration::from_secs(60);
/// The uploaded file's size: big enough to stream in many pieces.
const UPLOAD_BYTES: usize = 20 << 20;
/// A file name with markup in it, which must be shown as text.
const MARKUP_NAME: &str = "<b>bold & <img src=x onerror=alert(1)>.bin";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// chromedriver running on a free port, killed on drop.
struct Driver {
    child: tokio::process::Child,
    url: String,
    chromium: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start_driver() -> Option<Driver> {
    let driver = find_program(&["chromedriver"]);
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
    let (Some(driver), Some(chromium)) = (driver, chromium) else {
        let reason = "chromium and chromedriver are not installed \
                      (apt-get install chromium chromium-driver)";
        assert!(!ci(), "the browser test must run in CI: {reason}");
        eprintln!("skipping the web app browser test: {reason}");
        return None;
    };
    let port = p2p_tests::free_port();
    let child = tokio::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let status = format!("127.0.0.1:{port}");
    p2p_tests::eventually(Duration::from_secs(20), "chromedriver to listen", || {
        let status = status.clone();
        async move {
            tokio::net::TcpStream::connect(status)
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    Some(Driver {
        child,
        url,
        chromium,
    })
}

/// A fresh headless browser (its own profile, so its own cookies).
async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), "chrome".into());
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": driver.chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,800"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("open a Chromium session")
}

fn screenshots_dir() -> PathBuf {
    let dir = std::env::var_os("P2P_WEB_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/web-screenshots"));
    std::fs::create_dir_all(&dir).expect("create the screenshot dir");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("take a screenshot");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).expect("save screenshot");
}

/// What `read` gets from the element `css` selects, once it is there. A
/// live update can replace the element between finding and reading it (a
/// stale element reference): then it is found again, within the same
/// bound.
async fn read_element<T, F, Fut>(browser: &Client, css: &str, read: F) -> T
where
    F: Fn(fantoccini::elements::Element) -> Fut,
    Fut: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let element = match browser
            .wait()
            .at_most(left)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => {
                let url = browser.current_url().await.map(|u| u.to_string());
                let page = browser.source().await.unwrap_or_default();
                panic!("no {css} on the page ({e}) at {url:?}:\n{page}")
            }
        };
        match read(element).await {
            Ok(value) => return value,
            Err(e) if e.is_stale_element_reference() && tokio::time::Instant::now() < deadline => {}
            Err(e) => panic!("{css}: {e}"),
        }
    }
}

/// The text of the element `css` selects, once it is there.
async fn text_of(browser: &Client, css: &str) -> String {
    read_element(browser, css, |e| async move { e.text().await }).await
}

/// The attribute `name` of the element `css` selects, once it is there.
async fn attr_of(browser: &Client, css: &str, name: &str) -> Option<String> {
    read_element(browser, css, |e| async move { e.attr(name).await }).await
}

/// Opens `url` (a one-time link from `p2p web`, or the login page of a
/// browser that came in through one) and logs in. The username field is
/// filled in and read-only when the agent is logged in already.
async fn log_in(browser: &Client, url: &str, username: &str, password: &str) {
    browser.goto(url).await.expect("open the link");
    let field = browser
        .find(Locator::Id("username"))
        .await
        .unwrap_or_else(|e| panic!("no username field after opening {url}: {e}"));
    if field.attr("readonly").await.expect("readonly").is_some() {
        let shown = field.prop("value").await.expect("value");
        assert_eq!(
            shown.as_deref(),
            Some(username),
            "the form names another account"
        );
    } else {
        field.send_keys(username).await.expect("type username");
    }
    browser
        .find(Locator::Id("password"))
        .await
        .expect("password field")
        .send_keys(password)
        .await
        .expect("type password");
    browser
        .find(Locator::Css("form.card button[type=submit]"))
        .await
        .expect("login button")
        .click()
        .await
        .expect("log in");
    let who = text_of(browser, "form.logout strong").await;
    assert_eq!(who, username, "logged in as someone else");
}

/// The CSRF token of the form `form` selects.
async fn csrf_of(browser: &Client, form: &str) -> String {
    browser
        .find(Locator::Css(&format!("{form} input[name=csrf]")))
        .await
        .expect("csrf field")
        .attr("value")
        .await
        .expect("value")
        .expect("a csrf token")
}

/// Whether the page shows nothing that `css` selects.
async fn shows_none(browser: &Client, css: &str) -> bool {
    browser
        .find_all(Locator::Css(css))
        .await
        .expect("query the page")
        .is_empty()
}

/// The `data-file-id` of the Files row showing `name`, once it is there.
async fn row_of(browser: &Client, name: &str) -> String {
    p2p_tests::eventually(WAIT, &format!("{name:?} in the Files table"), || async {
        for row in browser
            .find_all(Locator::Css("tr[data-file-id]"))
            .await
            .ok()?
        {
            let cell = row.find(Locator::Css("td.name")).await.ok()?;
            if cell.text().await.ok()? == name {
                return row.attr("data-file-id").await.ok()?;
            }
        }
        None
    })
    .await
}

/// Clicks the element `css` selects once it is there (found again if a
/// live update replaced it).
async fn click(browser: &Client, css: &str) {
    read_element(browser, css, |e| async move { e.click().await.map(drop) }).await
}

/// Opens the Share page of the web app at `web` and picks `path` (a file,
/// or a folder for a folder input) in the file input `input`.
async fn choose_on_share_page(browser: &Client, web: &str, input: &str, path: &Path) {
    browser
        .goto(&format!("http://{web}/share"))
        .await
        .expect("open share");
    browser
        .find(Locator::Id(input))
        .await
        .expect("file input")
        .send_keys(path.to_str().expect("utf-8 path"))
        .await
        .expect("choose what to upload");
}

/// POSTs a form from inside the page (same origin, with its cookie) and
/// returns the HTTP status.
async fn post_from_page(browser: &Client, path: &str, fields: serde_json::Value) -> u64 {
    let script = "const [path, fields, done] = arguments; \
                  fetch(path, {method: 'POST', body: new URLSearchParams(fields), redirect: 'manual'}) \
                  .then(r => done(r.status), e => done(String(e)));";
    let status = browser
        .execute_async(script, vec![path.into(), fields])
        .await
        .expect("run fetch in the page");
    status
        .as_u64()
        .unwrap_or_else(|| panic!("fetch failed: {status}"))
}

/// The status line's code for a raw request for the stylesheet (which a
/// browser may fetch before it has a session) with a chosen `Host`.
async fn status_with_host(web: &str, host: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(web)
        .await
        .expect("connect web app");
    let request =
        format!("GET /assets/app.css HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("web app answered in time")
        .expect("read answer");
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seeds_windows_work_in_a_real_browser() {
    let Some(driver) = start_driver().await else {
        return;
    };
    let cluster = Cluster::start(ClusterOptions::default()).await;
    // A is logged in unattended; its web app still asks for the password.
    let unattended = AgentOptions {
        env: vec![
            ("P2P_USER".into(), ADMIN_USER.into()),
            ("P2P_PASSWORD".into(), ADMIN_PASSWORD.into()),
        ],
        ..AgentOptions::default()
    };
    let agent_a = cluster.add_agent("a", unattended).await;
    p2p_tests::eventually(WAIT, "A's unattended login", || async {
        agent_a.status().await.logged_in.then_some(())
    })
    .await;
    let agent_b = cluster.add_agent("b", AgentOptions::default()).await;
    let (web_a, web_b) = (
        agent_a.web_addr().to_string(),
        agent_b.web_addr().to_string(),
    );
    let a = browser(&driver).await;
    let b = browser(&driver).await;

    // A request naming another host is refused before anything else.
    assert_eq!(status_with_host(&web_a, "evil.example").await, 403);
    assert_eq!(status_with_host(&web_a, &web_a).await, 200);

    // Without a link from `p2p web` the app only says how to get in.
    a.goto(&format!("http://{web_a}/files"))
        .await
        .expect("open files");
    assert_eq!(text_of(&a, "h1").await, "Open this app with p2p web");
    assert!(shows_none(&a, "form").await, "a form without a session");
    screenshot(&a, "enter").await;

    // A's owner runs `p2p web`; the link leads to the login form, which
    // asks for the password of the account the agent is logged in as.
    let link_a = agent_a.web_link().await;
    a.goto(&link_a).await.expect("open the link");
    assert!(
        a.current_url()
            .await
            .expect("url")
            .as_str()
            .ends_with("/login"),
        "the spent link stayed in the address bar"
    );
    let user_field = a.find(Locator::Id("username")).await.expect("username");
    assert_eq!(
        user_field.prop("value").await.expect("value").as_deref(),
        Some(ADMIN_USER)
    );
    screenshot(&a, "login").await;
    a.find(Locator::Id("password"))
        .await
        .expect("password")
        .send_keys("not-the-password")
        .await
        .expect("type");
    click(&a, "form.card button[type=submit]").await;
    let refused = text_of(&a, "p.flash.failed").await;
    assert!(refused.contains("Wrong username or password"), "{refused}");
    assert!(
        shows_none(&a, "form.logout").await,
        "logged in after a wrong password"
    );
    // The link is spent: opening it again does not let a browser in.
    let c = browser(&driver).await;
    c.goto(&link_a).await.expect("open the spent link");
    assert_eq!(text_of(&c, "h1").await, "This link does not open the app");
    c.close().await.expect("close browser C");
    let peer_id = agent_a.status().await.peer_id;
    log_in(
        &a,
        &format!("http://{web_a}/login"),
        ADMIN_USER,
        ADMIN_PASSWORD,
    )
    .await;
    assert_eq!(
        agent_a.status().await.peer_id,
        peer_id,
        "a web login as the agent's own user must leave its session running"
    );
    // B is not logged in: its first login from the browser logs it in.
    log_in(&b, &agent_b.web_link().await, ADMIN_USER, ADMIN_PASSWORD).await;
    // B watches its Files page from here on, never reloading it.
    b.goto(&format!("http://{web_b}/files"))
        .await
        .expect("open files on B");

    // A terminal user follows the same live view with `p2p ls --watch`.
    let mut watch = agent_b
        .p2p_command(&["--json", "ls", "--watch"])
        .kill_on_drop(true)
        .spawn()
        .expect("start p2p ls --watch");
    let mut watched = tokio::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();

    // Upload 20 MiB with a markup name on A.
    let upload_dir = cluster.scratch_dir("upload");
    let original = upload_dir.join(MARKUP_NAME);
    p2p_tests::write_random(&original, UPLOAD_BYTES, 12);
    choose_on_share_page(&a, &web_a, "upload-file", &original).await;
    screenshot(&a, "share").await;
    click(&a, "#upload button[type=submit]").await;
    let flash = text_of(&a, "p.flash.ok").await;
    assert!(
        flash.contains(MARKUP_NAME),
        "no share confirmation: {flash}"
    );
    let file_id = row_of(&a, MARKUP_NAME).await;

    // It appears on B's open page, as text.
    assert_eq!(row_of(&b, MARKUP_NAME).await, file_id);
    assert!(
        shows_none(&b, "td.name b, td.name img").await,
        "the file name was rendered as markup"
    );
    screenshot(&b, "files").await;
    tokio::time::timeout(WAIT, async {
        while let Some(line) = watched.next_line().await.expect("read p2p ls --watch") {
            let listing: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
            if listing["files"].as_array().is_some_and(|f| !f.is_empty()) {
                assert!(line.contains(&file_id), "another file in {line}");
                return;
            }
        }
        panic!("p2p ls --watch ended without showing the file");
    })
    .await
    .expect("p2p ls --watch showed the upload in time");
    drop(watch);

    // Download on B and watch the bar reach 100 %.
    click(
        &b,
        &format!("tr[data-file-id='{file_id}'] form[action='/files/download'] button"),
    )
    .await;
    let done = format!("article.download[data-file-id='{file_id}'][data-stage='done']");
    let percent = text_of(&b, &format!("{done} .percent")).await;
    assert_eq!(percent, "100 %");
    assert_eq!(
        attr_of(&b, &format!("{done} progress"), "value")
            .await
            .as_deref(),
        Some("100")
    );
    screenshot(&b, "downloads").await;
    p2p_tests::assert_same_content(
        &original,
        &agent_b.data_dir().join("downloads").join(MARKUP_NAME),
    );

    b.goto(&format!("http://{web_b}/peers"))
        .await
        .expect("open peers");
    text_of(&b, "tbody td code").await;
    screenshot(&b, "peers").await;
    b.goto(&format!("http://{web_b}/status"))
        .await
        .expect("open status");
    text_of(&b, "dl.facts").await;
    screenshot(&b, "status").await;

    // Removing it from the network on A takes it off B's open page.
    b.goto(&format!("http://{web_b}/files"))
        .await
        .expect("open files on B");
    row_of(&b, MARKUP_NAME).await;
    a.goto(&format!("http://{web_a}/files"))
        .await
        .expect("open files on A");
    click(
        &a,
        &format!(
            "tr[data-file-id='{file_id}'] form[action='/files/remove'] input[name=network] ~ button"
        ),
    )
    .await;
    text_of(&a, "p.flash.ok").await;
    let row = format!("tr[data-file-id='{file_id}']");
    p2p_tests::eventually(WAIT, "the file to leave B's page", || async {
        b.find_all(Locator::Css(&row))
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await;

    // The admin adds a user on A's Accounts page ...
    a.goto(&format!("http://{web_a}/accounts"))
        .await
        .expect("open accounts");
    a.find(Locator::Id("new-username"))
        .await
        .expect("username")
        .send_keys("carol")
        .await
        .expect("type");
    a.find(Locator::Id("new-password"))
        .await
        .expect("password")
        .send_keys("carol-password-1")
        .await
        .expect("type");
    click(&a, "#add-user button[type=submit]").await;
    let flash = text_of(&a, "p.flash.ok").await;
    assert!(flash.contains("carol"), "{flash}");
    text_of(&a, "tr[data-username='carol']").await;
    screenshot(&a, "accounts").await;

    // ... and invites an unattended machine for carol: the invite is shown
    // once (never in the address bar), its join token is listed and can be
    // revoked from the same page.
    invite_a_machine(&a, &cluster, "carol").await;

    // ... who logs in on B once B's owner has logged the agent out: a web
    // login never switches an agent to another account.
    click(&b, "form.logout button").await;
    let out = text_of(&b, "p.flash.ok").await;
    assert!(out.contains("logged out"), "{out}");
    b.goto(&agent_b.web_link().await)
        .await
        .expect("open a new link");
    let field = b.find(Locator::Id("username")).await.expect("username");
    assert!(
        field.attr("readonly").await.expect("readonly").is_some(),
        "the form offers another account than the agent's"
    );
    let csrf = csrf_of(&b, "form.card").await;
    let as_carol =
        serde_json::json!({"csrf": csrf, "username": "carol", "password": "carol-password-1"});
    assert_eq!(post_from_page(&b, "/login", as_carol).await, 403);
    agent_b.p2p_ok(&["logout"]).await;
    log_in(
        &b,
        &format!("http://{web_b}/login"),
        "carol",
        "carol-password-1",
    )
    .await;
    let nav = text_of(&b, "header nav").await;
    assert!(
        !nav.contains("Accounts"),
        "a non-admin sees Accounts: {nav}"
    );
    b.goto(&format!("http://{web_b}/accounts"))
        .await
        .expect("open accounts");
    assert_eq!(text_of(&b, "h1").await, "Only admins manage accounts");
    b.goto(&format!("http://{web_b}/files"))
        .await
        .expect("open files");
    let csrf = csrf_of(&b, "form.logout").await;
    let forged = serde_json::json!({"csrf": csrf, "username": "mallory", "password": "mallory-password", "role": "admin"});
    assert_eq!(post_from_page(&b, "/accounts/add", forged).await, 403);
    let forged_invite = serde_json::json!({"csrf": csrf, "username": "carol", "uses": "1000"});
    assert_eq!(
        post_from_page(&b, "/accounts/invite", forged_invite).await,
        403
    );
    let forged_revoke = serde_json::json!({"csrf": csrf, "id": "0123456789abcdef"});
    assert_eq!(
        post_from_page(&b, "/accounts/join-tokens/revoke", forged_revoke).await,
        403
    );
    // A POST without the CSRF token is refused too.
    let no_token = serde_json::json!({"file": file_id, "network": "true"});
    assert_eq!(post_from_page(&b, "/files/remove", no_token).await, 403);

    // Phone width.
    b.set_window_size(390, 844).await.expect("resize");
    b.goto(&format!("http://{web_b}/files"))
        .await
        .expect("open files");
    text_of(&b, "main h1").await;
    screenshot(&b, "files-phone").await;

    a.close().await.expect("close browser A");
    b.close().await.expect("close browser B");
}

/// Drives the Accounts page's "Invite a machine" form for `username`, as an
/// admin's browser on that page: checks the invite it shows once, then
/// revokes its join token with the table's button.
async fn invite_a_machine(browser: &Client, cluster: &Cluster, username: &str) {
    let field = |id: &'static str| async move {
        browser
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("no #{id}: {e}"))
    };
    field("invite-account")
        .await
        .send_keys(username)
        .await
        .expect("type the account");
    let uses = field("invite-uses").await;
    uses.clear().await.expect("clear uses");
    uses.send_keys("2").await.expect("type uses");
    field("invite-description")
        .await
        .send_keys("lab <b>pcs</b>")
        .await
        .expect("type the description");
    click(browser, "#invite button[type=submit]").await;
    let flash = text_of(browser, "p.flash.ok").await;
    assert!(flash.contains(username), "{flash}");
    let text = field("invite-text")
        .await
        .prop("value")
        .await
        .expect("the invite's text")
        .unwrap_or_default();
    let invite = p2p_services::invite::Invite::parse(&text).expect("the page shows a valid invite");
    assert_eq!(invite.server, cluster.auth_addr());
    assert!(
        invite
            .token
            .as_deref()
            .is_some_and(|t| t.starts_with("p2pjt_")),
        "{invite:?}"
    );
    let shown = text_of(browser, "#new-invite pre").await;
    assert_eq!(shown, format!("p2p join '{text}'"));
    let url = browser.current_url().await.expect("url");
    assert!(url.as_str().ends_with("/accounts"), "{url}");
    screenshot(browser, "accounts-invite").await;

    let row = text_of(browser, "#join-tokens tbody tr").await;
    for cell in [username, "2 of 2", "active", "lab <b>pcs</b>"] {
        assert!(row.contains(cell), "{cell:?} not in {row:?}");
    }
    browser.refresh().await.expect("reload");
    text_of(browser, "#join-tokens").await;
    assert!(
        shows_none(browser, "#new-invite").await,
        "the invite was shown twice"
    );
    let source = browser.source().await.expect("page source");
    assert!(
        !source.contains("p2pjt_"),
        "the secret is still on the page"
    );

    click(browser, "#join-tokens button.danger").await;
    let flash = text_of(browser, "p.flash.ok").await;
    assert!(flash.contains("Revoked join token"), "{flash}");
    let row = text_of(browser, "#join-tokens tbody tr").await;
    assert!(row.contains("revoked"), "{row}");
    assert!(shows_none(browser, "#join-tokens button.danger").await);
}

/// The names in the Files table, top to bottom. A live update can replace
/// a row while it is read (a stale element reference): then the table is
/// read again, within the usual bound.
async fn shown_names(browser: &Client) -> Vec<String> {
    p2p_tests::eventually(WAIT, "a steady read of the Files table", || async {
        let mut names = Vec::new();
        for cell in browser
            .find_all(Locator::Css("tr[data-file-id] td.name"))
            .await
            .expect("query the rows")
        {
            match cell.text().await {
                Ok(name) => names.push(name),
                Err(e) if e.is_stale_element_reference() => return None,
                Err(e) => panic!("a name in the Files table: {e}"),
            }
        }
        Some(names)
    })
    .await
}

/// Waits until the Files table's first row is `name`.
async fn first_row_is(browser: &Client, name: &str) {
    p2p_tests::eventually(WAIT, &format!("{name} first in the table"), || async {
        let names = shown_names(browser).await;
        (names.first().map(String::as_str) == Some(name)).then_some(())
    })
    .await;
}

/// A network of 30,000 entries: the Files page opens on page 1 of 100
/// rows, pages on, sorts by a column header (and back), searches, and
/// shows a share from elsewhere as one added row in the open page, not a
/// reload.
///
/// The entries are published through index-svc's PublishFile, as agents
/// do (about 600 a second in a debug build, so most of this test's time).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_big_network_pages_sorts_searches_and_grows_live() {
    const ENTRIES: u64 = 30_000;
    let Some(driver) = start_driver().await else {
        return;
    };
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let p2p_tests::seed::Publishers { agent, alice, bob } =
        p2p_tests::seed::Publishers::start(&cluster).await;
    let took = p2p_tests::seed::publish_many(cluster.index_client(), &alice, ENTRIES, 1, |n| {
        format!("entry-{n:05}.txt")
    })
    .await;
    eprintln!("seeded {ENTRIES} entries in {took:?}");
    let web = agent.web_addr().to_string();
    let c = browser(&driver).await;
    log_in(&c, &agent.web_link().await, "alice", USER_PASSWORD).await;

    c.goto(&format!("http://{web}/files"))
        .await
        .expect("open files");
    assert!(
        text_of(&c, "#files-pager")
            .await
            .starts_with("Page 1 of 300 · 30000 in all"),
        "{}",
        text_of(&c, "#files-pager").await
    );
    let newest = shown_names(&c).await;
    assert_eq!(newest.len(), 100);
    click(&c, "#next-page").await;
    p2p_tests::eventually(WAIT, "page 2", || async {
        text_of(&c, "#files-pager")
            .await
            .starts_with("Page 2 of 300")
            .then_some(())
    })
    .await;
    let second = shown_names(&c).await;
    assert_eq!(second.len(), 100);
    assert!(
        second.iter().all(|n| !newest.contains(n)),
        "page 2 repeats page 1"
    );

    click(&c, "a[data-sort=name]").await;
    first_row_is(&c, "entry-00000.txt").await;
    assert!(
        text_of(&c, "#files-pager")
            .await
            .starts_with("Page 1 of 300")
    );
    click(&c, "a[data-sort=name]").await;
    first_row_is(&c, "entry-29999.txt").await;
    click(&c, "a[data-sort=size]").await;
    first_row_is(&c, "entry-00000.txt").await;

    let search = c.find(Locator::Id("q")).await.expect("the search field");
    search.send_keys("ENTRY-2999").await.expect("type a search");
    click(&c, "form.filter button[type=submit]").await;
    p2p_tests::eventually(WAIT, "the search's 10 rows", || async {
        (shown_names(&c).await.len() == 10).then_some(())
    })
    .await;
    assert!(text_of(&c, "#files-pager").await.contains("10 in all"));

    // Back to the first page, newest first, marked so a reload would show.
    c.goto(&format!("http://{web}/files"))
        .await
        .expect("open files again");
    first_row_is(&c, &newest[0]).await;
    c.execute("window.notReloaded = true; return null;", vec![])
        .await
        .expect("mark the page");
    p2p_tests::seed::publish_many(cluster.index_client(), &bob, 1, 2, |_| {
        "shared-elsewhere.txt".to_string()
    })
    .await;
    first_row_is(&c, "shared-elsewhere.txt").await;
    let names = shown_names(&c).await;
    assert_eq!(names.len(), 101, "one row added, none replaced");
    assert_eq!(names[1..], newest[..], "the other rows stay as they were");
    let marked = c
        .execute("return window.notReloaded === true;", vec![])
        .await
        .expect("read the mark");
    assert_eq!(marked, serde_json::json!(true), "the page was reloaded");
    p2p_tests::eventually(WAIT, "the total to follow", || async {
        text_of(&c, "#files-total").await.eq("30001").then_some(())
    })
    .await;
    screenshot(&c, "files-paged").await;
    c.close().await.expect("close the browser");
}

/// A folder picked in the browser is uploaded and shared as one entry; on
/// another agent its page lists what is inside with breadcrumbs, and its
/// Download button brings the whole tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_folder_uploads_from_the_browser_and_downloads_from_its_page() {
    let Some(driver) = start_driver().await else {
        return;
    };
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let agent_a = cluster.add_agent("a", AgentOptions::default()).await;
    let agent_b = cluster.add_agent("b", AgentOptions::default()).await;
    let (web_a, web_b) = (
        agent_a.web_addr().to_string(),
        agent_b.web_addr().to_string(),
    );
    let a = browser(&driver).await;
    let b = browser(&driver).await;
    log_in(&a, &agent_a.web_link().await, ADMIN_USER, ADMIN_PASSWORD).await;
    log_in(&b, &agent_b.web_link().await, ADMIN_USER, ADMIN_PASSWORD).await;

    let root = cluster.scratch_dir("upload").join("Ноты <i>");
    std::fs::create_dir_all(root.join("sub/deeper")).expect("make the tree");
    p2p_tests::write_random(&root.join("top.bin"), 300_000, 1);
    p2p_tests::write_random(&root.join("sub/a.bin"), 70_000, 2);
    p2p_tests::write_random(&root.join("sub/deeper/b 的.bin"), 5_000, 3);
    std::fs::write(root.join("sub/empty.txt"), b"").expect("write");

    choose_on_share_page(&a, &web_a, "upload-folder-files", &root).await;
    click(&a, "#upload-folder button[type=submit]").await;
    let flash = text_of(&a, "p.flash.ok").await;
    assert!(flash.contains("Ноты <i>"), "no share confirmation: {flash}");

    // B opens the folder from its Files page, then a subfolder, and comes
    // back through the breadcrumbs.
    b.goto(&format!("http://{web_b}/files"))
        .await
        .expect("open files on B");
    click(&b, "td.name a[href^='/folder?id=']").await;
    assert_eq!(
        text_of(&b, "ol.breadcrumbs [aria-current=page]").await,
        "Ноты <i>"
    );
    assert!(
        shows_none(&b, "td i").await,
        "a name was rendered as markup"
    );
    click(&b, "tr[data-entry='sub'] a").await;
    assert_eq!(
        text_of(&b, "ol.breadcrumbs [aria-current=page]").await,
        "sub"
    );
    text_of(&b, "tr[data-entry='empty.txt']").await;
    screenshot(&b, "folder").await;
    click(&b, "ol.breadcrumbs li:nth-child(2) a").await;
    text_of(&b, "tr[data-entry='top.bin']").await;

    // The folder's own Download button fetches the whole tree.
    click(&b, "div.folder-head form.download button").await;
    text_of(&b, "article.download[data-stage='done']").await;
    let got = agent_b.data_dir().join("downloads").join("Ноты <i>");
    for file in [
        "top.bin",
        "sub/a.bin",
        "sub/deeper/b 的.bin",
        "sub/empty.txt",
    ] {
        p2p_tests::assert_same_content(&root.join(file), &got.join(file));
    }
}
