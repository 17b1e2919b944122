"""gpugd._hostmem: the host buffers of arenas and optimizer states: zeroed, aligned,
writable, huge pages requested for large ones; and the arenas and states that use them."""

from __future__ import annotations

import mmap
import sys

import ml_dtypes
import numpy as np
import pytest

from gpugd import FlatParams, optim
from gpugd import _hostmem as hostmem

BF16 = np.dtype(ml_dtypes.bfloat16)
LARGE = hostmem.HUGE_MIN // 4 + 3  # float32 elements: just above the threshold, odd


def _vm_flags(a: np.ndarray) -> list[str]:
    """The VmFlags of the mapping that holds ``a``'s first byte (Linux)."""
    fields = hostmem.mapping_of(a)
    assert fields, "no mapping holds the array"
    return fields["VmFlags"].split()


@pytest.mark.parametrize("n", [0, 1, 7, 1023, LARGE])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, BF16, np.float16])
def test_zeros_are_zero_aligned_writable_and_sized(n, dtype):
    a = hostmem.zeros(n, dtype)
    assert a.shape == (n,) and a.dtype == np.dtype(dtype) and a.flags.c_contiguous
    assert a.flags.writeable and not np.any(a.view(np.uint8))
    big = a.nbytes >= hostmem.HUGE_MIN and hasattr(mmap, "MADV_HUGEPAGE")
    if n:
        assert a.ctypes.data % (hostmem.HUGE if big else hostmem.ALIGN) == 0
    a[...] = 1
    assert np.all(a.astype(np.float64) == 1)


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and hasattr(mmap, "MADV_HUGEPAGE")),
    reason="huge-page advice is a Linux madvise",
)
def test_large_buffers_are_private_and_advised_huge_pages():
    a, b = hostmem.zeros(LARGE, np.float32), hostmem.zeros(LARGE, np.float32)
    flags = _vm_flags(a)
    assert "hg" in flags  # madvise(MADV_HUGEPAGE) was taken
    assert "sh" not in flags  # private: not shmem, which the anonymous THP setting skips
    a[:] = 5
    assert not np.any(b)  # two buffers, two mappings


def test_buffer_outlives_every_view_but_nothing_else():
    a = hostmem.zeros(LARGE, np.float32)
    view = a[10:20]
    del a
    view[...] = 3  # the mapping is alive while a view is
    assert np.all(view == 3)


def test_zeros_like_keeps_shape_and_takes_dtype():
    p = np.ones((2049, 1031), BF16)
    s = hostmem.zeros_like(p, np.float32)
    assert s.shape == p.shape and s.dtype == np.float32 and not np.any(s)


def test_arenas_and_list_states_live_on_hostmem_buffers():
    """FlatParams buffers and the optimizer's states and masters of list params: 2 MiB
    aligned when large, and the optimizer's results do not depend on where states live."""
    shapes = {"w": (2049, 1031), "b": (7,)}  # w: 4.2 MB of bfloat16, above HUGE_MIN
    flat = FlatParams(shapes, BF16)
    assert flat.data.ctypes.data % hostmem.HUGE == 0
    assert flat.grad_data.ctypes.data % hostmem.HUGE == 0
    rng = np.random.default_rng(0)
    ps = [rng.standard_normal(s).astype(BF16) for s in shapes.values()]
    gs = [rng.standard_normal(p.shape).astype(BF16) for p in ps]
    flat["w"][...], flat["b"][...] = ps
    flat.grads["w"][...], flat.grads["b"][...] = gs
    a = optim.Adam(flat, master_weights=True, lr=1e-2)
    listed = [p.copy() for p in ps]
    b = optim.Adam(listed, grads=gs, master_weights=True, lr=1e-2)
    st = b.state[b.names[0]]
    for k in ("exp_avg", "exp_avg_sq", "master"):
        assert st[k].ctypes.data % hostmem.HUGE == 0, k
    assert np.array_equal(st["master"], ps[0].astype(np.float32))
    for _ in range(3):
        a.step()
        b.step()
    for i, name in enumerate(shapes):
        assert np.array_equal(flat[name].view(np.uint16), listed[i].view(np.uint16))
        for k in ("exp_avg", "exp_avg_sq", "master"):
            assert np.array_equal(a.state[name][k], b.state[b.names[i]][k]), (name, k)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps is Linux")
def test_mapping_of_finds_the_array_and_its_fields():
    a = hostmem.zeros(LARGE, np.float32)
    fields = hostmem.mapping_of(a)
    assert fields["AnonHugePages"].endswith("kB") and "Rss" in fields
    heap = np.zeros(3)
    assert hostmem.mapping_of(heap)["VmFlags"].split()[:2] == ["rd", "wr"]


def test_copy_of_leaves_device_arrays_to_their_own_astype():
    # A CuPy array is not an np.ndarray: copy_of converts it with its own astype (on its
    # device) instead of staging it through host memory.
    class DeviceArray:
        dtype = np.dtype(np.float16)

        def astype(self, dtype):
            return ("astype", np.dtype(dtype))

    assert hostmem.copy_of(DeviceArray(), np.float32) == ("astype", np.dtype(np.float32))
    assert hostmem.copy_of(DeviceArray()) == ("astype", np.dtype(np.float16))
