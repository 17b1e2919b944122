"""gpugd: GPU-first fused kernels for training neural networks with plain arrays.

CuPy arrays run CUDA kernels compiled from ``kernels/*.cu``; NumPy arrays run Numba
kernels. ``import gpugd`` never imports CuPy by itself.
"""

import os as _os

# Numba's parallel kernels run on libgomp, whose threads spin after every parallel region
# (OMP_WAIT_POLICY=ACTIVE behaviour) and then starve the BLAS threads of the next matmul: a
# training step alternates the two, and a 784-512-512-10 forward took 18 ms spinning against
# 1.8 ms passive on 2 cores. Passive unless the user chose; it must be set before libgomp
# loads (Numba loads it at the first parallel kernel).
ORIGINAL_OMP_WAIT_POLICY = _os.environ.get("OMP_WAIT_POLICY")
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import amp, graph, monitor, ops, optim, schedules  # noqa: E402 (after the environment)
from .backend import Backend, BackendUnavailableError, array_backend, get_backend  # noqa: E402
from .flat import FlatParams  # noqa: E402

__version__ = "0.1.0"

# Imported on first use (``gpugd.nn``, ``gpugd.parallel``, ...): they pull in more than the
# kernels (mpi4py for parallel), and ``import gpugd`` stays light and CuPy-free.
_LAZY = ("data", "kernel_report", "nn", "parallel", "train", "vanishing")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'gpugd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "Backend",
    "BackendUnavailableError",
    "FlatParams",
    "__version__",
    "amp",
    "array_backend",
    "get_backend",
    "graph",
    "monitor",
    "nn",
    "ops",
    "optim",
    "parallel",
    "schedules",
]
