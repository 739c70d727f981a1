"""The bus over Redis: streams, leases and sets through redis.asyncio (the `redis` extra).

Keys, all under ``sw:<world>:``:

- ``clock``: the world's tick 0 in Unix ms (``SET NX``);
- ``epoch``: the fencing epochs' counter; ``lease:<region>``: ``<node>|<epoch>``
  with a TTL (``SET NX PX``, renewed by its holder);
- ``s:<region>``: the region's stream, one entry per tick with the tick as its
  id (``<tick>-0``), trimmed to about `maxlen` entries;
- ``w:<region>``: the keys whose snapshots readers want (a set);
- ``m:<node>``: a member's heartbeat (with a TTL); ``q:<node>``: its inbox (a list);
- ``gen``: a marker set at start; a reader that finds it gone or changed knows
  that Redis lost its data (a restart), and treats every region as skipped.

Appends and lease changes are Lua functions loaded at start, so that the check
of the lease and the write are one step at the resource ("fencing").
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from synkworld._bus_backend import (
    Append,
    AppendResult,
    AppendStatus,
    BusBackend,
    Lease,
    ReadResult,
    Record,
)
from synkworld._errors import BusUnavailableError
from synkworld.bus._resp import RespConnection

__all__ = ["RedisBackend"]

_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local node, epoch = string.match(cur, '^(.*)|(%d+)$')
  if node == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(epoch)
  end
  return false
end
local e = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if e <= floor then
  e = floor + 1
  redis.call('SET', KEYS[2], e)
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. e, 'PX', ARGV[2])
return e
"""

_RENEW = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
  else
    table.insert(lost, i)
  end
end
return lost
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# One call appends every region's entry of a tick (one script run, not one per
# region: redis-py's cost per command, and Redis's, is most of an append).
# KEYS: the epoch counter, then each region's lease and stream. ARGV: maxlen, then
# per region "<node>|<epoch>", "<tick>-0", the node to hand the lease to ('' for
# none), its TTL in ms, the number of field and value arguments, and those. Each
# region's lease is checked apart, as if appended alone; the reply has one
# {status, new epoch[, holder]} per region. The entry gets `p`, the tick of the
# stream's last entry, and `ne`, the new epoch of a handed-over lease.
_APPEND = """
local out = {}
local a = 2
for r = 1, (#KEYS - 1) / 2 do
  local lease, stream = KEYS[2 * r], KEYS[2 * r + 1]
  local owner, id, to, ttl = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local first = a + 5
  a = first + tonumber(ARGV[a + 4])
  local held = redis.call('GET', lease)
  if not held then
    out[r] = {'UNHELD', 0}
  elseif held ~= owner then
    out[r] = {'FENCED', 0, held}
  else
    local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
    local prev = '-1'
    local duplicate = false
    if #last > 0 then
      prev = string.match(last[1][1], '^(%d+)')
      duplicate = tonumber(string.match(id, '^(%d+)')) <= tonumber(prev)
    end
    if duplicate then
      out[r] = {'DUPLICATE', 0}
    else
      local fields = {'p', prev}
      local ne = 0
      if to ~= '' then
        ne = redis.call('INCR', KEYS[1])
        table.insert(fields, 'ne')
        table.insert(fields, tostring(ne))
      end
      for i = first, a - 1 do table.insert(fields, ARGV[i]) end
      redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], id, unpack(fields))
      if ne ~= 0 then redis.call('SET', lease, to .. '|' .. ne, 'PX', ttl) end
      out[r] = {'OK', ne}
    end
  end
end
return out
"""

_APPEND_SHA = hashlib.sha1(_APPEND.encode()).hexdigest()

_TAKE = """
local out = {}
for i, key in ipairs(KEYS) do
  local members = redis.call('SMEMBERS', key)
  if #members > 0 then
    redis.call('DEL', key)
    table.insert(out, i)
    table.insert(out, members)
  end
end
return out
"""

_TAKE_SHA = hashlib.sha1(_TAKE.encode()).hexdigest()


