#!/usr/bin/env bash
# The whole service on one GPU machine: `python -m tuner.run h200` (search_spaces/h200.yaml:
# SPEC model size, 4 cells x 4 trials, 3000 steps, finals 2 seeds, 8192-sequence rollouts),
# with nvidia-smi sampled alongside, then the figures collected into $OUT.
#
#   PILOT=1 bash bench/service_run.sh [service_timeout_s]  # --pilot first, then the run
#   KILL_AFTER=70 bash bench/service_run.sh 300            # SIGKILL the driver after 70 s, then
#                                                          # rerun the same command (resume)
#   EXP_OUT=/tmp/exp2 ...                                  # another experiment folder
#
# Wheels (everything the device lacks, /work/shared/notes/device-gpu.md): more than one call
# carries, so earlier calls leave them in /root/stash (`cp .whl/* /root/stash/`, the machine
# keeps files while warm); the ray wheel comes as ray.part.aa + ray.part.ab (`split`). This
# script installs whatever lies in /root/stash and .whl/ into /tmp/site, once per machine.
set -u
T=${1:-420}
OUT=${OUT:-/tmp/service_out}; mkdir -p "$OUT"
EXP_OUT=${EXP_OUT:-/tmp/exp}
EXP=$EXP_OUT/h200
RAYW=ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
mkdir -p /tmp/whl /root/stash
[ -d .whl ] && cp .whl/* /root/stash/ 2>/dev/null
if [ ! -f /tmp/site/.installed ]; then
  [ -f /root/stash/ray.part.aa ] && [ -f /root/stash/ray.part.ab ] \
    || { echo "ray wheel parts missing in /root/stash: $(ls /root/stash)"; exit 3; }
  cat /root/stash/ray.part.aa /root/stash/ray.part.ab > "/tmp/whl/$RAYW" || exit 3
  t0=$(date +%s.%N)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site /root/stash/*.whl /tmp/whl/*.whl 2>&1 | grep -v WARNING | tail -5
  touch /tmp/site/.installed
  echo "pip install: $(python3 -c "import time;print(round(time.time()-$t0,1))") s"
fi
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 WANDB_MODE=offline
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 2 > "$OUT/smi.csv" &
SMI=$!
start=$(date +%s.%N)
if [ -n "${PILOT:-}" ]; then
  p0=$(date +%s.%N)
  timeout 300 python3 -m tuner.run h200 --pilot --out "$EXP_OUT" 2>&1 | tail -20 | tee "$OUT/pilot.log"
  echo "pilot wall: $(python3 -c "import time;print(round(time.time()-$p0,1))") s" | tee -a "$OUT/pilot.log"
  cp "$EXP/pilot.json" "$OUT/" 2>/dev/null
  start=$(date +%s.%N)
fi
if [ -n "${KILL_AFTER:-}" ]; then
  timeout -s KILL "$KILL_AFTER" python3 -m tuner.run h200 --out "$EXP_OUT" > "$OUT/killed.log" 2>&1
  echo "killed after $KILL_AFTER s (rc $?)"; cp "$EXP/status.json" "$OUT/status_killed.json"
fi
timeout "$T" python3 -m tuner.run h200 --out "$EXP_OUT" 2>&1 | tee "$OUT/run.log"
rc=${PIPESTATUS[0]}
end=$(date +%s.%N)
kill "$SMI"
for f in report/summary.md search_trials.csv finals.json status.json; do
  [ -f "$EXP/$f" ] && cp "$EXP/$f" "$OUT/"
done
python3 - "$EXP" "$start" "$end" "$rc" "$OUT" <<'PY'
import glob, json, os, statistics, sys
exp, start, end, rc, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
tokens_per_step = 64 * 256  # train.batch_size x data.seq_len (x seeds for a final: vmapped)
def mtime(p):
    p = os.path.join(exp, p)
    return round(os.path.getmtime(p) - start, 1) if os.path.exists(p) else None
s = {"rc": rc, "total_s": round(end - start, 1),
     "search_done_at_s": mtime("search_best.json"), "finals_done_at_s": mtime("finals.json"),
     "report_done_at_s": mtime("report/summary.md"), "trials": []}
for stage in ("search", "finals"):
    for f in sorted(glob.glob(os.path.join(exp, stage, "**", "result.json"), recursive=True)):
        rows = [json.loads(l) for l in open(f) if l.strip()]
        if not rows:
            s["trials"].append({"stage": stage, "trial": os.path.basename(os.path.dirname(f)), "reports": 0})
            continue
        a, b = rows[0], rows[-1]
        seeds = len((a.get("config") or {}).get("seeds") or [0]) if stage == "finals" else 1
        d = {"stage": stage, "trial": os.path.basename(os.path.dirname(f)), "reports": len(rows),
             "pid": a.get("pid"), "steps": b.get("step"),
             "wall_s": round(b.get("time_total_s", 0), 1),
             "first_report_s": round(a.get("time_this_iter_s", 0), 1),
             "first_report_step": a.get("step"),
             "started_at_s": round(a.get("timestamp", start) - a.get("time_total_s", 0) - start, 1),
             "metric": b.get("eval/nmse")}
        if len(rows) > 1 and b.get("step") and a.get("step") is not None:
            dt = b["time_total_s"] - a["time_total_s"]
            sps = (b["step"] - a["step"]) / dt if dt > 0 else None
            d["steps_per_s_after_first"] = round(sps, 1) if sps else None
            d["tokens_per_s_M"] = round(sps * tokens_per_step * seeds / 1e6, 3) if sps else None
        s["trials"].append(d)
try:
    lines = open(os.path.join(out, "smi.csv")).read().splitlines()[1:]
    u = [float(l.split(",")[1].split()[0]) for l in lines if "%" in l]
    m = [float(l.split(",")[2].split()[0]) for l in lines if "MiB" in l]
    s["smi"] = {"samples": len(u), "util_mean": round(statistics.mean(u), 1), "util_max": max(u),
                "util_mean_nonzero": round(statistics.mean([x for x in u if x > 0] or [0]), 1),
                "mem_max_MiB": max(m), "mem_mean_MiB": round(statistics.mean(m))}
except Exception as e:  # noqa: BLE001
    s["smi"] = repr(e)
json.dump(s, open(os.path.join(out, "service_summary.json"), "w"), indent=1)
print(json.dumps({k: v for k, v in s.items() if k != "trials"}))
for t in s["trials"]:
    print(json.dumps(t))
PY
