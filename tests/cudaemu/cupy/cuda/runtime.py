"""``cupy.cuda.runtime`` of the stand-in: one emulated device (id 0) that always answers.

Mirrors ``cupy_backends/cuda/api/runtime.pyx``: ``CUDARuntimeError(status)`` carries
``.status`` and reads "<cudaErrorName>: <description>"; ``getDeviceProperties`` returns a
dict whose ``name`` is bytes; the ``cudaDevAttr*`` constants are what
``cupy/cuda/device.pyx``'s ``_get_attributes`` turns into ``Device.attributes`` keys.
"""

from __future__ import annotations

# ---- error codes (cudaError_t) used here
errorInvalidValue = 1
errorMemoryAllocation = 2
errorInvalidDevice = 101
errorInvalidResourceHandle = 400
errorIllegalState = 401
errorNotReady = 600
errorStreamCaptureUnsupported = 900
errorStreamCaptureInvalidated = 901
errorStreamCaptureUnmatched = 903
errorStreamCaptureWrongThread = 908

_ERRORS = {
    0: ("cudaSuccess", "no error"),
    1: ("cudaErrorInvalidValue", "invalid argument"),
    2: ("cudaErrorMemoryAllocation", "out of memory"),
    35: (
        "cudaErrorInsufficientDriver",
        "CUDA driver version is insufficient for CUDA runtime version",
    ),
    100: ("cudaErrorNoDevice", "no CUDA-capable device is detected"),
    101: ("cudaErrorInvalidDevice", "invalid device ordinal"),
    400: ("cudaErrorInvalidResourceHandle", "invalid resource handle"),
    401: ("cudaErrorIllegalState", "the operation cannot be performed in the present state"),
    600: ("cudaErrorNotReady", "device not ready"),
    900: ("cudaErrorStreamCaptureUnsupported", "operation not permitted when stream is capturing"),
    901: (
        "cudaErrorStreamCaptureInvalidated",
        "operation failed due to a previous error during capture",
    ),
    903: (
        "cudaErrorStreamCaptureUnmatched",
        "capture was not ended in the same stream as it began",
    ),
    908: (
        "cudaErrorStreamCaptureWrongThread",
        "attempt to terminate a thread-local capture sequence from another thread",
    ),
}


class CUDARuntimeError(RuntimeError):
    """As ``cupy_backends.cuda.api.runtime.CUDARuntimeError``: ``.status`` is the code."""

    def __init__(self, status: int):
        self.status = status
        name, msg = _ERRORS.get(status, (f"cudaError{status}", "unknown error"))
        super().__init__(f"{name}: {msg}")

    def __reduce__(self):
        return (type(self), (self.status,))


def check_status(status: int) -> None:
    if status != 0:
        raise CUDARuntimeError(status)


is_hip = False
_is_hip_environment = False

# ---- stream constants (cuda_runtime_api.h / cupy_backends)
streamDefault = 0
streamNonBlocking = 1
streamLegacy = 1
streamPerThread = 2
streamCaptureModeGlobal = 0
streamCaptureModeThreadLocal = 1
streamCaptureModeRelaxed = 2
streamCaptureStatusNone = 0
streamCaptureStatusActive = 1
streamCaptureStatusInvalidated = 2
eventDefault = 0
eventBlockingSync = 1
eventDisableTiming = 2
eventInterprocess = 4

# ---- the emulated device: an H200's numbers (the kernels size their grids from them)
SM_COUNT = 132
TOTAL_MEM = 150_754_820_096  # 140.4 GiB (H200 141 GB)
NAME = b"NVIDIA H200 (gpugd CUDA emulator on CPU)"
DRIVER_VERSION = 13000
RUNTIME_VERSION = 13000

cudaDevAttrMaxThreadsPerBlock = 1
cudaDevAttrMaxBlockDimX = 2
cudaDevAttrMaxBlockDimY = 3
cudaDevAttrMaxBlockDimZ = 4
cudaDevAttrMaxGridDimX = 5
cudaDevAttrMaxGridDimY = 6
cudaDevAttrMaxGridDimZ = 7
cudaDevAttrMaxSharedMemoryPerBlock = 8
cudaDevAttrTotalConstantMemory = 9
cudaDevAttrWarpSize = 10
cudaDevAttrMaxRegistersPerBlock = 12
cudaDevAttrClockRate = 13
cudaDevAttrMultiProcessorCount = 16
cudaDevAttrIntegrated = 18
cudaDevAttrCanMapHostMemory = 19
cudaDevAttrComputeMode = 20
cudaDevAttrConcurrentKernels = 31
cudaDevAttrEccEnabled = 32
cudaDevAttrPciBusId = 33
cudaDevAttrPciDeviceId = 34
cudaDevAttrMemoryClockRate = 36
cudaDevAttrGlobalMemoryBusWidth = 37
cudaDevAttrL2CacheSize = 38
cudaDevAttrMaxThreadsPerMultiProcessor = 39
cudaDevAttrAsyncEngineCount = 40
cudaDevAttrUnifiedAddressing = 41
cudaDevAttrPciDomainId = 50
cudaDevAttrComputeCapabilityMajor = 75
cudaDevAttrComputeCapabilityMinor = 76
cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81
cudaDevAttrMaxRegistersPerMultiprocessor = 82
cudaDevAttrManagedMemory = 83
cudaDevAttrConcurrentManagedAccess = 89
cudaDevAttrPageableMemoryAccess = 88
cudaDevAttrCooperativeLaunch = 95
cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
cudaDevAttrMaxBlocksPerMultiprocessor = 106
cudaDevAttrMemoryPoolsSupported = 115

