"""``Optimizer``, the base of every ``gpugd.optim`` optimizer: param groups, the precision
policy, state layout (arena or lists, fp32 master weights) and the validated tensors each
group's kernel runs on; the step and the checkpoints are its mixins (``_step``,
``_checkpoint``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from .. import _hostmem as hostmem
from .. import _validate, quant8
from ..flat import FlatParams
from ..ops import optim as _ops
from ..ops import reduce as _reduce
from ._checkpoint import CheckpointMixin
from ._step import StepMixin, StepReport, _Pending

MASTER = "master"  # the state holding fp32 master weights (master_weights=True)
STATE_BITS = (8, 32)
NONFINITE_POLICIES = ("propagate", "skip", "error")


def _positive(name: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float | np.floating | np.integer):
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__}")
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{name}: expected a finite value > 0, got {x!r}")
    return float(x)


class _Group:
    """One param group: its tensors (names, parameter and gradient arrays), where its state
    lives, and the arrays the kernel is launched on (spans of the arena or the lists)."""

    def __init__(self, spec: Mapping[str, Any], index: int, first_name: int):
        params = spec["params"]
        self.flat: FlatParams | None = params if isinstance(params, FlatParams) else None
        if self.flat is not None:
            if "grads" in spec:
                raise TypeError(f"param_groups[{index}]: grads come from the FlatParams arena")
            names = list(spec.get("names", self.flat.names))
            for n in names:
                self.flat._slot(n)  # KeyError naming the missing parameter
            order = {n: k for k, n in enumerate(self.flat.names)}
            self.names = sorted(names, key=order.__getitem__)
            self.params = [self.flat[n] for n in self.names]
            self.grads = [self.flat.grads[n] for n in self.names]
            self.spans = self._spans(order)
        else:
            if not isinstance(params, list | tuple) or "grads" not in spec:
                raise TypeError(
                    f"param_groups[{index}]: expected a FlatParams, or a list of arrays under "
                    f"'params' with their gradients under 'grads'; got {type(params).__name__}"
                )
            self.params, self.grads = list(params), list(spec["grads"])
            where = f"param_groups[{index}] " if index else ""
            for k, (p, g) in enumerate(zip(self.params, self.grads, strict=False)):
                _validate.array_kind(f"{where}params[{k}]", p)  # before any state is made
                _validate.array_kind(f"{where}grads[{k}]", g)
            if len(self.grads) != len(self.params):
                raise ValueError(
                    f"param_groups[{index}]: {len(self.params)} params but {len(self.grads)} grads"
                )
            default = [str(first_name + k) for k in range(len(self.params))]
            self.names = [str(n) for n in spec.get("names", default)]
            if len(self.names) != len(self.params):
                raise ValueError(f"param_groups[{index}]: names and params differ in length")
            self.spans = None
        if not self.names:
            raise ValueError(f"param_groups[{index}]: no parameters")
        self.hyper = {k: val for k, val in spec.items() if k not in ("params", "grads", "names")}
        self.tensors: _ops.Tensors | None = None
        self.tensors_key: tuple = ()
        self.extra: dict[str, float] = {}  # per-group scalars a rule carries (NAdam's Π μ)

    def _spans(self, order: dict[str, int]) -> list[tuple[int, int]]:
        """[lo, hi) element ranges of the arena covering the group; adjacent tensors merge
        (the zero padding between them is updated too and stays zero)."""
        assert self.flat is not None
        spans: list[tuple[int, int]] = []
        for n in self.names:
            off = self.flat._slots[n][0]
            k = order[n]
            nxt = (
                self.flat.numel
                if k + 1 == len(order)
                else self.flat._slots[self.flat.names[k + 1]][0]
            )
            if spans and spans[-1][1] == off:
                spans[-1] = (spans[-1][0], nxt)
            else:
                spans.append((off, nxt))
        return spans

    def kernel_arrays(self, buf: Any) -> Any:
        """The group's part of an arena buffer, or None for list groups."""
        assert self.spans is not None
        parts = [buf[lo:hi] for lo, hi in self.spans]
        return parts[0] if len(parts) == 1 else parts


