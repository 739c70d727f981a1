"""Helpers for testing synkworld applications and synkworld itself."""

from synkworld.testing._clock import FakeClock
from synkworld.testing._processes import die_with_parent, start_process, start_process_async

__all__ = ["FakeClock", "die_with_parent", "start_process", "start_process_async"]
