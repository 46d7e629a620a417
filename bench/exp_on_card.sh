#!/usr/bin/env bash
# One experiment at the SPEC size on a lent GPU, over several device calls (each at most 10
# minutes): every call resumes the same folder, ends its driver before the call's limit, and
# sends back what a later session needs to go on.
#
#   EXP=exp2 STOP=TERM T=540 bash bench/exp_on_card.sh
#
#   EXP       experiment name (default exp2); the folder is /tmp/exps/$EXP on the card
#   T         seconds this call's driver may run (default 540); then it gets SIG$STOP
#   STOP      TERM (clean interrupt) or KILL (a preemption: the resume must lose nothing)
#   PILOT     a pilot.json measured earlier on the same kind of card, placed in a new folder
#             instead of spending a call's minutes on --pilot again
#   SEED_TAR  a folder sent back by an earlier session ($OUT/<exp>_search.tar.xz): unpacked
#             into a new folder, so the run starts where that one stopped
#
# Everything the card lacks (ray, optuna, tyro and their dependencies) travels as one carried
# tarball, `.devsite/site.tar.xz` (bench/make_devsite.sh builds it from the wheels: 36 MB, so
# one call carries it with the repo; name `.devsite` in the call's carry). The machine keeps /tmp while warm,
# so later calls skip the unpacking. Sends back: the run log, status.json, plan.json,
# times.json, the report, and once the search is done the folder without checkpoints
# (`<exp>_search.tar.xz`, a few MB) so that the finals can run in a later session.
set -u
EXP=${EXP:-exp2}; T=${T:-540}; STOP=${STOP:-TERM}
OUT=${OUT:-/tmp/card_out}; mkdir -p "$OUT"
ROOT=/tmp/exps; DIR=$ROOT/$EXP
if [ ! -f /tmp/devsite/.unpacked ]; then
  t0=$(date +%s)
  tar -C /tmp -xJf .devsite/site.tar.xz && touch /tmp/devsite/.unpacked || exit 3
  echo "site unpacked in $(( $(date +%s) - t0 )) s"
fi
export PYTHONPATH=$PWD:/tmp/devsite PYTHONUNBUFFERED=1 RAY_ENABLE_UV_RUN_RUNTIME_ENV=0
if [ ! -d "$DIR" ]; then
  mkdir -p "$DIR"
  [ -n "${SEED_TAR:-}" ] && tar -C "$ROOT" -xJf "$SEED_TAR"
  [ -n "${PILOT:-}" ] && [ ! -f "$DIR/pilot.json" ] && cp "$PILOT" "$DIR/pilot.json"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# The search's folder, sent back once: everything but checkpoints and the compile cache.
send_search() {
  tar -C "$ROOT" --exclude='checkpoint_*' --exclude='jax_cache' --exclude='finals*' \
    --exclude='driver.lock' -cJf "$OUT/${EXP}_search.tar.xz" "$EXP" \
    && echo "search folder sent back: $(du -h "$OUT/${EXP}_search.tar.xz" | cut -f1)"
}
SENT=0; [ -f "$DIR/search_best.json" ] && SENT=1
# A started folder resumes from its own copy of the experiment file: the one in search_spaces/
# may have gained fields since (the driver refuses a file that changed under a folder).
SRC=$EXP; [ -f "$DIR/experiment.yaml" ] && SRC=$DIR/experiment.yaml
start=$(date +%s)
timeout -s "$STOP" "$T" python3 -m tuner.run "$SRC" --out "$ROOT" --no-wandb \
  > "$OUT/run.log" 2>&1 &
RUN=$!
while kill -0 "$RUN" 2>/dev/null; do
  sleep 5
  if [ "$SENT" = 0 ] && [ -f "$DIR/search_best.json" ]; then
    echo "search done at $(( $(date +%s) - start )) s of this call"; send_search; SENT=1
  fi
done
wait "$RUN"; rc=$?
echo "driver ended: rc $rc after $(( $(date +%s) - start )) s (SIG$STOP at $T s)"
[ "$SENT" = 0 ] && [ -f "$DIR/search_best.json" ] && send_search
grep -E "plan:|interrupted|resum|Error|error:|finals|search:" "$OUT/run.log" | tail -15
for f in status.json plan.json times.json search_best.json finals.json; do
  [ -f "$DIR/$f" ] && cp "$DIR/$f" "$OUT/"
done
[ -d "$DIR/report" ] && tar -C "$DIR" -cJf "$OUT/report.tar.xz" report
python3 - "$DIR" <<'PY'
import json, sys
s = json.load(open(f"{sys.argv[1]}/status.json"))
print(json.dumps({k: s[k] for k in list(s)[:8] if not isinstance(s[k], (list, dict))}))
for stage, d in (s.get("stages") or {}).items():
    print(stage, json.dumps(d)[:300])
PY
exit 0
