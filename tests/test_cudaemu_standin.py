"""The CUDA emulator's CuPy stand-in and guarded allocator (``tests/cudaemu``): guard pages
and canaries, zero-size pointers, array and view semantics, CuPy's refusal of implicit
host/device conversions, streams, stream capture into graphs and kernel launch rules.

The allocator tests run everywhere; the stand-in tests only where the stand-in is ``cupy``
(no GPU answers, or ``GPUGD_EMULATE=1``).
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import signal
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import numpy as np
import pytest
from conftest import emulated
from cudaemu import memory

TESTS = Path(__file__).resolve().parent
needs_standin = pytest.mark.skipif(
    not emulated(),
    reason="the CuPy stand-in is not installed (real CuPy answers, or GPUGD_EMULATE=0)",
)


@pytest.fixture
def cp():
    import cupy

    assert getattr(cupy, "STANDIN", False)
    return cupy


# ---------------------------------------------------------------- the allocator


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100, 4096, 4097, 3 * 4096 + 8])
def test_allocation_ends_at_a_guard_page_and_is_16_byte_aligned(n):
    memory.check_guards()  # earlier damage (re-armed when reported) is not this test's
    a = memory.alloc(n)
    r16 = -(-n // 16) * 16
    assert a.nbytes == n and a.ptr % 16 == 0
    assert (a.ptr + r16) % mmap.PAGESIZE == 0  # the guard page starts right there
    buf = np.frombuffer(a.buffer, np.uint8)
    assert buf.size == n
    assert (buf == 0xFF).all()  # fresh memory is garbage, not zeros
    assert memory.check_guards() == []


def test_zero_fill_on_request():
    a = memory.alloc(1000, zero=True)
    assert (np.frombuffer(a.buffer, np.uint8) == 0).all()


def test_zero_size_allocation_has_a_null_pointer():
    # cupy/cuda/memory.pyx: the pool returns MemoryPointer(Memory(0), 0), Memory(0).ptr == 0
    a = memory.alloc(0)
    assert a.ptr == 0 and a.nbytes == 0 and len(a.buffer) == 0


def _child(code: str) -> subprocess.CompletedProcess:
    prog = f"import sys; sys.path.insert(0, {str(TESTS)!r})\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True)


@pytest.mark.parametrize("access", ["read", "write"])
def test_an_access_past_the_rounded_end_faults(access):
    op = (
        "ctypes.c_ubyte.from_address(a.ptr + 32).value"
        if access == "read"
        else "ctypes.memset(a.ptr + 32, 0, 1)"
    )
    ok = _child(
        f"""
        import ctypes
        from cudaemu import memory
        a = memory.alloc(20)
        ctypes.memset(a.ptr + 31, 0, 1)  # the last slack byte is still mapped
        print("alive", flush=True)
        {op}
        print("not reached", flush=True)
        """
    )
    assert "alive" in ok.stdout and "not reached" not in ok.stdout
    assert ok.returncode in (-signal.SIGSEGV, -signal.SIGBUS)


def test_a_write_into_the_slack_or_before_the_start_is_reported_and_rearmed():
    memory.check_guards()
    a = memory.alloc(20)
    ctypes.memset(a.ptr + 20, 0, 3)  # bytes 20..22: the slack up to 32
    damaged = memory.check_guards()
    assert len(damaged) == 1 and "0 to 2 bytes past the end of a 20-byte allocation" in damaged[0]
    assert memory.check_guards() == []  # re-armed
    ctypes.memset(a.ptr - 8, 0x11, 1)
    damaged = memory.check_guards()
    assert len(damaged) == 1 and "8 to 8 bytes before the start" in damaged[0]
    ctypes.memset(a.ptr, 0, 20)  # the data itself is free to change
    assert memory.check_guards() == []


def test_describe_names_the_allocation():
    a = memory.alloc(4096)
    assert memory.describe(a.ptr + 10) == f"byte 10 inside a 4096-byte allocation at {a.ptr:#x}"
    assert memory.describe(a.ptr + 4096).startswith(
        f"0 bytes past the end of a 4096-byte allocation at {a.ptr:#x} (on its guard page)"
    )
    b = memory.alloc(20)
    assert "(in its canary slack)" in memory.describe(b.ptr + 24)
    assert memory.describe(a.ptr - 4).startswith("4 bytes before the start")
    assert memory.describe(id(object())) is None


def test_allocations_are_unmapped_when_collected():
    a = memory.alloc(100)
    view = np.frombuffer(a.buffer, np.float32)
    ptr, alive = a.ptr, weakref.ref(a)
    del a
    gc.collect()
    assert memory.describe(ptr) is not None and _mapped(ptr)  # the view keeps it mapped
    view[:] = 1.0
    del view
    gc.collect()
    # collected, so its finalizer has unregistered and unmapped it
    assert alive() is None and memory.describe(ptr) is None


def _mapped(addr: int) -> bool:
    """Whether ``addr`` lies in a mapping of this process (/proc/self/maps)."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split(maxsplit=1)[0].split("-"))
            if lo <= addr < hi:
                return True
    return False


