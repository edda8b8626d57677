"""Side-by-side training (and evaluation) speed: TRL's RewardTrainer vs rmtrain's three layouts.

    python benchmarks/train_vs_trl.py                  # small CPU mode: tiny Qwen3 + SmolLM2-135M
    python benchmarks/train_vs_trl.py --mode gpu       # GPU mode (random-init Qwen3-0.6B shape)
    python benchmarks/train_vs_trl.py --models smollm2 --max-length 512 --steps 4

Each path runs in its own subprocess, alternating and repeated, on the same model, the same
token ids (rmtrain's encoding, given to TRL pre-tokenised), the same pairs per step and the same
number of optimizer steps (one epoch over exactly steps x pairs pairs, so both see the same
pairs). Pairs are those both keep at the max length (TRL drops over-long pairs; rmtrain cuts
them): how many each keeps of the full set is reported separately. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, SHARED, build_features, model_id, setup_record  # noqa: E402

PATHS = ("trl", "none", "padding_free", "prefix_sharing")


# ----------------------------------------------------------------------------- worker
class _StepClock:
    """Trainer callback: wall time of every optimizer step after the first (warm-up)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                outer.stamps.append(time.perf_counter())

            def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
                outer.stamps.append(time.perf_counter())

        return CB()


def _count_tokens(collator: Any, sink: list[int]) -> Any:
    def wrapped(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collator(features)
        sink.append(int(batch["input_ids"].numel()))
        return batch

    wrapped.takes_prompt_groups = getattr(collator, "takes_prompt_groups", False)  # type: ignore[attr-defined]

    return wrapped


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _RssByPhase:
    """Peak resident memory per phase (load / train / eval), sampled every 20 ms: shows where
    each path's peak happens, which the process-wide peak alone does not."""

    def __init__(self) -> None:
        import threading

        self.phase, self.peaks = "load", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE") / 2**20
        while not self._stop.wait(0.02):
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.peaks.items()}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import set_seed

    set_seed(0)
    rss = _RssByPhase()
    feats = json.loads(Path(spec["data"]).read_text())
    train, evals = feats["train"], feats["eval"]
    path, pairs, steps = spec["path"], spec["pairs"], spec["steps"]
    tokens: list[int] = []
    clock = _StepClock()
    if path.endswith("+nocudnn"):  # any path: SDPA without cuDNN for the whole process
        torch.backends.cuda.enable_cudnn_sdp(False)
        spec = {**spec, "path": path.removesuffix("+nocudnn")}
    if path.startswith("trl") and path.endswith("+retain"):  # TRL with rmtrain's allocator setting
        from rmtrain import speed

        speed.retain_memory()
        spec = {**spec, "path": path.removesuffix("+retain")}
    trainer = (_trl_trainer if path.startswith("trl") else _rm_trainer)(spec, train, evals, tokens)
    trainer.add_callback(clock())
    if spec.get("eval_only"):  # no training; one untimed warm-up batch, as for training
        rss.phase = "eval"
        clock.stamps = [0.0, 0.0, 1.0]
        warm = trainer.eval_dataset
        warm = warm.select(range(2)) if hasattr(warm, "select") else warm[:2]
        trainer.evaluate(eval_dataset=warm)
        tokens.clear()
    else:
        rss.phase = "train"
        trainer.train()
    rss.phase = "eval"
    train_tokens = sum(tokens)
    times = clock.stamps
    timed = times[-1] - times[1] if len(times) > 2 else times[-1] - times[0]
    timed_steps = steps - 1 if len(times) > 2 else steps
    t0 = time.perf_counter()
    trainer.evaluate()
    eval_s = time.perf_counter() - t0
    return {
        "path": path,
        "pairs_per_s": 0.0 if spec.get("eval_only") else timed_steps * pairs / timed,
        "step_s": timed / timed_steps,
        "train_tokens_computed": train_tokens,
        "eval_pairs_per_s": len(evals) / eval_s,
        "eval_tokens_computed": sum(tokens) - train_tokens,
        "peak_memory_mb": _peak_memory_mb(),
        "cuda_peak_reserved_mb": (
            torch.cuda.max_memory_reserved() / 2**20 if torch.cuda.is_available() else None
        ),
        "peak_rss_mb_by_phase": rss.stop(),
        "threads": torch.get_num_threads(),
    }


