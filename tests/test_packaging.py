"""The wheel carries kernels/*.cu/*.cuh and the benchmark suite: build it, install it into a
fresh virtual environment, and ask the installed package for its kernel sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (whl,) = out.glob("gpugd-*.whl")
    return whl


def test_wheel_contains_every_kernel_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for src in sorted((ROOT / "kernels").glob("*.cu*")):
        assert f"gpugd/kernels/{src.name}" in names, f"{src.name} missing from the wheel"
    assert "gpugd/benchmarks/__init__.py" in names


def test_installed_wheel_finds_its_kernels(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    # numpy and numba come from this environment through a .pth line, appended after the
    # fresh site-packages: the gpugd imported below can only be the installed wheel.
    new_site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    import numba
    import numpy

    deps = {str(Path(m.__file__).resolve().parent.parent) for m in (numpy, numba)}
    (new_site / "zz_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    code = (
        "import json, gpugd, gpugd._kernels as k;"
        "print(json.dumps({'file': gpugd.__file__, 'dir': str(k.kernel_dir()),"
        " 'cu': sorted(k.kernel_sources()), 'cuh': sorted(k.kernel_headers())}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    got = json.loads(
        subprocess.run(
            [str(py), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    assert Path(got["file"]).is_relative_to(new_site)
    assert Path(got["dir"]) == new_site / "gpugd" / "kernels"
    assert got["cu"] == sorted(p.stem for p in (ROOT / "kernels").glob("*.cu"))
    assert got["cuh"] == sorted(p.name for p in (ROOT / "kernels").glob("*.cuh"))
    info = subprocess.run(
        [str(env_dir / "bin" / "gpugd"), "info"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"kernel sources: {new_site / 'gpugd' / 'kernels'}" in info
    assert sysconfig.get_paths()["purelib"] not in got["file"]
