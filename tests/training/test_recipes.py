"""Each shipped recipe trains end to end (on the tiny model and a local file, one step), with
its own training settings in the saved config."""

from pathlib import Path

import pytest
import yaml

from rmtrain.cli import main
from rmtrain.config import flatten_groups
from tests.helpers import write_demo

RECIPES = sorted(
    p
    for p in (Path(__file__).resolve().parents[2] / "configs" / "recipes").glob("*.yaml")
    if not p.name.startswith("hpo_space")
)
KEPT = ("lr", "lr_scheduler", "warmup_ratio", "head_lr_multiplier", "lm_loss_coef", "seed")


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_trains_with_its_settings(recipe, tmp_path):
    data = write_demo(tmp_path / "d.jsonl", 40, seed=4)
    out = tmp_path / "out"
    small = ["--model", "builtin:tiny-qwen3", "--dataset", str(data), "--output", str(out)]
    small += ["--max-steps", "1", "--max-length", "96", "--batch", "4", "--grad-accum", "1"]
    small += ["--frac", "1.0", "--eval-steps", "0", "--report-to", "none"]
    assert main(["train", "--config", str(recipe), *small]) == 0
    want = flatten_groups(yaml.safe_load(recipe.read_text()))
    saved = flatten_groups(yaml.safe_load((out / "rmtrain_config.yaml").read_text()))
    assert {k: saved[k] for k in KEPT if k in want} == {k: want[k] for k in KEPT if k in want}
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
