"""`python -m synkworld`: the same as the `synkworld` command."""

from synkworld._cli import main

raise SystemExit(main())
