"""NCCL is not emulated: importing ``cupy.cuda.nccl`` from the stand-in raises ImportError,
as a CuPy installed without NCCL does, and gpugd's multi-rank code takes its MPI path."""

raise ImportError(
    "cupy.cuda.nccl: NCCL is not emulated by the gpugd CuPy stand-in (tests/cudaemu/cupy)"
)
