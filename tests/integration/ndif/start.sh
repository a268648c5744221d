#!/usr/bin/env bash
# Start the local NDIF stack on 127.0.0.1 (docs/ndif-local.md): redis, moto (S3),
# a Ray head with a declared GPU and the CPU model actor, the NDIF controller, the API.
# PIDs go to $STATE/pids (stop.sh ends exactly those); logs to $STATE/logs.
# Prints the start time; exits non-zero if the API does not answer /connected.
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
unset NDIF_POSTGRES_URL  # auth off: no API key needed by the local server

record() { echo "$1 $2" >> "$STATE/pids"; }

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --protected-mode yes \
  > "$STATE/logs/redis.log" 2>&1 &
record redis $!
moto_server -H 127.0.0.1 -p "$S3_PORT" > "$STATE/logs/moto.log" 2>&1 &
record moto $!

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
t1=$(date +%s.%N)
echo "http://127.0.0.1:$API_PORT" > "$STATE/host"
printf 'NDIF stack up at http://127.0.0.1:%s in %.1f s (pids in %s/pids)\n' "$API_PORT" "$(echo "$t1 - $t0" | bc)" "$STATE"
