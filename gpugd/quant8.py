"""Blockwise 8-bit optimizer states (Dettmers et al., "8-bit Optimizers via Block-wise
Quantization", arXiv 2110.02861): the dynamic code maps and the state layout.

A state tensor of n elements is stored as n uint8 codes and one float32 scale per block of
``B`` elements (the block's absolute maximum). Element i of block b stands for
``qmap[code_i] · absmax_b``. Quantizing x: r = x · (1/absmax_b) (absmax 0: r = 0), then the
code of the entry of the (sorted) map nearest to r — found by a binary search over the 256
entries; a tie goes to the lower entry.

Dynamic tree maps (the paper's Section 2.1; the same entries as bitsandbytes'
``create_dynamic_map``, built here in float64 from the definition): after the sign bit,
the number of leading zero bits e sets a decimal exponent 10^(e − 6), and the bits after the
first one a linear fraction in (0.1, 1): each exponent level i = 0..6 holds the midpoints
of the 2^i (signed) or 2^(i+1) (unsigned) equal intervals of [0.1, 1], scaled by 10^(i − 6).
Signed: 127 positive entries, their negatives, 0 and 1 (256); unsigned: 254 positive entries,
0 and 1. The range spans 5.5e-7 .. 1 with ~2 significant digits near each magnitude, which
is what Adam's moments need (m signed, v ≥ 0 unsigned).

Block size: ``BLOCK = 2048`` by default, the paper's choice: the float32 scale costs 4/2048 B
per element (0.2% of a byte; 1.6% at 256), and one CUDA thread block of 256 threads holds a
quantization block in registers (8 elements per thread), so the absmax is a block reduction,
not a second pass. ``256`` is supported (one element per thread: finer scales for outliers).
States of tensors smaller than ``MIN_8BIT = 4096`` elements stay float32 (as bitsandbytes'
``min_8bit_size``): their scales and the launch would cost more than the bytes saved.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

BLOCK = 2048
BLOCK_SIZES = (256, 2048)
MIN_8BIT = 4096
EXPONENT_LEVELS = 7
# the optimizer states kept in 8 bits (gpugd.optim, state_bits=8) and whether each uses the
# signed map; an 8-bit state "s" is stored as "s.codes" (uint8) and "s.absmax" (float32)
SIGNED_STATES = {
    "exp_avg": True,
    "momentum_buffer": True,
    "exp_avg_sq": False,
    "square_avg": False,
    "sum": False,
}
CODES, ABSMAX = ".codes", ".absmax"


@functools.lru_cache(maxsize=2)
def dynamic_map(signed: bool) -> np.ndarray:
    """The 256 entries of the dynamic tree map, sorted, float64 (see the module text)."""
    data: list[float] = []
    for i in range(EXPONENT_LEVELS):
        items = 2**i if signed else 2 ** (i + 1)
        bounds = np.linspace(0.1, 1.0, items + 1)
        means = (bounds[:-1] + bounds[1:]) / 2.0 * 10.0 ** (i - (EXPONENT_LEVELS - 1))
        data += means.tolist()
        if signed:
            data += (-means).tolist()
    data += [0.0, 1.0]
    assert len(data) == 256
    out = np.array(sorted(data), np.float64)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=2)
def code_map(signed: bool) -> np.ndarray:
    """The map the kernels use: ``dynamic_map`` rounded once to float32 (read-only)."""
    out = dynamic_map(signed).astype(np.float32)
    out.setflags(write=False)
    return out


def blocks(n: int, block_size: int = BLOCK) -> int:
    """Number of quantization blocks of an n-element state."""
    return -(-int(n) // block_size)


def check_block_size(block_size: Any) -> int:
    if isinstance(block_size, bool) or block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size: expected one of {BLOCK_SIZES}, got {block_size!r}")
    return int(block_size)


def use_8bit(numel: int, min_8bit: int = MIN_8BIT) -> bool:
    """Whether a state of ``numel`` elements is kept in 8 bits (else float32)."""
    return int(numel) >= min_8bit


def zeros(n: int, signed: bool, block_size: int = BLOCK, xp: Any = np) -> tuple[Any, Any]:
    """An all-zero 8-bit state: (codes uint8[n] all the map's 0 entry, absmax float32 zeros)."""
    zero = int(np.searchsorted(dynamic_map(signed), 0.0))
    return xp.full(int(n), zero, xp.uint8), xp.zeros(blocks(n, block_size), xp.float32)


def quantize(x: Any, signed: bool, block_size: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(codes, absmax) of a float32 state, blockwise, in float32 arithmetic as the kernels
    do it (``gpugd.reference8.quantize``); NumPy arrays."""
    from .reference8 import quantize as q

    return q(np.asarray(x, np.float32), code_map(signed), check_block_size(block_size))


def dequantize(codes: Any, absmax: Any, signed: bool, block_size: int = BLOCK) -> np.ndarray:
    """float32 values ``qmap[code] · absmax`` of an 8-bit state (NumPy)."""
    from .reference8 import dequantize as dq

    return dq(np.asarray(codes), np.asarray(absmax), code_map(signed), block_size)
