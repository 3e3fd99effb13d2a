"""Serving: loading a model (``loading``), backends, the ``Predictor`` (``predictor``), detectors,
video smoothing, export (``export``) and the reduced-precision inference graphs (``graphs``)."""
