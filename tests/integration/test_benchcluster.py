"""`ecsnap bench cluster` plumbing on a tiny state: real SMPs, real parity, exact byte counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecsnap.bench.cluster import Setting, render, render_cap, run_setting

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.mark.parametrize("m", [1, 2])
def test_parity_traffic_is_m_times_the_state_and_a_wiped_node_is_rebuilt(
    workdir: Path, m: int
) -> None:
    size = 3 << 20
    figures = run_setting(workdir, Setting(4, 4, m), size, 1, "64M")
    assert figures.sent_per_node == [m * size] * 4  # per-node parity traffic is m x S
    assert figures.rebuild_fetched == 4 * size  # k cells of every stripe: g x S
    summary = figures.summary()
    assert summary["sent_per_node_over_S"] == m
    # CPU time is counted in clock ticks: a tiny state may take less than one
    assert all(v > 0 for k, v in summary.items() if k != "smp_cpu_s_per_GiB")
    assert summary["smp_cpu_s_per_GiB"] >= 0 and figures.smp_cpu_s >= 0
    assert "4n 4/" in render([figures])


def test_the_parity_bandwidth_cap_holds_under_mutual_tls(workdir: Path) -> None:
    """Two nodes under mTLS, each SMP capped at 20 MB/s: 24 MiB of parity per snapshot takes at
    least ~1.2 s, and the rate each SMP reached stays within 10% of the cap."""
    size = 24 << 20
    cap = 20e6
    figures = run_setting(
        workdir, Setting(2, 2, 1, tls=True, bandwidth=cap), size, 1, "128M", False
    )
    assert figures.sent_per_node == [size, size]
    assert max(figures.send_rate) <= 1.10 * cap, figures.send_rate
    assert min(figures.send_rate) >= 0.5 * cap, figures.send_rate  # capped, not stalled
    assert "holds" in render_cap(figures)
