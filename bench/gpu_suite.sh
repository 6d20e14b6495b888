#!/usr/bin/env bash
# The GPU suite: run once on a lent GPU machine (no network; its python3 has torch, triton and nvcc).
#   bash bench/gpu_suite.sh        # logs and results under $OUT (default ./gpu_out)
# 1. builds and installs the extension for this GPU, 2. runs the test suite (CUDA and Triton paths live),
# 3. runs compute-sanitizer memcheck over the CUDA kernel tests, 4. runs the GPU bench.
# Each step has its own time limit so the whole suite stays under 8 minutes; a failed step is reported and
# the next one still runs. The exit status is non-zero when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, print a one-line verdict
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%-10s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$(tail -n 1 "$OUT/$name.log")" | tee -a "$OUT/summary.txt"
  [ "$rc" = 0 ] || status=1
  return "$rc"
}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}

step build 240 $PY -m pip install --no-build-isolation --no-deps -v -e . || { cat "$OUT/summary.txt"; exit 1; }
$PY -m classicnets_ext info | tee "$OUT/info.txt"
step tests 150 $PY -m pytest tests -q -rs -p no:cacheprovider
step memcheck 120 compute-sanitizer --tool memcheck --error-exitcode 1 \
  $PY -m pytest tests -q -p no:cacheprovider -k "cuda and not compile and not opcheck"
step bench 200 $PY bench/run.py --device cuda --out "$OUT/bench"
tail -n 40 "$OUT/bench.log"
cat "$OUT/summary.txt"
exit $status
