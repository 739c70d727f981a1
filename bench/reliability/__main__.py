"""``python -m bench.reliability``: runs `main` with the process's arguments."""

import sys

from bench.reliability.cli import main

sys.exit(main())
