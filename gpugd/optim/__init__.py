"""Optimizer classes with torch.optim's names, defaults and semantics, over the fused ops.

    params = gpugd.FlatParams({"w": (784, 128), "b": (128,)})
    opt = gpugd.optim.AdamW(params, lr=1e-3)                 # the whole arena, one group
    opt = gpugd.optim.AdamW(                                 # param groups, by name
        [{"params": params, "names": ["w"]},
         {"params": params, "names": ["b"], "weight_decay": 0.0}], lr=1e-3)
    opt = gpugd.optim.SGD(arrays, grads=grad_arrays, lr=0.1, momentum=0.9)  # plain lists

    loss = ...; (write gradients into params.grads / grad_arrays); opt.step(); opt.zero_grad()

Clipping and non-finite gradients: ``max_grad_norm=`` (torch's global-norm clipping, fused:
one read-only norm pass, then the coefficient enters the update kernel through its grad
scale; gradients are never rewritten), ``clip_value=`` (elementwise, inside the update
kernel), ``nonfinite="propagate" | "skip" | "error"``; ``last_report`` and
``skipped_steps`` tell what happened. ``gpugd.monitor.GradientMonitor`` records gradient
health from the same passes.

Mixed precision: parameters (and gradients) may be float16 or bfloat16 — a half-precision
arena (``FlatParams(..., dtype=ml_dtypes.bfloat16)``) or lists. States are then float32
(``state_dtype=``: or bfloat16); ``master_weights=True`` keeps fp32 copies of the
parameters (state "master", in the arena's layout), which the fused kernel updates and
rounds into the half-precision parameters in the same pass; ``rounding="stochastic"``
(bfloat16 parameters) rounds them stochastically, from ``seed`` and the step number.
``gpugd.amp.LossScaler`` adds dynamic loss scaling.

A param group is either names of a ``FlatParams`` arena or a list of arrays with a list of
gradient arrays beside it (``grads``), plus hyperparameter overrides. Each step is one
launch per group: one fused kernel over the group's span of the arena (its tensors merged
where they are adjacent, padding included), or the multi-tensor kernel over its list.
States live beside the parameters (arena: same layout, ``params.new_state``). The step
counter counts from 1 as torch's does; every group steps together.

Checkpoints: ``state_dict()``/``load_state_dict()`` as torch's (states as NumPy copies,
no parameters); ``save(path)`` writes parameters and optimizer state (and the attached
schedule's) to one ``.npz`` atomically (temporary file, fsync, rename); ``load(path)``
checks kind, names, shapes, dtypes, every hyperparameter, counter and array before it
writes anything, so a refused checkpoint leaves the optimizer and parameters as they were,
and a resumed run continues bit for bit. Hyperparameters: as torch's ``load_state_dict``,
the checkpoint's values (lr, betas, weight decay, …) replace the optimizer's — each must be
a legal value, and the states it needs must be the ones this optimizer holds (e.g. Adam's
``amsgrad`` cannot change); set ``param_groups[i]["lr"]`` after loading to override one.

8-bit states: ``state_bits=8`` (Adam, AdamW, SGD with momentum, plain RMSprop, Adagrad,
Lion; float32, float16 or bfloat16 parameters, with ``master_weights`` and stochastic
rounding as for 32-bit states) keeps each state of a tensor with at least ``quant8.MIN_8BIT``
elements as uint8 codes plus a float32 absmax per ``block_size`` elements
(``gpugd.ops.optim8``; ``state["w"]["exp_avg.codes"]``, ``["exp_avg.absmax"]``), smaller
tensors' states in float32. Checkpoints store codes and scales (loaded bit for bit) with
their ``state_bits`` and ``block_size``; ``load(path, convert_states=True)`` or
``convert_state_dict`` converts between 32-bit and 8-bit states.
"""

from ._base import MASTER, NONFINITE_POLICIES, Optimizer
from ._checkpoint import FORMAT, CheckpointError, convert_state_dict
from ._rules import SGD, Adagrad, Adam, AdamW, Lion, NAdam, RMSprop
from ._step import StepReport

__all__ = [
    "FORMAT",
    "MASTER",
    "NONFINITE_POLICIES",
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "CheckpointError",
    "Lion",
    "NAdam",
    "Optimizer",
    "RMSprop",
    "StepReport",
    "convert_state_dict",
]
