"""The speed door: `--speed auto` gives the rewards and gradients of `--speed off` (the plain
transformers path) in every batch layout, and it never changes a model it did not prepare."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rmtrain import speed
from tests.helpers import FEATURES, LAYOUTS, SHARED, loss_and_grads, make_model, tiny_gpt2

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_speed_auto_equals_speed_off(arch, layout):
    plain, pad = tiny_gpt2() if arch == "gpt2" else make_model(arch, "sdpa")
    fast = copy.deepcopy(plain)
    handle = speed.install(fast, speed.SpeedOptions(training=True))
    assert handle is not None and speed.handle_of(plain) is None
    if arch != "gpt2":  # Llama-style decoders: every rmtrain path is taken
        assert handle.lean.changed > 0 and handle.attention_was == "sdpa"
    batch = LAYOUTS[layout](pad)(FEATURES + SHARED)
    want, got = loss_and_grads(plain, batch), loss_and_grads(fast, batch)
    for a, b in zip(want[:3], got[:3], strict=True):
        assert (a - b).abs().max().item() < 1e-4, (a, b)
    assert want[3].keys() == got[3].keys()
    assert max((want[3][k] - got[3][k]).abs().max().item() for k in want[3]) < 1e-4


def test_remove_gives_the_stock_model_back():
    model, pad = make_model("qwen3", "sdpa")
    reference = copy.deepcopy(model)
    handle = speed.install(model, speed.SpeedOptions(training=True))
    handle.remove()
    assert speed.handle_of(model) is None
    assert model.config._attn_implementation == "sdpa"
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert not any(m._forward_pre_hooks for m in model.modules())
    batch = LAYOUTS["padding_free"](pad)(FEATURES)
    want, got = loss_and_grads(reference, batch), loss_and_grads(model, batch)
    assert torch.equal(want[2], got[2])


def test_speed_off_installs_nothing():
    model, _ = make_model("llama", "sdpa")
    assert speed.install(model, speed.SpeedOptions(enabled=False)) is None
    assert speed.handle_of(model) is None and model.config._attn_implementation == "sdpa"
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_train_with_speed_auto_and_off_logs_the_same_losses(tmp_path):
    """End to end through the CLI at a learning rate that moves the model."""
    from rmtrain.cli import main
    from tests.helpers import tiny_train_args, write_demo

    data = write_demo(tmp_path / "prefs.jsonl", 60, seed=2)
    logs = {}
    for mode in ("auto", "off"):
        out = tmp_path / mode
        extra = ("--lr", "1e-3", "--max-steps", "4", "--logging-steps", "1", "--speed", mode)
        assert main(tiny_train_args(data, out, *extra)) == 0
        logs[mode] = json.loads((out / "metrics.json").read_text())
    steps = [[h["loss"] for h in logs[m]["log_history"] if "loss" in h] for m in ("auto", "off")]
    assert len(steps[0]) == 4 and steps[0][0] != steps[0][-1]
    assert steps[0] == pytest.approx(steps[1], abs=1e-4)
    for key in ("win_rate", "loss", "reward_mean"):
        assert logs["auto"]["metrics"][key] == pytest.approx(logs["off"]["metrics"][key], abs=1e-4)


PROBE = r"""
import json, sys
import torch
from transformers import AutoModelForSequenceClassification
folder, out, train_first = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if train_first:
    from rmtrain.cli import main
    assert main(json.loads(sys.argv[4])) == 0
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.qwen3 import modeling_qwen3
stock_rope = modeling_qwen3.apply_rotary_pos_emb.__module__ == modeling_qwen3.__name__
stock_sdpa = AttentionInterface._global_mapping["sdpa"] is sdpa_attention_forward
torch.manual_seed(0)
model = AutoModelForSequenceClassification.from_pretrained(folder).train()
ids = torch.randint(1, 100, (2, 12))
mask = torch.ones(2, 12, dtype=torch.long)
mask[1, 8:] = 0
packed = torch.ones(1, 1, 12, 12, dtype=torch.bool).tril()
packed[..., 6:, :6] = False
outputs = []
for kwargs in ({"attention_mask": mask}, {"attention_mask": packed, "position_ids": None}):
    model.zero_grad()
    rows = ids[:1] if kwargs["attention_mask"].dim() == 4 else ids
    logits = model(input_ids=rows, **kwargs).logits
    logits.sum().backward()
    grads = [p.grad.flatten()[:50].tolist() for p in model.parameters() if p.grad is not None]
    outputs.append({"logits": logits.flatten().tolist(), "grads": grads})
json.dump({"outputs": outputs, "stock_rope": stock_rope, "stock_sdpa": stock_sdpa}, open(out, "w"))
"""


def test_a_stock_model_after_rmtrain_train_is_bit_identical_to_a_fresh_process(tmp_path):
    """No process-wide patch: in the process that trained with every speed-up on, a freshly
    loaded stock Qwen3 (the architecture rmtrain's lean and RoPE paths change) gives
    bit-identical logits and gradients to one loaded in a fresh process."""
    from rmtrain.data.builtin import tiny_qwen3_config
    from rmtrain.modeling.loading import load_tokenizer
    from tests.helpers import tiny_train_args, write_demo

    tok = load_tokenizer("builtin:tiny-qwen3")
    from transformers import Qwen3ForSequenceClassification

    torch.manual_seed(1)
    config = tiny_qwen3_config(len(tok), tok.pad_token_id)
    Qwen3ForSequenceClassification(config).save_pretrained(tmp_path / "stock")
    data = write_demo(tmp_path / "prefs.jsonl", 40, seed=4)
    argv = tiny_train_args(data, tmp_path / "run", "--max-steps", "2")
    results = []
    for train_first in ("1", "0"):
        out = tmp_path / f"probe{train_first}.json"
        cmd = [sys.executable, "-c", PROBE, str(tmp_path / "stock"), str(out), train_first]
        subprocess.run([*cmd, json.dumps(argv)], check=True, cwd=ROOT, timeout=600)
        results.append(json.loads(out.read_text()))
    trained, fresh = results
    assert trained["stock_rope"] and trained["stock_sdpa"]
    assert trained["outputs"] == fresh["outputs"]  # exact floats: bit-identical
