"""Suite ``amp``: mixed-precision Adam (``ops.adam_`` with float16/bfloat16 parameters and
gradients, float32 or bfloat16 states, optional fp32 master weights, stochastic rounding)
on one flat buffer and on the ResNet-50-like list of 161 tensors, against the in-place
ceiling and their peers; and the latency of one Adam step of a small model.

Each policy gives two rows, timed in the same rounds: ``adam_ <policy> <layout>``, one
``ops.adam_`` call (which validates every array on every call), and ``... optim``,
``gpugd.optim.Adam.step`` with that policy (``master_weights=``, ``state_dtype=``,
``rounding=``) on the same arrays: validated and tabled once, what a training loop runs.
The optim row's ``baselines`` also hold ``gpugd-ops`` (ops time / optim time).

On the CPU every array of the suite is allocated as gpugd allocates its arenas and states
(``gpugd._hostmem.copy_of``: large buffers 2 MiB-aligned on huge pages): the flat buffer is
what a FlatParams arena holds, and gpugd, its peers and the own-buffers loops stream the
same kind of memory (the run's ceiling loops keep NumPy's allocations).

Each of these rows is held against the loop with its own traffic over exactly its own
buffers (``ceilings.traffic``, timed in the same rounds): g read; m, v and p (or the
master copy) read and rewritten; p only written where a master copy feeds it (``r1m3``,
``r1m3w1``); ``own_ceiling_gbps`` and ``pct_of_own_ceiling`` are that figure too. On the
CPU VMs an array's memory has streamed at 46–57 GB/s depending on where it landed
(``python -m benchmarks.experiments.placement``), so only a loop over the same buffers
compares a kernel and a ceiling on the same memory. On the CPU each row also carries its
policy's compute bound (``ceilings.adam_math``: the per-element Adam kernel of every call,
``optim._apply_adam``, over L2-resident blocks, one per core) and is held against the
tighter of the two (``ceiling`` names it: on the 2-core Zen 3 VM, bfloat16 states, whose
conversions cost more than their bytes save, and stochastic rounding were math-bound).
The step-latency rows stay against the run's ``inplace`` class (they time a step, not a
stream).

Policies (``POLICIES``: parameter/gradient dtype, state dtype, master weights, rounding)
and the fewest bytes per element each must move (``bytes_per_elem``): read g, both states
and the master copy (or p), write both states, the master copy and p:

    fp32                    p, g, m, v float32                               28 B
    bf16p-f32s              p, g bfloat16; m, v float32                      22 B
    bf16p-f32s-master       + fp32 master weights (p written, not read)      28 B
    f16p-f32s-master        float16 p, g; m, v float32; fp32 master          28 B
    bf16p-bf16s             p, g, m, v bfloat16                              14 B
    bf16p-f32s-master-sr    as bf16p-f32s-master, p stochastically rounded   28 B

Peers, measured round-robin with gpugd and the ceiling loops (``Context.measure``):

* ``numpy`` (``cupy`` on the GPU; ``numpy-loop`` per tensor on the list): the NumPy
  composition of the same policy: the half-precision arrays cast to float32 (``astype``),
  Adam's arithmetic in float32 with in-place ufuncs (suite ``optim``'s composition), the
  results cast back into the stored arrays: p (from the master copy when there is one),
  bfloat16 states. Stochastic rounding: 16 fresh random bits per element (NumPy's
  generator) added to the float32 bits of the master copy, the low 16 bits dropped (no
  NaN handling: the inputs are finite).
* ``torch-fused``: ``torch.optim.Adam(fused=True)`` on copies of p with the same
  gradients, when importable and when it takes that dtype. torch keeps Adam's states in
  the parameters' dtype and has no master copy, so for a policy it cannot run the peer is
  the nearest one it can — half-precision parameters with states in that same precision —
  and is named for it (``torch-fused-bf16state``, ``torch-fused-f16state``); the row's
  ``note`` says what that peer moves against gpugd's bytes. A peer that raises is skipped
  and the reason logged.

Each policy row carries, beyond the DESIGN.md schema, ``policy`` (its code above) and
``note``. The step-latency rows: 200 tensors (100 layers' weights and biases, mixed
sizes, about 2^20 float32 parameters; fewer when ``--numel`` is smaller), ``median_s`` the
median seconds per step, bytes as for ``fp32`` against the in-place ceiling: ``eager``
(``gpugd.optim.Adam.step``: one launch, the tensor table kept), ``graph`` (GPU only: the
same step replayed from a CUDA graph, ``gpugd.graph.CapturedStep``) and ``ops`` (one
``ops.adam_`` call on the lists, which validates every array on every call); peers torch
fused Adam and, on the GPU, torch's ``capturable=True`` fused Adam replayed from a torch
CUDA graph; the graph and ops rows also carry ``gpugd-eager`` (eager time / their time).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from gpugd import _hostmem as hostmem
from gpugd import ops

from .ceilings import adam_math, bounds_text, mix_name, tighten, traffic
from .harness import Context, optional_torch, row
from .suite_optim import _numpy_adam, resnet50_shapes

NAME = "amp"

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
HP = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
STEP = 10  # Adam's step count passed to every call (it changes no byte moved)


@dataclass(frozen=True)
class Policy:
    param: np.dtype  # p's and g's dtype
    state: np.dtype  # exp_avg's and exp_avg_sq's dtype
    master: bool  # fp32 master weights beside p
    rounding: str = "nearest"


POLICIES: dict[str, Policy] = {
    "fp32": Policy(F32, F32, False),
    "bf16p-f32s": Policy(BF16, F32, False),
    "bf16p-f32s-master": Policy(BF16, F32, True),
    "f16p-f32s-master": Policy(F16, F32, True),
    "bf16p-bf16s": Policy(BF16, BF16, False),
    "bf16p-f32s-master-sr": Policy(BF16, F32, True, "stochastic"),
}
QUICK = ("fp32", "bf16p-f32s-master", "bf16p-bf16s")  # flat rows of --quick
QUICK_LIST = ("bf16p-f32s-master",)  # list rows of --quick
LATENCY_TENSORS = 200
LATENCY_NUMEL = 1 << 20


def bytes_per_elem(param: Any, grad: Any, state: Any, master: bool, nstates: int = 2) -> int:
    """The fewest bytes one element of an update moves: read g, each state and the master
    copy (p when there is none); write each state, the master copy and p. With master
    weights p is written but not read (it receives round(master))."""
    w = lambda d: np.dtype(d).itemsize  # noqa: E731
    read = w(grad) + nstates * w(state) + (4 if master else w(param))
    write = nstates * w(state) + (4 if master else 0) + w(param)
    return read + write


def policy_bytes_per_elem(pol: Policy) -> int:
    return bytes_per_elem(pol.param, pol.param, pol.state, pol.master)


def default_numel(ctx: Context) -> int:
    if ctx.numel:
        return ctx.numel
    return 1 << 28 if ctx.backend.name == "cuda" else 1 << 24


# ---- arrays ---------------------------------------------------------------------------


@dataclass
class Arrays:
    """One policy's arrays, as lists (one array for the flat buffer)."""

    p: list
    g: list
    m: list
    v: list
    master: list | None

    def numel(self) -> int:
        return sum(int(a.size) for a in self.p)


