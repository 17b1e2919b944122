"""Data for ``gpugd train``: embedded two-class problems generated in-process from a seed,
and user data from ``.npz`` or ``.csv`` files, validated before training starts.

    ds = two_moons(250, noise=0.05, seed=42)    # the lecture notes' make_moons(..., 42)
    ds = load("points.csv")                      # features…, label (last column)
    train, val = train_val_split(ds, 0.2, seed=0)
    train, val = standardize(train, val)         # the training part's mean and std
    for idx in minibatches(len(train.X), 32, np.random.default_rng(0)): ...
"""

from __future__ import annotations

import csv
import math
import numbers
import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, TypeGuard

import numpy as np

GENERATORS = ("moons", "spirals", "circles")
MAX_LABEL = 2**31 - 1  # a class index beyond this is a regression target or an ID, not a class


class DataError(ValueError):
    """A data file or array that cannot be trained on; the message names the file or
    argument, the row/column where it applies, and what was expected."""


class Dataset(NamedTuple):
    """Features X (float64, (n, d), finite), integer labels y (int64, (n,), 0…K−1)."""

    X: np.ndarray
    y: np.ndarray
    n_classes: int
    name: str


def _n(name: str, n: object, least: int = 2) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < least:
        raise ValueError(f"{name}: expected an integer ≥ {least}, got {n!r}")
    return int(n)


