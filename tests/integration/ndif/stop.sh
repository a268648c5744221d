#!/usr/bin/env bash
# Stop the local NDIF stack by the PIDs start.sh recorded, and their descendants (found by
# parent PID), never by process name.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
STATE="${NDIF_STATE:-$ROOT/.gl/ndif-state}"
[ -f "$STATE/pids" ] || { echo "stop.sh: nothing recorded in $STATE/pids"; exit 0; }
# PostgreSQL first, by its recorded postmaster PID: SIGINT is its "fast" shutdown (clients
# disconnected, clean exit; its own children end with it). SIGTERM to its children would look
# like a crash to it.
for pid in $(awk '$1 == "postgres" {print $2}' "$STATE/pids"); do
  kill -INT "$pid" 2>/dev/null || continue
  for i in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
done
recorded=$(awk '{print $2}' "$STATE/pids" | sort -u)
# Ray daemonizes (parent 1) and may restart its processes: also take every process started
# from this stack's own Ray session folder (a path unique to this checkout), by PID
session_pids=$(ps -ww -eo pid=,args= | grep -F -- "$STATE/ray/session_" | grep -v -e " grep " | awk '{print $1}')
recorded="$recorded $session_pids"
# descendants of the recorded PIDs (Ray's workers and actors are the raylet's children)
all="$recorded"
for round in 1 2 3 4; do
  more=$(ps -ww -eo pid=,ppid= | awk -v set=" $(echo $all) " '{ if (index(set, " " $2 " ") && !index(set, " " $1 " ")) print $1 }')
  [ -z "$more" ] && break
  all="$all $more"
done
for pid in $all; do kill -TERM "$pid" 2>/dev/null || true; done
alive=""
for i in $(seq 1 20); do
  alive=""; for pid in $all; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
  [ -z "$alive" ] && break; sleep 0.5
done
for pid in $alive; do kill -KILL "$pid" 2>/dev/null || true; done
rm -f "$STATE/pids" "$STATE/host"
echo "NDIF stack stopped ($(echo $all | wc -w) processes)"
