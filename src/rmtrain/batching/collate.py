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

from rmtrain.batching.prefix_tree import Tree, build_trees, tree_mask
from rmtrain.modeling.rewards import position_ids_from_mask


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
            "lengths": response_lengths(features),
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
        batch["lengths"] = response_lengths(features)
        if self.varlen and self.mode == "padding_free":
            # flash_attention_2 takes no 4-D mask: transformers finds the packed sequences
            # where position_ids restart (and builds the same block mask for sdpa / eager).
            del batch["attention_mask"], batch["attention_blocks"]
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
    batch["attention_blocks"] = row_blocks(
        [[len(units[i][0]) for i in row] for row in rows],
        [[_fork(units[i][1]) for i in row] for row in rows],
    )
    batch["lm_mask"] = (branch == 1) & (seg >= 0)  # chosen response tokens (auxiliary LM loss)
    batch["num_tokens"] = (seg >= 0).sum()
    return batch, ends


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


def pack_trees(
    trees: Sequence[Tree], pad_id: int, row_budget: int | None = None
) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
    """Prefix trees into rows, first-fit decreasing up to `row_budget` tokens (0: one tree per
    row). The default, the largest tree's size, never widens the batch: smaller trees only
    fill what would otherwise be padding, which a dense masked attention computes anyway.

    Returns the batch (ids, boolean 4-D tree mask, depth as position ids) and each tree's
    (row, first column); sequence i of tree t ends at column first + `trees[t].last[i]`.
    """
    sizes = [len(t) for t in trees]
    rows = _pack_rows(sizes, max(sizes) if row_budget is None else row_budget)
    width = max(sum(sizes[i] for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    exit = torch.arange(1, width + 1).repeat(len(rows), 1)  # pads attend to themselves
    place: list[tuple[int, int]] = [(0, 0)] * len(trees)
    for r, row in enumerate(rows):
        start = 0
        for t in row:
            tree, sl = trees[t], slice(start, start + len(trees[t]))
            ids[r, sl], pos[r, sl] = torch.tensor(tree.tokens), torch.tensor(tree.depth)
            exit[r, sl] = torch.tensor(tree.exit) + start
            place[t] = (r, start)
            start += len(tree)
    batch = {
        "input_ids": ids,
        "attention_mask": tree_mask(exit).unsqueeze(1),
        "position_ids": pos,
        "num_tokens": torch.tensor(sum(len(t) for t in trees)),
        "attention_blocks": row_blocks([[sizes[t] for t in row] for row in rows]),
    }
    return batch, place


def row_blocks(
    sizes: Sequence[Sequence[int]], forks: Sequence[Sequence[tuple[int, int]]] | None = None
) -> torch.Tensor:
    """[rows, most blocks in a row]: each row's block sizes in column order, 0-padded; with
    `forks`, [rows, blocks, 3] of (size, p, c) (`speed.attention.Blocks`). Rows are block
    diagonal (no token attends outside its pair or tree), which lets attention run per block."""
    entries: Sequence[Sequence[Any]] = sizes
    if forks is not None:
        pairs = zip(sizes, forks, strict=True)
        entries = [[(n, *f) for n, f in zip(row, fork, strict=True)] for row, fork in pairs]
    width = max(len(row) for row in sizes)
    out = torch.zeros((len(sizes), width, *(() if forks is None else (3,))), dtype=torch.long)
    for r, row in enumerate(entries):
        out[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _fork(branch: list[int]) -> tuple[int, int]:
    """(p, c) of a packed segment: its p prompt tokens, and the c tokens from its start that
    form one causal sequence; after them only a prefix-shared pair's rejected tokens, which
    see the prompt and themselves (`block_mask`)."""
    tail = branch.count(2) if 1 in branch else 0
    return branch.count(0), len(branch) - tail


def sequence_ends(
    trees: Sequence[Tree], place: Sequence[tuple[int, int]]
) -> dict[int, tuple[int, int]]:
    """(row, column) of each sequence's last token, by sequence index, from `pack_trees`."""
    return {
        i: (row, first + node)
        for tree, (row, first) in zip(trees, place, strict=True)
        for i, node in tree.last.items()
    }


def group_by_prompt(features: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs with the same prompt ids as one item, largest first (for `PrefixTreeCollator`):
    a question's answers then meet in one batch whatever the batch size."""
    groups: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for f in features:
        groups.setdefault(tuple(f["prompt_ids"]), []).append(f)
    items = []
    for prompt, pairs in groups.items():
        responses = {tuple(f[k]) for f in pairs for k in ("chosen_ids", "rejected_ids")}
        items.append({"pairs": pairs, "length": len(prompt) + sum(map(len, responses))})
    return sorted(items, key=lambda it: -it["length"])


@dataclass
class PrefixTreeCollator:
    """Scoring without gradients: every prompt + response of a batch goes into prefix trees of at
    most `cap` tokens, so a prompt shared by several pairs, or a response repeated across pairs,
    is computed once. Takes pair features or `group_by_prompt` items.

    Reward positions come per pair as in `PackedCollator`; `pair_index` is [items, most pairs
    in an item] (-1 = no pair), so the Trainer's per-item bookkeeping (its
    cut of a repeated last batch, its gather across ranks) stays aligned with whole items.
    """

    pad_id: int
    cap: int
    attention_cost: float = 0.0  # see prefix_tree.worth_sharing
    row_budget: int | None = None  # see pack_trees
    takes_prompt_groups = True  # the Trainer hands it `group_by_prompt` items

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        groups = [item.get("pairs", [item]) for item in items]
        width = max(len(g) for g in groups)
        feats = [f for g in groups for f in g]
        seqs = [f["prompt_ids"] + f[k] for f in feats for k in ("chosen_ids", "rejected_ids")]
        trees, _ = build_trees(seqs, self.cap, self.attention_cost)
        batch, place = pack_trees(trees, self.pad_id, self.row_budget)
        ends = sequence_ends(trees, place)
        slots = torch.zeros((len(groups), width, 2, 2), dtype=torch.long)
        index = torch.full((len(groups), width), -1, dtype=torch.long)
        margin = torch.zeros((len(groups), width))
        k = 0
        for g, pairs in enumerate(groups):
            for j, f in enumerate(pairs):
                slots[g, j] = torch.tensor([ends[2 * k], ends[2 * k + 1]])
                index[g, j], margin[g, j] = int(f["pair_index"]), float(f.get("margin", 0.0))
                k += 1
        batch["chosen_index"] = slots[:, :, 0].reshape(-1, 2)
        batch["rejected_index"] = slots[:, :, 1].reshape(-1, 2)
        batch["margin"], batch["pair_index"] = margin.reshape(-1), index
        if width == 1:  # one pair per item (training): rewards come in feature order
            batch["lengths"] = response_lengths(feats)
        return batch


def make_collator(
    mode: str,
    pad_id: int,
    row_budget: int = 0,
    varlen: bool = False,
    tree_cap: int = 0,
    attention_cost: float = 0.0,
) -> Any:
    """The collator for a `--packing` mode: none | padding_free | prefix_sharing. With
    `tree_cap` (prefix sharing only) a batch's pairs go into prefix trees of at most that many
    tokens, packed into rows of `row_budget`: pairs of one prompt in a batch (see
    `PromptGroupedSampler`) compute the prompt, and an answer they repeat, once."""
    if tree_cap and mode == "prefix_sharing":
        return _PairTrees(pad_id, tree_cap, attention_cost, row_budget or None)
    if mode == "none":
        return PairCollator(pad_id)
    if mode in ("padding_free", "prefix_sharing"):
        return PackedCollator(pad_id, mode, row_budget, varlen)
    raise ValueError(f"unknown packing mode {mode!r}")


class _PairTrees(PrefixTreeCollator):
    """Prefix trees over a training batch of pair features (one pair per item: the loss sees
    every pair, in batch order)."""

    takes_prompt_groups = False


def response_lengths(features: Sequence[dict[str, Any]]) -> torch.Tensor:
    """Token counts of the responses, chosen ones first, then rejected (the rewards' order)."""
    sizes = [len(f[k]) for k in ("chosen_ids", "rejected_ids") for f in features]
    return torch.tensor(sizes, dtype=torch.float32)


def grouping_length(feature: dict[str, Any]) -> int:
    """What length grouping sorts by: a pair's tokens with its prompt once, the same in every
    --packing mode, so that the modes train on the same batches."""
    return pair_tokens(feature, "prefix_sharing")


def pair_tokens(feature: dict[str, Any], mode: str) -> int:
    """Tokens one pair costs in a mode (what length-grouping and packing budgets count)."""
    p, c, r = (len(feature[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
    return p + c + r if mode == "prefix_sharing" else 2 * p + c + r


def tree_cap(max_length: int) -> int:
    """Tokens a prefix tree may hold: two max lengths, so any pair (its prompt and both
    responses) fits one tree."""
    return 2 * max_length


def make_eval_collator(
    mode: str, pad_id: int, max_length: int, varlen: bool = False, attention_cost: float = 0.0
) -> Any:
    """Scoring layout for a `--packing` mode: `prefix_sharing` scores prefix trees of up to two
    max lengths (any pair fits one tree); the other modes score one pair per row."""
    if mode == "prefix_sharing":
        return PrefixTreeCollator(pad_id, tree_cap(max_length), attention_cost)
    return make_collator(mode, pad_id, 0, varlen)
