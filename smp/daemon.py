"""The SMP daemon: wires the store, the service, the control server and the peer server together.

Lifecycle: `start()` checks the settings and the store, re-adopts snapshots an earlier daemon left,
binds both servers and logs the addresses actually bound; `stop()` is ordered (stop accepting
local requests, drain the gRPC server, finish background work, release arenas) and idempotent.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from smp import __version__, codec, report, sockdir
from smp._proto import control_pb2 as pb
from smp.access import Access, admin_token
from smp.adoption import readopt
from smp.config import ServeConfig, format_size
from smp.control import ControlServer
from smp.crossnode.coordinator import CrossNode
from smp.errors import ConfigError
from smp.jobs import EventSink, JobTable, ignore_events
from smp.local import LocalSnapshots
from smp.metrics import Metrics
from smp.peer import PeerServer, PeerServicer
from smp.peerguard import PeerLimits
from smp.service import SnapshotService
from smp.sockdir import ensure_private_dir
from smp.store import Store
from smp.tls import PeerTls

logger = logging.getLogger(__name__)


@dataclass
class Parts:
    """The SMP's domain objects, wired: the job table, the local service, the cross-node side's
    view of it, and the cross-node coordinator."""

    table: JobTable
    service: SnapshotService
    local: LocalSnapshots
    crossnode: CrossNode


def assemble(
    store: Store,
    executor: Executor,
    codec_engine: str,
    tls: PeerTls | None = None,
    events: EventSink = ignore_events,
    rpc_timeout: float = 60.0,
    access: Access | None = None,
    parity_bandwidth: float | None = None,
) -> Parts:
    table = JobTable(events)
    service = SnapshotService(table, store, executor, access)
    local = LocalSnapshots(table, store)
    crossnode = CrossNode(
        local, codec_engine, rpc_timeout=rpc_timeout, tls=tls, parity_bandwidth=parity_bandwidth
    )
    service.set_listener(crossnode)  # the one wire from the local side to the other
    return Parts(table, service, local, crossnode)


class Daemon:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.started = time.time()
        self.node_id = socket.gethostname()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="smp-work")
        self._slow = ThreadPoolExecutor(max_workers=2, thread_name_prefix="smp-rebuild")
        self.crossnode: CrossNode | None = None
        self.store: Store | None = None
        self.control: ControlServer | None = None
        self.peer: PeerServer | None = None
        self.engine = ""
        self.metrics = Metrics()  # counters fed by service events; served if --metrics-port

    def start(self) -> None:
        cfg = self.config
        # Before anything is read or written there: the directories must be ours alone.
        ensure_private_dir(Path(cfg.socket).parent)
        ensure_private_dir(cfg.admin_token_path.parent, what=sockdir.ADMIN)
        if report.served(cfg.socket) is not None:
            raise ConfigError(
                f"another SMP is already serving {cfg.socket}: stop it first "
                "(`smp status --socket ...` shows it) or choose another --socket"
            )
        try:
            codec.Codec(2, 1, engine=cfg.codec)  # fails now, at start, if the engine cannot load
        except codec.CodecError as exc:
            raise ConfigError(f"--codec {cfg.codec}: {exc}") from exc
        self.engine = codec.describe_engine(cfg.codec)
        self.store = Store(cfg.store_dir, cfg.memory_limit)
        tls = PeerTls.load(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
        access = Access(admin_token(cfg.admin_token_path), cfg.require_job_key)
        parts = assemble(
            self.store,
            self._executor,
            cfg.codec,
            tls,
            self.metrics.observe,
            access=access,
            parity_bandwidth=cfg.parity_bandwidth,
        )
        service, self.crossnode = parts.service, parts.crossnode
        readopt(self.store, parts.local, self.crossnode)
        limits = PeerLimits(
            idle_s=cfg.peer_idle_timeout, calls_per_client=cfg.peer_calls_per_client
        )
        servicer = PeerServicer(self.crossnode, self.node_id, self.engine, limits)
        self.peer = self._bind_peer(servicer, tls)
        self.control = ControlServer(
            service, self.crossnode, cfg.socket, self.status, self.registration, self._slow
        )
        self._service = service
        # Before the control socket: once it answers (readiness), metrics are served too.
        if cfg.metrics_port is not None:
            self.metrics.add_status(self.status)
            try:
                address = self.metrics.serve(cfg.metrics_bind, cfg.metrics_port)
            except OSError as exc:
                raise ConfigError(
                    f"--metrics-port {cfg.metrics_port}: cannot listen on {cfg.metrics_bind}: {exc}"
                ) from exc
            logger.info("Prometheus metrics on http://%s/metrics", address)
        self.peer.start()
        # Logged before the control socket answers: whoever waits for readiness finds it.
        logger.info(
            "SMP %s (pid %d) serving: control ipc://%s, gRPC %s%s, store %s, memory limit %s, "
            "codec engine %s",
            __version__,
            os.getpid(),
            cfg.socket,
            self.peer.address,
            " (mutual TLS)" if tls is not None else " (plaintext; the job's secret guards it)",
            cfg.store_dir,
            format_size(self.store.memory_limit),
            self.engine,
        )
        self.control.start()

    def _bind_peer(self, servicer: PeerServicer, tls: PeerTls | None) -> PeerServer:
        """The peer port. With --port 0 a restarted SMP first tries the port it had on this
        store: its jobs' peers know it by that address and keep reaching it."""
        cfg = self.config
        assert self.store is not None
        remembered = self.store.remembered_port() if cfg.port == 0 else None
        server = None
        if remembered:
            try:
                server = PeerServer(servicer, cfg.host, remembered, tls=tls)
            except (OSError, RuntimeError) as exc:
                logger.warning(
                    "the peer port this store's SMP had (%d) is taken (%s): peers of its jobs "
                    "learn the new one when the jobs rejoin",
                    remembered,
                    exc,
                )
        if server is None:
            server = PeerServer(servicer, cfg.host, cfg.port, tls=tls)
        self.store.remember_port(server.port)
        return server

    def registration(self) -> pb.RegisterResponse:
        """What a registering rank is told (static: no per-job work)."""
        assert self.store is not None and self.peer is not None
        return pb.RegisterResponse(
            smp_version=__version__,
            grpc_address=self.peer.address,
            store_dir=str(self.store.root),
            codec_engine=self.engine,
            smp_pid=os.getpid(),
            persist_to=self.config.persist_to,
            persist_every=self.config.persist_every,
            persist_keep=self.config.persist_keep,
        )

    def status(self) -> pb.StatusResponse:
        assert self.store is not None and self.peer is not None
        now = time.time()
        resp = pb.StatusResponse(
            version=__version__,
            pid=os.getpid(),
            socket=self.config.socket,
            store_dir=str(self.store.root),
            grpc_address=self.peer.address,
            memory_limit=self.store.memory_limit,
            memory_used=self.store.used,
            store_free=self.store.free_bytes(),
            codec_engine=self.engine,
            uptime_s=now - self.started,
        )
        for job in self._service.jobs():
            js = resp.jobs.add(
                job_id=job.job_id,
                world_size=job.world_size,
                num_nodes=job.num_nodes,
                last_error=job.last_error,
                protection=job.protection,
                degraded=job.degraded,
                idle_s=time.monotonic() - job.last_active,
            )
            cluster = self.crossnode.status(job.job_id) if self.crossnode else None
            if cluster is not None:
                js.node_rank, js.parity_bytes = cluster.node, cluster.parity_bytes
                js.group_members.extend(cluster.group_members)
                js.bytes += cluster.parity_bytes
                if cluster.protected is not None:
                    js.has_protected, js.protected_step = True, cluster.protected
            if job.persistence is not None:
                p = job.persistence
                js.persist_target, js.persist_failures = p.target, p.failures
                js.persist_error, js.persist_bytes_per_s = p.error, p.bytes_per_s
                if p.step is not None:
                    js.has_persisted, js.persisted_step = True, p.step
                    js.persisted_age_s = max(0.0, now - p.completed_at)
            if job.finished is not None:
                js.finished, js.finished_step = True, job.finished
            if job.committed is not None:
                js.has_committed, js.committed_step = True, job.committed
                js.committed_age_s = now - job.committed_at if job.committed_at else 0.0
            for state in sorted(job.ranks.values(), key=lambda s: s.rank):
                rs = js.ranks.add(
                    rank=state.rank, local_rank=state.local_rank, pid=state.pid, bytes=state.bytes
                )
                for slot in state.slots:
                    rs.slots.add(
                        slot=slot.index,
                        state=int(slot.state),
                        step=max(slot.step, 0),
                        nbytes=slot.nbytes,
                        capacity=slot.arena.capacity if slot.arena else 0,
                    )
                js.bytes += state.bytes
        return resp

    def wait(self, stop: threading.Event) -> None:
        """Serve until `stop` is set; meanwhile forget jobs idle longer than --job-ttl."""
        ttl = self.config.job_ttl
        while not stop.wait(0.5):
            if ttl is not None:
                self.expire(ttl)

    def expire(self, ttl_s: float) -> list[str]:
        """Forget every job without a request for `ttl_s` seconds; the jobs forgotten."""
        idle = self._service.idle_jobs(ttl_s)
        for job_id in idle:
            logger.warning("job %s: idle for over %gs (--job-ttl): forgetting it", job_id, ttl_s)
            self._service.forget(job_id)
        return idle

    def stop(self, grace: float = 2.0) -> None:
        """Ordered, idempotent shutdown."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        if self.control is not None:
            self.control.stop()  # no new local requests; the socket file is removed
        self.metrics.close()
        if self.peer is not None:
            self.peer.stop(grace)
        if self.crossnode is not None:
            self.crossnode.close()
        self._slow.shutdown(wait=False, cancel_futures=True)
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self.store is not None:
            self.store.close()
        logger.info("SMP stopped")
