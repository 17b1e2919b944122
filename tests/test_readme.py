"""The README's Python examples run as written (on the CPU backend, in a scratch folder),
its set-up commands are the ones CI runs, and it stays a README: short, with the GPU
caveat near the top."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 4, "the README lost its examples"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i}", "exec"), scope)
    assert (tmp_path / "run" / "ckpt.npz").is_file()
    assert (tmp_path / "run" / "model.npz").is_file()
    # the loop resumed: 20 epochs of 8 steps, then 5 more after loading the checkpoint
    assert scope["opt"].step_count == (20 + 5) * 8
    assert scope["model"].training is False and scope["sched"].optimizer is scope["opt"]


def test_readme_set_up_commands_are_the_ones_ci_runs():
    text = README.read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    venvs = [ln.strip() for ln in ci if ln.strip().startswith("python3 -m venv")]
    assert len(venvs) == 2
    for line in venvs:
        assert line in text, f"README lost the command CI runs: {line}"


def test_readme_is_short_and_says_what_ran_on_a_gpu_near_the_top():
    lines = README.read_text().splitlines()
    assert len(lines) <= 260
    top = " ".join(ln.lstrip("> ") for ln in lines[:30])
    assert "The CUDA path has never run on a real GPU" in top
