#!/usr/bin/env bash
# The GPU check, run once on a machine with an NVIDIA GPU (the device tool's H200), from
# the repository root:
#
#   bash benchmarks/gpu_device_check.sh
#
# That machine has its own Python (3.12) with numba, numba-cuda, NumPy, Pillow and pytest,
# and no network: the project's venv cannot travel. So this script
#   1. records the machine (nvidia-smi, versions)                       -> $OUT/env.txt
#   2. installs from wheels carried in .whl/ only the distributions that are missing
#      (into /tmp/crunchql-site, never over the machine's own packages),
#   3. imports `crunchql` from this checkout (PYTHONPATH), not from an install,
#   4. runs tests/compute/test_gpu_kernels.py on the GPU (CRUNCHQL_GPU_TESTS=device: no
#      silent fallback to the simulator)                                -> $OUT/pytest.log
#   5. runs python -m benchmarks.gpu                                    -> $OUT/benchmark.md
# and prints a summary (also $OUT/summary.txt). Budget: ~6 minutes at most (each step has
# its own timeout); typically 3-4. Without $OUT (another machine) logs go to .gpu-check/.
#
# pytest runs with a minimal ini of its own (-c) and --confcutdir: the project's
# pyproject settings need pytest-asyncio and tests/conftest.py needs the service's
# dependencies (SQLAlchemy, Strawberry, ...), none of which a GPU kernel test uses.

set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/.gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
SITE=/tmp/crunchql-site
export PYTHONUNBUFFERED=1
export NUMBA_CACHE_DIR=/tmp/crunchql-numba-cache  # CPU kernels compiled once for both steps
export NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0  # small grids are deliberate in the tests
unset NUMBA_ENABLE_CUDASIM
status=0

say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

# ---- 1. the machine ----------------------------------------------------------------------
{
    nvidia-smi || echo "nvidia-smi failed"
    echo
    "$PY" -VV
    "$PY" -m pip list 2>/dev/null | grep -i -E '^(numba|numba-cuda|numpy|llvmlite|pillow|pytest|cuda-|nvidia-)'
} >"$OUT/env.txt" 2>&1
say "python: $("$PY" -V 2>&1), $(nproc) cores"

# ---- 2. missing distributions from .whl/ -------------------------------------------------
# What the kernels, their tests and the benchmark import (pytest's own needs included).
REQUIRED=(numpy numba numba-cuda pillow pytest pluggy iniconfig)
wheels=()
for dist in "${REQUIRED[@]}"; do
    if "$PY" -m pip show "$dist" >/dev/null 2>&1; then
        continue
    fi
    # wheel file names spell the distribution with underscores
    wheel=$(ls .whl/"${dist//-/_}"-*.whl 2>/dev/null | head -n 1)
    if [ -z "$wheel" ]; then
        say "MISSING: $dist is not installed and .whl/ has no wheel for it"
        status=1
    else
        say "installing $dist from $wheel"
        wheels+=("$wheel")
    fi
done
if [ "${#wheels[@]}" -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${wheels[@]}" || { say "wheel install failed"; status=1; }
    export PYTHONPATH="$SITE"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import numba, numpy
from numba import cuda
print(f"numba {numba.__version__}, NumPy {numpy.__version__}, CUDA target {cuda.__file__}")
print(f"cuda.is_available(): {cuda.is_available()}")
import crunchql.compute.gpu.compat as compat
device = compat.device_name() if cuda.is_available() else "NONE"
print(f"crunchql from {compat.__file__}; device: {device}")
EOF

# ---- 3. the kernel tests on the GPU --------------------------------------------------------
cat >/tmp/crunchql-gpu-pytest.ini <<'EOF'
[pytest]
addopts = -ra
EOF
say "pytest tests/compute/test_gpu_kernels.py (device mode)"
CRUNCHQL_GPU_TESTS=device timeout 150 "$PY" -m pytest -c /tmp/crunchql-gpu-pytest.ini \
    --rootdir=. --confcutdir=tests/compute -p no:cacheprovider -v -s \
    tests/compute/test_gpu_kernels.py 2>&1 | tee "$OUT/pytest.log"
rc=$?
say "pytest exit status: $rc"
[ "$rc" -eq 0 ] || status=1

# ---- 4. the benchmark --------------------------------------------------------------------
say "python -m benchmarks.gpu"
timeout 210 "$PY" -m benchmarks.gpu 2>&1 | tee "$OUT/benchmark.md"
rc=$?
say "benchmark exit status: $rc"
[ "$rc" -eq 0 ] || status=1

say "done, overall status $status (logs: env.txt pytest.log benchmark.md summary.txt)"
exit "$status"
