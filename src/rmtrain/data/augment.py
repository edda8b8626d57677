"""Training-time augmentation: seeded rewrites that add pairs teaching what should not pay.

Each augmentation is a small registered function of one training pair (and the other training
pairs) returning the pairs it adds, or none where it does not apply:

    @augmentation("name", doc="what the model should learn")
    def _name(pair, pool, rng): ...

Two kinds of pairs come out: *preferences* (the first response must win: another prompt's
answer, an answer cut off mid-way, an answer with content-free text inserted all lose to the
answer) and *ties* (the same answer with other whitespace or layout): a tie is added in both
orders, so the Bradley-Terry loss of the two is smallest when the rewards are equal. Pairs keep
the source pair's prompt (and group): they land beside it in training and share its prompt in
the prefix tree.

The wordings and generators here are this module's own; the robustness probes
(`evaluation/probes.py`) use other texts and rewrites, so they stay a fair test.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from rmtrain.data.pairs import Pair, Text
from rmtrain.errors import RmtrainError

Rewrite = Callable[[Pair, Sequence[Pair], random.Random], list[Pair]]


@dataclass(frozen=True)
class Augmentation:
    name: str
    doc: str
    rewrite: Rewrite


AUGMENTATIONS: dict[str, Augmentation] = {}


def augmentation(name: str, doc: str) -> Callable[[Rewrite], Rewrite]:
    def add(fn: Rewrite) -> Rewrite:
        AUGMENTATIONS[name] = Augmentation(name, doc, fn)
        return fn

    return add


def text_of(value: Text) -> str:
    """The response text (the last message's content for a message list)."""
    return value if isinstance(value, str) else str(value[-1].get("content", ""))


def with_text(value: Text, text: str) -> Text:
    if isinstance(value, str):
        return text
    return [*value[:-1], {**value[-1], "content": text}]


def _pair(src: Pair, chosen: Text, rejected: Text, name: str) -> Pair:
    return replace(src, chosen=chosen, rejected=rejected, margin=0.0, extra={"augment": name})


def _tie(src: Pair, a: Text, b: Text, name: str) -> list[Pair]:
    return [_pair(src, a, b, name), _pair(src, b, a, name)]


# Content-free material, composed from parts so that no fixed sentence repeats: a model cannot
# learn one string, only that such text carries nothing.
_LEADS = ("Overall,", "All things considered,", "To wrap up,", "Broadly speaking,", "As noted,")
_SUBJECTS = ("this", "the point above", "the matter", "such a question", "the whole thing")
_VERBS = ("depends on", "comes down to", "is shaped by", "varies with", "relates to")
_OBJECTS = (
    "a range of circumstances",
    "what one has in mind",
    "several considerations",
    "the situation at hand",
    "individual preference",
)
_TAILS = (
    "Feel free to reach out again.",
    "Good luck with it.",
    "Hopefully that clarifies things.",
    "Thanks for reading.",
    "That is about all there is to say.",
)
_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def generic_text(rng: random.Random) -> str:
    """One or two sentences that say nothing about any question."""
    first = f"{rng.choice(_LEADS)} {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} "
    first += f"{rng.choice(_OBJECTS)}."
    return first if rng.random() < 0.4 else f"{first} {rng.choice(_TAILS)}"


@augmentation("relevance", "an answer to another prompt loses to this prompt's answer")
def _relevance(pair: Pair, pool: Sequence[Pair], rng: random.Random) -> list[Pair]:
    other = next((p for p in (rng.choice(pool) for _ in range(8)) if p.group != pair.group), None)
    if other is None:  # one prompt only (or very few): nothing to borrow from
        return []
    answer = other.chosen if rng.random() < 0.5 else other.rejected
    return [_pair(pair, pair.chosen, with_text(pair.chosen, text_of(answer)), "relevance")]


@augmentation("truncation", "the answer cut off part-way loses to the whole answer")
def _truncation(pair: Pair, pool: Sequence[Pair], rng: random.Random) -> list[Pair]:
    text = text_of(pair.chosen)
    words = [m.end() for m in _WORD.finditer(text)]
    if len(words) < 8:
        return []
    cut = words[rng.randint(len(words) // 5, (3 * len(words)) // 5)]
    return [_pair(pair, pair.chosen, with_text(pair.chosen, text[:cut]), "truncation")]


@augmentation("filler", "content-free text or a repeated part inserted does not win")
def _filler(pair: Pair, pool: Sequence[Pair], rng: random.Random) -> list[Pair]:
    text = text_of(pair.chosen).rstrip()
    # After one of the first three sentences (the end of a shorter answer): inside what a right
    # cut at --max-length keeps, where text appended to a long answer would never be seen.
    ends = ([m.start() for m in _SENTENCE_END.finditer(text)] + [len(text)])[:3]
    at = rng.choice(ends)
    said = [s for s in _SENTENCE_END.split(text[:at]) if s]
    if rng.random() < 0.5 and said:
        start = rng.randrange(len(said))
        extra = " ".join(said[start : start + rng.randint(1, 3)])
    else:
        extra = generic_text(rng)
    sep = rng.choice((" ", "\n", "\n\n"))
    padded = f"{text[:at]}{sep}{extra}{text[at:]}"
    return [_pair(pair, pair.chosen, with_text(pair.chosen, padded), "filler")]


_EDGES = ("", " ", "\n", "\t", "  \n", "\n\n", " \n \n", "\r\n")


@augmentation("whitespace", "a tie: whitespace at the edges of the answer changes nothing")
def _whitespace(pair: Pair, pool: Sequence[Pair], rng: random.Random) -> list[Pair]:
    text = text_of(pair.chosen)
    lead, trail = rng.choice(_EDGES[:4]), rng.choice(_EDGES[1:])
    spaced = with_text(pair.chosen, f"{lead}{text.strip()}{trail}")
    return _tie(pair, pair.chosen, spaced, "whitespace")


def _relayout(sentences: list[str], rng: random.Random) -> str:
    style = rng.randrange(4)
    if style == 0:
        return "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, 1))
    if style == 1:
        return "\n".join(f"* {s}" for s in sentences)
    if style == 2:
        return "\n\n".join(sentences)
    head, rest = sentences[0], sentences[1:]
    return f"### {head}\n" + " ".join(rest) if rest else f"### {head}"


@augmentation("layout", "a tie: the same sentences laid out as a list or paragraphs change nothing")
def _layout(pair: Pair, pool: Sequence[Pair], rng: random.Random) -> list[Pair]:
    sentences = [s.strip() for s in _SENTENCE_END.split(text_of(pair.chosen).strip()) if s]
    if len(sentences) < 2:
        return []
    return _tie(pair, pair.chosen, with_text(pair.chosen, _relayout(sentences, rng)), "layout")


def augmentation_names(spec: str | Sequence[str] | None) -> list[str]:
    """`a,b` (or a list) as known augmentation names; `all` is every one."""
    if not spec:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in items if n.strip()]
    if names == ["all"]:
        return list(AUGMENTATIONS)
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise RmtrainError(
            f"unknown --augment {unknown}; known: {', '.join(AUGMENTATIONS)} (or all)"
        )
    return names


def augment_pairs(
    pairs: Sequence[Pair], names: Sequence[str], rate: float, seed: int
) -> tuple[list[Pair], Counter]:
    """The pairs the augmentations add to `pairs` (training pairs only): each augmentation
    applies to each pair with probability `rate`, drawn from its own seeded RNG. Returns the
    added pairs, ordered by source pair, and their count per augmentation."""
    added: list[list[Pair]] = [[] for _ in pairs]
    counts: Counter = Counter()
    for name in names:
        rng = random.Random(f"{seed}:augment:{name}")
        rewrite = AUGMENTATIONS[name].rewrite
        for i, pair in enumerate(pairs):
            if rng.random() < rate:
                new = rewrite(pair, pairs, rng)
                added[i] += new
                counts[name] += len(new)
    return [p for group in added for p in group], counts
