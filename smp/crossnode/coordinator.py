"""The cross-node coordinator: configure jobs' memberships, exchange parity, report protection,
serve peers, rebuild a lost node.

When every local rank of a job holds a step, the node's chunks are streamed to their parity
holders. A node holds a step *protected* once its ranks' data and every parity cell it holds for
the step are complete; it then tells every other node (`smp.commits` decides the commit from those
reports). A slow or dead peer simply keeps the step from committing; the trainers keep training. A
failure that dooms a step (a holder's memory limit) is told to every node, so every trainer hears
it instead of waiting for a commit that cannot come.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from smp._proto import snapshot_pb2
from smp.crossnode import send, serve, stage
from smp.crossnode.membership import ClusterStatus, Membership
from smp.crossnode.rebuild import RebuildResult, rebuild_node
from smp.crossnode.receive import ChunkSink, ParityHolder
from smp.errors import (
    BadRequest,
    MemoryLimitExceeded,
    NotFound,
    SmpError,
    StoreFull,
    Unauthenticated,
    from_code,
)
from smp.layout import Layout, LayoutError
from smp.local import LocalSnapshots
from smp.pacing import Pacer
from smp.peerclient import PeerClients
from smp.tls import PeerTls

logger = logging.getLogger(__name__)


class CrossNode:
    def __init__(
        self,
        local: LocalSnapshots,
        engine: str,
        commit_timeout: float = 120.0,
        rpc_timeout: float = 60.0,
        tls: PeerTls | None = None,
        parity_bandwidth: float | None = None,
    ) -> None:
        self._local = local
        self._store = local.store
        self._engine = engine
        self.commit_timeout = commit_timeout
        self.rpc_timeout = rpc_timeout
        self._lock = threading.RLock()
        self._rebuild_lock = threading.Lock()  # one rebuild at a time; later callers see its result
        self._stage_lock = threading.Lock()
        self._members: dict[str, Membership] = {}
        self._clients = PeerClients(tls)
        self._pacer = Pacer(parity_bandwidth)  # every parity stream this SMP sends shares it
        # Coordinators wait on pushes: separate pools, so waiting never starves the pushes.
        self._coord_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="smp-coord")
        self._send_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="smp-send")
        self._notify_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="smp-notify")

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
            old = self._members.get(job_id)
            same = old is not None and (old.layout, old.node) == (layout, node)
            if old is not None and not same:
                if old.holder is not None:
                    old.holder.release()  # another layout: those cells protect nothing any more
                self._local.restart_layout(job_id)
            holder = old.holder if same and old is not None else self._holder(job_id, layout, node)
            member = Membership(layout, node, tuple(addresses), bytes(secret), holder)
            # Another place in another layout, with snapshots held here from before: the job's
            # nodes were renumbered (or resized). What it needs is found where it is (restore
            # looks on every node), not rebuilt from parity as if this node were new.
            member.moved = (
                old.moved
                if same and old is not None
                else old is not None and self._local.holds(job_id)
            )
            if same and old is not None:
                member.carry_over(old)
                if old.secret != member.secret:  # a new incarnation of the job
                    committed = self._local.committed(job_id)
                    member.restart(committed)
                    self._local.restart(job_id, committed)
            self._members[job_id] = member
        self._local.set_clustered(job_id, layout.protected, layout.describe(), num_nodes)
        self._persist(job_id, member)
        logger.info("job=%s node=%d: %s", job_id, node, layout.describe())
        return layout.describe()

    def _holder(self, job_id: str, layout: Layout, node: int) -> ParityHolder | None:
        if not layout.protected:
            return None
        return ParityHolder(self._store, job_id, node, layout.group_of(node), self._engine)

    def _persist(self, job_id: str, member: Membership) -> None:
        if member.holder is not None:
            self._store.write_cluster(member.record(job_id, self._local.committed(job_id)))

    def member(self, job_id: str) -> Membership | None:
        with self._lock:
            return self._members.get(job_id)

    def _protected_member(self, job_id: str) -> Membership:
        member = self.member(job_id)
        if member is None or member.holder is None:
            raise NotFound(f"job {job_id!r} was not introduced to this SMP as a multi-node job")
        return member

    def authorize(self, job_id: str, token: str) -> None:
        if not token:
            raise Unauthenticated(
                f"call for job {job_id!r} carries no secret: peers send the job's secret in "
                "the x-ecsnap-token metadata"
            )
        member = self._protected_member(job_id)
        if not hmac.compare_digest(token, member.secret.hex()):
            raise Unauthenticated(f"wrong or missing secret for job {job_id!r}")

    # -- saving (the service's listener) --------------------------------------------------------

    def save_ready(self, job_id: str) -> tuple[bool, int | None, SmpError | None]:
        """(ready, the pending step, why the pending step failed if it did)."""
        member = self.member(job_id)
        if member is None or member.holder is None:
            return True, None, None
        failure = None
        if member.pending is not None:
            failed = self._local.failure(job_id, member.pending)
            failure = from_code(*failed) if failed is not None else None
        committed = self._local.committed(job_id)
        ready = member.save_ready(committed, failure is not None, self.commit_timeout)
        return ready, member.pending, failure

    def on_begin(self, job_id: str, step: int) -> None:
        member = self.member(job_id)
        if member is not None:
            with self._lock:
                member.begin(step)

    def on_rewind(self, job_id: str, step: int) -> None:
        member = self.member(job_id)
        if member is not None:
            with self._lock:
                member.restart(step - 1 if step > 0 else None)

    def on_forget(self, job_id: str) -> None:
        with self._lock:
            member = self._members.pop(job_id, None)
        if member is not None and member.holder is not None:
            member.holder.release()

    def on_rank_complete(self, job_id: str, step: int) -> None:
        member = self.member(job_id)
        if member is None or member.holder is None:
            return
        node = self._local.node_parts(job_id, step)
        if node is None:
            return  # other local ranks still copying
        with self._lock:  # the last two ranks may complete at once: send the step only once
            if not member.start_sending(step):
                return
        parts, records = node
        manifest = snapshot_pb2.NodeManifest(
            node=member.node, step=step, blob_bytes=sum(len(p) for p in parts), slots=records
        )
        self._coord_pool.submit(self._send, job_id, member, step, parts, manifest)

    def _send(
        self,
        job_id: str,
        member: Membership,
        step: int,
        parts: list[memoryview],
        manifest: snapshot_pb2.NodeManifest,
    ) -> None:
        started = time.perf_counter()
        try:
            digests, sent = send.send_chunks(
                self._clients,
                job_id,
                member,
                step,
                parts,
                manifest,
                self._send_pool,
                self.rpc_timeout,
                self._pacer,
            )
        except Exception as exc:  # noqa: BLE001 - the step cannot commit; training goes on
            self._send_failed(job_id, member, step, exc)
            return
        with self._lock:
            member.sent(step, digests)
        self._local.emit("parity_sent", job_id, sent)
        logger.debug(
            "job=%s step=%d: parity chunks sent in %.3fs",
            job_id,
            step,
            time.perf_counter() - started,
        )
        self.check_protected(job_id, step)

    def _send_failed(self, job_id: str, member: Membership, step: int, exc: BaseException) -> None:
        """A holder did not take this node's chunk: the step can never be protected there, so
        it can never commit. Every node hears it at once (their next saves need not wait for
        the step), and a memory refusal reaches the trainers."""
        error = send.failure_of(exc, member.node, step)
        logger.warning("job=%s step=%d: %s", job_id, step, error)
        self._fail_everywhere(job_id, member, step, error)

    def _fail_everywhere(self, job_id: str, member: Membership, step: int, error: SmpError) -> None:
        self._local.fail_step(job_id, step, error)
        send.announce_failure(
            self._clients, job_id, member, step, error, self._notify_pool, self.rpc_timeout
        )

    # -- receiving ------------------------------------------------------------------------------

    def open_chunk(
        self,
        job_id: str,
        token: str,
        step: int,
        stripe: int,
        from_node: int,
        length: int,
        manifest: snapshot_pb2.NodeManifest,
    ) -> ChunkSink:
        """Authorize an inbound chunk stream and give it a cell to fold into."""
        self.authorize(job_id, token)
        member = self._protected_member(job_id)
        assert member.holder is not None  # checked above
        if length > self._store.memory_limit:
            raise BadRequest(f"chunk of {length} bytes exceeds this SMP's memory limit")
        try:
            cell, epoch = member.holder.begin(
                step, stripe, from_node, length, manifest, self._local.committed(job_id)
            )
        except (MemoryLimitExceeded, StoreFull) as exc:
            error = type(exc)(f"node {member.node} cannot hold parity of step {step}: {exc}")
            self._fail_everywhere(job_id, member, step, error)
            raise error from None
        return ChunkSink(member.holder, cell, epoch, step, from_node, stripe, length)

    def close_chunk(self, job_id: str, sink: ChunkSink, expected: int) -> None:
        """The stream ended with its checksum: verify, record, and see if the step is protected."""
        digest, completed = sink.finish(expected)
        self._local.emit("parity_received", job_id, digest.length)
        if completed:
            self.check_protected(job_id, sink.step)

    # -- protection and commit ------------------------------------------------------------------

    def check_protected(self, job_id: str, step: int) -> None:
        member = self.member(job_id)
        if member is None or member.holder is None:
            return
        if self._local.node_parts(job_id, step) is None or not member.holder.complete(step):
            return
        with self._lock:
            if member.protected is not None and step <= member.protected:
                return
            member.protected = step
        send.announce(self._clients, job_id, member, step, self._notify_pool, self.rpc_timeout)
        self._protected(job_id, member, member.node, step)

    def peer_protected(self, job_id: str, node: int, step: int) -> None:
        member = self._protected_member(job_id)
        member.check_peer(node)
        self._protected(job_id, member, node, step)

    def peer_failed(self, job_id: str, node: int, step: int, code: str, message: str) -> None:
        member = self._protected_member(job_id)
        member.check_peer(node)
        self._local.fail_step(job_id, step, from_code(code, message[:2000]))

    def _protected(self, job_id: str, member: Membership, node: int, step: int) -> None:
        before = self._local.committed(job_id)
        self._local.note_protected(job_id, node, step)
        committed = self._local.committed(job_id)
        if committed is not None and committed != before:
            assert member.holder is not None
            member.holder.forget_before(committed)
            self._local.set_degraded(job_id, "")  # a new commit: protected everywhere again
            member.moved = False
            self._persist(job_id, member)

    # -- serving peers --------------------------------------------------------------------------

    def job_state(self, job_id: str) -> tuple[int | None, list[snapshot_pb2.NodeManifest], bool]:
        member = self._protected_member(job_id)
        committed, manifests = serve.job_state(member, self._local, job_id)
        return committed, manifests, member.moved

    def cell_source(self, job_id: str, step: int, stripe: int) -> tuple[int, list[memoryview]]:
        return serve.cell_source(self._protected_member(job_id), self._local, job_id, step, stripe)

    def slot_source(
        self, job_id: str, rank: int, step: int
    ) -> tuple[snapshot_pb2.SlotRecord, list[memoryview]]:
        self._protected_member(job_id)
        return serve.slot_source(self._local, job_id, rank, step)

    def stage(
        self, job_id: str, rank: int, step: int, source_node: int, timeout: float
    ) -> tuple[int, float]:
        """Fetch `rank`'s snapshot of `step` from node `source_node` into this SMP (checksums
        verified before it is served); (bytes fetched, seconds)."""
        member = self._protected_member(job_id)
        member.check_peer(source_node)
        with self._stage_lock:  # local ranks may ask for the same snapshot at once
            if self._local.slot_of(job_id, rank, step) is not None:
                return 0, 0.0  # held here already
            client = self._clients.get(member.addresses[source_node], job_id, member.secret)
            timeout = min(timeout, self.rpc_timeout)
            return stage.fetch_slot(client, self._local, job_id, rank, step, source_node, timeout)

    # -- rebuild --------------------------------------------------------------------------------

    def rebuild(self, job_id: str, timeout: float) -> RebuildResult:
        with self._rebuild_lock:
            return self._rebuild(job_id, timeout)

    def _rebuild(self, job_id: str, timeout: float) -> RebuildResult:
        member = self.member(job_id)
        committed = self._local.committed(job_id)
        if member is None or member.holder is None:
            return RebuildResult(False, committed)
        if committed is not None and self._local.node_parts(job_id, committed) is not None:
            return RebuildResult(False, committed)  # this node holds it: nothing to rebuild
        if member.moved:
            return RebuildResult(False, committed)
        result = rebuild_node(
            self._clients,
            job_id,
            member,
            self._local,
            self._engine,
            self._send_pool,
            min(timeout, self.rpc_timeout),
        )
        if result is None:
            return RebuildResult(False, None)
        assert result.step is not None  # a rebuilt node holds a step
        with self._lock:
            member.protected = result.step
        self._local.adopt_commit(job_id, result.step, member.layout.num_nodes)
        self._persist(job_id, member)
        self._local.emit("rebuild", job_id, result.seconds)
        return result

    # -- adoption, status, lifecycle ------------------------------------------------------------

    def add(self, job_id: str, member: Membership) -> None:
        """A membership known from before (re-adopted at start)."""
        with self._lock:
            self._members[job_id] = member
        self._local.set_clustered(job_id, True, member.layout.describe(), member.layout.num_nodes)

    def new_holder(self, job_id: str, layout: Layout, node: int) -> ParityHolder | None:
        return self._holder(job_id, layout, node)

    def status(self, job_id: str) -> ClusterStatus | None:
        member = self.member(job_id)
        return member.status() if member is not None else None

    def close(self) -> None:
        self._coord_pool.shutdown(wait=False, cancel_futures=True)
        self._send_pool.shutdown(wait=False, cancel_futures=True)
        self._notify_pool.shutdown(wait=False, cancel_futures=True)
        self._clients.close()
