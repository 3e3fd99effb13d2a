"""Heatmap losses: each a function of (prediction, target, optional weight map), per stack.

    >>> total, per_stack = stacked_loss(outputs, target, kind="awing", stack_weights=[1.0, 1.0], peak=20.0)

``F`` is ``mx.nd`` or ``mx.sym`` (the functions are hybridisable); the tests hold
a NumPy reference of each and check values and gradients in float64. Predictions
are cast to float32 first, so a network computing in bfloat16 or float16 (AMP) is
scored in float32. Targets are the codec's heatmaps (peak ``peak``, 20 for the
reference); the losses that need [0, 1] targets divide by it.

  mse    the reference's: the mean of (pred - target)^2 over every element.
  awing  Adaptive Wing (Wang, Bo and Fuxin, ICCV 2019) with its weighted loss map: pixels where
         the target, grey-dilated over 3 x 3, exceeds 0.2 weigh W + 1, the others 1.
  depth  for models that predict z (``model.predict_z``): each landmark's depth is the integral of its
         depth map under its normalised heatmap (``integral_depth``); the L1 error to the true z, divided
         by the face box's size, times ``loss.z_weight``, is added to every stack's heatmap loss.
  star   STAR (Zhou et al., CVPR 2023) added to a heatmap term (awing by default, as the paper):
         each predicted heatmap normalised to a distribution gives a soft-argmax mean and a
         covariance; the error to the true point (the mean of the target heatmap) is decomposed along
         the covariance's principal axes, each component smooth-L1'd and divided by the square root
         of its eigenvalue, plus ``omega`` x the eigenvalues' sum.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import mxnet as mx
import numpy as np

from facealign.data.records import DataError
from facealign.spec.schema import LOSSES, JobSpec


@dataclass(frozen=True)
class LossSettings:
    """The settings of ``loss.*`` the functions take (``settings_for`` builds it from a job spec)."""

    kind: str = "mse"
    peak: float = 20.0  # the targets' peak value
    awing_alpha: float = 2.1
    awing_omega: float = 14.0
    awing_epsilon: float = 1.0
    awing_theta: float = 0.5
    awing_weight: float = 10.0  # W of the weighted loss map
    star_weight: float = 0.1  # of the STAR term against the heatmap term's 1: the paper's code weighs 1 : 10
    star_omega: float = 1.0  # of the eigenvalue regulariser
    star_heatmap: str = "awing"  # the heatmap term of star: awing or mse
    heatmap_size: int = 64  # the heatmaps' side (star builds its coordinate grid from it)
    z_weight: float = 1.0  # of the depth term, for models that predict z
    input_size: int = 128  # depth maps are in units of the input's side
    distill_weight: float = 0.0  # of the teacher term (loss.distill.weight), where a teacher gives soft targets


def settings_for(spec: JobSpec) -> LossSettings:
    """``loss.*``, the targets' peak and the heatmap side of a job spec."""
    fields = {f.name for f in dataclasses.fields(LossSettings)} - {"peak", "heatmap_size", "input_size", "distill_weight"}
    return LossSettings(peak=spec.data.peak, heatmap_size=spec.data.heatmap_size, input_size=spec.data.input_size,
                        distill_weight=spec.loss.distill.weight if spec.loss.distill.teacher else 0.0,
                        **{name: getattr(spec.loss, name) for name in fields})


def depth_targets(batch, ctx):
    """(z (B, K), face box size (B,)) in input pixels of a loader batch, for a model that predicts z: the box
    is the square root of the landmarks' box area, what the depth error is divided by."""
    points = batch.landmarks
    if points.shape[2] < 3:
        raise DataError("model.predict_z needs records with z (x, y, z landmarks); these have x and y only")
    size = points[..., :2].max(axis=1) - points[..., :2].min(axis=1)
    box = np.sqrt(np.maximum(size[:, 0] * size[:, 1], 1.0))
    return mx.nd.array(points[..., 2], ctx=ctx), mx.nd.array(box, ctx=ctx)


def integral_depth(F, heatmaps, depth_maps, input_size: int):
    """(B, K) depth in input pixels: each depth map's mean under its heatmap, clipped at 0 and normalised to
    sum to 1 (integral regression); the maps hold depth in units of the input's side. No gradient reaches the
    heatmaps through it: the depth error would otherwise move each heatmap's mass toward pixels whose depth
    fits, off the landmark (that cost the 3D demo 37% in 2D NME)."""
    weights = F.stop_gradient(F.relu(heatmaps))
    weights = F.broadcast_div(weights, F.sum(weights, axis=(2, 3), keepdims=True) + 1e-6)
    return F.sum(weights * depth_maps, axis=(2, 3)) * input_size


def depth_loss(F, heatmaps, depth_maps, z, box_size, input_size: int):
    """The mean over faces and landmarks of |predicted z - z| / the face box's size (``box_size``: (B,))."""
    err = F.abs(integral_depth(F, heatmaps, depth_maps, input_size) - z)
    return F.mean(F.broadcast_div(err, F.reshape(box_size, (-1, 1))))


