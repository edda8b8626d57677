"""Data-set mixing, per-data-set evaluation, the auxiliary LM loss, and a flat-memory converter."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from rmtrain.cli import main
from rmtrain.data.pairs import Pair
from rmtrain.data.splits import mix_weighted, parse_dataset_spec
from rmtrain.errors import RmtrainError
from rmtrain.modeling.losses import lm_loss
from tests.helpers import tiny_train_args, write_demo

ROOT = Path(__file__).resolve().parents[2]


def test_parse_dataset_spec():
    assert parse_dataset_spec("a.jsonl:0.7") == ("a.jsonl", 0.7)
    assert parse_dataset_spec("org/name") == ("org/name", None)
    assert parse_dataset_spec("/data/x.jsonl") == ("/data/x.jsonl", None)
    assert parse_dataset_spec("c:/x.jsonl") == ("c:/x.jsonl", None)
    with pytest.raises(RmtrainError):
        parse_dataset_spec("a.jsonl:0")


def test_mixing_weights_are_honoured():
    parts = {k: [Pair("p", "c", "r", f"{k}{i}", i) for i in range(1000)] for k in "ab"}
    mixed = mix_weighted(parts, {"a": 0.7, "b": 0.3}, seed=0)
    total = len(mixed["a"]) + len(mixed["b"])
    assert abs(len(mixed["a"]) / total - 0.7) < 0.02  # T = min(1000/0.7, 1000/0.3) = 1428
    assert (len(mixed["a"]), len(mixed["b"])) == (1000, 429)
    assert mixed == mix_weighted(parts, {"a": 0.7, "b": 0.3}, seed=0)  # deterministic
    assert len({p.group for p in mixed["b"]}) == 429  # no pair repeated


def test_lm_loss_by_hand():
    # two positions; the second token (id 1) is marked, predicted from position 0's hidden state
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    weight = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # logits at position 0: [2, 0]
    ids = torch.tensor([[0, 1]])
    mask = torch.tensor([[False, True]])
    # cross-entropy of target 1 with logits [2, 0] = log(1 + e^2)
    assert lm_loss(hidden, weight, ids, mask).item() == pytest.approx(2.126928, abs=1e-5)


def test_two_weighted_datasets_are_reported_separately(tmp_path):
    a = write_demo(tmp_path / "a.jsonl", 80, seed=1)
    b = write_demo(tmp_path / "b.jsonl", 40, seed=2)
    out = tmp_path / "out"
    code = main(
        [
            "train",
            "--model",
            "builtin:tiny-qwen3",
            "--dataset",
            f"{a}:0.5",
            "--dataset",
            f"{b}:0.5",
            "--output",
            str(out),
            "--frac",
            "1.0",
            "--max-length",
            "96",
            "--max-steps",
            "3",
            "--batch",
            "4",
            "--report-to",
            "none",
        ]
    )
    assert code == 0
    result = json.loads((out / "metrics.json").read_text())
    per = result["per_dataset"]
    assert list(per) == [str(a), str(b)]
    counts = result["data_per_dataset"]
    # b has 40 rows -> 32 train pairs (split by prompt, about 80%); a contributes as many
    train_a, train_b = counts[str(a)]["train_pairs"], counts[str(b)]["train_pairs"]
    assert train_a == train_b
    assert sum(p["num_pairs"] for p in per.values()) == result["metrics"]["num_pairs"]
    report = json.loads((out / "eval_report" / "report.json").read_text())
    assert set(report["datasets"]) == {str(a), str(b)}


def test_lm_loss_is_logged_falls_and_is_not_saved(tmp_path):
    data = write_demo(tmp_path / "d.jsonl", 64, seed=3)
    out = tmp_path / "out"
    args = ["--lr", "3e-3", "--max-steps", "8", "--logging-steps", "1", "--lm-loss-coef", "0.5"]
    code = main(tiny_train_args(data, out, *args))
    assert code == 0
    logs = [h for h in json.loads((out / "metrics.json").read_text())["log_history"] if "loss" in h]
    assert all("rm_loss" in h and "lm_loss" in h for h in logs)
    assert logs[-1]["lm_loss"] < logs[0]["lm_loss"] - 0.5  # starts near ln(151669) = 11.9
    assert logs[-1]["rm_loss"] < logs[0]["rm_loss"]
    assert not [k for k in load_file(out / "model.safetensors") if "lm_head" in k]
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1


def _synthetic_dump(path: Path, questions: int) -> None:
    body = "&lt;p&gt;" + "word " * 60 + "&lt;/p&gt;"
    with path.open("w") as fh:
        fh.write('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n')
        pid = 0
        for q in range(questions):
            qid = pid = pid + 1
            fh.write(f'  <row Id="{qid}" PostTypeId="1" Title="Q{q}" Body="{body}" Score="1" />\n')
            for s in range(3):
                pid += 1
                fh.write(
                    f'  <row Id="{pid}" PostTypeId="2" ParentId="{qid}" Score="{s * 3}" '
                    f'Body="{body}" />\n'
                )
        fh.write("</posts>\n")


def _peak_rss_mb(xml: Path, out: Path) -> float:
    code = (
        "import resource, sys; from rmtrain.data.stackexchange import prepare_stackexchange;"
        "prepare_stackexchange(sys.argv[1], sys.argv[2]);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(xml), str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return float(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_converter_memory_stays_flat(tmp_path):
    small, big = tmp_path / "small.xml", tmp_path / "big.xml"
    _synthetic_dump(small, 1_500)
    _synthetic_dump(big, 33_000)
    assert big.stat().st_size > 50e6
    rss_small = _peak_rss_mb(small, tmp_path / "s.jsonl")
    rss_big = _peak_rss_mb(big, tmp_path / "b.jsonl")
    assert sum(1 for _ in (tmp_path / "b.jsonl").open()) == 33_000 * 3
    assert rss_big < rss_small + 40, (rss_small, rss_big)  # 20x the data, flat memory


def test_a_prompt_in_two_datasets_is_held_out_in_both_or_neither(tmp_path, qwen_tokenizer):
    from rmtrain.config import build_config
    from rmtrain.training.data_setup import prepare_data

    def rows(prompts):
        return [
            {"prompt": f"question {i}?", "chosen": f"good answer {i} {k}", "rejected": f"bad {k}"}
            for i in prompts
            for k in range(2)
        ]

    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in rows(range(0, 40))))
    b.write_text("".join(json.dumps(r) + "\n" for r in rows(range(20, 60))))
    cfg = build_config(
        {"model": "builtin:tiny-qwen3", "dataset": [str(a), str(b)], "frac": 1.0, "seed": 3}
    )
    data = prepare_data(cfg, qwen_tokenizer)
    held = Counter(p.prompt for p in data.test_pairs)
    # every pair of a held-out prompt is held out, in both data sets (2 rows per file)
    shared = {f"question {i}?" for i in range(20, 40)}
    assert held and all(n == (4 if q in shared else 2) for q, n in held.items()), held
    assert data.counts.train_pairs + data.counts.test_pairs == 160
    assert data.counts.shared_prompts == 20
    assert data.counts.to_dict()["prompts_in_several_datasets"] == 20
    for source in (str(a), str(b)):  # each data set still holds out about test_size
        assert 0.1 <= data.per_dataset[source].test_pairs / 80 <= 0.35


def _accounted(c: dict) -> int:
    """Rows read = malformed + dropped + train + test + left out by the mixing weights."""
    return (
        c["malformed_total"]
        + c["dropped_total"]
        + c["train_pairs"]
        + c["test_pairs"]
        + c["not_mixed"]
    )


def test_weighted_mixing_accounts_for_every_row(tmp_path, capsys):
    a = write_demo(tmp_path / "a.jsonl", 80, seed=1)
    b = write_demo(tmp_path / "b.jsonl", 30, seed=2)
    with a.open("a") as fh:  # one malformed row among a's
        fh.write(json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}) + "\n")
    out = tmp_path / "out"
    args = tiny_train_args(a, out, "--max-steps", "1")
    args[args.index(str(a))] = f"{a}:0.5"
    code = main([*args, "--dataset", f"{b}:0.5"])
    assert code == 0
    console = capsys.readouterr().out
    totals = json.loads((out / "metrics.json").read_text())["data"]
    report = json.loads((out / "data_report.json").read_text())
    per = report["datasets"]
    assert totals["rows_read"] == 111 and totals["malformed_total"] == 1
    # b's 30 rows set the size: a gives as many training pairs as b, the rest is left out
    assert per[str(a)]["train_pairs"] == per[str(b)]["train_pairs"]
    assert per[str(a)]["not_mixed"] > 0 and per[str(b)]["not_mixed"] == 0
    assert totals["not_mixed"] == per[str(a)]["not_mixed"]
    assert _accounted(totals) == 111
    for name, rows in ((str(a), 81), (str(b), 30)):
        c = per[name]
        assert rows == c["rows_read"] == c["rows_in_source"]
        assert (
            c["bad_rows"]
            + sum(c["dropped"].values())
            - c["dropped"].get("too_long", 0)
            + (c["train_pairs"] + c["test_pairs"] + c["not_mixed"])
            == rows
        )
    assert "using 81 of 81 rows (--frac 1)" in console
    assert f"{totals['not_mixed']} left out by the mixing weights" in console


def test_frac_defaults_to_all_rows_except_on_the_original_hub_set(tmp_path, capsys):
    from rmtrain.config import TrainConfig
    from rmtrain.data.splits import resolve_frac

    assert resolve_frac(None, TrainConfig().dataset[0]) == 0.01  # the original recipe
    assert resolve_frac(None, "prefs.jsonl") == 1.0
    assert resolve_frac(0.3, TrainConfig().dataset[0]) == 0.3
    data = write_demo(tmp_path / "d.jsonl", 40, seed=4)
    args = tiny_train_args(data, tmp_path / "out", "--max-steps", "1")
    del args[args.index("--frac") : args.index("--frac") + 2]  # no --frac: all 40 rows
    assert main(args) == 0
    assert "using 40 of 40 rows (--frac 1)" in capsys.readouterr().out
    totals = json.loads((tmp_path / "out" / "metrics.json").read_text())["data"]
    assert totals["rows_read"] == totals["rows_in_source"] == 40
    half = [*tiny_train_args(data, tmp_path / "half", "--max-steps", "1"), "--frac", "0.5"]
    assert main(half) == 0
    assert "using 20 of 40 rows (--frac 0.5)" in capsys.readouterr().out
