//! CRUD, operators, indexes and namespace commands through the driver.

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::IndexModel;

use crate::common::{client, code_of, message_of, start};

async fn ids(cursor: mongodb::Cursor<Document>) -> Vec<i32> {
    let docs: Vec<Document> = cursor.try_collect().await.expect("collect");
    docs.iter()
        .map(|d| d.get_i32("_id").expect("_id"))
        .collect()
}

#[tokio::test]
async fn insert_find_filters_sort_projection() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("app").collection::<Document>("items");
    coll.insert_many(vec![
        doc! {"_id": 1, "n": 5, "tags": ["a", "b"], "sub": {"x": 1}, "s": "k"},
        doc! {"_id": 2, "n": 7.5, "tags": ["b"], "sub": {"x": 2}},
        doc! {"_id": 3, "n": 1_i64, "tags": [], "arr": [{"k": 1}, {"k": 9}]},
        doc! {"_id": 4, "n": "text", "sub": {"x": 2}},
        doc! {"_id": 5, "n": Bson::Null},
    ])
    .await
    .expect("insert");

    let f = |filter: Document| coll.find(filter);
    assert_eq!(ids(f(doc! {"n": 5}).await.unwrap()).await, vec![1]);
    assert_eq!(
        ids(f(doc! {"n": {"$gt": 1}}).await.unwrap()).await,
        vec![1, 2]
    );
    assert_eq!(
        ids(f(doc! {"n": {"$gte": 1, "$lt": 7.5}}).await.unwrap()).await,
        vec![1, 3]
    );
    assert_eq!(
        ids(f(doc! {"n": {"$lte": 1}}).await.unwrap()).await,
        vec![3]
    );
    assert_eq!(
        ids(f(doc! {"n": {"$ne": 5}}).await.unwrap()).await,
        vec![2, 3, 4, 5]
    );
    assert_eq!(
        ids(f(doc! {"n": {"$eq": "text"}}).await.unwrap()).await,
        vec![4]
    );
    assert_eq!(
        ids(f(doc! {"n": {"$in": [5, "text"]}}).await.unwrap()).await,
        vec![1, 4]
    );
    assert_eq!(
        ids(f(doc! {"n": {"$nin": [5, "text", null]}}).await.unwrap()).await,
        vec![2, 3]
    );
    assert_eq!(
        ids(f(doc! {"sub": {"$exists": true}}).await.unwrap()).await,
        vec![1, 2, 4]
    );
    assert_eq!(
        ids(f(doc! {"s": {"$exists": false}}).await.unwrap()).await,
        vec![2, 3, 4, 5]
    );
    assert_eq!(ids(f(doc! {"n": null}).await.unwrap()).await, vec![5]);
    assert_eq!(ids(f(doc! {"sub.x": 2}).await.unwrap()).await, vec![2, 4]);
    assert_eq!(ids(f(doc! {"tags": "b"}).await.unwrap()).await, vec![1, 2]);
    assert_eq!(
        ids(f(doc! {"tags": ["a", "b"]}).await.unwrap()).await,
        vec![1]
    );
    assert_eq!(ids(f(doc! {"arr.k": 9}).await.unwrap()).await, vec![3]);
    assert_eq!(
        ids(
            f(doc! {"$or": [{"_id": 1}, {"$and": [{"sub.x": 2}, {"n": {"$type": "string"}}]}]})
                .await
                .unwrap()
        )
        .await,
        vec![1, 4]
    );

    // Multi-key sort across BSON types, skip/limit, projection.
    let sorted = coll
        .find(doc! {})
        .sort(doc! {"n": -1, "_id": 1})
        .await
        .unwrap();
    assert_eq!(ids(sorted).await, vec![4, 2, 1, 3, 5]);
    let page = coll
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .skip(1)
        .limit(2)
        .await
        .unwrap();
    assert_eq!(ids(page).await, vec![2, 3]);
    let one = coll
        .find_one(doc! {"_id": 1})
        .projection(doc! {"sub.x": 1, "s": 1, "_id": 0})
        .await
        .unwrap()
        .expect("doc");
    assert_eq!(one, doc! {"sub": {"x": 1}, "s": "k"});
    let excl = coll
        .find_one(doc! {"_id": 2})
        .projection(doc! {"tags": 0, "sub": 0})
        .await
        .unwrap();
    assert_eq!(excl, Some(doc! {"_id": 2, "n": 7.5}));

    // Batches: a small batchSize forces getMore round trips.
    let many: Vec<Document> = (100..350).map(|i| doc! {"_id": i, "big": true}).collect();
    coll.insert_many(many).await.unwrap();
    let got = ids(coll.find(doc! {"big": true}).batch_size(7).await.unwrap()).await;
    assert_eq!(got, (100..350).collect::<Vec<_>>());
    assert_eq!(coll.count_documents(doc! {"big": true}).await.unwrap(), 250);
    assert_eq!(
        coll.count_documents(doc! {"big": true})
            .skip(10)
            .limit(5)
            .await
            .unwrap(),
        5
    );
    assert_eq!(coll.estimated_document_count().await.unwrap(), 255);
    let distinct = coll.distinct("tags", doc! {}).await.unwrap();
    assert_eq!(
        distinct,
        vec![Bson::String("a".into()), Bson::String("b".into())]
    );
}

