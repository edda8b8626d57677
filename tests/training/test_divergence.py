"""A run that does not learn is never saved as a success: collapse stops it, and a stop names
only a checkpoint that is actually good."""

import json
import shutil
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

from rmtrain.cli import main
from rmtrain.training.checkpoints import good_checkpoint, non_finite
from tests.conftest import tiny_train_args, write_demo


def test_diverged_run_stops_as_collapsed_and_saves_nothing(tmp_path, capsys):
    data = write_demo(tmp_path / "d.jsonl", 80, seed=1)
    out = tmp_path / "out"
    args = ["--lr", "1e6", "--max-steps", "12", "--eval-steps", "0", "--logging-steps", "1"]
    code = main(tiny_train_args(data, out, *args))
    err = capsys.readouterr().err
    assert code == 2 and "training collapsed" in err and "lower --lr" in err
    assert not (out / "config.json").exists() and not (out / "metrics.json").exists()


def _checkpoint(root, step, weight, losses):
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    save_file({"w": torch.full((2, 2), weight)}, str(ckpt / "model.safetensors"))
    history = [{"loss": loss, "step": i + 1} for i, loss in enumerate(losses)]
    (ckpt / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return ckpt


def test_only_sane_checkpoints_are_called_good(tmp_path):
    root = tmp_path / "checkpoints"
    good = _checkpoint(root, 2, 0.5, [0.69, 0.6])
    _checkpoint(root, 4, 1e30, [0.69, 0.6, 0.55])  # finite but diverged weights
    _checkpoint(root, 6, 0.5, [0.69, 0.6, 9.0])  # loss far above the start
    _checkpoint(root, 8, float("nan"), [0.69])
    assert good_checkpoint(root) == good
    args = SimpleNamespace(output_dir=str(root), learning_rate=1e-3)
    assert f"the last good checkpoint is {good}" in str(non_finite("loss", 9, args))
    shutil.rmtree(good)
    assert good_checkpoint(root) is None
    assert "there is no good checkpoint" in str(non_finite("loss", 9, args))
