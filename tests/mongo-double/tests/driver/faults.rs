//! Fail points, retryability, topology modes.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mongo_double::Options;
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::ChangeStreamEvent;
use mongodb::change_stream::ChangeStream;
use mongodb::{Client, Collection};

use crate::common::{client, client_for, code_of, message_of, start, start_with};

type Stream = ChangeStream<ChangeStreamEvent<Document>>;

async fn watch(coll: &Collection<Document>) -> Stream {
    coll.watch()
        .max_await_time(Duration::from_millis(200))
        .await
        .unwrap()
}

/// The stream's next event, or the error it ends with, within 10 s.
async fn next_outcome(s: &mut Stream) -> mongodb::error::Result<ChangeStreamEvent<Document>> {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("an outcome within 10 s")
        .expect("stream open")
}

async fn fail(c: &Client, mode: Bson, data: Document) {
    c.database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": mode, "data": data})
        .await
        .expect("configureFailPoint");
}

#[tokio::test]
async fn error_code_fail_point_and_retryable_writes() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("fp").collection::<Document>("w");

    // A non-retryable error reaches the application once, then the fail point is spent.
    fail(
        &c,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["insert"], "errorCode": 2},
    )
    .await;
    let e = coll.insert_one(doc! {"_id": 1}).await.unwrap_err();
    assert_eq!(code_of(&e), Some(2));
    assert!(!e.contains_label("RetryableWriteError"));
    coll.insert_one(doc! {"_id": 1}).await.unwrap();

    // A retryable code gets the RetryableWriteError label, so the driver retries once.
    fail(
        &c,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["insert"], "errorCode": 91},
    )
    .await;
    coll.insert_one(doc! {"_id": 2}).await.unwrap();

    // closeConnection: the driver sees a network error and retries the write.
    fail(
        &c,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["insert"], "closeConnection": true},
    )
    .await;
    coll.insert_one(doc! {"_id": 3}).await.unwrap();

    // A retryable writeConcernError: the write was applied, the retry is answered from the
    // session's record and not applied twice.
    fail(
        &c,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["update"], "writeConcernError": {"code": 91, "errmsg": "Replication is being shut down"}},
    )
    .await;
    coll.update_one(doc! {"_id": 3}, doc! {"$inc": {"n": 1}})
        .await
        .unwrap();
    assert_eq!(
        coll.find_one(doc! {"_id": 3}).await.unwrap(),
        Some(doc! {"_id": 3, "n": 1})
    );
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 3);

    // Errors with explicit labels, skip mode and alwaysOn/off.
    fail(
        &c,
        doc! {"skip": 1}.into(),
        doc! {"failCommands": ["find"], "errorCode": 1234, "errorLabels": ["Custom"]},
    )
    .await;
    coll.find_one(doc! {}).await.unwrap();
    let e = coll.find_one(doc! {}).await.unwrap_err();
    assert_eq!(code_of(&e), Some(1234));
    assert!(e.contains_label("Custom"));
    fail(&c, "off".into(), doc! {}).await;
    coll.find_one(doc! {}).await.unwrap();

    // appName filter: only clients with that name are affected.
    fail(
        &c,
        "alwaysOn".into(),
        doc! {"failCommands": ["find"], "errorCode": 2, "appName": "someone-else"},
    )
    .await;
    coll.find_one(doc! {}).await.unwrap();
    fail(&c, "off".into(), doc! {}).await;
}

#[tokio::test]
async fn close_connection_on_reads_and_block_time() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("fp").collection::<Document>("r");
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    fail(
        &c,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["find"], "closeConnection": true},
    )
    .await;
    assert_eq!(coll.find_one(doc! {}).await.unwrap(), Some(doc! {"_id": 1}));

    fail(
        &c,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["find"], "blockConnection": true, "blockTimeMS": 400},
    )
    .await;
    let t = Instant::now();
    assert_eq!(coll.find_one(doc! {}).await.unwrap(), Some(doc! {"_id": 1}));
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    coll.find_one(doc! {}).await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(400));
}

#[tokio::test]
async fn change_stream_resumes_after_get_more_failures() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("fp").collection::<Document>("cs");
    let mut s = watch(&coll).await;

    fail(
        &c,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "closeConnection": true},
    )
    .await;
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    let ev = next_outcome(&mut s).await.unwrap();
    assert_eq!(ev.document_key, Some(doc! {"_id": 1}));

    // A resumable code thrown once the cursor is checked out: the server labels it
    // ResumableChangeStreamError, so the driver resumes.
    c.database("admin")
        .run_command(doc! {
            "configureFailPoint": "failGetMoreAfterCursorCheckout",
            "mode": {"times": 1},
            "data": {"errorCode": 6},
        })
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 2}).await.unwrap();
    let ev = next_outcome(&mut s).await.unwrap();
    assert_eq!(ev.document_key, Some(doc! {"_id": 2}));

    // A non-resumable one is surfaced.
    fail(
        &c,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "errorCode": 2},
    )
    .await;
    let e = next_outcome(&mut s).await.unwrap_err();
    assert_eq!(code_of(&e), Some(2));
}

