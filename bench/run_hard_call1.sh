#!/bin/bash
# Device call 1: every variant at once (one process each), first 8,000 steps of the 30,000-step schedule.
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.06
STEPS=${STEPS:-30000}; STOP=${STOP:-8000}; LIMIT=${LIMIT:-420}; D=/tmp/hs; mkdir -p $D
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for v in "$@"; do
  timeout $LIMIT python3 -m bench.hard_setting --variant $v --steps $STEPS --stop-at $STOP --out $D > $D/$v.log 2>&1 &
done
wait
python3 -m bench.hard_setting --summarize $D
for v in "$@"; do echo "== $v"; grep -E "step +(1000|3000|5000|8000|10000|20000|30000) " $D/$v.log | cut -c1-160; tail -2 $D/$v.log | grep -iE "error|Trace" ; done
tar czf $OUT/hs.tgz -C $D .
