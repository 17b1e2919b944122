"""Backend choice, its errors (CuPy missing, no device, driver too old), inference from
arrays, and `import gpugd` staying CuPy-free on the CPU backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

import gpugd
from gpugd.backend import BackendUnavailableError, _backend, array_backend, get_backend


@pytest.fixture(autouse=True)
def _fresh_backend_cache():
    _backend.cache_clear()
    yield
    _backend.cache_clear()


class _FakeCudaError(RuntimeError):
    def __init__(self, status: int, msg: str):
        super().__init__(msg)
        self.status = status


def _fake_cupy(count=1, error=None, driver=13000, runtime=13000):
    """A stand-in `cupy` module whose runtime answers as told."""

    def get_count():
        if error is not None:
            raise error
        return count

    runtime_mod = types.SimpleNamespace(
        getDeviceCount=get_count,
        driverGetVersion=lambda: driver,
        runtimeGetVersion=lambda: runtime,
        getDeviceProperties=lambda i: {"name": b"Fake H200"},
    )
    cuda = types.SimpleNamespace(runtime=runtime_mod, Device=lambda: types.SimpleNamespace(id=0))
    return types.SimpleNamespace(cuda=cuda, __name__="cupy")


def test_cpu_backend():
    be = get_backend("cpu")
    assert be.name == "cpu" and be.xp is np and be.device_name
    be.synchronize()  # a no-op that must not fail


def test_environment_variable_selects(monkeypatch):
    monkeypatch.setenv("GPUGD_BACKEND", "cpu")
    assert get_backend().name == "cpu"
    monkeypatch.setenv("GPUGD_BACKEND", "tpu")
    with pytest.raises(ValueError, match=r"GPUGD_BACKEND='tpu' is not a backend"):
        get_backend()


def test_bad_name():
    with pytest.raises(ValueError, match="expected one of"):
        get_backend("gpu")


def test_cuda_without_cupy_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(BackendUnavailableError, match="CuPy is not installed"):
        get_backend("cuda")


@pytest.mark.parametrize(
    ("fake", "match"),
    [
        (_fake_cupy(error=_FakeCudaError(100, "cudaErrorNoDevice")), "no CUDA device found"),
        (_fake_cupy(count=0), "no CUDA device found"),
        (_fake_cupy(error=_FakeCudaError(35, "cudaErrorInsufficientDriver")), "driver is too old"),
        (_fake_cupy(driver=12040, runtime=13000), r"supports CUDA 12.4 .* built for CUDA 13.0"),
        (_fake_cupy(error=_FakeCudaError(999, "cudaErrorUnknown")), "did not answer"),
    ],
)
def test_cuda_errors_say_why(monkeypatch, fake, match):
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(BackendUnavailableError, match=match):
        get_backend("cuda")


def test_auto_falls_back_to_cpu_when_no_device_answers(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(error=_FakeCudaError(100, "none")))
    assert get_backend("auto").name == "cpu"


def test_auto_picks_cuda_when_a_device_answers(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    be = get_backend("auto")
    assert be.name == "cuda" and "Fake H200" in be.device_name


# A class that looks like cupy.ndarray to the inference (module "cupy...", name "ndarray").
FakeCupyArray = type("ndarray", (), {"__module__": "cupy._core.core"})


def test_array_backend_inference():
    assert array_backend(x=np.zeros(3)) == "cpu"
    assert array_backend(x=FakeCupyArray()) == "cuda"


def test_mixing_libraries_is_a_type_error_naming_both():
    with pytest.raises(TypeError, match=r"x is a numpy.ndarray but g is a cupy.ndarray"):
        array_backend(x=np.zeros(3), g=FakeCupyArray())


def test_mixed_arrays_rejected_by_an_op_before_any_kernel():
    x = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match=r"x is a numpy\.ndarray but y is a cupy\.ndarray"):
        gpugd.ops.axpy_(x, 1.0, FakeCupyArray())
    np.testing.assert_array_equal(x, 0)


def test_non_array_argument_named():
    with pytest.raises(TypeError, match=r"^y: expected a numpy.ndarray or cupy.ndarray, got"):
        array_backend(x=np.zeros(1), y=[0.0])


def test_import_gpugd_does_not_import_cupy(tmp_path):
    # A stand-in cupy that *is* importable: if gpugd imported it eagerly, it would show up
    # in sys.modules, so this test can fail.
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text("IMPORTED = True\n")
    code = textwrap.dedent(
        """
        import sys, numpy as np
        import gpugd
        be = gpugd.get_backend()
        gpugd.ops.axpy_(np.ones(5, np.float32), 2.0, np.ones(5, np.float32))
        gpugd.ops.sum_of_squares(np.ones(5))
        print(be.name, "cupy" in sys.modules)
        """
    )
    env = dict(os.environ, GPUGD_BACKEND="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["cpu", "False"], out.stderr
    # ...and the stand-in is importable, so the check above is live:
    out = subprocess.run(
        [sys.executable, "-c", "import cupy; print(cupy.IMPORTED)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "True"


def test_validation_accepts_cupy_style_flags():
    # CuPy's flags have c_contiguous but no ``writeable`` (its arrays are always writable):
    # the argument checks must read them the way CuPy exposes them, GPU or not.
    from types import SimpleNamespace

    from gpugd import _validate

    fake = SimpleNamespace(
        dtype=np.dtype(np.float32), flags=SimpleNamespace(c_contiguous=True), shape=(3,)
    )
    _validate.float_array("p", fake, writable=True)
    fake.flags.c_contiguous = False
    with pytest.raises(ValueError, match="p: expected a C-contiguous array"):
        _validate.float_array("p", SimpleNamespace(**vars(fake), strides=(8,)), writable=True)


def test_dtype_name_is_numpy_dtype_name_for_every_float_format():
    # The fast name read on the hot path must agree with NumPy's own ``dtype.name``.
    import ml_dtypes

    from gpugd import _validate

    for dt in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16, np.int32, np.uint16):
        assert _validate.dtype_name(np.dtype(dt)) == np.dtype(dt).name


@pytest.mark.parametrize(
    "value, ok",
    [
        (0.5, True),
        (3, True),
        (np.float32(0.25), True),
        (np.int64(2), True),
        (True, False),
        (np.bool_(True), False),
        (1j, False),
        (np.ones(1), False),
        ("1", False),
    ],
)
def test_real_scalar_accepts_reals_only(value, ok):
    from gpugd import _validate

    if ok:
        out = _validate.real_scalar("lr", value)
        assert type(out) is float and out == float(value)
    else:
        with pytest.raises(TypeError, match="lr: expected a real scalar"):
            _validate.real_scalar("lr", value)


def test_address_is_the_array_interfaces_pointer_for_every_accepted_kind(tmp_path):
    """``_validate.address`` (Numba's read of the array struct for the dtypes it types,
    ``__array_interface__`` for the rest) gives the pointer NumPy reports: views at an
    offset, strided and Fortran-order views, read-only, empty and 0-d arrays, a memmap,
    half formats and a non-native byte order."""
    import ml_dtypes

    from gpugd import _validate

    base = np.arange(64, dtype=np.float64)
    ro = np.arange(8, dtype=np.float32)
    ro.flags.writeable = False
    arrays = [
        base,
        base[3:],
        base[1::5],
        np.asfortranarray(base.reshape(8, 8))[:, 2],
        ro,
        np.zeros(0, np.float32),
        np.array(2.5, np.float32),
        base.view(np.uint8)[5:],
        base.view(np.int16)[1:],
        np.arange(6, dtype=np.float16)[1:],
        np.arange(6).astype(ml_dtypes.bfloat16)[2:],
        np.arange(6, dtype=">f4"),
        np.zeros(3, np.int32),
        np.arange(12, dtype=np.float16).reshape(3, 4)[:, 1],  # half, strided: a uint16 view
        np.arange(6).astype(ml_dtypes.bfloat16).reshape(2, 3).T,
        np.array(1.5, ml_dtypes.bfloat16),
        np.zeros(4, np.complex64)[1:],  # 8 bytes, not a Numba-typed kind: a uint64 view
        np.zeros(4, np.dtype([("a", "<i2"), ("b", "u1"), ("c", "u1")]))[1:],
        np.zeros(3, object),  # references: never viewed, __array_interface__
    ]
    mm = np.memmap(tmp_path / "m.bin", dtype=np.float32, mode="w+", shape=(4,))
    arrays += [mm, mm[1:]]
    for a in arrays:
        assert _validate.address(a) == a.__array_interface__["data"][0], (a.dtype, a.shape)


def test_overlapping_agrees_with_a_pairwise_check():
    """``_validate.overlapping`` (the sorted screen for many arrays) against every pair of
    [start, start + n) ranges: touching ends, nesting, equal starts, empty ranges."""
    from gpugd import _validate

    rng = np.random.default_rng(3)
    for trial in range(400):
        k = int(rng.integers(0, 9))
        starts = [int(x) for x in rng.integers(0, 60, k)]
        sizes = [int(x) for x in rng.integers(0, 12, k) * rng.integers(0, 2, k)]
        pairwise = any(
            sizes[i]
            and sizes[j]
            and starts[i] < starts[j] + sizes[j]
            and starts[j] < starts[i] + sizes[i]
            for i in range(k)
            for j in range(i)
        )
        assert _validate.overlapping(starts, sizes) == pairwise, (trial, starts, sizes)
    big = 1 << 47  # user-space addresses near the top of the 47-bit range
    assert _validate.overlapping([big, big + 8], [8, 8]) is False
    assert _validate.overlapping([big, big + 7], [8, 8]) is True


def test_disjoint_over_many_arrays_names_the_pair():
    """``_validate.disjoint`` over 32 arrays or more screens with ``overlapping`` first:
    disjoint views pass, an overlap among them is still named, the same array twice too."""
    from gpugd import _validate

    buf = np.zeros(4096, np.float32)
    views = {f"g[{i}]": buf[i * 100 : i * 100 + 100] for i in range(40)}
    _validate.disjoint(views)  # touching, not overlapping
    with pytest.raises(ValueError, match=r"g\[40\] shares memory with g\[3\]"):
        _validate.disjoint({**views, "g[40]": buf[350:360]})
    with pytest.raises(ValueError, match=r"g\[40\] shares memory with g\[7\]"):
        _validate.disjoint({**views, "g[40]": views["g[7]"]})
