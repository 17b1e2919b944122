"""The ``gpugd`` command's exits and messages: malformed flags are refused with the flag
named (no prefix matching, no empty layer widths, no --epochs 0 read as the default), a
run directory that is a file or holds a previous run is refused before training, Ctrl-C
leaves a consistent checkpoint generation and exits 130 with one line, ``python -m gpugd`` is
the same command, and the progress output is a tqdm bar on a terminal and plain lines
elsewhere."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpugd import cli, train

SMALL = ["--n-samples", "120", "--hidden", "8", "--quiet", "--no-plots"]


def _cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit status and stderr of ``gpugd argv`` (argparse's SystemExit read as its code)."""
    try:
        rc = cli.main(list(argv))
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["train", "--hidden", "64,,64"], "--hidden"),
        (["train", "--hidden", ",64"], "--hidden"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--epoch", "5"], "--epoch"),  # a prefix of --epochs: not accepted
        (["train", "--lr", "0.1", "--run"], "--run"),
        (["bench", "--quic"], "--quic"),
        (["info", "--kern"], "--kern"),
        (["--nope"], "--nope"),
        (["--nope", "train"], "--nope"),
    ],
)
def test_malformed_flags_exit_2_naming_the_flag(capsys, argv, named):
    rc, err = _cli(capsys, *argv)
    assert rc == 2 and named in err, err
    assert "required" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--val-fraction", "1.5"], "--val-fraction: expected a value in [0, 1)"),
        (["--dropout", "1"], "--dropout: expected a value in [0, 1)"),
        (["--optimizer", "adam", "--momentum", "0.9"], "--momentum: expected 0 unless"),
    ],
)
def test_bad_train_values_name_the_flag(capsys, tmp_path, argv, message):
    rc, err = _cli(capsys, "train", "--run-dir", str(tmp_path / "r"), *SMALL, *argv)
    assert rc == 2 and err.startswith(f"gpugd train: {message}"), err
    assert not (tmp_path / "r" / "latest").exists()


def test_no_command_says_which_commands_exist(capsys):
    rc, err = _cli(capsys)
    assert rc == 2 and "train, bench or info" in err


def test_no_parser_takes_abbreviations():
    p, commands = cli._parser()
    assert not p.allow_abbrev and all(not c.allow_abbrev for c in commands.values())


def test_every_flag_has_help():
    _, commands = cli._parser()
    for name, c in commands.items():
        for action in c._actions:
            assert action.help, f"gpugd {name} {action.option_strings}: no help text"


def test_python_dash_m_gpugd_is_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "gpugd", "--version"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.startswith("gpugd "), out


