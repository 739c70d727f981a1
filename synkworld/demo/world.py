"""The demo world: its object types, its simulation and its call handlers."""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np

from synkworld import (
    BadArgsError,
    Call,
    ForbiddenError,
    GridMap,
    ProtocolError,
    Server,
    Session,
    SynkObject,
    World,
)

log = logging.getLogger("synkworld.demo")

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
    """Moves every agent each tick with numpy: a slow random turn, bouncing at the edges.

    With `dynamic`, the agents are whichever the world holds this tick: on a
    map that several processes share, agents come and go as they cross into
    and out of the regions this process owns (their heading goes with them).
    """

    def __init__(
        self,
        world: World,
        agents: list[Agent],
        size: float,
        seed: int,
        *,
        dynamic: bool = False,
    ) -> None:
        self.world = world
        self.size = size
        self.dynamic = dynamic
        self.rng = np.random.default_rng(seed)
        self._use(agents)
        self._mood_clock = 0.0

    def _use(self, agents: list[Agent], headings: dict[str, float] | None = None) -> None:
        known = headings or {}
        self.agents = agents
        self.ids = [a.id for a in agents]
        self.slots = self.world.slots(agents)
        self.heading = np.array([known.get(a.id, a.heading) for a in agents], dtype=np.float64)
        self.speed = np.array([a.speed for a in agents], dtype=np.float64)

    def _refresh(self) -> None:
        agents = [o for o in self.world if type(o) is Agent]
        ids = [a.id for a in agents]
        if ids == self.ids:
            return
        # Those that stay keep turning as they did; an arrival starts from the
        # heading in its state (the one of its last change of mood: close enough,
        # and writing every heading into the state would send it every tick).
        self._use(agents, dict(zip(self.ids, self.heading.tolist(), strict=True)))

    def step(self, dt: float) -> None:
        if self.dynamic:
            self._refresh()
        n = len(self.agents)
        if n == 0:
            return
        dt = min(dt, 0.25)  # after a stall, do not teleport
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


def spawn_point(settings: DemoSettings, sid: str) -> tuple[float, float]:
    """Where the avatar of session `sid` starts: a point of its own near the middle of the map.

    Drawn from the session id (with the world's seed), so that players do not
    stack wherever and in whatever order they join, on one process or several.
    The square is a quarter of the map wide: a page opened on the middle holds
    it all, and the landmarks (a third of the map out) lie beyond it. Whole
    units, as the map's precision shows them.
    """
    size = settings.map_size
    rng = np.random.default_rng([settings.seed + 2, int.from_bytes(sid.encode(), "big")])
    x, y = np.rint(size / 2 + rng.uniform(-size / 8, size / 8, 2)).tolist()
    return float(x), float(y)


@dataclass(slots=True)
class AvatarRef:
    """A session's avatar, and where it was last seen (it may live on another process)."""

    id: str
    name: str
    color: int
    x: float
    y: float


