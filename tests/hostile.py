"""Odd array kinds in every array argument of every public op and optimizer: the worker
behind ``tests/test_hostile_arrays.py``, run as ``python tests/hostile.py GROUP BACKEND``
in a subprocess so that a crash fails one group's test, not the run.

Each case takes one op (``SPECS``), fresh inputs from a fixed seed, and replaces one array
argument (or one element of a list argument) by an odd kind of array holding the same
values (``KINDS``). Accepted kinds must give the op's result on plain arrays (the
oracle: the same op on plain ``np.ndarray`` copies, itself checked against NumPy formulas
in the control cases here and against ``gpugd.reference`` in each op's own tests); refused
kinds must raise the expected ``TypeError``/``ValueError`` whose message names the
argument, with every array (and any array a lying subclass points at) left unchanged.
One JSON line per case on stdout; "START <case>" on stderr before each, so a crash names
its case.
"""

from __future__ import annotations

import gc
import json
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SEED = 20
N = 37  # odd: tails of the vector loops
BN_SHAPE, C = (8, 3), 3  # batch norm in layout "NC"


# ------------------------------------------------------------------ the ops and their args


@dataclass
class Arg:
    """An array argument: shape, dtype, whether the op writes it, ``count`` arrays when it
    is a list, values ≥ 0 when ``positive`` (variances, squared averages)."""

    shape: tuple = (N,)
    dtype: Any = np.float32
    written: bool = False
    count: int | None = None
    positive: bool = False
    int_value: int | None = None  # int32 flags (skip_if): this value everywhere


@dataclass
class Spec:
    name: str
    call: Callable[..., Any]  # call(xp, **arrays) -> result
    args: dict[str, Arg]
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)  # arg → names accepted
    ok_kinds: tuple[str, ...] = ()  # kinds this op takes although others refuse them
    check: Callable[..., None] | None = None  # check(plain inputs, plain outputs, result)


def _acts() -> list[Spec]:
    from gpugd import ops

    fwd = {
        "relu": {},
        "leaky_relu": {"negative_slope": 0.2},
        "elu": {"alpha": 0.7},
        "selu": {},
        "gelu": {},
        "gelu_tanh": {"approximate": "tanh"},
        "softplus": {"beta": 2.0},
        "silu": {},
        "sigmoid": {},
        "tanh": {},
    }
    specs = []
    for label, kw in fwd.items():
        name = "gelu" if label.startswith("gelu") else label
        f, b = getattr(ops, name), getattr(ops, name + "_backward")
        second = "y" if name in ("sigmoid", "tanh") else "x"

        def forward(xp, x, f=f, kw=kw):
            return f(x, **kw)

        def forward_out(xp, x, out, f=f, kw=kw):
            return f(x, out=out, **kw)

        def backward(xp, grad_out, xy, f=b, kw=kw):
            return f(grad_out, xy, **kw)

        def backward_out(xp, grad_out, xy, out, f=b, kw=kw):
            return f(grad_out, xy, out=out, **kw)

        lab = {"xy": (second,)}
        specs += [
            Spec(f"{label}", forward, {"x": Arg()}),
            Spec(f"{label}(out=)", forward_out, {"x": Arg(), "out": Arg(written=True)}),
            Spec(f"{label}_backward", backward, {"grad_out": Arg(), "xy": Arg()}, lab),
            Spec(
                f"{label}_backward(out=)",
                backward_out,
                {"grad_out": Arg(), "xy": Arg(), "out": Arg(written=True)},
                lab,
            ),
        ]
    return specs


