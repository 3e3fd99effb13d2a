"""facealign: stacked Hourglass and SAT face-alignment networks, trained at cluster scale."""

__version__ = "0.2.0"

__all__ = ["Predictor", "Prediction"]


def __getattr__(name):  # lazy: importing facealign must not pull in MXNet or OpenCV
    if name in ("Predictor", "Prediction"):
        from facealign.serve import predictor as inference

        return getattr(inference, name)
    raise AttributeError(f"module 'facealign' has no attribute {name!r}")