def _load_model(spec: dict[str, Any]) -> tuple[Any, Any]:
    import torch

    from rmtrain.modeling.loading import load_reward_model, load_tokenizer

    tok = load_tokenizer(model_id(spec["model"]))
    if spec.get("gpu_random_qwen3"):
        from transformers import Qwen3ForSequenceClassification

        from rmtrain.data.builtin import QWEN3_0_6B_SHAPE, tiny_qwen3_config

        cfg = tiny_qwen3_config(len(tok), tok.pad_token_id, **QWEN3_0_6B_SHAPE)
        with torch.device("cuda"):  # random init on the GPU: seconds, not a minute of CPU
            return Qwen3ForSequenceClassification(cfg), tok
    return load_reward_model(model_id(spec["model"]), tok.pad_token_id, torch.float32), tok


def _trl_trainer(spec: dict[str, Any], train: list, evals: list, tokens: list[int]) -> Any:
    import torch
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    model, tok = _load_model(spec)

    def as_trl(fs: list[dict[str, Any]]) -> Dataset:
        return Dataset.from_list(
            [
                {
                    "chosen_ids": f["prompt_ids"] + f["chosen_ids"],
                    "rejected_ids": f["prompt_ids"] + f["rejected_ids"],
                }
                for f in fs
            ]
        )

    gpu = torch.cuda.is_available()
    args = RewardConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=spec["pairs"],
        per_device_eval_batch_size=spec["eval_batch"],
        num_train_epochs=1,
        max_steps=spec["steps"],
        learning_rate=5e-6,
        max_length=spec["max_length"],
        report_to=[],
        save_strategy="no",
        logging_steps=10_000,
        bf16=gpu,
        use_cpu=not gpu,
        disable_tqdm=True,
        seed=0,
        gradient_checkpointing=spec["path"] == "trl",  # TRL's default is on; trl_nogc turns it off
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=as_trl(train),
        eval_dataset=as_trl(evals),
        processing_class=tok,
    )
    trainer.data_collator = _count_tokens(trainer.data_collator, tokens)
    return trainer


def _block_attention(flags: list[str]) -> str:
    named = {"blocks": "on", "noblocks": "off", "flex": "flex"}
    return next((named[f] for f in flags if f in named), "auto")


