//! index-svc against a real auth-svc, over real sockets, on SQLite and on
//! PostgreSQL (each test runs once per backend; the PostgreSQL run is
//! skipped when `P2P_TEST_POSTGRES_URL` is unset).

mod support;

use std::collections::BTreeSet;

use p2p_proto::index::v1 as pb;
use p2p_services::manifest::Bitfield;
use support::{Cluster, Db, Index, busy, eventually, folder_manifest, idle, manifest, manifest_v2};
use tonic::Code;

suite!(
    publish_is_idempotent_and_makes_the_publisher_a_holder,
    list_filters_by_name_and_pages,
    list_filter_ignores_case_in_every_script,
    names_from_before_folding_are_filtered_after_restart,
    bad_manifests_are_invalid_argument,
    a_folder_is_one_entry_and_its_tree_survives_storage,
    hostile_folder_manifests_are_refused,
    unknown_file_is_not_found,
    delete_by_non_owner_is_denied_and_admin_may_delete,
    missing_or_bad_token_is_unauthenticated,
    peers_act_only_for_their_owner_and_keep_their_id,
    busy_peer_drops_below_idle_peer,
    lease_expiry_removes_a_source_and_heartbeat_restores_it,
    partial_holders_are_offered_only_for_chunks_they_have,
    bad_reports_push_a_source_down,
    a_holding_no_one_can_read_is_withdrawn_until_announced_again,
    index_keeps_everything_across_restart,
    two_replicas_on_one_database_agree,
    watch_files_delivers_publish_and_delete,
    an_advertised_address_must_be_the_callers_own_unless_allowed,
    a_peer_that_moves_is_recorded_where_it_calls_from_and_its_old_address_retired,
    queued_heartbeats_and_bitfields_are_written_and_survive_a_clean_stop,
    a_queued_bitfield_never_undoes_stop_sharing_or_delete,
    past_capacity_calls_are_shed_with_a_retry_hint,
    watch_files_resumes_on_another_replica_without_loss_or_repeat,
    concurrent_registrations_each_get_their_own_peer_id,
    a_registration_the_database_refuses_fails_alone,
    a_v2_manifest_keeps_its_chaining_values_and_v1_stays_v1,
);

/// A burst of registrations (committed in groups) gives every agent its
/// own id; the same user and address get the same id even within one
/// group; every peer is listed once RegisterPeer has returned.
async fn concurrent_registrations_each_get_their_own_peer_id(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    // Room for the whole burst at once: admission is not what this tests.
    let server = cluster.index(&["--max-in-flight", "512"]).await;
    let bob = cluster.user("bob").await;
    let carol = cluster.user("carol").await;
    let as_bob = Index::new(&server, &bob);
    let as_carol = Index::new(&server, &carol);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..300u32 {
        // Every address twice for bob (the second a re-registration racing
        // the first), once for carol.
        let (mut index, who) = match i % 3 {
            0 | 1 => (as_bob.clone(), "bob"),
            _ => (as_carol.clone(), "carol"),
        };
        let addr = format!("10.1.{}.{}:7000", i / 3 / 256, i / 3 % 256);
        calls.spawn(async move {
            let id = index.register(&addr, idle()).await;
            (who, addr, id)
        });
    }
    let mut ids: std::collections::HashMap<(&str, String), BTreeSet<String>> =
        std::collections::HashMap::new();
    while let Some(joined) = calls.join_next().await {
        let (who, addr, id) = joined.expect("register task");
        ids.entry((who, addr)).or_default().insert(id);
    }
    assert_eq!(ids.len(), 200, "100 addresses for bob, 100 for carol");
    assert!(
        ids.values().all(|same| same.len() == 1),
        "one id per (user, address)"
    );
    let distinct: BTreeSet<&String> = ids.values().flatten().collect();
    assert_eq!(distinct.len(), 200, "every (user, address) its own id");

    let mut as_bob = as_bob;
    let listed: BTreeSet<String> = as_bob
        .peers(true)
        .await
        .into_iter()
        .map(|p| p.peer_id)
        .collect();
    assert!(
        distinct.iter().all(|id| listed.contains(*id)),
        "a registration is written before RegisterPeer returns"
    );
}

/// A registration the database refuses (a trigger the test adds refuses
/// one agent version) fails with its own error, and the others committed
/// in the same group still get their ids. A version with a control
/// character never reaches the database: INVALID_ARGUMENT.
async fn a_registration_the_database_refuses_fails_alone(db: Db) {
    const REFUSED: &str = "refused-by-the-test-trigger";
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    refuse_registrations_of_version(db, &cluster.index_db, REFUSED).await;
    let bob = cluster.user("bob").await;
    let as_bob = Index::new(&server, &bob);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..64u32 {
        let mut index = as_bob.clone();
        calls.spawn(async move {
            let version = if i == 17 { REFUSED } else { "test" };
            let request = index.req(pb::RegisterPeerRequest {
                advertise_addr: format!("10.2.0.{i}:7000"),
                load: Some(idle()),
                agent_version: version.into(),
                ..Default::default()
            });
            (i, index.client.register_peer(request).await)
        });
    }
    let mut ids = BTreeSet::new();
    while let Some(joined) = calls.join_next().await {
        match joined.expect("register task") {
            (_, Ok(registered)) => {
                ids.insert(registered.into_inner().peer_id);
            }
            (17, Err(status)) => assert_eq!(status.code(), Code::Internal, "{status:?}"),
            (i, Err(status)) => panic!("registration {i} failed with the bad one: {status:?}"),
        }
    }
    assert!(ids.len() >= 63, "every other registration got its own id");
    assert!(ids.len() < 64, "the refused registration got no id");

    let mut index = as_bob.clone();
    let request = index.req(pb::RegisterPeerRequest {
        advertise_addr: "10.2.1.1:7000".into(),
        load: Some(idle()),
        agent_version: "bad\0version".into(),
        ..Default::default()
    });
    let status = index.client.register_peer(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("agent_version"), "{status:?}");
}

