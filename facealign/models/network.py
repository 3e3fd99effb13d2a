"""The stacked heatmap network shared by both topologies (seed-spec §2.1).

Input: B x 3 x S x S raw RGB in 0..255 (normalised inside the graph, so
inference and exported models take plain pixels). Output: a list with one
B x K x H x W heatmap tensor per stack (intermediate supervision); the last is
the prediction. With ``predict_z`` each stack's output is B x 2K x H x W: the
K heatmaps, then K depth maps from a small branch on the same features (z is each
depth map's mean under its heatmap: facealign.train.losses.integral_depth). The
branch reads the features through stop_gradient and its layers are built after
all the others, so the x/y part of a z model draws the same initial weights and
trains bit for bit as the 2D model does (depth costs the 2D accuracy nothing);
the next stack is fed the heatmaps only, so the reference's weights load
unchanged. The loss lives outside the network.

    stem:  conv0 -> bn0 -> ReLU -> res0 (w/4 -> w/2) -> maxpool 2x -> res1 -> res2 (w/2 -> w)
    stack i: body = topology(x); body = unit0(body); ll = 1x1 conv-BN-ReLU(body)
             heatmap_i = 1x1 conv(ll) with bias
             depth_i = 1x1 conv(3x3 conv-BN-ReLU(3x3 conv-BN-ReLU(stop_gradient(ll))))   (predict_z)
             next x = x + ll2(ll) + out2(heatmap_i)       (not after the last stack)

``dcn`` (seed-spec §2.5) swaps in 3x3 deformable convolutions: >= 2 for ``ll``
and the heatmap convs; 1 or 3 adds an ``out3`` deformable stage after the
inter-stack remap (hourglass: on every stack, the last stack predicts with it;
SAT: on the non-last stacks only).
"""
from __future__ import annotations

from typing import Callable

from mxnet.gluon import HybridBlock

from .blocks import make_block
from .layers import ConvBNReLU, batch_norm, concat_channels, conv2d, deformable_conv3x3, maxpool_2x, relu
from .specs import stem_channels

# Builds one stack's body: (channels, stack index) -> channels-preserving block.
TopologyFactory = Callable[[int, int], HybridBlock]

# The depth branch's width: the 64 channels it was measured at (bench/depth.py); wider networks narrow
# to it in the branch's first conv, which keeps it at about 4% of hg2-d3-cab's parameters.
DEPTH_CHANNELS = 64


class DepthBranch(HybridBlock):
    """``channels -> K`` depth maps: two 3x3 conv-BN-ReLU, then a 1x1 conv with bias. A 1x1 conv on the shared
    features alone gave 2.7 times the depth error once they no longer learn for it (docs/training.md)."""

    def __init__(self, channels: int, num_landmarks: int, name: str):
        super().__init__(prefix=name + "_")
        mid = min(channels, DEPTH_CHANNELS)
        self.a = ConvBNReLU(channels, mid, 3, name + "_a")
        self.b = ConvBNReLU(mid, mid, 3, name + "_b")
        self.out = conv2d(mid, num_landmarks, 1, name, use_bias=True)

    def hybrid_forward(self, F, x):
        return self.out(self.b(self.a(x)))


