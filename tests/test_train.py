"""gpugd.train, `gpugd train` and the vanishing-gradient preset: the loop learns, the three
gradient-descent forms take the right number of steps, early stopping restores the best
weights, a resumed run is bit-identical to an uninterrupted one, a run directory that
does not fit is refused unchanged, data-parallel training under mpiexec equals
single-process training, and the sigmoid network's first layer gets orders of magnitude
less gradient than its last while the ReLU/He/batch-norm network's does not."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpugd import cli, train, vanishing

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")


def _cfg(**kw) -> train.TrainConfig:
    base = dict(
        data="moons", n_samples=200, noise=0.1, hidden=(16, 16), epochs=4, batch_size=32, seed=1
    )
    base.update(kw)
    return train.TrainConfig(**base)


def _params(run_dir: Path) -> dict[str, np.ndarray]:
    """Parameters, optimizer state and model buffers of the run directory's checkpoint."""
    with np.load(train.checkpoint_paths(run_dir)[0]) as z:
        return {k: z[k] for k in z.files if k.startswith(("param/", "state/", "model/"))}


def _state_files(run_dir: Path) -> dict[str, bytes]:
    """Every checkpoint file of ``run_dir`` by name (the pointer too), as bytes."""
    ck, tr = train.checkpoint_paths(run_dir)
    return {p.name: p.read_bytes() for p in (ck, tr, run_dir / "latest")}


def test_default_style_run_learns_and_writes_the_run_directory(tmp_path):
    res = train.run(_cfg(epochs=25), tmp_path, progress=None)
    s = res["summary"]
    assert s["val_acc"] >= 0.9 and s["train_acc"] >= 0.9, s
    assert res["history"]["train_loss"][-1] < 0.5 * res["history"]["train_loss"][0]
    for f in (
        "metrics.json",
        "gradients.csv",
        "checkpoint-000025.npz",
        "trainer-000025.npz",
        "latest",
        "curves.png",
        "grad_norms.png",
    ):
        assert (tmp_path / f).stat().st_size > 0, f
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["summary"]["epochs_run"] == 25
    assert not list(tmp_path.glob("checkpoint-00002[0-4].npz"))  # older generations deleted
    rows = (tmp_path / "gradients.csv").read_text().splitlines()
    assert rows[0] == "epoch,layer,grad_norm" and len(rows) == 1 + 25 * 3
    assert all(float(r.split(",")[2]) > 0 for r in rows[1:])
    table = train.summary_table(res)
    assert "val loss / acc" in table and str(tmp_path) in table


@pytest.mark.parametrize(("gd", "steps"), [("batch", 1), ("sgd", 160), ("minibatch", 5)])
def test_gradient_descent_forms_take_the_right_number_of_steps(gd, steps):
    res = train.run(_cfg(gd=gd, epochs=2, optimizer="sgd", lr=0.05), None, progress=None)
    assert res["n_train"] == 160
    assert res["history"]["steps"] == [steps, steps]


def test_resume_continues_bit_for_bit(tmp_path):
    # batch norm (running statistics), dropout (mask offsets), momentum, a step schedule
    # and shuffling: everything a resumed run must restore
    kw = dict(
        batch_norm=True,
        dropout=0.2,
        optimizer="sgd",
        momentum=0.9,
        lr=0.05,
        schedule="step",
        epochs=6,
        l2=1e-4,
    )
    straight, split = tmp_path / "straight", tmp_path / "split"
    a = train.run(_cfg(**kw), straight, progress=None)
    train.run(_cfg(**kw), split, progress=None, stop_after=3)  # interrupted after 3 epochs
    assert json.loads((split / "metrics.json").read_text())["summary"]["epochs_run"] == 3
    b = train.run(_cfg(**kw), split, resume=True, progress=None)
    pa, pb = _params(straight), _params(split)
    assert pa.keys() == pb.keys() and len(pa) > 8
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    assert a["history"]["train_loss"] == b["history"]["train_loss"]
    assert a["history"]["lr"] == b["history"]["lr"]
    assert any(k.startswith("model/bn") for k in pa) and any("offset" in k for k in pa)


