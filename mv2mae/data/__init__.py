"""Train-time sampling: streamed multi-view groups -> clips, crops, motion weights, batches."""

from mv2mae.data.config import ClipGeometry, DataConfig
from mv2mae.data.datasets import EvalClips, FinetuneClips, PretrainClips, ShardSplit
from mv2mae.data.loaders import build_eval_loader, build_finetune_loader, build_pretrain_loader

__all__ = ["DataConfig", "ClipGeometry", "PretrainClips", "FinetuneClips", "EvalClips", "ShardSplit",
           "build_pretrain_loader", "build_finetune_loader", "build_eval_loader"]
