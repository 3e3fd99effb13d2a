"""What a network costs to run: its multiply-adds per image at an input size, read off its MXNet graph.

Every ``Convolution`` (deformable ones too), ``Deconvolution`` and ``FullyConnected`` counts its
multiply-adds; element-wise layers (BatchNorm, ReLU, additions, pooling) are left out, as the papers that
give GFLOPs for PFLD, RTMPose or MobileNet leave them out. A multiply-add is two floating-point
operations: ``gflops`` is 2 x 10^9 multiply-adds (hg2-d3-cab at 128 px: 13.3 G multiply-adds, 26.7 GFLOPs);
mmcv's and fvcore's counters, which some papers quote as GFLOPs, count the multiply-adds once.
"""
from __future__ import annotations

import json

import mxnet as mx
import numpy as np

COUNTED = ("Convolution", "_contrib_DeformableConvolution", "Deconvolution", "FullyConnected")


def multiply_adds(net, input_size: int, channels: int = 3) -> int:
    """Multiply-adds of one forward pass of ``net`` (any Gluon HybridBlock) on one ``input_size`` square input
    of ``channels`` (an RGB image; a block's input width for one block)."""
    data = mx.sym.var("data")
    out = net(data)
    graph = mx.sym.Group(list(out)) if isinstance(out, (list, tuple)) else out
    internals = graph.get_internals()
    arg_shapes, out_shapes, aux_shapes = internals.infer_shape(data=(1, channels, input_size, input_size))
    shapes = {**dict(zip(internals.list_outputs(), out_shapes)), **dict(zip(internals.list_arguments(), arg_shapes)),
              **dict(zip(internals.list_auxiliary_states(), aux_shapes))}
    nodes = json.loads(graph.tojson())["nodes"]

    def shape_of(entry):  # an op's input: an argument by its name, an op's output by "<name>_output"
        node = nodes[entry[0]]
        return shapes[node["name"]] if node["op"] == "null" else shapes[f"{node['name']}_output"]

    total = 0
    for node in nodes:
        if node["op"] not in COUNTED:
            continue
        weight = shape_of(node["inputs"][-2] if node["op"] == "_contrib_DeformableConvolution" else node["inputs"][1])
        if node["op"] == "FullyConnected":
            total += int(np.prod(weight))
        elif node["op"] == "Deconvolution":  # every input element spreads over (out / groups) x kh x kw outputs
            total += int(np.prod(shape_of(node["inputs"][0]))) * int(np.prod(weight[1:]))
        else:  # every output element gathers (in / groups) x kh x kw inputs
            total += int(np.prod(shapes[f"{node['name']}_output"])) * int(np.prod(weight[1:]))
    return total


def gflops(net, input_size: int) -> float:
    """10^9 floating-point operations per image: two per multiply-add (``multiply_adds``)."""
    return 2 * multiply_adds(net, input_size) / 1e9
