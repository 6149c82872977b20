"""Prometheus metrics of the SMP: event counters fed by the service, gauges read at scrape time.

Counters and histograms are fed by the service's event hook (`Metrics.observe`, an `EventSink`):
it is called with the service lock held, so it only bumps in-memory values. What the daemon holds
right now (bytes per job, committed step, memory used and limit) is read from `Daemon.status()` at
each scrape, so it can never drift from what `smp status` shows.

Names follow Prometheus conventions: `ecsnap_` prefix, base units (`_bytes`, `_seconds`), `_total`
on counters, one `job` label (the ecsnap job id) per job-scoped series.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from smp._proto import control_pb2 as pb

logger = logging.getLogger(__name__)

# Save-to-commit latency: a few ms (one node, small state) to minutes (parity of a large state).
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
REBUILD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

StatusSource = Callable[[], pb.StatusResponse]


class _StatusCollector(Collector):
    """Gauges computed from the daemon's status at scrape time."""

    def __init__(self, status: StatusSource) -> None:
        self._status = status

    def collect(self) -> Iterable[Metric]:
        st = self._status()
        info = InfoMetricFamily("ecsnap_smp", "The SMP's version and codec engine")
        engine = st.codec_engine.split(":", 1)[0]  # "isal", "numpy" (the full text is long)
        info.add_metric([], {"version": st.version, "codec_engine": engine})
        yield info
        yield GaugeMetricFamily(
            "ecsnap_memory_used_bytes", "Bytes of arenas the SMP holds (all jobs)", st.memory_used
        )
        yield GaugeMetricFamily(
            "ecsnap_memory_limit_bytes", "The SMP's memory limit (--memory-limit)", st.memory_limit
        )
        yield GaugeMetricFamily(
            "ecsnap_store_free_bytes", "Free space of the store's filesystem", st.store_free
        )
        held = GaugeMetricFamily(
            "ecsnap_job_memory_bytes",
            "Bytes this SMP holds for a job: its ranks' snapshots and the parity it keeps",
            labels=["job"],
        )
        parity = GaugeMetricFamily(
            "ecsnap_job_parity_bytes", "Parity bytes this SMP holds for a job", labels=["job"]
        )
        ranks = GaugeMetricFamily(
            "ecsnap_job_local_ranks", "Ranks of a job registered with this SMP", labels=["job"]
        )
        committed = GaugeMetricFamily(
            "ecsnap_job_committed_step",
            "Newest step of a job complete on every rank (absent until one is)",
            labels=["job"],
        )
        age = GaugeMetricFamily(
            "ecsnap_job_committed_age_seconds",
            "Seconds since the job's newest committed step was committed",
            labels=["job"],
        )
        protected = GaugeMetricFamily(
            "ecsnap_job_protected_step",
            "Newest step of a job protected on this node (its ranks and parity complete)",
            labels=["job"],
        )
        degraded = GaugeMetricFamily(
            "ecsnap_job_protection_degraded",
            "1 while this node does not hold the job's committed step protected (after an SMP "
            "restart that lost part of it; the next commit restores it)",
            labels=["job"],
        )
        persisted = GaugeMetricFamily(
            "ecsnap_job_persisted_step",
            "Newest step of a job complete in its durable tier (absent until one is)",
            labels=["job"],
        )
        lag = GaugeMetricFamily(
            "ecsnap_job_persist_lag_steps",
            "Committed step minus persisted step: how far the durable tier is behind memory",
            labels=["job"],
        )
        rate = GaugeMetricFamily(
            "ecsnap_job_persist_bytes_per_second",
            "Write rate of the job's last persisted step",
            labels=["job"],
        )
        failures = CounterMetricFamily(
            "ecsnap_job_persist_failures",
            "Persistence rounds of the job that failed (the store refused or was unreachable)",
            labels=["job"],
        )
        for job in st.jobs:
            if job.persist_target:
                failures.add_metric([job.job_id], job.persist_failures)
                rate.add_metric([job.job_id], job.persist_bytes_per_s)
            if job.has_persisted:
                persisted.add_metric([job.job_id], job.persisted_step)
                if job.has_committed:
                    lag.add_metric([job.job_id], job.committed_step - job.persisted_step)
            degraded.add_metric([job.job_id], 1 if job.degraded else 0)
            held.add_metric([job.job_id], job.bytes)
            parity.add_metric([job.job_id], job.parity_bytes)
            ranks.add_metric([job.job_id], len(job.ranks))
            if job.has_committed:
                committed.add_metric([job.job_id], job.committed_step)
                age.add_metric([job.job_id], job.committed_age_s)
            if job.has_protected:
                protected.add_metric([job.job_id], job.protected_step)
        yield from (held, parity, ranks, committed, age, protected, degraded)
        yield from (persisted, lag, rate, failures)


