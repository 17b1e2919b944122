"""Load emulated kernel libraries (``build.py``) through ctypes and launch them strictly.

``Module(code, options)`` builds ``code`` (cached) and lists its kernels; ``get_function``
gives a ``Kernel`` whose ``pack(args)`` checks and marshals the arguments now, by value,
the way ``cuLaunchKernel`` receives them (one pointer per parameter), and whose
``run(grid, block, shared_mem, packed)`` executes the launch synchronously.

``pack`` is stricter than CuPy, which checks nothing (``cupy/_core/_carray.pyx`` /
``cupy/cuda/function.pyx`` marshal a Python int as int64, a float as a double, a NumPy
scalar as its own dtype and an ndarray as its data pointer, and the driver copies
``sizeof(parameter)`` bytes from each; a Python bool is a bool in CuPy 14 and an int64 in
CuPy 13, so it is refused outright): a scalar whose size or kind (signed,
unsigned, float, bool) differs from the parameter's, an array whose dtype is not the
pointee type, a wrong argument count, or an integer address where a pointer is expected
(only 0, the null pointer, is accepted) is a ``LaunchError`` naming the kernel and the
parameter. On a GPU each of these runs and computes garbage.

After every launch the guard bytes of every live stand-in allocation are checked; a memory
fault inside a kernel (a guard page, an unmapped address) ends the launch with a
``LaunchError`` saying which block and thread, and which allocation the address is near.

Order: ``GPUGD_EMU_ORDER=forward|reverse|shuffle`` (default forward) or ``with
order("reverse"):`` runs blocks and the threads of each block in that order; a correct
kernel gives the same bits in every order.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import itertools
import json
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import build

ORDERS = {"forward": 0, "reverse": 1, "shuffle": 2}
_state = {"order": os.environ.get("GPUGD_EMU_ORDER", "forward").strip() or "forward", "seed": 0}
if _state["order"] not in ORDERS:
    raise ValueError(f"GPUGD_EMU_ORDER={_state['order']!r}: expected one of {sorted(ORDERS)}")
launches: collections.Counter[str] = collections.Counter()  # kernel name → launches run
# One launch at a time: a library's scheduler state is global, and ctypes releases the GIL
# (CUDA serializes a stream's launches; the stand-in has one queue).
_launch_lock = threading.Lock()
_handles = itertools.count(0x7F0000001000, 16)
_by_handle: dict[int, Any] = {}


def kernel_at(handle: int) -> Any:
    """The kernel whose ``ptr`` is ``handle`` (CUDA_ERROR_INVALID_HANDLE-like error if none)."""
    try:
        return _by_handle[handle]
    except KeyError:
        raise EmulatorError(f"no emulated kernel has the handle {handle:#x}") from None


# Occupancy without ptxas: the rule applied to this many registers and no static shared
# memory (8 blocks of 256 threads per SM, gpugd's launches before they asked the driver)
FALLBACK_REGISTERS = 32
_warned: set[str] = set()


@functools.cache
def _static_rows(code: str, name: str) -> dict[str, Any] | str:
    """The ptxas rows (sm_90, ``gpugd.kernel_report.source_report(sass=False)``: registers,
    stack, shared memory; no cuobjdump/nvdisasm needed) of every kernel of ``code``, or why
    there are none (ptxas or NVRTC missing: the message names the tool)."""
    from gpugd import _nvrtc, kernel_report
    from gpugd._kernels import kernel_sources, resolved_source

    family = next(
        (f for f, p in kernel_sources().items() if resolved_source(p) == code),
        name.removesuffix(".cu"),
    )
    try:
        rows = kernel_report.source_report(code, family, "sm_90", sass=False)
    except (kernel_report.ToolUnavailableError, _nvrtc.NvrtcUnavailableError) as exc:
        return str(exc)
    return {k.name: k for k in rows}


_KINDS = ("pointer", "signed integer", "unsigned integer", "floating-point", "bool", "struct")
K_POINTER, K_SIGNED, K_UNSIGNED, K_FLOAT, K_BOOL = range(5)


class EmulatorError(RuntimeError):
    """The emulator could not build or find a kernel."""


class StaticFiguresUnavailable(EmulatorError):
    """A kernel's registers and shared memory are unknown: ptxas (or NVRTC) is missing."""


