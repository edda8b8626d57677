"""Prefix trees: many token sequences computed as one forest, each shared prefix once.

Sequences that start alike (the answers of one question, the two responses of a pair, repeated
texts, a chat template's system prompt) are merged into a trie whose nodes are laid out depth
first. Node i attends to node j iff j is i or an ancestor of i; its position id is its depth.
Each sequence's last token then sees exactly its own tokens at their own positions, so its value
equals a separate forward of that sequence, while every shared prefix is computed once.

    seqs     [5, 6, 7], [5, 6, 8], [5, 9]
    tokens   [5, 6, 7, 8, 9]      depth [0, 1, 2, 2, 1]      last node per sequence [2, 3, 4]

In depth-first order the descendants of node j are the nodes j+1 .. exit[j]-1, so the mask is
`j <= i < exit[j]`: no tree walk is needed to build it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class Tree:
    """One flattened trie: nodes in depth-first order, and where each sequence ends."""

    tokens: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    exit: list[int] = field(default_factory=list)  # first node after j's subtree
    last: dict[int, int] = field(default_factory=dict)  # sequence index -> its last node

    def __len__(self) -> int:
        return len(self.tokens)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def worth_sharing(nodes: int, length: int, shared: int, attention_cost: float) -> bool:
    """Whether a sequence of `length` tokens, `shared` of them already in a tree of `nodes`
    nodes, should join that tree rather than start its own.

    Joining saves `shared` tokens of per-token (linear) work but widens the tree's attention,
    which a masked kernel computes densely (nodes^2 query-key pairs): it pays when
    shared >= attention_cost * ((nodes + length - shared)^2 - nodes^2 - length^2), with
    `attention_cost` the cost of one query-key pair in units of one token's linear work.
    """
    extra = 2 * nodes * (length - shared) - 2 * length * shared + shared * shared
    return shared >= attention_cost * extra


def build_trees(
    seqs: Sequence[Sequence[int]], cap: int, attention_cost: float = 0.0
) -> tuple[list[Tree], list[int]]:
    """Merge sequences into tries of at most `cap` nodes (a longer single sequence gets a tree
    of its own), sharing a prefix only where `worth_sharing` says so. Returns the trees and,
    per sequence, the index of its tree.

    Sequences are visited in lexicographic order, where each one shares its longest prefix with
    the one before it, so a greedy pass builds the trie without searching it.
    """
    trees: list[Tree] = []
    tree_of = [0] * len(seqs)
    path: list[int] = []  # nodes on the current root-to-leaf path
    prev: Sequence[int] = ()
    for i in sorted(range(len(seqs)), key=lambda k: list(seqs[k])):
        seq = seqs[i]
        if not seq:
            raise ValueError("cannot score an empty token sequence")
        shared = _common_prefix(prev, seq)  # prev is () before the first tree
        size = len(trees[-1]) if trees else 0  # a tree is never empty once started
        if (
            not trees
            or size + len(seq) - shared > cap
            or not worth_sharing(size, len(seq), shared, attention_cost)
        ):
            if trees:
                _close(trees[-1], path, 0)
            trees.append(Tree())
            path, shared = [], 0
        tree = trees[-1]
        _close(tree, path, shared)
        for tok in seq[shared:]:
            path.append(len(tree.tokens))
            tree.tokens.append(tok)
            tree.depth.append(len(path) - 1)
            tree.exit.append(-1)
        tree.last[i] = path[len(seq) - 1]
        tree_of[i] = len(trees) - 1
        prev = seq
    if trees:
        _close(trees[-1], path, 0)
    return trees, tree_of


def _close(tree: Tree, path: list[int], keep: int) -> None:
    """Pop the path down to `keep` nodes; a popped node's subtree ends here."""
    while len(path) > keep:
        tree.exit[path.pop()] = len(tree.tokens)


def tree_mask(exit: torch.Tensor) -> torch.Tensor:
    """Boolean [rows, L, L] from each row's exit indices: i attends to j iff j <= i < exit[j].

    Rows of several trees laid end to end need no extra care: a node's interval never reaches
    into the next tree. A pad position gets exit = its own index + 1 (it attends to itself).
    """
    n = exit.shape[-1]
    idx = torch.arange(n)
    return (idx.unsqueeze(1) >= idx.unsqueeze(0)) & (idx.unsqueeze(1) < exit.unsqueeze(-2))
