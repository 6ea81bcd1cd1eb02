"""``python -m ols`` runs the command line."""

from .cli import main

raise SystemExit(main())