class Optimizer(StepMixin, CheckpointMixin):
    """Base class: param groups, state, ``step``, ``zero_grad``, state dicts, checkpoints.
    Subclasses give ``DEFAULTS`` (torch's), ``STATES`` and ``_kernel``."""

    DEFAULTS: ClassVar[dict[str, Any]] = {}
    STATE_KEYS: ClassVar[dict[str, str]] = {}  # op argument → state name, where they differ

    def __init__(
        self,
        params: Any,
        grads: Sequence[Any] | None = None,
        *,
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        nonfinite: str = "propagate",
        master_weights: bool = False,
        state_dtype: Any = None,
        rounding: str = "nearest",
        seed: int = 0,
        state_bits: int = 32,
        block_size: int = quant8.BLOCK,
        **hyper: Any,
    ):
        """``state_bits=8``: blockwise 8-bit states (``gpugd.ops.optim8``; a separate option
        from ``state_dtype`` because an 8-bit state is not an array of one dtype but uint8
        codes plus a float32 scale per ``block_size`` elements, as bitsandbytes'
        ``optim_bits``). Each fp32 tensor of at least ``quant8.MIN_8BIT`` elements keeps its
        states as ``<state>.codes`` (uint8, the tensor's shape) and ``<state>.absmax``
        (float32 per block); smaller ones keep float32 ``<state>``. The CUDA step is then
        decided on the host (the 8-bit ops take no device-side scale). Beside float16 or
        bfloat16 parameters, with or without ``master_weights``, as the 32-bit states."""
        self.max_grad_norm = (
            None if max_grad_norm is None else _positive("max_grad_norm", max_grad_norm)
        )
        self.clip_value = None if clip_value is None else _positive("clip_value", clip_value)
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite: expected one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        self.nonfinite = nonfinite
        unknown = sorted(set(hyper) - set(self.DEFAULTS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown or unsupported hyperparameter(s) {unknown}; "
                f"have {sorted(self.DEFAULTS)}"
            )
        self.defaults = {**self.DEFAULTS, **hyper}
        if isinstance(params, FlatParams):
            specs: list[Mapping[str, Any]] = [{"params": params}]
        elif isinstance(params, list | tuple) and params and isinstance(params[0], Mapping):
            if grads is not None:
                raise TypeError("grads: give each param group its own 'grads' instead")
            specs = list(params)
        elif isinstance(params, list | tuple):
            if grads is None:
                raise TypeError("grads: required when params is a list of arrays")
            specs = [{"params": params, "grads": grads}]
        else:
            raise TypeError(
                f"params: expected a FlatParams, a list of arrays or a list of param-group "
                f"dicts, got {type(params).__name__}"
            )
        groups: list[_Group] = []
        for i, spec in enumerate(specs):
            groups.append(_Group(spec, i, sum(len(g.names) for g in groups)))
            unknown = sorted(set(groups[-1].hyper) - set(self.DEFAULTS))
            if unknown:
                raise TypeError(f"param_groups[{i}]: unknown hyperparameter(s) {unknown}")
        names = [n for g in groups for n in g.names]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"params: tensors {dup} appear in more than one param group")
        arenas = {id(g.flat) for g in groups if g.flat is not None}
        if len(arenas) > 1:
            raise ValueError("params: all FlatParams groups must share one arena")
        # one tensor in two groups (an arena group and a list group viewing it, or two
        # overlapping list views) would be updated twice per step
        _validate.disjoint(
            {
                f"param_groups[{i}] tensor {n!r}": p
                for i, g in enumerate(groups)
                for n, p in zip(g.names, g.params, strict=True)
                if isinstance(p, np.ndarray) or hasattr(p, "__cuda_array_interface__")
            }
        )
        self._groups = groups
        self._precision(master_weights, state_dtype, rounding, seed, state_bits, block_size)
        self.param_groups: list[dict[str, Any]] = [
            {**self.defaults, **g.hyper, "names": g.names} for g in groups
        ]
        self._pending: _Pending | None = None  # a CUDA step whose outcome is on the device
        self._decision: Any = None  # its buffers (gpugd._step_decision.StepDecision)
        self._step_count = 0
        self.scheduler: Any = None  # set by a schedule from gpugd.schedules
        self.monitor = None  # set by gpugd.monitor.GradientMonitor
        self.loss_scaler: Any = None  # set by gpugd.amp.LossScaler
        self._skipped_steps = 0  # steps skipped for non-finite gradients (nonfinite="skip")
        self._last_report: StepReport | None = None
        self._grad_reduction: _reduce.Reduction | None = None
        for gi, group in enumerate(self.param_groups):
            self._kernel(group, 1, 1.0, self._groups[gi])  # validate every hyperparameter now
            if self.state_bits == 8:
                self._op8(group, 1)  # refuses what the 8-bit ops do not support
        if self.state_bits == 8:
            self._device_decides = False  # the 8-bit ops take no dev_scale: host decides
        self._allocate()

    # ---- precision policy

    def _precision(
        self,
        master_weights: Any,
        state_dtype: Any,
        rounding: str,
        seed: Any,
        state_bits: Any = 32,
        block_size: Any = quant8.BLOCK,
    ) -> None:
        """Check and record the precision policy: the parameters' dtype (one for every
        group), the states' dtype and bits, fp32 master weights, the rounding of the
        parameters."""
        dtypes = {np.dtype(p.dtype) for g in self._groups for p in g.params}
        if len(dtypes) != 1:
            raise TypeError(
                f"params: one parameter dtype for all groups, got {sorted(map(str, dtypes))}"
            )
        pdt = dtypes.pop()
        self.param_dtype = pdt
        self._check_state_bits(state_bits, block_size, pdt, state_dtype)
        half = pdt.name in ("float16", "bfloat16")
        if not isinstance(master_weights, bool):
            raise TypeError(f"master_weights: expected a bool, got {master_weights!r}")
        _ops.rounding_key(rounding, seed)  # validates both
        if state_dtype is None:
            sdt = np.dtype(np.float32) if half else pdt
        else:
            try:
                sdt = np.dtype(state_dtype)
            except TypeError:
                raise TypeError(f"state_dtype: not a dtype: {state_dtype!r}") from None
        if not half:
            if master_weights:
                raise ValueError(
                    f"master_weights: fp32 master weights are for float16 or bfloat16 "
                    f"parameters; these are {pdt}"
                )
            if sdt != pdt:
                raise ValueError(f"state_dtype: with {pdt} parameters states are {pdt}, got {sdt}")
            if rounding != "nearest":
                raise ValueError(
                    f"rounding: stochastic rounding is for bfloat16 parameters, not {pdt}"
                )
        else:
            if sdt.name not in ("float32", "bfloat16"):
                raise ValueError(
                    f"state_dtype: beside {pdt} parameters states are float32 or bfloat16, "
                    f"got {sdt}"
                )
            if rounding != "nearest" and pdt.name != "bfloat16":
                raise ValueError(
                    f"rounding: stochastic rounding is for bfloat16 parameters, not {pdt}"
                )
        self.state_dtype = sdt
        self.master_weights = master_weights
        self.rounding, self.seed = rounding, int(seed)

    def _check_state_bits(self, state_bits: Any, block_size: Any, pdt: np.dtype, sdt: Any) -> None:
        if isinstance(state_bits, bool) or state_bits not in STATE_BITS:
            raise ValueError(f"state_bits: expected one of {STATE_BITS}, got {state_bits!r}")
        self.state_bits = int(state_bits)
        self.block_size = quant8.check_block_size(block_size)
        if self.state_bits == 32:
            return
        if pdt == np.float64:
            raise ValueError(
                "state_bits=8: 8-bit states are for float32, float16 or bfloat16 parameters, "
                "these are float64"
            )
        try:
            ok = sdt is None or np.dtype(sdt) == np.float32
        except TypeError:  # a name NumPy does not know ("bfloat16" without ml_dtypes)
            ok = False
        if not ok:
            raise ValueError(
                f"state_bits=8: the small tensors' states are float32, got state_dtype={sdt!r}"
            )

    def _op8(self, group: dict[str, Any], step: int) -> tuple[Any, dict[str, str], dict] | None:
        """The 8-bit update of this group: (``gpugd.ops.optim8`` op, its state arguments →
        state names in the op's order, hyperparameter keywords), or None when the group
        keeps no state. Raises ValueError naming what the 8-bit ops do not support."""
        raise ValueError(
            f"state_bits=8: {type(self).__name__} has no 8-bit-state update (supported: SGD "
            "with momentum, Adagrad, RMSprop without momentum or centering, Adam, AdamW, Lion)"
        )

    @property
    def monitor(self) -> Any:
        """The attached ``gpugd.monitor.GradientMonitor`` (None if none)."""
        return self._monitor

    @monitor.setter
    def monitor(self, value: Any) -> None:
        self._monitor = value

    def _rounding_key(self, t: int) -> int | None:
        """This step's stochastic-rounding key (a new stream every step), or None."""
        return _ops.rounding_key(self.rounding, self.seed * (1 << 32) + t)

    # ---- per optimizer

    def _kernel(self, group: dict[str, Any], step: int, grad_scale: float, g: _Group) -> Any:
        raise NotImplementedError

    def _state_fills(self, group: dict[str, Any]) -> dict[str, float]:
        """State name → initial value, for the states this group's configuration uses."""
        raise NotImplementedError

    # ---- state

    def _all_state_names(self) -> list[str]:
        seen: list[str] = []
        for group in self.param_groups:
            for k in self._state_fills(group):
                if k not in seen:
                    seen.append(k)
        return seen

    def _allocate(self) -> None:
        self.state: dict[str, dict[str, Any]] = {n: {} for g in self._groups for n in g.names}
        self._buffers: dict[str, Any] = {}
        arena = next((g.flat for g in self._groups if g.flat is not None), None)
        if self.state_bits == 8:
            self._allocate8(arena)
            return
        for sname in self._all_state_names():
            if arena is not None:
                self._buffers[sname] = arena.new_state(dtype=self.state_dtype)
            for group, g in zip(self.param_groups, self._groups, strict=True):
                fill = self._state_fills(group).get(sname)
                if fill is None:
                    continue
                if g.flat is not None:
                    views = self._buffers[sname]
                    for lo, hi in g.spans:
                        views.data[lo:hi] = fill
                    for n in g.names:
                        self.state[n][sname] = views[n]
                else:
                    for n, p in zip(g.names, g.params, strict=True):
                        self.state[n][sname] = _full_like(p, fill, self.state_dtype)
        if self.master_weights:
            self._copy_masters(arena)
        for g in self._groups:
            g.tensors = None

    def _allocate8(self, arena: FlatParams | None) -> None:
        """8-bit states, per tensor (arena tensors too): codes and absmax of the state's
        initial value (Adagrad's initial_accumulator_value through ``quant8.quantize``) for
        tensors of at least ``quant8.MIN_8BIT`` elements, float32 arrays for smaller ones."""
        for group, g in zip(self.param_groups, self._groups, strict=True):
            for sname, fill in self._state_fills(group).items():
                for n, p in zip(g.names, g.params, strict=True):
                    if quant8.use_8bit(p.size):
                        full = np.full(p.size, fill, np.float32)
                        codes, absmax = quant8.quantize(
                            full, quant8.SIGNED_STATES[sname], self.block_size
                        )
                        self.state[n][sname + quant8.CODES] = _on(p, codes.reshape(p.shape))
                        self.state[n][sname + quant8.ABSMAX] = _on(p, absmax)
                    else:
                        self.state[n][sname] = _full_like(p, fill, np.float32)
        if self.master_weights:
            self._copy_masters(arena)
        for g in self._groups:
            g.tensors = None

    def _copy_masters(self, arena: FlatParams | None) -> None:
        """fp32 master weights: copies of the parameters (state "master"), in the arena's
        layout beside an arena."""
        if arena is not None:
            self._buffers[MASTER] = arena.new_state(dtype=np.float32)
            self._buffers[MASTER].data[...] = arena.data
        for g in self._groups:
            for n, p in zip(g.names, g.params, strict=True):
                if g.flat is not None:
                    self.state[n][MASTER] = self._buffers[MASTER][n]
                else:
                    self.state[n][MASTER] = hostmem.copy_of(p, np.float32)

    def sync_master_weights(self) -> None:
        """Copy the parameters into the fp32 master weights (after writing parameters by
        hand; ``load`` and ``load_state_dict`` restore the masters themselves)."""
        if not self.master_weights:
            raise ValueError("sync_master_weights: this optimizer keeps no master weights")
        for g in self._groups:
            for n, p in zip(g.names, g.params, strict=True):
                self.state[n][MASTER][...] = p

    def _tensors(self, gi: int, kernel: _ops.Kernel) -> _ops.Tensors:
        """The group's validated arrays for this kernel configuration (cached)."""
        g = self._groups[gi]
        per_name = self.monitor is not None  # per-tensor update statistics need the list path
        key = (*(why is not None for why in kernel.states.values()), per_name)
        if g.tensors is None or g.tensors_key != key:
            given = {}
            for arg, why in kernel.states.items():
                if why is None:
                    continue
                sname = self.STATE_KEYS.get(arg, arg)
                if sname not in self.state[g.names[0]]:
                    raise ValueError(
                        f"param_groups[{gi}]: the configuration now needs state {sname!r}, "
                        "which this optimizer was not created with; build a new optimizer"
                    )
                if g.flat is not None and not per_name:
                    given[arg] = g.kernel_arrays(self._buffers[sname].data)
                else:
                    given[arg] = [self.state[n][sname] for n in g.names]
            master = None
            if g.flat is not None and not per_name:
                p, gr = g.kernel_arrays(g.flat.data), g.kernel_arrays(g.flat.grad_data)
                if self.master_weights:
                    master = g.kernel_arrays(self._buffers[MASTER].data)
            else:
                p, gr = g.params, g.grads
                if self.master_weights:
                    master = [self.state[n][MASTER] for n in g.names]
            g.tensors = kernel.tensors(p, gr, given, master)
            g.tensors_key = key
        return g.tensors

    def __repr__(self) -> str:
        """torch's layout (one block per param group, hyperparameters sorted), then what
        gpugd adds: tensors and elements per group, precision policy, clipping, policy."""
        lines = [f"{type(self).__name__} ("]
        for gi, (group, g) in enumerate(zip(self.param_groups, self._groups, strict=True)):
            n = sum(int(p.size) for p in g.params)
            where = "arena" if g.flat is not None else "list"
            lines.append(f"Parameter Group {gi} ({len(g.names)} tensors, {n:,} elements, {where})")
            lines += [f"    {k}: {group[k]}" for k in sorted(self.DEFAULTS)]
        states = f"states {self.state_dtype}, state_bits={self.state_bits}"
        if self.state_bits == 8:
            states = (
                f"states 8-bit (block {self.block_size}; {self.state_dtype} under "
                f"{quant8.MIN_8BIT:,} elements), state_bits=8"
            )
        lines.append(
            f"params {self.param_dtype}, {states}, master_weights="
            f"{self.master_weights}, rounding={self.rounding!r}, max_grad_norm="
            f"{self.max_grad_norm}, clip_value={self.clip_value}, nonfinite={self.nonfinite!r}"
        )
        return "\n".join(lines) + "\n)"

    @property
    def names(self) -> list[str]:
        """Every tensor's name, in group order."""
        return [n for g in self._groups for n in g.names]

    @property
    def sizes(self) -> list[int]:
        return [int(p.size) for g in self._groups for p in g.params]

    def _after_step(self, t: int) -> None:
        """Per-group bookkeeping after a step (NAdam's running product of μ)."""

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero every gradient: one fill of the arena's gradient buffer, or each array.
        ``set_to_none=True`` (torch's default) is refused: gpugd's gradients are arrays the
        caller writes into (views of one arena buffer), never None."""
        if not isinstance(set_to_none, bool):
            raise TypeError(f"set_to_none: expected a bool, got {set_to_none!r}")
        if set_to_none:
            raise ValueError(
                "set_to_none: gpugd's gradients are arrays you write into (views of one arena "
                "buffer) and cannot be None; call zero_grad() to fill them with zeros"
            )
        arena = next((g.flat for g in self._groups if g.flat is not None), None)
        if arena is not None:
            arena.zero_grad()
        for g in self._groups:
            if g.flat is None:
                for a in g.grads:
                    a.fill(0)


def _on(p: Any, host: np.ndarray) -> Any:
    """``host`` on ``p``'s backend."""
    if isinstance(p, np.ndarray):
        return host
    import cupy

    return cupy.asarray(host)


def _full_like(a: Any, fill: float, dtype: Any) -> Any:
    """A state beside ``a``: ``a``'s shape, ``dtype``, every element ``fill`` (on the host
    from ``gpugd._hostmem``: large states on huge pages)."""
    out = hostmem.zeros_like(a, dtype) if isinstance(a, np.ndarray) else a.astype(dtype)
    if fill or not isinstance(a, np.ndarray):
        out.fill(fill)
    return out
