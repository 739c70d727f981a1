"""kill9: SIGKILL a server writing to SQLite at random moments; the file and the world survive.

After each kill, on a copy of the file and its WAL as the kill left them:
``PRAGMA integrity_check``, rows, walkers, gold; then the next start must load
every row, answer ``/healthz`` and hold every object and all the gold. Gold that
adds up in the file after every kill means every stored state was a whole tick.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench.reliability.processes import Child, get_json, wait_healthz
from bench.reliability.results import Notes, Outcome, check, percentile, rounded
from bench.reliability.world import LEDGER_ID, spec_from_args


def inspect_sqlite(db: Path, scratch: Path) -> dict[str, Any]:
    """`PRAGMA integrity_check` and the invariants, on a copy of the file as the kill left it.

    The copy (database and write-ahead log) is what the next start opens; checking
    a copy leaves the recovery of the real file to the server.
    """
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    wal = db.with_name(db.name + "-wal")
    out: dict[str, Any] = {
        "db_bytes": db.stat().st_size if db.exists() else 0,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
    }
    copy = scratch / db.name
    shutil.copy2(db, copy)
    if wal.exists():
        shutil.copy2(wal, scratch / wal.name)
    conn = sqlite3.connect(copy)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
        out["integrity"] = "; ".join(str(r[0]) for r in rows)[:500]
        out["rows"] = conn.execute("SELECT count(*) FROM objects").fetchone()[0]
        walkers, gold = conn.execute(
            "SELECT count(*), coalesce(sum(json_extract(doc, '$.gold')), 0) "
            "FROM objects WHERE t = 'rel-walker'"
        ).fetchone()
        out["walkers"], out["gold"] = walkers, gold
        ledger = conn.execute(
            "SELECT json_extract(doc, '$.ticks') FROM objects WHERE _id = ?", (LEDGER_ID,)
        ).fetchone()
        out["ledger_ticks"] = ledger[0] if ledger else None
    except sqlite3.Error as e:
        out.setdefault("integrity", f"error: {e}")
        out["error"] = str(e)
    finally:
        conn.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return out


async def run_kill9(a: argparse.Namespace, notes: Notes) -> Outcome:
    """SIGKILL a server writing to SQLite at random moments; the file and the world survive."""
    spec = spec_from_args(a)
    logs = a.out / "logs"
    tmp = Path(tempfile.mkdtemp(prefix="synkworld-kill9-"))
    db = tmp / "world.sqlite3"
    rng = random.Random(a.seed)
    flags = [
        *spec.flags(),
        *("--db", str(db), "--write-interval", str(a.write_interval)),
        *("--port", "0", "--max-seconds", str(a.timeout + 60)),
    ]
    log = logs / "reliability-kill9-server.log"
    kills: list[dict[str, Any]] = []
    server: Child | None = None
    first_write_s = 0.0
    final: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            server = await Child.server("server-0", flags, log)
            ready = await server.ready(120)
            url = ready["url"]
            await wait_healthz(http, url, 30)
            t = time.monotonic()
            while True:
                st = await get_json(http, url + "/rel/stats")
                if (st["store"] or {}).get("objects_written", 0) >= spec.entities + 1:
                    break
                if time.monotonic() - t > 120:
                    raise RuntimeError("the first write did not happen within 120 s")
                await asyncio.sleep(0.05)
            first_write_s = time.monotonic() - t
            notes(f"the world is stored ({spec.entities} walkers); {a.kills} kills")
            for i in range(a.kills):
                wait = rng.uniform(a.kill_min_s, a.kill_max_s)
                await asyncio.sleep(max(0.0, wait - 0.05))
                st = await get_json(http, url + "/rel/stats")
                t_seen = time.monotonic()
                await asyncio.sleep(0.05)
                uptime = time.monotonic() - server.started
                t_kill = time.monotonic()
                server.kill()
                await server.proc.wait()
                rec: dict[str, Any] = {
                    "kill": i + 1,
                    "uptime_s": rounded(uptime, 2),
                    "exit": server.proc.returncode,
                    "ticks_seen": st["ledger_ticks"],
                    "writes_seen": (st["store"] or {}).get("writes_done"),
                }
                rec.update(inspect_sqlite(db, tmp / "check"))
                if rec.get("ledger_ticks") is not None:
                    # The ticks the server had made when killed, estimated from the last look.
                    made = st["ledger_ticks"] + (t_kill - t_seen) * a.tick_rate
                    rec["ticks_lost_est"] = round(max(0.0, made - rec["ledger_ticks"]), 1)
                t = time.monotonic()
                server = await Child.server(f"server-{i + 1}", flags, log)
                try:
                    ready = await server.ready(120)
                    url = ready["url"]
                    _, health = await wait_healthz(http, url, 30)
                    after = await get_json(http, url + "/rel/stats")
                    rec.update(
                        restart_s=rounded(time.monotonic() - t, 3),
                        healthz=bool(health.get("ok")),
                        loaded=ready["loaded"],
                        skipped=ready["skipped"],
                        created=ready["created"],
                        objects=after["objects"],
                        gold_loaded=after["gold"],
                    )
                except RuntimeError as e:
                    rec.update(restart_error=str(e)[-500:], healthz=False)
                rec["ok"] = (
                    rec.get("integrity") == "ok"
                    and rec.get("rows") == spec.entities + 1
                    and rec.get("walkers") == spec.entities
                    and rec.get("gold") == spec.total_gold
                    and rec.get("healthz") is True
                    and rec.get("loaded") == rec.get("rows")
                    and rec.get("skipped") == 0
                    and rec.get("objects") == spec.entities + 1
                    and rec.get("gold_loaded") == spec.total_gold
                )
                kills.append(rec)
                notes(
                    f"kill {i + 1}: integrity {rec.get('integrity')}, rows {rec.get('rows')}, "
                    f"gold {rec.get('gold')}, loaded {rec.get('loaded')}, ok {rec['ok']}"
                )
                if not server.alive:
                    break
            await server.terminate(60)
            final = inspect_sqlite(db, tmp / "check")
    finally:
        if server is not None:
            await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    ok_kills = sum(1 for k in kills if k["ok"])
    restart = [k["restart_s"] for k in kills if "restart_s" in k]
    behind = [k["ticks_lost_est"] for k in kills if "ticks_lost_est" in k]
    behind_p50 = percentile(behind, 50)
    figures = {
        "objects": spec.entities + 1,
        "changes_per_tick": {
            "moving": round(spec.entities * spec.motion),
            "hp": round(spec.entities * spec.hp_fraction),
            "transfers": spec.transfers,
            "churn": spec.churn,
        },
        "write_interval_s": a.write_interval,
        "first_write_s": rounded(first_write_s, 2),
        "kills": len(kills),
        "kills_ok": ok_kills,
        "integrity": dict(Counter(str(k.get("integrity")) for k in kills)),
        "restart_s": {
            "p50": rounded(percentile(restart, 50)),
            "max": rounded(max(restart, default=0.0)),
        },
        "ticks_lost_at_kill_est": {"p50": behind_p50, "max": max(behind, default=0)},
        "wal_bytes_at_kill_max": max((k.get("wal_bytes", 0) for k in kills), default=0),
        "final_after_sigterm": final,
        "per_kill": kills,
    }
    checks = {
        "every_kill_ok": check(ok_kills == a.kills, f"{ok_kills} of {a.kills}"),
        "integrity_ok": check(
            all(k.get("integrity") == "ok" for k in kills) and final.get("integrity") == "ok",
            figures["integrity"],
        ),
        "gold_kept": check(
            all(k.get("gold") == spec.total_gold for k in kills)
            and final.get("gold") == spec.total_gold,
            sorted({k.get("gold") for k in kills}, key=str),
            spec.total_gold,
        ),
    }
    summary = [
        f"{len(kills)} SIGKILLs of a server writing {spec.entities + 1} objects to SQLite",
        f"integrity {figures['integrity']}; restart p50 {figures['restart_s']['p50']:.2f} s, "
        f"max {figures['restart_s']['max']:.2f} s; ticks lost at a kill (est.): "
        f"p50 {behind_p50:g}, max {max(behind, default=0)}",
    ]
    return figures, checks, summary