class LaunchError(EmulatorError):
    """A launch was refused (arguments, configuration) or failed (fault, deadlock, guard
    damage); the message names the kernel, and the parameter or thread at fault."""


@contextlib.contextmanager
def order(name: str, seed: int = 0) -> Iterator[None]:
    """Run the launches inside in ``name`` order ("forward", "reverse", "shuffle")."""
    if name not in ORDERS:
        raise ValueError(f"order: expected one of {sorted(ORDERS)}, got {name!r}")
    saved = dict(_state)
    _state.update(order=name, seed=seed)
    try:
        yield
    finally:
        _state.update(saved)


class _CParam(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_int),
        ("kind", ctypes.c_int),
        ("pointee_const", ctypes.c_int),
        ("pointee", ctypes.c_char_p),
    ]


@dataclass(frozen=True)
class Param:
    """One kernel parameter as the compiler saw it."""

    index: int
    decl: str  # as written, e.g. "const float* x"
    size: int
    kind: int
    pointee: str | None  # NumPy dtype name for pointers ("void", "?": unknown)

    @property
    def name(self) -> str:
        return self.decl.replace("*", " ").split()[-1] if self.decl else f"#{self.index}"


@dataclass
class Packed:
    """Arguments marshalled by value: ``argv`` points at one buffer per parameter."""

    argv: Any
    buffers: list
    keep: list  # the arrays whose memory the launch reads (kept alive while recorded)


def _lib_api(lib: ctypes.CDLL) -> None:
    lib.gpugd_emu_count.restype = ctypes.c_int
    lib.gpugd_emu_name.restype = ctypes.c_char_p
    lib.gpugd_emu_name.argtypes = [ctypes.c_int]
    lib.gpugd_emu_nparams.argtypes = [ctypes.c_int]
    lib.gpugd_emu_params.argtypes = [ctypes.c_int, ctypes.POINTER(_CParam)]
    lib.gpugd_emu_fault_address.restype = ctypes.c_ulonglong
    lib.gpugd_emu_add_shared.argtypes = [ctypes.c_ulonglong, ctypes.c_ulonglong]
    lib.gpugd_emu_launch.restype = ctypes.c_int
    lib.gpugd_emu_launch.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_uint),
        ctypes.POINTER(ctypes.c_uint),
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_ulonglong,
        ctypes.c_char_p,
        ctypes.c_int,
    ]


class Module:
    """The kernels of one CUDA source, built for the CPU (``cupy.RawModule``'s emulated twin)."""

    def __init__(self, code: str, options: tuple[str, ...] = (), name: str = "kernel.cu"):
        try:
            path = build.build(code, name, tuple(options))
        except build.BuildError as exc:
            raise EmulatorError(str(exc)) from None
        meta = json.loads(path.with_suffix(".json").read_text())
        decls = meta["kernels"]
        self.path, self.code, self.name = path, code, name
        self.lib = ctypes.CDLL(str(path))
        _lib_api(self.lib)
        base = ctypes.cast(self.lib.gpugd_emu_count, ctypes.c_void_p).value - meta["anchor"]
        for offset, size in meta["shared"]:  # __shared__ of templates: poisoned by address
            self.lib.gpugd_emu_add_shared(base + offset, size)
        self.kernels: dict[str, Kernel] = {}
        for k in range(self.lib.gpugd_emu_count()):
            kname = self.lib.gpugd_emu_name(k).decode()
            n = self.lib.gpugd_emu_nparams(k)
            raw = (_CParam * max(n, 1))()
            self.lib.gpugd_emu_params(k, raw)
            params = tuple(
                Param(
                    i,
                    decls[kname][i] if i < len(decls.get(kname, ())) else "",
                    raw[i].size,
                    raw[i].kind,
                    raw[i].pointee.decode() if raw[i].pointee else None,
                )
                for i in range(n)
            )
            self.kernels[kname] = Kernel(self, k, kname, params)

    def get_function(self, name: str) -> Kernel:
        try:
            return self.kernels[name]
        except KeyError:
            raise EmulatorError(
                f"no kernel {name!r} in this module (it has {len(self.kernels)}: "
                f"{', '.join(sorted(self.kernels)[:8])}...)"
            ) from None


