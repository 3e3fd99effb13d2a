"""The evaluation report's figures: cumulative error distributions (CED), with matplotlib's Agg backend, as PNG
and PDF files and as pixels for TensorBoard."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from facealign.evaluation.metrics import auc_and_failure, ced  # noqa: E402
from facealign.evaluation.tables import THRESHOLDS  # noqa: E402

CED_X_CAP = 0.50  # a broken model's curve is flat at 0 below this anyway


def ced_x_limit(curves: dict, threshold: float = 0.10) -> float:
    """The CED axis's end: at least ``threshold``, and at least the 95th percentile of every curve's NMEs
    (so a model whose median is above the threshold still shows its curve), rounded up to 5% and capped
    at ``CED_X_CAP``."""
    values = [np.asarray(v, dtype=np.float64) for v in curves.values() if len(v)]
    p95 = max((float(np.percentile(v[np.isfinite(v)], 95)) for v in values if np.isfinite(v).any()), default=0.0)
    return float(min(max(threshold, np.ceil(p95 * 20 - 1e-9) / 20), CED_X_CAP))


def ced_figure(curves: dict, title: str, threshold: float = 0.10):
    """A CED figure: one curve per label ({label: per-image NMEs}), with its AUC and failure rate at
    ``threshold`` in the legend, the reference's 8% and 10% marks as lines, and an axis that covers
    the data (``ced_x_limit``)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    limit = ced_x_limit(curves, threshold)
    for label, values in curves.items():
        xs, ys = ced(values, limit, steps=400)
        auc, fr = auc_and_failure(values, threshold)
        ax.plot(xs * 100, ys, linewidth=2, label=f"{label} (AUC@{threshold * 100:g}% {auc:.3f}, FR {100 * fr:.1f}%)")
    for mark in THRESHOLDS:
        ax.axvline(mark * 100, color="0.4", linestyle="--", linewidth=1)
        ax.text(mark * 100, 0.02, f" {mark * 100:g}%", color="0.3", fontsize=8)
    ax.set_xlim(0, limit * 100)
    ax.set_ylim(0, 1)
    ax.set_xlabel("NME (%)")
    ax.set_ylabel("fraction of images")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return fig


def save_figure(fig, stem: Path) -> np.ndarray:
    """Write ``stem``.png and ``stem``.pdf; return the RGB pixels (for TensorBoard)."""
    fig.savefig(str(stem) + ".png")
    fig.savefig(str(stem) + ".pdf")
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb
