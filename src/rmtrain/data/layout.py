"""The one format-and-tokenize path shared by training, evaluation, scoring and serving.

A text is laid out as `[prompt][body][tail]`: the prompt (chat-templated up to the assistant
turn, or plain), the response body, and the tail that closes the turn. The reward is read at the
last tail token, and `reward_position` says where the tail ends:

- `end_of_turn` (default): at the template's end-of-turn token (`<|im_end|>`, `<|eot_id|>`,
  `<end_of_turn>`; eos without a template), the token a generation stops at. What the template
  writes after it (a newline) is left out, so a policy's `prompt + generation` (OpenRLHF) and the
  full chat-templated text (TRL, pipelines: the saved tokenizer pads with that newline, see
  `residue_token`) are scored at the same token as in training.
- `template_end`: at the last token of the template's closing (earlier models, and models
  trained by tools that read there).

Over-long pairs are cut, never dropped silently:
the prompt loses its oldest tokens down to a floor, then the response body loses its end; the
tail always stays so the reward token is the same one the model sees at full length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rmtrain.data.pairs import Text


@dataclass(frozen=True)
class Encoded:
    """Token ids of one prompt + response, split where truncation needs it."""

    prompt: list[int]
    body: list[int]
    tail: list[int]


@dataclass(frozen=True)
class FittedPair:
    """A pair cut to the length budget: the prompt is shared by both responses."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    truncated: bool


REWARD_POSITIONS = ("end_of_turn", "template_end")


def uses_chat_template(tokenizer: Any, mode: str = "auto") -> bool:
    return mode == "auto" and bool(getattr(tokenizer, "chat_template", None))


def _as_messages(text: Text, role: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text}] if isinstance(text, str) else list(text)


def _plain(text: Text) -> str:
    if isinstance(text, str):
        return text
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in text)


def render(tokenizer: Any, prompt: Text, response: Text, chat: bool) -> tuple[str, str, str]:
    """(prompt_text, body_text, tail_text) for one prompt and response."""
    if not chat:
        head = _plain(prompt)
        return (head + "\n\n" if head else ""), _plain(response), ""
    prompt_msgs = _as_messages(prompt, "user") if prompt else []
    reply = _as_messages(response, "assistant")
    full = tokenizer.apply_chat_template(prompt_msgs + reply, tokenize=False)
    head = (
        tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
        if prompt_msgs
        else ""
    )
    if not full.startswith(head):
        n = 0
        while n < min(len(head), len(full)) and head[n] == full[n]:
            n += 1
        head = full[:n]
    content = reply[-1]["content"]
    end = full.rfind(content) + len(content) if content else -1
    if content and end - len(content) >= len(head):
        return head, full[len(head) : end], full[end:]
    return head, full[len(head) :], ""


def _tokenize_many(
    tokenizer: Any, texts: list[str], special: bool, split_special: bool = False
) -> list[list[int]]:
    """Batched tokenisation with de-duplication (tails and shared prompts repeat a lot).
    `split_special`: special-token strings in the text are plain text (a response cannot write
    the template's turn markers and forge a turn)."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        return []
    extra = {"split_special_tokens": True} if split_special else {}
    ids = tokenizer(unique, add_special_tokens=special, **extra)["input_ids"]
    table = dict(zip(unique, ids, strict=True))
    return [list(table[t]) for t in texts]


# A text is tokenised only as far as a cut can reach: a response's first, a prompt's last
# CHARS_PER_TOKEN x (max_length + SLACK) characters. Where that part holds fewer than
# max_length + SLACK tokens, a part 8 times longer is tried, up to the whole text: the tokens
# a cut keeps are always the whole text's (only the tokens at the part's edge can differ, and
# a cut drops them).
CHARS_PER_TOKEN = 16
SLACK = 16


def _tokenize_capped(
    tokenizer: Any,
    texts: list[str],
    special: bool,
    split_special: bool = False,
    max_tokens: int | None = None,
    from_end: bool = False,
) -> list[list[int]]:
    """`_tokenize_many` of the part of each text a cut to `max_tokens` can keep: its start,
    or its end (`from_end`, a prompt keeps its latest tokens). A 2 MB text costs about as much
    as a text of the part's length."""
    if max_tokens is None:
        return _tokenize_many(tokenizer, texts, special, split_special)
    ids: list[list[int]] = [[] for _ in texts]
    todo, cap = list(range(len(texts))), CHARS_PER_TOKEN * (max_tokens + SLACK)
    while todo:
        parts = [texts[i][-cap:] if from_end else texts[i][:cap] for i in todo]
        short = []
        for i, x in zip(
            todo, _tokenize_many(tokenizer, parts, special, split_special), strict=True
        ):
            if len(texts[i]) <= cap or len(x) >= max_tokens + SLACK:
                ids[i] = x
            else:
                short.append(i)
        todo, cap = short, 8 * cap
    return ids


