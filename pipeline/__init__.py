"""aigc-pipeline: train a GAN with Ray Train, bulk-generate assets with Ray Data."""

__version__ = "0.1.0"