def _arrays(xp: Any, shapes: list[tuple[int, ...]], pol: Policy) -> Arrays:
    p, g, m, v, master = [], [], [], [], []
    for s in shapes:
        p32 = xp.random.standard_normal(s).astype(xp.float32)
        g32 = (xp.random.standard_normal(s) * 1e-2).astype(xp.float32)
        p.append(hostmem.copy_of(p32, pol.param))
        g.append(hostmem.copy_of(g32, pol.param))
        m.append(hostmem.copy_of(xp.zeros(s, pol.state)))
        v.append(hostmem.copy_of(xp.zeros(s, pol.state)))
        if pol.master:
            master.append(hostmem.copy_of(p[-1], xp.float32))  # the master copy starts at p's value
    return Arrays(p, g, m, v, master if pol.master else None)


# ---- gpugd ----------------------------------------------------------------------------


def _gpugd_call(a: Arrays, pol: Policy, flat: bool):
    """One ``ops.adam_`` call per step: one array for the flat buffer, the lists (one
    launch) otherwise; stochastic rounding with a new seed each step."""
    one = (lambda x: x[0]) if flat else (lambda x: x)
    p, g, m, v = one(a.p), one(a.g), one(a.m), one(a.v)
    master = None if a.master is None else one(a.master)
    seed = [0]

    def call():
        seed[0] += 1
        ops.adam_(p, g, m, v, **HP, step=STEP, master=master, rounding=pol.rounding, seed=seed[0])

    return call


# ---- NumPy composition of a policy ------------------------------------------------------


