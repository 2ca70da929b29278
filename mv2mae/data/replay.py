"""Exact resume: a resumed stream replays the samples its loader delivered before the checkpoint — every
random decision drawn as before, so the stream continues exactly where it left off — but reads and
decodes none of their frames (exact resume at a large step costs the reading of the shards' headers,
not the decoding; ``mv2mae bench resume``). Not exact if a bad sample was skipped in the replayed part:
telling needs the decoding."""

from __future__ import annotations

from dataclasses import dataclass

from mv2mae.shards.reader import current_slot


@dataclass
class Replay:
    """Where a resumed stream starts: ``batches`` of ``batch_size`` samples the loader already delivered
    (0: a fresh run), and how many samples of this process's pass are still to replay."""

    batches: int = 0
    batch_size: int = 0
    left: int = 0

    def begin(self, rank: int, world_size: int, first_pass: bool) -> None:
        """At the start of a pass: only the first pass of a resumed stream replays."""
        self.left = self.consumed(rank, world_size) if first_pass else 0

    def consumed(self, rank: int, world_size: int) -> int:
        """Samples of this process's stream delivered before the checkpoint. A DataLoader hands batch i to
        worker i mod W, each batch ``batch_size`` samples of that worker's own stream (a resumed loader
        rotates the workers' roles to match: ``current_slot``'s ``shift``); without workers every batch
        comes from this stream."""
        slot = current_slot(rank, world_size, shift=self.batches)
        workers = slot.count // world_size
        return len(range(slot.worker, self.batches, workers)) * self.batch_size

    @property
    def active(self) -> bool:
        """Whether the next sample is most likely a replayed one (the reader then reads none of its frames)."""
        return self.left > 0

    def skip(self) -> bool:
        """Whether the next sample was delivered before the checkpoint: its decisions are drawn, its
        pixels not made."""
        if self.left > 0:
            self.left -= 1
            return True
        return False
