"""Robust by construction, measured: the shipped recipes trained plain and with each remedy, on
the quality benchmark's splits, side by side in one run.

    python benchmarks/quality_data.py                          # the splits (once)
    python benchmarks/robust.py --set hh --variants plain augment
    python benchmarks/robust.py --set se --variants plain augment relevance
    python benchmarks/robust.py --set hh --variants warm          # after plain

Each variant trains SmolLM2-135M with the recipe's settings (`RECIPES`, the settings of the
quality benchmark's searched runs) plus its own options, through the quality benchmark's worker
(`quality.py`: same pairs, same validation part, same seed). Augmented variants keep the
original pairs per step of the plain run: the batch grows by the share of pairs the
augmentations add (the added pairs share their source pair's prompt in the prefix tree), so the
step count is the plain run's. `warm` averages the plain run's model with models of the same
recipe trained with other seeds (`WARM_SEEDS`; `rmtrain average`). Every model is then scored
on both test sets (in-domain and cross-domain win rate with a Wilson interval, both length
baselines), and `rmtrain eval --robustness` on its own set's test pairs gives every probe and
the length numbers (reward-length Spearman, win rate when the chosen answer is the shorter /
the longer, length-controlled win rate). Results: benchmarks/results/robust_<set>.json and
.md, written after every variant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import model_id, setup_record  # noqa: E402
from quality import RESULTS, WORK, _pairs, _run, evaluate  # noqa: E402
from quality_data import DATA, path  # noqa: E402
from robustness import probe  # noqa: E402

# The recipes' settings as the quality benchmark runs them (quality_*_searched.json).
RECIPES: dict[str, dict[str, Any]] = {
    "hh": {"frac": 1.0, "lr": 7.6e-5, "scheduler": "linear", "warmup": 0.19, "epochs": 1.0,
           "batch": 4, "max_length": 256, "center_rewards_coef": 0.01,
           "head_lr_multiplier": 1.0, "lm_loss_coef": 0.0},
    "se": {"frac": 0.5, "lr": 1.07e-4, "scheduler": "linear", "warmup": 0.18, "epochs": 1.0,
           "batch": 8, "max_length": 256, "center_rewards_coef": 0.0,
           "head_lr_multiplier": 19.4, "lm_loss_coef": 0.05},
}  # fmt: skip
AUGMENT_RATE = 0.25
VARIANTS: dict[str, list[str]] = {
    "plain": [],
    "augment": ["--augment", "all", "--augment-rate", str(AUGMENT_RATE)],
    # the rewrites aimed at what a longer-is-better set pays for (no truncation), at a lower
    # rate: fewer added tokens per step (its cost per step: robust_cost.py)
    "augment_light": ["--augment", "relevance,filler,layout,whitespace", "--augment-rate",
                      "0.1"],
    "relevance": ["--augment", "relevance", "--augment-rate", str(AUGMENT_RATE)],
    "truncation": ["--augment", "truncation", "--augment-rate", str(AUGMENT_RATE)],
    "filler": ["--augment", "filler", "--augment-rate", str(AUGMENT_RATE)],
    "invariance": ["--augment", "whitespace,layout", "--augment-rate", str(AUGMENT_RATE)],
    "length_head": ["--length-head"],
    "augment_length_head": ["--augment", "all", "--augment-rate", str(AUGMENT_RATE),
                            "--length-head"],
    "warm": [],  # the plain model averaged with models of other seeds (`train_warm`)
}  # fmt: skip
WARM_SEEDS = (1,)
PROBE_KEYS = ("mean_change", "mean_change_ci95", "share_higher", "flags")


def added_share(name: str, extra: list[str], settings: dict[str, Any]) -> float:
    """Pairs the variant's augmentations add per training pair (0 without augmentation)."""
    if "--augment" not in extra:
        return 0.0
    from rmtrain.data.augment import augment_pairs, augmentation_names
    from rmtrain.data.splits import split_by_group

    names = augmentation_names(extra[extra.index("--augment") + 1])
    rate = float(extra[extra.index("--augment-rate") + 1])
    pairs = _pairs(path(name, "train"), settings["frac"])
    train, _ = split_by_group(pairs, 0.1, 0)  # quality.py's validation part, same seed
    added, _ = augment_pairs(train, names, rate, 0)
    return len(added) / len(train)


def probe_sample(name: str, n: int | None) -> Path:
    """The test pairs the probes run on: all, or a seeded sample of `n` (written once)."""
    test = path(name, "test")
    if not n:
        return test
    from rmtrain.data.splits import seeded_sample

    rows = test.read_text().splitlines()
    file = WORK / f"robust_{name}_probe_{n}.jsonl"
    picked = seeded_sample(len(rows), min(n, len(rows)), 0)
    file.write_text("".join(rows[i] + "\n" for i in picked))
    return file


def variant_spec(
    name: str, variant: str, settings: dict[str, Any], extra: list[str]
) -> dict[str, Any]:
    """The quality worker's spec for one variant: the recipe, the batch grown by the share of
    pairs its augmentations add, its options."""
    share = added_share(name, extra, settings)
    return {
        **settings,
        "batch": round(settings["batch"] * (1 + share)),
        "added_share": share,
        "eval_every": 10,
        "tool": "rmtrain",
        "set": name,
        "model": model_id("smollm2"),
        "train_file": str(path(name, "train")),
        "out": str(WORK / f"robust_{name}_{variant}"),
        "extra": extra,
        "steps": None,
    }


