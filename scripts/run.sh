#!/usr/bin/env bash
# Quick start: install what is needed and run the gateway with the embedded defaults
# (SQLite and files under ./data). Configure with RELAYPACS_* variables (see README).
# Unless RELAYPACS_PACS_URL names a PACS, it also installs (where it can) and starts a local
# Orthanc with its DICOMweb plugin on 127.0.0.1:${ORTHANC_PORT:-8042} as the default target.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
# The web app the gateway serves at /: built when missing or older than its sources.
if [ -z "${RELAYPACS_WEB_DIR:-}" ] && scripts/web.sh stale; then
  echo "relaypacs: building the web app (web/dist)" >&2
  scripts/web.sh build
fi
export RELAYPACS_DATA_DIR="${RELAYPACS_DATA_DIR:-$PWD/data}"
if [ -z "${RELAYPACS_PACS_URL:-}" ]; then
  if scripts/orthanc.sh install >/dev/null 2>&1; then
    ORTHANC_PORT=${ORTHANC_PORT:-8042}
    mkdir -p "$RELAYPACS_DATA_DIR"
    pw_file="$RELAYPACS_DATA_DIR/orthanc-password"
    [ -f "$pw_file" ] || (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(18))' >"$pw_file")
    ORTHANC_PASSWORD=$(cat "$pw_file")
    scripts/orthanc.sh run "$RELAYPACS_DATA_DIR/orthanc" "$ORTHANC_PORT" relay "$ORTHANC_PASSWORD" \
      >"$RELAYPACS_DATA_DIR/orthanc.log" 2>&1 &
    orthanc_pid=$!
    trap 'kill "$orthanc_pid" 2>/dev/null; wait "$orthanc_pid" 2>/dev/null' EXIT
    export RELAYPACS_PACS_URL="http://127.0.0.1:$ORTHANC_PORT/dicom-web" RELAYPACS_PACS_PROFILE=orthanc \
      RELAYPACS_PACS_USERNAME=relay RELAYPACS_PACS_PASSWORD="$ORTHANC_PASSWORD"
    echo "relaypacs: local Orthanc (the PACS) at http://127.0.0.1:$ORTHANC_PORT/app/explorer.html" \
      "(user relay, password in $pw_file)" >&2
  else
    echo "relaypacs: could not install Orthanc; accepted studies stay queued until a PACS is" \
      "configured (RELAYPACS_PACS_URL)" >&2
  fi
fi
.venv/bin/relaypacs serve "$@"
