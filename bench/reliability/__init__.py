"""Reliability benches: fuzz, outage, reconnect and kill9, and the server they start.

``python -m bench.reliability <scenario>`` (usage in cli.py); one module per
scenario, the busy world they share in world.py, the server they start in
server.py. See bench/README.md, "Reliability".
"""

from bench.reliability.cli import main
from bench.reliability.world import Ledger, Walker, WorldSpec

__all__ = ["Ledger", "Walker", "WorldSpec", "main"]
