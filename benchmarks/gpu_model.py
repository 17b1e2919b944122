"""The GPU performance model: what a kernel should take on an H200, before one runs it.

A memory-bound kernel cannot beat the time its fewest bytes take at the device's copy
bandwidth, and each launch in a dependent sequence costs a fixed latency on the GPU's
timeline::

    predicted_s = bytes / COPY_GBPS + launches · LAUNCH_S

``COPY_GBPS`` is the device-to-device copy an H200 of the kind lent to this project moved
(~4.3 TB/s, counting read + write); ``LAUNCH_S`` is an assumption (a short kernel's span on
the timeline, launch to end, in a stream of dependent launches) that the first GPU run
checks. ``gpugd bench --backend cuda`` prints, per row, the launches it counted for one
call (``gpugd._cuda.launch_count``), this prediction and measured / predicted; a second
prediction from the run's own measured copy ceiling goes in the JSON.

``python -m benchmarks.gpu_model`` writes the per-kernel table for the H200
(``benchmarks/predicted-h200.md``): for every kernel whose fewest bytes per element are
fixed (``gpugd.kernel_report.bytes_per_element``), at 2^16 … 2^28 elements, the predicted
time and bandwidth, the grid (one wave at most: 132 SMs × the kernel's resident blocks),
the grid-stride iterations per thread, and the bytes in flight per SM from the static
report — the expectation the first GPU session checks, not discovers.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from gpugd import _grid

COPY_GBPS = 4300.0  # H200 device-to-device copy, GB/s (read + write bytes over time)
LAUNCH_S = 4e-6  # per dependent kernel launch on the GPU timeline (assumed; checked on a GPU)
H200_SMS = 132
THREADS = _grid.THREADS
SIZES = (1 << 16, 1 << 20, 1 << 24, 1 << 28)
TABLE = Path(__file__).resolve().parent / "predicted-h200.md"


def predicted_s(nbytes: float, launches: int = 1, gbps: float = COPY_GBPS) -> float:
    """bytes / bandwidth + launches · LAUNCH_S, in seconds."""
    if nbytes < 0 or launches < 0 or not gbps > 0:
        raise ValueError(f"predicted_s: bytes {nbytes}, launches {launches}, gbps {gbps}")
    return nbytes / (gbps * 1e9) + launches * LAUNCH_S


def prediction(nbytes: int, launches: int, median_s: float, ceiling_gbps: float) -> dict:
    """The model's fields of one bench row: launches counted, the H200 prediction, measured
    over predicted, and the prediction at the run's own measured ceiling."""
    pred = predicted_s(nbytes, launches)
    return {
        "launches": int(launches),
        "predicted_s": pred,
        "measured_over_predicted": median_s / pred,
        "predicted_at_ceiling_s": predicted_s(nbytes, launches, ceiling_gbps),
    }


def kernel_rows(stats: list[Any], sizes: tuple[int, ...] = SIZES) -> list[dict[str, Any]]:
    """One row per (kernel, size) of the sm_90 kernels with a fixed traffic per element."""
    rows = []
    for k in stats:
        b = k.bytes_per_element
        if k.arch != "sm_90" or b is None:
            continue
        wave = H200_SMS * k.blocks_per_sm
        per_iter = None  # elements a thread handles per grid-stride iteration of the loop
        if k.loop is not None and k.loop.load_bytes + k.loop.store_bytes:
            per_iter = (k.loop.load_bytes + k.loop.store_bytes) / b
        for n in sizes:
            grid = _grid.kernel_blocks(k.name, n, wave)  # the library's own launch policy
            t = predicted_s(n * b, 1)
            rows.append(
                {
                    "kernel": k.name,
                    "numel": n,
                    "bytes": int(n * b),
                    "predicted_us": t * 1e6,
                    "predicted_gbps": n * b / t / 1e9,
                    "grid": grid,
                    "blocks_per_sm": k.blocks_per_sm,
                    "iterations_per_thread": (
                        math.ceil(n / (grid * THREADS * per_iter)) if per_iter and grid else None
                    ),
                    "in_flight_kb_per_sm": (
                        k.in_flight_per_sm / 1024 if k.in_flight_per_sm is not None else None
                    ),
                }
            )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown."""
    out = [
        "| kernel | elements | bytes | predicted µs | GB/s | grid | blocks/SM | "
        "iterations/thread | in flight KB/SM |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        it = r["iterations_per_thread"]
        fl = r["in_flight_kb_per_sm"]
        out.append(
            f"| {r['kernel']} | 2^{int(math.log2(r['numel']))} | {r['bytes']:,} | "
            f"{r['predicted_us']:.1f} | {r['predicted_gbps']:.0f} | {r['grid'] or '-'} | "
            f"{r['blocks_per_sm']} | {it if it is not None else '-'} | "
            f"{f'{fl:.0f}' if fl is not None else '-'} |"
        )
    return "\n".join(out)


def render() -> str:
    """The text of ``predicted-h200.md`` for the kernels as they are now."""
    from gpugd import kernel_report
    from gpugd.ops.optim import CUDA_CHUNK
    from gpugd.ops.reduce import CHUNK
    from gpugd.ops.vector import _SSQ_BLOCKS_MAX

    stats = kernel_report.report(["sm_90"])
    head = [
        "# Predicted H200 figures, per kernel and size",
        "",
        "Written by `python -m benchmarks.gpu_model` from the static report "
        "(`gpugd info --kernels`) without a GPU; the first GPU run checks it "
        "(`benchmarks/run_gpu.sh`, whose bench rows print measured / predicted).",
        "",
        f"Model: time = fewest bytes / {COPY_GBPS:.0f} GB/s (the H200's device-to-device "
        f"copy) + {LAUNCH_S * 1e6:.0f} µs per launch. Bytes per element are each kernel's "
        "default configuration (`gpugd.kernel_report.bytes_per_element`: SGD with momentum, "
        "Adam/NAdam without AMSGrad, …). Grid: the library's launch policy "
        "(`gpugd._grid.kernel_blocks`): blocks to cover the elements at "
        f"{_grid.PER_THREAD} per thread (the sums of squares' stage 1: "
        f"{_grid.SSQ_PER_THREAD}, at most {_SSQ_BLOCKS_MAX} blocks), a block per "
        f"chunk for the chunked kernels ({CHUNK:,} elements for `stats_partial`, "
        f"{CUDA_CHUNK:,} for the `_multi`/`_graph` optimizers), "
        f"at most one wave ({H200_SMS} SMs × the kernel's resident 256-thread blocks, from "
        "ptxas's registers). Iterations per thread: of the main loop, over the grid. In "
        "flight: bytes of loads issued before the first use, per thread × resident threads "
        "(an H200 SM needs ~26–36 KB to stream at full rate).",
        "",
        f"Tools: ptxas {kernel_report._version(kernel_report.ptxas())}. Batch norm's grid "
        "comes from its tiling of the shape (one block per tile), not a wave: shown as -.",
        "",
        "",
    ]
    return "\n".join(head) + format_rows(kernel_rows(stats)) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_model", description=__doc__)
    ap.add_argument("--out", type=Path, default=TABLE, help=f"Markdown table (default {TABLE})")
    args = ap.parse_args(argv)
    text = render()
    args.out.write_text(text)
    print(f"wrote {args.out} ({text.count(chr(10))} lines)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
