"""`rmtrain eval --benchmark`: RewardBench, RewardBench 2 and RM-Bench on a reward model.

A benchmark is its hub data set (or a local copy in the same schema), how a row becomes the
responses to score, and its authors' arithmetic (`benchmark_scores`). Every response is scored
by `score_records`, the path `rmtrain score` takes (the chat template, the reward position,
prefix trees: RewardBench 2's four answers to one prompt share the prompt's tokens). A new
benchmark is one entry in BENCHMARKS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmtrain.errors import RmtrainError
from rmtrain.evaluation import benchmark_scores as arithmetic


@dataclass(frozen=True)
class Benchmark:
    hub: str  # the data set on the Hugging Face Hub
    split: str
    version: str  # what the scores are comparable with
    columns: dict[str, type]  # every row holds these, of these types
    group: str  # the column that names a row's subset (or domain)
    groups: tuple[str, ...]  # every one of them must be present
    responses: Callable[[dict[str, Any]], list[str]]  # in the order the arithmetic reads them
    score: Callable[[list[dict[str, Any]], list[list[float]]], dict[str, Any]]
    sections: Callable[[dict[str, Any]], dict[str, dict[str, float]]]  # a chart each
    row_problem: Callable[[dict[str, Any]], str | None] = lambda row: None  # beyond columns
    group_of: Callable[[str], str] = lambda value: value  # a group value -> its group


def _rb(rows: list[dict[str, Any]], rewards: list[list[float]]) -> dict[str, Any]:
    subsets = [r["subset"] for r in rows]
    return arithmetic.rewardbench(subsets, [x[0] for x in rewards], [x[1] for x in rewards])


def _rb2(rows: list[dict[str, Any]], rewards: list[list[float]]) -> dict[str, Any]:
    items = [
        {
            "subset": row["subset"],
            "id": str(row.get("id", "")),
            "num_correct": len(row["chosen"]),  # the correct answers come first
            "scores": scores,
        }
        for row, scores in zip(rows, rewards, strict=True)
    ]
    return arithmetic.rewardbench2(items)


def _rmb(rows: list[dict[str, Any]], rewards: list[list[float]]) -> dict[str, Any]:
    domains = [r["domain"] for r in rows]
    return arithmetic.rmbench(domains, [x[:3] for x in rewards], [x[3:] for x in rewards])


def _rb2_row(row: dict[str, Any]) -> str | None:
    if not (row["chosen"] and row["rejected"]):
        return "needs chosen and rejected answers"
    if row["subset"] == "Ties" and not re.fullmatch(r"(ref|tied):\d+", str(row.get("id", ""))):
        return f"(Ties) needs an id 'ref:N' or 'tied:N', got {row.get('id')!r}"
    return None


def _rmb_row(row: dict[str, Any]) -> str | None:
    if not len(row["chosen"]) == len(row["rejected"]) == 3:
        return "needs 3 chosen and 3 rejected answers"
    return None


# Hub names and splits as the authors' code loads them: rewardbench 0.1.4 `utils.py`
# (`load_dataset(CORE_EVAL_SET, split="filtered")`, `load_dataset(CORE_EVAL_SET_V2,
# split="test")`); RM-Bench's hub copy is one `total_dataset.json`, read as split "train".
BENCHMARKS: dict[str, Benchmark] = {
    "rewardbench": Benchmark(
        hub="allenai/reward-bench",
        split="filtered",
        version="RewardBench 1 (filtered split; sections weighted as rewardbench 0.1.4)",
        columns={"prompt": str, "chosen": str, "rejected": str, "subset": str},
        group="subset",
        groups=tuple(t for tests in arithmetic.SUBSET_MAPPING.values() for t in tests),
        responses=lambda row: [row["chosen"], row["rejected"]],
        score=_rb,
        sections=lambda r: {"sections": r["sections"], "subsets": r["subsets"]},
    ),
    "rewardbench2": Benchmark(
        hub="allenai/reward-bench-2",
        split="test",
        version="RewardBench 2 (best-of-4 and Ties as rewardbench 0.1.4)",
        columns={"prompt": str, "chosen": list, "rejected": list, "subset": str},
        group="subset",
        groups=arithmetic.RB2_SUBSETS,
        responses=lambda row: [*row["chosen"], *row["rejected"]],
        score=_rb2,
        sections=lambda r: {"subsets": r["subsets"]},
        row_problem=_rb2_row,
    ),
    "rmbench": Benchmark(
        hub="THU-KEG/RM-Bench",
        split="train",
        version="RM-Bench (3 x 3 style matrix as its README's compute_accuracy; averages as "
        "its leaderboard)",
        columns={"prompt": str, "chosen": list, "rejected": list, "domain": str},
        group="domain",
        groups=arithmetic.RMBENCH_DOMAINS,
        responses=lambda row: [*row["chosen"], *row["rejected"]],
        score=_rmb,
        sections=lambda r: {
            "levels": r["levels"],
            "domains": {d: v["score"] for d, v in r["domains"].items()},
        },
        row_problem=_rmb_row,
        group_of=lambda domain: domain.split("-")[0],  # safety-refuse, safety-response: safety
    ),
}


def load_benchmark(name: str, data: str | None) -> list[dict[str, Any]]:
    """The benchmark's rows from `data` (a local copy) or the hub, schema checked: one line
    naming the first row, column or subset that does not fit."""
    from rmtrain.data.reading import load_rows

    bench = _get(name)
    where = data or bench.hub
    rows = [dict(r) for r in load_rows(where, bench.split)]
    for i, row in enumerate(rows):
        for col, kind in bench.columns.items():
            if not isinstance(row.get(col), kind):
                raise RmtrainError(
                    f"{where}: row {i} has no {kind.__name__} {col!r}: not {name}'s schema "
                    f"(columns {', '.join(bench.columns)})"
                )
        problem = bench.row_problem(row)
        if problem:
            raise RmtrainError(f"{where}: row {i} {problem}")
    present = {bench.group_of(str(r[bench.group])) for r in rows}
    missing = [g for g in bench.groups if g not in present]
    if missing:
        raise RmtrainError(
            f"{where}: {name} needs every {bench.group}; missing: {', '.join(missing)}"
        )
    return rows


def _get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise RmtrainError(f"--benchmark {name!r} is unknown; choose {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def score_benchmark(scorer: Any, name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every row's rewards through `score_records` (in one call: prefix trees across rows),
    then the benchmark's arithmetic. A response that cannot be scored (too long) makes its
    row wrong, counted in `unscored_rows`."""
    from rmtrain.serving.scorer import score_records

    bench = _get(name)
    records, spans = [], []
    for row in rows:
        answers = bench.responses(row)
        spans.append((len(records), len(answers)))
        records += [{"prompt": row["prompt"], "response": a} for a in answers]
    scored = score_records(scorer, records)
    rewards, unscored = [], 0
    for start, n in spans:
        got = scored[start : start + n]
        if any("reward" not in g for g in got):
            unscored += 1
            # wrong whatever the rule: the first (correct) answer gets the lowest reward
            rewards.append([float("-inf")] + [0.0] * (n - 1))
        else:
            rewards.append([g["reward"] for g in got])
    result = bench.score(rows, rewards)
    return {
        "benchmark": name,
        "version": bench.version,
        "prompts": len(rows),
        "unscored_rows": unscored,
        **result,
        "rewards": [[r if r != float("-inf") else None for r in x] for x in rewards],
    }