/// Makes the index database refuse any peer row with agent version
/// `version` (a trigger), so a test can fail one write for real.
async fn refuse_registrations_of_version(db: Db, url: &str, version: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url)
        .await
        .expect("test connects to the index database");
    let statements = match db {
        Db::Sqlite => vec![format!(
            "CREATE TRIGGER refuse_marked_version BEFORE INSERT ON peers \
             WHEN NEW.agent_version = '{version}' \
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )],
        Db::Postgres => vec![
            format!(
                "CREATE FUNCTION refuse_marked_version() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.agent_version = '{version}' THEN \
                 RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$"
            ),
            "CREATE TRIGGER refuse_marked_version BEFORE INSERT ON peers \
             FOR EACH ROW EXECUTE FUNCTION refuse_marked_version()"
                .to_string(),
        ],
    };
    for statement in statements {
        sqlx::raw_sql(&statement)
            .execute(&pool)
            .await
            .expect("test trigger");
    }
    pool.close().await;
}

/// Many peers heartbeat and grow their bitfields faster than the flush;
/// the latest of each is what the database ends up with, and a clean stop
/// writes what was still queued.
async fn queued_heartbeats_and_bitfields_are_written_and_survive_a_clean_stop(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let bob = cluster.user("bob").await;
    // A long flush interval: nothing queued is written before the stop.
    let server = cluster.index(&["--flush-interval", "5s"]).await;
    let mut index = Index::new(&server, &bob);
    let seed = index.register("10.0.6.1:7000", idle()).await;
    let file = index
        .publish(manifest("batched.bin", 70, 8), &seed)
        .await
        .expect("publish");
    let file_id = file.file.expect("file").file_id;
    let mut peers = Vec::new();
    for i in 0..10 {
        let peer = index
            .register(&format!("10.0.6.{}:7000", i + 2), idle())
            .await;
        // The first chunk makes it a holder: written at once.
        let mut field = Bitfield::empty(8);
        field.set(0);
        index
            .update_holdings(&peer, &file_id, field.as_bytes().to_vec(), false)
            .await
            .expect("first chunk");
        peers.push(peer);
    }
    let sources = index
        .locate(&file_id, "", Vec::new())
        .await
        .expect("locate");
    assert_eq!(sources.len(), 11, "new holders are offered at once");
    for round in 1..4u32 {
        for peer in &peers {
            let mut field = Bitfield::empty(8);
            for c in 0..=round {
                field.set(c);
            }
            index
                .update_holdings(peer, &file_id, field.as_bytes().to_vec(), false)
                .await
                .expect("growing bitfield");
            index.heartbeat(peer, busy()).await.expect("heartbeat");
        }
    }
    server.stop(support::WAIT).await.expect("index-svc stops");

    let server = cluster.index(&[]).await;
    let mut index = Index::new(&server, &bob);
    let sources = index
        .locate(&file_id, "", Vec::new())
        .await
        .expect("locate");
    let partial: Vec<&pb::Source> = sources.iter().filter(|s| !s.complete).collect();
    assert_eq!(partial.len(), 10);
    for source in partial {
        let field = Bitfield::from_bytes(&source.bitfield, 8).expect("bitfield");
        assert_eq!(
            field.count(),
            4,
            "the last bitfield of {} was written",
            source.peer_id
        );
        assert_eq!(
            source.load,
            Some(busy()),
            "the last heartbeat's load was written"
        );
    }
}

/// A bitfield waiting for the flush must not bring back a holding that
/// StopSharing or DeleteFile removed meanwhile, and a holding of a deleted
/// file must not make the whole batch fail.
async fn a_queued_bitfield_never_undoes_stop_sharing_or_delete(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let bob = cluster.user("bob").await;
    let server = cluster.index(&["--flush-interval", "300ms"]).await;
    let mut index = Index::new(&server, &bob);
    let seed = index.register("10.0.7.1:7000", idle()).await;
    let leech = index.register("10.0.7.2:7000", idle()).await;
    let kept = index
        .publish(manifest("kept.bin", 80, 8), &seed)
        .await
        .expect("publish")
        .file
        .expect("file")
        .file_id;
    let gone = index
        .publish(manifest("gone.bin", 81, 8), &seed)
        .await
        .expect("publish")
        .file
        .expect("file")
        .file_id;
    let bits = |n: u32| {
        let mut field = Bitfield::empty(8);
        for c in 0..n {
            field.set(c);
        }
        field.as_bytes().to_vec()
    };
    for file in [&kept, &gone] {
        index
            .update_holdings(&leech, file, bits(1), false)
            .await
            .expect("holder");
        index
            .update_holdings(&leech, file, bits(3), false)
            .await
            .expect("queued growth");
    }
    index
        .client
        .stop_sharing(index.req(pb::StopSharingRequest {
            peer_id: leech.clone(),
            file_id: kept.clone(),
        }))
        .await
        .expect("stop sharing");
    index
        .client
        .delete_file(index.req(pb::DeleteFileRequest {
            file_id: gone.clone(),
        }))
        .await
        .expect("delete");
    // A later heartbeat is written by the next flush only if the batch
    // with the deleted file's holding did not fail.
    index.heartbeat(&seed, busy()).await.expect("heartbeat");
    eventually("the heartbeat after the delete is written", || {
        let mut index = index.clone();
        let kept = kept.clone();
        async move {
            let sources = index.locate(&kept, "", Vec::new()).await.expect("locate");
            sources.iter().any(|s| s.load == Some(busy())).then_some(())
        }
    })
    .await;
    let sources = index.locate(&kept, "", Vec::new()).await.expect("locate");
    let ids: Vec<&str> = sources.iter().map(|s| s.peer_id.as_str()).collect();
    assert_eq!(ids, [seed.as_str()], "the leech stopped sharing for good");
    let err = index
        .locate(&gone, "", Vec::new())
        .await
        .expect_err("deleted");
    assert_eq!(err.code(), Code::NotFound);
}

/// With one slot and no waiting, a burst is partly refused with
/// RESOURCE_EXHAUSTED and a retry-after hint; every other call succeeds.
async fn past_capacity_calls_are_shed_with_a_retry_hint(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let bob = cluster.user("bob").await;
    let server = cluster
        .index(&["--max-in-flight", "1", "--max-queue-wait", "1ms"])
        .await;
    let mut index = Index::new(&server, &bob);
    let seed = index.register("10.0.8.1:7000", idle()).await;
    let file_id = index
        .publish(manifest("hot.bin", 90, 8), &seed)
        .await
        .expect("publish")
        .file
        .expect("file")
        .file_id;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let mut index = index.clone();
        let file_id = file_id.clone();
        calls.spawn(async move { index.locate(&file_id, "", Vec::new()).await });
    }
    let (mut served, mut shed) = (0, 0);
    while let Some(result) = calls.join_next().await {
        match result.expect("call task") {
            Ok(sources) => {
                assert_eq!(sources.len(), 1);
                served += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    p2p_services::admission::retry_after(&status)
                        .is_some_and(|d| d >= std::time::Duration::from_secs(1)),
                    "a shed call carries retry-after: {status:?}"
                );
                shed += 1;
            }
        }
    }
    assert!(served > 0, "some calls are served");
    assert!(shed > 0, "a burst of 200 past one slot sheds some calls");
}

