"""Side-by-side quality: rmtrain and TRL's RewardTrainer train the same model on the same pairs
at the same budget; one scorer evaluates both on the same held-out pairs, in and across domains.

    python benchmarks/quality_data.py                      # the split by prompt (once)
    python benchmarks/quality.py --sets hh                 # SmolLM2-135M on HH-RLHF harmless
    python benchmarks/quality.py --sets hh se --model Qwen/Qwen3-0.6B   # on a GPU machine

Per training set: the training split (benchmarks/quality_data.py) is split again by prompt into
train (90%) and a validation part, with rmtrain's own function and seed, so both tools are
offered exactly the same training pairs and evaluated during training on the same validation
pairs (the win-rate-per-step plot). Same steps, learning rate, schedule, warmup, batch, max
length and reward centering; TRL keeps its own defaults otherwise (it drops over-long pairs;
rmtrain cuts them: the kept counts are reported; it has no head learning-rate multiplier or
auxiliary LM loss, so --head-lr-multiplier and --lm-loss-coef apply to rmtrain only). Each
tool runs in its own process (wall time, peak memory; TRL's validation curve is on the
validation pairs it keeps). Both saved models are then scored by rmtrain's scorer, each at the
position it was trained to read, on every test set: win rate with a 95% Wilson interval,
Kendall's tau, and the prefer-longer and prefer-shorter baselines on the same pairs.
Results: benchmarks/results/<name>.json and .md, and <name>_curve.png.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, model_id, setup_record  # noqa: E402
from quality_data import DATA, path  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / ".quality"
VALIDATION = 0.1
SEED = 0


def _pairs(file: Path, frac: float = 1.0) -> list[Any]:
    """The pairs rmtrain reads from `file` with `--frac frac` (same sample, same order)."""
    from rmtrain.data.formats import read_pairs
    from rmtrain.data.reading import load_rows

    return read_pairs(load_rows(str(file)), frac, SEED)[0]


# ----------------------------------------------------------------------------- workers
def _rmtrain_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from rmtrain.cli import main

    out = Path(spec["out"])
    argv = ["train", "--model", spec["model"], "--dataset", spec["train_file"]]
    argv += ["--frac", str(spec["frac"])]
    argv += ["--test-size", str(VALIDATION), "--seed", str(SEED), "--output", str(out)]
    argv += [
        "--lr",
        str(spec["lr"]),
        "--epochs",
        str(spec["epochs"]),
        "--batch",
        str(spec["batch"]),
    ]
    argv += ["--max-length", str(spec["max_length"]), "--warmup-ratio", str(spec["warmup"])]
    argv += ["--lr-scheduler", spec["scheduler"], "--eval-steps", str(spec["eval_every"])]
    argv += ["--center-rewards-coef", str(spec["center_rewards_coef"])]
    argv += ["--head-lr-multiplier", str(spec.get("head_lr_multiplier", 1.0))]
    argv += ["--lm-loss-coef", str(spec.get("lm_loss_coef", 0.0))]
    argv += ["--logging-steps", "5", "--report-to", "none", "--overwrite"]
    argv += spec.get("extra", [])  # further rmtrain options (benchmarks/robust.py)
    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"rmtrain train failed ({code})")
    result = json.loads((out / "metrics.json").read_text())
    curve = [(h["step"], h["eval_win_rate"]) for h in result["log_history"] if "eval_win_rate" in h]
    if not curve or curve[-1][0] != result["metrics"]["train_steps"]:
        curve.append((result["metrics"]["train_steps"], result["metrics"]["win_rate"]))
    data = result["data"]
    return {
        "train_seconds": seconds,
        "steps": result["metrics"]["train_steps"],
        "pairs_offered": data["train_pairs"] + data.get("dropped_total", 0),
        "pairs_kept": data["train_pairs"],
        "pairs_cut": data["truncated"],
        "curve": curve,
    }


def _conversational(p: Any) -> dict[str, Any]:
    prompt = [{"role": "user", "content": p.prompt}] if isinstance(p.prompt, str) else p.prompt
    turn = lambda r: [{"role": "assistant", "content": r}] if isinstance(r, str) else r  # noqa: E731
    return {"prompt": prompt, "chosen": turn(p.chosen), "rejected": turn(p.rejected)}


def _trl_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from rmtrain.data.splits import split_by_group
    from rmtrain.modeling.loading import load_reward_model, load_tokenizer

    train, val = split_by_group(_pairs(Path(spec["train_file"]), spec["frac"]), VALIDATION, SEED)
    tok = load_tokenizer(spec["model"])
    model = load_reward_model(spec["model"], tok.pad_token_id, seed=SEED)
    curve: list[tuple[int, float]] = []

    class Curve(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kw):  # noqa: ANN001
            if metrics and "eval_accuracy" in metrics:
                curve.append((state.global_step, float(metrics["eval_accuracy"])))

    args = RewardConfig(
        output_dir=str(Path(spec["out"]) / "trainer"),
        learning_rate=spec["lr"],
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch"],
        per_device_eval_batch_size=4 * spec["batch"],
        lr_scheduler_type=spec["scheduler"],
        warmup_steps=math.ceil(spec["warmup"] * spec["steps"]),
        max_length=spec["max_length"],
        center_rewards_coefficient=spec["center_rewards_coef"] or None,
        eval_strategy="steps",
        eval_steps=spec["eval_every"],
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        seed=SEED,
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        processing_class=tok,
        train_dataset=Dataset.from_list([_conversational(p) for p in train]),
        eval_dataset=Dataset.from_list([_conversational(p) for p in val]),
        callbacks=[Curve()],
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    final = float(trainer.evaluate().get("eval_accuracy", np.nan))
    curve = [c for c in curve if c[0] != spec["steps"]] + [(spec["steps"], final)]
    trainer.save_model(spec["out"])
    tok.save_pretrained(spec["out"])
    return {
        "train_seconds": seconds,
        "steps": spec["steps"],
        "pairs_offered": len(train),
        "pairs_kept": len(trainer.train_dataset),
        "pairs_cut": 0,
        "curve": curve,
    }


def worker_main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    result = (_trl_worker if spec["tool"] == "trl" else _rmtrain_worker)(spec)
    result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    spec_file = WORK / f"spec_{spec['tool']}_{spec['set']}.json"
    spec_file.write_text(json.dumps(spec))
    log = WORK / f"{spec['tool']}_{spec['set']}.log"  # the worker's progress, while it runs
    with log.open("w") as err:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", str(spec_file)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{spec['tool']} on {spec['set']} failed:\n{log.read_text()[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


# ----------------------------------------------------------------------------- evaluation
def evaluate(folder: str, sets: list[str]) -> dict[str, Any]:
    """One scorer for both tools' models: win rate (Wilson 95%), tau, length baselines."""
    import numpy as np

    from rmtrain.evaluation.evaluate import length_baseline, response_length
    from rmtrain.evaluation.metrics import reward_metrics, wilson_interval
    from rmtrain.serving.scorer import load_scorer

    scorer = load_scorer(folder)
    out = {}
    for name in sets:
        pairs = _pairs(path(name, "test"))
        start = time.perf_counter()
        scored = scorer.score_pairs(pairs)
        seconds = time.perf_counter() - start
        kept = [pairs[f["pair_index"]] for f in scored.features]
        m = reward_metrics(scored.chosen, scored.rejected, [p.group for p in kept])
        wins = int(np.sum(scored.chosen > scored.rejected))
        c = np.array([response_length(p.chosen) for p in kept])
        r = np.array([response_length(p.rejected) for p in kept])
        out[name] = {
            "pairs": len(kept),
            "win_rate": m["win_rate"],
            "win_rate_ci95": list(wilson_interval(wins, len(kept))),
            "kendall_tau": m["kendall_tau"],
            "prefer_longer": length_baseline(c, r),
            "prefer_shorter": length_baseline(r, c),
            "eval_seconds": seconds,
        }
    return out


