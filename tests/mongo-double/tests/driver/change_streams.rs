//! Change streams through the driver: events, resume, history loss, invalidation, images.

use std::time::Duration;

use futures_util::StreamExt;
use mongo_double::Options;
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::options::{FullDocumentBeforeChangeType, FullDocumentType};

use crate::common::{client, client_for, code_of, start, start_with, TempDir};

type Stream = ChangeStream<ChangeStreamEvent<Document>>;

async fn next(s: &mut Stream) -> ChangeStreamEvent<Document> {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("event within 10s")
        .expect("stream open")
        .expect("event")
}

fn id_of(ev: &ChangeStreamEvent<Document>) -> Bson {
    ev.document_key
        .as_ref()
        .and_then(|k| k.get("_id"))
        .cloned()
        .unwrap_or(Bson::Null)
}

#[tokio::test]
async fn insert_update_replace_delete_events() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("cs").collection::<Document>("shadows");
    let mut s = coll
        .watch()
        .full_document(FullDocumentType::UpdateLookup)
        .await
        .unwrap();

    coll.insert_one(doc! {"_id": "h1", "temp": 40, "cfg": {"mode": "eco"}, "gone": 1, "log": [1]})
        .await
        .unwrap();
    coll.update_one(
        doc! {"_id": "h1"},
        doc! {"$set": {"cfg.mode": "boost", "cfg.limits.max": 70}, "$inc": {"temp": 2}, "$unset": {"gone": ""}, "$push": {"log": 2}},
    )
    .await
    .unwrap();
    coll.replace_one(doc! {"_id": "h1"}, doc! {"temp": 10})
        .await
        .unwrap();
    coll.delete_one(doc! {"_id": "h1"}).await.unwrap();

    let ins = next(&mut s).await;
    assert_eq!(ins.operation_type, OperationType::Insert);
    assert_eq!(
        ins.ns.as_ref().map(|n| (n.db.as_str(), n.coll.as_deref())),
        Some(("cs", Some("shadows")))
    );
    assert_eq!(id_of(&ins), Bson::String("h1".into()));
    assert_eq!(
        ins.full_document
            .as_ref()
            .and_then(|d| d.get_i32("temp").ok()),
        Some(40)
    );
    assert!(ins.cluster_time.is_some() && ins.wall_time.is_some());

    let upd = next(&mut s).await;
    assert_eq!(upd.operation_type, OperationType::Update);
    let desc = upd.update_description.as_ref().expect("updateDescription");
    assert_eq!(
        desc.updated_fields,
        doc! {"cfg.limits": {"max": 70}, "cfg.mode": "boost", "log.1": 2, "temp": 42}
    );
    assert_eq!(desc.removed_fields, vec!["gone".to_string()]);
    assert_eq!(desc.truncated_arrays.as_ref().map(Vec::len), Some(0));
    // updateLookup returns the document as it is when the event is read: already replaced
    // and deleted here, so null, exactly like the server.
    assert_eq!(upd.full_document, None);

    let rep = next(&mut s).await;
    assert_eq!(rep.operation_type, OperationType::Replace);
    assert_eq!(rep.full_document, Some(doc! {"_id": "h1", "temp": 10}));

    let del = next(&mut s).await;
    assert_eq!(del.operation_type, OperationType::Delete);
    assert_eq!(id_of(&del), Bson::String("h1".into()));
    assert_eq!(del.full_document, None);

    // Resume tokens are opaque {_data: hex} documents and strictly increase.
    let toks: Vec<String> = [&ins, &upd, &rep, &del]
        .iter()
        .map(|e| {
            let d = mongodb::bson::to_document(&e.id).expect("token doc");
            d.get_str("_data").expect("_data").to_string()
        })
        .collect();
    assert!(toks.windows(2).all(|w| w[0] < w[1]), "{toks:?}");
    assert!(s.resume_token().is_some());
}

