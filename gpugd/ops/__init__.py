"""Public functional ops. In-place ops end with ``_``; every op infers its backend from
its array arguments."""

from .optim import adagrad_, adam_, nadam_, rmsprop_, sgd_
from .vector import axpy_, scale_, sum_of_squares

__all__ = [
    "adagrad_",
    "adam_",
    "axpy_",
    "nadam_",
    "rmsprop_",
    "scale_",
    "sgd_",
    "sum_of_squares",
]
