#!/usr/bin/env bash
# The Debian packages the test suite's servers need, installed when missing (`make test` runs this):
#   redis-server  the celery executor's broker (tests/deploy/test_celery_cluster.py)
#   postgresql    the Dagster instance the celery workers share (same test)
#   chromium      the browser the UI tests drive through Playwright (tests/ui; `playwright install` needs a
#                 download the test machines cannot make)
# Each test starts its own server on localhost and stops it; nothing here starts a service.
set -euo pipefail

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "system_packages.sh: missing Debian packages ${missing[*]}; install them as root:" >&2
    echo "  apt-get install -y ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
