"""maskgan: a training pipeline for MaskGAN (Lee et al., CVPR 2020)."""

__version__ = "0.1.0"
