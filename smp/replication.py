"""Protection across nodes: configure jobs' clusters, exchange parity, commit, rebuild.

The service owns the local slots; this coordinator owns everything that involves other nodes.
When every local rank of a job holds a step, the node's chunks are streamed to their parity
holders. A node holds a step *protected* once its ranks' data and every parity cell it holds for
the step are complete; it then tells every other node. A step is committed once all nodes of the
job reported it protected, and only then may older snapshots go. A slow or dead peer simply keeps
the step from committing; the trainers keep training.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import xxhash

from smp._proto import snapshot_pb2
from smp.cluster import ClusterState
from smp.errors import BadRequest, NotFound, Unauthenticated
from smp.layout import Layout, LayoutError, chunk_range
from smp.parity import Cell, ParityHolder
from smp.peerclient import PeerClients
from smp.protection import announce, blob_pieces, send_chunks
from smp.rebuild import rebuild_node
from smp.service import SnapshotService
from smp.store import check_job_id
from smp.tls import PeerTls

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterStatus:
    node: int
    group_members: list[int]
    parity_bytes: int
    protected: int | None


@dataclass(frozen=True)
class RebuildResult:
    rebuilt: bool
    step: int | None
    seconds: float = 0.0
    bytes_fetched: int = 0


class Replication:
    def __init__(
        self,
        service: SnapshotService,
        engine: str,
        commit_timeout: float = 120.0,
        rpc_timeout: float = 60.0,
        tls: PeerTls | None = None,
    ) -> None:
        self._service = service
        self._engine = engine
        self.commit_timeout = commit_timeout
        self.rpc_timeout = rpc_timeout
        self._lock = threading.RLock()
        self._rebuild_lock = threading.Lock()  # one rebuild at a time; later callers see its result
        self._clusters: dict[str, ClusterState] = {}
        self._clients = PeerClients(tls)
        # Coordinators wait on pushes: separate pools, so waiting never starves the pushes.
        self._coord_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="smp-coord")
        self._send_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="smp-send")
        self._notify_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="smp-notify")
        service.replication = self

    # -- configuration and auth -----------------------------------------------------------------

    def configure(
        self,
        job_id: str,
        node: int,
        num_nodes: int,
        group_size: int,
        parity: int,
        placement: str,
        addresses: list[str],
        secret: bytes,
    ) -> str:
        check_job_id(job_id)
        try:
            layout = Layout.for_job(num_nodes, group_size, parity, placement or "consecutive")
            layout.group_of(node)
        except LayoutError as exc:
            raise BadRequest(str(exc)) from None
        if len(addresses) != num_nodes:
            raise BadRequest(f"{len(addresses)} peer addresses given for {num_nodes} nodes")
        if layout.protected and len(secret) < 16:
            raise BadRequest("the job's secret must be at least 16 bytes")
        with self._lock:
            old = self._clusters.get(job_id)
            same = old is not None and (old.layout, old.node) == (layout, node)
            holder = (
                old.holder
                if same and old is not None
                else (
                    ParityHolder(
                        self._service.store, job_id, node, layout.group_of(node), self._engine
                    )
                    if layout.protected
                    else None
                )
            )
            cluster = ClusterState(layout, node, tuple(addresses), bytes(secret), holder)
            if same and old is not None:
                cluster.protected_by, cluster.protected = old.protected_by, old.protected
                cluster.pending, cluster.pending_since = old.pending, old.pending_since
                cluster.digests, cluster.sending = old.digests, old.sending
                if old.secret != cluster.secret:  # a new incarnation of the job
                    cluster.restart(self._service.committed(job_id))
            self._clusters[job_id] = cluster
        self._service.set_clustered(job_id, layout.protected, layout.describe())
        logger.info("job=%s node=%d: %s", job_id, node, layout.describe())
        return layout.describe()

    def cluster(self, job_id: str) -> ClusterState | None:
        with self._lock:
            return self._clusters.get(job_id)

    def _protected_cluster(self, job_id: str) -> ClusterState:
        cluster = self.cluster(job_id)
        if cluster is None or cluster.holder is None:
            raise NotFound(f"job {job_id!r} was not introduced to this SMP as a multi-node job")
        return cluster

    def authorize(self, job_id: str, token: str) -> None:
        if not token:
            raise Unauthenticated(
                f"call for job {job_id!r} carries no secret: peers send the job's secret in "
                "the x-ecsnap-token metadata"
            )
        cluster = self._protected_cluster(job_id)
        if not hmac.compare_digest(token, cluster.secret.hex()):
            raise Unauthenticated(f"wrong or missing secret for job {job_id!r}")

    # -- saving ---------------------------------------------------------------------------------

    def save_ready(self, job_id: str) -> tuple[bool, int | None]:
        cluster = self.cluster(job_id)
        if cluster is None or cluster.holder is None:
            return True, None
        ready = cluster.save_ready(self._service.committed(job_id), self.commit_timeout)
        return ready, cluster.pending

    def on_begin(self, job_id: str, step: int) -> None:
        cluster = self.cluster(job_id)
        if cluster is not None:
            with self._lock:
                cluster.begin(step)

    def on_rank_complete(self, job_id: str, step: int) -> None:
        cluster = self.cluster(job_id)
        if cluster is None or cluster.holder is None:
            return
        node = self._service.node_parts(job_id, step)
        if node is None:
            return  # other local ranks still copying
        with self._lock:  # the last two ranks may complete at once: send the step only once
            if step in cluster.sending:
                return
            cluster.sending.add(step)
            for old in [s for s in cluster.sending if s < step - 4]:
                cluster.sending.discard(old)
        parts, records = node
        manifest = snapshot_pb2.NodeManifest(
            node=cluster.node, step=step, blob_bytes=sum(len(p) for p in parts), slots=records
        )
        self._coord_pool.submit(self._send, job_id, cluster, step, parts, manifest)

    def _send(
        self,
        job_id: str,
        cluster: ClusterState,
        step: int,
        parts: list[memoryview],
        manifest: snapshot_pb2.NodeManifest,
    ) -> None:
        started = time.perf_counter()
        try:
            digests, sent = send_chunks(
                self._clients,
                job_id,
                cluster,
                step,
                parts,
                manifest,
                self._send_pool,
                self.rpc_timeout,
            )
        except Exception as exc:  # noqa: BLE001 - the step does not commit; training goes on
            logger.warning("job=%s step=%d: sending parity chunks failed: %s", job_id, step, exc)
            return
        with self._lock:
            cluster.digests[step] = digests
            for old in [s for s in cluster.digests if s < step - 4]:
                del cluster.digests[old]
        self._service.emit("parity_sent", job_id, sent)
        logger.debug(
            "job=%s step=%d: parity chunks sent in %.3fs",
            job_id,
            step,
            time.perf_counter() - started,
        )
        self.check_protected(job_id, step)

    def parity_begin(
        self,
        job_id: str,
        step: int,
        stripe: int,
        from_node: int,
        length: int,
        manifest: snapshot_pb2.NodeManifest,
    ) -> tuple[ParityHolder, Cell, int]:
        cluster = self._protected_cluster(job_id)
        assert cluster.holder is not None  # checked above
        if length > self._service.store.memory_limit:
            raise BadRequest(f"chunk of {length} bytes exceeds this SMP's memory limit")
        cell, epoch = cluster.holder.begin(
            step, stripe, from_node, length, manifest, self._service.committed(job_id)
        )
        return cluster.holder, cell, epoch

    def parity_finish(
        self,
        job_id: str,
        holder: ParityHolder,
        cell: Cell,
        epoch: int,
        step: int,
        from_node: int,
        digest: snapshot_pb2.ChunkDigest,
    ) -> None:
        self._service.emit("parity_received", job_id, digest.length)
        if holder.finish(cell, epoch, step, from_node, digest):
            self.check_protected(job_id, step)

    # -- commit ---------------------------------------------------------------------------------

    def check_protected(self, job_id: str, step: int) -> None:
        cluster = self.cluster(job_id)
        if cluster is None or cluster.holder is None:
            return
        if self._service.node_parts(job_id, step) is None or not cluster.holder.complete(step):
            return
        with self._lock:
            if cluster.protected is not None and step <= cluster.protected:
                return
            cluster.protected = step
            cluster.note_protected(cluster.node, step)
        announce(self._clients, job_id, cluster, step, self._notify_pool, self.rpc_timeout)
        self._update_commit(job_id, cluster)

    def peer_protected(self, job_id: str, node: int, step: int) -> None:
        cluster = self._protected_cluster(job_id)
        if not 0 <= node < cluster.layout.num_nodes or node == cluster.node:
            raise BadRequest(f"node {node} is not a peer of node {cluster.node} in this job")
        with self._lock:
            cluster.note_protected(node, step)
        self._update_commit(job_id, cluster)

    def _update_commit(self, job_id: str, cluster: ClusterState) -> None:
        with self._lock:
            committed = cluster.committed()
        if committed is not None and self._service.commit_to(job_id, committed):
            assert cluster.holder is not None
            cluster.holder.forget_before(committed)

    # -- serving peers --------------------------------------------------------------------------

    def job_state(self, job_id: str) -> tuple[int | None, list[snapshot_pb2.NodeManifest]]:
        cluster = self._protected_cluster(job_id)
        assert cluster.holder is not None
        committed = self._service.committed(job_id)
        if committed is None:
            return None, []
        manifests = list(cluster.holder.manifests.get(committed, {}).values())
        node = self._service.node_parts(job_id, committed)
        if node is not None:
            parts, records = node
            manifests.append(
                snapshot_pb2.NodeManifest(
                    node=cluster.node,
                    step=committed,
                    blob_bytes=sum(len(p) for p in parts),
                    slots=records,
                    chunks=cluster.digests.get(committed, []),
                )
            )
        return committed, manifests

    def cell_source(self, job_id: str, step: int, stripe: int) -> tuple[int, list[memoryview]]:
        cluster = self._protected_cluster(job_id)
        group = cluster.group
        assert cluster.holder is not None
        if not 0 <= stripe < group.size:
            raise BadRequest(f"stripe {stripe} is out of range 0..{group.size - 1}")
        if cluster.node in group.holders(stripe):
            cell = cluster.holder.cell(step, stripe)
            if cell is None or cell.arena is None or cell.checksum is None:
                raise NotFound(f"no complete parity of stripe {stripe} for step {step} here")
            return cell.checksum, [cell.arena.view()[: cell.length]]
        node = self._service.node_parts(job_id, step)
        if node is None:
            raise NotFound(f"this node holds no complete step {step} of job {job_id!r}")
        parts, _ = node
        i = group.data_stripes(cluster.node).index(stripe)
        start, end = chunk_range(sum(len(p) for p in parts), group.k, i)
        pieces = list(blob_pieces(parts, start, end))
        hasher = xxhash.xxh3_64()
        for piece in pieces:
            hasher.update(piece)
        return hasher.intdigest(), pieces

    # -- rebuild --------------------------------------------------------------------------------

    def rebuild(self, job_id: str, timeout: float) -> RebuildResult:
        with self._rebuild_lock:
            return self._rebuild(job_id, timeout)

    def _rebuild(self, job_id: str, timeout: float) -> RebuildResult:
        cluster = self.cluster(job_id)
        committed = self._service.committed(job_id)
        if cluster is None or cluster.holder is None or committed is not None:
            return RebuildResult(False, committed)
        result = rebuild_node(
            self._clients,
            job_id,
            cluster,
            self._engine,
            self._send_pool,
            min(timeout, self.rpc_timeout),
        )
        if result is None:
            return RebuildResult(False, None)
        self._service.install(
            job_id, result.step, list(result.manifest.slots), memoryview(result.blob)
        )
        for stripe, (cell, digests) in result.parity.items():
            cluster.holder.install(result.step, stripe, memoryview(cell), digests)
        with self._lock:
            cluster.protected = result.step
            cluster.note_protected(cluster.node, result.step)
            for node in cluster.peers():
                cluster.note_protected(node, result.step)
        self._service.commit_to(job_id, result.step)
        self._service.emit("rebuild", job_id, result.seconds)
        return RebuildResult(True, result.step, result.seconds, result.bytes_fetched)

    def status(self, job_id: str) -> ClusterStatus | None:
        cluster = self.cluster(job_id)
        if cluster is None:
            return None
        holder = cluster.holder
        return ClusterStatus(
            cluster.node,
            list(cluster.group.members) if holder else [],
            holder.nbytes if holder else 0,
            cluster.protected,
        )

    def close(self) -> None:
        self._coord_pool.shutdown(wait=False, cancel_futures=True)
        self._send_pool.shutdown(wait=False, cancel_futures=True)
        self._notify_pool.shutdown(wait=False, cancel_futures=True)
        self._clients.close()