/// A watcher that loses its replica resumes on another from the last
/// event's resume_after_seq: it sees every later event exactly once.
async fn watch_files_resumes_on_another_replica_without_loss_or_repeat(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let bob = cluster.user("bob").await;
    let one = cluster.index(&[]).await;
    let two = cluster.index(&[]).await;
    let mut via_one = Index::new(&one, &bob);
    let mut via_two = Index::new(&two, &bob);
    let mut events = via_one
        .client
        .watch_files(via_one.req(pb::WatchFilesRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    let mut published = Vec::new();
    for i in 0..3 {
        let file = via_two
            .publish(manifest(&format!("w{i}.bin"), 100 + i, 2), "")
            .await
            .expect("publish");
        published.push(file.file.expect("file").file_id);
    }
    let mut seen = Vec::new();
    let mut resume = 0;
    while seen.len() < 3 {
        let event = next_event(&mut events).await;
        assert!(event.seq > 0 && event.resume_after_seq > 0);
        resume = event.resume_after_seq;
        seen.push(event.file_id);
    }
    drop(events);
    one.stop(support::WAIT).await.expect("replica one stops");
    // Published while no one watches.
    for i in 3..5 {
        let file = via_two
            .publish(manifest(&format!("w{i}.bin"), 100 + i, 2), "")
            .await
            .expect("publish");
        published.push(file.file.expect("file").file_id);
    }
    let mut events = via_two
        .client
        .watch_files(via_two.req(pb::WatchFilesRequest { after_seq: resume }))
        .await
        .expect("watch resumes")
        .into_inner();
    while seen.len() < 5 {
        seen.push(next_event(&mut events).await.file_id);
    }
    assert_eq!(seen, published, "every event once, in order");
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(800), events.message()).await;
    assert!(quiet.is_err(), "nothing repeats: {quiet:?}");
}

async fn publish_is_idempotent_and_makes_the_publisher_a_holder(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&server, &bob);
    let peer = index.register("10.0.0.1:7000", idle()).await;

    let first = index
        .publish(manifest("Holiday.mp4", 1, 4), &peer)
        .await
        .expect("publish");
    assert!(first.created);
    let file = first.file.expect("file info");
    assert_eq!(file.file_id.len(), 64);
    assert_eq!(file.name, "Holiday.mp4");
    assert_eq!(file.owner_id, bob.id);
    assert_eq!(file.owner_name, "bob");
    assert_eq!(file.chunk_count, 4);
    assert_eq!(file.chunk_size_bytes, support::CHUNK);
    assert_eq!((file.online_holders, file.complete_copies), (1, 1));
    assert!(file.added_at_ms > 0);

    let again = index
        .publish(manifest("Other name.mp4", 1, 4), "")
        .await
        .expect("republish");
    assert!(!again.created, "identical content is not published twice");
    let again = again.file.expect("file info");
    assert_eq!(again.file_id, file.file_id);
    assert_eq!(
        again.name, "Holiday.mp4",
        "the first publish names the file"
    );

    let got = index.get_file(&file.file_id).await.expect("get file");
    let m = got.manifest.expect("manifest");
    let sent = manifest("Holiday.mp4", 1, 4);
    assert_eq!(m.chunk_hashes, sent.chunk_hashes);
    assert_eq!(m.file_hash, sent.file_hash);
    assert_eq!(m.file_id, file.file_id);
    assert_eq!(index.list("", 0, "").await.expect("list").files.len(), 1);

    // A download's first call: sources and the same manifest at once;
    // later calls leave the manifest out.
    let located = index
        .client
        .locate_sources(index.req(pb::LocateSourcesRequest {
            file_id: file.file_id.clone(),
            include_manifest: true,
            ..Default::default()
        }))
        .await
        .expect("locate with manifest")
        .into_inner();
    assert_eq!(located.manifest.as_ref(), Some(&m));
    assert_eq!(located.sources.len(), 1);
    assert_eq!(located.sources[0].peer_id, peer);
    let again = index
        .client
        .locate_sources(index.req(pb::LocateSourcesRequest {
            file_id: file.file_id.clone(),
            ..Default::default()
        }))
        .await
        .expect("locate")
        .into_inner();
    assert!(again.manifest.is_none());
}

async fn list_filters_by_name_and_pages(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&server, &bob);
    for (i, name) in [
        "Report-2024.pdf",
        "report-2025.pdf",
        "REPORT final.pdf",
        "notes.txt",
        "50%_off.txt",
    ]
    .iter()
    .enumerate()
    {
        index
            .publish(manifest(name, 100 + i as u64, 1), "")
            .await
            .expect("publish");
    }
    let names = |files: &[pb::FileInfo]| {
        files
            .iter()
            .map(|f| f.name.clone())
            .collect::<BTreeSet<_>>()
    };

    let reports = index.list("rePort", 0, "").await.expect("filter");
    assert_eq!(reports.files.len(), 3, "{:?}", names(&reports.files));
    assert!(reports.next_page_token.is_empty());
    let literal = index
        .list("%_", 0, "")
        .await
        .expect("wildcards are literal");
    assert_eq!(
        names(&literal.files),
        BTreeSet::from(["50%_off.txt".to_string()])
    );

    let mut seen = BTreeSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = index.list("", 2, &token).await.expect("page");
        assert!(page.files.len() <= 2);
        seen.extend(names(&page.files));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10, "paging terminates");
    }
    assert_eq!((seen.len(), pages), (5, 3));

    let too_big = index.list("", 1001, "").await.expect_err("page too large");
    assert_eq!(too_big.code(), Code::ResourceExhausted);
    let bad_token = index.list("", 2, "garbage").await.expect_err("bad token");
    assert_eq!(bad_token.code(), Code::InvalidArgument);
}

/// The filter ignores case beyond ASCII, the same on both backends: the
/// exact name, its other-cased forms and parts of it all find the file.
async fn list_filter_ignores_case_in_every_script(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&server, &bob);
    let names = [
        "Отчёт 2026.pdf",
        "École d'été.txt",
        "ÄRGER.md",
        "ΦΩΤΟ ΟΔΟΣ.jpg",
    ];
    for (i, name) in names.iter().enumerate() {
        index
            .publish(manifest(name, 700 + i as u64, 1), "")
            .await
            .expect("publish");
    }
    for (filter, expected) in [
        ("Отчёт 2026.pdf", names[0]),
        ("Отчёт", names[0]),
        ("ОТЧЁТ", names[0]),
        ("отчёт", names[0]),
        ("тчёт", names[0]),
        ("École d'été.txt", names[1]),
        ("ÉCOLE", names[1]),
        ("école", names[1]),
        ("ÄRGER.md", names[2]),
        ("Ärger", names[2]),
        ("ΟΔΟΣ", names[3]),
        ("οδοσ", names[3]),
        ("Φωτο", names[3]),
    ] {
        let listed = index.list(filter, 0, "").await.expect("filter");
        let found: Vec<&str> = listed.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(found, [expected], "filter {filter:?}");
    }
}