def _real(x: object) -> TypeGuard[float]:
    """A real number that is not a bool (int, float, NumPy scalars)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool | np.bool_)


def _noise(noise: object) -> float:
    if not _real(noise) or not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise: expected a finite value ≥ 0, got {noise!r}")
    return float(noise)


def two_moons(n_samples: int = 250, noise: float = 0.05, seed: int = 42) -> Dataset:
    """Two interleaving half circles: the upper one (label 0) centred at the origin, the
    lower one (label 1) at (1, 0.5). The same points as scikit-learn's
    ``make_moons(n_samples, noise=noise, random_state=seed)``: n//2 outer points, the rest
    inner, shuffled and then jittered with N(0, noise²) from one ``RandomState(seed)``."""
    n = _n("n_samples", n_samples)
    noise = _noise(noise)
    n_out, n_in = n // 2, n - n // 2
    t_out, t_in = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n_in)
    X = np.vstack(
        [
            np.append(np.cos(t_out), 1 - np.cos(t_in)),
            np.append(np.sin(t_out), 1 - np.sin(t_in) - 0.5),
        ]
    ).T
    y = np.hstack([np.zeros(n_out, np.int64), np.ones(n_in, np.int64)])
    rs = np.random.RandomState(seed)
    order = np.arange(n)
    rs.shuffle(order)
    X, y = X[order], y[order]
    if noise:
        X = X + rs.normal(scale=noise, size=X.shape)
    return Dataset(np.ascontiguousarray(X, np.float64), y, 2, "moons")


def spirals(n_samples: int = 300, noise: float = 0.1, seed: int = 0, n_classes: int = 2) -> Dataset:
    """``n_classes`` interleaved spiral arms: radius r ∈ [0, 1] along each arm, angle
    4r + 2πk/K plus N(0, noise²) (the classic CS231n spiral)."""
    n = _n("n_samples", n_samples)
    k = _n("n_classes", n_classes)
    if n < k:
        raise ValueError(f"n_samples: expected ≥ n_classes ({k}) so every arm has a point, got {n}")
    noise = _noise(noise)
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int64) % k
    r = np.empty(n)
    for c in range(k):
        m = int((y == c).sum())
        r[y == c] = np.linspace(0.0, 1.0, m) if m > 1 else 0.5
    theta = 4.0 * r + 2 * np.pi * y / k + rng.normal(0.0, noise, n)
    X = np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)
    order = rng.permutation(n)
    return Dataset(np.ascontiguousarray(X[order]), y[order], k, "spirals")


def circles(
    n_samples: int = 250, noise: float = 0.05, factor: float = 0.5, seed: int = 0
) -> Dataset:
    """Two concentric circles, radius 1 (label 0) and ``factor`` (label 1), each point
    jittered with N(0, noise²) per coordinate."""
    n = _n("n_samples", n_samples)
    noise = _noise(noise)
    if not _real(factor) or not 0 < factor < 1:
        raise ValueError(f"factor: expected a value in (0, 1), got {factor!r}")
    factor = float(factor)
    rng = np.random.default_rng(seed)
    n_out, n_in = n // 2, n - n // 2
    t_out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
    t_in = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
    X = np.vstack(
        [
            np.append(np.cos(t_out), factor * np.cos(t_in)),
            np.append(np.sin(t_out), factor * np.sin(t_in)),
        ]
    ).T
    y = np.hstack([np.zeros(n_out, np.int64), np.ones(n_in, np.int64)])
    order = rng.permutation(n)
    X, y = X[order], y[order]
    X = X + rng.normal(0.0, noise, X.shape)
    return Dataset(np.ascontiguousarray(X), y, 2, "circles")


# ---- user data ------------------------------------------------------------------------------


def _checked(
    X: np.ndarray, y: np.ndarray, where: str, name: str, lines: list[int] | None = None
) -> Dataset:
    """Shapes, finiteness and labels of user data, or DataError naming where it fails: the
    0-based data row and column (and, for a CSV file, its 1-based line in ``lines``)."""

    def at(r: int) -> str:
        return f"row {r}" + ("" if lines is None else f" (line {lines[r]})")

    if X.ndim != 2:
        raise DataError(f"{where}: X must be 2-D (samples, features), got shape {X.shape}")
    if y.ndim != 1:
        raise DataError(f"{where}: y must be 1-D (one label per sample), got shape {y.shape}")
    if len(X) != len(y):
        raise DataError(f"{where}: X has {len(X)} rows but y has {len(y)} labels")
    if len(X) < 2:
        raise DataError(f"{where}: need at least 2 samples, got {len(X)}")
    if X.shape[1] == 0:
        raise DataError(f"{where}: X has no feature columns")
    try:
        Xf = np.asarray(X, np.float64)
        yf = np.asarray(y, np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: X and y must be numeric ({exc})") from None
    bad = ~np.isfinite(Xf)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(
            f"{where}: X has a non-finite value ({Xf[r, c]}) at {at(int(r))}, column {c}"
        )
    bad_y = ~np.isfinite(yf)
    if bad_y.any():
        r = int(np.argmax(bad_y))
        raise DataError(f"{where}: y has a non-finite label ({yf[r]}) at {at(r)}")
    frac = yf != np.round(yf)
    if frac.any():
        r = int(np.argmax(frac))
        raise DataError(f"{where}: labels must be integers 0…K−1; {at(r)} has {yf[r]:g}")
    if (yf < 0).any():
        r = int(np.argmax(yf < 0))
        raise DataError(f"{where}: labels must be ≥ 0; {at(r)} has {yf[r]:g}")
    if (yf > MAX_LABEL).any():
        r = int(np.argmax(yf > MAX_LABEL))
        raise DataError(f"{where}: labels must be ≤ {MAX_LABEL}; {at(r)} has {yf[r]:g}")
    labels = yf.astype(np.int64)
    if len(np.unique(labels)) < 2:
        raise DataError(f"{where}: need at least 2 distinct classes, all labels are {labels[0]}")
    return Dataset(np.ascontiguousarray(Xf), labels, int(labels.max()) + 1, name)


def _load_npz(path: Path) -> Dataset:
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: a single .npy array, not an .npz archive of X and y")
        with z:
            keys = list(z.files)
            xkey = "X" if "X" in keys else ("x" if "x" in keys else None)
            if xkey is None or "y" not in keys:
                raise DataError(f"{path}: expected arrays 'X' and 'y', the file has {keys}")
            X, y = z[xkey], z["y"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # empty, truncated or damaged (CRC) archives raise EOFError/BadZipFile, not OSError
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if X.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise DataError(f"{path}: X and y must be numeric, got {X.dtype} and {y.dtype}")
    return _checked(X, y, str(path), path.name)


def _load_csv(path: Path) -> Dataset:
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) would make the first cell
        # non-numeric and the first data row a "header"
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            lines = [(reader.line_num, row) for row in reader if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable .csv file ({exc})") from None
    if not lines:
        raise DataError(f"{path}: the file is empty")

    def numeric(row: list[str]) -> bool:
        try:
            [float(c) for c in row]
        except ValueError:
            return False
        return True

    if not numeric(lines[0][1]):  # a header row
        lines = lines[1:]
    if not lines:
        raise DataError(f"{path}: a header but no data rows")
    width = len(lines[0][1])
    if width < 2:
        raise DataError(
            f"{path}: line {lines[0][0]}: expected features and a label, got {width} column"
        )
    values = np.empty((len(lines), width))
    for i, (lineno, row) in enumerate(lines):
        if len(row) != width:
            raise DataError(f"{path}: line {lineno} has {len(row)} columns, expected {width}")
        for j, cell in enumerate(row):
            try:
                values[i, j] = float(cell)
            except ValueError:
                raise DataError(
                    f"{path}: line {lineno}, column {j}: {cell.strip()!r} is not a number"
                ) from None
    linenos = [lineno for lineno, _ in lines]
    return _checked(values[:, :-1], values[:, -1], str(path), path.name, linenos)


def load(path: str | os.PathLike) -> Dataset:
    """A data set from ``.npz`` (arrays ``X`` or ``x``, and ``y``) or ``.csv`` (numbers,
    an optional header row, the label in the last column). DataError for anything that
    cannot be trained on: missing file, wrong shapes, NaN/Inf, labels not integers ≥ 0."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _load_npz(p)
    if suffix == ".csv":
        return _load_csv(p)
    raise DataError(f"{p}: unknown data format {suffix!r}; expected .npz or .csv")


