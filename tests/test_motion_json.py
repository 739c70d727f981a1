"""The bulk motion encoder writes exactly the bytes orjson writes for the same batches."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synkworld import GridMap, SynkObject, World
from synkworld._motion_json import MAX_EXACT, encode_motion, fits, id_rows


class Walker(SynkObject, type="mj-walker"):
    x: float
    y: float
    hp: int = 1


def _expected(key: str, ids: list[str], rx: list[float], ry: list[float], scale: float) -> bytes:
    mv = [ids, [v / scale for v in rx], [v / scale for v in ry]]
    return orjson.dumps({"k": key, "mv": mv})


whole = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(min_value=-(MAX_EXACT - 1), max_value=MAX_EXACT - 1).map(round),
)
ids = st.text(min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    cells=st.lists(st.lists(st.tuples(ids, whole, whole), min_size=1, max_size=6), max_size=6),
    precision=st.integers(0, 9),
)
def test_encoder_matches_orjson(cells: list[list[tuple[str, int, int]]], precision: int) -> None:
    scale = 10.0**precision
    keys = [f"m:{i}:-{i}" for i in range(len(cells))]
    flat = [e for c in cells for e in c]
    id_json = np.array([orjson.dumps(e[0]) for e in flat] or [b""], dtype=bytes)[: len(flat)]
    rx = np.array([float(e[1]) for e in flat])
    ry = np.array([-0.0 if e[2] == 0 else float(e[2]) for e in flat])
    if not fits(rx, ry, precision):
        tiny = [v for v in (*rx, *ry) if 0 < abs(v) < 10 ** (precision - 5)]
        assert tiny and precision > 5  # orjson writes these with an exponent
        return
    got = encode_motion(
        [b'{"k":%b,"mv":[[' % orjson.dumps(k) for k in keys],
        np.array([len(c) for c in cells], dtype=np.int64),
        id_rows(id_json) if flat else np.zeros((0, 1), dtype=np.uint8),
        np.array([len(orjson.dumps(e[0])) for e in flat], dtype=np.int64),
        rx,
        ry,
        precision,
    )
    want = []
    at = 0
    for key, c in zip(keys, cells, strict=True):
        n = len(c)
        want.append(
            _expected(
                key, [e[0] for e in c], rx[at : at + n].tolist(), ry[at : at + n].tolist(), scale
            )
        )
        at += n
    assert got == want


def test_large_positions_are_not_for_the_encoder() -> None:
    assert not fits(np.array([float(MAX_EXACT)]), np.array([0.0]), 1)
    assert fits(np.array([float(MAX_EXACT - 1)]), np.array([0.0]), 1)
    assert not fits(np.array([0.0]), np.array([9.0]), 6)  # 9e-6: orjson writes "9e-6"
    assert fits(np.array([0.0]), np.array([10.0]), 6)


def _world(precision: int, origin: tuple[float, float]) -> World:
    box = (-50, -50, 50, 50)
    maps = [
        GridMap("main", cell_size=10, bounds=box, precision=precision, origin=origin),
        GridMap("b", cell_size=7, bounds=(0, 0, 30, 30), precision=2),
    ]
    return World(maps)


@pytest.mark.parametrize(
    ("precision", "origin"), [(0, (0, 0)), (1, (0, 0)), (3, (-0.5, 2.25)), (9, (0, 0))]
)
def test_committed_bytes_are_what_orjson_writes_for_the_objects_rounded_states(
    precision: int, origin: tuple[float, float]
) -> None:
    # Every batch (bulk motion encoder, or orjson for cells with other entries)
    # is what orjson writes for its message, and its values are the objects'.
    rng = np.random.default_rng(precision)
    names = ["a", 'q"uote', "back\\slash", "ünï", "e" * 40, "tab\t", "0"]
    world = _world(precision, origin)
    out: list[Walker] = []
    for i, (x, y) in enumerate(rng.uniform(-49, 49, (60, 2)).tolist()):
        on_b = i % 5 == 0
        ox, oy = (abs(x) % 29, abs(y) % 29) if on_b else (x, y)
        oid = f"{names[i % len(names)]}{i}"
        out.append(world.create(Walker(id=oid, x=ox, y=oy), map="b" if on_b else "main"))
    world.commit()
    exponents = 0
    for _ in range(25):
        step = rng.normal(0, 2, (2, 60))
        tiny = rng.random(60) < 0.1
        hp = rng.random(60) < 0.1
        for i, o in enumerate(out):
            limit = 29.0 if o.key and o.key.startswith("b:") else 49.0
            lo = 0.0 if limit == 29.0 else -limit
            # Rounds to -0.0; at 9 decimals orjson writes it as -1e-6.
            o.x = -1e-6 if tiny[i] and lo < 0 else float(np.clip(o.x + step[0][i], lo, limit))
            o.y = float(np.clip(o.y + step[1][i], lo, limit))
            if hp[i]:
                o.hp += 1
        changes = world.commit()
        states = {o.id: o.wire_state() for o in out}
        for data in changes.batches.data.values():
            msg = orjson.loads(data)
            assert orjson.dumps(msg) == data
            if "mv" in msg:
                ids, xs, ys = msg["mv"]
                assert xs == [states[i]["x"] for i in ids]
                assert ys == [states[i]["y"] for i in ids]
            exponents += b"e-6" in data
    assert (exponents > 0) == (precision == 9)
