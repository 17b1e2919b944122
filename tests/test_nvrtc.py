"""Every kernels/*.cu compiles through NVRTC for compute_80 and compute_90 (no GPU needed);
a broken source fails the check; kernel names follow gpugd_<family>_<op>; each CUDA family
has its Numba mirror."""

from __future__ import annotations

import importlib

import pytest

from gpugd import _nvrtc
from gpugd._kernels import kernel_dir, kernel_headers, kernel_sources

FAMILIES = sorted(kernel_sources())


def test_there_are_kernels_to_check():
    assert "vector" in FAMILIES
    assert "common.cuh" in kernel_headers()


@pytest.mark.parametrize("arch", _nvrtc.DEFAULT_ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_kernel_family_compiles(family, arch):
    ptx = _nvrtc.compile_file(kernel_sources()[family], arch)
    entries = _nvrtc.ptx_entries(ptx)
    assert entries, f"{family}.cu defines no __global__ kernel"
    bad = [e for e in entries if not e.startswith(f"gpugd_{family}_")]
    assert not bad, f"kernels not named gpugd_{family}_<op>: {bad}"
    # Every kernel the Python side launches is defined (names cannot drift apart).
    launched = importlib.import_module(f"gpugd.ops.{family}").CUDA_KERNELS
    missing = set(launched) - set(entries)
    assert not missing, f"launched by gpugd.ops.{family} but not defined: {missing}"


def test_vector_kernels_use_16_byte_accesses():
    ptx = _nvrtc.compile_file(kernel_sources()["vector"], "compute_90")
    assert "ld.global.v4.f32" in ptx and "st.global.v4.f32" in ptx
    assert "ld.global.v2.f64" in ptx


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ('extern "C" __global__ void gpugd_x_y(float* x) { x[0] = 1.0f }', "expected"),
        ('extern "C" __global__ void gpugd_x_y(float* x) { x[0] = undefined_name; }', "undefined"),
        ('struct S {}; extern "C" __global__ void gpugd_x_y(float* x) { S s; x[0] = s; }', "error"),
    ],
    ids=["syntax", "undeclared", "type"],
)
def test_broken_source_fails_the_check(source, needle):
    with pytest.raises(_nvrtc.NvrtcCompileError) as info:
        _nvrtc.compile_to_ptx(source, "broken.cu", "compute_90")
    assert needle in info.value.log
    assert "broken.cu" in str(info.value)


def test_headers_are_pasted_in_once():
    from gpugd._kernels import resolved_source

    text = resolved_source(kernel_sources()["vector"])
    assert '#include "common.cuh"' not in text
    assert text.count("// ---- begin common.cuh") == 1
    assert "block_sum" in text


def test_missing_header_is_named(tmp_path):
    from gpugd._kernels import resolved_source

    (tmp_path / "bad.cu").write_text('#include "nope.cuh"\n')
    with pytest.raises(FileNotFoundError, match=r"nope\.cuh"):
        resolved_source(tmp_path / "bad.cu")


def test_good_source_passes_for_both_archs():
    src = 'extern "C" __global__ void gpugd_x_y(float* x) { x[threadIdx.x] *= 2.0f; }'
    for arch in _nvrtc.DEFAULT_ARCHS:
        assert _nvrtc.ptx_entries(_nvrtc.compile_to_ptx(src, "ok.cu", arch)) == ["gpugd_x_y"]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_cuda_family_has_a_numba_mirror(family):
    importlib.import_module(f"gpugd._cpu.{family}")


def test_kernel_dir_is_the_checkout_or_the_package():
    d = kernel_dir()
    assert d.name == "kernels" and (d / "vector.cu").is_file()
