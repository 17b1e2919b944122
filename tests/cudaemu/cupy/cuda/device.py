"""``cupy.cuda.Device`` of the stand-in: the one emulated device, id 0.

Mirrors ``cupy/cuda/device.pyx``: ``Device(device=None)`` takes the current device id and
checks nothing until used; ``attributes`` is the dict of every ``cudaDevAttr*`` with the
prefix trimmed (``"MultiProcessorCount"``); ``compute_capability`` is a string ("90");
``with Device(i):`` switches the current device and restores it; ``synchronize()``.
"""

from __future__ import annotations

from . import runtime


def _get_attributes(device_id: int) -> dict[str, int]:
    d = {}
    for k, v in vars(runtime).items():
        if k.startswith("cudaDevAttr"):
            try:
                d[k.replace("cudaDevAttr", "", 1)] = runtime.deviceGetAttribute(v, device_id)
            except runtime.CUDARuntimeError as e:
                if e.status != runtime.errorInvalidValue:
                    raise
    return d


class Device:
    """A CUDA device (``id``); only device 0 exists."""

    def __init__(self, device: int | Device | None = None):
        self.id = runtime.getDevice() if device is None else int(device)
        self._saved: list[int] = []

    def __int__(self) -> int:
        return self.id

    def __index__(self) -> int:
        return self.id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("Device", self.id))

    def __enter__(self) -> Device:
        self._saved.append(runtime.getDevice())
        runtime.setDevice(self.id)
        return self

    def __exit__(self, *exc: object) -> None:
        runtime.setDevice(self._saved.pop())

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"

    def use(self) -> Device:
        runtime.setDevice(self.id)
        return self

    def synchronize(self) -> None:
        runtime._check_device(self.id)
        runtime.deviceSynchronize()

    @property
    def compute_capability(self) -> str:
        major = runtime.deviceGetAttribute(runtime.cudaDevAttrComputeCapabilityMajor, self.id)
        minor = runtime.deviceGetAttribute(runtime.cudaDevAttrComputeCapabilityMinor, self.id)
        return f"{major}{minor}"

    @property
    def attributes(self) -> dict[str, int]:
        return _get_attributes(self.id)

    @property
    def mem_info(self) -> tuple[int, int]:
        runtime._check_device(self.id)
        return runtime.memGetInfo()

    @property
    def pci_bus_id(self) -> str:
        runtime._check_device(self.id)
        return "0000:00:00.0"


def get_device_id() -> int:
    return runtime.getDevice()
