"""``gpugd train --resume`` over a damaged or tampered run directory: every field of the
trainer state and the ``latest`` pointer is checked before anything is applied, so each
case below exits 2 with one line (no traceback) and changes no file; and a run directory
of the layout before generations (checkpoint.npz + trainer.npz) still resumes bit for bit."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gpugd import cli, train
from gpugd._train_ckpt import generation_names

FLAGS = [
    *("--n-samples", "80", "--hidden", "6", "--batch-size", "16", "--batch-norm"),
    *("--dropout", "0.1", "--patience", "100", "--quiet", "--no-plots", "--seed", "2"),
]


def _cli(capsys, rd: Path, *argv: str) -> tuple[int, str]:
    rc = cli.main(["train", "--run-dir", str(rd), *FLAGS, *argv])
    return rc, capsys.readouterr().err


def _snapshot(rd: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(rd.iterdir())}


def _rewrite(path: Path, edit: Callable[[dict[str, np.ndarray], dict], None]) -> None:
    with np.load(path) as z:
        files = dict(z)
    meta = json.loads(files["meta"].tobytes().decode())
    edit(files, meta)
    files["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **files)


def _set(key: str, value) -> Callable:
    return lambda files, meta: meta.__setitem__(key, value)


def _array(key: str, value) -> Callable:
    return lambda files, meta: files.__setitem__(key, value)


def _scaled_params(files, meta) -> None:
    files["best/params"] = np.full_like(files["best/params"], np.nan)


def _short_history(files, meta) -> None:
    meta["history"]["train_loss"].pop()


def _bad_flag(files, meta) -> None:
    meta["monitor_flags"] = [{"step": "x", "tensor": 1}]


def _no_buffer(files, meta) -> None:
    del files[next(k for k in files if k.startswith("best/buffer/"))]


TAMPERED = {
    "best/params of one element": (_array("best/params", np.ones(1, np.float32)), "best/params"),
    "best/params float64": (
        lambda f, m: f.__setitem__("best/params", f["best/params"].astype(np.float64)),
        "best/params",
    ),
    "best/params NaN": (_scaled_params, "non-finite"),
    "best/buffer missing": (_no_buffer, "arrays"),
    "an unknown array": (_array("junk", np.zeros(3)), "arrays"),
    "epoch a string": (_set("epoch", "x"), "epoch"),
    "epoch negative": (_set("epoch", -1), "epoch"),
    "bad_epochs negative": (_set("bad_epochs", -1), "bad_epochs"),
    "best_epoch past epoch": (_set("best_epoch", 99), "best_epoch"),
    "best_metric NaN": (_set("best_metric", float("nan")), "best_metric"),
    "stopped_early a string": (_set("stopped_early", "no"), "stopped_early"),
    "opt_step a float": (_set("opt_step", 1.5), "opt_step"),
    "opt_step off by one": (lambda f, m: m.__setitem__("opt_step", m["opt_step"] + 1), "step"),
    "history short": (_short_history, "history"),
    "history column missing": (lambda f, m: m["history"].pop("lr"), "history"),
    "monitor flag malformed": (_bad_flag, "monitor_flags"),
    "monitor_flags_total negative": (_set("monitor_flags_total", -1), "monitor_flags_total"),
    "rng not a state": (_set("rng", {"bit_generator": "PCG64", "state": "x"}), "rng"),
    "rng another generator": (_set("rng", {"bit_generator": "MT19937"}), "rng"),
    "rng missing": (lambda f, m: m.pop("rng"), "missing"),
    "format": (_set("format", "gpugd-trainer-0"), "format"),
    "config not a mapping": (_set("config", [1]), "config"),
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    rd = tmp_path_factory.mktemp("resume") / "run"
    assert cli.main(["train", "--run-dir", str(rd), *FLAGS, "--epochs", "3"]) == 0
    return rd


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_trainer_state_is_refused_with_one_line(case, run_dir, tmp_path, capsys):
    rd = tmp_path / "run"
    rd.mkdir()
    for p in run_dir.iterdir():
        (rd / p.name).write_bytes(p.read_bytes())
    edit, named = TAMPERED[case]
    _rewrite(train.checkpoint_paths(rd)[1], edit)
    before = _snapshot(rd)
    rc, err = _cli(capsys, rd, "--epochs", "5", "--resume")
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpugd train: ") and named in err, err
    assert "Traceback" not in err
    assert _snapshot(rd) == before


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda rd: (rd / "latest").write_text("{"), "unreadable"),
        (lambda rd: (rd / "latest").write_text('{"format": "x"}'), "pointer"),
        (lambda rd: _repoint(rd, "../../etc/passwd"), "pointer"),
        (lambda rd: _repoint(rd, None, epoch=7), "missing"),
        (lambda rd: train.checkpoint_paths(rd)[1].write_bytes(b"PK\x03\x04junk"), "damaged"),
        (lambda rd: _truncate(train.checkpoint_paths(rd)[0]), "damaged"),
    ],
)
def test_a_damaged_pointer_or_file_is_refused_with_one_line(
    damage, named, run_dir, tmp_path, capsys
):
    rd = tmp_path / "run"
    rd.mkdir()
    for p in run_dir.iterdir():
        (rd / p.name).write_bytes(p.read_bytes())
    damage(rd)
    before = _snapshot(rd)
    rc, err = _cli(capsys, rd, "--epochs", "5", "--resume")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and named in err, err
    assert "Traceback" not in err and _snapshot(rd) == before


def _repoint(rd: Path, checkpoint: str | None, epoch: int = 3) -> None:
    meta = json.loads((rd / "latest").read_text())
    meta["epoch"] = epoch
    if checkpoint is not None:
        meta["checkpoint"] = checkpoint
    else:
        meta["checkpoint"], meta["trainer"] = generation_names(epoch)
    (rd / "latest").write_text(json.dumps(meta))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_the_layout_before_generations_still_resumes_bit_for_bit(tmp_path, capsys):
    straight, legacy = tmp_path / "straight", tmp_path / "legacy"
    assert _cli(capsys, straight, "--epochs", "4")[0] == 0
    assert _cli(capsys, legacy, "--epochs", "2")[0] == 0
    ck, tr = train.checkpoint_paths(legacy)
    buffers = {}

    def drop_model(files, meta) -> None:
        for k in [k for k in files if k.startswith("model/")]:
            a = files.pop(k)
            if not k.endswith(".seed"):
                buffers[f"buffer/{k[len('model/') :]}"] = a
        del meta["model"]

    _rewrite(ck, drop_model)
    _rewrite(tr, lambda files, meta: files.update(buffers))
    ck.rename(legacy / "checkpoint.npz")
    tr.rename(legacy / "trainer.npz")
    (legacy / "latest").unlink()
    assert train.checkpoint_paths(legacy) == (legacy / "checkpoint.npz", legacy / "trainer.npz")
    assert _cli(capsys, legacy, "--epochs", "4", "--resume")[0] == 0
    assert not (legacy / "checkpoint.npz").exists()  # replaced by a generation
    with (
        np.load(train.checkpoint_paths(straight)[0]) as za,
        np.load(train.checkpoint_paths(legacy)[0]) as zb,
    ):
        assert za.files == zb.files
        for k in za.files:
            np.testing.assert_array_equal(za[k], zb[k], err_msg=k)
