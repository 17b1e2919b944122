"""Shared fixtures: the backends to run on, the tolerance table, a mismatch-printing assert.

Tests that need a GPU carry the ``cuda`` marker and are skipped only when no CUDA device
answers through CuPy (the reason is printed with ``-ra``).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from gpugd.backend import BackendUnavailableError, _backend, get_backend

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
