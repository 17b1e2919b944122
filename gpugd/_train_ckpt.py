"""Run-directory checkpoints of ``gpugd.train``: one generation per epoch, validated whole.

Epoch ``N`` writes generation ``N``::

    checkpoint-00000N.npz   Optimizer.save(..., model=model): parameters, optimizer and
                            schedule state, the model's buffers
    trainer-00000N.npz      the loop's own state: epoch, history, early stopping, RNG,
                            monitor flags, the best weights for the early-stopping restore

then replaces ``latest`` (a small JSON pointer naming both) atomically, and only then
deletes the older generations. A kill at any moment leaves ``latest`` naming a whole
generation (a half-written newer one is ignored and rewritten). Run directories written
before generations (``checkpoint.npz`` + ``trainer.npz``, no ``latest``) still resume.
Every field of both files is checked before anything is applied (``ResumeError``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from . import optim
from ._io import atomic_savez, atomic_write_text, load_npz, remove_stale_temps

TRAINER_FORMAT = "gpugd-trainer-1"
RUN_FORMAT = "gpugd-run-1"
LATEST = "latest"
LEGACY = ("checkpoint.npz", "trainer.npz")  # the pair before generations
# the loop state a trainer file carries besides arrays, the RNG and the configuration
LOOP_STATE = (
    "epoch",
    "opt_step",
    "history",
    "best_epoch",
    "best_metric",
    "bad_epochs",
    "stopped_early",
)
_META = ("format", "config", "rng", "monitor_flags", "monitor_flags_total", *LOOP_STATE)
_GEN = re.compile(r"(checkpoint|trainer)-(\d{6,})\.npz")


class ResumeError(ValueError):
    """A run directory whose checkpoint does not fit the configuration; nothing changed."""


def generation_names(epoch: int) -> tuple[str, str]:
    """File names of generation ``epoch``: (checkpoint, trainer)."""
    return f"checkpoint-{epoch:06d}.npz", f"trainer-{epoch:06d}.npz"


def run_files(run_dir: Path, fixed: tuple[str, ...]) -> list[str]:
    """The previous run's files in ``run_dir``: ``fixed`` names, ``latest``, the legacy pair
    and every generation."""
    names = [f for f in (LATEST, *LEGACY, *fixed) if (run_dir / f).exists()]
    if run_dir.is_dir():
        names += sorted(p.name for p in run_dir.iterdir() if _GEN.fullmatch(p.name))
    return names


def checkpoint_paths(run_dir: str | Path) -> tuple[Path, Path]:
    """(checkpoint, trainer) of the run directory's current state: the generation that
    ``latest`` names, or the legacy pair. ResumeError when there is none or it is broken."""
    rd = Path(run_dir)
    pointer = rd / LATEST
    if not pointer.exists():
        if all((rd / f).exists() for f in LEGACY):
            return rd / LEGACY[0], rd / LEGACY[1]
        raise ResumeError(f"resume: no checkpoint in {rd} to resume from (no {LATEST!r} file)")
    try:
        meta = json.loads(pointer.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResumeError(f"{pointer}: unreadable ({exc})") from None
    epoch = meta.get("epoch") if isinstance(meta, dict) else None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != RUN_FORMAT
        or not _is_int(epoch, 1)
        or [meta.get("checkpoint"), meta.get("trainer")] != list(generation_names(epoch))
    ):
        raise ResumeError(f"{pointer}: not a {RUN_FORMAT} pointer: {str(meta)[:200]}")
    ck, tr = (rd / n for n in generation_names(epoch))
    for p in (ck, tr):
        if not p.is_file():
            raise ResumeError(f"{pointer}: names {p.name}, which is missing")
    return ck, tr


def save_generation(run_dir: Path, state: dict[str, Any], opt: Any, model: Any) -> None:
    """Write generation ``state["epoch"]`` (checkpoint, trainer file), point ``latest`` at
    it, then delete every other generation, the legacy pair and their dead writers'
    temporary files."""
    epoch = state["epoch"]
    ck, tr = generation_names(epoch)
    opt.save(run_dir / ck, model=model)
    atomic_savez(run_dir / tr, trainer_arrays(state))
    pointer = {"format": RUN_FORMAT, "epoch": epoch, "checkpoint": ck, "trainer": tr}
    atomic_write_text(run_dir / LATEST, json.dumps(pointer) + "\n")
    for p in run_dir.iterdir():
        if (_GEN.fullmatch(p.name) and p.name not in (ck, tr)) or p.name in LEGACY:
            p.unlink(missing_ok=True)
            remove_stale_temps(p)


def trainer_arrays(state: dict[str, Any]) -> dict[str, np.ndarray]:
    """The trainer file's arrays: ``meta`` (JSON) and the best weights and buffers."""
    arrays: dict[str, np.ndarray] = {}
    if state["best_params"] is not None:
        arrays["best/params"] = state["best_params"]
        for k, b in state["best_buffers"].items():
            arrays[f"best/buffer/{k}"] = b
    meta = {k: state[k] for k in _META}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return arrays


