"""The emulated CUDA path: ``kernels/*.cu`` compiled by g++ against a CUDA shim and run on
the CPU (each CUDA thread a fiber), behind a NumPy-backed CuPy stand-in, so that every
``cuda`` test runs on machines without a GPU.

- ``shim/cuda_emu.h``: the CUDA device dialect (keywords, thread indices, barriers, warp
  shuffles, shared memory, bit casts, half conversions); ``shim/cuda_emu_runtime.h``: the
  fibers, the block scheduler, faults, the kernel table with each parameter's size and kind.
- ``build.py``: the g++ build, cached by a hash of source, shim and flags.
- ``runtime.py``: ctypes loading, strict argument checks, launches, thread/block orders.
- ``memory.py``: guarded device allocations (guard page after, canary bytes around).
- ``cupy/``: the CuPy stand-in; ``standin.py`` installs it as ``cupy``.

This is test support code, not part of the installed library.
"""
