#!/usr/bin/env bash
# Quick start: install what is needed and run the gateway with the embedded defaults
# (SQLite and files under ./data). Configure with RELAYPACS_* variables (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export RELAYPACS_DATA_DIR="${RELAYPACS_DATA_DIR:-$PWD/data}"
exec .venv/bin/relaypacs serve "$@"
