"""MV2MAE model: config, tubelet/position embeddings, masking, encoder, decoders, objective, checkpoints."""

from mv2mae.model.classifier import VideoClassifier
from mv2mae.model.config import ModelConfig
from mv2mae.model.mv2mae import MV2MAE, PretrainOutput
from mv2mae.model.objective import patchify, unpatchify

__all__ = ["MV2MAE", "ModelConfig", "PretrainOutput", "VideoClassifier", "patchify", "unpatchify"]
