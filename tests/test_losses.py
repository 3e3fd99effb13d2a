"""The heatmap losses against NumPy references: values, gradients (finite differences), symbols."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from facealign.train.losses import LOSSES, mse, stacked_loss


def mse_numpy(pred, target, weight=None):
    err = (pred - target) ** 2
    return float(np.mean(err if weight is None else err * weight))


def _data(seed=0, shape=(2, 5, 6, 6)):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, shape), rng.uniform(0, 20, shape), rng.uniform(0, 10, shape)


@pytest.mark.parametrize("weighted", [False, True])
def test_mse_value_and_gradient_match_numpy(weighted):
    pred, target, weight = _data()
    w = weight if weighted else None
    p = mx.nd.array(pred, dtype="float64")
    p.attach_grad()
    with autograd.record():
        value = mse(mx.nd, p, mx.nd.array(target, dtype="float64"),
                    None if w is None else mx.nd.array(w, dtype="float64"))
    value.backward()
    assert value.asscalar() == pytest.approx(mse_numpy(pred, target, w), rel=1e-12)
    grad = p.grad.asnumpy()
    eps = 1e-3  # central differences are exact for a quadratic up to rounding
    for index in [(0, 0, 0, 0), (1, 4, 5, 5), (0, 2, 3, 1)]:
        up, down = pred.copy(), pred.copy()
        up[index] += eps
        down[index] -= eps
        numeric = (mse_numpy(up, target, w) - mse_numpy(down, target, w)) / (2 * eps)
        assert grad[index] == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_stacks_are_weighted_and_summed():
    pred, target, _ = _data(1)
    outputs = [mx.nd.array(pred), mx.nd.array(pred * 0.5)]
    total, per_stack = stacked_loss(outputs, mx.nd.array(target), stack_weights=[1.0, 0.25])
    expected = [mse_numpy(pred, target), mse_numpy(pred * 0.5, target)]
    assert [s.asscalar() for s in per_stack] == pytest.approx(expected, rel=1e-5)
    assert total.asscalar() == pytest.approx(expected[0] + 0.25 * expected[1], rel=1e-5)
    default, _ = stacked_loss(outputs, mx.nd.array(target))
    assert default.asscalar() == pytest.approx(sum(expected), rel=1e-5)


def test_a_reduced_precision_output_is_scored_in_float32():
    pred, target, _ = _data(2)
    total, _ = stacked_loss([mx.nd.array(pred, dtype="float16")], mx.nd.array(target))
    assert total.dtype == np.float32
    assert total.asscalar() == pytest.approx(mse_numpy(pred.astype(np.float16).astype(np.float64), target), rel=1e-4)


def test_the_losses_are_hybridisable():
    pred, target, _ = _data(3)
    sym = mse(mx.sym, mx.sym.var("pred"), mx.sym.var("target"))
    out = sym.eval(ctx=mx.cpu(), pred=mx.nd.array(pred), target=mx.nd.array(target))[0]
    assert out.asscalar() == pytest.approx(mse_numpy(pred, target), rel=1e-5)


def test_an_unknown_loss_is_refused():
    assert LOSSES == ("mse", "awing", "star")
    with pytest.raises(ValueError, match="loss kind must be one of"):
        stacked_loss([mx.nd.zeros((1, 1, 2, 2))], mx.nd.zeros((1, 1, 2, 2)), kind="l1")


# --- Adaptive Wing and STAR against NumPy references (float64, values and gradients) -------------------

from scipy.ndimage import grey_dilation  # noqa: E402

from facealign.train.losses import LossSettings, awing, awing_loss_map, star, stack_loss  # noqa: E402

PEAK = 20.0


def awing_numpy(pred, target, weight, alpha=2.1, omega=14.0, eps=1.0, theta=0.5):
    y = target / PEAK
    d = np.abs(pred / PEAK - y)
    p = alpha - y
    a = omega * (1 / (1 + (theta / eps) ** p)) * p * (theta / eps) ** (p - 1) / eps
    c = theta * a - omega * np.log(1 + (theta / eps) ** p)
    loss = np.where(d < theta, omega * np.log(1 + (d / eps) ** p), a * d - c)
    return float(np.mean(loss * weight))


def loss_map_numpy(target, w=10.0):
    return (grey_dilation(target / PEAK, size=(1, 1, 3, 3), mode="constant", cval=0.0) > 0.2) * w + 1


def star_numpy(pred, target, omega=1.0, eps=1e-5):
    """STAR as its paper's code computes it, per landmark with an eigendecomposition (numpy.linalg.eigh):
    the heatmap's positive part over its sum as the distribution, smooth L1 of the error along each
    eigenvector divided by sqrt(eigenvalue + eps), summed, plus omega x the eigenvalues' sum."""
    n, k, h, w = pred.shape
    ys, xs = np.meshgrid(np.arange(h) / (h - 1) * 2 - 1, np.arange(w) / (w - 1) * 2 - 1, indexing="ij")
    total, count = 0.0, 0
    for b in range(n):
        for j in range(k):
            t = np.maximum(target[b, j], 0)
            if t.sum() <= 0:
                continue
            e = np.maximum(pred[b, j], 0)
            p = e / max(e.sum(), 1e-6)
            mean = np.array([(p * xs).sum(), (p * ys).sum()])
            gt = np.array([(t * xs).sum(), (t * ys).sum()]) / t.sum()
            d = np.stack([xs - mean[0], ys - mean[1]]).reshape(2, -1)
            cov = (d * p.reshape(1, -1)) @ d.T / (1 - (p ** 2).sum() + eps)
            lam, vec = np.linalg.eigh(cov)
            err = np.abs(vec.T @ (gt - mean))
            smooth = np.where(err < 1, 0.5 * err ** 2, err - 0.5)
            total += (smooth / np.sqrt(lam + eps)).sum() + omega * np.abs(lam).sum()
            count += 1
    return total / max(count, 1)


