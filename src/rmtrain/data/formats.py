"""Data formats: each a small registered function from a row to (prompt, chosen, rejected).

A new format is one `@register(name, columns)` function here: `detect_format` picks the first
registered format whose columns a data set carries, and `row_to_pair` validates the texts and
builds the `Pair`. `read_pairs` is the reading pipeline: rows (from `reading`) sampled and
normalised into pairs (types in `pairs`), every malformed row counted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rmtrain.data.pairs import DataCounts, Messages, Pair, Text
from rmtrain.data.reading import InvalidRow, columns
from rmtrain.data.splits import sample_indices, sample_size
from rmtrain.errors import RmtrainError


@dataclass(frozen=True)
class Format:
    """The columns a format needs, and how a row becomes (prompt, chosen, rejected) or the
    reason it cannot (a malformed-row reason). `empty_prompt`: an empty prompt is allowed."""

    columns: tuple[str, ...]
    texts: Callable[[dict[str, Any]], tuple[Text, Text, Text] | str]
    empty_prompt: bool = True


FORMATS: dict[str, Format] = {}


def register(name: str, columns: tuple[str, ...], empty_prompt: bool = True) -> Callable:
    """Register `fn(row) -> (prompt, chosen, rejected) | reason` as data format `name`."""

    def add(fn: Callable) -> Callable:
        FORMATS[name] = Format(columns, fn, empty_prompt)
        return fn

    return add


@register("stack_exchange", ("question", "response_j", "response_k"))
def _stack_exchange(row: dict[str, Any]) -> tuple[Text, Text, Text]:
    """lvwerra/stack-exchange-paired: `response_j` is the preferred answer."""
    return row["question"], row["response_j"], row["response_k"]


@register("explicit", ("prompt", "chosen", "rejected"))
def _explicit(row: dict[str, Any]) -> tuple[Text, Text, Text]:
    return row["prompt"], row["chosen"], row["rejected"]


@register("implicit", ("chosen", "rejected"), empty_prompt=False)
def _implicit(row: dict[str, Any]) -> tuple[Text, Text, Text] | str:
    """HH-RLHF style: whole transcripts whose common beginning is the prompt."""
    if type(row["chosen"]) is not type(row["rejected"]):
        return "not_text"
    return _implicit_to_pair(row["chosen"], row["rejected"])


def detect_format(columns: set[str]) -> str:
    """The first registered format whose columns the rows carry."""
    for name, fmt in FORMATS.items():
        if set(fmt.columns) <= columns:
            return name
    known = ", ".join("(" + ", ".join(f.columns) + ")" for f in FORMATS.values())
    raise RmtrainError(
        f"data has columns {sorted(columns)}; rmtrain reads {known} columns: rename yours to "
        "one of these"
    )


def row_to_pair(row: Any, index: int, fmt: str, margin_column: str) -> Pair | str:
    """A `Pair`, or the reason the row is malformed."""
    if isinstance(row, InvalidRow):
        return row.reason
    if not isinstance(row, dict):
        return "not_a_mapping"
    spec = FORMATS[fmt]
    for i, col in enumerate(spec.columns):
        reason = _check_text(row.get(col), allow_empty=spec.empty_prompt and i == 0)
        if reason:
            return reason
    texts = spec.texts(row)
    if isinstance(texts, str):
        return texts
    prompt, chosen, rejected = texts
    if _normalised(chosen) == _normalised(rejected):
        return "identical"
    if (isinstance(chosen, str) and not chosen.strip()) or (
        isinstance(rejected, str) and not rejected.strip()
    ):
        return "empty_text"
    margin = row.get(margin_column)
    if margin is not None and (
        isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin)
    ):
        return "bad_margin"
    group = str(row["qid"]) if fmt == "stack_exchange" and "qid" in row else _group_key(prompt)
    extra = {k: row[k] for k in ("subset", "score_j", "score_k") if k in row}
    return Pair(prompt, chosen, rejected, group, index, float(margin or 0.0), extra)


def _normalised(text: Text) -> Any:
    """Text compared with runs of whitespace as one space and no edge whitespace: responses that
    differ only there teach nothing (their rewards differ by layout noise)."""
    if isinstance(text, str):
        return " ".join(text.split())
    return [(m.get("role"), " ".join(str(m.get("content", "")).split())) for m in text]


def is_messages(value: Any) -> bool:
    """A non-empty list of {role, content} chat messages."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    )


def _check_text(value: Any, allow_empty: bool = False) -> str | None:
    """Reason the value is unusable as a prompt or response, or None when it is fine."""
    if value is None:
        return "missing_field"
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            return "empty_text"
        return None
    if isinstance(value, list) and (value == [] and allow_empty or is_messages(value)):
        return None
    return "not_text"


HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def parse_hh_transcript(text: str) -> Messages | None:
    """`\\n\\nHuman: a\\n\\nAssistant: b` -> chat messages; None when the text is not one."""
    if not text.startswith(HH_HUMAN):
        return None
    messages: Messages = []
    rest = text
    while rest:
        for marker, role in ((HH_HUMAN, "user"), (HH_ASSISTANT, "assistant")):
            if rest.startswith(marker):
                rest = rest[len(marker) :]
                nxt = [i for i in (rest.find(HH_HUMAN), rest.find(HH_ASSISTANT)) if i >= 0]
                end = min(nxt) if nxt else len(rest)
                messages.append({"role": role, "content": rest[:end].strip()})
                rest = rest[end:]
                break
        else:
            return None
    return messages


def split_common_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Implicit-prompt rows: the shared beginning is the prompt, cut at a turn or word boundary."""
    n = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        n += 1
    head = chosen[:n]
    cut = head.rfind(HH_ASSISTANT)
    if cut >= 0:
        cut += len(HH_ASSISTANT)
    else:
        cut = (
            max(head.rfind(" "), head.rfind("\n")) + 1 if n < min(len(chosen), len(rejected)) else n
        )
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _implicit_to_pair(chosen: Any, rejected: Any) -> tuple[Text, Text, Text]:
    if isinstance(chosen, list):
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        return chosen[:n], chosen[n:], rejected[n:]
    prompt, c, r = split_common_prefix(chosen, rejected)
    messages = parse_hh_transcript(prompt)
    if messages and messages[-1] == {"role": "assistant", "content": ""}:
        return messages[:-1], c.strip(), r.strip()
    return prompt, c, r


def _group_key(prompt: Text) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def read_pairs(
    rows: Sequence[Any], frac: float, seed: int, margin_column: str = "margin"
) -> tuple[list[Pair], DataCounts]:
    """Sample rows and normalise them, counting every malformed row by reason."""
    if hasattr(rows, "head"):  # read from the start only: its first rows are the sample
        indices = list(range(sample_size(len(rows), frac)))
        picked = rows.head(len(indices))
        fmt = detect_format(columns(picked))
    else:
        fmt = detect_format(columns(rows))
        indices = sample_indices(len(rows), frac, seed)
        if hasattr(rows, "select"):
            picked = rows.select(indices).to_list()
        else:
            picked = [rows[i] for i in indices]
    counts = DataCounts(
        rows_read=len(picked),
        rows_in_source=len(rows),
        frac=frac,
        lines=getattr(rows, "lines", None) or None,
    )
    pairs: list[Pair] = []
    for index, row in zip(indices, picked, strict=True):
        result = row_to_pair(row, index, fmt, margin_column)
        if isinstance(result, str):
            counts.malformed[result] += 1
            counts.bad_rows.append((index, result))
        else:
            pairs.append(result)
    return pairs, counts