def _is_int(v: Any, lo: int = 0, hi: float = math.inf) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_real(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_array(path: Path, what: str, a: Any, like: Any) -> None:
    """``a`` has ``like``'s shape and dtype and holds only finite values."""
    if not isinstance(a, np.ndarray) or a.shape != like.shape or a.dtype != like.dtype:
        got = f"{a.dtype}{list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ResumeError(
            f"{path}: {what} is {got}, expected {like.dtype}{list(like.shape)}; not this model's"
        )
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ResumeError(f"{path}: {what} holds non-finite values")


def _check_loop(path: Path, meta: dict[str, Any], history_keys: list[str]) -> None:
    """Every counter, the history, the monitor flags and the RNG state of ``meta``."""

    def bad(field: str, what: str) -> ResumeError:
        return ResumeError(f"{path}: {field}: expected {what}, got {str(meta.get(field))[:80]}")

    epoch = meta.get("epoch")
    if not _is_int(epoch):
        raise bad("epoch", "an integer ≥ 0")
    if not _is_int(meta.get("opt_step")):
        raise bad("opt_step", "an integer ≥ 0")
    for k in ("best_epoch", "bad_epochs"):
        if not _is_int(meta.get(k), 0, epoch):
            raise bad(k, f"an integer in [0, {epoch}]")
    best = meta.get("best_metric")
    if not _is_real(best) or math.isnan(best) or best == -math.inf:
        raise bad("best_metric", "a real or inf")
    if (meta["best_epoch"] == 0) != (best == math.inf):
        raise bad("best_metric", "inf exactly when best_epoch is 0")
    if not isinstance(meta.get("stopped_early"), bool):
        raise bad("stopped_early", "true or false")
    hist = meta.get("history")
    if not isinstance(hist, dict) or sorted(hist) != sorted(history_keys):
        raise bad("history", f"the columns {history_keys}")
    for k, col in hist.items():
        if not isinstance(col, list) or len(col) != epoch:
            raise ResumeError(f"{path}: history[{k!r}]: expected {epoch} values")
        ints = k in ("epoch", "steps")
        if not all(_is_int(v) if ints else _is_real(v) for v in col):
            raise ResumeError(f"{path}: history[{k!r}]: expected {'integers' if ints else 'reals'}")
    if hist["epoch"] != list(range(1, epoch + 1)):
        raise ResumeError(f"{path}: history['epoch']: expected 1..{epoch}")
    flags, total = meta.get("monitor_flags"), meta.get("monitor_flags_total")
    if not isinstance(flags, list) or not all(
        isinstance(f, dict)
        and _is_int(f.get("step"))
        and isinstance(f.get("tensor"), str)
        and isinstance(f.get("kind"), str)
        and _is_real(f.get("value"))
        for f in flags
    ):
        raise bad("monitor_flags", "a list of {step, tensor, kind, value} records")
    if not _is_int(total, len(flags)):
        raise bad("monitor_flags_total", f"an integer ≥ {len(flags)}")
    rng = meta.get("rng")
    try:
        if not isinstance(rng, dict) or rng.get("bit_generator") != "PCG64":
            raise TypeError("not a PCG64 state")
        np.random.default_rng(0).bit_generator.state = rng
    except (TypeError, ValueError, KeyError) as exc:
        raise ResumeError(f"{path}: rng: not a PCG64 generator state ({exc})") from None