/// Files published before the folded name existed are found by the
/// filter once index-svc has started again.
async fn names_from_before_folding_are_filtered_after_restart(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&server, &bob);
    index
        .publish(manifest("Отчёт 2026.pdf", 710, 1), "")
        .await
        .expect("publish");
    server.stop(support::WAIT).await.expect("index-svc stops");
    // What a database migrated from an older index-svc holds.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&cluster.index_db)
        .await
        .expect("open the index database");
    sqlx::query("UPDATE files SET name_folded = NULL")
        .execute(&pool)
        .await
        .expect("forget the folded names");
    pool.close().await;

    let server = cluster.index(&[]).await;
    let mut index = Index::new(&server, &bob);
    let listed = index.list("Отчёт", 0, "").await.expect("filter");
    assert_eq!(listed.files.len(), 1, "{:?}", listed.files);
}

async fn bad_manifests_are_invalid_argument(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&server, &bob);
    let good = manifest("ok.bin", 7, 3);
    let mut cases = Vec::new();
    let mut m = good.clone();
    m.size_bytes += u64::from(support::CHUNK);
    cases.push(("chunk count mismatch", m));
    let mut m = good.clone();
    m.chunk_size_bytes = 1000;
    cases.push(("chunk size not a power of two", m));
    let mut m = good.clone();
    m.chunk_size_bytes = 1 << 30;
    cases.push(("chunk size too large", m));
    let mut m = good.clone();
    m.file_hash.pop();
    cases.push(("short file hash", m));
    let mut m = good.clone();
    m.chunk_hashes.pop();
    cases.push(("ragged chunk hashes", m));
    let mut m = manifest_v2("ok.bin", 7, 3);
    m.chunk_chaining_values[5] ^= 1;
    cases.push(("chaining values that do not make the file hash", m));
    for name in ["", "a/b", "..", "..\\x", "bell\u{7}", &"n".repeat(256)] {
        let mut m = good.clone();
        m.name = name.to_string();
        cases.push(("bad name", m));
    }
    for (what, m) in cases {
        let err = index.publish(m, "").await.expect_err(what);
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{what}: {}",
            err.message()
        );
    }
    let missing = index
        .client
        .publish_file(index.req(pb::PublishFileRequest::default()))
        .await
        .expect_err("no manifest");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(index.list("", 0, "").await.expect("list").files.is_empty());
}

/// A folder is published as one entry that says FOLDER, and another
/// replica (reading the database, not a cache) gives back the same tree.
async fn a_folder_is_one_entry_and_its_tree_survives_storage(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let one = cluster.index(&[]).await;
    let two = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&one, &bob);
    let peer = index.register("10.0.7.1:7000", idle()).await;
    let big = vec![3u8; support::CHUNK as usize + 5];
    let sent = folder_manifest(
        "Course",
        &[
            ("week 1/notes.txt", b"notes"),
            ("week 1/empty.txt", b""),
            ("Лекции/видео.bin", &big),
            ("講義/資料.pdf", b"pdf"),
        ],
        &["week 2", "week 3/later"],
    );
    let published = index.publish(sent.clone(), &peer).await.expect("publish");
    let file = published.file.expect("file info");
    assert_eq!(file.kind, pb::EntryKind::Folder as i32);
    assert_eq!(file.entry_count, 4);
    assert_eq!(
        file.chunk_count, 4,
        "one chunk per small file, two for the big one, none for the empty one"
    );
    assert_eq!(file.size_bytes, big.len() as u64 + 8);
    let mut other = Index::new(&two, &bob);
    let got = other
        .get_file(&file.file_id)
        .await
        .expect("get the folder")
        .manifest
        .expect("manifest");
    assert_eq!(got.folder, sent.folder);
    assert_eq!(got.chunk_hashes, sent.chunk_hashes);
    assert_eq!(got.chunk_size_bytes, 0, "older agents must refuse a folder");
    assert_eq!(got.file_id, file.file_id);
    let listed = other.list("", 0, "").await.expect("list").files;
    assert_eq!(listed[0].kind, pb::EntryKind::Folder as i32);
}

/// Folder manifests that would write outside the destination, collide or
/// flood are refused with INVALID_ARGUMENT naming the problem, and nothing
/// is stored.
async fn hostile_folder_manifests_are_refused(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&server, &bob);
    let good = folder_manifest("Tree", &[("a/b.txt", b"b"), ("c.txt", b"c")], &[]);
    let with_path = |path: &str| {
        let mut m = good.clone();
        m.folder.as_mut().expect("folder").files[0].path = path.to_string();
        m
    };
    let mut cases = vec![
        ("../x", with_path("../x"), "refused"),
        ("absolute", with_path("/etc/passwd"), "absolute"),
        ("dot dot inside", with_path("a/../../x"), "refused"),
        ("empty component", with_path("a//b.txt"), "empty component"),
        ("duplicate", with_path("c.txt"), "twice"),
    ];
    let mut m = good.clone();
    let folder = m.folder.as_mut().expect("folder");
    folder.empty_dirs = (0..100_001).map(|i| format!("d{i:06}")).collect();
    cases.push(("too many entries", m, "at most 100000"));
    let mut m = good.clone();
    m.chunk_size_bytes = support::CHUNK;
    cases.push(("folder read as a file", m, "must be 0"));
    let mut m = good.clone();
    m.folder.as_mut().expect("folder").version = 2;
    cases.push(("unknown layout", m, "version 2"));
    let mut m = good.clone();
    m.folder.as_mut().expect("folder").files[0].size_bytes += 1;
    cases.push(("sizes disagree", m, "add up to"));
    for (what, m, says) in cases {
        let err = index.publish(m, "").await.expect_err(what);
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{what}: {}",
            err.message()
        );
        assert!(err.message().contains(says), "{what}: {}", err.message());
    }
    assert!(index.list("", 0, "").await.expect("list").files.is_empty());
}

async fn unknown_file_is_not_found(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&server, &bob);
    let unknown = "ab".repeat(32);
    let get = index.get_file(&unknown).await.expect_err("unknown file");
    assert_eq!(get.code(), Code::NotFound);
    let locate = index
        .locate(&unknown, "", Vec::new())
        .await
        .expect_err("unknown file");
    assert_eq!(locate.code(), Code::NotFound);
    let delete = index
        .client
        .delete_file(index.req(pb::DeleteFileRequest { file_id: unknown }))
        .await
        .expect_err("unknown file");
    assert_eq!(delete.code(), Code::NotFound);
    let malformed = index
        .get_file("../etc/passwd")
        .await
        .expect_err("malformed id");
    assert_eq!(malformed.code(), Code::InvalidArgument);
}

