"""Batches of dataset indices, one bucket per batch, in an order a resumed run can restore.

The order of epoch ``e`` is a pure function of (seed, e): a ``torch.Generator``
seeded from both shuffles each bucket's indices, cuts them into batches, then
shuffles the batches. ``position`` counts the batches already handed out in the
current epoch, so ``state_dict()`` taken after a step and restored later continues
with the very next batch.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import TypedDict

import numpy as np
import torch

from core.errors import InvalidOptionError


class SamplerState(TypedDict):
    """What a checkpoint stores to restore the batch order."""

    seed: int
    epoch: int
    position: int


class BucketBatchSampler:
    """Yields lists of indices that all share a bucket key; iterate once per epoch (a ``batch_sampler``)."""

    def __init__(
        self,
        keys: Sequence[Hashable],
        batch_size: int,
        *,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise InvalidOptionError(f"must be at least 1, got {batch_size}", option="batch_size")
        if not keys:
            raise InvalidOptionError("the dataset is empty", option="batch_size")
        groups: dict[Hashable, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(key, []).append(index)
        # Group order must not depend on hash seeds: order buckets by their first index.
        self._groups: list[list[int]] = sorted(groups.values(), key=lambda g: g[0])
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        b = self.batch_size
        if self.drop_last:
            return sum(len(g) // b for g in self._groups)
        return sum(-(-len(g) // b) for g in self._groups)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Every batch of ``epoch``, in order; a pure function of (seed, epoch)."""
        gen = torch.Generator().manual_seed(_mix(self.seed, epoch))
        batches: list[list[int]] = []
        for group in self._groups:
            perm = torch.randperm(len(group), generator=gen).tolist()
            shuffled = [group[i] for i in perm]
            for start in range(0, len(shuffled), self.batch_size):
                batch = shuffled[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        order = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        """The rest of the current epoch; at its end the epoch advances and position resets."""
        if self.position >= len(self):  # restored right after an epoch's last batch
            self.epoch, self.position = self.epoch + 1, 0
        batches = self.epoch_batches(self.epoch)
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1  # counted before the yield: a state saved after this step resumes after it
            yield batch
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> SamplerState:
        """(seed, epoch, position) to store in a checkpoint."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: SamplerState) -> None:
        """Restore a state from ``state_dict()``; the next batch is the one after the saved step."""
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        if self.position > len(self):
            raise InvalidOptionError(
                f"position {self.position} is past the {len(self)} batches of an epoch", option="resume"
            )


def _mix(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from (seed, epoch), stable across processes and platforms."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, epoch]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
