"""The residual block types, each ``in_channels -> channels`` at stride 1: the reference's four (seed-spec
§2.4) and "mobile", made for CPUs.

``make_block(kind, in_channels, channels, name)`` is the reference's
``conv_block``: "inception" and "cab" exist only for ``in == out``, and fall
back to "resnet" and "hpm" respectively where a block changes the channel
count (the stem's ``res0``/``res2``).
"""
from __future__ import annotations

from typing import Callable

from mxnet.gluon import HybridBlock

from .layers import BNReLU, ConvBNReLU, concat_channels, conv2d, relu, scale
from .specs import block_kind


class PreActBottleneck(HybridBlock):
    """"resnet": pre-activation bottleneck (fb.resnet.torch).

    BN-ReLU-conv1x1(C/2) -> BN-ReLU-conv3x3(C/2) -> BN-ReLU-conv1x1(C), plus the
    input, or a 1x1 projection of the *pre-activated* input when channels change.
    """

    def __init__(self, in_channels: int, channels: int, name: str):
        super().__init__(prefix=name + "_")
        mid = channels // 2
        self.act1 = BNReLU(in_channels, name + "_bn1")
        self.conv1 = conv2d(in_channels, mid, 1, name + "_conv1")
        self.act2 = BNReLU(mid, name + "_bn2")
        self.conv2 = conv2d(mid, mid, 3, name + "_conv2")
        self.act3 = BNReLU(mid, name + "_bn3")
        self.conv3 = conv2d(mid, channels, 1, name + "_conv3")
        self.shortcut = conv2d(in_channels, channels, 1, name + "_sc") if in_channels != channels else None

    def hybrid_forward(self, F, x):
        act1 = self.act1(x)
        out = self.conv3(self.act3(self.conv2(self.act2(self.conv1(act1)))))
        return out + (self.shortcut(act1) if self.shortcut is not None else x)


class HPMBlock(HybridBlock):
    """"hpm": hierarchical, parallel and multi-scale block (Bulat & Tzimiropoulos).

    Three chained pre-activated 3x3 convs to C/2, C/4, C/4 channels, concatenated
    back to C, plus the same shortcut rule as the resnet block.
    """

    def __init__(self, in_channels: int, channels: int, name: str):
        super().__init__(prefix=name + "_")
        c1, c2 = channels // 2, channels // 4
        self.act1 = BNReLU(in_channels, name + "_bn1")
        self.conv1 = conv2d(in_channels, c1, 3, name + "_conv1")
        self.act2 = BNReLU(c1, name + "_bn2")
        self.conv2 = conv2d(c1, c2, 3, name + "_conv2")
        self.act3 = BNReLU(c2, name + "_bn3")
        self.conv3 = conv2d(c2, channels - c1 - c2, 3, name + "_conv3")
        self.shortcut = conv2d(in_channels, channels, 1, name + "_sc") if in_channels != channels else None
        self.pieces = (c1, c2, channels - c1 - c2)

    def hybrid_forward(self, F, x):
        act1 = self.act1(x)
        b1 = self.conv1(act1)
        b2 = self.conv2(self.act2(b1))
        b3 = self.conv3(self.act3(b2))
        shortcut = self.shortcut(act1) if self.shortcut is not None else x
        return concat_channels(F, (b1, b2, b3), self.pieces) + shortcut


class InceptionResA(HybridBlock):
    """"inception": Inception-ResNet-A (the reference's ``block35``), channel-preserving.

    Towers 1x1(C/4); 1x1(C/4)-3x3(C/4); 1x1(C/4)-3x3(3C/8)-3x3(C/2), concatenated
    (C), a 1x1 conv + BN without activation, added to the input, then ReLU.
    """

    def __init__(self, channels: int, name: str):
        super().__init__(prefix=name + "_")
        c4, c38, c2 = channels // 4, channels * 3 // 8, channels // 2
        self.tower0 = ConvBNReLU(channels, c4, 1, name + "_conv")
        self.tower1_0 = ConvBNReLU(channels, c4, 1, name + "_conv1_0")
        self.tower1_1 = ConvBNReLU(c4, c4, 3, name + "_conv1_1")
        self.tower2_0 = ConvBNReLU(channels, c4, 1, name + "_conv2_0")
        self.tower2_1 = ConvBNReLU(c4, c38, 3, name + "_conv2_1")
        self.tower2_2 = ConvBNReLU(c38, c2, 3, name + "_conv2_2")
        self.project = ConvBNReLU(c4 + c4 + c2, channels, 1, name + "_conv_out", relu=False)
        self.pieces = (c4, c4, c2)

    def hybrid_forward(self, F, x):
        t0 = self.tower0(x)
        t1 = self.tower1_1(self.tower1_0(x))
        t2 = self.tower2_2(self.tower2_1(self.tower2_0(x)))
        return relu(F, x + self.project(concat_channels(F, (t0, t1, t2), self.pieces)))