# ---------------------------------------------------------------- the array


@needs_standin
def test_stand_in_arrays_look_like_cupy_to_gpugd(cp):
    from gpugd.backend import _library_of, array_backend

    a = cp.zeros(3, cp.float32)
    assert not isinstance(a, np.ndarray)
    assert type(a).__module__ == "cupy" and type(a).__name__ == "ndarray"
    assert _library_of(a) == "cupy" and array_backend(a=a) == "cuda"
    with pytest.raises(TypeError, match="mixed array libraries"):
        array_backend(a=a, b=np.zeros(3))


@needs_standin
def test_every_array_lives_in_guarded_memory(cp):
    x = cp.asarray(np.arange(10, dtype=np.float32))
    for a in (x, x + 1, x * x, cp.sqrt(x), x.sum(), x.astype(cp.float64), x.copy(), x[x > 3]):
        assert memory.describe(a.data.ptr) is not None, a
        assert a.data.ptr % 16 == 0
    e = cp.empty(5, cp.float32)
    assert np.isnan(e.get()).all()  # uninitialised: NaN, not zeros
    assert (cp.zeros(5).get() == 0).all()


@needs_standin
def test_zero_size_arrays_have_a_null_pointer_but_empty_views_keep_their_offset(cp):
    assert cp.zeros(0).data.ptr == 0
    assert cp.empty((0, 3), cp.float32).data.ptr == 0
    assert cp.asarray(np.zeros(0)).data.ptr == 0
    a = cp.zeros(10, cp.float32)
    assert a[5:5].data.ptr == a.data.ptr + 20  # _routines_indexing.pyx: offset when a.size


@needs_standin
def test_views_share_memory_and_report_base_plus_offset(cp):
    a = cp.arange(12, dtype=cp.float64)
    v = a[3:9]
    assert v.data.ptr == a.data.ptr + 24 and v.base is a and v.data.mem is a.data.mem
    v[0] = -1
    assert a[3].item() == -1
    r = a.reshape(3, 4)
    assert r.base is a and r.data.ptr == a.data.ptr and cp.shares_memory(r, a)
    assert r.T.flags.f_contiguous and not r.T.flags.c_contiguous
    assert r[1:, ::2].base is a
    assert a[::-1].data.ptr == a.data.ptr + 88
    s = a[4]  # an integer index: a 0-d view, not a NumPy scalar
    assert type(s) is cp.ndarray and s.shape == () and s.base is a
    s.fill(42)
    assert a.get()[4] == 42
    m = a[a > 5]  # a boolean mask: a copy
    assert m.base is None and not cp.may_share_memory(m, a)
    assert a.view(cp.int64).data.ptr == a.data.ptr
    assert a.astype(cp.float64, copy=False) is a
    assert a.astype(cp.float64).data.ptr != a.data.ptr
    assert cp.ascontiguousarray(a) is a
    assert cp.ascontiguousarray(r.T).flags.c_contiguous


