"""A clock that moves only when told to: time-dependent code tested instantly and exactly."""

from __future__ import annotations

import asyncio

__all__ = ["FakeClock"]


class FakeClock:
    """Time that moves only when `advance` is called or someone `sleep`s on it.

    Call it for the time (it stands for `time.monotonic`); give `sleep` where
    an `asyncio.sleep` is taken (the tick loop's `sleep=`): a sleep moves the
    clock by its duration at once, and lets other tasks run.
    """

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Moves the clock forward; returns the new time."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.now += seconds
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Records the sleep and moves the clock by it."""
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)
