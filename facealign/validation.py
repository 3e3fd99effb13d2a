"""Validation during training: sharded over ranks, reduced with allreduce, NME per validation set."""
from __future__ import annotations

import cv2
import numpy as np

from facealign import dist
from facealign.data.loader import RecordSet, process_sample
from facealign.metrics import nme


def score_records(net, records, indices, cfg, codec, *, batch: int, ctx, norm: str):
    """Per-image NME of ``net`` on ``records[indices]`` (evaluation crops, last stack decoded).

    Returns (errors, first batch as (images, pred, gt, heatmaps) or None).
    """
    import mxnet as mx

    errors, first = [], None
    for start in range(0, len(indices), batch):
        samples = [process_sample(records, i, cfg, train=False) for i in indices[start:start + batch]]
        images = np.stack([s.image.transpose(2, 0, 1) for s in samples])
        pad = batch - len(samples)  # a full batch keeps a static graph's shapes
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
        heatmaps = net(mx.nd.array(images, ctx=ctx))[-1].astype("float32").asnumpy()[:len(samples)]  # AMP: bf16
        pred, _ = codec.decode(heatmaps)
        gt = np.stack([s.landmarks[:, :2] for s in samples])
        errors.append(nme(pred, gt, norm))
        if first is None:
            first = (images[:len(samples)], pred, gt, heatmaps)
    return (np.concatenate(errors) if errors else np.zeros(0)), first


class Validator:
    """``run(net)`` -> ({"nme/<set>": value}, rank 0's first batch for drawing, or None).

    Each rank evaluates records ``rank::world_size`` of every set; one
    allreduce of (sum, count) per set makes the mean. 2D models are scored by
    the eye-centre NME, 3D models by the box NME (the reference's figures).
    """

    def __init__(self, spec, codec, sample_cfg, world, ctx):
        self.sets = {name: RecordSet([path]) for name, path in spec.data.val.items()}
        self.codec, self.cfg, self.world, self.ctx = codec, sample_cfg, world, ctx
        self.batch = spec.eval.batch_size
        self.max_samples = spec.eval.max_samples
        self.norm = norm_for(spec.data.landmark_dims)

    def run(self, net):
        metrics, first = {}, None
        for name, records in self.sets.items():
            n = len(records) if self.max_samples is None else min(len(records), self.max_samples)
            errors, batch0 = score_records(net, records, list(range(self.world.rank, n, self.world.size)), self.cfg,
                                           self.codec, batch=self.batch, ctx=self.ctx, norm=self.norm)
            first = first or batch0
            total, count = dist.allreduce([float(errors.sum()), len(errors)])
            metrics[f"nme/{name}"] = total / max(count, 1)
        return metrics, (first if self.world.is_primary else None)


def norm_for(landmark_dims: int) -> str:
    """The reference's normalisation: eye-centre distance in 2D, sqrt of the box area in 3D."""
    return "eye_centre" if landmark_dims == 2 else "box"


def draw_faces(images, pred, gt, heatmaps, codec, limit: int = 8):
    """A row of faces (ground truth green, prediction red) and a row of their heatmaps (max over points)."""
    faces, maps = [], []
    for i in range(min(limit, len(images))):
        face = np.ascontiguousarray(images[i].transpose(1, 2, 0)).astype(np.uint8).copy()
        face = cv2.resize(face, (256, 256), interpolation=cv2.INTER_LINEAR)
        scale = 256 / images.shape[-1]
        for (gx, gy), (px, py) in zip(gt[i], pred[i]):
            cv2.circle(face, (int(gx * scale), int(gy * scale)), 2, (0, 255, 0), -1, cv2.LINE_AA)
            cv2.circle(face, (int(px * scale), int(py * scale)), 2, (255, 0, 0), -1, cv2.LINE_AA)
        faces.append(face)
        m = heatmaps[i].max(0)
        m = np.clip(m / max(codec.peak, 1e-6), 0, 1)
        m = cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        maps.append(cv2.resize(m, (256, 256), interpolation=cv2.INTER_NEAREST))
    return np.hstack(faces), np.hstack(maps)


def add_image(writer, tag: str, image_rgb: np.ndarray, step: int) -> None:
    """An RGB image to TensorBoard, PNG-encoded with OpenCV (tensorboardX's add_image would need Pillow)."""
    from tensorboardX.proto.summary_pb2 import Summary

    ok, png = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR))
    h, w = image_rgb.shape[:2]
    value = Summary.Value(tag=tag, image=Summary.Image(height=h, width=w, colorspace=3,
                                                       encoded_image_string=png.tobytes()))
    writer._get_file_writer().add_summary(Summary(value=[value]), step)
