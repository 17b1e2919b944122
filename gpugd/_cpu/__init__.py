"""Numba kernels, one module per kernel family, mirroring ``kernels/*.cu`` file by file."""

import warnings

from numba.core.errors import NumbaIRAssumptionWarning

# Compiling the kernels that inline vmath's exp (a fresh cache: the first run after an
# install or upgrade) makes Numba's SSA pass print "variable ... is not in scope" warnings
# that ask for a bug report: its own pedantic check, not a fault of the kernel (they are
# tested against the float64 and mpmath references). A user's first `gpugd train` should
# not open with a page of them.
# (A warning is attributed to the kernel's module, so the filter matches its message; with
# colorama installed Numba prefixes it with a terminal highlight code, hence the ".*".)
warnings.filterwarnings(
    "ignore", message=r".*variable '.*' is not in scope", category=NumbaIRAssumptionWarning
)
