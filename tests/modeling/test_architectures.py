"""Every common decoder family trains a few steps, and its saved model's rewards on the fast
scoring path (prefix trees, speed door on) equal the stock transformers forward on the same
texts. Tiny random configs, the real Qwen3 tokenizer."""

import json

import numpy as np
import pytest
import torch
import transformers as tf

from rmtrain.cli import main
from rmtrain.modeling.loading import load_tokenizer
from rmtrain.serving.scorer import Item, encode_items, load_scorer
from tests.helpers import write_demo

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
HEADS = {"num_attention_heads": 4, "num_key_value_heads": 2}
CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**SMALL, **HEADS),
    "mistral": lambda: tf.MistralConfig(**SMALL, **HEADS, sliding_window=None),
    "qwen2": lambda: tf.Qwen2Config(**SMALL, **HEADS),
    "qwen3": lambda: tf.Qwen3Config(**SMALL, **HEADS, head_dim=8),
    "qwen3_moe": lambda: tf.Qwen3MoeConfig(
        **SMALL, **HEADS, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32
    ),
    "gemma2": lambda: tf.Gemma2Config(**SMALL, **HEADS, head_dim=8),
    "gemma3": lambda: tf.Gemma3TextConfig(**SMALL, **HEADS, head_dim=8),
    "phi3": lambda: tf.Phi3Config(**SMALL, **HEADS),
    "olmo2": lambda: tf.Olmo2Config(**SMALL, **HEADS),
    "gpt2": lambda: tf.GPT2Config(n_embd=32, n_layer=2, n_head=4),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**SMALL, num_attention_heads=4),
}


def _save_base(tmp_path, name):
    tok = load_tokenizer("builtin:tiny-qwen3")
    config = CONFIGS[name]()
    config.vocab_size = len(tok)
    config.pad_token_id = tok.pad_token_id
    config.bos_token_id = config.eos_token_id = tok.eos_token_id
    torch.manual_seed(0)
    base = tmp_path / "base"
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tok.save_pretrained(base)
    return base


def _train(base, tmp_path, *extra):
    data = write_demo(tmp_path / "prefs.jsonl", 40, seed=2)
    out = tmp_path / "rm"
    args = ["train", "--model", str(base), "--dataset", str(data), "--frac", "1.0"]
    args += ["--output", str(out), "--max-length", "64", "--batch", "4", "--max-steps", "3"]
    args += ["--lr", "1e-3", "--report-to", "none", "--eval-steps", "0", *extra]
    return main(args), out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_trains_and_fast_rewards_equal_stock_forward(name, tmp_path, capsys):
    code, out = _train(_save_base(tmp_path, name), tmp_path)
    assert code == 0, capsys.readouterr().err[-2000:]
    said = capsys.readouterr().out
    assert ("using eager attention" in said) == (name == "gemma2")
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["train_steps"] == 3 and np.isfinite(metrics["loss"])

    scorer = load_scorer(str(out))
    items = [
        Item(prompt="What should I cook tonight?", response=r)
        for r in ("A quick vegetable curry.", "Nothing.", "Pasta with garlic and oil.")
    ] + [Item(prompt="Name a colour.", response="Blue.")]
    seqs = [ids for ids, _ in encode_items(scorer, items)]
    fast = scorer.score_ids(seqs)  # prefix trees: the three answers share their prompt

    stock = tf.AutoModelForSequenceClassification.from_pretrained(out).eval()
    width = max(map(len, seqs))
    pad = stock.config.pad_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    with torch.no_grad():
        reference = stock(input_ids=ids, attention_mask=mask).logits[:, 0].numpy()
    assert np.allclose(fast, reference, atol=1e-4), (fast, reference)


def test_architecture_without_a_classification_class_names_alternatives(tmp_path, capsys):
    tok = load_tokenizer("builtin:tiny-qwen3")
    config = tf.GraniteConfig(**SMALL, **HEADS, vocab_size=len(tok))
    base = tmp_path / "granite"
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tok.save_pretrained(base)
    code, _ = _train(base, tmp_path)
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "granite has no sequence-classification class" in err and "llama" in err
