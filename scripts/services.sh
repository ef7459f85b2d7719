#!/usr/bin/env bash
# Makes sure the servers the tests talk to are there: PostgreSQL on 127.0.0.1:5432, Redis on
# 127.0.0.1:6379 (and the redis-server binary: some tests start and stop their own).
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

redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && head -c5 <&3 | grep -q PONG) 2>/dev/null; }

if ! command -v redis-server >/dev/null 2>&1 || ! redis_up; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "relaypacs: Redis is not running on 127.0.0.1:6379 (or redis-server is missing); install and start it" >&2
    exit 1
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "relaypacs: installing Redis" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  if ! redis_up; then
    redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes >/dev/null
    for _ in $(seq 30); do redis_up && break; sleep 0.2; done
  fi
fi

# Chromium (Debian's package, never a browser download): the browser of the web app's tests
# (tests/web launches it through Playwright with executable_path=/usr/bin/chromium).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "relaypacs: the web app's tests need Chromium (sudo apt-get install chromium)" >&2
    exit 1
  fi
  echo "relaypacs: installing chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 chromium >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
fi

# wrk (Debian's package): the load generator of bench.load, and of tests/bench/test_wrk.py.
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "relaypacs: bench.load and its test need wrk (sudo apt-get install wrk)" >&2
    exit 1
  fi
  echo "relaypacs: installing wrk" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 wrk >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
fi

# kubectl (its `kustomize`): tests/ops/test_deploy.py renders the Kubernetes overlays with it.
# This machine image ships it; Debian 12's archive has only kubernetes-client 1.20, too old
# for the overlays (kustomize v5 syntax), so it is not installed from there.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "relaypacs: tests/ops/test_deploy.py needs kubectl >= 1.27 on the PATH (not in Debian 12)" >&2
fi

# promtool: tests/ops/test_deploy.py checks the alert rules and Prometheus's configuration with
# it. Debian 12's `prometheus` package ships it; only that binary is taken out of the package
# (into .tools/bin), so that no Prometheus server is installed, let alone started.
install_promtool() {
  local promdir
  promdir=$(mktemp -d)
  chmod 0755 "$promdir"  # apt downloads as the _apt user
  (cd "$promdir" && { apt-get download -qq prometheus 2>/dev/null \
    || { apt-get update -qq && apt-get download -qq prometheus; }; }) \
    && mkdir -p .tools/bin \
    && dpkg-deb --fsys-tarfile "$promdir"/prometheus_*.deb \
      | tar -xO ./usr/bin/promtool > .tools/bin/promtool.part \
    && chmod 0755 .tools/bin/promtool.part && mv .tools/bin/promtool.part .tools/bin/promtool
  local status=$?
  rm -rf "$promdir" .tools/bin/promtool.part
  return $status
}
if [ ! -x .tools/bin/promtool ] && ! command -v promtool >/dev/null 2>&1; then
  echo "relaypacs: installing promtool (from Debian's prometheus package) into .tools/bin" >&2
  install_promtool || echo "relaypacs: tests/ops/test_deploy.py needs promtool (Debian's prometheus package has it)" >&2
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
