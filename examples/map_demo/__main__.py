"""Runs the demo map: ``python -m examples.map_demo --port 8080``, the same as ``synkworld demo``.

The demo's code ships in the package, in synkworld/demo/ (so that it runs
after `pip install`); this module is kept for the command above.
"""

from synkworld.demo.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
