"""``cpu(name)``: the Numba kernel module ``gpugd._cpu.<name>``, imported on first use and
kept. ``import gpugd`` must not load Numba, so the ops reach their CPU kernels through this
instead of module-level imports; a function-level ``from .._cpu import x`` would instead run
the import machinery (importlib's ``_handle_fromlist``, in Python) on every call, which
costs microseconds a step and tens of them once the step's data has evicted it from the
caches."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType


@functools.cache
def cpu(name: str) -> ModuleType:
    """``gpugd._cpu.<name>``."""
    return importlib.import_module(f"gpugd._cpu.{name}")
