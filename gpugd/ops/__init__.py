"""Public functional ops. In-place ops end with ``_``; every op infers its backend from
its array arguments."""

from .vector import axpy_, scale_, sum_of_squares

__all__ = ["axpy_", "scale_", "sum_of_squares"]
