//! The network's listing at size, through real processes: `p2p ls` pages,
//! sorts and filters, and the agent's FollowFiles feed sends a share
//! elsewhere as one added row, not the page again.

use p2p_proto::agent::v1 as agent;
use p2p_proto::agent::v1::file_change::Change;
use p2p_proto::index::v1 as index;
use p2p_tests::AgentHandle as _;
use p2p_tests::{AgentOptions, Cluster, ClusterOptions, USER_PASSWORD};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// 1,200 entries by two owners: `p2p ls` shows 100 with "page 1 of 12"
/// on stderr, pages on, sorts, filters by owner and kind, prints all
/// with --all, and --json still lists everything.
#[tokio::test(flavor = "multi_thread")]
async fn ls_pages_sorts_and_filters_a_big_network() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let p2p_tests::seed::Publishers {
        agent: a,
        alice,
        bob,
    } = p2p_tests::seed::Publishers::start(&cluster).await;
    let took = p2p_tests::seed::publish_many(cluster.index_client(), &alice, 1000, 1, |n| {
        format!("alice-{n:05}.txt")
    })
    .await;
    p2p_tests::seed::publish_many(cluster.index_client(), &bob, 200, 2, |n| {
        format!("bob-{n:05}.txt")
    })
    .await;
    eprintln!("seeded alice's 1,000 entries in {took:?}");

    let first = a.p2p_ok(&["ls"]).await;
    assert_eq!(first.stdout.lines().count(), 101, "a header and 100 rows");
    assert!(
        first
            .stderr
            .contains("page 1 of 12 (1200 entries); next: --page 2"),
        "{first}"
    );
    let by_name = a.p2p_ok(&["ls", "--sort", "name", "--page", "3"]).await;
    let names = names_listed(&by_name.stdout);
    assert_eq!(names.first(), Some(&"alice-00200.txt"), "{by_name}");
    assert_eq!(names.last(), Some(&"alice-00299.txt"), "{by_name}");
    assert!(by_name.stderr.contains("page 3 of 12"), "{by_name}");

    let biggest = a
        .p2p_ok(&[
            "ls", "--sort", "size", "--desc", "--limit", "3", "--owner", "bob",
        ])
        .await;
    let names = names_listed(&biggest.stdout);
    assert_eq!(names, ["bob-00199.txt", "bob-00198.txt", "bob-00197.txt"]);
    assert!(
        biggest.stderr.contains("page 1 of 67 (200 entries)"),
        "{biggest}"
    );

    let folders = a.p2p_ok(&["ls", "--kind", "folder"]).await;
    assert!(folders.stdout.contains("no entry matches"), "{folders}");
    let files = a
        .p2p_ok(&["ls", "--kind", "file", "00042", "--owner", "alice"])
        .await;
    assert!(files.stdout.contains("alice-00042.txt"), "{files}");
    assert_eq!(files.stdout.lines().count(), 2, "{files}");

    let everything = a.p2p_ok(&["ls", "--all"]).await;
    assert_eq!(everything.stdout.lines().count(), 1201);
    assert!(everything.stderr.is_empty(), "{everything}");
    let json = a.p2p_ok(&["--json", "ls"]).await.json();
    assert_eq!(json["files"].as_array().map(Vec::len), Some(1200));
    let page = a.p2p_ok(&["--json", "ls", "--limit", "10"]).await.json();
    assert_eq!(page["files"].as_array().map(Vec::len), Some(10));

    let refused = a.p2p(&["ls", "--limit", "5000"]).await;
    assert!(!refused.success(), "{refused}");
    assert!(refused.stderr.contains("1..=1000"), "{refused}");
}

/// An agent following the first page by name gets the page once; a file
/// shared by another agent that sorts onto it then arrives as one upsert
/// placed after the row it follows, and its deletion as one removal.
#[tokio::test(flavor = "multi_thread")]
async fn follow_files_sends_a_share_elsewhere_as_one_row() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let alice = cluster.access_token("alice", USER_PASSWORD).await;
    p2p_tests::seed::publish_many(cluster.index_client(), &alice, 300, 3, |n| {
        format!("m-{n:03}.txt")
    })
    .await;
    let mut feed = a
        .control()
        .follow_files(agent::ListFilesRequest {
            page_size: 100,
            sort: index::FileSort::Name as i32,
            include_total: true,
            ..Default::default()
        })
        .await
        .expect("follow")
        .into_inner();
    let first = next(&mut feed).await;
    let Some(Change::Page(page)) = first.change else {
        panic!("the page first: {first:?}");
    };
    assert_eq!(page.files.len(), 100);
    assert_eq!(page.total_count, Some(300));

    let input = cluster.scratch_dir("input");
    let path = input.join("m-050x.txt");
    p2p_tests::write_random(&path, 1000, 7);
    let id = b.share(&path).await;
    let added = next(&mut feed).await;
    let Some(Change::Upsert(row)) = &added.change else {
        panic!("one added row: {added:?}");
    };
    assert_eq!(
        row.file.as_ref().map(|f| f.file_id.as_str()),
        Some(id.as_str())
    );
    assert_ne!(added.after_file_id, "", "placed after m-050.txt");
    let total = next(&mut feed).await;
    assert_eq!((total.change, total.total_count), (None, Some(301)));

    b.p2p_ok(&["rm", "--network", &id]).await;
    loop {
        let change = next(&mut feed).await;
        match change.change {
            Some(Change::RemovedFileId(gone)) => {
                assert_eq!(gone, id);
                break;
            }
            // The share's holder count may move first.
            Some(Change::Upsert(_)) | None => {}
            Some(Change::Page(_)) => panic!("the page again"),
        }
    }
}

/// The next change of a FollowFiles feed, within [`WAIT`].
async fn next(feed: &mut tonic::Streaming<agent::FileChange>) -> agent::FileChange {
    tokio::time::timeout(WAIT, feed.message())
        .await
        .expect("a change in time")
        .expect("the feed")
        .expect("the feed goes on")
}

/// The NAME column of a `p2p ls` table, top to bottom.
fn names_listed(table: &str) -> Vec<&str> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}
