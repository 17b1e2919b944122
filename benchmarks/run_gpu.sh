#!/usr/bin/env bash
# The whole GPU check in one command, sized for a lent H200 (15 minutes of device time in
# all, its start included): by default it ends within BUDGET_S=450 seconds. For a machine
# with an NVIDIA GPU and CuPy, numba, numpy, pytest (torch optional) already installed, no
# package index needed:
#
#   bash benchmarks/run_gpu.sh            # from the repository root
#
# 1. `gpugd info` (device, CUDA runtime/driver, NVRTC);
# 2. every `cuda` test on the real device (they must run, not skip: a skip here means the
#    device did not answer and the script fails), at most TESTS_S=240 seconds;
# 3. `gpugd train --backend cuda` (the default job, short);
# 4. `gpugd bench --backend cuda --quick`, one suite at a time in the order that matters
#    most (optim amp vector clip act bn train parallel), each cut off at what is left of the
#    budget; every row prints its launches, the H200 prediction
#    (benchmarks/predicted-h200.md's model) and measured / predicted. One JSON per suite,
#    written row by row (benchmarks/gpu_suite.py): a suite cut off keeps its finished rows.
# A step with no time left is skipped and says so (`timeout 0` would not limit it).
# Results go to benchmarks/results/ and, when $OUT is set, to $OUT (the device tool copies
# it back). Options: SUITES="optim amp" (which suites), QUICK=0 (full repeats and dtypes),
# FULL_SUITE=1 (the whole test suite too), CPU_BENCH=1 (the host's CPU bench too),
# BUDGET_S, TESTS_S, RESULTS_DIR (instead of benchmarks/results).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
budget=${BUDGET_S:-450}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
dest=${RESULTS_DIR:-benchmarks/results}
mkdir -p "$dest"
status=0
left() { echo $((budget - ($(date +%s) - start))); }
# copies this run's files and folders (the train run directory too) to $OUT
save() { if [ -n "${OUT:-}" ]; then cp -r "$dest"/*"$stamp"* "$OUT"/ 2>/dev/null; fi; }
# within NAME SECONDS CMD...: run CMD under `timeout SECONDS` (capped at what is left of the
# budget; `timeout 0` would mean no limit, so with nothing left the step is skipped, said so)
within() {
  local name=$1 t=$2 l
  shift 2
  l=$(left)
  [ "$l" -lt "$t" ] && t=$l
  if [ "$t" -le 0 ]; then echo "-- $name: skipped, the budget is spent"; return 125; fi
  timeout -k 10 "$t" "$@"
}

echo "== gpugd info"
python3 -m gpugd.cli info | tee "$dest/gpu-info-$stamp.txt" || status=1

echo "== GPU tests (must run, not skip; at most ${TESTS_S:-240} s)"
GPUGD_EMULATE=0 within "cuda tests" "${TESTS_S:-240}" python3 -m pytest -q -m cuda -rs -p no:cacheprovider tests 2>&1 \
  | tee "$dest/gpu-tests-$stamp.txt"
rc=${PIPESTATUS[0]}
echo
if grep -q "no CUDA device" "$dest/gpu-tests-$stamp.txt"; then
  echo "FAIL: cuda tests were skipped: the device did not answer"; rc=1
fi
[ "$rc" -eq 124 ] && echo "FAIL: the cuda tests ran past their limit (TESTS_S=${TESTS_S:-240} s or the budget)"
[ "$rc" -eq 0 ] || status=1
save

if [ "${FULL_SUITE:-0}" != 0 ]; then
  echo "== whole test suite"
  within "whole test suite" "$(left)" python3 -m pytest -q -x -p no:cacheprovider tests \
    -m "not slow" | tee "$dest/gpu-suite-$stamp.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if [ "$(left)" -gt 60 ]; then
  echo "== gpugd train on the GPU (default job)"
  within train 60 python3 -m gpugd.cli train --backend cuda --run-dir "$dest/gpu-train-$stamp" \
    --no-plots | tee "$dest/gpu-train-$stamp.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
save

echo "== GPU benchmarks (measured against predicted)"
quick=(--quick)
[ "${QUICK:-1}" = 0 ] && quick=()
for suite in ${SUITES:-optim amp vector clip act bn train parallel}; do
  t=$(left)
  if [ "$t" -lt 20 ]; then echo "-- $suite: skipped, the budget is spent"; continue; fi
  echo "-- $suite (at most $t s)"
  # benchmarks.gpu_suite: `gpugd bench --suite`, each row written to the JSON as it is made
  GPUGD_BACKEND=cuda within "$suite" "$t" python3 -m benchmarks.gpu_suite "$suite" \
    "$dest/gpu-$suite-$stamp.json" "${quick[@]}" | tee "$dest/gpu-$suite-$stamp.txt"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo "-- $suite: cut off at the budget (rows so far kept)"
  [ "$rc" -eq 0 ] || status=1
  save
done

if [ "${CPU_BENCH:-0}" != 0 ] && [ "$(left)" -gt 60 ]; then
  echo "== CPU benchmarks of the same machine"
  within "CPU bench" "$(left)" python3 -m gpugd.cli bench --backend cpu --quick \
    --json "$dest/gpu-host-cpu-$stamp.json" | tee "$dest/gpu-host-cpu-$stamp.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

save
echo "== done in $(($(date +%s) - start)) s (status $status)"
exit $status