def mse(F, pred, target, weight=None):
    """The reference's loss (seed-spec §5.1): the mean of (pred - target)^2 over every element,
    optionally weighted element-wise. ``square`` rather than ``** 2``: exact, and no pow() loop."""
    err = F.square(pred - target)
    if weight is not None:
        err = err * weight
    return F.mean(err)


def awing_loss_map(F, target, peak: float, weight: float):
    """W x M + 1, M = 1 where the 3 x 3 grey dilation of the [0, 1] target exceeds 0.2 (the paper's map)."""
    dilated = F.Pooling(target / peak, kernel=(3, 3), stride=(1, 1), pad=(1, 1), pool_type="max")
    return F.stop_gradient((dilated > 0.2) * weight + 1)


def awing(F, pred, target, weight=None, *, peak: float = 20.0, alpha: float = 2.1, omega: float = 14.0,
          epsilon: float = 1.0, theta: float = 0.5):
    """Adaptive Wing on the [0, 1] heatmaps (both divided by ``peak``), element-wise weighted, mean.

    |d| < theta:  omega ln(1 + |d / epsilon|^(alpha - y))
    otherwise:    A |d| - C, A and C making it continuous and smooth at theta.
    """
    y = F.stop_gradient(target / peak)
    d = F.abs(pred / peak - y)
    power = alpha - y
    ratio = theta / epsilon
    r_pow = F.exp(power * _log(ratio))  # (theta / epsilon)^(alpha - y)
    a = omega * (1 / (1 + r_pow)) * power * F.exp((power - 1) * _log(ratio)) / epsilon
    c = theta * a - omega * F.log(1 + r_pow)
    # |d / epsilon|^(alpha - y) through exp/log: F.power's gradient with respect to its exponent is
    # ln(0) at d = 0, which would poison nothing here but is avoided all the same
    small = omega * F.log(1 + F.exp(power * F.log(d / epsilon + 1e-30)))
    loss = F.where(d < theta, small, a * d - c)
    if weight is not None:
        loss = loss * weight
    return F.mean(loss)


def _log(x: float) -> float:
    import math

    return math.log(x)


def star(F, pred, target, weight=None, *, height: int, width: int, omega: float = 1.0, eps: float = 1e-5):
    """The STAR term as its paper's code computes it, per landmark, averaged over the landmarks with a
    target: each predicted heatmap, its negative part cut, divided by its sum (clamped at 1e-6) is a
    distribution; its mean is the soft-argmax and its unbiased covariance gives the principal axes. The
    error to the true point (the mean of the target heatmap), projected on each axis, is smooth-L1'd and
    divided by sqrt(eigenvalue + eps), summed over both axes; plus ``omega`` x (|eigenvalue 1| +
    |eigenvalue 2|). Coordinates in [-1, 1] over the heatmap. ``weight`` is unused (the term is per
    landmark)."""
    flat = F.relu(F.reshape(pred, shape=(0, 0, -1)))  # (B, K, H W)
    prob = F.broadcast_div(flat, F.expand_dims(F.maximum(F.sum(flat, axis=-1), 1e-6), axis=-1))
    tgt = F.reshape(F.stop_gradient(F.relu(target)), shape=(0, 0, -1))
    total = F.sum(tgt, axis=-1)  # (B, K)
    has = F.stop_gradient(total > 0)  # landmarks inside the heatmap
    tgt = F.broadcast_div(tgt, F.expand_dims(total + (1 - has), axis=-1))
    # grid coordinates in [-1, 1], as constants built from the input's shape
    ones = F.ones_like(F.slice_axis(prob, axis=1, begin=0, end=1))  # (B, 1, H W)
    index = F.contrib.arange_like(ones, axis=-1)  # 0 .. H W - 1
    xs = (index - F.floor(index / width) * width) / max(width - 1, 1) * 2 - 1
    ys = F.floor(index / width) / max(height - 1, 1) * 2 - 1
    xs, ys = F.stop_gradient(xs), F.stop_gradient(ys)
    mx_ = F.sum(F.broadcast_mul(prob, xs), axis=-1)
    my = F.sum(F.broadcast_mul(prob, ys), axis=-1)
    gx = F.sum(F.broadcast_mul(tgt, xs), axis=-1)
    gy = F.sum(F.broadcast_mul(tgt, ys), axis=-1)
    dx = F.broadcast_sub(xs, F.expand_dims(mx_, axis=-1))
    dy = F.broadcast_sub(ys, F.expand_dims(my, axis=-1))
    norm = 1 - F.sum(F.square(prob), axis=-1) + eps  # the unbiased weighted covariance's 1 - V2 (V1 = 1)
    a = F.sum(prob * dx * dx, axis=-1) / norm
    b = F.sum(prob * dx * dy, axis=-1) / norm
    c = F.sum(prob * dy * dy, axis=-1) / norm
    # the symmetric 2 x 2 eigenproblem in closed form (the paper takes an SVD)
    half = (a + c) / 2
    spread = F.sqrt(F.square((a - c) / 2) + F.square(b) + 1e-12)
    lam1, lam2 = half + spread, F.relu(half - spread)  # rounding can take the minor one below 0
    # the squared error along the first principal axis, from the double angle (no eigenvector signs):
    # (e . u1)^2 = ex^2 (1 + cos 2t) / 2 + ex ey sin 2t + ey^2 (1 - cos 2t) / 2
    cos2, sin2 = (a - c) / 2 / spread, b / spread
    ex, ey = gx - mx_, gy - my
    q1 = F.relu(F.square(ex) * (1 + cos2) / 2 + ex * ey * sin2 + F.square(ey) * (1 - cos2) / 2)
    q2 = F.relu(F.square(ex) + F.square(ey) - q1)
    trans = _smooth_l1_of_square(F, q1) / F.sqrt(lam1 + eps) + _smooth_l1_of_square(F, q2) / F.sqrt(lam2 + eps)
    eigen = F.abs(lam1) + F.abs(lam2)
    count = F.maximum(F.sum(has), 1)
    return F.sum((trans + omega * eigen) * has) / count