/// The spec's "change stream does not resume if error does not contain
/// ResumableChangeStreamError": `failCommand` fails a getMore before its cursor is checked
/// out, so the server cannot tell it belongs to a change stream and adds no label.
#[tokio::test]
async fn fail_command_on_get_more_is_not_resumable_without_a_label() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("fp").collection::<Document>("nolabel");
    let mut s = watch(&coll).await;
    fail(
        &c,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "errorCode": 6},
    )
    .await;
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    let e = next_outcome(&mut s).await.unwrap_err();
    assert_eq!(code_of(&e), Some(6));
    assert!(!e.contains_label("ResumableChangeStreamError"), "{e}");

    // The spec's "change stream resumes if error contains ResumableChangeStreamError": a
    // label given in the fail point is what the server returns.
    let mut s = watch(&coll).await;
    fail(
        &c,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "errorCode": 280, "errorLabels": ["ResumableChangeStreamError"]},
    )
    .await;
    coll.insert_one(doc! {"_id": 2}).await.unwrap();
    let ev = next_outcome(&mut s).await.unwrap();
    assert_eq!(ev.document_key, Some(doc! {"_id": 2}));
}

/// `failGetMoreAfterCursorCheckout` is a fail point of its own: it fires on a getMore whose
/// cursor exists, with "Hit the 'failGetMoreAfterCursorCheckout' failpoint", kills that
/// cursor, and its error gets `ResumableChangeStreamError` only on a change stream.
#[tokio::test]
async fn get_more_after_cursor_checkout_is_a_separate_fail_point() {
    let srv = start().await;
    let c = client(&srv).await;
    let db = c.database("fp");
    let docs: Vec<Document> = (0..5).map(|i| doc! {"_id": i}).collect();
    db.collection::<Document>("plain")
        .insert_many(docs)
        .await
        .unwrap();
    let after_checkout = |data: Document| {
        let admin = c.database("admin");
        async move {
            admin
                .run_command(doc! {
                    "configureFailPoint": "failGetMoreAfterCursorCheckout",
                    "mode": {"times": 1},
                    "data": data,
                })
                .await
                .unwrap();
        }
    };
    let get_more = |id: i64, coll: &'static str| {
        let db = db.clone();
        async move {
            db.run_command(doc! {"getMore": id, "collection": coll, "maxTimeMS": 100})
                .await
        }
    };

    // Both fail points at once: failCommand on insert does not touch getMore, and the
    // unknown cursor is found missing before any checkout.
    fail(
        &c,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["insert"], "errorCode": 2},
    )
    .await;
    after_checkout(doc! {"errorCode": 6}).await;
    let e = get_more(4242, "plain").await.unwrap_err();
    assert_eq!(code_of(&e), Some(43));
    let e = db
        .collection::<Document>("plain")
        .insert_one(doc! {"_id": 9})
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(2));

    let find = db
        .run_command(doc! {"find": "plain", "batchSize": 1})
        .await
        .unwrap();
    let id = find.get_document("cursor").unwrap().get_i64("id").unwrap();
    let e = get_more(id, "plain").await.unwrap_err();
    assert_eq!(code_of(&e), Some(6));
    assert!(
        message_of(&e).contains("Hit the 'failGetMoreAfterCursorCheckout' failpoint"),
        "{e}"
    );
    assert!(!e.contains_label("ResumableChangeStreamError"), "{e}");
    assert_eq!(code_of(&get_more(id, "plain").await.unwrap_err()), Some(43));

    let agg = db
        .run_command(doc! {"aggregate": "plain", "pipeline": [{"$changeStream": {}}], "cursor": {}})
        .await
        .unwrap();
    let id = agg.get_document("cursor").unwrap().get_i64("id").unwrap();
    after_checkout(doc! {"errorCode": 6}).await;
    let e = get_more(id, "plain").await.unwrap_err();
    assert_eq!(code_of(&e), Some(6));
    assert!(e.contains_label("ResumableChangeStreamError"), "{e}");
    assert_eq!(code_of(&get_more(id, "plain").await.unwrap_err()), Some(43));
}

#[tokio::test]
async fn standalone_mode() {
    let srv = start_with(Options {
        standalone: true,
        ..Default::default()
    })
    .await;
    let c = client(&srv).await;
    let hello = c
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert_eq!(hello.get_bool("isWritablePrimary"), Ok(true));
    assert!(hello.get("setName").is_none() && hello.get("hosts").is_none());
    assert!(hello.get("$clusterTime").is_none());
    let coll = c.database("sa").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    let e = coll.watch().await.unwrap_err();
    assert_eq!(code_of(&e), Some(40573));
    assert!(
        e.to_string()
            .contains("The $changeStream stage is only supported on replica sets"),
        "{e}"
    );
}

#[tokio::test]
async fn replica_set_discovery() {
    let srv = start().await;
    let c = client_for(&srv.replica_set_uri()).await;
    let hello = c
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    let me = srv.addr().to_string();
    assert_eq!(hello.get_str("setName"), Ok("rs0"));
    assert_eq!(hello.get_str("me"), Ok(me.as_str()));
    assert_eq!(hello.get_str("primary"), Ok(me.as_str()));
    assert_eq!(
        hello.get_array("hosts").unwrap(),
        &vec![Bson::String(me.clone())]
    );
    assert_eq!(hello.get_i32("maxWireVersion"), Ok(21));
    let coll = c.database("rs").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    let mut s = coll.watch().await.unwrap();
    coll.insert_one(doc! {"_id": 2}).await.unwrap();
    let ev = next_outcome(&mut s).await.unwrap();
    assert_eq!(ev.document_key, Some(doc! {"_id": 2}));
    let build = c
        .database("admin")
        .run_command(doc! {"buildInfo": 1})
        .await
        .unwrap();
    assert!(build.get_str("version").unwrap().starts_with("7.0."));
}
