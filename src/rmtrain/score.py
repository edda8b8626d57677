"""In-process reward scoring: one fast path for evaluation, batch scoring and serving.

`RewardScorer` loads a saved model with its tokenizer and the text layout it was trained with
(`config.rmtrain`), formats and tokenises with the same function as training, sorts by length,
packs sequences (padding-free / prefix-shared) and runs without gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmtrain.collate import PackedCollator, pack_sequences
from rmtrain.errors import RmtrainError
from rmtrain.formatting import encode_batch, encode_pairs, fit_single, uses_chat_template
from rmtrain.model import choose_pad_token, token_values

Progress = Callable[[int], None]


@dataclass
class ScoredPairs:
    features: list[dict[str, Any]]  # fitted pairs that were scored, with their pair_index
    chosen: np.ndarray
    rejected: np.ndarray
    truncated: int
    dropped: dict[str, int]


@dataclass
class RewardScorer:
    model: Any
    tokenizer: Any
    max_length: int
    chat: bool
    prompt_floor: int | None = None
    token_budget: int = 4096  # tokens per forward pass
    reward_mean: float | None = None
    reward_std: float | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            return token_values(
                self.model, batch["input_ids"], batch["attention_mask"], batch["position_ids"]
            )

    def score_features(
        self, features: Sequence[dict[str, Any]], progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(chosen, rejected) rewards of fitted pairs, in the given order; prefix-shared."""
        collate = PackedCollator(self.tokenizer.pad_token_id, "prefix_sharing", self.token_budget)
        sizes = [
            sum(len(f[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")) for f in features
        ]
        chosen = np.zeros(len(features))
        rejected = np.zeros(len(features))
        for group in _batches_by_budget(sizes, self.token_budget):
            batch = collate([features[i] for i in group])
            values = self._forward(batch)
            c, r = batch["chosen_index"], batch["rejected_index"]
            chosen[group] = values[c[:, 0], c[:, 1]].float().cpu().numpy()
            rejected[group] = values[r[:, 0], r[:, 1]].float().cpu().numpy()
            if progress:
                progress(len(group))
        return chosen, rejected

    def score_pairs(self, pairs: Sequence[Any], progress: Progress | None = None) -> ScoredPairs:
        feats, truncated, dropped = encode_pairs(
            self.tokenizer, pairs, self.max_length, self.chat, self.prompt_floor
        )
        chosen, rejected = self.score_features(feats, progress)
        return ScoredPairs(feats, chosen, rejected, truncated, dropped)

    def encode_texts(
        self, prompts: Sequence[Any], responses: Sequence[Any]
    ) -> list[tuple[list[int], bool] | None]:
        """Token ids (and whether they were cut) of each prompt + response; None: cannot fit."""
        encoded = encode_batch(self.tokenizer, prompts, responses, self.chat)
        return [fit_single(e, self.max_length, self.prompt_floor) for e in encoded]

    def score_ids(self, seqs: Sequence[list[int]], normalize: bool = False) -> np.ndarray:
        """Rewards of token sequences, longest first in packed batches, returned in order."""
        out = np.zeros(len(seqs))
        for group in _batches_by_budget([len(s) for s in seqs], self.token_budget):
            batch = pack_sequences(
                [seqs[i] for i in group], self.tokenizer.pad_token_id, self.token_budget
            )
            values = self._forward(batch)
            e = batch["end_index"]
            out[group] = values[e[:, 0], e[:, 1]].float().cpu().numpy()
        return self.normalize(out) if normalize else out

    def normalize(self, rewards: np.ndarray) -> np.ndarray:
        if self.reward_mean is None or not self.reward_std:
            raise RmtrainError("this model has no saved reward mean/std; train it with rmtrain")
        return (rewards - self.reward_mean) / self.reward_std


def _batches_by_budget(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Indices sorted longest first, grouped so each group's tokens stay within the budget."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    groups: list[list[int]] = []
    used = 0
    for i in order:
        if groups and used + sizes[i] <= budget:
            groups[-1].append(i)
            used += sizes[i]
        else:
            groups.append([i])
            used = sizes[i]
    return groups


def load_scorer(
    model_dir: str,
    max_length: int | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    token_budget: int = 4096,
) -> RewardScorer:
    """A scorer for a model folder saved by rmtrain (or any sequence-classification model)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(model_dir).expanduser()
    if not (path / "config.json").is_file():
        raise RmtrainError(f"{model_dir} is not a model folder (no config.json); pass --model DIR")
    if not list(path.glob("*.safetensors")):
        raise RmtrainError(f"{model_dir} has no .safetensors weights; rmtrain loads no pickles")
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    choose_pad_token(tok)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    model.eval().to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = getattr(model.config, "rmtrain", None) or {}
    return RewardScorer(
        model=model,
        tokenizer=tok,
        max_length=max_length or int(settings.get("max_length", 512)),
        chat=uses_chat_template(tok, settings.get("chat_template", "auto")),
        prompt_floor=settings.get("prompt_floor"),
        token_budget=max(token_budget, 2 * (max_length or int(settings.get("max_length", 512)))),
        reward_mean=getattr(model.config, "reward_mean", None),
        reward_std=getattr(model.config, "reward_std", None),
    )
