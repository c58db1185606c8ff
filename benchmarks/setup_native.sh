#!/usr/bin/env bash
# Install what the native reference benchmarks need (idempotent):
#   * gcc with OpenMP (the C references in benchmarks/c/ are built by benchmarks/kernels.py);
#   * libprimesieve-dev (Debian) and the `primesieve` Python package, built from source
#     against that library, into the project's venv (the primeCount reference).
# Usage: bash benchmarks/setup_native.sh            (uses ./.venv/bin/python)
#        PYTHON=/path/to/python bash benchmarks/setup_native.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

apt_missing=()
command -v gcc >/dev/null 2>&1 || apt_missing+=(gcc)
dpkg -s libprimesieve-dev >/dev/null 2>&1 || apt_missing+=(libprimesieve-dev)
if [ "${#apt_missing[@]}" -gt 0 ]; then
    echo "setup_native: apt-get install ${apt_missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_missing[@]}"
fi

# gcc's OpenMP runtime (libgomp) ships with gcc on Debian; check it links.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
printf '#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n' >"$tmp/omp.c"
gcc -fopenmp "$tmp/omp.c" -o "$tmp/omp" && "$tmp/omp"

if "$PYTHON" -c "import primesieve; assert primesieve.count_primes(100) == 25" 2>/dev/null; then
    echo "setup_native: primesieve (Python) already installed"
else
    echo "setup_native: pip install primesieve (builds against libprimesieve)"
    # Cython and setuptools come from the build-isolation environment; only if that fails
    # (no network for the build deps) fall back to the venv's own tools.
    if ! "$PYTHON" -m pip install --quiet primesieve; then
        "$PYTHON" -m pip install --quiet cython setuptools wheel
        "$PYTHON" -m pip install --quiet --no-build-isolation primesieve
    fi
    "$PYTHON" -c "import primesieve; assert primesieve.count_primes(10**6) == 78498"
fi
echo "setup_native: ok"
