"""docs/protocol-v2.md's worked example is what the server sends, byte for byte.

The scenario runs in a fresh interpreter, so that the type table holds only
the example's type (the tests' own types would take its numbers).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from synkworld._mirror_v2 import Reader

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol-v2.md"

SCENARIO = r"""
from synkworld import GridMap, Session, SynkObject, World, deliver_frames
from synkworld._bus import _SnapshotsV2
from synkworld._frames import SharedFramesV2
from synkworld._wire_v2 import encode_hello_v2, type_table
from synkworld.testing import ReferenceClient, ReferenceClientV2

class Boat(SynkObject, type="boat"):
    x: float
    y: float
    hp: int = 3
    name: str = ""

n = iter(range(1, 100))
w = World(GridMap(cell_size=100, bounds=(0, 0, 1000, 1000)), id_factory=lambda: f"b{next(n)}")
w.record_v2 = True
s2 = Session("s2", w.grid, wire_version=2)
s1 = Session("s1", w.grid)
hello = encode_hello_v2("s2", 0, 20, w.grid, type_table())
s2.types_known = len(type_table())
c2, c1 = ReferenceClientV2(), ReferenceClient(w.grid.describe())
c2.apply(hello)
a = w.create(Boat(x=110.0, y=120.0, name="ann"))
b = w.create(Boat(x=150.0, y=150.0, name="bo"))
c = w.create(Boat(x=180.0, y=130.0, name="cy"))
for s in (s1, s2):
    s.sub(["main:1:1"])

def tick():
    ch = w.commit()
    ch.batches_v2.prepare(s2.held)
    v2 = SharedFramesV2(ch.batches_v2.data, _SnapshotsV2(w), w.key_codes)
    deliver_frames(ch.tick, ch.batches, [s2], w, now=0, lag_timeout_s=9, encoder=v2)
    deliver_frames(ch.tick, ch.batches, [s1], w, now=0, lag_timeout_s=9)
    f2, f1 = s2.pop(), s1.pop()
    if f2 is not None:
        c2.apply(f2)
        c1.apply(f1)
    assert c1.view() == c2.view()
    return f2, f1

for _ in range(4):
    tick()
a.x += 1.5
a.y -= 0.5
b.x += 0.3
w.move(c, 205.0, 130.0)
for s in (s1, s2):
    s.sub(["main:2:1"])
t5 = tick()
a.hp = 1
w.create(Boat(x=120.0, y=180.0, name="dee"))
b.y += 0.2
c.x += 1.0
t6 = tick()
print(t5[0].hex(), len(t5[1]))
print(t6[0].hex(), len(t6[1]))
"""


def _key(r: Reader) -> None:
    if r.varint() == 0:
        n = r.varint()
        r.pos += n
    else:
        r.varint()
        r.varint()


def _parts(frame: bytes) -> tuple[bytes, list[bytes], bytes]:
    """A tick frame split into what comes before its batches, the batches, and the rest
    (the batches of a frame come in no particular order)."""
    r = Reader(frame)
    r.u8()
    r.varint()
    parts = r.u8()
    assert not parts & 0x01
    for bit in (0x02, 0x04):
        if parts & bit:
            for _ in range(r.varint()):
                _key(r)
    batches = []
    if parts & 0x08:
        for _ in range(r.varint()):
            start = r.pos
            _key(r)
            head = r.varint()
            if head & 0x01:
                for _ in range(r.varint()):
                    r.varint()
            if head & 0x02:
                for _ in range(r.varint()):
                    r.varint()
                    _key(r)
            if head & 0x04:
                n = r.varint()
                r.pos += n
            for _ in range((head >> 4) * (2 if head & 0x08 else 3)):
                r.varint()
            batches.append(frame[start : r.pos])
        head_end = len(frame[: frame.index(batches[0])]) if batches else r.pos
    else:
        head_end = r.pos
    return frame[:head_end], sorted(batches), frame[r.pos :]


def _doc_frames() -> list[bytes]:
    """The hex bytes of the example's two frame blocks, comments left out."""
    text = DOC.read_text()
    frames = []
    for n in (5, 6):
        start = text.index(f"The frame of tick {n},")
        block = text[start:].split("\n\n", 2)[1]
        hexes = []
        for line in block.splitlines():
            for token in line.split():
                if not re.fullmatch(r"[0-9a-f]{2}", token):
                    break
                hexes.append(token)
        frames.append(bytes.fromhex("".join(hexes)))
    return frames


def test_the_worked_example_is_what_the_server_sends() -> None:
    run = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = run.stdout.split("\n")
    sent = [bytes.fromhex(line.split()[0]) for line in out[:2]]
    v1_sizes = [int(line.split()[1]) for line in out[:2]]
    assert [_parts(f) for f in _doc_frames()] == [_parts(f) for f in sent]
    text = DOC.read_text()
    assert f"The frame of tick 5, {len(sent[0])} bytes" in text
    assert f"The frame of tick 6, {len(sent[1])} bytes" in text
    assert f"in {v1_sizes[0]} and {v1_sizes[1]} bytes" in text
