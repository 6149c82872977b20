"""Typed client of the SMP's control socket: one method per request, plain dataclasses back.

No protobuf type crosses this module's boundary. The transport (one zmq DEALER, timeouts, request
ids, error codes -> exceptions) is `channel.Channel`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from ecsnap.channel import Channel, error_of
from ecsnap.env import job_key_from
from ecsnap.errors import SnapshotError
from smp._proto import control_pb2 as pb


@dataclass(frozen=True)
class SMPInfo:
    version: str
    grpc_address: str
    store_dir: str
    codec_engine: str
    pid: int
    # The durable tier the SMP offers jobs that choose none (`smp serve --persist-to`).
    persist_to: str = ""
    persist_every: int = 0
    persist_keep: int = 0


@dataclass(frozen=True)
class Grant:
    """A slot to write a step into: map `path` (`capacity` bytes) and echo slot and generation."""

    slot: int
    generation: int
    path: str
    capacity: int


@dataclass(frozen=True)
class Steps:
    complete: list[int]  # newest first
    committed: int | None
    world_sizes: list[int]  # the job's world size when each complete step was saved
    finished: int | None = None  # the step the job ended at (close(finished=True))


@dataclass(frozen=True)
class Opened:
    slot: int
    path: str
    nbytes: int
    manifest: bytes
    verify_seconds: float


@dataclass(frozen=True)
class Committed:
    committed: bool
    step: int | None  # the job's newest committed step
    degraded: str = ""  # why this node does not hold it protected, if so


@dataclass(frozen=True)
class SaveReady:
    ready: bool
    failure: SnapshotError | None  # the pending step failed (e.g. a parity holder's memory)
    pending: int | None


@dataclass(frozen=True)
class RebuildInfo:
    """What `restore()` found on this node's SMP: whether it rebuilt the job's committed step
    from its group's peers (a replacement node), which step, how long and how many bytes."""

    rebuilt: bool
    step: int | None
    seconds: float = 0.0
    bytes_fetched: int = 0


@dataclass(frozen=True)
class Held:
    """A complete snapshot an SMP holds: whose, which step, saved by a job of which size."""

    rank: int
    step: int
    world_size: int
    nbytes: int