def install(
    server: Server, settings: DemoSettings, wanderers: Wanderers, *, test_hooks: bool = False
) -> None:
    """Adds the simulation, the avatars and the handlers to a server of the demo world.

    On a map that several processes share (`server.cluster`), a session's
    avatar may walk into a region another process owns: steering it, and
    removing it when the session ends, are forwarded to that process, found
    from where the avatar was last seen. Markers are made by the owner of
    the cell they are dropped in, which also makes them durable.
    """
    world = server.world
    size = settings.map_size
    grid_map = world.grid.default_map
    avatars: dict[str, AvatarRef] = {}
    joined = itertools.count(1)
    server.simulation(wanderers.step)

    def join(session: Session) -> AvatarRef | None:
        """The session's avatar, made when its page first says hello (not per connection)."""
        ref = avatars.get(session.sid)
        if ref is None and len(avatars) < MAX_AVATARS:
            i = next(joined)
            x, y = spawn_point(settings, session.sid)
            # Made here even in a cell another process owns: it goes there at the tick.
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
            ref = avatars[session.sid] = AvatarRef(avatar.id, avatar.name, avatar.color, x, y)
        return ref

    async def on_disconnect(session: Session) -> None:
        ref = avatars.pop(session.sid, None)
        if ref is None:
            return
        avatar = world.get(ref.id)
        if avatar is not None:
            world.delete(avatar)
        elif server.cluster is not None:
            try:
                await server.cluster.forward(
                    grid_map.key_of(ref.x, ref.y), "avatar_gone", {"avatar": ref.id}, session
                )
            except ProtocolError as e:
                log.warning("could not remove avatar %s on its owner: %s", ref.id, e)

    server.on_disconnect = on_disconnect

    @server.handler("hello")
    def hello(call: Call) -> dict[str, object]:
        """Gives the tab its avatar (made now if it has none yet), where it is, and the key limit.

        The page finds its avatar again from `at` (and the replies to `steer`)
        when the avatar's cell is not held, and says why when a view needs
        more cells than `max_keys`.
        """
        ref = join(call.session)
        return {
            "avatar": ref.id if ref else None,
            "at": [ref.x, ref.y] if ref else None,
            "players": len(avatars),
            "max_keys": call.session.max_keys,
        }

    @server.handler("steer")
    async def steer(call: Call, avatar: str, dx: float, dy: float) -> dict[str, float]:
        """Moves the caller's own avatar by at most 200 units."""
        target = world.get(avatar)
        ref = avatars.get(call.session.sid)
        if target is None and ref is not None and ref.id == avatar and not call.forwarded:
            # It lives on the process that owns the cell it was last seen in.
            moved = dict(await call.forward(grid_map.key_of(ref.x, ref.y)))
            ref.x, ref.y = float(moved["x"]), float(moved["y"])
            return moved
        if not isinstance(target, Avatar):
            raise BadArgsError(f"no avatar {avatar!r} (crossing a border? try again)")
        if target.player != call.session.sid:
            raise ForbiddenError("that avatar belongs to another player")
        if math.hypot(dx, dy) > 200:
            raise BadArgsError("a step is at most 200 units")
        world.move(target, min(size, max(0.0, target.x + dx)), min(size, max(0.0, target.y + dy)))
        if ref is not None:
            ref.x, ref.y = target.x, target.y
        return {"x": target.x, "y": target.y}

    @server.handler("avatar_gone")
    def avatar_gone(call: Call, avatar: str) -> bool:
        """Removes a player's avatar, for the process whose session ended (forwarded only)."""
        target = world.get(avatar)
        if not call.forwarded:
            raise ForbiddenError("only the process of the avatar's session removes it")
        if not isinstance(target, Avatar) or target.player != call.session.sid:
            return False
        world.delete(target)
        return True

    # Durable: the page says a pin survives a restart, so the reply waits until
    # the pin is in the store (one write, a few milliseconds on SQLite).
    @server.handler("drop_marker", durable=settings.durable_pins)
    async def drop_marker(
        call: Call, x: float, y: float, label: str = "", placed_by: str = "", color: int = -1
    ) -> dict[str, str]:
        """Drops a marker on the map; markers are persisted before the reply.

        `placed_by` and `color` come only with a call forwarded from the
        process of the player's session, which knows them.
        """
        if not (0 <= x <= size and 0 <= y <= size):
            raise BadArgsError("the marker must be on the map")
        if len(label) > 40:
            raise BadArgsError("a label has at most 40 characters")
        if (placed_by or color != -1) and not call.forwarded:
            raise ForbiddenError("placed_by and color are the server's to say")
        ref = avatars.get(call.session.sid)
        if not call.forwarded:
            placed_by = ref.name if ref else "someone"
            color = ref.color if ref else 0xFFFFFF
        key = grid_map.key_of(x, y)
        if not call.owned_here(key):
            # Made (and written) by the owner of its cell: durable there.
            extra = {"placed_by": placed_by, "color": color}
            return dict(await call.forward(key, {**call.args, **extra}))
        marker = world.create(
            Marker(label=label or "pin", x=x, y=y, placed_by=placed_by, color=color)
        )
        return {"id": marker.id}

    @server.handler("players")
    def players(call: Call) -> int:
        """How many players are connected (to this process, on a shared map)."""
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
