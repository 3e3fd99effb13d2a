"""Landmarks for faces in images: ``Predictor`` and the fixed ``Prediction`` it returns.

    >>> from facealign import Predictor
    >>> p = Predictor.from_checkpoint("runs/demo")                 # best checkpoint of a run, on the CPU
    >>> p.detector = make_detector("blazeface")                     # facealign.serve.detect
    >>> pred = p.predict(image_rgb)                                # faces found by the detector
    >>> pred = p.predict(image_rgb, boxes=[[x0, y0, x1, y1]])     # or boxes from your own detector
    >>> pred.landmarks                                             # (faces, K, 2) image pixels, x first

A predictor is a *backend* (facealign.evaluation.backends: anything mapping a batch of
N x 3 x S x S raw RGB crops to the last stack's N x K x H x W heatmaps: a Gluon
network, an exported symbol package, or an ONNX model run by onnxruntime) plus
the model's facts (``facealign.runs.artifact.ModelInfo``: sizes, landmark scheme,
the crop framing it was trained with). A face box becomes a square crop (an
affine M); the crops go through ``facealign.evaluation.scoring.predict_crops``, the same
network, decoding and mapping back that validation and ``facealign-eval`` use.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facealign.runs import artifact
from facealign.serve import loading
from facealign.runs.artifact import ModelInfo
from facealign.data.codec import HeatmapCodec
from facealign.data.schemes import get_scheme
from facealign.data.transforms import box_crop
from facealign.evaluation.scoring import check_scales, predict_images


@dataclass
class Prediction:
    """The landmarks of the faces in one image. Always the same fields, whatever was found.

    boxes       (F, 4) float32 face boxes x0, y0, x1, y1 the crops were made from
    box_scores  (F,) float32 detector confidence (1.0 for boxes that were given)
    landmarks   (F, K, 2) float32 landmark x, y in image pixels; (F, K, 3) for a model that predicts z:
                z in image pixels, toward the camera, relative to the face's mean z
    scores      (F, K) float32 heatmap peak per landmark (about the target peak when confident)
    poses       (F, 3) float32 head yaw, pitch, roll in degrees, from the 3D landmarks (facealign.data.pose),
                or None for a model that predicts no z
    """

    boxes: np.ndarray
    box_scores: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    poses: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    def to_json(self) -> list[dict]:
        faces = []
        for i in range(len(self)):
            face = {"box": [round(float(v), 2) for v in self.boxes[i]], "box_score": round(float(self.box_scores[i]), 4),
                    "landmarks": np.round(self.landmarks[i].astype(np.float64), 2).tolist(),
                    "scores": np.round(self.scores[i].astype(np.float64), 3).tolist()}
            if self.poses is not None:
                face["pose"] = dict(zip(("yaw", "pitch", "roll"), (round(float(a), 2) for a in self.poses[i])))
            faces.append(face)
        return faces

    @classmethod
    def empty(cls, num_landmarks: int, dims: int = 2) -> "Prediction":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                   np.zeros((0, num_landmarks, dims), np.float32), np.zeros((0, num_landmarks), np.float32),
                   np.zeros((0, 3), np.float32) if dims == 3 else None)


# --- the predictor ---------------------------------------------------------------------------------

class Predictor:
    """Face boxes in, landmarks out.

    ``backend``: a crops -> heatmaps callable (facealign.evaluation.backends); ``info``: the model's
    facts (facealign.runs.artifact.ModelInfo). ``flip``: average the heatmaps of the crop and of
    its mirror image (re-labelled by the landmark scheme) before decoding. ``scales``: crop each face at
    these framings too (1.2: a crop 1.2 times as wide; ``facealign.evaluation.scoring.TTA_SCALES``) and
    average the landmarks (the multi-scale test: slower by their number, steadier). ``refine``: after
    the first pass, crop again around the predicted landmarks that many times (a detector's
    box is framed differently from the landmark boxes the model was trained on).
    ``decode``: ``subpixel`` or ``reference`` (integer argmax after up-sampling).
    ``min_box_score``: drop the detector's boxes scoring below it (given boxes are kept).
    """

    def __init__(self, backend, info: ModelInfo, *, detector=None, flip: bool = False, scales=(1.0,),
                 refine: int = 1, decode: str = "subpixel", batch_size: int = 8, min_box_score: float | None = None):
        self.backend, self.info = backend, info
        self.detector, self.min_box_score = detector, min_box_score
        self.flip, self.refine, self.batch_size = flip, refine, batch_size
        self.scales = check_scales(scales)
        self.codec = HeatmapCodec(info.input_size, info.heatmap_size, sigma=info.sigma, decode_mode=decode)
        self.scheme = get_scheme(info.scheme)

    # --- construction ---

    @classmethod
    def load(cls, path, *, backend: str = "mxnet", gpu: int | None = None, model: str | None = None,
             which: str = "best", log=None, **kw) -> "Predictor":
        """A predictor from a run directory (its ``best`` or ``latest`` checkpoint), a checkpoint, an export
        package, an .onnx file or a reference release (``model-symbol.json`` + ``model-0000.params``;
        ``model`` names the zoo model when the directory name does not; ``log`` hears of damaged
        checkpoints skipped on the way)."""
        source = artifact.resolve(path, which=which, model_name=model, log=log)
        if source.kind == "onnx":
            backend = "onnxruntime"
        return cls(loading.load_backend(source, backend, gpu), source.info, **kw)

    @classmethod
    def from_checkpoint(cls, path, *, gpu: int | None = None, which: str = "best", **kw) -> "Predictor":
        """A run directory (its ``best`` or ``latest`` valid checkpoint) or one checkpoint directory."""
        return cls.load(path, gpu=gpu, which=which, **kw)

    @classmethod
    def from_export(cls, directory, *, backend: str = "mxnet", gpu: int | None = None, **kw) -> "Predictor":
        return cls.load(directory, backend=backend, gpu=gpu, **kw)

    @classmethod
    def from_reference(cls, prefix, *, model: str | None = None, gpu: int | None = None, **kw) -> "Predictor":
        """The reference project's released model (``<dir>/model-0000.params``), loaded into our network."""
        return cls.load(prefix, model=model, gpu=gpu, **kw)

    # --- the work ---

    def crop_for_box(self, box) -> np.ndarray:
        return box_crop(box, self.info.input_size, expand=self.info.crop_framing)

    def predict(self, image: np.ndarray, boxes=None, refine: int | None = None) -> Prediction:
        """Landmarks of the faces in ``image`` (H x W x 3 uint8 RGB, or H x W grey).

        ``boxes``: (F, 4) x0, y0, x1, y1 face boxes from your own detector; without them the
        predictor's detector finds the faces (``Prediction.empty`` when there are none).
        ``refine``: this call's re-crops instead of the predictor's (0 for boxes framed from landmarks).
        """
        return self.predict_batch([image], None if boxes is None else [boxes], refine)[0]

    def predict_batch(self, images, boxes=None, refine: int | None = None) -> list[Prediction]:
        """``predict`` for several images at once: the faces of all of them share the network's batches."""
        images = [as_rgb(im) for im in images]
        found = []
        for i, image in enumerate(images):
            if boxes is None or boxes[i] is None:
                if self.detector is None:
                    raise ValueError("no boxes given and this predictor has no detector (pass detector=...)")
                b, sc = self.detector(image)
                b, sc = np.asarray(b, np.float64).reshape(-1, 4), np.asarray(sc, np.float32)
                if self.min_box_score is not None:  # the detector's false alarms (textures) score low
                    b, sc = b[sc >= self.min_box_score], sc[sc >= self.min_box_score]
            else:
                b = np.asarray(boxes[i], np.float64).reshape(-1, 4)
                sc = np.ones(len(b), np.float32)
            found.append((np.asarray(b, np.float64).reshape(-1, 4), np.asarray(sc, np.float32)))
        owner = [i for i, (b, _) in enumerate(found) for _ in range(len(b))]
        transforms = [self.crop_for_box(box) for b, _ in found for box in b]
        pts, scores = self._predict_crops(images, owner, transforms)
        for _ in range(self.refine if refine is None else refine):
            transforms = [self.crop_for_box(landmark_box(p)) for p in pts]
            pts, scores = self._predict_crops(images, owner, transforms)
        poses = head_poses(pts) if self.info.predicts_z else None
        out, k = [], 0
        for b, sc in found:
            n = len(b)
            out.append(Prediction(b.astype(np.float32), sc, pts[k:k + n], scores[k:k + n],
                                  None if poses is None else poses[k:k + n]) if n
                       else Prediction.empty(self.info.num_landmarks, 3 if self.info.predicts_z else 2))
            k += n
        return out

    def _predict_crops(self, images, owner, transforms):
        k, z = self.info.num_landmarks, self.info.predicts_z
        if not transforms:
            return np.zeros((0, k, 3 if z else 2), np.float32), np.zeros((0, k), np.float32)
        pts, scores, _ = predict_images(self.backend, images, owner, transforms, self.codec, batch_size=self.batch_size,
                                        scales=self.scales, flip_perm=self.scheme.flip if self.flip else None, depth=z)
        return pts.astype(np.float32), scores.astype(np.float32)


def head_poses(points: np.ndarray) -> np.ndarray | None:
    """(F, 3) yaw, pitch, roll of 68-point 3D faces (the mean face's fit), or None for another scheme."""
    from facealign.data.pose import head_pose

    if points.ndim != 3 or points.shape[1:] != (68, 3):
        return None
    return np.array([head_pose(p) for p in points], np.float32).reshape(-1, 3)


def landmark_box(points: np.ndarray) -> tuple[float, float, float, float]:
    p = np.asarray(points)[:, :2]
    return (*p.min(0), *p.max(0))


def as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {image.shape}")
    return image
