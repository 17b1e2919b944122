"""The lecture notes' own forms of momentum and Nesterov's accelerated gradient, run
literally, against the fused kernels.

Notes, momentum:   update = γ·update + η·∇f(w);           w = w − update
Notes, NAG:        w_la = w − γ·update;  update = γ·update + η·∇f(w_la);  w = w − update
Fused sgd_ (torch.optim.SGD, dampening 0): buf = γ·buf + ∇f(p);  p = p − η·buf
                                          (Nesterov: p = p − η·(∇f(p) + γ·buf))

Mapping: momentum is the same iteration with update = η·buf, so w and p agree exactly
(up to rounding). For NAG the fused kernel's parameter is the notes' *look-ahead* point:
p_t = w_t − γ·update_t, with buf_t = update_t/η. So the notes' iterates are recovered as
w_t = p_t + γ·η·buf_t; both start from w_0 = p_0 since update_0 = 0.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpugd import ops

ETA, GAMMA, STEPS = 0.02, 0.9, 200


def _quadratic(n=31, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, n))
    a = q @ q.T / n + 0.1 * np.eye(n)
    b = rng.standard_normal(n)
    return lambda w: a @ w - b, rng.standard_normal(n)


def _mlp(seed=1, n_in=3, hidden=8, batch=32):
    """Loss ½·mean((tanh(X W1 + b1) w2 − y)²) of a one-hidden-layer MLP, as a function of
    all its parameters flattened into one vector; the gradient written out by hand."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, n_in))
    y = np.sin(x.sum(axis=1))
    s1, s2 = n_in * hidden, n_in * hidden + hidden

    def grad(w):
        w1, b1, w2 = w[:s1].reshape(n_in, hidden), w[s1:s2], w[s2:]
        h = np.tanh(x @ w1 + b1)
        r = (h @ w2 - y) / batch
        dh = np.outer(r, w2) * (1 - h * h)
        return np.concatenate([(x.T @ dh).ravel(), dh.sum(axis=0), h.T @ r])

    return grad, 0.5 * rng.standard_normal(s2 + hidden)


PROBLEMS = {"quadratic": _quadratic, "mlp": _mlp}


@pytest.mark.parametrize("problem", PROBLEMS)
def test_notes_momentum_equals_fused_momentum(problem):
    grad, w0 = PROBLEMS[problem]()
    w, update = w0.copy(), np.zeros_like(w0)
    p, buf = w0.copy(), np.zeros_like(w0)
    for t in range(1, STEPS + 1):
        update = GAMMA * update + ETA * grad(w)  # the notes, literally
        w = w - update
        ops.sgd_(p, grad(p), buf, lr=ETA, momentum=GAMMA, step=t)
        np.testing.assert_allclose(p, w, rtol=1e-12, atol=1e-12)
    assert np.linalg.norm(grad(p)) < np.linalg.norm(grad(w0))  # it did optimize


@pytest.mark.parametrize("problem", PROBLEMS)
def test_notes_nesterov_lookahead_equals_fused_nesterov_after_shift(problem):
    grad, w0 = PROBLEMS[problem]()
    w, update = w0.copy(), np.zeros_like(w0)
    p, buf = w0.copy(), np.zeros_like(w0)
    for t in range(1, STEPS + 1):
        w_la = w - GAMMA * update  # the notes, literally: gradient at the look-ahead point
        update = GAMMA * update + ETA * grad(w_la)
        w = w - update
        ops.sgd_(p, grad(p), buf, lr=ETA, momentum=GAMMA, nesterov=True, step=t)
        np.testing.assert_allclose(p + GAMMA * ETA * buf, w, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(p, w - GAMMA * update, rtol=1e-10, atol=1e-12)
    assert np.linalg.norm(grad(p)) < np.linalg.norm(grad(w0))


def test_the_shift_matters():
    # Without the shift the two NAG iterates differ: the test above is not vacuous.
    grad, w0 = _quadratic()
    w, update = w0.copy(), np.zeros_like(w0)
    p, buf = w0.copy(), np.zeros_like(w0)
    for t in range(1, 6):
        update = GAMMA * update + ETA * grad(w - GAMMA * update)
        w = w - update
        ops.sgd_(p, grad(p), buf, lr=ETA, momentum=GAMMA, nesterov=True, step=t)
    assert not np.allclose(p, w, rtol=1e-6, atol=0)
