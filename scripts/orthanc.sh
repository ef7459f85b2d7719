#!/usr/bin/env bash
# Orthanc, the PACS that the gateway forwards to in tests and in the quick start.
#
#   scripts/orthanc.sh install
#       Installs the Debian packages `orthanc` and `orthanc-dicomweb` if they are missing (needs
#       root; Debian 12 ships Orthanc 1.10.1 and DICOMweb plugin 1.7) and makes sure the Debian
#       service is not running and not enabled: we always run our own instances with our own
#       configuration, never the system one on ports 4242/8042. Builds the loopback shim (below;
#       installs gcc if there is no C compiler). Prints where the binary, the DICOMweb plugin and
#       the shim are.
#
#   scripts/orthanc.sh run DATA_DIR PORT USER PASSWORD
#       Runs an Orthanc in the foreground on http://127.0.0.1:PORT (HTTP only, no DICOM port),
#       storage under DATA_DIR, DICOMweb at http://127.0.0.1:PORT/dicom-web/, HTTP basic
#       authentication with USER/PASSWORD, OverwriteInstances false. Logs go to stderr.
#       To see the studies, open Orthanc's own web page in a browser on this machine and log in
#       with USER/PASSWORD: http://127.0.0.1:PORT/app/explorer.html (Orthanc Explorer; Orthanc
#       1.10 in Debian 12 has no /ui/app/, which is the Orthanc Explorer 2 plugin of newer
#       Orthanc releases).
#
# Loopback only: Orthanc 1.10 has no option for the address it listens on; it binds its HTTP
# port on every interface (RemoteAccessAllowed false only answers 403 to other hosts). Our
# instances therefore run with LD_PRELOAD=.tools/orthanc/loopback-bind.so, a 30-line shim that
# turns a bind() of a listening socket to 0.0.0.0 (or ::) into 127.0.0.1 (or ::1).
set -euo pipefail

ORTHANC_BIN=${ORTHANC_BIN:-/usr/sbin/Orthanc}
DICOMWEB_PLUGIN=${ORTHANC_DICOMWEB_PLUGIN:-/usr/share/orthanc/plugins/libOrthancDicomWeb.so}
PACKAGES=(orthanc orthanc-dicomweb)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHIM=${ORTHANC_LOOPBACK_SHIM:-$ROOT/.tools/orthanc/loopback-bind.so}

usage() {
  sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

# The Debian service, if the package started it (postinst runs `invoke-rc.d orthanc start`, and
# systemd starts orthanc.service where systemd runs): stop it and keep it from starting at boot.
# Never `/etc/init.d/orthanc stop`: it ends every /usr/sbin/Orthanc process on the machine,
# including other people's test instances. Only the process in the service's pid file is stopped.
stop_system_service() {
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now orthanc.service >/dev/null 2>&1 || true
  fi
  if command -v update-rc.d >/dev/null 2>&1 && [ -x /etc/init.d/orthanc ]; then
    update-rc.d orthanc disable >/dev/null 2>&1 || true
  fi
  local pidfile=/run/orthanc.pid pid
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$ORTHANC_BIN" ]; then
      echo "orthanc.sh: stopping the Debian Orthanc service (pid $pid)" >&2
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
      [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  fi
}

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "$@")
  # No package lists yet (fresh machine or container): fetch them first.
  if ! apt-cache show "$@" >/dev/null 2>&1; then apt-get update -qq; fi
  # A stale package list (files moved on the mirror) is the usual failure: update once, retry.
  "${apt[@]}" >/dev/null || { apt-get update -qq && "${apt[@]}" >/dev/null; }
}

