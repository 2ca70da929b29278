"""The Python API: the few calls a researcher scripts, under names kept stable from release to release.

README.md ("Python API") shows them in use and ``tests/test_api.py`` runs that example as written. Everything
else in the package may move; these names will not.
"""

from mv2mae.config import load_config
from mv2mae.data.loaders import build_eval_loader, build_finetune_loader, build_pretrain_loader
from mv2mae.eval.predict import Predictor
from mv2mae.model.checkpoint import load_classifier, load_encoder

__all__ = ["Predictor", "build_eval_loader", "build_finetune_loader", "build_pretrain_loader", "load_classifier",
           "load_config", "load_encoder"]
