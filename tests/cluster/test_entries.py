"""A region's bus entry: what the builder writes is what a reader decodes; bad parts are refused."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from synkworld._bus_backend import Record
from synkworld._cluster._entries import Entry, EntryBuilder

keys = st.builds(lambda x, y: f"main:{x}:{y}", st.integers(-50, 50), st.integers(-50, 50))
parts = st.dictionaries(keys, st.binary(max_size=64), max_size=12)


@given(parts, parts)
def test_batches_and_snapshots_come_back_as_they_were_packed(
    batches: dict[str, bytes], snapshots: dict[str, bytes]
) -> None:
    b = EntryBuilder("p0", 7, batches=dict(batches), snapshots=dict(snapshots))
    b.adopted = [("w1", "main:0:0", "main/0/0", 41)]
    fields = b.fields()
    # One field for all the batches and one for all the snapshots, whatever their number.
    assert len(fields) <= 3
    entry = Entry.decode(Record("main/0/0", 42, fields))
    assert (entry.node, entry.epoch, entry.tick) == ("p0", 7, 42)
    assert entry.batches == batches and entry.snapshots == snapshots
    assert entry.adopted == [("w1", "main:0:0", "main/0/0", 41)]


def _fields(index: list[list[object]], blob: bytes) -> dict[bytes, bytes]:
    return {b"h": orjson.dumps({"n": "p0", "e": 1, "b": index}), b"B": blob}


@pytest.mark.parametrize(
    ("index", "blob"),
    [
        ([["main:0:0", 5]], b"abc"),  # a part runs past the end
        ([["main:0:0", 2]], b"abc"),  # bytes left over
        ([["main:0:0"]], b"abc"),  # no length
        ([["main:0:0", "x"]], b"abc"),  # not a length
    ],
)
def test_an_entry_whose_parts_do_not_add_up_is_refused(
    index: list[list[object]], blob: bytes
) -> None:
    with pytest.raises(ValueError, match="bad parts"):
        Entry.decode(Record("main/0/0", 1, _fields(index, blob)))
