"""In-process reward scoring: one fast path for evaluation, batch scoring and serving.

`RewardScorer` loads a saved model with its tokenizer and the text layout it was trained with
(`config.rmtrain`), formats and tokenises with the same function as training, merges the
sequences into prefix trees (shared prompts computed once), sorts them by size and runs without
gradients.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmtrain import speed
from rmtrain.batching.collate import pack_trees, sequence_ends, tree_cap
from rmtrain.batching.prefix_tree import build_trees
from rmtrain.data.formats import is_messages
from rmtrain.data.layout import (
    Frame,
    encode_batch,
    encode_pairs,
    encode_text,
    fit_single,
    template_frame,
    uses_chat_template,
)
from rmtrain.errors import RmtrainError
from rmtrain.modeling.loading import choose_pad_token, saved_options
from rmtrain.modeling.rewards import attention_cost_ratio, unwrap, values_at

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
    position: str = "end_of_turn"
    _frame: Frame | None = None
    # A fast tokenizer sets state on its backend at every call (`encode_special_tokens`,
    # truncation): two threads encoding at once (the server's requests) would give one the
    # other's setting, e.g. a template's turn markers split into plain text. One at a time.
    _encoding: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def frame(self) -> Frame:
        if self._frame is None:
            self._frame = template_frame(self.tokenizer, self.chat)
        return self._frame

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _forward(self, batch: dict[str, torch.Tensor], rows: list, cols: list) -> torch.Tensor:
        """The values at (rows, cols): the last layer runs at those tokens alone."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            return values_at(
                self.model,
                batch["input_ids"],
                batch["attention_mask"],
                batch["position_ids"],
                batch["attention_blocks"],
                torch.tensor(rows, device=self.device),
                torch.tensor(cols, device=self.device),
            )

    def score_features(
        self, features: Sequence[dict[str, Any]], progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(chosen, rejected) rewards of fitted pairs, in the given order (`progress` counts
        responses)."""
        seqs = [f["prompt_ids"] + f[k] for f in features for k in ("chosen_ids", "rejected_ids")]
        rewards = self._score_trees(seqs, progress)
        return rewards[0::2], rewards[1::2]

    def score_pairs(self, pairs: Sequence[Any], progress: Progress | None = None) -> ScoredPairs:
        with self._encoding:
            feats, truncated, dropped = encode_pairs(
                self.tokenizer, pairs, self.max_length, self.chat, self.prompt_floor, self.position
            )
        chosen, rejected = self.score_features(feats, progress)
        return ScoredPairs(feats, chosen, rejected, truncated, Counter(r for _, r in dropped))

    def encode_texts(
        self, prompts: Sequence[Any], responses: Sequence[Any]
    ) -> list[tuple[list[int], bool] | None]:
        """Token ids (and whether they were cut) of each prompt + response; None: cannot fit."""
        with self._encoding:
            encoded = encode_batch(
                self.tokenizer, prompts, responses, self.chat, self.position, self.max_length
            )
        return [fit_single(e, self.max_length, self.prompt_floor) for e in encoded]

    def encode_full_texts(
        self, texts: Sequence[str], prompts: Sequence[str | None]
    ) -> list[tuple[list[int], bool] | None]:
        """As `encode_texts`, for texts that hold prompt and response (see `encode_text`)."""
        with self._encoding:
            frame = self.frame  # built on first use, with the tokenizer
            encoded = [
                encode_text(self.tokenizer, t, self.chat, self.position, p, frame, self.max_length)
                for t, p in zip(texts, prompts, strict=True)
            ]
        return [fit_single(e, self.max_length, self.prompt_floor) for e in encoded]

    def score_ids(self, seqs: Sequence[list[int]], normalize: bool = False) -> np.ndarray:
        """Rewards of token sequences, returned in order."""
        out = self._score_trees(seqs)
        return self.normalize(out) if normalize else out

    def _score_trees(
        self, seqs: Sequence[list[int]], progress: Progress | None = None
    ) -> np.ndarray:
        """The one scoring path: sequences merged into prefix trees (a prompt shared by several
        responses, or a repeated text, is computed once), largest trees first, as many trees
        per forward as `token_budget` allows, one tree per row."""
        cost = attention_cost_ratio(self.model.config)
        trees, _ = build_trees(seqs, tree_cap(self.max_length), cost)
        out = np.zeros(len(seqs))
        for group in _batches_by_budget([len(t) for t in trees], self.token_budget):
            batch_trees = [trees[t] for t in group]
            batch, place = pack_trees(batch_trees, self.tokenizer.pad_token_id)
            ends = sequence_ends(batch_trees, place)
            rows, cols = zip(*ends.values(), strict=True)
            out[list(ends)] = self._forward(batch, rows, cols).float().cpu().numpy()
            if progress:
                progress(len(ends))
        return out

    def normalize(self, rewards: np.ndarray) -> np.ndarray:
        if self.reward_mean is None or not self.reward_std:
            raise RmtrainError("this model has no saved reward mean/std; train it with rmtrain")
        return (rewards - self.reward_mean) / self.reward_std


def _held_out(folder: Path) -> dict[str, Any]:
    """The held-out metrics of the folder's metrics.json (empty without one)."""
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        return {}
    return json.loads(metrics.read_text()).get("metrics", {})


def _settings_from_yaml(folder: Path) -> dict[str, Any]:
    """Adapter folders carry no config.json: read the layout from rmtrain_config.yaml."""
    cfg = saved_options(folder)
    if not cfg:
        return {}
    keys = ("max_length", "chat_template", "reward_position")
    return {k: cfg[k] for k in keys if k in cfg} | {"prompt_floor": cfg.get("min_prompt_length")}


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
    speed_mode: str = "auto",
) -> RewardScorer:
    """A scorer for a model folder saved by rmtrain (or any sequence-classification model);
    `speed_mode` 'off' scores on the plain transformers path (same rewards)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(model_dir).expanduser()
    adapter = (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()
    if not (path / "config.json").is_file() and not adapter:
        raise RmtrainError(f"{model_dir} is not a model folder (no config.json); pass --model DIR")
    if not list(path.glob("*.safetensors")):
        raise RmtrainError(f"{model_dir} has no .safetensors weights; rmtrain loads no pickles")
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    choose_pad_token(tok)
    if adapter:
        from rmtrain.modeling.lora import load_adapter_model

        model = load_adapter_model(path, tok.pad_token_id)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    model.eval().to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    options = speed.SpeedOptions(enabled=speed_mode == "auto", training=False)
    speed.install(unwrap(model), options)
    settings = getattr(model.config, "rmtrain", None) or _settings_from_yaml(path)
    if settings.get("diverged"):
        print(f"[rmtrain] warning: {model_dir} is marked diverged: {settings['diverged']}")
    max_length = max_length or int(settings.get("max_length", 512))
    # an adapter folder's config is its base's (which may be another reward model): its own
    # held-out statistics are in its metrics.json
    keys = ("reward_mean", "reward_std")
    stats = _held_out(path) if adapter else {k: getattr(model.config, k, None) for k in keys}
    mean, std = (stats.get(k) for k in keys)
    return RewardScorer(
        model=model,
        tokenizer=tok,
        max_length=max_length,
        chat=uses_chat_template(tok, settings.get("chat_template", "auto")),
        prompt_floor=settings.get("prompt_floor"),
        token_budget=max(token_budget, tree_cap(max_length)),  # a tree fits one forward
        reward_mean=mean,
        reward_std=std,
        # models saved without it were trained (and stock heads read) at the template's end
        position=settings.get("reward_position", "template_end"),
    )


@dataclass(frozen=True)
class Item:
    """One thing to score: a prompt and response (text or chat messages), or a full text."""

    prompt: Any = None
    response: Any = None
    text: str | None = None


def is_text(value: str) -> bool:
    """False for strings that are not valid unicode text (an unpaired surrogate like \\ud800,
    which JSON can carry and no tokenizer can read)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _all_text(value: Any) -> bool:
    if isinstance(value, str):
        return is_text(value)
    if isinstance(value, list):
        return all(_all_text(m.get("content", "")) for m in value if isinstance(m, dict))
    return True