def _vector() -> list[Spec]:
    from gpugd import ops

    def axpy_check(inp, outp, res):
        _close(outp["x"], inp["x"].astype(np.float64) + 2.0 * inp["y"], "axpy_ vs NumPy")

    def scale_check(inp, outp, res):
        _close(outp["x"], inp["x"].astype(np.float64) * 2.0, "scale_ vs NumPy")

    def ssq_check(inp, outp, res):
        _close(res, np.sum(inp["x"].astype(np.float64) ** 2), "sum_of_squares vs NumPy")

    return [
        Spec(
            "axpy_",
            lambda xp, x, y: ops.axpy_(x, 2.0, y),
            {"x": Arg(written=True), "y": Arg()},
            check=axpy_check,
        ),
        Spec(
            "scale_",
            lambda xp, x: ops.scale_(x, 2.0),
            {"x": Arg(written=True)},
            check=scale_check,
        ),
        Spec("sum_of_squares", lambda xp, x: ops.sum_of_squares(x), {"x": Arg()}, check=ssq_check),
        Spec(
            "scale_sum_of_squares_",
            lambda xp, x: ops.scale_sum_of_squares_(x, 0.5),
            {"x": Arg(written=True)},
        ),
    ]


def _batchnorm() -> list[Spec]:
    from gpugd import ops

    ch = Arg(shape=(C,))
    x = Arg(shape=BN_SHAPE)

    def fwd(xp, x, weight, bias, running_mean, running_var):
        return ops.batch_norm_forward(
            x, weight, bias, running_mean, running_var, layout="NC", momentum=0.3
        )

    def fwd_out(xp, x, weight, bias, running_mean, running_var, out):
        return ops.batch_norm_forward(
            x, weight, bias, running_mean, running_var, layout="NC", out=out
        )

    def infer(xp, x, running_mean, running_var):
        return ops.batch_norm_forward(
            x, None, None, running_mean, running_var, training=False, layout="NC"
        )

    def bwd(xp, grad_out, x, weight, mean, invstd, out):
        return ops.batch_norm_backward(grad_out, x, weight, mean, invstd, layout="NC", out=out)

    rs = {
        "running_mean": Arg(shape=(C,), written=True),
        "running_var": Arg(shape=(C,), written=True, positive=True),
    }
    return [
        Spec("batch_norm_stats", lambda xp, x: ops.batch_norm_stats(x, layout="NC"), {"x": x}),
        Spec("batch_norm_forward", fwd, {"x": x, "weight": ch, "bias": ch, **rs}),
        Spec(
            "batch_norm_forward(out=)",
            fwd_out,
            {"x": x, "weight": ch, "bias": ch, **rs, "out": Arg(shape=BN_SHAPE, written=True)},
        ),
        Spec("batch_norm_forward(training=False)", infer, {"x": x, **rs}),
        Spec(
            "batch_norm_backward",
            bwd,
            {
                "grad_out": x,
                "x": x,
                "weight": ch,
                "mean": ch,
                "invstd": Arg(shape=(C,), positive=True),
                "out": Arg(shape=BN_SHAPE, written=True),
            },
        ),
    ]


def _dropout() -> list[Spec]:
    from gpugd import ops

    return [
        Spec("dropout", lambda xp, x: ops.dropout(x, 0.3, seed=5, offset=7), {"x": Arg()}),
        Spec(
            "dropout(out=)",
            lambda xp, x, out: ops.dropout(x, 0.3, seed=5, out=out),
            {"x": Arg(), "out": Arg(written=True)},
        ),
        Spec(
            "dropout_backward(out=)",
            lambda xp, grad_out, out: ops.dropout_backward(grad_out, 0.3, seed=5, out=out),
            {"grad_out": Arg(), "out": Arg(written=True)},
        ),
    ]


