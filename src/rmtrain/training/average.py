"""`rmtrain average OUT MODEL [MODEL ...]`: a model folder whose weights are the mean of the
given reward models' (WARM), with their tokenizer, layout and a card that says what it is."""

from __future__ import annotations

import shutil
from pathlib import Path

from rmtrain.modeling.averaging import (
    average_state_dicts,
    check_compatible,
    check_same_tensors,
    load_weights,
)
from rmtrain.training.atomic_save import check_output_dir, claim_output, publish, staging_dir

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model",
)  # fmt: skip


def _card(folders: list[Path], layout: dict) -> str:
    sources = "\n".join(f"- `{f}`" for f in folders)
    return (
        "---\nlibrary_name: transformers\npipeline_tag: text-classification\n"
        "tags: [reward-model, rlhf, rmtrain, warm]\n---\n\n"
        f"# A weight average of {len(folders)} reward models (WARM)\n\n"
        "Each weight is the mean of the same weight in:\n\n"
        f"{sources}\n\n"
        f"Base model `{layout.get('base_model')}`, reward read at "
        f"`{layout.get('reward_position')}` of the `{layout.get('chat_template')}` layout, as "
        "in each source model. The reward "
        "mean and standard deviation of the average are not known until it is scored "
        "(`rmtrain eval`), so `config.json` carries none and `--normalize` is not available.\n\n"
        "## Loading\n\n```python\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(PATH)\n"
        "rm = AutoModelForSequenceClassification.from_pretrained(PATH)\n```\n\n"
        "`rmtrain score` and `rmtrain serve` apply the training layout.\n"
    )


def run_average(output: str, models: list[str], overwrite: bool = False) -> Path:
    from transformers import AutoModelForSequenceClassification

    folders = [Path(m).expanduser() for m in models]
    out = Path(output).expanduser()
    check_output_dir(out, overwrite, inputs=models)
    described = check_compatible(folders)
    states = [load_weights(f) for f in folders]
    check_same_tensors(folders, states)
    claim_output(out, {"average_of": [str(f) for f in folders]}, resume=False)
    model = AutoModelForSequenceClassification.from_pretrained(folders[0])
    model.load_state_dict(average_state_dicts(states), strict=True)
    layout = dict(getattr(model.config, "rmtrain", None) or {})
    layout.update(averaged_from=[f.name for f in folders], max_length=described[0]["max_length"])
    model.config.rmtrain = layout
    for key in ("mean", "std", "reward_mean", "reward_std"):  # the sources', not the average's
        if hasattr(model.config, key):
            delattr(model.config, key)
    stage = staging_dir(out)
    model.save_pretrained(stage)
    for name in TOKENIZER_FILES:
        if (folders[0] / name).is_file():
            shutil.copy2(folders[0] / name, stage / name)
    (stage / "README.md").write_text(_card(folders, layout))
    publish(stage, out)
    print(f"[rmtrain] averaged {len(folders)} models -> {out}")
    return out
