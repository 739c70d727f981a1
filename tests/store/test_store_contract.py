"""The contract every store keeps, run over the memory, SQLite and MongoDB (both drivers) stores."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synkworld.store import (
    DocumentRejectedError,
    MemoryStore,
    Region,
    SQLiteStore,
    Store,
    StoreError,
    WriteBatch,
    WriteResult,
)

SEVENTEEN_MB = 17 * 1024 * 1024


def entity(doc_id: str, key: str, x: Any = None, y: Any = None, **state: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": doc_id, "t": "entity", "key": key, "v": 1}
    if x is not None:
        doc["x"] = x
    if y is not None:
        doc["y"] = y
    doc.update(state)
    return doc


def by_id(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {doc["_id"]: doc for doc in docs}
    assert len(out) == len(docs), "a document was returned twice"
    return out


def ids(docs: list[dict[str, Any]]) -> set[str]:
    return set(by_id(docs))


async def test_an_empty_store_loads_nothing(store: Store) -> None:
    assert await store.load() == []
    assert await store.load(keys=["main:0:0"]) == []
    assert await store.load(region=Region("main", 0, 0, 100, 100)) == []


async def test_upserted_documents_load_back_equal(store: Store) -> None:
    docs = [
        entity("a", "main:0:0", 10.5, 20, kind="wolf", color=0xFF00FF, hp=100),
        entity("b", "main:1:0", 300, 20.25, kind="elk", color=0, hp=7),
        {"_id": "c", "t": "room", "key": "chat", "v": 3, "topic": "hi", "tags": ["x", "y"]},
        entity("d", "main:0:0", 1, 2, inventory={"gold": 5, "items": [1, 2, {"k": None}]}),
    ]

    result = await store.apply(WriteBatch(upserts=docs))

    assert result == WriteResult(written=4, rejected={})
    assert by_id(await store.load()) == by_id(docs)


async def test_an_upsert_sets_the_fields_it_names_and_keeps_the_others(store: Store) -> None:
    await store.apply(WriteBatch(upserts=[entity("a", "main:0:0", 1, 2, hp=100, kind="wolf")]))

    await store.apply(WriteBatch(upserts=[{"_id": "a", "v": 2, "hp": 90}]))

    (doc,) = await store.load()
    assert doc == entity("a", "main:0:0", 1, 2, hp=90, kind="wolf") | {"v": 2}


async def test_an_upsert_replaces_a_nested_value_whole(store: Store) -> None:
    await store.apply(WriteBatch(upserts=[entity("a", "c", bag={"gold": 1, "gems": 2})]))

    await store.apply(WriteBatch(upserts=[{"_id": "a", "bag": {"wood": 3}}]))

    (doc,) = await store.load()
    assert doc["bag"] == {"wood": 3}


async def test_a_changed_key_and_position_move_the_document_between_loads(store: Store) -> None:
    await store.apply(WriteBatch(upserts=[entity("a", "main:0:0", 10, 10)]))

    await store.apply(WriteBatch(upserts=[{"_id": "a", "key": "main:4:0", "x": 1010, "v": 2}]))

    assert await store.load(keys=["main:0:0"]) == []
    assert ids(await store.load(keys=["main:4:0"])) == {"a"}
    assert await store.load(region=Region("main", 0, 0, 250, 250)) == []
    assert ids(await store.load(region=Region("main", 1000, 0, 1250, 250))) == {"a"}


async def test_an_upsert_of_only_an_id_creates_an_empty_document(store: Store) -> None:
    result = await store.apply(WriteBatch(upserts=[{"_id": "bare"}]))

    assert result.written == 1
    assert await store.load() == [{"_id": "bare"}]


async def test_delete_removes_documents_and_ignores_missing_ids(store: Store) -> None:
    await store.apply(WriteBatch(upserts=[entity(i, "main:0:0", 1, 1) for i in "abc"]))

    result = await store.apply(WriteBatch(deletes=["a", "c", "never-existed"]))

    assert result == WriteResult(written=3, rejected={})
    assert ids(await store.load()) == {"b"}


async def test_one_batch_upserts_some_ids_and_deletes_others(store: Store) -> None:
    await store.apply(WriteBatch(upserts=[entity(i, "main:0:0", 1, 1) for i in "abc"]))

    await store.apply(WriteBatch(upserts=[{"_id": "a", "hp": 1}, entity("d", "k")], deletes=["b"]))

    assert by_id(await store.load()) == {
        "a": entity("a", "main:0:0", 1, 1, hp=1),
        "c": entity("c", "main:0:0", 1, 1),
        "d": entity("d", "k"),
    }


async def test_load_by_keys_returns_the_documents_of_those_keys(store: Store) -> None:
    await store.apply(
        WriteBatch(
            upserts=[
                entity("a", "main:0:0", 1, 1),
                entity("b", "main:0:0", 2, 2),
                entity("c", "main:1:0", 300, 1),
                entity("d", "other:0:0", 1, 1),
                entity("e", "chat"),
            ]
        )
    )

    assert ids(await store.load(keys=["main:0:0", "chat"])) == {"a", "b", "e"}
    assert ids(await store.load(keys=("main:1:0", "main:1:0", "nowhere"))) == {"c"}
    assert ids(await store.load(keys={"other:0:0"})) == {"d"}
    assert await store.load(keys=[]) == []


async def test_load_by_region_keeps_that_map_and_the_half_open_box(store: Store) -> None:
    await store.apply(
        WriteBatch(
            upserts=[
                entity("inside", "main:0:0", 10, 10),
                entity("on-low-edges", "main:0:0", 0, 0),
                entity("on-high-x-edge", "main:2:0", 500, 10),
                entity("on-high-y-edge", "main:0:2", 10, 500),
                entity("float-inside", "main:1:1", 499.999, 250.5),
                entity("outside", "main:3:3", 900, 900),
                entity("negative", "main:-1:0", -5, 10),
                entity("other-map", "other:0:0", 10, 10),
                entity("prefix-map", "mainland:0:0", 10, 10),
                entity("channel", "main-chat"),
                entity("no-position", "main:0:0"),
                entity("text-position", "main:0:0", "10", "10"),
                entity("bool-position", "main:0:0", True, True),
            ]
        )
    )

    found = await store.load(region=Region("main", 0, 0, 500, 500))

    assert ids(found) == {"inside", "on-low-edges", "float-inside"}
    assert ids(await store.load(region=Region("main", -10, 0, 0, 500))) == {"negative"}
    assert ids(await store.load(region=Region("other", 0, 0, 500, 500))) == {"other-map"}
    assert await store.load(region=Region("main", 10, 10, 10, 10)) == []


async def test_a_map_name_is_matched_literally(store: Store) -> None:
    await store.apply(
        WriteBatch(
            upserts=[
                entity("dotted", "m.a+p:0:0", 1, 1),
                entity("lookalike", "mXa+p:0:0", 1, 1),
                entity("longer", "mmaap:0:0", 1, 1),
            ]
        )
    )

    assert ids(await store.load(region=Region("m.a+p", 0, 0, 10, 10))) == {"dotted"}


async def test_load_by_region_reads_the_position_fields_it_is_given(store: Store) -> None:
    await store.apply(
        WriteBatch(
            upserts=[
                {"_id": "a", "key": "geo:1:1", "lon": 5.5, "lat": 45.0, "x": 1000, "y": 1000},
                {"_id": "b", "key": "geo:1:1", "lon": 50.0, "lat": 45.0, "x": 5, "y": 5},
            ]
        )
    )

    region = Region("geo", 0, 40, 10, 50, pos_fields=("lon", "lat"))

    assert ids(await store.load(region=region)) == {"a"}
    assert ids(await store.load(region=Region("geo", 0, 0, 10, 10))) == {"b"}


async def test_load_with_keys_and_region_returns_documents_matching_either(store: Store) -> None:
    await store.apply(
        WriteBatch(
            upserts=[
                entity("in-region", "main:0:0", 1, 1),
                entity("room", "chat"),
                entity("elsewhere", "main:9:9", 2300, 2300),
            ]
        )
    )

    found = await store.load(keys=["chat", "main:0:0"], region=Region("main", 0, 0, 250, 250))

    assert ids(found) == {"in-region", "room"}


async def test_applying_a_batch_again_changes_nothing(store: Store) -> None:
    batch = WriteBatch(
        upserts=[entity(f"e{i}", f"main:{i}:0", i * 250 + 1, 1, hp=i) for i in range(20)],
        deletes=["e3", "missing"],
    )
    await store.apply(WriteBatch(upserts=[entity("e3", "main:3:0", 751, 1)]))

    first = await store.apply(batch)
    state = by_id(await store.load())
    second = await store.apply(batch)

    assert first == second
    assert by_id(await store.load()) == state
    assert len(state) == 19


async def test_a_large_batch_is_written_whole(store: Store) -> None:
    n = 10_000
    docs = [
        entity(f"e{i:05}", f"main:{i % 40}:{i // 400}", (i % 40) * 250 + 1.5, (i // 400) * 250 + 2)
        for i in range(n)
    ]

    result = await store.apply(WriteBatch(upserts=docs))

    assert result == WriteResult(written=n, rejected={})
    assert by_id(await store.load()) == by_id(docs)
    # Every entity moves one cell to the right, in one more batch of n.
    moved = [{"_id": d["_id"], "x": d["x"] + 250, "v": 2} for d in docs]
    assert (await store.apply(WriteBatch(upserts=moved))).written == n
    assert len(await store.load(region=Region("main", 0, 0, 250, 10_000))) == 0
    assert len(await store.load(region=Region("main", 250, 0, 500, 10_000))) == n // 40


async def test_a_document_over_16_mib_is_refused_and_the_rest_written(store: Store) -> None:
    await store.apply(WriteBatch(upserts=[entity("gone", "main:0:0", 1, 1)]))
    big = entity("big", "main:0:0", 1, 1, blob="x" * SEVENTEEN_MB)

    result = await store.apply(
        WriteBatch(
            upserts=[entity("a", "main:0:0", 1, 1), big, entity("b", "main:0:0", 2, 2)],
            deletes=["gone"],
        )
    )

    assert set(result.rejected) == {"big"}
    assert "over the limit" in result.rejected["big"]
    assert result.written == 3
    assert ids(await store.load()) == {"a", "b"}
    with pytest.raises(DocumentRejectedError) as info:
        result.raise_for_rejected()
    assert info.value.doc_id == "big"


@pytest.mark.parametrize(
    ("bad_field", "why"),
    [("$set", "starts with '$'"), ("a.b", "contains '.'"), ("", "empty")],
)
async def test_a_field_name_mongodb_cannot_hold_is_refused_everywhere(
    store: Store, bad_field: str, why: str
) -> None:
    result = await store.apply(
        WriteBatch(upserts=[entity("a", "k"), {"_id": "bad", bad_field: 1}, entity("b", "k")])
    )

    assert list(result.rejected) == ["bad"]
    assert why in result.rejected["bad"]
    assert ids(await store.load()) == {"a", "b"}


async def test_a_value_that_cannot_be_encoded_is_refused(store: Store) -> None:
    result = await store.apply(
        WriteBatch(upserts=[entity("a", "k"), entity("bad", "k", odd=object()), entity("b", "k")])
    )

    assert list(result.rejected) == ["bad"]
    assert "cannot encode" in result.rejected["bad"]
    assert ids(await store.load()) == {"a", "b"}


async def test_a_refused_update_leaves_the_stored_document_as_it_was(store: Store) -> None:
    await store.apply(WriteBatch(upserts=[entity("a", "k", hp=1)]))

    result = await store.apply(WriteBatch(upserts=[{"_id": "a", "hp": 2, "blob": object()}]))

    assert list(result.rejected) == ["a"]
    assert await store.load() == [entity("a", "k", hp=1)]


async def test_an_upsert_without_a_str_id_is_a_caller_error(store: Store) -> None:
    with pytest.raises(ValueError, match="_id"):
        await store.apply(WriteBatch(upserts=[{"key": "k"}]))
    with pytest.raises(ValueError, match="_id"):
        await store.apply(WriteBatch(upserts=[{"_id": 5, "key": "k"}]))


async def test_documents_survive_closing_and_reopening_the_store(
    make_store: Callable[[], Store],
) -> None:
    first = make_store()
    if isinstance(first, MemoryStore):
        pytest.skip("a memory store keeps nothing past close")
    async with first:
        await first.apply(WriteBatch(upserts=[entity("a", "main:0:0", 1, 2, hp=3)]))

    async with make_store() as second:
        assert await second.load() == [entity("a", "main:0:0", 1, 2, hp=3)]


async def test_a_closed_store_refuses_calls(make_store: Callable[[], Store]) -> None:
    store = make_store()
    await store.close()
    await store.close()

    with pytest.raises(StoreError):
        await store.apply(WriteBatch(upserts=[entity("a", "k")]))
    with pytest.raises(StoreError):
        await store.load()


def test_a_region_is_validated() -> None:
    with pytest.raises(ValueError, match="map"):
        Region("main:0", 0, 0, 1, 1)
    with pytest.raises(ValueError, match="x0 <= x1"):
        Region("main", 2, 0, 1, 1)
    with pytest.raises(ValueError, match="NaN"):
        Region("main", 0, 0, float("nan"), 1)
    with pytest.raises(TypeError):
        Region("main", 0, 0, True, 1)
    with pytest.raises(ValueError, match="pos_fields"):
        Region("main", 0, 0, 1, 1, pos_fields=("x", "x"))


# A model of the contract: a dict of dicts, `$set` semantics, deletes after upserts.

_ids = st.sampled_from(["a", "b", "c", "d", "e"])
_values = st.one_of(
    st.integers(-5, 5), st.text(max_size=3), st.none(), st.lists(st.integers(-(2**53), 2**53))
)
_upserts = st.dictionaries(st.sampled_from(["key", "v", "x", "y", "hp", "kind"]), _values)
_batches = st.lists(
    st.tuples(st.dictionaries(_ids, _upserts, max_size=4), st.sets(_ids, max_size=2)),
    max_size=6,
)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=_batches)
def test_any_sequence_of_batches_ends_in_the_state_of_the_model(
    kind: str, batches: list[tuple[dict[str, dict[str, Any]], set[str]]]
) -> None:
    model: dict[str, dict[str, Any]] = {}
    for upserts, deletes in batches:
        for doc_id, fields in upserts.items():
            if doc_id not in deletes:
                model.setdefault(doc_id, {"_id": doc_id}).update(fields)
        for doc_id in deletes:
            model.pop(doc_id, None)

    async def replay() -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory() as tmp:
            store: Store = MemoryStore() if kind == "memory" else SQLiteStore(Path(tmp) / "s.db")
            async with store:
                for upserts, deletes in batches:
                    docs = [
                        {"_id": doc_id, **fields}
                        for doc_id, fields in upserts.items()
                        if doc_id not in deletes
                    ]
                    await store.apply(WriteBatch(upserts=docs, deletes=sorted(deletes)))
                return await store.load()

    assert by_id(asyncio.run(replay())) == model


async def test_an_insert_writes_a_new_document_and_never_overwrites_a_stored_one(
    store: Store,
) -> None:
    """Regression: a new object whose id a stored document had overwrote that document."""
    await store.apply(WriteBatch(upserts=[entity("old", "main:0:0", 1, 1, hp=5)]))
    result = await store.apply(
        WriteBatch(
            inserts=[entity("old", "main:3:3", 9, 9, hp=0), entity("new", "main:0:0", 2, 2)],
            upserts=[entity("other", "main:0:0", 3, 3)],
        )
    )
    assert result.existing == {"old"}
    assert result.written == 2
    docs = by_id(await store.load())
    assert docs["old"] == entity("old", "main:0:0", 1, 1, hp=5)
    assert docs["new"] == entity("new", "main:0:0", 2, 2)
    assert set(docs) == {"old", "new", "other"}


async def test_load_replays_a_spill_journal_first(store: Store, tmp_path: Path) -> None:
    from synkworld.store._spill import SpillJournal

    path = store.spill_path
    if path is None:
        pytest.skip("this store keeps no spill journal")
    await store.apply(WriteBatch(upserts=[entity("gone", "main:0:0", 1, 1)]))
    SpillJournal(path).write(
        ([entity("n", "main:0:0", 4, 4)], [entity("u", "main:1:0", 300, 4, hp=3)], ["gone"]),
        reason="a test",
    )
    assert by_id(await store.load()) == {
        "n": entity("n", "main:0:0", 4, 4),
        "u": entity("u", "main:1:0", 300, 4, hp=3),
    }
    assert not path.exists()
    assert await store.replay_spill() == 0
