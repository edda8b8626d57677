import dataclasses

import pytest

from rmtrain.cli import build_parser, main
from rmtrain.config import TrainConfig, config_from_args
from rmtrain.errors import RmtrainError


def parse(argv):
    return config_from_args(build_parser().parse_args(["train", *argv]), TrainConfig)


def test_defaults_are_the_seed_recipe():
    cfg = parse([])
    assert (cfg.model, cfg.dataset, cfg.output) == (
        "Qwen/Qwen3-0.6B",
        ["lvwerra/stack-exchange-paired"],
        "./outputs/reward_model",
    )
    assert (cfg.lr, cfg.epochs, cfg.batch, cfg.max_length, cfg.frac, cfg.test_size) == (
        5e-6,
        1.0,
        2,
        512,
        None,  # the original recipe's 0.01 on its hub set, all rows elsewhere (resolve_frac)
        0.2,
    )
    assert cfg.logging_steps == 100 and cfg.report_to == ["mlflow", "wandb"]


def test_flags_override_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-4\nbatch: 8\nreport-to: none\n")
    cfg = parse(["--config", str(path), "--batch", "4", "--max-steps", "3"])
    assert (cfg.lr, cfg.batch, cfg.max_steps, cfg.report_to) == (1e-4, 4, 3, ["none"])


def test_repeated_dataset_flags_accumulate():
    cfg = parse(["--dataset", "a.jsonl:0.7", "--dataset", "b.jsonl:0.3"])
    assert cfg.dataset == ["a.jsonl:0.7", "b.jsonl:0.3"]


def test_unknown_yaml_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1.0e-4\n")
    with pytest.raises(RmtrainError, match="unknown config keys \\['learning_rate'\\]"):
        parse(["--config", str(path)])


