"""`retain_freed_memory`: applied only with glibc and without the user's own allocator settings;
then the memory one step frees is reused by the next instead of being faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from rmtrain.speed import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Page faults of a step-like pattern: six 20 MB tensors (5M floats, 4,883 pages of 4 KiB each)
# allocated, written and freed, ten times; counted over the last six, after the heap has grown.
CHURN = """
import resource, sys, torch
from rmtrain.speed.allocator import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counted = 0
for step in range(10):
    start = faults()
    xs = [torch.empty(5_000_000) for _ in range(6)]
    for x in xs:
        x.fill_(1.0)
    del xs, x
    counted += faults() - start if step >= 4 else 0
print(applied, counted)
"""


def _churn(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS}
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode], env=env, capture_output=True, text=True, check=True
    )
    applied, faults = out.stdout.split()[-2:]
    return applied, int(faults)


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    applied, faults = _churn("retain")
    assert applied == "True" and faults < 50  # the same pages, reused
    default_applied, default_faults = _churn("default")
    assert default_applied == "False"
    if default_faults < 2 * 4_883:  # seen inside long test runs: the kernel's state, not ours
        pytest.skip(f"glibc's default kept the pages here too ({default_faults} faults)")
    assert default_faults >= 2 * 4_883  # trimmed, faulted in again


def test_the_users_own_allocator_setting_stands(monkeypatch):
    monkeypatch.setattr(allocator.platform, "system", lambda: "Linux")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))

    def no_mallopt(_name):  # noqa: ANN001
        raise AssertionError("mallopt must not be called")

    monkeypatch.setattr(allocator.ctypes, "CDLL", no_mallopt)
    for name in allocator.USER_SETTINGS:
        monkeypatch.setenv(name, "glibc.malloc.trim_threshold=0" if "TUNABLES" in name else "0")
        assert allocator.retain_freed_memory() is False
        monkeypatch.delenv(name)


@pytest.mark.parametrize("system,libc", [("Darwin", ""), ("Linux", "")])
def test_other_allocators_are_left_alone(monkeypatch, system, libc):
    """macOS, and Linux with musl (libc_ver finds no glibc)."""
    monkeypatch.setattr(allocator.platform, "system", lambda: system)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: (libc, ""))
    monkeypatch.setattr(allocator.ctypes, "CDLL", None)  # calling it would raise
    assert allocator.retain_freed_memory() is False
