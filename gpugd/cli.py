"""The ``gpugd`` command: ``gpugd train``, ``gpugd bench`` and ``gpugd info``."""

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
        suite.harness.run_suites(
            suite.SUITES,
            suite.ceilings,
            be,
            suite=args.suite,
            quick=args.quick,
            numel=args.numel,
            json_path=args.json,
            plot_path=args.plot,
        )
    except ValueError as exc:
        print(f"gpugd bench: {exc}", file=sys.stderr)
        return 2
    return 0


def _world_size() -> int:
    """Ranks of the job this process was started in (mpiexec/srun set these), else 1."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def _ints(text: str) -> tuple[int, ...]:
    """``--hidden``: comma-separated widths ≥ 1; an empty item (``64,,64``) is refused."""
    items = text.replace(" ", "").split(",")
    try:
        out = tuple(int(t) for t in items)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths such as 64,64, got {text!r}"
        ) from None
    if min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected widths ≥ 1, got {text!r}")
    return out


def _positive_int(text: str) -> int:
    """An integer ≥ 1 (``--epochs 0`` is refused, not read as the default)."""
    try:
        val = int(text)
    except ValueError:
        val = 0
    if val < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}")
    return val


def _as_flag(message: str) -> str:
    """A TrainConfig message names its field (``val_fraction: ...``); on the command line
    name the flag that sets it (``--val-fraction: ...``)."""
    import dataclasses

    from .train import TrainConfig

    field, sep, rest = message.partition(": ")
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}
    return f"--{field.replace('_', '-')}: {rest}" if sep and field in names else message


def _add_train_args(t: argparse.ArgumentParser) -> None:
    from .nn import ACTIVATIONS, INITIALIZERS
    from .train import GD_MODES, OPTIMIZERS, SCHEDULES, TrainConfig

    d = TrainConfig()
    t.add_argument(
        "--preset",
        choices=("default", "vanishing"),
        default="default",
        help="vanishing: the notes' 9-layer sigmoid network on two moons beside "
        "ReLU/He, batch norm, Adam and residual variants",
    )
    t.add_argument(
        "--data",
        default=d.data,
        help="moons | spirals | circles | a .npz (X, y) or .csv (label last) file",
    )
    t.add_argument(
        "--n-samples",
        type=_positive_int,
        default=d.n_samples,
        help="examples to generate (embedded data sets)",
    )
    t.add_argument("--noise", type=float, default=d.noise, help="noise of the generator")
    t.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of the examples held out for validation, in [0, 1)",
    )
    t.add_argument(
        "--no-standardize",
        dest="standardize",
        action="store_false",
        help="keep the features as they are (default: train-set mean 0, std 1)",
    )
    t.add_argument("--hidden", type=_ints, default=d.hidden, help="hidden widths, e.g. 64,64")
    t.add_argument(
        "--activation", choices=ACTIVATIONS, default=d.activation, help="hidden activation"
    )
    t.add_argument("--init", choices=INITIALIZERS, default=d.init, help="weight initialization")
    t.add_argument(
        "--batch-norm", action="store_true", help="batch normalization after each hidden Dense"
    )
    t.add_argument("--dropout", type=float, default=d.dropout, help="drop probability")
    t.add_argument(
        "--residual", action="store_true", help="x + layer(x) around hidden layers of equal width"
    )
    t.add_argument(
        "--optimizer", choices=tuple(OPTIMIZERS), default=d.optimizer, help="gpugd.optim class"
    )
    t.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: 0.1 sgd, 0.05 adagrad, 1e-3 rmsprop/lion, "
        "1e-2 adam/adamw/nadam)",
    )
    t.add_argument(
        "--state-bits",
        type=int,
        choices=(32, 8),
        default=d.state_bits,
        help="optimizer state precision: 8 = blockwise 8-bit states (codes + one float32 "
        "absmax per 2048 elements; tensors under 4096 elements stay float32); float32 "
        "parameters, not nadam or rmsprop with momentum",
    )
    t.add_argument("--momentum", type=float, default=d.momentum, help="sgd, rmsprop")
    t.add_argument("--nesterov", action="store_true", help="sgd with momentum")
    t.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help="the optimizer's weight_decay (L2 in the gradient; decoupled for adamw)",
    )
    t.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=d.schedule,
        help="learning-rate schedule, stepped once per epoch",
    )
    t.add_argument(
        "--gd",
        choices=GD_MODES,
        default=d.gd,
        help="batch: whole training set per step; sgd: one example; minibatch",
    )
    t.add_argument(
        "--batch-size", type=_positive_int, default=d.batch_size, help="with --gd minibatch"
    )
    t.add_argument("--epochs", type=_positive_int, default=None, help="default 50 (vanishing: 100)")
    t.add_argument(
        "--patience",
        type=_positive_int,
        default=None,
        help="early stopping after this many epochs without a better val loss",
    )
    t.add_argument(
        "--no-restore-best",
        dest="restore_best",
        action="store_false",
        help="with --patience: keep the last weights, not the best ones",
    )
    t.add_argument("--max-grad-norm", type=float, default=None, help="global-norm clipping")
    t.add_argument("--clip-value", type=float, default=None, help="elementwise clipping")
    t.add_argument("--l1", type=float, default=d.l1, help="L1 penalty on Dense weights")
    t.add_argument("--l2", type=float, default=d.l2, help="L2 penalty on Dense weights")
    t.add_argument("--seed", type=int, default=None, help="default 0 (vanishing: 42)")
    t.add_argument(
        "--dtype", choices=("float32", "float64"), default=d.dtype, help="parameter dtype"
    )
    t.add_argument(
        "--monitor-every",
        type=_positive_int,
        default=d.monitor_every,
        help="record gradient health every k-th step",
    )
    t.add_argument(
        "--backend",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help=f"default: ${BACKEND_ENV} or auto",
    )
    t.add_argument(
        "--run-dir",
        default=None,
        help="where checkpoints, metrics and plots go (default runs/<time>)",
    )
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a --run-dir that holds a previous run (its files are replaced)",
    )
    t.add_argument("--no-plots", dest="plots", action="store_false", help="write no PNG plots")
    t.add_argument("--quiet", action="store_true", help="no progress output")


def _train(args: argparse.Namespace) -> int:
    import time

    from . import train as tr

    try:
        be = get_backend(args.backend)
    except (BackendUnavailableError, ValueError) as exc:
        print(f"gpugd train: {exc}", file=sys.stderr)
        return 2
    if args.resume and args.run_dir is None:
        print("gpugd train: --resume needs --run-dir (the run to continue)", file=sys.stderr)
        return 2
    if args.resume and args.overwrite:
        print("gpugd train: --resume and --overwrite exclude each other", file=sys.stderr)
        return 2
    run_dir = args.run_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        print(
            f"gpugd train: --run-dir: expected a directory, {run_dir!r} is a file", file=sys.stderr
        )
        return 2
    progress = None if args.quiet else sys.stderr
    if args.preset == "vanishing":
        from . import vanishing

        try:
            res = vanishing.experiment(
                epochs=100 if args.epochs is None else args.epochs,
                seed=42 if args.seed is None else args.seed,
                backend=be.name,
                dtype=args.dtype,
                run_dir=run_dir,
                progress=progress,
            )
        except ValueError as exc:
            print(f"gpugd train: {exc}", file=sys.stderr)
            return 2
        print(vanishing.table(res))
        print(
            f"\nwritten: {run_dir}/vanishing.json"
            + (f", {res['plot']}" if res.get("plot") else " (no plot: pip install matplotlib)")
        )
        return 0
    cfg = tr.TrainConfig(
        data=args.data,
        n_samples=args.n_samples,
        noise=args.noise,
        val_fraction=args.val_fraction,
        standardize=args.standardize,
        hidden=args.hidden,
        activation=args.activation,
        init=args.init,
        batch_norm=args.batch_norm,
        dropout=args.dropout,
        residual=args.residual,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        gd=args.gd,
        batch_size=args.batch_size,
        epochs=50 if args.epochs is None else args.epochs,
        patience=args.patience,
        restore_best=args.restore_best,
        max_grad_norm=args.max_grad_norm,
        clip_value=args.clip_value,
        l1=args.l1,
        l2=args.l2,
        seed=0 if args.seed is None else args.seed,
        dtype=args.dtype,
        monitor_every=args.monitor_every,
        state_bits=args.state_bits,
    )
    comm = None
    if _world_size() > 1:
        from . import parallel

        comm = parallel.init(nccl=be.name == "cuda")
    try:
        res = tr.run(
            cfg,
            run_dir,
            resume=args.resume,
            overwrite=args.overwrite,
            backend=be.name,
            progress=progress,
            comm=comm,
            plots=args.plots,
        )
    except tr.RunDirError as exc:
        if exc.found:
            exc = ValueError(
                f"--run-dir {run_dir} already holds a run ({', '.join(exc.found)}): add "
                "--resume to continue it, or --overwrite to start over"
            )
        return _refused(f"gpugd train: {exc}", comm)
    except (ValueError, TypeError) as exc:  # bad configuration, data or checkpoint
        return _refused(f"gpugd train: {_as_flag(str(exc))}", comm)
    except tr.TrainingInterrupted as exc:
        where = (
            f"; {exc.run_dir} holds epoch {exc.epoch}: continue it with the same flags and --resume"
            if exc.run_dir is not None and exc.epoch
            else ""
        )
        print(f"gpugd train: interrupted{where}", file=sys.stderr)
        return 130
    if comm is None or comm.rank == 0:
        print(tr.summary_table(res))
        if args.plots and not res.get("plots"):
            print("(no plots: pip install matplotlib)")
    return 0


def _refused(message: str, comm: Any) -> int:
    """Print ``message``; exit status 2. Under more than one MPI rank the other ranks may
    already wait in a collective for this one (rank 0 alone checks the run directory):
    abort the whole job now (``MPI_Abort`` 2, through the parallel layer's abort path)
    rather than leave them to the collective deadline."""
    print(message, file=sys.stderr, flush=True)
    if comm is not None and comm.size > 1:
        comm.abort("gpugd train refused its configuration", 2)
    return 2


def _kernel_table(args: Any) -> int:
    import json

    from . import _kernels, kernel_report

    families = _kernels.kernel_sources()
    for f in args.family or []:
        if f not in families:
            raise SystemExit(
                f"gpugd info --kernels: --family: expected one of {sorted(families)}, got {f!r}"
            )
    try:
        stats = kernel_report.report(args.arch or ["sm_90"], args.family)
    except kernel_report.ToolUnavailableError as exc:
        raise SystemExit(f"gpugd info --kernels: {exc}") from None
    for tool, where in kernel_report.tool_versions().items():
        print(f"{tool}: {where}")
    print(kernel_report.format_table(stats))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(kernel_report.as_json(stats), f, indent=1)
    return 0


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``gpugd`` parser and its commands' parsers; none accepts abbreviated flags
    (``--epoch`` is not ``--epochs``)."""
    p = argparse.ArgumentParser(prog="gpugd", description=__doc__, allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"gpugd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{train,bench,info}")
    t = sub.add_parser(
        "train",
        help="train an MLP on gpugd's kernels (default: two moons, under a minute)",
        description="Train an MLP on gpugd's kernels; writes checkpoints, metrics.json, "
        "gradients.csv and plots into --run-dir. Ctrl-C stops after the last whole "
        "checkpoint (exit 130); --resume continues.",
        allow_abbrev=False,
    )
    _add_train_args(t)
    i = sub.add_parser(
        "info",
        help="backend, device, versions, threads, NVRTC and MPI availability",
        description="What gpugd sees: backend, device, versions, threads, NVRTC, MPI; "
        "--kernels: the static table of the CUDA kernels.",
        allow_abbrev=False,
    )
    i.add_argument(
        "--kernels",
        action="store_true",
        help="the static table of the CUDA kernels (ptxas + SASS, no GPU needed): registers, "
        "local memory, occupancy, access widths, main-loop instructions and bytes in flight",
    )
    i.add_argument(
        "--arch",
        action="append",
        choices=("sm_80", "sm_90"),
        help="with --kernels: architecture (repeatable; default sm_90)",
    )
    i.add_argument(
        "--family", action="append", help="with --kernels: kernels/<FAMILY>.cu only (repeatable)"
    )
    i.add_argument("--json", metavar="PATH", help="with --kernels: also write the rows as JSON")
    b = sub.add_parser(
        "bench",
        help="kernel throughput against the measured bandwidth ceilings",
        description="Kernel throughput against ceilings measured in the same run, peers "
        "beside; one table per suite (methodology: benchmarks/README.md).",
        allow_abbrev=False,
    )
    b.add_argument(
        "--backend",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help=f"default: ${BACKEND_ENV} or auto",
    )
    b.add_argument("--suite", default="all", help="suite to run (default all)")
    b.add_argument("--quick", action="store_true", help="fewer repeats and dtypes (a few minutes)")
    b.add_argument(
        "--numel",
        type=_positive_int,
        default=None,
        help="elements per array (default 2^25 on the CPU, 2^28 on the GPU)",
    )
    b.add_argument("--json", metavar="PATH", default=None, help="write rows as JSON to PATH")
    b.add_argument(
        "--plot",
        metavar="PATH",
        default=None,
        help="draw each suite's rows as %% of their ceiling, peers beside, into PATH (PNG; "
        "needs matplotlib: pip install 'gpugd[plot]')",
    )
    return p, {"train": t, "info": i, "bench": b}


def main(argv: list[str] | None = None) -> int:
    """``gpugd ...``: the exit status (0 ok, 2 bad input, 130 interrupted by Ctrl-C)."""
    p, commands = _parser()
    args, extra = p.parse_known_args(argv)
    if extra:  # named before "missing command": gpugd --nope is about --nope
        commands.get(args.command, p).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        p.error("expected a command: train, bench or info (gpugd COMMAND --help)")
    try:
        if args.command == "info":
            if args.kernels:
                return _kernel_table(args)
            if args.arch or args.family or args.json:
                commands["info"].error("--arch, --family and --json go with --kernels")
            print("\n".join(info_lines()))
            return 0
        if args.command == "train":
            return _train(args)
        return _bench(args)
    except KeyboardInterrupt:
        print(f"gpugd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
