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