def _smooth_l1_of_square(F, q):
    """Smooth L1 (threshold 1) of |x|, given q = x^2 >= 0: q / 2 below 1, |x| - 1/2 above. The linear
    branch takes sqrt(max(q, 1)): a where() still differentiates the branch it drops, and sqrt's
    gradient at 0 would make 0 x inf there."""
    return F.where(q < 1, 0.5 * q, F.sqrt(F.maximum(q, 1)) - 0.5)


def stack_loss(F, pred, target, settings: LossSettings):
    """One stack's loss under ``settings``: its heatmap term, plus STAR's where the kind is star."""
    s = settings
    term = heatmap_loss(F, pred, target, s)
    if s.kind == "star":
        term = term + s.star_weight * star(F, pred, target, height=s.heatmap_size, width=s.heatmap_size,
                                           omega=s.star_omega)
    return term


def heatmap_loss(F, pred, target, settings: LossSettings):
    """The heatmap term of ``settings``' kind: MSE, or Adaptive Wing with its weighted loss map (awing, and
    star's ``star_heatmap``)."""
    s = settings
    heatmap = s.kind if s.kind != "star" else s.star_heatmap
    if heatmap != "awing":
        return mse(F, pred, target)
    return awing(F, pred, target, awing_loss_map(F, target, s.peak, s.awing_weight), peak=s.peak,
                 alpha=s.awing_alpha, omega=s.awing_omega, epsilon=s.awing_epsilon, theta=s.awing_theta)


def _float32(x):
    """float32 for reduced-precision outputs; float32 ones as they are (astype would copy)."""
    import numpy as np

    dtype = getattr(x, "dtype", None)
    return x if dtype is None or dtype == np.float32 else x.astype("float32")


def distill_loss(F, pred, soft, settings: LossSettings | None = None):
    """The teacher term of Fast Pose Distillation (Zhang et al., CVPR 2019): the job's heatmap loss
    (``heatmap_loss``: MSE as in the paper, or Adaptive Wing for an awing or star job, so both terms
    weigh the same errors alike) between a stack's output and the teacher's last stack, on the channels the
    teacher has (a student that predicts z learns its depth maps from the ground truth alone)."""
    channels = soft.shape[1]
    if pred.shape[1] != channels:
        pred = F.slice_axis(pred, axis=1, begin=0, end=channels)
    return heatmap_loss(F, pred, soft, settings or LossSettings(kind="mse"))


def stacked_loss(outputs, target, *, kind: str = "mse", stack_weights=None, settings: LossSettings | None = None,
                 F=None, depth=None, soft=None):
    """(total, [loss of each stack]): the stacks' losses against the same target, weighted and summed
    (intermediate supervision; equal weights of 1 are the reference's). ``depth``: (z (B, K) in input
    pixels, box size (B,)) for a model that predicts z, whose outputs hold K heatmaps then K depth maps.
    ``soft``: a teacher's last-stack output, whose ``distill_loss`` each stack adds with ``distill_weight``."""
    settings = settings or LossSettings(kind=kind)
    if settings.kind not in LOSSES:
        raise ValueError(f"loss kind must be one of {LOSSES}, got {settings.kind!r}")
    F = F or mx.nd
    weights = stack_weights or [1.0] * len(outputs)
    per_stack = []
    for o in map(_float32, outputs):
        if depth is None:
            per_stack.append(stack_loss(F, o, target, settings))
            continue
        heatmaps, depth_maps = F.split(o, num_outputs=2, axis=1)
        per_stack.append(stack_loss(F, heatmaps, target, settings)
                         + settings.z_weight * depth_loss(F, heatmaps, depth_maps, *depth, settings.input_size))
    if soft is not None:
        soft = _float32(soft)
        per_stack = [loss + settings.distill_weight * distill_loss(F, o, soft, settings)
                     for loss, o in zip(per_stack, map(_float32, outputs))]
    return sum(w * loss for w, loss in zip(weights, per_stack)), per_stack
