"""CUDA-graph-captured steps (``gpugd.graph.CapturedStep``): replayed steps equal eager
steps bit for bit (cuda marker), and configurations a graph cannot hold are refused before
anything is captured (CPU)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from conftest import to_numpy

import gpugd
from gpugd import amp, optim, schedules
from gpugd.graph import CapturedStep, CaptureError

SHAPES = {"w1": (33, 17), "b1": (17,), "w2": (17, 5), "b2": (5,)}
BF16 = np.dtype(ml_dtypes.bfloat16)


def _arena(xp, dtype=np.float32, seed=0):
    flat = gpugd.FlatParams(SHAPES, dtype, xp)
    rng = np.random.default_rng(seed)
    for n, s in SHAPES.items():
        flat[n][...] = xp.asarray(rng.standard_normal(s).astype(dtype))
    return flat


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda f: optim.SGD(f, lr=0.1), "graph capture supports Adam and AdamW"),
        (lambda f: optim.Adam(f), "graph capture needs CuPy arrays"),
        (lambda f: optim.Adam(f, nonfinite="error"), 'nonfinite: "error" raises on the host'),
    ],
)
def test_unsupported_configurations_are_refused(make, match):
    with pytest.raises(CaptureError, match=match):
        CapturedStep(make(_arena(np)))


def test_schedule_and_monitor_are_refused():
    opt = optim.AdamW(_arena(np))
    schedules.StepLR(opt, step_size=2)
    with pytest.raises(CaptureError, match="a schedule changes the learning rate"):
        CapturedStep(opt)
    opt2 = optim.AdamW(_arena(np))
    gpugd.monitor.GradientMonitor(opt2)
    with pytest.raises(CaptureError, match="a monitor reads statistics"):
        CapturedStep(opt2)


def _twins(cp, dtype, **kw):
    """Two identical optimizers with scalers: one to step eagerly, one to capture."""
    out = []
    for _ in range(2):
        flat = _arena(cp, dtype)
        opt = optim.AdamW(flat, lr=1e-2, **kw)
        amp.LossScaler(opt, init_scale=2.0**10, growth_interval=3)
        out.append((flat, opt))
    return out


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("dtype", "kw"),
    [
        (np.float32, dict(max_grad_norm=0.5)),
        (BF16, dict(master_weights=True, max_grad_norm=1.0, rounding="stochastic", seed=3)),
        (np.float16, dict(master_weights=True)),
        (BF16, dict(state_dtype=BF16, amsgrad=True)),
        # the other graph kernels: one per precision policy
        (BF16, dict(max_grad_norm=1.0)),
        (np.float16, dict(weight_decay=0.1)),
        (np.float16, dict(state_dtype=BF16)),
        (np.float16, dict(state_dtype=BF16, master_weights=True, amsgrad=True)),
        (BF16, dict(state_dtype=BF16, master_weights=True, rounding="stochastic", seed=5)),
    ],
    ids=[
        "f32-clip",
        "bf16-master-sr-clip",
        "f16-master",
        "bf16-bf16states-amsgrad",
        "bf16-clip",
        "f16-wd",
        "f16-bf16states",
        "f16-bf16states-master-amsgrad",
        "bf16-bf16states-master-sr",
    ],
)
def test_replayed_steps_equal_eager_steps_bit_for_bit(dtype, kw):
    cp = pytest.importorskip("cupy")
    (fe, oe), (fg, og) = _twins(cp, dtype, **kw)
    step = CapturedStep(og)
    rng = np.random.default_rng(1)
    for t in range(8):
        scale = oe.loss_scaler.scale_factor
        grads = {n: (rng.standard_normal(s) * scale).astype(dtype) for n, s in SHAPES.items()}
        if t == 4:
            grads["b2"][1] = np.inf  # overflow: skipped, scale backs off on both
        for n, g in grads.items():
            fe.grads[n][...] = cp.asarray(g)
            fg.grads[n][...] = cp.asarray(g)
        oe.step()
        oe.zero_grad()
        step()
        np.testing.assert_array_equal(
            to_numpy(fg.data).view(np.uint8), to_numpy(fe.data).view(np.uint8), f"step {t}"
        )
    for k, b in oe._buffers.items():
        np.testing.assert_array_equal(
            to_numpy(og._buffers[k].data).view(np.uint8), to_numpy(b.data).view(np.uint8), k
        )
    assert not np.any(to_numpy(fg.grad_data).astype(np.float64))  # zero_grad was captured
    st = step.sync()
    assert og.step_count == oe.step_count == 7 and og.skipped_steps == 1
    assert og.loss_scaler.scale_factor == oe.loss_scaler.scale_factor
    assert og.loss_scaler.growth_tracker == oe.loss_scaler.growth_tracker
    assert st["grad_norm"] == oe.last_report.grad_norm


@pytest.mark.cuda
def test_a_learning_rate_written_between_replays_matches_eager_steps():
    cp = pytest.importorskip("cupy")
    fe, fg = _arena(cp), _arena(cp)
    oe = optim.AdamW(
        [{"params": fe, "names": ["w1", "w2"]}, {"params": fe, "names": ["b1", "b2"], "lr": 0.05}],
        lr=1e-2,
    )
    og = optim.AdamW(
        [{"params": fg, "names": ["w1", "w2"]}, {"params": fg, "names": ["b1", "b2"], "lr": 0.05}],
        lr=1e-2,
    )
    step = CapturedStep(og)
    rng = np.random.default_rng(4)
    for t in range(5):
        lr = 1e-2 * 0.5**t  # a schedule driven by hand
        oe.param_groups[0]["lr"] = lr
        step.set_lr(lr, group=0)
        for n, s in SHAPES.items():
            g = cp.asarray(rng.standard_normal(s).astype(np.float32))
            fe.grads[n][...] = g
            fg.grads[n][...] = g
        oe.step()
        oe.zero_grad()
        step()
    np.testing.assert_array_equal(to_numpy(fg.data), to_numpy(fe.data))
    assert og.param_groups[0]["lr"] == oe.param_groups[0]["lr"]
    with pytest.raises(IndexError, match="group: expected an index into the 2 param groups"):
        step.set_lr(0.1, group=2)
    with pytest.raises(ValueError, match="lr: expected a finite value"):
        step.set_lr(-1.0)


@pytest.mark.cuda
def test_list_groups_and_refresh_after_an_eager_step():
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(2)
    shapes = [(7,), (1000,), (3, 65537)]
    runs = []
    for _ in range(2):
        ps = [cp.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes]
        gs = [cp.zeros(s, cp.float32) for s in shapes]
        runs.append((ps, gs, optim.Adam(ps, grads=gs, lr=1e-3, weight_decay=1e-2)))
        rng = np.random.default_rng(2)
    (pe, ge, oe), (pg, gg, og) = runs
    step = CapturedStep(og, zero_grad=False)
    for t in range(4):
        g0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        for a, b, g in zip(ge, gg, g0, strict=True):
            a[...] = cp.asarray(g)
            b[...] = cp.asarray(g)
        oe.step()
        if t == 2:  # an eager step between replays: state to the host, step, back to the device
            step.sync()
            og.step()
            step.refresh()
        else:
            step()
    for a, b in zip(pe, pg, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert step.sync()["step"] == 4 and og.step_count == 4


@pytest.mark.cuda
def test_refresh_after_load_state_dict_takes_the_new_hyperparameters():
    """A graph holds lr, betas, eps, weight decay and the clipping as launch arguments:
    after load_state_dict changes them, refresh() must re-record it (it once copied only the
    step state, so replays kept the old hyperparameters)."""
    cp = pytest.importorskip("cupy")
    (fe, oe), (fg, og) = _twins(cp, np.float32, max_grad_norm=0.5)
    step = CapturedStep(og)
    rng = np.random.default_rng(3)

    def one_step():
        scale = oe.loss_scaler.scale_factor
        for n, s in SHAPES.items():
            g = (rng.standard_normal(s) * scale).astype(np.float32)
            fe.grads[n][...] = cp.asarray(g)
            fg.grads[n][...] = cp.asarray(g)
        oe.step()
        oe.zero_grad()
        step()

    for _ in range(3):
        one_step()
    step.sync()
    sd = oe.state_dict()
    sd["param_groups"][0].update(lr=3e-3, betas=(0.8, 0.95), eps=1e-5, weight_decay=0.2)
    oe.load_state_dict(sd)
    og.load_state_dict(sd)
    step.refresh()
    for _ in range(3):
        one_step()
    np.testing.assert_array_equal(
        to_numpy(fg.data).view(np.uint8), to_numpy(fe.data).view(np.uint8)
    )
    assert step.sync()["step"] == oe.step_count == 6


def test_device_tables_list_every_chunk_and_each_tensors_first(monkeypatch):
    """``_tensor_table.on_device`` (the CUDA launch's tables, shared by the update, the norm
    pass and the graph), checked on the host with a stand-in for CuPy."""
    import sys
    import types

    from gpugd import _tensor_table as layout

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(asarray=np.asarray))

    class Fake:
        def __init__(self, ptr, size):
            self.data, self.size = types.SimpleNamespace(ptr=ptr), size

    ps = [Fake(1000, 5), Fake(2000, 0), Fake(3000, 9)]
    gs = [Fake(10, 5), Fake(20, 0), Fake(30, 9)]
    out = [Fake(7, 5), Fake(8, 0), Fake(9, 9)]
    table, chunks, n, first = layout.on_device([ps, gs, None], 4, out)
    assert n == 5 and chunks.tolist() == [[0, 0], [0, 4], [2, 0], [2, 4], [2, 8]]
    assert first.tolist() == [0, 2, 2, 5]
    assert table[0].tolist() == [1000, 2000, 3000] and table[1].tolist() == [10, 20, 30]
    assert table[2].tolist() == [0, 0, 0] and table[layout.SIZE_ROW].tolist() == [5, 0, 9]
    assert table[layout.OUT_ROW].tolist() == [7, 8, 9]
