"""``mv2mae synth``: a multi-view action dataset of our own, written in NTU RGB+D's layout.

Articulated 3D figures (20 joints, shaded capsules) perform parametric actions in a textured room and
are filmed by 3-8 pinhole cameras whose recordings are not frame-aligned; videos, NTU-format skeletons,
class names and the full ground truth (3D joints, cameras, per-view offsets) are written out.
"""

from mv2mae.preprocess.synth.actions import ACTION_NAMES, MIRROR_PAIRS
from mv2mae.preprocess.synth.generate import SynthConfig, generate

__all__ = ["ACTION_NAMES", "MIRROR_PAIRS", "SynthConfig", "generate"]
