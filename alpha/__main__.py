"""``python -m alpha``: the same entry point as the ``alpha`` console script (used by torchrun)."""

from alpha.cli import main

raise SystemExit(main())
