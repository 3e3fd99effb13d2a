"""One hourglass module of depth ``d`` (seed-spec §2.2), ``channels -> channels``.

    hourglass(x, d) = up1(x) + upsample2x(low3(inner(low1(maxpool2x(x)))))
    inner = hourglass(., d - 1) if d > 1 else low2

Blocks per module: B(1) = 4, B(d) = 3 + B(d - 1), so d=3 has 10 and d=4 has 13.
Names follow the reference: ``{name}_up1_0``, ``{name}_low1_0``, the inner
module ``{name}_{d-1}``, ``{name}_low2_0`` at the bottom, ``{name}_low3_0``.
"""
from __future__ import annotations

from mxnet.gluon import HybridBlock

from .blocks import make_block
from .layers import maxpool_2x, upsample_nearest_2x


class Hourglass(HybridBlock):
    def __init__(self, channels: int, depth: int, block: str, name: str):
        super().__init__(prefix=name + "_")
        if depth < 1:
            raise ValueError(f"hourglass depth must be >= 1, got {depth}")
        self.up1 = make_block(block, channels, channels, f"{name}_up1_0")
        self.low1 = make_block(block, channels, channels, f"{name}_low1_0")
        if depth > 1:
            self.inner = Hourglass(channels, depth - 1, block, f"{name}_{depth - 1}")
        else:
            self.inner = make_block(block, channels, channels, f"{name}_low2_0")
        self.low3 = make_block(block, channels, channels, f"{name}_low3_0")

    def hybrid_forward(self, F, x):
        low = self.low3(self.inner(self.low1(maxpool_2x(F, x))))
        return self.up1(x) + upsample_nearest_2x(F, low)
