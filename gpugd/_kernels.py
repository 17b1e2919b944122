"""Where the CUDA sources live: ``gpugd/kernels`` in an installed wheel, ``kernels/`` in a checkout.

This module imports nothing heavy, so the packaging test and ``gpugd info`` can use it
without CuPy.
"""

from __future__ import annotations

import re
from pathlib import Path

_PKG = Path(__file__).resolve().parent

# The options every kernels/*.cu is compiled with, by CuPy (gpugd._cuda) and by the NVRTC
# compile check alike. --fmad=false: NVRTC contracts no a·b + c the source did not write as
# fma (by default it fuses them, ~960 more FMAs in optim.cu's PTX), so a GPU rounds exactly
# the operations the Numba kernels and the CPU emulator round.
NVRTC_OPTIONS = ("-std=c++17", "--fmad=false")


def kernel_dir() -> Path:
    """The directory holding ``*.cu``/``*.cuh``: inside the package, else the repository's."""
    for candidate in (_PKG / "kernels", _PKG.parent / "kernels"):
        if candidate.is_dir() and any(candidate.glob("*.cu")):
            return candidate
    raise FileNotFoundError(
        f"gpugd's CUDA sources were not found in {_PKG / 'kernels'} nor {_PKG.parent / 'kernels'};"
        " the installation is incomplete"
    )


def kernel_sources() -> dict[str, Path]:
    """Map family name (file stem) → path of every ``kernels/*.cu`` translation unit."""
    return {p.stem: p for p in sorted(kernel_dir().glob("*.cu"))}


def kernel_headers() -> dict[str, Path]:
    """Map file name → path of every ``kernels/*.cuh`` header."""
    return {p.name: p for p in sorted(kernel_dir().glob("*.cuh"))}


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)


def resolved_source(path: Path) -> str:
    """``path``'s text with every ``#include "x.cuh"`` of kernels/ pasted in (once each).

    This is the exact text given to NVRTC, both by CuPy and by the compile check; pasting
    the headers in makes CuPy's on-disk kernel cache, which is keyed by the source text,
    see a header change.
    """
    seen: set[str] = set()

    def expand(text: str, where: Path) -> str:
        def paste(m: re.Match) -> str:
            name = m.group(1)
            header = where.parent / name
            if not header.is_file():
                raise FileNotFoundError(f"{where.name}: included header {name} not found")
            if name in seen:
                return f"// {name} already included"
            seen.add(name)
            return f"// ---- begin {name}\n{expand(header.read_text(), header)}\n// ---- end {name}"

        return _INCLUDE.sub(paste, text)

    return expand(path.read_text(), path)