def _reduce() -> list[Spec]:
    from gpugd import ops

    def avg_check(inp, outp, res):
        want = sum(b.astype(np.float64) for b in inp["buffers"]) / 3
        _close(outp["out"], want, "average_ vs NumPy")

    def clip_check(inp, outp, res):
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in inp["grads"]))
        c = min(1.0, 0.5 / (norm + 1e-6))
        for g0, g1 in zip(inp["grads"], outp["grads"], strict=True):
            _close(g1, g0.astype(np.float64) * c, "clip_by_global_norm_ vs NumPy")

    two = Arg(count=2)
    return [
        Spec("global_norm(array)", lambda xp, xs: ops.global_norm(xs), {"xs": Arg()}),
        Spec("global_norm(list)", lambda xp, xs: ops.global_norm(xs), {"xs": two}),
        Spec("tensor_norms(list)", lambda xp, xs: ops.tensor_norms(xs), {"xs": two}),
        Spec(
            "average_",
            lambda xp, out, buffers: ops.average_(out, buffers),
            {"out": Arg(written=True), "buffers": Arg(count=3)},
            check=avg_check,
        ),
        Spec(
            "clip_by_global_norm_",
            lambda xp, grads: ops.clip_by_global_norm_(grads, 0.5),
            {"grads": Arg(written=True, count=2)},
            check=clip_check,
        ),
        Spec(
            "clip_by_norm_",
            lambda xp, grads: ops.clip_by_norm_(grads, 0.5),
            {"grads": Arg(written=True, count=2)},
        ),
        Spec(
            "clip_by_value_",
            lambda xp, grads: ops.clip_by_value_(grads, 0.5),
            {"grads": Arg(written=True, count=2)},
        ),
    ]


_RULES = {  # op, its state arguments (positive?), hyperparameters
    "sgd_": ({"momentum_buffer": False}, {"momentum": 0.9, "step": 2}),
    "adagrad_": ({"state_sum": True}, {}),
    "rmsprop_": (
        {"square_avg": True, "grad_avg": False, "momentum_buffer": False},
        {"centered": True, "momentum": 0.9},
    ),
    "adam_": (
        {"exp_avg": False, "exp_avg_sq": True, "max_exp_avg_sq": True},
        {"amsgrad": True, "step": 3},
    ),
    "nadam_": ({"exp_avg": False, "exp_avg_sq": True}, {"step": 2}),
}


def _optim(count: int | None) -> list[Spec]:
    from gpugd import ops

    specs = []
    for rule, (states, hyper) in _RULES.items():
        f = getattr(ops, rule)

        def call(xp, p, g, f=f, hyper=hyper, skip_if=None, **st):
            return f(p, g, **st, skip_if=skip_if, **hyper)

        args = {"p": Arg(written=True, count=count), "g": Arg(count=count)}
        for s, pos in states.items():
            args[s] = Arg(written=True, count=count, positive=pos)
        args["skip_if"] = Arg(shape=(1,), dtype=np.int32, int_value=0)
        kind = "list" if count else "array"
        specs.append(Spec(f"{rule}({kind})", call, args))
    return specs


def _mixed() -> list[Spec]:
    from gpugd import ops

    def call(xp, p, g, exp_avg, exp_avg_sq, master):
        return ops.adam_(p, g, exp_avg, exp_avg_sq, master=master, step=2)

    def call_single(xp, p, g, exp_avg, exp_avg_sq):
        return ops.adam_(p, g, exp_avg, exp_avg_sq, step=2)

    half = {"p": Arg(dtype=np.float16, written=True, count=2), "g": Arg(dtype=np.float16, count=2)}
    st = {
        "exp_avg": Arg(written=True, count=2),
        "exp_avg_sq": Arg(written=True, count=2, positive=True),
    }
    return [
        Spec(
            "adam_(float16 p, master)", call, {**half, **st, "master": Arg(written=True, count=2)}
        ),
        Spec("adam_(float16 p)", call_single, {**half, **st}),
    ]


def _classes() -> list[Spec]:
    from gpugd import optim

    hyper = {
        "SGD": {"lr": 0.1, "momentum": 0.9, "nesterov": True},
        "Adagrad": {"lr": 0.1},
        "RMSprop": {"lr": 0.01, "centered": True, "momentum": 0.5},
        "Adam": {"lr": 0.01, "amsgrad": True},
        "AdamW": {"lr": 0.01},
        "NAdam": {"lr": 0.01},
    }
    specs = []
    for name, kw in hyper.items():
        cls = getattr(optim, name)

        def call(xp, params, grads, cls=cls, kw=kw):
            opt = cls(params, grads, **kw)
            opt.step()
            opt.step()
            return None

        labels = {"params": ("p[{i}]", "params"), "grads": ("g[{i}]", "grads")}
        specs.append(
            Spec(
                f"{name}(list)",
                call,
                {"params": Arg(written=True, count=2), "grads": Arg(count=2)},
                labels,
            )
        )
    return specs


