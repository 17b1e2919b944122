"""The tensor table of the multi-tensor path, the same layout on both backends.

``table`` is int64 of shape (7, T): rows hold the addresses of p, g and up to three states
(0: state unused), then each tensor's element count, then (``OUT_ROW``) the addresses of
half-precision parameters that receive round(p) when p is an fp32 master copy (0: none).
``tasks`` is (n_tasks, 2): (tensor, first element) of every chunk of at most ``chunk``
elements. The CUDA ``apply_table`` (kernels/optim.cu) reads both from device memory; the
Numba mirror (``gpugd._cpu.tensor_table``) from host memory. The caller keeps every listed
array alive while a kernel runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._validate import address

ROWS = 7  # p, g, s0, s1, s2, sizes, out
SIZE_ROW = 5
OUT_ROW = 6


def build(
    rows: Sequence[Sequence[Any] | None],
    address: Callable[[Any], int],
    out: Sequence[Any] | None = None,
) -> np.ndarray:
    """The (7, T) table of ``rows`` = [ps, gs, states...] (up to 5 rows, None: unused) and
    the optional ``out`` row."""
    return from_addresses(
        [None if row is None else [address(a) for a in row] for row in rows],
        [a.size for a in rows[0]],
        None if out is None else [address(a) for a in out],
    )


def from_addresses(
    rows: Sequence[Sequence[int] | None], sizes: Sequence[int], out: Sequence[int] | None = None
) -> np.ndarray:
    """``build``'s table from the rows' addresses already read (None: unused row)."""
    table = np.zeros((ROWS, len(sizes)), np.int64)
    for r, row in enumerate(rows):
        if row is not None:
            table[r] = row
    table[SIZE_ROW] = sizes
    if out is not None:
        table[OUT_ROW] = out
    return table


def tasks(sizes: Sequence[int], chunk: int) -> np.ndarray:
    """(tensor, first element) of every chunk of at most ``chunk`` elements, in order;
    empty tensors get none."""
    sizes = np.asarray(sizes, np.int64)
    counts = -(-sizes // chunk)
    t = np.repeat(np.arange(sizes.size, dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    lo = (np.arange(t.size, dtype=np.int64) - np.repeat(first, counts)) * chunk
    return np.stack([t, lo], axis=1)


def on_device(
    rows: Sequence[Sequence[Any] | None], chunk: int, out: Sequence[Any] | None = None
) -> tuple:
    """The CUDA launch's tables of CuPy ``rows`` in device memory: (table, tasks, task
    count, index of each tensor's first task (T + 1 entries))."""
    import cupy

    sizes = [a.size for a in rows[0]]
    chunks = tasks(sizes, chunk)
    counts = -(-np.asarray(sizes, np.int64) // chunk)
    first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    table = build(rows, address, out)
    return cupy.asarray(table), cupy.asarray(chunks), len(chunks), cupy.asarray(first)