def test_resume_refuses_a_different_configuration_and_changes_nothing(tmp_path):
    train.run(_cfg(epochs=2), tmp_path, progress=None)
    before = _state_files(tmp_path)
    with pytest.raises(train.ResumeError, match="hidden"):
        train.run(_cfg(epochs=3, hidden=(16, 8)), tmp_path, resume=True, progress=None)
    with pytest.raises(train.ResumeError, match="fewer"):
        train.run(_cfg(epochs=1), tmp_path, resume=True, progress=None)
    with pytest.raises(train.ResumeError, match="laid out for epochs=2"):
        train.run(_cfg(epochs=2, schedule="cosine"), tmp_path / "c", progress=None)
        train.run(_cfg(epochs=4, schedule="cosine"), tmp_path / "c", resume=True, progress=None)
    with pytest.raises(train.ResumeError, match="no checkpoint"):
        train.run(_cfg(), tmp_path / "empty", resume=True, progress=None)
    assert before == _state_files(tmp_path)


def test_early_stopping_restores_the_best_weights(tmp_path):
    # a learning rate this high makes the validation loss bounce: patience 2 stops it
    cfg = _cfg(epochs=60, patience=2, optimizer="sgd", lr=2.0, momentum=0.9)
    res = train.run(cfg, tmp_path, progress=None)
    s, h = res["summary"], res["history"]
    assert s["stopped_early"] and s["restored_best"] and s["epochs_run"] < 60
    best = int(np.nanargmin(h["val_loss"]))
    assert s["best_epoch"] == h["epoch"][best]
    # the final evaluation runs on the restored weights: the best epoch's validation loss
    assert s["val_loss"] == pytest.approx(h["val_loss"][best], rel=1e-6)


def test_bad_configuration_names_the_field():
    for kw, field in [
        (dict(optimizer="lbfgs"), "optimizer"),
        (dict(batch_size=0), "batch_size"),
        (dict(hidden=()), "hidden"),
        (dict(dropout=1.0), "dropout"),
        (dict(lr=-1.0), "lr"),
        (dict(momentum=0.9), "momentum"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(gd="full"), "gd"),
    ]:
        with pytest.raises(ValueError, match=f"^{field}:"):
            _cfg(**kw).validate()