def write_benchmark_report(result: dict[str, Any], output: Path, model: str) -> list[str]:
    """report.json, report.md and a bar chart per section; returns the plots."""
    from rmtrain.evaluation.report import _plt

    output.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    plots = []
    for title, values in section_scores(result).items():
        fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(values) + 2), 3.2))
        ax.bar(list(values), [100 * v for v in values.values()], color="#4c72b0")
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{result['benchmark']}: {title}")
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        fig.tight_layout()
        name = f"{result['benchmark']}_{title.lower().replace(' ', '_')}.png"
        fig.savefig(output / name, dpi=100)
        plt.close(fig)
        plots.append(name)
    report = {"model": model, **{k: v for k, v in result.items() if k != "rewards"}}
    report["plots"] = plots
    (output / "report.json").write_text(json.dumps(report, indent=2))
    (output / "report.md").write_text(_markdown(report))
    (output / "rewards.json").write_text(json.dumps(result["rewards"]))
    return plots


def section_scores(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """What each bar chart shows: name -> {bar: accuracy}."""
    return _get(result["benchmark"]).sections(result)


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# {report['benchmark']}: {100 * report['score']:.1f}",
        "",
        f"Model: `{report['model']}`. {report['version']}; {report['prompts']} prompts, "
        f"{report['unscored_rows']} not scored (too long, counted wrong).",
        "",
    ]
    for title, values in section_scores(report).items():
        lines += [f"## {title.capitalize()}", "", "| | accuracy (%) |", "|---|---:|"]
        lines += [f"| {k} | {100 * v:.1f} |" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


def run_benchmark(
    model_dir: str,
    name: str,
    data: str | None,
    output: str,
    max_length: int | None = None,
    speed_mode: str = "auto",
    overwrite: bool = False,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Load, score, write the report, print the scores."""
    from rmtrain.outputs import check_output_folder, write_owner
    from rmtrain.serving.scorer import load_scorer

    out = Path(output)
    inputs = [model_dir, *([data] if data and Path(data).expanduser().exists() else [])]
    check_output_folder(out, "eval", inputs, overwrite, lambda p: (p / "report.json").exists())
    rows = load_benchmark(name, data)
    scorer = load_scorer(model_dir, max_length=max_length, speed_mode=speed_mode)
    result = score_benchmark(scorer, name, rows)
    write_owner(out, "eval", model=model_name or model_dir)
    write_benchmark_report(result, out, model_name or model_dir)
    shown = [(k, v) for values in section_scores(result).values() for k, v in values.items()]
    parts = ", ".join(f"{k} {100 * v:.1f}" for k, v in shown)
    print(f"[rmtrain] {name}: {100 * result['score']:.1f} ({parts}); {len(rows)} prompts")
    print(f"[rmtrain] report written to {out}/report.md")
    return result


def check_card(folder: Path) -> None:
    """`--card` writes only into a model folder rmtrain trained (its marker says so)."""
    from rmtrain.outputs import read_owner

    owner = read_owner(folder) if folder.is_dir() else None
    if not owner or owner.get("kind", "train") != "train" or not (folder / "README.md").is_file():
        raise RmtrainError(
            f"--card writes into a model folder rmtrain trained; {folder} is not one (a "
            "models:/ model or another tool's folder keeps its card)"
        )


def add_to_card(result: dict[str, Any], folder: Path) -> None:
    """The scores as a section of the model card of `folder`, which rmtrain trained (its
    marker says so); one line for any other folder."""
    from rmtrain.evaluation.model_card import with_benchmark
    from rmtrain.outputs import atomic_writer

    check_card(folder)
    rows = {"score": result["score"]}
    rows.update({k: v for values in section_scores(result).values() for k, v in values.items()})
    note = f"{result['version']}; {result['prompts']} prompts, scored by `rmtrain eval`."
    card = with_benchmark((folder / "README.md").read_text(), result["benchmark"], rows, note)
    with atomic_writer(folder / "README.md") as fh:
        fh.write(card)
    print(f"[rmtrain] {result['benchmark']} scores added to {folder / 'README.md'}")


def benchmark_names() -> Sequence[str]:
    return tuple(BENCHMARKS)
