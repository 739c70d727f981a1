"""What several processes on one map need of the medium between them: the bus backend.

Leases with fencing epochs, one stream per region whose entries are the ticks,
sets of wanted keys, a clock epoch set once, membership, and messages to a
process. `synkworld.bus.MemoryBackend` implements it in one process (with
faults to inject), `synkworld.bus.RedisBackend` over Redis; one contract test
suite runs over both (tests/bus/). The cluster's logic (`synkworld._cluster`)
is written against this interface only, so the core never imports redis.

Every entry of a region's stream is one tick: its id is the tick number, and
it names the tick of the entry before it in the stream (`Record.prev`), so
that a reader tells entries it missed (trimmed, or lost with Redis) from ticks
that never had one (an owner that skipped a tick, a region nobody held). An
append is fenced at the resource: it succeeds only while the appender holds the
region's lease at the epoch it names. Epochs come from one counter per world,
so they only grow, across regions too; an append may hand the lease over to
another node at a new epoch, in the same step (a planned migration).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

__all__ = ["Append", "AppendResult", "AppendStatus", "BusBackend", "Lease", "ReadResult", "Record"]


@dataclass(frozen=True, slots=True)
class Lease:
    """Who holds a region, at which epoch."""

    node: str
    epoch: int


class AppendStatus(enum.Enum):
    """What became of one fenced append."""

    OK = "ok"
    FENCED = "fenced"  # another node holds the lease, or a later epoch: nothing written
    UNHELD = "unheld"  # nobody holds it (it expired, or the medium lost it): nothing written
    DUPLICATE = "duplicate"  # an entry with this tick (or a later one) is there: nothing written


@dataclass(frozen=True, slots=True)
class Append:
    """One entry to append to a region's stream, fenced by the appender's lease.

    With `transfer_to`, the same step gives the lease to that node at a new
    epoch (for `ttl_ms`), and the entry carries the new epoch (`Record.epoch`).
    """

    region: str
    epoch: int
    tick: int
    fields: Mapping[bytes, bytes]
    transfer_to: str | None = None
    ttl_ms: int = 0


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What became of one append.

    `epoch` is the new one when the lease was handed over; for a FENCED append,
    `holder` is the node that holds the lease and `epoch` its epoch (the
    appender itself, when it took the lease again while the append was on
    its way).
    """

    status: AppendStatus
    epoch: int | None = None
    holder: str | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """One entry of a region's stream: the tick it is, and its fields.

    `prev` is the tick of the entry before it in the stream (-1: none);
    `epoch` is the lease's new epoch if this entry handed it over.
    """

    region: str
    tick: int
    fields: Mapping[bytes, bytes]
    prev: int = -1
    epoch: int | None = None


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Entries after the cursors, in tick order per region, and where some were missed."""

    records: list[Record] = field(default_factory=list)
    gaps: frozenset[str] = frozenset()
    """Regions whose entries after the cursor were trimmed away (or the stream was
    lost): the reader missed entries it will never see. A stream's first entry
    after the cursor is no gap (a region nobody held before)."""


class BusBackend(abc.ABC):
    """One process's connection to the medium of one shared world."""

    @property
    def losses(self) -> int:
        """How many times this connection has seen the medium lose its data (a restart
        without persistence): an entry missing after one may have been read before."""
        return 0

    # -- the clock ------------------------------------------------------------------

    @abc.abstractmethod
    async def clock_epoch(self, proposed_ms: int) -> int:
        """The world's tick 0, in Unix milliseconds: set once (by the first to ask), then read."""

    # -- leases -------------------------------------------------------------------

    @abc.abstractmethod
    async def acquire(self, region: str, node: str, ttl_ms: int, min_epoch: int = 0) -> int | None:
        """Takes a free region's lease for `ttl_ms`, with a new epoch; None if someone holds it.

        The new epoch is above `min_epoch` (the highest the node has seen: after
        the medium lost its counter, epochs must still grow). A region this
        node holds already is renewed, and its epoch returned.
        """

    @abc.abstractmethod
    async def renew(self, leases: Mapping[str, int], node: str, ttl_ms: int) -> set[str]:
        """Extends the leases this node holds (region -> epoch); returns the regions it lost."""

    @abc.abstractmethod
    async def release(self, region: str, node: str, epoch: int) -> None:
        """Gives a lease up, if it is still this node's at that epoch."""

    @abc.abstractmethod
    async def leases(self, regions: Collection[str]) -> dict[str, Lease]:
        """The current holders of these regions (regions nobody holds are left out)."""

    # -- streams --------------------------------------------------------------------

    @abc.abstractmethod
    async def append(self, node: str, entries: list[Append]) -> list[AppendResult]:
        """Appends entries, each fenced by its region's lease, in one round trip."""

    @abc.abstractmethod
    async def has_entry(self, region: str, tick: int) -> bool:
        """Tells whether a region's stream holds an entry of this tick.

        For an append whose outcome is unknown (the connection broke after
        sending it): whether it went through decides what became of it.
        """

    @abc.abstractmethod
    async def read(self, cursors: Mapping[str, int], timeout_s: float) -> ReadResult:
        """The entries after each region's cursor (the last tick read; -1: from the start).

        Waits up to `timeout_s` for one to arrive when there is none yet.
        """

    # -- wanted keys ----------------------------------------------------------------

    @abc.abstractmethod
    async def want(self, wants: Mapping[str, Collection[str]]) -> None:
        """Asks each region's owner for the snapshots of those keys in its next entry."""

    @abc.abstractmethod
    async def take_wanted(self, regions: Collection[str]) -> dict[str, set[str]]:
        """The keys asked for in these regions since the last call, and forgets them."""

    # -- membership and messages --------------------------------------------------------

    @abc.abstractmethod
    async def heartbeat(self, node: str, info: bytes, ttl_ms: int) -> None:
        """Says this node is alive (with what it says of itself) for `ttl_ms`."""

    @abc.abstractmethod
    async def members(self) -> dict[str, bytes]:
        """The nodes alive now, and what each says of itself."""

    @abc.abstractmethod
    async def send(self, node: str, message: bytes) -> None:
        """Sends a message to a node (at most once: a node that is gone never gets it)."""

    @abc.abstractmethod
    async def receive(self, node: str, timeout_s: float) -> list[bytes]:
        """The messages sent to this node since the last call; waits up to `timeout_s`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Releases the connection."""
