"""Helpers for testing synkworld applications and synkworld itself.

- `ReferenceClient`: a strict protocol applier (`synkworld.Mirror`) that keeps
  replies and errors; `world_truth(world, keys)`: what it must equal.
- `FakeClock`: time that moves only when told to, for the tick loop and the
  client protocol.
- `start_process`, `start_process_async`: child processes (servers, databases)
  that end with the test process.
- `synkworld.testing.store_contract`: the contract every `Store` keeps, as
  checks a store's own test suite runs (needs pytest).
"""

from synkworld.testing._clock import FakeClock
from synkworld.testing._processes import die_with_parent, start_process, start_process_async
from synkworld.testing._reference import ReferenceClient, ReferenceClientV2, world_truth

__all__ = [
    "FakeClock",
    "ReferenceClient",
    "ReferenceClientV2",
    "die_with_parent",
    "start_process",
    "start_process_async",
    "world_truth",
]
