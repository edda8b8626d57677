"""A parquet data set laid out like `lvwerra/stack-exchange-paired` on the hub (four parts under
`data/`, sharded files per split) is read from its `--dataset-dir` part only, and only as far
as `--frac` needs."""

import json
import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rmtrain.cli import main
from rmtrain.data.parquet_head import ParquetHead
from rmtrain.data.splits import ORIGINAL_DATASET, resolve_data_dir
from rmtrain.errors import RmtrainError
from tests.helpers import tiny_train_args

SHARDS, PER_SHARD, GROUP = 4, 50, 25  # data/reward: 4 train files of 50 rows, 2 groups each

_OPENED: list[str] = []
_RECORDING = [False]


def _audit(event: str, args: tuple) -> None:
    if _RECORDING[0] and event == "open" and isinstance(args[0], str):
        _OPENED.append(args[0])


sys.addaudithook(_audit)  # records only while a test sets _RECORDING


def _rows(part: str, shard: int, n: int) -> list[dict]:
    """Rows with ~10 KB of incompressible metadata each: a file is far larger than the 64 KiB
    pyarrow reads from its end for the footer, as the hub's files are."""
    noise = random.Random(f"{part}{shard}")
    return [
        {"qid": i, "question": f"{part} {shard} question {i}: how do I sort a list?",
         "response_j": f"Use sorted() ({part} {shard}/{i}); it returns a new list.",
         "response_k": "No idea.", "metadata": noise.randbytes(10_000).hex()}
        for i in range(n)
    ]  # fmt: skip


def hub_layout(root: Path) -> Path:
    """A local folder laid out like the hub repository (names as `datasets` expects)."""
    for part in ("finetune", "reward", "rl", "evaluation"):
        folder = root / "data" / part
        folder.mkdir(parents=True)
        shards = SHARDS if part == "reward" else 1
        for s in range(shards):
            table = pa.Table.from_pylist(_rows(part, s, PER_SHARD))
            name = f"train-{s:05d}-of-{shards:05d}.parquet"
            pq.write_table(table, folder / name, row_group_size=GROUP)
    pq.write_table(pa.Table.from_pylist(_rows("reward-test", 0, 20)),
                   root / "data" / "reward" / "test-00000-of-00001.parquet")  # fmt: skip
    return root


def test_only_the_part_and_the_row_groups_the_sample_needs_are_read(tmp_path):
    hub = hub_layout(tmp_path / "hub")
    reward = hub / "data" / "reward"
    _OPENED.clear()
    _RECORDING[0] = True
    try:
        rows = ParquetHead(str(hub), "data/reward", "train")
        assert len(rows) == SHARDS * PER_SHARD  # from the footers
        footers = rows.bytes_read[0]
        got = rows.head(30)  # the first file's first row group and 5 rows of its second
    finally:
        _RECORDING[0] = False
    assert [r["qid"] for r in got] == list(range(30))
    assert all(r["question"].startswith("reward 0 ") for r in got)
    opened = {Path(p) for p in _OPENED if p.endswith(".parquet")}  # not imports
    train = {reward / f"train-{s:05d}-of-{SHARDS:05d}.parquet" for s in range(SHARDS)}
    assert opened <= train  # no other part, not the test split
    whole = sum(p.stat().st_size for p in train)
    first = (reward / f"train-00000-of-{SHARDS:05d}.parquet").stat().st_size
    assert footers <= SHARDS * 2**16 < whole / 4  # footers only (pyarrow reads 64 KiB)
    assert rows.bytes_read[0] <= footers + first  # then at most the first file
    assert len(ParquetHead(str(hub), "data/reward", "test")) == 20


def test_training_reads_the_head_and_counts_every_row(tmp_path, capsys):
    hub = hub_layout(tmp_path / "hub")
    out = tmp_path / "rm"
    args = tiny_train_args(hub, out, "--dataset-dir", "data/reward", "--frac", "0.25")
    assert main([*args, "--max-steps", "1"]) == 0
    assert "using 50 of 200 rows (--frac 0.25)" in capsys.readouterr().out
    report = json.loads((out / "data_report.json").read_text())
    assert report["rows_read"] == 50 and report["rows_in_source"] == 200
    config = (out / "rmtrain_config.yaml").read_text()
    assert "dataset_dir: data/reward" in config


def test_the_original_data_set_reads_its_reward_part_by_default():
    assert resolve_data_dir(None, ORIGINAL_DATASET) == "data/reward"
    assert resolve_data_dir(None, "Anthropic/hh-rlhf") is None
    assert resolve_data_dir("", ORIGINAL_DATASET) is None  # the whole set, when asked
    assert resolve_data_dir("data/rl", ORIGINAL_DATASET) == "data/rl"


def test_a_part_without_the_split_is_one_line(tmp_path):
    hub = hub_layout(tmp_path / "hub")
    with pytest.raises(RmtrainError, match="no parquet files of split 'validation' under"):
        ParquetHead(str(hub), "data/reward", "validation")
    with pytest.raises(RmtrainError, match=r"\(0 parquet files there\)"):
        ParquetHead(str(hub), "data/nothing", "train")


def test_the_hub_offline_and_a_broken_footer_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RmtrainError, match="is not a local file and the Hugging Face Hub cannot"):
        ParquetHead(ORIGINAL_DATASET, "data/reward", "train")
    hub = hub_layout(tmp_path / "hub")
    (hub / "data" / "rl" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 not parquet")
    with pytest.raises(RmtrainError, match="cannot read the parquet footers under .*data/rl"):
        ParquetHead(str(hub), "data/rl", "train")
