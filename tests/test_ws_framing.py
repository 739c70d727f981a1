"""The direct write's WebSocket frames: RFC 6455 5.2 framing, byte for byte what aiohttp writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_websocket import WebSocketWriter

from synkworld._connection import _text_frame_header

LENGTHS = [0, 1, 125, 126, 127, 1000, 65535, 65536, 70_000, 300_000]


class _Capture(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: Any) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def _parse(frame: bytes) -> tuple[int, int, bool, bytes]:
    """(FIN, opcode, masked, payload) of one frame, read as RFC 6455 5.2 lays it out."""
    fin, opcode = frame[0] >> 7, frame[0] & 0x0F
    masked, length = bool(frame[1] & 0x80), frame[1] & 0x7F
    offset = 2
    if length == 126:
        length, offset = int.from_bytes(frame[2:4], "big"), 4
    elif length == 127:
        length, offset = int.from_bytes(frame[2:10], "big"), 10
    assert len(frame) == offset + length
    return fin, opcode, masked, frame[offset:]


@pytest.mark.parametrize("length", LENGTHS)
def test_a_direct_write_is_one_final_unmasked_text_frame(length: int) -> None:
    payload = bytes(i % 251 for i in range(length))
    assert _parse(_text_frame_header(length) + payload) == (1, 0x1, False, payload)


@pytest.mark.parametrize("length", LENGTHS)
async def test_a_direct_write_is_what_aiohttp_writes_for_the_same_frame(length: int) -> None:
    payload = b"x" * length
    transport = _Capture()
    writer = WebSocketWriter(BaseProtocol(asyncio.get_running_loop()), transport)
    await writer.send_frame(payload, WSMsgType.TEXT)
    assert bytes(transport.data) == _text_frame_header(length) + payload


def test_the_length_uses_the_shortest_encoding() -> None:
    assert _text_frame_header(125) == b"\x81\x7d"
    assert _text_frame_header(126) == b"\x81\x7e\x00\x7e"
    assert _text_frame_header(65535) == b"\x81\x7e\xff\xff"
    assert _text_frame_header(65536) == b"\x81\x7f" + (65536).to_bytes(8, "big")
