"""The smallest synkworld server: boats on a map, and a handler that moves one.

synkworld serve examples.minimal_server:make_server --port 8080
"""

from synkworld import Call, GridMap, Server, SynkObject, World


class Boat(SynkObject, type="boat"):
    name: str
    x: float
    y: float


def make_server() -> Server:
    world = World(GridMap(cell_size=250, bounds=(0, 0, 10_000, 10_000)))
    for i in range(100):
        world.create(Boat(id=f"boat{i}", name=f"Boat {i}", x=100.0 * i, y=100.0 * i))
    server = Server(world, tick_rate_hz=20)

    @server.handler("sail")
    def sail(call: Call, boat: str, dx: float, dy: float) -> dict[str, float]:
        b = call.world.get(boat, Boat)  # typed: a Boat, or an error the caller gets
        call.world.move(b, b.x + dx, b.y + dy)  # reaches subscribers at the next tick
        return {"x": b.x, "y": b.y}

    return server