def _flat() -> list[Spec]:
    from gpugd.flat import FlatParams

    def call(xp, w, b):
        flat = FlatParams.adopt({"w": w, "b": b})
        return [flat["w"], flat["b"]]

    return [
        Spec(
            "FlatParams.adopt",
            call,
            {"w": Arg(shape=(5, 7)), "b": Arg()},
            {"w": ("arrays['w']", "arrays"), "b": ("arrays['b']", "arrays")},
            ok_kinds=("noncontiguous",),  # copied in, not handed to a kernel
        )
    ]


GROUPS: dict[str, Callable[[], list[Spec]]] = {
    "vector": _vector,
    "activations": _acts,
    "batchnorm": _batchnorm,
    "dropout": _dropout,
    "reduce": _reduce,
    "optim": lambda: _optim(None),
    "optim_multi": lambda: _optim(2),
    "optim_mixed": _mixed,
    "classes": _classes,
    "flat": _flat,
}


# ------------------------------------------------------------------------ the odd kinds


class Sub(np.ndarray):
    """A subclass that overrides nothing."""


class LyingInterface(np.ndarray):
    """Reports another array's (``victim``) address through ``__array_interface__``."""

    victim: np.ndarray

    @property
    def __array_interface__(self):
        d = dict(np.ndarray.__array_interface__.__get__(self))
        d["data"] = (self.victim.__array_interface__["data"][0], False)
        return d


class _Flags:
    c_contiguous = f_contiguous = aligned = writeable = True
    fnc = forc = behaved = carray = owndata = True


class LyingFlags(np.ndarray):
    """A read-only (or strided) array claiming to be writable and contiguous."""

    flags = property(lambda self: _Flags())


class LyingShape(np.ndarray):
    """Claims twice its shape and size (reading or writing past its end)."""

    shape = property(lambda self: (2 * np.ndarray.shape.__get__(self)[0], *self[0].shape))
    size = property(lambda self: 2 * np.ndarray.size.__get__(self))


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


def _memmap(a: np.ndarray, mode: str = "w+") -> np.ndarray:
    fd, path = tempfile.mkstemp(dir=_TMP)
    os.close(fd)
    mm = np.memmap(path, dtype=a.dtype, mode="w+", shape=a.shape)
    mm[...] = a
    mm.flush()
    if mode == "w+":
        return mm
    del mm
    return np.memmap(path, dtype=a.dtype, mode=mode, shape=a.shape)


def _memmap_view_freed(a: np.ndarray) -> np.ndarray:
    mm = _memmap(np.concatenate([a.reshape(-1), a.reshape(-1)]))
    view = mm[a.size :].reshape(a.shape)
    del mm
    gc.collect()
    return view


def _view_of_freed(a: np.ndarray) -> np.ndarray:
    buf = np.empty(a.size + 16, a.dtype)  # 16 elements in: still 64-byte aligned for float32
    view = buf[16:].reshape(a.shape)
    view[...] = a
    del buf
    gc.collect()
    return view


def _bytearray_freed(a: np.ndarray) -> np.ndarray:
    ba = bytearray(a.tobytes())
    view = np.frombuffer(ba, a.dtype).reshape(a.shape)
    del ba
    gc.collect()
    return view


def _noncontig(a: np.ndarray) -> np.ndarray:
    big = np.empty((a.size, 2), a.dtype)
    big[:, 0] = a.reshape(-1)
    return big[:, 0].reshape(a.shape)


def _unaligned(a: np.ndarray) -> np.ndarray:
    raw = np.frombuffer(bytearray(a.nbytes + 1), np.uint8)
    u = raw[1:].view(a.dtype).reshape(a.shape)
    u[...] = a
    return u