build_shim() {
  if ! command -v cc >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "orthanc.sh: a C compiler is needed for the loopback shim (sudo apt-get install gcc)" >&2
      exit 1
    fi
    echo "orthanc.sh: installing gcc (for the loopback shim)" >&2
    apt_install gcc libc6-dev
  fi
  mkdir -p "$(dirname "$SHIM")"
  local src
  src=$(mktemp --suffix=.c)
  cat >"$src" <<'C'
/* LD_PRELOAD shim: a listening socket bound to 0.0.0.0 or :: is bound to 127.0.0.1 or ::1.
   Binds with port 0 (client sockets) and to a specific address are left alone. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real_bind;
    if (!real_bind) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in in4;
        memcpy(&in4, addr, sizeof in4);
        if (in4.sin_port != 0 && in4.sin_addr.s_addr == htonl(INADDR_ANY)) {
            in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return real_bind(fd, (const struct sockaddr *)&in4, sizeof in4);
        }
    } else if (addr && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 in6;
        memcpy(&in6, addr, sizeof in6);
        if (in6.sin6_port != 0 && IN6_IS_ADDR_UNSPECIFIED(&in6.sin6_addr)) {
            in6.sin6_addr = in6addr_loopback;
            return real_bind(fd, (const struct sockaddr *)&in6, sizeof in6);
        }
    }
    return real_bind(fd, addr, len);
}
C
  cc -O2 -Wall -Werror -shared -fPIC -o "$SHIM.tmp" "$src" -ldl
  rm -f "$src"
  mv -f "$SHIM.tmp" "$SHIM"
}

cmd_install() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
  if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
      echo "orthanc.sh: please install ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
      exit 1
    fi
    echo "orthanc.sh: installing ${missing[*]}" >&2
    # Keep maintainer scripts from starting the system service while we install (the standard
    # policy-rc.d mechanism; a policy that is already there, as in containers, is left alone).
    local policy=/usr/sbin/policy-rc.d ours=""
    if [ ! -e "$policy" ]; then
      ours=$policy
      trap 'rm -f "$policy"' EXIT
      printf '#!/bin/sh\n# temporary, by relaypacs scripts/orthanc.sh\nexit 101\n' >"$policy"
      chmod 0755 "$policy"
    fi
    apt_install "${missing[@]}"
    if [ -n "$ours" ]; then rm -f "$ours"; trap - EXIT; fi
  fi
  stop_system_service
  [ -x "$ORTHANC_BIN" ] || { echo "orthanc.sh: $ORTHANC_BIN is missing" >&2; exit 1; }
  [ -e "$DICOMWEB_PLUGIN" ] || { echo "orthanc.sh: $DICOMWEB_PLUGIN is missing" >&2; exit 1; }
  [ -f "$SHIM" ] || build_shim
  echo "orthanc: $ORTHANC_BIN ($("$ORTHANC_BIN" --version | head -1))"
  echo "dicomweb plugin: $DICOMWEB_PLUGIN -> $(readlink -f "$DICOMWEB_PLUGIN")"
  echo "loopback shim: $SHIM"
}

cmd_run() {
  [ $# -eq 4 ] || usage
  local data_dir=$1 port=$2 user=$3 password=$4
  [[ "$port" =~ ^[0-9]+$ ]] || { echo "orthanc.sh: PORT must be a number" >&2; exit 2; }
  if [ ! -x "$ORTHANC_BIN" ] || [ ! -f "$SHIM" ]; then
    echo "orthanc.sh: run 'scripts/orthanc.sh install' first" >&2
    exit 1
  fi
  mkdir -p "$data_dir"
  data_dir=$(cd "$data_dir" && pwd)
  local config="$data_dir/orthanc.json"
  # The configuration holds the password: readable by this user only. JSON written by Python so
  # that any user name or password is quoted correctly.
  (umask 077 && python3 - "$config" "$data_dir" "$port" "$user" "$password" "$DICOMWEB_PLUGIN" <<'PY'
import json, sys
config, data_dir, port, user, password, plugin = sys.argv[1:]
settings = {
    "Name": "RelayPACS quick start",
    "StorageDirectory": f"{data_dir}/storage",
    "IndexDirectory": f"{data_dir}/index",
    "HttpServerEnabled": True,
    "HttpPort": int(port),
    "RemoteAccessAllowed": False,
    "AuthenticationEnabled": True,
    "RegisteredUsers": {user: password},
    "DicomServerEnabled": False,
    "OverwriteInstances": False,
    "Plugins": [plugin],
    "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
}
with open(config, "w", encoding="utf-8") as f:
    json.dump(settings, f, indent=2)
PY
  )
  LD_PRELOAD="$SHIM${LD_PRELOAD:+:$LD_PRELOAD}" exec "$ORTHANC_BIN" "$config"
}

case "${1:-}" in
  install) shift; [ $# -eq 0 ] || usage; cmd_install ;;
  run) shift; cmd_run "$@" ;;
  *) usage ;;
esac