async fn delete_by_non_owner_is_denied_and_admin_may_delete(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let carol = cluster.user("carol").await;
    let admin = cluster.admin().await;
    let mut as_bob = Index::new(&server, &bob);
    let mut as_carol = Index::new(&server, &carol);
    let as_admin = Index::new(&server, &admin);
    let peer = as_bob.register("10.0.0.2:7000", idle()).await;

    let mut ids = Vec::new();
    for seed in [1, 2] {
        let file = as_bob
            .publish(manifest("mine.bin", seed, 2), &peer)
            .await
            .expect("publish");
        ids.push(file.file.expect("file").file_id);
    }
    let denied = as_carol
        .client
        .delete_file(as_carol.req(pb::DeleteFileRequest {
            file_id: ids[0].clone(),
        }))
        .await
        .expect_err("carol may not delete bob's file");
    assert_eq!(denied.code(), Code::PermissionDenied);

    as_bob
        .client
        .delete_file(as_bob.req(pb::DeleteFileRequest {
            file_id: ids[0].clone(),
        }))
        .await
        .expect("owner deletes");
    as_admin
        .client
        .clone()
        .delete_file(as_admin.req(pb::DeleteFileRequest {
            file_id: ids[1].clone(),
        }))
        .await
        .expect("admin deletes");
    for id in &ids {
        let gone = as_bob.get_file(id).await.expect_err("deleted");
        assert_eq!(gone.code(), Code::NotFound);
    }
    let peers = as_bob.peers(true).await;
    assert_eq!(peers[0].complete_files, 0, "holdings go with the file");
}

async fn missing_or_bad_token_is_unauthenticated(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let mut client = p2p_proto::index::v1::index_service_client::IndexServiceClient::new(
        p2p_services::client::channel(&server.addr, &p2p_services::tls::ClientTls::Plaintext)
            .expect("channel"),
    );
    let none = client
        .list_files(pb::ListFilesRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(none.code(), Code::Unauthenticated);
    let bad = client
        .list_files(p2p_services::client::with_bearer(
            pb::ListFilesRequest::default(),
            "not.a.token",
        ))
        .await
        .expect_err("bad token");
    assert_eq!(bad.code(), Code::Unauthenticated);
    let bob = cluster.user("bob").await;
    let mut forged = bob.token.clone();
    forged.pop();
    forged.push(if bob.token.ends_with('A') { 'B' } else { 'A' });
    let forged = client
        .list_files(p2p_services::client::with_bearer(
            pb::ListFilesRequest::default(),
            &forged,
        ))
        .await
        .expect_err("forged signature");
    assert_eq!(forged.code(), Code::Unauthenticated);
    client
        .list_files(p2p_services::client::with_bearer(
            pb::ListFilesRequest::default(),
            &bob.token,
        ))
        .await
        .expect("a real token works");
}

async fn peers_act_only_for_their_owner_and_keep_their_id(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let carol = cluster.user("carol").await;
    let mut as_bob = Index::new(&server, &bob);
    let mut as_carol = Index::new(&server, &carol);
    let peer = as_bob.register("10.0.0.3:7000", idle()).await;
    assert_eq!(
        as_bob.register("10.0.0.3:7000", busy()).await,
        peer,
        "same user and address"
    );
    assert_ne!(
        as_carol.register("10.0.0.3:7000", idle()).await,
        peer,
        "another user's agent"
    );

    let err = as_carol
        .heartbeat(&peer, idle())
        .await
        .expect_err("not carol's peer");
    assert_eq!(err.code(), Code::PermissionDenied);
    let unknown = uuid_like();
    let err = as_bob
        .heartbeat(&unknown, idle())
        .await
        .expect_err("unknown peer");
    assert_eq!(
        err.code(),
        Code::NotFound,
        "agents re-register on NOT_FOUND"
    );
    as_bob
        .heartbeat(&peer, idle())
        .await
        .expect("owner heartbeats");

    let file = as_bob
        .publish(manifest("f.bin", 9, 2), "")
        .await
        .expect("publish");
    let file_id = file.file.expect("file").file_id;
    let err = as_carol
        .update_holdings(&peer, &file_id, Vec::new(), true)
        .await
        .expect_err("not carol's peer");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = as_carol
        .publish(manifest("g.bin", 10, 2), &peer)
        .await
        .expect_err("not carol's peer");
    assert_eq!(err.code(), Code::PermissionDenied);
    let bad_addr = as_bob
        .client
        .register_peer(as_bob.req(pb::RegisterPeerRequest {
            advertise_addr: "no port".into(),
            ..Default::default()
        }))
        .await
        .expect_err("bad address");
    assert_eq!(bad_addr.code(), Code::InvalidArgument);

    // Heartbeats are written at the next flush (well under a second).
    let mine = eventually("the heartbeat's load is written", || {
        let mut as_bob = as_bob.clone();
        let peer = peer.clone();
        async move {
            let peers = as_bob.peers(false).await;
            peers
                .into_iter()
                .find(|p| p.peer_id == peer && p.load == Some(idle()))
        }
    })
    .await;
    assert_eq!(mine.username, "bob");
    assert_eq!(mine.user_id, bob.id);
    assert_eq!(mine.state, pb::PeerState::Online as i32);
    assert_eq!(mine.agent_version, "test");
    assert_eq!(mine.load, Some(idle()));
}

fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000000".to_string()
}

async fn busy_peer_drops_below_idle_peer(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&server, &bob);
    let a = index.register("10.0.1.1:7000", idle()).await;
    let b = index.register("10.0.1.2:7000", busy()).await;
    let downloader = index.register("10.0.1.3:7000", idle()).await;
    let file = index
        .publish(manifest("movie.mkv", 20, 8), &a)
        .await
        .expect("publish");
    let file_id = file.file.expect("file").file_id;
    index
        .update_holdings(&b, &file_id, Vec::new(), true)
        .await
        .expect("b holds");

    let sources = index
        .locate(&file_id, &downloader, Vec::new())
        .await
        .expect("locate");
    let order: Vec<&str> = sources.iter().map(|s| s.peer_id.as_str()).collect();
    assert_eq!(order, [a.as_str(), b.as_str()], "idle a first");
    assert!(sources.iter().all(|s| s.complete && s.bitfield.is_empty()));
    assert!(sources.iter().all(|s| (0.0..=1.0).contains(&s.score)));
    assert!(
        sources[1].reason.contains("8/8 upload slots busy"),
        "{}",
        sources[1].reason
    );
    assert_eq!(sources[0].address, "10.0.1.1:7000");
    assert_eq!(sources[0].load, Some(idle()));

    index.heartbeat(&a, busy()).await.expect("a gets busy");
    index.heartbeat(&b, idle()).await.expect("b goes idle");
    eventually(
        "ranking follows load once the heartbeats are written",
        || {
            let mut index = index.clone();
            let (file_id, downloader) = (file_id.clone(), downloader.clone());
            let expected = vec![b.clone(), a.clone()];
            async move {
                let sources = index
                    .locate(&file_id, &downloader, Vec::new())
                    .await
                    .expect("locate");
                let order: Vec<String> = sources.into_iter().map(|s| s.peer_id).collect();
                (order == expected).then_some(())
            }
        },
    )
    .await;

    let from_a = index
        .locate(&file_id, &a, Vec::new())
        .await
        .expect("locate");
    assert!(
        from_a.iter().all(|s| s.peer_id != a),
        "the caller is never its own source"
    );
}

