"""Closing a cluster node stops its background tasks, even when a cancellation is lost."""

from __future__ import annotations

import asyncio

import pytest

from synkworld import BusUnavailableError
from tests.cluster.support import InProcessCluster


@pytest.mark.timeout(30)  # the failure is a hang: close() used to swallow its own cancellation
async def test_closing_a_node_stops_its_tasks_when_a_cancellation_is_lost() -> None:
    # A client library can turn a cancellation inside its own timeout into a timeout
    # error (redis-py's socket timeout does, now and then). The node's loops took it
    # for the bus being away and went on; closing waited for them for ever, and the
    # process never exited after SIGTERM.
    cluster = InProcessCluster(owners=1)
    await cluster.start()
    node = cluster.procs[0].node
    real = node.backend.receive
    lost = 0

    async def receive(name: str, timeout_s: float) -> list[bytes]:
        nonlocal lost
        try:
            return await real(name, timeout_s)
        except asyncio.CancelledError:
            lost += 1
            raise BusUnavailableError("Redis unavailable: Timeout reading") from None

    node.backend.receive = receive  # type: ignore[method-assign]
    node.spawn()
    await asyncio.sleep(0.05)  # the inbox loop waits in `receive`
    await asyncio.wait_for(node.close(), 10)
    assert lost == 1
    await cluster.stop()