def _lying_interface(a: np.ndarray) -> np.ndarray:
    out = a.copy().view(LyingInterface)
    out.victim = _readonly(a)  # what a kernel trusting the interface would overwrite
    return out


def _lying_flags(a: np.ndarray) -> np.ndarray:
    return np.frombuffer(a.tobytes(), a.dtype).reshape(a.shape).view(LyingFlags)


def _lying_shape(a: np.ndarray) -> np.ndarray:
    return a.copy().view(LyingShape)


def _wrong_dtype(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32 if a.dtype == np.int32 else np.int32)


# kind → (make(host array) for NumPy, expected outcome): "ok" (the oracle's result),
# "ok_if_read" (read-only: ok when the op only reads the argument, else ValueError),
# or the exception class
NUMPY_KINDS: dict[str, tuple[Callable, Any]] = {
    "plain": (lambda a: a.copy(), "ok"),
    "memmap": (_memmap, "ok"),
    "memmap_view_of_freed_map": (_memmap_view_freed, "ok"),
    "view_of_freed_base": (_view_of_freed, "ok"),
    "frombuffer_of_freed_bytearray": (_bytearray_freed, "ok"),
    "readonly": (_readonly, "ok_if_read"),
    "memmap_mode_r": (lambda a: _memmap(a, "r"), "ok_if_read"),
    "frombuffer_bytes": (
        lambda a: np.frombuffer(a.tobytes(), a.dtype).reshape(a.shape),
        "ok_if_read",
    ),
    "matrix": (lambda a: np.asmatrix(a.reshape(1, -1)), TypeError),
    "subclass": (lambda a: a.copy().view(Sub), TypeError),
    "masked": (lambda a: np.ma.masked_array(a.copy(), mask=np.zeros(a.shape, bool)), TypeError),
    "lying_interface": (_lying_interface, TypeError),
    "lying_flags": (_lying_flags, TypeError),
    "lying_shape": (_lying_shape, TypeError),
    "noncontiguous": (_noncontig, ValueError),
    "unaligned": (_unaligned, ValueError),
    "wrong_dtype": (_wrong_dtype, TypeError),
    "big_endian": (lambda a: a.astype(a.dtype.newbyteorder(">")), TypeError),
    "list": (lambda a: a.tolist(), TypeError),
    "python_float": (lambda a: 1.5, TypeError),
}


def _cupy_kinds() -> dict[str, tuple[Callable, Any]]:
    import cupy

    class CSub(cupy.ndarray):
        """A CuPy subclass."""

    class CLying(cupy.ndarray):
        """A CuPy subclass whose ``data`` points at another array (``victim``)."""

        @property
        def data(self):
            return self.victim.data

    def subclass(a, cls=CSub):
        d = cupy.asarray(a)
        s = d.view(array_class=cls)  # real CuPy: a view of class ``cls``
        if type(s) is not cls:  # the emulator's stand-in ignores array_class: by its slots
            s = cls.__new__(cls)
            s._a, s._mem, s._base = d._a, d._mem, d._base
        return s

    def lying(a):
        s = subclass(a, CLying)
        s.victim = cupy.asarray(a)
        return s

    def noncontig(a):
        big = cupy.zeros((a.size, 2), a.dtype)
        big[:, 0] = cupy.asarray(a.reshape(-1))
        return big[:, 0].reshape(a.shape)

    def unaligned(a):
        raw = cupy.zeros(a.nbytes + a.itemsize, cupy.uint8)
        u = cupy.ndarray(a.shape, a.dtype, memptr=raw.data + 1)
        u[...] = cupy.asarray(a)
        return u

    return {
        "plain": (lambda a: cupy.asarray(a), "ok"),
        "view_of_freed_base": (lambda a: _cupy_view_of_freed(cupy, a), "ok"),
        "subclass": (subclass, TypeError),
        "lying_data_ptr": (lying, TypeError),
        "noncontiguous": (noncontig, ValueError),
        "unaligned": (unaligned, ValueError),
        "wrong_dtype": (lambda a: cupy.asarray(_wrong_dtype(a)), TypeError),
        "numpy_array": (lambda a: a.copy(), TypeError),  # mixed with CuPy arguments
        "list": (lambda a: a.tolist(), TypeError),
        "python_float": (lambda a: 1.5, TypeError),
    }


