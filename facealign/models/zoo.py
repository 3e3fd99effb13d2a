"""Building the named models of ``specs.MODELS`` as Gluon networks.

    >>> net = get_model("hg2-d3-cab")                    # the reference's best 2D model
    >>> net = get_model("sat2-d3-cab", num_landmarks=98, input_size=256)

A model name encodes topology, stacks, depth (down-sampling steps) and block:
``hg2-d3-cab`` is Hourglass^2 (d=3) with CAB blocks, ``sat2-d3-cab-3d`` the SAT
for 3D landmarks. "3D" follows the reference (seed-spec §4.2): the network is
the 2D network, trained on 3D-consistent landmarks whose (x, y) projection it
predicts; ``landmark_dims`` records it for evaluation and inference.
"""
from __future__ import annotations

import mxnet as mx

from .hourglass import Hourglass
from .network import StackedHeatmapNet
from .sat import SAT
from .specs import ModelSpec, get_model_spec

def build_model(spec: ModelSpec) -> StackedHeatmapNet:
    """An uninitialised network for ``spec``; ``spec`` is kept on it as ``net.spec``."""
    spec.validate()
    if spec.topology == "hourglass":
        def make_body(channels, i):
            return Hourglass(channels, spec.depth, spec.block, f"stack{i}_hg")
    else:
        def make_body(channels, i):
            return SAT(channels, spec.depth + 1, f"sat{i}")
    net = StackedHeatmapNet(topology=spec.topology, make_body=make_body, num_stacks=spec.num_stacks,
                            block=spec.block, width=spec.width, num_landmarks=spec.num_landmarks,
                            input_size=spec.input_size, heatmap_size=spec.heatmap_size, dcn=spec.dcn,
                            predict_z=spec.predict_z)
    net.spec = spec
    return net


def get_model(name: str, **overrides) -> StackedHeatmapNet:
    """Build the named model (uninitialised; see ``initialize``)."""
    return build_model(get_model_spec(name, **overrides))


def default_initializer() -> mx.init.Initializer:
    """The reference's initialisation (seed-spec §2.7).

    He/MSRA normal for weights; the layers carry their own exceptions
    (bilinear SAT up-sampling, zero deformable offsets, BN gamma 1 / beta 0 /
    mean 0 / var 1, zero biases).
    """
    return mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)


def initialize(net, ctx=None, seed: int | None = None):
    """Initialise ``net`` in place with ``default_initializer`` (optionally seeded) and return it."""
    if seed is not None:
        mx.random.seed(seed)
    net.initialize(default_initializer(), ctx=ctx or mx.cpu())
    return net


def structural_parameters(net) -> dict:
    """{structural name: Parameter}, the names ``save_parameters`` writes (``_units.0.conv.weight`` style).

    They depend on the block tree, not on Gluon's name prefixes, so checkpoints load
    into any instance of the same structure. Gluon has no public call for them:
    this wraps ``Block._collect_params_with_prefix``, private in MXNet 1.9.1 (the
    version pinned in install.sh); re-check it when MXNet changes.
    """
    return dict(net._collect_params_with_prefix())


def count_parameters(net) -> dict:
    """Parameter counts of an initialised or structurally complete network.

    ``trainable`` excludes BatchNorm running statistics; ``total`` includes them;
    ``size_mb`` is the reference's model size: floor(4 * total / 10^6).
    """
    trainable = total = 0
    for p in net.collect_params().values():
        n = 1
        for d in p.shape:
            n *= d
        total += n
        if p.grad_req != "null":
            trainable += n
    return {"trainable": trainable, "total": total, "size_mb": (4 * total) // 10 ** 6}
