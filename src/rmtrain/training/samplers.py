"""Training orders drawn from seed + epoch only (never the global RNG): the same order in every
process, so sharding across ranks reproduces one process's batches and a resumed run replays
the interrupted run's order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler


class EpochSeededLengthSampler(LengthGroupedSampler):
    """Length-grouped order drawn from seed + epoch, not from the global RNG, so a resumed run
    replays exactly the order the interrupted run was following."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class EpochSeededRandomSampler(torch.utils.data.Sampler):
    """A shuffle drawn from seed + epoch only: the same order in every process (so sharding
    across ranks reproduces one process's global batches) and after a resume."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Any:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())


class PromptGroupedSampler(EpochSeededRandomSampler):
    """Pairs of one prompt next to each other, prompts and the pairs within each shuffled from
    seed + epoch: consecutive pairs fill a batch, so a question's answers meet in one step
    (InstructGPT trains on all comparisons of a prompt together) and prefix trees compute the
    question, and an answer repeated across its pairs, once."""

    def __init__(self, keys: Sequence[Any], seed: int) -> None:
        super().__init__(len(keys), seed)
        self.groups: dict[Any, list[int]] = {}
        for i, key in enumerate(keys):
            self.groups.setdefault(key, []).append(i)

    def __iter__(self) -> Any:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        groups = list(self.groups.values())
        order = []
        for g in torch.randperm(len(groups), generator=gen).tolist():
            members = groups[g]
            order += [members[i] for i in torch.randperm(len(members), generator=gen).tolist()]
        return iter(order)
