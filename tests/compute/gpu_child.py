"""The process in which tests/compute/test_gpu_kernels.py runs the CUDA kernels.

``numba.cuda`` chooses between the CUDA simulator and a real GPU once, at import, from
``NUMBA_ENABLE_CUDASIM``. The tests therefore never import it themselves: they start one
``spawn`` worker process whose initializer (:func:`init`) sets the mode before anything
imports ``numba.cuda``, and call the kernels there through :func:`call`. The rest of the
test session, and the CPU kernels the results are compared with, never see the simulator.
This module imports nothing at module level, so unpickling :func:`init` imports no numba.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import Any


def init(mode: str) -> None:
    """Select ``"simulator"`` or ``"device"`` (a real GPU) for this process."""
    if "numba.cuda" in sys.modules:
        raise RuntimeError("numba.cuda was imported before the mode was chosen")
    if mode == "simulator":
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        # The simulator runs the uint64 hash on NumPy scalars: they wrap modulo 2**64, as
        # the kernels intend, but warn about it.
        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
    else:
        os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    if "numba" in sys.modules:  # numba read its settings at import: read them again
        from numba.core import config

        config.reload_config()


def info() -> dict[str, Any]:
    """What this process runs on (asserted by the tests before they trust a result)."""
    import numba
    from numba import cuda

    from crunchql.compute.gpu import compat

    return {
        "simulator": compat.SIMULATOR,
        "available": compat.gpu_available(),
        "device": compat.device_name() if compat.gpu_available() else None,
        "numba": numba.__version__,
        "cuda_target": getattr(cuda, "implementation", "?"),
    }


def call(module: str, function: str, *args: Any, **kwargs: Any) -> Any:
    """``crunchql.compute.gpu.<module>.<function>(*args, **kwargs)``."""
    mod = importlib.import_module(f"crunchql.compute.gpu.{module}")
    return getattr(mod, function)(*args, **kwargs)
