"""The renderers' arithmetic on one BLAS thread: the same pixels on every machine.

A threaded BLAS splits its sums by its thread count (the machine's cores, by default), which changes the last bit
of a few products: unheld, 3 of the first 60 faces of a set differed by one grey level in a pixel between 1 and
2 threads, so a face packed on a 2-core machine was not the one packed on a 64-core one. On one thread a face is a
pure function of (seed, index) wherever it is rendered, and no slower: the renderer's matrices are small (a
thin-plate spline of ~130 control points), and ``facealign-pack`` runs one worker per core already.
"""
from __future__ import annotations

import functools

from threadpoolctl import ThreadpoolController

_controller = None


def one_blas_thread(render):
    """``render`` with NumPy's BLAS held to one thread while it runs (and restored after)."""
    @functools.wraps(render)
    def wrapped(*args, **kwargs):
        global _controller
        if _controller is None:  # made at the first call: by then NumPy's BLAS is loaded
            _controller = ThreadpoolController()
        with _controller.limit(limits=1, user_api="blas"):
            return render(*args, **kwargs)
    return wrapped