def load_trainer(
    path: Path, cfg: Any, model: Any, history_keys: list[str], legacy: bool
) -> dict[str, Any]:
    """Read and check a trainer file against the configuration and the model: every field
    (types, ranges, shapes, dtypes, finiteness, the RNG state). Returns the loop state
    without changing anything; ``files`` holds its arrays (legacy files: ``buffer/*`` too)."""
    try:
        files = load_npz(path)
        meta = json.loads(files.pop("meta").tobytes().decode())
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise ResumeError(f"{path}: not a readable gpugd trainer state ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != TRAINER_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else meta
        raise ResumeError(f"{path}: format {str(got)[:40]!r}, expected {TRAINER_FORMAT!r}")
    missing = [k for k in _META if k not in meta]
    if missing:
        raise ResumeError(f"{path}: missing {missing}")
    if not isinstance(meta["config"], dict) or "epochs" not in meta["config"]:
        raise ResumeError(f"{path}: config: expected the run's configuration")
    saved = dict(meta["config"])
    saved.setdefault("state_bits", 32)  # runs saved before the option had 32-bit states
    now = cfg.to_json()
    saved_epochs, now_epochs = saved.pop("epochs"), now.pop("epochs")
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        k = diff[0]
        raise ResumeError(
            f"{path}: the run was made with {k}={saved.get(k)!r}, this configuration has "
            f"{k}={now.get(k)!r} ({len(diff)} setting(s) differ: {diff})"
        )
    _check_loop(path, meta, history_keys)
    if now_epochs < meta["epoch"]:
        raise ResumeError(
            f"{path}: the run has done {meta['epoch']} epochs already; "
            f"epochs={now_epochs} asks for fewer"
        )
    if cfg.schedule in ("step", "exponential", "cosine") and now_epochs != saved_epochs:
        raise ResumeError(
            f"{path}: the {cfg.schedule} schedule was laid out for epochs={saved_epochs}; "
            f"resume with the same epochs (got {now_epochs})"
        )
    buffers = {k: _host(b) for k, b in model.buffers_dict().items()}
    want = set()
    if cfg.patience is not None and cfg.restore_best and meta["best_epoch"] > 0:
        want |= {"best/params", *(f"best/buffer/{k}" for k in buffers)}
    if legacy:
        want |= {f"buffer/{k}" for k in buffers}
    if set(files) != want:
        raise ResumeError(
            f"{path}: arrays {sorted(files)[:6]} differ from the expected {sorted(want)[:6]}"
        )
    if "best/params" in files:
        _check_array(path, "best/params", files["best/params"], _host(model.flat.data))
    for k, b in buffers.items():
        for key in (f"best/buffer/{k}", f"buffer/{k}"):
            if key in files:
                _check_array(path, key, files[key], b)
    return {**meta, "files": files}


def resume_into(
    run_dir: Path,
    cfg: Any,
    model: Any,
    opt: Any,
    state: dict[str, Any],
    rng: np.random.Generator,
) -> None:
    """Load the run directory's current generation into ``model``, ``opt``, ``state`` and
    ``rng``. Everything is checked first (ResumeError naming the file and field), so a
    refused directory changes nothing."""
    ck, tr = checkpoint_paths(run_dir)
    legacy = ck.name == LEGACY[0]
    saved = load_trainer(tr, cfg, model, list(state["history"]), legacy)
    step = _checkpoint_step(ck)
    if step is not None and step != saved["opt_step"]:
        raise ResumeError(
            f"{run_dir}: {ck.name} is at step {step}, {tr.name} "
            f"at {saved['opt_step']}: the pair is inconsistent"
        )
    try:
        opt.load(ck, model=None if legacy else model)  # validates everything, then writes
    except optim.CheckpointError as exc:
        raise ResumeError(str(exc)) from None
    files = saved.pop("files")
    if legacy:
        for k, b in model.buffers_dict().items():
            b[...] = _like(b, files[f"buffer/{k}"])
    if "best/params" in files:
        state["best_params"] = files["best/params"]
        state["best_buffers"] = {
            k[len("best/buffer/") :]: a for k, a in files.items() if k.startswith("best/buffer/")
        }
    for k in LOOP_STATE:
        state[k] = saved[k]
    state["monitor_flags"] = saved["monitor_flags"]
    state["monitor_flags_total"] = saved["monitor_flags_total"]
    rng.bit_generator.state = saved["rng"]


def _checkpoint_step(path: Path) -> Any:
    """The optimizer step a checkpoint file records (None when unreadable: ``opt.load``
    then names the damage)."""
    try:
        meta = json.loads(load_npz(path)["meta"].tobytes().decode())
        return meta.get("step") if isinstance(meta, dict) else None
    except (OSError, ValueError, KeyError, UnicodeDecodeError, AttributeError):
        return None


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _like(target: Any, host: np.ndarray) -> Any:
    """``host`` on ``target``'s backend."""
    if isinstance(target, np.ndarray):
        return host
    import cupy

    return cupy.asarray(host)
