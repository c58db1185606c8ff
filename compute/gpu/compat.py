"""What differs between a real GPU, numba-cuda versions and numba's CUDA simulator.

* NumPy 2.5 removed ``numpy.row_stack``, which numba-cuda still references when it
  compiles its first kernel (measured on the H200 machine: numba 0.68.0, numba-cuda,
  NumPy 2.5); it was ``numpy.vstack`` under another name, so the package's
  ``__init__`` puts the alias back before any of its modules imports ``numba.cuda``.
* NVVM contracts ``a * b + c`` into a fused multiply-add even with ``fastmath=False``;
  the CPU kernels round the product and the sum separately. :func:`mul` and :func:`add`
  are libdevice's ``dmul_rn`` / ``dadd_rn`` on a GPU (PTX ``mul.rn`` / ``add.rn``, which
  are never fused), so a kernel written with them rounds exactly like the CPU kernel.
  Subtraction is written ``add(a, -b)`` (negation is exact). The simulator has no
  libdevice (its ``dmul_rn`` returns None); there the plain operators are used, which on
  Python floats never fuse either.

:data:`SIMULATOR` tells which of the two this process runs: numba reads
``NUMBA_ENABLE_CUDASIM`` once, so it must be set before ``numba.cuda`` is imported.
"""

from __future__ import annotations

from numba import cuda

try:  # numba-cuda reads its own copy of the setting
    from numba.cuda.core import config as cuda_config
except ImportError:  # the CUDA target built into numba (<= 0.68)
    from numba.core import config as cuda_config

SIMULATOR = bool(cuda_config.ENABLE_CUDASIM)
"""True when this process runs kernels in numba's CUDA simulator."""

if SIMULATOR:

    @cuda.jit(device=True)
    def mul(a, b):
        """``a * b`` rounded to nearest (simulator: Python floats)."""
        return a * b

    @cuda.jit(device=True)
    def add(a, b):
        """``a + b`` rounded to nearest (simulator: Python floats)."""
        return a + b

else:
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def mul(a, b):
        """``a * b`` rounded to nearest, never fused into an FMA (libdevice ``dmul_rn``)."""
        return libdevice.dmul_rn(a, b)

    @cuda.jit(device=True)
    def add(a, b):
        """``a + b`` rounded to nearest, never fused into an FMA (libdevice ``dadd_rn``)."""
        return libdevice.dadd_rn(a, b)


def gpu_available() -> bool:
    """Whether kernels can run here: a CUDA GPU with a driver, or the simulator."""
    return bool(cuda.is_available())


def device_name() -> str:
    """The GPU's name, or ``"CUDA simulator"``."""
    if SIMULATOR:
        return "CUDA simulator"
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)
