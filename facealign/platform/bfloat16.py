"""What runs exactly in bfloat16 under MXNet 1.9.1's AMP: the operator lists training and exports share.

AMP's default bfloat16 lists keep every operator they do not know in float32, among them pure copies
(``slice``, ``Reshape``, ``BlockGrad``, ``ones_like``, ``expand_dims``, ``squeeze``) and multiplication
by a scalar. ``layers.scale`` (CAB's 1/8) builds its constant weight from a 1 x C x 1 x 1 slice of its
input, so each CAB block cast its whole input to float32 only to slice one pixel of it: 23 full-size
casts per forward pass of hg2-d3-cab (profiled with DNNL_VERBOSE). Those operators are exact in
bfloat16 (copies, and a scalar that is a power of two), so they run in it. Imports no MXNet at load.
"""
from __future__ import annotations

# Exact in bfloat16: copies and reshapes, and ``_mul_scalar`` by the powers of two ``layers.scale`` uses.
BFLOAT16_EXACT_OPS = frozenset({"slice", "Reshape", "reshape", "BlockGrad", "stop_gradient", "ones_like",
                                "_mul_scalar", "_MulScalar", "repeat", "expand_dims", "squeeze"})


def float32_ops(target_dtype: str) -> list[str] | None:
    """AMP's float32 list for ``target_dtype`` without the operators that are exact in bfloat16
    (None: AMP's own list, for float16)."""
    if target_dtype != "bfloat16":
        return None
    from mxnet.contrib.amp import lists

    return [op for op in lists.symbol_bf16.FP32_FUNCS if op not in BFLOAT16_EXACT_OPS]