#[tokio::test]
async fn update_operators() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("app").collection::<Document>("upd");
    coll.insert_one(
        doc! {"_id": 1, "n": 1, "lo": 5, "hi": 5, "gone": 1, "l": [1], "deep": {"a": 1}},
    )
    .await
    .unwrap();

    let r = coll
        .update_one(
            doc! {"_id": 1},
            doc! {
                "$set": {"deep.b.c": "new", "s": "x"},
                "$unset": {"gone": ""},
                "$inc": {"n": 4},
                "$min": {"lo": 2},
                "$max": {"hi": 3},
                "$push": {"l": {"$each": [2, 3]}},
                "$setOnInsert": {"never": true},
            },
        )
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (1, 1));
    let d = coll.find_one(doc! {"_id": 1}).await.unwrap().unwrap();
    assert_eq!(
        d,
        doc! {"_id": 1, "n": 5, "lo": 2, "hi": 5, "l": [1, 2, 3], "deep": {"a": 1, "b": {"c": "new"}}, "s": "x"}
    );

    // A no-op update matches but modifies nothing.
    let r = coll
        .update_one(doc! {"_id": 1}, doc! {"$set": {"s": "x"}})
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (1, 0));

    // Upsert with $setOnInsert and equality fields from the filter.
    let r = coll
        .update_one(
            doc! {"_id": 2, "kind": "dev"},
            doc! {"$set": {"v": 1}, "$setOnInsert": {"created": true}},
        )
        .upsert(true)
        .await
        .unwrap();
    assert_eq!(r.upserted_id, Some(Bson::Int32(2)));
    assert_eq!(
        coll.find_one(doc! {"_id": 2}).await.unwrap(),
        Some(doc! {"_id": 2, "created": true, "kind": "dev", "v": 1})
    );

    // multi
    coll.insert_many(vec![
        doc! {"_id": 10, "g": 1},
        doc! {"_id": 11, "g": 1},
        doc! {"_id": 12, "g": 2},
    ])
    .await
    .unwrap();
    let r = coll
        .update_many(doc! {"g": 1}, doc! {"$inc": {"hits": 1}})
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (2, 2));

    // Replacement keeps _id; replace upsert takes _id from the filter.
    let r = coll
        .replace_one(doc! {"_id": 12}, doc! {"only": "this"})
        .await
        .unwrap();
    assert_eq!(r.modified_count, 1);
    assert_eq!(
        coll.find_one(doc! {"_id": 12}).await.unwrap(),
        Some(doc! {"_id": 12, "only": "this"})
    );
    let r = coll
        .replace_one(doc! {"_id": 13}, doc! {"fresh": 1})
        .upsert(true)
        .await
        .unwrap();
    assert_eq!(r.upserted_id, Some(Bson::Int32(13)));

    // Errors MongoDB gives.
    let e = coll
        .update_one(doc! {"_id": 1}, doc! {"$set": {"_id": 99}})
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(66));
    let e = coll
        .update_one(doc! {"_id": 1}, doc! {"$inc": {"s": 1}})
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(14));
    let e = coll
        .update_one(doc! {"_id": 1}, doc! {"$bogus": {"s": 1}})
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(9));
    assert!(e.to_string().contains("Unknown modifier: $bogus"), "{e}");
    let e = coll
        .update_one(doc! {"_id": 1}, doc! {"$set": {"deep": 1, "deep.a": 2}})
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(40));
}

