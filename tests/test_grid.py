"""Unit tests of maps, cells, keys and the R-tree of cells."""

from __future__ import annotations

import numpy as np
import pytest

from synkworld import ConfigError, Grid, GridMap, is_grid_key
from synkworld._grid import cell_order


def keys(*cells: tuple[int, int], name: str = "main") -> set[str]:
    return {f"{name}:{cx}:{cy}" for cx, cy in cells}


def test_key_of_points_inside_edges_and_negative_coordinates() -> None:
    m = GridMap(cell_size=250, bounds=(0, 0, 1000, 1000))
    assert m.key_of(0, 0) == "main:0:0"
    assert m.key_of(249.999, 0) == "main:0:0"
    assert m.key_of(250, 0) == "main:1:0"
    assert m.key_of(-0.001, -250) == "main:-1:-1"
    assert m.key_of(-250.001, 10) == "main:-2:0"


def test_origin_shifts_cells() -> None:
    m = GridMap("sea", cell_size=10, origin=(-5, 100), bounds=(-5, 100, 45, 150))
    assert m.key_of(-5, 100) == "sea:0:0"
    assert m.key_of(4.99, 109.99) == "sea:0:0"
    assert m.key_of(5, 110) == "sea:1:1"
    assert m.cell_count == 25


def test_vectorised_keys_match_scalar_keys() -> None:
    m = GridMap(cell_size=7.5, origin=(3, -2), bounds=(0, 0, 100, 100))
    rng = np.random.default_rng(1)
    xs = rng.uniform(-200, 200, 1000)
    ys = rng.uniform(-200, 200, 1000)
    assert m.keys_of(xs, ys) == [m.key_of(x, y) for x, y in zip(xs, ys, strict=True)]


def test_bounds_are_half_open() -> None:
    m = GridMap(cell_size=250, bounds=(0, 0, 1000, 750))
    assert m.cell_count == 4 * 3
    assert not m.has_cell(4, 0)


def test_rect_to_keys_with_margin() -> None:
    m = GridMap(cell_size=10, bounds=(0, 0, 100, 100))
    assert set(m.keys_in_rect((12, 12, 18, 18))) == keys((1, 1))
    got = set(m.keys_in_rect((12, 12, 18, 18), margin=1))
    assert got == keys(*[(x, y) for x in (0, 1, 2) for y in (0, 1, 2)])
    # A rectangle touching a cell's border covers that cell too (closed rectangle).
    assert set(m.keys_in_rect((10, 10, 20, 20))) == keys((1, 1), (2, 1), (1, 2), (2, 2))


def test_rect_clipped_to_existing_cells() -> None:
    m = GridMap(cell_size=10, bounds=(0, 0, 30, 30))
    assert len(m.keys_in_rect((-1e9, -1e9, 1e9, 1e9), margin=3)) == 9
    assert m.keys_in_rect((100, 100, 200, 200)) == []
    assert set(m.keys_in_rect((-15, -15, -11, -11), margin=1)) == set()
    assert set(m.keys_in_rect((-5, -5, -1, -1), margin=1)) == keys((0, 0))


def test_holes_are_never_subscribed() -> None:
    m = GridMap(cell_size=10, bounds=(0, 0, 30, 30), holes=[(1, 1)])
    got = set(m.keys_in_rect((0, 0, 30, 30)))
    assert "main:1:1" not in got
    assert len(got) == 8
    assert m.key_of(15, 15) == "main:1:1"  # a point in a hole still has a key


def test_growing_map() -> None:
    m = GridMap("wild", cell_size=10, fill=False)
    assert m.keys_in_rect((0, 0, 100, 100)) == []
    assert m.add_cell(0, 0)
    assert not m.add_cell(0, 0)
    m.add_cell(-3, 2)
    assert set(m.keys_in_rect((-40, 0, 10, 30))) == keys((0, 0), (-3, 2), name="wild")
    assert m.bounds == (-30.0, 0.0, 10.0, 30.0)


