#!/usr/bin/env bash
# Renders launch/k8s/jobset-{gpu,tpu}.yaml for one experiment command and
# applies it with kubectl (or, with --dry-run, prints it).
#
#   launch/k8s/render.sh gpu [--dry-run] --image IMAGE --num-hosts N \
#     [--name NAME] [--gpus-per-host 8] [--port 8476] -- python -m experiments.X ...
#   launch/k8s/render.sh tpu [--dry-run] --image IMAGE --num-hosts N \
#     [--name NAME] [--tpu-accelerator tpu-v5-lite-podslice] \
#     [--tpu-topology 4x4] [--chips-per-host 4] -- python -m experiments.X ...
#
# --dry-run prints, as YAML comments, what each host runs (its environment and
# the command), then the manifest; nothing is sent to the cluster.
set -euo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { echo "render.sh: $*" >&2; exit 2; }

kind=${1:-}
[[ $kind == gpu || $kind == tpu ]] || { echo 'render.sh: first argument must be gpu or tpu' >&2; usage; }
shift
dry_run=0 name=dlresearch image='' num_hosts='' gpus_per_host=8 port=8476
tpu_accelerator=tpu-v5-lite-podslice tpu_topology=4x4 chips_per_host=4
while (($#)); do
  case $1 in
    --dry-run) dry_run=1; shift; continue ;;
    --) shift; break ;;
    -h|--help) usage ;;
  esac
  (($# >= 2)) || die "$1 needs a value"
  case $1 in
    --name) name=$2 ;;
    --image) image=$2 ;;
    --num-hosts) num_hosts=$2 ;;
    --gpus-per-host) gpus_per_host=$2 ;;
    --port) port=$2 ;;
    --tpu-accelerator) tpu_accelerator=$2 ;;
    --tpu-topology) tpu_topology=$2 ;;
    --chips-per-host) chips_per_host=$2 ;;
    *) die "unknown option $1" ;;
  esac
  shift 2
done
(($#)) || die 'missing the command after --'
[[ -n $image ]] || die '--image is required'
[[ $name =~ ^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$ ]] \
  || die "--name must be lower-case letters, digits and '-' (at most 40), got '$name'"
for v in num_hosts gpus_per_host port chips_per_host; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--${v//_/-} must be a positive integer, got '${!v}'"
done

command_json=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@")
manifest=$(<"$(dirname "$0")/jobset-$kind.yaml")
declare -A values=(
  [NAME]=$name [IMAGE]=$image [NUM_HOSTS]=$num_hosts [PORT]=$port
  [GPUS_PER_HOST]=$gpus_per_host [TPU_ACCELERATOR]=$tpu_accelerator
  [TPU_TOPOLOGY]=$tpu_topology [CHIPS_PER_HOST]=$chips_per_host)
for key in "${!values[@]}"; do
  manifest=${manifest//__${key}__/"${values[$key]}"}
done
manifest=${manifest//__COMMAND__/"$command_json"}  # last: left as given

if ((dry_run)); then
  command_line=$(printf '%q ' "$@")
  for ((i = 0; i < num_hosts; i++)); do
    if [[ $kind == gpu ]]; then
      env="JOB_COMPLETION_INDEX=$i JAX_COORDINATOR_ADDRESS=$name-workers-0-0.$name:$port JAX_NUM_PROCESSES=$num_hosts"
    else
      env="TPU_WORKER_ID=$i"
    fi
    echo "# host $i: $env ${command_line% }"
  done
  echo '---'
  printf '%s\n' "$manifest"
  exit 0
fi
printf '%s\n' "$manifest" | kubectl apply -f -