# CuPy's own aliases (cupy_backends/cuda/api/runtime.pxd)
deviceAttributeComputeCapabilityMajor = cudaDevAttrComputeCapabilityMajor
deviceAttributeComputeCapabilityMinor = cudaDevAttrComputeCapabilityMinor

_ATTRIBUTES = {
    cudaDevAttrMaxThreadsPerBlock: 1024,
    cudaDevAttrMaxBlockDimX: 1024,
    cudaDevAttrMaxBlockDimY: 1024,
    cudaDevAttrMaxBlockDimZ: 64,
    cudaDevAttrMaxGridDimX: 2**31 - 1,
    cudaDevAttrMaxGridDimY: 65535,
    cudaDevAttrMaxGridDimZ: 65535,
    cudaDevAttrMaxSharedMemoryPerBlock: 49152,
    cudaDevAttrTotalConstantMemory: 65536,
    cudaDevAttrWarpSize: 32,
    cudaDevAttrMaxRegistersPerBlock: 65536,
    cudaDevAttrClockRate: 1980000,
    cudaDevAttrMultiProcessorCount: SM_COUNT,
    cudaDevAttrIntegrated: 0,
    cudaDevAttrCanMapHostMemory: 1,
    cudaDevAttrComputeMode: 0,
    cudaDevAttrConcurrentKernels: 1,
    cudaDevAttrEccEnabled: 1,
    cudaDevAttrPciBusId: 0,
    cudaDevAttrPciDeviceId: 0,
    cudaDevAttrMemoryClockRate: 2619000,
    cudaDevAttrGlobalMemoryBusWidth: 6144,
    cudaDevAttrL2CacheSize: 52428800,
    cudaDevAttrMaxThreadsPerMultiProcessor: 2048,
    cudaDevAttrAsyncEngineCount: 3,
    cudaDevAttrUnifiedAddressing: 1,
    cudaDevAttrPciDomainId: 0,
    cudaDevAttrComputeCapabilityMajor: 9,
    cudaDevAttrComputeCapabilityMinor: 0,
    cudaDevAttrMaxSharedMemoryPerMultiprocessor: 233472,
    cudaDevAttrMaxRegistersPerMultiprocessor: 65536,
    cudaDevAttrManagedMemory: 1,
    cudaDevAttrConcurrentManagedAccess: 1,
    cudaDevAttrPageableMemoryAccess: 0,
    cudaDevAttrCooperativeLaunch: 1,
    cudaDevAttrMaxSharedMemoryPerBlockOptin: 232448,
    cudaDevAttrMaxBlocksPerMultiprocessor: 32,
    cudaDevAttrMemoryPoolsSupported: 1,
}

_current = {"device": 0}


def _check_device(device: int) -> int:
    device = int(device)
    if device != 0:
        raise CUDARuntimeError(errorInvalidDevice)
    return device


def getDeviceCount() -> int:
    return 1


def getDevice() -> int:
    return _current["device"]


def setDevice(device: int) -> None:
    _current["device"] = _check_device(device)


def driverGetVersion() -> int:
    return DRIVER_VERSION


def runtimeGetVersion() -> int:
    return RUNTIME_VERSION


def deviceGetAttribute(attrib: int, device: int) -> int:
    _check_device(device)
    try:
        return _ATTRIBUTES[attrib]
    except KeyError:
        raise CUDARuntimeError(errorInvalidValue) from None


def getDeviceProperties(device: int) -> dict:
    _check_device(device)
    a = _ATTRIBUTES
    return {
        "name": NAME,
        "totalGlobalMem": TOTAL_MEM,
        "sharedMemPerBlock": a[cudaDevAttrMaxSharedMemoryPerBlock],
        "regsPerBlock": a[cudaDevAttrMaxRegistersPerBlock],
        "warpSize": 32,
        "maxThreadsPerBlock": 1024,
        "maxThreadsDim": (1024, 1024, 64),
        "maxGridSize": (2**31 - 1, 65535, 65535),
        "clockRate": a[cudaDevAttrClockRate],
        "totalConstMem": 65536,
        "major": 9,
        "minor": 0,
        "multiProcessorCount": SM_COUNT,
        "integrated": 0,
        "canMapHostMemory": 1,
        "computeMode": 0,
        "concurrentKernels": 1,
        "ECCEnabled": 1,
        "pciBusID": 0,
        "pciDeviceID": 0,
        "pciDomainID": 0,
        "memoryClockRate": a[cudaDevAttrMemoryClockRate],
        "memoryBusWidth": a[cudaDevAttrGlobalMemoryBusWidth],
        "l2CacheSize": a[cudaDevAttrL2CacheSize],
        "maxThreadsPerMultiProcessor": 2048,
        "unifiedAddressing": 1,
        "managedMemory": 1,
        "sharedMemPerMultiprocessor": a[cudaDevAttrMaxSharedMemoryPerMultiprocessor],
        "regsPerMultiprocessor": 65536,
        "sharedMemPerBlockOptin": a[cudaDevAttrMaxSharedMemoryPerBlockOptin],
        "maxBlocksPerMultiProcessor": 32,
        "uuid": b"gpugd-emulator-0",
    }


def memGetInfo() -> tuple[int, int]:
    from . import memory

    return TOTAL_MEM - memory._used_bytes(), TOTAL_MEM


def deviceSynchronize() -> None:
    """Everything ran already (one host queue); refused while a stream captures, as CUDA
    refuses a device synchronization that would cross a capture."""
    from . import stream

    stream._refuse_sync("cupy.cuda.runtime.deviceSynchronize()")


def streamIsCapturing(stream_ptr: int) -> bool:
    from . import stream

    s = stream._by_ptr.get(int(stream_ptr))
    return s is not None and s._capture is not None
