"""Shared fixtures: short per-test work dirs and real SMP processes, always cleaned up."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from smp.testing import LocalSMP, short_tmpdir


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