def end_of_turn(tokenizer: Any, tail: list[int]) -> int:
    """Length of the tail up to and including its first special token (all of it if none)."""
    special = set(tokenizer.all_special_ids)
    return next((i + 1 for i, t in enumerate(tail) if t in special), len(tail))


def reward_tail(tokenizer: Any, tail: list[int], position: str = "end_of_turn") -> list[int]:
    """The part of a template's closing that ends at the reward token."""
    return tail[: end_of_turn(tokenizer, tail)] if position == "end_of_turn" else tail


def closing_ids(tokenizer: Any, chat: bool) -> list[int]:
    """The template's whole closing of an assistant turn (empty without a template)."""
    if not chat:
        return []
    return tokenizer(render(tokenizer, "x", "y", chat)[2], add_special_tokens=False)["input_ids"]


def residue_token(tokenizer: Any, chat: bool, position: str) -> int | None:
    """The one token a template writes after the reward token (ChatML's newline), if any.

    A saved model pads with it: the stock sequence-classification head reads the last token that
    is not padding, so on the full chat-templated text it then reads the end-of-turn token, as
    training did."""
    closing = closing_ids(tokenizer, chat)
    rest = closing[end_of_turn(tokenizer, closing) :] if position == "end_of_turn" else []
    return rest[0] if len(rest) == 1 and rest[0] != tokenizer.eos_token_id else None


def encode_batch(
    tokenizer: Any,
    prompts: Sequence[Text],
    responses: Sequence[Text],
    chat: bool,
    position: str = "end_of_turn",
    max_length: int | None = None,
) -> list[Encoded]:
    """Encode prompt/response texts in one batched call per part; with `max_length`, only
    what a cut to it can keep (`_tokenize_capped`)."""
    parts = [render(tokenizer, p, r, chat) for p, r in zip(prompts, responses, strict=True)]
    heads, bodies = [p[0] for p in parts], [p[1] for p in parts]
    head_ids = _tokenize_capped(tokenizer, heads, not chat, False, max_length, from_end=True)
    body_ids = _tokenize_capped(tokenizer, bodies, False, True, max_length)
    tail_ids = _tokenize_many(tokenizer, [p[2] for p in parts], special=False)
    tails: dict[tuple[int, ...], list[int]] = {}  # one cut per distinct closing, not per text
    for t in tail_ids:
        if tuple(t) not in tails:
            tails[tuple(t)] = reward_tail(tokenizer, t, position)
    return [
        _closed(tokenizer, h, b, tails[tuple(t)])
        for h, b, t in zip(head_ids, body_ids, tail_ids, strict=True)
    ]


def _closed(tokenizer: Any, head: list[int], body: list[int], tail: list[int]) -> Encoded:
    """Without a template closing, eos closes the response (or its own last token)."""
    if not tail:
        eos = tokenizer.eos_token_id
        tail = [eos] if eos is not None else body[-1:]
        body = body if eos is not None else body[:-1]
    return Encoded(head, body, tail)


@dataclass(frozen=True)
class Frame:
    """What a template puts around a response: the assistant header that ends a prompt, the
    opening it writes before the content (Qwen3's empty think block), the closing token ids, and
    the closing's prefixes as text, longest first (a text may end in any of them)."""

    header: str
    opening: str
    closing: list[int]
    closing_texts: tuple[str, ...] = ()


def template_frame(tokenizer: Any, chat: bool) -> Frame:
    if not chat:
        return Frame("", "", [])
    user = [{"role": "user", "content": "x"}]
    with_header = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(user, tokenize=False)
    header = with_header[len(without) :] if with_header.startswith(without) else ""
    _, body, _ = render(tokenizer, "x", "y", chat)
    opening = body[: -len("y")] if body.endswith("y") else ""
    closing = closing_ids(tokenizer, chat)
    prefixes = tuple(tokenizer.decode(closing[:k]) for k in range(len(closing), 0, -1))
    return Frame(header, opening, closing, prefixes)


def split_text(text: str, frame: Frame, prompt: str | None = None) -> tuple[str, str]:
    """(prompt part, response part) of a full text: at the given prompt when the text starts
    with it, else after the last assistant header, else all response."""
    if prompt and text.startswith(prompt) and len(text) > len(prompt):
        return prompt, text[len(prompt) :]
    at = text.rfind(frame.header) if frame.header else -1
    if at >= 0:
        return text[: at + len(frame.header)], text[at + len(frame.header) :]
    return "", text


def _opening_to_response(head: str, response: str, frame: Frame) -> tuple[str, str]:
    """Training tokenises a template's opening (Qwen3's think block) with the response. A
    generation prompt may already hold it (Qwen3 with `enable_thinking=False` ends in the empty
    block): what follows the prompt's last assistant header goes back to the response."""
    if not (frame.header and frame.opening):
        return head, response
    at = head.rfind(frame.header)
    marker = frame.opening.split("\n")[0]
    rest = head[at + len(frame.header) :] if at >= 0 else ""
    if rest and rest.startswith(marker):
        return head[: at + len(frame.header)], rest + response
    return head, response