#[tokio::test]
async fn update_lookup_sees_current_document_and_pipeline_filters() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("cs").collection::<Document>("f");
    let mut s = coll
        .watch()
        .pipeline(vec![
            doc! {"$match": {"operationType": {"$in": ["insert", "update"]}, "fullDocument.kind": "heater"}},
            doc! {"$project": {"fullDocument.secret": 0}},
        ])
        .full_document(FullDocumentType::UpdateLookup)
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 1, "kind": "pump", "secret": "s"})
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 2, "kind": "heater", "secret": "s"})
        .await
        .unwrap();
    coll.delete_one(doc! {"_id": 1}).await.unwrap();
    coll.update_one(doc! {"_id": 2}, doc! {"$set": {"on": true}})
        .await
        .unwrap();

    let a = next(&mut s).await;
    assert_eq!(
        (a.operation_type.clone(), id_of(&a)),
        (OperationType::Insert, Bson::Int32(2))
    );
    assert_eq!(a.full_document, Some(doc! {"_id": 2, "kind": "heater"}));
    let b = next(&mut s).await;
    assert_eq!(b.operation_type, OperationType::Update);
    assert_eq!(
        b.full_document,
        Some(doc! {"_id": 2, "kind": "heater", "on": true})
    );
    assert_eq!(
        b.update_description.map(|d| d.updated_fields),
        Some(doc! {"on": true})
    );
}

#[tokio::test]
async fn resume_after_watcher_restart_delivers_missed_events() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("cs").collection::<Document>("r");
    let mut s = coll.watch().await.unwrap();
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    let first = next(&mut s).await;
    let token: ResumeToken = first.id.clone();
    drop(s);
    for i in 2..=4 {
        coll.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let mut s = coll.watch().resume_after(token.clone()).await.unwrap();
    for i in 2..=4 {
        assert_eq!(id_of(&next(&mut s).await), Bson::Int32(i));
    }
    // start_after behaves the same for an event token.
    let mut s2 = coll.watch().start_after(token).await.unwrap();
    assert_eq!(id_of(&next(&mut s2).await), Bson::Int32(2));
}

#[tokio::test]
async fn resume_after_restarting_the_double_with_dbpath() {
    let dir = TempDir::new("resume");
    let mut srv = start_with(Options {
        dbpath: Some(dir.0.clone()),
        oplog_size: 1000,
        ..Default::default()
    })
    .await;
    let port = srv.port();
    let token = {
        let c = client(&srv).await;
        let coll = c.database("cs").collection::<Document>("p");
        coll.create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"sn": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
        let mut s = coll.watch().await.unwrap();
        coll.insert_one(doc! {"_id": 1, "sn": "a"}).await.unwrap();
        let ev = next(&mut s).await;
        ev.id
    };
    srv.stop().await;
    assert!(!srv.is_running());
    srv.restart().await.unwrap();
    assert_eq!(srv.port(), port);

    let c = client(&srv).await;
    let coll = c.database("cs").collection::<Document>("p");
    // Data and unique index survived.
    assert_eq!(
        coll.find_one(doc! {"_id": 1}).await.unwrap(),
        Some(doc! {"_id": 1, "sn": "a"})
    );
    assert_eq!(
        code_of(
            &coll
                .insert_one(doc! {"_id": 9, "sn": "a"})
                .await
                .unwrap_err()
        ),
        Some(11000)
    );
    // Written while the watcher was away.
    coll.insert_one(doc! {"_id": 2, "sn": "b"}).await.unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"x": 1}})
        .await
        .unwrap();
    let mut s = coll.watch().resume_after(token).await.unwrap();
    let a = next(&mut s).await;
    assert_eq!(
        (a.operation_type.clone(), id_of(&a)),
        (OperationType::Insert, Bson::Int32(2))
    );
    let b = next(&mut s).await;
    assert_eq!(
        (b.operation_type.clone(), id_of(&b)),
        (OperationType::Update, Bson::Int32(1))
    );

    // A second restart while a stream is open: the driver resumes it on its own.
    let mut live = coll.watch().await.unwrap();
    coll.insert_one(doc! {"_id": 3, "sn": "c"}).await.unwrap();
    assert_eq!(id_of(&next(&mut live).await), Bson::Int32(3));
    srv.restart().await.unwrap();
    let writer = client_for(&srv.uri()).await;
    writer
        .database("cs")
        .collection::<Document>("p")
        .insert_one(doc! {"_id": 4, "sn": "d"})
        .await
        .unwrap();
    assert_eq!(id_of(&next(&mut live).await), Bson::Int32(4));
    srv.shutdown().await;
}

