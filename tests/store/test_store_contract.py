"""The contract every store keeps, run over the memory, SQLite and MongoDB (both drivers) stores.

The checks themselves are public, in `synkworld.testing.store_contract`, for the
stores of others to run too; what stays here is not a check of a store instance.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synkworld.store import MemoryStore, Region, SQLiteStore, Store, WriteBatch
from synkworld.testing.store_contract import STORE_CHECKS, by_id


@pytest.mark.parametrize("check", STORE_CHECKS, ids=lambda c: c.__name__)
async def test_the_store_keeps_the_contract(
    check: Callable[[Callable[[], Store]], Awaitable[None]], make_store: Callable[[], Store]
) -> None:
    await check(make_store)


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
