#!/bin/bash
# Batch script of one Ray worker node, submitted by tuner.slurm.provider.SlurmNodeProvider.
#
# Arguments: the full `ray start --address=<head> --block ...` command line (built by the
# provider from the node type's resources). Environment, set by the provider:
#   RAY_NODE_TYPE_NAME     node type from cluster.yaml; with RAY_CLOUD_INSTANCE_ID (the Slurm job
#                          id, set below) it lets autoscaler v2 match this Ray node to its job.
#   RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH   token auth: the token travels by file, never on a
#                          command line (sbatch arguments are visible to every user).
#   TUNER_SLURM_SETUP      optional shell lines run first (module load, conda activate, ...).
#   TUNER_SLURM_START_LOCK lock file that serialises raylet starts on one host.
set -uo pipefail

export RAY_CLOUD_INSTANCE_ID="$SLURM_JOB_ID"
: "${RAY_NODE_TYPE_NAME:?RAY_NODE_TYPE_NAME must be set by the provider}"
echo "ray worker: job $SLURM_JOB_ID type $RAY_NODE_TYPE_NAME on $(hostname)"

if [[ -n "${TUNER_SLURM_SETUP:-}" ]]; then
    eval "$TUNER_SLURM_SETUP"
fi

# Several raylets starting at the same moment on one host race for ports ("Address already in
# use"). Hold a host-wide lock until this raylet is up; the job's own output file tells when.
out=$(readlink -f "/proc/$$/fd/1" || true)
lock="${TUNER_SLURM_START_LOCK:-/tmp/ray-slurm-start-$(id -u).lock}"
exec 9>"$lock"
flock -w 300 9 || echo "ray worker: could not lock $lock, starting anyway" >&2

export PYTHONUNBUFFERED=1
"$@" 9>&- &
ray_pid=$!
# Slurm signals every process of the job on scancel/preemption; pass it on explicitly as well
# in case the batch shell alone is signalled.
trap 'kill -TERM "$ray_pid" 2>/dev/null' TERM INT

for _ in $(seq 240); do
    if [[ -f "$out" ]] && grep -q "Ray runtime started" "$out"; then
        break
    fi
    kill -0 "$ray_pid" 2>/dev/null || break
    sleep 0.5
done
flock -u 9
exec 9>&-

wait "$ray_pid"
status=$?
# `wait` returns early when a trapped signal arrives: wait for ray start itself to finish.
while kill -0 "$ray_pid" 2>/dev/null; do
    wait "$ray_pid"
    status=$?
done
echo "ray worker: ray start exited with $status"
exit "$status"
