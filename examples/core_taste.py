"""The core without a server: a world, a viewer's session, two ticks, the frames it gets."""

from synkworld import GridMap, Session, SynkObject, TickLoop, World


class Boat(SynkObject, type="boat"):
    name: str
    x: float
    y: float
    hp: int = 100


world = World(GridMap(cell_size=250, bounds=(0, 0, 10_000, 10_000)))
loop = TickLoop(world, tick_rate_hz=20)
boat = world.create(Boat(name="Ada", x=100, y=100))

viewer = Session("s1", world.grid)
viewer.view("main", (0, 0, 1000, 750), margin=1)
loop.attach(viewer)
loop.step()  # viewer's queue: a frame with the cells and a snapshot
boat.x = 300  # crosses into cell main:1:0
loop.step()  # a mod with "to" in main:0:0, an add with "from" in main:1:0
print(viewer.pop(), viewer.pop())