def test_run_dir_that_is_a_file_is_refused_before_training(tmp_path, capsys, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("keep me")

    def no_training(*a, **k):
        raise AssertionError("trained before checking the run directory")

    monkeypatch.setattr(train.Trainer, "train_epoch", no_training)
    rc, err = _cli(capsys, "train", "--run-dir", str(f), *SMALL)
    assert rc == 2 and "--run-dir" in err and "is a file" in err
    with pytest.raises(train.RunDirError, match="is a file"):
        train.run(train.TrainConfig(epochs=1), f, progress=None)
    with pytest.raises(train.RunDirError, match="cannot create"):
        train.run(train.TrainConfig(epochs=1), f / "under", progress=None)
    assert f.read_text() == "keep me"


def test_a_previous_run_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    rd = str(tmp_path / "run")
    assert _cli(capsys, "train", "--run-dir", rd, "--epochs", "2", *SMALL)[0] == 0
    before = {p.name: p.read_bytes() for p in Path(rd).iterdir()}
    rc, err = _cli(capsys, "train", "--run-dir", rd, "--epochs", "2", *SMALL)
    assert rc == 2 and "already holds a run" in err and "--overwrite" in err and "--resume" in err
    assert before == {p.name: p.read_bytes() for p in Path(rd).iterdir()}
    rc, err = _cli(capsys, "train", "--run-dir", rd, "--resume", "--overwrite", *SMALL)
    assert rc == 2 and "exclude" in err
    assert _cli(capsys, "train", "--run-dir", rd, "--epochs", "3", "--overwrite", *SMALL)[0] == 0
    assert json.loads((Path(rd) / "metrics.json").read_text())["summary"]["epochs_run"] == 3


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler for the test, whatever the suite inherited: a suite run
    as a background job of a non-interactive shell starts with SIGINT ignored (POSIX), and
    ``_sigint_deferred`` rightly leaves an ignored SIGINT alone."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, signal.SIG_DFL if before is None else before)


def test_sigint_is_held_until_the_checkpoint_pair_is_written(python_sigint):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with train._sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append("the rest of the block ran")
    assert done and signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_and_a_resumable_checkpoint(tmp_path, python_sigint):
    # (an ignored SIGINT is inherited across exec, a handled one starts the child at default)
    rd = tmp_path / "run"
    argv = [sys.executable, "-m", "gpugd", "train", "--run-dir", str(rd), "--epochs", "100000"]
    proc = subprocess.Popen(
        [*argv, *SMALL],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (rd / "latest").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a few more epochs, so the signal may land inside a save
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpugd train: interrupted"), err
    assert "--resume" in lines[0] and "Traceback" not in err
    # the generation is consistent: resuming from it is accepted (it checks the steps agree)
    with np.load(train.checkpoint_paths(rd)[1]) as z:
        meta = json.loads(z["meta"].tobytes().decode())
    cfg = train.TrainConfig.from_json(meta["config"])
    res = train.run(cfg, rd, resume=True, progress=None, plots=False, stop_after=1)
    assert res["summary"]["epochs_run"] == meta["epoch"] + 1


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _cfg(**kw) -> train.TrainConfig:
    base = dict(n_samples=120, hidden=(8,), epochs=3, batch_size=16, seed=1)
    return train.TrainConfig(**{**base, **kw})


def test_progress_is_a_tqdm_bar_on_a_terminal_and_plain_lines_elsewhere():
    tty, log = _Tty(), io.StringIO()
    train.run(_cfg(), None, progress=tty, plots=False)
    train.run(_cfg(), None, progress=log, plots=False)
    assert "step/s" in tty.getvalue() and "<" in tty.getvalue()  # rate and ETA
    assert "\r" not in log.getvalue() and "step/s" not in log.getvalue()
    assert [ln.split()[:2] for ln in log.getvalue().splitlines()] == [
        ["epoch", f"{e}/3"] for e in (1, 2, 3)
    ]


def test_monitor_flags_are_written_printed_and_mapped_to_their_epoch(tmp_path):
    deep = dict(hidden=(10,) * 9, activation="sigmoid", init="glorot_uniform", optimizer="sgd")
    res = train.run(_cfg(lr=0.1, **deep), tmp_path, progress=None)
    flags = json.loads((tmp_path / "metrics.json").read_text())["monitor_flags"]
    assert flags and flags == res["monitor_flags"]
    assert res["summary"]["monitor_events"] == len(flags)
    assert set(flags[0]) >= {"step", "tensor", "kind", "value"}
    assert any(f["tensor"] == "dense1.weight" and f["kind"] == "vanishing" for f in flags)
    table = train.summary_table(res)
    f0 = flags[0]
    assert f"step {f0['step']} {f0['tensor']} {f0['kind']}" in table
    assert (tmp_path / "grad_norms.png").stat().st_size > 0
    steps = res["history"]["steps"]  # per epoch; flag steps count from 1
    history = {"epoch": [1, 2, 3], "steps": steps}
    marks = [{"step": s} for s in (1, steps[0], steps[0] + 1, sum(steps))]
    assert train._flag_epochs(history, marks) == [1, 1, 2, 3]


def test_warm_up_is_timed_apart_and_changes_nothing(tmp_path):
    a = train.run(_cfg(dropout=0.2, batch_norm=True), tmp_path / "a", progress=None)
    b = train.run(_cfg(dropout=0.2, batch_norm=True), tmp_path / "b", progress=None, warm_up=False)
    assert a["summary"]["warm_up_s"] > 0 and b["summary"]["warm_up_s"] == 0
    assert a["history"]["train_loss"] == b["history"]["train_loss"]
    with (
        np.load(train.checkpoint_paths(tmp_path / "a")[0]) as za,
        np.load(train.checkpoint_paths(tmp_path / "b")[0]) as zb,
    ):
        for k in za.files:
            np.testing.assert_array_equal(za[k], zb[k], err_msg=k)


def test_public_functions_classes_and_methods_have_docstrings():
    import importlib
    import inspect

    missing = []
    for m in ("gpugd.nn", "gpugd.train", "gpugd.cli", "benchmarks.harness", "benchmarks.plot"):
        mod = importlib.import_module(m)
        for name in getattr(mod, "__all__", [n for n in dir(mod) if not n.startswith("_")]):
            obj = getattr(mod, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or obj.__module__ != m:
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{m}.{name}")
            for k, v in vars(obj).items() if inspect.isclass(obj) else ():
                f = v.fget if isinstance(v, property) else v
                if k.startswith("_") or not inspect.isfunction(f) or f.__name__ == "<lambda>":
                    continue
                if not inspect.getdoc(getattr(obj, k) if not isinstance(v, property) else f):
                    if not any(inspect.getdoc(getattr(b, k, None)) for b in obj.__mro__[1:]):
                        missing.append(f"{m}.{name}.{k}")
    assert not missing, missing