class CAB(HybridBlock):
    """"cab": channel aggregation block (SDU-Net), channel-preserving.

    A chain of 3x3 convs halves the channels three times (b1: C/2, b2: C/4,
    b3: C/8); the reference's memoised 4x4 grid then merges neighbours by
    averaging a tensor with a channel-doubled ``cat(y, y)`` of the narrower one::

        o33 = (x       + 2*b1) / 2          # C
        o23 = (dw(b1)  + 2*b2) / 2          # C/2, dw = depthwise 3x3 conv-BN-ReLU
        o13 = (dw(b2)  + 2*b3) / 2          # C/4
        o22 = (o33 + 2*o23) / 2 ; o12 = (o23 + 2*o13) / 2
        out = (o22 + 2*o12) / 2             # C

    (``2*t`` above is ``cat(t, t)``.) No pre-activation and no explicit
    shortcut: the input reaches the output through o33 with weight 1/8.
    Names: ``{name}_w3_h4_1``, ``_w2_h4_1``, ``_w1_h4_1``, ``_w2_h3_2``, ``_w1_h3_2``.
    """

    def __init__(self, channels: int, name: str, *, dilation: int = 1, groups: int = 1):
        super().__init__(prefix=name + "_")
        c2, c4, c8 = channels // 2, channels // 4, channels // 8
        self.channels = channels
        self.b1 = ConvBNReLU(channels, c2, 3, f"{name}_w3_h4_1", dilation=dilation, groups=groups)
        self.b2 = ConvBNReLU(c2, c4, 3, f"{name}_w2_h4_1")
        self.b3 = ConvBNReLU(c4, c8, 3, f"{name}_w1_h4_1")
        self.dw23 = ConvBNReLU(c2, c2, 3, f"{name}_w2_h3_2", groups=c2)
        self.dw13 = ConvBNReLU(c4, c4, 3, f"{name}_w1_h3_2", groups=c4)

    def hybrid_forward(self, F, x):
        # Each merge halves; we add without halving and scale once by 1/8 at the end. Halving is exact
        # in binary floating point, so fl(a + b) / 2 == fl(a / 2 + b / 2) and the result is bitwise the
        # reference's, with one scaling pass (``scale``: oneDNN) over the output instead of six scalar ops.
        def merge(wide, narrow, narrow_channels):  # without the halving
            return wide + concat_channels(F, (narrow, narrow), (narrow_channels,) * 2)

        c = self.channels
        b1 = self.b1(x)
        b2 = self.b2(b1)
        b3 = self.b3(b2)
        s33 = merge(x, b1, c // 2)  # 2 * o33
        s23 = merge(self.dw23(b1), b2, c // 4)  # 2 * o23
        s13 = merge(self.dw13(b2), b3, c // 8)  # 2 * o13
        out = merge(merge(s33, s23, c // 2), merge(s23, s13, c // 4), c // 2)  # (4 o22 + cat(4 o12))
        return scale(F, out, self.channels, 0.125)


class InvertedResidual(HybridBlock):
    """"mobile": MobileNetV2's inverted residual (Sandler et al., CVPR 2018), made for CPUs.

    conv1x1 to ``EXPANSION`` x C -> BN -> ReLU -> depthwise 3x3 -> BN -> ReLU -> conv1x1 to C -> BN (linear),
    plus the input, or a 1x1 projection (conv, BN) when channels change. Its 3x3 work is depthwise: about a
    ninth of a resnet block's multiply-adds at the same width.
    """

    EXPANSION = 2

    def __init__(self, in_channels: int, channels: int, name: str):
        super().__init__(prefix=name + "_")
        mid = self.EXPANSION * channels
        self.expand = ConvBNReLU(in_channels, mid, 1, name + "_expand")
        self.depthwise = ConvBNReLU(mid, mid, 3, name + "_dw", groups=mid)
        self.project = ConvBNReLU(mid, channels, 1, name + "_project", relu=False)
        self.shortcut = (ConvBNReLU(in_channels, channels, 1, name + "_sc", relu=False)
                         if in_channels != channels else None)

    def hybrid_forward(self, F, x):
        out = self.project(self.depthwise(self.expand(x)))
        return out + (self.shortcut(x) if self.shortcut is not None else x)


BlockFactory = Callable[[int, int, str], HybridBlock]

# kind -> factory; "inception" and "cab" are built only for in == out (specs.BLOCK_FALLBACK)
BLOCKS: dict[str, BlockFactory] = {
    "resnet": lambda cin, cout, name: PreActBottleneck(cin, cout, name),
    "hpm": lambda cin, cout, name: HPMBlock(cin, cout, name),
    "inception": lambda cin, cout, name: InceptionResA(cout, name),
    "cab": lambda cin, cout, name: CAB(cout, name),
    "mobile": lambda cin, cout, name: InvertedResidual(cin, cout, name),
}


def make_block(kind: str, in_channels: int, channels: int, name: str) -> HybridBlock:
    """The reference's ``conv_block``: a ``kind`` block, or its fallback when channels change."""
    if kind not in BLOCKS:
        raise ValueError(f"unknown block type {kind!r}; expected one of {sorted(BLOCKS)}")
    return BLOCKS[block_kind(kind, in_channels, channels)](in_channels, channels, name)