async fn lease_expiry_removes_a_source_and_heartbeat_restores_it(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster
        .index(&["--lease-ttl", "1s", "--heartbeat-interval", "300ms"])
        .await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&server, &bob);
    let seed = index.register("10.0.2.1:7000", idle()).await;
    let file = index
        .publish(manifest("lease.bin", 30, 2), &seed)
        .await
        .expect("publish");
    let file_id = file.file.expect("file").file_id;
    assert_eq!(
        index
            .locate(&file_id, "", Vec::new())
            .await
            .expect("locate")
            .len(),
        1
    );

    let probe = index.clone();
    eventually("the lapsed seed is no longer offered", || {
        let mut index = probe.clone();
        let file_id = file_id.clone();
        async move {
            index
                .locate(&file_id, "", Vec::new())
                .await
                .ok()?
                .is_empty()
                .then_some(())
        }
    })
    .await;
    let peers = index.peers(true).await;
    assert_eq!(peers[0].state, pb::PeerState::Offline as i32);
    let online = index.peers(false).await;
    assert!(online.is_empty());
    let listed = index.list("lease", 0, "").await.expect("list").files;
    assert_eq!(
        (listed[0].online_holders, listed[0].complete_copies),
        (0, 0)
    );

    index
        .heartbeat(&seed, idle())
        .await
        .expect("heartbeat after lapse");
    // The seed keeps heartbeating, as an agent does: with a 1 s lease, one
    // heartbeat may lapse again before LocateSources' 1 s copy (see
    // `cache::SOURCES_TTL`) is read afresh.
    let sources = eventually("the renewed seed is offered again", || {
        let mut index = index.clone();
        let file_id = file_id.clone();
        let seed = seed.clone();
        async move {
            index
                .heartbeat(&seed, idle())
                .await
                .expect("heartbeat after lapse");
            let sources = index
                .locate(&file_id, "", Vec::new())
                .await
                .expect("locate");
            (!sources.is_empty()).then_some(sources)
        }
    })
    .await;
    assert_eq!(sources.len(), 1, "holdings survive the lapse");
    assert_eq!(sources[0].peer_id, seed);
}

async fn partial_holders_are_offered_only_for_chunks_they_have(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&server, &bob);
    let partial = index.register("10.0.3.1:7000", idle()).await;
    let downloader = index.register("10.0.3.2:7000", idle()).await;
    let file = index
        .publish(manifest("big.iso", 40, 10), "")
        .await
        .expect("publish");
    let file_id = file.file.expect("file").file_id;
    let mut held = Bitfield::empty(10);
    held.set(0);
    held.set(1);
    index
        .update_holdings(&partial, &file_id, held.as_bytes().to_vec(), false)
        .await
        .expect("partial holding");

    let mut wanted = Bitfield::empty(10);
    wanted.set(5);
    let none = index
        .locate(&file_id, &downloader, wanted.as_bytes().to_vec())
        .await
        .expect("locate");
    assert!(none.is_empty(), "it has none of the wanted chunks");
    wanted.set(1);
    let some = index
        .locate(&file_id, &downloader, wanted.as_bytes().to_vec())
        .await
        .expect("locate");
    assert_eq!(some.len(), 1);
    assert!(!some[0].complete);
    assert_eq!(some[0].bitfield, held.as_bytes());
    assert!(
        some[0].reason.starts_with("has 1/2 wanted chunks"),
        "{}",
        some[0].reason
    );
    assert_eq!(
        index
            .locate(&file_id, &downloader, Vec::new())
            .await
            .expect("all")
            .len(),
        1
    );

    let info = index.list("big", 0, "").await.expect("list").files;
    assert_eq!((info[0].online_holders, info[0].complete_copies), (1, 0));
    let wrong_length = index
        .update_holdings(&partial, &file_id, vec![0xff], false)
        .await
        .expect_err("bitfield of the wrong length");
    assert_eq!(wrong_length.code(), Code::InvalidArgument);
    let full = Bitfield::full(10);
    index
        .update_holdings(&partial, &file_id, full.as_bytes().to_vec(), false)
        .await
        .expect("full bitfield");
    let info = index.list("big", 0, "").await.expect("list").files;
    assert_eq!(
        info[0].complete_copies, 1,
        "a full bitfield counts as complete"
    );

    index
        .client
        .stop_sharing(index.req(pb::StopSharingRequest {
            peer_id: partial.clone(),
            file_id: file_id.clone(),
        }))
        .await
        .expect("stop sharing");
    assert!(
        index
            .locate(&file_id, &downloader, Vec::new())
            .await
            .expect("locate")
            .is_empty()
    );
}

async fn bad_reports_push_a_source_down(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let carol = cluster.user("carol").await;
    let mut index = Index::new(&server, &bob);
    let mut as_carol = Index::new(&server, &carol);
    let a = index.register("10.0.4.1:7000", idle()).await;
    let mut slightly_busy = idle();
    slightly_busy.active_uploads = 2;
    let b = index.register("10.0.4.2:7000", slightly_busy).await;
    let downloader = as_carol.register("10.0.4.3:7000", idle()).await;
    let file = index
        .publish(manifest("r.bin", 50, 4), &a)
        .await
        .expect("publish");
    let file_id = file.file.expect("file").file_id;
    index
        .update_holdings(&b, &file_id, Vec::new(), true)
        .await
        .expect("b holds");
    let first = as_carol
        .locate(&file_id, &downloader, Vec::new())
        .await
        .expect("locate");
    assert_eq!(first[0].peer_id, a, "idle a first before any report");

    for reason in [pb::ReportReason::Corrupt, pb::ReportReason::Unreachable] {
        as_carol
            .client
            .report_source(as_carol.req(pb::ReportSourceRequest {
                peer_id: downloader.clone(),
                source_peer_id: a.clone(),
                file_id: file_id.clone(),
                reason: reason as i32,
                detail: "chunk 3 hash mismatch".into(),
            }))
            .await
            .expect("report");
    }
    let after = as_carol
        .locate(&file_id, &downloader, Vec::new())
        .await
        .expect("locate");
    assert_eq!(after[0].peer_id, b, "the reported source drops");
    assert!(
        after[1].reason.contains("2 bad reports"),
        "{}",
        after[1].reason
    );

    let forged = index
        .client
        .report_source(index.req(pb::ReportSourceRequest {
            peer_id: downloader.clone(),
            source_peer_id: b.clone(),
            file_id: file_id.clone(),
            reason: pb::ReportReason::Stalled as i32,
            detail: String::new(),
        }))
        .await
        .expect_err("bob cannot report as carol's peer");
    assert_eq!(forged.code(), Code::PermissionDenied);
    let no_reason = as_carol
        .client
        .report_source(as_carol.req(pb::ReportSourceRequest {
            peer_id: downloader.clone(),
            source_peer_id: b.clone(),
            file_id,
            reason: 0,
            detail: String::new(),
        }))
        .await
        .expect_err("reason required");
    assert_eq!(no_reason.code(), Code::InvalidArgument);
}

