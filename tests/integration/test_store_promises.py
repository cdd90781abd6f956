"""The MongoDB behaviours the platform relies on, checked against the server the tests use.

Runs against the embedded server (the patched FerretDB on PostgreSQL that ``deploy/local``
starts) and against any server named by ``FLEETDESK_TEST_MONGO_URL``, real MongoDB included:
whatever the platform assumes of its database is written down here and must hold on both.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo import (
    ASCENDING,
    DESCENDING,
    AsyncMongoClient,
    IndexModel,
    ReplaceOne,
    ReturnDocument,
    UpdateOne,
)
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from shared.config import MongoSettings
from shared.store import Mongo
from tests.support import uses_index

pytestmark = pytest.mark.integration

Doc = dict[str, Any]
CLIENTS = 20
ROUNDS = 100


@pytest.fixture
async def db(mongo_settings: MongoSettings) -> AsyncIterator[AsyncDatabase[Doc]]:
    # A pool large enough that the 20 contenders really run at the same time.
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        mongo_settings.url.get_secret_value(), maxPoolSize=CLIENTS + 5, tz_aware=True
    )
    try:
        yield client[f"{mongo_settings.database_prefix}_promises"]
    finally:
        await client.close()


def collection(db: AsyncDatabase[Doc]) -> AsyncCollection[Doc]:
    return db[f"c{uuid.uuid4().hex[:8]}"]


async def test_conditional_update_has_exactly_one_winner(db: AsyncDatabase[Doc]) -> None:
    coll = collection(db)
    await coll.insert_many([{"_id": r, "v": 0} for r in range(ROUNDS)])
    winners_per_round = []
    for r in range(ROUNDS):
        results = await asyncio.gather(
            *(coll.update_one({"_id": r, "v": 0}, {"$set": {"v": 1}}) for _ in range(CLIENTS))
        )
        winners_per_round.append(sum(res.modified_count for res in results))
        assert sum(res.matched_count for res in results) == winners_per_round[-1]
    assert winners_per_round == [1] * ROUNDS
    assert await coll.count_documents({"v": 1}) == ROUNDS


async def test_find_one_and_update_has_exactly_one_winner(db: AsyncDatabase[Doc]) -> None:
    coll = collection(db)
    await coll.insert_many([{"_id": r, "state": "free"} for r in range(ROUNDS)])
    winners_per_round = []
    for r in range(ROUNDS):
        results = await asyncio.gather(
            *(
                coll.find_one_and_update(
                    {"_id": r, "state": "free"},
                    {"$set": {"state": "taken", "by": client}},
                    return_document=ReturnDocument.AFTER,
                )
                for client in range(CLIENTS)
            )
        )
        won = [doc for doc in results if doc is not None]
        winners_per_round.append(len(won))
        stored = await coll.find_one({"_id": r})
        assert stored is not None and won and stored["by"] == won[0]["by"]
    assert winners_per_round == [1] * ROUNDS


async def test_concurrent_updates_of_one_document_lose_nothing(db: AsyncDatabase[Doc]) -> None:
    """What the outbox rests on: a writer adding entries while the relay removes others."""
    coll = collection(db)
    await coll.insert_one({"_id": "doc", "n": 0, "outbox": {f"old{i}": i for i in range(CLIENTS)}})
    await asyncio.gather(
        *(coll.update_one({"_id": "doc"}, {"$inc": {"n": 1}}) for _ in range(CLIENTS)),
        *(coll.update_one({"_id": "doc"}, {"$set": {f"outbox.new{i}": i}}) for i in range(CLIENTS)),
        *(
            coll.update_one({"_id": "doc"}, {"$unset": {f"outbox.old{i}": ""}})
            for i in range(CLIENTS)
        ),
    )
    doc = await coll.find_one({"_id": "doc"})
    assert doc is not None
    assert doc["n"] == CLIENTS
    assert sorted(doc["outbox"]) == sorted(f"new{i}" for i in range(CLIENTS))


async def test_unique_index_under_concurrent_inserts(db: AsyncDatabase[Doc]) -> None:
    coll = collection(db)
    await coll.create_indexes([IndexModel([("email", ASCENDING)], name="email", unique=True)])

    async def insert(i: int) -> bool:
        try:
            await coll.insert_one({"_id": f"u{i}", "email": "same@example.com"})
            return True
        except DuplicateKeyError:
            return False

    for _ in range(10):
        await coll.delete_many({})
        assert sum(await asyncio.gather(*(insert(i) for i in range(CLIENTS)))) == 1
    assert await coll.count_documents({}) == 1


async def test_bulk_write_of_5000_upserts(db: AsyncDatabase[Doc]) -> None:
    coll = collection(db)
    await coll.insert_many([{"_id": i, "v": 0} for i in range(0, 5000, 2)])
    ops = [UpdateOne({"_id": i}, {"$set": {"v": 1}}, upsert=True) for i in range(5000)]
    result = await asyncio.wait_for(coll.bulk_write(ops, ordered=False), 240)
    assert result.matched_count == 2500
    assert result.modified_count == 2500
    assert result.upserted_count == 2500
    assert await coll.count_documents({"v": 1}) == 5000


def updates_by_id() -> tuple[list[Any], list[Doc]]:
    """2,000 updates by `_id` of 1,000 existing documents and as many absent ones, and a model."""
    ops: list[Any] = []
    model: list[Doc] = []  # what each statement does, for apply_by_id
    for k in range(2000):
        if k == 700:  # $inc of a string: fails (TypeMismatch)
            step = {"id": 4, "inc": "s", "upsert": False}
        elif k % 250 == 249:  # an `_id` named earlier in the command (once upserted or not)
            step = {"id": k // 2 + (k // 2) % 2, "inc": "v", "set": k, "upsert": True}
        elif k % 100 == 50:  # matches, changes nothing
            step = {"id": k, "set_s": "x", "upsert": False}
        elif k % 100 == 51:  # matches nothing, no upsert; `_id` by $eq
            step = {"id": k, "inc": "v", "upsert": False, "eq": True}
        elif k % 100 == 52:  # a replacement upserting the `_id` that statement k + 1 updates
            step = {"id": k + 1, "replace": {"r": k}, "upsert": True}
        else:
            step = {"id": k, "inc": "v", "set": k, "upsert": True}
        model.append(step)
        filt: Doc = {"_id": {"$eq": step["id"]}} if step.get("eq") else {"_id": step["id"]}
        if "replace" in step:
            ops.append(ReplaceOne(filt, step["replace"], upsert=step["upsert"]))
            continue
        update: Doc = {}
        if "inc" in step:
            update["$inc"] = {step["inc"]: 1}
        if "set" in step:
            update["$set"] = {"at": step["set"]}
        if "set_s" in step:
            update["$set"] = {"s": step["set_s"]}
        ops.append(UpdateOne(filt, update, upsert=step["upsert"]))
    return ops, model


def apply_by_id(docs: dict[Any, Doc], model: list[Doc], ordered: bool) -> Doc:
    """MongoDB's per-statement semantics of updates_by_id, on documents in memory."""
    out: Doc = {"nMatched": 0, "nModified": 0, "upserted": [], "writeErrors": []}
    for index, step in enumerate(model):
        doc = docs.get(step["id"])
        if doc is None and not step["upsert"]:
            continue
        new = dict(doc) if doc is not None else {"_id": step["id"]}
        if "replace" in step:
            new = {"_id": step["id"], **step["replace"]}
        if "inc" in step:
            if isinstance(new.get(step["inc"], 0), str):
                out["writeErrors"].append((index, 14))
                if ordered:
                    break
                continue
            new[step["inc"]] = new.get(step["inc"], 0) + 1
        if "set" in step:
            new["at"] = step["set"]
        if "set_s" in step:
            new["s"] = step["set_s"]
        if doc is None:
            out["upserted"].append((index, step["id"]))
        else:
            out["nMatched"] += 1
            out["nModified"] += new != doc
        docs[step["id"]] = new
    return out


