#!/usr/bin/env bash
# GPU checks in one command, for a GPU machine without network (wheels in .whl/, benchmark data
# in .gpu/data with the layout of ../shared/data; both git-ignored):
#   1. the equality tests on CUDA (pytest -m gpu);
#   2. train_vs_trl.py in GPU mode (random-init Qwen3-0.6B shape).
# Results go to $OUT (default ./gpu_out): gpu_tests.log, runs.jsonl, train_vs_trl.json.
set -o pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD
fi
if [ -d .gpu/data ] && [ ! -e ../shared/data ]; then
  mkdir -p ../shared && ln -s "$PWD/.gpu/data" ../shared/data
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pytest -q -m gpu tests/speed/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
python3 benchmarks/train_vs_trl.py --mode gpu --datasets ${DATASETS:-hh se} \
  --pairs ${PAIRS:-32} --steps ${STEPS:-12} --repeats ${REPEATS:-1} \
  --paths ${PATHS:-trl prefix_sharing prefix_sharing+blocks} \
  --runs-log "$OUT/runs.jsonl" --output "$OUT/train_vs_trl.json"
