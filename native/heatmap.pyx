# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fast path of facealign.data.codec: Gaussian heatmap encoding and sub-pixel decoding.

Same arithmetic as the NumPy reference in codec.py (libm exp/log in double,
stored as float32), so the results are identical; the tests check it.
"""
from libc.math cimport exp, fabs, floor, isfinite, log
from libc.string cimport memset

import numpy as np


def encode(const double[:, ::1] pts, float[:, :, ::1] out, int stride, double sigma, double peak, bint subpixel):
    """Write K heatmaps for K landmarks (input pixels) into out[K, H, W]; see codec.encode_numpy."""
    cdef Py_ssize_t k = out.shape[0], h = out.shape[1], w = out.shape[2]
    cdef Py_ssize_t i, xx, yy, ix, iy
    cdef int radius = <int>(3 * sigma)
    cdef double x, y, cx, cy, d2, two_s2 = 2 * sigma * sigma
    if pts.shape[0] != k:
        raise ValueError(f"{pts.shape[0]} landmarks for {k} heatmap channels")
    with nogil:
        memset(&out[0, 0, 0], 0, k * h * w * sizeof(float))
        for i in range(k):
            x = pts[i, 0]
            y = pts[i, 1]
            if not (isfinite(x) and isfinite(y)):
                continue
            if subpixel:
                cx = (x - (stride - 1) / 2.0) / stride
                cy = (y - (stride - 1) / 2.0) / stride
                ix = <Py_ssize_t>floor(cx + 0.5)
                iy = <Py_ssize_t>floor(cy + 0.5)
            else:
                cx = floor(x / stride)
                cy = floor(y / stride)
                ix = <Py_ssize_t>cx
                iy = <Py_ssize_t>cy
            if ix < 0 or ix >= w or iy < 0 or iy >= h:
                continue
            if sigma == 0:
                out[i, iy, ix] = 1.0
                continue
            for yy in range(max(iy - radius, 0), min(iy + radius + 1, h)):
                for xx in range(max(ix - radius, 0), min(ix + radius + 1, w)):
                    d2 = (xx - cx) * (xx - cx) + (yy - cy) * (yy - cy)
                    out[i, yy, xx] = <float>(peak * exp(-d2 / two_s2))


cdef inline double _refine(double lo, double mid, double hi) nogil:
    cdef double llo, lmid, lhi, curvature, step
    if lo > 0 and mid > 0 and hi > 0:
        llo = log(lo)
        lmid = log(mid)
        lhi = log(hi)
        curvature = llo - 2 * lmid + lhi
        if curvature < 0:
            step = -0.5 * (lhi - llo) / curvature
            return min(max(step, -0.5), 0.5)
    if hi > lo:
        return 0.25
    if hi < lo:
        return -0.25
    return 0.0


cdef inline float _argmax(const float[:, :, :, ::1] hm, Py_ssize_t b, Py_ssize_t c, Py_ssize_t* px,
                         Py_ssize_t* py) nogil:
    """The first maximum of channel (b, c), as numpy's argmax; its position in px, py."""
    cdef Py_ssize_t yy, xx
    cdef float best = hm[b, c, 0, 0], v
    px[0] = 0
    py[0] = 0
    for yy in range(hm.shape[2]):
        for xx in range(hm.shape[3]):
            v = hm[b, c, yy, xx]
            if v > best:
                best = v
                px[0] = xx
                py[0] = yy
    return best


def decode_subpixel(const float[:, :, :, ::1] hm, int stride):
    """Argmax + log-domain Newton refinement per channel; see codec.decode_subpixel_numpy."""
    return _decode(hm, None, stride, False)


cdef inline void _taylor(const double[:, ::1] lg, Py_ssize_t px, Py_ssize_t py, double* ox, double* oy) nogil:
    cdef Py_ssize_t h = lg.shape[0], w = lg.shape[1]
    cdef double dx, dy, dxx, dxy, dyy, det, sx, sy
    ox[0] = 0.0
    oy[0] = 0.0
    if not (1 < px < w - 2 and 1 < py < h - 2):
        return
    dx = 0.5 * (lg[py, px + 1] - lg[py, px - 1])
    dy = 0.5 * (lg[py + 1, px] - lg[py - 1, px])
    dxx = 0.25 * (lg[py, px + 2] - 2 * lg[py, px] + lg[py, px - 2])
    dxy = 0.25 * (lg[py + 1, px + 1] - lg[py - 1, px + 1] - lg[py + 1, px - 1] + lg[py - 1, px - 1])
    dyy = 0.25 * (lg[py + 2, px] - 2 * lg[py, px] + lg[py - 2, px])
    det = dxx * dyy - dxy * dxy
    if not (det > 0 and dxx < 0):
        return
    sx = -(dyy * dx - dxy * dy) / det
    sy = -(dxx * dy - dxy * dx) / det
    if not (fabs(sx) <= 1.5 and fabs(sy) <= 1.5):
        return
    ox[0] = sx
    oy[0] = sy


def decode_dark(const float[:, :, :, ::1] hm, const double[:, :, :, ::1] lg, int stride):
    """Argmax of ``hm``, then DARK's Taylor step on its log-smoothed copy ``lg``; see codec.decode_dark_numpy."""
    return _decode(hm, lg, stride, True)


cdef _decode(const float[:, :, :, ::1] hm, const double[:, :, :, ::1] lg, int stride, bint dark):
    """Per channel: the first maximum, the step from there (DARK's on ``lg``, or the sub-pixel one on ``hm``),
    the point in input pixels; the scores are the maxima."""
    cdef Py_ssize_t n = hm.shape[0], k = hm.shape[1], h = hm.shape[2], w = hm.shape[3]
    pts_arr = np.zeros((n, k, 2), np.float32)
    scores_arr = np.zeros((n, k), np.float32)
    cdef float[:, :, ::1] pts = pts_arr
    cdef float[:, ::1] scores = scores_arr
    cdef Py_ssize_t b, c, px, py
    cdef float best
    cdef double dx, dy
    with nogil:
        for b in range(n):
            for c in range(k):
                best = _argmax(hm, b, c, &px, &py)
                dx = 0.0
                dy = 0.0
                if dark:
                    _taylor(lg[b, c], px, py, &dx, &dy)
                else:
                    if 0 < px < w - 1:
                        dx = _refine(hm[b, c, py, px - 1], hm[b, c, py, px], hm[b, c, py, px + 1])
                    if 0 < py < h - 1:
                        dy = _refine(hm[b, c, py - 1, px], hm[b, c, py, px], hm[b, c, py + 1, px])
                pts[b, c, 0] = <float>((px + dx) * stride + (stride - 1) / 2.0)
                pts[b, c, 1] = <float>((py + dy) * stride + (stride - 1) / 2.0)
                scores[b, c] = best
    return pts_arr, scores_arr