async fn a_holding_no_one_can_read_is_withdrawn_until_announced_again(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let carol = cluster.user("carol").await;
    let mut index = Index::new(&server, &bob);
    let mut as_carol = Index::new(&server, &carol);
    let seeder = index.register("10.0.5.1:7000", idle()).await;
    let holder = index.register("10.0.5.2:7000", idle()).await;
    let first = as_carol.register("10.0.5.3:7000", idle()).await;
    let second = as_carol.register("10.0.5.4:7000", idle()).await;
    let file = index
        .publish(manifest("gone.bin", 50, 4), &seeder)
        .await
        .expect("publish");
    let file_id = file.file.expect("file").file_id;
    index
        .update_holdings(&holder, &file_id, Vec::new(), true)
        .await
        .expect("holder announces");
    let sources = |list: Vec<pb::Source>| -> BTreeSet<String> {
        list.into_iter().map(|s| s.peer_id).collect()
    };
    let report = |reporter: String| pb::ReportSourceRequest {
        peer_id: reporter,
        source_peer_id: holder.clone(),
        file_id: file_id.clone(),
        reason: pb::ReportReason::CannotRead as i32,
        detail: "this agent cannot read file: its copy here was deleted".into(),
    };

    for _ in 0..3 {
        as_carol
            .client
            .report_source(as_carol.req(report(first.clone())))
            .await
            .expect("report");
    }
    let after_one = as_carol
        .locate(&file_id, &second, Vec::new())
        .await
        .expect("locate");
    assert!(
        sources(after_one).contains(&holder),
        "one reporter alone does not withdraw a holding"
    );
    as_carol
        .client
        .report_source(as_carol.req(report(second.clone())))
        .await
        .expect("report");
    let after_two = as_carol
        .locate(&file_id, &first, Vec::new())
        .await
        .expect("locate");
    assert_eq!(
        sources(after_two),
        BTreeSet::from([seeder.clone()]),
        "two reporters withdraw it"
    );

    index
        .update_holdings(&holder, &file_id, Vec::new(), true)
        .await
        .expect("holder announces again");
    let announced = as_carol
        .locate(&file_id, &first, Vec::new())
        .await
        .expect("locate");
    assert!(
        sources(announced).contains(&holder),
        "announcing again makes it a source"
    );
}

async fn index_keeps_everything_across_restart(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let bob = cluster.user("bob").await;
    let server = cluster.index(&[]).await;
    let mut index = Index::new(&server, &bob);
    let peer = index.register("10.0.5.1:7000", idle()).await;
    let file = index
        .publish(manifest("keep.bin", 60, 3), &peer)
        .await
        .expect("publish");
    let file_id = file.file.expect("file").file_id;
    server.stop(support::WAIT).await.expect("index-svc stops");

    let server = cluster.index(&[]).await;
    let mut index = Index::new(&server, &bob);
    let got = index
        .get_file(&file_id)
        .await
        .expect("file survives restart");
    assert_eq!(got.file.expect("file").name, "keep.bin");
    assert_eq!(
        index.register("10.0.5.1:7000", idle()).await,
        peer,
        "peer id survives"
    );
    let sources = index
        .locate(&file_id, "", Vec::new())
        .await
        .expect("locate");
    assert_eq!(sources.len(), 1, "holdings survive");
    index
        .heartbeat(&peer, idle())
        .await
        .expect("heartbeat to the new process");
}

async fn two_replicas_on_one_database_agree(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let bob = cluster.user("bob").await;
    let one = cluster.index(&[]).await;
    let two = cluster.index(&[]).await;
    let mut via_one = Index::new(&one, &bob);
    let mut via_two = Index::new(&two, &bob);
    let a = via_one.register("10.0.6.1:7000", idle()).await;
    let b = via_two.register("10.0.6.2:7000", busy()).await;
    let file = via_one
        .publish(manifest("shared.bin", 70, 4), &a)
        .await
        .expect("publish");
    let file_id = file.file.expect("file").file_id;
    via_two
        .update_holdings(&b, &file_id, Vec::new(), true)
        .await
        .expect("b holds");

    let list_one = via_one.list("", 0, "").await.expect("list").files;
    let list_two = via_two.list("", 0, "").await.expect("list").files;
    assert_eq!(list_one, list_two);
    assert_eq!(list_one[0].complete_copies, 2);
    let ids = |s: Vec<pb::Source>| s.into_iter().map(|s| s.peer_id).collect::<Vec<_>>();
    let from_one = ids(via_one
        .locate(&file_id, "", Vec::new())
        .await
        .expect("locate"));
    let from_two = ids(via_two
        .locate(&file_id, "", Vec::new())
        .await
        .expect("locate"));
    assert_eq!(from_one, vec![a.clone(), b.clone()]);
    assert_eq!(from_one, from_two);
    via_two
        .heartbeat(&a, busy())
        .await
        .expect("heartbeat via the other replica");
    via_one
        .heartbeat(&b, idle())
        .await
        .expect("heartbeat via the other replica");
    // Each replica writes its heartbeats at its next flush; both then rank
    // the same way, well within a second.
    eventually("both replicas rank by the new loads", || {
        let (mut via_one, mut via_two) = (via_one.clone(), via_two.clone());
        let file_id = file_id.clone();
        let expected = vec![b.clone(), a.clone()];
        async move {
            let ids = |s: Vec<pb::Source>| s.into_iter().map(|s| s.peer_id).collect::<Vec<_>>();
            let from_one = ids(via_one
                .locate(&file_id, "", Vec::new())
                .await
                .expect("locate"));
            let from_two = ids(via_two
                .locate(&file_id, "", Vec::new())
                .await
                .expect("locate"));
            (from_one == expected && from_two == expected).then_some(())
        }
    })
    .await;
}

