//! ListFiles' sorted, filtered and counted pages, against a real index-svc
//! on SQLite and on PostgreSQL (each test runs once per backend; the
//! PostgreSQL run is skipped when `P2P_TEST_POSTGRES_URL` is unset).

mod support;

use std::cmp::Ordering;

use p2p_proto::index::v1 as pb;
use support::{Cluster, Db, Index, eventually, idle, manifest};
use tonic::Code;

suite!(
    every_sort_pages_through_every_file_in_order_both_ways,
    owner_and_kind_filters_narrow_the_list_and_count_it,
    a_page_token_survives_inserts_and_is_refused_for_another_sort,
    a_counted_total_follows_changes_made_through_another_replica,
);

/// Every file of a listing in `sort`, read `page_size` at a time.
async fn all_pages(
    index: &mut Index,
    sort: pb::FileSort,
    descending: bool,
    page_size: u32,
) -> Vec<pb::FileInfo> {
    let mut files = Vec::new();
    let mut token = String::new();
    for _ in 0..100 {
        let page = index
            .list_with(pb::ListFilesRequest {
                page_size,
                page_token: token.clone(),
                sort: sort as i32,
                descending,
                ..Default::default()
            })
            .await
            .expect("page");
        assert!(page.files.len() <= page_size as usize);
        files.extend(page.files);
        if page.next_page_token.is_empty() {
            return files;
        }
        token = page.next_page_token;
    }
    panic!("paging by {sort:?} did not end");
}

/// How `sort` compares two files, ties broken by id, as the contract says.
fn compare(sort: pb::FileSort, a: &pb::FileInfo, b: &pb::FileInfo) -> Ordering {
    let key = match sort {
        pb::FileSort::Name => a.name.to_lowercase().cmp(&b.name.to_lowercase()),
        pb::FileSort::Size => a.size_bytes.cmp(&b.size_bytes),
        pb::FileSort::Added | pb::FileSort::Unspecified => a.added_at_ms.cmp(&b.added_at_ms),
        pb::FileSort::Holders => a.online_holders.cmp(&b.online_holders),
    };
    key.then_with(|| a.file_id.cmp(&b.file_id))
}

/// Files of different names, sizes and holder counts, listed by each key
/// both ways, two per page: every file once, in the order the contract
/// gives (holders as the maintained count, which equals the online count
/// while every holder is online).
async fn every_sort_pages_through_every_file_in_order_both_ways(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&server, &bob);
    let mut peers = Vec::new();
    for i in 0..3 {
        peers.push(
            index
                .register(&format!("127.0.0.1:{}", 7100 + i), idle())
                .await,
        );
    }
    // Names in one case so both databases' text orders agree.
    let names = [
        "delta", "alpha", "echo", "charlie", "bravo", "foxtrot", "golf",
    ];
    let mut ids = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let chunks = [3, 1, 2, 5, 1, 4, 2][i];
        let holder = if i % 2 == 0 { peers[0].as_str() } else { "" };
        let published = index
            .publish(manifest(name, 900 + i as u64, chunks), holder)
            .await
            .expect("publish");
        ids.push(published.file.expect("file").file_id);
    }
    // More holders for some: 0..3 holders in all.
    for (file, extra) in [(0usize, 2usize), (3, 1), (6, 1), (4, 2)] {
        for peer in &peers[1..=extra] {
            index
                .update_holdings(peer, &ids[file], Vec::new(), true)
                .await
                .expect("announce");
        }
    }
    let holders = |files: &[pb::FileInfo]| files.iter().map(|f| f.online_holders).sum::<u32>();
    eventually("every announced holding is written", || {
        let mut index = Index::new(&server, &bob);
        async move {
            let files = all_pages(&mut index, pb::FileSort::Name, false, 100).await;
            (holders(&files) == 4 + 2 + 1 + 1 + 2).then_some(())
        }
    })
    .await;

    for sort in [
        pb::FileSort::Name,
        pb::FileSort::Size,
        pb::FileSort::Added,
        pb::FileSort::Holders,
        pb::FileSort::Unspecified,
    ] {
        for descending in [false, true] {
            let files = all_pages(&mut index, sort, descending, 2).await;
            let mut expected = files.clone();
            expected.sort_by(|a, b| compare(sort, a, b));
            if descending || sort == pb::FileSort::Unspecified {
                expected.reverse();
            }
            let got: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
            let want: Vec<&str> = expected.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(got, want, "sorted by {sort:?}, descending {descending}");
            assert_eq!(files.len(), names.len(), "every file once by {sort:?}");
        }
    }
}