#[tokio::test]
async fn history_lost_with_a_small_oplog() {
    let srv = start_with(Options {
        oplog_size: 3,
        ..Default::default()
    })
    .await;
    let c = client(&srv).await;
    let coll = c.database("cs").collection::<Document>("h");
    let mut s = coll.watch().await.unwrap();
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    let token = next(&mut s).await.id;
    drop(s);
    for i in 1..=5 {
        coll.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let e = coll.watch().resume_after(token).await.unwrap_err();
    assert_eq!(code_of(&e), Some(286));
    assert!(e.to_string().contains("ChangeStreamHistoryLost"), "{e}");
    assert!(!e.contains_label("ResumableChangeStreamError"));
    // error_codes.yml puts 286 in the NonResumableChangeStreamError category.
    assert!(e.contains_label("NonResumableChangeStreamError"), "{e}");
    let e = coll
        .watch()
        .start_at_operation_time(mongodb::bson::Timestamp {
            time: 1,
            increment: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(286));
}

#[tokio::test]
async fn drop_invalidates_and_bad_tokens_are_rejected() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("cs").collection::<Document>("gone");
    let mut s = coll.watch().await.unwrap();
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    coll.drop().await.unwrap();
    assert_eq!(next(&mut s).await.operation_type, OperationType::Insert);
    assert_eq!(next(&mut s).await.operation_type, OperationType::Drop);
    let inv = next(&mut s).await;
    assert_eq!(inv.operation_type, OperationType::Invalidate);
    assert!(!s.is_alive());
    let e = coll.watch().resume_after(inv.id.clone()).await.unwrap_err();
    assert_eq!(code_of(&e), Some(260));
    let mut again = coll.watch().start_after(inv.id).await.unwrap();
    coll.insert_one(doc! {"_id": 2}).await.unwrap();
    assert_eq!(id_of(&next(&mut again).await), Bson::Int32(2));

    let garbage: ResumeToken =
        mongodb::bson::from_document(doc! {"_data": "82DEADBEEF"}).expect("token");
    let e = coll.watch().resume_after(garbage).await.unwrap_err();
    assert_eq!(code_of(&e), Some(260));
}

#[tokio::test]
async fn database_stream_and_start_at_operation_time() {
    let srv = start().await;
    let c = client(&srv).await;
    let db = c.database("dbw");
    let reply = db
        .run_command(doc! {"insert": "a", "documents": [{"_id": 1}]})
        .await
        .unwrap();
    let op_time = reply.get_timestamp("operationTime").expect("operationTime");
    let mut s = db.watch().start_at_operation_time(op_time).await.unwrap();
    db.collection::<Document>("b")
        .insert_one(doc! {"_id": 2})
        .await
        .unwrap();
    let first = next(&mut s).await;
    assert_eq!(
        (
            first.ns.as_ref().and_then(|n| n.coll.clone()),
            id_of(&first)
        ),
        (Some("a".into()), Bson::Int32(1))
    );
    let second = next(&mut s).await;
    assert_eq!(
        (
            second.ns.as_ref().and_then(|n| n.coll.clone()),
            id_of(&second)
        ),
        (Some("b".into()), Bson::Int32(2))
    );
}

#[tokio::test]
async fn pre_and_post_images() {
    let srv = start().await;
    let c = client(&srv).await;
    let db = c.database("img");
    db.create_collection("with")
        .change_stream_pre_and_post_images(
            mongodb::options::ChangeStreamPreAndPostImages::builder()
                .enabled(true)
                .build(),
        )
        .await
        .unwrap();
    let with = db.collection::<Document>("with");
    let mut s = with
        .watch()
        .full_document(FullDocumentType::Required)
        .full_document_before_change(FullDocumentBeforeChangeType::Required)
        .await
        .unwrap();
    with.insert_one(doc! {"_id": 1, "v": 1}).await.unwrap();
    with.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .await
        .unwrap();
    with.delete_one(doc! {"_id": 1}).await.unwrap();
    next(&mut s).await;
    let upd = next(&mut s).await;
    assert_eq!(upd.full_document, Some(doc! {"_id": 1, "v": 2}));
    assert_eq!(
        upd.full_document_before_change,
        Some(doc! {"_id": 1, "v": 1})
    );
    let del = next(&mut s).await;
    assert_eq!(
        del.full_document_before_change,
        Some(doc! {"_id": 1, "v": 2})
    );

    // Without changeStreamPreAndPostImages, "required" fails with NoMatchingDocument (47).
    let without = db.collection::<Document>("without");
    let mut s = without
        .watch()
        .full_document(FullDocumentType::Required)
        .await
        .unwrap();
    without.insert_one(doc! {"_id": 1}).await.unwrap();
    next(&mut s).await;
    without
        .update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("reply")
        .expect("item")
        .unwrap_err();
    assert_eq!(code_of(&e), Some(47));
}

#[tokio::test]
async fn concurrent_writers_and_watchers_see_every_event_in_order() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("cs").collection::<Document>("busy");
    let mut watchers = Vec::new();
    for _ in 0..3 {
        watchers.push(coll.watch().await.unwrap());
    }
    let mut cluster = c.watch().await.unwrap();
    let mut writers = Vec::new();
    for w in 0..8 {
        let coll = coll.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..25 {
                coll.insert_one(doc! {"_id": format!("{w}-{i}"), "w": w, "i": i})
                    .await
                    .unwrap();
            }
        }));
    }
    for h in writers {
        h.await.unwrap();
    }
    let mut seen: Vec<Vec<String>> = Vec::new();
    for s in watchers.iter_mut().chain(std::iter::once(&mut cluster)) {
        let mut ids = Vec::new();
        for _ in 0..200 {
            let ev = next(s).await;
            ids.push(id_of(&ev).as_str().unwrap_or_default().to_string());
        }
        seen.push(ids);
    }
    // Every watcher saw all 200 inserts, each writer's in its own order, all in one order.
    for ids in &seen {
        assert_eq!(ids, &seen[0]);
        for w in 0..8 {
            let mine: Vec<&String> = ids
                .iter()
                .filter(|id| id.starts_with(&format!("{w}-")))
                .collect();
            let expected: Vec<String> = (0..25).map(|i| format!("{w}-{i}")).collect();
            assert_eq!(mine, expected.iter().collect::<Vec<_>>());
        }
    }
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 200);
}

