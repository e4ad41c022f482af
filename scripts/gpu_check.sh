#!/usr/bin/env bash
# Every stage of the pipeline on a lent GPU with tiny settings (issue 39, step 1), as one
# prepared, time-boxed script; then, with the time left, the paper's cells (scripts/gpu_paper.sh).
#
# The lent machine has torch, numpy, scipy, scikit-learn, tqdm, matplotlib and pyyaml, but no
# kornia, jsonschema, Snakemake, DVC or MLflow: the carried wheels supply the first two, and the
# jobs run one after the other from the pipeline's declaration (scripts/run_jobs.py), MLflow off.
# The tiny run: digits, ATOM at IPC 1 inside a 2-member pool with calibration (ATOM+), compile
# and bf16 forced on (a setting the device cannot run falls back to eager float32 with a warning,
# which the log shows), batched evaluation, crossarch, both NAS shards, visualize, export, report.
# What comes back in $OUT: check.txt (the log), jobs.json (each job's exit code and seconds),
# summary.md, distill.log, and what gpu_paper.sh adds.
#
# Prepare in the checkout (see scripts/gpu_paper.sh for the wheels and the archive), then call the
# device tool with carry [".dev"] and `bash scripts/gpu_check.sh`. CPU dry run (about 2 minutes):
#   DEVICE=cpu FORCE=false PAPER=0 OUT=/tmp/gc bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu-check}
DEVICE=${DEVICE:-cuda}
FORCE=${FORCE:-true}           # compile and bf16 forced on in the tiny run (false: the device's auto)
PAPER=${PAPER:-1}              # then the paper's cells with the time left (0: no)
PY=${PYTHON:-python3}
CHECK_LIMIT=${CHECK_LIMIT:-240}
mkdir -p "$OUT"
exec > >(tee "$OUT/check.txt") 2>&1
start=$(date +%s)

if compgen -G ".dev/whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/atom-site .dev/whl/*.whl \
        && export PYTHONPATH="/tmp/atom-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

WORK=$(mktemp -d)
"$PY" - "$WORK" "$DEVICE" "$FORCE" <<'PYEOF' || exit 1
import sys, yaml
from pathlib import Path
work, device, force = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "true"
sys.path.insert(0, "tests")
from pipeline_support import tiny_params
p = tiny_params({
    "paths": {k: str(work / k) for k in ("raw", "prepared", "results", "logs", "state")},
    "runtime": {"device": device},
    "mlflow": {"enabled": False},
    "experiment": {"baselines": ["random", "selected", "full"]},
    "pool": {"models": 2, "epochs": 1},
    "distill": {"encoder": "pool", "calibration": 1.0, "iterations": 20, "checkpoint_every": 10,
                **({"compile": True, "bf16": True} if force else {})},
    "evaluate": {"batched": True},
})
(work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
print("tiny params:", work / "params.yaml")
PYEOF
timeout "$CHECK_LIMIT" "$PY" scripts/run_jobs.py --params "$WORK/params.yaml" --out "$OUT/jobs.json"
code=$?
cp "$WORK"/results/report/summary.md "$OUT/" 2>/dev/null
cp "$WORK"/logs/distill/*.log "$OUT/distill.log" 2>/dev/null
grep -h "speed settings\|failed on\|continuing without" "$WORK"/logs/distill/*.log 2>/dev/null
echo "gpu_check: every stage: exit $code in $(( $(date +%s) - start )) s"
if [ "$PAPER" = 1 ] && [ "$code" = 0 ]; then
    TOTAL=${TOTAL:-$(( 540 - ($(date +%s) - start) ))} OUT="$OUT" bash scripts/gpu_paper.sh
fi
exit $code
