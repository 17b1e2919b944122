"""benchmarks/run_gpu.sh without a GPU: its syntax, a dry run with a fake ``python3`` on
PATH (which records each command, makes the train run directory and the suites' JSON), and
benchmarks/gpu_suite.py keeping a cut-off suite's finished rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "run_gpu.sh"

FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
case "$*" in
  *"-m pytest"*) sleep "${FAKE_TESTS_S:-0}" ;;
  *"gpugd.cli train"*)
    while [ $# -gt 0 ]; do
      [ "$1" = --run-dir ] && mkdir -p "$2/ck" && echo '{}' > "$2/ck/m.json"
      shift
    done ;;
  *"benchmarks.gpu_suite"*) echo '{"rows": []}' > "$4" ;;
esac
exit 0
"""


def _dry_run(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str], Path]:
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils timeout")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text(FAKE_PYTHON)
    (fake / "python3").chmod(0o755)
    out, results, log = tmp_path / "out", tmp_path / "results", tmp_path / "log"
    out.mkdir()
    full = {
        **os.environ,
        "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        "OUT": str(out),
        "RESULTS_DIR": str(results),
        **env,
    }
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full, timeout=60)
    return r, log.read_text().splitlines() if log.exists() else [], out


def test_the_script_parses():
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_dry_run_copies_the_train_directory_and_runs_each_suite_row_by_row(tmp_path):
    r, cmds, out = _dry_run(tmp_path, BUDGET_S="100", SUITES="optim vector")
    assert r.returncode == 0, r.stdout + r.stderr
    assert any("gpugd.cli info" in c for c in cmds)
    assert any("-m pytest -q -m cuda" in c for c in cmds)
    suites = [c for c in cmds if "benchmarks.gpu_suite" in c]
    assert [c.split()[2] for c in suites] == ["optim", "vector"]
    assert all(c.endswith("--quick") for c in suites)
    train = [p for p in out.iterdir() if p.name.startswith("gpu-train-") and p.is_dir()]
    assert len(train) == 1 and (train[0] / "ck" / "m.json").is_file()
    names = {p.name.split("-2")[0] for p in out.iterdir()}
    assert {"gpu-info", "gpu-tests", "gpu-optim", "gpu-vector"} <= names


def test_dry_run_skips_a_step_with_no_time_left_instead_of_timeout_0(tmp_path):
    """The cuda tests (faked to take 5 s) are cut at the 2 s budget, not TESTS_S; the whole
    suite then has 0 s left: skipped and said so (``timeout 0`` would run it unbounded)."""
    r, cmds, _ = _dry_run(tmp_path, BUDGET_S="2", FAKE_TESTS_S="5", FULL_SUITE="1")
    assert r.returncode == 1
    assert "FAIL: the cuda tests ran past" in r.stdout
    assert "-- whole test suite: skipped, the budget is spent" in r.stdout
    assert sum("-m pytest" in c for c in cmds) == 1  # the whole suite never started
    assert "-- optim: skipped, the budget is spent" in r.stdout


def test_a_suite_cut_off_keeps_its_finished_rows(tmp_path, monkeypatch):
    """gpu_suite writes the JSON after every row: stopped at the third row (as the budget's
    SIGTERM would), the file holds the two before it, marked partial."""
    from benchmarks import gpu_suite, harness

    real = harness.row
    made = []

    def row(*args, **kwargs):
        if len(made) == 2:
            raise KeyboardInterrupt  # the cut-off
        made.append(real(*args, **kwargs))
        return made[-1]

    for mod in (harness, *gpu_suite.SUITES.values()):
        if getattr(mod, "row", None) is real:
            monkeypatch.setattr(mod, "row", row)
    path = tmp_path / "vector.json"
    try:  # gpugd bench reports the interrupt and returns, or lets it through
        gpu_suite.main(["vector", str(path), "--backend", "cpu", "--quick", "--numel", "4096"])
    except KeyboardInterrupt:
        pass
    data = json.loads(path.read_text())
    assert data["meta"] == {"suite": "vector", "partial": True}
    assert [r["kernel"] for r in data["rows"]] == [r["kernel"] for r in made]
    assert len(data["rows"]) == 2