def numpy_policy_step(xp: Any, p, g, m, v, master=None, rounding: str = "nearest") -> None:
    """One Adam step of the policy as a user writes it with array ops: cast what is stored
    in half precision to float32, run Adam in float32 (in-place ufuncs), store back: the
    bfloat16 states, and p (round(master) when there is a master copy)."""
    f32 = xp.float32
    g32 = g if g.dtype == f32 else g.astype(f32)
    m32 = m if m.dtype == f32 else m.astype(f32)
    v32 = v if v.dtype == f32 else v.astype(f32)
    w = master if master is not None else (p if p.dtype == f32 else p.astype(f32))
    _numpy_adam(xp, w, g32, m32, v32, lr=HP["lr"], step=STEP)
    if m32 is not m:
        m[...] = m32
        v[...] = v32
    if w is p:
        return
    if rounding == "stochastic":  # bfloat16: add 16 random bits, keep the upper 16
        rand = xp.random.randint(0, 1 << 16, size=w.shape, dtype=xp.uint32)
        bits = w.view(xp.uint32) + rand
        bits >>= 16
        p.view(xp.uint16)[...] = bits
    else:
        p[...] = w  # the cast rounds to nearest even


def _numpy_call(xp: Any, a: Arrays, pol: Policy):
    def call():
        for i in range(len(a.p)):
            mw = None if a.master is None else a.master[i]
            numpy_policy_step(xp, a.p[i], a.g[i], a.m[i], a.v[i], mw, pol.rounding)

    return call


# ---- torch ----------------------------------------------------------------------------


def _as_torch(torch: Any, a: Any) -> Any:
    """A torch tensor on the same memory (bfloat16 NumPy arrays through their bit view)."""
    if isinstance(a, np.ndarray):
        if a.dtype == BF16:
            return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


def torch_peer(pol: Policy) -> tuple[str, str]:
    """(peer name, note) of the torch fused Adam held beside ``pol``: the same policy when
    torch can run it, else half-precision parameters with states in that precision."""
    if pol.param == F32 or (pol.state == pol.param and not pol.master):
        return "torch-fused", ""
    short = SHORT[pol.param.name]
    name = f"torch-fused-{short}state"
    tb = bytes_per_elem(pol.param, pol.param, pol.param, False)
    note = (
        f"{name}: torch.optim.Adam(fused=True) keeps Adam's states in the parameters' dtype"
        f" and has no master copy, so it runs {pol.param.name} params, grads and states"
        f" ({tb} B/elem against this policy's {policy_bytes_per_elem(pol)})"
    )
    return name, note


def _torch_step(ctx: Context, torch: Any, name: str, a: Arrays, **flags: Any):
    """``torch.optim.Adam(**flags).step`` on copies of p with the same gradients (torch
    creates the states, in p's dtype), or None (logged) when torch refuses that dtype or
    flag."""
    try:
        tps = [_as_torch(torch, hostmem.copy_of(x)) for x in a.p]
        for tp, g in zip(tps, a.g, strict=True):
            tp.grad = _as_torch(torch, g)
        opt = torch.optim.Adam(tps, lr=HP["lr"], betas=HP["betas"], eps=HP["eps"], **flags)
        opt.step()  # creates the state outside the timing
    except Exception as exc:  # a peer that cannot run is skipped, never fatal
        ctx.log(f"  amp: peer {name} skipped: {type(exc).__name__}: {exc}")
        return None
    return opt.step


# ---- rows -----------------------------------------------------------------------------


def _optimizer_call(a: Arrays, pol: Policy):
    """``gpugd.optim.Adam.step`` with the policy on the same parameters and gradients: what
    a training loop calls every step (arrays validated and the tensor table built once, at
    construction and first step; each step still builds its kernel from the step count).
    Its states, and master copy, are its own; sharing p with the ``ops`` call changes no
    byte moved."""
    from gpugd import optim

    opt = optim.Adam(
        a.p,
        grads=a.g,
        **HP,
        master_weights=pol.master,
        state_dtype=pol.state,
        rounding=pol.rounding,
    )
    opt.step()  # states, master copy and tensor table are made outside the timing
    return opt.step


def _optimizer_buffers(step: Any, a: Arrays) -> list[Any]:
    """Every buffer the optimizer's step touches: p, g and its own states."""
    opt = step.__self__
    states = [opt.state[n][k] for n in opt.names for k in sorted(opt.state[n])]
    return [*a.p, *a.g, *states]


