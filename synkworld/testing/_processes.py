"""Child processes that end with their parent.

A test run or a load test that is interrupted (Ctrl-C twice, a CI timeout, a
`kill -9` of pytest) must not leave servers behind that keep ticking. Linux
delivers a signal of our choice to a child when its parent dies
(`PR_SET_PDEATHSIG`); elsewhere the child relies on the caller's cleanup.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["die_with_parent", "start_process", "start_process_async"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Asks the kernel to send `sig` to this process when its parent dies (Linux only).

    Runs in the child between fork and exec (`preexec_fn`), or at the start of a
    child's own `main`. A parent that is already gone by then is caught by
    comparing the parent pid with 1 (the child was re-parented to init).
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return
    if os.getppid() == 1:
        os.kill(os.getpid(), sig)


def _preexec(sig: int, before_exec: Callable[[], None] | None) -> Callable[[], None]:
    def run() -> None:
        die_with_parent(sig)
        if before_exec is not None:
            before_exec()

    return run


def start_process(
    cmd: Sequence[str],
    *,
    death_signal: int = signal.SIGTERM,
    before_exec: Callable[[], None] | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(cmd, **popen)` for a child that gets `death_signal` if we die.

    `before_exec` runs in the child before the program starts (to lower a
    resource limit, say).
    """
    return subprocess.Popen(list(cmd), preexec_fn=_preexec(death_signal, before_exec), **popen)


async def start_process_async(
    *cmd: str,
    death_signal: int = signal.SIGTERM,
    before_exec: Callable[[], None] | None = None,
    **kwargs: Any,
) -> asyncio.subprocess.Process:
    """`asyncio.create_subprocess_exec(*cmd, **kwargs)` for a child that ends with us."""
    return await asyncio.create_subprocess_exec(
        *cmd, preexec_fn=_preexec(death_signal, before_exec), **kwargs
    )