def _rm_trainer(spec: dict[str, Any], train: list, evals: list, tokens: list[int]) -> Any:
    from rmtrain import speed
    from rmtrain.batching.collate import grouping_length, make_eval_collator
    from rmtrain.config import TrainConfig
    from rmtrain.modeling.rewards import attention_cost_ratio
    from rmtrain.training.settings import (
        checkpointing,
        speed_options,
        train_collator,
        training_arguments,
        tune_allocator,
    )
    from rmtrain.training.trainer import PairwiseRewardTrainer, make_compute_metrics

    model, tok = _load_model(spec)
    # "prefix_sharing+gc3": that layout with checkpointing every 3rd layer; "+grouped": with
    # --group-by-prompt (the pairs of one prompt in the same steps, trained on prefix trees);
    # "+fused": --fuse-elementwise true; "+nocap": --cap-activations false; "+blocks" /
    # "+noblocks": --block-attention on / off; "+flex": --block-attention flex; "+release":
    # --retain-freed-memory false; "+forked": --prefix-trees off (each pair its own block);
    # "+speedoff": --speed off (the plain transformers path)
    packing, *flags = spec["path"].split("+")
    gc = next((f[2:] for f in flags if f.startswith("gc")), None)
    cfg = TrainConfig(
        model=spec["model"],
        batch=spec["pairs"],
        eval_batch=spec["eval_batch"],
        max_steps=spec["steps"],
        max_length=spec["max_length"],
        packing=packing,
        row_budget=spec.get("row_budget"),
        gradient_checkpointing=True if gc is not None else spec.get("gradient_checkpointing"),
        checkpoint_every=int(gc or 0) or spec.get("checkpoint_every") or 1,
        group_by_prompt="grouped" in flags,
        prefix_trees="off" if "forked" in flags else "auto",
        lean_activations=spec.get("lean_activations", True) and "nolean" not in flags,
        fuse_elementwise="fused" in flags,
        cap_activations="nocap" not in flags,
        block_attention=_block_attention(flags),
        retain_freed_memory="release" not in flags,
        speed="off" if "speedoff" in flags else "auto",
        report_to=["none"],
        logging_steps=10_000,
        eval_steps=0,  # train() is timed alone; evaluate() is timed apart
    )
    tune_allocator(cfg)
    speed.install(model, speed_options(cfg), checkpointing(cfg, model.num_parameters()))
    for f in train + evals:
        f["length"] = grouping_length(f)  # as training sorts them
    evals.sort(key=lambda f: -f["length"])
    for i, f in enumerate(evals):
        f["pair_index"] = i
    args = training_arguments(cfg, Path(tempfile.mkdtemp()), ["none"])
    args.disable_tqdm = True
    cost = attention_cost_ratio(model.config)
    collator = train_collator(cfg, tok.pad_token_id, cost)
    eval_collator = make_eval_collator(cfg.packing, tok.pad_token_id, cfg.max_length, False, cost)
    return PairwiseRewardTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evals,
        data_collator=_count_tokens(collator, tokens),
        eval_collator=_count_tokens(eval_collator, tokens),
        compute_metrics=make_compute_metrics([str(i) for i in range(len(evals))]),
    )


