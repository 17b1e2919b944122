"""Backend layer: choose "cpu" (NumPy + Numba) or "cuda" (CuPy), and infer it from arrays.

``get_backend()`` reads ``GPUGD_BACKEND`` (``auto`` | ``cpu`` | ``cuda``, default ``auto``).
``auto`` picks cuda only when CuPy imports *and* a device answers; otherwise cpu.
Nothing here imports CuPy unless the cuda backend is asked for (or ``auto`` probes it), so
``import gpugd`` stays CuPy-free on the CPU backend.

Ops never consult the global choice: they infer the backend from their array arguments
(``array_backend``), and mixing NumPy and CuPy arrays is a ``TypeError`` naming both.
"""

from __future__ import annotations

import functools
import os
import types
from dataclasses import dataclass
from typing import Any

import numpy as np

BACKEND_ENV = "GPUGD_BACKEND"
_CHOICES = ("auto", "cpu", "cuda")

# CUDA runtime error codes that tell *why* a device does not answer.
_CUDA_ERROR_INSUFFICIENT_DRIVER = 35
_CUDA_ERROR_NO_DEVICE = 100


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on this machine; the message says why."""


@dataclass(frozen=True)
class Backend:
    """A compute backend: its name, array namespace and device."""

    name: str  # "cpu" | "cuda"
    xp: types.ModuleType  # numpy | cupy
    device_name: str

    def synchronize(self) -> None:
        """Wait until all work queued on this backend's device has finished."""
        if self.name == "cuda":
            self.xp.cuda.get_current_stream().synchronize()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def _cuda_error_code(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _import_cupy() -> types.ModuleType:
    try:
        import cupy
    except ImportError as exc:  # includes a broken install
        raise BackendUnavailableError(
            "cuda backend unavailable: CuPy is not installed or failed to import "
            f"({exc}); install it with `pip install 'gpugd[cuda12]'` or "
            "`pip install 'gpugd[cuda13]'` to match your CUDA driver"
        ) from exc
    return cupy


def _probe_cuda() -> Backend:
    """Import CuPy and ask the driver for a device; raise with the reason when it fails."""
    cupy = _import_cupy()
    runtime = cupy.cuda.runtime
    try:
        count = runtime.getDeviceCount()
    except Exception as exc:
        code = _cuda_error_code(exc)
        if code == _CUDA_ERROR_INSUFFICIENT_DRIVER:
            raise BackendUnavailableError(
                "cuda backend unavailable: the NVIDIA driver is too old for this CuPy "
                f"build's CUDA runtime ({exc}); update the driver or install the CuPy "
                "wheel for an older CUDA (gpugd[cuda12])"
            ) from exc
        if code == _CUDA_ERROR_NO_DEVICE:
            raise BackendUnavailableError(
                f"cuda backend unavailable: no CUDA device found ({exc})"
            ) from exc
        raise BackendUnavailableError(
            f"cuda backend unavailable: the CUDA driver did not answer ({exc}); "
            "is an NVIDIA driver installed and a GPU visible (CUDA_VISIBLE_DEVICES)?"
        ) from exc
    if count < 1:
        raise BackendUnavailableError("cuda backend unavailable: no CUDA device found")
    try:
        driver, rt = runtime.driverGetVersion(), runtime.runtimeGetVersion()
    except Exception:  # very old CuPy builds: the device answered, go on
        driver = rt = 0
    if driver and rt and driver < rt and driver // 1000 < rt // 1000:
        raise BackendUnavailableError(
            f"cuda backend unavailable: the NVIDIA driver supports CUDA {_ver(driver)} but "
            f"CuPy was built for CUDA {_ver(rt)}; the driver is too old for it"
        )
    dev = cupy.cuda.Device()
    props = runtime.getDeviceProperties(dev.id)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return Backend("cuda", cupy, f"{name} (device {dev.id})")


def _ver(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


@functools.cache
def _backend(name: str) -> Backend:
    if name == "cpu":
        return Backend("cpu", np, _cpu_name())
    if name == "cuda":
        return _probe_cuda()
    # auto
    try:
        return _probe_cuda()
    except BackendUnavailableError:
        return _backend("cpu")


def get_backend(name: str | None = None) -> Backend:
    """Return the backend named by ``name`` or, when None, by ``$GPUGD_BACKEND`` (default auto).

    Raises ``BackendUnavailableError`` (saying why) when cuda is asked for and cannot run,
    and ``ValueError`` for a name that is not one of auto/cpu/cuda.
    """
    source = "name"
    if name is None:
        name = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
        source = BACKEND_ENV
    if name not in _CHOICES:
        raise ValueError(f"{source}={name!r} is not a backend; expected one of {_CHOICES}")
    return _backend(name)


# ---------------------------------------------------------------- inference from arrays


def _library_of(a: Any) -> str | None:
    """'numpy' or 'cupy' for an ndarray, without importing CuPy; None otherwise."""
    if isinstance(a, np.ndarray):
        return "numpy"
    mod = type(a).__module__ or ""
    if mod.split(".", 1)[0] == "cupy" and type(a).__name__ == "ndarray":
        return "cupy"
    return None


def array_backend(**arrays: Any) -> str:
    """Backend name ("cpu"/"cuda") shared by the named arrays.

    ``TypeError`` when an argument is not a NumPy/CuPy ndarray, or when NumPy and CuPy
    arrays are mixed; the message names the arguments on each side.
    """
    seen: dict[str, str] = {}
    for arg, a in arrays.items():
        lib = _library_of(a)
        if lib is None:
            raise TypeError(
                f"{arg}: expected a numpy.ndarray or cupy.ndarray, got {type(a).__module__}."
                f"{type(a).__qualname__}"
            )
        seen.setdefault(lib, arg)
    if len(seen) > 1:
        raise TypeError(
            f"mixed array libraries: {seen['numpy']} is a numpy.ndarray but "
            f"{seen['cupy']} is a cupy.ndarray; move them to one device first"
        )
    if not seen:
        raise TypeError("no array argument given")
    return "cuda" if "cupy" in seen else "cpu"