#[tokio::test]
async fn drop_database_invalidates_database_streams() {
    let srv = start().await;
    let c = client(&srv).await;
    let db = c.database("dropme");
    let mut s = db.watch().await.unwrap();
    let mut cluster = c.watch().await.unwrap();
    db.collection::<Document>("a")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    db.drop().await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next(&mut s).await.operation_type);
    }
    assert_eq!(
        got,
        vec![
            OperationType::Insert,
            OperationType::Drop,
            OperationType::DropDatabase,
            OperationType::Invalidate
        ]
    );
    assert!(!s.is_alive());
    // A cluster-wide stream sees the same changes and is not invalidated.
    for expected in [
        OperationType::Insert,
        OperationType::Drop,
        OperationType::DropDatabase,
    ] {
        assert_eq!(next(&mut cluster).await.operation_type, expected);
    }
    assert!(cluster.is_alive());
}

/// The event and its resume token of a first insert on a fresh double.
async fn first_event(c: &mongodb::Client) -> ChangeStreamEvent<Document> {
    let coll = c.database("cs").collection::<Document>("twin");
    let mut s = coll.watch().await.unwrap();
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    next(&mut s).await
}

/// Two doubles started together stamp their first writes in the same second with the same
/// cluster time; the token of one must still be unknown to the other (MongoDB compares the
/// whole token — collection UUID, document key — not only its cluster time).
#[tokio::test]
async fn a_token_from_another_deployment_is_not_found() {
    for _ in 0..5 {
        let (a, b) = (start().await, start().await);
        let (ca, cb) = (client(&a).await, client(&b).await);
        // Both inserts early in one second.
        let into_second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        tokio::time::sleep(Duration::from_millis(u64::from(1020 - into_second))).await;
        let (ea, eb) = tokio::join!(first_event(&ca), first_event(&cb));
        if ea.cluster_time != eb.cluster_time {
            continue;
        }
        let coll = cb.database("cs").collection::<Document>("twin");
        let e = coll.watch().resume_after(ea.id).await.unwrap_err();
        assert_eq!(code_of(&e), Some(280), "{e}");
        assert!(
            e.to_string()
                .contains("cannot resume stream; the resume token was not found"),
            "{e}"
        );
        assert!(e.contains_label("NonResumableChangeStreamError"), "{e}");
        // B's own token for the same cluster time resumes.
        let mut s = coll.watch().resume_after(eb.id).await.unwrap();
        coll.insert_one(doc! {"_id": 2}).await.unwrap();
        assert_eq!(id_of(&next(&mut s).await), Bson::Int32(2));
        return;
    }
    panic!("no two first writes in the same second in 5 tries");
}

