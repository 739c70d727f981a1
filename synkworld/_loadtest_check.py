"""The load test's correctness check: a sampled client against a fresh checker client.

After the run, for each sampled client a new connection (the checker, with a
`StrictMirror` of its own) subscribes with `sub` to exactly the keys the
sampled client holds, and so starts from snapshots. Then both ping at once.
A pong comes after every frame queued for that client before it, and carries
the server's tick: when the two pongs carry the same tick, both clients have
applied everything up to that tick, and what they hold must be equal, key for
key and object for object (type, version, state, key). Any server that
speaks protocol v1 can be checked this way, without a route of its own
telling the truth; a protocol v2 client is checked against a fresh v2
checker (`StrictMirrorV2`) in the same way.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from synkworld._loadtest_client import ConnectFailedError, LoadClient, Pong, strict_mirror

__all__ = ["check_client", "differences"]

_MAX_KEYS_PER_SUB = 1024  # docs/protocol.md: at most 1,024 keys per message
_COMPARISONS = 3  # ticks compared per client (more chances to catch a difference)
_EXAMPLES = 5


def differences(mine: bytes, theirs: bytes) -> tuple[int, list[str]]:
    """How many keys and objects differ between two `mirror_state`s, with a few examples."""
    a, b = orjson.loads(mine), orjson.loads(theirs)
    examples: list[str] = []
    ka, kb = set(a["held"]), set(b["held"])
    bad = len(ka ^ kb)
    if bad:
        examples.append(
            f"keys: sampled client only {sorted(ka - kb)[:3]}, checker only {sorted(kb - ka)[:3]}"
        )
    oa: dict[str, Any] = a["objs"]
    ob: dict[str, Any] = b["objs"]
    only_a = sorted(oa.keys() - ob.keys())
    only_b = sorted(ob.keys() - oa.keys())
    wrong = sorted(i for i in oa.keys() & ob.keys() if oa[i] != ob[i])
    examples += [f"{i}: held by the sampled client only" for i in only_a[:2]]
    examples += [f"{i}: held by the checker only" for i in only_b[:2]]
    examples += [f"{i}: sampled client {oa[i]} != checker {ob[i]}" for i in wrong[:3]]
    return bad + len(only_a) + len(only_b) + len(wrong), examples[:_EXAMPLES]


async def _subscribe(checker: LoadClient, add: set[str], rem: set[str]) -> bool:
    adds, rems = sorted(add), sorted(rem)
    ok = True
    for i in range(0, max(len(adds), len(rems)), _MAX_KEYS_PER_SUB):
        msg: dict[str, Any] = {"m": "sub"}
        if adds[i : i + _MAX_KEYS_PER_SUB]:
            msg["add"] = adds[i : i + _MAX_KEYS_PER_SUB]
        if rems[i : i + _MAX_KEYS_PER_SUB]:
            msg["rem"] = rems[i : i + _MAX_KEYS_PER_SUB]
        ok = await checker.send(msg) and ok
    return ok


async def check_client(
    session: aiohttp.ClientSession,
    url: str,
    client: LoadClient,
    *,
    timeout_s: float,
    tick_s: float,
    compress: bool = False,
) -> dict[str, Any]:
    """Compares a sampled client with a fresh checker; a JSON-ready verdict for that client.

    `ok` is True when at least one tick was compared, every comparison found
    equal holdings, and neither side counted a protocol violation.
    """
    mirror = client.mirror
    assert mirror is not None, "only a sampled client has something to compare"
    result: dict[str, Any] = {
        "index": client.index,
        "sid": client.sid,
        "checked": False,
        "ok": False,
        "reason": None,
        "keys": len(mirror.held),
        "objects": len(mirror.objs),
        "compared_ticks": [],
        "tick_skew_retries": 0,
        "mismatches": 0,
        "examples": [],
        "violations": mirror.violations,
        "violation_examples": list(mirror.violation_examples),
        "checker_violations": 0,
        "resyncs": client.resyncs,
    }
    if client.ws is None:
        result["reason"] = "it could not connect"
        return result
    if not client.connected:
        result["reason"] = f"closed during the run (close code {client.close_code})"
        return result
    deadline = time.monotonic() + timeout_s
    checker_mirror = strict_mirror(client.proto)
    checker = LoadClient(
        -1 - client.index, url, mirror=checker_mirror, compress=compress, proto=client.proto
    )
    try:
        await checker.connect(session, timeout_s=timeout_s)
    except ConnectFailedError as e:
        result["reason"] = f"the checker could not connect: {e}"
        return result
    reader = asyncio.create_task(checker.read())
    try:
        await _compare(client, checker, result, deadline, tick_s)
    finally:
        await checker.close()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    result["violations"] = mirror.violations
    result["violation_examples"] = list(mirror.violation_examples)
    result["checker_violations"] = checker_mirror.violations
    result["violation_examples"] += [f"checker: {v}" for v in checker_mirror.violation_examples]
    result["checked"] = bool(result["compared_ticks"])
    result["ok"] = (
        result["checked"]
        and result["mismatches"] == 0
        and mirror.violations == 0
        and checker_mirror.violations == 0
    )
    if not result["checked"] and result["reason"] is None:
        result["reason"] = "no tick could be compared before the timeout"
    return result


async def _compare(
    client: LoadClient,
    checker: LoadClient,
    result: dict[str, Any],
    deadline: float,
    tick_s: float,
) -> None:
    mirror, theirs = client.mirror, checker.mirror
    assert mirror is not None and theirs is not None
    target = set(mirror.held)
    if not await _subscribe(checker, target, set()):
        result["reason"] = "the checker's connection closed before it could subscribe"
        return
    retargets = 0
    while len(result["compared_ticks"]) < _COMPARISONS:
        if time.monotonic() >= deadline:
            if theirs.held != target:
                missing = sorted(target - theirs.held)[:3]
                result["reason"] = f"the checker was never given every key it asked for: {missing}"
                result["mismatches"] += len(target ^ theirs.held)
            return
        if checker.errors:
            result["reason"] = "the server refused the checker's subscription: " + "; ".join(
                checker.error_examples[:2]
            )
            return
        if not (client.connected and checker.connected):
            result["reason"] = "a connection closed during the check"
            return
        if theirs.held != target:
            await asyncio.sleep(tick_s / 2)  # its snapshots have not all arrived yet
            continue
        # Sent back to back, so that both usually reach the server within one tick.
        mine = await client.ping(capture=True)
        fresh = await checker.ping(capture=True)
        try:
            pongs = await asyncio.wait_for(
                asyncio.gather(mine, fresh, return_exceptions=True),
                max(0.1, deadline - time.monotonic()),
            )
        except TimeoutError:
            continue
        a, b = pongs
        if not (isinstance(a, Pong) and isinstance(b, Pong)):
            continue  # a connection closed: the checks above say so
        if a.n != b.n:
            # A tick ended between the two pings: ask again, at another moment.
            result["tick_skew_retries"] += 1
            await asyncio.sleep(tick_s * 0.37)
            continue
        if not _same_keys(a, target):
            # The sampled client's keys changed after we looked (a view the server
            # resolved late): follow them.
            retargets += 1
            if retargets > 3:
                result["reason"] = "the sampled client's keys kept changing"
                return
            now_held = set(orjson.loads(a.state or b"{}").get("held", ()))
            await _subscribe(checker, now_held - target, target - now_held)
            target = now_held
            continue
        assert a.state is not None and b.state is not None
        result["compared_ticks"].append(a.n)
        if a.state != b.state:
            count, examples = differences(a.state, b.state)
            if count > result["mismatches"]:
                result["mismatches"] = count
                result["examples"] = examples
        await asyncio.sleep(tick_s * 1.5)  # the next comparison at a later tick


def _same_keys(pong: Pong, target: set[str]) -> bool:
    held = orjson.loads(pong.state or b"{}").get("held")
    return isinstance(held, list) and set(held) == target