# ----------------------------------------------------------------------------- parent
def run_case(model: str, dataset: str, a: argparse.Namespace, paths: list[str]) -> dict[str, Any]:
    n_train, n_eval = a.steps * a.pairs, a.eval_pairs
    info = build_features(model, dataset, a.max_length)
    feats = info.pop("features")
    if len(feats) < n_train + n_eval:
        raise SystemExit(f"{dataset}: only {len(feats)} pairs fit {a.max_length} tokens")
    data = Path(tempfile.mkdtemp()) / "feats.json"
    data.write_text(
        json.dumps({"train": feats[:n_train], "eval": feats[n_train : n_train + n_eval]})
    )
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
    for rep in range(a.repeats):
        order = paths if rep % 2 == 0 else list(reversed(paths))
        for path in order:
            spec = {
                "path": path,
                "model": model,
                "data": str(data),
                "pairs": a.pairs,
                "steps": a.steps,
                "max_length": a.max_length,
                "eval_batch": a.eval_batch,
                "gpu_random_qwen3": a.mode == "gpu",
                "eval_only": a.eval_only,
                "row_budget": a.row_budget,
                "gradient_checkpointing": a.gradient_checkpointing,
                "checkpoint_every": a.checkpoint_every,
                "lean_activations": a.lean_activations == "true",
            }
            out = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if out.returncode != 0:
                raise SystemExit(f"{path} failed:\n{out.stderr[-3000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[path].append(res)
            if a.runs_log:  # each run as it ends: a run cut short still leaves its data
                with open(a.runs_log, "a") as fh:
                    fh.write(json.dumps({"case": f"{model}/{dataset}", "rep": rep, **res}) + "\n")
            print(
                f"  {model}/{dataset} rep {rep} {path}: {res['pairs_per_s']:.3f} pairs/s, "
                f"eval {res['eval_pairs_per_s']:.2f} pairs/s",
                file=sys.stderr,
                flush=True,
            )
    return {"keep_counts": info, **summarise(results)}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    med = {}
    for path, runs in results.items():
        med[path] = {
            k: statistics.median(r[k] for r in runs)
            for k in ("pairs_per_s", "step_s", "eval_pairs_per_s", "peak_memory_mb")
        }
        med[path]["train_tokens_computed"] = runs[0]["train_tokens_computed"]
        med[path]["eval_tokens_computed"] = runs[0]["eval_tokens_computed"]
        med[path]["runs"] = [round(r["pairs_per_s"], 4) for r in runs]
        med[path]["peak_rss_mb_by_phase"] = [r["peak_rss_mb_by_phase"] for r in runs]
    base = med.get("trl")
    ratios = {}
    if base:
        for path, m in med.items():
            ratios[path] = {
                "pairs_per_s_vs_trl": _ratio(m["pairs_per_s"], base["pairs_per_s"]),
                "eval_pairs_per_s_vs_trl": _ratio(m["eval_pairs_per_s"], base["eval_pairs_per_s"]),
                "tokens_vs_trl": _ratio(m["train_tokens_computed"], base["train_tokens_computed"]),
                "eval_tokens_vs_trl": _ratio(
                    m["eval_tokens_computed"], base["eval_tokens_computed"]
                ),
                "peak_memory_vs_trl": m["peak_memory_mb"] / base["peak_memory_mb"],
                # repeat k of this path over repeat k of TRL (run next to each other): the
                # spread says how far the median ratio can be trusted on a noisy machine
                "pairs_per_s_vs_trl_by_run": [
                    round(a / b, 3) for a, b in zip(m["runs"], base["runs"], strict=True) if b
                ],
            }
    return {"paths": med, "ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("small", "gpu"), default="small")
    ap.add_argument("--models", nargs="+", default=None, help="tiny, smollm2 or a model path")
    ap.add_argument("--datasets", nargs="+", default=["se", "hh"], choices=("se", "hh"))
    ap.add_argument(
        "--paths",
        nargs="+",
        default=list(PATHS),
        help="also trl_nogc; rmtrain path+gc / +gcN: checkpointing (every N-th layer), "
        "prefix_sharing+grouped: --group-by-prompt; +fused: --fuse-elementwise true; +nocap: "
        "--cap-activations false; +blocks / +noblocks: --block-attention on / off; +release: "
        "--retain-freed-memory false; trl+retain: TRL with that allocator setting; any "
        "path+nocudnn: SDPA without cuDNN",
    )
    ap.add_argument("--runs-log", default=None, help="append each run's JSON to this file")
    ap.add_argument("--output", default=None, help="also write the summary JSON here")
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--pairs", type=int, default=2, help="pairs per optimizer step")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--eval-pairs", type=int, default=16)
    ap.add_argument("--eval-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--row-budget", type=int, default=None, help="rmtrain packed row budget")
    ap.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        default=None,
        help="turn gradient checkpointing on for the rmtrain paths",
    )
    ap.add_argument(
        "--checkpoint-every", type=int, default=1, help="rmtrain: checkpoint every N-th layer"
    )
    ap.add_argument(
        "--lean-activations",
        choices=("true", "false"),
        default="true",
        help="rmtrain: lean RMSNorm / SiLU-MLP activations (the training default)",
    )
    ap.add_argument(
        "--eval-only",
        action="store_true",
        help="time only evaluate() (scoring without gradients) on --eval-pairs",
    )
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(run_worker(json.loads(a.worker))))
        return
    if not SHARED.is_dir():
        raise SystemExit(f"benchmark data not found at {SHARED}")
    small = a.mode == "small"
    models = a.models or (["tiny", "smollm2"] if small else ["tiny"])
    a.max_length = a.max_length or (256 if small else 512)
    a.steps = a.steps or (4 if small else 200)
    out: dict[str, Any] = {"cases": {}}
    for model in models:
        for dataset in a.datasets:
            out["cases"][f"{model}/{dataset}"] = run_case(model, dataset, a, a.paths)
    out["setup"] = setup_record(
        {
            "max_length": a.max_length,
            "pairs_per_step": a.pairs,
            "steps": a.steps,
            "repeats": a.repeats,
            "eval_pairs": a.eval_pairs,
        }
    )
    print(json.dumps(out))
    if a.output:
        Path(a.output).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
