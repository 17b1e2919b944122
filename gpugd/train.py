"""Training loop over gpugd's kernels: what ``gpugd train`` runs.

    cfg = TrainConfig(data="moons", hidden=(64, 64), optimizer="adam", epochs=50)
    result = run(cfg, "runs/first")         # metrics.json, gradients.csv, PNG plots

Gradient descent in the lecture notes' three forms: ``gd="batch"`` (the whole training set
per step), ``"sgd"`` (one example per step) and ``"minibatch"`` (``batch_size`` examples),
shuffled every epoch from the seed. A validation split, early stopping with patience and
best-weights restore, any gpugd optimizer, learning-rate schedule (stepped per epoch),
global-norm or value clipping fused into the update, L1/L2 penalties and the gradient-
health monitor. A checkpoint generation after every epoch (``checkpoint-<epoch>.npz``
from the optimizer with the model's buffers, ``trainer-<epoch>.npz`` with the loop's own
state, then the ``latest`` pointer; see ``gpugd._train_ckpt``): a run directory holds one
whole state whenever the process dies, and ``resume=True`` continues a run bit for bit.
Launched under ``mpiexec -n R`` it trains data-parallel: every rank takes its share of
each mini-batch and the gradients are averaged (``gpugd.parallel``); batch normalization
then uses each rank's own shard statistics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import data as _data
from . import nn, optim, schedules
from ._io import atomic_write_text
from ._train_ckpt import (
    TRAINER_FORMAT,
    ResumeError,
    checkpoint_paths,
    resume_into,
    run_files,
    save_generation,
)
from .monitor import GradientMonitor

OPTIMIZERS = {
    "sgd": optim.SGD,
    "adagrad": optim.Adagrad,
    "rmsprop": optim.RMSprop,
    "adam": optim.Adam,
    "adamw": optim.AdamW,
    "nadam": optim.NAdam,
    "lion": optim.Lion,
}
# learning rates when none is given: larger than torch's Adam default, since the
# embedded problems train for tens of epochs, not thousands
DEFAULT_LR = {
    "sgd": 0.1,
    "adagrad": 0.05,
    "rmsprop": 1e-3,
    "adam": 1e-2,
    "adamw": 1e-2,
    "nadam": 1e-2,
    "lion": 1e-3,  # Lion's sign update takes a learning rate ~10x smaller than Adam's
}
STATE_BITS = (32, 8)
SCHEDULES = ("none", "step", "exponential", "cosine", "plateau")
GD_MODES = ("minibatch", "batch", "sgd")


SHOW_FLAGS = 3  # monitor flags the summary table lists
KEEP_FLAGS = 10_000  # monitor flags kept in metrics.json and the trainer file (the rest counted)
# the files besides checkpoints a run writes into its directory (what --overwrite replaces)
RUN_FILES = ("metrics.json", "gradients.csv")


class RunDirError(ValueError):
    """A run directory that cannot take this run (a file, or a previous run's files without
    ``resume``/``overwrite``: then ``found`` names them); raised before any training,
    nothing changed."""

    def __init__(self, message: str, found: tuple[str, ...] = ()):
        super().__init__(message)
        self.found = found


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``run``: ``epoch`` is the last epoch whose checkpoint pair
    generation (checkpoint + trainer file + ``latest``) was written whole in ``run_dir``
    (0: none)."""

    def __init__(self, epoch: int, run_dir: Path | None):
        super().__init__(epoch, run_dir)
        self.epoch, self.run_dir = epoch, run_dir


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise KeyboardInterrupt: a checkpoint
    generation is written whole before the loop stops. Main thread only (elsewhere
    Python delivers no signals), and only over Python's default handler."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    hit: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: hit.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hit:
        raise KeyboardInterrupt


