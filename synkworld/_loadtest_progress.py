"""The load test's progress on stderr: one redrawn line on a terminal, a line every few
seconds otherwise (a log file or a CI job should not fill with carriage returns)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress"]

_WIDTH = 30


class Progress:
    """Draws a phase's bar and status; `enabled=False` draws nothing."""

    def __init__(
        self, enabled: bool = True, stream: TextIO | None = None, every_s: float | None = None
    ) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s if every_s is not None else (0.25 if self.tty else 5.0)

    def note(self, text: str) -> None:
        """Prints a line of its own."""
        if self.enabled:
            self.stream.write(("\r\x1b[K" if self.tty else "") + f"loadtest: {text}\n")
            self.stream.flush()

    def draw(self, phase: str, done: float, status: str) -> None:
        """Draws the bar once: `done` is the fraction of the phase behind us."""
        if not self.enabled:
            return
        bar = "#" * round(max(0.0, min(1.0, done)) * _WIDTH)
        line = f"loadtest {phase:<10} [{bar:<{_WIDTH}}] {status}"
        self.stream.write(f"\r\x1b[K{line}" if self.tty else line + "\n")
        self.stream.flush()

    def end(self) -> None:
        """Ends a phase's redrawn line."""
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    async def track(self, phase: str, done: Callable[[], float], status: Callable[[], str]) -> None:
        """Draws until cancelled (the caller knows when the phase is over)."""
        try:
            while True:
                self.draw(phase, done(), status())
                await asyncio.sleep(self.every_s)
        except asyncio.CancelledError:
            self.draw(phase, done(), status())
            self.end()
            raise

    async def wait(self, seconds: float, phase: str, status: Callable[[], str]) -> None:
        """Sleeps `seconds`, drawing how far it got; the bar ends itself."""
        start = time.monotonic()
        end = start + seconds
        while True:
            now = time.monotonic()
            elapsed = min(now - start, seconds)
            self.draw(
                phase,
                elapsed / seconds if seconds > 0 else 1.0,
                f"{elapsed:5.1f}/{seconds:g} s  {status()}",
            )
            if now >= end:
                break
            await asyncio.sleep(min(self.every_s, end - now))
        self.end()
