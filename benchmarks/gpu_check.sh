#!/usr/bin/env bash
# The prepared GPU check: everything a machine with one GPU should run, in under 10 minutes,
# leaving one summary file.
#
#   benchmarks/gpu_check.sh [OUT_DIR]            # real GPU (default mode), sm_90 build
#   GPU_CHECK_MODE=emulator benchmarks/gpu_check.sh /tmp/out   # the same steps on cudaemu
#
# Steps (each with its own timeout, all inside GPU_CHECK_BUDGET seconds, default 570):
#   1 install   pip install the package for sm_90 (CMAKE_ARGS -DCMAKE_CUDA_ARCHITECTURES=90;
#               csrc/cuda/CMakeLists.txt defaults to "80;90" only when it is not given), or,
#               in emulator mode, the cudaemu build. GPU_CHECK_INSTALL=0 uses what is installed.
#   2 device    the device the module sees
#   3 tests     pytest -m gpu (GPU vs CPU bit for bit)
#   4 sanitizer compute-sanitizer memcheck, racecheck, synccheck over the CUDA test files;
#               absent compute-sanitizer: FAIL on a GPU, SKIP (said so) in emulator mode
#   5 bench     benchmarks/bench_cuda.py --strict: kernel time (CUDA events) vs measured copy
#               bandwidth, whole-layer search at length 3 and 10 on GPU and CPU, identical
#               results required. Scale: GPU_CHECK_SCALE (default 1 = reference scale on a GPU,
#               0.0005 with 4 units in emulator mode), GPU_CHECK_UNITS. The generated workload
#               is cached in GPU_CHECK_DATA (default /tmp/compexp-bench; never under OUT_DIR);
#               at scale 1 its generation counts against this step's limit: pre-generate it
#               (python benchmarks/bench_cuda.py --sections none) or lower the scale if it times out.
# Environment: PYTHON (default python3; its environment must hold the test dependencies and
# torch, as .ci/run installs them: the GPU machine may have no network), GPU_CHECK_MODE
# (gpu | emulator), CUDAEMU_DIR (default ../shared/tools/cudaemu).
# The summary is OUT_DIR/gpu_check_summary.md (OUT_DIR: $1, else $OUT, else ./gpu_check_out);
# each step's full log lies beside it. Exit status 0 only if no step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
MODE="${GPU_CHECK_MODE:-gpu}"
OUT_DIR="${1:-${OUT:-$ROOT/gpu_check_out}}"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-570}"
EMU_DIR="${CUDAEMU_DIR:-$(cd .. && pwd)/shared/tools/cudaemu}"
if [ "$MODE" = emulator ]; then
  SCALE="${GPU_CHECK_SCALE:-0.0005}"; UNITS="${GPU_CHECK_UNITS:-4}"
  CONFIGS="${GPU_CHECK_CONFIGS:-3x2,10x2}"; REPEATS=3; COPY_BYTES=$((1 << 24))
  export CUDAEMU_SCHEDULE="${CUDAEMU_SCHEDULE:-forward}"
elif [ "$MODE" = gpu ]; then
  SCALE="${GPU_CHECK_SCALE:-1}"; UNITS="${GPU_CHECK_UNITS:-512}"
  CONFIGS="${GPU_CHECK_CONFIGS:-3x5,10x5}"; REPEATS=50; COPY_BYTES=$((1 << 30))
else
  echo "gpu_check: GPU_CHECK_MODE must be gpu or emulator, got $MODE" >&2; exit 2
fi
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/gpu_check_summary.md"
START=$SECONDS
FAILED=0
{
  echo "# gpu_check $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "mode: $MODE; host $(uname -n), $(nproc) cores; python: $($PY -c 'import sys; print(sys.version.split()[0])' 2>&1)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "scale $SCALE, units $UNITS, configs $CONFIGS, budget ${BUDGET}s"
  echo
  echo "| step | status | seconds | note |"
  echo "|---|---|---:|---|"
} > "$SUMMARY"

