"""Load ``kernels/*.cu`` through ``cupy.RawModule`` on first use, cached per device.

Only imported when an op receives CuPy arrays, so CuPy is never imported on the CPU path.
Every kernel is ``extern "C"`` and named ``gpugd_<family>_<op>[_<dtype>]``.

The arithmetic contract with the Numba kernels (README, "The same numbers on both
backends"): the launch arguments are the scalars the Numba kernels get, computed once on
the host in float64 and rounded once to the arrays' dtype (``ops.optim.Kernel.scalars``),
every a·b + c the kernels mean to fuse is an explicit ``fma``, and NVRTC fuses nothing else
(``--fmad=false``, ``NVRTC_OPTIONS``): elementwise kernels without transcendentals give the
same bits on both backends; transcendentals agree within a few ulps; reductions are
deterministic and agree within 1e-13 (``tests/test_cuda_parity.py``). CuPy checks no
argument (a Python float passed for a ``float`` parameter is read as garbage): pass NumPy
scalars of the parameter's exact type; the emulated suite refuses anything else.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import cupy

from . import _grid
from ._kernels import NVRTC_OPTIONS, kernel_sources, resolved_source

THREADS = _grid.THREADS  # threads per block of every gpugd launch

_DTYPE_SUFFIX = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}


def dtype_suffix(dtype: Any) -> str:
    """Kernel name suffix for a dtype ("f32", "f64", "f16", "bf16")."""
    return _DTYPE_SUFFIX[cupy.dtype(dtype).name]


@functools.cache
def _module(family: str, device_id: int) -> cupy.RawModule:
    sources = kernel_sources()
    if family not in sources:
        raise KeyError(f"no kernel family {family!r}; have {sorted(sources)}")
    # Headers pasted in: CuPy's disk cache is keyed by this text, so it sees header edits.
    return cupy.RawModule(code=resolved_source(sources[family]), options=NVRTC_OPTIONS)


@functools.cache
def _kernel(family: str, name: str, device_id: int) -> cupy.RawKernel:
    # CuPy's RawModule.get_function builds a new RawKernel (cuModuleGetFunction) per call
    return _module(family, device_id).get_function(name)


_launches = [0]
_launches_lock = threading.Lock()  # gpugd may launch from several host threads


class CountedKernel:
    """A ``cupy.RawKernel`` whose calls are counted (``launch_count``, under a lock); every
    other attribute, read or set, is the kernel's (``k.max_dynamic_shared_size_bytes = n``
    sets the kernel's)."""

    __slots__ = ("raw",)

    def __init__(self, raw: cupy.RawKernel):
        object.__setattr__(self, "raw", raw)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with _launches_lock:
            _launches[0] += 1
        return self.raw(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.raw, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self.raw, attr, value)


@functools.cache
def _counted(family: str, name: str, device_id: int) -> CountedKernel:
    return CountedKernel(_kernel(family, name, device_id))


def get_kernel(family: str, name: str) -> CountedKernel:
    """The compiled kernel ``name`` of ``kernels/<family>.cu`` on the current device (looked
    up once per device); its launches are counted."""
    return _counted(family, name, cupy.cuda.Device().id)


def launch_count() -> int:
    """Kernel launches gpugd has made in this process (stream-captured ones included; a
    graph replay is not a kernel launch): ``gpugd bench`` counts a call's launches with it."""
    return _launches[0]


def clear_caches() -> None:
    """Forget every loaded module and kernel (the next launch compiles again)."""
    _resident_blocks.cache_clear()
    _counted.cache_clear()
    _kernel.cache_clear()
    _module.cache_clear()


@functools.cache
def _sm_count(device_id: int) -> int:
    return int(cupy.cuda.Device(device_id).attributes["MultiProcessorCount"])


def sm_count() -> int:
    """Multiprocessor count of the current device."""
    return _sm_count(cupy.cuda.Device().id)


@functools.cache
def _resident_blocks(family: str, name: str, threads: int, device_id: int) -> int:
    fn = _kernel(family, name, device_id).kernel
    return int(cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.ptr, threads, 0))


def resident_blocks(family: str, name: str, threads: int = THREADS) -> int:
    """Blocks of kernel ``name`` one multiprocessor holds at once with ``threads`` per block
    (the driver's occupancy calculation from the kernel's registers and shared memory),
    at least 1; asked once per kernel and device."""
    return max(1, _resident_blocks(family, name, threads, cupy.cuda.Device().id))


def max_blocks(family: str, name: str, threads: int = THREADS) -> int:
    """One full wave of kernel ``name``: multiprocessors × its resident blocks on each. A
    grid-stride launch of more blocks would leave a last, partial wave."""
    return sm_count() * resident_blocks(family, name, threads)


def grid_for(
    family: str, name: str, n: int, threads: int = THREADS, per_thread: int = _grid.PER_THREAD
) -> int:
    """Blocks for a grid-stride launch of kernel ``name`` over ``n`` items: enough to cover
    ``n`` with ``per_thread`` items per thread, at most one full wave (``max_blocks``;
    ``gpugd._grid.stride_blocks``)."""
    return _grid.stride_blocks(n, max_blocks(family, name, threads), threads, per_thread)


def chunk_grid(family: str, name: str, nchunks: int) -> int:
    """Blocks for a chunked launch of kernel ``name`` over ``nchunks`` block-tasks: one per
    chunk, at most one full wave (``gpugd._grid.chunk_blocks``)."""
    return _grid.chunk_blocks(nchunks, max_blocks(family, name))


def launch(family: str, name: str, n: int, args: tuple, per_thread: int = _grid.PER_THREAD) -> int:
    """Launch ``name`` with a grid-stride grid sized for ``n`` items; return the block count."""
    blocks = grid_for(family, name, n, THREADS, per_thread)
    get_kernel(family, name)((blocks,), (THREADS,), args)
    return blocks
