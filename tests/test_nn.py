"""gpugd.nn: backward against central finite differences in float64, losses against their
float64 definitions, initializer statistics, and bad input.

Reference: for a scalar loss L(θ), dL/dθ_i ≈ (L(θ + h·e_i) − L(θ − h·e_i)) / 2h with
h = 1e-6; in float64 the truncation error is O(h²) and the rounding error O(ε/h), so the
analytic gradient must agree to ~1e-7 relative (asserted at 1e-6).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpugd import nn

RTOL_FD = 1e-6


def _numeric_grad(f, arr: np.ndarray, h: float = 1e-6) -> np.ndarray:
    out = np.zeros_like(arr)
    flat, g = arr.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = f()
        flat[i] = old - h
        down = f()
        flat[i] = old
        g[i] = (up - down) / (2 * h)
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _check_model(model: nn.Sequential, loss_fn, x, y, *, l1=0.0, l2=0.0, seed=3):
    flat = model.build(np.float64, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name in flat:  # move batch-norm γ/β and biases off their trivial starts
        flat[name][...] += 0.1 * rng.standard_normal(flat[name].shape)

    def loss_only():
        out = model.forward(x, training=True)
        reg = sum(
            l1 * np.abs(flat[n]).sum() + l2 * (flat[n] ** 2).sum() for n in model.weight_names()
        )
        return loss_fn(out, y)[0] + reg

    for layer in model.layers():  # dropout: replay the same mask at every evaluation
        if isinstance(layer, nn.Dropout):
            layer.buffers["offset"][0] = 0
    out = model.forward(x, training=True)
    _, dout = loss_fn(out, y)
    model.backward(dout)
    penalty = model.regularize(l1, l2)
    assert math.isfinite(penalty)
    analytic = flat.grad_data.copy()

    def replay():
        for layer in model.layers():
            if isinstance(layer, nn.Dropout):
                layer.buffers["offset"][0] = 0
        return loss_only()

    numeric = _numeric_grad(replay, flat.data)
    for name in flat:
        off = flat._slots[name][0]
        n = flat[name].size
        a, b = analytic[off : off + n], numeric[off : off + n]
        assert _rel(a, b) < RTOL_FD, (name, _rel(a, b), a[:4], b[:4])


@pytest.mark.parametrize("act", nn.ACTIVATIONS)
def test_dense_activation_stack_matches_finite_differences(act):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3))
    y = rng.integers(0, 4, 7)
    model = nn.Sequential(
        [nn.Dense(3, 5, init="xavier_normal"), nn.Activation(act), nn.Dense(5, 4)]
    )
    _check_model(model, nn.softmax_cross_entropy, x, y)


def test_batchnorm_dropout_residual_and_regularization_match_finite_differences():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 4))
    y = rng.integers(0, 2, 9)
    model = nn.mlp(
        4,
        [6, 6, 6],
        1,
        activation="tanh",
        batch_norm=True,
        dropout=0.25,
        residual=True,
        init="he_uniform",
    )
    assert sum(isinstance(lay, nn.Residual) for lay in model.layers()) == 2
    _check_model(model, nn.binary_cross_entropy_with_logits, x, y, l1=1e-2, l2=3e-2)


def test_mse_regression_model_matches_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 2))
    y = rng.standard_normal((6, 3))
    model = nn.Sequential(
        [
            nn.Dense(2, 4, init="lecun_normal"),
            nn.Activation("gelu"),
            nn.Dense(4, 3, init="lecun_uniform"),
        ]
    )
    _check_model(model, nn.mse, x, y)


def test_losses_against_float64_definitions_and_extreme_logits():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((8, 5)) * 3
    lab = rng.integers(0, 5, 8)
    loss, d = nn.softmax_cross_entropy(z, lab)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert loss == pytest.approx(-np.log(p[np.arange(8), lab]).mean(), rel=1e-12)
    onehot = np.eye(5)[lab]
    np.testing.assert_allclose(d, (p - onehot) / 8, rtol=1e-12, atol=1e-15)
    zb = rng.standard_normal(8) * 3
    yb = rng.integers(0, 2, 8)
    loss, d = nn.binary_cross_entropy_with_logits(zb, yb)
    s = 1 / (1 + np.exp(-zb))
    ref = -(yb * np.log(s) + (1 - yb) * np.log(1 - s)).mean()
    assert loss == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(d, (s - yb) / 8, rtol=1e-12)
    # logits of ±1e4 in float32: finite loss and gradient (the naive log(σ) gives −inf)
    big = np.array([1e4, -1e4, 1e4, -1e4], np.float32)
    lb = np.array([0, 1, 1, 0])
    loss, d = nn.binary_cross_entropy_with_logits(big, lb)
    assert loss == pytest.approx(1e4 / 2, rel=1e-6)
    assert np.isfinite(d).all()
    loss, d = nn.softmax_cross_entropy(
        np.array([[1e4, -1e4], [-1e4, 1e4]], np.float32), np.array([1, 1])
    )
    assert loss == pytest.approx(1e4, rel=1e-6) and np.isfinite(d).all()
    loss, d = nn.mse(np.ones((2, 2)), np.zeros((2, 2)))
    assert loss == 1.0 and np.allclose(d, 0.5)


def test_denominator_scales_loss_and_gradient():
    z = np.array([0.3, -1.2, 2.0])
    y = np.array([1, 0, 1])
    l3, d3 = nn.binary_cross_entropy_with_logits(z, y)
    l6, d6 = nn.binary_cross_entropy_with_logits(z, y, denominator=6)
    assert l6 == pytest.approx(l3 / 2, rel=1e-15)
    np.testing.assert_allclose(d6, d3 / 2, rtol=1e-15)
    with pytest.raises(ValueError, match="denominator"):
        nn.mse(z, z, denominator=0)


@pytest.mark.parametrize(
    ("kind", "var"),
    [
        ("xavier_uniform", 2 / (400 + 300)),
        ("glorot_normal", 2 / (400 + 300)),
        ("he_uniform", 2 / 400),
        ("he_normal", 2 / 400),
        ("lecun_uniform", 1 / 400),
        ("lecun_normal", 1 / 400),
        ("normal", 0.05**2),
    ],
)
def test_initializer_variance(kind, var):
    w = nn.initial_weights(kind, (400, 300), np.random.default_rng(0))
    # 120,000 draws: the sample variance is within ~1% of the target (σ of s² ≈ 0.4%)
    assert w.var() == pytest.approx(var, rel=0.02)
    assert abs(w.mean()) < 5 * math.sqrt(var / w.size)
    assert not nn.initial_weights("zeros", (3, 2), np.random.default_rng(0)).any()


def test_build_names_shapes_and_same_network_for_same_seed():
    m1 = nn.mlp(2, [8, 8], 3, batch_norm=True, dropout=0.1)
    f1 = m1.build(np.float32, seed=7)
    assert f1.names == [
        "dense1.weight",
        "bn1.weight",
        "bn1.bias",
        "dense2.weight",
        "bn2.weight",
        "bn2.bias",
        "dense3.weight",
        "dense3.bias",
    ]
    assert m1.weight_names() == ["dense1.weight", "dense2.weight", "dense3.weight"]
    assert set(m1.buffers_dict()) == {
        "bn1.running_mean",
        "bn1.running_var",
        "dropout1.offset",
        "bn2.running_mean",
        "bn2.running_var",
        "dropout2.offset",
    }
    f2 = nn.mlp(2, [8, 8], 3, batch_norm=True, dropout=0.1).build(np.float32, seed=7)
    np.testing.assert_array_equal(f1.data, f2.data)
    f3 = nn.mlp(2, [8, 8], 3, batch_norm=True, dropout=0.1).build(np.float32, seed=8)
    assert not np.array_equal(f1.data, f3.data)


def test_inference_mode_uses_running_statistics_and_no_dropout():
    rng = np.random.default_rng(5)
    model = nn.mlp(3, [16], 2, batch_norm=True, dropout=0.5)
    model.build(np.float64, seed=0)
    x = rng.standard_normal((32, 3)) * 2 + 1
    for _ in range(200):  # the start's weight decays as 0.9^200 ≈ 7e-10
        model.forward(x, training=True)
    bn = next(lay for lay in model.layers() if isinstance(lay, nn.BatchNorm))
    h = x @ model.flat["dense1.weight"]
    np.testing.assert_allclose(bn.buffers["running_mean"], h.mean(0), rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(bn.buffers["running_var"], h.var(0, ddof=1), rtol=1e-4)
    a = model.forward(x, training=False)
    b = model.forward(x, training=False)
    np.testing.assert_array_equal(a, b)  # deterministic: no dropout, fixed statistics


def test_regularize_penalty_and_gradient():
    model = nn.Sequential([nn.Dense(2, 3), nn.Activation("relu"), nn.Dense(3, 1)])
    flat = model.build(np.float64, seed=0)
    flat.zero_grad()
    pen = model.regularize(0.1, 0.2)
    ws = [flat[n] for n in model.weight_names()]
    assert pen == pytest.approx(sum(0.1 * np.abs(w).sum() + 0.2 * (w**2).sum() for w in ws))
    for n in model.weight_names():
        np.testing.assert_allclose(flat.grads[n], 0.1 * np.sign(flat[n]) + 0.4 * flat[n])
    assert not flat.grads["dense1.bias"].any()


def test_bad_input_is_rejected_with_the_argument_named():
    with pytest.raises(ValueError, match="activation"):
        nn.Activation("swish")
    with pytest.raises(ValueError, match="init"):
        nn.Dense(2, 3, init="orthogonal")
    with pytest.raises(ValueError, match="out_features"):
        nn.Dense(2, 0)
    with pytest.raises(ValueError, match="p: expected"):
        nn.Dropout(1.0)
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm(4, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        nn.BatchNorm(4, eps=0)
    with pytest.raises(ValueError, match="expects 3 input features"):
        nn.Sequential([nn.Dense(2, 4), nn.Dense(3, 1)]).build()
    with pytest.raises(ValueError, match="residual block must keep"):
        nn.Sequential([nn.Dense(2, 4), nn.Residual([nn.Dense(4, 5)])]).build()
    with pytest.raises(ValueError, match="first layer must be Dense"):
        nn.Sequential([nn.Activation("relu"), nn.Dense(2, 1)]).build()
    with pytest.raises(TypeError, match="layers\\[1\\]"):
        nn.Sequential([nn.Dense(2, 1), "relu"])
    with pytest.raises(ValueError, match="l2"):
        m = nn.Sequential([nn.Dense(2, 1)])
        m.build()
        m.regularize(0.0, -1.0)
    with pytest.raises(ValueError, match="logits"):
        nn.softmax_cross_entropy(np.zeros(3), np.zeros(3, int))
    with pytest.raises(ValueError, match="target"):
        nn.mse(np.zeros((2, 1)), np.zeros(2))


# ---- the habits a torch user brings, and the errors that replace tracebacks ---------------


def _small(**kw) -> nn.Sequential:
    return nn.mlp(2, [8], 3, batch_norm=True, dropout=0.25, **kw)


def _batch(n: int = 16, dtype=np.float32, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2)).astype(dtype), rng.integers(0, 3, n)


def test_forward_before_build_and_backward_before_forward_name_the_layer():
    model, (x, _) = _small(), _batch()
    with pytest.raises(RuntimeError, match=r"not built: call model\.build"):
        model(x)
    with pytest.raises(RuntimeError, match=r"^Dense: not built \(no 'weight' yet\)"):
        nn.Dense(2, 3).forward(x, True)
    model.build(np.float32)
    with pytest.raises(RuntimeError, match="backward before forward"):
        model.backward(np.ones((16, 3), np.float32))
    with pytest.raises(RuntimeError, match=r"^dense2: backward before forward"):
        model.layers_by_name()["dense2"].backward(np.ones((16, 3), np.float32))


def test_wrong_features_dtype_or_array_kind_is_refused_naming_the_layer():
    model = _small()
    model.build(np.float32)
    x, _ = _batch()
    with pytest.raises(
        ValueError, match=r"^dense1: expected input of shape \(N, 2\), got \(16, 3\)"
    ):
        model(np.ones((16, 3), np.float32))
    with pytest.raises(TypeError, match=r"^dense1: expected float32 input .* got float64"):
        model(x.astype(np.float64))
    with pytest.raises(TypeError, match="expected a NumPy array"):
        model(x.tolist())
    before = model.state_dict()
    for k, v in model.state_dict().items():  # the refused calls changed nothing
        np.testing.assert_array_equal(v, before[k], err_msg=k)


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        (np.array([0.0, 1.0, 2.0, 1.0]), TypeError, "expected integer class indices, got float64"),
        (np.eye(3, dtype=np.int64)[[0, 1, 2, 1]], ValueError, r"expected class indices .* one-hot"),
        (np.array([0, 1, 3, 1]), ValueError, r"in \[0, 3\), got values in \[0, 3\]"),
        (np.array([0, -1, 2, 1]), ValueError, r"in \[0, 3\), got values in \[-1, 2\]"),
        (np.array([0, 1, 2]), ValueError, r"expected shape \(4,\)"),
    ],
)
def test_softmax_cross_entropy_refuses_labels_that_are_not_class_indices(labels, error, match):
    logits = np.zeros((4, 3), np.float32)
    with pytest.raises(error, match="^softmax_cross_entropy: labels: .*" + match):
        nn.softmax_cross_entropy(logits, labels)


def test_binary_cross_entropy_refuses_float_and_out_of_range_labels():
    z = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match=r"^binary_cross_entropy_with_logits: labels: .*float32"):
        nn.binary_cross_entropy_with_logits(z, np.array([0, 1, 1, 0], np.float32))
    with pytest.raises(ValueError, match=r"in \[0, 2\), got values in \[0, 2\]"):
        nn.binary_cross_entropy_with_logits(z, np.array([0, 1, 2, 0]))
    loss, _ = nn.binary_cross_entropy_with_logits(z, np.array([0, 1, 1, 0]))
    assert loss == pytest.approx(math.log(2))


def test_model_call_train_and_eval_follow_the_mode():
    model = _small()
    model.build(np.float32, seed=1)
    x, _ = _batch()
    assert model.training and model.eval() is model and not model.training
    inference = model(x)
    np.testing.assert_array_equal(inference, model.forward(x, training=False))
    np.testing.assert_array_equal(model(x), inference)  # eval: no dropout, running stats
    model.train()
    offset = int(model.buffers_dict()["dropout1.offset"][0])
    trained = model(x)  # dropout advances its stream in training mode only
    assert int(model.buffers_dict()["dropout1.offset"][0]) == offset + 16 * 8
    assert not np.array_equal(trained, inference)
    with pytest.raises(TypeError, match="mode: expected True or False"):
        model.train(1)


def test_state_dict_round_trip_carries_parameters_and_buffers():
    a = _small()
    a.build(np.float32, seed=1)
    x, y = _batch()
    for _ in range(3):  # move the running statistics and the dropout offset
        _, d = nn.softmax_cross_entropy(a(x), y)
        a.backward(d)
    sd = a.state_dict()
    assert {"bn1.running_mean", "bn1.running_var", "dropout1.offset", "dropout1.seed"} <= set(sd)
    assert float(np.abs(sd["bn1.running_mean"]).sum()) > 0 and int(sd["dropout1.offset"][0]) > 0
    b = _small()
    b.build(np.float32, seed=99)  # other weights, other dropout seed
    b.load_state_dict(sd)
    np.testing.assert_array_equal(b(x), a(x))  # training mode: the same dropout mask
    np.testing.assert_array_equal(b.eval()(x), a.eval()(x))  # the same running statistics
    sd["dense1.weight"][...] = 7  # a copy, not a view
    assert not np.any(a.flat["dense1.weight"] == 7)


def test_load_state_dict_checks_everything_before_writing():
    model = _small()
    model.build(np.float32, seed=1)
    before = model.state_dict()
    bad = dict(before)
    del bad["bn1.running_var"]
    bad["extra"] = np.zeros(1)
    with pytest.raises(KeyError, match=r"missing \['bn1.running_var'\], unexpected \['extra'\]"):
        model.load_state_dict(bad)
    wrong = {k: v + 1 if v.dtype.kind == "f" else v for k, v in before.items()}
    wrong["dense2.bias"] = np.zeros(4, np.float32)
    with pytest.raises(
        ValueError, match=r"state\['dense2.bias'\]: expected float32 of shape \(3,\)"
    ):
        model.load_state_dict(wrong)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_zero_grad_fills_the_arena_and_refuses_set_to_none():
    model = _small()
    flat = model.build(np.float32)
    flat.grad_data[...] = 1
    with pytest.raises(ValueError, match="set_to_none: gpugd's gradients are views"):
        model.zero_grad(set_to_none=True)
    assert np.all(flat.grad_data == 1)
    model.zero_grad()
    assert not np.any(flat.grad_data)


def test_nn_and_parallel_are_reachable_after_import_gpugd_without_cupy():
    import subprocess
    import sys

    code = (
        "import sys, gpugd; gpugd.nn.mlp(2, [4], 1); gpugd.parallel.init; "
        "print('cupy' in sys.modules, 'mpi4py.MPI' in sys.modules)"
    )
    env = {**__import__("os").environ, "GPUGD_BACKEND": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.split() == ["False", "False"], out


def test_flat_params_repr_names_tensors_dtype_and_backend():
    from gpugd import FlatParams

    flat = FlatParams({"w1": (784, 128), "b1": (128,), "w2": (128, 10)}, np.float32)
    assert repr(flat) == (
        "FlatParams(3 tensors, 101760 float32 elements on cpu: "
        "w1 (784, 128), b1 (128,), w2 (128, 10))"
    )
    many = FlatParams({f"t{i}": (2,) for i in range(8)}, np.float64)
    assert repr(many).endswith("t5 (2,), ... 2 more)")
