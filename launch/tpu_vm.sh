#!/usr/bin/env bash
# One experiment on every host of a Cloud TPU VM slice.
#
#   launch/tpu_vm.sh [--dry-run] [--workdir DIR] TPU_NAME ZONE -- python -m experiments.X ...
#
# Runs the command on all workers at once through
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone ZONE --worker=all --command ...
# (after `cd DIR` with --workdir, e.g. the checkout on the VMs). JAX finds the
# other hosts of the slice by itself, so the command needs no distributed
# flags. The command is quoted so that the remote shell sees exactly the
# arguments given here. --dry-run prints the gcloud command instead.
set -euo pipefail

usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

dry_run=0 workdir='' positional=()
while (($#)); do
  case $1 in
    --dry-run) dry_run=1; shift ;;
    --workdir) (($# >= 2)) || usage; workdir=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    -*) echo "tpu_vm.sh: unknown option $1" >&2; usage ;;
    *) positional+=("$1"); shift ;;
  esac
done
((${#positional[@]} == 2)) || { echo 'tpu_vm.sh: need TPU_NAME and ZONE' >&2; usage; }
(($#)) || { echo 'tpu_vm.sh: missing the command after --' >&2; usage; }

remote=$(printf '%q ' "$@")
remote=${remote% }
if [[ -n $workdir ]]; then
  remote="cd $(printf '%q' "$workdir") && $remote"
fi
gcloud_cmd=(gcloud compute tpus tpu-vm ssh "${positional[0]}"
  --zone "${positional[1]}" --worker=all --command "$remote")

if ((dry_run)); then
  line=$(printf '%q ' "${gcloud_cmd[@]}")
  echo "${line% }"
  exit 0
fi
exec "${gcloud_cmd[@]}"
