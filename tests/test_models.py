"""The network zoo: structure, parity with the reference, gradients, hybridisation and export."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from facealign.models import (ModelSpec, build_model, count_parameters, get_model, get_model_spec, initialize,
                              list_models)
from facealign.models.blocks import CAB, HPMBlock, InceptionResA, PreActBottleneck, make_block
from facealign.models.hourglass import Hourglass
from facealign.models.layers import Deconv2xBNReLU
from facealign.models.sat import SAT

ALL_MODELS = list_models()

# seed-spec §2.8 / §10: the released checkpoints' sizes, floor(4 bytes x (weights + BN statistics) / 10^6).
REFERENCE_SIZES_MB = {
    "hg2-d4-resnet": 26,
    "hg2-d3-hpm": 38,
    "hg2-d4-cab": 46,
    "sat2-d3-cab": 40,
    "hg2-d3-cab": 37,
    "hg2-d3-cab-3d": 37,  # 3D models are their 2D networks (§2.8)
    "sat2-d3-cab-3d": 40,
}


def _pixels(batch, size=128, seed=0):
    rng = np.random.RandomState(seed)
    return mx.nd.array(rng.uniform(0, 255, (batch, 3, size, size)))


def _rel_diff(a, b):
    return float(np.abs(a.asnumpy() - b.asnumpy()).max() / max(np.abs(a.asnumpy()).max(), 1e-12))


def _blocks(net, cls):
    found = []

    def visit(block):
        if isinstance(block, cls):
            found.append(block)
        for child in block._children.values():
            visit(child)

    visit(net)
    return found


def test_zoo_lists_the_named_models():
    assert set(ALL_MODELS) == {"hg2-d4-resnet", "hg2-d3-hpm", "hg2-d4-cab", "sat2-d3-cab", "hg2-d3-cab",
                               "hg2-d3-inception", "hg2-d3-cab-3d", "sat2-d3-cab-3d", "hg2-d3-cab-3dz",
                               "sat2-d3-cab-3dz", "hg1-d3-mobile", "hg2-d3-mobile"}
    assert get_model_spec("hg2-d3-cab-3d").landmark_dims == 3 and not get_model_spec("hg2-d3-cab-3d").predict_z
    assert get_model_spec("hg2-d3-cab").landmark_dims == 2
    assert get_model_spec("sat2-d3-cab-3dz").predict_z and get_model_spec("sat2-d3-cab-3dz").output_channels == 136
    # the structures from before depth was predicted keep their fingerprints (their checkpoints resume)
    assert "predict_z" not in get_model_spec("hg2-d3-cab-3d").to_dict()
    with pytest.raises(ValueError, match="predict_z needs 3D landmarks"):
        get_model_spec("hg2-d3-cab", predict_z=True)


@pytest.mark.parametrize("name,size_mb", sorted(REFERENCE_SIZES_MB.items()))
def test_reference_checkpoint_sizes(name, size_mb):
    assert count_parameters(get_model(name))["size_mb"] == size_mb


def test_cab_parameter_count_matches_reference():
    # seed-spec §2.4: 389,632 trainable parameters for C = 256.
    cab = CAB(256, "cab")
    assert sum(int(np.prod(p.shape)) for p in cab.collect_params().values() if p.grad_req != "null") == 389_632


def test_deformable_variant_matches_the_unreleased_dcn_model():
    # seed-spec §2.5: "Hourglass2(d=3)-CAB-DCN, 45MB" matches dcn=3 at 45.20 MB.
    counts = count_parameters(get_model("hg2-d3-cab", dcn=3))
    assert counts["total"] * 4 / 1e6 == pytest.approx(45.20, abs=0.005)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_builds_with_reference_output_shapes(name):
    spec = get_model_spec(name)
    net = initialize(get_model(name))
    with autograd.train_mode():
        out = net(_pixels(2, size=spec.input_size))
    assert isinstance(out, list) and len(out) == spec.num_stacks
    for heatmap in out:  # the -3dz models: 68 depth maps after the 68 heatmaps
        assert heatmap.shape == (2, spec.output_channels, spec.heatmap_size, spec.heatmap_size)
        assert np.isfinite(heatmap.asnumpy()).all()


def test_the_mobile_block_is_an_inverted_residual_with_its_multiply_adds():
    """Shapes, gradients, the projection shortcut where channels change, and its cost against a hand count:
    expand C -> 2C, depthwise 3 x 3 over 2C, project 2C -> C per pixel, plus a 1 x 1 C_in -> C shortcut."""
    from facealign.models.blocks import InvertedResidual, make_block
    from facealign.models.cost import multiply_adds

    for c_in, c, size in ((24, 24, 16), (16, 40, 8)):
        block = make_block("mobile", c_in, c, "b")
        assert isinstance(block, InvertedResidual) and (block.shortcut is None) == (c_in == c)
        block.initialize(mx.init.Xavier())
        x = mx.nd.random.uniform(-1, 1, (2, c_in, size, size))
        x.attach_grad()
        with autograd.record():
            y = block(x)
            loss = (y ** 2).mean()
        loss.backward()
        assert y.shape == (2, c, size, size) and np.abs(x.grad.asnumpy()).sum() > 0
        assert all(np.abs(p.grad().asnumpy()).sum() > 0 for p in block.collect_params().values() if p.grad_req != "null")
        per_pixel = c_in * 2 * c + 2 * c * 9 + 2 * c * c + (c_in * c if c_in != c else 0)
        assert multiply_adds(block, size, channels=c_in) == size * size * per_pixel


def test_the_cost_of_the_reference_model_and_the_light_ones():
    from facealign.models.cost import gflops

    assert gflops(get_model("hg2-d3-cab"), 128) == pytest.approx(26.68, abs=0.01)  # 13.3 G multiply-adds
    light = get_model("hg1-d3-mobile")
    assert gflops(light, light.spec.input_size) < 0.25 and count_parameters(light)["trainable"] < 300_000


@pytest.mark.parametrize("name", ALL_MODELS)
def test_hybridised_equals_imperative(name):
    # float64: both paths run the same reference kernels, so they must agree to the bit. 64 pixels: the same
    # graph at a quarter of the cost of 128 (float64 has no fast kernels).
    x = _pixels(2, size=64).astype("float64")
    net = initialize(get_model(name), seed=1)
    net.cast("float64")
    with autograd.train_mode():
        imperative = net(x)
    predict_imperative = net(x)
    net.hybridize()
    with autograd.train_mode():
        hybrid = net(x)
    predict_hybrid = net(x)
    for a, b in zip(imperative + predict_imperative, hybrid + predict_hybrid):
        assert a.shape == b.shape
        assert _rel_diff(a, b) < 1e-12


def test_hybridised_equals_imperative_float32_predict():
    net = initialize(get_model("sat2-d3-cab"), seed=2)
    x = _pixels(2)
    before = net(x)
    net.hybridize(static_alloc=True, static_shape=True)
    after = net(x)
    for a, b in zip(before, after):
        assert _rel_diff(a, b) < 1e-5


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_parameter_receives_a_gradient(name):
    net = initialize(get_model(name), seed=3)
    x, target = _pixels(2, size=64), mx.nd.random.uniform(0, 1, (2, get_model_spec(name).output_channels, 32, 32))
    with autograd.record():
        loss = sum(((h - target) ** 2).mean() for h in net(x))
    loss.backward()
    missing = [p.name for p in net.collect_params().values()
               if p.grad_req != "null" and not np.abs(p.grad().asnumpy()).sum() > 0]
    assert missing == []


@pytest.mark.parametrize("name", ["hg2-d3-cab", "sat2-d3-cab", "hg2-d4-resnet"])
def test_export_reloads_with_symbolblock_and_gives_the_same_output(name, tmp_path):
    net = initialize(get_model(name), seed=4)
    net.hybridize()
    x = _pixels(1)
    expected = net(x)
    net.export(str(tmp_path / name), epoch=0)
    reloaded = gluon.SymbolBlock.imports(str(tmp_path / f"{name}-symbol.json"), ["data"],
                                         str(tmp_path / f"{name}-0000.params"))
    got = reloaded(x)
    assert len(got) == len(expected)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


@pytest.mark.parametrize("overrides,heatmap_shape", [
    (dict(num_stacks=1), (1, 68, 64, 64)),
    (dict(num_stacks=3, width=64), (1, 68, 64, 64)),
    (dict(depth=2, width=64), (1, 68, 64, 64)),
    (dict(num_landmarks=98, width=64), (1, 98, 64, 64)),
    (dict(num_landmarks=29, width=64, input_size=256, heatmap_size=64), (1, 29, 64, 64)),
    (dict(width=32, input_size=64, heatmap_size=32, depth=2), (1, 68, 32, 32)),
])
@pytest.mark.parametrize("name", ["hg2-d3-cab", "sat2-d3-cab", "hg2-d3-inception"])
def test_overrides(name, overrides, heatmap_shape):
    spec = get_model_spec(name, **overrides)
    net = initialize(build_model(spec))
    with autograd.train_mode():
        out = net(_pixels(1, spec.input_size))
    assert len(out) == spec.num_stacks
    assert all(h.shape == heatmap_shape for h in out)


def test_256_input_uses_the_strided_7x7_stem():
    net = get_model("hg2-d3-cab", input_size=256, heatmap_size=64)
    assert net.conv0.weight.shape == (64, 3, 7, 7)
    assert net.conv0._kwargs["stride"] == (2, 2)
    assert get_model("hg2-d3-cab").conv0.weight.shape == (64, 3, 3, 3)


def test_full_size_256_input():
    net = initialize(get_model("hg2-d3-cab", input_size=256, heatmap_size=64))
    with autograd.train_mode():
        out = net(_pixels(1, 256))
    assert [h.shape for h in out] == [(1, 68, 64, 64)] * 2


@pytest.mark.parametrize("dcn", [1, 2, 3])
@pytest.mark.parametrize("name", ["hg2-d3-cab", "sat2-d3-cab"])
def test_deformable_variants_run(name, dcn):
    net = initialize(get_model(name, dcn=dcn, width=32, input_size=64, heatmap_size=32, depth=2))
    offsets = [p for n, p in net.collect_params().items() if n.endswith("offset_weight")]
    assert offsets and all(np.abs(p.data().asnumpy()).max() == 0 for p in offsets)  # zero-initialised
    with autograd.record():
        out = net(_pixels(2, 64))
        loss = sum((h ** 2).mean() for h in out)
    loss.backward()
    assert [h.shape for h in out] == [(2, 68, 32, 32)] * 2


def test_block_fallbacks_follow_the_reference():
    assert isinstance(make_block("cab", 128, 128, "a"), CAB)
    assert isinstance(make_block("cab", 64, 128, "b"), HPMBlock)  # CAB changes no channels: HPM instead
    assert isinstance(make_block("inception", 256, 256, "c"), InceptionResA)
    assert isinstance(make_block("inception", 128, 256, "d"), PreActBottleneck)
    net = get_model("hg2-d3-cab")
    assert isinstance(net.res0, HPMBlock) and isinstance(net.res2, HPMBlock) and isinstance(net.res1, CAB)
    with pytest.raises(ValueError, match="unknown block type 'dense'"):
        make_block("dense", 8, 8, "e")


@pytest.mark.parametrize("depth,blocks", [(1, 4), (3, 10), (4, 13)])
def test_hourglass_block_count(depth, blocks):
    hg = Hourglass(64, depth, "resnet", "hg")
    assert len(_blocks(hg, PreActBottleneck)) == blocks


def test_sat_module_structure():
    sat = SAT(256, 4, "sat0")
    assert len(_blocks(sat, CAB)) == 9
    assert len(_blocks(sat, Deconv2xBNReLU)) == 3
    depthwise = [n for n, p in sat.collect_params().items() if n.endswith("_x_conv_weight")]
    assert sorted(depthwise) == ["sat0_w1_h3_x_conv_weight", "sat0_w2_h3_x_conv_weight"]
    assert sat.collect_params()["sat0_w1_h3_x_conv_weight"].shape == (256, 1, 3, 3)


def test_sat_upsampling_is_bilinear_initialised():
    net = initialize(get_model("sat2-d3-cab", width=32, input_size=64, heatmap_size=32, depth=2))
    deconvs = [p for n, p in net.collect_params().items() if "upsampling" in n]
    assert deconvs
    for p in deconvs:  # a 2x2 bilinear kernel is [[1, 0], [0, 0]] for every (in, out) pair
        w = p.data().asnumpy()
        assert (w[:, :, 0, 0] == 1).all() and (w[:, :, 1:, :] == 0).all() and (w[:, :, :, 1:] == 0).all()


def test_batchnorm_settings_everywhere():
    net = get_model("sat2-d3-cab")
    bns = _blocks(net, gluon.nn.BatchNorm)
    assert len(bns) > 100
    for bn in bns:
        assert bn._kwargs["eps"] == 2e-5 and bn._kwargs["momentum"] == 0.9 and bn._kwargs["fix_gamma"] is False


def test_parameter_names_follow_the_reference():
    names = set(get_model("hg2-d3-cab").collect_params().keys())
    for expected in ["conv0_weight", "bn0_gamma", "bn0_running_mean", "res0_conv1_weight", "res0_sc_weight",
                     "stack0_hg_up1_0_w3_h4_1_conv_weight", "stack0_hg_2_1_low2_0_w2_h3_2_bn_beta",
                     "stack0_unit0_w1_h4_1_conv_weight", "stack0_ll_conv_weight", "heatmap0_weight",
                     "heatmap_bias", "stack0_ll2_weight", "stack0_out2_bias"]:
        assert expected in names, expected
    assert not any(n.startswith("stack1_ll2") for n in names)  # no remap after the last stack
    sat_names = set(get_model("sat2-d3-cab").collect_params().keys())
    for expected in ["sat0_w3_h4_1_w3_h4_1_conv_weight", "sat0_w1_h4_2_w1_h3_2_conv_weight",
                     "sat1_upsampling_w2_h2_weight", "sat0_w3_h3_y_bn_gamma", "sat0_w1_h2_4_w3_h4_1_conv_weight"]:
        assert expected in sat_names, expected


def test_normalisation_is_inside_the_network():
    # The stem convolution must see (x - 127.5) / 128 of the raw 0..255 pixels the network is given.
    net = initialize(get_model("hg2-d3-cab", width=32, input_size=64, heatmap_size=32, depth=2))
    seen = []
    net.conv0.register_forward_hook(lambda block, inputs, output: seen.append(inputs[0].asnumpy()))
    x = np.random.RandomState(0).uniform(0, 255, (2, 3, 64, 64)).astype(np.float32)
    out = net(mx.nd.array(x))
    assert len(seen) == 1 and out[-1].shape == (2, 68, 32, 32)
    np.testing.assert_allclose(seen[0], (x - 127.5) * 0.0078125, rtol=0, atol=1e-6)
    assert seen[0].min() < -0.9 and seen[0].max() > 0.9


@pytest.mark.parametrize("overrides,message", [
    (dict(block="dense"), "block 'dense'"),
    (dict(topology="unet"), "topology 'unet'"),
    (dict(width=100), "width 100 must be a multiple of 8"),
    (dict(width=72), r"width 72 cannot be built with cab blocks: the stem.s res1 block \(cab\) would have 36 channels, not a multiple of 8; the nearest widths that build are 64 or 80"),
    (dict(input_size=128, heatmap_size=48), "input_size / heatmap_size must be 2 or 4"),
    (dict(input_size=96, heatmap_size=48, depth=5), r"divisible by 2\^depth"),
    (dict(dcn=7), "dcn must be"),
    (dict(landmark_dims=4), "landmark_dims"),
])
def test_invalid_specs_are_rejected_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_model_spec("hg2-d3-cab", **overrides)


def test_unknown_names_and_overrides():
    with pytest.raises(KeyError, match="unknown model 'hg9'"):
        get_model("hg9")
    with pytest.raises(TypeError, match="unknown model override.*stacks"):
        get_model("hg2-d3-cab", stacks=3)


def test_spec_fingerprint_tracks_structure():
    a, b = get_model_spec("hg2-d3-cab"), get_model_spec("hg2-d3-cab", num_landmarks=98)
    assert a.fingerprint() == ModelSpec(**a.to_dict()).fingerprint()
    assert a.fingerprint() != b.fingerprint()
    assert get_model("hg2-d3-cab").spec == a


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("hybrid", [False, True])
def test_cab_computes_the_reference_merges_bitwise(dtype, hybrid):
    # The block adds without halving and scales once by 1/8 (faster); the reference halves at every
    # merge. Halving is exact in binary floating point, so the two must agree to the bit.
    block = CAB(64, "cab")
    block.initialize(mx.init.Normal(0.5))
    block.cast(dtype)
    x = mx.nd.array(np.random.RandomState(5).normal(0, 1, (2, 64, 16, 16)), dtype=dtype)
    b1 = block.b1(x)
    b2 = block.b2(b1)
    b3 = block.b3(b2)
    d23, d13 = block.dw23(b1), block.dw13(b2)
    if hybrid:
        block.hybridize()
    got = block(x).asnumpy()

    def merge(wide, narrow):
        return (wide + np.concatenate([narrow, narrow], axis=1)) / np.asarray(2, wide.dtype)

    x_, b1_, b2_, b3_, d23_, d13_ = (a.asnumpy() for a in (x, b1, b2, b3, d23, d13))
    o33, o23, o13 = merge(x_, b1_), merge(d23_, b2_), merge(d13_, b3_)
    expected = merge(merge(o33, o23), merge(o23, o13))
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("factor", [0.5, 0.125])
def test_scale_is_an_exact_multiplication_with_no_parameter(factor):
    from facealign.models.layers import scale

    x = mx.nd.array(np.random.RandomState(6).normal(0, 3, (2, 8, 5, 5)))
    x.attach_grad()
    with autograd.record():
        y = scale(mx.nd, x, 8, factor)
    y.backward(mx.nd.ones_like(y))
    np.testing.assert_array_equal(y.asnumpy(), x.asnumpy() * np.float32(factor))
    np.testing.assert_array_equal(x.grad.asnumpy(), np.full(x.shape, factor, np.float32))


def test_bfloat16_amp_training_step_runs_in_a_fresh_process(tmp_path):
    # AMP patches MXNet's operators process-wide, so the bfloat16 step runs in its own interpreter.
    import subprocess
    import sys

    code = """