def test_bad_values_are_reported():
    with pytest.raises(RmtrainError, match="--frac"):
        parse(["--frac", "2"])
    with pytest.raises(RmtrainError, match="flex is not supported yet .* use sdpa"):
        parse(["--attn-implementation", "flex_attention"])
    with pytest.raises(RmtrainError, match="--group-by-prompt .* --packing prefix_sharing"):
        parse(["--group-by-prompt", "true", "--packing", "none"])
    with pytest.raises(RmtrainError, match="--block-attention must be auto, on, off or flex"):
        parse(["--block-attention", "yes"])
    with pytest.raises(RmtrainError, match="--prefix-trees must be auto, on or off: 'yes'"):
        parse(["--prefix-trees", "yes"])
    with pytest.raises(RmtrainError, match="--prefix-trees on needs --packing prefix_sharing"):
        parse(["--prefix-trees", "on", "--packing", "padding_free"])
    lm = "trains on prefix trees, which --lm-loss-coef cannot use: drop one"
    with pytest.raises(RmtrainError, match=f"--prefix-trees on {lm}"):
        parse(["--prefix-trees", "on", "--lm-loss-coef", "0.1"])
    with pytest.raises(RmtrainError, match=f"--group-by-prompt {lm}"):
        parse(["--group-by-prompt", "true", "--lm-loss-coef", "0.1"])
    assert parse(["--lm-loss-coef", "0.1"]).prefix_trees == "auto"  # auto steps aside


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    code = main(
        [
            "train",
            "--model",
            "builtin:tiny-qwen3",
            "--dataset",
            str(tmp_path / "no.jsonl"),
            "--output",
            str(tmp_path / "out"),
            "--report-to",
            "none",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("rmtrain: error: data file") and err.count("\n") == 1


def test_hub_model_offline_is_a_clear_error(tmp_path, capsys):
    code = main(
        [
            "train",
            "--model",
            "someone/not-here",
            "--output",
            str(tmp_path / "o"),
            "--report-to",
            "none",
        ]
    )
    assert code == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_grouped_yaml_equals_flat_yaml_and_the_saved_config_round_trips(tmp_path):
    from rmtrain.config import GROUPS, save_config

    grouped = tmp_path / "grouped.yaml"
    grouped.write_text(
        "model: {model: builtin:tiny-qwen3}\ntraining: {lr: 1.0e-4, batch: 8}\n"
        "speed: {speed: 'off', packing: none}\ntracking: {report_to: none}\n"
    )
    flat = tmp_path / "flat.yaml"
    flat.write_text(
        "model: builtin:tiny-qwen3\nlr: 1.0e-4\nbatch: 8\nspeed: 'off'\npacking: none\n"
        "report_to: none\n"
    )
    a, b = parse(["--config", str(grouped)]), parse(["--config", str(flat)])
    assert a == b and (a.lr, a.batch, a.speed, a.packing) == (1e-4, 8, "off", "none")
    saved = tmp_path / "saved.yaml"
    save_config(a, saved)
    assert parse(["--config", str(saved)]) == a
    assert sorted(n for names in GROUPS.values() for n in names) == sorted(
        f.name for f in dataclasses.fields(TrainConfig)
    )  # every option in exactly one group


def test_an_option_under_the_wrong_group_names_its_group(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training: {packing: none}\n")
    with pytest.raises(RmtrainError, match=r"training.packing is not a training option.*speed"):
        parse(["--config", str(path)])


def test_help_lists_train_options_under_their_groups(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    order = [text.index(f"\n{g}:") for g in ("model", "data", "training", "speed", "output")]
    assert order == sorted(order) and text.index("\n  --speed ") > text.index("\nspeed:")


def write_yaml(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: d.jsonl\n" + text)
    return ["--config", str(path)]


@pytest.mark.parametrize(
    ("line", "key", "value"),
    [
        ('overwrite: "no"', "overwrite", False),
        ('group_by_length: "false"', "group_by_length", False),
        ('strict: "false"', "strict", False),
        ("strict: yes", "strict", True),
        ('overwrite: "1"', "overwrite", True),
        ("lr: 1e-3", "lr", 1e-3),  # PyYAML reads this as a string
        ("lr: 2E-5", "lr", 2e-5),
        ('batch: "8"', "batch", 8),
        ("epochs: 2", "epochs", 2.0),
        ("report_to: none", "report_to", ["none"]),
    ],
)
def test_yaml_values_are_read_as_the_option_type(tmp_path, line, key, value):
    cfg = parse(write_yaml(tmp_path, line + "\n"))
    assert getattr(cfg, key) == value and type(getattr(cfg, key)) is type(value)


def test_bad_yaml_values_name_their_keys(tmp_path):
    text = 'batch: "eight"\noverwrite: "maybe"\nlr: [1]\nseed: 1.5\n'
    with pytest.raises(RmtrainError) as err:
        parse(write_yaml(tmp_path, text))
    msg = str(err.value)
    for part in (
        "batch: expected an integer, got 'eight'",
        "overwrite: expected true or false",
        "lr: expected a number, got [1]",
        "seed: expected an integer, got 1.5",
    ):
        assert part in msg


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "0"], "--lr must be a positive number"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--epochs", "0"], "--epochs must be above 0"),
        (["--max-steps", "0"], "--max-steps must be -1 (all epochs) or at least 1"),
        (["--logging-steps", "0"], "--logging-steps must be at least 1"),
        (["--warmup-ratio", "-0.1"], "--warmup-ratio must be in [0, 1]"),
        (["--warmup-ratio", "5"], "--warmup-ratio must be in [0, 1]"),
        (["--lora-dropout", "1.5"], "--lora-dropout must be in [0, 1)"),
        (["--seed", "-1"], "--seed must be in [0, 2**32)"),
        (["--eval-batch", "0"], "--eval-batch must be at least 1"),
        (["--save-total-limit", "-1"], "--save-total-limit must be at least 1"),
        (["--max-grad-norm", "-1"], "--max-grad-norm must be 0 or more"),
        (["--min-prompt-length", "600"], "--min-prompt-length must be in [0, --max-length)"),
        (["--row-budget", "-5"], "--row-budget must be 0 or more"),
        (["--lora-r", "-1"], "--lora-r must be 0 or more"),
        (["--weight-decay", "-1"], "--weight-decay must be 0 or more"),
    ],
)
def test_option_values_checked_before_anything_loads(argv, message, tmp_path, capsys):
    # the model does not exist: a value problem must be reported before any loading
    code = main(["train", "--model", str(tmp_path / "no-model"), "--dataset", "d.jsonl", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


def test_every_problem_in_one_message():
    with pytest.raises(RmtrainError) as err:
        parse(["--dataset", "d.jsonl", "--lr", "0", "--seed", "-1", "--logging-steps", "0"])
    assert str(err.value).count(";") >= 2


def test_shipped_configs_and_recipes_are_valid():
    from pathlib import Path

    from rmtrain.config import build_config, load_yaml

    root = Path(__file__).resolve().parents[1]
    files = [root / "configs" / "demo.yaml", *sorted((root / "configs" / "recipes").glob("*.yaml"))]
    recipes = [f for f in files if not f.name.startswith("hpo_space")]
    names = {f.stem for f in recipes}
    assert {"demo", "smollm2_hh", "smollm2_se", "qwen3_0.6b_se"} <= names
    for f in recipes:
        cfg = build_config(load_yaml(f))
        assert cfg.dataset and cfg.output, f


def test_cpu_recipes_find_their_model_and_the_shared_data():
    """The SmolLM2 recipes run from the project root with no other flag: the packaged model
    file resolves and the data path reaches the shared samples."""
    from pathlib import Path

    from rmtrain.config import build_config, load_yaml
    from rmtrain.modeling.loading import package_file
    from tests.helpers import shared_data_or_skip

    data = shared_data_or_skip()
    root = Path(__file__).resolve().parents[1]
    for name in ("smollm2_hh", "smollm2_se"):
        cfg = build_config(load_yaml(root / "configs" / "recipes" / f"{name}.yaml"))
        assert Path(package_file(cfg.model)).is_file()
        [dataset] = [(root / d).resolve() for d in cfg.datasets()]
        assert dataset.is_file() and dataset.is_relative_to(data.resolve()), dataset


def test_the_option_reference_is_the_config():
    """docs/options.md is generated from the field metadata: regenerate it with
    `python -c "from rmtrain.flags import options_reference as o; print(o(), end='')" >
    docs/options.md` when an option changes."""
    from pathlib import Path

    from rmtrain.config import GROUPS
    from rmtrain.flags import options_reference

    docs = Path(__file__).resolve().parents[1] / "docs" / "options.md"
    assert docs.read_text() == options_reference()
    names = [n for g in GROUPS.values() for n in g]
    assert len(names) == len(set(names)) == len(dataclasses.fields(TrainConfig))


def _demo_file(tmp_path):
    from tests.helpers import write_demo

    return write_demo(tmp_path / "d.jsonl", 30, seed=2)


@pytest.mark.parametrize(
    "case,expect",
    [
        ("config_not_utf8", "config file {tmp}/c.yaml is not UTF-8 text; save it as UTF-8"),
        ("weight_inf", "mixing weight in '{tmp}/d.jsonl:inf' must be a positive finite number"),
        ("lora_target", "--lora-target nothing_here matches no module of this model"),
        ("hpo_storage", "--storage garbage://x: cannot open it (NoSuchModuleError"),
        ("model_folder", "--model {tmp}/m is a folder without config.json, not a model folder"),
        ("dataset_empty", "--dataset is empty; pass a data file, folder or hub data set name"),
        ("test_size", "--test-size 0.001 of 30 pairs holds out no prompt; raise --test-size"),
        ("latin1", "{tmp}/l.jsonl is not UTF-8 text (no line decodes); convert it"),
        ("overwrite_resume", "--overwrite replaces the run in --output, --resume continues it"),
    ],
)
def test_more_user_errors_are_one_line_naming_the_fix(tmp_path, capsys, case, expect):
    data = _demo_file(tmp_path)
    train = ["train", "--model", "builtin:tiny-qwen3", "--report-to", "none", "--max-steps", "1"]
    train += ["--output", str(tmp_path / "out")]
    if case == "config_not_utf8":
        (tmp_path / "c.yaml").write_bytes(b"lr: 1\n\xff\n")
        argv = [*train, "--dataset", str(data), "--config", str(tmp_path / "c.yaml")]
    elif case == "weight_inf":
        argv = [*train, "--dataset", f"{data}:inf"]
    elif case == "lora_target":
        argv = [*train, "--dataset", str(data), "--lora-r", "4", "--lora-target", "nothing_here"]
    elif case in ("model_folder", "test_size", "overwrite_resume"):
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "notes.txt").write_text("not a model")
        flags = {
            "model_folder": ["--model", str(tmp_path / "m")],
            "test_size": ["--test-size", "0.001"],
            "overwrite_resume": ["--overwrite", "--resume"],
        }[case]
        argv = [*train, "--dataset", str(data), *flags]
    elif case == "dataset_empty":
        argv = [*train, "--dataset", ""]
    elif case == "latin1":
        row = '{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'
        (tmp_path / "l.jsonl").write_bytes(row.encode("latin-1"))
        argv = [*train, "--dataset", str(tmp_path / "l.jsonl")]
    else:
        space = tmp_path / "space.yaml"
        space.write_text("lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n")
        argv = ["hpo", "--space", str(space), "--output", str(tmp_path / "h")]
        argv += ["--storage", "garbage://x", "--n-trials", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rmtrain: error: " + expect.format(tmp=tmp_path)), err
    assert err.count("\n") == 1 and "Traceback" not in err
