"""`rmtrain eval`: how a reward model generalises, per data set, against honest baselines.

For each data set: every pair is scored (same reading, formatting and cutting as training),
then win rate and Kendall's tau (the training definitions), reward statistics, per-subset
accuracy, and two baselines on the same pairs: chance (0.5) and "prefer the longer response"
(response length in characters; equal lengths count half). A model that does not beat the
length baseline is flagged.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rmtrain.data.formats import read_pairs
from rmtrain.data.pairs import Pair
from rmtrain.data.reading import load_rows
from rmtrain.errors import RmtrainError
from rmtrain.evaluation.metrics import length_metrics, reward_metrics, wilson_interval

# Above this rank correlation between reward and response length, a policy can raise its reward
# by writing longer (or shorter) whatever it says: flagged.
LENGTH_FLAG_SPEARMAN = 0.5


def response_length(text: Any) -> int:
    """Characters of a response (the content of its messages when conversational)."""
    if isinstance(text, str):
        return len(text)
    return sum(len(m.get("content", "")) for m in text)


def length_baseline(chosen_len: np.ndarray, rejected_len: np.ndarray) -> float:
    """Accuracy of always preferring the longer response; ties count as a coin flip."""
    c, r = np.asarray(chosen_len), np.asarray(rejected_len)
    if c.size == 0:
        return float("nan")
    return float(np.mean(np.where(c > r, 1.0, np.where(c == r, 0.5, 0.0))))


def subset_accuracy(
    chosen: np.ndarray, rejected: np.ndarray, subsets: list[str | None]
) -> dict[str, dict[str, float]]:
    """Win rate and pair count per subset (RewardBench style); empty without a subset column."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(subsets):
        if s is not None:
            groups[str(s)].append(i)
    return {
        s: {"win_rate": float(np.mean(chosen[idx] > rejected[idx])), "pairs": len(idx)}
        for s, idx in sorted(groups.items())
    }


def quality_flags(report: dict[str, Any]) -> list[str]:
    """What a user must know before trusting the model on this data, in words."""
    m, b = report["metrics"], report["baselines"]
    lo, hi = m["win_rate_ci95"]
    flags = []
    if not report["above_chance"]:
        flags.append(
            f"not above chance: win rate {m['win_rate']:.3f} (95% interval {lo:.3f}-{hi:.3f}) "
            "includes or is below 0.5"
        )
    rho = report["length"]["reward_length_spearman"]
    if m["num_pairs"] >= 10 and abs(rho) >= LENGTH_FLAG_SPEARMAN:  # few pairs: no verdict
        controlled = report["length"]["length_controlled_win_rate"]
        flags.append(
            f"reward is mostly length: Spearman {rho:+.2f} between reward and response length "
            f"(length-controlled win rate {controlled:.3f})"
        )
    if not report["beats_length_baseline"]:
        best = max(
            ("prefer longer", b["longer_response"]),
            ("prefer shorter", b["shorter_response"]),
            key=lambda x: x[1],
        )
        flags.append(
            f"not above the length baseline: win rate {m['win_rate']:.3f} <= "
            f"{best[0]} {best[1]:.3f}"
        )
    return flags


@dataclass
class DatasetEval:
    """Numbers for the report plus the per-pair arrays the plots need."""

    report: dict[str, Any]
    chosen: np.ndarray
    rejected: np.ndarray
    chosen_len: np.ndarray
    rejected_len: np.ndarray
    probe_changes: dict[str, np.ndarray] = field(default_factory=dict)


