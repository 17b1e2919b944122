"""The executable specification of the 8-bit-state updates (``gpugd.ops.optim8``), in NumPy.

Unlike ``gpugd.reference`` (float64), this one computes in float32, operation by operation
in the kernels' order (NumPy's float32 ufuncs round each operation once, as the Numba and
CUDA kernels do: no fused multiply-add in these rules, NVRTC's --fmad=false and the
emulator's -ffp-contract=off contract none), so it reproduces every code and every scale
bit for bit. Steps of one update, per quantization block of B elements:
  1. dequantize each state: s = qmap[code] · absmax (float32);
  2. apply the rule in float32 (p and the states);
  3. new absmax = max |s| over the block (NaN ignored);
  4. requantize: r = s · (1/absmax) (absmax 0: r = 0), code = nearest map entry (binary
     search over the sorted map, a tie to the lower entry).
Half-precision parameters (``step_mixed``): p and g are loaded as float32; the rule updates
p itself, or fp32 master weights when given, and p receives the new value rounded to its
format (float16: NumPy's round-to-nearest-even cast; bfloat16: to nearest even, or
stochastically with 16 bits of ``mix32(key, element index)``, written here on the bits).
Its float64 counterpart, the same rule without quantization, is ``gpugd.reference``.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def nearest_code(qmap: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Index of the entry of the sorted float32 ``qmap`` nearest to r: the largest i with
    qmap[i] ≤ r (0 if none, or r NaN), moved to i + 1 when qmap[i+1] − r < r − qmap[i]."""
    r = np.asarray(r, F32)
    i = np.clip(np.searchsorted(qmap, r, side="right") - 1, 0, 255)
    i = np.where(np.isnan(r), 0, i)
    up = np.minimum(i + 1, 255)
    with np.errstate(invalid="ignore"):
        closer = (qmap[up] - r) < (r - qmap[i])
    return np.where((i < 255) & closer, up, i).astype(np.uint8)