def _cupy_view_of_freed(cupy: Any, a: np.ndarray) -> Any:
    buf = cupy.empty(a.size + 16, a.dtype)
    view = buf[16:].reshape(a.shape)
    view[...] = cupy.asarray(a)
    del buf
    gc.collect()
    return view


# ------------------------------------------------------------------------------ running


def _close(got: Any, want: Any, what: str) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.allclose(got, want, rtol=2e-6, atol=1e-7, equal_nan=True):
        raise AssertionError(f"{what}: got {got.ravel()[:4]}, want {want.ravel()[:4]}")


def _host(a: Any) -> Any:
    """A NumPy copy of an array's real memory (None for non-arrays)."""
    if isinstance(a, np.ndarray):
        return np.array(np.ndarray.view(a, np.ndarray), copy=True)  # the C fields, no override
    if hasattr(a, "get") and hasattr(a, "dtype"):
        return a.get()
    return None


def _flatten(x: Any) -> list:
    if x is None or isinstance(x, str):
        return []
    if isinstance(x, tuple | list):
        return [y for e in x for y in _flatten(e)]
    if hasattr(x, "get") and hasattr(x, "dtype") and not isinstance(x, np.ndarray):
        return [x.get()]
    return [np.asarray(_host(x) if isinstance(x, np.ndarray) else x)]


def _inputs(spec: Spec) -> dict[str, Any]:
    """Fresh host inputs of ``spec`` (the same values every call)."""
    rng = np.random.default_rng(SEED)
    out: dict[str, Any] = {}
    for name, arg in spec.args.items():

        def one(arg: Arg = arg) -> np.ndarray:
            if arg.int_value is not None:
                return np.full(arg.shape, arg.int_value, arg.dtype)
            v = rng.standard_normal(arg.shape)
            v = np.abs(v) + 0.1 if arg.positive else v
            return v.astype(arg.dtype)

        out[name] = [one() for _ in range(arg.count)] if arg.count else one()
    return out


def _to_backend(inp: dict[str, Any], xp: Any) -> dict[str, Any]:
    if xp is np:
        return {
            k: [a.copy() for a in v] if isinstance(v, list) else v.copy() for k, v in inp.items()
        }
    return {
        k: [xp.asarray(a) for a in v] if isinstance(v, list) else xp.asarray(v)
        for k, v in inp.items()
    }


def _state(args: dict[str, Any]) -> dict[str, Any]:
    return {k: [_host(a) for a in v] if isinstance(v, list) else _host(v) for k, v in args.items()}


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def _equal_state(s0: dict, s1: dict) -> str | None:
    for k in s0:
        a, b = s0[k], s1[k]
        pairs = zip(a, b, strict=True) if isinstance(a, list) else [(a, b)]
        for x, y in pairs:
            if not _same(x, y):
                return k
    return None


def _names_arg(msg: str, labels: tuple[str, ...]) -> bool:
    """Whether ``msg`` names one of ``labels`` (or an element of it: "xs" for "xs[0]")."""
    return any(re.search(rf"(^|[\s(,'\"]){re.escape(lab)}($|[\s:,)'\"\[])", msg) for lab in labels)