def test_cli_train_runs_prints_the_summary_and_rejects_bad_input(tmp_path, capsys):
    rd = tmp_path / "run"
    rc = cli.main(
        [
            "train",
            "--hidden",
            "8,8",
            "--epochs",
            "3",
            "--n-samples",
            "120",
            "--run-dir",
            str(rd),
            "--no-plots",
            "--quiet",
            "--optimizer",
            "sgd",
            "--momentum",
            "0.9",
            "--max-grad-norm",
            "1.0",
            "--dropout",
            "0.1",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "train loss / acc" in out and "sgd lr=0.1" in out
    assert (rd / "metrics.json").exists() and not (rd / "curves.png").exists()
    assert (
        cli.main(
            [
                "train",
                "--epochs",
                "5",
                "--run-dir",
                str(rd),
                "--resume",
                "--quiet",
                "--hidden",
                "8,8",
                "--n-samples",
                "120",
                "--no-plots",
                "--optimizer",
                "sgd",
                "--momentum",
                "0.9",
                "--max-grad-norm",
                "1.0",
                "--dropout",
                "0.1",
            ]
        )
        == 0
    )
    assert json.loads((rd / "metrics.json").read_text())["summary"]["epochs_run"] == 5
    capsys.readouterr()
    assert cli.main(["train", "--lr", "-1", "--quiet", "--run-dir", str(tmp_path / "x")]) == 2
    assert "lr: expected" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--quiet"]) == 2
    assert "--resume needs --run-dir" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,0\n3,nan,1\n")
    assert cli.main(["train", "--data", str(bad), "--quiet", "--run-dir", str(tmp_path / "y")]) == 2
    assert "bad.csv" in capsys.readouterr().err


def test_user_csv_data_trains(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((150, 3))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    path = tmp_path / "three.csv"
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header="a,b,c,label", comments="")
    res = train.run(_cfg(data=str(path), epochs=10), None, progress=None)
    assert res["data"] == "three.csv" and res["summary"]["train_acc"] > 0.7


def test_vanishing_gradients_in_the_sigmoid_network_and_not_with_relu_he_batchnorm(tmp_path):
    res = vanishing.experiment(
        epochs=8, variants=("sigmoid", "+batchnorm"), run_dir=tmp_path, progress=None
    )
    rows = {r["variant"]: r for r in res["variants"]}
    sig, bn = rows["sigmoid"], rows["+batchnorm"]
    assert len(sig["grad_profile"]) == vanishing.DEPTH + 1
    # the first layer of the 9-layer sigmoid network gets orders of magnitude less
    # gradient than the output layer (each σ' ≤ 1/4); with ReLU, He and batch norm not
    assert sig["ratio"] < 1e-3, sig["ratio"]
    assert bn["ratio"] > 0.1, bn["ratio"]
    assert bn["val_acc"] > sig["val_acc"]
    assert (tmp_path / "vanishing.png").stat().st_size > 0
    assert json.loads((tmp_path / "vanishing.json").read_text())["variants"][0]["ratio"] > 0
    assert "first/last" in vanishing.table(res)


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec: pip install 'gpugd[mpi]'")
def test_data_parallel_train_under_mpiexec_equals_one_process(tmp_path):
    # float64, no batch norm or dropout: each rank's shard gradient divided by
    # len(batch)/2 and averaged over 2 ranks is the whole batch's mean gradient, up to
    # the order of the sums
    args = [
        "-m",
        "gpugd.cli",
        "train",
        "--dtype",
        "float64",
        "--hidden",
        "8,8",
        "--epochs",
        "3",
        "--n-samples",
        "150",
        "--batch-size",
        "25",
        "--quiet",
        "--no-plots",
        "--optimizer",
        "adam",
        "--max-grad-norm",
        "0.5",
    ]
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    runs = {}
    for ranks in (1, 2):
        rd = tmp_path / f"r{ranks}"
        cmd = [
            MPIEXEC,
            "-n",
            str(ranks),
            sys.executable,
            "-m",
            "mpi4py",
            *args,
            "--run-dir",
            str(rd),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        runs[ranks] = _params(rd)
        summary = json.loads((rd / "metrics.json").read_text())["summary"]
        assert summary["ranks"] == ranks
    for k in runs[1]:
        np.testing.assert_allclose(runs[2][k], runs[1][k], rtol=1e-10, atol=1e-13, err_msg=k)
    assert math.isfinite(float(np.abs(runs[1]["param/dense1.weight"]).sum()))


@pytest.mark.cuda
def test_training_on_the_gpu_follows_the_cpu_run(tmp_path):
    # float64 on both backends, batch norm and dropout included (the dropout mask is the
    # same counter-based stream on both): the trajectories differ only by the order of
    # the BLAS and reduction sums
    cfg = _cfg(dtype="float64", batch_norm=True, dropout=0.1, epochs=3, max_grad_norm=1.0)
    cpu = train.run(cfg, tmp_path / "cpu", progress=None, backend="cpu")
    gpu = train.run(cfg, tmp_path / "gpu", progress=None, backend="cuda")
    pc, pg = _params(tmp_path / "cpu"), _params(tmp_path / "gpu")
    for k in pc:
        np.testing.assert_allclose(pg[k], pc[k], rtol=1e-8, atol=1e-10, err_msg=k)
    assert gpu["summary"]["val_acc"] == pytest.approx(cpu["summary"]["val_acc"], abs=0.02)


def test_trainer_passes_the_optimizer_step_to_average_gradients(monkeypatch):
    """A rank that skipped a step is caught at the next call: each call carries the step
    count the optimizer is at (a stand-in communicator of 2 ranks records the calls)."""
    import gpugd.parallel

    class TwoRanks:
        rank, size = 0, 2

        def allreduce_(self, a):
            return a

    seen = []
    monkeypatch.setattr(
        gpugd.parallel, "average_gradients", lambda comm, grads, **kw: seen.append(kw["step"])
    )
    model, opt, _ = train.build(_cfg(), 2, 2)
    trainer = train.Trainer(model, opt, comm=TwoRanks())
    X = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
    trainer.train_epoch(X, (X[:, 0] > 0).astype(np.int64), 16, np.random.default_rng(1))
    assert seen == [0, 1, 2, 3] and opt.step_count == 4
