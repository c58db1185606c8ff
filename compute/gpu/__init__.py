"""numba CUDA kernels for monteCarloPi, optionPricing, mandelbrot and nBody RANDOM_CLUSTER.

Each module mirrors one CPU kernel of :mod:`crunchql.compute` argument for argument and
walks the same counter-based random streams (:mod:`crunchql.compute.random`) in the same
blocks, so that

* monteCarloPi inside-counts, mandelbrot escape counts and nBody states are bitwise those
  of the CPU kernels, on a GPU and in numba's CUDA simulator;
* optionPricing's per-block sums add the same per-pair values in the same order, so they
  are bitwise the CPU's in the simulator (same libm) and, on a GPU, differ only through
  libdevice's ``exp``/``log``/``sin``/``cos``, within the bound of
  :mod:`crunchql.compute.gpu.tolerance`.

Importing a kernel module of this package (all but :mod:`.tolerance`) imports
``numba.cuda``: set ``NUMBA_ENABLE_CUDASIM=1`` before that to run the kernels in the
simulator (see :mod:`.compat`). Nothing else in
``crunchql`` imports this package, so the API and CPU workers never load the CUDA target.
"""

import numpy as _np

# Before any module of the package imports numba.cuda (see compat): NumPy 2.5 removed
# numpy.row_stack (an alias of vstack), which numba's typing still registers when numba-cuda
# compiles its first kernel.
if not hasattr(_np, "row_stack"):
    _np.row_stack = _np.vstack
