"""synkworld inside an aiohttp application of your own: python examples/embedded_app.py"""

import os

from aiohttp import web

from synkworld import AccessLogger, GridMap, Server, SynkObject, World


class Boat(SynkObject, type="boat"):
    name: str
    x: float
    y: float


world = World(GridMap(cell_size=250, bounds=(0, 0, 10_000, 10_000)))
boat = world.create(Boat(name="Ada", x=100.0, y=100.0))
server = Server(world, tick_rate_hz=20)


@server.simulation
def drift(dt: float) -> None:
    world.move(boat, boat.x + 10 * dt, boat.y)  # reaches the clients at this tick


async def index(request: web.Request) -> web.Response:
    return web.Response(text="the game's own page")


app = web.Application()  # yours: your routes, middleware, cleanup contexts
app.router.add_get("/", index)
server.setup(app)  # adds /ws, /healthz, /metrics, /synkworld/client.js; ticks while app runs

if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    web.run_app(app, host="127.0.0.1", port=port, access_log_class=AccessLogger)
