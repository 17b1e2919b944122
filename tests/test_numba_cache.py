"""A warm Numba cache never crashes a later process.

Numba registers the threading layer's symbols (``get_thread_id`` among them) only when
the layer is launched, which compiling a parallel function does but loading one from the
cache does not. A serial helper that calls ``get_thread_id`` and was cached by one process
(for the float32 master rows of a bfloat16 update) is linked into the next process's fresh
compilation of another caller (the float32 update) before any thread exists, and LLVM
aborts the process: "LLVM ERROR: Symbol not found: get_thread_id". Each step here is its
own process over one fresh cache directory, in the order that crashed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

_STEP = textwrap.dedent(
    """
    import sys
    import ml_dtypes
    import numpy as np
    from gpugd import ops
    from gpugd.ops.optim import adam_kernel

    kind, stats = sys.argv[1], sys.argv[2] == "stats"
    shapes = [(10,), (300,), (7, 5)]
    dt = ml_dtypes.bfloat16 if kind == "bf16-master" else np.float32
    p = [np.full(s, 0.5, dt) for s in shapes]
    g = [np.full(s, 0.25, dt) for s in shapes]
    m = [np.zeros(s, np.float32) for s in shapes]
    v = [np.zeros(s, np.float32) for s in shapes]
    master = [np.full(s, 0.5, np.float32) for s in shapes] if kind == "bf16-master" else None
    if stats:  # the monitor's path: per-tensor update statistics in the same pass
        k = adam_kernel(lr=1e-3, step=1)
        k.launch(k.tensors(p, g, {"exp_avg": m, "exp_avg_sq": v}, master), stats=True)
    else:
        ops.adam_(p, g, m, v, lr=1e-3, step=1, master=master)
    print("done", kind, sys.argv[2])
    """
)


@pytest.mark.parametrize(
    "order",
    [
        [("bf16-master", "plain"), ("float32", "plain")],
        [("bf16-master", "plain"), ("float32", "stats")],
        [("float32", "stats"), ("bf16-master", "plain"), ("float32", "plain")],
    ],
    ids=["master-then-fp32", "master-then-fp32-stats", "stats-master-fp32"],
)
def test_each_process_compiles_beside_what_the_previous_ones_cached(tmp_path, order):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    for kind, stats in order:
        out = subprocess.run(
            [sys.executable, "-c", _STEP, kind, stats],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, (
            f"{kind} {stats} after {order}: rc {out.returncode}\n{out.stderr[-2000:]}"
        )
        assert f"done {kind} {stats}" in out.stdout
