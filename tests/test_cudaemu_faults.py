"""The emulated CUDA path can fail: faults planted in the kernels and in their launches are
each caught by the checks the suite runs (a wrong result against the float64 reference,
or a ``LaunchError`` from the emulator's launch checks, guard bytes and guard pages).

Each planted fault is a text edit of the source that ``gpugd._cuda`` hands the compiler
(``gpugd._kernels.resolved_source``), or a launch made the wrong way; the module cache is
cleared around each, so the real kernels are back for the next test. Emulator only: on a
device these faults would corrupt memory instead of being reported.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_rel_close, emulated

import gpugd._kernels
from gpugd import ops

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not emulated(), reason="planted faults run on the emulator only"),
]


@pytest.fixture
def plant(monkeypatch):
    """plant(family, old, new): compile ``family`` with ``old`` replaced by ``new`` (once,
    and it must be there) until the test ends."""
    from gpugd import _cuda

    real = gpugd._kernels.resolved_source

    def _plant(family: str, old: str, new: str) -> None:
        def mutated(path):
            text = real(path)
            if path.stem == family:
                assert text.count(old) >= 1, f"{old!r} not in {family}"
                text = text.replace(old, new, 1)
            return text

        monkeypatch.setattr(_cuda, "resolved_source", mutated)
        _cuda.clear_caches()

    yield _plant
    _cuda.clear_caches()


def _runtime():
    from cudaemu import runtime

    return runtime


def _ssq_matches_reference(x0: np.ndarray) -> None:
    import cupy

    got = ops.sum_of_squares(cupy.asarray(x0))
    assert_rel_close(got, np.sum(x0.astype(np.float64) ** 2), 1e-12, "sum_of_squares")


def test_the_unplanted_kernels_pass_the_same_checks():
    _ssq_matches_reference(np.random.default_rng(0).standard_normal(100_000).astype(np.float32))


def test_a_removed_syncthreads_is_caught(plant):
    # block_sum's barrier between the warps' partials in shared memory and their reads
    plant(
        "vector",
        "if (lane == 0) scratch[warp] = v;\n  __syncthreads();",
        "if (lane == 0) scratch[warp] = v;",
    )
    x0 = np.random.default_rng(1).standard_normal(100_000).astype(np.float32)
    caught = []
    for order in ("forward", "reverse", "shuffle"):  # the suite runs in each of them
        with _runtime().order(order):
            try:
                _ssq_matches_reference(x0)
            except AssertionError as exc:
                assert "sum_of_squares" in str(exc)
                caught.append(order)
    # a warp reads the partial of a warp that has not run yet: NaN poison in index order
    assert "forward" in caught


def _norms_case(cupy):
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal(n).astype(np.float32) for n in (700_000, 70_001)]
    for x in xs:
        x[::7] = 0.0  # the zero counts differ from the non-finite counts and the sums
    st = ops.tensor_norms([cupy.asarray(x) for x in xs])
    return [st.norms.get(), st.zero_counts.get(), st.nonfinite_counts.get()]


def _update_stats_case(cupy):
    from gpugd.ops.optim import adam_kernel

    rng = np.random.default_rng(6)
    ps = [cupy.asarray(rng.standard_normal(n).astype(np.float32)) for n in (700_000, 70_001)]
    gs = [cupy.asarray(rng.standard_normal(p.size).astype(np.float32)) for p in ps]
    ms = [cupy.zeros(p.size, cupy.float32) for p in ps]
    vs = [cupy.zeros(p.size, cupy.float32) for p in ps]
    k = adam_kernel(lr=1e-2)
    t = k.tensors(ps, gs, {"exp_avg": ms, "exp_avg_sq": vs})
    return [t.launch("adam", (*k.scalars, k.grad_scale, k.clip), None, stats=True).get()]


def _bn_backward_case(cupy):
    rng = np.random.default_rng(7)
    x = cupy.asarray(rng.standard_normal((64, 3, 33, 17)).astype(np.float32))
    dy = cupy.asarray(rng.standard_normal((64, 3, 33, 17)).astype(np.float32))
    mean, var = ops.batch_norm_stats(x)
    out = ops.batch_norm_backward(
        dy, x, cupy.ones(3, cupy.float32), mean, 1 / cupy.sqrt(var + 1e-5)
    )
    return [a.get() for a in (out if isinstance(out, tuple) else (out,))]


# Write-after-read races on a block's shared scratch: the next block_sum (or the next chunk's
# first one) overwrites partials warp 0 may still be reading. They show when one warp runs
# ahead of warp 0 (the emulator runs each warp to its next barrier before the next warp) and,
# for the loop-end barriers, when a block loops over several chunks (a small grid).
BARRIERS = {
    "reduce-between-block-sums": (
        "reduce",
        "ssq = block_sum(ssq, scratch);\n    __syncthreads();",
        "ssq = block_sum(ssq, scratch);",
        _norms_case,
    ),
    "reduce-end-of-chunk": (
        "reduce",
        "      partial[3 * c + 2] = zeros;\n    }\n    __syncthreads();",
        "      partial[3 * c + 2] = zeros;\n    }",
        _norms_case,
    ),
    "optim-stats-between-block-sums": (
        "optim",
        "const double pn = block_sum(st[0], scratch);\n    __syncthreads();",
        "const double pn = block_sum(st[0], scratch);",
        _update_stats_case,
    ),
    "optim-stats-end-of-chunk": (
        "optim",
        "      chunk_stats[2 * c + 1] = dp;\n    }\n    __syncthreads();",
        "      chunk_stats[2 * c + 1] = dp;\n    }",
        _update_stats_case,
    ),
    "batchnorm-sums-between-block-sums": (
        "batchnorm",
        "s1 = block_sum(s1, scratch);\n  __syncthreads();",
        "s1 = block_sum(s1, scratch);",
        _bn_backward_case,
    ),
}


@pytest.mark.parametrize("name", BARRIERS)
def test_a_removed_barrier_before_shared_memory_is_reused_is_caught(plant, monkeypatch, name):
    import cupy

    from gpugd import _cuda

    family, old, new, case = BARRIERS[name]
    monkeypatch.setattr(_cuda, "sm_count", lambda: 1)  # 8 blocks: each loops over chunks
    want = case(cupy)  # the real kernels
    plant(family, old, new)
    wrong = []
    for order in ("forward", "reverse", "shuffle"):  # the suite runs in each of them
        with _runtime().order(order, 3):
            got = case(cupy)
        if any(a.tobytes() != b.tobytes() for a, b in zip(want, got, strict=True)):
            wrong.append(order)
    assert wrong, f"{name}: the race went unnoticed in every order"


def test_template_shared_memory_is_poisoned_and_exited_threads_do_not_pass_a_barrier():
    """__shared__ inside a template (g++ drops its section attribute) is NaN-poisoned before
    every block like the rest; a barrier that some threads of the block skip by returning
    is an error, not a pass."""
    import cupy

    runtime = _runtime()
    src = r"""
    template <typename T> __device__ void body(T* out) {
      __shared__ T s[32];
      out[blockIdx.x * 32 + threadIdx.x] = s[threadIdx.x];  // read before any write
      s[threadIdx.x] = T(blockIdx.x + 1);
    }
    extern "C" __global__ void unwritten(float* out) { body<float>(out); }
    extern "C" __global__ void early_exit(float* x) {
      if (threadIdx.x >= 32) return;
      __syncthreads();
      x[threadIdx.x] = 1.f;
    }
    """
    mod = runtime.Module(src, (), "templ.cu")
    out = cupy.zeros(96, cupy.float32)
    k = mod.get_function("unwritten")
    k.run((3, 1, 1), (32, 1, 1), 0, k.pack((out,)))
    assert np.isnan(out.get()).all()  # neither zeros nor the previous block's values
    k = mod.get_function("early_exit")
    with pytest.raises(runtime.LaunchError, match=r"__syncthreads\(\) at line .* exited"):
        k.run((1, 1, 1), (64, 1, 1), 0, k.pack((out,)))


def test_a_tail_bound_off_by_one_is_caught(plant):
    import cupy

    # the one-at-a-time tail of common.cuh's stream_items, which every streaming loop runs
    plant(
        "vector",
        "for (; i < m; i += stride) apply(i, load(i));",
        "for (; i <= m; i += stride) apply(i, load(i));",
    )
    for n in (1027, 1024):  # the write lands in the canary slack, or on the guard page
        x = cupy.asarray(np.ones(n, np.float32))
        with pytest.raises(_runtime().LaunchError, match="gpugd_vector_scale_f32"):
            ops.scale_(x, 2.0)


def test_a_read_past_the_end_is_caught(plant):
    plant(  # the read-only sum of squares: its last pack, one past the end
        "vector",
        "for (; i < m; i += stride) apply(i, load(i));",
        "for (; i <= m; i += stride) apply(i, load(i));",
    )
    # 1024 float32: the array ends at a guard page, so the extra read faults
    x0 = np.ones(1024, np.float32)
    with pytest.raises(_runtime().LaunchError, match=r"invalid memory access.*past the end"):
        _ssq_matches_reference(x0)


def test_two_swapped_launch_arguments_are_caught():
    import cupy

    from gpugd import _cuda

    n = 4099
    rng = np.random.default_rng(2)
    x0, y0 = rng.standard_normal((2, n)).astype(np.float32)
    x, y = cupy.asarray(x0), cupy.asarray(y0)
    k = "gpugd_vector_axpy_f32"
    # the scalar and the count swapped: refused before anything runs, naming the parameter
    with pytest.raises(_runtime().LaunchError, match=r"parameter 1 `float a`"):
        _cuda.launch("vector", k, n, (x, np.int64(n), y, np.float32(0.5)))
    np.testing.assert_array_equal(x.get(), x0)
    # the two arrays swapped: same types, so it runs, and the reference check catches it
    _cuda.launch("vector", k, n, (y, np.float32(0.5), x, np.int64(n)))
    with pytest.raises(AssertionError, match="axpy"):
        assert_rel_close(x, x0.astype(np.float64) + 0.5 * y0, 1e-6, "axpy")


def test_a_python_float_for_a_float_parameter_is_caught():
    import cupy

    from gpugd import _cuda

    x = cupy.asarray(np.ones(10, np.float32))
    with pytest.raises(_runtime().LaunchError, match=r"`float a`.*Python float"):
        _cuda.launch("vector", "gpugd_vector_scale_f32", 10, (x, 2.0, np.int64(10)))
    with pytest.raises(_runtime().LaunchError, match=r"`i64 n`.*int32"):
        _cuda.launch("vector", "gpugd_vector_scale_f32", 10, (x, np.float32(2), np.int32(10)))
    with pytest.raises(_runtime().LaunchError, match=r"`float\* x`.*float64"):
        y = cupy.asarray(np.ones(10))
        _cuda.launch("vector", "gpugd_vector_scale_f32", 10, (y, np.float32(2), np.int64(10)))
    np.testing.assert_array_equal(x.get(), np.ones(10, np.float32))


def test_a_divergent_barrier_and_a_bad_warp_mask_are_caught():
    import cupy

    runtime = _runtime()
    src = r"""
    extern "C" __global__ void div_barrier(float* x) {
      if (threadIdx.x < 16) { __syncthreads(); x[threadIdx.x] = 1.f; }
      else { x[threadIdx.x] = 2.f; __syncthreads(); }
    }
    extern "C" __global__ void partial_warp(float* x) {
      x[threadIdx.x] = __shfl_down_sync(0xffffffffu, x[threadIdx.x], 1);
    }
    """
    mod = runtime.Module(src, (), "planted.cu")
    x = cupy.zeros(64, cupy.float32)
    k = mod.get_function("div_barrier")
    with pytest.raises(runtime.LaunchError, match="divergent __syncthreads"):
        k.run((1, 1, 1), (64, 1, 1), 0, k.pack((x,)))
    k = mod.get_function("partial_warp")
    with pytest.raises(runtime.LaunchError, match=r"names lane .* beyond the block"):
        k.run((1, 1, 1), (48, 1, 1), 0, k.pack((x,)))


def test_orders_and_shared_poison_expose_a_race():
    """A kernel that reads a neighbour's shared slot without a barrier is right in one order
    by luck and wrong in another: the order passes exist to show it."""
    import cupy

    runtime = _runtime()
    src = r"""
    extern "C" __global__ void racy(float* out) {
      __shared__ float s[64];
      s[threadIdx.x] = static_cast<float>(threadIdx.x);
      out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
    }
    """
    k = runtime.Module(src, (), "race.cu").get_function("racy")
    want = (np.arange(64, dtype=np.float32) + 1) % 64
    results = {}
    for order in ("forward", "reverse"):
        out = cupy.zeros(64, cupy.float32)
        with runtime.order(order):
            k.run((1, 1, 1), (64, 1, 1), 0, k.pack((out,)))
        results[order] = out.get()
    assert not all(np.array_equal(r, want) for r in results.values())
    assert np.isnan(results["forward"][:63]).all()  # read before written: the NaN poison
