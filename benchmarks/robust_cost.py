"""What the remedies cost in training time: seconds per step of each variant against the plain
recipe, the same number of steps on the same pairs, measured side by side in one run.

    python benchmarks/quality_data.py                          # the splits (once)
    python benchmarks/robust_cost.py --sets hh se --steps 8 --repeats 2

Each variant trains SmolLM2-135M with its recipe's settings (`robust.RECIPES`) and options
(`robust.VARIANTS`; augmented variants with the batch grown by the share of pairs added, as
`robust.py` trains them) for `--steps` steps without evaluation; the time is the trainer's own
`train_runtime` (model loading and saving excluded). Variants alternate in order and reversed
order over the repeats (plain, augment, length_head, length_head, augment, plain, ...), so a
drift in the machine's speed falls on all alike; the ratio is each variant's median seconds per
step over the plain run's. Results: benchmarks/results/robust_cost.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import setup_record  # noqa: E402
from quality import RESULTS, WORK, _run  # noqa: E402
from quality_data import DATA  # noqa: E402
from robust import RECIPES, VARIANTS, variant_spec  # noqa: E402


def time_variant(name: str, variant: str, steps: int) -> dict[str, Any]:
    extra = [*VARIANTS[variant], "--max-steps", str(steps)]
    spec = {**variant_spec(name, variant, RECIPES[name], extra), "eval_every": 0, "steps": steps,
            "set": f"cost_{name}", "out": str(WORK / f"cost_{name}_{variant}")}  # fmt: skip
    out = Path(spec["out"])
    result = _run(spec)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    return {
        "batch": spec["batch"],
        "steps": result["steps"],
        "train_runtime": metrics["train_runtime"],
        "seconds_per_step": metrics["train_runtime"] / result["steps"],
        "train_tokens": metrics.get("train_tokens"),
        "peak_memory_mb": result["peak_memory_mb"],
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per set and variant: the median seconds per step and its ratio to plain's."""
    table: dict[str, dict[str, Any]] = {}
    for run in runs:
        table.setdefault(run["set"], {}).setdefault(run["variant"], []).append(run)
    out: dict[str, dict[str, Any]] = {}
    for name, variants in table.items():
        median = {
            v: statistics.median(r["seconds_per_step"] for r in rs) for v, rs in variants.items()
        }
        base = median.get("plain", float("nan"))  # not yet measured: nan until it is
        out[name] = {
            v: {"seconds_per_step": median[v], "ratio_to_plain": median[v] / base,
                "batch": variants[v][0]["batch"], "repeats": len(variants[v])}
            for v in variants
        }  # fmt: skip
    return out


def markdown(record: dict[str, Any]) -> str:
    lines = ["| set | variant | batch | s / step (median) | x plain |", "|---|---|---|---|---|"]
    for name, variants in record["summary"].items():
        for v, s in variants.items():
            lines.append(
                f"| {name} | {v} | {s['batch']} | {s['seconds_per_step']:.2f} | "
                f"{s['ratio_to_plain']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["hh", "se"], choices=sorted(RECIPES))
    ap.add_argument("--variants", nargs="+", default=["plain", "augment", "length_head"],
                    choices=list(VARIANTS))  # fmt: skip
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--name", default="robust_cost")
    args = ap.parse_args()
    if "plain" not in args.variants:
        raise SystemExit("--variants must include plain (the ratios' base)")
    if not all((DATA / f"{s}_train.jsonl").is_file() for s in args.sets):
        raise SystemExit("run python benchmarks/quality_data.py first")
    WORK.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for name in args.sets:
        for repeat in range(args.repeats):
            order = args.variants if repeat % 2 == 0 else args.variants[::-1]
            for variant in order:
                runs.append({"set": name, "variant": variant, "repeat": repeat,
                             **time_variant(name, variant, args.steps)})  # fmt: skip
                record = setup_record({"steps": args.steps, "runs": runs,
                                       "summary": summary(runs)})  # fmt: skip
                file = RESULTS / args.name
                file.with_suffix(".json").write_text(json.dumps(record, indent=2))
                file.with_suffix(".md").write_text(markdown(record))
    print(markdown(record), flush=True)


if __name__ == "__main__":
    main()
