#!/usr/bin/env bash
# Start the local NDIF stack on 127.0.0.1 (docs/ndif-local.md): redis, moto (S3), PostgreSQL
# (the API-key database), a Ray head with a declared GPU and the CPU model actor, the NDIF
# controller, the API with API-key authentication on (NDIF_POSTGRES_URL set).
# Each start issues one fresh API key (a UUID; the previous one is deleted) and writes it to
# $STATE/api_key (mode 600; the tests read it there, it is never printed).
# PIDs go to $STATE/pids (stop.sh ends exactly those); logs to $STATE/logs.
# Prints the start time; exits non-zero if the API does not answer /connected or does not
# know the issued key.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
HERE="$ROOT/tests/integration/ndif"
VENV="${NDIF_VENV:-$ROOT/.gl/ndif-venv}"
STATE="${NDIF_STATE:-$ROOT/.gl/ndif-state}"
API_PORT="${NDIF_API_PORT:-8001}"
REDIS_PORT="${NDIF_REDIS_PORT:-6391}"
S3_PORT="${NDIF_S3_PORT:-9011}"
RAY_PORT="${NDIF_RAY_PORT:-6390}"
RAY_CLIENT_PORT="${NDIF_RAY_CLIENT_PORT:-10001}"
DASHBOARD_PORT="${NDIF_DASHBOARD_PORT:-8265}"
PG_PORT="${NDIF_PG_PORT:-6392}"
[ -x "$VENV/bin/python" ] || { echo "start.sh: no server venv at $VENV; run install.sh first" >&2; exit 1; }
if [ -f "$STATE/pids" ]; then
  echo "start.sh: $STATE/pids exists (a stack may be running): run stop.sh first" >&2; exit 1
fi
mkdir -p "$STATE/logs" "$STATE/ray"
: > "$STATE/pids"
t0=$(date +%s.%N)
export PATH="$VENV/bin:$PATH" PYTHONPATH="$HERE/server${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NDIF_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/" NDIF_OBJECT_STORE_URL="http://127.0.0.1:$S3_PORT" \
  NDIF_OBJECT_STORE_ACCESS_KEY=testing NDIF_OBJECT_STORE_SECRET_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
  NDIF_RAY_ADDRESS="ray://127.0.0.1:$RAY_CLIENT_PORT" NDIF_DEFAULT_DTYPE=float32 NDIF_DEFAULT_PADDING_BIAS=0 \
  NDIF_DEFAULT_MODEL_ACTOR_CLASS=hones_cpu_actor.CPUModelActor NDIF_API_PORT="$API_PORT"
unset NDIF_POSTGRES_URL  # only the API gets it (below): auth on there

record() { echo "$1 $2" >> "$STATE/pids"; }

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --protected-mode yes \
  > "$STATE/logs/redis.log" 2>&1 &
record redis $!
moto_server -H 127.0.0.1 -p "$S3_PORT" > "$STATE/logs/moto.log" 2>&1 &
record moto $!

# PostgreSQL, the API-key database: one cluster under $STATE/pg (initdb once), listening on
# 127.0.0.1:$PG_PORT only, its socket in $STATE/pg/run (mode 700). Loopback connections are
# trusted (no password): a test cluster for this machine's users only. postgres refuses to
# run as root: as root, it runs as the `postgres` user of Debian's package (install.sh).
PG_BIN="$(dirname "$(readlink -f "$(command -v initdb 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")")"
[ -x "$PG_BIN/postgres" ] || { echo "start.sh: no PostgreSQL server found (initdb, postgres); run install.sh first" >&2; exit 1; }
PGDATA="$STATE/pg/data"
AS_PG=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "start.sh: running as root, but no \`postgres\` user to run PostgreSQL as; run install.sh" >&2; exit 1; }
  AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
mkdir -p "$STATE/pg/run"
[ -f "$PGDATA/PG_VERSION" ] || { rm -rf "$PGDATA"; mkdir -p "$PGDATA"; }
[ "$(id -u)" != 0 ] || chown -R postgres:postgres "$STATE/pg"
chmod 700 "$PGDATA" "$STATE/pg/run"
if [ ! -f "$PGDATA/PG_VERSION" ]; then
  "${AS_PG[@]}" "$PG_BIN/initdb" -D "$PGDATA" -U ndif --auth=trust -E UTF8 --no-instructions --no-sync \
    > "$STATE/logs/initdb.log" 2>&1 || { echo "start.sh: initdb failed (log: $STATE/logs/initdb.log)" >&2; exit 1; }
