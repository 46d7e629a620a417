#!/bin/bash
# Device call 2: the confirmation at the experiment budget (30,000 steps, full schedule).
# Each argument: VARIANT[:TAG[:dotted=value,...]], one process each.
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.1
STEPS=${STEPS:-30000}; LIMIT=${LIMIT:-480}; D=/tmp/hs2; mkdir -p $D
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for spec in "$@"; do
  IFS=: read -r v tag sets <<< "$spec"
  args=(); for s in ${sets//,/ }; do args+=(--set "$s"); done
  timeout $LIMIT python3 -m bench.hard_setting --variant $v --tag "$tag" "${args[@]}" --steps $STEPS --out $D > $D/$v$tag.log 2>&1 &
done
wait
python3 -m bench.hard_setting --summarize $D
for spec in "$@"; do IFS=: read -r v tag sets <<< "$spec"; echo "== $v$tag"; grep -E "step +(5000|10000|20000|30000) " $D/$v$tag.log | cut -c1-170; grep -iE "error|Trace" $D/$v$tag.log | tail -2; done
tar czf $OUT/hs2.tgz -C $D .
