"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def _atomic(path: str | os.PathLike, mode: str, write: Callable[[IO[Any]], None]) -> Path:
    """``write`` into a temporary file beside ``path``, fsync, rename over ``path``, fsync
    the directory. A failure leaves no temporary file and the old ``path`` intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


BF16_KEY = "__bfloat16__"  # names of the arrays stored as the uint16 bits of bfloat16


def atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` (.npz) atomically. The .npy format has no bfloat16
    (ml_dtypes' arrays come back as raw void): they are stored as their uint16 bits and
    listed under ``BF16_KEY``, and ``load_npz`` gives them back as bfloat16."""
    bf16 = [k for k, a in arrays.items() if a.dtype.name == "bfloat16"]
    if bf16:
        arrays = {k: (a.view(np.uint16) if k in bf16 else a) for k, a in arrays.items()}
        arrays[BF16_KEY] = np.frombuffer("\n".join(bf16).encode(), np.uint8)
    return _atomic(path, "wb", lambda f: np.savez(f, **arrays))


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a .npz written by ``atomic_savez``, bfloat16 ones restored; raises
    OSError/ValueError as ``np.load`` does for an unreadable file."""
    with np.load(path, allow_pickle=False) as z:
        files = {k: z[k] for k in z.files}
    names = files.pop(BF16_KEY, None)
    if names is not None:
        import ml_dtypes

        for k in names.tobytes().decode().split("\n"):
            if k in files and files[k].dtype == np.uint16:
                files[k] = files[k].view(ml_dtypes.bfloat16)
    return files


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic(path, "w", lambda f: f.write(text))
