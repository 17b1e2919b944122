"""``gpugd train --optimizer lion`` and ``--state-bits 8``: the flags reach the optimizer,
are recorded in metrics.json, are checked on resume, invalid combinations are refused
before training; and the MLP trained with 8-bit Adam states ends within 0.5 percentage
points of validation accuracy of the same run with 32-bit states."""

from __future__ import annotations

import json

import pytest

from gpugd import cli, quant8
from gpugd import train as tr

# 64x64 hidden weights (4,096 elements) reach quant8.MIN_8BIT: they get 8-bit states
SMALL = ["--n-samples", "200", "--hidden", "64,64", "--quiet", "--no-plots"]


def _cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        rc = cli.main(list(argv))
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "adagrad", "rmsprop", "lion"])
def test_state_bits_8_reaches_the_optimizer(optimizer):
    cfg = tr.TrainConfig(hidden=(64, 64), optimizer=optimizer, state_bits=8).validate()
    _, opt, _ = tr.build(cfg, 2, 2)
    assert opt.state_bits == 8
    big = [n for n in opt.state if any(k.endswith(quant8.CODES) for k in opt.state[n])]
    if optimizer == "sgd":  # no momentum: no state at all
        assert big == []
    else:
        assert len(big) == 1  # the 64x64 weight; the rest stay float32
    cfg32 = tr.TrainConfig(hidden=(64, 64), optimizer=optimizer).validate()
    _, opt32, _ = tr.build(cfg32, 2, 2)
    assert opt32.state_bits == 32


def test_lion_and_state_bits_are_recorded_and_checked_on_resume(tmp_path, capsys):
    rd = tmp_path / "run"
    argv = ["train", *SMALL, "--epochs", "2", "--run-dir", str(rd)]
    rc, err = _cli(capsys, *argv, "--optimizer", "lion", "--state-bits", "8")
    assert rc == 0, err
    cfg = json.loads((rd / "metrics.json").read_text())["config"]
    assert (cfg["optimizer"], cfg["state_bits"]) == ("lion", 8)
    # the monitor runs with 8-bit states too: a finite, positive gradient norm per epoch
    history = json.loads((rd / "metrics.json").read_text())["history"]
    norms = history["grad/dense1.weight"]
    assert len(norms) == 2 and all(0 < x < float("inf") for x in norms)
    # resume with other bits: refused in one line, naming the setting
    rc, err = _cli(capsys, *argv[:-2], "--epochs", "3", "--run-dir", str(rd), "--resume",
                   "--optimizer", "lion")  # fmt: skip
    assert rc != 0
    assert "state_bits=8" in err and "state_bits=32" in err
    assert len(err.strip().splitlines()) == 1
    rc, err = _cli(capsys, *argv[:-2], "--epochs", "3", "--run-dir", str(rd), "--resume",
                   "--optimizer", "lion", "--state-bits", "8")  # fmt: skip
    assert rc == 0, err
    assert json.loads((rd / "metrics.json").read_text())["summary"]["epochs_run"] == 3


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--optimizer", "nadam"], "nadam"),
        (["--dtype", "float64"], "dtype='float32'"),
        (["--optimizer", "rmsprop", "--momentum", "0.9"], "rmsprop momentum"),
    ],
)
def test_invalid_state_bits_combinations_are_refused_before_training(
    tmp_path, capsys, extra, named
):
    rd = tmp_path / "run"
    rc, err = _cli(capsys, "train", *SMALL, "--state-bits", "8", *extra, "--run-dir", str(rd))
    assert rc != 0
    assert "--state-bits" in err and named in err
    assert len(err.strip().splitlines()) == 1
    assert not (rd / "metrics.json").exists()


def test_state_bits_other_than_8_and_32_are_refused(capsys):
    rc, err = _cli(capsys, "train", *SMALL, "--state-bits", "16")
    assert rc == 2 and "--state-bits" in err
    with pytest.raises(ValueError, match="state_bits"):
        tr.TrainConfig(state_bits=4).validate()


def test_mlp_with_8bit_adam_ends_within_half_a_point_of_32bit():
    """The same MLP, data, seed and schedule; only the optimizer's state bits differ."""
    acc, loss = {}, {}
    for bits in (32, 8):
        cfg = tr.TrainConfig(
            data="moons", n_samples=2000, hidden=(64, 64), optimizer="adam",
            epochs=EPOCHS, batch_size=32, state_bits=bits,
        )  # fmt: skip
        res = tr.run(cfg, None, progress=None, plots=False, warm_up=False)
        acc[bits], loss[bits] = res["summary"]["val_acc"], res["summary"]["val_loss"]
    assert acc[32] > 0.9  # the runs really learned
    assert loss[8] != loss[32]  # the 8-bit states were really in use
    # within 0.5 points, inclusive: 0.98 − 0.975 is 0.0050000000000000044 in binary64
    assert abs(acc[8] - acc[32]) <= 0.005 + 1e-12, acc


EPOCHS = 20
