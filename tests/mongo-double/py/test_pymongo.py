"""pymongo against mongo-double: the same scenarios as the Rust driver tests.

Environment (set by run.sh):
  MONGO_DOUBLE_URI             replica-set double (shared by most tests)
  MONGO_DOUBLE_STANDALONE_URI  standalone double
  MONGO_DOUBLE_BIN             the binary, for tests that need their own server
"""

import os
import socket
import subprocess
import tempfile
import time
import unittest

import pymongo
from bson import ObjectId
from pymongo.errors import DuplicateKeyError, OperationFailure

URI = os.environ["MONGO_DOUBLE_URI"]
STANDALONE_URI = os.environ["MONGO_DOUBLE_STANDALONE_URI"]
BIN = os.environ["MONGO_DOUBLE_BIN"]


def connect(uri):
    return pymongo.MongoClient(
        uri, heartbeatFrequencyMS=500, serverSelectionTimeoutMS=10000, appname="py-tests"
    )


def next_event(stream, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ev = stream.try_next()
        if ev is not None:
            return ev
    raise AssertionError("no change event within %.0fs" % timeout)


class OwnServer:
    """A double of our own (for restarts and special options)."""

    def __init__(self, *args, port=0):
        self.args = list(args)
        self.port = port
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [BIN, "--port", str(self.port), *self.args], stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline().strip()
        assert line.startswith("mongo-double listening on "), line
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self.proc:
            self.proc.stdout.close()

    @property
    def uri(self):
        return "mongodb://127.0.0.1:%d/?directConnection=true" % self.port


class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = connect(URI)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def setUp(self):
        self.db = self.client["py_" + self.id().rsplit(".", 1)[-1]]
        self.client.drop_database(self.db.name)

    def fail_point(self, mode, data):
        self.client.admin.command("configureFailPoint", "failCommand", mode=mode, data=data)


class Crud(Base):
    def test_filters_sort_projection_counts(self):
        c = self.db.items
        c.insert_many(
            [
                {"_id": 1, "n": 5, "tags": ["a", "b"], "sub": {"x": 1}, "s": "k"},
                {"_id": 2, "n": 7.5, "tags": ["b"], "sub": {"x": 2}},
                {"_id": 3, "n": 1, "tags": [], "arr": [{"k": 1}, {"k": 9}]},
                {"_id": 4, "n": "text", "sub": {"x": 2}},
                {"_id": 5, "n": None},
            ]
        )

        def ids(flt, **kw):
            return [d["_id"] for d in c.find(flt, **kw)]

        self.assertEqual(ids({"n": 5}), [1])
        self.assertEqual(ids({"n": {"$gt": 1}}), [1, 2])
        self.assertEqual(ids({"n": {"$gte": 1, "$lt": 7.5}}), [1, 3])
        self.assertEqual(ids({"n": {"$lte": 1}}), [3])
        self.assertEqual(ids({"n": {"$ne": 5}}), [2, 3, 4, 5])
        self.assertEqual(ids({"n": {"$eq": "text"}}), [4])
        self.assertEqual(ids({"n": {"$in": [5, "text"]}}), [1, 4])
        self.assertEqual(ids({"n": {"$nin": [5, "text", None]}}), [2, 3])
        self.assertEqual(ids({"sub": {"$exists": True}}), [1, 2, 4])
        self.assertEqual(ids({"n": None}), [5])
        self.assertEqual(ids({"sub.x": 2}), [2, 4])
        self.assertEqual(ids({"tags": "b"}), [1, 2])
        self.assertEqual(ids({"arr.k": 9}), [3])
        self.assertEqual(ids({"$or": [{"_id": 1}, {"$and": [{"sub.x": 2}, {"n": {"$type": "string"}}]}]}), [1, 4])
        self.assertEqual(ids({}, sort=[("n", -1), ("_id", 1)]), [4, 2, 1, 3, 5])
        self.assertEqual(ids({}, sort=[("_id", 1)], skip=1, limit=2), [2, 3])
        self.assertEqual(c.find_one({"_id": 1}, {"sub.x": 1, "s": 1, "_id": 0}), {"sub": {"x": 1}, "s": "k"})
        self.assertEqual(c.find_one({"_id": 2}, {"tags": 0, "sub": 0}), {"_id": 2, "n": 7.5})
        c.insert_many([{"_id": i, "big": True} for i in range(100, 350)])
        self.assertEqual(ids({"big": True}, batch_size=7), list(range(100, 350)))
        self.assertEqual(c.count_documents({"big": True}), 250)
        self.assertEqual(c.count_documents({"big": True}, skip=10, limit=5), 5)
        self.assertEqual(c.estimated_document_count(), 255)
        self.assertEqual(sorted(c.distinct("tags")), ["a", "b"])

    def test_update_operators_and_errors(self):
        c = self.db.upd
        c.insert_one({"_id": 1, "n": 1, "lo": 5, "hi": 5, "gone": 1, "l": [1], "deep": {"a": 1}})
        r = c.update_one(
            {"_id": 1},
            {
                "$set": {"deep.b.c": "new", "s": "x"},
                "$unset": {"gone": ""},
                "$inc": {"n": 4},
                "$min": {"lo": 2},
                "$max": {"hi": 3},
                "$push": {"l": {"$each": [2, 3]}},
                "$setOnInsert": {"never": True},
            },
        )
        self.assertEqual((r.matched_count, r.modified_count), (1, 1))
        self.assertEqual(
            c.find_one({"_id": 1}),
            {"_id": 1, "n": 5, "lo": 2, "hi": 5, "l": [1, 2, 3], "deep": {"a": 1, "b": {"c": "new"}}, "s": "x"},
        )
        self.assertEqual(c.update_one({"_id": 1}, {"$set": {"s": "x"}}).modified_count, 0)
        r = c.update_one({"_id": 2, "kind": "dev"}, {"$set": {"v": 1}, "$setOnInsert": {"created": True}}, upsert=True)
        self.assertEqual(r.upserted_id, 2)
        self.assertEqual(c.find_one({"_id": 2}), {"_id": 2, "kind": "dev", "created": True, "v": 1})
        c.insert_many([{"_id": 10, "g": 1}, {"_id": 11, "g": 1}])
        self.assertEqual(c.update_many({"g": 1}, {"$inc": {"hits": 1}}).modified_count, 2)
        c.replace_one({"_id": 10}, {"only": "this"})
        self.assertEqual(c.find_one({"_id": 10}), {"_id": 10, "only": "this"})
        for update, code in [
            ({"$set": {"_id": 9}}, 66),
            ({"$inc": {"s": 1}}, 14),
            ({"$bogus": {"s": 1}}, 9),
            ({"$set": {"deep": 1, "deep.a": 2}}, 40),
        ]:
            with self.assertRaises(OperationFailure) as cm:
                c.update_one({"_id": 1}, update)
            self.assertEqual(cm.exception.code, code, update)

    def test_delete_and_find_and_modify(self):
        c = self.db.fam
        c.insert_many([{"_id": i, "p": i % 3, "v": i} for i in range(1, 7)])
        self.assertEqual(c.delete_one({"p": 1}).deleted_count, 1)
        self.assertEqual(c.delete_many({"p": 1}).deleted_count, 1)
        got = c.find_one_and_update(
            {"p": {"$in": [0, 2]}},
            {"$set": {"picked": True}},
            sort=[("v", -1)],
            projection={"v": 1, "picked": 1},
            return_document=pymongo.ReturnDocument.AFTER,
        )
        self.assertEqual(got, {"_id": 6, "v": 6, "picked": True})
        self.assertEqual(c.find_one_and_update({"_id": 5}, {"$inc": {"v": 100}}), {"_id": 5, "p": 2, "v": 5})
        up = c.find_one_and_update(
            {"_id": 50}, {"$set": {"v": 1}}, upsert=True, return_document=pymongo.ReturnDocument.AFTER
        )
        self.assertEqual(up, {"_id": 50, "v": 1})
        self.assertIsNone(c.find_one_and_update({"_id": 51}, {"$set": {"v": 1}}))
        self.assertEqual(c.find_one_and_delete({"p": 0}, sort=[("_id", 1)])["_id"], 3)

    def test_unique_index_and_namespaces(self):
        c = self.db.devices
        self.assertEqual(c.create_index("serial", unique=True), "serial_1")
        c.create_index("seen", expireAfterSeconds=3600)
        c.insert_one({"_id": 1, "serial": "A"})
        with self.assertRaises(DuplicateKeyError) as cm:
            c.insert_one({"serial": "A"})
        self.assertEqual(cm.exception.code, 11000)
        self.assertIn("E11000 duplicate key error collection: %s.devices index: serial_1" % self.db.name, str(cm.exception))
        with self.assertRaises(DuplicateKeyError):
            c.insert_one({"_id": 1})
        info = c.index_information()
        self.assertEqual(sorted(info), ["_id_", "seen_1", "serial_1"])
        self.assertTrue(info["serial_1"]["unique"])
        self.assertEqual(info["seen_1"]["expireAfterSeconds"], 3600)
        self.db.create_collection("other")
        with self.assertRaises(OperationFailure) as cm:
            self.db.command("create", "other")
        self.assertEqual(cm.exception.code, 48)
        self.assertEqual(sorted(self.db.list_collection_names()), ["devices", "other"])
        self.db.other.drop()
        self.assertEqual(self.db.list_collection_names(), ["devices"])
        self.assertIn(self.db.name, self.client.list_database_names())
        self.client.drop_database(self.db.name)
        self.assertNotIn(self.db.name, self.client.list_database_names())

    def test_aggregate_and_unknowns(self):
        c = self.db.m
        c.insert_many([{"_id": i, "dev": "d%d" % (i % 2), "t": i * 10} for i in range(1, 7)])
        out = list(
            c.aggregate(
                [
                    {"$match": {"t": {"$gt": 10}}},
                    {"$group": {"_id": "$dev", "sum": {"$sum": "$t"}, "n": {"$sum": 1}}},
                    {"$sort": {"_id": 1}},
                ]
            )
        )
        self.assertEqual(out, [{"_id": "d0", "sum": 120, "n": 3}, {"_id": "d1", "sum": 80, "n": 2}])
        with self.assertRaises(OperationFailure) as cm:
            self.db.command("frobnicate")
        self.assertEqual(cm.exception.code, 59)
        self.assertIn("no such command: 'frobnicate'", str(cm.exception))
        with self.assertRaises(OperationFailure) as cm:
            c.find_one({"t": {"$foo": 1}})
        self.assertEqual(cm.exception.code, 2)
        self.assertIn("unknown operator: $foo", str(cm.exception))


    def test_invalid_ids_are_refused_and_lose_nothing(self):
        c = self.db.ids
        for bad, field in [({"$x": 1}, "$x"), ({"a": {"$b": 1}}, "$b"), ({"a": [{"$c": 1}]}, "$c")]:
            with self.assertRaises(OperationFailure) as cm:
                c.insert_one({"_id": bad})
            self.assertEqual(cm.exception.code, 52, bad)
            self.assertEqual(
                cm.exception.details["errmsg"],
                "_id fields may not contain '$'-prefixed fields: %s is not valid for storage." % field,
            )
        with self.assertRaises(OperationFailure) as cm:
            c.insert_one({"_id": [1, 2]})
        self.assertEqual(cm.exception.code, 53)
        self.assertIn("The '_id' value cannot be of type array", str(cm.exception))
        with self.assertRaises(pymongo.errors.BulkWriteError) as cm:
            c.insert_many([{"_id": 1}, {"_id": {"$x": 1}}, {"_id": 2}], ordered=False)
        self.assertEqual([e["code"] for e in cm.exception.details["writeErrors"]], [52])
        self.assertEqual(c.count_documents({}), 2)
        with self.assertRaises(OperationFailure) as cm:
            c.update_one({"_id": {"k": {"$bad": 1}}}, {"$set": {"v": 1}}, upsert=True)
        self.assertEqual(cm.exception.code, 52)
        self.assertEqual(c.count_documents({}), 2)
        c.insert_one({"_id": {"$ref": "c", "$id": 1}, "$note": "ok"})
        self.assertEqual(c.count_documents({}), 3)

    def test_update_sort_is_refused_as_by_mongodb_7_0(self):
        c = self.db.sorted
        c.insert_many([{"_id": 1, "n": 1}, {"_id": 2, "n": 2}])
        with self.assertRaises(OperationFailure) as cm:
            self.db.command("update", "sorted", updates=[{"q": {}, "u": {"$set": {"top": True}}, "sort": {"n": -1}}])
        self.assertEqual(cm.exception.code, 40415)
        self.assertIn("BSON field 'update.updates.sort' is an unknown field.", str(cm.exception))
        with self.assertRaises(OperationFailure) as cm:
            self.db.command("update", "sorted", updates=[{"q": {}, "u": {"$set": {"top": True}}, "bogus": 1}])
        self.assertEqual(cm.exception.code, 40415)
        self.assertEqual(c.count_documents({"top": True}), 0)
        top = c.find_one_and_update({}, {"$set": {"top": True}}, sort=[("n", -1)])
        self.assertEqual(top, {"_id": 2, "n": 2})
        self.assertEqual(self.client.admin.command("buildInfo")["version"][:4], "7.0.")
        self.assertEqual(self.client.admin.command("hello")["maxWireVersion"], 21)


class ChangeStreams(Base):
    def test_events_and_update_description(self):
        c = self.db.shadows
        with c.watch(full_document="updateLookup", max_await_time_ms=200) as s:
            c.insert_one({"_id": "h1", "temp": 40, "cfg": {"mode": "eco"}, "gone": 1, "log": [1]})
            ins = next_event(s)
            self.assertEqual(ins["operationType"], "insert")
            self.assertEqual(ins["ns"], {"db": self.db.name, "coll": "shadows"})
            self.assertEqual(ins["documentKey"], {"_id": "h1"})
            self.assertEqual(ins["fullDocument"]["temp"], 40)
            self.assertIn("_data", ins["_id"])
            self.assertIn("clusterTime", ins)
            self.assertIn("wallTime", ins)
            c.update_one(
                {"_id": "h1"},
                {"$set": {"cfg.mode": "boost", "cfg.limits.max": 70}, "$inc": {"temp": 2}, "$unset": {"gone": ""}, "$push": {"log": 2}},
            )
            upd = next_event(s)
            self.assertEqual(upd["operationType"], "update")
            self.assertEqual(
                upd["updateDescription"],
                {
                    "updatedFields": {"cfg.limits": {"max": 70}, "cfg.mode": "boost", "log.1": 2, "temp": 42},
                    "removedFields": ["gone"],
                    "truncatedArrays": [],
                },
            )
            self.assertEqual(
                upd["fullDocument"], {"_id": "h1", "temp": 42, "cfg": {"mode": "boost", "limits": {"max": 70}}, "log": [1, 2]}
            )
            c.replace_one({"_id": "h1"}, {"temp": 10})
            rep = next_event(s)
            self.assertEqual((rep["operationType"], rep["fullDocument"]), ("replace", {"_id": "h1", "temp": 10}))
            c.delete_one({"_id": "h1"})
            dele = next_event(s)
            self.assertEqual((dele["operationType"], dele["documentKey"]), ("delete", {"_id": "h1"}))
            self.assertNotIn("fullDocument", dele)
            self.assertTrue(ins["_id"]["_data"] < upd["_id"]["_data"] < rep["_id"]["_data"] < dele["_id"]["_data"])

    def test_pipeline_match(self):
        c = self.db.f
        with c.watch([{"$match": {"operationType": "insert", "fullDocument.kind": "heater"}}], max_await_time_ms=200) as s:
            c.insert_one({"_id": 1, "kind": "pump"})
            c.insert_one({"_id": 2, "kind": "heater"})
            self.assertEqual(next_event(s)["documentKey"], {"_id": 2})

    def test_resume_after_missed_events(self):
        c = self.db.r
        with c.watch(max_await_time_ms=200) as s:
            c.insert_one({"_id": 1})
            token = next_event(s)["_id"]
        for i in range(2, 5):
            c.insert_one({"_id": i})
        with c.watch(resume_after=token, max_await_time_ms=200) as s:
            self.assertEqual([next_event(s)["documentKey"]["_id"] for _ in range(3)], [2, 3, 4])

    def test_resume_after_restarting_the_double(self):
        with tempfile.TemporaryDirectory() as d:
            srv = OwnServer("--dbpath", d)
            try:
                cl = connect(srv.uri)
                c = cl.app.p
                with c.watch(max_await_time_ms=200) as s:
                    c.insert_one({"_id": 1})
                    token = next_event(s)["_id"]
                srv.stop()
                srv.start()
                c.insert_one({"_id": 2})
                c.update_one({"_id": 1}, {"$set": {"x": 1}})
                self.assertEqual(c.find_one({"_id": 1}), {"_id": 1, "x": 1})
                with c.watch(resume_after=token, max_await_time_ms=200) as s:
                    a, b = next_event(s), next_event(s)
                    self.assertEqual((a["operationType"], a["documentKey"]), ("insert", {"_id": 2}))
                    self.assertEqual((b["operationType"], b["updateDescription"]["updatedFields"]), ("update", {"x": 1}))
                cl.close()
            finally:
                srv.stop()

    def test_history_lost(self):
        srv = OwnServer("--oplog-size", "3")
        try:
            cl = connect(srv.uri)
            c = cl.app.h
            with c.watch(max_await_time_ms=200) as s:
                c.insert_one({"_id": 0})
                token = next_event(s)["_id"]
            for i in range(1, 6):
                c.insert_one({"_id": i})
            with self.assertRaises(OperationFailure) as cm:
                c.watch(resume_after=token)
            self.assertEqual(cm.exception.code, 286)
            self.assertFalse(cm.exception.has_error_label("ResumableChangeStreamError"))
            self.assertTrue(cm.exception.has_error_label("NonResumableChangeStreamError"))
            cl.close()
        finally:
            srv.stop()

    def test_token_from_another_deployment_is_not_found(self):
        for _ in range(5):
            a, b = OwnServer(), OwnServer()
            try:
                ca, cb = connect(a.uri), connect(b.uri)
                streams = [cl.cs.twin.watch(max_await_time_ms=200) for cl in (ca, cb)]
                # Both first writes early in one second get the same cluster time.
                time.sleep(1.02 - time.time() % 1)
                for cl in (ca, cb):
                    cl.cs.twin.insert_one({"_id": 1})
                ea, eb = [next_event(s) for s in streams]
                for s in streams:
                    s.close()
                if ea["clusterTime"] != eb["clusterTime"]:
                    continue
                with self.assertRaises(OperationFailure) as cm:
                    cb.cs.twin.watch(resume_after=ea["_id"])
                self.assertEqual(cm.exception.code, 280)
                self.assertIn("cannot resume stream; the resume token was not found", str(cm.exception))
                self.assertTrue(cm.exception.has_error_label("NonResumableChangeStreamError"))
                with cb.cs.twin.watch(resume_after=eb["_id"], max_await_time_ms=200) as s:
                    cb.cs.twin.insert_one({"_id": 2})
                    self.assertEqual(next_event(s)["documentKey"], {"_id": 2})
                ca.close()
                cb.close()
                return
            finally:
                a.stop()
                b.stop()
        self.fail("no two first writes in the same second in 5 tries")

    def test_fatal_errors_carry_the_non_resumable_label(self):
        c = self.db.fatal
        with c.watch([{"$project": {"_id": 0}}], max_await_time_ms=200) as s:
            c.insert_one({"_id": 1})
            with self.assertRaises(OperationFailure) as cm:
                next_event(s)
        self.assertEqual(cm.exception.code, 280)
        self.assertTrue(cm.exception.has_error_label("NonResumableChangeStreamError"))
        self.assertFalse(cm.exception.has_error_label("ResumableChangeStreamError"))
        self.client.admin.command(
            "configureFailPoint", "failCommand", mode={"times": 1}, data={"failCommands": ["aggregate"], "errorCode": 280}
        )
        with self.assertRaises(OperationFailure) as cm:
            c.watch()
        self.assertEqual(cm.exception.code, 280)
        self.assertTrue(cm.exception.has_error_label("NonResumableChangeStreamError"))

    def test_post_batch_resume_tokens_never_sort_before_returned_events(self):
        c = self.db.pbrt

        def get_more(cursor_id):
            cur = self.db.command("getMore", cursor_id, collection="pbrt", maxTimeMS=100)["cursor"]
            return [e["_id"]["_data"] for e in cur["nextBatch"]], cur["postBatchResumeToken"]["_data"]

        opened = self.db.command("aggregate", "pbrt", pipeline=[{"$changeStream": {}}], cursor={})["cursor"]
        seen = [opened["postBatchResumeToken"]["_data"]]
        c.insert_one({"_id": 1})
        events, after_one = get_more(opened["id"])
        self.assertEqual(len(events), 1)
        self.assertEqual(after_one, events[0])
        seen += events + [after_one]
        self.db.elsewhere.insert_one({"_id": 1})
        events, idle = get_more(opened["id"])
        self.assertEqual(events, [])
        self.assertGreater(idle, after_one)
        self.assertEqual(get_more(opened["id"])[1], idle)
        seen.append(idle)
        c.insert_one({"_id": 2})
        events, after_two = get_more(opened["id"])
        seen += events + [after_two]
        self.assertEqual(seen, sorted(seen))
        c.insert_one({"_id": 3})
        for token, expected in [(after_one, [2, 3]), (idle, [2, 3]), (after_two, [3])]:
            with c.watch(resume_after={"_data": token}, max_await_time_ms=200) as s:
                self.assertEqual([next_event(s)["documentKey"]["_id"] for _ in expected], expected)

    def test_drop_invalidates(self):
        c = self.db.gone
        with c.watch(max_await_time_ms=200) as s:
            c.insert_one({"_id": 1})
            c.drop()
            self.assertEqual([next_event(s)["operationType"] for _ in range(3)], ["insert", "drop", "invalidate"])
            self.assertFalse(s.alive)


class FailPoints(Base):
    def tearDown(self):
        self.fail_point("off", {})
        self.client.admin.command("configureFailPoint", "failGetMoreAfterCursorCheckout", mode="off")

    def after_checkout(self, data):
        self.client.admin.command("configureFailPoint", "failGetMoreAfterCursorCheckout", mode={"times": 1}, data=data)

    def test_error_code_close_connection_and_block(self):
        c = self.db.w
        self.fail_point({"times": 1}, {"failCommands": ["insert"], "errorCode": 2})
        with self.assertRaises(OperationFailure) as cm:
            c.insert_one({"_id": 1})
        self.assertEqual(cm.exception.code, 2)
        c.insert_one({"_id": 1})
        self.fail_point({"times": 1}, {"failCommands": ["insert"], "errorCode": 91})
        c.insert_one({"_id": 2})
        self.fail_point({"times": 1}, {"failCommands": ["insert"], "closeConnection": True})
        c.insert_one({"_id": 3})
        self.fail_point({"times": 1}, {"failCommands": ["find"], "closeConnection": True})
        self.assertEqual(c.count_documents({}), 3)
        self.fail_point({"times": 1}, {"failCommands": ["find"], "blockConnection": True, "blockTimeMS": 300})
        t = time.monotonic()
        self.assertEqual(c.find_one({"_id": 1}), {"_id": 1})
        self.assertGreaterEqual(time.monotonic() - t, 0.3)

    def test_change_stream_resumes_after_closed_connection(self):
        c = self.db.cs
        with c.watch(max_await_time_ms=200) as s:
            self.fail_point({"times": 1}, {"failCommands": ["getMore"], "closeConnection": True})
            c.insert_one({"_id": 1})
            self.assertEqual(next_event(s)["documentKey"], {"_id": 1})


    def test_fail_command_on_get_more_is_not_resumable_without_a_label(self):
        c = self.db.nolabel
        with c.watch(max_await_time_ms=200) as s:
            self.fail_point({"times": 1}, {"failCommands": ["getMore"], "errorCode": 6})
            c.insert_one({"_id": 1})
            with self.assertRaises(OperationFailure) as cm:
                next_event(s)
            self.assertEqual(cm.exception.code, 6)
            self.assertFalse(cm.exception.has_error_label("ResumableChangeStreamError"))
        with c.watch(max_await_time_ms=200) as s:
            self.fail_point(
                {"times": 1},
                {"failCommands": ["getMore"], "errorCode": 280, "errorLabels": ["ResumableChangeStreamError"]},
            )
            c.insert_one({"_id": 2})
            self.assertEqual(next_event(s)["documentKey"], {"_id": 2})

    def test_change_stream_resumes_after_get_more_after_cursor_checkout(self):
        c = self.db.checkout
        with c.watch(max_await_time_ms=200) as s:
            self.after_checkout({"errorCode": 6})
            c.insert_one({"_id": 1})
            self.assertEqual(next_event(s)["documentKey"], {"_id": 1})

    def test_get_more_after_cursor_checkout_is_a_separate_fail_point(self):
        c = self.db.plain
        c.insert_many([{"_id": i} for i in range(5)])
        self.fail_point({"times": 1}, {"failCommands": ["insert"], "errorCode": 2})
        self.after_checkout({"errorCode": 6})
        with self.assertRaises(OperationFailure) as cm:
            self.db.command("getMore", 4242, collection="plain")
        self.assertEqual(cm.exception.code, 43)
        with self.assertRaises(OperationFailure) as cm:
            c.insert_one({"_id": 9})
        self.assertEqual(cm.exception.code, 2)
        cursor_id = self.db.command("find", "plain", batchSize=1)["cursor"]["id"]
        with self.assertRaises(OperationFailure) as cm:
            self.db.command("getMore", cursor_id, collection="plain")
        self.assertEqual(cm.exception.code, 6)
        self.assertIn("Hit the 'failGetMoreAfterCursorCheckout' failpoint", str(cm.exception))
        self.assertFalse(cm.exception.has_error_label("ResumableChangeStreamError"))
        with self.assertRaises(OperationFailure) as cm:
            self.db.command("getMore", cursor_id, collection="plain")
        self.assertEqual(cm.exception.code, 43)
        stream_id = self.db.command("aggregate", "plain", pipeline=[{"$changeStream": {}}], cursor={})["cursor"]["id"]
        self.after_checkout({"errorCode": 6})
        with self.assertRaises(OperationFailure) as cm:
            self.db.command("getMore", stream_id, collection="plain", maxTimeMS=100)
        self.assertEqual(cm.exception.code, 6)
        self.assertTrue(cm.exception.has_error_label("ResumableChangeStreamError"))


class Topology(unittest.TestCase):
    def test_standalone(self):
        cl = connect(STANDALONE_URI)
        hello = cl.admin.command("hello")
        self.assertTrue(hello["isWritablePrimary"])
        self.assertNotIn("setName", hello)
        self.assertNotIn("hosts", hello)
        with self.assertRaises(OperationFailure) as cm:
            cl.app.c.watch()
        self.assertEqual(cm.exception.code, 40573)
        cl.close()

    def test_replica_set_discovery(self):
        port = int(URI.rsplit(":", 1)[1].split("/")[0])
        cl = connect("mongodb://127.0.0.1:%d/?replicaSet=rs0" % port)
        hello = cl.admin.command("hello")
        me = "127.0.0.1:%d" % port
        self.assertEqual((hello["setName"], hello["me"], hello["primary"], hello["hosts"]), ("rs0", me, me, [me]))
        self.assertEqual(cl.primary, ("127.0.0.1", port))
        cl.py_topology.c.insert_one({"_id": ObjectId()})
        cl.close()

    def test_garbage_closes_only_that_connection(self):
        port = int(URI.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(s.recv(1), b"")
        cl = connect(URI)
        self.assertEqual(cl.admin.command("ping")["ok"], 1.0)
        cl.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
