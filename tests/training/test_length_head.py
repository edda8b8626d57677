"""`--length-head`: a second head trained beside the value head, never saved: the folder is the
same standard checkpoint a plain run writes, and rewards read it as every consumer does."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rmtrain.cli import main
from tests.helpers import tiny_train_args, write_demo


def test_length_head_trains_and_the_folder_is_a_plain_checkpoint(tmp_path):
    from transformers import AutoModelForSequenceClassification

    data = write_demo(tmp_path / "d.jsonl", 60, seed=1)
    args = ["--max-steps", "4", "--lr", "1e-3", "--logging-steps", "1"]
    assert main(tiny_train_args(data, tmp_path / "plain", *args)) == 0
    assert main(tiny_train_args(data, tmp_path / "odin", *args, "--length-head")) == 0
    plain, odin = (load_file(str(tmp_path / f / "model.safetensors")) for f in ("plain", "odin"))
    assert plain.keys() == odin.keys()
    assert all(plain[k].shape == odin[k].shape for k in plain)
    assert any(not torch.equal(plain[k], odin[k]) for k in plain)  # trained differently
    configs = [json.loads((tmp_path / f / "config.json").read_text()) for f in ("plain", "odin")]
    assert configs[0].keys() == configs[1].keys()
    losses = [
        [h["loss"] for h in json.loads((tmp_path / f / "metrics.json").read_text())["log_history"]
         if "loss" in h]
        for f in ("plain", "odin")
    ]  # fmt: skip
    assert losses[1][0] > losses[0][0] + 0.3  # the disentangling terms are in the loss
    _, info = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "odin", output_loading_info=True
    )
    assert not info["unexpected_keys"] and not info["missing_keys"]


def test_length_head_is_refused_with_lora(tmp_path, capsys):
    data = write_demo(tmp_path / "d.jsonl", 20, seed=1)
    assert main(tiny_train_args(data, tmp_path / "o", "--length-head", "--lora-r", "4")) == 2
    assert "--length-head trains a second head" in capsys.readouterr().err


@pytest.mark.parametrize("packing", ["none", "prefix_sharing"])
def test_length_head_reads_the_value_heads_inputs(qwen_tokenizer, packing):
    from rmtrain.batching.collate import make_collator
    from rmtrain.modeling.rewards import attach_length_head, pair_rewards, value_head
    from tests.helpers import FEATURES, tiny_qwen3

    model = tiny_qwen3(qwen_tokenizer)
    attach_length_head(model, seed=0)
    batch = make_collator(packing, qwen_tokenizer.pad_token_id, 64)(FEATURES)
    taps: list = []
    chosen, rejected = pair_rewards(model, batch, head_inputs=taps)
    assert taps[0].shape == (2 * len(FEATURES), model.config.hidden_size)
    # the value head applied to the tapped inputs gives back the rewards read
    again = value_head(model)(taps[0]).squeeze(-1)
    assert again.tolist() == pytest.approx(torch.cat([chosen, rejected]).tolist(), abs=1e-5)
    want = [len(f["chosen_ids"]) for f in FEATURES] + [len(f["rejected_ids"]) for f in FEATURES]
    assert batch["lengths"].tolist() == want
