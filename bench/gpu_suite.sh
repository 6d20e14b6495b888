#!/usr/bin/env bash
# The GPU suite: run once on a lent GPU machine (no network; its python3 has torch, triton, nvcc and pytest).
#   bash bench/gpu_suite.sh        # results under $OUT (default ./gpu_out)
# First, on the CPU machine, `make gpu-prebuilt`, and carry the two files it writes (bench/gpu_notes.md, "The
# next lease, step by step"): building here took most of lease 3.
# Steps, each logged to its own file with a one-line verdict in summary.txt:
#   build            checks the prebuilt extension (built from these sources, it imports), or else builds and
#                    installs the extension for this GPU, offline (no build isolation, no index);
#   tests            the tests of the CUDA and Triton paths, live (pytest-xdist workers when it is installed);
#   crash-probe      bench/gpu_crash_probe.py: which raw-op argument errors crash the process, and where;
#   racecheck        compute-sanitizer racecheck over the CUDA C++ tests of the ops that use shared memory;
#   memcheck         compute-sanitizer memcheck over a small subset of the CUDA C++ kernel tests, run beside the
#                    tests (neither is timed), with PyTorch's caching allocator off so an out-of-bounds access
#                    cannot land in a neighbour's block unseen;
#   bench-<op>       the GPU bench of each op (pool_lrn, maxpool, lrn, inception, models), one step each, alone on the GPU, so a
#                    slow or failing op does not cost the others their results (each writes its CSV/JSON after
#                    every case: a bench cut short still leaves data).
#   profile          bench/gpu_profile.py: per slow case (forward+backward of max-pool, pool->LRN and LRN on
#                    both GPU backends), the kernels' device time against the wall time of an iteration --
#                    whether the kernel or the host is the limit; and per target network, its inference's
#                    kernels on our CUDA backend, the reference backend and compiled.
#   host             bench/bench_host.py: the folded blocks' host time per call at batch 1 (Inception, ResNet's
#                    Bottleneck) and googlenet / resnet50 at batch 1, ours against torchvision's.
# For a short lease, STEPS="tests bench-maxpool ..." runs only those steps after the build (the others are
# reported as skipped), TESTS="..." replaces the tests step's pytest selection (e.g. one file and -k). Benches
# run with --quick (first net, one layout, one batch) unless QUICK=0: a full sweep's cases run mode by mode,
# and in a step's 45-90 s the forward+backward rows were never reached. The net and Inception benches compile
# torch.compile's baseline in its default mode here (CLASSICNETS_BENCH_COMPILE_MODE; the benches' own GPU
# default, max-autotune, took longer than the steps have for one case).
# The whole suite stays under SUITE_S seconds (default 440, 7⅓ minutes; with each step's 10 s kill grace it
# ends inside a 540 s call): each step's limit is cut to
# what is left after keeping a minimum for the steps after it. A failed or timed-out step is reported and the
# later steps still run -- except after a failed build: then the tail of its log goes into summary.txt and the
# suite stops at once, non-zero (tests and benches without _C would only measure the fallbacks).
# At exit everything is packed into $OUT/gpu_suite.tar.gz beside summary.txt and tables.txt (the bench tables),
# so a caller that fetches only a few files gets it all. The exit status is non-zero when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
WORK=$OUT/gpu_suite  # packed into $OUT/gpu_suite.tar.gz at exit
mkdir -p "$WORK"
: > "$OUT/summary.txt"
PY=${PYTHON:-python3}
SUITE_S=${SUITE_S:-440}
START=$SECONDS
DEADLINE=$((START + SUITE_S))
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

finish() {
  trap - EXIT TERM INT
  { for op in models pool_lrn maxpool lrn inception; do  # each bench's table: title line to results line
      [ -f "$WORK/bench-$op.log" ] && awk '/ on .*(times|images\/s from the) / {t=1} t {print} /^results: / {t=0; print ""}' \
        "$WORK/bench-$op.log"
    done
    [ -f "$WORK/profile.log" ] && grep -E '^(==|   )' "$WORK/profile.log"
    [ -f "$WORK/host.log" ] && { echo; cat "$WORK/host.log"; }
  } > "$OUT/tables.txt" 2>/dev/null
  cp "$OUT/summary.txt" "$WORK/summary.txt"
  tar czf "$OUT/gpu_suite.tar.gz" -C "$OUT" gpu_suite && rm -rf "$WORK"
}
trap finish EXIT
trap 'echo "gpu_suite: interrupted" >> "$OUT/summary.txt"; exit 130' TERM INT

