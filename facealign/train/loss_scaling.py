"""Dynamic loss scaling whose skip decision is collective, for float16 training on many ranks.

    scale = DynamicLossScale()                     # 2^16, halved on overflow, doubled after 2000 clean steps
    autograd.backward(loss * scale.value)
    overflow = allreduce(local non-finite gradient count) > 0     # every rank learns the same answer
    if not overflow: trainer.step(batch * scale.value)           # the update also divides the scale out
    scale.update(overflow)

MXNet's own scaler (``amp.init_trainer``) decides per rank, inside ``Trainer._update``; ranks that
decided differently would update different weights, and nothing would say so. Here the decision is
the trainer's, taken from one allreduced flag before the update, so all ranks skip the same steps and
scale down together; the scale and its clean-step count are checkpoint state (exact resume). Plain
Python: the rule is tested against a hand-written sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

from facealign.spec.schema import JobSpec


@dataclass
class DynamicLossScale:
    value: float = 2.0 ** 16  # MXNet AMP's initial scale
    factor: float = 2.0
    window: int = 2000  # clean steps before the scale grows (MXNet AMP's scale_seq_len)
    min_value: float = 1.0
    max_value: float = 2.0 ** 24  # MXNet AMP's maximum
    clean: int = 0  # clean steps since the last change
    skipped: int = 0  # updates skipped over the run

    def update(self, overflow: bool) -> None:
        """After a step: halve on overflow (never below ``min_value``), grow after ``window`` clean steps."""
        if overflow:
            self.value = max(self.value / self.factor, self.min_value)
            self.clean = 0
            self.skipped += 1
            return
        self.clean += 1
        if self.clean >= self.window:
            self.value = min(self.value * self.factor, self.max_value)
            self.clean = 0

    @property
    def at_minimum(self) -> bool:
        return self.value <= self.min_value

    def state(self) -> dict:
        return {"value": self.value, "clean": self.clean, "skipped": self.skipped}

    def load(self, state: dict | None) -> None:
        if state:
            self.value, self.clean, self.skipped = float(state["value"]), int(state["clean"]), int(state["skipped"])


def for_spec(spec: JobSpec) -> DynamicLossScale | None:
    """``optim.loss_scaling``: a dynamic loss scale (auto: with float16 AMP), or None."""
    o = spec.optim
    if o.loss_scaling == "off" or (o.loss_scaling == "auto" and o.amp != "float16"):
        return None
    return DynamicLossScale(value=o.loss_scale_init, window=o.loss_scale_window)