@pytest.mark.parametrize("ordered", [True, False])
async def test_bulk_write_by_id_keeps_per_statement_semantics(
    db: AsyncDatabase[Doc], ordered: bool
) -> None:
    """One update command of 2,000 updates by `_id` (the embedded server runs them in groups, one
    transaction each): upserts, replacements, an `_id` named twice, one failing statement."""
    existing = [{"_id": i, "v": 0, "s": "x"} for i in range(0, 2000, 2)]
    ops, model = updates_by_id()
    expected_docs = {d["_id"]: dict(d) for d in existing}
    expected = apply_by_id(expected_docs, model, ordered)
    assert len(expected["upserted"]) > 300 and expected["writeErrors"] == [(700, 14)]
    assert len({step["id"] for step in model}) < len(model)  # some `_id` named twice

    bulk = collection(db)
    await bulk.insert_many(existing)
    with pytest.raises(BulkWriteError) as raised:
        await asyncio.wait_for(bulk.bulk_write(ops, ordered=ordered), 120)
    details = raised.value.details
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == expected["writeErrors"]
    assert (details["nMatched"], details["nModified"]) == (
        expected["nMatched"],
        expected["nModified"],
    )
    assert details["nUpserted"] == len(expected["upserted"])
    assert [(u["index"], u["_id"]) for u in details["upserted"]] == expected["upserted"]
    assert {d["_id"]: d async for d in bulk.find({})} == expected_docs

    # The same statements one by one (each its own command) end in the same documents.
    single = collection(db)
    await single.insert_many(existing)
    for op in ops:
        try:
            await single.bulk_write([op])
        except BulkWriteError:
            if ordered:
                break
    assert {d["_id"]: d async for d in single.find({})} == expected_docs


