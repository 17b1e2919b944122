"""``gpugd train`` under ``mpiexec -n 2``: a configuration refused on one rank only (rank 0
alone checks the run directory) ends the whole job at once with the message and a
non-zero exit, instead of leaving the other rank waiting for the collective deadline."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from gpugd import cli

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
SMALL = ["--n-samples", "120", "--hidden", "8", "--quiet", "--no-plots", "--epochs", "1"]
DEADLINE = 300  # the collective deadline: far beyond what the abort may take
LIMIT = 60  # seconds the job may take (start-up of two ranks included)


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec: pip install 'gpugd[mpi]'")
def test_a_run_directory_refused_on_rank_0_aborts_the_job(tmp_path, capsys):
    rd = str(tmp_path / "run")
    assert cli.main(["train", "--run-dir", rd, *SMALL]) == 0  # a previous run is there
    capsys.readouterr()
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "gpugd", "train", "--run-dir", rd, *SMALL]
    env = dict(os.environ, GPUGD_COLLECTIVE_TIMEOUT=str(DEADLINE), NUMBA_NUM_THREADS="1")
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the job hung (killed after {LIMIT} s):\n{err[-3000:]}")
    took = time.monotonic() - start
    assert proc.returncode != 0, (out, err)
    assert (
        "already holds a run" in err
        and "rank 0 of 2: gpugd train refused its configuration; aborting the job" in err
    ), err
    assert "Traceback" not in err and took < LIMIT
