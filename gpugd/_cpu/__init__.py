"""Numba kernels, one module per kernel family, mirroring ``kernels/*.cu`` file by file."""