def _heatmap_batch(seed, shape=(2, 3, 8, 8)):
    """Gaussian targets of peak 20 (one landmark off the map) and noisy predictions near them."""
    rng = np.random.default_rng(seed)
    n, k, h, w = shape
    ys, xs = np.mgrid[0:h, 0:w]
    target = np.zeros(shape)
    for b in range(n):
        for j in range(k):
            cx, cy = rng.uniform(1.5, w - 2.5), rng.uniform(1.5, h - 2.5)
            target[b, j] = PEAK * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 1.2 ** 2))
    target[1, 2] = 0  # a landmark outside the heatmap: no target
    pred = target * rng.uniform(0.6, 1.1) + rng.normal(0, 2.0, shape)
    return pred, target


def _check(fn_mx, fn_np, pred, target, rel=1e-6):
    p = mx.nd.array(pred, dtype="float64")
    p.attach_grad()
    with autograd.record():
        value = fn_mx(p, mx.nd.array(target, dtype="float64"))
    value.backward()
    assert value.asscalar() == pytest.approx(fn_np(pred, target), rel=rel, abs=1e-12)
    grad, eps = p.grad.asnumpy(), 1e-5
    rng = np.random.default_rng(0)
    for _ in range(12):
        index = tuple(rng.integers(0, s) for s in pred.shape)
        up, down = pred.copy(), pred.copy()
        up[index] += eps
        down[index] -= eps
        numeric = (fn_np(up, target) - fn_np(down, target)) / (2 * eps)
        assert grad[index] == pytest.approx(numeric, rel=1e-5, abs=1e-8), index


@pytest.mark.parametrize("seed", [0, 1])
def test_adaptive_wing_with_its_loss_map_matches_numpy(seed):
    pred, target = _heatmap_batch(seed)
    weight = loss_map_numpy(target)
    mx_map = awing_loss_map(mx.nd, mx.nd.array(target, dtype="float64"), PEAK, 10.0).asnumpy()
    np.testing.assert_array_equal(mx_map, weight)
    assert weight.max() == 11 and weight.min() == 1
    _check(lambda p, t: awing(mx.nd, p, t, mx.nd.array(weight, dtype="float64"), peak=PEAK),
           lambda p, t: awing_numpy(p, t, weight), pred, target)


@pytest.mark.parametrize("seed", [0, 1])
def test_star_matches_an_eigendecomposition_in_numpy(seed):
    pred, target = _heatmap_batch(seed)
    _check(lambda p, t: star(mx.nd, p, t, height=8, width=8), star_numpy, pred, target)


def test_the_new_losses_are_hybridisable_and_run_under_bfloat16_amp():
    pred, target = _heatmap_batch(3)
    for kind in ("awing", "star"):
        settings = LossSettings(kind=kind, heatmap_size=8)
        sym = stack_loss(mx.sym, mx.sym.var("pred"), mx.sym.var("target"), settings)
        out = sym.eval(ctx=mx.cpu(), pred=mx.nd.array(pred), target=mx.nd.array(target))[0].asscalar()
        nd = stack_loss(mx.nd, mx.nd.array(pred), mx.nd.array(target), settings).asscalar()
        assert out == pytest.approx(nd, rel=1e-5)
    code = """
import mxnet as mx, numpy as np
from facealign.train import amp
amp.init("bfloat16")  # as the trainer
from mxnet import autograd, gluon
from facealign.train.losses import LossSettings, stacked_loss
from facealign.models import get_model, initialize
net = initialize(get_model("hg2-d3-cab", width=32, depth=1, input_size=32, heatmap_size=16), seed=1)
net.hybridize(static_alloc=True)
for p in net.collect_params().values():
    if p.grad_req != "null":
        p.grad_req = "add"  # gradient accumulation
trainer = gluon.Trainer(net.collect_params(), mx.optimizer.Nadam(learning_rate=1e-3))
x = mx.nd.array(np.random.RandomState(0).uniform(0, 255, (2, 3, 32, 32)))
y = mx.nd.array(np.random.RandomState(1).uniform(0, 20, (2, 68, 16, 16)))
for kind in ("awing", "star"):
    for micro in range(2):
        with autograd.record():
            loss, _ = stacked_loss(net(x), y, settings=LossSettings(kind=kind, heatmap_size=16))
        loss.backward()
    trainer.step(2)
    net.collect_params().zero_grad()
    assert np.isfinite(loss.asscalar()), kind
print("OK")
"""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]


