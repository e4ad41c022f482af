#!/usr/bin/env bash
# The paper protocol on a lent GPU (the device tool), as one prepared, time-boxed script.
#
# make paper needs the pipeline's stages, MLflow and the dataset on disk; a lent machine has
# none of them. This script stages what it needs, then runs scripts/paper.py one cell at a
# time (a GPU gains nothing from sharing: docs/history/notebook.md section 4), in the order of CELLS,
# so that whatever finishes before the time is up is kept:
#   1. download + zca of cifar10-jpeg from the carried archive (a params copy in a temp dir:
#      the archive's path, MLflow off, 8 decode workers; nothing else changes);
#   2. each cell of CELLS (method:ipc) under PROTOCOL (default spec-short: 2000 iterations),
#      while the time left is over MIN_CELL seconds; a cell that runs out is killed, the next
#      is not started. If the first distillation fails within 150 s, the rest run without
#      bf16, channels_last and batched evaluation (the plain paths);
#   3. the table of every finished cell (scripts/paper.py --report-only).
# What comes back in $OUT: log.txt, table.md, paper.tgz (cell JSONs and logs).
#
# Prepare in the checkout (machine with internet), then call the device tool with
# carry [".dev"], timeout_s about TOTAL + 40, and the command `bash scripts/gpu_paper.sh`:
#   echo /.dev/ >> .git/info/exclude; mkdir -p .dev/whl
#   cp ../shared/datasets/cifar10-jpeg/cifar10.tar.xz .dev/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .dev/whl kornia==0.9.0 kornia-rs==0.2.0 \
#       jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
# Measured on one H100 (2026-11-27): data 55 s; an IPC 10 distillation cell ~135 s alone.
# CPU dry run of the same path (minutes):
#   DEVICE=cpu SET="distill.iterations=4 distill.validate_every=2 evaluate.epochs=2 validation.epochs=2" \
#       CELLS="atom:10 random:10" OUT=/tmp/gp bash scripts/gpu_paper.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/paper/gpu-out}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
TOTAL=${TOTAL:-540}             # seconds for everything below
MIN_CELL=${MIN_CELL:-60}        # a cell is started only with this much time left
DATA_LIMIT=${DATA_LIMIT:-150}   # seconds for each of download and zca
PROTOCOL=${PROTOCOL:-spec-short}
CELLS=${CELLS:-"atom:10 datadam:10 dm:10 random:10 selected:10 atom:1 datadam:1 dm:1 random:1 selected:1"}
SET=${SET:-}                    # extra recipe overrides, KEY=VALUE separated by spaces
ARCHIVE=${ARCHIVE:-.dev/cifar10.tar.xz}
RES=${RES:-results/paper/cifar10-jpeg-$PROTOCOL-gpu}
EXTRA=()
for kv in $SET; do EXTRA+=(--set "$kv"); done
start=$(date +%s)
left() { echo $(( TOTAL - ($(date +%s) - start) )); }
mkdir -p "$OUT" "$RES"
exec > >(tee "$OUT/log.txt") 2>&1

if compgen -G ".dev/whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/atom-site .dev/whl/*.whl \
        && export PYTHONPATH="/tmp/atom-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

P=$(mktemp -d)/params.yaml
"$PY" - "$ARCHIVE" "$P" <<'PYEOF' || exit 1
import sys, os, yaml
src, dest = sys.argv[1:]
p = yaml.safe_load(open("params.yaml"))
o = p["datasets"]["cifar10-jpeg"]["options"]
o["source"], o["workers"] = os.path.abspath(src), 8
p["mlflow"]["enabled"] = False
yaml.safe_dump(p, open(dest, "w"), sort_keys=False)
PYEOF
echo "== data ($(left) s left)"
timeout "$DATA_LIMIT" "$PY" -m stages.download --params "$P" --dataset cifar10-jpeg || exit 1
timeout "$DATA_LIMIT" "$PY" -m stages.zca --params "$P" --dataset cifar10-jpeg || exit 1

first=1
for cell in $CELLS; do
    kind=${cell%%:*} ipc=${cell##*:}
    if [ "$(left)" -lt "$MIN_CELL" ]; then echo "== $kind IPC $ipc not started: $(left) s left"; continue; fi
    case $kind in atom|datadam|dm) sel=(--methods "$kind" --baselines);; *) sel=(--methods --baselines "$kind");; esac
    echo "== $kind IPC $ipc ($(left) s left)"
    t=$(date +%s)
    timeout --kill-after=10 $(( $(left) - 15 )) "$PY" scripts/paper.py --params "$P" --dataset cifar10-jpeg \
        --protocol "$PROTOCOL" --device "$DEVICE" --ipcs "$ipc" "${sel[@]}" --out "$RES" "${EXTRA[@]}" \
        | grep -v "seed [0-9]*: accuracy\|iteration [0-9]*/"
    rc=${PIPESTATUS[0]}
    echo "(exit $rc, $(( $(date +%s) - t )) s)"
    if [ -n "$first" ] && [ "${sel[1]}" = "$kind" ]; then
        first=
        if [ "$rc" -ne 0 ] && [ $(( $(date +%s) - t )) -lt 150 ]; then
            echo "== the first distillation failed at once: the rest run without bf16, channels_last, batched evaluation"
            EXTRA+=(--set distill.bf16=false --set distill.channels_last=false --set evaluate.batched=false)
        fi
    fi
done
ipcs=$(for cell in $CELLS; do echo "${cell##*:}"; done | awk '!seen[$0]++' | tr '\n' ' ')
"$PY" scripts/paper.py --params "$P" --dataset cifar10-jpeg --protocol "$PROTOCOL" --device "$DEVICE" --ipcs $ipcs \
    --out "$RES" --report-only > /dev/null
cp "$RES/table.md" "$OUT/table.md"
tar czf "$OUT/paper.tgz" "$RES"
cat "$OUT/table.md"
echo "done in $(( $(date +%s) - start )) s"
