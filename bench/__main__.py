"""`uv run python -m bench [--quick] [--only ...] [--json PATH]`: see bench/README.md."""

from bench.run import main

raise SystemExit(main())