verdict() {  # verdict NAME RC SECONDS LOG
  printf '%-15s rc=%-3s %4ss  %s\n' "$1" "$2" "$3" "$(tail -n 1 "$4" 2>/dev/null | cut -c1-160)" | tee -a "$OUT/summary.txt"
}

STEPS=${STEPS:-}
QUICK=$([ "${QUICK:-1}" = 0 ] && echo "" || echo --quick)
export CLASSICNETS_BENCH_COMPILE_MODE=${CLASSICNETS_BENCH_COMPILE_MODE:-default}

selected() {  # selected NAME: whether the step runs (the build always does)
  [ -z "$STEPS" ] || [ "$1" = build ] || [[ " $STEPS " == *" $1 "* ]]
}
reserve() {  # reserve NAME: the seconds a later step is sure of. The models and their profile first (issue 8's
  case $1 in  # open targets); the op benches, measured on lease 4, get what is left, 25 s at least each
    tests) echo 60 ;; bench-models) echo 75 ;; profile) echo 55 ;; host) echo 20 ;; *) echo 25 ;;
  esac
}
kept() {  # kept NAME...: the seconds to keep for those later steps, each only if it is selected: a short
  local name sum=0  # lease's STEPS must not starve its steps for skipped ones
  for name in "$@"; do selected "$name" && sum=$((sum + $(reserve "$name"))); done
  echo "$sum"
}
BENCHES="bench-models profile bench-pool_lrn bench-maxpool bench-lrn bench-inception host"
# PLAN=1: run nothing, print each step's limit as if every earlier step ran to its own (the build: 10 s), for
# checking the budget on a CPU machine (tests/test_bench.py). Steps run in the background do not advance it,
# nor does the plan's own time (a loaded machine's seconds in `info` and the like are not the lease's).
PLAN=$([ "${PLAN:-0}" = 0 ] && echo "" || echo 1)
SPENT=0

step() {  # step NAME LIMIT KEEP CMD...: run CMD for at most LIMIT seconds, and never into the KEEP seconds kept
  local name=$1 limit=$2 keep=$3; shift 3  # for the later steps; log to $WORK/NAME.log; one line to summary
  local now=$([ -n "$PLAN" ] && echo "$START" || echo "$SECONDS")
  local left=$((DEADLINE - now - SPENT - keep)) start=$SECONDS log=$WORK/$name.log
  if ! selected "$name"; then
    echo "skipped: not in STEPS" > "$log"
    verdict "$name" skip 0 "$log"
    return 0
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 15 ]; then
    echo "skipped: too little is left of the suite's ${SUITE_S} s" > "$log"
    verdict "$name" skip 0 "$log"
    return 1
  fi
  if [ -n "$PLAN" ]; then
    SPENT=$((SPENT + ($([ "$name" = build ] && echo 10 || echo "$limit"))))
    echo "plan: limit $limit s: $*" > "$log"
    verdict "$name" plan "$limit" "$log"
    return 0
  fi
  timeout -k 10 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  [ "$rc" = 124 ] && echo "TIMED OUT after ${limit} s (the log above is what it wrote)" >> "$log"
  verdict "$name" "$rc" "$((SECONDS - start))" "$log"
  return "$rc"
}

nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1
arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>> "$WORK/nvidia-smi.txt")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}

