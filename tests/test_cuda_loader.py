"""CUDA kernel loading (RawModule per family and device, cached), grid sizing, and the GPU
reduction's determinism. Runs only where a CUDA device answers."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.cuda


def _attributes(kernel) -> dict:
    """``kernel.attributes``; on the emulator without ptxas, a skip naming the tool."""
    from conftest import emulated

    if not emulated():
        return kernel.attributes
    import importlib

    import cupy

    runtime = importlib.import_module(cupy._EMULATOR_PACKAGE + ".runtime")
    try:
        return kernel.attributes
    except runtime.StaticFiguresUnavailable as exc:
        pytest.skip(f"the emulator's kernel attributes need ptxas: {exc}")


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


def test_grid_is_one_wave_of_the_kernels_own_occupancy(cuda):
    import cupy

    sms = cuda.sm_count()
    assert sms > 0
    name = "gpugd_vector_axpy_f32"
    assert cuda.grid_for("vector", name, 1) == 1
    assert cuda.grid_for("vector", name, cuda.THREADS * 4 * 3) == 3
    fn = cuda.get_kernel("vector", name)
    resident = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
        fn.kernel.ptr, cuda.THREADS, 0
    )
    assert 1 <= resident <= 2048 // cuda.THREADS
    assert cuda.resident_blocks("vector", name) == resident
    assert cuda.grid_for("vector", name, 1 << 30) == sms * resident
    # a kernel of more registers holds fewer blocks: the grid follows it, not a fixed cap
    regs = {
        n: _attributes(cuda.get_kernel(f, n))["num_regs"]
        for f, n in [("vector", name), ("optim", "gpugd_optim_adam_multi_f16p_f32s_master")]
    }
    heavy = cuda.resident_blocks("optim", "gpugd_optim_adam_multi_f16p_f32s_master")
    assert regs["gpugd_optim_adam_multi_f16p_f32s_master"] > regs[name]
    assert heavy <= resident


def test_the_drivers_occupancy_is_the_kernel_reports(cuda):
    """On an sm_90 device the driver's answer is the occupancy rule of gpugd.kernel_report
    applied to the kernel's registers and shared memory (on the emulator, both come from
    ptxas; on a GPU this checks the report's rule against the driver)."""
    import cupy
    from conftest import emulated

    from gpugd import kernel_report

    if emulated() or cupy.cuda.Device().compute_capability != "90":
        pytest.skip("the report's occupancy rule is checked against a real sm_90 device")
    arch = kernel_report.ARCHS["sm_90"]
    for family, name in [
        ("vector", "gpugd_vector_axpy_f32"),
        ("activations", "gpugd_activations_forward_f64"),
        ("reduce", "gpugd_reduce_stats_partial_f32"),
        ("optim", "gpugd_optim_adam_multi_f16p_f32s_master"),
    ]:
        attrs = _attributes(cuda.get_kernel(family, name))
        want = kernel_report.blocks_per_sm(
            arch, attrs["num_regs"], attrs["shared_size_bytes"], cuda.THREADS
        )
        assert cuda.resident_blocks(family, name) == want, name


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


def test_counted_kernel_forwards_attribute_writes_to_the_kernel(cuda):
    import types

    raw = types.SimpleNamespace(max_dynamic_shared_size_bytes=0)
    k = cuda.CountedKernel(raw)
    k.max_dynamic_shared_size_bytes = 4096
    assert raw.max_dynamic_shared_size_bytes == 4096 and k.max_dynamic_shared_size_bytes == 4096
    k.preferred_shared_memory_carveout = 50
    assert raw.preferred_shared_memory_carveout == 50
    assert k.raw is raw


def test_launch_count_is_exact_across_threads(cuda, monkeypatch):
    """Eight threads, 200 launches each: none lost. The counter's read-modify-write is
    widened (a read that yields) so that an unlocked increment would lose some."""
    import threading
    import time

    class Yielding(list):
        def __getitem__(self, i):
            v = super().__getitem__(i)
            time.sleep(0)
            return v

    monkeypatch.setattr(cuda, "_launches", Yielding([0]))
    k = cuda.CountedKernel(lambda *a, **kw: None)
    before = cuda.launch_count()

    def work():
        for _ in range(200):
            k((1,), (1,), ())

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cuda.launch_count() - before == 8 * 200