def train_warm(name: str, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """WARM: the plain run's model and one more per seed in `WARM_SEEDS` (same recipe, another
    seed: its own initialisation, order and validation part), averaged by `rmtrain average`."""
    from rmtrain.cli import main as rmtrain

    plain = WORK / f"robust_{name}_plain"
    if not (plain / "model.safetensors").is_file():
        raise SystemExit(
            f"warm averages with the plain model: run --variants plain first ({plain})"
        )
    spec = variant_spec(name, "warm", settings, [])
    members, seconds = [plain], 0.0
    for seed in WARM_SEEDS:
        member = {**spec, "out": f"{spec['out']}_seed{seed}", "extra": ["--seed", str(seed)]}
        seconds += _run(member)["train_seconds"]
        members.append(Path(member["out"]))
    if rmtrain(["average", spec["out"], *map(str, members), "--overwrite"]) != 0:
        raise SystemExit("rmtrain average failed")
    result = {"train_seconds": seconds, "steps": None, "members": [m.name for m in members]}
    return spec, result


def run_variant(
    name: str, variant: str, settings: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    if variant == "warm":
        spec, result = train_warm(name, settings)
    else:
        spec = variant_spec(name, variant, settings, VARIANTS[variant])
        result = _run(spec)
    other = "se" if name == "hh" else "hh"
    result["eval"] = evaluate(spec["out"], [name, other] if args.cross_domain else [name])
    sample = probe_sample(name, args.probe_pairs)
    section = probe(Path(spec["out"]), sample, WORK / f"robust_{name}_{variant}_eval", args.probes)
    return {
        "variant": variant,
        "options": spec["extra"],
        "probe_pairs": section["counts"]["scored_pairs"],
        "batch": spec["batch"],
        "added_pairs_per_pair": spec["added_share"],
        **result,
        "length": section["length"],
        "probes": {k: {f: v[f] for f in PROBE_KEYS} for k, v in section["robustness"].items()},
    }


def markdown(record: dict[str, Any]) -> str:
    name = record["set"]
    other = "se" if name == "hh" else "hh"
    probes = list(record["runs"][0]["probes"]) if record["runs"] else []
    head = f"| variant | {name} win rate (95%) | {other} win rate | length-controlled | "
    head += "reward-length rho | train s | steps | " + " | ".join(probes) + " |"
    lines = [head, "|" + "---|" * (7 + len(probes))]
    for run in record["runs"]:
        e, ln = run["eval"][name], run["length"]
        x = run["eval"].get(other, {"win_rate": float("nan")})
        lo, hi = e["win_rate_ci95"]
        cells = [
            run["variant"],
            f"{e['win_rate']:.3f} ({lo:.3f}-{hi:.3f})",
            f"{x['win_rate']:.3f}",
            f"{ln['length_controlled_win_rate']:.3f}",
            f"{ln['reward_length_spearman']:+.3f}",
            f"{run['train_seconds']:.0f}",
            str(run["steps"] or f"{len(run['members'])} x"),
        ]
        for p in probes:
            lo, hi = run["probes"][p]["mean_change_ci95"]
            cells.append(f"{run['probes'][p]['mean_change']:+.2f} ({lo:+.2f}, {hi:+.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    if record["runs"]:
        e = record["runs"][0]["eval"]
        base = [f"{k} {v['prefer_longer']:.3f} / {v['prefer_shorter']:.3f}" for k, v in e.items()]
        lines += [
            "",
            f"Length baselines (prefer longer / shorter): {'; '.join(base)}. Length numbers "
            f"and probe cells (mean reward change, 95% interval) on "
            f"{record['runs'][0]['probe_pairs']} {name} test pairs.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", required=True, choices=sorted(RECIPES))
    ap.add_argument("--variants", nargs="+", default=["plain", "augment"], choices=list(VARIANTS))
    ap.add_argument("--name", help="result file name (default robust_<set>)")
    ap.add_argument("--probe-pairs", type=int, help="probe a seeded sample of the test pairs")
    ap.add_argument("--probes", help="comma-separated probes (default: all)")
    ap.add_argument("--no-cross-domain", dest="cross_domain", action="store_false")
    args = ap.parse_args()
    if not (DATA / f"{args.set}_test.jsonl").is_file():
        raise SystemExit("run python benchmarks/quality_data.py first")
    WORK.mkdir(parents=True, exist_ok=True)
    settings = RECIPES[args.set]
    file = RESULTS / f"{args.name or 'robust_' + args.set}"
    runs: list[dict[str, Any]] = []
    for variant in args.variants:
        runs.append(run_variant(args.set, variant, settings, args))
        record = setup_record({"set": args.set, "model": "smollm2", "settings": settings,
                               "augment_rate": AUGMENT_RATE, "runs": runs})  # fmt: skip
        file.with_suffix(".json").write_text(json.dumps(record, indent=2))
        file.with_suffix(".md").write_text(markdown(record))
        print(markdown(record), flush=True)


if __name__ == "__main__":
    main()
