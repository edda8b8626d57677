"""Registry names the MLflow registry would refuse fail before any work, in every subcommand
that registers."""

import pytest

from rmtrain.cli import main
from rmtrain.tracking.names import registry_name_problems


def test_the_registry_rules_by_hand():
    assert registry_name_problems("demo-rm", "candidate") == []
    assert registry_name_problems("my rm.v2", "prod_2") == []  # spaces and dots are names
    assert registry_name_problems(None, None) == []
    assert registry_name_problems("a/b", None) == [
        "--register-model 'a/b': a model name cannot hold '/' or ':'"
    ]
    assert registry_name_problems("x:1", None)[0].endswith("cannot hold '/' or ':'")
    assert registry_name_problems("..", None) == [
        "--register-model '..': a model name cannot be a relative path"
    ]
    assert registry_name_problems(" ", None) == ["--register-model is empty; pass a model name"]
    assert registry_name_problems("rm", "best one") == [
        "--model-alias 'best one': an alias holds only letters, digits, '_' and '-'"
    ]
    for reserved in ("latest", "Latest", "v3", "V12"):
        assert registry_name_problems("rm", reserved) == [
            f"--model-alias {reserved!r} is reserved by MLflow; choose another"
        ]
    assert registry_name_problems("rm", "a" * 256) == [
        "--model-alias is longer than 255 characters"
    ]


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--dataset", "{data}", "--output", "{tmp}/out", "--report-to", "mlflow"],
        ["hpo", "--space", "{tmp}/s.yaml", "--n-trials", "2", "--output", "{tmp}/h"],
        ["log-model", "{tmp}/out"],
    ],
)
def test_a_refused_name_stops_every_subcommand_before_work(tmp_path, capsys, command):
    argv = [a.format(data=tmp_path / "absent.jsonl", tmp=tmp_path) for a in command]
    argv += ["--register-model", "team/rm", "--model-alias", "v2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "rmtrain: error: --register-model 'team/rm': a model name cannot hold '/' or ':'; "
        "--model-alias 'v2' is reserved by MLflow; choose another\n"
    )
    assert list(tmp_path.iterdir()) == []  # nothing read, nothing written
