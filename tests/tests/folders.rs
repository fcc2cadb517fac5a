//! A folder is one entry of the network: shared with `p2p share DIR`,
//! downloaded whole with `p2p get NAME` into a tree that matches the
//! original byte for byte (empty folders, zero-byte files and non-Latin
//! names included), resumed without fetching verified chunks again, and
//! withdrawn when a file inside it is edited.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2p_tests::AgentHandle as _;
use p2p_tests::{AgentOptions, Cluster, ClusterOptions, USER_PASSWORD, eventually, write_random};

const MIB: usize = 1024 * 1024;

/// Builds the test tree under `root`: 200 small files over nested folders
/// with Cyrillic, CJK and accented names, two empty folders (one nested),
/// a zero-byte file, a file of `big` bytes, and a symbolic link out of the
/// folder, which is not shared.
fn make_tree(root: &Path, big: usize, outside: &Path) {
    let dirs = [
        "docs",
        "docs/Отчёты",
        "docs/Отчёты/2026",
        "写真",
        "写真/猫",
        "café",
        "src/deep/er/still",
        "misc",
    ];
    for dir in dirs {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for i in 0..199u64 {
        let dir = dirs[i as usize % dirs.len()];
        let name = match i % 4 {
            0 => format!("файл-{i}.txt"),
            1 => format!("資料{i}.bin"),
            2 => format!("naïve résumé {i}.md"),
            _ => format!("plain-{i}.dat"),
        };
        write_random(
            &root.join(dir).join(name),
            (i as usize * 7919) % 40_000 + 1,
            i,
        );
    }
    std::fs::write(root.join("misc/empty.txt"), b"").unwrap();
    std::fs::create_dir_all(root.join("big")).unwrap();
    write_random(&root.join("big/video.bin"), big, 1000);
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::create_dir_all(root.join("nested/empty/inside")).unwrap();
    std::fs::write(outside, b"secret outside the folder").unwrap();
    std::os::unix::fs::symlink(outside, root.join("docs/link-out")).unwrap();
}

/// Every entry under `root`: files with their hash, folders as `None`,
/// symbolic links as `Some("link")`.
fn listing(root: &Path) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() {
                out.insert(relative, Some("link".to_string()));
            } else if kind.is_dir() {
                out.insert(relative, None);
                pending.push(path);
            } else {
                out.insert(
                    relative,
                    Some(p2p_tests::file_hash(&path).to_hex().to_string()),
                );
            }
        }
    }
    out
}