def run_case(spec: Spec, xp: Any, arg: str, index: int | None, kind: str, make, expect) -> dict:
    """One case: the op with ``arg`` (element ``index`` of a list) made ``kind``."""
    inp = _inputs(spec)
    oracle_args = _to_backend(inp, xp)
    oracle_res = spec.call(xp, **oracle_args)
    oracle_out = _state(oracle_args)
    if spec.check is not None and kind == "plain" and index in (None, 0):
        spec.check(inp, oracle_out, _flatten(oracle_res)[0] if _flatten(oracle_res) else None)

    args = _to_backend(inp, xp)
    host_value = inp[arg][index] if index is not None else inp[arg]
    odd = make(host_value)
    if index is not None:
        args[arg][index] = odd
    else:
        args[arg] = odd
    victim = getattr(odd, "victim", None)
    victim_before = _host(victim)
    before = _state(args)
    written = spec.args[arg].written
    if expect == "ok_if_read":
        expect = "ok" if not written else ValueError
    if kind in spec.ok_kinds:
        expect = "ok"
    label = arg if index is None else f"{arg}[{index}]"
    labels = tuple(s.format(i=index) for s in spec.labels.get(arg, (label,)))
    try:
        res = spec.call(xp, **args)
    except Exception as exc:  # judged below: only the expected, named errors pass
        msg = f"{type(exc).__name__}: {exc}"
        after = _state(args)
        changed = _equal_state(before, after)
        if victim is not None and not _same(victim_before, _host(victim)):
            changed = "the victim array"
        if expect == "ok":
            return {"verdict": "bad", "why": f"refused an accepted kind: {msg}"}
        if not isinstance(exc, expect):
            return {"verdict": "bad", "why": f"expected {expect.__name__}, got {msg}"}
        if not _names_arg(str(exc), labels):
            return {"verdict": "bad", "why": f"message does not name {labels}: {msg}"}
        if changed is not None:
            return {"verdict": "bad", "why": f"rejected but {changed} changed: {msg}"}
        return {"verdict": "refused", "why": msg}
    after = _state(args)
    if victim is not None and not _same(victim_before, _host(victim)):
        return {"verdict": "bad", "why": "the array a lying subclass points at was written"}
    if expect != "ok":
        return {"verdict": "bad", "why": f"accepted; expected {expect.__name__}"}
    got, want = _flatten(res), _flatten(oracle_res)
    if len(got) != len(want):
        return {"verdict": "bad", "why": f"{len(got)} results, the oracle {len(want)}"}
    try:
        for g, w in zip(got, want, strict=True):
            _close(g, w, "result")
        for k in oracle_out:
            a, b = oracle_out[k], after[k]
            for x, y in zip(a, b, strict=True) if isinstance(a, list) else [(a, b)]:
                _close(y, x, f"argument {k} after the call")
    except AssertionError as exc:
        return {"verdict": "bad", "why": str(exc)}
    return {"verdict": "ok", "why": ""}


def main(group: str, backend: str) -> int:
    if backend == "cuda":
        if os.environ.get("GPUGD_HOSTILE_EMULATE") == "1":
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from cudaemu import standin

            standin.install()
        import cupy as xp

        kinds = _cupy_kinds()
    else:
        xp, kinds = np, NUMPY_KINDS
    done = 0
    for spec in GROUPS[group]():
        for arg, a in spec.args.items():
            for index in range(a.count) if a.count else [None]:
                for kind, (make, expect) in kinds.items():
                    if kind == "noncontiguous" and np.prod(a.shape) < 2:
                        continue  # one element: every view is contiguous
                    if kind == "numpy_array" and len(spec.args) == 1 and not a.count:
                        continue  # the op's only array: a NumPy call, nothing mixed
                    case = f"{spec.name} {arg}{'' if index is None else f'[{index}]'}={kind}"
                    print(f"START {case}", file=sys.stderr, flush=True)
                    try:
                        r = run_case(spec, xp, arg, index, kind, make, expect)
                    except Exception:
                        r = {"verdict": "bad", "why": "harness: " + traceback.format_exc(-2)}
                    print(json.dumps({"case": case, "kind": kind, **r}), flush=True)
                    done += 1
    print(json.dumps({"done": done}), flush=True)
    return 0


_TMP = ""  # the memmaps' directory, made by main

if __name__ == "__main__":
    import shutil

    _TMP = tempfile.mkdtemp(prefix="gpugd-hostile-")
    try:
        sys.exit(main(sys.argv[1], sys.argv[2]))
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)
