#!/usr/bin/env bash
# The GPU speed check of issue 10, as one prepared script: at most ~7.5 minutes on one H100.
#
# It installs what the device machine lacks from carried wheels (if .dev/whl/*.whl exist),
# then, each part under its own time limit (a part that runs out is reported, the rest go on):
#   1. bench_distill: one iteration, the parent-structured reference vs the project's default
#      (auto) settings and the fixed variants, CIFAR-10 IPC 1/10/50, side by side (Markdown);
#      it also prints the parent code's own H100 figures next to the reference's;
#   2. bench_run: atom.distill() end to end at IPC 10 with the default settings (8000-iteration
#      time at the measured rate);
#   3. bench_evaluate: 5 seeds batched vs 1 seed vs 5 sequential;
#   4. bench_pool: ATOM+'s cost, the pool stage's training rate (spec-pool's 20 x 60 at that
#      rate) and one iteration with random encoders vs pool vs pool + calibration.
# Results land in $OUT (default benchmarks/out): distill.md/.json, run.md/.json, evaluate.md,
# pool.md/.json, and gpu.md (all of them, with the device named).
#
# Prepare (on the machine with internet), then run on the device from the repository root:
#   echo /.dev/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .dev/whl kornia==0.9.0 kornia-rs safetensors==0.8.0
#   bash benchmarks/gpu.sh                      # carry .dev; OUT=$OUT on the device tool
# CPU smoke run of the same script (tests/test_benchmarks.py): DEVICE=cpu QUICK=1 bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python}
QUICK=${QUICK:-}
mkdir -p "$OUT"
start=$(date +%s)

if compgen -G ".dev/whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/atom-site .dev/whl/*.whl \
        && export PYTHONPATH="/tmp/atom-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"

part() {  # part NAME LIMIT_S CMD...: run CMD under a time limit, tee to $OUT/NAME.md
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" > >(tee "$OUT/$name.md") 2> "$OUT/$name.err"
    local rc=$?
    [ $rc -eq 0 ] || echo "**$name: exit code $rc$([ $rc -eq 124 ] && echo ', ran out of time')** (see $name.err)" | tee -a "$OUT/$name.md"
}

if [ -n "$QUICK" ]; then
    part distill 120 "$PY" benchmarks/bench_distill.py --device "$DEVICE" --quick --json "$OUT/distill.json"
    part run 60 "$PY" benchmarks/bench_run.py --device "$DEVICE" --quick --json "$OUT/run.json"
    part evaluate 60 "$PY" benchmarks/bench_evaluate.py --device "$DEVICE" --quick
    part pool 60 "$PY" benchmarks/bench_pool.py --device "$DEVICE" --quick --json "$OUT/pool.json"
else
    part distill 200 "$PY" benchmarks/bench_distill.py --device "$DEVICE" --threads 0 --iters 10 --no-compile \
        --only cifar10-ipc1 cifar10-ipc10 cifar10-ipc50 --json "$OUT/distill.json"
    part run 100 "$PY" benchmarks/bench_run.py --device "$DEVICE" --ipc 10 --warmup 100 --iterations 2000 \
        --json "$OUT/run.json"
    part evaluate 60 "$PY" benchmarks/bench_evaluate.py --device "$DEVICE" --ipc 10 --seeds 5 --epochs 100
    part pool 90 "$PY" benchmarks/bench_pool.py --device "$DEVICE" --threads 0 --iters 10 --train-images 20480 \
        --json "$OUT/pool.json"
fi

{
    echo "# GPU speed check ($(date -u +%F), $(( $(date +%s) - start )) s)"
    echo
    "$PY" - "$DEVICE" <<'EOF'
import sys, torch
dev = sys.argv[1]
name = torch.cuda.get_device_name() if dev.startswith("cuda") and torch.cuda.is_available() else "CPU"
print(f"Device: {name}; torch {torch.__version__}; CUDA {torch.version.cuda}")
EOF
    for name in distill run evaluate pool; do
        echo; echo "## $name"; echo; cat "$OUT/$name.md" 2>/dev/null
    done
} > "$OUT/gpu.md"
echo "wrote $OUT/gpu.md"
