"""Z-buffered triangle rasterisation: which triangle each pixel sees, where on it, and how near.

``rasterize(verts, tris, height, width)`` returns ``(tri, bary, depth)``: per pixel the
index of the nearest triangle covering its centre (-1 where none does), the barycentric
weights of that triangle's second and third vertices, and its z (toward the camera;
-inf where empty). Attributes (normals, texture coordinates) are then interpolated
per pixel by ``interpolate``, so the shading is smooth over a dense mesh.

``rasterize_numpy`` is the reference; the Cython fast path ``facealign._native.raster``
computes the same thing in the same order (the tests compare them).
"""
from __future__ import annotations

import numpy as np

try:
    from facealign._native import raster as _native
except ImportError:  # not built yet: the NumPy reference serves
    _native = None


def rasterize(verts: np.ndarray, tris: np.ndarray, height: int, width: int):
    verts = np.ascontiguousarray(verts, np.float64)
    tris = np.ascontiguousarray(tris, np.int32)
    if _native is not None:
        return _native.rasterize(verts, tris, int(height), int(width))
    return rasterize_numpy(verts, tris, height, width)


def rasterize_numpy(verts: np.ndarray, tris: np.ndarray, height: int, width: int):
    """Triangle by triangle over its bounding box; pixel centres at +0.5; the nearer z wins, the first on a tie."""
    tri_out = np.full((height, width), -1, np.int32)
    bary = np.zeros((height, width, 2), np.float32)
    depth = np.full((height, width), -np.inf, np.float32)
    for t, (i0, i1, i2) in enumerate(np.asarray(tris)):
        (ax, ay, az), (bx, by, bz), (cx, cy, cz) = verts[i0], verts[i1], verts[i2]
        area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        if area == 0:
            continue
        x0 = int(max(np.floor(min(ax, bx, cx) - 0.5), 0))
        x1 = int(min(np.ceil(max(ax, bx, cx) - 0.5), width - 1))
        y0 = int(max(np.floor(min(ay, by, cy) - 0.5), 0))
        y1 = int(min(np.ceil(max(ay, by, cy) - 0.5), height - 1))
        if x1 < x0 or y1 < y0:
            continue
        py, px = np.mgrid[y0:y1 + 1, x0:x1 + 1] + 0.5
        inv = 1.0 / area
        w1 = ((px - ax) * (cy - ay) - (py - ay) * (cx - ax)) * inv
        w2 = ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) * inv
        w0 = 1.0 - w1 - w2
        z = w0 * az + w1 * bz + w2 * cz
        region = depth[y0:y1 + 1, x0:x1 + 1]
        win = (w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (z > region)
        region[win] = z[win]
        tri_out[y0:y1 + 1, x0:x1 + 1][win] = t
        bary[y0:y1 + 1, x0:x1 + 1, 0][win] = w1[win]
        bary[y0:y1 + 1, x0:x1 + 1, 1][win] = w2[win]
    return tri_out, bary, depth


def interpolate(attr: np.ndarray, tris: np.ndarray, tri: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Per-vertex attributes (V, C) at the covered pixels (tri >= 0), barycentrically: (N, C) in row-major order."""
    covered = tri >= 0
    t = tris[tri[covered]]
    w = bary[covered].astype(np.float32)
    a = attr.astype(np.float32)
    return a[t[:, 0]] * (1 - w[:, :1] - w[:, 1:]) + a[t[:, 1]] * w[:, :1] + a[t[:, 2]] * w[:, 1:]
