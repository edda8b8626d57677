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


METRICS = {
    "win_rate": "share of held-out pairs whose chosen answer gets the higher reward",
    "length_controlled_win_rate": "mean of the win rates on pairs whose chosen answer is the "
    "shorter and the longer one (0.5 for a model that only prefers a length)",
    "kendall_tau": "per-prompt rank agreement of rewards with the preferences, averaged",
    "loss": "Bradley-Terry loss on the held-out pairs (ln 2 = 0.693 for a model that knows "
    "nothing)",
    "margin_mean": "mean reward of the chosen answer minus that of the rejected one",
    "reward_mean": "mean reward over every held-out answer (config.json: reward_mean, mean)",
    "reward_std": "standard deviation of those rewards (config.json: reward_std, std)",
    "reward_length_spearman": "rank correlation of reward and answer length (near 0: the "
    "reward does not follow length)",
}


def _data_lines(cfg: dict[str, Any], d: dict[str, Any]) -> list[str]:
    def reasons(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"

    frac = cfg["frac"] if cfg["frac"] is not None else d.get("frac", 1.0)
    names = ", ".join(f"`{x}`" for x in cfg["dataset"])
    return [
        f"- data: {names} (seed {cfg['seed']}; {cfg['test_size']:.0%} of the prompts held out)",
        f"- rows: {d['rows_read']} of {d.get('rows_in_source', d['rows_read'])} used "
        f"(--frac {frac:g}); malformed: {reasons(d['malformed'])}; dropped: "
        f"{reasons(d['dropped'])}; {d['truncated']} pairs cut to {cfg['max_length']} tokens"
        + (f"; {d['not_mixed']} left out by the mixing weights" if d.get("not_mixed") else ""),
        f"- {d['train_pairs']} training pairs"
        + (f" (+{d['augmented_total']} augmented)" if d.get("augmented_total") else "")
        + f", {d['test_pairs']} held-out pairs",
    ]


def _metric_lines(m: dict[str, Any]) -> list[str]:
    from rmtrain.evaluation.metrics import wilson_interval

    lines = ["| metric | value | meaning |", "|---|---|---|"]
    for key, meaning in METRICS.items():
        if key not in m:
            continue
        value = f"{m[key]:.4f}" if isinstance(m[key], float) else str(m[key])
        if key == "win_rate" and m.get("num_pairs"):
            lo, hi = wilson_interval(round(m[key] * m["num_pairs"]), m["num_pairs"])
            value += f" (95% {lo:.3f}-{hi:.3f}, {m['num_pairs']} pairs)"
        lines.append(f"| {key} | {value} | {meaning} |")
    if "baseline_prefer_longer" in m:
        lines += [
            "",
            f"Baselines on the same pairs: chance 0.5, prefer the longer answer "
            f"{m['baseline_prefer_longer']:.4f}, prefer the shorter "
            f"{m['baseline_prefer_shorter']:.4f}.",
        ]
    return lines


def _loading_lines(cfg: dict[str, Any], adapter: bool) -> list[str]:
    if adapter:
        return [
            "This folder holds a LoRA adapter, not merged weights (`--merge-lora` was off). "
            "`rmtrain score` and `rmtrain serve` load it; with PEFT:",
            "",
            "```python",
            "from peft import AutoPeftModelForSequenceClassification",
            "rm = AutoPeftModelForSequenceClassification.from_pretrained(PATH)  # needs the base",
            "```",
            "",
            f"The base model `{cfg['model']}` must be reachable from where it is loaded.",
        ]
    chat = cfg["chat_template"] != "plain"
    text = (
        'tok.apply_chat_template([{"role": "user", "content": prompt}, '
        '{"role": "assistant", "content": response}], tokenize=False)'
        if chat
        else 'prompt + "\\n\\n" + response + tok.eos_token'
    )
    return [
        "```python",
        "import torch",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(PATH)",
        "rm = AutoModelForSequenceClassification.from_pretrained(PATH).eval()",
        'prompt, response = "How do I boil an egg?", "Simmer it for nine minutes."',
        f"text = {text}",
        'batch = tok(text, return_tensors="pt", add_special_tokens=False)',
        "with torch.no_grad():",
        "    reward = rm(**batch).logits[:, 0].item()",
        "```",
        "",
        "The reward is read at the end-of-turn token, as in training. The stock head reads the "
        "last token that is not padding, so this folder's pad token is the one the template "
        "writes after that token (a newline): the head skips it and reads the end-of-turn "
        "token. `rmtrain score` and `rmtrain serve` apply exactly the training layout; "
        "`reward_mean` / `reward_std` in `config.json` normalise rewards.",
    ]


def render_model_card(
    cfg: dict[str, Any], result: dict[str, Any], report: str | None, adapter: bool = False
) -> str:
    """The card: what the model is, the data it saw, its held-out numbers explained, the
    command that trained it, and how to get a reward from the folder."""
    m, d = result["metrics"], result["data"]
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
        *_data_lines(cfg, d),
        "",
        "## Held-out metrics",
        "",
        *_metric_lines(m),
    ]
    if report:
        lines += ["", f"Full report with plots (and probes, if run): `{report}/report.md`."]
    lines += ["", "## Training command", "", "```bash", training_command(), "```", ""]
    lines += ["## Getting a reward", "", *_loading_lines(cfg, adapter), ""]
    return "\n".join(lines)


def with_benchmark(card: str, title: str, rows: dict[str, float], note: str) -> str:
    """`card` with a `## <title>` section of scores (in %), replacing that section when the
    card has it, else placed before the training command."""
    body = [f"## {title}", "", note, "", "| | score (%) |", "|---|---:|"]
    body += [f"| {k} | {100 * v:.1f} |" for k, v in rows.items()]
    section = "\n".join(body) + "\n"
    lines = card.splitlines(keepends=True)
    heads = [i for i, line in enumerate(lines) if line.startswith("## ")]
    start = next((i for i in heads if lines[i].rstrip("\n") == f"## {title}"), None)
    if start is not None:
        end = next((i for i in heads if i > start), len(lines))
        return "".join(lines[:start]) + section + "\n" + "".join(lines[end:])
    where = next((i for i in heads if lines[i].startswith("## Training command")), len(lines))
    return "".join(lines[:where]) + section + "\n" + "".join(lines[where:])
