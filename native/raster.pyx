# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fast path of facealign.synth.raster: a z-buffered triangle rasteriser for the procedural faces.

Same rule as the NumPy reference in raster.py: a pixel centre (x + 0.5, y + 0.5)
belongs to a triangle when its three edge functions are >= 0 for either winding
(no culling), the nearest triangle (largest z) wins, ties go to the lower
index. Outputs, per pixel: the triangle (-1 for none), its barycentric weights
of vertices 1 and 2, and its z.
"""
from libc.math cimport ceil, floor

import numpy as np


def rasterize(const double[:, ::1] verts, const int[:, ::1] tris, int height, int width):
    """(tri int32 H x W, bary float32 H x W x 2, depth float32 H x W) of the triangles ``tris`` over ``verts``
    (x, y in pixels, z toward the camera)."""
    tri_np = np.full((height, width), -1, np.int32)
    bary_np = np.zeros((height, width, 2), np.float32)
    depth_np = np.full((height, width), -np.inf, np.float32)
    cdef int[:, ::1] tri_out = tri_np
    cdef float[:, :, ::1] bary = bary_np
    cdef float[:, ::1] depth = depth_np
    cdef Py_ssize_t t, n = tris.shape[0]
    cdef int i0, i1, i2, x, y, x0, x1, y0, y1
    cdef double ax, ay, az, bx, by, bz, cx, cy, cz, area, px, py, w0, w1, w2, z, inv
    with nogil:
        for t in range(n):
            i0 = tris[t, 0]
            i1 = tris[t, 1]
            i2 = tris[t, 2]
            ax = verts[i0, 0]
            ay = verts[i0, 1]
            az = verts[i0, 2]
            bx = verts[i1, 0]
            by = verts[i1, 1]
            bz = verts[i1, 2]
            cx = verts[i2, 0]
            cy = verts[i2, 1]
            cz = verts[i2, 2]
            area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
            if area == 0:
                continue
            inv = 1.0 / area
            x0 = <int>max(floor(min(ax, min(bx, cx)) - 0.5), 0)
            x1 = <int>min(ceil(max(ax, max(bx, cx)) - 0.5), width - 1)
            y0 = <int>max(floor(min(ay, min(by, cy)) - 0.5), 0)
            y1 = <int>min(ceil(max(ay, max(by, cy)) - 0.5), height - 1)
            for y in range(y0, y1 + 1):
                py = y + 0.5
                for x in range(x0, x1 + 1):
                    px = x + 0.5
                    w1 = ((px - ax) * (cy - ay) - (py - ay) * (cx - ax)) * inv
                    w2 = ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) * inv
                    w0 = 1.0 - w1 - w2
                    if w0 < 0 or w1 < 0 or w2 < 0:
                        continue
                    z = w0 * az + w1 * bz + w2 * cz
                    if z > depth[y, x]:
                        depth[y, x] = <float>z
                        tri_out[y, x] = <int>t
                        bary[y, x, 0] = <float>w1
                        bary[y, x, 1] = <float>w2
    return tri_np, bary_np, depth_np