ROLES = ("system", "user", "assistant", "tool")  # what chat templates render


def _unknown_roles(obj: Any) -> list[str]:
    """Roles a template would drop without a word (the reward then misses that turn)."""
    if not isinstance(obj, dict):
        return []
    found = [
        m.get("role")
        for k in ("prompt", "response", "messages")
        if isinstance(obj.get(k), list)
        for m in obj[k]
        if isinstance(m, dict) and m.get("role") not in ROLES
    ]
    return sorted({str(r) for r in found})


def parse_item(obj: Any) -> Item | str:
    """An `Item`, or the reason the object cannot be scored (reported, never dropped)."""
    if not isinstance(obj, dict):
        return "item must be a JSON object"
    if not all(_all_text(obj.get(k)) for k in ("prompt", "response", "messages", "text")):
        return "text holds an unpaired surrogate (like \\ud800): send valid unicode"
    roles = _unknown_roles(obj)
    if roles:
        return f"unknown message roles {roles}: use system, user, assistant or tool"
    if "response" in obj:
        prompt, response = obj.get("prompt", ""), obj["response"]
        if not (isinstance(prompt, str) or is_messages(prompt)):
            return "'prompt' must be a string or a list of {role, content} messages"
        if not ((isinstance(response, str) and response.strip()) or is_messages(response)):
            return "'response' must be a non-empty string or a list of messages"
        return Item(prompt=prompt, response=response)
    if "messages" in obj:
        msgs = obj["messages"]
        if not is_messages(msgs) or msgs[-1]["role"] != "assistant":
            return "'messages' must be {role, content} messages ending with an assistant turn"
        return Item(prompt=msgs[:-1], response=msgs[-1:])
    if "text" in obj:
        if not isinstance(obj["text"], str) or not obj["text"].strip():
            return "'text' must be a non-empty string"
        return Item(text=obj["text"])
    return "item needs 'prompt' and 'response', 'messages', or 'text'"


