"""Suite ``optim``: each fused update rule on one flat fp32 buffer, and the optimizer classes
on a ResNet-50-like list of 161 separate tensors (the multi-tensor path), against the
loop with the same traffic over the same buffers (``ceilings.traffic``: g read, p and
each state rewritten: ``r1m2`` for one state, ``r1m3`` for Adam's two, ``r1m4``
AMSGrad) and their peers.

Fewest bytes per element (w = itemsize): read p, g and each state once, write p and each
state once: SGD-momentum, Adagrad, RMSprop 5w; Adam, AdamW, NAdam 7w; AMSGrad 9w.
With blockwise 8-bit states over fp32 parameters (``_state8_rows``): Adam 16 B, Lion 14 B
(codes read and written, a float32 scale per 2048), the fp32-state rule as the peer, and
on the CPU the kernel's compute bound beside the traffic loop (``ceilings.optim8_math``).
Peers: NumPy composition of the same update (in-place ufuncs, several passes), and
torch.optim on the same memory with ``fused=True`` and ``foreach=True`` when importable
and supported for that rule on that device.

Memory: on the CPU the flat rows' arrays are allocated as gpugd allocates its arenas and
states (``gpugd._hostmem.copy_of``: 2 MiB-aligned, huge pages requested), as the ``amp``
suite's are; gpugd, its peers and the own-traffic loop stream the same buffers. Two rows,
``adam_ numpy-alloc`` and ``lion_ numpy-alloc``, run the same rules over NumPy's own
allocations, what ``gpugd.ops`` sees when a caller brings its own arrays (NumPy advises
huge pages too, but its large arrays start 16 bytes past a 64-byte boundary, so every
other 32-byte vector access splits a cache line). On the 2-core Zen 3 VM the two differed
by up to 1.8x in one run and by 5% in another (``benchmarks/README.md``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpugd import _hostmem as hostmem
from gpugd import ops

from .ceilings import against, optim8_math, traffic
from .harness import Context, optional_torch, row

NAME = "optim"

# kernel label -> (op, hyperparameters, state count, torch class name, torch kwargs)
RULES: dict[str, tuple[str, dict, int, str, dict]] = {
    "sgd_ momentum": ("sgd_", dict(lr=1e-3, momentum=0.9), 1, "SGD", dict(lr=1e-3, momentum=0.9)),
    "adagrad_": ("adagrad_", dict(lr=1e-2), 1, "Adagrad", dict(lr=1e-2)),
    "rmsprop_": ("rmsprop_", dict(lr=1e-3), 1, "RMSprop", dict(lr=1e-3)),
    "adam_": ("adam_", dict(lr=1e-3), 2, "Adam", dict(lr=1e-3)),
    "adam_ amsgrad": ("adam_", dict(lr=1e-3, amsgrad=True), 3, "Adam", dict(lr=1e-3, amsgrad=True)),
    "adamw": (
        "adam_",
        dict(lr=1e-3, weight_decay=1e-2, decoupled=True),
        2,
        "AdamW",
        dict(lr=1e-3, weight_decay=1e-2),
    ),
    "nadam_": ("nadam_", dict(lr=2e-3), 2, "NAdam", dict(lr=2e-3)),
    "lion_": ("lion_", dict(lr=1e-4), 1, "", {}),  # 5w as SGD momentum; torch has no Lion
}
NO_STEP = ("rmsprop_", "lion_")  # ops without a step argument


NUMPY_ALLOC = ("adam_", "lion_")  # the rules also run over NumPy's own allocations


def _own(a: Any) -> Any:
    """``a`` in a buffer as gpugd allocates its arenas and states (huge pages on the host;
    a device array as it is)."""
    return hostmem.copy_of(a) if isinstance(a, np.ndarray) else a


def default_numel(ctx: Context) -> int:
    if ctx.numel:
        return ctx.numel
    return 1 << 28 if ctx.backend.name == "cuda" else 1 << 24


def _numpy_adam(xp, p, g, m, v, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, step=10):
    """Adam as a user would write it with in-place array ops (several passes)."""
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * g * g
    den = xp.sqrt(v)
    den /= np.sqrt(1 - b2**step)
    den += eps
    p -= (lr / (1 - b1**step)) * m / den


def _numpy_sgd(xp, p, g, buf, lr=1e-3, momentum=0.9):
    buf *= momentum
    buf += g
    p -= lr * buf


def _torch_peers(torch, p, g, cls: str, kw: dict, cuda: bool) -> dict[str, Any]:
    """{"torch-fused": step, "torch-foreach": step} for the variants torch supports."""
    peers = {}
    for label, flag in (("torch-fused", "fused"), ("torch-foreach", "foreach")):
        tp = _as_torch(torch, p.copy())
        tp.grad = _as_torch(torch, g)
        try:
            opt = getattr(torch.optim, cls)([tp], **kw, **{flag: True})
            opt.step()  # also creates the state outside the timing
        except (RuntimeError, TypeError, ValueError):
            continue  # e.g. no fused NAdam: that peer does not exist
        peers[label] = opt.step
    return peers


def resnet50_shapes(width: float = 1.0) -> list[tuple[int, ...]]:
    """The parameter shapes of torchvision's ResNet-50, in its order: 161 tensors, 25,557,032
    elements (53 convolutions, 53 batch norms with weight and bias, the classifier).
    ``width`` < 1 scales every channel count (and the classes) down, keeping the 161
    tensors: how ``--numel`` shrinks this benchmark."""
    c = lambda k: max(1, round(k * width))  # noqa: E731
    shapes: list[tuple[int, ...]] = [(c(64), 3, 7, 7), (c(64),), (c(64),)]
    inplanes = c(64)
    for planes, blocks in ((c(64), 3), (c(128), 4), (c(256), 6), (c(512), 3)):
        for b in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes,), (planes,)]
            shapes += [(planes, planes, 3, 3), (planes,), (planes,)]
            shapes += [(planes * 4, planes, 1, 1), (planes * 4,), (planes * 4,)]
            if b == 0:
                shapes += [(planes * 4, inplanes, 1, 1), (planes * 4,), (planes * 4,)]
            inplanes = planes * 4
    return [*shapes, (c(1000), inplanes), (c(1000),)]


QUICK = ("sgd_ momentum", "adam_")  # the rows of --quick (a first look in under a minute)
QUICK_LIST = ("Adam",)

# label -> (gpugd.optim class, hyperparameters, state count); torch takes the same ones.
LIST_RULES: dict[str, tuple[str, dict, int]] = {
    "SGD momentum": ("SGD", dict(lr=1e-3, momentum=0.9), 1),
    "Adam": ("Adam", dict(lr=1e-3), 2),
    "AdamW": ("AdamW", dict(lr=1e-3, weight_decay=1e-2), 2),
}


def _list_rows(ctx: Context, torch: Any) -> list[dict[str, Any]]:
    """Each optimizer class stepping the ResNet-50 list; peers: torch.optim with the same
    tensors (fused, foreach) and a NumPy per-tensor loop for Adam."""
    from gpugd import optim

    xp = ctx.backend.xp
    full = 25_557_032
    shapes = resnet50_shapes(min(1.0, (ctx.numel / full) ** 0.5) if ctx.numel else 1.0)
    numel = sum(int(np.prod(s)) for s in shapes)
    ps = [xp.random.standard_normal(s).astype(xp.float32) for s in shapes]
    gs = [xp.random.standard_normal(s).astype(xp.float32) * 1e-3 for s in shapes]
    ctx.log(f"optim: ResNet-50-like list, {len(shapes)} tensors, {numel} float32 elements")
    rows = []
    for label, (cls, hp, nstates) in LIST_RULES.items():
        if ctx.quick and label not in QUICK_LIST:
            continue
        opt = getattr(optim, cls)(ps, grads=gs, **hp)
        opt.step()  # builds the tensor table outside the timing, as in training
        peers: dict[str, Any] = {}
        if label == "Adam":
            ms = [xp.zeros_like(a) for a in ps]
            vs = [xp.zeros_like(a) for a in ps]

            def numpy_loop(ms=ms, vs=vs):
                for p, g, m, v in zip(ps, gs, ms, vs, strict=True):
                    _numpy_adam(xp, p, g, m, v)

            peers["numpy-loop" if xp is np else "cupy-loop"] = numpy_loop
        if torch is not None:
            for peer, flag in (("torch-fused", "fused"), ("torch-foreach", "foreach")):
                tps = [_as_torch(torch, a.copy()) for a in ps]
                for tp, g in zip(tps, gs, strict=True):
                    tp.grad = _as_torch(torch, g)
                try:
                    topt = getattr(torch.optim, cls)(tps, **hp, **{flag: True})
                    topt.step()
                except (RuntimeError, TypeError, ValueError):
                    continue
                peers[peer] = topt.step
        nbytes = (3 + 2 * nstates) * 4 * numel
        states = [opt.state[k][s] for k in opt.names for s in sorted(opt.state[k])]
        own = {f"r1m{1 + nstates}": traffic(gs, [*ps, *states], xp=xp)}
        t, ceil, cname, info = against(ctx, {"gpugd": opt.step, **peers}, own, nbytes)
        base = {k: t[k].median_s for k in peers}
        kernel = f"{label} resnet50-list"
        rows.append(
            row(ctx, kernel, np.float32, numel, t["gpugd"], nbytes, cname, ceil, base, len(ps))
        )
        r = rows[-1]
        r.update(info)
        ctx.log(f"  {kernel:<26} {r['gbps']:8.1f} GB/s  {r['pct_of_ceiling']:5.1f}% of {cname}")
    return rows


def _as_torch(torch, a):
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)


def run(ctx: Context) -> list[dict[str, Any]]:
    xp = ctx.backend.xp
    torch = optional_torch(ctx.backend.name)
    n = default_numel(ctx)
    peer = "cupy" if ctx.backend.name == "cuda" else "numpy"
    w = 4
    rng = xp.random
    p0 = rng.standard_normal(n).astype(xp.float32)
    g0 = rng.standard_normal(n).astype(xp.float32)
    numpy_set = [p0, g0, *(xp.zeros(n, xp.float32) for _ in range(3))]  # NumPy allocates these
    ctx.log(f"optim: float32 n={n}")
    rows = []
    own_set = [_own(a) for a in numpy_set]  # shared by the rules, as the NumPy set by its rows
    cases = [(label, own_set, label) for label in RULES]
    if xp is np and not ctx.quick:
        cases += [(f"{k} numpy-alloc", numpy_set, k) for k in NUMPY_ALLOC]
    for label, (p, g, *states), rule in cases:
        op, hp, nstates, tcls, tkw = RULES[rule]
        if ctx.quick and label not in QUICK:
            continue
        fn = getattr(ops, op)
        s = states[:nstates]
        kw = dict(hp)
        if op not in NO_STEP:
            kw["step"] = 10

        def call(fn=fn, p=p, g=g, s=s, kw=kw):
            fn(p, g, *s, **kw)

        peers: dict[str, Any] = {}
        if label == "adam_":
            peers[peer] = lambda p=p, g=g, s=s: _numpy_adam(xp, p, g, s[0], s[1])
        elif label == "sgd_ momentum":
            peers[peer] = lambda p=p, g=g, s=s: _numpy_sgd(xp, p, g, s[0])
        if torch is not None and tcls:
            peers.update(_torch_peers(torch, p, g, tcls, tkw, ctx.backend.name == "cuda"))
        nbytes = (3 + 2 * nstates) * w * n
        own = {f"r1m{1 + nstates}": traffic([g], [p, *s], xp=xp)}
        t, ceil, cname, info = against(ctx, {"gpugd": call, **peers}, own, nbytes)
        base = {k: t[k].median_s for k in peers}
        rows.append(row(ctx, label, np.float32, n, t["gpugd"], nbytes, cname, ceil, base))
        r = rows[-1]
        r.update(info)
        ctx.log(
            f"  {label:<15} {r['gbps']:8.1f} GB/s  {r['pct_of_ceiling']:5.1f}% of {cname} "
            f"({ceil:.1f} GB/s)"
        )
    return rows + _lion_bf16_rows(ctx, n) + _state8_rows(ctx, n) + _list_rows(ctx, torch)


def _lion_bf16_rows(ctx: Context, n: int) -> list[dict[str, Any]]:
    """Lion over bfloat16 parameters and gradients with a float32 state: p read and written
    (2 + 2 B), g read (2 B), m read and written (4 + 4 B): 14 B per element."""
    if ctx.quick:
        return []
    import ml_dtypes

    xp, bf16 = ctx.backend.xp, ml_dtypes.bfloat16
    p = _own(xp.asarray(np.random.default_rng(0).standard_normal(n).astype(bf16)))
    g = _own(xp.asarray(np.random.default_rng(1).standard_normal(n).astype(bf16)))
    m = _own(xp.zeros(n, xp.float32))
    fns = {"gpugd": lambda: ops.lion_(p, g, m, lr=1e-4)}
    t, ceil, cname, info = against(ctx, fns, {"r1m2": traffic([g], [p, m], xp=xp)}, 14 * n)
    r = row(ctx, "lion_ bf16p", bf16, n, t["gpugd"], 14 * n, cname, ceil, {})
    r.update(info)
    ctx.log(f"  {'lion_ bf16p':<15} {r['gbps']:8.1f} GB/s  {r['pct_of_ceiling']:5.1f}% of {cname}")
    return [r]


def _state8_rows(ctx: Context, n: int) -> list[dict[str, Any]]:
    """Adam and Lion with blockwise 8-bit states (``gpugd.ops.optim8``, block 2048) over
    float32 parameters: p read and written (4 + 4 B), g read (4 B), each state's codes read
    and written (1 + 1 B) and its block scales (2·4/2048 B): Adam 16 B per element, Lion
    14 B; over bfloat16 parameters (2 + 2 + 2 B): Adam 10 B, Lion 8 B. The peer is the same
    rule over the same parameters with float32 states (Adam 28 / 22 B, Lion 20 / 14 B)
    timed in the same rounds: its baseline figure is its time over the 8-bit one, the
    speedup that moving fewer bytes buys. On the CPU each row also carries its compute
    bound (``ceilings.optim8_math``: the kernel's own per-task code over L2-resident blocks,
    every core) and is held against the tighter of the two: the code-map lookups make
    these steps compute-bound on the 2-core VMs."""
    if ctx.quick:
        return []
    import ml_dtypes

    from gpugd import quant8
    from gpugd.ops.optim8 import state8

    xp = ctx.backend.xp
    rng = np.random.default_rng(3)
    nb = quant8.blocks(n)
    rows = []
    cases = (
        ("adam8bit_", (True, False), ops.adam8bit_, "adam_", dict(lr=1e-3, step=10)),
        ("lion8bit_", (True,), ops.lion8bit_, "lion_", dict(lr=1e-4)),
    )
    for dt, sfx in ((np.dtype(np.float32), ""), (np.dtype(ml_dtypes.bfloat16), " bf16p")):
        p = _own(xp.asarray(rng.standard_normal(n).astype(np.float32).astype(dt)))
        p32 = _own(p)
        g = _own(xp.asarray((rng.standard_normal(n) * 1e-3).astype(np.float32).astype(dt)))
        for label, signs, op8, name32, kw in cases:
            label = label + sfx
            st = [tuple(_own(a) for a in state8(n, s, xp=xp)) for s in signs]
            st32 = [_own(xp.zeros(n, xp.float32)) for _ in signs]
            op32 = getattr(ops, name32)
            nbytes = 3 * dt.itemsize * n + len(signs) * (2 * n + 8 * nb)
            peer = f"{name32} fp32 states"
            fns = {
                "gpugd": lambda op8=op8, st=st, kw=kw, p=p, g=g: op8(p, g, *st, **kw),
                peer: lambda op32=op32, st32=st32, kw=kw, p32=p32, g=g: op32(p32, g, *st32, **kw),
            }
            mods = [p, *(a for s in st for a in s)]
            own = {f"r1m{len(mods)}": traffic([g], mods, xp=xp)}
            rule = name32.rstrip("_")
            math = optim8_math(rule, dt, nbytes / n) if xp is np else None
            t, ceil, cname, info = against(ctx, fns, own, nbytes, math)
            base = {k: t[k].median_s for k in fns if k != "gpugd"}
            r = row(ctx, label, dt, n, t["gpugd"], nbytes, cname, ceil, base)
            r.update(info)
            rows.append(r)
            ctx.log(
                f"  {label:<15} {r['gbps']:8.1f} GB/s  {r['pct_of_ceiling']:5.1f}% of {cname}, "
                f"{r['baselines'][peer]:.2f}x {name32} with fp32 states"
            )
    return rows
