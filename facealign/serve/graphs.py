"""The graphs of reduced-precision exports (training's AMP is facealign.train.amp).

``inference_graph`` (float32, for int8 and bfloat16 exports), ``nearest_upsampling_as_repeats``
and ``batchnorm_folded`` rewrite the exported graph's JSON; ``bfloat16_inference_network`` puts them
together with AMP and oneDNN's fusion.

MXNet is imported inside the functions: processes choose the CPU's ISA and MXNet's engine before it is
imported (facealign.platform.cpu_isa).
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from facealign.platform.bfloat16 import float32_ops

# layers.scale's weight: BlockGrad(Reshape(_mul_scalar(ones_like(slice(x))))), walked from the convolution
SCALE_WEIGHT_CHAIN = ("BlockGrad", "Reshape", "_mul_scalar", "ones_like", "slice")


def inference_graph(net, probe):
    """The float32 graph of a hybridised network with ``layers.scale``'s computed weights made parameters.

    In training the constant weight is computed from the input so that it follows AMP's dtype; in an
    inference graph it is a constant. As a parameter, oneDNN fuses and quantises that convolution like
    the others (the int8 quantiser left it, and 23 dequantise/quantise pairs, in float32), and its five
    operators per CAB block go. Returns (symbol, {name: NDArray}), bitwise the same function (tested).
    """
    import json

    import mxnet as mx

    net(mx.nd.array(probe, ctx=mx.cpu()))  # Gluon exports the graph of its last forward
    with tempfile.TemporaryDirectory(prefix="facealign-graph-") as tmp:
        prefix = str(Path(tmp) / "model")
        net.export(prefix, epoch=0)
        sym, args, aux = mx.model.load_checkpoint(prefix, 0)
    params = {**args, **aux}
    graph = json.loads(sym.tojson())
    nodes = graph["nodes"]
    for node in nodes:
        if node["op"] != "Convolution":
            continue
        chain, k = [], node["inputs"][1][0]
        for op in SCALE_WEIGHT_CHAIN:
            if nodes[k]["op"] != op:
                break
            chain.append(k)
            k = nodes[k]["inputs"][0][0]
        else:
            shape = tuple(int(v) for v in nodes[chain[1]]["attrs"]["shape"].strip("()").split(",") if v.strip())
            name = node["name"].rsplit("_fwd", 1)[0] + "_constant_weight"
            params[name] = mx.nd.full(shape, float(nodes[chain[2]]["attrs"]["scalar"]))
            nodes[chain[0]] = {"op": "null", "name": name, "inputs": []}  # the chain before it is left unused
    return _symbol_of(graph, nodes, {i: i for i in range(len(nodes))}), params


def nearest_upsampling_as_repeats(sym):
    """``sym`` with each nearest ``UpSampling`` node as ``repeat`` along height, then width: the same copy,
    and one that runs in bfloat16 (UpSampling has no bfloat16 kernel, so AMP left a float32 island after
    every hourglass merge, which spread through the next block's sums: 45 casts per forward pass). For
    int8 graphs UpSampling stays: both stay float32 there, and it is the faster of the two."""
    import json

    graph = json.loads(sym.tojson())
    nodes, new_index, out = graph["nodes"], {}, []
    for i, node in enumerate(nodes):
        node = dict(node, inputs=[[new_index[e[0]], *e[1:]] for e in node["inputs"]])
        attrs = node.get("attrs", {})
        if node["op"] == "UpSampling" and attrs.get("sample_type") == "nearest" and len(node["inputs"]) == 1:
            factor = attrs["scale"]
            out.append({"op": "repeat", "name": node["name"] + "_rows", "attrs": {"repeats": factor, "axis": "2"},
                        "inputs": node["inputs"]})
            node = {"op": "repeat", "name": node["name"], "attrs": {"repeats": factor, "axis": "3"},
                    "inputs": [[len(out) - 1, 0, 0]]}
        new_index[i] = len(out)
        out.append(node)
    return _symbol_of(graph, out, new_index)


def batchnorm_folded(sym, params):
    """``sym`` with each BatchNorm that alone reads a convolution folded into it, in float32: the weight
    scaled by gamma / sqrt(var + eps) per output channel, and a bias ``(b - mean) * scale + beta``.

    oneDNN's partitioner folds them too, but after AMP's conversion, in bfloat16: on the demo model that
    moved the heatmaps by up to 7% of their peak; folded here first, 1.9% (1.6% with no fold at all),
    at the fused speed. NME drift stayed within 0.3% either way. Returns (symbol, params); the function agrees with ``sym`` to float32 rounding.
    """
    import json

    import mxnet as mx
    import numpy as np

    graph = json.loads(sym.tojson())
    nodes = graph["nodes"]
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for e in node["inputs"]:
            readers.setdefault(e[0], []).append(i)
    params = dict(params)
    folded_into: dict[int, int] = {}  # BatchNorm node -> the convolution that now computes it
    new_bias: dict[int, str] = {}  # convolution node -> the bias variable to insert before it
    for j, bn in enumerate(nodes):
        if bn["op"] != "BatchNorm" or int(bn.get("attrs", {}).get("axis", "1")) != 1:
            continue
        i = bn["inputs"][0][0]
        conv = nodes[i]
        weight = nodes[conv["inputs"][1][0]] if conv["op"] == "Convolution" else None
        if weight is None or weight["op"] != "null" or weight["name"] not in params or readers[i] != [j] \
                or len(readers[conv["inputs"][1][0]]) != 1:
            continue
        attrs = bn.get("attrs", {})
        gamma, beta, mean, var = (params[nodes[e[0]]["name"]].asnumpy().astype(np.float64) for e in bn["inputs"][1:5])
        if attrs.get("fix_gamma", "True") == "True":
            gamma = np.ones_like(gamma)
        scale = gamma / np.sqrt(var + float(attrs.get("eps", "0.001")))
        w = params[weight["name"]].asnumpy().astype(np.float64)
        has_bias = conv.get("attrs", {}).get("no_bias", "False") != "True"
        b = params[nodes[conv["inputs"][2][0]]["name"]].asnumpy().astype(np.float64) if has_bias else 0.0
        name = conv["name"].rsplit("_fwd", 1)[0]
        params[name + "_folded_weight"] = mx.nd.array((w * scale.reshape(-1, 1, 1, 1)).astype(np.float32))
        params[name + "_folded_bias"] = mx.nd.array(((b - mean) * scale + beta).astype(np.float32))
        weight["name"] = name + "_folded_weight"
        if has_bias:
            nodes[conv["inputs"][2][0]]["name"] = name + "_folded_bias"
        else:
            new_bias[i] = name + "_folded_bias"
        conv["attrs"] = dict(conv.get("attrs", {}), no_bias="False")
        folded_into[j] = i
    new_index, out = {}, []
    for i, node in enumerate(nodes):
        if i in folded_into:
            new_index[i] = new_index[folded_into[i]]
            continue
        node = dict(node, inputs=[[new_index[e[0]], *e[1:]] for e in node["inputs"]])
        if i in new_bias:
            out.append({"op": "null", "name": new_bias[i], "inputs": []})
            node["inputs"] = node["inputs"][:2] + [[len(out) - 1, 0, 0]]
        new_index[i] = len(out)
        out.append(node)
    return _symbol_of(graph, out, new_index), params


def _symbol_of(graph: dict, nodes: list, new_index: dict):
    """The symbol of a rewritten graph JSON: ``nodes`` in topological order, old node ids -> new in ``new_index``
    (the heads follow it); nodes left unread by the heads drop out when MXNet loads it."""
    import json

    import mxnet as mx

    graph = dict(graph, nodes=nodes, heads=[[new_index[h[0]], *h[1:]] for h in graph["heads"]],
                 arg_nodes=[i for i, n in enumerate(nodes) if n["op"] == "null"])
    graph.pop("node_row_ptr", None)
    return mx.sym.load_json(json.dumps(graph))


def symbol_block(sym, params):
    """A hybridised SymbolBlock of ``sym`` (input ``data``) holding ``params`` in their own dtypes."""
    import mxnet as mx

    with warnings.catch_warnings():  # the input's dtype is undecided until the first call; it is float32
        warnings.simplefilter("ignore", UserWarning)
        block = mx.gluon.SymbolBlock(sym, [mx.sym.var("data")])
    held = block.collect_params()
    held.load_dict({k: v for k, v in params.items() if k in held}, ctx=mx.cpu(), cast_dtype=True,
                   dtype_source="saved")
    block.hybridize(static_alloc=True, static_shape=True)
    return block


def bfloat16_inference_network(net, probe):
    """A bfloat16 inference graph of a hybridised float32 network, for CPUs with AVX512-BF16 or AMX.

    AMP converts ``inference_graph`` (with ``nearest_upsampling_as_repeats`` and ``batchnorm_folded``) with
    its parameters cast once (not at every call), then MXNet's oneDNN partitioner fuses each
    convolution with the ReLU and sum that follow it (its BatchNorm is already folded in). Float32
    pixels in; the heatmaps come out in bfloat16 (the backends read them as float32). The fused graph
    is what makes bfloat16 pay at batch 1, where the cost is the number of operators more than their
    arithmetic (bench/precision.py, README).
    """
    import mxnet as mx
    from mxnet.contrib import amp

    sym, params = inference_graph(net, probe)
    sym, params = batchnorm_folded(nearest_upsampling_as_repeats(sym), params)
    arguments = set(sym.list_arguments())
    args = {k: v for k, v in params.items() if k in arguments}
    aux = {k: v for k, v in params.items() if k not in arguments}
    sym, args, aux = amp.convert_model(sym, args, aux, target_dtype="bfloat16",
                                       fp32_ops=float32_ops("bfloat16"), cast_optional_params=True)
    converted = symbol_block(sym.get_backend_symbol("MKLDNN"), {**args, **aux})
    converted(mx.nd.array(probe, ctx=mx.cpu()))
    return converted