def encode_text(
    tokenizer: Any,
    text: str,
    chat: bool,
    position: str = "end_of_turn",
    prompt: str | None = None,
    frame: Frame | None = None,
    max_length: int | None = None,
) -> Encoded:
    """A full text (prompt and response already rendered, as an RLHF loop sends it) in the
    training layout: a complete or partial closing at its end is completed (only what is
    missing), a template opening the text lacks is added, and the tail ends at the reward token.
    A text that already is the training layout comes out as training tokenised it."""
    frame = frame or template_frame(tokenizer, chat)
    head, response = split_text(text, frame, prompt)
    if chat:
        head, response = _opening_to_response(head, response, frame)
        part = next((p for p in frame.closing_texts if response.endswith(p)), "")
        response = response[: len(response) - len(part)]
        marker = frame.opening.split("\n")[0]
        if head and frame.opening and not response.startswith(marker):
            response = frame.opening + response
    elif tokenizer.eos_token and response.endswith(tokenizer.eos_token):
        response = response[: -len(tokenizer.eos_token)]
    head_ids = (
        _tokenize_capped(tokenizer, [head], not chat, False, max_length, from_end=True)[0]
        if head
        else []
    )
    body_ids = _tokenize_capped(tokenizer, [response], False, True, max_length)[0]
    tail = reward_tail(tokenizer, frame.closing, position)
    return _closed(tokenizer, list(head_ids), list(body_ids), tail)


def default_prompt_floor(max_length: int) -> int:
    return max_length // 4


def _cut(
    prompt: list[int], responses: Sequence[Encoded], max_length: int, prompt_floor: int | None
) -> tuple[list[int], list[list[int]], bool] | None:
    """Shared cutting rule; None when even the tails alone cannot fit."""
    floor = default_prompt_floor(max_length) if prompt_floor is None else prompt_floor
    need = max(len(r.body) + len(r.tail) for r in responses)
    if len(prompt) + need <= max_length:
        return prompt, [r.body + r.tail for r in responses], False
    longest_tail = max(len(r.tail) for r in responses)
    if longest_tail + 1 > max_length:
        return None
    keep = min(len(prompt), max(max_length - need, min(floor, len(prompt))))
    keep = min(keep, max_length - longest_tail - 1)
    budget = max_length - keep
    cut = [r.body[: budget - len(r.tail)] + r.tail for r in responses]
    return prompt[len(prompt) - keep :], cut, True


def fit_pair(
    prompt: list[int],
    chosen: Encoded,
    rejected: Encoded,
    max_length: int,
    prompt_floor: int | None = None,
) -> FittedPair | str:
    """Cut a pair so prompt + each response fits `max_length`, or say why it cannot be used.

    The prompt keeps its most recent tokens (at least `prompt_floor` of them when it has that
    many), then the response bodies are cut from the end; tails stay. Returns the reason
    ('too_long' or 'identical_after_truncation') when no usable pair remains.
    """
    result = _cut(prompt, (chosen, rejected), max_length, prompt_floor)
    if result is None:
        return "too_long"
    kept, (c, r), truncated = result
    if truncated and c == r:
        return "identical_after_truncation"
    return FittedPair(kept, c, r, truncated)


def fit_single(
    encoded: Encoded, max_length: int, prompt_floor: int | None = None
) -> tuple[list[int], bool] | None:
    """Scoring one response: the same cutting rule as `fit_pair`, as one token sequence."""
    result = _cut(encoded.prompt, (encoded,), max_length, prompt_floor)
    if result is None:
        return None
    kept, (ids,), truncated = result
    return kept + ids, truncated


def encode_pairs(
    tokenizer: Any,
    pairs: Sequence[Any],
    max_length: int,
    chat: bool,
    prompt_floor: int | None = None,
    position: str = "end_of_turn",
) -> tuple[list[dict[str, Any]], int, list[tuple[int, str]]]:
    """Tokenise and fit pairs once: (features, truncated count, dropped pairs as (pair index,
    reason)).

    Each feature keeps `pair_index`, the position of its pair in `pairs`, so that metrics can
    find the pair's prompt group whatever order batches come in.
    """
    prompts = [p.prompt for p in pairs]
    chosen = encode_batch(tokenizer, prompts, [p.chosen for p in pairs], chat, position, max_length)
    rejected = encode_batch(
        tokenizer, prompts, [p.rejected for p in pairs], chat, position, max_length
    )
    features: list[dict[str, Any]] = []
    truncated = 0
    dropped: list[tuple[int, str]] = []
    for i, (pair, c, r) in enumerate(zip(pairs, chosen, rejected, strict=True)):
        fitted = fit_pair(c.prompt, c, r, max_length, prompt_floor)
        if isinstance(fitted, str):
            dropped.append((i, fitted))
            continue
        truncated += fitted.truncated
        features.append(
            {
                "prompt_ids": fitted.prompt,
                "chosen_ids": fitted.chosen,
                "rejected_ids": fitted.rejected,
                "margin": pair.margin,
                "pair_index": i,
            }
        )
    return features, truncated, dropped
