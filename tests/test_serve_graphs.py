"""facealign.serve.graphs and facealign.train.amp: AMP's lists for our networks and the inference graphs of reduced exports.

(The bfloat16 training step under these lists runs in test_models, in its own process: AMP patches
MXNet process-wide. The bfloat16 and int8 exports built on these graphs are in test_precision.)
"""
import json

import mxnet as mx
import numpy as np
import pytest

from facealign.platform import bfloat16
from facealign.serve import graphs
from facealign.models import get_model, initialize


def _ops(sym):
    return [n["op"] for n in json.loads(sym.tojson())["nodes"]]


def test_bfloat16_lists_run_exact_copies_in_bfloat16_and_keep_upsampling_in_float32():
    fp32 = bfloat16.float32_ops("bfloat16")
    assert "UpSampling" in fp32  # no bfloat16 kernel in MXNet 1.9.1
    assert not bfloat16.BFLOAT16_EXACT_OPS & set(fp32)
    from mxnet.contrib.amp import lists

    assert set(fp32) | bfloat16.BFLOAT16_EXACT_OPS >= set(lists.symbol_bf16.FP32_FUNCS)
    assert bfloat16.float32_ops("float16") is None  # AMP's own float16 lists


@pytest.mark.parametrize("name", ["hg2-d3-cab", "sat2-d3-cab"])
def test_inference_graph_makes_the_scale_weights_parameters_and_computes_the_same(name):
    net = initialize(get_model(name, width=32, input_size=64, heatmap_size=32), seed=3)
    net.hybridize()
    x = mx.nd.array(np.random.RandomState(0).uniform(0, 255, (2, 3, 64, 64)))
    reference = [h.asnumpy() for h in net(x)]
    cabs = sum(1 for n in net.collect_params() if n.endswith("_w3_h4_1_conv_weight"))
    sym, params = graphs.inference_graph(net, x[:1].asnumpy())

    ops = _ops(sym)
    assert not {"slice", "ones_like", "BlockGrad"} & set(ops), sorted(set(ops))
    constants = [params[k].asnumpy() for k in params if k.endswith("_constant_weight")]
    assert cabs > 0 and len(constants) >= cabs  # one per CAB block (and, in the SAT, per averaging node)
    assert all(np.unique(c).size == 1 and np.log2(c.flat[0]) % 1 == 0 for c in constants)  # powers of two
    block = graphs.symbol_block(sym, params)
    for got, want in zip(block(x), reference, strict=True):
        np.testing.assert_array_equal(got.asnumpy(), want)  # bitwise: the same function

    repeats = graphs.nearest_upsampling_as_repeats(sym)  # for bfloat16, which has repeat
    assert "UpSampling" not in _ops(repeats) and "repeat" in _ops(repeats)
    for got, want in zip(graphs.symbol_block(repeats, params)(x), reference, strict=True):
        np.testing.assert_array_equal(got.asnumpy(), want)

    # BatchNorms after convolutions folded into them in float32: the same function to float32 rounding
    folded, folded_params = graphs.batchnorm_folded(sym, params)
    conv_bns = sum(1 for n in net.collect_params() if n.endswith("_conv_weight"))  # every ConvBNReLU's conv
    assert _ops(folded).count("BatchNorm") <= _ops(sym).count("BatchNorm") - conv_bns
    for got, want in zip(graphs.symbol_block(folded, folded_params)(x), reference, strict=True):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_the_light_model_exports_to_onnx_and_int8_onnx(tmp_path):
    """The mobile block's depthwise convolutions through mxnet.onnx (checked against MXNet by the export itself)
    and onnxruntime's int8 quantiser; the trained light model's int8 and bfloat16 exports, with the drift guard,
    are bench/realtime.py's (docs/serving.md)."""
    import onnx
    import onnxruntime as ort

    from facealign.data.schemes import scheme_for
    from facealign.data.transforms import crop_framing
    from facealign.models import get_model, initialize
    from facealign.runs import artifact
    from facealign.serve import export

    net = initialize(get_model("hg1-d3-mobile", width=16), seed=2)
    info = artifact.ModelInfo.of("hg1-d3-mobile", net.spec, scheme=scheme_for(68).name,
                                 crop_framing=crop_framing("center"))
    result = export.export_package(net, info, tmp_path / "fp32", onnx=True, log=lambda m: None)
    assert result["onnx_rel_diff"] < 1e-4
    fp32 = tmp_path / "fp32" / "model.onnx"
    groups = [a.i for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv" for a in n.attribute
              if a.name == "group"]
    assert max(groups) > 1  # the depthwise convolutions are there
    pixels = np.random.RandomState(1).uniform(0, 255, (8, 3, 64, 64)).astype(np.float32)
    export.onnx_int8(fp32, tmp_path / "int8.onnx", pixels)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    outputs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"data": pixels[:2]})[-1]
               for p in (fp32, tmp_path / "int8.onnx")]
    assert np.corrcoef(outputs[0].ravel(), outputs[1].ravel())[0, 1] > 0.95  # int8 close to float32