# Seconds kept for the steps after each one (the KEEP argument): kept() of the selected later steps.
# --use-pep517: an editable install through the backend in pyproject.toml (PEP 660). Without it an older pip
# runs setuptools' deprecated `setup.py develop`, whose nested pip builds with isolation and so tries to
# download setuptools (offline here: the build fails).
# The build keeps nothing for the later steps (KEEP 0): without it they would only measure the fallbacks. It took
# 138 s and 165 s on leases 1-2 and over 229 s on lease 3 (three CPU instruction sets, then the CUDA sources),
# so a short lease carries an extension built on the CPU machine against the GPU machine's torch and Python
# (`make gpu-prebuilt`, carrying classicnets_ext/_C.cpython-312-x86_64-linux-gnu.so and its .sources): when it
# was built from these very sources (the digest in .sources) the build step only checks that it imports, and
# the Triton kernels are found through a link, as the editable install would map them. REBUILD=1 builds anyway.
# A missing or stale prebuilt stops the suite at once, unless REBUILD=1: building here took the whole suite's
# time (every later step was skipped for lack of time), and with this machine's own compiler, which the crash
# probe suspects. Seconds lost instead of the lease.
prebuilt=classicnets_ext/_C$($PY -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
sources=$(bash bench/gpu_sources_digest.sh)
REBUILD=$([ "${REBUILD:-0}" = 0 ] && echo "" || echo 1)
if [ -z "$PLAN$REBUILD" ] && { [ ! -f "$prebuilt" ] || [ "$(cat "$prebuilt.sources" 2>/dev/null)" != "$sources" ]; }; then
  { [ -f "$prebuilt" ] && echo "gpu_suite: $prebuilt was not built from these sources" \
      || echo "gpu_suite: no $prebuilt here (carry it and its .sources)"
    echo "gpu_suite: stopping: run \`make gpu-prebuilt\` on the CPU machine and carry both files, or REBUILD=1 to build here"
  } | tee -a "$OUT/summary.txt"
  exit 1
fi
if [ -n "$REBUILD" ]; then rm -f "$prebuilt"; fi  # else the editable install's import could find it first
if [ -z "$REBUILD" ]; then
  [ -n "$PLAN" ] || [ -e classicnets_ext/triton_kernels ] || ln -s ../triton_kernels classicnets_ext/triton_kernels
  build=($PY -c "import classicnets_ext, classicnets_ext._C as c; print('prebuilt extension:', c.__file__)")
else
  build=($PY -m pip install --no-build-isolation --no-deps --no-index --use-pep517 -v -e .)
fi
if ! step build "${BUILD_S:-420}" 0 "${build[@]}"; then
  { echo "gpu_suite: the build failed; nothing was tested. The end of $(basename "$WORK")/build.log:"
    tail -n 40 "$WORK/build.log"; } >> "$OUT/summary.txt"
  finish
  cat "$OUT/summary.txt"
  exit 1
fi
$PY -m classicnets_ext info > "$WORK/info.txt" 2>&1
cat "$WORK/info.txt"
echo "gpu_suite: benches ${QUICK:-full}; the net and Inception benches' torch.compile in mode" \
  "$CLASSICNETS_BENCH_COMPILE_MODE" >> "$OUT/summary.txt"

workers=()
$PY -c "import xdist" 2>/dev/null && workers=(-n "${TEST_WORKERS:-12}")
# memcheck: the CUDA C++ backend's small-shape tests, ~300 of them: the sweeps over odd shapes, windows and
# paddings, and the edge cases. Not compile, opcheck, gradcheck, network shapes or the dtype x layout grids
# (minutes under the sanitizer, no other kernel code), nor the bad-argument tests: their crash on the H200
# ended both sanitizer runs early on lease 2; the tests step and crash-probe run those. In the background,
# beside the tests; its limit stays under theirs, so waiting for it seldom delays the benches.
# The files of the kernels changed since the last lease first (pool_lrn, maxpool), the emulator's (which only
# skip here) left out.
# (Each file named: given their folder too, pytest collects the folder's files in its own order.)
memfiles=(tests/test_pool_lrn.py tests/test_maxpool.py)
for f in tests/test_*.py; do
  case " ${memfiles[*]} tests/test_cuda_emu.py " in *" $f "*) ;; *) memfiles+=("$f") ;; esac
done
(export PYTORCH_NO_CUDA_MEMORY_CACHING=1
 step memcheck 180 "$(kept $BENCHES)" compute-sanitizer --tool memcheck --error-exitcode 1 \
   $PY -m pytest "${memfiles[@]}" -q -p no:cacheprovider -x -k "cuda and not triton and not compile and not opcheck \
     and not gradcheck and not network and not dtypes_and_layouts and not bad_arguments") &
memcheck=$!
# crash-probe: which raw-op argument errors kill the process there, one process per call, and the C++ stack
# of the first that does (bench/gpu_crash_probe.py; issue 14). CPU-bound, beside the tests.
(step crash-probe 120 "$(kept $BENCHES)" $PY bench/gpu_crash_probe.py --gdb) &
probe=$!
# racecheck: shared-memory hazards, in the kernels that stage data in shared memory (the fused pool->LRN's
# tiles, new since lease 3; LRN's shared-memory paths; Inception's pooled projection GEMM) -- their CUDA C++
# tests, in that order (at lease 3's pace the step gets through a few dozen), beside the others.
(step racecheck 150 "$(kept $BENCHES)" compute-sanitizer --tool racecheck --error-exitcode 1 \
   $PY -m pytest tests/test_pool_lrn.py tests/test_lrn.py tests/test_inception.py -q -p no:cacheprovider -x \
     -k "cuda and not triton \
     and not compile and not opcheck and not gradcheck and not network and not dtypes_and_layouts \
     and not bad_arguments") &
