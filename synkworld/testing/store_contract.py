"""The contract every `synkworld.store.Store` keeps, as checks a store's own tests can run.

synkworld runs these checks over its memory, SQLite and MongoDB stores; a
`Store` subclass of your own should pass them too. Each check is a coroutine
function that takes `make_store`, a callable returning a store that is not open
yet; it opens the store itself (``async with make_store() as store:``) and
raises `AssertionError` when the store breaks the contract, or skips (through
`pytest.skip`) when the check does not apply. The checks are in `STORE_CHECKS`;
with pytest and pytest-asyncio (``asyncio_mode = "auto"``)::

    import pytest
    from synkworld.testing.store_contract import STORE_CHECKS
    from my_game.store import MyStore

    @pytest.mark.parametrize("check", STORE_CHECKS, ids=lambda check: check.__name__)
    async def test_my_store_keeps_the_contract(check, tmp_path):
        await check(lambda: MyStore(tmp_path / "world.db"))

What `make_store` must do:

- Return a store over data that is empty when the check starts: one database,
  file or collection per check, as `tmp_path` gives above.
- Return, when called again, a store over the same data: one check writes with
  a first store, closes it and reads with a second (it skips for a
  `MemoryStore`, which keeps nothing past close).

One check writes a spill journal at the store's `spill_path` and expects
`load()` to replay and remove it; it skips when `spill_path` is None.

This module imports pytest (for `pytest.raises` and `pytest.skip`), so it needs
pytest installed. pytest rewrites `assert` statements for detailed failure
messages only in test modules and conftest files: call
``pytest.register_assert_rewrite("synkworld.testing.store_contract")`` in your
conftest.py, before anything imports this module, to get them here too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from synkworld.store import (
    DocumentRejectedError,
    MemoryStore,
    Region,
    Store,
    StoreError,
    WriteBatch,
    WriteResult,
)
from synkworld.store._spill import SpillJournal

__all__ = [
    "STORE_CHECKS",
    "by_id",
    "check_a_changed_key_and_position_move_the_document_between_loads",
    "check_a_closed_store_refuses_calls",
    "check_a_document_over_16_mib_is_refused_and_the_rest_written",
    "check_a_field_name_mongodb_cannot_hold_is_refused_everywhere",
    "check_a_large_batch_is_written_whole",
    "check_a_map_name_is_matched_literally",
    "check_a_refused_update_leaves_the_stored_document_as_it_was",
    "check_a_value_that_cannot_be_encoded_is_refused",
    "check_an_empty_store_loads_nothing",
    "check_an_insert_writes_a_new_document_and_never_overwrites_a_stored_one",
    "check_an_upsert_of_only_an_id_creates_an_empty_document",
    "check_an_upsert_replaces_a_nested_value_whole",
    "check_an_upsert_sets_the_fields_it_names_and_keeps_the_others",
    "check_an_upsert_without_a_str_id_is_a_caller_error",
    "check_applying_a_batch_again_changes_nothing",
    "check_delete_removes_documents_and_ignores_missing_ids",
    "check_documents_survive_closing_and_reopening_the_store",
    "check_load_by_keys_returns_the_documents_of_those_keys",
    "check_load_by_region_keeps_that_map_and_the_half_open_box",
    "check_load_by_region_reads_the_position_fields_it_is_given",
    "check_load_replays_a_spill_journal_first",
    "check_load_with_keys_and_region_returns_documents_matching_either",
    "check_one_batch_upserts_some_ids_and_deletes_others",
    "check_upserted_documents_load_back_equal",
    "entity",
    "ids",
]

_SEVENTEEN_MB = 17 * 1024 * 1024

# The field names MongoDB cannot hold, and what the refusal says about each.
_BAD_FIELD_NAMES: tuple[tuple[str, str], ...] = (
    ("$set", "starts with '$'"),
    ("a.b", "contains '.'"),
    ("", "empty"),
)


def entity(doc_id: str, key: str, x: Any = None, y: Any = None, **state: Any) -> dict[str, Any]:
    """An entity document (`t`, `key`, `v`), with `x` and `y` when given, and `state`."""
    doc: dict[str, Any] = {"_id": doc_id, "t": "entity", "key": key, "v": 1}
    if x is not None:
        doc["x"] = x
    if y is not None:
        doc["y"] = y
    doc.update(state)
    return doc


def by_id(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The documents by `_id`; fails when an id comes twice."""
    out = {doc["_id"]: doc for doc in docs}
    assert len(out) == len(docs), "a document was returned twice"
    return out


def ids(docs: list[dict[str, Any]]) -> set[str]:
    """The `_id`s of the documents; fails when an id comes twice."""
    return set(by_id(docs))


