"""State dicts and checkpoint files (part of every ``gpugd.optim`` optimizer): everything is
validated — names, shapes, dtypes, hyperparameters, every counter's type and range, every
array finite — before the first write, so a refused state changes nothing."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .. import quant8
from .._io import atomic_savez, load_npz

FORMAT = "gpugd-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint or state dict that does not fit this optimizer; nothing was changed."""


def _to_numpy(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.array(a, copy=True)


class CheckpointMixin:
    """``state_dict``/``load_state_dict``/``save``/``load`` (of ``Optimizer``)."""

    # ---- state dicts

    def _hyper_of(self, group: dict[str, Any]) -> dict[str, Any]:
        return {
            k: (list(val) if isinstance(val, tuple) else val)
            for k, val in group.items()
            if k != "names"
        }

    def state_dict(self) -> dict[str, Any]:
        """torch-like: ``{"kind", "step", "param_groups", "layout", "state", "group_state",
        "scheduler"}``; arrays are NumPy copies, so it can be saved or sent anywhere."""
        layout = {}
        for g in self._groups:
            for n, p in zip(g.names, g.params, strict=True):
                layout[n] = {"shape": list(p.shape), "dtype": str(p.dtype)}
        return {
            "kind": type(self).__name__,
            "step": self.step_count,
            "param_groups": [
                {**self._hyper_of(gr), "names": list(gr["names"])} for gr in self.param_groups
            ],
            "layout": layout,
            "state": {n: {k: _to_numpy(a) for k, a in st.items()} for n, st in self.state.items()},
            "group_state": [dict(g.extra) for g in self._groups],
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "skipped_steps": self.skipped_steps,
            "loss_scaler": None if self.loss_scaler is None else self.loss_scaler.state_dict(),
            "state_bits": self.state_bits,
            "block_size": self.block_size,
        }

    def _check_state_dict(self, sd: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every check of ``load_state_dict``; returns the new param groups. Raises
        CheckpointError naming the first difference."""
        for key in ("kind", "step", "param_groups", "layout", "state"):
            if key not in sd:
                raise CheckpointError(f"state dict: missing {key!r}")
        if sd["kind"] != type(self).__name__:
            raise CheckpointError(
                f"state dict: written by {sd['kind']}, this optimizer is {type(self).__name__}"
            )
        step = sd["step"]
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise CheckpointError(f"state dict: step must be a non-negative integer, got {step!r}")
        skipped = sd.get("skipped_steps", 0)
        if isinstance(skipped, bool) or not isinstance(skipped, int | np.integer) or skipped < 0:
            raise CheckpointError(
                f"state dict: skipped_steps must be a non-negative integer, got {skipped!r}"
            )
        if not isinstance(sd["layout"], Mapping) or not isinstance(sd["state"], Mapping):
            raise CheckpointError("state dict: layout and state must be mappings")
        if not isinstance(sd["param_groups"], list | tuple):
            raise CheckpointError("state dict: param_groups must be a list")
        self._check_state_bits_of(sd)
        layout = sd["layout"]
        mine_names = [n for g in self._groups for n in g.names]
        if list(layout) != mine_names:
            raise CheckpointError(
                f"state dict: tensors {list(layout)[:6]}… do not match this optimizer's "
                f"{mine_names[:6]}…; first difference: "
                + _first_difference(list(layout), mine_names)
            )
        for g in self._groups:
            for n, p in zip(g.names, g.params, strict=True):
                want = {"shape": list(p.shape), "dtype": str(p.dtype)}
                got = {"shape": list(layout[n]["shape"]), "dtype": str(layout[n]["dtype"])}
                if got != want:
                    raise CheckpointError(f"state dict: tensor {n!r} is {got}, expected {want}")
        groups = sd["param_groups"]
        if len(groups) != len(self._groups):
            raise CheckpointError(
                f"state dict: {len(groups)} param groups, this optimizer has {len(self._groups)}"
            )
        new_groups = []
        for gi, (gd, g) in enumerate(zip(groups, self._groups, strict=True)):
            if not isinstance(gd, Mapping):
                raise CheckpointError(f"state dict: param_groups[{gi}] is not a mapping")
            if list(gd.get("names", [])) != g.names:
                raise CheckpointError(f"state dict: param_groups[{gi}] names differ")
            hyper = {k: val for k, val in gd.items() if k != "names"}
            if set(hyper) != set(self.DEFAULTS):
                raise CheckpointError(
                    f"state dict: param_groups[{gi}] hyperparameters {sorted(hyper)} differ "
                    f"from {type(self).__name__}'s {sorted(self.DEFAULTS)}"
                )
            if "betas" in hyper:
                hyper["betas"] = tuple(hyper["betas"])
            group = {**hyper, "names": g.names}
            try:
                self._kernel(group, max(int(step), 1), 1.0, g)
                if self.state_bits == 8:
                    self._op8(group, max(int(step), 1))
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"state dict: param_groups[{gi}]: {exc}") from None
            if self._state_fills(group).keys() != self._state_fills(self.param_groups[gi]).keys():
                raise CheckpointError(
                    f"state dict: param_groups[{gi}] needs states "
                    f"{sorted(self._state_fills(group))}, this optimizer holds "
                    f"{sorted(self._state_fills(self.param_groups[gi]))}"
                )
            new_groups.append(group)
        for n, st in self.state.items():
            got = sd["state"].get(n)
            if got is None or set(got) != set(st):
                raise CheckpointError(
                    f"state dict: tensor {n!r} carries states {sorted(got or {})}, "
                    f"expected {sorted(st)}"
                )
            for k, a in st.items():
                b = np.asarray(got[k])
                if b.shape != a.shape or b.dtype != a.dtype:
                    raise CheckpointError(
                        f"state dict: {n!r}.{k} is {b.dtype}{list(b.shape)}, expected "
                        f"{a.dtype}{list(a.shape)}"
                    )
                nonneg = k in SQUARED_STATES or k.endswith(quant8.ABSMAX)
                _check_values(f"state dict: {n!r}.{k}", b, nonnegative=nonneg)
        gstate = sd.get("group_state", [{} for _ in self._groups])
        if not isinstance(gstate, list | tuple) or len(gstate) != len(self._groups):
            raise CheckpointError("state dict: group_state does not match the param groups")
        for gi, extra in enumerate(gstate):
            self._check_group_state(gi, extra)
        sched = sd.get("scheduler")
        if (sched is None) != (self.scheduler is None):
            have = "no schedule" if self.scheduler is None else type(self.scheduler).__name__
            raise CheckpointError(
                f"state dict: carries {'no schedule' if sched is None else sched.get('kind')}, "
                f"this optimizer has {have}; attach the same schedule before loading"
            )
        if sched is not None:
            self.scheduler._check_state_dict(sched)
        scaler = sd.get("loss_scaler")
        if (scaler is None) != (self.loss_scaler is None):
            raise CheckpointError(
                f"state dict: carries {'no' if scaler is None else 'a'} loss scaler, this "
                f"optimizer has {'none' if self.loss_scaler is None else 'one'}; attach the "
                "same LossScaler before loading"
            )
        if scaler is not None:
            try:
                self.loss_scaler._check_state_dict(scaler)
            except ValueError as exc:
                raise CheckpointError(f"state dict: {exc}") from None
        return new_groups

    def _check_state_bits_of(self, sd: Mapping[str, Any]) -> None:
        """The state dict's state bits and block size are this optimizer's."""
        bits, bs = sd.get("state_bits", 32), sd.get("block_size", quant8.BLOCK)
        if (bits, bs if bits == 8 else None) != (
            self.state_bits,
            self.block_size if self.state_bits == 8 else None,
        ):
            held = "32-bit" if bits == 32 else f"{bits!r}-bit (block_size {bs!r})"
            mine = "32-bit" if self.state_bits == 32 else f"8-bit (block_size {self.block_size})"
            raise CheckpointError(
                f"state dict: holds {held} states, this optimizer keeps {mine} states; "
                "load with convert_states=True to convert them"
            )

    GROUP_STATE: ClassVar[dict[str, tuple[float, float]]] = {}  # name -> [lo, hi]: NAdam's Π μ

    def _check_group_state(self, gi: int, extra: Any) -> None:
        """A group's scalars (``group_state``): known names, real, finite, in range."""
        if not isinstance(extra, Mapping):
            raise CheckpointError(f"state dict: group_state[{gi}] is not a mapping")
        for k, val in extra.items():
            if k not in self.GROUP_STATE:
                raise CheckpointError(
                    f"state dict: group_state[{gi}] has {k!r}; {type(self).__name__} keeps "
                    f"{sorted(self.GROUP_STATE) or 'none'}"
                )
            lo, hi = self.GROUP_STATE[k]
            ok = isinstance(val, int | float | np.floating) and not isinstance(val, bool)
            if not ok or not (math.isfinite(val) and lo <= val <= hi):
                raise CheckpointError(
                    f"state dict: group_state[{gi}][{k!r}] must be a real in [{lo}, {hi}], "
                    f"got {val!r}"
                )

    def load_state_dict(self, sd: Mapping[str, Any], *, convert_states: bool = False) -> None:
        """Restore a ``state_dict()``; everything is checked first, so a state dict that does
        not fit raises ``CheckpointError`` and changes nothing. Its hyperparameters replace
        the optimizer's (torch's behaviour), validated as the constructor validates them.
        ``convert_states=True``: states of other bits or block size are first converted to
        this optimizer's (``convert_state_dict``); otherwise they are refused."""
        if convert_states:
            sd = convert_state_dict(sd, self.state_bits, self.block_size)
        new_groups = self._check_state_dict(sd)
        for n, st in self.state.items():
            for k, a in st.items():
                a[...] = _like(a, np.asarray(sd["state"][n][k]))
        self.param_groups = new_groups
        for g, extra in zip(self._groups, sd.get("group_state", []), strict=False):
            g.extra = {k: float(val) for k, val in extra.items()}
        self.step_count = int(sd["step"])
        self.skipped_steps = int(sd.get("skipped_steps", 0))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(sd["scheduler"])
        if self.loss_scaler is not None:
            self.loss_scaler.load_state_dict(sd["loss_scaler"])

    # ---- checkpoints on disk

    def save(self, path: str | os.PathLike, *, params: bool = True, model: Any = None) -> Path:
        """Write parameters (unless ``params=False``) and the state dict to ``path`` (.npz)
        atomically: a temporary file in the same directory, fsync, then rename.

        ``model`` (a built ``gpugd.nn`` model over these parameters) adds its buffers —
        every ``model.state_dict()`` entry that is not a parameter: batch-norm running
        statistics, dropout offsets and seeds — so that one file holds the whole training
        state; ``load(path, model=...)`` restores it bit for bit."""
        path = Path(path)
        buffers = _model_buffers(model) if model is not None else None
        sd = self.state_dict()
        arrays: dict[str, np.ndarray] = {}
        for n, st in sd.pop("state").items():
            for k, a in st.items():
                arrays[f"state/{n}/{k}"] = a
        if params:
            for g in self._groups:
                for n, p in zip(g.names, g.params, strict=True):
                    arrays[f"param/{n}"] = _to_numpy(p)
        for k, a in (buffers or {}).items():
            arrays[f"model/{k}"] = _to_numpy(a)
        meta = {"format": FORMAT, "params": params, "model": buffers is not None, **sd}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        atomic_savez(path, arrays)
        return path

    def load(
        self, path: str | os.PathLike, *, model: Any = None, convert_states: bool = False
    ) -> None:
        """Load a checkpoint written by ``save``: parameters (when it has them), state and,
        with ``model``, the model's buffers (the checkpoint must have been saved with a
        model, and only then may ``model`` be given). Everything — the model's buffers
        too — is validated before anything is written (``CheckpointError``).
        ``convert_states=True`` converts 32-bit and 8-bit states (``convert_state_dict``)."""
        path = Path(path)
        try:
            files = load_npz(path)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable gpugd checkpoint ({exc})") from None
        if not isinstance(files.get("meta"), np.ndarray) or files["meta"].dtype != np.uint8:
            files.pop("meta", None)
        if "meta" not in files:
            raise CheckpointError(f"{path}: no 'meta' record; not a gpugd checkpoint")
        try:
            meta = json.loads(files.pop("meta").tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable 'meta' record ({exc})") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: 'meta' is not a JSON object")
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        state: dict[str, dict[str, np.ndarray]] = {n: {} for n in meta.get("layout", {})}
        param_arrays: dict[str, np.ndarray] = {}
        model_arrays: dict[str, np.ndarray] = {}
        for key, a in files.items():
            kind, _, rest = key.partition("/")
            if kind == "state":
                n, _, k = rest.rpartition("/")
                state.setdefault(n, {})[k] = a
            elif kind == "param":
                param_arrays[rest] = a
            elif kind == "model":
                model_arrays[rest] = a
        sd = {**meta, "state": state}
        sd.pop("model", None)
        try:
            if convert_states:
                sd = convert_state_dict(sd, self.state_bits, self.block_size)
            self._check_state_dict(sd)
            model_state = _check_model(meta.get("model", False), model_arrays, model)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        if not isinstance(meta.get("params"), bool):
            raise CheckpointError(f"{path}: 'params' must be true or false in 'meta'")
        if meta["params"]:
            for g in self._groups:
                for n, p in zip(g.names, g.params, strict=True):
                    a = param_arrays.get(n)
                    if a is None or a.shape != p.shape or a.dtype != p.dtype:
                        raise CheckpointError(f"{path}: parameter {n!r} missing or mismatched")
                    try:
                        _check_values(f"parameter {n!r}", a)
                    except CheckpointError as exc:
                        raise CheckpointError(f"{path}: {exc}") from None
            for g in self._groups:
                for n, p in zip(g.names, g.params, strict=True):
                    p[...] = _like(p, param_arrays[n])
        self.load_state_dict(sd)
        if model_state is not None:  # the parameters just loaded, the checkpoint's buffers
            model.load_state_dict({**model.state_dict(), **model_state})


def convert_state_dict(
    sd: Mapping[str, Any], state_bits: int, block_size: int = quant8.BLOCK
) -> dict[str, Any]:
    """A copy of a state dict (``state_dict()``'s, or a checkpoint's) with its states in
    ``state_bits`` (8 or 32) and ``block_size``: an 8-bit state becomes float32
    ``quant8.dequantize`` (qmap[code]·absmax); a float32 state of a tensor of at least
    ``quant8.MIN_8BIT`` elements becomes ``quant8.quantize``'s codes and absmax (8 → 8 with
    another block size goes through float32). Other states (and small tensors' states) are
    kept. Raises CheckpointError on an 8-bit state whose arrays are not what they claim."""
    if isinstance(state_bits, bool) or state_bits not in (8, 32):
        raise ValueError(f"state_bits: expected 8 or 32, got {state_bits!r}")
    block_size = quant8.check_block_size(block_size)
    if not isinstance(sd.get("layout"), Mapping) or not isinstance(sd.get("state"), Mapping):
        raise CheckpointError("state dict: layout and state must be mappings")
    src_bits, src_bs = sd.get("state_bits", 32), sd.get("block_size", quant8.BLOCK)
    if src_bits not in (8, 32) or (src_bits == 8 and src_bs not in quant8.BLOCK_SIZES):
        raise CheckpointError(
            f"state dict: state_bits {src_bits!r} / block_size {src_bs!r} are not 8 or 32 / "
            f"one of {quant8.BLOCK_SIZES}"
        )
    state = {}
    for n, st in sd["state"].items():
        if n not in sd["layout"] or not isinstance(st, Mapping):
            raise CheckpointError(f"state dict: tensor {n!r} has no layout or no state mapping")
        shape = tuple(sd["layout"][n]["shape"])
        out = dict(st)
        for s, signed in quant8.SIGNED_STATES.items():
            if s + quant8.CODES in st or s + quant8.ABSMAX in st:
                x = _dequantized(f"{n!r}.{s}", st, s, shape, signed, src_bs)
                del out[s + quant8.CODES], out[s + quant8.ABSMAX]
            elif s in st:
                x = np.asarray(st[s])
            else:
                continue
            if state_bits == 8 and quant8.use_8bit(x.size) and x.dtype == np.float32:
                codes, absmax = quant8.quantize(x.reshape(-1), signed, block_size)
                out.pop(s, None)
                out[s + quant8.CODES], out[s + quant8.ABSMAX] = codes.reshape(x.shape), absmax
            else:
                out[s] = x
        state[n] = out
    return {**sd, "state": state, "state_bits": state_bits, "block_size": block_size}


def _dequantized(what: str, st: Mapping, s: str, shape: tuple, signed: bool, bs: int) -> Any:
    """float32 values of an 8-bit state in a state dict, its arrays checked first."""
    codes, absmax = st.get(s + quant8.CODES), st.get(s + quant8.ABSMAX)
    if codes is None or absmax is None:
        raise CheckpointError(f"state dict: {what} needs both .codes and .absmax")
    codes, absmax = np.asarray(codes), np.asarray(absmax)
    nb = quant8.blocks(int(np.prod(shape)), bs)
    if codes.dtype != np.uint8 or codes.shape != shape:
        raise CheckpointError(f"state dict: {what}.codes must be uint8{list(shape)}")
    if absmax.dtype != np.float32 or absmax.shape != (nb,):
        raise CheckpointError(f"state dict: {what}.absmax must be float32[{nb}]")
    _check_values(f"state dict: {what}.absmax", absmax, nonnegative=True)
    return quant8.dequantize(codes.reshape(-1), absmax, signed, bs).reshape(shape)


def _model_buffers(model: Any) -> dict[str, Any]:
    """``model.state_dict()`` less its parameters (what the optimizer's arena holds)."""
    if not hasattr(model, "state_dict") or getattr(model, "flat", None) is None:
        raise TypeError(f"model: expected a built gpugd.nn model, got {type(model).__name__}")
    params = set(model.flat)
    return {k: a for k, a in model.state_dict().items() if k not in params}


def _check_model(saved: Any, arrays: dict[str, np.ndarray], model: Any) -> dict[str, Any] | None:
    """The checkpoint's model buffers, each checked against ``model``'s; None when the
    checkpoint has none (and no model is given)."""
    if not isinstance(saved, bool):
        raise CheckpointError(f"'model' must be true or false in 'meta', got {saved!r}")
    if saved and model is None:
        raise CheckpointError(
            "holds a model's buffers (saved with model=); pass model= to load() them"
        )
    if not saved:
        if model is not None:
            raise CheckpointError("holds no model buffers (saved without model=); drop model=")
        if arrays:
            raise CheckpointError(f"unexpected model arrays {sorted(arrays)[:4]}")
        return None
    mine = _model_buffers(model)
    if set(arrays) != set(mine):
        raise CheckpointError(
            f"model buffers {sorted(arrays)[:6]} do not match the model's {sorted(mine)[:6]}"
        )
    for k, dst in mine.items():
        a = arrays[k]
        if a.shape != dst.shape or a.dtype != dst.dtype:
            raise CheckpointError(
                f"model buffer {k!r} is {a.dtype}{list(a.shape)}, expected "
                f"{dst.dtype}{list(dst.shape)}"
            )
        _check_values(f"model buffer {k!r}", a, nonnegative=k.endswith("running_var"))
    return arrays


# states that are sums or averages of squares: never negative (a negative one would put a
# NaN into the next step's square root)
SQUARED_STATES = frozenset({"exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg"})


def _check_values(what: str, a: np.ndarray, nonnegative: bool = False) -> None:
    """A loaded float array: finite (a checkpoint to resume from holds no NaN or Inf), and
    ≥ 0 where ``nonnegative``."""
    if a.dtype.kind not in "fV" and a.dtype.name != "bfloat16":
        return
    x = a.astype(np.float64, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        raise CheckpointError(
            f"{what} holds {int(bad.sum())} non-finite value(s) (first at flat index "
            f"{int(np.flatnonzero(bad.ravel())[0])}); not a state to resume from"
        )
    if nonnegative and (x < 0).any():
        raise CheckpointError(f"{what} holds negative values; it is a sum of squares")


def _first_difference(a: list[str], b: list[str]) -> str:
    for k, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"position {k}: {x!r} in the checkpoint, {y!r} here"
    return f"{len(a)} tensors in the checkpoint, {len(b)} here"


def _like(target: Any, host: np.ndarray) -> Any:
    """``host`` on ``target``'s backend."""
    if isinstance(target, np.ndarray):
        return host
    import cupy

    return cupy.asarray(host)
