"""FlatParams: every parameter of a model in one contiguous buffer per dtype, with named views.

Parameters are described by name and shape; each view starts on a 64-byte boundary so the
kernels' 16-byte vector accesses stay aligned. Gradients live in a twin buffer with the
same layout, and optimizer states are allocated the same way (``new_state``), so one fused
kernel can sweep a whole model in one pass. NumPy and CuPy alike (``xp``). The dtype may be
float32, float64, float16 or bfloat16 (``ml_dtypes.bfloat16``); a state buffer may have a
dtype of its own (``new_state(dtype=np.float32)``: fp32 states and master weights beside
half-precision parameters, in the same layout). Views start on a 64-byte boundary, which
is a multiple of every element size.

    params = FlatParams({"w1": (784, 128), "b1": (128,)}, dtype=np.float32)
    params["w1"][...] = init                  # a view into params.data
    params.grads["w1"]                        # a view into params.grad_data
    params.zero_grad()                        # one fill of the whole gradient buffer
    m = params.new_state()                    # same layout, for an optimizer state
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from . import _hostmem as hostmem
from ._validate import real_scalar

ALIGN_BYTES = 64


class _Views(Mapping):
    """Read-only name → view mapping over one flat buffer (``params.grads``, states)."""

    def __init__(self, owner: FlatParams, buf: Any):
        self._owner, self.data = owner, buf

    def __getitem__(self, name: str) -> Any:
        off, shape = self._owner._slot(name)
        return self.data[off : off + math.prod(shape)].reshape(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner.names)

    def __len__(self) -> int:
        return len(self._owner.names)


class FlatParams(Mapping):
    """Named, 64-byte-aligned parameter views over one buffer, with a gradient twin."""

    def __init__(
        self, shapes: Mapping[str, tuple[int, ...]], dtype: Any = np.float32, xp: Any = np
    ):
        if xp is not np and getattr(xp, "__name__", None) != "cupy":
            raise TypeError(f"xp: expected the numpy or cupy module, got {xp!r}")
        dtype = np.dtype(dtype)
        if dtype.name not in ("float32", "float64", "float16", "bfloat16"):
            raise TypeError(
                f"dtype: expected float32, float64, float16 or bfloat16 (ml_dtypes), got {dtype}"
            )
        if not shapes:
            raise ValueError("shapes: expected at least one named parameter")
        self.dtype, self.xp = dtype, xp
        step = ALIGN_BYTES // dtype.itemsize
        self._slots: dict[str, tuple[int, tuple[int, ...]]] = {}
        off = 0
        for name, shape in shapes.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"shapes: parameter names must be non-empty strings, got {name!r}")
            if not isinstance(shape, tuple | list) or not all(
                isinstance(s, int | np.integer) and not isinstance(s, bool) for s in shape
            ):
                # int() would truncate 2.5 and parse "12": only integers are dimensions
                raise TypeError(f"shapes[{name!r}]: expected a tuple of ints, got {shape!r}")
            shape = tuple(int(s) for s in shape)
            if any(s < 0 for s in shape):
                raise ValueError(f"shapes[{name!r}]: negative dimension in {shape}")
            self._slots[name] = (off, shape)
            off += -(-math.prod(shape) // step) * step  # next 64-byte boundary
        self.numel = off  # including the padding between views
        self.data = self._alloc()
        self.grads = _Views(self, self._alloc())

    # ---- layout

    @property
    def names(self) -> list[str]:
        return list(self._slots)

    @property
    def grad_data(self) -> Any:
        return self.grads.data

    def _alloc(self, dtype: Any = None) -> Any:
        """A zeroed buffer of ``numel`` elements (of ``dtype``, default the arena's) starting
        on a 64-byte boundary (NumPy guarantees only 16 bytes: over-allocate and slice); on
        the host large ones 2 MiB-aligned on huge pages (``gpugd._hostmem``)."""
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        if self.xp is np:
            return hostmem.zeros(self.numel, dtype)
        step = ALIGN_BYTES // dtype.itemsize
        raw = self.xp.zeros(self.numel + step, dtype=dtype)
        skip = (-raw.data.ptr % ALIGN_BYTES) // dtype.itemsize
        return raw[skip : skip + self.numel]

    def _slot(self, name: str) -> tuple[int, tuple[int, ...]]:
        try:
            return self._slots[name]
        except KeyError:
            raise KeyError(f"no parameter named {name!r}; have {self.names}") from None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """name → shape, in layout order."""
        return {k: s for k, (_, s) in self._slots.items()}

    # ---- Mapping over the parameter views

    def __getitem__(self, name: str) -> Any:
        off, shape = self._slot(name)
        return self.data[off : off + math.prod(shape)].reshape(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def __repr__(self) -> str:
        """``FlatParams(3 tensors, 100480 float32 elements on cpu: w1 (784, 128), ...)``."""
        backend = "cpu" if self.xp is np else "cuda"
        shown = [f"{k} {s}" for k, (_, s) in list(self._slots.items())[:6]]
        more = f", ... {len(self) - 6} more" if len(self) > 6 else ""
        n = sum(math.prod(s) for _, s in self._slots.values())
        return (
            f"FlatParams({len(self)} tensors, {n} {self.dtype.name} elements on {backend}: "
            + ", ".join(shown)
            + more
            + ")"
        )

    # ---- states and gradients

    def new_state(self, fill: float = 0.0, dtype: Any = None) -> _Views:
        """A zero-initialized (or ``fill``) buffer with the same layout, as named views; of
        ``dtype`` when given (fp32 states or master weights beside half parameters)."""
        fill = real_scalar("fill", fill)
        views = _Views(self, self._alloc(dtype))
        if fill:
            views.data.fill(fill)
        return views

    def zero_grad(self) -> None:
        """Zero every gradient (and the padding) in one fill of the gradient buffer."""
        self.grads.data.fill(0)

    @classmethod
    def adopt(cls, arrays: Mapping[str, Any], dtype: Any = None) -> FlatParams:
        """Copy existing arrays into a new arena; use ``flat[name]`` views from then on."""
        if not arrays:
            raise ValueError("arrays: expected at least one named array")
        from ._validate import array_backend

        be = array_backend(**{f"arrays[{k!r}]": a for k, a in arrays.items()})
        xp = np if be == "cpu" else __import__("cupy")
        if dtype is None:
            dtypes = {np.dtype(a.dtype) for a in arrays.values()}
            if len(dtypes) != 1:
                raise TypeError(
                    f"arrays: mixed dtypes {sorted(map(str, dtypes))}; pass dtype= to convert"
                )
            dtype = dtypes.pop()
        flat = cls({k: a.shape for k, a in arrays.items()}, dtype, xp)
        for k, a in arrays.items():
            flat[k][...] = a
        return flat