def check_run_dir(run_dir: Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse, before training, a ``run_dir`` that is a file (or under one) or that holds a
    previous run's files while neither ``resume`` nor ``overwrite`` is set; create it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run_dir: expected a directory, {str(run_dir)!r} is a file")
    if not resume and not overwrite and run_dir.is_dir():
        found = run_files(run_dir, RUN_FILES)
        if found:
            raise RunDirError(
                f"run_dir: {str(run_dir)!r} already holds a run ({', '.join(found)}); "
                "pass resume=True to continue it or overwrite=True to start over",
                tuple(found),
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent is a file, no permission, ...
        raise RunDirError(f"run_dir: cannot create {str(run_dir)!r} ({exc})") from None


@dataclass
class TrainConfig:
    """Everything that defines a training run (what ``gpugd train`` flags set)."""

    data: str = "moons"
    n_samples: int | None = 1000
    noise: float | None = 0.2
    val_fraction: float = 0.2
    standardize: bool = True
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    init: str = "he_normal"
    batch_norm: bool = False
    dropout: float = 0.0
    residual: bool = False
    optimizer: str = "adam"
    lr: float | None = None
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "none"
    gd: str = "minibatch"
    batch_size: int = 32
    epochs: int = 50
    patience: int | None = None
    restore_best: bool = True
    max_grad_norm: float | None = None
    clip_value: float | None = None
    l1: float = 0.0
    l2: float = 0.0
    seed: int = 0
    dtype: str = "float32"
    monitor_every: int = 1
    state_bits: int = 32  # 8: blockwise 8-bit optimizer states (float32 parameters here)
    extra: dict[str, Any] = field(default_factory=dict)  # optimizer keyword overrides

    def validate(self) -> TrainConfig:
        """Check every field; ValueError naming the field and what was expected."""

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"{name}: expected {what}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int | np.integer) and not isinstance(v, bool)

        def is_real(v: Any) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        need(self.optimizer in OPTIMIZERS, "optimizer", f"one of {tuple(OPTIMIZERS)}")
        need(self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}")
        need(self.gd in GD_MODES, "gd", f"one of {GD_MODES}")
        need(self.activation in nn.ACTIVATIONS, "activation", f"one of {nn.ACTIVATIONS}")
        need(self.init in nn.INITIALIZERS, "init", f"one of {nn.INITIALIZERS}")
        need(self.dtype in ("float32", "float64"), "dtype", "'float32' or 'float64'")
        need(
            len(self.hidden) >= 1 and all(is_int(h) and h >= 1 for h in self.hidden),
            "hidden",
            "one or more layer widths ≥ 1",
        )
        need(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "an integer ≥ 1")
        need(is_int(self.epochs) and self.epochs >= 1, "epochs", "an integer ≥ 1")
        need(
            self.patience is None or (is_int(self.patience) and self.patience >= 1),
            "patience",
            "None or an integer ≥ 1",
        )
        need(
            is_int(self.monitor_every) and self.monitor_every >= 1,
            "monitor_every",
            "an integer ≥ 1",
        )
        need(is_int(self.seed) and self.seed >= 0, "seed", "an integer ≥ 0")
        need(self.lr is None or (is_real(self.lr) and self.lr > 0), "lr", "a finite value > 0")
        need(
            is_real(self.val_fraction) and 0 <= self.val_fraction < 1,
            "val_fraction",
            "a value in [0, 1)",
        )
        need(is_real(self.dropout) and 0 <= self.dropout < 1, "dropout", "a value in [0, 1)")
        for name in ("momentum", "weight_decay", "l1", "l2"):
            need(
                is_real(getattr(self, name)) and getattr(self, name) >= 0,
                name,
                "a finite value ≥ 0",
            )
        for name in ("max_grad_norm", "clip_value"):
            val = getattr(self, name)
            need(val is None or (is_real(val) and val > 0), name, "None or a finite value > 0")
        need(
            self.momentum == 0 or self.optimizer in ("sgd", "rmsprop"),
            "momentum",
            "0 unless the optimizer is sgd or rmsprop",
        )
        need(
            not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0),
            "nesterov",
            "False unless optimizer='sgd' with momentum > 0",
        )
        need(self.state_bits in STATE_BITS, "state_bits", f"one of {STATE_BITS}")
        if self.state_bits == 8:
            need(self.optimizer != "nadam", "state_bits", "32 with optimizer='nadam'")
            need(self.dtype == "float32", "state_bits", "32 unless dtype='float32'")
            need(
                self.optimizer != "rmsprop" or self.momentum == 0,
                "state_bits",
                "32 with rmsprop momentum > 0",
            )
        return self

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON-ready values (what metrics.json and the trainer file hold)."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        """The configuration ``to_json`` wrote."""
        d = dict(d)
        d["hidden"] = tuple(d["hidden"])
        return cls(**d)


def _xp(backend: str) -> Any:
    if backend == "cuda":
        import cupy

        return cupy
    return np


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


# ---- the loop -------------------------------------------------------------------------------


class Trainer:
    """Mini-batch training of a built ``nn.Sequential`` with a gpugd optimizer.

    The loss is chosen from the output width: one logit → sigmoid + binary cross-entropy,
    K > 1 logits → softmax cross-entropy (labels are integers). ``comm`` (a
    ``gpugd.parallel.Communicator`` with more than one rank) makes it data-parallel."""

    def __init__(
        self,
        model: nn.Sequential,
        optimizer: optim.Optimizer,
        *,
        schedule: schedules.Schedule | None = None,
        monitor: GradientMonitor | None = None,
        l1: float = 0.0,
        l2: float = 0.0,
        comm: Any = None,
    ):
        if model.flat is None:
            raise ValueError("model: build() it first")
        self.model, self.opt, self.schedule, self.monitor = model, optimizer, schedule, monitor
        self.flat = model.flat
        self.xp = self.flat.xp
        self.l1, self.l2 = l1, l2
        self.comm = comm if comm is not None and comm.size > 1 else None
        self.has_bn = any(isinstance(lay, nn.BatchNorm) for lay in model.layers())
        n_out = model.features_out(model.in_features)
        self.loss_fn = (
            nn.binary_cross_entropy_with_logits if n_out == 1 else (nn.softmax_cross_entropy)
        )
        self._mon_seen = 0

    def _device(self, a: np.ndarray, dtype: Any = None) -> Any:
        return self.xp.asarray(a if dtype is None else a.astype(dtype))

    def train_epoch(
        self,
        X: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        rng: np.random.Generator,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> dict[str, float]:
        """One pass over (X, y) in shuffled mini-batches: forward, loss, backward, L1/L2,
        (average over ranks), step. Returns train loss (penalty included), accuracy,
        steps and the mean gradient norm per Dense weight over the epoch's steps."""
        dtype = self.flat.dtype
        Xd, yd = self._device(X, dtype), self._device(y)
        size = 1 if self.comm is None else self.comm.size
        rank = 0 if self.comm is None else self.comm.rank
        batches = list(_data.minibatches(len(X), batch_size, rng))
        if self.has_bn:  # batch statistics need 2 rows on every rank
            batches = [b for b in batches if len(b) >= 2 * size]
        tot = np.zeros(3)  # loss·rows, correct, rows (this rank)
        for k, idx in enumerate(batches):
            part = idx[rank * len(idx) // size : (rank + 1) * len(idx) // size]
            xb, yb = Xd[part], yd[part]
            out = self.model.forward(xb, training=True)
            # mean over the whole mini-batch: each rank divides by len(idx)/size and the
            # average over ranks divides by size again
            loss, dout = self.loss_fn(out, yb, denominator=len(idx) / size)
            self.model.backward(dout)
            penalty = self.model.regularize(self.l1, self.l2)
            if self.comm is not None:
                from .parallel import average_gradients

                average_gradients(self.comm, self.flat, step=self.opt.step_count)
            self.opt.step()
            tot += (
                loss * len(idx) / size + penalty * len(part),
                float((nn.predictions(out) == yb).sum()),
                len(part),
            )
            if on_batch is not None:
                on_batch(k + 1, len(batches))
        if self.comm is not None:
            self.comm.allreduce_(tot)
        res = {
            "loss": tot[0] / max(tot[2], 1),
            "acc": tot[1] / max(tot[2], 1),
            "steps": float(len(batches)),
        }
        res.update(self._epoch_grad_norms())
        return res

    def _epoch_grad_norms(self) -> dict[str, float]:
        """grad/<weight>: mean over this epoch's recorded steps of the monitor's norm."""
        if self.monitor is None:
            return {}
        rows = self.monitor.series("grad_norm")[self._mon_seen :]
        self._mon_seen += len(rows)
        names = self.monitor.names
        out = {}
        for w in self.model.weight_names():
            col = rows[:, names.index(w)] if len(rows) else np.array([math.nan])
            out[f"grad/{w}"] = float(np.mean(col))
        return out

    def evaluate(self, X: np.ndarray, y: np.ndarray, batch_size: int = 4096) -> dict[str, float]:
        """Loss and accuracy in inference mode (running statistics, no dropout)."""
        if len(X) == 0:
            return {"loss": math.nan, "acc": math.nan}
        dtype = self.flat.dtype
        loss = correct = 0.0
        for lo in range(0, len(X), batch_size):
            xb = self._device(X[lo : lo + batch_size], dtype)
            yb = self._device(y[lo : lo + batch_size])
            out = self.model.forward(xb, training=False)
            part, _ = self.loss_fn(out, yb, denominator=1.0)
            loss += part
            correct += float((nn.predictions(out) == yb).sum())
        return {"loss": loss / len(X), "acc": correct / len(X)}


# ---- building a run from a configuration ------------------------------------------------------


def build(cfg: TrainConfig, n_in: int, n_classes: int, xp: Any = np) -> tuple:
    """(model, optimizer, schedule) for a validated configuration."""
    n_out = 1 if n_classes == 2 else n_classes
    model = nn.mlp(
        n_in,
        cfg.hidden,
        n_out,
        activation=cfg.activation,
        init=cfg.init,
        batch_norm=cfg.batch_norm,
        dropout=cfg.dropout,
        residual=cfg.residual,
    )
    flat = model.build(np.dtype(cfg.dtype), xp=xp, seed=cfg.seed)
    hyper: dict[str, Any] = {"lr": cfg.lr or DEFAULT_LR[cfg.optimizer]}
    if cfg.weight_decay:
        hyper["weight_decay"] = cfg.weight_decay
    if cfg.optimizer in ("sgd", "rmsprop") and cfg.momentum:
        hyper["momentum"] = cfg.momentum
    if cfg.nesterov:
        hyper["nesterov"] = True
    hyper.update(cfg.extra)
    if cfg.state_bits != 32:
        hyper["state_bits"] = cfg.state_bits
    opt = OPTIMIZERS[cfg.optimizer](
        flat, max_grad_norm=cfg.max_grad_norm, clip_value=cfg.clip_value, **hyper
    )
    sched: schedules.Schedule | None = None
    if cfg.schedule == "step":
        sched = schedules.StepLR(opt, step_size=max(1, cfg.epochs // 3), gamma=0.1)
    elif cfg.schedule == "exponential":
        sched = schedules.ExponentialLR(opt, gamma=0.01 ** (1 / cfg.epochs))
    elif cfg.schedule == "cosine":
        warm = min(5, cfg.epochs // 10)
        sched = schedules.CosineWithWarmup(opt, warmup_steps=warm, total_steps=cfg.epochs + 1)
    elif cfg.schedule == "plateau":
        sched = schedules.ReduceLROnPlateau(opt, patience=max(2, cfg.epochs // 10))
    return model, opt, sched


def load_data(cfg: TrainConfig) -> tuple[_data.Dataset, _data.Dataset]:
    """The configured data set, split (seeded) and standardized with the training part's
    statistics."""
    ds = _data.get(cfg.data, n_samples=cfg.n_samples, noise=cfg.noise, seed=cfg.seed)
    train, val = _data.train_val_split(ds, cfg.val_fraction, seed=cfg.seed)
    if cfg.standardize:
        train, val = _data.standardize(train, val)
    return train, val


def batch_size_of(cfg: TrainConfig, n_train: int) -> int:
    """Rows per step: the whole training set (gd="batch"), 1 (gd="sgd") or batch_size."""
    return {"batch": n_train, "sgd": 1}.get(cfg.gd, cfg.batch_size)


# ---- run directory: checkpoints, metrics, plots -----------------------------------------------


class _Progress:
    """Progress of a run: on a terminal a tqdm bar over the run's steps (rate and ETA) with
    a line every tenth of the epochs above it; elsewhere (logs, CI) only those plain lines.

    ``steps`` is the run's remaining step count (the bar's total)."""

    def __init__(self, stream: TextIO | None, epochs: int, steps: int = 0):
        self.stream, self.epochs = stream, epochs
        self.tty = bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())
        self.every = max(1, epochs // 10)
        self.bar: Any = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=steps or None, file=stream, unit="step", dynamic_ncols=True, leave=False
            )

    def batch(self, epoch: int, k: int, n: int) -> None:
        """Step ``k`` of ``n`` of ``epoch`` is done."""
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch}/{self.epochs}", refresh=False)
            self.bar.update(1)

    def epoch(self, epoch: int, row: dict[str, float]) -> None:
        """``epoch`` is done: its line every ``every`` epochs and at the last one."""
        if self.stream is None:
            return
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['train_loss']:.4f}", refresh=False)
        if epoch % self.every and epoch != self.epochs:
            return
        val = (
            ""
            if math.isnan(row["val_loss"])
            else (f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.3f}")
        )
        line = (
            f"epoch {epoch:>4}/{self.epochs}  loss {row['train_loss']:.4f}  "
            f"acc {row['train_acc']:.3f}{val}  lr {row['lr']:.3g}  {row['time_s']:.2f}s"
        )
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Remove the bar (the epoch lines stay)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _flag_epochs(history: dict[str, Any], flags: list[dict[str, Any]]) -> list[int]:
    """The epoch of each flag's optimizer step (from the steps each epoch took)."""
    ends = np.cumsum(history["steps"])  # the history starts at epoch 1, also when resumed
    idx = np.searchsorted(ends, [f["step"] for f in flags], side="left")
    return [int(history["epoch"][min(i, len(ends) - 1)]) for i in idx]


def _plot_run(
    history: dict[str, Any],
    weight_names: list[str],
    run_dir: Path,
    title: str,
    flags: list[dict[str, Any]] | None = None,
) -> list[Path]:
    """loss/accuracy curves and per-layer gradient norms over epochs (PNG); on the latter
    the monitor's flags on Dense weights are marked at their epoch (red x)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    ep = history["epoch"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    a1.plot(ep, history["train_loss"], label="train")
    if not all(math.isnan(v) for v in history["val_loss"]):
        a1.plot(ep, history["val_loss"], label="validation")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1.set_yscale("log")
    a1.legend()
    a2.plot(ep, history["train_acc"], label="train")
    if not all(math.isnan(v) for v in history["val_acc"]):
        a2.plot(ep, history["val_acc"], label="validation")
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy")
    a2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    curves = run_dir / "curves.png"
    fig.savefig(curves)
    plt.close(fig)
    out = [curves]
    if weight_names and f"grad/{weight_names[0]}" in history:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
        cmap = plt.get_cmap("viridis")
        n = len(weight_names)
        for i, w in enumerate(weight_names):
            y = np.asarray(history[f"grad/{w}"], float)
            ax.plot(
                ep,
                np.where(y > 0, y, np.nan),
                color=cmap(i / max(n - 1, 1)),
                label=w.removesuffix(".weight"),
            )
        flags = flags or []
        marked = [(f, e) for f, e in zip(flags, _flag_epochs(history, flags), strict=True)]
        marked = [(f, e) for f, e in marked if f["tensor"] in weight_names]
        if marked:
            xs = [e for _, e in marked]
            ys = [
                history[f"grad/{f['tensor']}"][ep.index(e)] if e in ep else np.nan
                for f, e in marked
            ]
            ax.scatter(
                xs, ys, marker="x", color="red", zorder=3, label=f"monitor flag ({len(flags)})"
            )
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean ‖∂L/∂W‖₂ over the epoch's steps")
        ax.set_title("per-layer gradient norms (input layer dark, output layer light)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        grads = run_dir / "grad_norms.png"
        fig.savefig(grads)
        plt.close(fig)
        out.append(grads)
    return out


def _flags(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The monitor's events as JSON rows: step, tensor, kind, value (and its detail)."""
    out = []
    for e in events:
        v = e["value"]
        row = {
            "step": int(e["step"]),
            "tensor": e["tensor"],
            "kind": e["kind"],
            "value": int(v) if e["kind"] == "nonfinite" else float(v),
        }
        if "detail" in e:
            row["detail"] = e["detail"]
        out.append(row)
    return out


def _warm_up(cfg: TrainConfig, train: _data.Dataset, batch_size: int, xp: Any) -> float:
    """Seconds for one training step and one evaluation on a throw-away model and optimizer
    of the same configuration: Numba compiles (or loads from its cache) every kernel the
    run uses here, so the epochs' steps/s measure the steps alone. The run's own model,
    optimizer and random streams are not touched."""
    t0 = time.perf_counter()
    model, opt, sched = build(cfg, train.X.shape[1], train.n_classes, xp)
    mon = GradientMonitor(opt)
    trainer = Trainer(model, opt, schedule=sched, monitor=mon)
    n = min(len(train.X), max(batch_size, 2))
    X, y = train.X[:n], train.y[:n]
    trainer.train_epoch(X, y, n, np.random.default_rng(0))
    trainer.evaluate(X, y)
    return time.perf_counter() - t0


def _write_grad_csv(history: dict[str, Any], weight_names: list[str], path: Path) -> None:
    lines = ["epoch,layer,grad_norm"]
    for k, e in enumerate(history["epoch"]):
        for w in weight_names:
            vals = history.get(f"grad/{w}")
            if vals is not None:
                lines.append(f"{e},{w},{vals[k]!r}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def _new_state(cfg: TrainConfig, weights: list[str]) -> dict[str, Any]:
    """The loop state of a run at epoch 0 (what a trainer file holds, and the best
    weights): empty history columns per epoch and per Dense weight."""
    history: dict[str, list] = {
        k: []
        for k in (
            "epoch",
            "train_loss",
            "train_acc",
            "val_loss",
            "val_acc",
            "lr",
            "time_s",
            "steps",
        )
    }
    for w in weights:
        history[f"grad/{w}"] = []
    state: dict[str, Any] = {
        "format": TRAINER_FORMAT,
        "config": cfg.to_json(),
        "epoch": 0,
        "opt_step": 0,
        "history": history,
        "best_epoch": 0,
        "best_metric": math.inf,
        "bad_epochs": 0,
        "rng": None,
        "stopped_early": False,
        "best_params": None,
        "best_buffers": {},
        "monitor_flags": [],
        "monitor_flags_total": 0,
    }
    return state


def _early_stopping(
    state: dict[str, Any], cfg: TrainConfig, epoch: int, metric: float, model: nn.Sequential
) -> None:
    """Track the best epoch (lowest ``metric``), keep its weights and buffers when they are
    to be restored, count the epochs without improvement and stop after ``patience``."""
    if metric < state["best_metric"]:
        state.update(best_metric=metric, best_epoch=epoch, bad_epochs=0)
        if cfg.patience is not None and cfg.restore_best:
            state["best_params"] = _host(model.flat.data).copy()
            state["best_buffers"] = {k: _host(b).copy() for k, b in model.buffers_dict().items()}
    else:
        state["bad_epochs"] += 1
    if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
        state["stopped_early"] = True


def _restore_best(state: dict[str, Any], cfg: TrainConfig, model: nn.Sequential) -> bool:
    """After early stopping, put the best epoch's weights and buffers back; whether it did."""
    if not (state["stopped_early"] and cfg.restore_best and state["best_params"] is not None):
        return False
    xp = model.flat.xp
    model.flat.data[...] = xp.asarray(state["best_params"])
    for k, b in model.buffers_dict().items():
        best = state["best_buffers"][k]
        b[...] = best if isinstance(b, np.ndarray) else xp.asarray(best)
    return True


def run(
    cfg: TrainConfig,
    run_dir: str | os.PathLike | None,
    *,
    resume: bool = False,
    backend: str = "cpu",
    progress: TextIO | None = sys.stderr,
    comm: Any = None,
    plots: bool = True,
    stop_after: int | None = None,
    overwrite: bool = False,
    warm_up: bool = True,
) -> dict[str, Any]:
    """Train per ``cfg``; with ``run_dir`` write checkpoints, metrics.json, gradients.csv
    and plots there (rank 0 only). ``resume`` continues from the run directory's last
    checkpoint; a directory holding a previous run is refused unless ``resume`` or
    ``overwrite`` (which replaces that run's files). ``stop_after=k`` ends this call after
    k epochs (the run is resumable: an interrupted run). ``warm_up`` first takes one step on
    a throw-away copy of the model, so that Numba's compilation is timed apart
    (``summary["warm_up_s"]``) and not in the steps/s. Ctrl-C raises
    :class:`TrainingInterrupted` with the last epoch whose checkpoints are whole.
    Returns the metrics (config, history, summary, monitor_flags)."""
    cfg.validate()
    rd = Path(run_dir) if run_dir is not None else None
    rank0 = comm is None or comm.rank == 0
    if rd is not None and rank0:
        check_run_dir(rd, resume=resume, overwrite=overwrite)
    xp = _xp(backend)
    train, val = load_data(cfg)
    model, opt, sched = build(cfg, train.X.shape[1], train.n_classes, xp)
    monitor = GradientMonitor(opt, every=cfg.monitor_every)  # 8-bit states too
    trainer = Trainer(model, opt, schedule=sched, monitor=monitor, l1=cfg.l1, l2=cfg.l2, comm=comm)
    bs = batch_size_of(cfg, len(train.X))
    if cfg.batch_norm and (len(train.X) < 2 or (cfg.gd == "sgd")):
        raise ValueError(
            "batch_norm: needs mini-batches of at least 2 examples "
            "(gd='sgd' takes one example per step)"
        )
    weights = model.weight_names()
    state = _new_state(cfg, weights)
    history = state["history"]
    rng = np.random.default_rng(cfg.seed + 1)
    if resume:
        if rd is None:
            raise ResumeError("resume: needs a run_dir to resume from")
        resume_into(rd, cfg, model, opt, state, rng)
        history = state["history"]
    if trainer.comm is not None:  # same layout everywhere (raises on every rank if not), rank
        from .parallel import broadcast_parameters  # 0's parameters and optimizer state

        broadcast_parameters(trainer.comm, model.flat, optimizer=opt)
    if not resume and rd is not None and rank0 and overwrite:
        for f in run_files(rd, RUN_FILES):  # the previous run's: none pairs with this run
            (rd / f).unlink(missing_ok=True)
    warm_up_s = _warm_up(cfg, train, bs, xp) if warm_up else 0.0
    start_epoch = state["epoch"]
    last = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    per_epoch = max(1, -(-len(train.X) // bs))
    bar = _Progress(progress if rank0 else None, cfg.epochs, (last - start_epoch) * per_epoch)
    t_start = time.perf_counter()
    n_flags, saved_epoch = 0, start_epoch
    try:
        for epoch in range(start_epoch + 1, last + 1):
            if state["stopped_early"]:
                break
            t0 = time.perf_counter()
            lr = opt.param_groups[0]["lr"]
            tr = trainer.train_epoch(
                train.X, train.y, bs, rng, on_batch=lambda k, n, e=epoch: bar.batch(e, k, n)
            )
            ev = trainer.evaluate(val.X, val.y)
            if sched is not None:
                if isinstance(sched, schedules.ReduceLROnPlateau):
                    sched.step(ev["loss"] if len(val.X) else tr["loss"])
                else:
                    sched.step()
            row = {
                "epoch": epoch,
                "train_loss": tr["loss"],
                "train_acc": tr["acc"],
                "val_loss": ev["loss"],
                "val_acc": ev["acc"],
                "lr": lr,
                "time_s": time.perf_counter() - t0,
                "steps": int(tr["steps"]),
            }
            for k, val_ in row.items():
                history[k].append(val_)
            for w in weights:
                history[f"grad/{w}"].append(tr.get(f"grad/{w}", math.nan))
            _early_stopping(state, cfg, epoch, ev["loss"] if len(val.X) else tr["loss"], model)
            state.update(epoch=epoch, opt_step=opt.step_count, rng=rng.bit_generator.state)
            bar.epoch(epoch, row)
            new = monitor.events[n_flags:] if monitor is not None else []
            room = KEEP_FLAGS - len(state["monitor_flags"])
            state["monitor_flags"].extend(_flags(new[: max(room, 0)]))
            state["monitor_flags_total"] += len(new)
            n_flags += len(new)
            if rd is not None and rank0:
                with _sigint_deferred():  # a whole generation, then the pointer moves
                    save_generation(rd, state, opt, model)
                saved_epoch = epoch
    except KeyboardInterrupt:
        raise TrainingInterrupted(saved_epoch if rd is not None else 0, rd) from None
    finally:
        bar.close()
    train_time = time.perf_counter() - t_start
    restored = _restore_best(state, cfg, model)
    final_tr = trainer.evaluate(train.X, train.y)
    final_val = trainer.evaluate(val.X, val.y)
    steps = sum(history["steps"])
    summary = {
        "epochs_run": len(history["epoch"]),
        "stopped_early": state["stopped_early"],
        "best_epoch": state["best_epoch"],
        "restored_best": restored,
        "train_loss": final_tr["loss"],
        "train_acc": final_tr["acc"],
        "val_loss": final_val["loss"],
        "val_acc": final_val["acc"],
        "steps": steps,
        "skipped_steps": opt.skipped_steps,
        "time_s": sum(history["time_s"]),
        "steps_per_s": steps / max(sum(history["time_s"]), 1e-12),
        "this_process_s": train_time,
        "n_params": int(sum(model.flat[n].size for n in model.flat)),
        "monitor_events": state["monitor_flags_total"],
        "warm_up_s": warm_up_s,
        "ranks": 1 if comm is None else comm.size,
    }
    summary.update(_grad_summary(history, weights))
    result = {
        "config": cfg.to_json(),
        "backend": backend,
        "data": train.name,
        "n_train": len(train.X),
        "n_val": len(val.X),
        "history": history,
        "summary": summary,
        "monitor_flags": state["monitor_flags"],
        "run_dir": None if rd is None else str(rd),
    }
    if rd is not None and rank0:
        _write_outputs(rd, result, weights, plots)
    return result


def _grad_summary(history: dict[str, Any], weights: list[str]) -> dict[str, float]:
    """Mean gradient norm of the first and last Dense weight over the run, and their ratio
    (the vanishing-gradient picture); empty without Dense weights or epochs."""
    if not weights or not history[f"grad/{weights[0]}"]:
        return {}
    if np.isnan(np.asarray(history[f"grad/{weights[0]}"], float)).all():
        return {}  # no gradient norms recorded
    first = float(np.nanmean(np.asarray(history[f"grad/{weights[0]}"], float)))
    last = float(np.nanmean(np.asarray(history[f"grad/{weights[-1]}"], float)))
    return {
        "grad_first_layer": first,
        "grad_last_layer": last,
        "grad_ratio_first_last": first / max(last, 1e-300),
    }


def _write_outputs(rd: Path, result: dict[str, Any], weights: list[str], plots: bool) -> None:
    """metrics.json, gradients.csv and (with ``plots``) the PNGs, listed in ``result``."""
    history = result["history"]
    atomic_write_text(rd / "metrics.json", json.dumps(result, indent=1, default=float))
    _write_grad_csv(history, weights, rd / "gradients.csv")
    if plots:
        title = f"gpugd train: {result['data']}"
        result["plots"] = [
            str(p) for p in _plot_run(history, weights, rd, title, result["monitor_flags"])
        ]


def summary_table(result: dict[str, Any]) -> str:
    """The table ``gpugd train`` prints at the end."""
    s, c = result["summary"], result["config"]
    rows = [
        ("data", f"{result['data']}: {result['n_train']} train / {result['n_val']} validation"),
        (
            "model",
            f"{c['hidden']} {c['activation']} init={c['init']}"
            + (" +batchnorm" if c["batch_norm"] else "")
            + (f" +dropout {c['dropout']}" if c["dropout"] else "")
            + (" +residual" if c["residual"] else "")
            + f"  ({s['n_params']} parameters)",
        ),
        (
            "optimizer",
            f"{c['optimizer']} lr={c['lr'] or DEFAULT_LR[c['optimizer']]:g} "
            f"schedule={c['schedule']} gd={c['gd']}"
            + (f" batch={c['batch_size']}" if c["gd"] == "minibatch" else ""),
        ),
        (
            "epochs",
            f"{s['epochs_run']}"
            + (
                f" (stopped early; best epoch {s['best_epoch']}"
                + (", weights restored)" if s["restored_best"] else ")")
                if s["stopped_early"]
                else ""
            ),
        ),
        ("train loss / acc", f"{s['train_loss']:.4f} / {s['train_acc']:.3f}"),
        (
            "val loss / acc",
            "-" if math.isnan(s["val_loss"]) else f"{s['val_loss']:.4f} / {s['val_acc']:.3f}",
        ),
    ]
    if "grad_ratio_first_last" in s:
        rows.append(
            (
                "‖∇W‖ first / last layer",
                f"{s['grad_first_layer']:.3g} / {s['grad_last_layer']:.3g} "
                f"(ratio {s['grad_ratio_first_last']:.3g})",
            )
        )
    rows.append(
        (
            "steps",
            f"{s['steps']} in {s['time_s']:.2f} s ({s['steps_per_s']:.0f} steps/s, "
            f"{s['ranks']} rank(s), backend {result['backend']})",
        )
    )
    if s.get("warm_up_s"):
        rows.append(("warm-up", f"{s['warm_up_s']:.2f} s (Numba compile/cache load, not timed)"))
    flags, n = result.get("monitor_flags", []), s["monitor_events"]
    rows.append(("skipped steps / monitor flags", f"{s['skipped_steps']} / {n}"))
    for f in flags[:SHOW_FLAGS]:
        rows.append(("", f"step {f['step']} {f['tensor']} {f['kind']} {f['value']:.3g}"))
    if n > SHOW_FLAGS:
        kept = f"first {len(flags)} " if len(flags) < n else ""
        rows.append(("", f"... {n - SHOW_FLAGS} more ({kept}in metrics.json: monitor_flags)"))
    if result.get("run_dir"):
        rows.append(("run directory", result["run_dir"]))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


__all__ = [
    "GD_MODES",
    "OPTIMIZERS",
    "SCHEDULES",
    "ResumeError",
    "RunDirError",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "batch_size_of",
    "build",
    "check_run_dir",
    "checkpoint_paths",
    "load_data",
    "run",
    "summary_table",
]
