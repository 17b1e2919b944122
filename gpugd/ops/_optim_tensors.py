"""The tensors of one fused optimizer update and their launch: ``Tensors`` validates p, g,
the states and fp32 masters (one backend, one shape per tensor, C-contiguous, disjoint,
the precision policy) and runs a rule over them — one Numba call (an array, or the
multi-tensor table in chunks) or one CUDA launch (``gpugd_optim_<rule>_<sfx>`` over an
array, ``gpugd_optim_<rule>_multi_<policy>`` over the device tensor table). The rules'
scalars come from ``gpugd.ops.optim``'s kernel builders (``Kernel``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _tensor_table as layout
from .. import _validate as v
from .._lazy import cpu

CUDA_CHUNK = 1 << 16  # elements per block-task of the CUDA multi-tensor launch


class Tensors:
    """The validated arrays of one update: p, g and the rule's states (kernel slot order,
    None where unused), each one array or a list of arrays (the multi-tensor path: one
    launch for all), and optional fp32 ``master`` weights. Validation runs once here; the
    optimizer classes keep a ``Tensors`` per param group and launch it every step, and the
    tensor table for the multi-tensor kernels is built on the first launch and reused.

    Precision policies: p, g and states all float32 or all float64; or p and g in float16
    or bfloat16 with states in float32 or bfloat16 (math in float32 registers), and then
    optionally ``master``: float32 copies of p that the rule updates, p receiving
    round(master) in the same pass."""

    def __init__(self, p: Any, g: Any, states: dict[str, Any], master: Any = None):
        self.multi = isinstance(p, list | tuple)
        names = ["p", "g", *states]
        if self.multi:
            rows = [list(p)]
            for name, x in [("g", g), *states.items(), ("master", master)]:
                if x is None:
                    rows.append(None)
                    continue
                if not isinstance(x, list | tuple):
                    raise TypeError(f"{name}: expected a list of arrays like p, got {type(x)}")
                if len(x) != len(rows[0]):
                    raise ValueError(
                        f"{name}: expected {len(rows[0])} arrays (one per array of p), got {len(x)}"
                    )
                rows.append(list(x))
        else:
            rows = [None if x is None else [x] for x in (p, g, *states.values(), master)]
        self.master = rows.pop()
        self.rows: list[list | None] = rows
        self.names = names
        every = [
            (n, row) for n, row in zip([*names, "master"], [*rows, self.master], strict=True) if row
        ]
        arrays = [a for _, row in every for a in row]
        # Exact NumPy arrays (the common case) are the CPU backend, each checked for
        # alignment with its tensor below; anything else (CuPy, memmaps, mixed libraries,
        # non-arrays) takes the full check of every array first, with its message.
        plain = all(type(a) is np.ndarray for a in arrays)
        self.backend = "cpu" if plain else v.array_backend(**self._labelled())
        ps = rows[0]
        self.dtype = ps[0].dtype if ps else None
        self.half = self.dtype is not None and v.dtype_name(self.dtype) in v.HALF_NAMES
        self.state_dtype = next((r[0].dtype for r in rows[2:] if r is not None and r), None)
        if ps:
            self._check_tensor(0)
        # Tensors 1.. are screened against tensor 0, which passed every rule: the same dtype
        # object in each row, p's shape, C-contiguous, aligned, writable where written. That
        # implies every rule; an array the screen does not vouch for gets the full check,
        # which passes it (an equal dtype that is another object) or names what is wrong.
        screen = [(row, row[0].dtype, n != "g") for n, row in every] if plain else []
        for i in range(1, len(ps)):
            if not (plain and _passes(screen, i, ps[i].shape)):
                self._check_tensor(i)
        self.compute = np.dtype(np.float32) if self.half else self.dtype
        self.sizes = [int(a.size) for a in ps]
        self._at = self._read_addresses([row for _, row in every], arrays)
        self._prepared: Any = None
        self._stats_tasks: np.ndarray | None = None

    def _read_addresses(self, rows: list[list], arrays: list) -> dict[int, list[int]]:
        """Every array's address, read once for the overlap check and the table: id of
        each row (list) → its arrays' addresses. No two arrays may share a byte."""
        where = v.addresses(arrays)
        at, k = {}, 0
        for row in rows:
            at[id(row)] = where[k : k + len(row)]
            k += len(row)
        # each row's tensor i holds p[i]'s element count (checked before)
        sizes = np.asarray(self.sizes, np.uint64)
        nbytes = [sizes * row[0].dtype.itemsize for row in rows]
        if v.overlapping(where, np.concatenate(nbytes) if nbytes else []):
            v.disjoint(self._labelled())  # raises, naming the two arrays
            raise ValueError("two of the arrays share memory; pass separate arrays")
        return at

    def _labelled(self) -> dict[str, Any]:
        """Every array by its argument name ("p", or "exp_avg[3]" for lists)."""
        rows = [*self.rows, self.master]
        return {
            (f"{n}[{i}]" if self.multi else n): a
            for n, row in zip([*self.names, "master"], rows, strict=True)
            if row is not None
            for i, a in enumerate(row)
        }

    def _check_tensor(self, i: int) -> None:
        """Every rule for tensor ``i`` of each row (the only tensor without lists)."""
        pa, sfx = self.rows[0][i], f"[{i}]" if self.multi else ""
        v.array_kind("p" + sfx, pa)
        v.float_array("p" + sfx, pa, writable=True, half=True)
        if pa.dtype != self.dtype:
            raise TypeError(
                f"p{sfx}: dtype {pa.dtype} differs from p[0]'s {self.dtype}; "
                "one launch takes one dtype, so update each dtype separately"
            )
        for n, row in zip(self.names[1:], self.rows[1:], strict=True):
            if row is None:
                continue
            a = row[i]
            v.array_kind(n + sfx, a)
            v.float_array(n + sfx, a, writable=n != "g", half=self.half)
            if n == "g" or not self.half:
                v.same_layout("p" + sfx, pa, n + sfx, a)
            else:
                self._check_half_state(n + sfx, a, "p" + sfx, pa)
        if self.master is not None:
            m = self.master[i]
            if not self.half:
                raise TypeError(
                    "master: fp32 master weights go with float16 or bfloat16 parameters; "
                    f"p is {pa.dtype}"
                )
            v.array_kind("master" + sfx, m)
            v.float_array("master" + sfx, m, writable=True)
            if m.dtype != np.float32 or m.shape != pa.shape:
                raise TypeError(
                    f"master{sfx}: expected float32 of p's shape {pa.shape}, got "
                    f"{m.dtype}{list(m.shape)}"
                )

    def _check_half_state(self, name: str, s: Any, pname: str, pa: Any) -> None:
        """States beside half-precision parameters: p's shape, float32 or bfloat16, and
        one dtype for all states."""
        if s.shape != pa.shape:
            raise ValueError(f"{name}: shape {s.shape} does not match {pname}'s {pa.shape}")
        if v.dtype_name(s.dtype) not in ("float32", "bfloat16"):
            raise TypeError(
                f"{name}: states beside {pa.dtype} parameters are float32 or bfloat16, "
                f"got {s.dtype}"
            )
        if s.dtype != self.state_dtype:
            raise TypeError(
                f"{name}: dtype {s.dtype} differs from the other states' {self.state_dtype}"
            )

    @property
    def policy(self) -> str:
        """The precision policy's kernel suffix: "f32", "f64", or e.g. "bf16p_f32s_master"."""
        if not self.half:
            return "f32" if self.dtype == np.float32 else "f64"
        s = "f32" if self.state_dtype is None or self.state_dtype == np.float32 else "bf16"
        p = "f16" if self.dtype == np.float16 else "bf16"
        return f"{p}p_{s}s" + ("_master" if self.master is not None else "")

    def _table_rows(self) -> tuple[list, list | None]:
        """Rows of the tensor table: the rule updates the master copy when there is one,
        and the parameters then receive its rounding (the out row)."""
        if self.master is None:
            return self.rows, None
        return [self.master, *self.rows[1:]], self.rows[0]

    def launch(
        self,
        rule: str,
        scalars: tuple,
        skip_if: Any,
        stats: bool = False,
        key: int | None = None,
        dev_scale: Any = None,
    ) -> Any:
        """Run ``rule`` over every tensor: one kernel launch (or one parallel region). With
        ``stats`` (lists only) return per tensor [Σ p_new², Σ (p_new − p_old)²] (float64,
        shape (T, 2), on the arrays' backend), summed in the same pass; else None. ``key``:
        a 32-bit seed for stochastic rounding of bfloat16 parameters (None: to nearest).
        ``dev_scale`` (CUDA only): a float64 device scalar that replaces the grad_scale
        scalar, rounded once to the compute dtype in the kernel (the clip coefficient decided
        on the device, ``gpugd_optim_step_decide``)."""
        if stats and not self.multi:
            raise ValueError("stats: update statistics need the multi-tensor (list) path")
        if not sum(self.sizes):
            return self._zero_stats() if stats else None
        t = self.compute.type
        if self.backend == "cpu":
            if dev_scale is not None:
                raise ValueError("dev_scale: a device-side grad scale is for CuPy arrays")
            if skip_if is not None and int(skip_if.reshape(-1)[0]) != 0:
                return None
            return self._launch_cpu(rule, tuple(_cpu_value(x, t) for x in scalars), stats, key)
        return self._launch_cuda(
            rule, tuple(_cuda_value(x, t) for x in scalars), skip_if, stats, key, dev_scale
        )

    def _zero_stats(self) -> Any:
        if self.backend == "cpu":
            return np.zeros((len(self.sizes), 2))
        import cupy

        return cupy.zeros((len(self.sizes), 2))

    def _launch_cpu(self, rule: str, scalars: tuple, stats: bool, key: int | None) -> Any:
        k, kr, kernel_view = cpu("optim"), cpu("reduce"), cpu("precision").kernel_view
        if not self.multi:
            rows, out = self._table_rows()
            flat = [None if r is None else kernel_view(r[0].reshape(-1)) for r in rows]
            half_p = None if out is None else kernel_view(out[0].reshape(-1))
            sr = None if key is None else np.uint32(key)
            where = [0 if r is None else self._at[id(r)][0] for r in [*rows, out]]
            k.run(rule, flat[0], flat[1], flat[2:], scalars, where, half_p, sr)
            return None
        if self._prepared is None:
            rows, out = self._table_rows()

            def like(a: Any) -> np.ndarray:
                return k.placeholder(kernel_view(a).dtype)

            states = [r for r in rows[2:] if r is not None and r]
            likes = (
                like(rows[0][0]),
                like(rows[1][0]),
                like((states[0] if states else rows[0])[0]),
            )
            at = self._at
            self._prepared = (
                layout.from_addresses(
                    [None if r is None else at.get(id(r), []) for r in rows],
                    self.sizes,
                    None if out is None else at[id(out)],
                ),
                layout.tasks(self.sizes, k.CHUNK),
                likes,
                None if out is None else like(out[0]),
            )
        table, tasks, likes, out_like = self._prepared
        sr = None if key is None else np.uint32(key)
        if not stats:
            k.run_table(rule, table, tasks, likes, *scalars, out_like=out_like, key=sr)
            return None
        if self._stats_tasks is None:
            self._stats_tasks = layout.tasks(self.sizes, k.STATS_CHUNK)
        stats_tasks = self._stats_tasks
        out = np.empty((stats_tasks.shape[0], 2))
        k.run_table(
            rule,
            table,
            stats_tasks,
            likes,
            *scalars,
            out_like=out_like,
            key=sr,
            stats=out,
            chunk=k.STATS_CHUNK,
        )
        return kr.finish(stats_tasks, out, len(self.sizes))[0]

    def cuda_table(self) -> tuple:
        """(table, chunks, chunk count, each tensor's first chunk) in device memory, built on
        first use and kept (a captured CUDA graph reads the same buffers every replay)."""
        if self._prepared is None:
            rows, out = self._table_rows()
            self._prepared = layout.on_device(rows, CUDA_CHUNK, out)
        return self._prepared

    def _launch_cuda(
        self,
        rule: str,
        scalars: tuple,
        skip_if: Any,
        stats: bool,
        key: int | None,
        dev_scale: Any = None,
    ) -> Any:
        from .. import _cuda

        null = np.uint64(0)
        skip = skip_if if skip_if is not None else null
        scale = dev_scale if dev_scale is not None else null
        if not self.multi and not self.half:
            sfx = _cuda.dtype_suffix(self.dtype)
            p, g, *states = (r[0] if r is not None else null for r in self.rows)
            states += [null] * (3 - len(states))
            args = (p, g, *states, np.int64(p.size), *scalars, skip, scale)
            _cuda.launch("optim", f"gpugd_optim_{rule}_{sfx}", p.size, args)
            return None
        import cupy

        table, chunks, nchunks, first = self.cuda_table()
        ntensors = len(self.sizes)
        chunk_stats = cupy.zeros((nchunks, 2), cupy.float64) if stats else None
        rounding = () if not self.half else (np.uint32(key or 0), np.int32(key is not None))
        args = (
            table,
            np.int64(ntensors),
            chunks,
            np.int64(nchunks),
            np.int64(CUDA_CHUNK),
            *scalars,
            *rounding,
            skip,
            scale,
            chunk_stats if stats else null,
        )
        name = f"gpugd_optim_{rule}_multi_{self.policy}"
        blocks = _cuda.chunk_grid("optim", name, nchunks)
        _cuda.get_kernel("optim", name)((blocks,), (_cuda.THREADS,), args)
        if not stats:
            return None
        per = cupy.empty((ntensors, 2), cupy.float64)
        total = cupy.empty(2, cupy.float64)
        from .reduce import finish_cuda

        finish_cuda(first, ntensors, chunk_stats, 2, per, total, null)
        return per


def _passes(screen: list, i: int, shape: tuple) -> bool:
    """Tensor ``i`` of each (row, tensor 0's dtype, written) of ``screen`` (exact NumPy
    arrays): that dtype object, ``shape``, C-contiguous, aligned, writable if written."""
    for row, dtype, written in screen:
        a = row[i]
        f = a.flags
        if a.dtype is not dtype or a.shape != shape:
            return False
        if not (f.c_contiguous and f.aligned and (f.writeable or not written)):
            return False
    return True


def _cpu_value(x: Any, t: Any) -> Any:
    return x if isinstance(x, bool) else t(x)


def _cuda_value(x: Any, t: Any) -> Any:
    return np.int32(x) if isinstance(x, bool) else t(x)
