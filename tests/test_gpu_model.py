"""The GPU performance model (benchmarks/gpu_model.py) and `gpugd bench --backend cuda`'s
measured-against-predicted columns, the latter run on the emulated CUDA path."""

from __future__ import annotations

import pytest

from benchmarks import gpu_model
from gpugd import kernel_report as kr


def test_prediction_is_bytes_over_bandwidth_plus_launches():
    assert gpu_model.predicted_s(4.3e12, 0) == pytest.approx(1.0)
    assert gpu_model.predicted_s(0, 3) == pytest.approx(3 * gpu_model.LAUNCH_S)
    assert gpu_model.predicted_s(2e9, 1, gbps=1000.0) == pytest.approx(2e-3 + gpu_model.LAUNCH_S)
    with pytest.raises(ValueError):
        gpu_model.predicted_s(1, 1, gbps=0.0)
    f = gpu_model.prediction(8_600_000, 2, 1e-3, 2150.0)
    assert f["launches"] == 2
    assert f["predicted_s"] == pytest.approx(2e-6 + 8e-6)
    assert f["measured_over_predicted"] == pytest.approx(1e-3 / 10e-6)
    assert f["predicted_at_ceiling_s"] == pytest.approx(4e-6 + 8e-6)


def test_kernel_rows_grid_waves_and_in_flight():
    loop = kr.Loop(30, 64, 32, 64, (16,), (16,), 96)
    st = kr.KernelStats(
        "gpugd_vector_axpy_f32", "vector", "sm_90", 30, 0, 0, 0, 0, {16: 6}, {16: 3}, 0, loop
    )
    rows = gpu_model.kernel_rows([st], sizes=(1 << 12, 1 << 28))
    small, big = rows
    assert small["grid"] == 4 and big["grid"] == 132 * 8  # one wave at most
    assert big["bytes"] == 12 << 28
    assert big["predicted_us"] == pytest.approx((12 << 28) / 4.3e12 * 1e6 + 4.0)
    # 96 B per iteration / 12 B per element = 8 elements per thread per iteration
    assert big["iterations_per_thread"] == -(-(1 << 28) // (132 * 8 * 256 * 8))
    assert big["in_flight_kb_per_sm"] == 64 * 256 * 8 / 1024
    assert "| gpugd_vector_axpy_f32 | 2^28 |" in gpu_model.format_rows(rows)


def _stats(name: str, family: str, registers: int = 30) -> kr.KernelStats:
    loop = kr.Loop(30, 64, 32, 64, (16,), (16,), 96)
    return kr.KernelStats(name, family, "sm_90", registers, 0, 0, 0, 0, {16: 6}, {16: 3}, 0, loop)


def test_kernel_rows_take_each_kernels_launch_policy():
    """The chunked kernels launch a block per 65,536-element chunk, the sums of squares 8
    elements per thread up to 1024 blocks, the rest 4 per thread; one wave at most."""
    names = [
        ("gpugd_optim_adam_multi_f32", "optim"),
        ("gpugd_optim_sgd_graph_f32", "optim"),
        ("gpugd_reduce_stats_partial_f32", "reduce"),
        ("gpugd_vector_sum_of_squares_partial_f32", "vector"),
        ("gpugd_vector_scale_f32", "vector"),
        ("gpugd_batchnorm_affine_f32", "batchnorm"),
    ]
    sizes = (1 << 16, 1 << 20, 1 << 28)
    rows = gpu_model.kernel_rows([_stats(n, f) for n, f in names], sizes=sizes)
    grid = {(r["kernel"], r["numel"]): r["grid"] for r in rows}
    wave = 132 * 8
    for name in names[:3]:
        assert [grid[name[0], n] for n in sizes] == [1, 16, wave], name
    assert [grid[names[3][0], n] for n in sizes] == [32, 512, 1024]
    assert [grid[names[4][0], n] for n in sizes] == [64, 1024, wave]
    assert [grid[names[5][0], n] for n in sizes] == [None] * 3


@pytest.mark.cuda
def test_model_grids_are_the_grids_the_library_launches(monkeypatch):
    """On the emulated H200 (132 SMs, ptxas's occupancy) the grid each op launches is
    gpugd._grid.kernel_blocks's for its kernel: the model predicts the launches it times."""
    import cupy

    from gpugd import _cuda, _grid, ops

    seen: list[tuple[str, int]] = []
    call = _cuda.CountedKernel.__call__

    def record(self, grid, block, args, **kw):
        seen.append((self.raw.name, int(grid[0])))
        return call(self, grid, block, args, **kw)

    monkeypatch.setattr(_cuda.CountedKernel, "__call__", record)
    family = {"vector": "vector", "reduce": "reduce", "optim": "optim"}
    for n in (3, (1 << 16) + 5, 1 << 18):
        x = cupy.ones(n, cupy.float32)
        y = cupy.ones(n, cupy.float32)
        seen.clear()
        ops.axpy_(y, 2.0, x)
        ops.sum_of_squares(x)
        ops.tensor_norms([x])
        ops.sgd_([x], [y], [cupy.zeros_like(x)], lr=0.1, momentum=0.9)
        checked = set()
        for name, blocks in seen:
            fam = family.get(name.split("_")[1])
            want = _grid.kernel_blocks(name, n, _cuda.max_blocks(fam, name)) if fam else None
            if want is None or "finish" in name or "tensors" in name or "partials" in name:
                continue
            assert blocks == want, (name, n, blocks, want)
            checked.add(name.split("_")[2])
        assert checked >= {"axpy", "sum", "stats", "sgd"}, (n, seen)


@pytest.mark.cuda
def test_cuda_bench_counts_launches_and_prints_measured_over_predicted(capsys):
    import benchmarks
    from gpugd import get_backend

    out = benchmarks.run(get_backend("cuda"), suite="vector", quick=True, numel=4096)
    rows = {r["kernel"]: r for r in out["rows"]}
    assert rows["axpy_"]["launches"] == 1 and rows["scale_"]["launches"] == 1
    assert rows["sum_of_squares"]["launches"] == 2  # per-block partials, then their sum
    for r in rows.values():
        want = r["bytes"] / (gpu_model.COPY_GBPS * 1e9) + r["launches"] * gpu_model.LAUNCH_S
        assert r["predicted_s"] == pytest.approx(want)
        assert r["measured_over_predicted"] == pytest.approx(r["median_s"] / want)
    assert "meas/pred" in capsys.readouterr().out


def test_8bit_states_are_predicted_faster_than_fp32_adam_on_the_h200():
    """The committed H200 table has the 8-bit-state rows (issue 22): 8-bit Adam over fp32 p
    (16 + 16/B bytes per element) is predicted ≥ 1.6× faster than fp32-state Adam (28 B)
    from 2^24 elements, and 8-bit Lion (14 + 8/B B) faster still; each grid is a block per
    quantization block, at most one wave."""
    from pathlib import Path

    text = Path(gpu_model.TABLE).read_text()
    us = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 9 and cells[0].startswith("gpugd_optim"):
            us[cells[0], cells[1]] = (float(cells[3]), cells[5])
    assert kr.bytes_per_element("gpugd_optim8_adam_b2048_f32") == 16 + 16 / 2048
    assert kr.bytes_per_element("gpugd_optim8_lion_b256_f32") == 14 + 8 / 256
    for size in ("2^24", "2^28"):
        fp32 = us["gpugd_optim_adam_f32", size][0]
        adam8 = us["gpugd_optim8_adam_b2048_f32", size][0]
        lion8 = us["gpugd_optim8_lion_b2048_f32", size][0]
        assert fp32 / adam8 >= 1.6, (size, fp32, adam8)
        assert adam8 > lion8
    # 2^16 elements are 32 quantization blocks of 2048: 32 blocks, not a stride grid's 64
    assert us["gpugd_optim8_adam_b2048_f32", "2^16"][1] == "32"
    assert us["gpugd_optim8_adam_b256_f32", "2^16"][1] == "256"
