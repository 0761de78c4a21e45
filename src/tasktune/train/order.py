"""Which training units each process sees at each step: deterministic, so a resumed run continues exactly."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPlan:
    """Units are packed sequences (or single examples); a step is `grad_accum` micro-batches per process."""

    lengths: list[int]
    batch_size: int
    grad_accum: int
    world_size: int
    seed: int

    @property
    def batches_per_step(self) -> int:
        return self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        n_batches = math.ceil(len(self.lengths) / self.batch_size)
        return max(1, math.ceil(n_batches / self.batches_per_step))

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Shuffled batches of unit indices; similar lengths share a batch to waste little padding.

        The list is padded with the epoch's first batches to a whole number of steps, so every
        process takes the same number of micro-batches (the few repeats are in the last step only).
        """
        order = list(range(len(self.lengths)))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        window = self.batch_size * 32
        grouped: list[int] = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            grouped.extend(sorted(chunk, key=lambda i: -self.lengths[i]))
        batches = [grouped[i : i + self.batch_size] for i in range(0, len(grouped), self.batch_size)]
        random.Random(self.seed * 7_919 + epoch).shuffle(batches)
        target = self.steps_per_epoch * self.batches_per_step
        batches += [batches[i % len(batches)] for i in range(target - len(batches))]
        return batches

    def step_batches(self, batches: list[list[int]], step_in_epoch: int, rank: int) -> list[list[int]]:
        """The micro-batches of one optimizer step that process `rank` runs."""
        start = step_in_epoch * self.batches_per_step
        mine = batches[start : start + self.batches_per_step]
        return mine[rank :: self.world_size]

    def total_steps(self, num_epochs: float, max_steps: int) -> int:
        if max_steps > 0:
            return max_steps
        return max(1, math.ceil(num_epochs * self.steps_per_epoch))