def test_rect_validation() -> None:
    m = GridMap(cell_size=10, bounds=(0, 0, 30, 30))
    with pytest.raises(ValueError, match="finite"):
        m.keys_in_rect((0, 0, float("inf"), 1))
    with pytest.raises(ValueError, match="x0 <= x1"):
        m.keys_in_rect((5, 0, 1, 1))
    with pytest.raises(ValueError, match="margin"):
        m.keys_in_rect((0, 0, 1, 1), margin=-1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cell_size": 0}, "cell_size"),
        ({"cell_size": float("nan")}, "cell_size"),
        ({"cell_size": 1, "bounds": (0, 0, 0, 10)}, "bounds"),
        ({"cell_size": 1, "pos_fields": ("x", "x")}, "pos_fields"),
        ({"cell_size": 1, "precision": 12}, "precision"),
    ],
)
def test_bad_map_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GridMap(**kwargs)  # type: ignore[arg-type]


def test_bad_map_name() -> None:
    with pytest.raises(ConfigError, match="map name"):
        GridMap("a:b", cell_size=1)


def test_grid_keys_and_codes() -> None:
    a = GridMap("a", cell_size=10, bounds=(0, 0, 20, 20))
    b = GridMap("b", cell_size=5, origin=(100, 100), bounds=(100, 100, 110, 110))
    g = Grid([a, b])
    assert g.parse_key("b:1:-1") == (b, 1, -1)
    assert g.parse_key("c:1:1") is None
    assert g.parse_key("room") is None
    assert is_grid_key("a:0:0") and is_grid_key("x:-3:12")
    assert not is_grid_key("chat") and not is_grid_key("a:0") and not is_grid_key("a:b:c")
    idx = np.array([0, 1, 1, 0])
    xs = np.array([5.0, 104.0, 96.0, -1.0])
    ys = np.array([15.0, 100.0, 109.0, -1.0])
    codes = g.codes_of(idx, xs, ys)
    assert [g.key_for_code(c) for c in codes.tolist()] == ["a:0:1", "b:0:0", "b:-1:1", "a:-1:-1"]
    assert g.code_of(b, 104.0, 100.0) == codes[1]
    with pytest.raises(ConfigError, match="two maps"):
        Grid([GridMap("a", cell_size=1), GridMap("a", cell_size=1)])


def test_round_pos_matches_numpy() -> None:
    m = GridMap(cell_size=10, precision=2)
    vals = np.random.default_rng(3).uniform(-1e5, 1e5, 2000)
    scale = 100.0
    assert [m.round_pos(v) for v in vals] == (np.rint(vals * scale) / scale).tolist()


def test_describe_for_hello() -> None:
    m = GridMap(cell_size=250, bounds=(0, 0, 10000, 10000))
    assert m.describe() == {
        "cell": 250,
        "origin": [0, 0],
        "bounds": [0, 0, 10000, 10000],
        "pos": ["x", "y"],
        "prec": 1,
    }


@pytest.mark.parametrize("span", [1, 40, 255, 256, 300, 5000])
def test_cell_order_is_the_stable_sort_of_the_codes(span: int) -> None:
    rng = np.random.default_rng(span)
    for maps in ([0], [0, 1]):
        n = 3000
        m = rng.choice(maps, n)
        cx = rng.integers(-span // 2, span - span // 2, n)
        cy = rng.integers(-7, 9, n) * (span // 40 + 1)
        codes = np.array(
            [Grid.code(int(a), int(b), int(c)) for a, b, c in zip(m, cx, cy, strict=True)],
            dtype=np.int64,
        )
        assert np.array_equal(cell_order(codes), np.argsort(codes, kind="stable"))
    assert cell_order(np.array([5], dtype=np.int64)).tolist() == [0]


def test_huge_rectangles_share_one_cached_range_and_the_cache_stays_bounded() -> None:
    """Regression: each distinct huge rectangle cached a list of every cell (53 MiB after
    5,000 refused views on a 40 x 40 map)."""
    from synkworld._grid import _RANGE_CACHE_KEYS

    gmap = GridMap(cell_size=10, bounds=(0, 0, 400, 400))
    for i in range(5000):
        assert len(gmap.keys_in_rect((-1e6 - i, -1e6, 1e6 + i, 1e6))) == 1600
    assert len(gmap._range_keys) == 1
    for i in range(3000):
        gmap.keys_in_rect((i % 40 * 10, 0, 400, i // 40 * 5))
    assert gmap._range_cached <= _RANGE_CACHE_KEYS
    assert gmap._range_cached == sum(len(v) for v in gmap._range_keys.values())
