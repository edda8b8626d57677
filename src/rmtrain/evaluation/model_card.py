"""The model card (`README.md` in the model folder): what it is, what it saw, how to load it."""

from __future__ import annotations

import shlex
import sys
from typing import Any


def training_command() -> str:
    """The command line that started this process, quoted so it can be pasted back."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("rmtrain"):
        argv[0] = "rmtrain"
    return " ".join(shlex.quote(a) for a in argv)


def render_model_card(cfg: dict[str, Any], result: dict[str, Any], report: str | None) -> str:
    m, d = result["metrics"], result["data"]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags: [reward-model, rlhf, rmtrain]",
        "---",
        "",
        f"# Reward model trained with rmtrain from `{cfg['model']}`",
        "",
        *(
            [f"> **Diverged: do not use.** {result['diverged']}. Kept for inspection only.", ""]
            if result.get("diverged")
            else []
        ),
        "A pairwise (Bradley-Terry) reward model: a sequence-classification head with one label.",
        "Higher scores mean more preferred responses.",
        "",
        "## Data",
        "",
        f"- data set: `{cfg['dataset']}` (seed {cfg['seed']}, held-out share "
        f"{cfg['test_size']}, split by prompt)",
        f"- using {d['rows_read']} of {d.get('rows_in_source', d['rows_read'])} rows (--frac "
        f"{cfg['frac'] if cfg['frac'] is not None else d.get('frac', 1.0)}), malformed "
        f"{d['malformed_total']} {d['malformed']}, truncated {d['truncated']}, dropped "
        f"{d['dropped_total']} {d['dropped']}, left out by mixing weights {d.get('not_mixed', 0)}",
        f"- {d['train_pairs']} training pairs, {d['test_pairs']} held-out pairs, "
        f"max length {cfg['max_length']} tokens",
        "",
        "## Held-out metrics",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in (
        "win_rate",
        "length_controlled_win_rate",
        "kendall_tau",
        "loss",
        "margin_mean",
        "reward_mean",
        "reward_std",
        "reward_length_spearman",
    ):
        if key in m:
            lines.append(f"| {key} | {fmt(m[key])} |")
    if report:
        lines += ["", f"Full report with baselines and plots: `{report}/report.md`."]
    lines += [
        "",
        "## Training command",
        "",
        "```bash",
        training_command(),
        "```",
        "",
        "## Loading",
        "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(PATH)",
        "rm = AutoModelForSequenceClassification.from_pretrained(PATH)",
        "```",
        "",
        "Format text as in training: the tokenizer's chat template with the prompt as the user",
        f"turn and the response as the assistant turn ({cfg['chat_template']} layout). Rewards",
        "can be normalised with `reward_mean` / `reward_std` from `config.json`. `rmtrain score`",
        "and `rmtrain serve` apply exactly the training layout.",
        "",
    ]
    return "\n".join(lines)
