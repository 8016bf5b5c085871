#!/usr/bin/env bash
# N processes of one experiment on this machine, as if on N hosts.
#
#   launch/local.sh [--dry-run] N -- python -m experiments.X [flags...]
#
# Each copy gets --coordinator_address=127.0.0.1:PORT --num_processes=N
# --process_id=i appended (PORT: a free loopback port from the OS); the
# environment (PATH, XLA_FLAGS, JAX_PLATFORMS, ...) passes through unchanged.
# On CPU, give each process its own fake devices, e.g.
#   JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 \
#     launch/local.sh 2 -- python -m experiments.X --tiny
# Waits for all; when one fails the others are stopped (SIGTERM, then SIGKILL
# after GRACE_S seconds) and the script exits with the failing status.
# Ctrl-C / SIGTERM is passed on as SIGTERM (the experiments checkpoint and
# stop); a second one kills them. --dry-run prints one command per process.
set -euo pipefail

GRACE_S=3

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

dry_run=0
n=''
while (($#)); do
  case $1 in
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *)
      if [[ -z $n && $1 =~ ^[1-9][0-9]*$ ]]; then n=$1; shift
      else echo "local.sh: unexpected argument '$1' before --" >&2; usage; fi ;;
  esac
done
[[ -n $n ]] || { echo 'local.sh: missing N (number of processes)' >&2; usage; }
(($#)) || { echo 'local.sh: missing the command after --' >&2; usage; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

if ((dry_run)); then
  for ((i = 0; i < n; i++)); do
    line=$(printf '%q ' "$@" "--coordinator_address=127.0.0.1:$port" \
      "--num_processes=$n" "--process_id=$i")
    echo "${line% }"
  done
  exit 0
fi

declare -A running  # pid -> process id
stop_all() {  # SIGTERM, then SIGKILL whatever is left after GRACE_S
  local pid deadline=$((SECONDS + GRACE_S))
  for pid in "${!running[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${!running[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
interrupted=0
on_signal() {
  local pid
  if ((interrupted)); then
    echo 'local.sh: second interrupt, killing all processes' >&2
    for pid in "${!running[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    exit 130
  fi
  interrupted=1
  echo 'local.sh: interrupted, sending SIGTERM to all processes' >&2
  for pid in "${!running[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap on_signal INT TERM

for ((i = 0; i < n; i++)); do
  "$@" "--coordinator_address=127.0.0.1:$port" "--num_processes=$n" \
    "--process_id=$i" &
  running[$!]=$i
done

while ((${#running[@]})); do
  done_pid=''
  status=0
  wait -n -p done_pid "${!running[@]}" || status=$?
  [[ -n ${done_pid:-} ]] || continue  # woken by a trapped signal
  rank=${running[$done_pid]}
  unset "running[$done_pid]"
  if ((status != 0)); then
    echo "local.sh: process $rank (pid $done_pid) exited with status $status;" \
      'stopping the others' >&2
    stop_all
    wait || true
    exit "$status"
  fi
done
if ((interrupted)); then exit 130; fi
