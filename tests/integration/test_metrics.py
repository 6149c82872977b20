"""The Prometheus endpoint of a real SMP, scraped over HTTP after a real 2-rank job saved.

Also: every service event reaches its metric (fed in-process, no daemon needed).
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ecsnap.testing import LocalSMP, launch_ranks
from smp import report
from smp.metrics import Metrics

pytestmark = pytest.mark.timeout(240)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """name + sorted labels -> value, through the official parser (so the format is valid)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return parse(resp.read().decode())


class MetricsSMP(LocalSMP):
    """A LocalSMP with `--metrics-port 0`; the bound address is read back from its log."""

    metrics: str = ""

    def start(self, timeout: float = 30.0) -> MetricsSMP:
        self.extra_args = ("--metrics-port", "0")
        super().start(timeout)
        found = re.search(r"Prometheus metrics on http://(\S+)/metrics", self.tail())
        if found is None:
            self.close()
            raise RuntimeError(f"the SMP did not log its metrics address:\n{self.tail()}")
        self.metrics = found.group(1)
        return self


@pytest.fixture
def metrics_node(workdir: Path) -> Iterator[MetricsSMP]:
    node = MetricsSMP(workdir / "node0", memory_limit="256M").start()
    try:
        yield node
    finally:
        node.close()


def test_metrics_after_a_job_saved(metrics_node: MetricsSMP, workdir: Path) -> None:
    before = scrape(metrics_node.metrics)
    assert before[("ecsnap_memory_limit_bytes", ())] == 256 << 20
    assert before[("ecsnap_memory_used_bytes", ())] == 0
    info = [dict(labels) for name, labels in before if name == "ecsnap_smp_info"]
    assert info and info[0]["version"] == "0.1.0" and info[0]["codec_engine"] in ("isal", "numpy")

    steps, job = 3, "metrics-job"
    run = launch_ranks(workdir / "run", job, [metrics_node.socket], 2, ["--steps", str(steps)])
    assert run.wait(180) == [0, 0], run.output()

    m = scrape(metrics_node.metrics)
    j = (("job", job),)
    assert m[("ecsnap_snapshots_saved_total", j)] == 2 * steps  # every rank, every step
    assert m[("ecsnap_snapshots_committed_total", j)] == steps
    assert m[("ecsnap_save_to_commit_seconds_count", j)] == steps
    assert 0 < m[("ecsnap_save_to_commit_seconds_sum", j)] < 60
    assert m[("ecsnap_save_to_commit_seconds_bucket", (*j, ("le", "+Inf")))] == steps
    assert m[("ecsnap_saved_bytes_total", j)] > 0
    # gauges read at scrape time agree with `smp status`
    st = report.fetch_status(metrics_node.socket, 5.0)
    held = next(x for x in st.jobs if x.job_id == job)
    assert m[("ecsnap_job_memory_bytes", j)] == held.bytes > 0
    assert m[("ecsnap_job_committed_step", j)] == steps - 1
    assert m[("ecsnap_job_local_ranks", j)] == 2
    assert m[("ecsnap_job_parity_bytes", j)] == 0  # one node: no parity
    assert m[("ecsnap_memory_used_bytes", ())] == st.memory_used > 0
    assert 0 <= m[("ecsnap_job_committed_age_seconds", j)] < 120
    assert m[("process_resident_memory_bytes", ())] > 0
    # counters of events that did not happen are absent for this job, not invented
    assert ("ecsnap_checksum_failures_total", j) not in m


def test_every_service_event_reaches_its_metric() -> None:
    metrics = Metrics()
    events = [
        ("snapshot_saved", 100.0),
        ("snapshot_saved", 50.0),
        ("snapshot_committed", 0.2),
        ("save_aborted", 1.0),
        ("save_refused", 1.0),
        ("parity_sent", 4096.0),
        ("parity_received", 2048.0),
        ("rebuild", 3.0),
        ("checksum_failure", 1.0),
        ("step_failed", 1.0),
        ("something_new", 1.0),  # ignored, not an error
    ]
    for name, value in events:
        metrics.observe(name, "j", value)
    m = parse(metrics.exposition().decode())
    j = (("job", "j"),)
    assert m[("ecsnap_snapshots_saved_total", j)] == 2
    assert m[("ecsnap_saved_bytes_total", j)] == 150
    assert m[("ecsnap_snapshots_committed_total", j)] == 1
    assert m[("ecsnap_save_to_commit_seconds_sum", j)] == pytest.approx(0.2)
    assert m[("ecsnap_saves_skipped_total", (("job", "j"), ("reason", "aborted")))] == 1
    assert m[("ecsnap_saves_skipped_total", (("job", "j"), ("reason", "refused")))] == 1
    assert m[("ecsnap_saves_skipped_total", (("job", "j"), ("reason", "failed")))] == 1
    assert m[("ecsnap_parity_sent_bytes_total", j)] == 4096
    assert m[("ecsnap_parity_received_bytes_total", j)] == 2048
    assert m[("ecsnap_rebuilds_total", j)] == 1
    assert m[("ecsnap_rebuild_seconds_sum", j)] == 3
    assert m[("ecsnap_checksum_failures_total", j)] == 1
    # Prometheus conventions: counters end in _total, units are base units
    families = list(text_string_to_metric_families(metrics.exposition().decode()))
    for family in families:
        if family.name.startswith("ecsnap_"):
            assert re.fullmatch(r"ecsnap_[a-z_]+", family.name)
            if family.type == "counter":
                assert any(s.name.endswith("_total") for s in family.samples) or not family.samples
            if family.type == "histogram":
                assert family.name.endswith("_seconds")
