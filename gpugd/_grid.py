"""The launch policies of the CUDA kernels: how many blocks a launch asks for, as pure
functions of the work and of one wave (multiprocessors × the kernel's resident blocks).

``gpugd._cuda`` sizes its launches with them (``grid_for``, ``chunk_grid``) and
``benchmarks/gpu_model.py`` predicts grids with the same ones (``kernel_blocks``), without
CuPy or a device. Nothing here imports CuPy.
"""

from __future__ import annotations

import re

THREADS = 256  # threads per block of every gpugd launch
PER_THREAD = 4  # items per thread a grid-stride launch is sized for (``_cuda.launch``)
SSQ_PER_THREAD = 8  # the sums of squares' stage 1 (``ops.vector``)


def stride_blocks(n: int, wave: int, threads: int = THREADS, per_thread: int = PER_THREAD) -> int:
    """A grid-stride launch over ``n`` items: ceil(n / (threads·per_thread)) blocks, at
    least 1, at most one wave."""
    need = -(-max(n, 1) // (threads * per_thread))
    return max(1, min(need, wave))


def chunk_blocks(nchunks: int, wave: int) -> int:
    """A chunked launch (one block-task per chunk of a tensor table): a block per chunk, at
    least 1, at most one wave."""
    return max(1, min(nchunks, wave))


_SSQ = re.compile(r"^gpugd_vector_(scale_)?sum_of_squares_partial_")
_STATS = re.compile(r"^gpugd_reduce_stats_partial_")
_MULTI = re.compile(r"^gpugd_optim_\w+_(multi|graph)_")
_OPTIM8 = re.compile(r"^gpugd_optim8_\w+_b(\d+)_")


def kernel_blocks(name: str, n: int, wave: int) -> int | None:
    """The blocks gpugd launches kernel ``name`` with over one tensor of ``n`` elements when
    a wave is ``wave`` blocks: the chunked kernels (``stats_partial``: ``ops.reduce.CHUNK``;
    the multi-tensor and graph optimizer kernels: ``ops.optim.CUDA_CHUNK``) a block per
    chunk; the 8-bit-state optimizers (``gpugd_optim8_<rule>_b<B>_f32``) a block per
    quantization block of B elements; the sums of squares' stage 1 at 8 items per thread, at most
    ``ops.vector._SSQ_BLOCKS_MAX``; every other streaming kernel at 4 items per thread
    (``_cuda.launch``). None for batch norm, whose grid is its tiling of the shape."""
    if name.startswith("gpugd_batchnorm_"):
        return None
    if _STATS.match(name):
        from .ops.reduce import CHUNK

        return chunk_blocks(-(-n // CHUNK), wave)
    if _MULTI.match(name):
        from .ops.optim import CUDA_CHUNK

        return chunk_blocks(-(-n // CUDA_CHUNK), wave)
    m = _OPTIM8.match(name)
    if m:
        return chunk_blocks(-(-n // int(m[1])), wave)
    if _SSQ.match(name):
        from .ops.vector import _SSQ_BLOCKS_MAX

        return min(stride_blocks(n, wave, per_thread=SSQ_PER_THREAD), _SSQ_BLOCKS_MAX)
    return stride_blocks(n, wave)
