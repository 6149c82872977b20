"""Shared fixtures: short per-test work dirs and real SMP processes, always cleaned up."""

from __future__ import annotations

import importlib.util
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from smp.testing import LocalSMP, short_tmpdir

# The daemon needs no torch, and its tests prove it: where torch is not installed (`make
# test-daemon`), the test files of the trainer library are not collected, every other one runs.
_TORCH = importlib.util.find_spec("torch") is not None
_NEEDS_TORCH = re.compile(r"^\s*(?:import|from)\s+(?:torch|ecsnap|tests\.jobs)\b", re.MULTILINE)


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if _TORCH or collection_path.suffix != ".py":
        return None
    return bool(_NEEDS_TORCH.search(collection_path.read_text())) or None


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = short_tmpdir("ecsnap-t-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def smp_node(workdir: Path) -> Iterator[LocalSMP]:
    node = LocalSMP(workdir / "node0", memory_limit="256M").start()
    try:
        yield node
    finally:
        node.close()