fi
"${AS_PG[@]}" "$PG_BIN/postgres" -D "$PGDATA" -p "$PG_PORT" -k "$STATE/pg/run" -c listen_addresses=127.0.0.1 \
  -c unix_socket_permissions=0700 -c fsync=off -c max_connections=40 > "$STATE/logs/postgres.log" 2>&1 &
record postgres $!   # setpriv execs postgres: this is the postmaster
for i in $(seq 1 60); do "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U ndif -d postgres && break; sleep 0.5; done
psql_() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U ndif "$@"; }
if [ -z "$(psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'ndif'")" ]; then
  psql_ -d postgres -c "CREATE DATABASE ndif" && psql_ -d ndif -f "$HERE/server/keys_schema.sql"
fi
# one fresh key per start (through stdin: never on a command line); the previous key is deleted
KEY="$("$VENV/bin/python" -c 'import uuid; print(uuid.uuid4())')"
USER_ID="$("$VENV/bin/python" -c 'import uuid; print(uuid.uuid4())')"
psql_ -d ndif <<SQL
DELETE FROM keys;
DELETE FROM users;
INSERT INTO users (user_id, email) VALUES ('$USER_ID', 'hones-tests@localhost');
INSERT INTO keys (key_id, user_id) VALUES ('$KEY', '$USER_ID');
SQL
(umask 077; printf '%s\n' "$KEY" > "$STATE/api_key.tmp" && mv "$STATE/api_key.tmp" "$STATE/api_key")

MEM_BYTES=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 1024 / 2 ))
ray start --head --node-ip-address=127.0.0.1 --port="$RAY_PORT" --ray-client-server-port="$RAY_CLIENT_PORT" \
  --num-cpus=2 --num-gpus=1 \
  --resources="{\"head\":10,\"cuda_memory_bytes\":17179869184,\"cpu_memory_bytes\":$MEM_BYTES}" \
  --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --temp-dir="$STATE/ray" \
  --disable-usage-stats > "$STATE/logs/ray.log" 2>&1
# ray start daemonizes: record every process of its session (their PIDs, not names)
# ray start daemonizes (parent 1): find its processes by their session folder or head address
pgrep_session() { ps -ww -eo pid=,args= | grep -F -e "$STATE/ray" -e "127.0.0.1:$RAY_PORT" | grep -v -e " grep " | awk '{print $1}'; }
for pid in $(pgrep_session); do record ray "$pid"; done

RAY_ADDRESS="127.0.0.1:$RAY_PORT" python -m ndif.services.ray.deployments.controller.controller \
  > "$STATE/logs/controller.log" 2>&1
NDIF_POSTGRES_URL="postgresql://ndifapi@127.0.0.1:$PG_PORT/ndif" \
  gunicorn --config python:ndif.services.api.gunicorn_conf --bind "127.0.0.1:$API_PORT" \
  ndif.services.api.app:app > "$STATE/logs/api.log" 2>&1 &
record api $!
# processes Ray started later (workers, the controller actor) are in its session: record them too
for i in $(seq 1 120); do
  if curl -sf "http://127.0.0.1:$API_PORT/connected" 2>/dev/null | grep -q connected; then break; fi
  sleep 1
done
for pid in $(pgrep_session); do grep -q " $pid\$" "$STATE/pids" || record ray "$pid"; done
if ! curl -sf "http://127.0.0.1:$API_PORT/connected" | grep -q connected; then
  echo "start.sh: the NDIF API did not come up on 127.0.0.1:$API_PORT (logs in $STATE/logs)" >&2
  tail -20 "$STATE/logs/api.log" >&2 || true
  exit 1
fi
# auth is on and knows the issued key: /whoami resolves it to its user (auth off: email null)
(umask 077; printf 'ndif-api-key: %s\n' "$KEY" > "$STATE/api_key.header")
whoami="$(curl -sf -H "@$STATE/api_key.header" "http://127.0.0.1:$API_PORT/whoami" || true)"
rm -f "$STATE/api_key.header"
if ! echo "$whoami" | grep -q hones-tests@localhost; then
  echo "start.sh: the NDIF API does not authenticate the issued key (/whoami: ${whoami:-no answer}; logs in $STATE/logs)" >&2
  exit 1
fi
t1=$(date +%s.%N)
echo "http://127.0.0.1:$API_PORT" > "$STATE/host"
printf 'NDIF stack up at http://127.0.0.1:%s in %.1f s, API-key auth on (key in %s/api_key; pids in %s/pids)\n' \
  "$API_PORT" "$(echo "$t1 - $t0" | bc)" "$STATE" "$STATE"
