"""MXNet AMP for training our networks: ``init`` before the network is built.

``UpSampling`` has no bfloat16 kernel in MXNet 1.9.1: it stays float32, and its output goes back to
bfloat16 (facealign.platform.bfloat16 has the lists). MXNet is imported inside: processes choose the
CPU's ISA before it is imported (facealign.platform.cpu_isa).
"""
from __future__ import annotations

from facealign.platform.bfloat16 import float32_ops


def init(target_dtype: str) -> None:
    """``amp.init`` with our lists: call before the network is built (it patches MXNet's operators).

    For bfloat16, ``UpSampling`` (float32 only) also casts its output back to bfloat16: otherwise the
    float32 island it starts spreads, through the hourglass merge's sum (AMP casts a sum to its widest
    input), into the BatchNorms, ReLUs and sums of the next blocks.
    """
    global _INITIALISED
    import mxnet as mx
    from mxnet.contrib import amp

    if _INITIALISED:  # amp.init runs once per process; wrapping UpSampling twice would cast twice
        return
    amp.init(target_dtype=target_dtype, fp32_ops=float32_ops(target_dtype))
    if target_dtype == "bfloat16":
        for module in (mx.sym, mx.sym.op, mx.nd, mx.nd.op):
            module.UpSampling = _returning_to(module.UpSampling, module.amp_cast, amp.amp.bfloat16)
    _INITIALISED = True


_INITIALISED = False


def _returning_to(op, amp_cast, dtype):
    def op_then_cast(*args, **kwargs):
        return amp_cast(op(*args, **kwargs), dtype=dtype)

    op_then_cast.__name__, op_then_cast.__doc__ = op.__name__, op.__doc__
    return op_then_cast
