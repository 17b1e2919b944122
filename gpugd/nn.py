"""A small network layer over gpugd's ops: explicit forward/backward, parameters in one arena.

    model = nn.Sequential([nn.Dense(2, 64), nn.Activation("relu"), nn.Dense(64, 2)])
    flat = model.build(np.float32, seed=0)          # every parameter in one FlatParams
    opt = gpugd.optim.Adam(flat, lr=1e-3)
    logits = model.forward(x, training=True)
    loss, dlogits = nn.softmax_cross_entropy(logits, labels)
    model.backward(dlogits)                         # writes flat.grads (overwrites)
    opt.step()

Matrix products go through the backend's BLAS (NumPy's on the CPU, cuBLAS through CuPy);
activations, batch normalization and dropout are gpugd's fused kernels; the optimizer
sweeps the whole arena in one launch. ``backward`` overwrites the gradients of the last
``forward`` (it does not accumulate), so ``zero_grad`` is not needed between steps.

Initializers (``init=``, weights only; biases start at zero): ``zeros``, ``normal``
(std 0.05), ``xavier_uniform``/``glorot_uniform`` (U(±√(6/(fan_in+fan_out)))),
``xavier_normal``/``glorot_normal`` (N(0, 2/(fan_in+fan_out))), ``he_uniform``
(U(±√(6/fan_in))), ``he_normal`` (N(0, 2/fan_in)), ``lecun_uniform`` (U(±√(3/fan_in))),
``lecun_normal`` (N(0, 1/fan_in)). Draws come from NumPy's generator on the host, so the
same seed gives the same network on both backends.

Losses return ``(loss, dlogits)`` with the mean over the batch (``denominator`` overrides
the count, for data-parallel shards): ``mse``, ``binary_cross_entropy_with_logits``
(sigmoid + binary cross-entropy, as softplus(z) − y·z: no log of 0) and
``softmax_cross_entropy`` (log-sum-exp after subtracting the row maximum).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from . import ops
from .flat import FlatParams

INITIALIZERS = (
    "zeros",
    "normal",
    "xavier_uniform",
    "xavier_normal",
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
)

# name → (forward, backward, backward takes the output instead of the input)
_ACTIVATIONS: dict[str, tuple[Callable, Callable, bool]] = {
    "sigmoid": (ops.sigmoid, ops.sigmoid_backward, True),
    "tanh": (ops.tanh, ops.tanh_backward, True),
    "relu": (ops.relu, ops.relu_backward, False),
    "leaky_relu": (ops.leaky_relu, ops.leaky_relu_backward, False),
    "elu": (ops.elu, ops.elu_backward, False),
    "selu": (ops.selu, ops.selu_backward, False),
    "gelu": (ops.gelu, ops.gelu_backward, False),
    "softplus": (ops.softplus, ops.softplus_backward, False),
    "silu": (ops.silu, ops.silu_backward, False),
}
ACTIVATIONS = tuple(_ACTIVATIONS)


def initial_weights(
    kind: str, shape: tuple[int, int], rng: np.random.Generator, dtype: Any = np.float64
) -> np.ndarray:
    """A (fan_in, fan_out) weight matrix drawn by the named initializer, on the host."""
    fan_in, fan_out = shape
    if kind == "zeros":
        w = np.zeros(shape)
    elif kind == "normal":
        w = rng.normal(0.0, 0.05, shape)
    elif kind in ("xavier_uniform", "glorot_uniform"):
        w = rng.uniform(-1.0, 1.0, shape) * math.sqrt(6.0 / (fan_in + fan_out))
    elif kind in ("xavier_normal", "glorot_normal"):
        w = rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), shape)
    elif kind == "he_uniform":
        w = rng.uniform(-1.0, 1.0, shape) * math.sqrt(6.0 / fan_in)
    elif kind == "he_normal":
        w = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    elif kind == "lecun_uniform":
        w = rng.uniform(-1.0, 1.0, shape) * math.sqrt(3.0 / fan_in)
    elif kind == "lecun_normal":
        w = rng.normal(0.0, math.sqrt(1.0 / fan_in), shape)
    else:
        raise ValueError(f"init: expected one of {INITIALIZERS}, got {kind!r}")
    return w.astype(dtype)


def _positive_int(name: str, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"{name}: expected an integer ≥ 1, got {n!r}")
    return int(n)


class Layer:
    """Base class. A layer declares its parameters (``param_shapes``) and buffers, gets
    views into the model's arena at ``build``, and maps ``forward(x)`` → y and
    ``backward(dy)`` → dx, writing its parameter gradients. ``backward`` may overwrite
    ``dy`` (callers pass a buffer they no longer need)."""

    kind = "layer"

    def __init__(self) -> None:
        self.name = ""
        self.p: dict[str, Any] = {}  # parameter views into the arena
        self.g: dict[str, Any] = {}  # gradient views
        self.buffers: dict[str, Any] = {}  # state that is not trained (running statistics)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The layer's trained parameters: name → shape (allocated in the model's arena)."""
        return {}

    def features_out(self, n_in: int) -> int:
        """Features out for ``n_in`` in; raises ValueError naming the layer if they don't fit."""
        return n_in

    def initialize(self, rng: np.random.Generator, xp: Any, dtype: Any) -> None:
        """Fill parameters (and create buffers) after the arena is bound."""

    def forward(self, x: Any, training: bool) -> Any:
        """y from x, (N, features) arrays; ``training`` selects batch statistics and dropout."""
        raise NotImplementedError

    def backward(self, dy: Any) -> Any:
        """dx from dy = ∂L/∂y of the last forward, writing (overwriting) the parameter
        gradients; may overwrite dy."""
        raise NotImplementedError

    def layers(self) -> Iterator[Layer]:
        """The leaf layers (and residual blocks) in order, this one included."""
        yield self

    def label(self) -> str:
        """How errors name the layer: its name in the model (``dense1``), else its kind."""
        return self.name or type(self).__name__

    def _built(self) -> None:
        """Refuse a layer whose parameters were never bound (the model not built)."""
        missing = [k for k in self.param_shapes() if k not in self.p]
        if missing:
            raise RuntimeError(
                f"{self.label()}: not built (no {missing[0]!r} yet): call build() on the "
                "Sequential that holds it before forward"
            )

    def _saved_or_raise(self, saved: Any) -> Any:
        if saved is None:
            raise RuntimeError(f"{self.label()}: backward before forward (nothing saved)")
        return saved

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class Dense(Layer):
    """y = x·W + b, W of shape (in_features, out_features): matmul through the backend's
    BLAS. Backward: dW = xᵀ·dy, db = Σ_rows dy, dx = dy·Wᵀ (skipped for the first layer)."""

    kind = "dense"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        init: str = "xavier_uniform",
        bias: bool = True,
    ):
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        if init not in INITIALIZERS:
            raise ValueError(f"init: expected one of {INITIALIZERS}, got {init!r}")
        self.init, self.bias = init, bool(bias)
        self.needs_input_grad = True
        self._x: Any = None

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {"weight": (self.in_features, self.out_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def features_out(self, n_in: int) -> int:
        if n_in != self.in_features:
            raise ValueError(
                f"{self.name}: expects {self.in_features} input features, the layer before "
                f"gives {n_in}"
            )
        return self.out_features

    def initialize(self, rng: np.random.Generator, xp: Any, dtype: Any) -> None:
        w = initial_weights(self.init, (self.in_features, self.out_features), rng, dtype)
        self.p["weight"][...] = xp.asarray(w)
        if self.bias:
            self.p["bias"][...] = 0

    def forward(self, x: Any, training: bool) -> Any:
        self._built()
        w = self.p["weight"]
        if getattr(x, "ndim", None) != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"{self.label()}: expected input of shape (N, {self.in_features}), got "
                f"{getattr(x, 'shape', type(x).__name__)}"
            )
        if x.dtype != w.dtype:
            raise TypeError(
                f"{self.label()}: expected {w.dtype} input (the model's dtype), got {x.dtype}; "
                f"cast the batch with x.astype({w.dtype.name!r})"
            )
        self._x = x
        y = x @ w
        if self.bias:
            y += self.p["bias"]
        return y

    def backward(self, dy: Any) -> Any:
        x = self._saved_or_raise(self._x)
        gw = self.g["weight"]
        if x.shape[0]:
            gw[...] = x.T @ dy
        else:
            gw[...] = 0
        if self.bias:
            dy.sum(axis=0, out=self.g["bias"])
        return dy @ self.p["weight"].T if self.needs_input_grad else None


class Activation(Layer):
    """y = f(x) elementwise with gpugd's fused kernels; backward dx = dy·f'(·) in place
    over dy (from the output for sigmoid and tanh, from the input otherwise)."""

    kind = "act"

    def __init__(self, name: str, **kwargs: Any):
        super().__init__()
        if name not in _ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {name!r}")
        self.act, self.kwargs = name, dict(kwargs)
        self._fwd, self._bwd, self._from_output = _ACTIVATIONS[name]
        self._saved: Any = None

    def forward(self, x: Any, training: bool) -> Any:
        y = self._fwd(x, **self.kwargs)
        self._saved = y if self._from_output else x
        return y

    def backward(self, dy: Any) -> Any:
        return self._bwd(dy, self._saved_or_raise(self._saved), out=dy, **self.kwargs)

    def __repr__(self) -> str:
        return f"Activation({self.act!r})"


class BatchNorm(Layer):
    """Batch normalization over the batch axis of (N, C) activations, torch's
    BatchNorm1d: γ, β trained; running mean and unbiased running variance updated with
    ``momentum`` in training, used in inference."""

    kind = "bn"

    def __init__(self, features: int, *, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.features = _positive_int("features", features)
        if not (isinstance(momentum, int | float) and 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum: expected a value in [0, 1], got {momentum!r}")
        if not (isinstance(eps, int | float) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps: expected a finite value > 0, got {eps!r}")
        self.momentum, self.eps = float(momentum), float(eps)
        self._saved: Any = None

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"weight": (self.features,), "bias": (self.features,)}

    def features_out(self, n_in: int) -> int:
        if n_in != self.features:
            raise ValueError(f"{self.name}: has {self.features} features, input has {n_in}")
        return n_in

    def initialize(self, rng: np.random.Generator, xp: Any, dtype: Any) -> None:
        self.p["weight"][...] = 1
        self.p["bias"][...] = 0
        self.buffers = {
            "running_mean": xp.zeros(self.features, dtype),
            "running_var": xp.ones(self.features, dtype),
        }

    def forward(self, x: Any, training: bool) -> Any:
        self._built()
        if getattr(x, "ndim", None) != 2 or x.shape[1] != self.features:
            raise ValueError(
                f"{self.label()}: expected input of shape (N, {self.features}), got "
                f"{getattr(x, 'shape', type(x).__name__)}"
            )
        res = ops.batch_norm_forward(
            x,
            self.p["weight"],
            self.p["bias"],
            self.buffers["running_mean"],
            self.buffers["running_var"],
            training=training,
            momentum=self.momentum,
            eps=self.eps,
            layout="NC",
        )
        self._saved = (x, res.mean, res.invstd, training)
        return res.y

    def backward(self, dy: Any) -> Any:
        x, mean, invstd, training = self._saved_or_raise(self._saved)
        dx, dw, db = ops.batch_norm_backward(
            dy, x, self.p["weight"], mean, invstd, training=training, layout="NC"
        )
        self.g["weight"][...] = dw
        self.g["bias"][...] = db
        return dx


class Dropout(Layer):
    """Inverted dropout (``gpugd.ops.dropout``): in training each element is kept with
    probability 1 − p and scaled by 1/(1 − p); the identity in inference. The mask comes
    from (seed, offset): the offset advances by the tensor's size every call, so no mask is
    stored and a resumed run continues the same stream (``buffers['offset']``)."""

    kind = "dropout"

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not (isinstance(p, int | float) and 0.0 <= p < 1.0):
            raise ValueError(f"p: expected a value in [0, 1), got {p!r}")
        self.rate = float(p)
        self.seed = 0
        self._saved: Any = None
        self._forwarded = False

    def initialize(self, rng: np.random.Generator, xp: Any, dtype: Any) -> None:
        self.seed = int(rng.integers(0, 2**63 - 1))
        self.buffers = {"offset": np.zeros(1, np.uint64)}

    def forward(self, x: Any, training: bool) -> Any:
        if "offset" not in self.buffers:
            raise RuntimeError(
                f"{self.label()}: not built (no offset yet): call build() on the Sequential "
                "that holds it before forward"
            )
        self._forwarded = True
        if not training or self.rate == 0.0:
            self._saved = None
            return x
        off = int(self.buffers["offset"][0])
        self._saved = off
        self.buffers["offset"][0] = off + x.size
        return ops.dropout(x, self.rate, seed=self.seed, offset=off)

    def backward(self, dy: Any) -> Any:
        if not self._forwarded:
            raise RuntimeError(f"{self.label()}: backward before forward (nothing saved)")
        if self._saved is None:
            return dy
        return ops.dropout_backward(dy, self.rate, seed=self.seed, offset=self._saved, out=dy)


class Sequential(Layer):
    """Layers applied in order; backward in reverse.

    The habits of a torch module: ``model(x)`` is ``forward(x)`` in the current mode,
    ``train()``/``eval()`` set it (``training``), ``state_dict()``/``load_state_dict()``
    carry parameters and buffers (batch-norm running statistics, dropout stream offsets and
    seeds), ``zero_grad()`` fills the gradient arena."""

    kind = "seq"

    def __init__(self, layers: Sequence[Layer]):
        super().__init__()
        self.children = list(layers)
        for i, layer in enumerate(self.children):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}]: expected a gpugd.nn layer, got {layer!r}")
        if not self.children:
            raise ValueError("layers: expected at least one layer")
        self.flat: FlatParams | None = None
        self.training = True
        self._forwarded = False

    def layers(self) -> Iterator[Layer]:
        for c in self.children:
            yield from c.layers()

    def features_out(self, n_in: int) -> int:
        for c in self.children:
            n_in = c.features_out(n_in)
        return n_in

    def forward(self, x: Any, training: bool | None = None) -> Any:
        """y = the layers applied in order; ``training`` defaults to the model's mode."""
        self._check_model_input(x)
        self._forwarded = True
        return self._forward_children(x, self.training if training is None else training)

    def backward(self, dy: Any) -> Any:
        """dx from dy = ∂L/∂y of the last forward; writes (overwrites) every gradient."""
        if not self._forwarded:
            raise RuntimeError(f"{self.label()}: backward before forward (nothing saved)")
        return self._backward_children(dy)

    def _forward_children(self, x: Any, training: bool) -> Any:
        for c in self.children:
            x = c.forward(x, training)
        return x

    def _backward_children(self, dy: Any) -> Any:
        for c in reversed(self.children):
            dy = c.backward(dy)
            if dy is None:
                return None
        return dy

    # ---- the whole model

    def __call__(self, x: Any) -> Any:
        """``model(x)``: forward in the model's mode (``train()``/``eval()``)."""
        return self.forward(x)

    def _check_model_input(self, x: Any) -> None:
        if self.flat is None:
            raise RuntimeError(f"{self.label()}: not built: call model.build(dtype) before forward")
        on_gpu = self.flat.xp is not np
        if not on_gpu and not isinstance(x, np.ndarray):
            raise TypeError(
                f"{self.label()}: expected a NumPy array (the model is on the CPU), got "
                f"{type(x).__module__}.{type(x).__name__}"
            )
        if on_gpu and not isinstance(x, self.flat.xp.ndarray):
            raise TypeError(
                f"{self.label()}: expected a CuPy array (the model is on the GPU), got "
                f"{type(x).__module__}.{type(x).__name__}; move it with cupy.asarray(x)"
            )

    def train(self, mode: bool = True) -> Sequential:
        """Training mode (batch statistics, dropout on); returns the model."""
        if not isinstance(mode, bool):
            raise TypeError(f"mode: expected True or False, got {mode!r}")
        self.training = mode
        return self

    def eval(self) -> Sequential:
        """Inference mode (running statistics, dropout off): ``train(False)``."""
        return self.train(False)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Fill the gradient arena with zeros. ``set_to_none=True`` is refused: gradients
        are views of one arena buffer and cannot be None (``backward`` overwrites them, so
        zeroing is needed only before accumulating into them by hand)."""
        if set_to_none:
            raise ValueError(
                "set_to_none: gpugd's gradients are views of one arena buffer and cannot be "
                "None; use zero_grad() (or nothing: backward overwrites the gradients)"
            )
        if self.flat is None:
            raise RuntimeError(f"{self.label()}: not built: call model.build(dtype) first")
        self.flat.zero_grad()

    def _state_items(self) -> dict[str, Any]:
        if self.flat is None:
            raise RuntimeError(f"{self.label()}: not built: call model.build(dtype) first")
        items: dict[str, Any] = {name: self.flat[name] for name in self.flat}
        items.update(self.buffers_dict())
        for lay in self.layers():
            if isinstance(lay, Dropout):
                items[f"{lay.name}.seed"] = np.array([lay.seed], np.uint64)
        return items

    def state_dict(self) -> dict[str, Any]:
        """Copies of every parameter (``dense1.weight``, …) and buffer (``bn1.running_mean``,
        ``bn1.running_var``, ``dropout1.offset``, ``dropout1.seed``), by name; arrays of
        the model's backend (the dropout entries are NumPy)."""
        return {k: v.copy() for k, v in self._state_items().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy ``state`` (from ``state_dict()``) into the model. Every name, shape and dtype
        is checked first: a missing or unexpected entry, or one that does not fit, raises
        (naming it) and nothing is written."""
        if not isinstance(state, dict):
            raise TypeError(f"state: expected a dict from state_dict(), got {type(state)}")
        mine = self._state_items()
        missing = sorted(set(mine) - set(state))
        extra = sorted(set(state) - set(mine))
        if missing or extra:
            raise KeyError(
                f"state: missing {missing or 'nothing'}, unexpected {extra or 'nothing'}"
            )
        for k, dst in mine.items():
            src = state[k]
            if getattr(src, "shape", None) != dst.shape or getattr(src, "dtype", None) != dst.dtype:
                raise ValueError(
                    f"state[{k!r}]: expected {dst.dtype} of shape {dst.shape}, got "
                    f"{getattr(src, 'dtype', type(src).__name__)} of shape "
                    f"{getattr(src, 'shape', None)}"
                )
        xp = self.flat.xp  # type: ignore[union-attr]
        for k, dst in mine.items():
            dst[...] = _to_host(state[k]) if isinstance(dst, np.ndarray) else xp.asarray(state[k])
        for lay in self.layers():
            if isinstance(lay, Dropout):
                lay.seed = int(mine[f"{lay.name}.seed"][0])

    def build(self, dtype: Any = np.float32, *, xp: Any = np, seed: int = 0) -> FlatParams:
        """Name every layer (``dense1``, ``act1``, ``bn1``, …), check the feature counts
        chain up, allocate one FlatParams arena for all parameters and initialize them
        from ``seed``. Returns the arena (also ``self.flat``)."""
        counts: dict[str, int] = {}
        layers = list(self.layers())
        for layer in layers:
            counts[layer.kind] = counts.get(layer.kind, 0) + 1
            layer.name = f"{layer.kind}{counts[layer.kind]}"
        first = self._first_dense()
        self.features_out(first.in_features)  # raises on a broken chain
        first.needs_input_grad = False
        shapes = {
            f"{layer.name}.{k}": s for layer in layers for k, s in layer.param_shapes().items()
        }
        if not shapes:
            raise ValueError("layers: the model has no parameters")
        flat = FlatParams(shapes, dtype, xp)
        rng = np.random.default_rng(seed)
        for layer in layers:
            layer.p = {k: flat[f"{layer.name}.{k}"] for k in layer.param_shapes()}
            layer.g = {k: flat.grads[f"{layer.name}.{k}"] for k in layer.param_shapes()}
            layer.initialize(rng, xp, flat.dtype)
        self.flat = flat
        return flat

    def _first_dense(self) -> Dense:
        first = next(self.layers())
        if not isinstance(first, Dense):
            raise ValueError(f"layers: the first layer must be Dense, got {first!r}")
        return first

    @property
    def in_features(self) -> int:
        """Input features the model expects (its first Dense layer's)."""
        return self._first_dense().in_features

    def layers_by_name(self) -> dict[str, Layer]:
        """Every layer of the built model by its name (``dense1``, ``bn1``, ...)."""
        return {lay.name: lay for lay in self.layers() if lay is not self}

    def buffers_dict(self) -> dict[str, Any]:
        """Every non-trained state array by qualified name (running statistics, dropout
        offsets): what a checkpoint must carry besides the arena."""
        return {f"{lay.name}.{k}": b for lay in self.layers() for k, b in lay.buffers.items()}

    def weight_names(self) -> list[str]:
        """The Dense weight tensors (what L1/L2 regularization and the per-layer gradient
        picture are about), input to output."""
        return [f"{lay.name}.weight" for lay in self.layers() if isinstance(lay, Dense)]

    def regularize(self, l1: float = 0.0, l2: float = 0.0) -> float:
        """Add λ₁·Σ|W| + λ₂·ΣW² over the Dense weights (Keras' l1/l2; biases and batch-norm
        parameters are not penalized) to the gradients the last backward wrote:
        dW += λ₁·sign(W) + 2λ₂·W. Returns the penalty (a float)."""
        for name, val in (("l1", l1), ("l2", l2)):
            if not (isinstance(val, int | float) and math.isfinite(val) and val >= 0):
                raise ValueError(f"{name}: expected a finite value ≥ 0, got {val!r}")
        if self.flat is None:
            raise RuntimeError("build() the model first")
        penalty = 0.0
        if not (l1 or l2):
            return penalty
        xp = self.flat.xp
        for name in self.weight_names():
            w, g = self.flat[name], self.flat.grads[name]
            if l2:
                penalty += l2 * float(ops.sum_of_squares(w))
                ops.axpy_(g, 2.0 * l2, w)
            if l1:
                penalty += l1 * float(xp.abs(w).sum())
                g += g.dtype.type(l1) * xp.sign(w)
        return penalty

    def __repr__(self) -> str:
        return "Sequential(" + ", ".join(map(repr, self.children)) + ")"


class Residual(Sequential):
    """y = x + block(x): the identity path carries the gradient past the block
    (dx = dy + block's dx). The block must keep the feature count."""

    kind = "res"

    def layers(self) -> Iterator[Layer]:
        yield self
        for c in self.children:
            yield from c.layers()

    def features_out(self, n_in: int) -> int:
        n_out = super().features_out(n_in)
        if n_out != n_in:
            raise ValueError(
                f"{self.name}: a residual block must keep the feature count ({n_in} → {n_out})"
            )
        return n_in

    def forward(self, x: Any, training: bool | None = None) -> Any:
        return x + self._forward_children(x, True if training is None else training)

    def backward(self, dy: Any) -> Any:
        dx = self._backward_children(dy.copy())
        dx += dy
        return dx


# ---- losses ------------------------------------------------------------------------------


def _to_host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _xp_of(a: Any) -> Any:
    return np if isinstance(a, np.ndarray) else __import__("cupy")


def _denominator(n: int, denominator: float | None) -> float:
    if denominator is None:
        return float(max(n, 1))
    if not (isinstance(denominator, int | float) and denominator > 0):
        raise ValueError(f"denominator: expected a value > 0, got {denominator!r}")
    return float(denominator)


def _check_labels(fn: str, labels: Any, n_rows: int, n_classes: int, xp: Any) -> None:
    """Labels are class indices: integers of shape (N,) in [0, n_classes); refused before
    any arithmetic with a message naming the loss and what was expected."""
    if not isinstance(labels, xp.ndarray):
        raise TypeError(
            f"{fn}: labels: expected an integer {xp.__name__} array of shape ({n_rows},), got "
            f"{type(labels).__module__}.{type(labels).__name__}"
        )
    if labels.ndim == 2 and labels.shape == (n_rows, n_classes) and n_classes > 1:
        raise ValueError(
            f"{fn}: labels: expected class indices of shape ({n_rows},), got one-hot rows "
            f"{labels.shape}; pass labels.argmax(axis=1)"
        )
    if labels.shape != (n_rows,):
        raise ValueError(
            f"{fn}: labels: expected shape ({n_rows},) for {n_rows} rows, got {labels.shape}"
        )
    if labels.dtype.kind not in "iub":
        raise TypeError(
            f"{fn}: labels: expected integer class indices, got {labels.dtype}; "
            "pass labels.astype(int)"
        )
    if n_rows:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(
                f"{fn}: labels: expected class indices in [0, {n_classes}), got values in "
                f"[{lo}, {hi}]"
            )


def mse(pred: Any, target: Any, *, denominator: float | None = None) -> tuple[float, Any]:
    """L = Σ(pred − target)²/M over M = the number of elements; dL/dpred = 2(pred − target)/M."""
    if pred.shape != target.shape:
        raise ValueError(f"target: shape {target.shape} does not match pred's {pred.shape}")
    d = pred - target.astype(pred.dtype)
    m = _denominator(pred.size, denominator)
    loss = float((d * d).sum()) / m
    d *= pred.dtype.type(2.0 / m)
    return loss, d


def binary_cross_entropy_with_logits(
    logits: Any, labels: Any, *, denominator: float | None = None
) -> tuple[float, Any]:
    """Sigmoid + binary cross-entropy from logits z, integer labels y ∈ {0, 1}:
    L = Σ softplus(z) − y·z over N rows /N (softplus written as max(z, 0) + log1p(e^−|z|));
    dL/dz = (σ(z) − y)/N. ``logits``: (N,) or (N, 1)."""
    z = logits.reshape(-1)
    if getattr(labels, "ndim", 0) < 1:
        raise ValueError(f"labels: expected shape (N,), got {getattr(labels, 'shape', labels)!r}")
    if z.shape[0] != labels.shape[0] or logits.ndim > 2 or logits.size != z.shape[0]:
        raise ValueError(
            f"logits: expected (N,) or (N, 1) for {labels.shape[0]} labels, got {logits.shape}"
        )
    xp = _xp_of(z)
    _check_labels("binary_cross_entropy_with_logits", labels, z.shape[0], 2, xp)
    y = labels.astype(z.dtype)
    n = _denominator(z.shape[0], denominator)
    per = xp.maximum(z, 0) - y * z + xp.log1p(xp.exp(-xp.abs(z)))
    loss = float(per.sum()) / n
    d = ops.sigmoid(z)
    d -= y
    d *= z.dtype.type(1.0 / n)
    return loss, d.reshape(logits.shape)


def softmax_cross_entropy(
    logits: Any, labels: Any, *, denominator: float | None = None
) -> tuple[float, Any]:
    """Softmax + cross-entropy over (N, K) logits and integer labels:
    L = Σ_rows (logsumexp(z) − z_label)/N with the row maximum subtracted first;
    dL/dz = (softmax(z) − onehot)/N."""
    if logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy: logits: expected (N, K), got {logits.shape}")
    xp = _xp_of(logits)
    _check_labels("softmax_cross_entropy", labels, logits.shape[0], logits.shape[1], xp)
    n = _denominator(logits.shape[0], denominator)
    rows = xp.arange(logits.shape[0])
    s = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(s)
    tot = e.sum(axis=1, keepdims=True)
    loss = float((xp.log(tot[:, 0]) - s[rows, labels]).sum()) / n
    e /= tot
    e[rows, labels] -= 1
    e *= logits.dtype.type(1.0 / n)
    return loss, e


def predictions(logits: Any) -> Any:
    """Class predictions: z > 0 for one logit per row, the arg max otherwise."""
    if logits.ndim == 1 or logits.shape[1] == 1:
        return (logits.reshape(-1) > 0).astype(np.int64)
    return logits.argmax(axis=1)


def mlp(
    n_in: int,
    hidden: Sequence[int],
    n_out: int,
    *,
    activation: str = "relu",
    init: str = "he_normal",
    batch_norm: bool = False,
    dropout: float = 0.0,
    residual: bool = False,
) -> Sequential:
    """The usual multilayer perceptron: per hidden layer Dense → [BatchNorm] → activation →
    [Dropout], then a Dense output layer (logits). With ``residual`` every hidden layer
    after the first whose width equals its input's is wrapped as x + layer(x)."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    if not (isinstance(dropout, int | float) and 0.0 <= dropout < 1.0):
        raise ValueError(f"dropout: expected a value in [0, 1), got {dropout!r}")
    layers: list[Layer] = []
    width = _positive_int("n_in", n_in)
    for i, h in enumerate(hidden):
        h = _positive_int(f"hidden[{i}]", h)
        block: list[Layer] = [Dense(width, h, init=init, bias=not batch_norm)]
        if batch_norm:
            block.append(BatchNorm(h))
        block.append(Activation(activation))
        if dropout:
            block.append(Dropout(dropout))
        if residual and i > 0 and h == width:
            layers.append(Residual(block))
        else:
            layers.extend(block)
        width = h
    out_init = "xavier_uniform" if init == "zeros" else init
    layers.append(Dense(width, _positive_int("n_out", n_out), init=out_init))
    return Sequential(layers)


__all__ = [
    "ACTIVATIONS",
    "INITIALIZERS",
    "Activation",
    "BatchNorm",
    "Dense",
    "Dropout",
    "Layer",
    "Residual",
    "Sequential",
    "binary_cross_entropy_with_logits",
    "initial_weights",
    "mlp",
    "mse",
    "predictions",
    "softmax_cross_entropy",
]