def summarise(
    pairs: list[Pair],
    chosen: np.ndarray,
    rejected: np.ndarray,
    counts: dict[str, Any],
    seconds: float | None = None,
) -> DatasetEval:
    """Metrics, baselines and subsets for scored pairs (pure: testable with a stub scorer);
    with `seconds`, the scoring speed too."""
    c_len = np.array([response_length(p.chosen) for p in pairs])
    r_len = np.array([response_length(p.rejected) for p in pairs])
    metrics = reward_metrics(chosen, rejected, [p.group for p in pairs])
    metrics["chosen_reward_std"] = float(np.std(chosen)) if len(chosen) else float("nan")
    metrics["rejected_reward_std"] = float(np.std(rejected)) if len(rejected) else float("nan")
    longer = length_baseline(c_len, r_len)
    shorter = length_baseline(r_len, c_len)
    wins = float(np.sum(chosen > rejected))
    metrics["win_rate_ci95"] = list(wilson_interval(wins, len(chosen)))
    report = {
        "counts": counts,
        "metrics": metrics,
        "baselines": {"chance": 0.5, "longer_response": longer, "shorter_response": shorter},
        "above_chance": bool(metrics["win_rate_ci95"][0] > 0.5),
        "beats_length_baseline": bool(metrics["win_rate"] > max(longer, shorter)),
        "subsets": subset_accuracy(chosen, rejected, [p.extra.get("subset") for p in pairs]),
        "length": length_metrics(chosen, rejected, c_len, r_len),
    }
    report["flags"] = quality_flags(report)
    if seconds is not None:
        report["scoring"] = {"seconds": seconds, "pairs_per_s": len(pairs) / max(seconds, 1e-9)}
    return DatasetEval(report, chosen, rejected, c_len, r_len)


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def report_json(report: dict[str, Any]) -> str:
    """report.json as strict JSON: a number that cannot be computed (too few pairs) is null."""
    return json.dumps(_no_nan(report), indent=2, allow_nan=False)


def text_scorer(scorer: Any) -> Any:
    """`score(prompts, responses)` on the scorer's fast path (prefix trees: a prompt shared by
    many responses is computed once); a text that cannot fit gives NaN."""
    from rmtrain.serving.scorer import Item, encode_items

    def score(prompts: list[Any], responses: list[str]) -> np.ndarray:
        items = [Item(prompt=p, response=r) for p, r in zip(prompts, responses, strict=True)]
        encoded = encode_items(scorer, items)
        fit = [i for i, e in enumerate(encoded) if e is not None]
        out = np.full(len(items), np.nan)
        if fit:
            out[fit] = scorer.score_ids([encoded[i][0] for i in fit])
        return out

    return score


