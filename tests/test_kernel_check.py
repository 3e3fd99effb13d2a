"""Every width the spec accepts trains, in every precision: facealign.cli.kernel_check's guarded sweep.

The full sweep (every zoo model at its own size, and every width in every mode) is bench/widths.py;
its result is in docs/performance.md.
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from facealign.models import get_model, initialize, list_models
from facealign.models import layers
from facealign.cli.kernel_check import Case, sweep
from facealign.models.specs import get_model_spec, width_problem

BLOCK_MODELS = ["hg2-d3-cab", "hg2-d3-hpm", "hg2-d3-inception", "hg2-d4-resnet", "sat2-d3-cab", "hg2-d3-mobile"]
WIDTHS = range(16, 257, 8)


def _buildable(model, width):
    spec = get_model_spec(model)
    return width_problem(spec.topology, spec.block, width) is None


def _failures(outcomes):
    return [f"{o.case.model} {o.case.width} {o.case.mode}: {o.detail}" for o in outcomes if not o.ok]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["float32", "bfloat16"])
def test_every_accepted_width_trains(mode):
    # mobile builds at every width and has no concatenation, the layouts oneDNN stumbles on: every 16th here,
    # every width in bench/widths.py
    cases = [Case(m, w, mode) for m in BLOCK_MODELS for w in (WIDTHS if m != "hg2-d3-mobile" else range(16, 257, 16))
             if _buildable(m, w)]
    assert len(cases) == 131 + 16  # CAB and SAT models build only multiples of 16 above 64
    outcomes = sweep(cases)
    assert len(outcomes) == len(cases)
    assert not _failures(outcomes)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bfloat16-inference", "int8-inference"])
def test_the_inference_graphs_build_at_a_spread_of_widths(mode):
    cases = [Case(m, w, mode) for m in BLOCK_MODELS for w in (16, 24, 40, 48, 96, 160, 256)]
    outcomes = sweep(cases)
    assert len(outcomes) == len(cases) and not _failures(outcomes)


def test_widths_the_stem_cannot_build_are_refused():
    """Every width from 16 to 256 either builds or is refused by the spec (never a shape error in MXNet)."""
    for model in BLOCK_MODELS:
        for width in WIDTHS:
            if not _buildable(model, width):
                with pytest.raises(ValueError, match=f"width {width} .*the nearest widths that build are"):
                    get_model_spec(model, width=width)
    assert not _buildable("hg2-d3-cab", 72) and _buildable("hg2-d3-cab", 80) and _buildable("hg2-d3-cab", 56)


@pytest.mark.slow
def test_a_case_that_kills_its_worker_fails_alone(monkeypatch):
    """With every concat given to oneDNN (the graph before the fix) width 16 dies of SIGFPE inside oneDNN;
    the sweep records that case as failed, and the cases after it still run in a new worker."""
    monkeypatch.setenv("FACEALIGN_ONEDNN_CONCAT_ALIGNMENT", "1")
    outcomes = sweep([Case("hg2-d3-cab", 16, "float32"), Case("hg2-d3-cab", 48, "float32"),
                      Case("hg2-d3-cab", 256, "float32")], parallel=1)
    assert [o.case.width for o in outcomes] == [16, 48, 256]
    assert not outcomes[0].ok and outcomes[0].detail == "killed by SIGFPE"
    assert not outcomes[1].ok and "could not construct a sub-memory" in outcomes[1].detail
    assert outcomes[2].ok


def _forward_backward(net, x):
    x = x.copy()
    x.attach_grad()
    with autograd.record():
        heatmaps = net(x)
        loss = sum((h * h).sum() for h in heatmaps)
    loss.backward()
    return [h.asnumpy() for h in heatmaps], {k: p.grad().asnumpy() for k, p in net.collect_params().items()
                                               if p.grad_req != "null"}, x.grad.asnumpy()


@pytest.mark.parametrize("model,width", [("hg2-d3-cab", 128), ("hg2-d3-hpm", 128), ("hg2-d3-inception", 256)])
def test_the_aligned_concat_is_the_same_function_as_onednns(monkeypatch, model, width):
    """At widths that trained before, the graph with the plain-layout concats computes today's graph (every
    concat in oneDNN) bitwise, forward and backward."""
    nets = []
    for alignment in (16, 1):
        monkeypatch.setattr(layers, "CONCAT_ALIGNMENT", alignment)  # read when the graph is traced
        net = initialize(get_model(model, width=width, input_size=64, heatmap_size=32, depth=2), seed=3)
        net.hybridize(static_alloc=True)
        x = mx.nd.array(np.random.default_rng(0).uniform(0, 255, (2, 3, 64, 64)))
        nets.append(_forward_backward(net, x))
    (h1, g1, x1), (h2, g2, x2) = nets
    assert len(h1) == len(h2) == 2 and g1.keys() == g2.keys() and len(g1) > 50
    for a, b in zip(h1, h2):
        np.testing.assert_array_equal(a, b)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)
    np.testing.assert_array_equal(x1, x2)


def test_the_sat_up_sampling_is_a_transposed_convolution():
    """Deconv2xBNReLU's 1x1 convolution and depth_to_space compute the 2x2 stride-2 transposed convolution of
    its weight, forward and backward, to the rounding of either precision."""
    for dtype, tol in (("float64", 1e-13), ("float32", 1e-5)):
        block = layers.Deconv2xBNReLU(16, "up", "up_bn")
        block.initialize(mx.init.Normal(1.0))
        block.cast(dtype)
        x = mx.nd.array(np.random.default_rng(1).normal(size=(2, 16, 6, 6)), dtype=dtype)
        results = []
        for deconv in (False, True):
            x_ = x.copy()
            x_.attach_grad()
            with autograd.record():
                if deconv:
                    y = mx.nd.Deconvolution(x_, block.weight.data(), kernel=(2, 2), stride=(2, 2), num_filter=16,
                                            no_bias=True)
                    y = mx.nd.Activation(block.bn(y), act_type="relu")
                else:
                    y = block(x_)
                (y * y).sum().backward()
            results.append((y.asnumpy(), x_.grad.asnumpy(), block.weight.grad().asnumpy().copy()))
        for a, b in zip(*results):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


@pytest.mark.slow
def test_the_zoo_trains_at_its_own_size():
    cases = [Case(m, None, mode, small=False) for m in list_models() for mode in ("float32", "bfloat16")]
    outcomes = sweep(cases)
    assert len(outcomes) == len(list_models()) * 2 and not _failures(outcomes)


def test_a_bad_alignment_variable_is_one_line():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import facealign.models.layers"], capture_output=True, text=True,
                          env={**__import__("os").environ, "FACEALIGN_ONEDNN_CONCAT_ALIGNMENT": "abc"}, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("FACEALIGN_ONEDNN_CONCAT_ALIGNMENT='abc': expected a whole number of channels >= 1 "
                                   "(16, the default, keeps oneDNN's concats to whole blocks)")