def get(
    name: str, *, n_samples: int | None = None, noise: float | None = None, seed: int = 42
) -> Dataset:
    """An embedded generator by name (``n_samples``/``noise`` None: its defaults) or a
    data file's path."""
    gens = {"moons": two_moons, "spirals": spirals, "circles": circles}
    if name in gens:
        kw: dict[str, object] = {"seed": seed}
        if n_samples is not None:
            kw["n_samples"] = n_samples
        if noise is not None:
            kw["noise"] = noise
        return gens[name](**kw)  # type: ignore[operator]
    if name.lower().endswith((".npz", ".csv")) or os.sep in name or Path(name).exists():
        return load(name)
    raise DataError(f"data: expected one of {GENERATORS} or a .npz/.csv path, got {name!r}")


def train_val_split(ds: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded random split: round(n·val_fraction) examples for validation, the rest for
    training (both keep the data set's class count and name)."""
    if not _real(val_fraction) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction: expected a value in [0, 1), got {val_fraction!r}")
    n = len(ds.X)
    n_val = round(n * float(val_fraction))
    if val_fraction > 0 and n_val == 0:
        raise DataError(
            f"val_fraction: {val_fraction} of {n} samples leaves no validation "
            "example; use 0 for none"
        )
    if n - n_val < 1:
        raise DataError(f"val_fraction: {val_fraction} of {n} samples leaves no training data")
    order = np.random.default_rng(seed).permutation(n)
    val, tr = order[:n_val], order[n_val:]
    return (
        Dataset(ds.X[tr], ds.y[tr], ds.n_classes, ds.name),
        Dataset(ds.X[val], ds.y[val], ds.n_classes, ds.name),
    )


def standardize(train: Dataset, *others: Dataset) -> tuple[Dataset, ...]:
    """(x − mean)/std per feature with the training part's statistics, applied to every
    given set (constant features keep std 1)."""
    mean = train.X.mean(axis=0)
    std = train.X.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return tuple(d._replace(X=np.ascontiguousarray((d.X - mean) / std)) for d in (train, *others))


def minibatches(n: int, batch_size: int, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    """Index arrays covering range(n) once, ``batch_size`` at a time (the last may be
    smaller); a fresh permutation from ``rng``, or in order when it is None. batch_size ≥ n
    is batch gradient descent, 1 stochastic. Arguments are checked at the call, not at the
    first batch."""
    for arg, value, least in (("n", n, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise ValueError(f"{arg}: expected an integer ≥ {least}, got {value!r}")
    order = rng.permutation(int(n)) if rng is not None else np.arange(int(n))
    bs = int(batch_size)
    return (order[lo : lo + bs] for lo in range(0, len(order), bs))


__all__ = [
    "GENERATORS",
    "MAX_LABEL",
    "DataError",
    "Dataset",
    "circles",
    "get",
    "load",
    "minibatches",
    "spirals",
    "standardize",
    "train_val_split",
    "two_moons",
]
