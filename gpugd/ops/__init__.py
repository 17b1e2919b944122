"""Public functional ops. In-place ops end with ``_``; every op infers its backend from
its array arguments."""

from .optim import adagrad_, adam_, nadam_, rmsprop_, sgd_
from .reduce import (
    GradStats,
    clip_by_global_norm_,
    clip_by_norm_,
    clip_by_value_,
    global_norm,
    tensor_norms,
)
from .vector import axpy_, scale_, sum_of_squares

__all__ = [
    "GradStats",
    "adagrad_",
    "adam_",
    "axpy_",
    "clip_by_global_norm_",
    "clip_by_norm_",
    "clip_by_value_",
    "global_norm",
    "nadam_",
    "rmsprop_",
    "scale_",
    "sgd_",
    "sum_of_squares",
    "tensor_norms",
]