async def test_one_update_command_matching_many_documents(db: AsyncDatabase[Doc]) -> None:
    """More documents (and more updates in one command) than FerretDB's pool has connections."""
    coll = collection(db)
    await coll.insert_many([{"_id": i, "group": "a", "v": 0} for i in range(300)])
    many = await asyncio.wait_for(coll.update_many({"group": "a"}, {"$inc": {"v": 1}}), 60)
    assert (many.matched_count, many.modified_count) == (300, 300)
    ops = [UpdateOne({"_id": i}, {"$inc": {"v": 1}}) for i in range(300)]
    bulk = await asyncio.wait_for(coll.bulk_write(ops), 60)
    assert (bulk.matched_count, bulk.modified_count) == (300, 300)
    assert await coll.count_documents({"v": 2}) == 300


async def test_update_operators_and_counts(db: AsyncDatabase[Doc]) -> None:
    coll = collection(db)
    now = datetime.now(UTC).replace(microsecond=0)
    await coll.insert_one({"_id": "d", "hi": 5, "lo": 5, "n": 1, "tags": ["a"], "gone": True})
    res = await coll.update_one(
        {"_id": "d"},
        {
            "$max": {"hi": 9, "seen": now},
            "$min": {"lo": 2},
            "$inc": {"n": 2},
            "$push": {"tags": "b"},
            "$unset": {"gone": ""},
        },
    )
    assert (res.matched_count, res.modified_count) == (1, 1)
    doc = await coll.find_one({"_id": "d"})
    assert doc == {"_id": "d", "hi": 9, "lo": 2, "n": 3, "tags": ["a", "b"], "seen": now}
    # An update that changes nothing matches and modifies nothing: modified_count is exact.
    res = await coll.update_one({"_id": "d"}, {"$max": {"hi": 3}, "$min": {"lo": 7}})
    assert (res.matched_count, res.modified_count) == (1, 0)
    earlier = now - timedelta(days=1)
    res = await coll.update_one({"_id": "d"}, {"$max": {"seen": earlier}})
    assert res.modified_count == 0
    res = await coll.update_one({"_id": "missing"}, {"$set": {"x": 1}})
    assert (res.matched_count, res.modified_count, res.upserted_id) == (0, 0, None)


async def test_sort_and_limit(db: AsyncDatabase[Doc]) -> None:
    coll = collection(db)
    await coll.create_indexes([IndexModel([("at", DESCENDING)], name="at")])
    base = datetime(2026, 1, 1, tzinfo=UTC)
    await coll.insert_many(
        [{"_id": i, "at": base + timedelta(minutes=(i * 7) % 50)} for i in range(50)]
    )
    docs = (
        await coll.find({}, {"at": 1})
        .sort([("at", DESCENDING), ("_id", ASCENDING)])
        .limit(5)
        .to_list()
    )
    expected = sorted(range(50), key=lambda i: (-((i * 7) % 50), i))[:5]
    assert [d["_id"] for d in docs] == expected


async def test_range_queries(db: AsyncDatabase[Doc]) -> None:
    coll = collection(db)
    await coll.create_indexes([IndexModel([("at", ASCENDING)], name="at")])
    base = datetime(2026, 1, 1, tzinfo=UTC)
    docs: list[Doc] = [{"_id": i, "at": base + timedelta(hours=i), "n": i} for i in range(100)]
    # Values of other kinds that a range on dates must (or must not) match, as MongoDB does.
    docs += [
        {"_id": "array", "at": [base - timedelta(days=9), base + timedelta(hours=10, minutes=30)]},
        {"_id": "number", "at": 10},
        {"_id": "string", "at": "2026-01-01T10:30:00Z"},
        {"_id": "missing"},
        {"_id": "null", "at": None},
        {"_id": "document", "at": {"when": base + timedelta(hours=10)}},
    ]
    await coll.insert_many(docs)

    async def ids(query: Doc) -> list[Any]:
        return sorted([d["_id"] async for d in coll.find(query, {"_id": 1})], key=str)

    lo, hi = base + timedelta(hours=10), base + timedelta(hours=13)
    assert await ids({"at": {"$gte": lo, "$lt": hi}}) == sorted([10, 11, 12, "array"], key=str)
    assert await ids({"at": {"$gt": lo, "$lte": hi}}) == sorted([11, 12, 13, "array"], key=str)
    assert await ids({"at": {"$lt": base + timedelta(hours=2)}}) == sorted([0, 1, "array"], key=str)
    assert await ids({"at": {"$gte": base + timedelta(hours=98)}}) == [98, 99]
    assert await ids({"n": {"$gte": 97}}) == [97, 98, 99]
    assert await ids({"n": {"$gt": 1, "$lt": 4}}) == [2, 3]
    assert await ids({"at": {"$gte": lo}, "n": {"$lt": 12}}) == [10, 11]


