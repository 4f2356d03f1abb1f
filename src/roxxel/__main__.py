"""`python -m roxxel`: the `roxxel` command."""

from ._cli import main

raise SystemExit(main())
