"""`ecsnap bench cluster` plumbing on a tiny state: real SMPs, real parity, exact byte counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecsnap.bench.cluster import NODES, run_setting

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.mark.parametrize("m", [1, 2])
def test_parity_traffic_is_m_times_the_state_and_a_wiped_node_is_rebuilt(
    workdir: Path, m: int
) -> None:
    size = 3 << 20
    figures = run_setting(workdir, m, size, 1, "64M")
    assert figures.sent_per_node == [m * size] * NODES  # per-node parity traffic is m x S
    assert figures.rebuild_fetched == NODES * size  # k cells of every stripe: g x S
    summary = figures.summary()
    assert summary["sent_per_node_over_S"] == m
    # CPU time is counted in clock ticks: a tiny state may take less than one
    assert all(v > 0 for k, v in summary.items() if k != "smp_cpu_s_per_GiB")
    assert summary["smp_cpu_s_per_GiB"] >= 0 and figures.smp_cpu_s >= 0
