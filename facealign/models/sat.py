"""One Scale Aggregation Topology module (seed-spec §2.3), ``channels -> channels``.

A grid of nodes (w, h), 1 <= w <= h <= n, evaluated bottom-up:

* bottom row h = n: node (n, n) is the input; node (w, n) = CAB -> maxpool2x -> CAB
  of node (w+1, n), so row n holds n resolutions (full, 1/2, ..., 1/2^(n-1));
* node (w, h) for h < n merges x = node(w+1, h+1) with the half-resolution
  y = node(w, h+1): ``(xbody + ybody) / 2`` where
  - xbody = depthwise 3x3 conv-BN-ReLU of x when h is odd and h != w, else x;
  - ybody = learned 2x up-sampling (2x2 transposed conv, BN, ReLU) of y for
    w > 1, or CAB(nearest 2x up-sampling of y) in the w = 1 column.

The output is node (1, 1), at the input's resolution. The SAT always uses CAB
blocks inside, whatever block type the rest of the network uses. With n = 4
(depth d = 3) a module has 9 CABs, 3 transposed convs and 2 depthwise layers.
"""
from __future__ import annotations

from mxnet.gluon import HybridBlock

from .blocks import CAB
from .layers import ConvBNReLU, Deconv2xBNReLU, maxpool_2x, scale, upsample_nearest_2x


class _DownStep(HybridBlock):
    """CAB -> maxpool 2x -> CAB, one step down the bottom row."""

    def __init__(self, channels: int, name: str):
        super().__init__(prefix=name + "_")
        self.pre = CAB(channels, name + "_1")
        self.post = CAB(channels, name + "_2")

    def hybrid_forward(self, F, x):
        return self.post(maxpool_2x(F, self.pre(x)))


class _NearestUpCAB(HybridBlock):
    """Nearest 2x up-sampling then a CAB: the w = 1 column's up path."""

    def __init__(self, channels: int, name: str):
        super().__init__(prefix=name + "_")
        self.cab = CAB(channels, name)

    def hybrid_forward(self, F, x):
        return self.cab(upsample_nearest_2x(F, x))


class SAT(HybridBlock):
    def __init__(self, channels: int, n: int, name: str):
        super().__init__(prefix=name + "_")
        if n < 2:
            raise ValueError(f"SAT grid size must be >= 2 (depth >= 1), got {n}")
        self.n, self.channels = n, channels
        self._down: dict[int, HybridBlock] = {}
        self._x: dict[tuple[int, int], HybridBlock] = {}
        self._y: dict[tuple[int, int], HybridBlock] = {}
        for w in range(n - 1, 0, -1):
            self._down[w] = self._child(_DownStep(channels, f"{name}_w{w}_h{n}"), f"down_w{w}")
        for h in range(n - 1, 0, -1):
            for w in range(h, 0, -1):
                if h % 2 == 1 and h != w:
                    self._x[w, h] = self._child(
                        ConvBNReLU(channels, channels, 3, f"{name}_w{w}_h{h}_x", groups=channels), f"x_w{w}_h{h}")
                if w > 1:
                    up = Deconv2xBNReLU(channels, f"{name}_upsampling_w{w}_h{h}", f"{name}_w{w}_h{h}_y_bn")
                else:
                    up = _NearestUpCAB(channels, f"{name}_w{w}_h{h}_4")
                self._y[w, h] = self._child(up, f"y_w{w}_h{h}")

    def _child(self, block: HybridBlock, attr: str) -> HybridBlock:
        self.register_child(block, attr)
        return block

    def hybrid_forward(self, F, x):
        n = self.n
        node = {(n, n): x}
        for w in range(n - 1, 0, -1):
            node[w, n] = self._down[w](node[w + 1, n])
        for h in range(n - 1, 0, -1):
            for w in range(h, 0, -1):
                x_in, y_in = node[w + 1, h + 1], node[w, h + 1]
                xbody = self._x[w, h](x_in) if (w, h) in self._x else x_in
                node[w, h] = scale(F, xbody + self._y[w, h](y_in), self.channels, 0.5)  # (x + y) / 2
        return node[1, 1]
