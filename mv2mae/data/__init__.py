"""Train-time data: streamed multi-view groups -> clips, crops, motion weights, batches.

One batch's path, stage by stage (the function of each says what goes in and out), and where it runs:

1. groups (worker): ``mv2mae.shards.reader.train_groups`` / ``eval_groups`` stream the groups of a
   protocol split (:class:`~mv2mae.data.splits.ShardSplit`), reading only the members the plan asks for;
2. plan (worker): every random decision, drawn in a fixed order from the stream's RNGs — views, frames,
   crops, flips (:mod:`mv2mae.data.sampling`; the streams of :mod:`mv2mae.data.datasets` call it, and a
   resumed stream replays it: :mod:`mv2mae.data.replay`);
3. read JPEG bytes, each header checked (worker): :func:`~mv2mae.data.pixels.read_jpegs`;
4. decode + crop/resize: in the worker (``data.decode_on=cpu``: :func:`~mv2mae.data.pixels.decode_frames`,
   :func:`~mv2mae.data.pixels.crop_resize`), or in the training process on the device
   (``decode_on=device``: the worker packs bytes and plan, :func:`~mv2mae.data.pixels.pack_for_device`,
   and :class:`~mv2mae.data.pixels.DecodeOnDevice` decodes the batch);
5. motion (worker, or the training process after step 4 on the device): from the clip
   (:func:`~mv2mae.data.motion.clip_token_motion`, :class:`~mv2mae.data.motion.ClipMotion`) or from
   the flow cache (:func:`~mv2mae.data.motion.cache_token_motion`, always in the worker);
6. collate (worker): :func:`~mv2mae.data.loaders.collate_clips`.

:mod:`mv2mae.data.loaders` builds the DataLoaders; :mod:`mv2mae.data.workers` holds the guards that
turn a dead, stopped or stuck worker into one line.
"""

from mv2mae.data.config import ClipGeometry, DataConfig
from mv2mae.data.datasets import EvalClips, FinetuneClips, PretrainClips
from mv2mae.data.loaders import build_eval_loader, build_finetune_loader, build_pretrain_loader
from mv2mae.data.splits import ShardSplit

__all__ = ["DataConfig", "ClipGeometry", "PretrainClips", "FinetuneClips", "EvalClips", "ShardSplit",
           "build_pretrain_loader", "build_finetune_loader", "build_eval_loader"]