/// What a download of `root` must produce: everything but the links.
fn expected(root: &Path) -> BTreeMap<String, Option<String>> {
    listing(root)
        .into_iter()
        .filter(|(_, v)| v.as_deref() != Some("link"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_folder_arrives_whole_and_identical_on_two_agents_at_once() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let c = cluster
        .add_user_agent("carol", AgentOptions::default())
        .await;
    let input = cluster.scratch_dir("input");
    let root = input.join("Курс 2026");
    make_tree(&root, 100 * MIB, &input.join("secret.txt"));

    let shared = a.p2p_ok(&["--json", "share", root.to_str().unwrap()]).await;
    assert!(
        shared.stderr.contains("skipped docs/link-out"),
        "the symbolic link is not reported: {shared}"
    );
    let id = shared.json()["shared"][0]["file_id"]
        .as_str()
        .expect("file id")
        .to_string();
    let listed = a
        .network_file(&id)
        .await
        .expect("listed")
        .file
        .expect("info");
    assert_eq!(listed.kind, p2p_proto::index::v1::EntryKind::Folder as i32);
    assert_eq!(listed.entry_count, 201);

    let (out_b, out_c) = (cluster.scratch_dir("out-b"), cluster.scratch_dir("out-c"));
    let (got_b, got_c) = tokio::join!(b.get(&id, &out_b), c.get(&id, &out_c));
    assert_eq!(got_b, out_b.join("Курс 2026"));
    assert_eq!(got_c, out_c.join("Курс 2026"));
    let want = expected(&root);
    assert_eq!(listing(&got_b), want, "bob's tree differs");
    assert_eq!(listing(&got_c), want, "carol's tree differs");
    assert!(want.contains_key("nested/empty/inside") && want.contains_key("empty"));
    for out in [&out_b, &out_c] {
        let names: Vec<_> = std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names.len(),
            1,
            "staging left behind in {}: {names:?}",
            out.display()
        );
    }
    // The downloaders hold the folder and serve it: a third copy comes
    // from them too once the sharer is gone.
    drop(a);
    let out_d = cluster.scratch_dir("out-b2");
    let again = b.get(&id, &out_d).await;
    assert_eq!(listing(&again), want);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_folder_download_resumes_without_fetching_verified_chunks_again() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default().max_upload_rate("16MiB"))
        .await;
    let mut b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let input = cluster.scratch_dir("input");
    let root = input.join("tree");
    make_tree(&root, 100 * MIB, &input.join("secret.txt"));
    let id = a.share(&root).await;
    let info = a
        .network_file(&id)
        .await
        .and_then(|f| f.file)
        .expect("listed");
    let (total, chunks) = (info.size_bytes, u64::from(info.chunk_count));

    let out = cluster.scratch_dir("out");
    let mut first = b.p2p_command(&["get", &id, "-o", out.to_str().unwrap()]);
    let mut first = first.spawn().expect("start p2p get");
    eventually(
        Duration::from_secs(60),
        "the download to pass 40%",
        || async {
            let held = b.network_file(&id).await?.local_bytes;
            (held >= total * 2 / 5).then_some(())
        },
    )
    .await;
    b.kill();
    let _ = tokio::time::timeout(Duration::from_secs(20), first.wait()).await;
    let partial: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(
        partial.is_empty(),
        "a partial tree appeared under {}",
        out.display()
    );
    b.restart().await;
    if !b.status().await.logged_in {
        b.login("bob", USER_PASSWORD).await;
    }
    let second = b
        .p2p_ok(&["--json", "get", &id, "-o", out.to_str().unwrap()])
        .await;
    let done = second.json();
    assert_eq!(done["event"], "done", "{second}");
    let got = PathBuf::from(done["final_path"].as_str().expect("final_path"));
    assert_eq!(listing(&got), expected(&root));
    let resumed = done["resumed_chunks"].as_u64().unwrap_or(0);
    assert!(resumed >= 1, "nothing was resumed: {second}");
    let counters = b.status().await.counters.unwrap_or_default();
    assert!(
        counters.chunks_downloaded <= chunks - resumed,
        "{} chunks fetched after the restart, but {resumed} of {chunks} were already verified",
        counters.chunks_downloaded
    );

    // One subfolder alone, on a third agent: only its files arrive, and
    // only its chunks are fetched.
    let c = cluster
        .add_user_agent("carol", AgentOptions::default())
        .await;
    let listed = c.p2p_ok(&["--json", "ls", &format!("{id}/docs")]).await;
    let names: Vec<_> = listed.json()["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        names.first().map(String::as_str),
        Some("Отчёты"),
        "{listed}"
    );
    let only = expected(&root.join("docs"));
    let sub_bytes: u64 = only
        .keys()
        .filter_map(|p| std::fs::metadata(root.join("docs").join(p)).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    let out_c = cluster.scratch_dir("out-c");
    let got = c.get(&format!("{id}/docs/"), &out_c).await;
    assert_eq!(got, out_c.join("docs"));
    assert_eq!(listing(&got), only);
    let fetched = c
        .status()
        .await
        .counters
        .unwrap_or_default()
        .bytes_downloaded;
    assert!(
        fetched <= sub_bytes * 2 + 1024 * 1024,
        "fetched {fetched} bytes for a {sub_bytes}-byte subfolder"
    );
    // One zero-byte file alone, and a subfolder copied from a complete copy.
    let empty = c.get(&format!("{id}/misc/empty.txt"), &out_c).await;
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    let copied = b.get(&format!("{id}/nested"), &out_c.join("from-b")).await;
    assert_eq!(listing(&copied), expected(&root.join("nested")));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_file_inside_a_shared_folder_withdraws_it_and_the_listing_says_so() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let root = cluster.scratch_dir("input").join("small");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    write_random(&root.join("sub/a.bin"), 300_000, 1);
    write_random(&root.join("b.bin"), 1000, 2);
    let id = a.share(&root).await;
    std::fs::write(root.join("sub/a.bin"), b"edited").unwrap();
    eventually(
        Duration::from_secs(20),
        "the folder to be withdrawn",
        || async {
            let file = a.network_file(&id).await?;
            let holders = file.file.as_ref().map(|f| f.online_holders);
            (file.local_problem.contains("changed since shared") && holders == Some(0))
                .then_some(())
        },
    )
    .await;
    let listing = a.p2p_ok(&["ls"]).await;
    assert!(
        listing
            .stdout
            .contains("changed since shared: share it again"),
        "`p2p ls` does not say so: {listing}"
    );
}
