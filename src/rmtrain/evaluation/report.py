"""Evaluation report rendering: headless matplotlib plots and a Markdown summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rmtrain.evaluation.metrics import wilson_interval


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def length_buckets(chosen_len: np.ndarray, rejected_len: np.ndarray, n: int = 5) -> np.ndarray:
    """Bucket of each pair by its mean response length (quantile edges)."""
    mean_len = (chosen_len + rejected_len) / 2
    edges = np.unique(np.quantile(mean_len, np.linspace(0, 1, n + 1)))
    return np.clip(np.searchsorted(edges, mean_len, side="right") - 1, 0, max(len(edges) - 2, 0))


def plot_dataset(res: Any, output: Path, prefix: str, title: str) -> list[str]:
    """Three PNGs: reward histograms, accuracy by length bucket, margin vs length difference."""
    plt = _plt()
    names = [
        f"{prefix}_rewards_hist.png",
        f"{prefix}_accuracy_by_length.png",
        f"{prefix}_margin_vs_length.png",
    ]

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.histogram_bin_edges(np.concatenate([res.chosen, res.rejected]), bins=30)
    ax.hist(res.chosen, bins=bins, alpha=0.6, label="chosen")
    ax.hist(res.rejected, bins=bins, alpha=0.6, label="rejected")
    ax.set(xlabel="reward", ylabel="pairs", title=f"Rewards: {title}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / names[0], dpi=100)
    plt.close(fig)

    bucket = length_buckets(res.chosen_len, res.rejected_len)
    ks = sorted(set(bucket.tolist()))
    wins = [int(np.sum(res.chosen[bucket == k] > res.rejected[bucket == k])) for k in ks]
    sizes = [int(np.sum(bucket == k)) for k in ks]
    model_acc = [w / n for w, n in zip(wins, sizes, strict=True)]
    ci = [wilson_interval(w, n) for w, n in zip(wins, sizes, strict=True)]
    err = np.clip(
        np.array(
            [
                [a - lo for a, (lo, _) in zip(model_acc, ci, strict=True)],
                [hi - a for a, (_, hi) in zip(model_acc, ci, strict=True)],
            ]
        ),
        0,
        None,
    )  # Wilson bounds at 0 or 1 can sit a rounding error past the estimate
    c, r = res.chosen_len, res.rejected_len
    longer = np.where(c > r, 1.0, np.where(c == r, 0.5, 0.0))
    base_acc = [float(np.mean(longer[bucket == k])) for k in ks]
    labels = [
        f"{int(np.min(((c + r) / 2)[bucket == k]))}+\nn={n}"
        for k, n in zip(ks, sizes, strict=False)
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(ks))
    ax.bar(x - 0.2, model_acc, width=0.4, yerr=err, capsize=3, label="reward model (95% CI)")
    ax.bar(x + 0.2, base_acc, width=0.4, label="prefer longer")
    ax.axhline(0.5, color="grey", linestyle="--", label="chance")
    ax.set_xticks(x, labels)
    ax.set(
        xlabel="mean response length (chars)",
        ylabel="accuracy",
        ylim=(0, 1),
        title=f"Accuracy by length: {title}",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / names[1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(c - r, res.chosen - res.rejected, s=8, alpha=0.5)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set(
        xlabel="length(chosen) - length(rejected) (chars)",
        ylabel="reward margin",
        title=f"Margin vs length difference: {title}",
    )
    fig.tight_layout()
    fig.savefig(output / names[2], dpi=100)
    plt.close(fig)
    return names


def plot_robustness(changes: dict[str, np.ndarray], output: Path, prefix: str, title: str) -> str:
    """Reward change per probe (box plot) against zero."""
    plt = _plt()
    name = f"{prefix}_robustness.png"
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot([changes[k] for k in changes], showfliers=False)
    ax.set_xticks(range(1, len(changes) + 1), list(changes))
    ax.axhline(0, color="grey", linestyle="--")
    ax.set(ylabel="reward change (probe - original)", title=f"Robustness probes: {title}")
    fig.tight_layout()
    fig.savefig(output / name, dpi=100)
    plt.close(fig)
    return name


EXPECT_WORDS = {"no_rise": "should not rise", "fall": "should fall", "none": "should not change"}


def robustness_markdown(section: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "### Robustness",
        "",
        "| probe | what it does | expected | mean change (95%) | median | share higher | "
        "win rate after | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in section.items():
        if r.get("skipped"):
            lines.append(f"| {name} | {r['doc']} | {EXPECT_WORDS[r['expect']]} | - | - | - | - | "
                         f"{r['skipped']} |")  # fmt: skip
            continue
        lo, hi = r["mean_change_ci95"]
        if r["pairs"] < 2:
            lo = hi = float("nan")
        mark = "**wrong way**" if r["flags"] else "ok"
        lines.append(
            f"| {name} | {r['doc']} | {EXPECT_WORDS[r['expect']]} | {r['mean_change']:+.3f} "
            f"({lo:+.3f} to {hi:+.3f}) | {r['median_change']:+.3f} | {r['share_higher']:.2f} | "
            f"{r['win_rate_after']:.3f} | {mark} |"
        )
    flagged = [f for r in section.values() for f in r["flags"]]
    if flagged:
        lines += ["", "Shortcuts this model pays for (a policy trained on it can exploit them):"]
        lines += [f"- {f}" for f in flagged]
    return lines


def _length_rows(length: dict[str, Any] | None) -> list[str]:
    if not length:
        return []
    return [
        f"| reward-length Spearman | {length['reward_length_spearman']:+.3f} |",
        f"| win rate, chosen shorter / longer | {length['win_rate_chosen_shorter']:.4f} "
        f"({length['pairs_chosen_shorter']}) / {length['win_rate_chosen_longer']:.4f} "
        f"({length['pairs_chosen_longer']}) |",
        f"| length-controlled win rate | {length['length_controlled_win_rate']:.4f} |",
    ]


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Reward model evaluation: `{report['model']}`", ""]
    for name, r in report["datasets"].items():
        m, b, c = r["metrics"], r["baselines"], r["counts"]
        lines += [f"## `{name}`", ""]
        lines += [f"> **Flag: {flag}.**\n" for flag in r.get("flags", [])]
        lo, hi = m["win_rate_ci95"]
        lines += [
            "| metric | value |",
            "|---|---|",
            f"| win rate (95% interval) | {m['win_rate']:.4f} ({lo:.3f}-{hi:.3f}) |",
            f"| prefer-longer baseline | {b['longer_response']:.4f} |",
            f"| prefer-shorter baseline | {b['shorter_response']:.4f} |",
            f"| chance | {b['chance']:.2f} |",
            f"| Kendall's tau (per prompt, mean) | {m['kendall_tau']:.4f} |",
            f"| reward chosen mean / std | {m['chosen_reward_mean']:.4f} / "
            f"{m['chosen_reward_std']:.4f} |",
            f"| reward rejected mean / std | {m['rejected_reward_mean']:.4f} / "
            f"{m['rejected_reward_std']:.4f} |",
            f"| mean margin | {m['margin_mean']:.4f} |",
            *_length_rows(r.get("length")),
            f"| pairs scored | {c['scored_pairs']} |",
            f"| rows read / malformed / truncated / dropped | {c['rows_read']} / "
            f"{c['malformed_total']} / {c['truncated']} / {c['dropped_total']} |",
        ]
        if "scoring" in r:
            lines.append(f"| scoring speed | {r['scoring']['pairs_per_s']:.1f} pairs/s |")
        if "robustness" in r:
            lines += robustness_markdown(r["robustness"])
        if r["subsets"]:
            lines += ["", "| subset | win rate | pairs |", "|---|---|---|"]
            lines += [
                f"| {s} | {v['win_rate']:.4f} | {v['pairs']} |" for s, v in r["subsets"].items()
            ]
        lines += [""] + [f"![{p}]({p})" for p in r.get("plots", [])] + [""]
    return "\n".join(lines)
