"""The JSON text of a tick's `mv` arrays, written for every cell at once with numpy.

Most cells of a busy tick carry little but `mv` arrays. Writing them one cell
at a time costs a handful of Python operations per cell (slicing three lists,
a message dict, one `orjson.dumps` call); here the ids and numbers of every
cell are laid out as fixed-width byte rows, the padding is squeezed out in one
pass, and each cell's batch is one slice of the result behind its prefix
(``{"k":"<key>",...,"mv":[[``, which carries the cell's other entries).

The bytes are exactly what orjson writes for the same rounded values: a
position rounded to `p` decimals is the integer `k = rint(v * 10**p)`, and for
|k| < 10**15 the shortest text that reads back as the same float is k's
decimal digits with the point `p` places from the right, trailing zeros
dropped but one kept (``12.0``, ``12.5``). Values orjson writes with an
exponent go the ordinary way (`fits`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_EXACT", "encode_motion", "fits", "id_rows"]

MAX_EXACT = 10**15
"""Rounded positions |k| below this have a plain decimal shortest form (15 significant digits)."""

_PAD = 0  # never in JSON text: orjson escapes a NUL in a string as \u0000
_ZERO = ord("0")
_COMMA = ord(",")
_MID = np.frombuffer(b"],[", dtype=np.uint8)
_END = np.frombuffer(b"]]}", dtype=np.uint8)
_POW10 = 10 ** np.arange(19, dtype=np.int64)


def fits(rx: npt.NDArray[np.float64], ry: npt.NDArray[np.float64], precision: int) -> bool:
    """Tells whether orjson writes every rounded position as a plain decimal.

    It does from 1e-5 up to 1e16; `MAX_EXACT` is lower, for the digits.
    """
    if not len(rx):
        return True
    for r in (np.abs(rx), np.abs(ry)):
        if float(r.max()) >= MAX_EXACT:
            return False
        if precision > 5 and bool(((r > 0) & (r < 10 ** (precision - 5))).any()):
            return False
    return True


def id_rows(id_json: npt.NDArray[np.bytes_]) -> npt.NDArray[np.uint8]:
    """The JSON-encoded ids of a fixed-width ``S<n>`` array as rows of bytes, NUL-padded."""
    width = id_json.dtype.itemsize
    return np.ascontiguousarray(id_json).view(np.uint8).reshape(len(id_json), width)


def _number_rows(
    r: npt.NDArray[np.float64], precision: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Each r / 10**precision (r whole) as JSON text: NUL-padded rows, and their text lengths."""
    neg = np.signbit(r)  # orjson writes -0.0 for a coordinate that rounds to minus zero
    m = np.abs(r).astype(np.int64)
    scale = int(_POW10[precision])
    ip, fp = np.divmod(m, scale)
    int_digits = max(1, len(str(int(ip.max())))) if len(ip) else 1
    frac_slots = max(precision, 1)
    # [sign][int digits, right-aligned][.][frac digits, trailing zeros padded out]
    rows = np.zeros((len(m), 1 + int_digits + 1 + frac_slots), dtype=np.uint8)
    rows[:, 0] = np.where(neg, ord("-"), _PAD)
    n_int = np.searchsorted(_POW10[1:], ip, side="right") + 1
    rest = ip
    for j in range(int_digits):
        rest, d = np.divmod(rest, 10)
        rows[:, int_digits - j] = np.where(j < n_int, _ZERO + d, _PAD)
    rows[:, int_digits + 1] = ord(".")
    # Fraction digits after the last non-zero one are padding, except the
    # first, which always stays ("12.0").
    n_frac = np.ones(len(m), dtype=np.int64)
    for j in range(1, precision):
        n_frac[fp % _POW10[precision - j] != 0] = j + 1
    for j in range(frac_slots):
        d = (fp // _POW10[precision - 1 - j]) % 10 if precision else np.zeros_like(fp)
        rows[:, int_digits + 2 + j] = np.where(j < n_frac, _ZERO + d, _PAD)
    return rows, neg + n_int + 1 + n_frac


def encode_motion(
    prefixes: list[bytes],
    counts: npt.NDArray[np.int64],
    ids: npt.NDArray[np.uint8],
    id_lengths: npt.NDArray[np.int64],
    rx: npt.NDArray[np.float64],
    ry: npt.NDArray[np.float64],
    precision: int,
) -> list[bytes]:
    """The batch bytes of consecutive cells: each prefix followed by the cell's `mv` arrays.

    `prefixes[g]` is everything of cell g's batch before its `mv` arrays, up to
    and including ``"mv":[[``. The cell owns the next `counts[g]` (at least 1)
    entries of `ids` (rows from `id_rows`) and `id_lengths`, and of `rx` and
    `ry`: positions times 10**precision, rounded to whole numbers, for which
    `fits` holds.
    """
    n = len(rx)
    groups = len(counts)
    if groups == 0:
        return []
    (x_rows, x_len), (y_rows, y_len) = _number_rows(rx, precision), _number_rows(ry, precision)
    width = max(ids.shape[1], x_rows.shape[1], y_rows.shape[1]) + 1  # + a comma
    # Each cell is its tokens in order: ids, "],[", xs, "],[", ys, "]]}".
    firsts = np.zeros(groups, dtype=np.int64)
    np.cumsum(counts[:-1], out=firsts[1:])
    group_of = np.repeat(np.arange(groups, dtype=np.int64), counts)
    local = np.arange(n, dtype=np.int64) - firsts[group_of]
    base = 3 * firsts + 3 * np.arange(groups, dtype=np.int64)
    count_of = counts[group_of]
    entity_base = base[group_of] + local
    not_last = local < count_of - 1
    comma = np.where(not_last, _COMMA, _PAD).astype(np.uint8)

    tokens = np.zeros((3 * n + 3 * groups, width), dtype=np.uint8)
    rows_of = (entity_base, entity_base + count_of + 1, entity_base + 2 * count_of + 2)
    for rows, block in zip(rows_of, (ids, x_rows, y_rows), strict=True):
        w = block.shape[1]
        tokens[rows, :w] = block
        tokens[rows, w] = comma
    tokens[base + counts, :3] = _MID
    tokens[base + 2 * counts + 1, :3] = _MID
    last = base + 3 * counts + 2
    tokens[last, :3] = _END

    text = tokens[tokens != _PAD].tobytes()
    # A cell's text: its entities' ids and numbers, their commas, "],[" twice and "]]}".
    per_entity = id_lengths + x_len + y_len + 3 * not_last
    ends = np.cumsum(np.add.reduceat(per_entity, firsts) + 9).tolist()
    starts = [0, *ends[:-1]]
    return [p + text[a:b] for p, a, b in zip(prefixes, starts, ends, strict=True)]
