"""Validation during training: sharded over ranks, scored by facealign.evaluation.scoring, reduced with allreduce."""
from __future__ import annotations

import cv2
import numpy as np

from facealign.train import dist
from facealign.evaluation.backends import MXNetBackend
from facealign.data.pipeline import RecordSet
from facealign.evaluation.metrics import primary_norm
from facealign.evaluation.scoring import Protocol, score


class Validator:
    """``run(net)`` -> ({"nme/<set>": value}, rank 0's first batch for drawing, or None): ``nme/<set>`` is the
    model's primary NME, by the normaliser ``norm``.

    ``record`` is what the run's checkpoints keep of it (``components.validation_record``):
    the ``train`` protocol, the sets, the batch size and the sample limit. Each rank scores
    records ``rank::world_size`` of every set; one allreduce of (sum, count) per set makes the
    mean. 2D models are scored by the eye-centre NME, 3D models by the box NME (the reference's
    figures); models that predict z also by the 3D NME and the depth error (``nme3d/<set>``,
    ``z/<set>``). ``results`` keeps this rank's per-image scores of the last run.
    """

    def __init__(self, record: dict, info, world, ctx):
        self.sets = {name: RecordSet([path]) for name, path in record["sets"].items()}
        self.protocol = Protocol.from_dict(record["protocol"])
        self.batch, self.max_samples = record["batch_size"], record["max_samples"]
        self.info, self.world, self.ctx = info, world, ctx
        self.norm = primary_norm(info.landmark_dims)
        self.results = {}

    def run(self, net):
        backend = MXNetBackend(net, self.ctx)
        metrics, first = {}, None
        for name, records in self.sets.items():
            n = len(records) if self.max_samples is None else min(len(records), self.max_samples)
            result = score(backend, self.info, records, self.protocol, set_name=name,
                           indices=range(self.world.rank, n, self.world.size), batch_size=self.batch, pad=True,
                           keep_first=first is None)
            self.results[name] = result
            first = first or result.first
            errors = result.nme[self.norm]
            # a model that predicts z, on records with z (every rank scores the same set)
            depth = [result.nme_3d[k] for k in ("nme_3d", "z")] if result.nme_3d else []
            total, count, *depth_totals = dist.allreduce([float(errors.sum()), len(errors),
                                                          *(float(e.sum()) for e in depth)])
            metrics[f"nme/{name}"] = total / max(count, 1)
            if depth_totals:  # a model that predicts z: its 3D NME and depth error too
                metrics[f"nme3d/{name}"], metrics[f"z/{name}"] = (t / max(count, 1) for t in depth_totals)
        return metrics, (first if self.world.is_primary else None)


def draw_faces(images, pred, gt, heatmaps, peak: float, limit: int = 8):
    """A row of faces (ground truth green, prediction red) and a row of their heatmaps (max over points)."""
    faces, maps = [], []
    for i in range(min(limit, len(images))):
        face = np.ascontiguousarray(images[i]).astype(np.uint8).copy()  # S x S x 3 crop
        face = cv2.resize(face, (256, 256), interpolation=cv2.INTER_LINEAR)
        scale = 256 / images.shape[1]
        for (gx, gy), (px, py) in zip(gt[i], pred[i]):
            cv2.circle(face, (int(gx * scale), int(gy * scale)), 2, (0, 255, 0), -1, cv2.LINE_AA)
            cv2.circle(face, (int(px * scale), int(py * scale)), 2, (255, 0, 0), -1, cv2.LINE_AA)
        faces.append(face)
        m = heatmaps[i].max(0)
        m = np.clip(m / max(peak, 1e-6), 0, 1)
        m = cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        maps.append(cv2.resize(m, (256, 256), interpolation=cv2.INTER_NEAREST))
    return np.hstack(faces), np.hstack(maps)
