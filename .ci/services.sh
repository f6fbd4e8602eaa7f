#!/usr/bin/env bash
# Installs what the deployment tests (tests/deploy/) start for real on loopback:
# Debian's PostgreSQL server binaries. The tests start and stop their own throw-away
# cluster; nothing is left running and no system service is enabled.
# Idempotent: does nothing when the binaries are already there.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "services.sh: PostgreSQL is missing and cannot be installed here (needs root and apt-get);" \
       "tests/deploy will skip the Postgres test" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
