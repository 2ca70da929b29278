"""MV2MAE: self-supervised pretraining on multi-camera videos with masked autoencoders."""

__version__ = "0.1.0"
