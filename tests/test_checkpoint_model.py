"""Optimizer.save/load with ``model=``: one file holds the whole training state of a
gpugd.nn model (parameters, optimizer state, batch-norm statistics, dropout offsets)."""

from __future__ import annotations

import numpy as np
import pytest

from gpugd import nn, optim
from gpugd.train import Trainer

X = np.random.default_rng(3).standard_normal((64, 3)).astype(np.float32)
Y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)


def _fresh() -> tuple[nn.Sequential, optim.Optimizer, Trainer]:
    model = nn.mlp(3, (8, 8), 1, batch_norm=True, dropout=0.25)
    model.build(np.float32, seed=5)
    opt = optim.Adam(model.flat, lr=1e-2)
    return model, opt, Trainer(model, opt)


def _epochs(trainer: Trainer, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(k):
        trainer.train_epoch(X, Y, 16, rng)


def _bits(model: nn.Sequential) -> dict[str, bytes]:
    return {k: np.asarray(a).tobytes() for k, a in model.state_dict().items()}


def test_round_trip_with_model_is_bit_for_bit(tmp_path):
    model, opt, trainer = _fresh()
    _epochs(trainer, 2, seed=1)
    opt.save(tmp_path / "c.npz", model=model)
    _epochs(trainer, 2, seed=2)
    model2, opt2, trainer2 = _fresh()
    opt2.load(tmp_path / "c.npz", model=model2)
    _epochs(trainer2, 2, seed=2)
    assert _bits(model2) == _bits(model)
    assert any(k.endswith("running_var") for k in _bits(model))
    assert any(k.endswith("offset") for k in _bits(model))


def test_without_model_buffers_are_lost(tmp_path):
    """The reason for model=: without it the continuation differs (regression guard)."""
    model, opt, trainer = _fresh()
    _epochs(trainer, 2, seed=1)
    opt.save(tmp_path / "c.npz")
    _epochs(trainer, 1, seed=2)
    model2, opt2, trainer2 = _fresh()
    opt2.load(tmp_path / "c.npz")
    _epochs(trainer2, 1, seed=2)
    assert _bits(model2) != _bits(model)


def test_model_mismatch_is_a_checkpoint_error_and_changes_nothing(tmp_path):
    model, opt, trainer = _fresh()
    _epochs(trainer, 1, seed=1)
    opt.save(tmp_path / "with.npz", model=model)
    opt.save(tmp_path / "without.npz")
    model2, opt2, _ = _fresh()
    before = _bits(model2)
    with pytest.raises(optim.CheckpointError, match="pass model="):
        opt2.load(tmp_path / "with.npz")
    with pytest.raises(optim.CheckpointError, match="no model buffers"):
        opt2.load(tmp_path / "without.npz", model=model2)
    other = nn.mlp(3, (8, 8), 1, batch_norm=True, dropout=0.0)  # no dropout buffers
    other.build(np.float32, seed=5)
    with pytest.raises(optim.CheckpointError, match="model buffers"):
        optim.Adam(other.flat, lr=1e-2).load(tmp_path / "with.npz", model=other)
    assert _bits(model2) == before and opt2.step_count == 0
    with pytest.raises(TypeError, match="model"):
        opt.save(tmp_path / "x.npz", model=object())


def test_damaged_model_buffer_is_refused_before_any_write(tmp_path):
    model, opt, trainer = _fresh()
    _epochs(trainer, 1, seed=1)
    opt.save(tmp_path / "c.npz", model=model)
    with np.load(tmp_path / "c.npz") as z:
        files = dict(z)
    key = next(k for k in files if k.endswith("running_var"))
    files[key] = files[key].copy()
    files[key][0] = np.nan
    np.savez(tmp_path / "bad.npz", **files)
    model2, opt2, _ = _fresh()
    before = _bits(model2)
    with pytest.raises(optim.CheckpointError, match="non-finite"):
        opt2.load(tmp_path / "bad.npz", model=model2)
    assert _bits(model2) == before and opt2.step_count == 0