async def test_lookups_by_id_and_indexed_field(db: AsyncDatabase[Doc]) -> None:
    coll = collection(db)
    await coll.create_indexes([IndexModel([("serial", ASCENDING)], name="serial")])
    await coll.insert_many(
        [{"_id": f"d{i}", "serial": f"S{i}", "tags": [f"t{i}"]} for i in range(500)]
    )
    assert (await coll.find_one({"_id": "d42"}) or {}).get("serial") == "S42"
    assert (await coll.find_one({"_id": {"$eq": "d43"}}) or {}).get("serial") == "S43"
    assert (await coll.find_one({"serial": "S44"}) or {}).get("_id") == "d44"
    assert (await coll.find_one({"tags": "t45"}) or {}).get("_id") == "d45"
    assert await coll.count_documents({"serial": {"$ne": "S1"}}) == 499


async def test_equality_on_an_indexed_field_matches_as_mongodb_does(
    db: AsyncDatabase[Doc],
) -> None:
    """Equality on an indexed field: the value itself (numbers by value), or an array that holds
    it; never a document, an empty array or another type (the embedded server answers it from
    the field's btree index: FerretDB patch 0006)."""
    coll = collection(db)
    await coll.create_indexes([IndexModel([("k", ASCENDING), ("at", DESCENDING)], name="k_at")])
    oid, at = ObjectId(), datetime(2026, 1, 1, tzinfo=UTC)
    await coll.insert_many(
        [{"_id": f"s{i}", "k": f"v{i}", "at": at + timedelta(minutes=i)} for i in range(50)]
        + [
            {"_id": "array", "k": ["x", "v5"]},
            {"_id": "int", "k": 5},
            {"_id": "double", "k": 5.0},
            {"_id": "int_array", "k": [1, 5]},
            {"_id": "true", "k": True},
            {"_id": "oid", "k": oid},
            {"_id": "date", "k": at},
            {"_id": "document", "k": {"a": "v5"}},
            {"_id": "empty", "k": []},
            {"_id": "string_5", "k": "5"},
        ]
    )

    async def ids(query: Doc) -> list[str]:
        return sorted([d["_id"] async for d in coll.find(query)])

    assert await ids({"k": "v5"}) == ["array", "s5"]
    assert await ids({"k": {"$eq": "v5"}}) == ["array", "s5"]
    assert await ids({"k": 5}) == ["double", "int", "int_array"]
    assert await ids({"k": 5.0}) == ["double", "int", "int_array"]
    assert await ids({"k": 1}) == ["int_array"]
    assert await ids({"k": "5"}) == ["string_5"]
    assert await ids({"k": True}) == ["true"]
    assert await ids({"k": oid}) == ["oid"]
    assert await ids({"k": at}) == ["date"]
    assert await ids({"k": "v7", "at": {"$gte": at}}) == ["s7"]
    assert await ids({"k": "absent"}) == []


async def test_embedded_server_lookups_use_indexes(db: AsyncDatabase[Doc]) -> None:
    coll = collection(db)
    await coll.create_indexes(
        [
            IndexModel([("serial", ASCENDING)], name="serial"),
            IndexModel([("at", ASCENDING)], name="at"),
        ]
    )
    base = datetime(2026, 1, 1, tzinfo=UTC)
    await coll.insert_many(
        [
            {"_id": f"d{i}", "serial": f"S{i}", "at": base + timedelta(minutes=i)}
            for i in range(20000)
        ]
    )

    async def plan(query: Doc) -> str:
        explained = await db.command("explain", {"find": coll.name, "filter": query})
        return str(explained["queryPlanner"])

    for query in (
        {"_id": "d1234"},
        {"serial": "S1234"},
        {"at": {"$gte": base + timedelta(minutes=100), "$lt": base + timedelta(minutes=200)}},
    ):
        text = await plan(query)
        assert uses_index(text), (query, text)


async def test_indexes_created_again_on_restart(mongo_settings: MongoSettings) -> None:
    indexes = {
        "devices": [
            IndexModel([("serial", ASCENDING)], name="serial", unique=True),
            IndexModel([("org_id", ASCENDING), ("at", DESCENDING)], name="org_at"),
        ]
    }
    for _ in range(3):  # each start of a service does this
        async with Mongo(mongo_settings, "promises") as mongo:
            await mongo.ensure_indexes(indexes)
            await mongo.db["devices"].create_indexes(indexes["devices"])  # same specs again
            names = {ix["name"] async for ix in await mongo.db["devices"].list_indexes()}
            assert names == {"_id_", "serial", "org_at"}
            await mongo.db["devices"].insert_one({"serial": uuid.uuid4().hex})