async fn next_event(events: &mut tonic::Streaming<pb::FileEvent>) -> pb::FileEvent {
    tokio::time::timeout(support::WAIT, events.message())
        .await
        .expect("an event arrives in time")
        .expect("stream ok")
        .expect("stream open")
}

async fn watch_files_delivers_publish_and_delete(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let bob = cluster.user("bob").await;
    let writer = cluster.index(&[]).await;
    let watcher = cluster.index(&[]).await;
    let mut via_writer = Index::new(&writer, &bob);
    let mut via_watcher = Index::new(&watcher, &bob);
    let mut events = via_watcher
        .client
        .watch_files(via_watcher.req(pb::WatchFilesRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    let peer = via_writer.register("10.0.7.1:7000", idle()).await;
    let file = via_writer
        .publish(manifest("live.bin", 80, 2), &peer)
        .await
        .expect("publish");
    let file_id = file.file.expect("file").file_id;
    let published = next_event(&mut events).await;
    assert_eq!(published.kind, pb::FileEventKind::Published as i32);
    assert_eq!(published.file_id, file_id);
    let info = published.file.expect("file info");
    assert_eq!(info.name, "live.bin");
    assert_eq!(info.complete_copies, 1);
    assert!(published.at_ms > 0);

    via_writer
        .client
        .delete_file(via_writer.req(pb::DeleteFileRequest {
            file_id: file_id.clone(),
        }))
        .await
        .expect("delete");
    let deleted = next_event(&mut events).await;
    assert_eq!(deleted.kind, pb::FileEventKind::Deleted as i32);
    assert_eq!(deleted.file_id, file_id);
    assert_eq!(deleted.file.expect("id and name").name, "live.bin");
}

async fn an_advertised_address_must_be_the_callers_own_unless_allowed(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let bob = cluster.user("bob").await;
    let strict = cluster.index(&["--allow-advertise-networks", ""]).await;
    let mut as_bob = Index::new(&strict, &bob);
    let refused = as_bob
        .client
        .register_peer(as_bob.req(pb::RegisterPeerRequest {
            advertise_addr: "10.9.9.9:22".into(),
            ..Default::default()
        }))
        .await
        .expect_err("another host's address");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("127.0.0.1"),
        "the refusal names the address seen: {}",
        refused.message()
    );
    let named = as_bob
        .client
        .register_peer(as_bob.req(pb::RegisterPeerRequest {
            advertise_addr: "localhost:7000".into(),
            ..Default::default()
        }))
        .await;
    assert!(named.is_ok(), "a name resolving to the caller: {named:?}");
    as_bob.register("127.0.0.1:7000", idle()).await;

    let allowing = cluster
        .index(&["--allow-advertise-networks", "10.9.0.0/16"])
        .await;
    let mut as_bob = Index::new(&allowing, &bob);
    as_bob.register("10.9.9.9:7000", idle()).await;
    let refused = as_bob
        .client
        .register_peer(as_bob.req(pb::RegisterPeerRequest {
            advertise_addr: "10.8.0.1:7000".into(),
            ..Default::default()
        }))
        .await
        .expect_err("outside the allowed network");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("10.9.0.0/16"),
        "{}",
        refused.message()
    );
}

async fn a_peer_that_moves_is_recorded_where_it_calls_from_and_its_old_address_retired(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&server, &bob);
    let old = index.register("10.0.3.1:7000", idle()).await;
    let file = index
        .publish(manifest("moves.bin", 31, 2), &old)
        .await
        .expect("publish");
    let file_id = file.file.expect("file").file_id;
    let before = index
        .locate(&file_id, "", Vec::new())
        .await
        .expect("locate");
    assert_eq!(before[0].address, "10.0.3.1:7000");

    // The agent's address changed: it registers at the address the index
    // sees, naming the peer id it had.
    let moved = index
        .client
        .register_peer(index.req(pb::RegisterPeerRequest {
            advertise_port: 7001,
            replaces_peer_id: old.clone(),
            load: Some(idle()),
            ..Default::default()
        }))
        .await
        .expect("register at the observed address")
        .into_inner();
    assert_eq!(moved.advertise_addr, "127.0.0.1:7001");
    assert_eq!(moved.observed_ip, "127.0.0.1");
    assert_ne!(moved.peer_id, old);
    // At once, not after the lease: the old address is never offered again.
    assert!(
        index
            .locate(&file_id, "", Vec::new())
            .await
            .expect("locate")
            .is_empty(),
        "the old address is retired at once"
    );
    index
        .update_holdings(&moved.peer_id, &file_id, Vec::new(), true)
        .await
        .expect("the moved peer announces what it holds");
    let after = index
        .locate(&file_id, "", Vec::new())
        .await
        .expect("locate");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].address, "127.0.0.1:7001");
    let heartbeat = index
        .client
        .heartbeat(index.req(pb::HeartbeatRequest {
            peer_id: moved.peer_id.clone(),
            load: Some(idle()),
        }))
        .await
        .expect("heartbeat")
        .into_inner();
    assert_eq!(heartbeat.observed_ip, "127.0.0.1");

    // Nobody retires another user's peer.
    let carol = cluster.user("carol").await;
    let mut as_carol = Index::new(&server, &carol);
    let refused = as_carol
        .client
        .register_peer(as_carol.req(pb::RegisterPeerRequest {
            advertise_port: 7002,
            replaces_peer_id: moved.peer_id.clone(),
            ..Default::default()
        }))
        .await
        .expect_err("another user's peer");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let missing = as_carol
        .client
        .register_peer(as_carol.req(pb::RegisterPeerRequest::default()))
        .await
        .expect_err("neither an address nor a port");
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
}

async fn a_v2_manifest_keeps_its_chaining_values_and_v1_stays_v1(db: Db) {
    let Some(cluster) = Cluster::start(db).await else {
        return;
    };
    let server = cluster.index(&[]).await;
    let bob = cluster.user("bob").await;
    let mut index = Index::new(&server, &bob);
    for (sent, seed) in [
        (manifest_v2("v2.bin", 21, 5), 21),
        (manifest("v1.bin", 22, 5), 22),
    ] {
        let file_id = index
            .publish(sent.clone(), "")
            .await
            .unwrap_or_else(|s| panic!("publish seed {seed}: {s}"))
            .file
            .expect("file info")
            .file_id;
        let got = index
            .get_file(&file_id)
            .await
            .expect("get file")
            .manifest
            .expect("manifest");
        assert_eq!(got.chunk_chaining_values, sent.chunk_chaining_values);
        assert_eq!(got.chunk_hashes, sent.chunk_hashes);
    }
}