async def check_an_empty_store_loads_nothing(make_store: Callable[[], Store]) -> None:
    async with make_store() as store:
        assert await store.load() == []
        assert await store.load(keys=["main:0:0"]) == []
        assert await store.load(region=Region("main", 0, 0, 100, 100)) == []


async def check_upserted_documents_load_back_equal(make_store: Callable[[], Store]) -> None:
    async with make_store() as store:
        docs = [
            entity("a", "main:0:0", 10.5, 20, kind="wolf", color=0xFF00FF, hp=100),
            entity("b", "main:1:0", 300, 20.25, kind="elk", color=0, hp=7),
            {"_id": "c", "t": "room", "key": "chat", "v": 3, "topic": "hi", "tags": ["x", "y"]},
            entity("d", "main:0:0", 1, 2, inventory={"gold": 5, "items": [1, 2, {"k": None}]}),
        ]

        result = await store.apply(WriteBatch(upserts=docs))

        assert result == WriteResult(written=4, rejected={})
        assert by_id(await store.load()) == by_id(docs)


async def check_an_upsert_sets_the_fields_it_names_and_keeps_the_others(
    make_store: Callable[[], Store],
) -> None:
    async with make_store() as store:
        await store.apply(WriteBatch(upserts=[entity("a", "main:0:0", 1, 2, hp=100, kind="wolf")]))

        await store.apply(WriteBatch(upserts=[{"_id": "a", "v": 2, "hp": 90}]))

        (doc,) = await store.load()
        assert doc == entity("a", "main:0:0", 1, 2, hp=90, kind="wolf") | {"v": 2}


async def check_an_upsert_replaces_a_nested_value_whole(make_store: Callable[[], Store]) -> None:
    async with make_store() as store:
        await store.apply(WriteBatch(upserts=[entity("a", "c", bag={"gold": 1, "gems": 2})]))

        await store.apply(WriteBatch(upserts=[{"_id": "a", "bag": {"wood": 3}}]))

        (doc,) = await store.load()
        assert doc["bag"] == {"wood": 3}


async def check_a_changed_key_and_position_move_the_document_between_loads(
    make_store: Callable[[], Store],
) -> None:
    async with make_store() as store:
        await store.apply(WriteBatch(upserts=[entity("a", "main:0:0", 10, 10)]))

        await store.apply(WriteBatch(upserts=[{"_id": "a", "key": "main:4:0", "x": 1010, "v": 2}]))

        assert await store.load(keys=["main:0:0"]) == []
        assert ids(await store.load(keys=["main:4:0"])) == {"a"}
        assert await store.load(region=Region("main", 0, 0, 250, 250)) == []
        assert ids(await store.load(region=Region("main", 1000, 0, 1250, 250))) == {"a"}


async def check_an_upsert_of_only_an_id_creates_an_empty_document(
    make_store: Callable[[], Store],
) -> None:
    async with make_store() as store:
        result = await store.apply(WriteBatch(upserts=[{"_id": "bare"}]))

        assert result.written == 1
        assert await store.load() == [{"_id": "bare"}]


async def check_delete_removes_documents_and_ignores_missing_ids(
    make_store: Callable[[], Store],
) -> None:
    async with make_store() as store:
        await store.apply(WriteBatch(upserts=[entity(i, "main:0:0", 1, 1) for i in "abc"]))

        result = await store.apply(WriteBatch(deletes=["a", "c", "never-existed"]))

        assert result == WriteResult(written=3, rejected={})
        assert ids(await store.load()) == {"b"}


async def check_one_batch_upserts_some_ids_and_deletes_others(
    make_store: Callable[[], Store],
) -> None:
    async with make_store() as store:
        await store.apply(WriteBatch(upserts=[entity(i, "main:0:0", 1, 1) for i in "abc"]))

        await store.apply(
            WriteBatch(upserts=[{"_id": "a", "hp": 1}, entity("d", "k")], deletes=["b"])
        )

        assert by_id(await store.load()) == {
            "a": entity("a", "main:0:0", 1, 1, hp=1),
            "c": entity("c", "main:0:0", 1, 1),
            "d": entity("d", "k"),
        }


async def check_load_by_keys_returns_the_documents_of_those_keys(
    make_store: Callable[[], Store],
) -> None:
    async with make_store() as store:
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


async def check_load_by_region_keeps_that_map_and_the_half_open_box(
    make_store: Callable[[], Store],
) -> None:
    async with make_store() as store:
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


async def check_a_map_name_is_matched_literally(make_store: Callable[[], Store]) -> None:
    async with make_store() as store:
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