/// 280 ChangeStreamFatalError is in the NonResumableChangeStreamError category: the server
/// labels it (jstests/change_streams/error_label.js), on a getMore as on an aggregate.
#[tokio::test]
async fn fatal_errors_carry_the_non_resumable_label() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("cs").collection::<Document>("fatal");
    let mut s = coll
        .watch()
        .pipeline(vec![doc! {"$project": {"_id": 0}}])
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("error within 10s")
        .expect("stream open")
        .unwrap_err();
    assert_eq!(code_of(&e), Some(280), "{e}");
    assert!(e.contains_label("NonResumableChangeStreamError"), "{e}");
    assert!(!e.contains_label("ResumableChangeStreamError"), "{e}");

    // Also when a fail point throws it (the server computes the labels when the fail
    // point gives none).
    c.database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": ["aggregate"], "errorCode": 280},
        })
        .await
        .unwrap();
    let e = coll.watch().await.unwrap_err();
    assert_eq!(code_of(&e), Some(280), "{e}");
    assert!(e.contains_label("NonResumableChangeStreamError"), "{e}");
}

fn data_of(token: &Document) -> String {
    token.get_str("_data").expect("_data").to_string()
}

/// One raw getMore on a change stream: its events' tokens and its postBatchResumeToken.
async fn raw_get_more(db: &mongodb::Database, id: i64) -> (Vec<String>, String) {
    let reply = db
        .run_command(doc! {"getMore": id, "collection": "pbrt", "maxTimeMS": 100})
        .await
        .unwrap();
    let cursor = reply.get_document("cursor").unwrap();
    let events = cursor
        .get_array("nextBatch")
        .unwrap()
        .iter()
        .map(|e| data_of(e.as_document().unwrap().get_document("_id").unwrap()))
        .collect();
    (
        events,
        data_of(cursor.get_document("postBatchResumeToken").unwrap()),
    )
}

/// Tokens and postBatchResumeTokens of one deployment never go backwards as strings (as
/// MongoDB's KeyString tokens): the PBRT after a batch's last event is that event's token,
/// or a high-water mark above it once later writes were scanned; and resuming from any
/// PBRT neither repeats nor loses an event.
#[tokio::test]
async fn post_batch_resume_tokens_never_sort_before_returned_events() {
    let srv = start().await;
    let c = client(&srv).await;
    let db = c.database("cs");
    let coll = db.collection::<Document>("pbrt");
    let other = db.collection::<Document>("elsewhere");
    let opened = db
        .run_command(doc! {"aggregate": "pbrt", "pipeline": [{"$changeStream": {}}], "cursor": {}})
        .await
        .unwrap();
    let cursor = opened.get_document("cursor").unwrap();
    let id = cursor.get_i64("id").unwrap();
    let mut seen = vec![data_of(
        cursor.get_document("postBatchResumeToken").unwrap(),
    )];

    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    let (events, after_one) = raw_get_more(&db, id).await;
    assert_eq!(events.len(), 1);
    seen.extend(events.iter().cloned());
    assert!(after_one >= events[0], "{after_one} < {}", events[0]);
    assert_eq!(after_one, events[0]);
    seen.push(after_one.clone());

    // A write the stream does not see moves the high-water mark past the event.
    other.insert_one(doc! {"_id": 1}).await.unwrap();
    let (events, idle) = raw_get_more(&db, id).await;
    assert!(events.is_empty());
    assert!(idle > after_one, "{idle} <= {after_one}");
    seen.push(idle.clone());
    let (_, still) = raw_get_more(&db, id).await;
    assert_eq!(still, idle);

    coll.insert_one(doc! {"_id": 2}).await.unwrap();
    let (events, after_two) = raw_get_more(&db, id).await;
    seen.extend(events.iter().cloned());
    seen.push(after_two.clone());
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");

    // Resuming from each position gives exactly what followed it.
    coll.insert_one(doc! {"_id": 3}).await.unwrap();
    for (token, expected) in [
        (&after_one, vec![2, 3]),
        (&idle, vec![2, 3]),
        (&after_two, vec![3]),
    ] {
        let token: ResumeToken =
            mongodb::bson::from_document(doc! {"_data": token.as_str()}).expect("token");
        let mut s = coll.watch().resume_after(token).await.unwrap();
        for i in expected {
            assert_eq!(id_of(&next(&mut s).await), Bson::Int32(i));
        }
    }
}