def _block_absmax(x: np.ndarray, block_size: int) -> np.ndarray:
    nb = -(-x.size // block_size)
    pad = np.zeros(nb * block_size, F32)
    a = np.abs(x)
    pad[: x.size] = np.where(np.isnan(a), F32(0), a)
    return pad.reshape(nb, block_size).max(axis=1) if nb else np.zeros(0, F32)


def quantize(x: np.ndarray, qmap: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8[n], absmax float32[blocks]) of float32 x."""
    x = np.asarray(x, F32).reshape(-1)
    absmax = _block_absmax(x, block_size)
    inv = F32(1) / np.where(absmax > 0, absmax, F32(1))  # one division per block
    with np.errstate(invalid="ignore", over="ignore"):
        r = x * np.repeat(inv, block_size)[: x.size]
    return nearest_code(qmap, r), absmax


def dequantize(codes: np.ndarray, absmax: np.ndarray, qmap: np.ndarray, block_size: int):
    """float32 qmap[code] · absmax of each element."""
    codes = np.asarray(codes).reshape(-1)
    scale = np.repeat(np.asarray(absmax, F32), block_size)[: codes.size]
    return qmap[codes] * scale


def _grad(g, gs, clip):
    d = np.asarray(g, F32) * F32(gs)
    d = np.where(d > F32(clip), F32(clip), d)
    return np.where(d < F32(-clip), F32(-clip), d)


def adam_rule(p, d, m, v, s):
    """Adam/AdamW in float32 (s: the kernel scalars, float32): decay, coupled decay, the
    moments, p − step_size·m/(√v·(1/√bc2) + ε)."""
    b1, omb1, b2, omb2, eps, wd_c, decay_mul, step_size, inv_bc2_sqrt = s
    p = p * decay_mul
    d = d + wd_c * p
    m = b1 * m + omb1 * d
    v = b2 * v + omb2 * (d * d)
    den = np.sqrt(v) * inv_bc2_sqrt + eps
    return p - step_size * m / den, m, v


def momentum_rule(p, d, buf, s):
    """SGD with momentum in float32: d = d + wd·p; buf = d (first) | μ·buf + (1−τ)·d;
    d = d + μ·buf (Nesterov) | buf; p − lr·d."""
    lr, wd, mom, omd, nesterov, first = s
    d = d + wd * p
    buf = d if first else mom * buf + omd * d
    d = d + mom * buf if nesterov else buf
    return p - lr * d, buf


def lion_rule(p, d, m, s):
    """Lion in float32 (lion-pytorch's): p·(1 − lr·wd) − lr·sign(β1·m + (1−β1)·d);
    m = β2·m + (1−β2)·d."""
    lr, b1, omb1, b2, omb2, decay_mul = s
    p = p * decay_mul
    p = p - lr * np.sign(b1 * m + omb1 * d)
    return p, b2 * m + omb2 * d


def rmsprop_rule(p, d, v, s):
    """RMSprop (not centered, no momentum) in float32: d = d + wd·p; v = α·v + (1−α)·d²;
    p − lr·d/(√v + ε)."""
    lr, wd, alpha, oma, eps = s
    d = d + wd * p
    v = alpha * v + oma * (d * d)
    return p - lr * d / (np.sqrt(v) + eps), v


def adagrad_rule(p, d, acc, s):
    """Adagrad in float32: d = d + wd·p; acc = acc + d²; p − clr·d/(√acc + ε)."""
    clr, wd, eps = s
    d = d + wd * p
    acc = acc + d * d
    return p - clr * d / (np.sqrt(acc) + eps), acc


RULES = {
    "adam": adam_rule,
    "momentum": momentum_rule,
    "lion": lion_rule,
    "rmsprop": rmsprop_rule,
    "adagrad": adagrad_rule,
}


def step(rule: str, p, g, states, scalars, grad_scale, clip, block_size, qmaps):
    """One 8-bit update on NumPy copies: p (float32), g, states as [(codes, absmax, signed)],
    the rule's float32 scalars. Returns (p, [(codes, absmax)]). Inputs are not modified."""
    s = [F32(x) if not isinstance(x, bool) else x for x in scalars]
    pv = np.asarray(p, F32).reshape(-1).copy()
    with np.errstate(all="ignore"):
        d = _grad(np.asarray(g).reshape(-1), grad_scale, clip)
        vals = [dequantize(c, a, qmaps[sg], block_size) for c, a, sg in states]
        pv, *new = RULES[rule](pv, d, *vals, s)
        out = [
            quantize(x, qmaps[sg], block_size) for x, (_, _, sg) in zip(new, states, strict=True)
        ]
    return pv, out


U32 = np.uint32


def mix32(key, index):
    """32 mixed bits of (key, element index): lowbias32 of the index's halves folded into
    the key (kernels/precision.cuh's mix32), in NumPy uint32 arithmetic (wrapping)."""
    i = np.asarray(index, np.int64).astype(np.uint64)
    lo = (i & np.uint64(0xFFFFFFFF)).astype(U32)
    hi = (i >> np.uint64(32)).astype(U32)
    with np.errstate(over="ignore"):
        z = (lo * U32(0x9E3779B9)) ^ U32(key) ^ (hi * U32(0x85EBCA6B))
        z ^= z >> U32(16)
        z *= U32(0x7FEB352D)
        z ^= z >> U32(15)
        z *= U32(0x846CA68B)
    return z ^ (z >> U32(16))


def round_bf16_bits(x: np.ndarray, key: int | None = None) -> np.ndarray:
    """uint16 bfloat16 bits of float32 x: (bits + 0x7FFF + lowest kept bit) >> 16 (nearest
    even), or (bits + 16 random bits of mix32(key, i)) >> 16 (stochastic); NaN → its quiet
    NaN, sign and top payload kept."""
    b = np.asarray(x, F32).reshape(-1).view(U32).astype(np.uint64)
    if key is None:
        add = np.uint64(0x7FFF) + ((b >> np.uint64(16)) & np.uint64(1))
    else:
        add = (mix32(key, np.arange(b.size)) & U32(0xFFFF)).astype(np.uint64)
    r = (b + add) >> np.uint64(16)
    nan = np.isnan(np.asarray(x, F32).reshape(-1))
    r = np.where(nan, (b >> np.uint64(16)) | np.uint64(0x0040), r)
    return r.astype(np.uint16)


def store_as(x: np.ndarray, dtype: np.dtype, key: int | None = None) -> np.ndarray:
    """float32 x stored in ``dtype`` (float32, float16, or bfloat16 as ml_dtypes names it)."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return np.asarray(x, F32).copy()
    if dtype == np.float16:
        return np.asarray(x, F32).astype(np.float16)
    return round_bf16_bits(x, key).view(dtype)


def step_mixed(rule, p, g, states, scalars, grad_scale, clip, block_size, qmaps, master=None,
               key=None):  # fmt: skip
    """``step`` with p and g in float32, float16 or bfloat16 and optional fp32 ``master``
    weights (which the rule then updates); ``key``: the (stream-mixed) stochastic-rounding key
    of bfloat16 p, None for nearest. Returns (p in its dtype, new master or None, states)."""
    p = np.asarray(p).reshape(-1)
    w = np.asarray(master if master is not None else p).reshape(-1).astype(F32)
    gf = np.asarray(g).reshape(-1).astype(F32)
    wn, out = step(rule, w, gf, states, scalars, grad_scale, clip, block_size, qmaps)
    return store_as(wn, p.dtype, key), (wn if master is not None else None), out