async def check_load_by_region_reads_the_position_fields_it_is_given(
    make_store: Callable[[], Store],
) -> None:
    async with make_store() as store:
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


async def check_load_with_keys_and_region_returns_documents_matching_either(
    make_store: Callable[[], Store],
) -> None:
    async with make_store() as store:
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


async def check_applying_a_batch_again_changes_nothing(make_store: Callable[[], Store]) -> None:
    async with make_store() as store:
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


async def check_a_large_batch_is_written_whole(make_store: Callable[[], Store]) -> None:
    async with make_store() as store:
        n = 10_000
        docs = [
            entity(
                f"e{i:05}", f"main:{i % 40}:{i // 400}", (i % 40) * 250 + 1.5, (i // 400) * 250 + 2
            )
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


async def check_a_document_over_16_mib_is_refused_and_the_rest_written(
    make_store: Callable[[], Store],
) -> None:
    async with make_store() as store:
        await store.apply(WriteBatch(upserts=[entity("gone", "main:0:0", 1, 1)]))
        big = entity("big", "main:0:0", 1, 1, blob="x" * _SEVENTEEN_MB)

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


async def check_a_field_name_mongodb_cannot_hold_is_refused_everywhere(
    make_store: Callable[[], Store],
) -> None:
    async with make_store() as store:
        for bad_field, why in _BAD_FIELD_NAMES:
            case = f"field name {bad_field!r}"

            result = await store.apply(
                WriteBatch(
                    upserts=[entity("a", "k"), {"_id": "bad", bad_field: 1}, entity("b", "k")]
                )
            )

            assert list(result.rejected) == ["bad"], case
            assert why in result.rejected["bad"], case
            assert ids(await store.load()) == {"a", "b"}, case
            # Each case starts on an empty store, as it did when it was a test of its own.
            await store.apply(WriteBatch(deletes=["a", "b"]))


async def check_a_value_that_cannot_be_encoded_is_refused(make_store: Callable[[], Store]) -> None:
    async with make_store() as store:
        result = await store.apply(
            WriteBatch(
                upserts=[entity("a", "k"), entity("bad", "k", odd=object()), entity("b", "k")]
            )
        )

        assert list(result.rejected) == ["bad"]
        assert "cannot encode" in result.rejected["bad"]
        assert ids(await store.load()) == {"a", "b"}


async def check_a_refused_update_leaves_the_stored_document_as_it_was(
    make_store: Callable[[], Store],
) -> None:
    async with make_store() as store:
        await store.apply(WriteBatch(upserts=[entity("a", "k", hp=1)]))

        result = await store.apply(WriteBatch(upserts=[{"_id": "a", "hp": 2, "blob": object()}]))

        assert list(result.rejected) == ["a"]
        assert await store.load() == [entity("a", "k", hp=1)]


async def check_an_upsert_without_a_str_id_is_a_caller_error(
    make_store: Callable[[], Store],
) -> None:
    async with make_store() as store:
        with pytest.raises(ValueError, match="_id"):
            await store.apply(WriteBatch(upserts=[{"key": "k"}]))
        with pytest.raises(ValueError, match="_id"):
            await store.apply(WriteBatch(upserts=[{"_id": 5, "key": "k"}]))


async def check_documents_survive_closing_and_reopening_the_store(
    make_store: Callable[[], Store],
) -> None:
    first = make_store()
    if isinstance(first, MemoryStore):
        pytest.skip("a memory store keeps nothing past close")
    async with first:
        await first.apply(WriteBatch(upserts=[entity("a", "main:0:0", 1, 2, hp=3)]))

    async with make_store() as second:
        assert await second.load() == [entity("a", "main:0:0", 1, 2, hp=3)]


async def check_a_closed_store_refuses_calls(make_store: Callable[[], Store]) -> None:
    store = make_store()
    await store.close()
    await store.close()

    with pytest.raises(StoreError):
        await store.apply(WriteBatch(upserts=[entity("a", "k")]))
    with pytest.raises(StoreError):
        await store.load()


async def check_an_insert_writes_a_new_document_and_never_overwrites_a_stored_one(
    make_store: Callable[[], Store],
) -> None:
    """Regression: a new object whose id a stored document had overwrote that document."""
    async with make_store() as store:
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


async def check_an_upsert_with_an_older_epoch_is_fenced(make_store: Callable[[], Store]) -> None:
    """Several processes on one map: a fenced owner's write never overwrites its successor's."""
    async with make_store() as store:
        await store.apply(WriteBatch(upserts=[entity("a", "main:0:0", 1, 1, hp=1, ep=5)]))
        await store.apply(WriteBatch(upserts=[entity("b", "main:0:0", 1, 1, hp=1)]))
        result = await store.apply(
            WriteBatch(
                upserts=[
                    entity("a", "main:0:0", 2, 2, hp=2, ep=4),  # older: refused
                    entity("b", "main:0:0", 2, 2, hp=2, ep=1),  # none stored: written
                    entity("c", "main:0:0", 2, 2, hp=2, ep=1),  # new: written
                ]
            )
        )
        assert result.fenced == {"a"}
        assert result.written == 2
        docs = by_id(await store.load())
        assert docs["a"]["hp"] == 1 and docs["b"]["hp"] == 2 and docs["c"]["ep"] == 1
        # The same epoch, or a newer one, is written.
        result = await store.apply(
            WriteBatch(upserts=[entity("a", "main:0:0", 3, 3, hp=3, ep=5), entity("b", "k", ep=9)])
        )
        assert not result.fenced
        docs = by_id(await store.load())
        assert docs["a"]["hp"] == 3 and docs["b"]["ep"] == 9


async def check_a_delete_with_an_older_epoch_is_fenced(make_store: Callable[[], Store]) -> None:
    """A fenced owner's delete never removes what its successor wrote."""
    async with make_store() as store:
        await store.apply(
            WriteBatch(
                upserts=[
                    entity("newer", "main:0:0", 1, 1, ep=5),
                    entity("same", "main:0:0", 1, 1, ep=4),
                    entity("older", "main:0:0", 1, 1, ep=3),
                    entity("none", "main:0:0", 1, 1),
                    entity("plain", "main:0:0", 1, 1, ep=9),
                ]
            )
        )
        epochs = {"newer": 4, "same": 4, "older": 4, "none": 4, "missing": 4}
        await store.apply(WriteBatch(deletes=[*epochs, "plain"], delete_epochs=epochs))
        # Only the document whose stored epoch is newer than the delete's stays;
        # a delete without an epoch is unconditional, as before.
        assert ids(await store.load()) == {"newer"}


async def check_load_replays_a_spill_journal_first(make_store: Callable[[], Store]) -> None:
    async with make_store() as store:
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


async def check_a_spilled_delete_stays_conditional(make_store: Callable[[], Store]) -> None:
    """A fenced delete spilled at shutdown is fenced when the next start replays it."""
    async with make_store() as store:
        path = store.spill_path
        if path is None:
            pytest.skip("this store keeps no spill journal")
        await store.apply(
            WriteBatch(
                upserts=[entity("newer", "main:0:0", 1, 1, ep=5), entity("older", "k", ep=3)]
            )
        )
        SpillJournal(path).write(
            ([], [], ["newer", "older"]), reason="a test", delete_epochs={"newer": 4, "older": 4}
        )
        assert ids(await store.load()) == {"newer"}


STORE_CHECKS: tuple[Callable[[Callable[[], Store]], Awaitable[None]], ...] = (
    check_an_empty_store_loads_nothing,
    check_upserted_documents_load_back_equal,
    check_an_upsert_sets_the_fields_it_names_and_keeps_the_others,
    check_an_upsert_replaces_a_nested_value_whole,
    check_a_changed_key_and_position_move_the_document_between_loads,
    check_an_upsert_of_only_an_id_creates_an_empty_document,
    check_delete_removes_documents_and_ignores_missing_ids,
    check_one_batch_upserts_some_ids_and_deletes_others,
    check_load_by_keys_returns_the_documents_of_those_keys,
    check_load_by_region_keeps_that_map_and_the_half_open_box,
    check_a_map_name_is_matched_literally,
    check_load_by_region_reads_the_position_fields_it_is_given,
    check_load_with_keys_and_region_returns_documents_matching_either,
    check_applying_a_batch_again_changes_nothing,
    check_a_large_batch_is_written_whole,
    check_a_document_over_16_mib_is_refused_and_the_rest_written,
    check_a_field_name_mongodb_cannot_hold_is_refused_everywhere,
    check_a_value_that_cannot_be_encoded_is_refused,
    check_a_refused_update_leaves_the_stored_document_as_it_was,
    check_an_upsert_without_a_str_id_is_a_caller_error,
    check_documents_survive_closing_and_reopening_the_store,
    check_a_closed_store_refuses_calls,
    check_an_insert_writes_a_new_document_and_never_overwrites_a_stored_one,
    check_an_upsert_with_an_older_epoch_is_fenced,
    check_a_delete_with_an_older_epoch_is_fenced,
    check_load_replays_a_spill_journal_first,
    check_a_spilled_delete_stays_conditional,
)
"""Every check, in order: run each with a `make_store` of its own (see the module's docstring)."""
