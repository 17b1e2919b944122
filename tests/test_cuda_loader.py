"""CUDA kernel loading (RawModule per family and device, cached), grid sizing, and the GPU
reduction's determinism. Runs only where a CUDA device answers."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.cuda


@pytest.fixture
def cuda():
    from gpugd import _cuda

    return _cuda


def test_every_family_loads_and_is_cached_per_device(cuda):
    import cupy

    from gpugd._kernels import kernel_sources

    for family in kernel_sources():
        m1 = cuda._module(family, cupy.cuda.Device().id)
        m2 = cuda._module(family, cupy.cuda.Device().id)
        assert m1 is m2
    k = cuda.get_kernel("vector", "gpugd_vector_axpy_f32")
    assert k is not None and cuda.get_kernel("vector", "gpugd_vector_axpy_f32") is k
    with pytest.raises(KeyError, match="no kernel family"):
        cuda._module("nope", 0)


def test_grid_is_sized_from_the_multiprocessor_count(cuda):
    sms = cuda.sm_count()
    assert sms > 0
    assert cuda.grid_for(1) == 1
    assert cuda.grid_for(cuda.THREADS * 4 * 3) == 3
    assert cuda.grid_for(1 << 30) == sms * cuda.BLOCKS_PER_SM


def test_sum_of_squares_is_bitwise_deterministic_and_stays_on_device():
    import cupy

    from gpugd import ops

    x = cupy.random.default_rng(1).standard_normal((1 << 24) + 3, dtype=cupy.float32)
    first = ops.sum_of_squares(x)
    assert isinstance(first, cupy.ndarray) and first.shape == () and first.dtype == np.float64
    for _ in range(5):
        assert ops.sum_of_squares(x).item() == first.item()


def test_backend_reports_the_device():
    from gpugd import get_backend

    be = get_backend("cuda")
    assert be.name == "cuda" and "device" in be.device_name
    be.synchronize()
