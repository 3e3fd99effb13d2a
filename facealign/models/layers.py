"""Primitive layers with the reference's conventions.

Every layer is built with explicit ``in_channels`` so shapes are known at
construction (parameter counts are testable before a forward pass, and
``load_parameters`` needs no dummy input).

Parameter names follow the reference's Module names (seed-spec §2, §11.5):
each layer takes the reference's layer name as ``name`` and gets the Gluon
prefix ``name + "_"``, so a conv named ``conv0`` owns ``conv0_weight`` and a
BatchNorm named ``bn0`` owns ``bn0_gamma`` / ``bn0_running_mean``. Blocks are
built outside any ``name_scope`` so these prefixes are used verbatim; a name
used twice inside one network makes ``collect_params`` fail loudly.
"""
from __future__ import annotations

import os

import mxnet as mx
from mxnet.gluon import HybridBlock, nn

BN_MOMENTUM = 0.9
BN_EPSILON = 2e-5


def conv2d(in_channels: int, channels: int, kernel: int, name: str, *, groups: int = 1,
           dilation: int = 1, stride: int = 1, padding: int | None = None, use_bias: bool = False) -> nn.Conv2D:
    """A 2D convolution; "same" padding for odd kernels unless ``padding`` is given."""
    if padding is None:
        padding = dilation * (kernel - 1) // 2
    return nn.Conv2D(channels, kernel, strides=stride, padding=padding, dilation=dilation, groups=groups,
                     use_bias=use_bias, in_channels=in_channels, prefix=name + "_")


def batch_norm(channels: int, name: str) -> nn.BatchNorm:
    """BatchNorm with learnable gamma (the reference's fix_gamma=False), eps 2e-5, momentum 0.9."""
    return nn.BatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, in_channels=channels, prefix=name + "_")


def deformable_conv3x3(in_channels: int, channels: int, name: str) -> HybridBlock:
    """3x3 deformable convolution with bias and a zero-initialised 18-channel offset conv (seed-spec §2.5)."""
    from mxnet.gluon.contrib.cnn import DeformableConvolution

    layer = DeformableConvolution(channels, kernel_size=(3, 3), padding=(1, 1), num_deformable_group=1,
                                  use_bias=True, in_channels=in_channels, offset_weight_initializer="zeros",
                                  offset_bias_initializer="zeros", prefix=name + "_")
    # MXNet 1.9.1 leaves the weight's input dimension deferred even with in_channels given; fill it in
    # so every shape is known at construction, like the other layers.
    layer.deformable_conv_weight.shape = (channels, in_channels, 3, 3)
    return layer


def scale(F, x, channels: int, factor: float):
    """``x * factor`` as a depthwise 1x1 convolution with a constant weight (no parameter).

    Scalar multiplication has no oneDNN kernel: under bfloat16 AMP it runs in
    float32 between casts, and in float32 it is a slow memory-bound loop; this
    convolution made a float32 training step 1.5x and a bfloat16 one 2x faster
    (bench/train.py, README). With ``factor`` a power of two the product is exact,
    so it equals ``x * factor`` bitwise. The weight is made from a slice of ``x``
    so it has ``x``'s dtype (AMP's wrappers break on constant ops such as ``full``).
    """
    like = F.slice(x, begin=(0, 0, 0, 0), end=(1, channels, 1, 1))  # 1 x C x 1 x 1
    weight = F.stop_gradient(F.reshape(F.ones_like(like) * factor, shape=(channels, 1, 1, 1)))
    return F.Convolution(x, weight, kernel=(1, 1), num_filter=channels, num_group=channels, no_bias=True)


# oneDNN 2.4.4 (MXNet 1.9.1) stores activations in channel blocks of 16 (AVX-512; 8 on AVX2). The backward
# pass of a 4-D channel concat splits its incoming gradient into sub-memories at the pieces' offsets; where
# that gradient comes blocked (from a convolution's backward) and an offset is not a whole block, oneDNN
# fails ("could not construct a sub-memory") or divides by zero (SIGFPE). A 16-aligned offset is whole
# on every ISA. FACEALIGN_ONEDNN_CONCAT_ALIGNMENT=1 gives every concat to oneDNN: how to see whether a
# newer MXNet still needs this (python -m facealign.cli.kernel_check).
_RAW_ALIGNMENT = os.environ.get("FACEALIGN_ONEDNN_CONCAT_ALIGNMENT", "16")
if not _RAW_ALIGNMENT.isdigit() or int(_RAW_ALIGNMENT) < 1:
    raise SystemExit(f"FACEALIGN_ONEDNN_CONCAT_ALIGNMENT={_RAW_ALIGNMENT!r}: expected a whole number of channels "
                     f">= 1 (16, the default, keeps oneDNN's concats to whole blocks)")