#[tokio::test]
async fn delete_and_find_and_modify() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("app").collection::<Document>("fam");
    coll.insert_many(
        (1..=6)
            .map(|i| doc! {"_id": i, "p": i % 3, "v": i})
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();

    assert_eq!(
        coll.delete_one(doc! {"p": 1}).await.unwrap().deleted_count,
        1
    );
    assert_eq!(
        coll.delete_many(doc! {"p": 1}).await.unwrap().deleted_count,
        1
    );
    assert_eq!(
        coll.delete_many(doc! {"p": 9}).await.unwrap().deleted_count,
        0
    );

    // findAndModify: sort picks the target, `new` returns the post-image, fields projects.
    let got = coll
        .find_one_and_update(doc! {"p": {"$in": [0, 2]}}, doc! {"$set": {"picked": true}})
        .sort(doc! {"v": -1})
        .return_document(ReturnDocument::After)
        .projection(doc! {"v": 1, "picked": 1})
        .await
        .unwrap();
    assert_eq!(got, Some(doc! {"_id": 6, "v": 6, "picked": true}));
    let before = coll
        .find_one_and_update(doc! {"_id": 5}, doc! {"$inc": {"v": 100}})
        .return_document(ReturnDocument::Before)
        .await
        .unwrap();
    assert_eq!(before, Some(doc! {"_id": 5, "p": 2, "v": 5}));
    let up = coll
        .find_one_and_update(doc! {"_id": 50}, doc! {"$set": {"v": 1}})
        .upsert(true)
        .return_document(ReturnDocument::After)
        .await
        .unwrap();
    assert_eq!(up, Some(doc! {"_id": 50, "v": 1}));
    let none = coll
        .find_one_and_update(doc! {"_id": 51}, doc! {"$set": {"v": 1}})
        .await
        .unwrap();
    assert_eq!(none, None);
    let replaced = coll
        .find_one_and_replace(doc! {"_id": 50}, doc! {"r": 2})
        .return_document(ReturnDocument::After)
        .await
        .unwrap();
    assert_eq!(replaced, Some(doc! {"_id": 50, "r": 2}));
    let removed = coll
        .find_one_and_delete(doc! {"p": 0})
        .sort(doc! {"_id": 1})
        .await
        .unwrap();
    assert_eq!(removed.and_then(|d| d.get_i32("_id").ok()), Some(3));
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 4);
}

#[tokio::test]
async fn unique_indexes_and_namespaces() {
    let srv = start().await;
    let c = client(&srv).await;
    let db = c.database("inv");
    let coll = db.collection::<Document>("devices");
    let name = coll
        .create_index(
            IndexModel::builder()
                .keys(doc! {"serial": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .unwrap()
        .index_name;
    assert_eq!(name, "serial_1");
    coll.create_index(
        IndexModel::builder()
            .keys(doc! {"seen": 1})
            .options(
                IndexOptions::builder()
                    .expire_after(std::time::Duration::from_secs(3600))
                    .build(),
            )
            .build(),
    )
    .await
    .unwrap();
    coll.insert_one(doc! {"_id": 1, "serial": "A"})
        .await
        .unwrap();
    let e = coll
        .insert_one(doc! {"_id": 2, "serial": "A"})
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(11000));
    assert_eq!(
        message_of(&e),
        "E11000 duplicate key error collection: inv.devices index: serial_1 dup key: { serial: \"A\" }"
    );
    let e = coll
        .insert_one(doc! {"_id": 1, "serial": "B"})
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(11000));
    // Ordered insert_many stops at the first error; unordered keeps going.
    let e = coll
        .insert_many(vec![
            doc! {"_id": 3, "serial": "C"},
            doc! {"_id": 4, "serial": "A"},
            doc! {"_id": 5, "serial": "D"},
        ])
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(11000));
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2);
    coll.insert_many(vec![
        doc! {"_id": 6, "serial": "A"},
        doc! {"_id": 7, "serial": "E"},
    ])
    .ordered(false)
    .await
    .unwrap_err();
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 3);
    // Updates that would collide are rejected too.
    let e = coll
        .update_one(doc! {"_id": 7}, doc! {"$set": {"serial": "A"}})
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(11000));

    let indexes: Vec<IndexModel> = coll
        .list_indexes()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let names: Vec<String> = indexes
        .iter()
        .filter_map(|i| i.options.as_ref().and_then(|o| o.name.clone()))
        .collect();
    assert_eq!(names, vec!["_id_", "serial_1", "seen_1"]);
    assert_eq!(
        indexes[2].options.as_ref().and_then(|o| o.expire_after),
        Some(std::time::Duration::from_secs(3600))
    );

    db.create_collection("other").await.unwrap();
    let e = db.create_collection("other").await.unwrap_err();
    assert_eq!(code_of(&e), Some(48));
    let mut colls = db.list_collection_names().await.unwrap();
    colls.sort();
    assert_eq!(colls, vec!["devices", "other"]);
    assert!(c
        .list_database_names()
        .await
        .unwrap()
        .contains(&"inv".to_string()));
    db.collection::<Document>("other").drop().await.unwrap();
    assert_eq!(db.list_collection_names().await.unwrap(), vec!["devices"]);
    let e = db
        .collection::<Document>("nope")
        .list_index_names()
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(26));
    db.drop().await.unwrap();
    assert!(!c
        .list_database_names()
        .await
        .unwrap()
        .contains(&"inv".to_string()));
}

