"""What one speed option is worth end to end: rmtrain trained with the option as shipped and with
it switched off, alternating in separate processes on the same pairs (train_vs_trl's harness).

    python benchmarks/ablate.py FEATURE DATASET [--repeats 4] [--steps 8] [--output F]

FEATURE: speed (every speed-up: --speed off), trees (--prefix-trees off), blocks
(--block-attention off), cap (--cap-activations false), allocator (--retain-freed-memory
false), lean (--lean-activations false), fused (--fuse-elementwise true, off by default).
DATASET: se or hh (../shared/data). Model: SmolLM2-135M at 512 tokens, 2 pairs a step.
Prints, and with --output writes, the ratio of pairs/s (shipped over switched) per run and as a
ratio of medians, with peak memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SHARED, setup_record  # noqa: E402
from train_vs_trl import run_case  # noqa: E402

# FEATURE -> train_vs_trl path flag that switches it (the shipped default is plain prefix_sharing)
SWITCHES = {
    "speed": "speedoff",
    "trees": "forked",
    "blocks": "noblocks",
    "cap": "nocap",
    "allocator": "release",
    "lean": "nolean",
    "fused": "fused",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("feature", choices=sorted(SWITCHES))
    ap.add_argument("dataset", choices=("se", "hh"))
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--output", default=None, help="also write the result JSON here")
    a = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"benchmark data not found at {SHARED}")
    switched = f"prefix_sharing+{SWITCHES[a.feature]}"
    case = argparse.Namespace(
        steps=a.steps,
        pairs=2,
        eval_pairs=8,
        eval_batch=8,
        repeats=a.repeats,
        max_length=a.max_length,
        mode="small",
        eval_only=False,
        row_budget=None,
        gradient_checkpointing=None,
        checkpoint_every=1,
        lean_activations="true",
        runs_log=None,
    )
    result = run_case("smollm2", a.dataset, case, ["prefix_sharing", switched])
    shipped, off = (result["paths"][p] for p in ("prefix_sharing", switched))
    by_run = [round(x / y, 3) for x, y in zip(shipped["runs"], off["runs"], strict=True)]
    out = {
        "feature": a.feature,
        "dataset": a.dataset,
        "shipped_over_switched": shipped["pairs_per_s"] / off["pairs_per_s"],
        "by_run": by_run,
        "median_by_run": statistics.median(by_run),
        "peak_memory_shipped_over_switched": shipped["peak_memory_mb"] / off["peak_memory_mb"],
        "paths": result["paths"],
        "setup": setup_record({"steps": a.steps, "repeats": a.repeats}),
    }
    print(json.dumps(out))
    if a.output:
        Path(a.output).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
