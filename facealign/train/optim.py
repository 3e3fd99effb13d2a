"""Optimizer, learning-rate schedule and the optimizer state a checkpoint carries.

Learning-rate scaling rule (documented in the README): ``optim.lr`` is the rate
for one rank at ``data.batch_size``. With ``lr_scaling: linear`` the rate is
multiplied by world_size x grad_accumulation (Goyal et al.), with ``sqrt`` by
its square root, with ``none`` (the default: Adam-family optimisers, the
reference's Nadam among them, are nearly scale-invariant) not at all. A
``warmup_steps`` ramp goes linearly from lr / world_size to the scaled rate.
"""
from __future__ import annotations

import math

from facealign.spec.schema import JobSpec


def scaled_lr(spec: JobSpec, world_size: int) -> float:
    factor = world_size * spec.optim.grad_accumulation
    return spec.optim.lr * {"none": 1.0, "linear": factor, "sqrt": math.sqrt(factor)}[spec.optim.lr_scaling]


def total_steps(spec: JobSpec, steps_per_epoch: int) -> int:
    s = spec.schedule
    total = s.length * steps_per_epoch if s.unit == "epoch" else s.length
    return min(total, s.max_steps) if s.max_steps is not None else total


def lr_at(step: int, spec: JobSpec, steps_per_epoch: int, world_size: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based): a pure function, so resume needs no LR state."""
    s, base = spec.schedule, scaled_lr(spec, world_size)
    if step < spec.optim.warmup_steps:
        start = base / world_size
        return start + (base - start) * step / spec.optim.warmup_steps
    position = step / steps_per_epoch if s.unit == "epoch" else step
    if s.kind == "step":
        return base * s.factor ** sum(position >= m for m in s.milestones)
    length = s.length
    frac = min(max(position / length, 0.0), 1.0)
    return base * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def make_optimizer(spec: JobSpec):
    import mxnet as mx

    o = spec.optim
    kw = {"learning_rate": o.lr, "wd": o.wd}
    if o.clip_gradient is not None:
        kw["clip_gradient"] = o.clip_gradient
    if o.name == "nadam":
        return mx.optimizer.Nadam(schedule_decay=0.004, **kw)
    if o.name == "adam":
        return mx.optimizer.Adam(**kw)
    if o.name == "rmsprop":
        return mx.optimizer.RMSProp(gamma1=0.9, **kw)
    return mx.optimizer.SGD(momentum=o.momentum, **kw)


def make_trainer(net, spec: JobSpec):
    """Horovod's DistributedTrainer: gradients averaged over ranks at every step."""
    import horovod.mxnet as hvd

    compression = hvd.Compression.fp16 if spec.optim.fp16_allreduce else hvd.Compression.none
    return hvd.DistributedTrainer(net.collect_params(), make_optimizer(spec), compression=compression)


def count_nonfinite(arrays) -> int:
    """How many of ``arrays`` (NDArrays) hold a NaN or an infinity: one fused check per 64 arrays."""
    import mxnet as mx

    arrays = list(arrays)
    bad = 0
    for start in range(0, len(arrays), 64):
        chunk = arrays[start:start + 64]
        if mx.nd.multi_all_finite(*chunk, num_arrays=len(chunk), init_output=True).asscalar() < 1:
            bad += sum(int(mx.nd.contrib.isfinite(a).min().asscalar() < 1) for a in chunk)
    return bad


# --- optimizer state without pickle --------------------------------------------------------------