CONCAT_ALIGNMENT = int(_RAW_ALIGNMENT)


def concat_channels(F, pieces, channels):
    """``concat(pieces, dim=1)``, with ``channels`` the pieces' channel counts.

    Where every piece is a whole number of oneDNN channel blocks this is oneDNN's concat. Elsewhere the
    pieces are concatenated as B x C x H x W x 1 tensors, which MXNet's own concat handles (oneDNN's takes
    4-D only) in plain layout in both passes; the values are the same either way (a copy), and so are
    the gradients (a split). (A B x C x HW reshape instead broke bfloat16's backward reorders.)
    """
    if all(c % CONCAT_ALIGNMENT == 0 for c in channels):
        return F.concat(*pieces, dim=1)
    flat = [F.expand_dims(piece, axis=4) for piece in pieces]
    return F.squeeze(F.concat(*flat, dim=1), axis=4)


def relu(F, x):
    """ReLU through ``Activation``, which oneDNN runs natively in float32 and bfloat16.

    The plain ``relu`` operator has no oneDNN kernel: under bfloat16 AMP it fell
    back to an emulated loop and took 60% of a training step (bench/train.py).
    """
    return F.Activation(x, act_type="relu")


class ConvBNReLU(HybridBlock):
    """conv (no bias) -> BN -> optional ReLU: the reference's ``lin3`` and ``ConvFactory``.

    Names: ``{name}_conv`` and ``{name}_bn``.
    """

    def __init__(self, in_channels: int, channels: int, kernel: int, name: str, *, groups: int = 1,
                 dilation: int = 1, relu: bool = True, deformable: bool = False):
        super().__init__(prefix=name + "_")
        if deformable:
            self.conv = deformable_conv3x3(in_channels, channels, name + "_conv")
        else:
            self.conv = conv2d(in_channels, channels, kernel, name + "_conv", groups=groups, dilation=dilation)
        self.bn = batch_norm(channels, name + "_bn")
        self.relu = relu

    def hybrid_forward(self, F, x):
        x = self.bn(self.conv(x))
        return relu(F, x) if self.relu else x


class BNReLU(HybridBlock):
    """BN -> ReLU: the pre-activation used by the resnet and HPM blocks."""

    def __init__(self, channels: int, name: str):
        super().__init__(prefix=name + "_")
        self.bn = batch_norm(channels, name)

    def hybrid_forward(self, F, x):
        return relu(F, self.bn(x))


class Deconv2xBNReLU(HybridBlock):
    """Learned 2x up-sampling of the SAT grid: 2x2 stride-2 transposed conv (no bias, bilinear init), BN, ReLU.

    The weight keeps the reference name ``{sat}_upsampling_w{w}_h{h}_weight`` and the transposed conv's
    layout (in, out, 2, 2): the reference's initialiser picked bilinear init by that "upsampling" substring.
    It is computed as what it is, a 1x1 convolution to the four output phases followed by
    ``depth_to_space``: out[o, 2i+a, 2j+b] = sum_c x[c, i, j] W[c, o, a, b]. The same function to float32
    rounding; oneDNN 2.4.4's ``Deconvolution`` backward crashed bfloat16 training of SAT models at
    several widths (docs: performance).
    """

    def __init__(self, channels: int, deconv_name: str, bn_name: str):
        super().__init__(prefix=deconv_name + "_")
        self.channels = channels
        self.weight = self.params.get("weight", shape=(channels, channels, 2, 2), init=mx.init.Bilinear())
        self.bn = batch_norm(channels, bn_name)

    def hybrid_forward(self, F, x, weight):
        # (in, out, a, b) -> ((a, b, out), in): depth_to_space reads channel (a * 2 + b) * out + o
        phases = F.reshape(F.transpose(weight, axes=(2, 3, 1, 0)), shape=(4 * self.channels, self.channels, 1, 1))
        y = F.Convolution(x, phases, kernel=(1, 1), num_filter=4 * self.channels, no_bias=True)
        return relu(F, self.bn(F.depth_to_space(y, block_size=2)))


def upsample_nearest_2x(F, x):
    """Parameter-free nearest-neighbour 2x up-sampling (hourglass merge, SAT w=1 column)."""
    return F.UpSampling(x, scale=2, sample_type="nearest")


def maxpool_2x(F, x):
    """2x2 stride-2 max pooling: the only down-sampling inside the networks."""
    return F.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max")