@needs_standin
def test_setitem_follows_cupy(cp):
    a = cp.zeros(6, cp.float32)
    a[1:3] = cp.asarray(np.array([5.0, 6.0]))  # device value: cast and copied
    a[0] = 7
    a[...] = a[::-1].copy()
    np.testing.assert_array_equal(a.get(), [0, 0, 0, 6, 5, 7])
    a[...] = np.float32(2.5)
    a[...] = np.array(1.5)  # a 0-d NumPy array is a scalar for fill
    assert (a.get() == 1.5).all()
    # _scatter_op: "Refuse assignment from CPU arrays" (basic indexing -> fill)
    with pytest.raises(ValueError, match=r"non-scalar numpy\.ndarray cannot be used for fill"):
        a[...] = np.ones(6, np.float32)
    with pytest.raises(ValueError, match=r"non-scalar numpy\.ndarray cannot be used for fill"):
        a[:2] = [1.0, 2.0]
    a[np.array([0, 2])] = np.array([9.0, 8.0])  # advanced index: cupy.array(value) is fine
    a[cp.asarray(np.array([1]))] = 3
    np.testing.assert_array_equal(a.get(), [9, 3, 8, 1.5, 1.5, 1.5])
    with pytest.raises(ValueError, match=r"non-scalar cupy\.ndarray cannot be used for fill"):
        a.fill(cp.ones(2))


@needs_standin
def test_implicit_conversions_are_refused_like_cupy(cp):
    a = cp.ones(4, cp.float32)
    h = np.ones(4, np.float32)
    msg = "Implicit conversion to a NumPy array is not allowed"
    with pytest.raises(TypeError, match=msg):
        np.asarray(a)
    with pytest.raises(TypeError, match=msg):
        np.array([a, a])
    with pytest.raises(TypeError):
        memoryview(a)
    assert not hasattr(a, "__array_interface__")
    for bad in (
        lambda: a + h,
        lambda: h + a,
        lambda: a * h,
        lambda: cp.add(a, h),
        lambda: np.add(a, h),
        lambda: cp.maximum(h, a),
        lambda: a == h,
    ):
        with pytest.raises(TypeError, match="Unsupported type"):
            bad()
    with pytest.raises(TypeError, match=r"Output arguments type must be cupy\.ndarray"):
        cp.multiply(a, 2, out=h)
    with pytest.raises(TypeError, match=r"numpy\.ndarray"):
        cp.concatenate([a, h])
    with pytest.raises(TypeError, match="incorrect type"):
        cp.ascontiguousarray(h)
    # the explicit ways work, and NumPy functions on cupy arrays run cupy's
    np.testing.assert_array_equal(cp.asnumpy(a), h)
    np.testing.assert_array_equal(a.get(), h)
    assert type(np.sqrt(a)) is cp.ndarray and type(np.concatenate([a, a])) is cp.ndarray
    assert type(np.float32(2) * a) is cp.ndarray and (np.float32(2) * a).dtype == np.float32


@needs_standin
def test_scalar_conversions_and_truth_follow_cupy(cp):
    s = cp.asarray(np.float64(2.5))
    assert float(s) == 2.5 and int(s) == 2 and bool(s) and s.item() == 2.5
    assert float(cp.ones(1).sum()) == 1.0
    with pytest.raises(TypeError):  # no __index__ on cupy.ndarray
        range(cp.asarray(np.int64(3)))
    with pytest.raises(TypeError, match="len\\(\\) of unsized object"):
        len(s)
    with pytest.raises(TypeError, match="iteration over a 0-d array"):
        iter(s)
    with pytest.raises(ValueError, match="more than one element is ambiguous"):
        bool(cp.ones(2))
    with pytest.warns(DeprecationWarning):
        assert not bool(cp.ones(0))
    assert repr(cp.arange(3)) == "array([0, 1, 2])"
    assert [x.item() for x in cp.arange(3)] == [0, 1, 2]
    a = cp.ones((2, 2))
    b = a
    b @= a  # no __imatmul__: rebinds, a is unchanged
    assert b is not a and (a.get() == 1).all() and (b.get() == 2).all()
    c = a
    c += 1  # in place
    assert c is a and (a.get() == 2).all()


@needs_standin
def test_dtypes_and_reductions(cp):
    import ml_dtypes

    x = cp.asarray(np.array([1.5, -2.0, 3.25], np.float32))
    assert x.sum().shape == () and type(x.sum()) is cp.ndarray
    assert x.max().item() == 3.25 and cp.abs(x).min().item() == 1.5
    assert (x.astype(cp.float16).dtype, x.astype(ml_dtypes.bfloat16).dtype.name) == (
        np.float16,
        "bfloat16",
    )
    assert (x + 1.0).dtype == np.float32 and (x + np.float64(1)).dtype == np.float64
    assert cp.dtype("float32") == np.float32 and cp.float64 is np.float64
    assert cp.linalg.norm(x).item() == pytest.approx(np.linalg.norm([1.5, -2.0, 3.25]), 1e-6)
    r = cp.random.default_rng(0).standard_normal((3, 4), dtype=cp.float32)
    assert r.dtype == np.float32 and r.shape == (3, 4)
    assert cp.where(x > 0, x, 0).get().tolist() == [1.5, 0.0, 3.25]
    o = cp.zeros(3, cp.float32)
    assert cp.add(x, 1, out=o, where=x > 0) is o and o.get().tolist() == [2.5, 0.0, 4.25]


