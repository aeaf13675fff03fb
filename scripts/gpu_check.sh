#!/usr/bin/env bash
# GPU check of the meta-training speed suite: a few minutes on one NVIDIA GPU (sized for an H200)
# whose Python already has JAX with CUDA. Fetches nothing; writes JSON and a log to OUT_DIR.
#
#   bash scripts/gpu_check.sh [OUT_DIR]      (default: $OUT if set, else ./gpu_check_out)
#
# Runs: the device listing, `smallsample bench --quick` (smoke), then the standard workloads with
# the automatic lowering (XLA convolutions on GPU) and MAML 5w1s with im2col for comparison, each
# under its own timeout so one slow compile cannot eat the budget.
set -uo pipefail
OUT_DIR=${1:-${OUT:-./gpu_check_out}}
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # so device peak memory reflects the step
LOG="$OUT_DIR/gpu_check.log"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  python -c "import jax; print(jax.__version__, jax.devices())"
} 2>&1 | tee "$LOG"
run() {  # run NAME TIMEOUT ARGS...
  local name=$1 t=$2; shift 2
  echo "== $name" | tee -a "$LOG"
  timeout "$t" python -m smallsample.bench "$@" --json "$OUT_DIR/$name.json" 2>&1 | tee -a "$LOG"
  echo "rc=${PIPESTATUS[0]}" | tee -a "$LOG"
}
run quick 120 --quick
run suite 360 --steps 10 --only maml-omniglot-5w1s fomaml-omniglot-5w1s anil-omniglot-5w1s \
  maml-omniglot-5w5s maml-omniglot-20w1s protonet-omniglot-5w5s-b32 maml-mini-5w5s \
  protonet-mini-5w5s
run maml-im2col 120 --steps 10 --conv-impl im2col --only maml-omniglot-5w1s
run resnet12 120 --steps 5 --only protonet-mini-5w5s-resnet12
echo "done; JSON in $OUT_DIR" | tee -a "$LOG"
