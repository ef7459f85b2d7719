#!/usr/bin/env bash
# Makes sure the servers the tests talk to are there: PostgreSQL on 127.0.0.1:5432.
# On a fresh Debian machine (as root) it installs and starts it; elsewhere it only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! command -v pg_isready >/dev/null 2>&1 || ! pg_up; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "relaypacs: PostgreSQL is not running on 127.0.0.1:5432; start it or set RELAYPACS_TEST_POSTGRES" >&2
    exit 1
  fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "relaypacs: installing PostgreSQL" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -n | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 30); do pg_up && break; sleep 1; done
fi

# Orthanc with its DICOMweb plugin: the real PACS of the forwarding tests.
scripts/orthanc.sh install >/dev/null

# Trust auth on loopback is how this project's machines run; elsewhere give postgres a password.
if ! psql "postgresql://postgres@127.0.0.1:5432/postgres" -qtAc 'select 1' >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && [ ! -f .tools/test.env ]; then
    password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    su postgres -c "psql -qc \"ALTER USER postgres PASSWORD '$password'\"" >/dev/null
    echo "export RELAYPACS_TEST_POSTGRES=postgresql://postgres:$password@127.0.0.1:5432" > .tools/test.env
  fi
fi
