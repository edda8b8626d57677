"""requirements.lock, what `make install` installs, pins a version of every dependency that
pyproject.toml declares, inside its range: a fresh clone gets the versions the suite passed
with, and raising a range in pyproject without `make lock` fails here."""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("dev", "bench", "clients")  # what the Makefile installs


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
            pins[canonicalize_name(name)] = version
    return pins


def test_the_lock_pins_every_declared_dependency_inside_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in EXTRAS:
        declared += project["optional-dependencies"][extra]
    pins = _pins()
    for spec in declared:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    for apart in ("rmtrain", "openrlhf", "rewardbench"):  # installed apart, --no-deps
        assert apart not in pins
