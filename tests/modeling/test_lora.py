"""LoRA: only adapters and the head train; the head survives save/reload; merged == adapter."""

import json

import numpy as np
import pytest
import torch

from rmtrain.cli import main
from rmtrain.config import TrainConfig
from rmtrain.modeling.loading import load_reward_model, load_tokenizer
from rmtrain.modeling.lora import load_adapter_model
from rmtrain.serving.scorer import load_scorer
from rmtrain.training.recipe import prepare_data
from tests.helpers import tiny_train_args, write_demo


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    data = write_demo(tmp / "prefs.jsonl", 60, seed=8)
    common = [
        "--lr",
        "1e-2",
        "--max-steps",
        "5",
        "--seed",
        "11",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
    ]
    assert main(tiny_train_args(data, tmp / "adapter", *common)) == 0
    assert main(tiny_train_args(data, tmp / "merged", *common, "--merge-lora")) == 0
    return tmp, data


def test_only_adapters_and_head_change(runs):
    tmp, _ = runs
    tok = load_tokenizer("builtin:tiny-qwen3")
    fresh = load_reward_model("builtin:tiny-qwen3", tok.pad_token_id, seed=11)
    trained = load_adapter_model(tmp / "adapter", tok.pad_token_id)
    base = dict(fresh.named_parameters())
    changed = set()
    for name, p in trained.named_parameters():
        key = name.removeprefix("base_model.model.").replace(".base_layer", "")
        if "lora_" in name:
            changed.add("lora")
        elif "modules_to_save" in name:
            assert not torch.equal(p, base["score.weight"]), "the head did not train"
            changed.add("head")
        elif "original_module" not in name:
            assert torch.equal(p, base[key]), f"{name} changed but is not an adapter or the head"
    assert changed == {"lora", "head"}
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero


def test_head_survives_reload_and_merged_equals_adapter(runs):
    tmp, data = runs
    metrics = json.loads((tmp / "adapter" / "metrics.json").read_text())["metrics"]
    cfg = TrainConfig(
        model="builtin:tiny-qwen3",
        dataset=str(data),
        frac=1.0,
        max_length=96,
        seed=11,
        report_to=["none"],
    )
    tok = load_tokenizer(cfg.model)
    test_pairs = prepare_data(cfg, tok).test_pairs
    adapter = load_scorer(str(tmp / "adapter")).score_pairs(test_pairs)
    merged = load_scorer(str(tmp / "merged")).score_pairs(test_pairs)
    both = np.concatenate([adapter.chosen, adapter.rejected])
    assert both.mean() == pytest.approx(metrics["reward_mean"], abs=1e-5)  # trained head back
    assert np.allclose(adapter.chosen, merged.chosen, atol=1e-4)
    assert np.allclose(adapter.rejected, merged.rejected, atol=1e-4)
    assert (tmp / "merged" / "config.json").is_file()
    assert not (tmp / "merged" / "adapter_config.json").exists()


def test_normalize_uses_the_adapters_own_statistics(runs, tmp_path):
    """An unmerged adapter's config is its base's: --normalize takes the adapter run's own
    held-out mean and std (metrics.json), as the merged folder's config carries them."""
    tmp, _ = runs
    metrics = json.loads((tmp / "adapter" / "metrics.json").read_text())["metrics"]
    scorer = load_scorer(str(tmp / "adapter"))
    assert (scorer.reward_mean, scorer.reward_std) == (
        metrics["reward_mean"],
        metrics["reward_std"],
    )
    merged = json.loads((tmp / "merged" / "config.json").read_text())
    assert load_scorer(str(tmp / "merged")).reward_mean == merged["reward_mean"]
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"prompt": "How do I boil an egg?", "response": "Ten minutes."}))
    outs = {}
    for flag in ([], ["--normalize"]):
        out = tmp_path / f"out{len(flag)}.jsonl"
        argv = [
            "score",
            "--model",
            str(tmp / "adapter"),
            "--input",
            str(rows),
            "--output",
            str(out),
        ]
        assert main([*argv, *flag]) == 0
        outs[bool(flag)] = json.loads(out.read_text())["reward"]
    want = (outs[False] - metrics["reward_mean"]) / metrics["reward_std"]
    assert outs[True] == pytest.approx(want, abs=1e-5)
