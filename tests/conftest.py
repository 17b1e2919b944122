"""Shared fixtures: the backends to run on, the tolerance table, a mismatch-printing assert.

Tests that need a GPU carry the ``cuda`` marker. Where real CuPy imports and a device
answers they run on it; otherwise they run on the CUDA emulator (``tests/cudaemu``: the
kernels compiled for the CPU behind a NumPy-backed CuPy stand-in installed as ``cupy``).
``GPUGD_EMULATE=1`` forces the emulator even beside a GPU; ``GPUGD_EMULATE=0`` forbids it
(the cuda tests are then skipped where no device answers, the reason printed with ``-ra``).
"""

from __future__ import annotations

import functools
import json
import os
import sys

import numpy as np
import pytest

from gpugd.backend import BackendUnavailableError, _backend, get_backend

EMULATE_ENV = "GPUGD_EMULATE"


def _real_cupy_answers() -> bool:
    """Whether real CuPy imports and reports a device (nothing of it is kept otherwise)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # not installed, broken, no driver, no device
        return False


def _drop_cupy_modules() -> None:
    for name in [n for n in sys.modules if n == "cupy" or n.startswith("cupy.")]:
        del sys.modules[name]


def _choose_cupy() -> bool:
    """Install the stand-in unless real CuPy answers (or as ``GPUGD_EMULATE`` says);
    True when the stand-in is ``cupy`` now."""
    mode = os.environ.get(EMULATE_ENV, "").strip()
    if mode not in ("", "0", "1"):
        raise pytest.UsageError(f"{EMULATE_ENV}={mode!r}: expected 0, 1 or unset")
    if mode == "0" or (mode == "" and _real_cupy_answers()):
        return False
    _drop_cupy_modules()  # a real CuPy that imported but found no device
    from cudaemu import standin

    standin.install()
    _backend.cache_clear()
    return True


_EMULATED = _choose_cupy()


def emulated() -> bool:
    """True when ``cupy`` is the emulator's stand-in (no GPU): the cuda tests run on the CPU."""
    return _EMULATED


# Relative error ‖out − ref‖ / ‖ref‖ allowed against the float64 reference, per dtype.
# Elementwise ops round once or twice per element; reductions accumulate in float64.
TOLERANCE = {
    "elementwise": {np.float32: 1e-6, np.float64: 1e-13},
    "reduction": {np.float32: 1e-12, np.float64: 1e-12},
}

# The sizes every kernel is checked on: empty, one, odd, just under a power of two, and
# just past one large power of two (the tail paths of the vector loads and chunks).
ODD_SIZES = (0, 1, 7, 1023, 2**20 + 3)


@functools.cache
def cuda_reason() -> str | None:
    """None when a CUDA device answers, else why not."""
    try:
        get_backend("cuda")
    except BackendUnavailableError as exc:
        _backend.cache_clear()
        return str(exc)
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda" in item.keywords and cuda_reason() is not None:
            item.add_marker(pytest.mark.skip(reason=f"no CUDA device: {cuda_reason()}"))


def pytest_terminal_summary(terminalreporter):
    """On the emulator: how many launches ran, and which kernels of kernels/*.cu none of
    the collected tests launched (the CUDA path the suite leaves unexecuted)."""
    if not emulated():
        return
    from cudaemu import build, runtime

    from gpugd._kernels import kernel_sources, resolved_source

    if not runtime.launches:
        return
    names = set()
    for family, path in kernel_sources().items():
        sidecar = build.build(resolved_source(path), f"{family}.cu").with_suffix(".json")
        names |= set(json.loads(sidecar.read_text())["kernels"])
    ran = names & set(runtime.launches)
    tr = terminalreporter
    tr.write_sep("-", "emulated CUDA path (tests/cudaemu)")
    tr.write_line(
        f"{sum(runtime.launches.values())} kernel launches; {len(ran)} of the {len(names)} "
        f"kernels in kernels/*.cu ran"
    )
    missing = sorted(names - ran)
    if missing and len(missing) <= 12:  # a partial run leaves most out: no list then
        tr.write_line("never launched: " + ", ".join(missing))


BACKENDS = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array module of each backend (numpy, then cupy where a device answers)."""
    return get_backend(request.param).xp


def to_numpy(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def assert_rel_close(out, ref, rtol: float, what: str = "") -> None:
    """‖out − ref‖ ≤ rtol·‖ref‖ (absolute when ref is 0); on failure print the worst
    elements."""
    out = to_numpy(out).astype(np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != {ref.shape}"
    if out.size == 0:
        return
    err = np.linalg.norm(out - ref)
    scale = np.linalg.norm(ref)
    if not (err <= rtol * scale if scale > 0 else err == 0):
        diff = np.abs(out - ref)
        worst = np.argsort(diff)[::-1][:5]
        rows = "\n".join(
            f"  [{i}] out={out[i]!r} ref={ref[i]!r} |diff|={diff[i]:.3e}" for i in worst
        )
        rel = err / scale if scale else err
        raise AssertionError(f"{what}: relative error {rel:.3e} > {rtol:.1e}; worst:\n{rows}")