#[tokio::test]
async fn aggregate_and_unknowns() {
    let srv = start().await;
    let c = client(&srv).await;
    let db = c.database("agg");
    let coll = db.collection::<Document>("m");
    coll.insert_many(
        (1..=6)
            .map(|i| doc! {"_id": i, "dev": format!("d{}", i % 2), "t": i * 10})
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let out: Vec<Document> = coll
        .aggregate(vec![
            doc! {"$match": {"t": {"$gt": 10}}},
            doc! {"$group": {"_id": "$dev", "sum": {"$sum": "$t"}, "n": {"$sum": 1}, "max": {"$max": "$t"}}},
            doc! {"$sort": {"_id": 1}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            doc! {"_id": "d0", "sum": 120, "n": 3, "max": 60},
            doc! {"_id": "d1", "sum": 80, "n": 2, "max": 50}
        ]
    );
    let out: Vec<Document> = coll
        .aggregate(vec![
            doc! {"$sort": {"t": -1}},
            doc! {"$skip": 1},
            doc! {"$limit": 2},
            doc! {"$project": {"t": 1, "_id": 0}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(out, vec![doc! {"t": 50}, doc! {"t": 40}]);

    let e = db.run_command(doc! {"frobnicate": 1}).await.unwrap_err();
    assert_eq!(code_of(&e), Some(59));
    assert!(
        e.to_string().contains("no such command: 'frobnicate'"),
        "{e}"
    );
    let e = coll.find_one(doc! {"t": {"$foo": 1}}).await.unwrap_err();
    assert_eq!(code_of(&e), Some(2));
    assert!(e.to_string().contains("unknown operator: $foo"), "{e}");
    let e = coll.find_one(doc! {"$where": "1"}).await.unwrap_err();
    assert_eq!(code_of(&e), Some(2));
    let e = coll
        .aggregate(vec![doc! {"$lookup": {}}])
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(40324));
}

/// MongoDB refuses a `$`-prefixed field anywhere inside an object `_id` (DBRefs excepted)
/// with 52, and an array, regex or undefined `_id` with 53 — on insert and on upsert.
#[tokio::test]
async fn invalid_ids_are_refused_and_lose_nothing() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("app").collection::<Document>("ids");
    for (id, field) in [
        (doc! {"$x": 1}, "$x"),
        (doc! {"a": {"$b": 1}}, "$b"),
        (doc! {"a": [{"$c": 1}]}, "$c"),
    ] {
        let e = coll.insert_one(doc! {"_id": id.clone()}).await.unwrap_err();
        assert_eq!(code_of(&e), Some(52), "{id}: {e}");
        assert_eq!(
            message_of(&e),
            format!(
                "_id fields may not contain '$'-prefixed fields: {field} is not valid for storage."
            ),
        );
    }
    let e = coll.insert_one(doc! {"_id": [1, 2]}).await.unwrap_err();
    assert_eq!(code_of(&e), Some(53));
    assert_eq!(message_of(&e), "The '_id' value cannot be of type array");

    // An unordered batch keeps the good documents.
    let e = coll
        .insert_many(vec![
            doc! {"_id": 1},
            doc! {"_id": {"$x": 1}},
            doc! {"_id": 2},
        ])
        .ordered(false)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(52));
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2);

    // An upsert seeding `_id` from its filter.
    let e = coll
        .update_one(doc! {"_id": {"k": {"$bad": 1}}}, doc! {"$set": {"v": 1}})
        .upsert(true)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(52), "{e}");
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2);

    // A DBRef is a valid `_id`, and top-level `$` fields elsewhere are allowed since 5.0.
    coll.insert_one(doc! {"_id": {"$ref": "c", "$id": 1}, "$note": "ok"})
        .await
        .unwrap();
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 3);
}

/// The double imitates MongoDB 7.0, whose update statements are strictly parsed: `sort`
/// (an 8.0 option) and unknown fields are refused with 40415 and nothing is updated.
#[tokio::test]
async fn update_sort_is_refused_as_by_mongodb_7_0() {
    let srv = start().await;
    let c = client(&srv).await;
    let coll = c.database("app").collection::<Document>("sorted");
    coll.insert_many(vec![doc! {"_id": 1, "n": 1}, doc! {"_id": 2, "n": 2}])
        .await
        .unwrap();
    let e = coll
        .update_one(doc! {}, doc! {"$set": {"top": true}})
        .sort(doc! {"n": -1})
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(40415), "{e}");
    assert_eq!(
        message_of(&e),
        "BSON field 'update.updates.sort' is an unknown field."
    );
    let e = c
        .database("app")
        .run_command(doc! {"update": "sorted", "updates": [{"q": {}, "u": {"$set": {"top": true}}, "bogus": 1}]})
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(40415), "{e}");
    assert_eq!(coll.count_documents(doc! {"top": true}).await.unwrap(), 0);
    // findAndModify has always had `sort`.
    let top = coll
        .find_one_and_update(doc! {}, doc! {"$set": {"top": true}})
        .sort(doc! {"n": -1})
        .await
        .unwrap();
    assert_eq!(top, Some(doc! {"_id": 2, "n": 2}));
}
