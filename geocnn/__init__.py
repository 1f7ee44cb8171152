"""geocnn: fine-tune timm CNNs on scientific imagery (galaxies, satellite scenes) with tracked, honest metrics."""

__version__ = "0.1.0"
