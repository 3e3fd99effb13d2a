"""Heatmap losses: each a function of (prediction, target, optional weight map), per stack.

    >>> total, per_stack = stacked_loss(outputs, target, kind="mse", stack_weights=[1.0, 1.0])

``F`` is ``mx.nd`` or ``mx.sym`` (the functions are hybridisable); the tests
hold a NumPy reference of each. Predictions are cast to float32 first, so a
network computing in bfloat16 or float16 (AMP) is scored in float32.
"""
from __future__ import annotations

LOSSES = ("mse",)


def mse(F, pred, target, weight=None):
    """The reference's loss (seed-spec §5.1): the mean of (pred - target)^2 over every element,
    optionally weighted element-wise. ``square`` rather than ``** 2``: exact, and no pow() loop."""
    err = F.square(pred - target)
    if weight is not None:
        err = err * weight
    return F.mean(err)


_FUNCTIONS = {"mse": mse}


def _float32(x):
    """float32 for reduced-precision outputs; float32 ones as they are (astype would copy)."""
    import numpy as np

    dtype = getattr(x, "dtype", None)
    return x if dtype is None or dtype == np.float32 else x.astype("float32")


def stacked_loss(outputs, target, *, kind: str = "mse", stack_weights=None, weight=None, F=None):
    """(total, [loss of each stack]): the stacks' losses against the same target, weighted and summed
    (intermediate supervision; equal weights of 1 are the reference's)."""
    if kind not in _FUNCTIONS:
        raise ValueError(f"loss kind must be one of {LOSSES}, got {kind!r}")
    if F is None:
        import mxnet as mx

        F = mx.nd
    fn = _FUNCTIONS[kind]
    weights = stack_weights or [1.0] * len(outputs)
    per_stack = [fn(F, _float32(o), target, weight) for o in outputs]
    return sum(w * loss for w, loss in zip(weights, per_stack)), per_stack
