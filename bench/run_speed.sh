#!/usr/bin/env bash
# Issue 16 side by side in one device call (bench/README.md, "Speed: flat optimizer, anchors,
# vmapped trials"). JSON lines to $OUT/<section>.jsonl, full log $OUT/log.txt.
#   bash bench/run_speed.sh [sections...]   sections: env anchors step hlo profile vmap
# Needs JAX/Flax/Optax/NumPy and torch only (no tyro, Ray, Optuna, W&B). Expected ~4-5 min on
# an H200; to split it: `bash bench/run_speed.sh env anchors step`, then `... profile vmap`.
set -u -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT"
PY=${PY:-python3}
sections=${*:-env anchors step profile vmap}  # hlo: optional (profile counts real kernels)
# our step as trials run it (tuner.core.gpu_share.configure turns Triton GEMM off); the JAX
# anchor runs with JAX's default flags (a straightforward user sets none)
OURS="XLA_FLAGS=--xla_gpu_enable_triton_gemm=false"
log() { tee -a "$OUT/$1.jsonl"; }
run() { local section=$1 limit=$2; shift 2
        timeout "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt" | grep '^{' | log "$section"; }
start=$(date +%s)
for s in $sections; do
  echo "=== $s $(date +%T) (+$(( $(date +%s) - start )) s)" | tee -a "$OUT/log.txt"
  case $s in
    env) $PY -c "import jax, flax, optax, torch; print(jax.__version__, flax.__version__, optax.__version__, torch.__version__, jax.devices())" 2>&1 | tee -a "$OUT/log.txt"
         nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee -a "$OUT/log.txt" ;;
    anchors) run anchors 80 $PY -m bench.anchor_jax --batches 64 256 --attention einsum
             run anchors 150 $PY bench/anchor_torch.py --batches 64 256 ;;
    step) run step 90 env $OURS $PY -m bench.train_step --batches 64 256 --dtypes bfloat16 \
            --attention cudnn --optimizers adamw adamw_flat ;;
    hlo) run hlo 60 env $OURS $PY -m bench.hlo_count --batch 64 ;;
    profile) for o in adamw adamw_flat; do
               run profile 40 env $OURS $PY -m bench.profile --batch 64 --optimizer $o --top 12; done ;;
    vmap) run vmap 120 env $OURS $PY -m bench.vmapped_trials --patches 1 8 32 --k 1 4 8 \
            --optimizer ${VMAP_OPTIMIZER:-adamw} ;;
  esac
done
echo "=== done (+$(( $(date +%s) - start )) s)" | tee -a "$OUT/log.txt"
