"""saq_lightning: Sampling-Aware Quantization for diffusion models on PyTorch Lightning."""

__version__ = "0.1.0"