class Metrics:
    """The SMP's metrics registry (its own, not the process-global one) and HTTP endpoint."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu, open fds, start time
        self.saved = Counter(
            "ecsnap_snapshots_saved", "Rank snapshots stored and checksummed", ["job"], registry=r
        )
        self.saved_bytes = Counter(
            "ecsnap_saved_bytes", "Bytes of rank snapshots stored", ["job"], registry=r
        )
        self.committed = Counter(
            "ecsnap_snapshots_committed",
            "Steps committed (complete on every rank of the job)",
            ["job"],
            registry=r,
        )
        self.skipped = Counter(
            "ecsnap_saves_skipped",
            "Saves that did not become a snapshot, by reason (aborted by a rank, refused: memory "
            "limit or full store)",
            ["job", "reason"],
            registry=r,
        )
        self.commit_latency = Histogram(
            "ecsnap_save_to_commit_seconds",
            "Seconds from a step's first save request to its commit",
            ["job"],
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.parity_sent = Counter(
            "ecsnap_parity_sent_bytes",
            "Bytes of data chunks streamed to parity holders",
            ["job"],
            registry=r,
        )
        self.parity_received = Counter(
            "ecsnap_parity_received_bytes",
            "Bytes of partial parity received from peers",
            ["job"],
            registry=r,
        )
        self.rebuilds = Counter(
            "ecsnap_rebuilds", "Snapshots rebuilt from peers (node loss)", ["job"], registry=r
        )
        self.rebuild_seconds = Histogram(
            "ecsnap_rebuild_seconds",
            "Seconds a rebuild from peers took",
            ["job"],
            buckets=REBUILD_BUCKETS,
            registry=r,
        )
        self.checksum_failures = Counter(
            "ecsnap_checksum_failures",
            "Snapshots or chunks whose bytes did not match their checksums",
            ["job"],
            registry=r,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.address = ""

    def observe(self, event: str, job_id: str, value: float) -> None:
        """The service's event sink: quick, never calls back into the service."""
        if event == "snapshot_saved":
            self.saved.labels(job_id).inc()
            self.saved_bytes.labels(job_id).inc(value)
        elif event == "snapshot_committed":
            self.committed.labels(job_id).inc()
            self.commit_latency.labels(job_id).observe(value)
        elif event == "save_aborted":
            self.skipped.labels(job_id, "aborted").inc(value)
        elif event == "save_refused":
            self.skipped.labels(job_id, "refused").inc(value)
        elif event == "parity_sent":
            self.parity_sent.labels(job_id).inc(value)
        elif event == "parity_received":
            self.parity_received.labels(job_id).inc(value)
        elif event == "rebuild":
            self.rebuilds.labels(job_id).inc()
            self.rebuild_seconds.labels(job_id).observe(value)
        elif event == "step_failed":
            self.skipped.labels(job_id, "failed").inc(value)
        elif event == "checksum_failure":
            self.checksum_failures.labels(job_id).inc(value)
        else:
            logger.debug("metrics: ignoring unknown event %s (job=%s)", event, job_id)

    def add_status(self, status: StatusSource) -> None:
        """Also export what `status` reports (read at every scrape)."""
        self.registry.register(_StatusCollector(status))

    def exposition(self) -> bytes:
        """The text exposition a scrape gets."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> str:
        """Serve the metrics over HTTP (any path; `/metrics` by convention); returns the address."""
        self._server, self._thread = start_http_server(port, host, registry=self.registry)
        bound = self._server.server_port
        self.address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        return self.address

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
