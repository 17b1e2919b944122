"""The ``gpugd`` command: ``gpugd info`` and ``gpugd bench``."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
from typing import Any

import numpy as np

from . import __version__
from .backend import BACKEND_ENV, BackendUnavailableError, get_backend


def _load_suite():
    """The benchmark suite: ``gpugd.benchmarks`` in a wheel, ``benchmarks`` in a checkout."""
    try:
        return importlib.import_module("gpugd.benchmarks")
    except ModuleNotFoundError:
        pass
    try:
        return importlib.import_module("benchmarks")
    except ModuleNotFoundError as exc:
        raise SystemExit(
            "gpugd bench: the benchmark suite is not installed with this package "
            "(expected gpugd/benchmarks in the wheel, or benchmarks/ in a checkout)"
        ) from exc


def info_lines() -> list[str]:
    """What ``gpugd info`` prints: backend, device, versions, threads, NVRTC, MPI."""
    lines = [f"gpugd {__version__}", f"python {platform.python_version()}  numpy {np.__version__}"]
    try:
        import numba

        lines.append(
            f"numba {numba.__version__}  threads {numba.get_num_threads()} "
            f"(threading layer: {numba.config.THREADING_LAYER})"
        )
    except ImportError:
        lines.append("numba: not installed")
    choice = os.environ.get(BACKEND_ENV, "auto")
    try:
        be = get_backend()
        lines.append(f"backend {be.name} ({BACKEND_ENV}={choice})  device: {be.device_name}")
    except (BackendUnavailableError, ValueError) as exc:
        lines.append(f"backend: ERROR ({BACKEND_ENV}={choice}): {exc}")
        be = None
    if be is None or be.name != "cuda":
        try:
            get_backend("cuda")
        except BackendUnavailableError as exc:
            lines.append(f"cuda: {exc}")
    else:
        import cupy

        rt = cupy.cuda.runtime
        lines.append(
            f"cupy {cupy.__version__}  CUDA runtime {rt.runtimeGetVersion()}  "
            f"driver {rt.driverGetVersion()}"
        )
    from . import _kernels

    try:
        lines.append(
            f"kernel sources: {_kernels.kernel_dir()} ({', '.join(_kernels.kernel_sources())})"
        )
    except FileNotFoundError as exc:
        lines.append(f"kernel sources: ERROR {exc}")
    from . import _nvrtc

    try:
        major, minor = _nvrtc.nvrtc_version()
        lines.append(f"nvrtc {major}.{minor}: available (compile check runs without a GPU)")
    except _nvrtc.NvrtcUnavailableError as exc:
        lines.append(f"nvrtc: unavailable ({exc})")
    try:
        from mpi4py import MPI

        lines.append(f"mpi: {MPI.Get_library_version().splitlines()[0].strip()}")
    except ImportError:
        lines.append("mpi: mpi4py not installed (pip install 'gpugd[mpi]')")
    except Exception as exc:  # an installed but broken MPI library
        lines.append(f"mpi: mpi4py installed but MPI failed to load ({exc})")
    return lines


def _bench(args: argparse.Namespace) -> int:
    try:
        be = get_backend(args.backend)
    except (BackendUnavailableError, ValueError) as exc:
        print(f"gpugd bench: {exc}", file=sys.stderr)
        return 2
    suite = _load_suite()
    try:
        suite.run(be, suite=args.suite, quick=args.quick, numel=args.numel, json_path=args.json)
    except ValueError as exc:
        print(f"gpugd bench: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpugd", description=__doc__)
    p.add_argument("--version", action="version", version=f"gpugd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="backend, device, versions, threads, NVRTC and MPI availability")
    b = sub.add_parser("bench", help="kernel throughput against the measured bandwidth ceilings")
    b.add_argument(
        "--backend",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help=f"default: ${BACKEND_ENV} or auto",
    )
    b.add_argument("--suite", default="all", help="suite to run (default all)")
    b.add_argument("--quick", action="store_true", help="fewer repeats and dtypes (under a minute)")
    b.add_argument(
        "--numel",
        type=int,
        default=None,
        help="elements per array (default 2^25 on the CPU, 2^28 on the GPU)",
    )
    b.add_argument("--json", metavar="PATH", default=None, help="write rows as JSON to PATH")
    args: Any = p.parse_args(argv)
    if args.command == "info":
        print("\n".join(info_lines()))
        return 0
    return _bench(args)


if __name__ == "__main__":
    sys.exit(main())
