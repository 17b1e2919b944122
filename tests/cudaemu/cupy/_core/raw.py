"""``cupy.RawModule``/``cupy.RawKernel`` of the stand-in: compiled and launched by the
emulator's runtime (``runtime.Module``: g++ against the CUDA shim, each thread a fiber).

Mirrored from ``cupy/_core/raw.pyx`` and ``cupy/cuda/function.pyx``:

- ``RawModule(*, code=None, path=None, options=(), ..., name_expressions=None)``: exactly
  one of ``code``/``path``, ``options`` a tuple; ``get_function(name)`` compiles and looks
  the kernel up at once (``func = ker.kernel``); ``RawKernel(code, name, options=())``
  compiles lazily, on first call;
- ``kernel(grid, block, args, *, shared_mem=0, stream=None)``: ``grid`` and ``block``
  must be tuples (``Function.__call__(self, tuple grid, tuple block, ...)``; an int is a
  TypeError), padded with 1s to three dimensions, and every dimension is raised to at least
  1 (``max(1, grid[0])``: a zero-block grid launches one block on a GPU, and here too);
  the stream is ``stream`` or else the current one;
- arguments (``_pointer``): ``None`` → a null ``intptr_t``; a ``cupy.ndarray`` → its data
  pointer (views' strides ignored); a NumPy array of size 1 → passed by value in its own
  dtype, of another size → TypeError; a Python int → int64 (uint64 from 2**63,
  ``_scalar.pyx``'s ``numpy_dtype_from_pyscalar``), a float → double, a bool → bool, a
  NumPy scalar → its own dtype. The runtime's ``pack`` then checks each against the
  kernel's parameter list, stricter than CuPy (which checks nothing).

While the target stream captures, the launch is recorded (arguments marshalled now, by
value, as a graph's kernel node holds them) instead of run.
Not emulated: ``path=`` (cubin/PTX), ``name_expressions`` (C++ template kernels),
cooperative launches, dynamic shared memory (the runtime refuses ``shared_mem > 0``).
"""

from __future__ import annotations

import importlib
import operator
from typing import Any

import numpy as np

from .. import _EMULATOR_PACKAGE
from ..cuda import memory as _memory
from ..cuda import stream as _stream
from .core import ndarray


def _runtime():
    return importlib.import_module(_EMULATOR_PACKAGE + ".runtime")


def _check_tuple(name: str, value: Any) -> None:
    if not isinstance(value, tuple):
        raise TypeError(
            f"Argument '{name}' has incorrect type (expected tuple, got {type(value).__name__})"
        )


def _dims(d: tuple) -> tuple[int, int, int]:
    t = (*d, 1, 1)[:3]
    return tuple(max(1, operator.index(v)) for v in t)  # function.pyx: max(1, grid[i])


_NUMPY_ARRAY_ARG = (
    "You are trying to pass a numpy.ndarray of shape {} as a kernel parameter. Only "
    "numpy.ndarrays of size one can be passed by value. If you meant to pass a pointer to "
    "__global__ memory, you need to pass a cupy.ndarray instead."
)


def _marshal(a: Any) -> Any:
    """One argument as ``function.pyx``'s ``_pointer`` sees it, in the form the runtime's
    ``pack`` takes (a device array, or a NumPy scalar of the marshalled type)."""
    if a is None:
        return np.intp(0)
    if type(a) is ndarray:
        return a
    if isinstance(a, _memory.MemoryPointer):
        return np.intp(a.ptr)
    if isinstance(a, np.ndarray):
        if a.size != 1:
            raise TypeError(_NUMPY_ARRAY_ARG.format(a.shape))
        return a.reshape(-1)[0]
    if type(a) is int and a >= 0x8000000000000000:
        return np.uint64(a)
    return a


