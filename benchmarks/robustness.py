"""Robustness probes of a quality-benchmark model: `rmtrain eval --robustness` on the held-out
pairs of the set it was trained on, recorded with commit, machine and command.

    python benchmarks/robustness.py --set hh --quality quality_hh_searched

probes benchmarks/.quality/rmtrain_<set> (the rmtrain model the named quality run saved) and
writes benchmarks/results/robustness_<model>_<set>.json. The folder is overwritten by every
quality run on that set, so the probed model is checked against the quality record: its
held-out win rate must equal the one recorded there (same scorer, same pairs; one near-tied
pair may flip).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import setup_record  # noqa: E402
from quality import RESULTS, WORK  # noqa: E402
from quality_data import path  # noqa: E402


def quality_run(name: str, train_set: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The quality record `name` and its rmtrain run on `train_set`."""
    file = RESULTS / f"{name}.json"
    if not file.is_file():
        raise SystemExit(f"no {file}: run benchmarks/quality.py --name {name} first")
    record = json.loads(file.read_text())
    runs = [r for r in record["runs"] if r["tool"] == "rmtrain" and r["set"] == train_set]
    if not runs:
        raise SystemExit(f"{file.name} has no rmtrain run trained on {train_set}")
    return record, runs[-1]


def probe(model: Path, test_file: Path, output: Path, probes: str | None = None) -> dict[str, Any]:
    """The held-out section of `rmtrain eval --robustness` (the command a user runs)."""
    from rmtrain.cli import main

    argv = ["eval", "--model", str(model), "--dataset", str(test_file)]
    argv += ["--output", str(output), "--robustness", "true", "--overwrite"]
    argv += ["--probes", probes] if probes else []
    if main(argv) != 0:
        raise SystemExit("rmtrain eval failed")
    report = json.loads((output / "report.json").read_text())
    return report["datasets"][str(test_file)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", required=True, choices=["hh", "se"], help="training set")
    ap.add_argument("--quality", required=True, help="quality result name that saved the model")
    args = ap.parse_args()
    record, run = quality_run(args.quality, args.set)
    start = time.perf_counter()
    section = probe(WORK / f"rmtrain_{args.set}", path(args.set, "test"), WORK / "robust")
    seconds = time.perf_counter() - start
    expected, pairs = run["eval"][args.set]["win_rate"], run["eval"][args.set]["pairs"]
    if abs(section["metrics"]["win_rate"] - expected) * pairs > 1.5:  # a near-tie may flip
        raise SystemExit(
            f"benchmarks/.quality/rmtrain_{args.set} is not the model of {args.quality}: "
            f"win rate {section['metrics']['win_rate']:.4f}, recorded {expected:.4f}"
        )
    out = setup_record(
        {
            "what": f"robustness probes of the rmtrain model trained on {args.set} by "
            f"{args.quality}, on its {section['counts']['scored_pairs']} held-out pairs",
            "model_from": f"{record['command']} (commit {record['commit']})",
            "settings": record["settings"],
            "seconds": seconds,
            **{k: section[k] for k in ("metrics", "baselines", "flags", "robustness")},
        }
    )
    file = RESULTS / f"robustness_{record['model']}_{args.set}.json"
    file.write_text(json.dumps(out, indent=2))
    print(f"wrote {file}")


if __name__ == "__main__":
    main()