def robustness_section(
    scorer: Any, pairs: list[Pair], probes: list[str], seed: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The probe table of one data set, and the per-pair reward changes for its plot."""
    from rmtrain.evaluation.probes import run_probes

    start = time.perf_counter()
    section = run_probes(text_scorer(scorer), pairs, probes, seed)
    changes = {name: np.asarray(v.pop("changes")) for name, v in section.items()}
    print(f"[rmtrain] robustness probes ({len(probes)}) took {time.perf_counter() - start:.1f}s")
    return section, changes


def _add_probes(
    part: dict[str, Any], scorer: Any, pairs: list[Pair], probes: list[str], seed: int
) -> dict[str, np.ndarray]:
    """A data set's report section gains its probe table and the probes' flags."""
    part["robustness"], changes = robustness_section(scorer, pairs, probes, seed)
    part["flags"] = part.get("flags", []) + [
        f for v in part["robustness"].values() for f in v["flags"]
    ]
    return changes


def add_robustness(
    res: DatasetEval, scorer: Any, pairs: list[Pair], probes: list[str], seed: int
) -> None:
    res.probe_changes = _add_probes(res.report, scorer, pairs, probes, seed)


def add_robustness_to_report(
    report_dir: Path,
    scorer: Any,
    pairs_by_section: dict[str, list[Pair]],
    probes: list[str],
    seed: int = 0,
) -> None:
    """Probe sections added to a written report (training's held-out report)."""
    from rmtrain.evaluation.report import plot_robustness, render_markdown

    report = json.loads((report_dir / "report.json").read_text())
    for name, pairs in pairs_by_section.items():
        part = report["datasets"][name]
        changes = _add_probes(part, scorer, pairs, probes, seed)
        slug = part["plots"][0].removesuffix("_rewards_hist.png")  # the section's own prefix
        part["plots"].append(plot_robustness(changes, report_dir, slug, short_name(name)))
    (report_dir / "report.json").write_text(report_json(report))
    (report_dir / "report.md").write_text(render_markdown(report))


def evaluate_pairs(scorer: Any, pairs: list[Pair], counts: dict[str, Any]) -> DatasetEval:
    """Score pairs with the shared fast path (no gradients, prefix trees, progress bar)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    with tqdm(total=2 * len(pairs), desc="scoring", unit="response") as bar:
        scored = scorer.score_pairs(pairs, progress=bar.update)
    seconds = time.perf_counter() - start
    kept = [pairs[f["pair_index"]] for f in scored.features]
    counts = {
        **counts,
        "truncated": scored.truncated,
        "dropped": scored.dropped,
        "dropped_total": sum(scored.dropped.values()),
        "scored_pairs": len(kept),
    }
    return summarise(kept, scored.chosen, scored.rejected, counts, seconds)


def evaluate_source(
    scorer: Any,
    source: str,
    split: str = "train",
    probes: list[str] | None = None,
    probe_seed: int = 0,
) -> DatasetEval:
    rows = load_rows(source, split)
    pairs, counts = read_pairs(rows, 1.0, 0)
    if not pairs:
        raise RmtrainError(f"no usable pairs in {source}: malformed {dict(counts.malformed)}")
    base = {
        "rows_read": counts.rows_read,
        "malformed": dict(counts.malformed),
        "malformed_total": sum(counts.malformed.values()),
    }
    res = evaluate_pairs(scorer, pairs, base)
    if not res.report["counts"]["scored_pairs"]:
        raise RmtrainError(
            f"no pair of {source} fits --max-length {scorer.max_length} "
            f"(dropped {res.report['counts']['dropped']}); raise --max-length"
        )
    if probes:
        add_robustness(res, scorer, pairs, probes, probe_seed)
    return res


def write_report(results: dict[str, DatasetEval], output: Path, model: str) -> dict[str, Any]:
    """report.json, report.md and the PNG plots of every data set."""
    from rmtrain.evaluation.report import plot_dataset, plot_robustness, render_markdown

    output.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"model": model, "datasets": {}}
    taken: set[str] = set()
    for name, res in results.items():
        short = short_name(name)
        slug = file_slug(short, taken)
        plots = plot_dataset(res, output, slug, short)
        if res.probe_changes:
            plots.append(plot_robustness(res.probe_changes, output, slug, short))
        report["datasets"][name] = {**res.report, "plots": plots}
    (output / "report.json").write_text(report_json(report))
    (output / "report.md").write_text(render_markdown(report))
    return report


def short_name(source: str) -> str:
    """A data set's name for titles: the file name without its extensions, or the hub name's
    last part, with any `:weight` suffix."""
    base = source.rstrip("/").split("/")[-1] or source
    for ext in (".gz", ".bz2", ".xz", ".zst", ".jsonl", ".json", ".csv", ".parquet"):
        base = base.removesuffix(ext)
    return base


def file_slug(name: str, taken: set[str]) -> str:
    """File-safe, unique prefix for a data set's plots."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "data"
    unique, n = slug, 2
    while unique in taken:
        unique, n = f"{slug}_{n}", n + 1
    taken.add(unique)
    return unique


def run_eval(
    model_dir: str,
    datasets: list[str],
    output: str,
    max_length: int | None = None,
    batch: int | None = None,
    split: str = "train",
    speed_mode: str = "auto",
    probes: list[str] | None = None,
    probe_seed: int = 0,
    overwrite: bool = False,
    model_name: str | None = None,
) -> dict[str, Any]:
    from rmtrain.outputs import check_output_folder, write_owner
    from rmtrain.serving.scorer import load_scorer

    out = Path(output)
    inputs = [model_dir, *(d for d in datasets if Path(d).expanduser().exists())]
    check_output_folder(out, "eval", inputs, overwrite, lambda p: (p / "report.json").exists())
    scorer = load_scorer(model_dir, max_length=max_length, speed_mode=speed_mode)
    if batch:
        scorer.token_budget = max(batch * 2 * scorer.max_length, 2 * scorer.max_length)
    results = {src: evaluate_source(scorer, src, split, probes, probe_seed) for src in datasets}
    name = model_name or model_dir  # a models:/ URI, not the folder it was fetched to
    write_owner(out, "eval", model=name)
    report = write_report(results, out, name)
    for name, r in report["datasets"].items():
        m, b = r["metrics"], r["baselines"]
        lo, hi = m["win_rate_ci95"]
        print(
            f"[rmtrain] {name}: win_rate {m['win_rate']:.4f} (95% {lo:.3f}-{hi:.3f}; prefer "
            f"longer {b['longer_response']:.4f}, prefer shorter {b['shorter_response']:.4f}, "
            f"chance 0.5), kendall_tau {m['kendall_tau']:.4f}, "
            f"{r['counts']['scored_pairs']} pairs"
        )
        for flag in r["flags"]:
            print(f"[rmtrain]   FLAG: {flag}")
    print(f"[rmtrain] report written to {output}/report.md")
    return report
