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
        lm_mask = torch.zeros_like(mask, dtype=torch.bool)  # chosen response tokens
        for i, f in enumerate(features):
            start = 0 if self.padding_side == "right" else input_ids.shape[1] - len(chosen[i])
            lm_mask[i, start + len(f["prompt_ids"]) : start + len(chosen[i])] = True
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "lm_mask": lm_mask,
            "num_tokens": mask.sum(),
            "position_ids": position_ids_from_mask(mask),
            "margin": torch.tensor([float(f.get("margin", 0.0)) for f in features]),
            "pair_index": torch.tensor([int(f["pair_index"]) for f in features]),
        }


def _pack_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """First-fit decreasing: units, longest first, go into the first row with room.

    A unit longer than the budget gets a row of its own; `budget <= 0` means one unit per row.
    Rows keep their units in ascending index order.
    """
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        n = lengths[i]
        for r, u in enumerate(used):
            if budget > 0 and u + n <= budget:
                rows[r].append(i)
                used[r] += n
                break
        else:
            rows.append([i])
            used.append(n)
    return [sorted(row) for row in rows]


@dataclass
class PackedCollator:
    """Pairs packed into rows with a block mask; no pad tokens inside rows.

    `prefix_sharing`: each pair is one segment `[prompt][chosen][rejected]`; rejected tokens
    attend to the prompt and themselves, never to chosen, and their position ids continue from
    the end of the prompt, so the prompt is computed once per pair.
    `padding_free`: prompt+chosen and prompt+rejected are two separate causal segments.

    Segments share rows up to `row_budget` tokens (attention confined to each segment); rows are
    padded to the longest row only. Outputs a boolean 4-D mask [rows, 1, L, L] (True = attend),
    position ids, and the (row, column) of each pair's chosen and rejected reward token.
    """

    pad_id: int
    mode: str = "prefix_sharing"
    row_budget: int = 0
    varlen: bool = False  # padding_free only: no mask, sequences found from position_ids

    def _units(self, f: dict[str, Any]) -> list[tuple[list[int], list[int], list[int]]]:
        """(token ids, branch per token, position per token) of each segment of one pair."""
        p, c, r = f["prompt_ids"], f["chosen_ids"], f["rejected_ids"]
        np_, nc, nr = len(p), len(c), len(r)
        if self.mode == "prefix_sharing":
            ids = p + c + r
            branch = [0] * np_ + [1] * nc + [2] * nr
            pos = list(range(np_ + nc)) + list(range(np_, np_ + nr))
            return [(ids, branch, pos)]
        return [
            (p + c, [0] * np_ + [1] * nc, list(range(np_ + nc))),
            (p + r, [0] * np_ + [2] * nr, list(range(np_ + nr))),
        ]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        units = [u for f in features for u in self._units(f)]
        batch, ends = pack_units(units, self.pad_id, self.row_budget)
        per_pair = 1 if self.mode == "prefix_sharing" else 2
        chosen = [ends[(i * per_pair, 1)] for i in range(len(features))]
        rejected = [ends[(i * per_pair + per_pair - 1, 2)] for i in range(len(features))]
        batch["chosen_index"] = torch.tensor(chosen, dtype=torch.long)
        batch["rejected_index"] = torch.tensor(rejected, dtype=torch.long)
        batch["margin"] = torch.tensor([float(f.get("margin", 0.0)) for f in features])
        batch["pair_index"] = torch.tensor([int(f["pair_index"]) for f in features])
        if self.varlen and self.mode == "padding_free":
            # flash_attention_2 takes no 4-D mask: transformers finds the packed sequences
            # where position_ids restart (and builds the same block mask for sdpa / eager).
            del batch["attention_mask"]
        return batch


Unit = tuple[list[int], list[int], list[int]]  # token ids, branch per token, position per token


def pack_units(
    units: Sequence[Unit], pad_id: int, row_budget: int
) -> tuple[dict[str, torch.Tensor], dict[tuple[int, int], tuple[int, int]]]:
    """Pack segments into rows; returns the batch and, per (unit, branch), the (row, column) of
    that branch's last token, where its reward is read."""
    rows = _pack_rows([len(u[0]) for u in units], row_budget)
    width = max(sum(len(units[i][0]) for i in row) for row in rows)
    shape = (len(rows), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    seg = torch.full(shape, -1, dtype=torch.long)
    branch = torch.zeros(shape, dtype=torch.long)
    pos = torch.zeros(shape, dtype=torch.long)
    ends: dict[tuple[int, int], tuple[int, int]] = {}
    for r, row in enumerate(rows):
        start = 0
        for u in row:
            tok, br, ps = units[u]
            sl = slice(start, start + len(tok))
            ids[r, sl], seg[r, sl] = torch.tensor(tok), u
            branch[r, sl], pos[r, sl] = torch.tensor(br), torch.tensor(ps)
            for k, b in enumerate(br):
                ends[(u, b)] = (r, start + k)  # the last write per branch wins
            start += len(tok)
    batch = {"input_ids": ids, "attention_mask": block_mask(seg, branch), "position_ids": pos}
    batch["lm_mask"] = (branch == 1) & (seg >= 0)  # chosen response tokens (auxiliary LM loss)
    batch["num_tokens"] = (seg >= 0).sum()
    return batch, ends


def pack_sequences(
    seqs: Sequence[Sequence[int]], pad_id: int, row_budget: int
) -> dict[str, torch.Tensor]:
    """Single sequences (scoring) packed padding-free; `end_index` is each one's last token."""
    units = [(list(s), [1] * len(s), list(range(len(s)))) for s in seqs]
    batch, ends = pack_units(units, pad_id, row_budget)
    batch["end_index"] = torch.tensor([ends[(i, 1)] for i in range(len(seqs))], dtype=torch.long)
    return batch


def block_mask(seg: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """Boolean [rows, 1, L, L]: same segment, causal, and a response never sees the other one.

    Pad positions (segment -1) attend only to themselves so no softmax row is empty.
    """
    n = seg.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    same = seg.unsqueeze(-1) == seg.unsqueeze(-2)
    real = (seg >= 0).unsqueeze(-1) & (seg >= 0).unsqueeze(-2)
    bi, bj = branch.unsqueeze(-1), branch.unsqueeze(-2)
    visible = (bj == 0) | (bj == bi)
    mask = same & real & causal & visible
    mask |= torch.eye(n, dtype=torch.bool).unsqueeze(0) & (seg < 0).unsqueeze(-1)
    return mask.unsqueeze(1)


def make_collator(mode: str, pad_id: int, row_budget: int = 0, varlen: bool = False) -> Any:
    """The collator for a `--packing` mode: none | padding_free | prefix_sharing."""
    if mode == "none":
        return PairCollator(pad_id)
    if mode in ("padding_free", "prefix_sharing"):
        return PackedCollator(pad_id, mode, row_budget, varlen)
    raise ValueError(f"unknown packing mode {mode!r}")


def pair_tokens(feature: dict[str, Any], mode: str) -> int:
    """Tokens one pair costs in a mode (what length-grouping and packing budgets count)."""
    p, c, r = (len(feature[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
    return p + c + r if mode == "prefix_sharing" else 2 * p + c + r
