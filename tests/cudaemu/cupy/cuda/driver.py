"""``cupy.cuda.driver`` of the stand-in: ``CUDADriverError`` (``.status``), versions, occupancy.

Mirrors ``cupy_backends/cuda/api/driver.pyx``: ``CUDADriverError(status)`` reads
"<CUDA_ERROR_NAME>: <description>".
"""

from __future__ import annotations

import importlib

from . import runtime

_ERRORS = {
    1: ("CUDA_ERROR_INVALID_VALUE", "invalid argument"),
    500: ("CUDA_ERROR_NOT_FOUND", "named symbol not found"),
    700: ("CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"),
}


class CUDADriverError(RuntimeError):
    def __init__(self, status: int):
        self.status = status
        name, msg = _ERRORS.get(status, (f"CUDA_ERROR_{status}", "unknown error"))
        super().__init__(f"{name}: {msg}")

    def __reduce__(self):
        return (type(self), (self.status,))


def driverGetVersion() -> int:
    return runtime.driverGetVersion()


def get_build_version() -> int:
    return runtime.RUNTIME_VERSION


def occupancyMaxActiveBlocksPerMultiprocessor(
    func: int, blockSize: int, dynamicSMemSize: int
) -> int:
    """Resident blocks per multiprocessor of the kernel ``func`` (``RawKernel.kernel.ptr``)
    on the emulated H200: the occupancy rules of sm_90 applied to the registers and shared
    memory ptxas gives the same source (``gpugd.kernel_report``, ptxas only: cuobjdump and
    nvdisasm are not needed). Without ptxas or NVRTC: the rule for 32 registers and no
    static shared memory (8 blocks of 256 threads), with one warning naming the missing
    tool (``runtime.Kernel.max_active_blocks``)."""
    from .. import _EMULATOR_PACKAGE

    emu = importlib.import_module(_EMULATOR_PACKAGE + ".runtime")
    if not 0 < blockSize <= 1024:
        raise CUDADriverError(1)
    return emu.kernel_at(int(func)).max_active_blocks(int(blockSize), int(dynamicSMemSize))
