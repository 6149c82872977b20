"""A rebuild that meets a corrupted surviving cell: with parity to spare it routes around it and
still rebuilds every byte; without, it fails with the clear error and installs nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ecsnap.arena import MappedArena
from ecsnap.bench.cluster import Node, Setting, configure, save_everywhere
from ecsnap.errors import SnapshotError

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

SIZE = 2 << 20
NODES = 4
STEP = 1


@pytest.fixture
def nodes(workdir: Path) -> Iterator[list[Node]]:
    started = [Node(workdir, i, "64M", ()) for i in range(NODES)]
    try:
        yield started
    finally:
        for n in started:
            n.close()


def run(nodes: list[Node], m: int) -> tuple[list[np.ndarray], Node]:
    """Every node saves step 1 (committed everywhere); node 0's stored bytes are then damaged
    and node 1 is lost and replaced by a fresh SMP, which is asked to rebuild."""
    job = f"corrupt-m{m}"
    rng = np.random.default_rng(m)
    fill = [rng.integers(0, 256, SIZE, dtype=np.uint8) for _ in range(NODES)]
    for n in nodes:
        n.start()
        n.join(job, NODES)
    configure(nodes, Setting(NODES, NODES, m))
    save_everywhere(nodes, STEP, SIZE, fill)
    smp0 = nodes[0].smp
    assert smp0 is not None
    for arena in Path(smp0.store_dir, job).glob("r0.s*.arena"):  # flip the first byte
        with arena.open("r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 0xFF]))
    lost = nodes[1]
    lost.close()
    lost.start(generation=1)
    for n in nodes:
        n.join(job, NODES)
    configure(nodes, Setting(NODES, NODES, m))
    return fill, lost


def test_a_corrupt_survivor_is_routed_around_when_parity_allows(nodes: list[Node]) -> None:
    fill, lost = run(nodes, 2)
    assert lost.channel is not None
    r = lost.channel.rebuild(120.0)
    assert r.rebuilt and r.step == STEP
    grant = lost.channel.open_snapshot(1, STEP, verify=True)
    arena = MappedArena(grant.path, Path(grant.path).stat().st_size)
    try:
        assert np.array_equal(arena.tensor.numpy()[:SIZE], fill[1])
    finally:
        arena.close()


def test_too_much_damage_is_a_clear_error_and_nothing_is_installed(nodes: list[Node]) -> None:
    _, lost = run(nodes, 1)
    assert lost.channel is not None
    with pytest.raises(SnapshotError, match=rf"cannot rebuild step {STEP} of job 'corrupt-m1'"):
        lost.channel.rebuild(120.0)
    assert lost.channel.list_steps(1).complete == []