def _policy_rows(
    ctx: Context, torch: Any, code: str, a: Arrays, flat: bool, kernel: str
) -> list[dict[str, Any]]:
    """Two rows timed in the same rounds: ``kernel`` (one ``ops.adam_`` call, which
    validates its arrays every call) and ``kernel optim`` (``optim.Adam.step``, validated
    once), each with the peers' ratios; the optim row also against the ops call. Each row
    is also held against the in-place loop over its own buffers (``own_ceiling_gbps``,
    ``pct_of_own_ceiling``), timed in the same rounds."""
    pol = POLICIES[code]
    xp = ctx.backend.xp
    peers: dict[str, Any] = {}
    numpy_name = "numpy" if xp is np else "cupy"
    peers[numpy_name if flat else f"{numpy_name}-loop"] = _numpy_call(xp, a, pol)
    note = ""
    if torch is not None:
        tname, note = torch_peer(pol)
        step = _torch_step(ctx, torch, tname, a, fused=True)
        if step is not None:
            peers[tname] = step
        else:
            note = ""
    opt_step = _optimizer_call(a, pol)
    ours = {"gpugd-ops": _gpugd_call(a, pol, flat), "gpugd-optim": opt_step}
    # The loops with each call's own traffic over its own buffers: g read; m, v and the
    # master copy rewritten; p rewritten, or only written where a master copy feeds it.
    p_mods, p_writes = ([], a.p) if pol.master else (a.p, [])
    opt_states = _optimizer_buffers(opt_step, a)[2 * len(a.p) :]
    own = {
        "gpugd-ops": traffic(a.g, [*p_mods, *a.m, *a.v, *(a.master or [])], p_writes, xp),
        "gpugd-optim": traffic(a.g, [*p_mods, *opt_states], p_writes, xp),
    }
    mix = mix_name(1, 3, 0)  # g read; m, v and p (or the master copy) rewritten
    mix += "w1" if pol.master else ""
    own_fns = {f"own-{k}": loop.fn for k, loop in own.items()}
    bound = None  # the compute bound (CPU)
    if xp is np:
        sr = pol.rounding == "stochastic"
        numel = min(1 << 22, max(a.numel(), 1 << 14))  # about the row's work per call
        bound = adam_math(pol.param, pol.state, pol.master, sr, policy_bytes_per_elem(pol), numel)
        own_fns["math"] = bound.fn
    t, _ = ctx.measure({**ours, **own_fns, **peers}, "read")  # any class: not used
    n = a.numel()
    nbytes = policy_bytes_per_elem(pol) * n
    rows = []
    for key, name in (("gpugd-ops", kernel), ("gpugd-optim", f"{kernel} optim")):
        base = {k: t[k].median_s for k in peers}
        if key == "gpugd-optim":
            base["gpugd-ops"] = t["gpugd-ops"].median_s
        ceil = nbytes / t[f"own-{key}"].median_s / 1e9
        bounds: dict[str, Any] = {"mem": mix, "mem_gbps": ceil}
        cname = mix
        if bound is not None:
            cname, ceil = tighten(bounds, bound, t["math"].median_s, cname, ceil)
        r = row(ctx, name, pol.param, n, t[key], nbytes, cname, ceil, base, len(a.p))
        r["policy"] = code
        r["note"] = note
        r["bounds"] = bounds
        r["own_ceiling_gbps"] = own[key].nbytes / t[f"own-{key}"].median_s / 1e9
        r["pct_of_own_ceiling"] = 100.0 * r["gbps"] / r["own_ceiling_gbps"]
        r["detail"] = bounds_text(bounds).replace(mix, f"{mix} over its own buffers", 1)
        ctx.log(f"  {name:<42} {r['gbps']:8.1f} GB/s  {r['pct_of_ceiling']:5.1f}% of {cname}")
        rows.append(r)
    return rows


def latency_shapes(total: int, tensors: int = LATENCY_TENSORS) -> list[tuple[int, ...]]:
    """A small model's parameter shapes: ``tensors`` // 2 layers of weight (out, in) and bias
    (out,), the widths mixed (a fixed draw of 1–8 units, scaled), about ``total`` elements."""
    rng = np.random.default_rng(0)
    layers = tensors // 2
    units = rng.choice(np.array([1, 2, 3, 4, 6, 8]), layers + 1)
    scale = math.sqrt(total / float(np.sum(units[:-1] * units[1:])))
    widths = [max(1, round(scale * u)) for u in units]
    shapes: list[tuple[int, ...]] = []
    for d_in, d_out in itertools.pairwise(widths):
        shapes += [(d_out, d_in), (d_out,)]
    return shapes


