"""Where in a training step the memory peak happens: resident memory (what the process holds)
and glibc's bytes in use (what live tensors and objects take), per step and phase, sampled
every 10 ms, for one path of `bench_train.py` (same model, pairs and trainer setup).

    python benchmarks/mem_phases.py trl se
    python benchmarks/mem_phases.py prefix_sharing se

Peak RSS on CPU is mostly the allocator's: glibc keeps freed heap memory mapped, so two tools
with the same live bytes can differ in RSS and the other way round. Linux + glibc only.
"""

from __future__ import annotations

import ctypes
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train as bt  # noqa: E402


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks")
        + ("uordblks", "fordblks", "keepcost")
    ]


class _Sampler:
    """Peak RSS and peak malloc bytes in use per phase label."""

    def __init__(self) -> None:
        self.phase, self.rss, self.live = "load", {}, {}
        self._libc = ctypes.CDLL("libc.so.6")
        self._libc.mallinfo2.restype = _MallInfo2
        self._page = 4096 / 2**20
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * self._page
            m = self._libc.mallinfo2()
            live = (m.uordblks + m.hblkhd) / 2**20  # heap in use + mmapped chunks
            self.rss[self.phase] = max(self.rss.get(self.phase, 0.0), rss)
            self.live[self.phase] = max(self.live.get(self.phase, 0.0), live)
            time.sleep(0.01)


def main(path: str, dataset: str, steps: int = 4) -> None:
    from transformers import TrainerCallback, set_seed

    feats = bt.build_features("smollm2", dataset, 512)["features"]
    data = Path(tempfile.mkdtemp()) / "feats.json"
    data.write_text(json.dumps({"train": feats[: 2 * steps], "eval": feats[2 * steps :][:2]}))
    spec: dict[str, Any] = {"path": path, "model": "smollm2", "data": str(data), "pairs": 2}
    spec |= {"steps": steps, "max_length": 512, "eval_batch": 8}
    set_seed(0)
    sampler = _Sampler()
    fs = json.loads(data.read_text())
    build = bt._trl_trainer if path.startswith("trl") else bt._rm_trainer
    trainer = build(spec, fs["train"], fs["eval"], [])

    class Phases(TrainerCallback):
        n = 0

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            Phases.n += 1
            sampler.phase = f"step {Phases.n} fwd"

        def on_pre_optimizer_step(self, args, state, control, **kw):  # noqa: ANN001
            sampler.phase = f"step {Phases.n} optimizer"

    trainer.add_callback(Phases())
    # the forward's end splits a step's peak into "kept activations" and "backward"
    trainer.model.register_forward_hook(
        lambda *_: setattr(sampler, "phase", f"step {Phases.n} bwd") if Phases.n else None
    )
    trainer.train()
    time.sleep(0.05)
    table = {
        k: {"rss_mb": round(sampler.rss[k]), "live_mb": round(sampler.live[k])} for k in sampler.rss
    }
    print(json.dumps({"path": path, "dataset": dataset, "phases": table}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
