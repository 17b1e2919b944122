"""Build a CUDA source into a shared library that runs its kernels on the CPU.

The source is the exact text CuPy hands NVRTC (``gpugd._kernels.resolved_source``). It is
compiled by g++ as C++17 after ``shim/cuda_emu.h`` (the dialect) and before
``shim/cuda_emu_runtime.h`` (fibers, scheduler, kernel table). The kernels are found by a
preprocessor pass in which ``__global__`` expands to a marker. Builds are cached by a hash
of the source, the shim and the flags, in ``$GPUGD_EMU_CACHE`` (default
``~/.cache/gpugd-cudaemu``); a cold build of ``optim.cu`` takes 10-20 s on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

SHIM = Path(__file__).resolve().parent / "shim"
_MARK = "__gpugd_emu_global__"
_KERNEL = re.compile(_MARK + r"\s+void\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(")


class BuildError(RuntimeError):
    """g++ rejected the emulated translation unit; the message holds its log."""


def _cpu_flags() -> list[str]:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        flags = []
    # hardware FMA makes fma() one instruction instead of a libm call (same bits either way)
    return ["-mfma"] if "fma" in flags else []


# -ffp-contract=off: no a*b+c fusing the source did not write (NVRTC runs with --fmad=false).
# -fno-fast-math: IEEE single and double (SSE, no x87 excess precision on x86-64), as on a GPU.
FLAGS = (
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-fno-strict-aliasing",
    "-w",
    *_cpu_flags(),
)


def cache_dir() -> Path:
    d = Path(os.environ.get("GPUGD_EMU_CACHE", Path.home() / ".cache" / "gpugd-cudaemu"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _shim_text() -> str:
    return "".join(p.read_text() for p in sorted(SHIM.glob("*.h")))


def translation_unit(source: str, name: str, kernels: list[str] | None) -> str:
    """The C++ text g++ compiles: shim, the CUDA source as given, runtime, kernel table."""
    head = f'#include "cuda_emu.h"\n#line 1 "{name}"\n'
    if kernels is None:
        return head + source + "\n"
    table = " ".join(f"GPUGD_EMU_KERNEL({k})" for k in kernels)
    return head + source + f'\n#include "cuda_emu_runtime.h"\nGPUGD_EMU_TABLE({table})\n'


def _run(cmd: list[str], what: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"{what} failed ({' '.join(cmd[:2])} ...):\n{done.stderr[-6000:]}")
    return done.stdout


def kernel_signatures(
    source: str, name: str, options: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """Each ``__global__`` function of ``source`` (after the preprocessor) with its
    parameter declarations as written, e.g. ``["const float* x", "i64 n"]``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "scan.cpp"
        src.write_text(translation_unit(source, name, None))
        text = _run(
            [
                "g++",
                "-E",
                "-P",
                "-std=c++17",
                f"-D__global__={_MARK}",
                f"-I{SHIM}",
                *options,
                str(src),
            ],
            f"preprocessing {name}",
        )
    out: dict[str, list[str]] = {}
    for m in _KERNEL.finditer(text):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        params = " ".join(text[m.end() : i - 1].split())
        out.setdefault(m.group(1), [p.strip() for p in params.split(",")] if params else [])
    return out


def _defines(options: tuple[str, ...]) -> list[str]:
    """The -D options of an NVRTC option list (the rest, e.g. -std or --fmad, are NVRTC's)."""
    out = []
    for o in options:
        if o.startswith(("-D", "--define-macro=")):
            out.append("-D" + o.split("=", 1)[1] if o.startswith("--define") else o)
    return out


def _statics(lib: Path) -> dict:
    """The function-local statics of the kernels' code (their ``__shared__`` arrays) as
    (address relative to the load base, size), with the address of ``gpugd_emu_count`` to
    find the base: g++ keeps the section attribute of ``__shared__`` only outside templates,
    so the runtime poisons these regions by address instead."""
    text = _run(["nm", "-S", "--defined-only", str(lib)], f"listing the symbols of {lib.name}")
    shared, anchor = [], None
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[-1] == "gpugd_emu_count":
            anchor = int(parts[0], 16)
        if len(parts) != 4:
            continue
        value, size, kind, name = parts
        # _ZZ<function>E<name>: a static local; the runtime's own (gpugd_emu::) excluded
        if name.startswith("_ZZ") and "9gpugd_emu" not in name and kind in "bBdDuV":
            shared.append([int(value, 16), int(size, 16)])
    if anchor is None:
        raise BuildError(f"{lib.name}: no gpugd_emu_count symbol")
    return {"shared": shared, "anchor": anchor}


def build(source: str, name: str = "kernel.cu", options: tuple[str, ...] = ()) -> Path:
    """Path of the shared library for ``source`` (built now, or found in the cache); beside
    it, ``<same name>.json`` maps each kernel to its parameter declarations."""
    defines = _defines(options)
    key = hashlib.sha256("\0".join([source, _shim_text(), *FLAGS, *defines]).encode()).hexdigest()[
        :24
    ]
    out = cache_dir() / f"{Path(name).stem}-{key}.so"
    if out.exists():
        return out
    for same in cache_dir().glob(f"*-{key}.so"):  # the same text built under another name
        if same.with_suffix(".json").exists():
            return same
    kernels = kernel_signatures(source, name, tuple(defines))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{Path(name).stem}.cpp"
        src.write_text(translation_unit(source, name, list(kernels)))
        part = Path(tmp) / "out.so"
        _run(["g++", *FLAGS, *defines, f"-I{SHIM}", str(src), "-o", str(part)], f"compiling {name}")
        # atomic publish: concurrent builders (xdist, two sessions) never see half a file
        fd, staged = tempfile.mkstemp(dir=cache_dir(), suffix=".so.part")
        os.close(fd)
        Path(staged).write_bytes(part.read_bytes())
        sidecar = out.with_suffix(".json")
        sidecar.write_text(json.dumps({"kernels": kernels, **_statics(part)}, indent=1))
        os.replace(staged, out)
    return out
