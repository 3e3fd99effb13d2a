"""Landmarks for faces in images: ``Predictor`` and the fixed ``Prediction`` it returns.

    >>> from facealign import Predictor
    >>> p = Predictor.from_checkpoint("runs/demo")                 # best checkpoint of a run, on the CPU
    >>> p.detector = make_detector("dlib")                          # facealign.detect
    >>> pred = p.predict(image_rgb)                                # faces found by the detector
    >>> pred = p.predict(image_rgb, boxes=[[x0, y0, x1, y1]])     # or boxes from your own detector
    >>> pred.landmarks                                             # (faces, K, 2) image pixels, x first

A predictor is a *backend* (anything mapping a batch of N x 3 x S x S raw RGB
crops to the last stack's N x K x H x W heatmaps: a Gluon network, an exported
symbol package, or an ONNX model run by onnxruntime) plus the model's facts
(``ModelInfo``: sizes, landmark scheme, the crop framing it was trained with).
Everything else is geometry: a face box becomes a square crop (an affine M),
heatmaps are decoded by the heatmap codec, and points go back through M^-1.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facealign.data.codec import HeatmapCodec
from facealign.data.schemes import get_scheme
from facealign.data.transforms import apply, box_crop, invert, warp

def center_crop_framing(base_size: float = 256.0, canvas: int = 384, context: float = 2.25) -> float:
    """Crop side / landmark-box side of the training crops: the packer's ``canvas`` covers ``context`` x
    the landmark box, and training takes a ``base_size`` window of it (jobs with eval.crop: center)."""
    return base_size / canvas * context


CENTER_CROP_FRAMING = center_crop_framing()
BOX_CROP_FRAMING = 1.2  # eval.crop: box, and the reference's evaluation crops


@dataclass(frozen=True)
class ModelInfo:
    """What inference needs to know about a model besides its weights."""

    name: str
    input_size: int = 128
    heatmap_size: int = 64
    num_landmarks: int = 68
    landmark_dims: int = 2  # 3: trained on 3D-consistent landmarks (it predicts their x, y)
    crop_framing: float = CENTER_CROP_FRAMING  # crop side / landmark box side
    model: dict = field(default_factory=dict)  # the ModelSpec fields, when known

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelInfo":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Prediction:
    """The landmarks of the faces in one image. Always the same fields, whatever was found.

    boxes       (F, 4) float32 face boxes x0, y0, x1, y1 the crops were made from
    box_scores  (F,) float32 detector confidence (1.0 for boxes that were given)
    landmarks   (F, K, 2) float32 landmark x, y in image pixels
    scores      (F, K) float32 heatmap peak per landmark (about the target peak when confident)
    """

    boxes: np.ndarray
    box_scores: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    def to_json(self) -> list[dict]:
        return [{"box": [round(float(v), 2) for v in self.boxes[i]], "box_score": round(float(self.box_scores[i]), 4),
                 "landmarks": np.round(self.landmarks[i].astype(np.float64), 2).tolist(),
                 "scores": np.round(self.scores[i].astype(np.float64), 3).tolist()} for i in range(len(self))]

    @classmethod
    def empty(cls, num_landmarks: int) -> "Prediction":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                   np.zeros((0, num_landmarks, 2), np.float32), np.zeros((0, num_landmarks), np.float32))


# --- backends: N x 3 x S x S float32 raw RGB -> N x K x H x W heatmaps (the last stack) ---------------

class MXNetBackend:
    """A Gluon network (a zoo model or a reloaded SymbolBlock) on one MXNet device."""

    name = "mxnet"

    def __init__(self, net, ctx):
        self.net, self.ctx = net, ctx

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import mxnet as mx

        out = self.net(mx.nd.array(batch, ctx=self.ctx, dtype="float32"))
        last = out[-1] if isinstance(out, (list, tuple)) else out
        return last.astype("float32").asnumpy()


class OnnxBackend:
    """An exported ONNX model run by onnxruntime (CPU, or CUDA when that provider is installed)."""

    name = "onnxruntime"

    def __init__(self, path, gpu: int | None = None):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if gpu is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": gpu}))
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[-1].name  # the last stack

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: np.ascontiguousarray(batch, np.float32)})[0]


def mx_context(gpu: int | None):
    import mxnet as mx

    return mx.cpu() if gpu is None or gpu < 0 else mx.gpu(gpu)


# --- the predictor ---------------------------------------------------------------------------------

class Predictor:
    """Face boxes in, landmarks out.

    ``flip``: average the heatmaps of the crop and of its mirror image (re-labelled
    by the landmark scheme) before decoding. ``refine``: after the first pass,
    crop again around the predicted landmarks that many times (a detector's box is
    framed differently from the landmark boxes the model was trained on).
    ``decode``: ``subpixel`` or ``reference`` (integer argmax after up-sampling).
    """

    def __init__(self, backend, info: ModelInfo, *, detector=None, flip: bool = False, refine: int = 1,
                 decode: str = "subpixel", batch_size: int = 8):
        self.backend, self.info = backend, info
        self.detector = detector
        self.flip, self.refine, self.batch_size = flip, refine, batch_size
        self.codec = HeatmapCodec(info.input_size, info.heatmap_size, decode_mode=decode)
        self.scheme = get_scheme(info.num_landmarks)

    # --- construction ---

    @classmethod
    def load(cls, path, *, backend: str = "mxnet", gpu: int | None = None, model: str | None = None, **kw):
        """A predictor from a run directory, a checkpoint, an export package, an .onnx file or a
        reference release (``model-symbol.json`` + ``model-0000.params``; ``model`` names the zoo model
        when the directory name does not)."""
        from facealign import export

        path = Path(path)
        kind = export.detect_kind(path)
        if kind in ("run", "checkpoint"):
            if backend != "mxnet":
                raise ValueError(f"{path} is a {kind}: export it first (facealign-export) to run it with {backend}")
            return cls.from_checkpoint(path, gpu=gpu, **kw)
        if kind == "export":
            return cls.from_export(path, backend=backend, gpu=gpu, **kw)
        if kind == "onnx":
            return cls.from_export(path.parent, backend="onnxruntime", gpu=gpu, onnx_file=path, **kw)
        return cls.from_reference(path, model=model, gpu=gpu, **kw)

    @classmethod
    def from_checkpoint(cls, path, *, gpu: int | None = None, which: str = "best", **kw) -> "Predictor":
        """A run directory (its ``best`` or ``latest`` valid checkpoint) or one checkpoint directory."""
        from facealign import export

        net, info, _ = export.load_checkpoint_net(path, ctx=mx_context(gpu), which=which)
        return cls(MXNetBackend(net, mx_context(gpu)), info, **kw)

    @classmethod
    def from_export(cls, directory, *, backend: str = "mxnet", gpu: int | None = None, onnx_file=None,
                    **kw) -> "Predictor":
        from facealign import export

        info = export.read_info(directory)
        if backend == "onnxruntime":
            return cls(OnnxBackend(onnx_file or Path(directory) / export.ONNX_FILE, gpu), info, **kw)
        if backend != "mxnet":
            raise ValueError(f"backend must be mxnet or onnxruntime, got {backend!r}")
        net = export.load_symbol_package(directory, mx_context(gpu))
        return cls(MXNetBackend(net, mx_context(gpu)), info, **kw)

    @classmethod
    def from_reference(cls, prefix, *, model: str | None = None, gpu: int | None = None, **kw) -> "Predictor":
        """The reference project's released model (``<dir>/model-0000.params``), loaded into our network."""
        from facealign import export

        net, info = export.load_reference_release(prefix, model=model, ctx=mx_context(gpu))
        return cls(MXNetBackend(net, mx_context(gpu)), info, **kw)

    # --- the work ---

    def heatmaps(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB crops -> (N, K, H, W) float32 heatmaps, flip-averaged if asked."""
        out = []
        for start in range(0, len(crops), self.batch_size):
            batch = np.ascontiguousarray(crops[start:start + self.batch_size].transpose(0, 3, 1, 2), np.float32)
            hm = self.backend(batch)
            if self.flip:
                mirrored = self.backend(np.ascontiguousarray(batch[..., ::-1]))
                hm = (hm + mirrored[:, list(self.scheme.flip), :, ::-1]) / 2
            out.append(hm)
        k, h = self.info.num_landmarks, self.info.heatmap_size
        return np.concatenate(out) if out else np.zeros((0, k, h, h), np.float32)

    def crop_for_box(self, box) -> np.ndarray:
        return box_crop(box, self.info.input_size, expand=self.info.crop_framing)

    def predict(self, image: np.ndarray, boxes=None) -> Prediction:
        """Landmarks of the faces in ``image`` (H x W x 3 uint8 RGB, or H x W grey).

        ``boxes``: (F, 4) x0, y0, x1, y1 face boxes from your own detector; without them the
        predictor's detector finds the faces (``Prediction.empty`` when there are none).
        """
        return self.predict_batch([image], None if boxes is None else [boxes])[0]

    def predict_batch(self, images, boxes=None) -> list[Prediction]:
        """``predict`` for several images at once: the faces of all of them share the network's batches."""
        images = [as_rgb(im) for im in images]
        found = []
        for i, image in enumerate(images):
            if boxes is None or boxes[i] is None:
                if self.detector is None:
                    raise ValueError("no boxes given and this predictor has no detector (pass detector=...)")
                b, sc = self.detector(image)
            else:
                b = np.asarray(boxes[i], np.float64).reshape(-1, 4)
                sc = np.ones(len(b), np.float32)
            found.append((np.asarray(b, np.float64).reshape(-1, 4), np.asarray(sc, np.float32)))
        owner = [i for i, (b, _) in enumerate(found) for _ in range(len(b))]
        transforms = [self.crop_for_box(box) for b, _ in found for box in b]
        pts, scores = self._predict_crops(images, owner, transforms)
        for _ in range(self.refine):
            transforms = [self.crop_for_box(landmark_box(p)) for p in pts]
            pts, scores = self._predict_crops(images, owner, transforms)
        out, k = [], 0
        for b, sc in found:
            n = len(b)
            out.append(Prediction(b.astype(np.float32), sc, pts[k:k + n], scores[k:k + n]) if n
                       else Prediction.empty(self.info.num_landmarks))
            k += n
        return out

    def _predict_crops(self, images, owner, transforms):
        k, s = self.info.num_landmarks, self.info.input_size
        if not transforms:
            return np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
        crops = np.stack([warp(images[i], M, s) for i, M in zip(owner, transforms)])
        pts, scores = self.codec.decode(self.heatmaps(crops))
        back = np.stack([apply(invert(M), p) for M, p in zip(transforms, pts)])
        return back.astype(np.float32), scores.astype(np.float32)


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
