"""Checkpoints that refuse to load change nothing, damaged files get a clear error, and the
atomic writer cleans up after killed writers and honours the umask.

Each tampered checkpoint is a real ``Optimizer.save`` file with one value of its ``meta``
record (or one array) changed; ``load`` must raise ``CheckpointError`` and leave every
parameter, state, counter, schedule and loss-scale value as it was.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpugd
from gpugd import optim
from gpugd._io import atomic_savez, load_npz
from gpugd.amp import LossScaler
from gpugd.optim import CheckpointError
from gpugd.schedules import ReduceLROnPlateau

SHAPES = {"w": (5, 3), "b": (3,)}


def _setup(seed: int):
    flat = gpugd.FlatParams(SHAPES, np.float32, np)
    rng = np.random.default_rng(seed)
    for n, shape in SHAPES.items():
        flat[n][...] = rng.standard_normal(shape)
    opt = optim.NAdam(flat, lr=1e-2, nonfinite="skip")
    ReduceLROnPlateau(opt, patience=1)
    LossScaler(opt, init_scale=8.0, growth_interval=3)
    for step in range(4):
        flat.grad_data[...] = rng.standard_normal(flat.numel)
        opt.step()
        opt.scheduler.step(float(step % 2))
    return flat, opt


def _snapshot(flat, opt):
    return {
        "params": flat.data.copy(),
        "state": {n: {k: a.copy() for k, a in st.items()} for n, st in opt.state.items()},
        "counts": (opt.step_count, opt.skipped_steps),
        "groups": copy.deepcopy(opt.param_groups),
        "extra": [dict(g.extra) for g in opt._groups],
        "sched": opt.scheduler.state_dict(),
        "scaler": opt.loss_scaler.state_dict(),
    }


def _assert_unchanged(before, after):
    np.testing.assert_array_equal(after["params"], before["params"])
    for n, st in before["state"].items():
        for k, a in st.items():
            np.testing.assert_array_equal(after["state"][n][k], a, err_msg=f"{n}.{k}")
    for key in ("counts", "groups", "extra", "sched", "scaler"):
        assert after[key] == before[key], key


def _rewrite(src: Path, dst: Path, meta_edit=None, array_edit=None) -> None:
    files = load_npz(src)
    meta = json.loads(files.pop("meta").tobytes().decode())
    if meta_edit is not None:
        meta_edit(meta)
    if array_edit is not None:
        array_edit(files)
    files["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    atomic_savez(dst, files)


def _set(*path, value):
    def edit(meta):
        d = meta
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return edit


def _array(key, fn):
    def edit(files):
        files[key] = fn(files[key].copy())

    return edit


def _poke(a, v):
    a.reshape(-1)[0] = v
    return a


META_CASES = {
    "skipped_steps str": _set("skipped_steps", value="x"),
    "skipped_steps negative": _set("skipped_steps", value=-1),
    "skipped_steps bool": _set("skipped_steps", value=True),
    "step float": _set("step", value=2.5),
    "mu_product NaN": _set("group_state", 0, "mu_product", value=float("nan")),
    "mu_product > 1": _set("group_state", 0, "mu_product", value=2.0),
    "mu_product str": _set("group_state", 0, "mu_product", value="x"),
    "group_state unknown key": _set("group_state", 0, "momentum", value=0.5),
    "group_state not a list": _set("group_state", value={"a": 1}),
    "lrs NaN": _set("scheduler", "lrs", 0, value=float("nan")),
    "lrs negative": _set("scheduler", "lrs", 0, value=-1.0),
    "lrs str": _set("scheduler", "lrs", 0, value="x"),
    "base_lrs zero": _set("scheduler", "base_lrs", 0, value=0.0),
    "best NaN": _set("scheduler", "best", value=float("nan")),
    "best str": _set("scheduler", "best", value="x"),
    "num_bad_steps str": _set("scheduler", "num_bad_steps", value="x"),
    "scaler skipped str": _set("loss_scaler", "skipped_steps", value="x"),
    "scaler tracker bool": _set("loss_scaler", "growth_tracker", value=True),
    "scaler scale NaN": _set("loss_scaler", "scale", value=float("nan")),
    "lr NaN": _set("param_groups", 0, "lr", value=float("nan")),
    "lr str": _set("param_groups", 0, "lr", value="x"),
    "params flag str": _set("params", value="yes"),
    "param_groups not a list": _set("param_groups", value="x"),
    "param group not a dict": _set("param_groups", 0, value=3),
}
ARRAY_CASES = {
    "state NaN": _array("state/w/exp_avg", lambda a: _poke(a, np.nan)),
    "state inf": _array("state/b/exp_avg", lambda a: _poke(a, np.inf)),
    "exp_avg_sq negative": _array("state/w/exp_avg_sq", lambda a: _poke(a, -1.0)),
    "param NaN": _array("param/w", lambda a: _poke(a, np.nan)),
    "param wrong shape": _array("param/b", lambda a: a[:2]),
    "state wrong dtype": _array("state/w/exp_avg", lambda a: a.astype(np.float64)),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    _, opt = _setup(0)
    path = d / "good.npz"
    opt.save(path)
    return path


def _refused(path: Path, match: str | None = None) -> None:
    flat, opt = _setup(1)
    before = _snapshot(flat, opt)
    with pytest.raises(CheckpointError, match=match):
        opt.load(path)
    _assert_unchanged(before, _snapshot(flat, opt))


def test_the_untampered_checkpoint_loads(saved):
    flat, opt = _setup(1)
    opt.load(saved)
    ref_flat, ref = _setup(0)
    for n in SHAPES:
        np.testing.assert_array_equal(flat[n], ref_flat[n])
    assert opt.step_count == ref.step_count
    assert opt.scheduler.state_dict() == ref.scheduler.state_dict()


@pytest.mark.parametrize("case", list(META_CASES))
def test_a_tampered_meta_value_is_refused_before_any_write(saved, tmp_path, case):
    bad = tmp_path / "bad.npz"
    _rewrite(saved, bad, meta_edit=META_CASES[case])
    _refused(bad)


@pytest.mark.parametrize("case", list(ARRAY_CASES))
def test_a_tampered_array_is_refused_before_any_write(saved, tmp_path, case):
    bad = tmp_path / "bad.npz"
    _rewrite(saved, bad, array_edit=ARRAY_CASES[case])
    _refused(bad)


def _damaged(saved: Path, tmp_path: Path) -> dict[str, Path]:
    raw = saved.read_bytes()
    out = {}

    def put(name, data):
        p = tmp_path / f"{name}.npz"
        p.write_bytes(data)
        out[name] = p

    put("empty", b"")
    for frac in (0.1, 0.5, 0.9, 0.99):
        put(f"truncated {frac}", raw[: int(len(raw) * frac)])
    mid = len(raw) // 2
    put("crc", raw[:mid] + bytes([raw[mid] ^ 0xFF]) + raw[mid + 1 :])
    put("random", np.random.default_rng(0).bytes(len(raw)))
    put("text", b"not a checkpoint\n")
    npy = tmp_path / "single.npy"
    np.save(npy, np.zeros(3))
    out["npy"] = npy
    return out


def test_damaged_files_raise_checkpoint_errors_naming_the_file(saved, tmp_path):
    for name, path in _damaged(saved, tmp_path).items():
        flat, opt = _setup(1)
        before = _snapshot(flat, opt)
        with pytest.raises(CheckpointError, match=str(path.name)):
            opt.load(path)
        _assert_unchanged(before, _snapshot(flat, opt)), name


def test_missing_file_is_a_checkpoint_error(tmp_path):
    _, opt = _setup(1)
    with pytest.raises(CheckpointError, match=r"nope\.npz"):
        opt.load(tmp_path / "nope.npz")


def test_saved_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        _, opt = _setup(0)
        p = opt.save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o640


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporary_files_of_killed_writers_are_removed(tmp_path):
    target = tmp_path / "c.npz"
    dead = tmp_path / f".c.npz.{_dead_pid()}.abcd.tmp"
    live = tmp_path / f".c.npz.{os.getppid()}.efgh.tmp"  # a running process: kept
    other = tmp_path / f".d.npz.{_dead_pid()}.ijkl.tmp"  # another file's: kept
    for p in (dead, live, other):
        p.write_bytes(b"x" * 100)
    _, opt = _setup(0)
    opt.save(target)
    assert not dead.exists() and live.exists() and other.exists()
    assert load_npz(target)


def _saver(target: Path, ready: int) -> None:
    """The child: save in a loop (each save's parameters all equal to its count), telling
    the parent after the first."""
    flat = gpugd.FlatParams({"w": (256, 256)}, np.float32, np)
    opt = optim.Adam(flat, lr=1e-3)
    k = 0
    while True:
        flat.data[...] = k
        opt.save(target)
        if k == 0:
            os.write(ready, b"1")
        k += 1


def test_kill_9_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    """50 kill -9 at random moments of a loop of saves (forked children): the file always
    loads (the old or the new version, all parameters equal), and the temporary files the
    kills left are removed by the next save of the same file."""
    target = tmp_path / "k.npz"
    rng = np.random.default_rng(0)
    for _ in range(50):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            try:
                os.close(r)
                _saver(target, w)
            finally:
                os._exit(1)
        os.close(w)
        assert os.read(r, 1) == b"1"
        os.close(r)
        time.sleep(float(rng.uniform(0, 0.03)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        flat = gpugd.FlatParams({"w": (256, 256)}, np.float32, np)
        opt = optim.Adam(flat, lr=1e-3)
        opt.load(target)
        assert np.unique(flat.data).size == 1
    flat = gpugd.FlatParams({"w": (256, 256)}, np.float32, np)
    optim.Adam(flat, lr=1e-3).save(target)
    assert not list(tmp_path.glob(".k.npz.*.tmp"))


def test_adagrad_refuses_an_infinite_initial_accumulator():
    flat = gpugd.FlatParams(SHAPES, np.float32, np)
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        optim.Adagrad(flat, initial_accumulator_value=float("inf"))
    with pytest.raises(TypeError, match="initial_accumulator_value"):
        optim.Adagrad(flat, initial_accumulator_value="1")


def test_a_tensor_in_two_param_groups_is_refused():
    flat = gpugd.FlatParams(SHAPES, np.float32, np)
    groups = [
        {"params": flat, "names": ["w"]},
        {"params": [flat["w"]], "grads": [flat.grads["w"]], "names": ["w_again"]},
    ]
    with pytest.raises(ValueError, match="shares memory"):
        optim.SGD(groups, lr=0.1)
    a = np.zeros(10, np.float32)
    g = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="shares memory"):
        optim.SGD([a[:6], a[4:]], grads=[g[:6], g[4:]], lr=0.1)


def test_damaged_data_files_raise_data_errors(tmp_path):
    from gpugd.data import DataError, load

    good = tmp_path / "d.npz"
    np.savez(good, X=np.zeros((20, 3)), y=np.arange(20) % 2)
    raw = good.read_bytes()
    mid = len(raw) // 2
    cases = {
        "empty": b"",
        "truncated": raw[: len(raw) // 2],
        "crc": raw[:mid] + bytes([raw[mid] ^ 0xFF]) + raw[mid + 1 :],
        "text": b"hello",
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.npz"
        p.write_bytes(data)
        with pytest.raises(DataError, match=f"{name}.npz"):
            load(p)
    npy = tmp_path / "one.npz"
    with npy.open("wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError, match=r"single \.npy"):
        load(npy)


def test_load_takes_the_checkpoints_hyperparameters_as_torch_does(tmp_path):
    """The chosen behaviour (torch's load_state_dict): the saved lr replaces the new one;
    a configuration that needs other states (amsgrad) is refused, changing nothing."""
    flat = gpugd.FlatParams(SHAPES, np.float32, np)
    optim.Adam(flat, lr=1e-2, betas=(0.8, 0.9)).save(tmp_path / "a.npz")
    opt = optim.Adam(gpugd.FlatParams(SHAPES, np.float32, np), lr=1e-3)
    opt.load(tmp_path / "a.npz")
    assert opt.param_groups[0]["lr"] == 1e-2 and opt.param_groups[0]["betas"] == (0.8, 0.9)
    other = optim.Adam(gpugd.FlatParams(SHAPES, np.float32, np), lr=1e-3, amsgrad=True)
    with pytest.raises(CheckpointError, match="states"):
        other.load(tmp_path / "a.npz")
    assert other.param_groups[0]["lr"] == 1e-3
