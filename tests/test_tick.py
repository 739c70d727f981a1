"""Unit tests of the tick loop: stepping, the fixed schedule with a fake clock, isolation."""

from __future__ import annotations

import logging

import pytest

from synkworld import (
    ConfigError,
    GridMap,
    Limits,
    Session,
    SynkObject,
    TickChanges,
    TickLoop,
    World,
)
from synkworld.testing import FakeClock


class Bee(SynkObject, type="tick-bee"):
    x: float
    y: float


def test_step_runs_simulations_then_commits_then_delivers() -> None:
    world = World(GridMap(cell_size=10, bounds=(0, 0, 100, 100)))
    clock = FakeClock()
    loop = TickLoop(world, tick_rate_hz=10, clock=clock)
    bee = world.create(Bee(x=1, y=1))
    session = Session("s", world.grid)
    session.view("main", (0, 0, 5, 5), 0)
    loop.attach(session)
    seen: list[TickChanges] = []
    loop.on_changes(seen.append)
    loop.add_simulation(lambda dt: world.move(bee, bee.x + dt, 1))
    loop.step()
    clock.now += 0.25  # the simulation sees the time that really passed
    loop.step()
    assert [c.tick for c in seen] == [1, 2]
    assert session.queued_frames == 2
    assert bee.x == pytest.approx(1.35)
    st = loop.statistics()
    assert st.tick == 2 and st.sessions == 1 and st.frames_queued == 2


def test_a_failing_simulation_does_not_stop_the_tick(caplog: pytest.LogCaptureFixture) -> None:
    world = World(GridMap(cell_size=10, bounds=(0, 0, 100, 100)))
    loop = TickLoop(world)

    def broken(dt: float) -> None:
        raise RuntimeError("boom")

    loop.add_simulation(broken)
    with caplog.at_level(logging.ERROR, logger="synkworld.tick"):
        loop.step()
        loop.step()
    assert loop.statistics().simulation_errors == 2
    assert world.tick == 2
    assert "boom" in caplog.text


async def test_run_keeps_a_fixed_schedule_and_counts_overruns() -> None:
    world = World(GridMap(cell_size=10, bounds=(0, 0, 100, 100)))
    clock = FakeClock()
    loop = TickLoop(world, tick_rate_hz=10, clock=clock, sleep=clock.sleep)
    durations = iter([0.01, 0.01, 0.35, 0.01, 0.01, 0.01])

    def work(dt: float) -> None:
        clock.now += next(durations)
        if world.tick == 5:
            loop.stop()

    loop.add_simulation(work)
    await loop.run()
    assert world.tick == 6
    # Ticks on a 0.1 s grid; the 0.35 s tick is counted and the schedule restarts from it.
    assert clock.sleeps[:2] == [pytest.approx(0.09), pytest.approx(0.09)]
    assert clock.sleeps[2] == 0.0
    assert loop.statistics().ticks_behind == 1
    assert clock.sleeps[3] == pytest.approx(0.09)


def test_expired_sessions_are_reported() -> None:
    world = World(GridMap(cell_size=10, bounds=(0, 0, 100, 100)))
    clock = FakeClock()
    loop = TickLoop(world, limits=Limits(lag_timeout_s=1.0), clock=clock)
    bee = world.create(Bee(x=1, y=1))
    s = Session("s", world.grid, limits=Limits(send_queue_max_frames=1))
    s.view("main", (0, 0, 5, 5), 0)
    loop.attach(s)
    expired: list[Session] = []
    loop.on_expired(expired.append)
    for _ in range(30):
        bee.x += 0.1
        clock.now += 0.1
        loop.step()
    assert expired and expired[0] is s


def test_bad_settings() -> None:
    world = World(GridMap(cell_size=10))
    with pytest.raises(ConfigError):
        TickLoop(world, tick_rate_hz=0)
    with pytest.raises(ConfigError):
        Limits(lag_timeout_s=-1)
