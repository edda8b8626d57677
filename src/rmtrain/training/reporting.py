"""What a run reports: every row's fate on the console, the final held-out evaluation (each
data set apart, then all together, with the length numbers), the probes and the headline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rmtrain.data.pairs import DataCounts
from rmtrain.evaluation.evaluate import summarise
from rmtrain.outputs import REPORT_DIR
from rmtrain.training.data_setup import PreparedData
from rmtrain.training.resources import peak_memory_gib
from rmtrain.training.selection import KeepBest


def print_counts(counts: DataCounts, per_dataset: dict[str, DataCounts]) -> None:
    """Every row on the console: sampled, then malformed, dropped, train, test or left out."""
    for source, c in per_dataset.items():
        name = f"{source}: " if len(per_dataset) > 1 else ""
        print(
            f"[rmtrain] data: {name}using {c.rows_read} of {c.rows_in_source} rows "
            f"(--frac {c.frac:g})",
            flush=True,
        )
    c = counts.to_dict()
    left = f", {c['not_mixed']} left out by the mixing weights" if c["not_mixed"] else ""
    print(
        f"[rmtrain] data: {c['rows_read']} rows read, {c['malformed_total']} malformed "
        f"{c['malformed']}, {c['truncated']} truncated, {c['dropped_total']} dropped "
        f"{c['dropped']}, {c['train_pairs']} train / {c['test_pairs']} test pairs{left}",
        flush=True,
    )
    if c["augmented_total"] or c["augmented_dropped"]:
        print(
            f"[rmtrain] data: +{c['augmented_total']} augmented training pairs "
            f"{c['augmented']} ({c['augmented_dropped']} did not fit --max-length)",
            flush=True,
        )


def _held_out(sink: dict[str, Any], data: PreparedData, eval_out: dict, n_rows: int) -> Any:
    """One report section from an evaluation's rewards (gathered over all ranks, so it works
    under DDP, ZeRO-3 and FSDP alike)."""
    kept = [data.test_pairs[i] for i in sink["index"]]
    counts = {
        "rows_read": n_rows,
        "malformed": {},
        "malformed_total": 0,
        "truncated": data.test_truncated,
        "dropped_total": n_rows - len(kept),
        "scored_pairs": len(kept),
    }
    seconds = float(next((v for k, v in eval_out.items() if k.endswith("_runtime")), 0.0))
    return summarise(kept, sink["chosen"], sink["rejected"], counts, seconds)


def evaluate_held_out(
    trainer: Any, data: PreparedData, sink: dict[str, Any]
) -> tuple[dict, dict, dict]:
    """Final evaluation: each data set's held-out split apart (when several), then all together.
    Returns (overall metrics, per-data-set metrics, report sections)."""
    per, sections = {}, {}
    if len(data.test_sets) > 1:
        for i, (source, feats) in enumerate(data.test_sets.items()):
            raw = trainer.evaluate(eval_dataset=feats, metric_key_prefix=f"eval_set{i}")
            per[source] = {k.removeprefix(f"eval_set{i}_"): v for k, v in raw.items()}
            sections[source] = _held_out(sink, data, raw, len(feats))
    raw = trainer.evaluate(eval_dataset=data.test)  # the whole split, logged at the last step
    overall = _held_out(sink, data, raw, len(data.test_pairs))
    if not sections:
        sections["held-out split"] = overall
    metrics = {k.removeprefix("eval_"): v for k, v in raw.items()}
    baselines = overall.report["baselines"]
    metrics["baseline_prefer_longer"] = baselines["longer_response"]
    metrics["baseline_prefer_shorter"] = baselines["shorter_response"]
    return {**metrics, **overall.report["length"]}, per, sections


def probe_held_out(output: Path, data: PreparedData) -> None:
    """`--robustness`: the probes on each held-out set with the saved model, into the report."""
    from rmtrain.evaluation.evaluate import add_robustness_to_report
    from rmtrain.evaluation.probes import PROBES
    from rmtrain.serving.scorer import load_scorer

    by_set = {
        name: [data.test_pairs[f["pair_index"]] for f in feats]
        for name, feats in data.test_sets.items()
    }
    if len(by_set) <= 1:
        by_set = {"held-out split": data.test_pairs}
    add_robustness_to_report(output / REPORT_DIR, load_scorer(str(output)), by_set, list(PROBES))


def final_metrics(trainer: Any, train_out: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """The held-out metrics with what the run itself measured: the kept step (--keep-best),
    training loss, steps, time, tokens and peak memory."""
    keeper = next((c for c in trainer.callback_handler.callbacks if isinstance(c, KeepBest)), None)
    if keeper and keeper.best_step is not None:
        metrics["kept_step"] = keeper.best_step
    metrics.update(
        train_loss=train_out.training_loss,
        train_steps=train_out.global_step,
        train_runtime=train_out.metrics.get("train_runtime"),
        train_tokens=trainer.tokens_seen * trainer.args.world_size,
        train_peak_memory_gib=peak_memory_gib(),
    )
    return metrics


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "win_rate",
        "kendall_tau",
        "loss",
        "margin_mean",
        "reward_mean",
        "reward_std",
        "num_pairs",
    )
    return {
        k: round(metrics[k], 4) if isinstance(metrics[k], float) else metrics[k]
        for k in keys
        if k in metrics
    }