class StackedHeatmapNet(HybridBlock):
    def __init__(self, *, topology: str, make_body: TopologyFactory, num_stacks: int, block: str,
                 width: int, num_landmarks: int, input_size: int, heatmap_size: int, dcn: int = 0,
                 predict_z: bool = False):
        super().__init__(prefix="")
        stride = input_size // heatmap_size
        if stride not in (2, 4) or stride * heatmap_size != input_size:
            raise ValueError(f"input_size / heatmap_size must be 2 or 4 (got {input_size} / {heatmap_size})")
        self.num_stacks = num_stacks
        self._k = num_landmarks
        self.topology = topology
        self.dcn = dcn
        stem_c, mid_c = stem_channels(width)

        # Stem. A 4x-larger input (e.g. 256 -> 64) gets the reference's 7x7 stride-2 conv0.
        if stride == 4:
            self.conv0 = conv2d(3, stem_c, 7, "conv0", stride=2, padding=3)
        else:
            self.conv0 = conv2d(3, stem_c, 3, "conv0")
        self.bn0 = batch_norm(stem_c, "bn0")
        self.res0 = make_block(block, stem_c, mid_c, "res0")
        self.res1 = make_block(block, mid_c, mid_c, "res1")
        self.res2 = make_block(block, mid_c, width, "res2")

        deformable_head = dcn >= 2
        out3_on = dcn in (1, 3)
        self._bodies, self._units, self._lls, self._heads, self._depths = [], [], [], [], []
        self._ll2, self._out2, self._out3, self._out3_body = {}, {}, {}, {}
        for i in range(num_stacks):
            last = i == num_stacks - 1
            self._bodies.append(self._child(make_body(width, i), f"body{i}"))
            self._units.append(self._child(make_block(block, width, width, f"stack{i}_unit0"), f"unit{i}"))
            self._lls.append(self._child(
                ConvBNReLU(width, width, 3 if deformable_head else 1, f"stack{i}_ll", deformable=deformable_head),
                f"ll{i}"))
            head_name = "heatmap" if last else f"heatmap{i}"
            head = (deformable_conv3x3(width, num_landmarks, head_name) if deformable_head
                    else conv2d(width, num_landmarks, 1, head_name, use_bias=True))
            self._heads.append(self._child(head, f"head{i}"))
            remap = not last or (out3_on and topology == "hourglass")
            if remap:
                self._ll2[i] = self._child(conv2d(width, width, 1, f"stack{i}_ll2", use_bias=True), f"ll2_{i}")
                self._out2[i] = self._child(conv2d(num_landmarks, width, 1, f"stack{i}_out2", use_bias=True),
                                            f"out2_{i}")
            if out3_on and topology == "hourglass":
                self._out3[i] = self._child(deformable_conv3x3(width, num_landmarks, f"stack{i}_out3"), f"out3_{i}")
                if not last:
                    self._out3_body[i] = self._child(
                        conv2d(num_landmarks, width, 1, f"stack{i}_body", use_bias=True), f"out3_body{i}")
            elif out3_on and not last:  # SAT: a deformable 256 -> 256 stage between stacks
                self._out3[i] = self._child(deformable_conv3x3(width, width, f"stack{i}_out3"), f"out3_{i}")

        # Last, so the layers above draw the random initial weights they draw in the 2D model.
        for i in range(num_stacks if predict_z else 0):
            self._depths.append(self._child(DepthBranch(width, num_landmarks, f"stack{i}_depth"), f"depth{i}"))

    def _child(self, block: HybridBlock, attr: str) -> HybridBlock:
        self.register_child(block, attr)
        return block

    def hybrid_forward(self, F, x):
        x = (x - 127.5) * 0.0078125  # raw RGB 0..255 -> about [-1, 1], as the reference's graph does
        x = relu(F, self.bn0(self.conv0(x)))
        x = self.res2(self.res1(maxpool_2x(F, self.res0(x))))

        heatmaps = []
        for i in range(self.num_stacks):
            shortcut = x
            body = self._units[i](self._bodies[i](x))
            ll = self._lls[i](body)
            out = self._heads[i](ll)
            prediction = out
            if i in self._ll2:
                x = shortcut + self._ll2[i](ll) + self._out2[i](out)
                if i in self._out3:
                    out3 = self._out3[i](x)
                    if self.topology == "hourglass":
                        if i in self._out3_body:
                            x = self._out3_body[i](out3)
                        else:
                            prediction = out3  # dcn 1/3 hourglass: the last stack predicts through out3
                    else:
                        x = out3
            if self._depths:  # the depth maps of the features the heatmaps come from (K + K channels)
                # stop_gradient: the depth loss shaping the shared features cost 23% of the 2D NME
                depth_maps = self._depths[i](F.stop_gradient(ll))
                prediction = concat_channels(F, [prediction, depth_maps], [self._k, self._k])
            heatmaps.append(prediction)
        return heatmaps
