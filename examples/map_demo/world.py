"""The demo world: its object types, its simulation and its call handlers."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from synkworld import (
    BadArgsError,
    Call,
    ForbiddenError,
    GridMap,
    Server,
    Session,
    SynkObject,
    World,
)

KINDS = ("ship", "whale", "gull", "buoy-tender", "kayak")
NAMES = ("Ada", "Bo", "Cy", "Di", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kit", "Lu", "Mo", "Nia")
MAX_AVATARS = 500
PALETTE = (0xE4572E, 0x17BEBB, 0xFFC914, 0x76B041, 0x9B5DE5, 0xF15BB5, 0x00BBF9, 0xFEE440)


class Agent(SynkObject, type="agent"):
    """A wandering creature or vessel, moved in bulk by the simulation."""

    name: str
    kind: str
    color: int
    x: float
    y: float
    heading: float = 0.0
    speed: float = 40.0
    mood: str = "calm"


class Landmark(SynkObject, type="landmark"):
    """A fixed point of interest."""

    name: str
    x: float
    y: float
    radius: float = 120.0


class Marker(SynkObject, type="marker"):
    """A pin a player dropped; kept in the store across restarts."""

    label: str
    x: float
    y: float
    placed_by: str
    color: int = 0xFFFFFF


class Avatar(SynkObject, type="avatar", persist=False):
    """A player's own piece; only its player may steer it.

    It lives as long as its player's session and is never stored: a crowd of
    connections must not fill the store with avatars.
    """

    name: str
    player: str
    color: int
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """The knobs of the demo world."""

    agents: int = 3000
    map_size: float = 20_000.0
    cell_size: float = 500.0
    tick_rate_hz: float = 20.0
    seed: int = 7
    # Pins are acknowledged once they are in the store (the page promises that
    # they survive restarts); off only to measure what that costs.
    durable_pins: bool = True


class Wanderers:
    """Moves every agent each tick with numpy: a slow random turn, bouncing at the edges."""

    def __init__(self, world: World, agents: list[Agent], size: float, seed: int) -> None:
        self.world = world
        self.agents = agents
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.slots = world.slots(agents)
        self.heading = np.array([a.heading for a in agents])
        self.speed = np.array([a.speed for a in agents])
        self._mood_clock = 0.0

    def step(self, dt: float) -> None:
        dt = min(dt, 0.25)  # after a stall, do not teleport
        n = len(self.agents)
        self.heading += self.rng.normal(0.0, 0.6, n) * dt
        xs, ys = self.world.positions(self.slots)
        xs = xs + np.cos(self.heading) * self.speed * dt
        ys = ys + np.sin(self.heading) * self.speed * dt
        out_x = (xs < 0) | (xs > self.size)
        out_y = (ys < 0) | (ys > self.size)
        self.heading[out_x] = math.pi - self.heading[out_x]
        self.heading[out_y] = -self.heading[out_y]
        np.clip(xs, 0, self.size, out=xs)
        np.clip(ys, 0, self.size, out=ys)
        self.world.set_positions(self.slots, xs, ys)
        # Now and then a few agents change mood: per-object field changes beside bulk motion.
        self._mood_clock += dt
        if self._mood_clock >= 1.0:
            self._mood_clock = 0.0
            for i in self.rng.integers(0, n, max(1, n // 200)).tolist():
                agent = self.agents[i]
                agent.mood = "curious" if agent.mood == "calm" else "calm"
                agent.heading = float(self.heading[i])


def build_world(settings: DemoSettings) -> tuple[World, Wanderers]:
    """A fresh demo world: agents, landmarks, nothing else."""
    s = settings.map_size
    world = World(
        GridMap(cell_size=settings.cell_size, bounds=(0, 0, s, s), precision=0),
        initial_capacity=settings.agents + 256,
    )
    rng = np.random.default_rng(settings.seed)
    agents = []
    for i in range(settings.agents):
        agents.append(
            world.create(
                Agent(
                    id=f"a{i}",
                    name=f"{NAMES[i % len(NAMES)]}-{i}",
                    kind=KINDS[int(rng.integers(len(KINDS)))],
                    color=PALETTE[int(rng.integers(len(PALETTE)))],
                    x=float(rng.uniform(0, s)),
                    y=float(rng.uniform(0, s)),
                    heading=float(rng.uniform(0, 2 * math.pi)),
                    speed=float(rng.uniform(20, 90)),
                )
            )
        )
    for j, name in enumerate(("Lighthouse", "Old Harbour", "Kelp Forest", "The Reef", "Mill")):
        angle = j * 2 * math.pi / 5
        world.create(
            Landmark(
                id=f"landmark{j}",
                name=name,
                x=s / 2 + math.cos(angle) * s / 3,
                y=s / 2 + math.sin(angle) * s / 3,
                radius=s / 40,
            )
        )
    return world, Wanderers(world, agents, s, settings.seed + 1)


def install(
    server: Server, settings: DemoSettings, wanderers: Wanderers, *, test_hooks: bool = False
) -> None:
    """Adds the simulation, the avatars and the handlers to a server of the demo world."""
    world = server.world
    size = settings.map_size
    avatars: dict[str, Avatar] = {}
    joined = itertools.count(1)
    server.simulation(wanderers.step)

    spawn = np.random.default_rng(settings.seed + 2)

    def join(session: Session) -> Avatar | None:
        """The session's avatar, made when its page first says hello (not per connection)."""
        avatar = avatars.get(session.sid)
        if avatar is None and len(avatars) < MAX_AVATARS:
            i = next(joined)
            # Spread around the middle of the map, so that players do not stack;
            # whole units, as the map's precision shows them.
            x, y = np.rint(size / 2 + spawn.uniform(-size / 8, size / 8, 2)).tolist()
            avatar = world.create(
                Avatar(
                    id=f"avatar-{session.sid}",
                    name=f"Player {i}",
                    player=session.sid,
                    color=PALETTE[i % len(PALETTE)],
                    x=x,
                    y=y,
                )
            )
            avatars[session.sid] = avatar
        return avatar

    def on_disconnect(session: Session) -> None:
        avatar = avatars.pop(session.sid, None)
        if avatar is not None and avatar.world is world:
            world.delete(avatar)

    server.on_disconnect = on_disconnect

    @server.handler("hello")
    def hello(call: Call) -> dict[str, object]:
        """Gives the tab its avatar (made now if it has none yet)."""
        avatar = join(call.session)
        return {"avatar": avatar.id if avatar else None, "players": len(avatars)}

    @server.handler("steer")
    def steer(call: Call, avatar: str, dx: float, dy: float) -> dict[str, float]:
        """Moves the caller's own avatar by at most 200 units."""
        target = world.get(avatar)
        if not isinstance(target, Avatar):
            raise BadArgsError(f"no avatar {avatar!r}")
        if target.player != call.session.sid:
            raise ForbiddenError("that avatar belongs to another player")
        if math.hypot(dx, dy) > 200:
            raise BadArgsError("a step is at most 200 units")
        world.move(target, min(size, max(0.0, target.x + dx)), min(size, max(0.0, target.y + dy)))
        return {"x": target.x, "y": target.y}

    # Durable: the page says a pin survives a restart, so the reply waits until
    # the pin is in the store (one write, a few milliseconds on SQLite).
    @server.handler("drop_marker", durable=settings.durable_pins)
    def drop_marker(call: Call, x: float, y: float, label: str = "") -> dict[str, str]:
        """Drops a marker on the map; markers are persisted before the reply."""
        if not (0 <= x <= size and 0 <= y <= size):
            raise BadArgsError("the marker must be on the map")
        if len(label) > 40:
            raise BadArgsError("a label has at most 40 characters")
        avatar = avatars.get(call.session.sid)
        marker = world.create(
            Marker(
                label=label or "pin",
                x=x,
                y=y,
                placed_by=avatar.name if avatar else "someone",
                color=avatar.color if avatar else 0xFFFFFF,
            )
        )
        return {"id": marker.id}

    @server.handler("players")
    def players(call: Call) -> int:
        """How many players are connected."""
        return len(avatars)

    if test_hooks:

        @server.handler("truth")
        def truth(call: Call) -> dict[str, object]:
            """What the caller should hold: for tests in another process only."""
            held = sorted(call.session.held)
            objs = {
                o.id: {"t": o.synk_type, "v": o.version, "s": o.wire_state(), "k": key}
                for key in held
                for o in world.objects_under(key)
            }
            return {"tick": world.tick, "held": held, "objs": objs}
