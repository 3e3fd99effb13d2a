"""facealign: stacked Hourglass and SAT face-alignment networks, trained at cluster scale."""

__version__ = "0.1.0"