# ---------------------------------------------------------------- device, runtime, streams


@needs_standin
def test_device_and_runtime_answer(cp):
    from gpugd.backend import get_backend

    assert cp.__version__ == "14.0.0+gpugd-standin"
    assert cp.cuda.runtime.getDeviceCount() == 1
    props = cp.cuda.runtime.getDeviceProperties(0)
    assert props["name"] == b"NVIDIA H200 (gpugd CUDA emulator on CPU)"
    assert (props["major"], props["minor"], props["multiProcessorCount"]) == (9, 0, 132)
    dev = cp.cuda.Device()
    assert dev.id == 0 and dev.attributes["MultiProcessorCount"] == 132
    assert dev.compute_capability == "90"
    with cp.cuda.Device(0):
        dev.synchronize()
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError) as info:
        cp.cuda.runtime.getDeviceProperties(1)
    assert info.value.status == 101
    assert "emulator" in get_backend("cuda").device_name
    with pytest.raises(ImportError, match="NCCL is not emulated"):
        from cupy.cuda import nccl  # noqa: F401


@needs_standin
def test_current_stream_and_events(cp):
    null = cp.cuda.Stream.null
    assert cp.cuda.get_current_stream() is null and null.ptr == 0
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        assert cp.cuda.get_current_stream() is s
        with null:
            assert cp.cuda.get_current_stream() is null
        assert cp.cuda.get_current_stream() == s
    assert cp.cuda.get_current_stream() is null
    assert s.ptr not in (0, 1, 2) and s.is_non_blocking
    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
    e0.record()
    s.synchronize()
    e1.record(s)
    e1.synchronize()
    assert cp.cuda.get_elapsed_time(e0, e1) >= 0.0
    with pytest.raises(RuntimeError, match="cannot capture on the default"):
        null.begin_capture()


class _StubKernel:
    """Stands for the runtime's Kernel: records pack/run calls."""

    name = "stub"

    def __init__(self, log: list):
        self.log = log

    def pack(self, args: tuple):
        values = tuple(a.data.ptr if hasattr(getattr(a, "data", None), "ptr") else a for a in args)
        self.log.append(("pack", values))
        return values

    def run(self, grid, block, shared_mem, packed):
        self.log.append(("run", grid, block, shared_mem, packed))


def _stub_kernel(cp, log):
    k = cp.RawKernel("// stub", "stub")
    k._kernel = _StubKernel(log)
    return k


@needs_standin
def test_kernel_launch_rules_follow_cupy(cp):
    log: list = []
    k = _stub_kernel(cp, log)
    x = cp.zeros(4, cp.float32)
    k((0,), (32, 2), (x, np.float32(1.5), 3, 2.0, True, None, np.array([7], np.int16), 2**63))
    (_, args), (_, grid, block, smem, packed) = log
    # function.pyx: padded with 1s, max(1, dim); _pointer/CScalar marshalling
    assert grid == (1, 1, 1) and block == (32, 2, 1) and smem == 0
    assert args[0] == x.data.ptr and packed is args
    assert [type(a) for a in args[1:]] == [
        np.float32,
        int,
        float,
        bool,
        np.intp,
        np.int16,
        np.uint64,
    ]
    with pytest.raises(TypeError, match="Argument 'grid' has incorrect type"):
        k(1, (32,), (x,))
    with pytest.raises(TypeError, match=r"Only numpy\.ndarrays of size one"):
        k((1,), (32,), (np.ones(3),))


