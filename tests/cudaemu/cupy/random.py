"""``cupy.random`` of the stand-in: NumPy's generators, results in guarded device memory.

The numbers are NumPy's, not cuRAND's: a seed gives other values than on a GPU (no test
may compare them to CuPy's). ``dtype=`` is honoured as CuPy's (float32 draws directly where
NumPy's Generator can, else float64 rounded). Drawing while a stream captures is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._core import core as _core

_FLOAT_DIRECT = (np.dtype(np.float32), np.dtype(np.float64))


def _out(values: Any, dtype: Any = None) -> Any:
    a = np.asarray(values)
    if dtype is not None and a.dtype != np.dtype(dtype):
        a = a.astype(dtype)
    return _core._fresh(a, "cupy.random (a random-number kernel)")


class Generator:
    """``cupy.random.Generator`` over ``numpy.random.Generator``."""

    def __init__(self, bit_generator: Any = None):
        self._g = np.random.default_rng(bit_generator)

    def standard_normal(self, size: Any = None, dtype: Any = np.float64, out: Any = None):
        dt = np.dtype(dtype)
        if dt in _FLOAT_DIRECT:
            r = self._g.standard_normal(size, dtype=dt)
        else:
            r = self._g.standard_normal(size)
        return _into(out, _out(r, dt))

    def random(self, size: Any = None, dtype: Any = np.float64, out: Any = None):
        dt = np.dtype(dtype)
        r = self._g.random(size, dtype=dt) if dt in _FLOAT_DIRECT else self._g.random(size)
        return _into(out, _out(r, dt))

    def standard_exponential(
        self, size: Any = None, dtype: Any = np.float64, method="zig", out: Any = None
    ):
        dt = np.dtype(dtype)
        if dt in _FLOAT_DIRECT:
            r = self._g.standard_exponential(size, dtype=dt)
        else:
            r = self._g.standard_exponential(size)
        return _into(out, _out(r, dt))

    def integers(
        self,
        low: Any,
        high: Any = None,
        size: Any = None,
        dtype: Any = np.int64,
        endpoint: bool = False,
    ):
        return _out(self._g.integers(low, high, size, dtype=dtype, endpoint=endpoint))

    def uniform(
        self, low: float = 0.0, high: float = 1.0, size: Any = None, dtype: Any = np.float64
    ):
        return _out(self._g.uniform(low, high, size), dtype)

    def normal(
        self, loc: float = 0.0, scale: float = 1.0, size: Any = None, dtype: Any = np.float64
    ):
        return _out(self._g.normal(loc, scale, size), dtype)

    def permutation(self, x: Any, axis: int = 0):
        if isinstance(x, _core.ndarray):
            return x[_out(self._g.permutation(x.shape[axis]))]
        return _out(self._g.permutation(x))

    def choice(self, a: Any, size: Any = None, replace: bool = True, p: Any = None):
        return _out(self._g.choice(a, size, replace, p))

    def __getattr__(self, name: str) -> Any:
        f = getattr(self._g, name)
        if not callable(f) or name.startswith("_"):
            raise AttributeError(name)
        return lambda *a, **k: _out(f(*a, **k))


def _into(out: Any, r: Any) -> Any:
    if out is None:
        return r
    out[...] = r
    return out


def default_rng(seed: Any = None) -> Generator:
    return Generator(seed)


class RandomState:
    """``cupy.random.RandomState`` over ``numpy.random.RandomState``."""

    def __init__(self, seed: Any = None):
        self._rs = np.random.RandomState(seed)

    def seed(self, seed: Any = None) -> None:
        self._rs.seed(seed)

    def standard_normal(self, size: Any = None, dtype: Any = float):
        return _out(self._rs.standard_normal(size), dtype)

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Any = None, dtype: Any = float):
        return _out(self._rs.normal(loc, scale, size), dtype)

    def uniform(self, low: float = 0.0, high: float = 1.0, size: Any = None, dtype: Any = float):
        return _out(self._rs.uniform(low, high, size), dtype)

    def random_sample(self, size: Any = None, dtype: Any = float):
        return _out(self._rs.random_sample(size), dtype)

    random = random_sample

    def rand(self, *size: int, dtype: Any = float):
        return _out(self._rs.random_sample(size or None), dtype)

    def randn(self, *size: int, dtype: Any = float):
        return _out(self._rs.standard_normal(size or None), dtype)

    def randint(self, low: Any, high: Any = None, size: Any = None, dtype: Any = "l"):
        return _out(self._rs.randint(low, high, size, dtype=dtype))

    def permutation(self, x: Any):
        if isinstance(x, _core.ndarray):
            return x[_out(self._rs.permutation(x.shape[0]))]
        return _out(self._rs.permutation(x))

    def choice(self, a: Any, size: Any = None, replace: bool = True, p: Any = None):
        return _out(self._rs.choice(a, size, replace, p))


_global = RandomState()


def get_random_state() -> RandomState:
    return _global


def seed(seed: Any = None) -> None:
    _global.seed(seed)


def standard_normal(size: Any = None, dtype: Any = float):
    return _global.standard_normal(size, dtype)


def normal(loc: float = 0.0, scale: float = 1.0, size: Any = None, dtype: Any = float):
    return _global.normal(loc, scale, size, dtype)


def uniform(low: float = 0.0, high: float = 1.0, size: Any = None, dtype: Any = float):
    return _global.uniform(low, high, size, dtype)


def random_sample(size: Any = None, dtype: Any = float):
    return _global.random_sample(size, dtype)


random = ranf = sample = random_sample


def rand(*size: int, dtype: Any = float):
    return _global.rand(*size, dtype=dtype)


def randn(*size: int, dtype: Any = float):
    return _global.randn(*size, dtype=dtype)


def randint(low: Any, high: Any = None, size: Any = None, dtype: Any = "l"):
    return _global.randint(low, high, size, dtype)


def permutation(x: Any):
    return _global.permutation(x)


def choice(a: Any, size: Any = None, replace: bool = True, p: Any = None):
    return _global.choice(a, size, replace, p)
