"""A static performance report of the CUDA kernels, read without a GPU.

Every ``kernels/*.cu`` is compiled as ``gpugd._cuda`` compiles it (NVRTC, ``NVRTC_OPTIONS``),
assembled by ``ptxas`` for a real architecture and disassembled by ``cuobjdump``. For each
kernel the report gives what decides its speed before it ever runs:

- registers, stack frame (local memory), spills and static shared memory (``ptxas -v``);
- resident blocks per multiprocessor at the launch's 256 threads, from the occupancy rules
  of the architecture (register file, warps, blocks, shared memory), and the occupancy;
- global accesses by width (``LDG``/``STG`` of 1…16 bytes) and local ones (``LDL``/``STL``);
- the main loop (the innermost loop with the widest global accesses and the most bytes;
  a vectorized kernel's pack loop, not its scalar tail): its SASS
  instructions, the bytes it loads and stores per iteration, the loads issued before the
  first use of a loaded value (bytes in flight per thread), and from these the
  instructions per element and the bytes in flight per multiprocessor.

The tools come from the ``nvidia-cuda-nvcc-cu12`` (ptxas) and ``nvidia-cuda-cuobjdump`` +
``nvidia-cuda-nvdisasm`` wheels of the ``test`` extra, else from ``$GPUGD_PTXAS`` /
``$GPUGD_CUOBJDUMP``, else from ``PATH``. Results are cached on disk by a hash of the
source, the architecture, NVRTC's options and the tools' ``--version`` output
(``$GPUGD_KERNEL_REPORT_CACHE``, default ``~/.cache/gpugd-kernel-report``).
``gpugd info --kernels`` prints the table.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import operator
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ._kernels import NVRTC_OPTIONS, kernel_sources, resolved_source

THREADS = 256  # threads per block of every gpugd launch (gpugd._cuda.THREADS)


@dataclasses.dataclass(frozen=True)
class Arch:
    """The occupancy rules of one architecture (CUDA occupancy calculator's constants)."""

    name: str
    gpu: str  # the GPU the report's figures are for
    sms: int
    regs_per_sm: int = 65536
    reg_unit: int = 256  # registers are allocated per warp in units of this many
    subpartitions: int = 4  # the register file is split among 4 schedulers
    max_warps: int = 64
    max_blocks: int = 32
    smem_per_sm: int = 233472  # bytes usable by blocks (228 KiB on sm_90)
    smem_reserved: int = 1024  # per block, reserved by the system
    smem_unit: int = 128
    smem_per_block: int = 232448  # the most one block may use (227 KiB on sm_90, opt-in)


ARCHS = {
    "sm_80": Arch("sm_80", "A100", sms=108, smem_per_sm=167936, smem_per_block=166912),
    "sm_90": Arch("sm_90", "H100/H200", sms=132),
}


def _count(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` as an int in lo..hi (any integer type but bool), else TypeError/ValueError."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name}: expected {lo}..{hi}, got {value}")
    return value


def blocks_per_sm(arch: Arch, registers: int, smem: int, threads: int = THREADS) -> int:
    """Resident blocks per multiprocessor for a kernel of ``registers`` per thread and
    ``smem`` bytes of shared memory (static + dynamic), launched with ``threads`` per block,
    as ``cudaOccupancy.h`` computes it: min over

    - warps: max_warps // w, with w = ceil(threads / 32);
    - registers: r = ceil(registers·32 / reg_unit)·reg_unit per warp, allocated within each
      of the 4 sub-partitions: ((regs_per_sm / 4) // r)·4 // w (0 if r·roundup(w, 4) or
      r·w exceeds the 64 K a block may hold);
    - shared memory: smem_per_sm // roundup(smem + 1 KiB reserved, 128) (0 above the most
      one block may use);
    - blocks: max_blocks."""
    if not isinstance(arch, Arch):
        raise TypeError(f"arch: expected a kernel_report.Arch, got {type(arch).__name__}")
    registers = _count("registers", registers, 0, 255)
    smem = _count("smem", smem, 0, 1 << 40)
    threads = _count("threads", threads, 1, 1024)
    warps = -(-threads // 32)
    by_warps = arch.max_warps // warps
    regs_per_warp = -(-max(registers, 1) * 32 // arch.reg_unit) * arch.reg_unit
    per_block_limit = arch.regs_per_sm  # regsPerBlock: 64 K on sm_80 and sm_90
    assumed = regs_per_warp * -(-warps // arch.subpartitions) * arch.subpartitions
    if max(assumed, regs_per_warp * warps) > per_block_limit:
        return 0
    warps_per_sub = (arch.regs_per_sm // arch.subpartitions) // regs_per_warp
    by_regs = (warps_per_sub * arch.subpartitions) // warps
    if smem > arch.smem_per_block:
        return 0
    need = -(-(smem + arch.smem_reserved) // arch.smem_unit) * arch.smem_unit
    by_smem = arch.smem_per_sm // need
    return max(0, min(arch.max_blocks, by_warps, by_regs, by_smem))


@dataclasses.dataclass(frozen=True)
class Loop:
    """The main loop of a kernel, one iteration: SASS instructions, global bytes loaded and
    stored, and the bytes loaded before the first instruction that uses a loaded value."""

    instructions: int
    load_bytes: int
    store_bytes: int
    in_flight: int
    load_widths: tuple[int, ...]  # the distinct global load widths in the loop, bytes
    store_widths: tuple[int, ...]
    wide_bytes: int  # of load_bytes + store_bytes, those moved by 128-bit accesses

    @property
    def wide_share(self) -> float:
        """The share of the loop's global bytes moved 16 bytes at a time."""
        total = self.load_bytes + self.store_bytes
        return self.wide_bytes / total if total else 0.0


@dataclasses.dataclass(frozen=True)
class KernelStats:
    """The static figures of one kernel for one architecture."""

    name: str
    family: str
    arch: str
    registers: int
    stack: int
    spill_stores: int
    spill_loads: int
    smem: int
    loads: dict[int, int]  # global load width (bytes) → count in the whole kernel
    stores: dict[int, int]
    local_accesses: int  # LDL + STL instructions
    loop: Loop | None
    loops: tuple[Loop, ...] = ()  # every innermost loop moving global bytes

    @property
    def blocks_per_sm(self) -> int:
        return blocks_per_sm(ARCHS[self.arch], self.registers, self.smem)

    @property
    def occupancy(self) -> float:
        """Resident warps over the architecture's maximum."""
        a = ARCHS[self.arch]
        return self.blocks_per_sm * (THREADS // 32) / a.max_warps

    @property
    def in_flight_per_sm(self) -> int | None:
        """Bytes of global loads in flight per multiprocessor in the main loop."""
        if self.loop is None:
            return None
        return self.loop.in_flight * THREADS * self.blocks_per_sm

    @property
    def bytes_per_element(self) -> float | None:
        return bytes_per_element(self.name)

    @property
    def instructions_per_element(self) -> float | None:
        """Main-loop instructions per element: instructions × (bytes per element) / (global
        bytes per iteration); None where the kernel's traffic per element is not fixed."""
        b = self.bytes_per_element
        if self.loop is None or b is None or self.loop.load_bytes + self.loop.store_bytes == 0:
            return None
        return self.loop.instructions * b / (self.loop.load_bytes + self.loop.store_bytes)


# ---- traffic per element (fewest bytes, default configuration), for instructions per element

_SIZE = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2}
# rule → (arrays read, arrays written) per element in the default configuration: SGD with
# momentum (p, g, buf), Adagrad (p, g, sum), RMSprop (p, g, sq), Adam/NAdam (p, g, m, v),
# Lion (p, g, m)
_RULE_RW = {
    "sgd": (3, 2),
    "adagrad": (3, 2),
    "rmsprop": (3, 2),
    "adam": (4, 3),
    "nadam": (4, 3),
    "lion": (3, 2),
}
_ELEMENTWISE = {  # kernel (without its dtype suffix) → element-sized arrays read, written
    "gpugd_activations_forward": (1, 1),
    "gpugd_activations_backward": (2, 1),
    "gpugd_vector_axpy": (2, 1),
    "gpugd_vector_scale": (1, 1),
    "gpugd_vector_sum_of_squares_partial": (1, 0),
    "gpugd_vector_scale_sum_of_squares_partial": (1, 1),
    "gpugd_dropout_apply": (1, 1),
    "gpugd_reduce_stats_partial": (1, 0),
    "gpugd_batchnorm_stats_partial": (1, 0),
    "gpugd_batchnorm_sums_partial": (2, 0),
    "gpugd_batchnorm_affine": (1, 1),
}
# 8-bit-state rules: (states, whether p is read) — each state moves a code read and written
# (2 B) and a float32 absmax per block of B elements read and written (8/B B)
_OPTIM8_STATES = {"adam": 2, "momentum": 1, "lion": 1, "rmsprop": 1, "adagrad": 1}
_OPTIM8 = re.compile(
    r"^gpugd_optim8_(adam|momentum|lion|rmsprop|adagrad)_b(\d+)_(f32|f16p|bf16p)(_master)?$"
)
_SUFFIX = re.compile(r"^(gpugd_\w+?)_(f64|f32|f16|bf16)$")
_OPTIM = re.compile(
    r"^gpugd_optim_(sgd|adagrad|rmsprop|adam|nadam|lion)(?:_multi|_graph)?_(f64|f32)$"
)
_MIXED = re.compile(
    r"^gpugd_optim_(sgd|adagrad|rmsprop|adam|nadam|lion)_(?:multi|graph)_(f16|bf16)p_(f32|bf16)s"
    r"(_master)?$"
)


def bytes_per_element(name: str) -> float | None:
    """The fewest global bytes per element that kernel ``name`` moves in its default
    configuration, or None where that depends on the launch (e.g. average's input count)."""
    if name == "gpugd_dropout_mask":
        return 1.0
    m = _OPTIM.match(name)
    if m:
        r, w = _RULE_RW[m[1]]
        return float((r + w) * _SIZE[m[2]])
    m = _MIXED.match(name)
    if m:
        r, w = _RULE_RW[m[1]]
        p, s, states = _SIZE[m[2]], _SIZE[m[3]], r - 2
        master = 4 * 2 if m[4] else 0  # fp32 master weights, read and written
        reads_p = 0 if m[4] else p  # with a master copy the half p is written only
        return float(reads_p + p + p + 2 * states * s + master)  # (p read) g read, p written
    m = _OPTIM8.match(name)
    if m:  # p read and written, g read (or masters read and written, p written), the states
        p = 4.0 if m[3] == "f32" else 2.0
        params = p + p + (8.0 if m[4] else p)
        return params + _OPTIM8_STATES[m[1]] * (2.0 + 8.0 / int(m[2]))
    m = _SUFFIX.match(name)
    if m and m[1] in _ELEMENTWISE:
        r, w = _ELEMENTWISE[m[1]]
        return float((r + w) * _SIZE[m[2]])
    return None


# ---- the tools


class ToolUnavailableError(RuntimeError):
    """ptxas or cuobjdump/nvdisasm is not installed."""


def _wheel_bin(*parts: str) -> Path | None:
    try:
        import nvidia  # namespace package of the CUDA wheels
    except ImportError:
        return None
    for root in getattr(nvidia, "__path__", []):
        p = Path(root, *parts)
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def _tool(env: str, name: str, wheel_paths: Iterable[tuple[str, ...]], wheel: str) -> Path:
    given = os.environ.get(env)
    if given:
        if not Path(given).is_file():
            raise ToolUnavailableError(f"${env}={given}: no such file")
        return Path(given)
    for parts in wheel_paths:
        p = _wheel_bin(*parts)
        if p is not None:
            return p
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolUnavailableError(
        f"{name} was not found: install the test extra (`pip install 'gpugd[test]'`, which "
        f"brings {wheel}), or set ${env}"
    )


def ptxas() -> Path:
    """The ptxas binary: $GPUGD_PTXAS, the nvidia-cuda-nvcc wheel, or PATH."""
    return _tool(
        "GPUGD_PTXAS",
        "ptxas",
        [("cuda_nvcc", "bin", "ptxas"), ("cu13", "bin", "ptxas")],
        "nvidia-cuda-nvcc-cu12",
    )


def cuobjdump() -> Path:
    """The cuobjdump binary ($GPUGD_CUOBJDUMP, the wheel, or PATH); it needs nvdisasm beside
    it or on PATH."""
    return _tool(
        "GPUGD_CUOBJDUMP",
        "cuobjdump",
        [("cu13", "bin", "cuobjdump"), ("cuda_cuobjdump", "bin", "cuobjdump")],
        "nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm",
    )


@functools.cache
def _version_text(tool: Path) -> str:
    """All of ``tool --version``'s output (cached per path for the process)."""
    out = subprocess.run([str(tool), "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).strip()


def _version(tool: Path) -> str:
    """The last line of ``tool --version`` (its build), or "unknown"."""
    lines = [ln for ln in _version_text(tool).splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown"


def tool_versions() -> dict[str, str]:
    """Which ptxas and cuobjdump the report uses, with their versions."""
    return {
        "ptxas": f"{ptxas()} ({_version(ptxas())})",
        "cuobjdump": f"{cuobjdump()} ({_version(cuobjdump())})",
    }


def cache_key(source: str, arch: str, px: Path, cx: Path | None) -> str:
    """The report cache's key: the source, the architecture, NVRTC's options and what the
    tools say they are (``ptxas --version``, ``cuobjdump --version``; not where they are),
    so an upgraded tool at the same path recompiles and a copy elsewhere reuses the cache.
    ``cx`` None: a ptxas-only report (no SASS)."""
    tools = [_version_text(px), _version_text(cx) if cx is not None else "no-sass"]
    parts = [source, arch, *NVRTC_OPTIONS, *tools, "v2"]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


# ---- parsing ptxas -v and the SASS

_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_PROPS = re.compile(r"Function properties for (\w+)")
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> dict[str, dict[str, int]]:
    """Per entry kernel: registers, stack, spill_stores, spill_loads, smem (``ptxas -v``).

    A "Function properties for F" block (its stack and spill line) belongs to F, which may be
    a non-inlined callee printed inside or between entries: it is kept apart and only an
    entry's own block gives the entry's figures. "Used N registers" belongs to the entry
    whose "Compiling entry function" came last."""
    entries: dict[str, dict[str, int]] = {}
    props: dict[str, dict[str, int]] = {}
    entry = block = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            entry = block = m[1]
            entries[entry] = {"registers": 0, "smem": 0}
        elif m := _PROPS.search(line):
            block = m[1]
        elif (m := _STACK.search(line)) and block is not None:
            props[block] = {"stack": int(m[1]), "spill_stores": int(m[2])}
            props[block]["spill_loads"] = int(m[3])
        elif (m := _USED.search(line)) and entry is not None:
            s = _SMEM.search(line)
            entries[entry].update(registers=int(m[1]), smem=int(s[1]) if s else 0)
    zero = {"stack": 0, "spill_stores": 0, "spill_loads": 0}
    return {
        name: {"registers": e["registers"], **props.get(name, zero), "smem": e["smem"]}
        for name, e in entries.items()
    }


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_REG = re.compile(r"\bR(\d+)(?:\.64)?\b")
_WIDTH = {"128": 16, "64": 8, "U8": 1, "S8": 1, "U16": 2, "S16": 2}


def _width(op: str) -> int:
    for part in op.split(".")[1:]:
        if part in _WIDTH:
            return _WIDTH[part]
    return 4


def _regs(text: str, pair: bool = False) -> set[int]:
    """The registers an operand text names; ``R4.64`` (or any ``Rn`` with ``pair``) is the
    pair n, n + 1."""
    regs = set()
    for m in _REG.finditer(text):
        r = int(m[1])
        regs.add(r)
        if pair or m[0].endswith(".64"):
            regs.add(r + 1)
    return regs


@dataclasses.dataclass
class _Insn:
    addr: int
    op: str
    args: str

    @property
    def base(self) -> str:
        return self.op.split(".")[0]


_DOUBLE_OPS = {"DADD", "DMUL", "DFMA", "DSETP", "DSET", "DMNMX", "DMMA"}  # Rn means Rn:Rn+1
_WIDE_TYPES = {"F64", "S64", "U64"}
_TYPES = _WIDE_TYPES | {"F32", "F16", "S32", "U32", "S16", "U16"}
_CONVERT_OPS = {"F2F", "I2F", "F2I", "I2I"}
_MEMORY_OPS = {"STG", "ST", "RED", "ATOMG", "ATOM"}


def _span(text: str, n: int) -> set[int]:
    """The registers of an operand, each register ``Rk`` taken as Rk … Rk + n - 1."""
    return {r + j for r in _regs(text) for j in range(n)}


def _operand_regs(i: _Insn) -> set[int]:
    """Every register instruction ``i`` reads or writes, 64-bit operands as pairs: all of a
    double-precision op's (DADD R10, R4, R6 is R10:R11 = R4:R5 + R6:R7); IMAD.WIDE's
    destination and addend; a conversion's side whose type is 64-bit (F2F.F64.F32: the
    destination; one 64-bit type alone: both sides); a store's, RED's or ATOM's address
    (``[R2.64]``) and its data registers, as many as its width (STG.E.128 R4: R4…R7)."""
    ops = i.args.split(",")
    mods = set(i.op.split(".")[1:])
    if i.base in _MEMORY_OPS:
        n = max(_width(i.op), 8 if mods & _WIDE_TYPES else 4) // 4
        return {r for o in ops for r in (_regs(o) if "[" in o else _span(o, n))}
    wide: set[int] = set()
    if i.base in _DOUBLE_OPS:
        wide = set(range(len(ops)))
    elif i.base == "IMAD" and "WIDE" in mods:
        wide = {0, 3}
    elif i.base in _CONVERT_OPS and mods & _WIDE_TYPES:
        types = [m for m in i.op.split(".")[1:] if m in _TYPES]
        wide = set(range(len(ops)))
        if len(types) >= 2:  # destination type, then source type
            wide = {k for k in wide if types[min(k, 1)] in _WIDE_TYPES}
    return {r for k, o in enumerate(ops) for r in _regs(o, pair=k in wide)}


def parse_sass(text: str) -> dict[str, list[_Insn]]:
    """Instructions per function of a ``cuobjdump -sass`` listing."""
    out: dict[str, list[_Insn]] = {}
    cur: list[_Insn] | None = None
    for line in text.splitlines():
        m = re.search(r"Function : (\w+)", line)
        if m:
            cur = out.setdefault(m[1], [])
            continue
        m = _LINE.search(line)
        if m and cur is not None:
            cur.append(_Insn(int(m[1], 16), m[3], m[4]))
    return out


def _is_global_load(i: _Insn) -> bool:
    return i.base in ("LDG", "LD")


def _is_global_store(i: _Insn) -> bool:
    return i.base in ("STG", "ST", "RED", "ATOMG")


def _in_flight(body: list[_Insn]) -> int:
    """Bytes of global loads issued before the first instruction that touches a register a
    load is still filling: reads it (as data or as an address, of a store, RED or ATOM
    too), or writes it (the write waits for the load); 64-bit operands count as pairs."""
    pending: set[int] = set()
    total = 0
    for i in body:
        if _is_global_load(i):
            dest, _, addr = i.args.partition(",")
            w = _width(i.op)
            first = _regs(dest)
            filled = {r for f in first for r in range(f, f + max(1, w // 4))}
            if pending & (_regs(addr) | filled):
                return total
            total += w
            pending |= filled
        elif pending & _operand_regs(i):
            return total
    return total


def _backward_branches(insns: list[_Insn]) -> list[tuple[int, int]]:
    """(first, last) instruction indices of every loop: a branch back to an earlier address."""
    index = {i.addr: k for k, i in enumerate(insns)}
    loops = []
    for k, i in enumerate(insns):
        if i.base != "BRA":
            continue
        m = re.search(r"0x([0-9a-f]+)", i.args)
        if m and int(m[1], 16) <= i.addr and int(m[1], 16) in index:
            loops.append((index[int(m[1], 16)], k))
    return loops


def inner_loops(insns: list[_Insn]) -> list[Loop]:
    """Every innermost loop that moves global bytes, in address order."""
    loops = _backward_branches(insns)
    out = []
    for a, b in loops:
        if any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops):
            continue
        loop = _loop(insns[a : b + 1])
        if loop is not None:
            out.append(loop)
    return out


def _loop(body: list[_Insn]) -> Loop | None:
    loads = [b for b in body if _is_global_load(b)]
    stores = [b for b in body if _is_global_store(b)]
    if not loads and not stores:
        return None
    return Loop(
        instructions=len(body),
        load_bytes=sum(_width(b.op) for b in loads),
        store_bytes=sum(_width(b.op) for b in stores),
        in_flight=_in_flight(body),
        load_widths=tuple(sorted({_width(b.op) for b in loads})),
        store_widths=tuple(sorted({_width(b.op) for b in stores})),
        wide_bytes=sum(16 for b in loads + stores if _width(b.op) == 16),
    )


def main_loop(insns: list[_Insn]) -> Loop | None:
    """The innermost loop (a backward branch and the code it jumps back over, holding no other
    loop) with the widest global accesses, then the most bytes moved by them, then the most
    loaded, then stored; among equals, the shortest. (A vectorized kernel's pack loop, not
    its tail; of several specializations, the widest.)"""

    def key(lp: Loop) -> tuple:
        widest = max((*lp.load_widths, *lp.store_widths))
        return (widest, lp.wide_bytes, lp.load_bytes, lp.store_bytes, -lp.instructions)

    loops = inner_loops(insns)
    return max(loops, key=key) if loops else None


def _kernel_stats(name: str, family: str, arch: str, info: dict, insns: list[_Insn]) -> KernelStats:
    loads: Counter = Counter()
    stores: Counter = Counter()
    local = 0
    for i in insns:
        if _is_global_load(i):
            loads[_width(i.op)] += 1
        elif i.base in ("STG", "ST"):
            stores[_width(i.op)] += 1
        elif i.base in ("LDL", "STL"):
            local += 1
    return KernelStats(
        name=name,
        family=family,
        arch=arch,
        registers=info["registers"],
        stack=info["stack"],
        spill_stores=info["spill_stores"],
        spill_loads=info["spill_loads"],
        smem=info["smem"],
        loads=dict(sorted(loads.items())),
        stores=dict(sorted(stores.items())),
        local_accesses=local,
        loop=main_loop(insns),
        loops=tuple(inner_loops(insns)),
    )


# ---- compiling, with a cache


def _cache_dir() -> Path:
    return Path(
        os.environ.get("GPUGD_KERNEL_REPORT_CACHE", Path.home() / ".cache" / "gpugd-kernel-report")
    )


def _run(cmd: list[str], what: str, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {r.returncode}):\n{r.stderr.strip()}")
    return r


def source_report(
    source: str, family: str, arch: str = "sm_90", *, sass: bool = True
) -> list[KernelStats]:
    """The figures of every kernel in ``source`` (a resolved kernels/*.cu text) for ``arch``.
    ``sass=False``: ptxas's figures only (registers, stack, spills, shared memory; no
    accesses, no loops), without cuobjdump/nvdisasm."""
    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {sorted(ARCHS)}, got {arch!r}")
    px = ptxas()
    cx = cuobjdump() if sass else None
    cached = _cache_dir() / f"{family}-{arch}-{cache_key(source, arch, px, cx)}.json"
    if cached.is_file():
        raw = json.loads(cached.read_text())
    else:
        from . import _nvrtc

        ptx = _nvrtc.compile_to_ptx(source, f"{family}.cu", "compute_" + arch[3:], ())
        with tempfile.TemporaryDirectory() as tmp:
            ptx_path, cubin = Path(tmp, f"{family}.ptx"), Path(tmp, f"{family}.cubin")
            ptx_path.write_text(ptx)
            log = _run(
                [str(px), f"-arch={arch}", "-v", "-o", str(cubin), str(ptx_path)], f"ptxas {family}"
            ).stderr
            listing = ""
            if cx is not None:
                env = dict(os.environ)
                env["PATH"] = f"{cx.parent}{os.pathsep}{env.get('PATH', '')}"
                listing = _run([str(cx), "-sass", str(cubin)], f"cuobjdump {family}", env).stdout
        raw = {"log": log, "sass": listing}
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, staged = tempfile.mkstemp(dir=cached.parent, suffix=".part")
        with os.fdopen(fd, "w") as f:
            json.dump(raw, f)
        os.replace(staged, cached)
    funcs = parse_sass(raw["sass"])
    return [
        _kernel_stats(name, family, arch, info, funcs.get(name, []))
        for name, info in sorted(parse_ptxas(raw["log"]).items())
    ]


def family_report(family: str, arch: str = "sm_90") -> list[KernelStats]:
    """The figures of every kernel of ``kernels/<family>.cu`` for ``arch``."""
    sources = kernel_sources()
    if family not in sources:
        raise ValueError(f"family: expected one of {sorted(sources)}, got {family!r}")
    return source_report(resolved_source(sources[family]), family, arch)


def report(
    archs: Iterable[str] = ("sm_90",), families: Iterable[str] | None = None
) -> list[KernelStats]:
    """The figures of every kernel of the given families (all by default) for each arch,
    two compilations at a time."""
    fams = list(kernel_sources()) if families is None else list(families)
    jobs = [(f, a) for a in archs for f in fams]
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        parts = list(pool.map(lambda fa: family_report(*fa), jobs))
    return [k for part in parts for k in part]


# ---- the table


def _widths(d: dict[int, int]) -> str:
    return " ".join(f"{w * 8}b×{n}" for w, n in sorted(d.items(), reverse=True)) or "-"


def format_table(stats: list[KernelStats]) -> str:
    """One line per kernel (see the README, "Reading the kernel table")."""
    head = (
        f"{'kernel':46} {'arch':5} {'regs':>4} {'stack':>5} {'spill':>5} {'smem':>5} "
        f"{'blk/SM':>6} {'occ':>4} {'loop insn':>9} {'insn/el':>7} {'ld/st B':>8} "
        f"{'in flight/thr':>13} {'KB/SM':>6} {'128b':>4}  global loads | stores"
    )
    lines = [head, "-" * len(head)]
    for k in stats:
        lp = k.loop
        ipe = k.instructions_per_element
        lines.append(
            f"{k.name:46} {k.arch:5} {k.registers:4d} {k.stack:5d} "
            f"{k.spill_stores + k.spill_loads:5d} {k.smem:5d} {k.blocks_per_sm:6d} "
            f"{k.occupancy:4.0%} {lp.instructions if lp else '-':>9} "
            f"{f'{ipe:.1f}' if ipe is not None else '-':>7} "
            f"{f'{lp.load_bytes}/{lp.store_bytes}' if lp else '-':>8} "
            f"{f'{lp.in_flight} B' if lp else '-':>13} "
            f"{f'{k.in_flight_per_sm / 1024:.0f}' if lp else '-':>6} "
            f"{f'{lp.wide_share:.0%}' if lp else '-':>4}  "
            f"{_widths(k.loads)} | {_widths(k.stores)}"
            + (f"  LOCAL×{k.local_accesses}" if k.local_accesses else "")
        )
    return "\n".join(lines)


def as_json(stats: list[KernelStats]) -> list[dict]:
    """The report as JSON-able rows, derived figures included."""
    rows = []
    for k in stats:
        row = dataclasses.asdict(k)
        row.update(
            blocks_per_sm=k.blocks_per_sm,
            occupancy=k.occupancy,
            in_flight_per_sm=k.in_flight_per_sm,
            bytes_per_element=k.bytes_per_element,
            instructions_per_element=k.instructions_per_element,
        )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="gpugd info --kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--arch", action="append", choices=sorted(ARCHS))
    ap.add_argument("--family", action="append", choices=sorted(kernel_sources()))
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    stats = report(args.arch or ["sm_90"], args.family)
    print(format_table(stats))
    if args.json:
        Path(args.json).write_text(json.dumps(as_json(stats), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
