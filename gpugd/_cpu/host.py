"""The host CPU as Numba compiles for it, for the few code-generation choices that differ by
CPU family (measured on the 2-core VMs; the modules that use them say what and by how
much). Numba's on-disk cache is keyed by the host CPU's name and features, so a kernel
cached on one family is not reused on another."""

from __future__ import annotations

import llvmlite.binding as ll
from numba.core import config

CPU_NAME: str = config.CPU_NAME or ll.get_host_cpu_name()
AMD_ZEN: bool = CPU_NAME.startswith("znver")
_FEATURES = config.CPU_FEATURES or ll.get_host_cpu_features().flatten()
AVX512: bool = "+avx512f" in _FEATURES.split(",")
