"""kill -9 loop over ``gpugd train``: a run is SIGKILLed at random moments after it has
written a checkpoint (mid-epoch, mid-save, between the files of a save), resumed, killed
again, ... ``KILLS`` times; every directory left must resume (the next ``--resume``
exits 0 or is killed in turn), and the last one finishes. The processes start from the
same Numba cache, so each costs a Python start-up, not a compilation."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpugd

# os.fork and /proc: Linux (CI's platform)
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux")

ROOT = Path(gpugd.__file__).resolve().parents[1]
KILLS = 50
# tiny data and model: an epoch takes about as long as its checkpoint, so the kills land
# inside saves often; batch norm, dropout and early-stopping state are all in the files
FLAGS = [
    *("--n-samples", "40", "--hidden", "4", "--batch-size", "16", "--batch-norm"),
    *("--dropout", "0.1", "--patience", "1000000", "--quiet", "--no-plots"),
]


# A fork server: one Python process imports gpugd and runs one tiny training (every kernel
# the loop uses is loaded from Numba's cache once, all serial: no thread pool exists to
# be forked), then forks a child per request that runs ``gpugd train`` (``cli.main``,
# what ``python -m gpugd train`` runs) with its output in a file; the test SIGKILLs the
# child and asks the server for its exit status. A kill then costs milliseconds, not a
# Python start-up.
ZYGOTE = r"""
import contextlib, io, json, os, sys
from gpugd import cli
with contextlib.redirect_stdout(io.StringIO()):
    cli.main(["train", "--run-dir", sys.argv[2], "--epochs", "2", *json.loads(sys.argv[1])])
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if "wait" in req:
        print(os.waitstatus_to_exitcode(os.waitpid(req["wait"], 0)[1]), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            code = cli.main(req["argv"])
        except BaseException as exc:
            print(repr(exc), file=sys.stderr)
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
"""


class _Zygote:
    def __init__(self, warm_dir: Path) -> None:
        # GNU OpenMP terminates a forked child that uses it; Numba's workqueue layer runs
        # in the children
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_THREADING_LAYER": "workqueue"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, json.dumps(FLAGS), str(warm_dir)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._ask(None) == "ready"

    def _ask(self, req: dict | None) -> str:
        if req is not None:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def train(self, rd: Path, epochs: int, resume: bool, log: Path) -> int:
        """Fork a ``gpugd train`` child; its pid."""
        argv = ["train", "--run-dir", str(rd), "--epochs", str(epochs), *FLAGS]
        return int(self._ask({"argv": argv + (["--resume"] if resume else []), "log": str(log)}))

    def wait(self, pid: int) -> int:
        return int(self._ask({"wait": pid}))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _exited(pid: int) -> bool:
    """The child has ended (a zombie until the server reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except FileNotFoundError:
        return True


def _marker(rd: Path) -> tuple[int, int] | None:
    """What changes whenever a checkpoint completes (the pointer's, or the last file's, inode
    and mtime)."""
    for name in ("latest", "trainer.npz"):
        try:
            st = (rd / name).stat()
        except FileNotFoundError:
            continue
        return st.st_ino, st.st_mtime_ns
    return None


def _done_epochs(rd: Path) -> int:
    if (rd / "latest").exists():
        return json.loads((rd / "latest").read_text())["epoch"]
    with np.load(rd / "trainer.npz") as z:
        return json.loads(z["meta"].tobytes().decode())["epoch"]


def test_every_directory_a_kill_leaves_resumes(tmp_path):
    rd = tmp_path / "run"
    rnd = random.Random(20261203)
    t0 = time.monotonic()
    zygote = _Zygote(tmp_path / "warm")
    try:
        for k in range(KILLS):
            before, log = _marker(rd), tmp_path / f"kill{k}.log"
            pid = zygote.train(rd, 10**6, resume=k > 0, log=log)
            deadline = time.monotonic() + 60
            while _marker(rd) == before and not _exited(pid) and time.monotonic() < deadline:
                time.sleep(0.001)
            if _exited(pid):  # a resume that was refused (or a crash)
                code = zygote.wait(pid)
                raise AssertionError(f"kill {k}: exited {code} first:\n{log.read_text()}")
            assert _marker(rd) != before, f"kill {k}: no checkpoint within 60 s"
            time.sleep(rnd.uniform(0, 0.01))
            os.kill(pid, signal.SIGKILL)
            assert zygote.wait(pid) == -signal.SIGKILL
    finally:
        zygote.close()
    # the last directory resumes and finishes under a real ``python -m gpugd train``
    argv = [sys.executable, "-m", "gpugd", "train", "--run-dir", str(rd), "--resume"]
    final = subprocess.run(
        [*argv, "--epochs", str(_done_epochs(rd) + 1), *FLAGS],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert final.returncode == 0, final.stderr
    assert json.loads((rd / "metrics.json").read_text())["summary"]["epochs_run"] > KILLS
    # nothing piles up: at most the current generation and one newer one a kill cut short;
    # the last kill's temporary files are removed by the final run's saves
    assert len(list(rd.glob("checkpoint-*.npz"))) <= 2
    assert len(list(rd.glob(".*.tmp"))) <= 2, sorted(p.name for p in rd.glob(".*"))
    print(f"{KILLS} kills + final resume in {time.monotonic() - t0:.1f} s")
