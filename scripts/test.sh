#!/usr/bin/env bash
# Install what is needed and run the whole suite: format, lint, types, migrations and tests
# against real PostgreSQL, a real S3 server (moto) and real gateway processes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/services.sh
if [ -f .tools/test.env ]; then . .tools/test.env; fi

echo "== ruff format --check" && .venv/bin/ruff format --check .
echo "== ruff check" && .venv/bin/ruff check .
echo "== mypy --strict" && .venv/bin/mypy
echo "== import contracts" && .venv/bin/lint-imports --no-cache
echo "== web app (eslint, tsc, vitest; then the build the browser tests use)"
scripts/web.sh check
scripts/web.sh build
echo "== pytest"
exec .venv/bin/pytest "$@"
