"""The eager CUDA step decided on the device (gpugd._step_decision): the same bits as the
host-decided step, and no host synchronization in ``step()``.

Reference: the same optimizer with ``_device_decides = False``, which reads the norm and
the non-finite flag on the host before the update (the path the CPU takes). Every rule,
clipping, the skip policy, a loss scaler with an overflow, and a caller's ``skip_if``;
float32 arenas for every rule, float64 lists and bfloat16 with fp32 master weights for
SGD and Adam. Parameters, every state, the report, the step count, the skips and the loss
scale must be identical after every step, whether the outcome is read at once or settled
by the next step.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import emulated, to_numpy

import gpugd
from gpugd import optim
from gpugd.amp import LossScaler

pytestmark = pytest.mark.cuda

SHAPES = {"w1": (33, 17), "b1": (17,), "w2": (17, 5), "b2": (5,)}
RULES = {
    "SGD": dict(lr=0.1, momentum=0.9, nesterov=True),
    "Adam": dict(lr=1e-2, amsgrad=True),
    "AdamW": dict(lr=1e-2, weight_decay=0.1),
    "NAdam": dict(lr=1e-2),
    "RMSprop": dict(lr=1e-2, centered=True, momentum=0.5),
    "Adagrad": dict(lr=1e-1, lr_decay=0.01),  # lr_decay: the step count enters the update
}
CONFIGS = {
    "clip": dict(max_grad_norm=1.0),
    "skip": dict(nonfinite="skip"),
    "clip+skip": dict(max_grad_norm=0.5, nonfinite="skip"),
    "scaler": dict(max_grad_norm=2.0),  # plus a LossScaler (growth every 2 steps)
    "skip_if": dict(max_grad_norm=1.0),  # plus the caller's flag on step 2
}
BAD_STEP = 2  # steps (0-based) where the gradients hold a NaN or the caller's flag is set


def _arena(xp, dtype):
    flat = gpugd.FlatParams(SHAPES, dtype, xp)
    rng = np.random.default_rng(0)
    for n, s in SHAPES.items():
        flat[n][...] = xp.asarray(rng.standard_normal(s).astype(np.float32))
    return flat


def _grads(xp, grads, step, config):
    rng = np.random.default_rng(100 + step)
    for g in grads:
        g[...] = xp.asarray((rng.standard_normal(g.shape) * 3.0).astype(np.float32))
    if step == BAD_STEP and config in ("skip", "clip+skip", "scaler"):
        grads[1][(0,) * grads[1].ndim] = np.inf if config == "scaler" else np.nan


def _build(xp, rule, config, precision, device_decides):
    """(optimizer, params, grads) for one case."""
    if precision == "f64 list":
        rng = np.random.default_rng(0)
        params = [xp.asarray(rng.standard_normal(s)) for s in SHAPES.values()]
        grads = [xp.zeros(s, np.float64) for s in SHAPES.values()]
        opt = getattr(optim, rule)(params, grads, **RULES[rule], **CONFIGS[config])
    else:
        import ml_dtypes

        half = precision == "bf16 master"
        flat = _arena(xp, ml_dtypes.bfloat16 if half else np.float32)
        params, grads = [flat[n] for n in SHAPES], [flat.grads[n] for n in SHAPES]
        opt = getattr(optim, rule)(flat, **RULES[rule], **CONFIGS[config], master_weights=half)
    if config == "scaler":
        LossScaler(opt, init_scale=2.0**6, growth_interval=2)
    opt._device_decides = device_decides
    return opt, params, grads


def _flag(xp, step, config):
    if config != "skip_if":
        return None
    return xp.asarray(np.array([int(step == BAD_STEP)], np.int32))


def _observed(opt, params):
    state = {
        f"{n}.{k}": to_numpy(a).view(np.uint8)
        for n, st in sorted(opt.state.items())
        for k, a in sorted(st.items())
    }
    scaler = opt.loss_scaler
    return {
        "params": [to_numpy(p).view(np.uint8) for p in params],
        "state": state,
        "report": opt.last_report,
        "step_count": opt.step_count,
        "skipped": opt.skipped_steps,
        "scale": None if scaler is None else (scaler.scale_value, scaler.growth_tracker),
    }


def _bits(report):
    """The report with its floats as bytes (NaN == NaN when the bits are the same)."""
    if report is None:
        return None
    norm = None if report.grad_norm is None else np.float64(report.grad_norm).tobytes()
    return report._replace(grad_norm=norm, clip_coef=np.float64(report.clip_coef).tobytes())


def _same(a, b, what):
    ra, rb = _bits(a["report"]), _bits(b["report"])
    assert ra == rb, f"{what}: report {a['report']} != {b['report']}"
    for key in ("step_count", "skipped", "scale"):
        assert a[key] == b[key], f"{what}: {key} {a[key]} != {b[key]}"
    for i, (x, y) in enumerate(zip(a["params"], b["params"], strict=True)):
        np.testing.assert_array_equal(x, y, err_msg=f"{what}: param {i}")
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        np.testing.assert_array_equal(a["state"][k], b["state"][k], err_msg=f"{what}: {k}")


def _run_pair(xp, rule, config, precision, read_every_step, steps=5):
    dev = _build(xp, rule, config, precision, True)
    host = _build(xp, rule, config, precision, False)
    for step in range(steps):
        for opt, _, grads in (dev, host):
            _grads(xp, grads, step, config)
            opt.step(skip_if=_flag(xp, step, config))
        if read_every_step or step == steps - 1:
            _same(_observed(*dev[:2]), _observed(*host[:2]), f"{rule} {config} step {step}")
    return dev[0]


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("rule", list(RULES))
def test_device_decided_step_equals_host_decided_step(rule, config):
    xp = gpugd.get_backend("cuda").xp
    opt = _run_pair(xp, rule, config, "f32 arena", read_every_step=True)
    expect_skips = 1 if config in ("skip", "clip+skip", "scaler") else 0
    assert opt.skipped_steps == expect_skips
    assert opt.step_count == 5 - expect_skips - (config == "skip_if")


@pytest.mark.parametrize("precision", ["f64 list", "bf16 master"])
@pytest.mark.parametrize("config", ["clip+skip", "scaler", "skip_if"])
@pytest.mark.parametrize("rule", ["SGD", "Adam"])
def test_device_decided_step_other_precisions(rule, config, precision):
    xp = gpugd.get_backend("cuda").xp
    _run_pair(xp, rule, config, precision, read_every_step=True)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_outcome_settled_by_the_next_step(config):
    """Nothing read between steps: each step settles the one before (NAdam: its μ product
    and step count depend on every earlier outcome)."""
    xp = gpugd.get_backend("cuda").xp
    _run_pair(xp, "NAdam", config, "f32 arena", read_every_step=False, steps=6)


def _syncs():
    from cupy.cuda import stream

    return stream.HOST_SYNCS


@pytest.mark.skipif(not emulated(), reason="counts host synchronizations in the stand-in")
@pytest.mark.parametrize("config", list(CONFIGS))
def test_step_does_not_synchronize(config):
    """The stand-in counts every host synchronization (blocking copies, stream and event
    waits). Clipping alone: none in 4 steps. A step that may be skipped: the next step
    waits for its event (an event wait, never a blocking copy or a stream drain)."""
    xp = gpugd.get_backend("cuda").xp
    opt, _, grads = _build(xp, "Adam", config, "f32 arena", True)
    _grads(xp, grads, 0, config)
    opt.step(skip_if=_flag(xp, 0, config))  # first step: buffers, tables, kernels
    opt.last_report  # noqa: B018  (settles it)
    syncs = _syncs()
    syncs.clear()
    for step in range(1, 5):
        _grads(xp, grads, step, config)
        opt.step(skip_if=_flag(xp, step, config))
    waits = dict(syncs)
    can_skip = config != "clip"
    assert waits == ({"cupy.cuda.Event.synchronize()": 3} if can_skip else {}), waits
    syncs.clear()
    report = opt.last_report
    assert dict(syncs) == {"cupy.cuda.Event.synchronize()": 1}
    assert report.step == opt.step_count and not report.skipped


@pytest.mark.skipif(not emulated(), reason="counts host synchronizations in the stand-in")
def test_error_policy_and_monitor_still_read_on_the_host():
    """nonfinite="error" must raise before the update, so it reads the flag (one blocking
    copy per step): the documented exception."""
    xp = gpugd.get_backend("cuda").xp
    flat = _arena(xp, np.float32)
    opt = optim.Adam(flat, lr=1e-2, nonfinite="error")
    _grads(xp, [flat.grads[n] for n in SHAPES], 0, "clip")
    opt.step()
    syncs = _syncs()
    syncs.clear()
    opt.step()
    assert syncs["cupy.ndarray.get()"] >= 1
    grads = [flat.grads[n] for n in SHAPES]
    grads[0][0, 0] = np.nan
    before = to_numpy(flat.data).copy()
    with pytest.raises(FloatingPointError, match="w1"):
        opt.step()
    np.testing.assert_array_equal(to_numpy(flat.data), before)


@pytest.mark.skipif(
    emulated(),
    reason="host/device overlap needs a GPU (the emulator runs "
    "each kernel to completion at launch)",
)
def test_step_returns_while_the_gpu_is_busy():
    """On a GPU: with a ~1 s kernel queued ahead, four clipped steps return to the host in
    well under that time (a synchronizing step would wait for it)."""
    import cupy

    spin = cupy.RawKernel(
        r"""extern "C" __global__ void spin(long long cycles) {
          const long long t0 = clock64();
          while (clock64() - t0 < cycles) {}
        }""",
        "spin",
    )
    xp = cupy
    opt, _, grads = _build(xp, "Adam", "clip+skip", "f32 arena", True)
    _grads(xp, grads, 0, "clip")
    opt.step()
    opt.last_report  # noqa: B018
    clock_hz = cupy.cuda.Device().attributes["ClockRate"] * 1e3
    cupy.cuda.Device().synchronize()
    spin((1,), (1,), (np.int64(clock_hz * 1.0),))
    t0 = time.perf_counter()
    opt.step()
    took = time.perf_counter() - t0
    cupy.cuda.Device().synchronize()
    assert took < 0.25, f"step took {took:.3f} s behind a 1 s kernel: it synchronized"
