"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one."""

from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc), else
    by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale(path: Path) -> None:
    """Delete temporary files of ``path`` left by killed writers: ``.{name}.{pid}.*.tmp``
    whose process no longer runs."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Delete the temporary files that writers of ``path`` killed earlier left behind."""
    _remove_stale(Path(path))


def _atomic(path: str | os.PathLike, mode: str, write: Callable[[IO[Any]], None]) -> Path:
    """``write`` into a temporary file beside ``path`` (``.{name}.{pid}.*.tmp``), fsync,
    give it the mode a plain ``open`` would (0666 less the umask), rename over ``path``,
    fsync the directory. A failure leaves no temporary file and the old ``path`` intact;
    temporary files of writers killed earlier (their process gone) are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
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


class DamagedFileError(ValueError):
    """A file that is not a readable .npz: empty, truncated, damaged (CRC), not a zip."""


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a .npz written by ``atomic_savez``, bfloat16 ones restored. Raises
    OSError when the file cannot be opened, ``DamagedFileError`` (a ValueError) naming the
    file when it is empty, truncated or damaged."""
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DamagedFileError(f"{path}: a single .npy array, not an .npz archive")
        with z:
            files = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, zlib.error, KeyError, ValueError) as exc:
        if isinstance(exc, DamagedFileError):
            raise
        size = Path(path).stat().st_size if Path(path).exists() else 0
        raise DamagedFileError(
            f"{path}: damaged or not an .npz archive ({size} bytes; {type(exc).__name__}: {exc})"
        ) from None
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
