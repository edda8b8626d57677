"""The MLflow registry's rules for model names and aliases, checked before training so that a
name the registry would refuse fails at once, not after the run (and never ends up in the
suggested `rmtrain log-model` command). The rules are MLflow's (`mlflow/utils/validation.py`);
this module does not import MLflow, so `--report-to none` stays free of it."""

from __future__ import annotations

import posixpath
import re

_ALIAS = re.compile(r"[\w\-]+")  # letters, digits, underscores and dashes
_VERSION_ALIAS = re.compile(r"[vV]\d+")  # `v3` means version 3
MAX_ALIAS_LENGTH = 255


def registry_name_problems(name: str | None, alias: str | None) -> list[str]:
    """Why the registry would refuse `--register-model NAME` or `--model-alias ALIAS`."""
    problems = []
    if name is not None:
        normal = posixpath.normpath(name)
        if not name.strip():
            problems.append("--register-model is empty; pass a model name")
        elif "/" in name or ":" in name:
            problems.append(f"--register-model {name!r}: a model name cannot hold '/' or ':'")
        elif normal != name or normal == "." or normal.startswith(".."):
            problems.append(f"--register-model {name!r}: a model name cannot be a relative path")
    if alias is not None:
        if not _ALIAS.fullmatch(alias):
            problems.append(
                f"--model-alias {alias!r}: an alias holds only letters, digits, '_' and '-'"
            )
        elif alias.lower() == "latest" or _VERSION_ALIAS.fullmatch(alias):
            problems.append(f"--model-alias {alias!r} is reserved by MLflow; choose another")
        elif len(alias) > MAX_ALIAS_LENGTH:
            problems.append(f"--model-alias is longer than {MAX_ALIAS_LENGTH} characters")
    return problems
