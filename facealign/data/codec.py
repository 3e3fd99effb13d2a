"""The heatmap codec: landmarks <-> Gaussian heatmaps, separate from the model.

Coordinates are pixel indices of the network input (0-based, pixel centres at
integers). Heatmap pixel ``j`` covers input pixels ``[s*j, s*j + s)`` for the
stride ``s = input_size / heatmap_size``, so its centre sits at
``s*j + (s-1)/2`` in input pixels.

Encoding (seed-spec §4.5):
  * ``"reference"``: the reference's targets. The landmark times 1/s is cast
    to int (floor), and a ``(6 sigma + 1)``-wide window of
    ``peak * exp(-d^2 / (2 sigma^2))`` around that integer pixel is written,
    clipped at the borders and *overwriting* (not max-merging) neighbours.
    A point outside the heatmap leaves its channel empty.
  * ``"subpixel"``: the same window, but the Gaussian is centred at the exact
    sub-pixel position, so the target carries no quantisation error.

Decoding:
  * ``"subpixel"``: per-channel argmax, then a second-order refinement on the
    log-heatmap (exact for a Gaussian; falls back to the classic quarter-pixel
    step where the log is not concave), then mapped back to input pixels.
  * ``"dark"``: distribution-aware decoding (DARK, Zhang et al., CVPR 2020): the
    heatmap smoothed by a Gaussian of the training sigma and rescaled to its
    maximum, then a second-order Taylor step of its log at the argmax (the
    Hessian from central differences two pixels wide), kept where the Hessian is
    negative definite and the step under 1.5 heatmap pixels.
  * ``"reference"``: the reference's decoding (§6.1): bilinear up-sampling
    (``cv2.resize``) of each channel to the input size and the integer argmax.

Two implementations of encode and of the sub-pixel and DARK decodes (its smoothing
is OpenCV's in both): a plain NumPy reference
(this module) and the Cython fast path ``facealign._native.heatmap`` (from
``native/heatmap.pyx``), tested to give identical results; ``HeatmapCodec``
uses the fast path when it is built. The reference decode is cv2-based in both.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

try:
    from facealign._native import heatmap as _native
except ImportError:  # not built (e.g. a source checkout without `make setup`): NumPy reference only
    _native = None

ENCODE_MODES = ("reference", "subpixel")
DECODE_MODES = ("subpixel", "dark", "reference")


class HeatmapCodec:
    """Encode K landmarks into K heatmaps and decode them back.

    >>> codec = HeatmapCodec(input_size=128, heatmap_size=64)        # sigma 1, peak 20: the reference
    >>> hm = codec.encode(landmarks)              # (K, 2) input pixels -> (K, 64, 64) float32
    >>> pts, scores = codec.decode(hm[None])      # (N, K, H, W) -> (N, K, 2) input pixels, (N, K) peak values
    """

    def __init__(self, input_size: int = 128, heatmap_size: int = 64, sigma: float = 1.0, peak: float = 20.0,
                 encode_mode: str = "reference", decode_mode: str = "subpixel", backend: str = "auto"):
        if input_size % heatmap_size:
            raise ValueError(f"heatmap_size {heatmap_size} must divide input_size {input_size}")
        if encode_mode not in ENCODE_MODES:
            raise ValueError(f"encode_mode must be one of {ENCODE_MODES}, got {encode_mode!r}")
        if decode_mode not in DECODE_MODES:
            raise ValueError(f"decode_mode must be one of {DECODE_MODES}, got {decode_mode!r}")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        if decode_mode == "dark" and sigma <= 0:
            raise ValueError("dark decoding smooths with the training sigma, which must be > 0")
        if backend not in ("auto", "native", "numpy"):
            raise ValueError(f"backend must be auto, native or numpy, got {backend!r}")
        if backend == "native" and _native is None:
            raise ImportError("facealign._native.heatmap is not built; run `make setup`")
        self.input_size, self.heatmap_size = input_size, heatmap_size
        self.stride = input_size // heatmap_size
        self.sigma, self.peak = float(sigma), float(peak)
        self.encode_mode, self.decode_mode = encode_mode, decode_mode
        self.native = _native is not None and backend != "numpy"

    def encode(self, landmarks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(K, >=2) input-pixel landmarks -> (K, H, W) float32 heatmaps (written into ``out`` if given)."""
        pts = np.ascontiguousarray(np.asarray(landmarks, np.float64)[:, :2])
        h = self.heatmap_size
        if out is None:
            out = np.empty((pts.shape[0], h, h), np.float32)
        subpixel = self.encode_mode == "subpixel"
        if self.native:
            _native.encode(pts, out, self.stride, self.sigma, self.peak, subpixel)
        else:
            encode_numpy(pts, out, self.stride, self.sigma, self.peak, subpixel)
        return out

    def encode_batch(self, landmarks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(N, K, >=2) -> (N, K, H, W)."""
        n, k = landmarks.shape[:2]
        if out is None:
            out = np.empty((n, k, self.heatmap_size, self.heatmap_size), np.float32)
        for i in range(n):
            self.encode(landmarks[i], out[i])
        return out

    def decode(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, K, H, W) heatmaps -> ((N, K, 2) input-pixel landmarks, (N, K) peak scores)."""
        hm = np.ascontiguousarray(heatmaps, np.float32)
        if hm.ndim != 4:
            raise ValueError(f"decode expects N x K x H x W heatmaps, got shape {hm.shape}")
        if self.decode_mode == "reference":  # evaluation only; cv2.resize is the reference's own up-sampling
            return decode_reference_numpy(hm, self.input_size)
        if self.decode_mode == "dark":
            if self.native:
                return _native.decode_dark(hm, dark_log_heatmaps(hm, self.sigma), self.stride)
            return decode_dark_numpy(hm, self.stride, self.sigma)
        fn = _native.decode_subpixel if self.native else decode_subpixel_numpy
        return fn(hm, self.stride)


    def decode_depth(self, heatmaps: np.ndarray, depth_maps: np.ndarray) -> np.ndarray:
        """(N, K) input-pixel depth of a model that predicts z: each depth map's mean under its heatmap
        clipped at 0 and normalised (integral regression, as facealign.train.losses.integral_depth trains it)."""
        return integral_depth_numpy(heatmaps, depth_maps, self.input_size)


def integral_depth_numpy(heatmaps: np.ndarray, depth_maps: np.ndarray, input_size: int) -> np.ndarray:
    w = np.maximum(np.asarray(heatmaps, np.float64), 0)
    w = w / (w.sum(axis=(2, 3), keepdims=True) + 1e-6)
    return (w * np.asarray(depth_maps, np.float64)).sum(axis=(2, 3)) * input_size


# --- NumPy reference implementations (the test oracle) --------------------------------------------

def encode_numpy(pts: np.ndarray, out: np.ndarray, stride: int, sigma: float, peak: float, subpixel: bool) -> None:
    """Reference encoder, written for clarity: one channel at a time, as the reference did."""
    out[:] = 0
    k, h, w = out.shape
    radius = int(3 * sigma)
    for i in range(k):
        x, y = pts[i, 0], pts[i, 1]
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        if subpixel:  # heatmap-pixel coordinates of the exact point
            cx, cy = (x - (stride - 1) / 2) / stride, (y - (stride - 1) / 2) / stride
            ix, iy = int(math.floor(cx + 0.5)), int(math.floor(cy + 0.5))
        else:  # the reference: scale, then int() (floor for points >= 0)
            cx, cy = math.floor(x / stride), math.floor(y / stride)
            ix, iy = int(cx), int(cy)
        if not (0 <= ix < w and 0 <= iy < h):
            continue
        if sigma == 0:
            out[i, iy, ix] = 1.0  # the reference's sigma=0: a one-hot pixel
            continue
        # math.exp (libm), element by element: the same arithmetic as the Cython path, so the two agree
        # to the bit (numpy's SIMD exp may differ from libm in the last place).
        for yy in range(max(iy - radius, 0), min(iy + radius + 1, h)):
            for xx in range(max(ix - radius, 0), min(ix + radius + 1, w)):
                d2 = (xx - cx) * (xx - cx) + (yy - cy) * (yy - cy)
                out[i, yy, xx] = peak * math.exp(-d2 / (2 * sigma * sigma))


def _refine_1d(lo: float, mid: float, hi: float) -> float:
    """Sub-pixel offset of a peak from three samples: Newton step on the log (exact for a Gaussian)."""
    if lo > 0 and mid > 0 and hi > 0:
        llo, lmid, lhi = math.log(lo), math.log(mid), math.log(hi)
        curvature = llo - 2 * lmid + lhi
        if curvature < 0:
            return min(max(-0.5 * (lhi - llo) / curvature, -0.5), 0.5)
    # Not log-concave there (flat, negative or clipped): the quarter-pixel step towards the larger side.
    return 0.25 * np.sign(hi - lo)


def _decode_with_step(hm: np.ndarray, stride: int, step) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: the first maximum, ``step(b, c, px, py) -> (dx, dy)`` in heatmap pixels from there, then
    the point in input pixels; the scores are the maxima."""
    n, k, h, w = hm.shape
    flat = hm.reshape(n, k, -1)
    idx = flat.argmax(-1)
    scores = np.take_along_axis(flat, idx[..., None], -1)[..., 0]
    pts = np.zeros((n, k, 2), np.float32)
    for b in range(n):
        for c in range(k):
            py, px = divmod(int(idx[b, c]), w)
            dx, dy = step(b, c, px, py)
            pts[b, c, 0] = (px + dx) * stride + (stride - 1) / 2
            pts[b, c, 1] = (py + dy) * stride + (stride - 1) / 2
    return pts, scores.astype(np.float32)


def decode_subpixel_numpy(hm: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = hm.shape[2:]

    def step(b, c, px, py):
        m = hm[b, c]
        return (_refine_1d(m[py, px - 1], m[py, px], m[py, px + 1]) if 0 < px < w - 1 else 0.0,
                _refine_1d(m[py - 1, px], m[py, px], m[py + 1, px]) if 0 < py < h - 1 else 0.0)

    return _decode_with_step(hm, stride, step)


def dark_log_heatmaps(hm: np.ndarray, sigma: float) -> np.ndarray:
    """DARK's pre-processing (Zhang et al., CVPR 2020): each channel smoothed by a Gaussian of the training
    ``sigma`` (zero-padded, kernel 2 ceil(3 sigma) + 1), rescaled to its original maximum, log of it
    (floored at 1e-10). float64, (N, K, H, W)."""
    n, k, h, w = hm.shape
    radius = int(math.ceil(3 * sigma))
    size = 2 * radius + 1
    channels = hm.reshape(n * k, h, w).astype(np.float64)
    # every channel zero-padded by the kernel's radius, stacked into one tall image: one blur for them all, no
    # output pixel of a channel reading another's (bitwise the blur of each alone)
    padded = np.zeros((n * k, h + 2 * radius, w + 2 * radius), np.float64)
    padded[:, radius:radius + h, radius:radius + w] = channels
    smooth = cv2.GaussianBlur(padded.reshape(-1, w + 2 * radius), (size, size), sigma)
    smooth = smooth.reshape(n * k, h + 2 * radius, w + 2 * radius)[:, radius:radius + h, radius:radius + w]
    top = smooth.max(axis=(1, 2), keepdims=True)
    scale = np.divide(channels.max(axis=(1, 2), keepdims=True), top, out=np.ones_like(top), where=top > 0)
    return np.log(np.maximum(smooth * scale, 1e-10)).reshape(n, k, h, w)


def _taylor(lg: np.ndarray, px: int, py: int) -> tuple[float, float]:
    """The second-order Taylor step of a log-heatmap at its integer maximum (DARK): -H^-1 g, from central
    differences (the second ones over two pixels); no step within 2 pixels of a border, where the
    Hessian is not negative definite or where the step would leave the pixel's neighbourhood."""
    h, w = lg.shape
    if not (1 < px < w - 2 and 1 < py < h - 2):
        return 0.0, 0.0
    dx = 0.5 * (lg[py, px + 1] - lg[py, px - 1])
    dy = 0.5 * (lg[py + 1, px] - lg[py - 1, px])
    dxx = 0.25 * (lg[py, px + 2] - 2 * lg[py, px] + lg[py, px - 2])
    dxy = 0.25 * (lg[py + 1, px + 1] - lg[py - 1, px + 1] - lg[py + 1, px - 1] + lg[py - 1, px - 1])
    dyy = 0.25 * (lg[py + 2, px] - 2 * lg[py, px] + lg[py - 2, px])
    det = dxx * dyy - dxy * dxy
    if not (det > 0 and dxx < 0):  # a maximum has a negative definite Hessian
        return 0.0, 0.0
    ox = -(dyy * dx - dxy * dy) / det
    oy = -(dxx * dy - dxy * dx) / det
    if not (abs(ox) <= 1.5 and abs(oy) <= 1.5):
        return 0.0, 0.0
    return ox, oy


def decode_dark_numpy(hm: np.ndarray, stride: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    lg = dark_log_heatmaps(hm, sigma)
    return _decode_with_step(hm, stride, lambda b, c, px, py: _taylor(lg[b, c], px, py))


def decode_reference_numpy(hm: np.ndarray, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    n, k = hm.shape[:2]
    pts = np.zeros((n, k, 2), np.float32)
    scores = np.zeros((n, k), np.float32)
    for b in range(n):
        for c in range(k):
            up = cv2.resize(hm[b, c], (input_size, input_size), interpolation=cv2.INTER_LINEAR)
            i = int(up.argmax())
            pts[b, c] = (i % input_size, i // input_size)
            scores[b, c] = up.flat[i]
    return pts, scores