# --- depth (models that predict z) ---------------------------------------------------------------------

def depth_loss_numpy(outputs, z, box, input_size=32):
    """The mean of |z_hat - z| / box, z_hat each depth map's mean under its heatmap clipped at 0 and
    normalised (written per landmark, as the definition reads)."""
    n, k2 = outputs.shape[:2]
    k = k2 // 2
    total = 0.0
    for b in range(n):
        for j in range(k):
            w = np.maximum(outputs[b, j], 0)
            z_hat = (w / (w.sum() + 1e-6) * outputs[b, k + j]).sum() * input_size
            total += abs(z_hat - z[b, j]) / box[b]
    return total / (n * k)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_depth_loss_and_its_gradient_match_numpy(seed):
    from facealign.data.codec import integral_depth_numpy
    from facealign.train.losses import depth_loss, integral_depth

    heatmaps, _ = _heatmap_batch(seed)
    rng = np.random.default_rng(seed)
    depth_maps = rng.normal(0, 0.3, heatmaps.shape)
    outputs = np.concatenate([heatmaps, depth_maps], axis=1)
    z, box = rng.normal(0, 5, heatmaps.shape[:2]), np.array([20.0, 26.0])

    def fn_mx(o, t):
        h, d = mx.nd.split(o, num_outputs=2, axis=1)
        # + 0 x the heatmaps: both of split's outputs take part in backward, as in training (MXNet 1.9.1
        # crashes on a split whose other output has no gradient)
        return depth_loss(mx.nd, h, d, t, mx.nd.array(box, dtype="float64"), 32) + 0 * mx.nd.sum(h)

    # the gradient reaches the depth maps, not the heatmaps (the weights are held fixed)
    o = mx.nd.array(outputs, dtype="float64")
    o.attach_grad()
    with autograd.record():
        value = fn_mx(o, mx.nd.array(z, dtype="float64"))
    value.backward()
    assert value.asscalar() == pytest.approx(depth_loss_numpy(outputs, z, box), rel=1e-9)
    k = heatmaps.shape[1]
    assert not o.grad.asnumpy()[:, :k].any()
    grad, eps = o.grad.asnumpy(), 1e-5
    for index in [(0, k, 3, 4), (1, k + 2, 5, 5), (0, k + 1, 0, 7), (1, k, 6, 2)]:
        up, down = outputs.copy(), outputs.copy()
        up[index] += eps
        down[index] -= eps
        numeric = (depth_loss_numpy(up, z, box) - depth_loss_numpy(down, z, box)) / (2 * eps)
        assert grad[index] == pytest.approx(numeric, rel=1e-5, abs=1e-10), index
    # the decoder is the same integral
    z_hat = integral_depth(mx.nd, mx.nd.array(heatmaps, dtype="float64"), mx.nd.array(depth_maps, dtype="float64"), 32)
    np.testing.assert_allclose(z_hat.asnumpy(), integral_depth_numpy(heatmaps, depth_maps, 32), rtol=1e-12)


def test_a_model_that_predicts_z_adds_the_weighted_depth_term_to_every_stack():
    pred, target = _heatmap_batch(0)
    rng = np.random.default_rng(3)
    outputs = [np.concatenate([pred * s, rng.normal(0, 0.3, pred.shape)], axis=1) for s in (0.9, 1.0)]
    z, box = rng.normal(0, 5, pred.shape[:2]), np.array([20.0, 26.0])
    settings = LossSettings(kind="mse", z_weight=0.5, input_size=32)
    nd = lambda a: mx.nd.array(a, dtype="float32")  # noqa: E731  (the trainer's precision)
    total, per_stack = stacked_loss([nd(o) for o in outputs], nd(target), settings=settings,
                                    depth=(nd(z), nd(box)))
    expected = [np.mean((o[:, :3] - target) ** 2) + 0.5 * depth_loss_numpy(o, z, box) for o in outputs]
    np.testing.assert_allclose([p.asscalar() for p in per_stack], expected, rtol=1e-5)
    assert total.asscalar() == pytest.approx(sum(expected), rel=1e-5)
