"""GPU check (issue: scale-out): a Qwen3-0.6B-shaped reward model (random init: no hub on the
GPU machine) trained with bf16 + prefix-sharing packing, single GPU and DeepSpeed ZeRO-3 with
one process. Prints pairs/s, tokens/s, peak memory and MFU = 6 x params x tokens / time / peak.

    bash benchmarks/gpu_check.sh            # both runs, about 5-7 minutes on one H100
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "the",
    "reward",
    "model",
    "reads",
    "the",
    "answer",
    "and",
    "scores",
    "how",
    "helpful",
    "clear",
    "and",
    "correct",
    "it",
    "is",
    "for",
    "the",
    "question",
    "asked",
    "by",
    "the",
    "user",
    "in",
    "this",
    "conversation",
]
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}


def make_model(folder: Path) -> int:
    from transformers import Qwen3ForSequenceClassification

    from rmtrain.builtin import QWEN3_0_6B_SHAPE, tiny_qwen3_config
    from rmtrain.model import load_tokenizer

    tok = load_tokenizer("builtin:tiny-qwen3")
    cfg = tiny_qwen3_config(len(tok), tok.pad_token_id, **QWEN3_0_6B_SHAPE)
    model = Qwen3ForSequenceClassification(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def make_data(path: Path, n: int) -> None:
    rng = random.Random(0)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    with path.open("w") as fh:
        for _ in range(n):
            fh.write(
                json.dumps(
                    {"prompt": text(50, 250), "chosen": text(30, 200), "rejected": text(30, 200)}
                )
                + "\n"
            )


def run(cmd: list[str]) -> dict:
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return {"wall_s": time.time() - start}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--work", default="/tmp/rmtrain_gpu_check")
    a = ap.parse_args()
    import torch

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    n_params = make_model(work / "model")
    make_data(work / "data.jsonl", a.steps * a.batch + 500)
    gpu = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_FLOPS.items() if k in gpu), 989e12)
    common = [
        "-m",
        "rmtrain",
        "train",
        "--model",
        str(work / "model"),
        "--dataset",
        str(work / "data.jsonl"),
        "--frac",
        "1.0",
        "--max-length",
        "512",
        "--batch",
        str(a.batch),
        "--max-steps",
        str(a.steps),
        "--bf16",
        "true",
        "--packing",
        "prefix_sharing",
        "--report-to",
        "none",
        "--logging-steps",
        "50",
        "--lr",
        "1e-5",
        "--overwrite",
    ]
    runs = {"single_gpu": [sys.executable, *common, "--output", str(work / "single")]}
    try:
        import deepspeed  # noqa: F401

        runs["zero3_1proc"] = [
            "accelerate",
            "launch",
            "--config_file",
            "configs/accelerate/zero3.yaml",
            "--num_processes",
            "1",
            *common,
            "--output",
            str(work / "zero3"),
        ]
    except ImportError:
        print("deepspeed is not installed: skipping the ZeRO-3 run", file=sys.stderr)
    results = {}
    for name, cmd in runs.items():
        torch.cuda.empty_cache()
        run(cmd)
        out = work / ("single" if name == "single_gpu" else "zero3")
        m = json.loads((out / "metrics.json").read_text())["metrics"]
        secs, tokens = m["train_runtime"], m["train_tokens"]
        results[name] = {
            "pairs_per_s": a.steps * a.batch / secs,
            "tokens_per_s": tokens / secs,
            "peak_memory_gib": m.get("train_peak_memory_gib"),
            "mfu": 6 * n_params * tokens / secs / peak,
        }
        print(name, json.dumps(results[name]), flush=True)
    print(
        json.dumps(
            {"gpu": gpu, "params": n_params, "steps": a.steps, "batch": a.batch, "results": results}
        )
    )


if __name__ == "__main__":
    main()
