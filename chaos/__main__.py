"""`python -m chaos <scenario> [--rounds N] [--seed S]`: see chaos/__init__.py."""

from chaos.run import main

raise SystemExit(main())
