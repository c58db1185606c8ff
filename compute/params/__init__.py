"""Validated parameters of every kind: one frozen dataclass per kind, plain Python.

Nothing here imports NumPy or numba, so the API process validates a submission without
loading any kernel (the kernels live in ``compute/<kind>.py`` and import these classes).
"""
