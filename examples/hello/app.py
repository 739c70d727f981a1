from pathlib import Path

from synkworld import GridMap, Server, SynkObject, World


class Boat(SynkObject, type="boat"):
    x: float
    y: float


def make_server() -> Server:
    world = World(GridMap(cell_size=100, bounds=(0, 0, 1000, 1000)))
    boats = [world.create(Boat(x=50.0 * i, y=25.0 + 50.0 * i)) for i in range(20)]
    server = Server(world, web_root=Path(__file__).parent)  # serves index.html at /

    @server.simulation
    def sail(dt: float) -> None:
        for boat in boats:
            world.move(boat, (boat.x + 40 * dt) % 1000, boat.y)

    return server
