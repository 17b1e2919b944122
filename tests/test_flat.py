"""FlatParams: named views over one 64-byte-aligned buffer, gradient twin, states, adopt,
zero_grad; fused updates over the whole arena equal per-view updates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import to_numpy

from gpugd import ops
from gpugd.flat import ALIGN_BYTES, FlatParams

SHAPES = {"w1": (7, 5), "b1": (5,), "w2": (5, 3), "b2": (3,), "scalar": ()}


def _ptr(a) -> int:
    return a.data.ptr if hasattr(a.data, "ptr") else a.ctypes.data


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_views_are_aligned_disjoint_and_share_the_buffer(xp, dtype):
    flat = FlatParams(SHAPES, dtype, xp)
    assert flat.names == list(SHAPES) and flat.shapes() == SHAPES
    spans = []
    for name, shape in SHAPES.items():
        view, grad = flat[name], flat.grads[name]
        assert view.shape == shape and grad.shape == shape and view.dtype == dtype
        assert _ptr(view) % ALIGN_BYTES == 0 and _ptr(grad) % ALIGN_BYTES == 0
        assert xp.shares_memory(view, flat.data) if xp is np else True
        spans.append((_ptr(view), _ptr(view) + view.nbytes))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    flat["w2"][...] = 3.0
    assert float(to_numpy(flat.data).sum()) == 3.0 * 15


def test_zero_grad_and_states(xp):
    flat = FlatParams(SHAPES, np.float32, xp)
    flat.grad_data[...] = 7.0
    flat.zero_grad()
    assert not to_numpy(flat.grad_data).any()
    s = flat.new_state(fill=0.5)
    assert s["w1"].shape == (7, 5) and float(to_numpy(s["b2"]).min()) == 0.5
    assert _ptr(s.data) != _ptr(flat.data)


def test_adopt_copies_in_and_hands_back_views(xp):
    rng = np.random.default_rng(0)
    src = {k: xp.asarray(rng.standard_normal(s)) for k, s in SHAPES.items()}
    flat = FlatParams.adopt(src)
    assert flat.dtype == np.float64
    for k in SHAPES:
        np.testing.assert_array_equal(to_numpy(flat[k]), to_numpy(src[k]))
    flat["b1"][...] = 0  # views into the arena, not the originals
    assert to_numpy(src["b1"]).any()


def test_one_fused_step_over_the_arena_equals_per_view_steps(xp):
    rng = np.random.default_rng(1)
    a = FlatParams(SHAPES, np.float32, xp)
    a.data[...] = xp.asarray(rng.standard_normal(a.numel).astype(np.float32))
    a.grad_data[...] = xp.asarray(rng.standard_normal(a.numel).astype(np.float32))
    b = FlatParams.adopt({k: a[k].copy() for k in a})
    for k in a:
        b.grads[k][...] = a.grads[k]
    ma, va, mb, vb = a.new_state(), a.new_state(), b.new_state(), b.new_state()
    ops.adam_(a.data, a.grad_data, ma.data, va.data, lr=1e-2, step=1)
    for k in b:
        ops.adam_(b[k], b.grads[k], mb[k], vb[k], lr=1e-2, step=1)
    for k in a:
        np.testing.assert_array_equal(to_numpy(a[k]), to_numpy(b[k]))


def test_bad_input():
    with pytest.raises(TypeError, match="dtype: expected float32, float64, float16 or bfloat16"):
        FlatParams(SHAPES, np.int32)
    with pytest.raises(ValueError, match="shapes: expected at least one"):
        FlatParams({})
    with pytest.raises(ValueError, match="negative dimension"):
        FlatParams({"w": (3, -1)})
    with pytest.raises(KeyError, match="no parameter named 'w9'"):
        FlatParams(SHAPES)["w9"]
    with pytest.raises(TypeError, match="mixed dtypes"):
        FlatParams.adopt({"a": np.ones(3, np.float32), "b": np.ones(3)})