# step NAME LIMIT_S NOTE -- command...: runs with a timeout capped by the remaining budget.
step() {
  local name="$1" limit="$2" note="$3"; shift 3; [ "$1" = "--" ] && shift
  local left=$((BUDGET - (SECONDS - START)))
  local log="$OUT_DIR/$name.log" status t0=$SECONDS rc
  if [ "$left" -lt 5 ]; then
    echo "| $name | SKIP | 0 | no time left in the ${BUDGET}s budget |" >> "$SUMMARY"; FAILED=1; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then status=PASS
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="FAIL (timeout ${limit}s)"; FAILED=1
  else status="FAIL (exit $rc)"; FAILED=1; fi
  local tail_line
  tail_line="$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-160 | tr '|' '/')"
  echo "| $name | $status | $((SECONDS - t0)) | $note: ${tail_line} |" >> "$SUMMARY"
  echo "    $status"
}
skip() { echo "| $1 | SKIP | 0 | $2 |" >> "$SUMMARY"; echo "=== $1: SKIP ($2)"; }

# 1 install
if [ "${GPU_CHECK_INSTALL:-1}" = 0 ]; then
  skip install "GPU_CHECK_INSTALL=0: the installed build is used"
elif [ "$MODE" = gpu ]; then
  step install 240 "pip install, sm_90" -- env CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" \
    "$PY" -m pip install -q --no-build-isolation --no-deps --force-reinstall "$ROOT"
else
  step install 420 "pip install on cudaemu" -- env \
    CMAKE_ARGS="-DCOMPEXP_CUDA_EMULATOR=ON -DCOMPEXP_CUDA_EMULATOR_DIR=$EMU_DIR" \
    "$PY" -m pip install -q --no-build-isolation --no-deps --force-reinstall "$ROOT"
fi

# 2 device
step device 60 "device" -- "$PY" -c "
import compexp_core as cx
from compexp_core import _cuda
assert cx.cuda_available(), 'no usable CUDA device'
d = _cuda.device_description(0)
print(d)
assert ('cudaemu' in d) == ('$MODE' == 'emulator'), 'mode and device disagree: ' + d
"

# 3 gpu tests (the package's tests, from the source tree's tests/ against the installed module)
export COMPEXP_REQUIRE_GPU=1
step tests 240 "pytest -m gpu" -- "$PY" -m pytest -m gpu -q -p no:cacheprovider tests

# 4 compute-sanitizer
SAN_TESTS="tests/test_cuda.py tests/test_cuda_units.py"
if command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck synccheck; do
    step "sanitizer-$tool" 80 "compute-sanitizer --tool $tool" -- compute-sanitizer --tool "$tool" \
      --error-exitcode 3 --target-processes all "$PY" -m pytest -m gpu -q -x -p no:cacheprovider $SAN_TESTS \
      -k "not many_concepts and not 29056 and not 29057"
  done
elif [ "$MODE" = emulator ]; then
  skip sanitizer "compute-sanitizer absent (emulator mode: not run; .ci/run runs the ASan+UBSan build instead)"
else
  echo "| sanitizer | FAIL | 0 | compute-sanitizer not on PATH (install the CUDA toolkit's) |" >> "$SUMMARY"
  FAILED=1
fi

# 5 benchmark
step bench 200 "bench_cuda.py --strict" -- "$PY" benchmarks/bench_cuda.py --scale "$SCALE" --units "$UNITS" \
  --configs "$CONFIGS" --repeats "$REPEATS" --cpu-repeats 1 --copy-bytes "$COPY_BYTES" --strict \
  --data-dir "${GPU_CHECK_DATA:-/tmp/compexp-bench}"

{
  echo
  echo "total: $((SECONDS - START)) s; result: $([ $FAILED = 0 ] && echo PASS || echo FAIL)"
  echo
  echo "## bench_cuda output"
  echo '```'
  cat "$OUT_DIR/bench.log" 2>/dev/null | grep -v '^\s*$' | tail -n 40
  echo '```'
} >> "$SUMMARY"
cat "$SUMMARY"
exit $FAILED