def _torch_graph_step(ctx: Context, torch: Any, a: Arrays):
    """torch fused Adam with ``capturable=True``, its step captured in a torch CUDA graph
    (warm-up on a side stream, as torch's documentation does): ``graph.replay``; or None."""
    try:
        tps = [_as_torch(torch, hostmem.copy_of(x)) for x in a.p]
        for tp, g in zip(tps, a.g, strict=True):
            tp.grad = _as_torch(torch, g)
        opt = torch.optim.Adam(
            tps, lr=HP["lr"], betas=HP["betas"], eps=HP["eps"], fused=True, capturable=True
        )
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                opt.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            opt.step()
    except Exception as exc:
        ctx.log(f"  amp: peer torch-fused-capturable-graph skipped: {type(exc).__name__}: {exc}")
        return None
    return graph.replay


def _latency_rows(ctx: Context, torch: Any) -> list[dict[str, Any]]:
    """Seconds per Adam step of a small model (200 tensors, ~2^20 fp32 parameters), all
    timed in the same rounds: ``gpugd.optim.Adam.step`` (eager: one launch, the tensor
    table kept), on the GPU the same step replayed from a CUDA graph
    (``gpugd.graph.CapturedStep``), the functional ``ops.adam_`` call on the lists (which
    validates its arrays every call), against torch fused Adam and, on the GPU, torch's
    capturable fused Adam replayed from a torch CUDA graph."""
    from gpugd import optim

    xp = ctx.backend.xp
    total = min(ctx.numel, LATENCY_NUMEL) if ctx.numel else LATENCY_NUMEL
    shapes = latency_shapes(total)
    pol = POLICIES["fp32"]
    a = _arrays(xp, shapes, pol)
    n = a.numel()
    ctx.log(f"amp: step latency, {len(shapes)} tensors, {n} float32 parameters")
    eager = optim.Adam([hostmem.copy_of(x) for x in a.p], grads=a.g, lr=HP["lr"])
    eager.step()  # builds the tensor table outside the timing
    fns: dict[str, Any] = {"gpugd-eager": eager.step, "gpugd-ops": _gpugd_call(a, pol, False)}
    if ctx.backend.name == "cuda":
        from gpugd.graph import CapturedStep

        captured = optim.Adam([hostmem.copy_of(x) for x in a.p], grads=a.g, lr=HP["lr"])
        fns["gpugd-graph"] = CapturedStep(captured, zero_grad=False)
    peers: dict[str, Any] = {}
    if torch is not None:
        step = _torch_step(ctx, torch, "torch-fused", a, fused=True)
        if step is not None:
            peers["torch-fused"] = step
        if ctx.backend.name == "cuda":
            replay = _torch_graph_step(ctx, torch, a)
            if replay is not None:
                peers["torch-fused-capturable-graph"] = replay
    t, ceil = ctx.measure({**fns, **peers}, "inplace")
    nbytes = policy_bytes_per_elem(pol) * n
    label = f"adam_ step latency {len(shapes)} tensors"
    notes = {
        "gpugd-eager": ("eager", "seconds per step: gpugd.optim.Adam.step on the lists"),
        "gpugd-graph": ("graph", "seconds per step: the same step replayed from a CUDA graph"),
        "gpugd-ops": ("ops", "seconds per step: one ops.adam_ call (validates every call)"),
    }
    rows = []
    for key, (suffix, note) in notes.items():
        if key not in t:
            continue
        base = {k: t[k].median_s for k in peers}
        if key != "gpugd-eager":
            base["gpugd-eager"] = t["gpugd-eager"].median_s
        name = f"{label} {suffix}"
        r = row(ctx, name, F32, n, t[key], nbytes, "inplace", ceil, base, len(shapes))
        r["policy"] = "fp32"
        r["note"] = note
        ctx.log(f"  {name:<36} {r['median_s'] * 1e6:8.1f} us/step")
        rows.append(r)
    return rows


def run(ctx: Context) -> list[dict[str, Any]]:
    xp = ctx.backend.xp
    torch = optional_torch(ctx.backend.name)
    n = default_numel(ctx)
    rows = []
    ctx.log(f"amp: flat n={n}")
    for code, pol in POLICIES.items():
        if ctx.quick and code not in QUICK:
            continue
        a = _arrays(xp, [(n,)], pol)
        rows += _policy_rows(ctx, torch, code, a, True, f"adam_ {code} flat")
        del a
    full = 25_557_032
    shapes = resnet50_shapes(min(1.0, (ctx.numel / full) ** 0.5) if ctx.numel else 1.0)
    ctx.log(f"amp: ResNet-50-like list, {len(shapes)} tensors")
    for code, pol in POLICIES.items():
        if ctx.quick and code not in QUICK_LIST:
            continue
        a = _arrays(xp, shapes, pol)
        rows += _policy_rows(ctx, torch, code, a, False, f"adam_ {code} resnet50-list")
        del a
    rows += _latency_rows(ctx, torch)
    return rows