# ----------------------------------------------------------------------------- report
def markdown(record: dict[str, Any]) -> str:
    lines = [
        "| trained on | tested on | tool | win rate (95% CI) | Kendall's tau | prefer longer / "
        "shorter | pairs | train s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in record["runs"]:
        for test, e in run["eval"].items():
            lo, hi = e["win_rate_ci95"]
            lines.append(
                f"| {run['set']} | {test} | {run['tool']} | {e['win_rate']:.3f} ({lo:.3f}-"
                f"{hi:.3f}) | {e['kendall_tau']:.3f} | {e['prefer_longer']:.3f} / "
                f"{e['prefer_shorter']:.3f} | {e['pairs']} | {run['train_seconds']:.0f} | "
                f"{run['peak_memory_mb']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any], file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["set"] for r in record["runs"]})
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4), squeeze=False)
    for ax, name in zip(axes[0], sets, strict=True):
        for run in (r for r in record["runs"] if r["set"] == name):
            steps, rates = zip(*run["curve"], strict=True)
            ax.plot(steps, rates, marker="o", label=run["tool"])
        ax.axhline(0.5, color="grey", linestyle="--", label="chance")
        ax.set(xlabel="step", ylabel="validation win rate", title=f"trained on {name}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(file, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--sets", nargs="+", default=["hh", "se"], choices=["hh", "se"])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--frac", type=float, default=1.0, help="share of the training split used")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--warmup", type=float, default=0.1)
    ap.add_argument("--scheduler", default="cosine")
    ap.add_argument("--center-rewards-coef", type=float, default=0.0)
    ap.add_argument("--head-lr-multiplier", type=float, default=1.0, help="rmtrain only")
    ap.add_argument("--lm-loss-coef", type=float, default=0.0, help="rmtrain only")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--tools", nargs="+", default=["rmtrain", "trl"])
    ap.add_argument("--name", default="quality", help="result file name in benchmarks/results")
    args = ap.parse_args()
    if args.worker:
        return worker_main(args.worker)
    if not (DATA / "hh_test.jsonl").is_file():
        raise SystemExit("run python benchmarks/quality_data.py first")
    WORK.mkdir(parents=True, exist_ok=True)
    keys = "frac lr epochs batch max_length warmup scheduler eval_every center_rewards_coef"
    keys += " head_lr_multiplier lm_loss_coef"
    settings = {k: getattr(args, k) for k in keys.split()}
    runs = []
    for name in args.sets:
        steps = None
        for tool in args.tools:  # rmtrain first: its step count is the budget for TRL
            spec = {
                **settings,
                "tool": tool,
                "set": name,
                "model": model_id(args.model),
                "train_file": str(path(name, "train")),
                "out": str(WORK / f"{tool}_{name}"),
                "steps": steps,
            }
            if tool == "trl" and steps is None:
                raise SystemExit("--tools must run rmtrain before trl (it sets the budget)")
            result = _run(spec)
            steps = steps or result["steps"]
            result["eval"] = evaluate(spec["out"], ["hh", "se"])
            runs.append({"tool": tool, "set": name, **result})
            print(json.dumps(runs[-1]["eval"]))
            record = write(args, settings, runs)  # after every run: a late failure keeps these
    print(markdown(record))


def write(args: argparse.Namespace, settings: dict[str, Any], runs: list[Any]) -> dict[str, Any]:
    record = setup_record({"model": args.model, "settings": settings, "runs": runs})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=2))
    (RESULTS / f"{args.name}.md").write_text(markdown(record))
    plot(record, RESULTS / f"{args.name}_curve.png")
    return record


if __name__ == "__main__":
    main()
