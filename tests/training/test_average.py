"""`rmtrain average`: the mean of the weights, loadable by the stock class, scored as trained;
incompatible models refused with one line."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rmtrain.cli import main
from tests.helpers import tiny_train_args, write_demo


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warm")
    data = write_demo(tmp / "d.jsonl", 60, seed=1)
    out = []
    for lr in ("1e-3", "3e-3"):  # one base (same seed), two fine-tunings
        folder = tmp / f"rm_{lr}"
        assert main(tiny_train_args(data, folder, "--max-steps", "3", "--lr", lr)) == 0
        out.append(folder)
    return tmp, data, out


def test_average_is_the_mean_and_loads_with_the_stock_class(two_models):
    from transformers import AutoModelForSequenceClassification

    from rmtrain.serving.scorer import load_scorer, score_records

    tmp, _, (a, b) = two_models
    avg = tmp / "avg"
    assert main(["average", str(avg), str(a), str(b)]) == 0
    wa, wb, got = (load_file(str(f / "model.safetensors")) for f in (a, b, avg))
    assert wa.keys() == got.keys()
    for key in got:
        assert torch.allclose(got[key], (wa[key] + wb[key]) / 2, atol=1e-7, rtol=0), key
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)  # the sources differ
    config = json.loads((avg / "config.json").read_text())
    assert config["rmtrain"]["averaged_from"] == [a.name, b.name]
    assert "mean" not in config and "reward_mean" not in config
    assert "WARM" in (avg / "README.md").read_text()
    stock = AutoModelForSequenceClassification.from_pretrained(avg).eval()
    scorer = load_scorer(str(avg))
    (row,) = score_records(scorer, [{"prompt": "Hi?", "response": "Hello, how can I help?"}])
    ids = torch.tensor([scorer.encode_texts(["Hi?"], ["Hello, how can I help?"])[0][0]])
    with torch.no_grad():
        logits = stock(input_ids=ids).logits[0, 0].item()
    assert row["reward"] == pytest.approx(logits, abs=1e-5)


def test_incompatible_models_are_refused(two_models, capsys):
    tmp, data, (a, _) = two_models
    other = tmp / "other"
    args = ["--max-steps", "1", "--reward-position", "template_end"]
    assert main(tiny_train_args(data, other, *args)) == 0
    capsys.readouterr()
    assert main(["average", str(tmp / "x"), str(a), str(other)]) == 2
    err = capsys.readouterr().err
    assert "has another layout or base model" in err and "reward_position" in err
    assert not (tmp / "x" / "config.json").exists()
    assert main(["average", str(tmp / "y"), str(a)]) == 2
    assert "at least two models" in capsys.readouterr().err
    assert main(["average", str(a), str(a), str(other)]) == 2  # the output is an input
    assert "is the input" in capsys.readouterr().err