import mxnet as mx, numpy as np
from facealign.train import amp
amp.init("bfloat16")  # as the trainer
from mxnet import autograd, gluon
from facealign.models import get_model, initialize
net = initialize(get_model("hg2-d3-cab", width=64), seed=1)
net.hybridize(static_alloc=True)
trainer = gluon.Trainer(net.collect_params(), mx.optimizer.Nadam(learning_rate=1e-3))
x = mx.nd.array(np.random.RandomState(0).uniform(0, 255, (2, 3, 128, 128)))
y = mx.nd.array(np.random.RandomState(1).uniform(0, 1, (2, 68, 64, 64)))
losses = []
for _ in range(3):
    with autograd.record():
        out = net(x)
        loss = sum(((h.astype("float32") - y) ** 2).mean() for h in out)
    loss.backward()
    trainer.step(1)
    losses.append(loss.asscalar())
print("DTYPE", out[-1].dtype.names if out[-1].dtype.names else out[-1].dtype, "LOSSES", losses)
assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
# float32 islands: only UpSampling (no bfloat16 kernel); CAB's scale slices its input in bfloat16
import json
nodes = json.loads(mx.sym.Group(net(mx.sym.var("data"))).tojson(remove_amp_cast=False))["nodes"]
to_f32 = {i for i, n in enumerate(nodes) if n["op"] == "amp_cast" and n["attrs"]["dtype"] == "float32"
          and nodes[n["inputs"][0][0]]["op"] != "null"}  # casts of computed tensors, not of the float32 pixels
fed = sorted({n["op"] for n in nodes if any(e[0] in to_f32 for e in n["inputs"])})
print("FLOAT32_CONSUMERS", fed)
assert fed == ["UpSampling"], fed
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bfloat16" in proc.stdout  # the network really computed in bfloat16


def test_facealign_models_lists_parameters_and_gflops_of_every_model():
    import json

    from conftest import run_cli

    proc = run_cli("facealign-models", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == set(ALL_MODELS)
    assert rows["hg2-d3-cab"]["gflops"] == pytest.approx(26.68, abs=0.01) and rows["hg2-d3-cab"]["input_size"] == 128
    assert rows["hg1-d3-mobile"]["input_size"] == 64 and rows["hg1-d3-mobile"]["gflops"] < 0.25
    table = run_cli("facealign-models").stdout
    assert "GFLOPs" in table.splitlines()[0] and "hg1-d3-mobile" in table