class RawKernel:
    """One ``__global__`` function of a CUDA source, run by the emulator."""

    def __init__(
        self,
        code: str,
        name: str,
        options: tuple = (),
        backend: str = "nvrtc",
        *,
        translate_cucomplex: bool = False,
        enable_cooperative_groups: bool = False,
        jitify: Any = None,
    ):
        if not isinstance(code, str) or not isinstance(name, str):
            raise TypeError("RawKernel: code and name must be str")
        _check_tuple("options", options)
        if enable_cooperative_groups:
            raise NotImplementedError("stand-in: cooperative launches are not emulated")
        self.code, self.name, self.options, self.backend = code, name, options, backend
        self.translate_cucomplex = translate_cucomplex
        self.enable_cooperative_groups = enable_cooperative_groups
        self.jitify = jitify
        self.file_path = None
        self.name_expressions = None
        self.__name__ = name
        self._module: Any = None  # runtime.Module, shared with the RawModule that made it
        self._kernel: Any = None

    @property
    def kernel(self) -> Any:
        """The runtime's kernel (compiling the source on first use)."""
        if self._kernel is None:
            if self._module is None:
                self._module = _runtime().Module(self.code, self.options)
            self._kernel = self._module.get_function(self.name)
        return self._kernel

    def compile(self, log_stream: Any = None) -> None:
        self._kernel = None
        _ = self.kernel

    @property
    def attributes(self) -> dict[str, int]:
        """As CuPy's, with registers, shared and local memory from ptxas for sm_90."""
        st = self.kernel.static()
        return {
            "max_threads_per_block": 1024,
            "shared_size_bytes": st.smem,
            "const_size_bytes": 0,
            "local_size_bytes": st.stack,
            "num_regs": st.registers,
            "ptx_version": 90,
            "binary_version": 90,
            "cache_mode_ca": 0,
            "max_dynamic_shared_size_bytes": 0,
            "preferred_shared_memory_carveout": -1,
        }

    max_threads_per_block = property(lambda self: 1024)

    def __call__(
        self, grid: tuple, block: tuple, args: Any, *, shared_mem: int = 0, stream: Any = None
    ) -> None:
        _check_tuple("grid", grid)
        _check_tuple("block", block)
        shared_mem = operator.index(shared_mem)
        if shared_mem < 0:
            raise OverflowError("can't convert negative value to size_t")
        g, b = _dims(grid), _dims(block)
        k = self.kernel
        packed = k.pack(tuple(_marshal(a) for a in args))
        s = _stream.get_current_stream() if stream is None else stream
        if s._capture is not None:
            s._capture.append(_stream.KernelNode(k, g, b, shared_mem, packed))
        else:
            k.run(g, b, shared_mem, packed)

    def __repr__(self) -> str:
        return f"<stand-in cupy.RawKernel {self.name}>"


class RawModule:
    """The kernels of one CUDA source (``get_function(name)`` → ``RawKernel``)."""

    def __init__(
        self,
        *,
        code: str | None = None,
        path: str | None = None,
        options: tuple = (),
        backend: str = "nvrtc",
        translate_cucomplex: bool = False,
        enable_cooperative_groups: bool = False,
        name_expressions: Any = None,
        jitify: Any = None,
    ):
        if (code is None) == (path is None):
            raise TypeError("Exactly one of `code` and `path` keyword arguments must be given.")
        if path is not None:
            raise NotImplementedError("stand-in: RawModule(path=...) (cubin/PTX) is not emulated")
        if not isinstance(code, str):
            raise TypeError(
                f"Argument 'code' has incorrect type (expected str, got {type(code).__name__})"
            )
        _check_tuple("options", options)
        if name_expressions is not None:
            raise NotImplementedError(
                "stand-in: name_expressions (C++ template kernels) are not emulated"
            )
        if enable_cooperative_groups:
            raise NotImplementedError("stand-in: cooperative launches are not emulated")
        self.code, self.file_path, self.options, self.backend = code, None, options, backend
        self.name_expressions = None
        self.translate_cucomplex = translate_cucomplex
        self.enable_cooperative_groups = enable_cooperative_groups
        self.jitify = jitify
        self._module: Any = None

    @property
    def module(self) -> Any:
        if self._module is None:
            self._module = _runtime().Module(self.code, self.options)
        return self._module

    def compile(self, log_stream: Any = None) -> None:
        _ = self.module

    def get_function(self, name: str) -> RawKernel:
        if not isinstance(name, str):
            raise TypeError(
                f"Argument 'name' has incorrect type (expected str, got {type(name).__name__})"
            )
        ker = RawKernel(
            self.code,
            name,
            self.options,
            self.backend,
            translate_cucomplex=self.translate_cucomplex,
        )
        ker._module = self.module
        _ = ker.kernel  # raw.pyx: "register the kernel in the cache" (compiles, looks up)
        return ker

    def get_global(self, name: str) -> Any:
        raise NotImplementedError("stand-in: RawModule.get_global is not emulated")

    def __repr__(self) -> str:
        return "<stand-in cupy.RawModule>"


RawKernel.__module__ = RawModule.__module__ = "cupy"
