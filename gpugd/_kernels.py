"""Where the CUDA sources live: ``gpugd/kernels`` in an installed wheel, ``kernels/`` in a checkout.

This module imports nothing heavy, so the packaging test and ``gpugd info`` can use it
without CuPy.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


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