def _is_device_array(a: Any) -> bool:
    return hasattr(a, "data") and hasattr(a.data, "ptr") and hasattr(a, "dtype")


def _scalar(a: Any) -> tuple[np.ndarray, str] | None:
    """(the bytes CuPy would pass, a description) for a scalar argument, else None."""
    if isinstance(a, bool):  # CuPy 14 marshals it as bool, CuPy 13 as int64: never pass one
        return None
    if isinstance(a, np.bool_):
        return np.asarray(a, np.bool_), f"numpy.bool {a!r}"
    if isinstance(a, int):
        return np.asarray(a, np.int64), f"Python int {a!r} (marshalled as int64)"
    if isinstance(a, float):
        return np.asarray(a, np.float64), f"Python float {a!r} (marshalled as float64)"
    if isinstance(a, np.generic):
        return np.asarray(a), f"numpy.{a.dtype.name} {a!r}"
    return None


_KIND_OF = {"i": K_SIGNED, "u": K_UNSIGNED, "f": K_FLOAT, "b": K_BOOL}


class Kernel:
    """One emulated ``__global__`` function; ``cupy.RawKernel``'s launch, made strict."""

    def __init__(self, module: Module, index: int, name: str, params: tuple[Param, ...]):
        self.module, self.index, self.name, self.params = module, index, name, params
        self.ptr = next(_handles)  # a CUfunction stand-in: occupancy queries look it up
        _by_handle[self.ptr] = self

    def static(self) -> Any:
        """This kernel's figures on the emulated device (an H200, sm_90): the ptxas part of
        the ``gpugd.kernel_report`` row of the same source (NVRTC + ptxas; cuobjdump and
        nvdisasm are not needed). ``StaticFiguresUnavailable`` naming the missing tool
        where ptxas or NVRTC is not installed."""
        rows = _static_rows(self.module.code, self.module.name)
        if isinstance(rows, str):
            raise StaticFiguresUnavailable(f"{self.name}: no ptxas figures: {rows}")
        if self.name not in rows:
            raise EmulatorError(f"{self.name}: not in ptxas's report of {self.module.name}")
        return rows[self.name]

    def max_active_blocks(self, block_size: int, dynamic_smem: int) -> int:
        """``cuOccupancyMaxActiveBlocksPerMultiprocessor`` on the emulated H200: the sm_90
        occupancy rule (``kernel_report.blocks_per_sm``) applied to the registers and shared
        memory ptxas gives this kernel. Without ptxas, the same rule for
        ``FALLBACK_REGISTERS`` = 32 registers and no static shared memory (8 blocks of 256
        threads), with one ``RuntimeWarning`` per process naming the missing tool; tests
        that check real figures skip there (``static()`` raises)."""
        from gpugd import kernel_report

        arch = kernel_report.ARCHS["sm_90"]
        try:
            regs, smem = self.static().registers, self.static().smem
        except StaticFiguresUnavailable as exc:
            regs, smem = FALLBACK_REGISTERS, 0
            if "occupancy" not in _warned:
                _warned.add("occupancy")
                warnings.warn(
                    f"emulated occupancy: {exc}; answering as for {FALLBACK_REGISTERS} "
                    "registers and no shared memory",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return kernel_report.blocks_per_sm(arch, regs, smem + dynamic_smem, block_size)

    def _refuse(self, p: Param, what: str) -> LaunchError:
        return LaunchError(f"{self.name}: parameter {p.index} `{p.decl}`: {what}")

    def pack(self, args: tuple) -> Packed:
        """Check ``args`` against the parameter list and marshal them by value."""
        args = tuple(args)
        if len(args) != len(self.params):
            decl = ", ".join(p.decl for p in self.params)
            raise LaunchError(
                f"{self.name}: {len(args)} arguments for {len(self.params)} parameters ({decl})"
            )
        buffers, keep = [], []
        for p, a in zip(self.params, args, strict=True):
            if p.kind == K_POINTER:
                if _is_device_array(a):
                    dt = np.dtype(a.dtype).name
                    if p.pointee == "?":
                        raise self._refuse(p, f"pointee type unknown to the emulator (got {dt})")
                    if p.pointee != "void" and dt != p.pointee:
                        raise self._refuse(p, f"expected an array of {p.pointee}, got {dt}")
                    value = np.asarray(a.data.ptr, np.uint64)
                    keep.append(a)
                else:
                    sc = _scalar(a)
                    if sc is None or sc[0].dtype.kind not in "iu" or int(sc[0]) != 0:
                        got = sc[1] if sc else type(a).__name__
                        raise self._refuse(
                            p, f"expected a device array (or 0 for a null pointer), got {got}"
                        )
                    if sc[0].dtype.itemsize != 8:
                        raise self._refuse(p, f"a null pointer needs 8 bytes, got {sc[1]}")
                    value = np.asarray(0, np.uint64)
            else:
                if _is_device_array(a):
                    raise self._refuse(p, f"expected a {_KINDS[p.kind]} scalar, got an array")
                sc = _scalar(a)
                if sc is None:
                    why = (
                        " (CuPy 13 marshals it as int64, CuPy 14 as bool: pass np.int32)"
                        if isinstance(a, bool)
                        else ""
                    )
                    raise self._refuse(p, f"cannot pass a Python {type(a).__name__}{why}")
                value, desc = sc
                kind = _KIND_OF.get(value.dtype.kind)
                if kind != p.kind or value.dtype.itemsize != p.size:
                    raise self._refuse(
                        p,
                        f"expected a {p.size}-byte {_KINDS[p.kind]}, got {desc}: "
                        f"{value.dtype.itemsize}-byte {_KINDS[kind] if kind is not None else '?'}",
                    )
            buf = ctypes.create_string_buffer(value.tobytes(), max(value.nbytes, 1))
            buffers.append(buf)
        argv = (ctypes.c_void_p * max(len(buffers), 1))(
            *[ctypes.cast(b, ctypes.c_void_p) for b in buffers]
        )
        return Packed(argv, buffers, keep)

    def run(self, grid: tuple, block: tuple, shared_mem: int, packed: Packed) -> None:
        """Execute the launch now; raise ``LaunchError`` on a bad configuration or a fault."""
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        for what, d, lim in (
            ("grid", grid, (2**31 - 1, 65535, 65535)),
            ("block", block, (1024, 1024, 64)),
        ):
            for axis, v, top in zip("xyz", d, lim, strict=True):
                if not 1 <= v <= top:
                    raise LaunchError(
                        f"{self.name}: {what} dimension {axis} = {v} (must be 1..{top}): "
                        "cuLaunchKernel returns CUDA_ERROR_INVALID_VALUE"
                    )
        if block[0] * block[1] * block[2] > 1024:
            raise LaunchError(f"{self.name}: block {block} has more than 1024 threads")
        if shared_mem:
            raise LaunchError(f"{self.name}: dynamic shared memory is not emulated")
        from . import memory

        memory.check_guards()  # damage from outside a kernel is not this launch's
        err = ctypes.create_string_buffer(1024)
        with _launch_lock:
            _state["seed"] += 1
            rc = self.module.lib.gpugd_emu_launch(
                self.index,
                (ctypes.c_uint * 3)(*grid),
                (ctypes.c_uint * 3)(*block),
                ctypes.cast(packed.argv, ctypes.c_void_p),
                ORDERS[_state["order"]],
                _state["seed"],
                err,
                len(err),
            )
        launches[self.name] += 1
        if rc:
            msg = f"{self.name} <<<{grid}, {block}>>>: {err.value.decode(errors='replace')}"
            if rc == 2:
                near = memory.describe(int(self.module.lib.gpugd_emu_fault_address()))
                msg += f" ({near})" if near else " (not in or near any live allocation)"
            raise LaunchError(msg)
        damaged = memory.check_guards()
        if damaged:
            raise LaunchError(f"{self.name}: wrote outside its arrays: " + "; ".join(damaged))


def _dims(d: Any, what: str) -> tuple[int, int, int]:
    t = (d,) if isinstance(d, int | np.integer) else tuple(d)
    if not 1 <= len(t) <= 3:
        raise LaunchError(f"{what}: expected 1 to 3 dimensions, got {d!r}")
    return tuple(int(v) for v in t) + (1,) * (3 - len(t))