@needs_standin
def test_capture_records_launches_and_ops_and_replays_them_in_order(cp):
    log: list = []
    k = _stub_kernel(cp, log)
    x = cp.zeros(4, cp.float32)
    y = cp.ones(4, cp.float32)
    z, w = cp.empty(4, cp.float32), cp.empty(4, cp.float32)
    s = cp.cuda.Stream(non_blocking=True)
    from cupy.cuda.stream import StandInCaptureError

    with s:
        s.begin_capture()
        assert s.is_capturing() and cp.cuda.runtime.streamIsCapturing(s.ptr)
        k((2,), (64,), (x, np.int64(4)))
        x.fill(3)  # recorded, not run
        x += y  # an elementwise kernel into x: recorded
        cp.multiply(x, 2, out=z)  # into an array allocated before: recorded
        with pytest.raises(StandInCaptureError, match="allocating"):
            x * 2  # a new array: the graph would not keep its memory alive
        w.fill(0)  # the memset is part of the graph
        w[1:3] = z[1:3]
        graph = s.end_capture()
    assert not s.is_capturing()
    assert [e[0] for e in log] == ["pack"]  # marshalled at capture, by value; not run
    assert (x.get() == 0).all() and np.isnan(z.get()).all() and np.isnan(w.get()).all()
    assert len(graph.nodes) == 6 and "stub" in str(graph.nodes[0])
    graph.launch(s)
    assert [e[0] for e in log] == ["pack", "run"] and log[1][1] == (2, 1, 1)
    np.testing.assert_array_equal(x.get(), [4] * 4)
    np.testing.assert_array_equal(z.get(), [8] * 4)
    np.testing.assert_array_equal(w.get(), [0, 8, 8, 0])
    y.fill(10)  # a replay reads the arrays' current contents
    graph.launch()
    np.testing.assert_array_equal(x.get(), [13] * 4)
    with pytest.raises(NotImplementedError):
        cp.cuda.graph.Graph()


@needs_standin
def test_unrecorded_work_during_capture_is_an_error_not_eager(cp):
    from cupy.cuda.stream import StandInCaptureError

    x = cp.arange(4, dtype=cp.float32)
    mask = x > 1
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        try:
            for op, what in [
                (lambda: x.sum(), "cupy.ndarray.sum"),
                (lambda: cp.asarray(np.ones(3)), "host-to-device"),
                (lambda: x[mask], "gather"),
                (lambda: x[np.array([1, 2])], "host index array"),
                (lambda: cp.concatenate([x, x]), "cupy.concatenate"),
                (lambda: cp.random.default_rng(0).random(3), "random"),
                (lambda: x.get(), "synchronizes"),
                (lambda: float(x[0]), "synchronizes"),
            ]:
                with pytest.raises(StandInCaptureError, match=what):
                    op()
            for sync in (s.synchronize, x.get, cp.cuda.Device().synchronize):
                with pytest.raises(cp.cuda.runtime.CUDARuntimeError) as info:
                    sync()  # CuPy raises cudaErrorStreamCaptureUnsupported for these
                assert info.value.status == 900
            v = x[1:3].reshape(2, 1)  # views are no device work: allowed
            assert v.base is x
        finally:
            graph = s.end_capture()
    assert graph.nodes == ()
    np.testing.assert_array_equal(x.get(), [0, 1, 2, 3])
    # the same operations outside a capture run, also on another stream
    with s:
        assert x.sum().item() == 6


@needs_standin
def test_a_graph_launched_into_a_capture_is_nested(cp):
    x = cp.zeros(2, cp.float32)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        x += 1
        inner = s.end_capture()
        s.begin_capture()
        inner.launch()
        inner.launch()
        outer = s.end_capture()
    assert len(outer.nodes) == 2
    outer.launch(s)
    np.testing.assert_array_equal(x.get(), [2, 2])


@needs_standin
def test_a_real_kernel_through_the_emulator_and_a_graph(cp):
    mod = cp.RawModule(
        code=r"""
        extern "C" __global__ void add_one(float* x, long long n) {
          for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
               i += (long long)gridDim.x * blockDim.x)
            x[i] += 1.0f;
        }
        """,
        options=("-std=c++17",),
    )
    k = mod.get_function("add_one")
    x = cp.zeros(1000, cp.float32)
    k((4,), (128,), (x, 1000))
    assert (x.get() == 1).all()
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        k((4,), (128,), (x[500:], 500))  # the view's pointer, captured by value
        g = s.end_capture()
    for _ in range(3):
        g.launch(s)
    got = x.get()
    assert (got[:500] == 1).all() and (got[500:] == 4).all()
    with pytest.raises(TypeError, match="options"):
        cp.RawModule(code="", options=["-std=c++17"])
