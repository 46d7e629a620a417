#!/usr/bin/env bash
# Every benchmark in one device call, JSON lines teed to $OUT/<section>.jsonl (README: figures).
#   bash bench/run_all.sh [sections...]   sections: env profile step flags dump seeds cache rollout pack
set -u -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT"
PY=${PY:-python3}
sections=${*:-env profile step seeds cache rollout pack}
log() { tee -a "$OUT/$1.jsonl"; }
for s in $sections; do
  echo "=== $s $(date +%T)"
  case $s in
    env) $PY -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())"
         nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv ;;
    profile) for a in ${PROFILE:-"64 1" "256 1" "64 32"}; do set -- $a; $PY -m bench.profile --batch $1 --patch $2 2>&1 | tee -a "$OUT/log.txt" | grep '^{' | log profile; done ;;
    step) $PY -m bench.train_step --batches 64 256 1024 --dtypes bfloat16 --attention cudnn 2>&1 | tee -a "$OUT/log.txt" | grep '^{' | log step
          $PY -m bench.train_step --batches 64 256 --dtypes float32 --attention default 2>&1 | tee -a "$OUT/log.txt" | grep '^{' | log step ;;
    flags) for v in "XLA_FLAGS=--xla_gpu_enable_triton_gemm=false" \
               "XLA_FLAGS=--xla_gpu_dot_merger_threshold_mb=0" \
               "XLA_FLAGS=--xla_gpu_enable_triton_gemm=false --xla_gpu_dot_merger_threshold_mb=0" ; do
             env $v $PY -m bench.train_step --batches 64 256 --dtypes bfloat16 --attention cudnn 2>&1 \
               | tee -a "$OUT/log.txt" | grep '^{' | sed "s|^{|{\"env\": \"$v\", |" | log flags; done ;;
    dump) D=/tmp/hlo_dump; rm -rf $D
          XLA_FLAGS="--xla_gpu_enable_triton_gemm=false --xla_dump_to=$D --xla_dump_hlo_module_re=.*train_steps.*" \
            $PY -m bench.profile --batch 64 --top 60 2>&1 | tee -a "$OUT/log.txt" | grep '^{' | log dump
          ls -la $D | head; tar czf "$OUT/hlo.tgz" -C $D . ;;
    seeds) XLA_FLAGS=--xla_gpu_enable_triton_gemm=false $PY -m bench.seeds --k 4 --patches 1 8 32 2>&1 | tee -a "$OUT/log.txt" | grep '^{' | log seeds ;;
    cache) $PY -m bench.compile_cache --batch 64 2>&1 | tee -a "$OUT/log.txt" | grep '^{' | log cache
           XLA_FLAGS=--xla_gpu_enable_triton_gemm=false $PY -m bench.compile_cache --batch 64 2>&1 \
             | tee -a "$OUT/log.txt" | grep '^{' | sed 's|^{|{"env": "triton_gemm=false", |' | log cache ;;
    rollout) for d in bfloat16 float32; do $PY -m bench.rollout --dtype $d 2>&1 | tee -a "$OUT/log.txt" | grep -v '^WARNING' | log rollout; done ;;
    pack) $PY -m bench.packing --counts 1 2 4 --seconds 15 --batch 64 2>&1 | tee -a "$OUT/log.txt" | grep '^{' | log pack ;;
  esac
done
