"""End-to-end `rmtrain train` in process on a tiny Qwen3 with the real tokenizer."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rmtrain.batching.collate import PairCollator
from rmtrain.cli import main
from rmtrain.data.builtin import demo_rows
from rmtrain.data.layout import encode_pairs
from rmtrain.data.pairs import Pair
from rmtrain.modeling.rewards import pair_rewards
from tests.helpers import assert_trains_the_same, tiny_train_args

# a learning rate that moves the model, every step logged: equal runs are compared step by step
MOVING = ("--max-steps", "3", "--lr", "1e-3", "--logging-steps", "1")


def test_writes_every_output(trained):
    out, _ = trained
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "rmtrain_config.yaml",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob(".staging-*"))
    cfg = yaml.safe_load((out / "rmtrain_config.yaml").read_text())  # grouped as in --help
    assert cfg["training"]["max_steps"] == 6 and cfg["model"]["model"] == "builtin:tiny-qwen3"
    assert cfg["speed"]["speed"] == "auto" and cfg["output"]["output"] == str(out)


def test_metrics_and_counts(trained):
    from rmtrain.data.formats import read_pairs
    from rmtrain.data.reading import load_rows
    from rmtrain.data.splits import split_by_group
    from rmtrain.evaluation.metrics import reward_metrics
    from rmtrain.serving.scorer import load_scorer

    out, data_file = trained
    result = json.loads((out / "metrics.json").read_text())
    data, metrics = result["data"], result["metrics"]
    assert data["rows_read"] == 120
    assert data["train_pairs"] + data["test_pairs"] + data["dropped_total"] == 120
    assert metrics["num_pairs"] == data["test_pairs"]
    # the held-out split, recomputed with the same seed: the same pairs
    _, test = split_by_group(read_pairs(load_rows(str(data_file)), 1.0, 3)[0], 0.2, 3)
    assert data["test_pairs"] == len(test) and data["dropped_total"] == 0
    assert metrics["train_steps"] == 6
    # the saved model, re-scored on those pairs, gives the logged metrics
    scored = load_scorer(str(out)).score_pairs(test)
    again = reward_metrics(scored.chosen, scored.rejected, [p.group for p in test])
    assert metrics["win_rate"] == pytest.approx(again["win_rate"])
    assert metrics["kendall_tau"] == pytest.approx(again["kendall_tau"])
    config = json.loads((out / "config.json").read_text())
    assert config["reward_mean"] == pytest.approx(metrics["reward_mean"])
    # saved with the template's newline as pad: the stock head reads the end-of-turn token
    assert len(config["id2label"]) == 1 and config["pad_token_id"] == 198
    assert config["mean"] == config["reward_mean"] and config["std"] == config["reward_std"]


def test_mlflow_run_recorded(trained, mlflow_store):
    from mlflow import MlflowClient

    out, _ = trained
    client = MlflowClient(mlflow_store)
    runs = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id])
        if r.data.params.get("rmtrain.output") == str(out)
    ]
    assert len(runs) == 1, "no MLflow run for the trained output"
    run = runs[0]
    assert run.data.params["rmtrain.model"] == "builtin:tiny-qwen3"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 4, 6]
    final = client.get_metric_history(run.info.run_id, "final_win_rate")
    assert [m.step for m in final] == [6]  # at the last step, not at step 0


def test_reloaded_model_gives_rmtrain_rewards(trained):
    out, data = trained
    tok = AutoTokenizer.from_pretrained(out)
    stock = AutoModelForSequenceClassification.from_pretrained(out).eval()
    pairs = [
        Pair(r["prompt"], r["chosen"], r["rejected"], "g", i)
        for i, r in enumerate(demo_rows(6, seed=9))
    ]
    feats, _, _ = encode_pairs(tok, pairs, 96, chat=True)
    batch = PairCollator(tok.pad_token_id)(feats)
    with torch.no_grad():
        ours = torch.cat(pair_rewards(stock, batch))
        theirs = stock(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(ours, theirs.squeeze(-1), atol=1e-5)


def test_refuses_to_overwrite_a_model(trained, capsys):
    out, data = trained
    code = main(tiny_train_args(data, out))
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (Path(out) / "config.json").is_file()


def test_checkpointing_every_other_layer_keeps_the_result(tmp_path):
    """`--checkpoint-every 2` recomputes only layer 0 of the tiny model's two, and training
    gives the same losses and metrics as without checkpointing."""
    from transformers import TrainerCallback

    from rmtrain.cli import build_parser
    from rmtrain.config import TrainConfig, config_from_args
    from rmtrain.training.recipe import run_train
    from tests.helpers import write_demo

    data = write_demo(tmp_path / "d.jsonl", 40, seed=3)
    flags: list[list[bool]] = []

    class Flags(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):  # noqa: ANN001
            layers = model.model.layers
            flags.append([bool(layer.gradient_checkpointing) for layer in layers])

    results, folders = [], []
    for name, extra in (("plain", []), ("gc", ["--gradient-checkpointing", "true"])):
        argv = tiny_train_args(data, tmp_path / name, *MOVING, "--checkpoint-every", "2")
        cfg = config_from_args(build_parser().parse_args(argv + extra), TrainConfig)
        results.append(run_train(cfg, callbacks=[Flags()]))
        folders.append(tmp_path / name)
    assert flags[:3] == [[False, False]] * 3 and flags[3:] == [[True, False]] * 3
    assert_trains_the_same(results, folders)


def test_group_by_prompt_trains_on_prefix_trees(tmp_path):
    """`--group-by-prompt`: the prompt-grouped sampler runs, and its batches (the pairs of a
    prompt together) share more prefixes than the same run's length-grouped batches, so the
    same number of steps computes strictly fewer tokens."""
    from transformers import TrainerCallback

    from rmtrain.cli import build_parser
    from rmtrain.config import TrainConfig, config_from_args
    from rmtrain.training.recipe import run_train
    from rmtrain.training.samplers import PromptGroupedSampler
    from tests.helpers import write_demo

    data = write_demo(tmp_path / "d.jsonl", 40, seed=3)
    samplers = {}

    class Sampler(TrainerCallback):
        def __init__(self, name):
            self.name = name

        def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
            found = [train_dataloader.sampler, train_dataloader.batch_sampler]
            found.append(getattr(train_dataloader.batch_sampler, "sampler", None))
            samplers[self.name] = {type(x) for x in found}

    tokens = {}
    for name, extra in (("trees", []), ("grouped", ["--group-by-prompt", "true"])):
        argv = tiny_train_args(data, tmp_path / name, "--max-steps", "3", "--seed", "5")
        cfg = config_from_args(build_parser().parse_args(argv + extra), TrainConfig)
        tokens[name] = run_train(cfg, callbacks=[Sampler(name)])["metrics"]["train_tokens"]
        assert (tmp_path / name / "config.json").exists()
    assert PromptGroupedSampler in samplers["grouped"]
    assert PromptGroupedSampler not in samplers["trees"]
    assert 0 < tokens["grouped"] < tokens["trees"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="--prefix-trees auto is on for CPU only")
def test_prefix_trees_train_the_same_on_fewer_tokens(tmp_path):
    """`--prefix-trees auto` (on for CPU training): batches are prefix trees, so the prefix the
    demo prompts share is computed once per batch; the same losses and metrics as the pairs
    laid out one by one (`off`), on fewer tokens."""
    from rmtrain.cli import build_parser
    from rmtrain.config import TrainConfig, config_from_args
    from rmtrain.training.recipe import run_train
    from tests.helpers import write_demo

    data = write_demo(tmp_path / "d.jsonl", 40, seed=3)
    results = {}
    for name in ("off", "auto"):
        argv = tiny_train_args(data, tmp_path / name, *MOVING, "--prefix-trees", name)
        cfg = config_from_args(build_parser().parse_args(argv), TrainConfig)
        results[name] = run_train(cfg)
    assert results["auto"]["metrics"]["train_tokens"] < results["off"]["metrics"]["train_tokens"]
    assert_trains_the_same([results["off"], results["auto"]], [tmp_path / "off", tmp_path / "auto"])


@pytest.mark.parametrize(
    "extra,cuda,trees",
    [
        ([], False, True),
        ([], True, False),  # GPUs: unmeasured there
        (["--prefix-trees", "on"], True, True),
        (["--prefix-trees", "off"], False, False),
        (["--lm-loss-coef", "0.1"], False, False),  # next-token targets need plain sequences
        (["--packing", "padding_free"], False, False),
        (["--group-by-prompt", "true", "--prefix-trees", "off"], False, True),
    ],
)
def test_training_collator_follows_prefix_trees(extra, cuda, trees, monkeypatch):
    from rmtrain.batching.collate import PackedCollator, PrefixTreeCollator
    from rmtrain.cli import build_parser
    from rmtrain.config import TrainConfig, config_from_args
    from rmtrain.training.settings import train_collator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    argv = ["train", "--dataset", "d.jsonl", *extra]
    cfg = config_from_args(build_parser().parse_args(argv), TrainConfig)
    collator = train_collator(cfg, 0, 3e-4)
    assert isinstance(collator, PrefixTreeCollator if trees else PackedCollator)
    if trees:  # branch by branch on CPU: sharing never widens attention, so nothing is weighed
        assert collator.attention_cost == (3e-4 if cuda else 0.0)


def test_fused_elementwise_trains_the_same(tmp_path):
    """`--fuse-elementwise true` gives the lean modules compiled elementwise kernels (off by
    default); both give the same losses and metrics."""
    from transformers import TrainerCallback

    from rmtrain.cli import build_parser
    from rmtrain.config import TrainConfig, config_from_args
    from rmtrain.training.recipe import run_train
    from tests.helpers import write_demo

    data = write_demo(tmp_path / "d.jsonl", 40, seed=3)
    fused: list[set[bool]] = []

    class Flags(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):  # noqa: ANN001
            fused.append(
                {m._rmtrain_fused for m in model.modules() if hasattr(m, "_rmtrain_fused")}
            )

    results = []
    for name, extra in (("eager", []), ("fused", ["--fuse-elementwise", "true"])):
        argv = tiny_train_args(data, tmp_path / name, *MOVING)
        cfg = config_from_args(build_parser().parse_args(argv + extra), TrainConfig)
        results.append(run_train(cfg, callbacks=[Flags()]))
    assert fused == [{False}] * 3 + [{True}] * 3
    assert_trains_the_same(results, [tmp_path / "eager", tmp_path / "fused"])


@pytest.mark.parametrize(
    "flags,capped",
    [
        ([], True),
        (["--cap-activations", "false"], False),
        (["--gradient-checkpointing", "true"], False),
        (["--lora-r", "4"], False),
        (["--lean-activations", "false"], False),
        (["--speed", "off"], False),
    ],
)
def test_activations_are_capped_by_default_unless_something_else_sets_the_memory(flags, capped):
    """A 400-token batch keeps more than the tiny Llama's 347,648 gradient bytes (see
    tests/speed/test_lean.py), so the default recomputes both MLPs; checkpointing, LoRA and plain
    modules leave them alone."""
    from rmtrain import speed
    from rmtrain.cli import build_parser
    from rmtrain.config import TrainConfig, config_from_args
    from rmtrain.training.settings import checkpointing, speed_options
    from tests.helpers import tiny_llama

    model = tiny_llama(200, 0)
    cfg = config_from_args(build_parser().parse_args(["train", *flags]), TrainConfig)
    speed.install(model, speed_options(cfg), checkpointing(cfg, model.num_parameters()))
    model(input_ids=torch.ones(1, 400, dtype=torch.long))
    mlps = [layer.mlp for layer in model.model.layers]
    assert [getattr(m, "_rmtrain_recompute", False) for m in mlps] == [capped, capped]


def test_several_gpus_in_one_process_train_on_one(tmp_path, capsys, monkeypatch):
    """Without a launcher the Trainer would wrap the model in nn.DataParallel (when
    `args.n_gpu` > 1), which splits a batch's packed rows across replicas (wrong rewards):
    one process keeps one device, and says how to use them all."""
    from transformers import TrainingArguments

    from rmtrain.training.arguments import RewardTrainingArguments
    from rmtrain.training.settings import say_one_device

    args = RewardTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=2
    )
    assert args.n_gpu == 0 and args.train_batch_size == 2
    say_one_device(args)
    assert capsys.readouterr().out == ""  # CPU: nothing to change, nothing said
    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 4))
    assert args.visible_gpus == 4 and args.n_gpu == 1 and args.train_batch_size == 2
    say_one_device(args)
    assert "4 GPUs visible in one process" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags,cuda,calls",
    [
        ([], False, 1),
        (["--retain-freed-memory", "false"], False, 0),
        (["--speed", "off"], False, 0),
        ([], True, 0),
    ],
)
def test_allocator_tuned_for_cpu_training_unless_turned_off(monkeypatch, flags, cuda, calls):
    import rmtrain.training.recipe as train_module
    from rmtrain.cli import build_parser
    from rmtrain.config import TrainConfig, config_from_args

    recorded: list[int] = []
    monkeypatch.setattr(
        train_module.speed, "retain_freed_memory", lambda: recorded.append(1) or True
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = config_from_args(build_parser().parse_args(["train", *flags]), TrainConfig)
    assert train_module.tune_allocator(cfg) is bool(calls)
    assert len(recorded) == calls


def test_run_train_tunes_the_allocator_before_loading_anything(monkeypatch, tmp_path):
    import rmtrain.training.recipe as train_module
    from rmtrain.config import TrainConfig

    class Reached(Exception):
        pass

    def stop(cfg):  # noqa: ANN001
        raise Reached

    monkeypatch.setattr(train_module, "tune_allocator", stop)
    monkeypatch.setattr(train_module, "load_tokenizer", None)  # calling it would raise TypeError
    with pytest.raises(Reached):
        train_module.run_train(TrainConfig(output=str(tmp_path / "out")))


@pytest.mark.slow
def test_plain_training_learns(tmp_path):
    """On the demo set the loss falls and the held-out win rate rises above chance (the lower
    end of its 95% interval above 0.5): training does something, not just runs."""
    from rmtrain.evaluation.metrics import wilson_interval

    out = tmp_path / "demo"
    args = ["train", "--model", "builtin:tiny-qwen3", "--dataset", "builtin:demo", "--frac", "1"]
    args += ["--max-length", "128", "--lr", "1e-3", "--epochs", "2", "--batch", "8", "--seed", "0"]
    args += [
        "--eval-steps",
        "0",
        "--logging-steps",
        "5",
        "--report-to",
        "none",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    result = json.loads((out / "metrics.json").read_text())
    losses = [h["loss"] for h in result["log_history"] if "loss" in h]
    assert losses[0] > 0.6 and losses[-1] < losses[0] - 0.1
    m = result["metrics"]
    lo, _ = wilson_interval(round(m["win_rate"] * m["num_pairs"]), m["num_pairs"])
    assert lo > 0.5, (m["win_rate"], m["num_pairs"])
