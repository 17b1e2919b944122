#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with an NVIDIA GPU and CuPy, torch,
# pytest and numba already installed (no package index needed):
#
#   bash benchmarks/run_gpu.sh            # from the repository root
#
# 1. prints `gpugd info` (device, CUDA runtime/driver, NVRTC);
# 2. runs the whole test suite with the CUDA backend available; `-m cuda` tests must run,
#    not skip (a skip here means the device did not answer: the script fails);
# 3. runs `gpugd train --backend cuda` (the default job and the vanishing preset);
# 4. runs `gpugd bench --backend cuda` (ceilings: device-to-device copy) and writes
#    benchmarks/results/gpu-<date>.json, then the CPU bench of the same machine beside it.
# Results land in $OUT too when the variable is set (the device tool copies it back).
# With little device time: SUITES="amp optim" limits step 4 to those suites (one JSON each),
# QUICK=1 adds --quick, FULL_SUITE=0 skips the whole-suite rerun and the train jobs.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
dest=benchmarks/results
mkdir -p "$dest"
status=0

echo "== gpugd info"
python3 -m gpugd.cli info || status=1

echo "== GPU tests (must run, not skip)"
python3 -m pytest -q -m cuda -rs -p no:cacheprovider tests 2>&1 | tee "$dest/gpu-tests-$stamp.txt"
rc=${PIPESTATUS[0]}
if grep -q "no CUDA device" "$dest/gpu-tests-$stamp.txt"; then
  echo "FAIL: cuda tests were skipped: the device did not answer"; rc=1
fi
[ "$rc" -eq 0 ] || status=1

if [ "${FULL_SUITE:-1}" != 0 ]; then
  echo "== whole test suite"
  python3 -m pytest -q -x -p no:cacheprovider tests -m "not slow" || status=1

  echo "== gpugd train on the GPU (default job and the vanishing preset)"
  python3 -m gpugd.cli train --backend cuda --run-dir "$dest/gpu-train-$stamp" --no-plots \
    | tee "$dest/gpu-train-$stamp.txt" || status=1
  python3 -m gpugd.cli train --backend cuda --preset vanishing \
    --run-dir "$dest/gpu-vanishing-$stamp" | tee -a "$dest/gpu-train-$stamp.txt" || status=1
fi

echo "== GPU benchmarks"
quick=()
[ "${QUICK:-0}" != 0 ] && quick=(--quick)
for suite in ${SUITES:-all}; do
  tag=$([ "$suite" = all ] && echo "" || echo "-$suite")
  GPUGD_BACKEND=cuda python3 -m gpugd.cli bench --backend cuda --suite "$suite" "${quick[@]}" \
    --json "$dest/gpu$tag-$stamp.json" | tee "$dest/gpu$tag-$stamp.txt" || status=1
done
echo "== CPU benchmarks of the same machine"
python3 -m gpugd.cli bench --backend cpu --quick --json "$dest/gpu-host-cpu-$stamp.json" \
  | tee "$dest/gpu-host-cpu-$stamp.txt" || status=1

if [ -n "${OUT:-}" ]; then cp "$dest"/*"$stamp"* "$OUT"/ 2>/dev/null; fi
echo "== done (status $status)"
exit $status
