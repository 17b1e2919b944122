"""gpugd: GPU-first fused kernels for training neural networks with plain arrays.

CuPy arrays run CUDA kernels compiled from ``kernels/*.cu``; NumPy arrays run Numba
kernels. ``import gpugd`` never imports CuPy by itself.
"""

from . import monitor, ops, optim, schedules
from .backend import Backend, BackendUnavailableError, array_backend, get_backend
from .flat import FlatParams

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "FlatParams",
    "__version__",
    "array_backend",
    "get_backend",
    "monitor",
    "ops",
    "optim",
    "schedules",
]
