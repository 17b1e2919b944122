"""The gradient-health monitor: figures from the step's own passes, equal to separate
float64 measurements; flags; exports; the plot."""

from __future__ import annotations

import builtins
import csv
import json

import numpy as np
import pytest
from conftest import to_numpy

import gpugd
from gpugd import monitor, optim

SHAPES = {"w1": (16, 8), "b1": (8,), "w2": (8, 4), "b2": (4,)}


def _model(xp):
    flat = gpugd.FlatParams(SHAPES, np.float32, xp)
    rng = np.random.default_rng(0)
    for n, s in SHAPES.items():
        flat[n][...] = xp.asarray(rng.standard_normal(s))
    return flat


def _grads(flat, rng, scales=None):
    for n, s in SHAPES.items():
        g = rng.standard_normal(s) * (scales or {}).get(n, 1.0)
        flat.grads[n][...] = flat.xp.asarray(g)


@pytest.mark.parametrize("kind", ["SGD", "Adam", "RMSprop"])
def test_recorded_figures_equal_separate_measurements(xp, kind):
    flat = _model(xp)
    opt = getattr(optim, kind)(flat, lr=0.05, max_grad_norm=5.0)
    mon = monitor.GradientMonitor(opt)
    rng = np.random.default_rng(1)
    for _ in range(3):
        _grads(flat, rng)
        flat.grads["w1"][:2] = 0  # two dead rows
        g = {n: to_numpy(flat.grads[n]).astype(np.float64) for n in SHAPES}
        before = {n: to_numpy(flat[n]).astype(np.float64) for n in SHAPES}
        opt.step()
        after = {n: to_numpy(flat[n]).astype(np.float64) for n in SHAPES}
        last = mon.latest()
        for n in SHAPES:
            assert last[n]["grad_norm"] == pytest.approx(np.linalg.norm(g[n]), rel=1e-10)
            assert last[n]["param_norm"] == pytest.approx(np.linalg.norm(after[n]), rel=1e-6)
            ratio = np.linalg.norm(after[n] - before[n]) / np.linalg.norm(after[n])
            assert last[n]["update_ratio"] == pytest.approx(ratio, rel=1e-4)
            assert last[n]["zero_fraction"] == pytest.approx((g[n] == 0).mean())
            assert last[n]["nonfinite"] == 0
    assert mon.steps == [1, 2, 3]
    assert mon.series("grad_norm").shape == (3, 4)


def test_monitoring_does_not_change_the_trajectory(xp):
    a, b = _model(xp), _model(xp)
    oa, ob = optim.Adam(a, lr=1e-2), optim.Adam(b, lr=1e-2)
    monitor.GradientMonitor(oa)
    ra, rb = np.random.default_rng(2), np.random.default_rng(2)
    for _ in range(3):
        _grads(a, ra)
        _grads(b, rb)
        oa.step()
        ob.step()
    np.testing.assert_array_equal(to_numpy(a.data), to_numpy(b.data))


def test_flags_vanishing_exploding_and_nonfinite():
    flat = _model(np)
    opt = optim.SGD(flat, lr=1e-6, nonfinite="skip")
    mon = monitor.GradientMonitor(
        opt, vanishing_ratio=1e-3, exploding_norm=1e4, exploding_growth=50
    )
    rng = np.random.default_rng(3)
    _grads(flat, rng, {"w1": 1e-6})  # w1 far under the last layer's norm
    opt.step()
    _grads(flat, rng, {"w2": 1e3})  # w2 grows by ~1000x in one step
    opt.step()
    _grads(flat, rng)
    flat.grads["b1"][0] = np.nan
    opt.step()  # skipped and recorded
    kinds = {(e["step"], e["tensor"], e["kind"]) for e in mon.events}
    assert (1, "w1", "vanishing") in kinds
    assert (2, "w2", "exploding") in kinds
    assert (3, "b1", "nonfinite") in kinds
    assert mon.skipped == [{"step": 3, "nonfinite": {"b1": 1}}]
    assert not any(e["kind"] == "exploding" and e["step"] == 1 for e in mon.events)


def test_exports_and_plot(tmp_path):
    flat = _model(np)
    opt = optim.Adam(flat)
    mon = monitor.GradientMonitor(opt)
    rng = np.random.default_rng(4)
    for _ in range(4):
        _grads(flat, rng)
        opt.step()
    rows = list(csv.DictReader(mon.to_csv(tmp_path / "g.csv").open()))
    assert len(rows) == 4 * len(SHAPES) and rows[0]["tensor"] == "w1"
    assert float(rows[0]["grad_norm"]) == pytest.approx(mon.series("grad_norm")[0, 0])
    data = json.loads(mon.to_json(tmp_path / "g.json").read_text())
    assert data["names"] == list(SHAPES) and len(data["grad_norm"]) == 4
    png = mon.plot(tmp_path / "g.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    mon = monitor.GradientMonitor(optim.SGD(_model(np)))
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"pip install 'gpugd\[plot\]'"):
        mon.plot(tmp_path / "g.png")


def test_bad_configuration():
    opt = optim.SGD(_model(np))
    with pytest.raises(ValueError, match="vanishing_ratio"):
        monitor.GradientMonitor(opt, vanishing_ratio=0)
    with pytest.raises(KeyError, match="reference"):
        monitor.GradientMonitor(opt, reference="nope")
    monitor.GradientMonitor(opt)
    with pytest.raises(ValueError, match="already has a monitor"):
        monitor.GradientMonitor(opt)


def test_every_k_records_only_those_steps():
    flat = _model(np)
    opt = optim.SGD(flat, lr=0.01)
    mon = monitor.GradientMonitor(opt, every=3)
    rng = np.random.default_rng(5)
    for _ in range(7):
        _grads(flat, rng)
        opt.step()
    assert mon.steps == [1, 4, 7] and mon.series("param_norm").shape == (3, 4)