class ControlClient:
    """`reregister`: called when the SMP answers NOT_REGISTERED (it restarted and forgot this
    rank); the request is then sent once more."""

    def __init__(
        self,
        socket_path: str,
        job_id: str,
        timeout: float,
        reregister: Callable[[], None] | None = None,
        session: int = 0,
        job_key: bytes | None = None,
    ) -> None:
        """`job_key`: the job's key (None: from the environment, `env.job_key_from`)."""
        key = job_key_from(None) if job_key is None else job_key
        self._channel = Channel(socket_path, job_id, timeout, key)
        self._reregister = reregister
        self.socket_path = socket_path
        # The registration this client's saves belong to: the SMP refuses saves of a process
        # that another registration of the same rank superseded.
        self.session = session or secrets.randbits(64)

    def close(self) -> None:
        self._channel.close()

    def _call(self, kind: str, body: Message, timeout: float | None = None) -> pb.Response:
        try:
            return self._channel.call(kind, body, timeout)
        except SnapshotError as exc:
            if exc.code != "NOT_REGISTERED" or self._reregister is None:
                raise
        self._reregister()
        return self._channel.call(kind, body, timeout)

    def register(
        self,
        rank: int,
        world_size: int,
        local_rank: int,
        local_world_size: int,
        node_rank: int,
        num_nodes: int,
        pid: int,
        hostname: str,
    ) -> SMPInfo:
        r = self._channel.call(
            "register",
            pb.RegisterRequest(
                rank=rank,
                world_size=world_size,
                local_rank=local_rank,
                local_world_size=local_world_size,
                node_rank=node_rank,
                num_nodes=num_nodes,
                pid=pid,
                hostname=hostname,
                session=self.session,
            ),
        ).register
        return SMPInfo(
            r.smp_version,
            r.grpc_address,
            r.store_dir,
            r.codec_engine,
            r.smp_pid,
            r.persist_to,
            r.persist_every,
            r.persist_keep,
        )

    def configure(
        self,
        node_rank: int,
        num_nodes: int,
        group_size: int,
        parity: int,
        placement: str,
        peer_addresses: Sequence[str],
        secret: bytes,
    ) -> str:
        request = pb.ConfigureRequest(
            node_rank=node_rank,
            num_nodes=num_nodes,
            group_size=group_size,
            parity=parity,
            placement=placement,
            peer_addresses=list(peer_addresses),
            secret=secret,
        )
        return str(self._call("configure", request).configure.layout)

    def begin_save(self, rank: int, step: int, nbytes: int) -> Grant:
        g = self._call(
            "begin_save",
            pb.BeginSaveRequest(rank=rank, step=step, nbytes=nbytes, session=self.session),
        ).begin_save
        return Grant(g.slot, g.generation, g.path, g.capacity)

    def commit_save(self, rank: int, step: int, grant: Grant, nbytes: int, manifest: bytes) -> None:
        self._call(
            "commit_save",
            pb.CommitSaveRequest(
                rank=rank,
                step=step,
                slot=grant.slot,
                generation=grant.generation,
                nbytes=nbytes,
                manifest=manifest,
                session=self.session,
            ),
        )

    def abort_save(
        self, rank: int, step: int, grant: Grant, reason: str, timeout: float | None = None
    ) -> None:
        self._call(
            "abort_save",
            pb.AbortSaveRequest(
                rank=rank,
                step=step,
                slot=grant.slot,
                generation=grant.generation,
                reason=reason,
                session=self.session,
            ),
            timeout=timeout,
        )

    def save_ready(self) -> SaveReady:
        r = self._call("save_ready", pb.SaveReadyRequest()).save_ready
        failure = None
        if r.HasField("failure"):
            failure = error_of(r.failure, f"SMP at {self.socket_path}")
        return SaveReady(r.ready, failure, r.pending_step if r.has_pending else None)

    def wait_committed(self, step: int, timeout_ms: int, timeout: float) -> Committed:
        r = self._call(
            "wait_committed",
            pb.WaitCommittedRequest(step=step, timeout_ms=timeout_ms),
            timeout=timeout,
        ).wait_committed
        return Committed(r.committed, r.committed_step if r.has_committed else None, r.degraded)

    def list_steps(self, rank: int) -> Steps:
        r = self._call("list_steps", pb.ListStepsRequest(rank=rank)).list_steps
        return Steps(
            list(r.complete_steps),
            r.committed_step if r.has_committed else None,
            list(r.world_sizes),
            r.finished_step if r.finished else None,
        )

    def open_snapshot(self, rank: int, step: int, verify: bool = True) -> Opened:
        r = self._call(
            "open_snapshot",
            pb.OpenSnapshotRequest(rank=rank, step=step, skip_verify=not verify),
        ).open_snapshot
        return Opened(r.slot, r.path, r.nbytes, r.manifest, r.verify_seconds)

    def pin(self, rank: int, step: int, pinned: bool, lease_s: int = 3600) -> None:
        """Keep (or release) the slot holding `step` from being reused by later saves, for at
        most `lease_s` seconds (or until the rank registers again)."""
        self._call("pin", pb.PinRequest(rank=rank, step=step, pinned=pinned, lease_s=lease_s))

    def locate(self) -> tuple[list[Held], int | None]:
        """Every complete snapshot of the job this SMP holds (any rank), and the committed
        step."""
        r = self._call("locate", pb.LocateRequest()).locate
        held = [Held(h.rank, h.step, h.world_size, h.nbytes) for h in r.held]
        return held, r.committed_step if r.has_committed else None

    def stage(self, rank: int, step: int, source_node: int, timeout: float) -> int:
        """Have this SMP fetch `rank`'s snapshot of `step` from node `source_node`'s SMP;
        the bytes fetched (0 when it held it already)."""
        r = self._call(
            "stage",
            pb.StageRequest(
                rank=rank, step=step, source_node=source_node, timeout_ms=int(timeout * 1000)
            ),
            timeout=timeout + 5.0,
        ).stage
        return int(r.bytes_fetched)

    def retain(self, ranks: Sequence[int]) -> None:
        """This node's ranks of the job are `ranks` (others' snapshots go at the next commit)."""
        self._call("retain", pb.RetainRequest(ranks=list(ranks)))

    def persist_report(
        self, target: str, step: int | None, nbytes: int, seconds: float, error: str, tried: int
    ) -> None:
        """Tell the SMP how the job's last persistence round went (for `smp status`)."""
        self._call(
            "persist_report",
            pb.PersistReportRequest(
                target=target,
                has_step=step is not None,
                step=step or 0,
                bytes=nbytes,
                seconds=seconds,
                error=error,
                attempted_step=tried,
            ),
        )

    def forget(self) -> int:
        """Delete the job's snapshots and parity from this SMP; the bytes freed."""
        return int(self._call("forget", pb.ForgetRequest()).forget.freed_bytes)

    def finish(self, step: int) -> None:
        """Mark the job finished at its committed `step` on this SMP."""
        self._call("finish", pb.FinishRequest(step=step))

    def rebuild(self, timeout: float) -> RebuildInfo:
        r = self._call(
            "rebuild",
            pb.RebuildRequest(timeout_ms=int(timeout * 1000)),
            timeout=timeout + 5.0,
        ).rebuild
        return RebuildInfo(r.rebuilt, r.step if r.has_step else None, r.seconds, r.bytes_fetched)
