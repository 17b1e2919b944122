"""The emulator's occupancy query and kernel attributes when the static tools are missing:
without cuobjdump/nvdisasm they come from ptxas alone; without ptxas the occupancy query
answers the documented fallback (32 registers, no shared memory: 8 blocks of 256 threads)
with one warning naming the tool, and ``RawKernel.attributes`` raises naming it."""

from __future__ import annotations

import importlib
import warnings

import pytest

pytestmark = pytest.mark.cuda


@pytest.fixture
def emu(monkeypatch, tmp_path):
    from conftest import emulated

    if not emulated():
        pytest.skip("the emulator's static figures (a real device answers for itself)")
    import cupy

    runtime = importlib.import_module(cupy._EMULATOR_PACKAGE + ".runtime")
    monkeypatch.setenv("GPUGD_KERNEL_REPORT_CACHE", str(tmp_path / "cache"))
    runtime._static_rows.cache_clear()
    monkeypatch.setattr(runtime, "_warned", set(), raising=False)
    yield runtime
    runtime._static_rows.cache_clear()  # later tests see the real tools again


def _kernel(name: str = "gpugd_vector_axpy_f32"):
    from gpugd import _cuda

    return _cuda.get_kernel("vector", name).raw


def _occupancy(k, threads: int = 256) -> int:
    import cupy

    return cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(k.kernel.ptr, threads, 0)


def test_without_cuobjdump_the_figures_come_from_ptxas(emu, monkeypatch):
    from gpugd import kernel_report

    try:
        kernel_report.ptxas()
    except kernel_report.ToolUnavailableError as exc:
        pytest.skip(f"needs ptxas: {exc}")
    k = _kernel()
    monkeypatch.setenv("GPUGD_CUOBJDUMP", "/nonexistent/cuobjdump")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attrs = k.attributes
        blocks = _occupancy(k)
    monkeypatch.delenv("GPUGD_CUOBJDUMP")
    want = next(r for r in kernel_report.family_report("vector") if r.name == k.name)
    assert attrs["num_regs"] == want.registers > 0 and attrs["shared_size_bytes"] == want.smem
    arch = kernel_report.ARCHS["sm_90"]
    assert blocks == kernel_report.blocks_per_sm(arch, want.registers, want.smem)


def test_without_ptxas_occupancy_falls_back_with_one_warning(emu, monkeypatch):
    monkeypatch.setenv("GPUGD_PTXAS", "/nonexistent/ptxas")
    k = _kernel()
    with pytest.warns(RuntimeWarning, match=r"\$GPUGD_PTXAS=/nonexistent/ptxas: no such file"):
        assert _occupancy(k) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        assert _occupancy(k, 1024) == 2
        assert _occupancy(_kernel("gpugd_vector_scale_f32"), 128) == 16
    with pytest.raises(emu.StaticFiguresUnavailable, match="GPUGD_PTXAS=/nonexistent/ptxas"):
        _ = k.attributes
