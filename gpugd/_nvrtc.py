"""Compile CUDA C++ to PTX through NVRTC without a GPU (cuda-python's ``cuda.bindings.nvrtc``).

Used by the compile-check test for every ``kernels/*.cu`` (compute_80 and compute_90) and by
``gpugd info``. It needs the pip wheels ``cuda-bindings`` and ``nvidia-cuda-nvrtc-cu12``
(the ``test`` extra), not a driver or a device.
"""

from __future__ import annotations

import re
from pathlib import Path

from ._kernels import NVRTC_OPTIONS, kernel_dir, resolved_source

DEFAULT_ARCHS = ("compute_80", "compute_90")
_ENTRY = re.compile(r"^\s*\.(?:visible\s+)?\.entry\s+([A-Za-z_][A-Za-z0-9_]*)", re.M)


class NvrtcUnavailableError(RuntimeError):
    """NVRTC (cuda-python + the nvrtc wheel) is not installed or cannot be loaded."""


class NvrtcCompileError(RuntimeError):
    """NVRTC rejected a source; ``.log`` holds the compiler's log."""

    def __init__(self, name: str, arch: str, log: str):
        super().__init__(f"NVRTC failed to compile {name} for {arch}:\n{log}")
        self.log = log


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise NvrtcUnavailableError(
            "NVRTC is unavailable: install the test extra "
            "(`pip install 'gpugd[test]'`, which brings cuda-bindings and nvidia-cuda-nvrtc-cu12)"
        ) from exc
    return nvrtc


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the loaded NVRTC library; raises NvrtcUnavailableError."""
    nvrtc = _nvrtc()
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # the shared library itself is missing
        raise NvrtcUnavailableError(f"NVRTC library could not be loaded: {exc}") from exc
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise NvrtcUnavailableError(f"nvrtcVersion failed: {err!r}")
    return int(major), int(minor)


def compile_to_ptx(
    source: str,
    name: str = "source.cu",
    arch: str = "compute_90",
    include_dirs: tuple[Path, ...] | None = None,
) -> str:
    """Compile ``source`` for virtual architecture ``arch``; return the PTX text.

    Raises ``NvrtcCompileError`` carrying the log on any compile error; warnings pass.
    """
    nvrtc = _nvrtc()
    if include_dirs is None:
        include_dirs = (kernel_dir(),)
    opts = [f"--gpu-architecture={arch}".encode(), *(o.encode() for o in NVRTC_OPTIONS)]
    opts += [f"--include-path={d}".encode() for d in include_dirs]
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], [])
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise NvrtcUnavailableError(f"nvrtcCreateProgram failed: {err!r}")
    try:
        (cerr,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        err, log_size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * log_size
        nvrtc.nvrtcGetProgramLog(prog, log)
        log_text = log.rstrip(b"\x00 ").decode(errors="replace")
        if cerr != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise NvrtcCompileError(name, arch, log_text or repr(cerr))
        err, ptx_size = nvrtc.nvrtcGetPTXSize(prog)
        ptx = b" " * ptx_size
        nvrtc.nvrtcGetPTX(prog, ptx)
        return ptx.rstrip(b"\x00").decode()
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def ptx_entries(ptx: str) -> list[str]:
    """Names of the ``__global__`` kernels (``.entry``) defined in a PTX text."""
    return _ENTRY.findall(ptx)


def compile_file(path: Path, arch: str) -> str:
    """Compile one kernels/*.cu file for ``arch``, exactly as ``gpugd._cuda`` hands it to
    CuPy (headers pasted in); return PTX."""
    return compile_to_ptx(resolved_source(path), path.name, arch, ())