/// The owner filter keeps one user's files, the kind filter files or
/// folders, both combine with the name filter, and the total counts every
/// match whatever the page size.
async fn owner_and_kind_filters_narrow_the_list_and_count_it(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let carol = cluster.user("carol").await;
    let mut as_bob = Index::new(&server, &bob);
    let mut as_carol = Index::new(&server, &carol);
    for i in 0..5u64 {
        as_bob
            .publish(manifest(&format!("bob-{i}.txt"), 300 + i, 1), "")
            .await
            .expect("publish");
    }
    for i in 0..3u64 {
        as_carol
            .publish(manifest(&format!("carol-{i}.txt"), 400 + i, 1), "")
            .await
            .expect("publish");
    }
    let list = |owner: &str, kind: Option<pb::EntryKind>, name: &str| pb::ListFilesRequest {
        owner_name: owner.into(),
        kind: kind.map(|k| k as i32),
        name_contains: name.into(),
        page_size: 2,
        include_total: true,
        ..Default::default()
    };
    let carols = as_bob
        .list_with(list("carol", None, ""))
        .await
        .expect("list");
    assert_eq!(carols.total_count, Some(3));
    assert_eq!(carols.files.len(), 2);
    assert!(carols.files.iter().all(|f| f.owner_name == "carol"));
    let all = as_bob.list_with(list("", None, "")).await.expect("list");
    assert_eq!(all.total_count, Some(8));
    let files = as_bob
        .list_with(list("bob", Some(pb::EntryKind::File), "-3"))
        .await
        .expect("list");
    assert_eq!(files.total_count, Some(1));
    assert_eq!(files.files[0].name, "bob-3.txt");
    let folders = as_bob
        .list_with(list("", Some(pb::EntryKind::Folder), ""))
        .await
        .expect("list");
    assert_eq!((folders.total_count, folders.files.len()), (Some(0), 0));
    let nobody = as_bob
        .list_with(list("dave", None, ""))
        .await
        .expect("list");
    assert_eq!(nobody.total_count, Some(0));
    let uncounted = as_bob
        .list_with(pb::ListFilesRequest::default())
        .await
        .expect("list");
    assert_eq!(uncounted.total_count, None, "counted only when asked");

    let bad_kind = as_bob
        .list_with(pb::ListFilesRequest {
            kind: Some(7),
            ..Default::default()
        })
        .await
        .expect_err("unknown kind");
    assert_eq!(bad_kind.code(), Code::InvalidArgument);
    let bad_sort = as_bob
        .list_with(pb::ListFilesRequest {
            sort: 99,
            ..Default::default()
        })
        .await
        .expect_err("unknown sort");
    assert_eq!(bad_sort.code(), Code::InvalidArgument);
    assert!(
        bad_sort.message().contains("name (1)"),
        "{}",
        bad_sort.message()
    );
}

/// A client half-way through the list by name keeps its place while files
/// are added before and after it: no file twice, the later one listed.
/// Its token is refused, with a message that says why, for another sort.
async fn a_page_token_survives_inserts_and_is_refused_for_another_sort(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&server, &bob);
    for (i, name) in ["b1", "b2", "b3", "b4"].iter().enumerate() {
        index
            .publish(manifest(name, 500 + i as u64, 1), "")
            .await
            .expect("publish");
    }
    let by_name = |token: &str| pb::ListFilesRequest {
        page_size: 2,
        page_token: token.into(),
        sort: pb::FileSort::Name as i32,
        ..Default::default()
    };
    let first = index.list_with(by_name("")).await.expect("page 1");
    let first_names: Vec<_> = first.files.iter().map(|f| f.name.clone()).collect();
    assert_eq!(first_names, ["b1", "b2"]);
    index
        .publish(manifest("a0", 600, 1), "")
        .await
        .expect("before the cursor");
    index
        .publish(manifest("c9", 601, 1), "")
        .await
        .expect("after the cursor");
    let mut rest = Vec::new();
    let mut token = first.next_page_token.clone();
    while !token.is_empty() {
        let page = index.list_with(by_name(&token)).await.expect("next page");
        rest.extend(page.files.into_iter().map(|f| f.name));
        token = page.next_page_token;
    }
    assert_eq!(rest, ["b3", "b4", "c9"]);

    let by_size = index
        .list_with(pb::ListFilesRequest {
            page_size: 2,
            page_token: first.next_page_token.clone(),
            sort: pb::FileSort::Size as i32,
            descending: true,
            ..Default::default()
        })
        .await
        .expect_err("a name token for a size sort");
    assert_eq!(by_size.code(), Code::InvalidArgument);
    assert!(
        by_size
            .message()
            .contains("sorted by name ascending, not by size descending"),
        "{}",
        by_size.message()
    );
}

/// Two replicas on one database. Each remembers the totals it counted;
/// a file published or deleted through the other changes them at once,
/// for every filter it touches, since the database itself marks the
/// change.
async fn a_counted_total_follows_changes_made_through_another_replica(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let first = cluster.index(&[]).await;
    let second = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut through_first = Index::new(&first, &bob);
    let mut through_second = Index::new(&second, &bob);
    let totals = |name: &str| pb::ListFilesRequest {
        name_contains: name.into(),
        page_size: 1,
        include_total: true,
        ..Default::default()
    };
    for i in 0..4u64 {
        through_first
            .publish(manifest(&format!("report-{i}.pdf"), 500 + i, 1), "")
            .await
            .expect("publish");
    }
    let counted = |name: &'static str| {
        let mut index = through_first.clone();
        async move {
            index
                .list_with(totals(name))
                .await
                .expect("list")
                .total_count
        }
    };
    assert_eq!(counted("").await, Some(4));
    assert_eq!(counted("report-3").await, Some(1));
    // Asked again with nothing changed: the same answers.
    assert_eq!(counted("").await, Some(4));

    let added = through_second
        .publish(manifest("report-9.pdf", 599, 1), "")
        .await
        .expect("publish")
        .file
        .expect("file")
        .file_id;
    assert_eq!(
        counted("").await,
        Some(5),
        "a publish through the other replica"
    );
    assert_eq!(counted("report-9").await, Some(1));

    let request = through_second.req(pb::DeleteFileRequest {
        file_id: added.clone(),
    });
    through_second
        .client
        .delete_file(request)
        .await
        .expect("delete");
    assert_eq!(
        counted("").await,
        Some(4),
        "a delete through the other replica"
    );
    assert_eq!(counted("report-9").await, Some(0));
    assert_eq!(counted("report-3").await, Some(1));
}
