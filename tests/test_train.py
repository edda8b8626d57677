"""End-to-end `rmtrain train` in process on a tiny Qwen3 with the real tokenizer."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rmtrain.builtin import demo_rows
from rmtrain.cli import main
from rmtrain.collate import PairCollator
from rmtrain.data import Pair
from rmtrain.formatting import encode_pairs
from rmtrain.trainer import pair_rewards


def test_writes_every_output(trained):
    out, _ = trained
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "rmtrain_config.yaml",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob(".staging-*"))
    cfg = yaml.safe_load((out / "rmtrain_config.yaml").read_text())
    assert cfg["max_steps"] == 6 and cfg["model"] == "builtin:tiny-qwen3"


def test_metrics_and_counts(trained):
    out, _ = trained
    result = json.loads((out / "metrics.json").read_text())
    data, metrics = result["data"], result["metrics"]
    assert data["rows_read"] == 120
    assert data["train_pairs"] + data["test_pairs"] + data["dropped_total"] == 120
    assert metrics["num_pairs"] == data["test_pairs"]
    assert 24 <= data["test_pairs"] <= 30  # 20% of 120, rounded up to whole prompt groups
    assert metrics["train_steps"] == 6
    assert 0.0 <= metrics["win_rate"] <= 1.0 and -1.0 <= metrics["kendall_tau"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["reward_mean"] == pytest.approx(metrics["reward_mean"])
    assert len(config["id2label"]) == 1 and config["pad_token_id"] == 151643


def test_mlflow_run_recorded(trained):
    out, _ = trained
    metas = list((out / "mlruns").glob("*/*/meta.yaml"))
    assert metas, "no MLflow run under the output folder"
    run_dir = metas[0].parent
    assert (run_dir / "metrics" / "final_win_rate").is_file()
    assert (run_dir / "metrics" / "loss").is_file()
    assert (run_dir / "params" / "rmtrain.model").read_text() == "builtin:tiny-qwen3"


def test_reloaded_model_gives_rmtrain_rewards(trained):
    out, data = trained
    tok = AutoTokenizer.from_pretrained(out)
    stock = AutoModelForSequenceClassification.from_pretrained(out).eval()
    pairs = [
        Pair(r["prompt"], r["chosen"], r["rejected"], "g", i)
        for i, r in enumerate(demo_rows(6, seed=9))
    ]
    feats, _, _ = encode_pairs(tok, pairs, 96, chat=True)
    batch = PairCollator(tok.pad_token_id)(feats)
    with torch.no_grad():
        ours = torch.cat(pair_rewards(stock, batch))
        theirs = stock(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(ours, theirs.squeeze(-1), atol=1e-5)


def test_refuses_to_overwrite_a_model(trained, capsys):
    out, data = trained
    code = main(
        [
            "train",
            "--model",
            "builtin:tiny-qwen3",
            "--dataset",
            str(data),
            "--output",
            str(out),
            "--report-to",
            "none",
        ]
    )
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (Path(out) / "config.json").is_file()