class RedisBackend(BusBackend):
    """One process's connection to a world's keys in Redis."""

    def __init__(self, url: str, world: str, *, maxlen: int = 200, **client_options: Any) -> None:
        self.url = url
        self.world = world
        self.maxlen = maxlen
        self.prefix = f"sw:{world}:"
        client_options.setdefault("socket_timeout", 5.0)
        client_options.setdefault("socket_connect_timeout", 2.0)
        self._redis: aioredis.Redis = aioredis.from_url(url, **client_options)
        # The calls of every tick go through a lean connection of their own (see
        # `_resp`); a TLS URL keeps them on redis-py.
        self._fast = _lean_connection(self._redis, client_options)
        self._scripts: dict[str, Any] = {}
        self._generation: bytes | None = None
        self._losses = 0
        self._losses_read = 0

    def _k(self, name: str) -> str:
        return self.prefix + name

    def _script(self, name: str, source: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._redis.register_script(source)
        return script

    async def clock_epoch(self, proposed_ms: int) -> int:
        async with _errors():
            key = self._k("clock")
            await self._redis.set(key, proposed_ms, nx=True)
            value = await self._redis.get(key)
            return int(value) if value is not None else proposed_ms

    async def acquire(self, region: str, node: str, ttl_ms: int, min_epoch: int = 0) -> int | None:
        async with _errors():
            keys = [self._k(f"lease:{region}"), self._k("epoch")]
            epoch = await self._script("acquire", _ACQUIRE)(
                keys=keys, args=[node, ttl_ms, min_epoch]
            )
            return int(epoch) if epoch is not None else None

    async def renew(self, leases: Mapping[str, int], node: str, ttl_ms: int) -> set[str]:
        if not leases:
            return set()
        regions = list(leases)
        async with _errors():
            lost = await self._script("renew", _RENEW)(
                keys=[self._k(f"lease:{r}") for r in regions],
                args=[ttl_ms, *(f"{node}|{leases[r]}" for r in regions)],
            )
        return {regions[int(i) - 1] for i in lost}

    async def release(self, region: str, node: str, epoch: int) -> None:
        async with _errors():
            await self._script("release", _RELEASE)(
                keys=[self._k(f"lease:{region}")], args=[f"{node}|{epoch}"]
            )

    async def leases(self, regions: Collection[str]) -> dict[str, Lease]:
        regions = list(regions)
        if not regions:
            return {}
        async with _errors():
            values = await self._redis.mget([self._k(f"lease:{r}") for r in regions])
        out = {}
        for region, value in zip(regions, values, strict=True):
            if value is not None:
                node, _, epoch = _text(value).rpartition("|")
                out[region] = Lease(node, int(epoch))
        return out

    async def append(self, node: str, entries: list[Append]) -> list[AppendResult]:
        if not entries:
            return []
        keys: list[Any] = [self._k("epoch")]
        args: list[Any] = [self.maxlen]
        for e in entries:
            keys += [self._k(f"lease:{e.region}"), self._k(f"s:{e.region}")]
            args += [f"{node}|{e.epoch}", f"{e.tick}-0", e.transfer_to or "", e.ttl_ms]
            args.append(2 * len(e.fields))
            for k, v in e.fields.items():
                args += [k, v]
        async with _errors():
            await self._ensure_generation()
            results = await self._evalsha(_APPEND_SHA, _APPEND, keys, args)
        out = []
        for reply in results:
            status = AppendStatus(_text(reply[0]).lower())
            if status is AppendStatus.FENCED and len(reply) > 2:
                holder, _, held_epoch = _text(reply[2]).rpartition("|")
                out.append(AppendResult(status, int(held_epoch), holder))
                continue
            ne = int(reply[1])
            out.append(AppendResult(status, ne if ne else None))
        return out

    @property
    def losses(self) -> int:
        return self._losses

    async def has_entry(self, region: str, tick: int) -> bool:
        async with _errors():
            await self._wiped()  # counted in `losses`, which the caller compares
            found = await self._redis.xrange(self._k(f"s:{region}"), f"{tick}-0", f"{tick}-0")
        return bool(found)

    async def read(self, cursors: Mapping[str, int], timeout_s: float) -> ReadResult:
        if not cursors:
            return ReadResult()
        regions = list(cursors)
        streams: dict[Any, Any] = {
            self._k(f"s:{r}"): (f"{cursors[r]}-0" if cursors[r] >= 0 else "0-0") for r in regions
        }
        async with _errors():
            # No BLOCK for a read that must not wait: Redis expires blocked reads
            # only when its event loop wakes (every 1/hz s, 100 ms by default), so
            # even BLOCK 1 can take that long. Entries wake a blocked read at once.
            block = int(timeout_s * 1000)
            # The generation is read in the same round trip, just before the entries.
            xread: list[Any] = ["XREAD", "COUNT", 256]
            if block >= 1:
                xread += ["BLOCK", block]
            xread += ["STREAMS", *streams, *streams.values()]
            generation, reply = await self._hot(
                ["GET", self._k("gen")], xread, extra_wait_s=max(block, 0) / 1000
            )
            await self._note_generation(_raw_or_none(generation))
            wiped = self._losses != self._losses_read
            self._losses_read = self._losses
        by_key = {self._k(f"s:{r}"): r for r in regions}
        records: list[Record] = []
        gaps: set[str] = set()
        if wiped:
            gaps.update(r for r in regions if cursors[r] >= 0)
        for stream_key, entries in reply or []:
            region = by_key[_text(stream_key)]
            cursor = cursors[region]
            for n, (entry_id, raw) in enumerate(entries):
                tick = int(_text(entry_id).split("-")[0])
                # redis-py gives the fields as a dict, the lean connection as a flat list.
                fields = (
                    raw if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2], strict=True))
                )
                prev = int(fields.pop(b"p", b"-1"))
                ne = fields.pop(b"ne", None)
                if n == 0 and cursor >= 0 and prev not in (cursor, -1):
                    gaps.add(region)  # what came between was trimmed away
                records.append(Record(region, tick, fields, prev, int(ne) if ne else None))
        return ReadResult(records, frozenset(gaps))

    async def want(self, wants: Mapping[str, Collection[str]]) -> None:
        asked = {region: keys for region, keys in wants.items() if keys}
        if not asked:
            return
        async with _errors():
            await self._hot(*(["SADD", self._k(f"w:{r}"), *keys] for r, keys in asked.items()))

    async def take_wanted(self, regions: Collection[str]) -> dict[str, set[str]]:
        regions = list(regions)
        if not regions:
            return {}
        async with _errors():
            flat = await self._evalsha(_TAKE_SHA, _TAKE, [self._k(f"w:{r}") for r in regions], [])
        out: dict[str, set[str]] = {}
        for i in range(0, len(flat), 2):
            out[regions[int(flat[i]) - 1]] = {k.decode() for k in flat[i + 1]}
        return out

    async def heartbeat(self, node: str, info: bytes, ttl_ms: int) -> None:
        async with _errors():
            await self._redis.set(self._k(f"m:{node}"), info, px=ttl_ms)

    async def members(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        async with _errors():
            keys = [k async for k in self._redis.scan_iter(match=self._k("m:*"), count=100)]
            if keys:
                values = await self._redis.mget(keys)
                for key, value in zip(keys, values, strict=True):
                    if value is not None:
                        name = key.decode() if isinstance(key, bytes) else key
                        out[name[len(self._k("m:")) :]] = _raw(value)
        return out

    async def send(self, node: str, message: bytes) -> None:
        async with _errors():
            key = self._k(f"q:{node}")
            pipe = self._redis.pipeline(transaction=False)
            pipe.rpush(key, message)
            pipe.pexpire(key, 30_000)
            await pipe.execute()

    async def receive(self, node: str, timeout_s: float) -> list[bytes]:
        key = self._k(f"q:{node}")
        async with _errors():
            first: Any = await self._redis.blpop([key], timeout=max(timeout_s, 0.001))
            if first is None:
                return []
            rest: Any = await self._redis.lpop(key, 1000) or []
        return [_raw(first[1]), *(_raw(m) for m in rest)]

    async def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
        await self._redis.aclose()

    # -- the calls of every tick ---------------------------------------------------------

    async def _hot(self, *commands: list[Any], extra_wait_s: float = 0.0) -> list[Any]:
        """The replies to commands sent in one round trip (an error reply raises)."""
        if self._fast is not None:
            return await self._fast.call(*commands, extra_wait_s=extra_wait_s)
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute())

    async def _evalsha(self, sha: str, source: str, keys: list[Any], args: list[Any]) -> Any:
        """Runs a script by its SHA, loading it first into a Redis that does not know it.

        EVALSHA straight: a script registered with redis-py costs a SCRIPT EXISTS
        round trip in a pipeline. A Redis that restarted knows no script and ran
        nothing: it is loaded and the call made again.
        """
        command = ["EVALSHA", sha, len(keys), *keys, *args]
        try:
            (reply,) = await self._hot(command)
        except NoScriptError:
            await self._hot(["SCRIPT", "LOAD", source])
            (reply,) = await self._hot(command)
        return reply

    # -- Redis losing its data -----------------------------------------------------------

    async def _ensure_generation(self) -> None:
        if self._generation is None:
            key = self._k("gen")
            await self._redis.set(key, secrets.token_hex(8), nx=True)
            self._generation = _raw_or_none(await self._redis.get(key))

    async def _wiped(self) -> bool:
        """Tells whether Redis lost the world's data since the last look (a restart)."""
        return await self._note_generation(_raw_or_none(await self._redis.get(self._k("gen"))))

    async def _note_generation(self, value: bytes | None) -> bool:
        """`_wiped`, given the generation just read."""
        key = self._k("gen")
        if self._generation is None:
            self._generation = value
            if value is None:
                await self._ensure_generation()
            return False
        if value == self._generation:
            return False
        await self._redis.set(key, secrets.token_hex(8), nx=True)
        self._generation = _raw_or_none(await self._redis.get(key))
        self._losses += 1
        return True


def _lean_connection(client: aioredis.Redis, options: Mapping[str, Any]) -> RespConnection | None:
    """A `RespConnection` to the server the client talks to, or None for TLS."""
    pool = client.connection_pool
    kw = pool.connection_kwargs
    if issubclass(pool.connection_class, aioredis.SSLConnection):
        return None
    unix = issubclass(pool.connection_class, aioredis.UnixDomainSocketConnection)
    return RespConnection(
        host=kw.get("host", "127.0.0.1"),
        port=int(kw.get("port", 6379)),
        path=kw.get("path") if unix else None,
        db=int(kw.get("db") or 0),
        username=kw.get("username"),
        password=kw.get("password"),
        timeout_s=float(options["socket_timeout"]),
        connect_timeout_s=float(options["socket_connect_timeout"]),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _raw(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _raw_or_none(value: bytes | str | None) -> bytes | None:
    return None if value is None else _raw(value)


class _errors:
    """Turns Redis being away into `BusUnavailableError`."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | ConnectionError | OSError):
            raise BusUnavailableError(f"Redis unavailable: {exc}") from exc
        if isinstance(exc, RedisError):
            raise BusUnavailableError(f"Redis: {exc}") from exc