def encode_items(
    scorer: RewardScorer, items: Sequence[Item]
) -> list[tuple[list[int], bool] | None]:
    """Token ids and truncation flag per item, with the training function; None: cannot fit.

    Full texts are put in the training layout (`encode_text`) and cut by the training rule.
    """
    out: list[tuple[list[int], bool] | None] = [None] * len(items)
    pr = [i for i, it in enumerate(items) if it.text is None]
    fitted = scorer.encode_texts([items[i].prompt for i in pr], [items[i].response for i in pr])
    for i, f in zip(pr, fitted, strict=True):
        out[i] = f
    raw = [i for i, it in enumerate(items) if it.text is not None]
    texts = scorer.encode_full_texts([items[i].text for i in raw], [items[i].prompt for i in raw])
    for i, f in zip(raw, texts, strict=True):
        out[i] = f
    return out


def score_records(
    scorer: RewardScorer, records: Sequence[Any], normalize: bool = False
) -> list[dict[str, Any]]:
    """Per JSON record (prompt + response, messages, or text), in order: its `reward` and
    whether it was `truncated`, or the `error` that kept it from being scored."""
    results: list[dict[str, Any]] = [{} for _ in records]
    items, where = [], []
    for i, record in enumerate(records):
        item = parse_item(record)
        if isinstance(item, str):
            results[i] = {"error": item}
        else:
            items.append(item)
            where.append(i)
    encoded = encode_items(scorer, items)
    fit = [(w, e) for w, e in zip(where, encoded, strict=True) if e is not None]
    rewards = scorer.score_ids([e[0] for _, e in fit], normalize=normalize) if fit else []
    for (w, e), reward in zip(fit, rewards, strict=True):
        results[w] = {"reward": float(reward), "truncated": e[1]}
    for w, e in zip(where, encoded, strict=True):
        if e is None:
            results[w] = {"error": "too long: the response tail alone exceeds max length"}
    return results
