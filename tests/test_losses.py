"""The heatmap losses against NumPy references: values, gradients (finite differences), symbols."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from facealign.losses import LOSSES, mse, stacked_loss


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
    assert LOSSES == ("mse",)
    with pytest.raises(ValueError, match="loss kind must be one of"):
        stacked_loss([mx.nd.zeros((1, 1, 2, 2))], mx.nd.zeros((1, 1, 2, 2)), kind="l1")
