"""Collation of tokenised pairs into model batches.

Padded layout (one forward over a double batch): rows 0..B-1 are prompt+chosen, rows B..2B-1
prompt+rejected, padded to the longest row. For B = 2 with pad 0:

    pairs  ([5], [6, 7], [8]), ([9], [4], [3, 2])
    input_ids       [[5, 6, 7], [9, 4, 0], [5, 8, 0], [9, 3, 2]]
    attention_mask  [[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rmtrain.model import position_ids_from_mask


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) padded to the longest sequence on the given side."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


@dataclass
class PairCollator:
    """Stack chosen then rejected sequences of each pair into one padded batch."""

    pad_id: int
    padding_side: str = "right"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        chosen = [f["prompt_ids"] + f["chosen_ids"] for f in features]
        rejected = [f["prompt_ids"] + f["rejected_ids"] for f in features]
        input_ids, mask = pad_sequences(chosen + rejected, self.pad_id, self.padding_side)
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": position_ids_from_mask(mask),
            "margin": torch.tensor([float(f.get("margin", 0.0)) for f in features]),
            "pair_index": torch.tensor([int(f["pair_index"]) for f in features]),
        }


def tokens_computed(batch: dict[str, torch.Tensor]) -> int:
    """Token positions the model computes for this batch (padding included)."""
    return int(batch["input_ids"].numel())
