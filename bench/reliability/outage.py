"""outage: a MongoDB outage while objects change; afterwards the store equals the world.

An in-process `World` + `Persistence` + `MongoStore` on FerretDB (or, with
``MONGODB_URI`` / ``--mongodb-uri``, through a relay in front of that server).
After a steady run the database goes away for ``--outage-s``, comes back, the
world runs on, stops and flushes, and a second client reads every stored
document: they must equal `world.documents()` exactly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.reliability.mongo import CutProxy, FerretDB, single_host
from bench.reliability.processes import free_port
from bench.reliability.results import Notes, Outcome, check, rounded
from bench.reliability.world import Busy, new_world, populate, spec_from_args


async def run_outage(a: argparse.Namespace, notes: Notes) -> Outcome:
    """A MongoDB outage while objects change; afterwards the store equals the world."""
    from synkworld import Persistence, TickLoop
    from synkworld.store import MongoStore

    spec = spec_from_args(a)
    logs = a.out / "logs"
    uri_env = a.mongodb_uri or os.environ.get("MONGODB_URI")
    tmp = Path(tempfile.mkdtemp(prefix="synkworld-outage-"))
    # A store that cannot write at shutdown spills a journal (by default into the cwd):
    # keep any such file out of the checkout.
    spill_dir = os.environ.get("SYNKWORLD_SPILL_DIR")
    os.environ["SYNKWORLD_SPILL_DIR"] = str(tmp)
    ferret: FerretDB | None = None
    proxy: CutProxy | None = None
    db_name = f"synkworld_outage_{uuid.uuid4().hex[:10]}"
    figures: dict[str, Any] = {}
    client_options = {
        "serverSelectionTimeoutMS": a.selection_timeout_ms,
        "connectTimeoutMS": min(a.selection_timeout_ms, 5000),
    }
    try:
        if uri_env:
            host, port = single_host(uri_env)
            proxy = CutProxy(host, port)
            await proxy.start()
            uri = f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true"
            how = f"a TCP relay to {host}:{port} (MONGODB_URI), cut and restored"
        else:
            notes("building FerretDB if needed (scripts/ferretdb.sh build)")
            await FerretDB.build()
            ferret = FerretDB(free_port(), tmp / "data", logs / "reliability-outage-ferretdb.log")
            await ferret.start()
            uri = ferret.uri
            how = "FerretDB (scripts/ferretdb.sh), SIGTERM, then started again on its port and data"
        # Our FerretDB is built with the fix that makes large update commands safe (see
        # scripts/ferretdb.sh), so it takes a batch in one bulk write, as the store tests do;
        # another server gets the store's own choice.
        max_ops = a.max_ops if a.max_ops else (None if ferret is None else 1_000_000)
        store = MongoStore.connect(uri, db_name, max_ops_per_command=max_ops, **client_options)
        world = new_world(spec)
        populate(world, spec)
        busy = Busy(world, spec)
        loop = TickLoop(world, tick_rate_hz=a.tick_rate)
        loop.add_simulation(busy.step)
        per_tick: list[tuple[int, int, int, float]] = []  # tick, changed, deleted, when
        changed_in_outage: set[str] = set()
        outage = {"on": False}

        def count(changes: Any) -> None:
            per_tick.append(
                (changes.tick, len(changes.changed_ids), len(changes.deleted_ids), time.monotonic())
            )
            if outage["on"]:
                changed_in_outage.update(changes.changed_ids)
                changed_in_outage.update(changes.deleted_ids)

        persistence = Persistence(
            world, store, retry_initial_s=a.retry_initial_s, retry_max_s=a.retry_max_s
        )
        samples: list[tuple[float, int]] = []
        async with persistence as p:
            loop.on_changes(p.on_changes)
            loop.on_changes(count)
            ticking = asyncio.create_task(loop.run())
            try:
                notes(f"first write of {len(world)} objects")
                t = time.monotonic()
                await asyncio.wait_for(world.flush(), 300)
                first_write_s = time.monotonic() - t
                await asyncio.sleep(a.before_s)
                st = p.statistics()
                steady_before = {
                    "pending_objects": st.pending_objects,
                    "lag_ticks": st.write_lag_ticks,
                }
                notes(f"outage: stopping the database for {a.outage_s:g} s")
                outage["on"] = True
                t_out = time.monotonic()
                tick_out = world.tick
                failed0 = st.failed_attempts
                if ferret is not None:
                    # FerretDB takes a few seconds to shut down; the outage is counted from
                    # its exit, and the pending set is sampled all along.
                    stopping = asyncio.create_task(ferret.stop())
                    while not stopping.done():
                        samples.append((time.monotonic() - t_out, p.statistics().pending_objects))
                        await asyncio.wait([stopping], timeout=0.1)
                    stop_s = stopping.result()
                else:
                    assert proxy is not None
                    await proxy.cut()
                    stop_s = 0.0
                t_down = time.monotonic()
                while time.monotonic() - t_down < a.outage_s:
                    samples.append((time.monotonic() - t_out, p.statistics().pending_objects))
                    await asyncio.sleep(0.1)
                notes("the database comes back")
                if ferret is not None:
                    restart_s = await ferret.start()
                else:
                    assert proxy is not None
                    t = time.monotonic()
                    await proxy.start()
                    restart_s = time.monotonic() - t
                t_back = time.monotonic()
                tick_back = world.tick
                outage["on"] = False
                st = p.statistics()
                peak_pending = max([n for _, n in samples] + [st.pending_objects])
                failed_attempts = st.failed_attempts - failed0
                drain_deadline = t_back + a.drain_timeout_s
                while True:
                    st = p.statistics()
                    samples.append((time.monotonic() - t_out, st.pending_objects))
                    if st.oldest_pending_tick is None or st.oldest_pending_tick > tick_back:
                        break
                    if time.monotonic() > drain_deadline:
                        raise RuntimeError(f"not drained {a.drain_timeout_s:g}s after recovery")
                    await asyncio.sleep(0.02)
                drain_s = time.monotonic() - t_back
                notes(f"drained in {drain_s:.2f} s; running {a.after_s:g} s more")
                await asyncio.sleep(a.after_s)
                st = p.statistics()
                steady_after = {
                    "pending_objects": st.pending_objects,
                    "lag_ticks": st.write_lag_ticks,
                }
            finally:
                loop.stop()
                await ticking
            t = time.monotonic()
            await asyncio.wait_for(world.flush(), 300)
            final_flush_s = time.monotonic() - t
            written = p.statistics().objects_written
        # A second client reads what is stored: durable, not just acknowledged to the writer.
        notes("comparing the stored documents with the world's")
        expected = world.documents([o.id for o in world])
        async with MongoStore.connect(uri, db_name, **client_options) as reader:
            stored_docs = await reader.load()
            with contextlib.suppress(Exception):
                await reader.database.client.drop_database(db_name)
        stored = {d["_id"]: d for d in stored_docs}
        missing = sorted(expected.keys() - stored.keys())
        extra = sorted(stored.keys() - expected.keys())
        differ = sorted(k for k in expected.keys() & stored.keys() if expected[k] != stored[k])
        outage_ticks = [x for x in per_tick if tick_out < x[0] <= tick_back]
        figures = {
            "how": how,
            "objects": len(world),
            "ticks": world.tick,
            "first_write_s": rounded(first_write_s, 2),
            "outage_s": rounded(t_back - t_down, 2),
            "outage_with_shutdown_s": rounded(t_back - t_out, 2),
            "database_stop_s": rounded(stop_s, 2),
            "database_restart_s": rounded(restart_s, 2),
            "ticks_during_outage": len(outage_ticks),
            "changes_during_outage": sum(c + d for _, c, d, _ in outage_ticks),
            "deletes_during_outage": sum(d for _, _, d, _ in outage_ticks),
            "objects_changed_during_outage": len(changed_in_outage),
            "failed_write_attempts": failed_attempts,
            "pending_objects_peak": peak_pending,
            "drain_s": rounded(drain_s, 3),
            "final_flush_s": rounded(final_flush_s, 3),
            "objects_written_total": written,
            "steady_before": steady_before,
            "steady_after": steady_after,
            "stored_documents": len(stored),
            "world_documents": len(expected),
            "missing": len(missing),
            "extra": len(extra),
            "different": len(differ),
            "examples": [f"missing {k}" for k in missing[:3]]
            + [f"extra {k}" for k in extra[:3]]
            + [f"{k}: stored {stored[k]} != world {expected[k]}" for k in differ[:3]],
            "pending_timeline": [
                [rounded(t, 1), n] for t, n in samples[:: max(1, len(samples) // 60)]
            ],
        }
    finally:
        if proxy is not None:
            await proxy.cut()
        if ferret is not None:
            await ferret.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if spill_dir is None:
            os.environ.pop("SYNKWORLD_SPILL_DIR", None)
        else:
            os.environ["SYNKWORLD_SPILL_DIR"] = spill_dir
    equal = not missing and not extra and not differ
    checks = {
        "stored_equals_world": check(
            equal,
            f"{len(stored)} stored, {len(expected)} in the world; missing {len(missing)}, "
            f"extra {len(extra)}, different {len(differ)}",
        ),
        "changes_during_outage": check(
            figures["changes_during_outage"] > 0, figures["changes_during_outage"]
        ),
        "writes_failed_during_outage": check(failed_attempts > 0, failed_attempts),
    }
    summary = [
        f"{figures['changes_during_outage']} changes ({figures['objects_changed_during_outage']} "
        f"objects) in a {figures['outage_s']:.1f} s outage; pending at peak {peak_pending}",
        f"drained {drain_s:.2f} s after the database answered; final flush {final_flush_s:.3f} s",
        f"stored {len(stored)} = world {len(expected)}: {equal}",
    ]
    return figures, checks, summary