racecheck=$!
# Only the tests of the GPU paths (ids with cuda/triton/gpu): the CPU ones run in CI; the whole suite did not
# fit the step's 200 s on the H200 machine (2026-11-30).
# Each file named, most wanted first (workers take tests roughly in collection order, and a step cut at its limit
# loses the last): lease 4's two undiagnosed failures' files, then the fused kernels changed since lease 3; the
# emulator's left out (it stands in for the GPU on CPU machines: here its 222 cases would only skip).
if [ -n "${TESTS:-}" ]; then eval "selection=($TESTS)"; else  # shell words: quotes group a -k expression
  testfiles=(tests/test_startup.py tests/test_maxpool.py tests/test_pool_lrn.py)
  for f in tests/test_*.py; do
    case " ${testfiles[*]} tests/test_cuda_emu.py " in *" $f "*) ;; *) testfiles+=("$f") ;; esac
  done
  selection=("${testfiles[@]}" -m "not slow" -k "cuda or triton or gpu"); fi
# -v: one line per test as it ends, so a step cut at its limit still names its failures (grep FAILED).
# tests/_watchdog.py: each failure's traceback goes to failures.log as it happens (lease 4's step was cut before
# pytest printed any), and a test still running after 60 s has its stack dumped there and its worker ended,
# so a hung kernel fails its own test instead of the step.
CNX_FAILURE_LOG=$WORK/failures.log CNX_TEST_TIMEOUT=${TEST_TIMEOUT:-60} \
  step tests 180 "$(kept $BENCHES)" $PY -m pytest -v -rfEs -p no:cacheprovider "${selection[@]}" "${workers[@]}"
wait "$memcheck" "$racecheck" "$probe"

# The model zoo: issue 8's GPU targets, googlenet_paper's (never measured on a GPU) and alexnet_paper's inference
# at batch 64 in fp16 (~40 s and ~10 s with their compiles), on our ops against the reference backend, eager
# and compiled. Lease 4 ran alexnet_paper's four quick cases (both dtypes and modes) and was cut in the fourth.
step bench-models 90 "$(kept profile bench-pool_lrn bench-maxpool bench-lrn bench-inception host)" \
  $PY bench/bench_models.py --device cuda --models googlenet_paper,alexnet_paper --modes inference \
  --dtypes float16 --quick --out "$WORK/bench"
# Kernel against host time of the slow rows (gpu_notes item 12: the Triton max-pool backward), then the kernels of
# both target networks' inference on our CUDA backend, the reference one and compiled (where lease 4's
# alexnet_paper lost to compile, 0.88x); ~20 s + ~40 s.
step profile 75 "$(kept bench-pool_lrn bench-maxpool bench-lrn bench-inception host)" $PY bench/gpu_profile.py --cases all
# The op benches, measured on lease 4: again, in what time is left (each writes its CSV after every case).
step bench-pool_lrn 90 "$(kept bench-maxpool bench-lrn bench-inception host)" $PY bench/run.py --device cuda --ops pool_lrn $QUICK --out "$WORK/bench"
step bench-maxpool 90 "$(kept bench-lrn bench-inception host)" $PY bench/run.py --device cuda --ops maxpool $QUICK --out "$WORK/bench"
step bench-lrn 90 "$(kept bench-inception host)" $PY bench/run.py --device cuda --ops lrn $QUICK --out "$WORK/bench"
# Inception: GoogLeNet's 3a block at batch 32 (the first net of the bench, both modes); compiles take most of
# the step. The full sweep (9 blocks x batches 32/1/128 x two layouts) is `bench/run.py --ops
# inception --device cuda`, minutes longer than this suite's budget.
step bench-inception 60 "$(kept host)" $PY bench/run.py --device cuda --ops inception --quick --out "$WORK/bench"
# Host time at batch 1 (the zoo's GPU target includes batch 1, where Python and launches are the cost);
# ~20 s.
step host 45 0 $PY bench/bench_host.py --device cuda --calls 1000 --repeats 3

finish
cat "$OUT/tables.txt" "$OUT/summary.txt"
# Failed: any step's non-zero rc, or a step skipped for lack of time (one left out by STEPS is not a failure).
! grep -qE '^[^ ]+ +rc=[1-9]|too little is left' "$OUT/summary.txt"
