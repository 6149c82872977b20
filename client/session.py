"""This rank's standing with its SMP and its job: registration, joining the job's nodes, and the
agreement collectives.

Every collective here is called by every rank the same number of times; errors are exchanged,
never raised before a collective, so one rank's failure reaches every rank as the same error
instead of leaving the others blocked.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch.distributed as dist

from ecsnap.control import ControlClient, RebuildInfo, SaveReady, SMPInfo
from ecsnap.env import RankEnv
from ecsnap.errors import EcsnapError, MemoryLimitError, RestoreError, SnapshotError
from ecsnap.group import JobGroup, exchange_addresses
from ecsnap.handle import SaveHandle
from smp.layout import Layout

logger = logging.getLogger(__name__)


def _kind(error: SnapshotError | None) -> str:
    if isinstance(error, MemoryLimitError):
        return "memory"
    return error.code if error is not None else ""


def current_env() -> RankEnv:
    """torchrun's variables, corrected by torch.distributed where it is initialized."""
    env = RankEnv.from_environ()
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if (rank, world) != (env.rank, env.world_size):
            env = RankEnv(
                rank,
                world,
                env.local_rank if world > 1 else 0,
                env.local_world_size if world > 1 else 1,
                env.node_rank,
                env.num_nodes,
                env.restart_count,
                env.hostname,
            )
    return env


class Session:
    def __init__(
        self,
        job_id: str,
        socket: str,
        timeout: float,
        process_group: Any,
        env: RankEnv,
        layout: Layout,
        job_key: bytes = b"",
    ) -> None:
        self.job_id = job_id
        self.job_key = job_key
        self.socket = socket
        self.timeout = timeout
        self.env = env
        self.layout = layout
        self._pg = process_group
        self.client = ControlClient(
            socket, job_id, timeout, reregister=self._reregister, job_key=job_key
        )
        # The copy thread's own socket, on the same registration.
        self.worker = ControlClient(
            socket, job_id, timeout, session=self.client.session, job_key=job_key
        )
        self.info: SMPInfo | None = None
        self.group: JobGroup | None = None
        self._introduction: dict[str, Any] | None = None  # what the SMP was told of the job
        self._reported: set[int | None] = set()  # failed steps already raised
        self.last_rebuild: RebuildInfo | None = None  # this node's last rebuild answer
        self._degraded = ""

    @property
    def rank(self) -> int:
        return self.env.rank

    def side_client(self) -> ControlClient:
        """A control client of its own (its own socket, on the job's key) for a thread other
        than the training thread's: pins, the durable tier's rounds."""
        return ControlClient(self.socket, self.job_id, self.timeout, job_key=self.job_key)

    # -- registration ---------------------------------------------------------------------------

    def _register(self) -> SMPInfo:
        e = self.env
        info = self.client.register(
            e.rank,
            e.world_size,
            e.local_rank,
            e.local_world_size,
            e.node_rank,
            e.num_nodes,
            os.getpid(),
            e.hostname,
        )
        logger.info(
            "rank %d registered with SMP %s at %s (job %s)",
            e.rank,
            info.version,
            self.socket,
            self.job_id,
        )
        self.info = info
        return info

    def _reregister(self) -> None:
        # The SMP restarted and forgot us: register again and introduce the job again.
        self.info = None
        self._register()
        if self._introduction is not None:
            self.client.configure(**self._introduction)

    def join(self) -> None:
        """Collective, once: register, exchange SMP addresses and the secret, configure the SMP."""
        if self.group is not None:
            return
        e = self.env
        if e.world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise EcsnapError(
                f"this rank is one of WORLD_SIZE={e.world_size} but torch.distributed is not "
                "initialized: call torch.distributed.init_process_group() before restore() or "
                "save(), so the ranks can agree on the step"
            )
        own: EcsnapError | None = None
        address = ""
        try:
            address = (self.info or self._register()).grpc_address
        except EcsnapError as exc:
            own = exc
        group = JobGroup.create(self._pg)
        try:
            intro = exchange_addresses(
                group, e.rank, e.node_rank, e.num_nodes, address, str(own or "")
            )
        except SnapshotError:
            if own is not None:
                raise own from None  # this rank's own failure, with its type (e.g. no SMP)
            raise
        fields: dict[str, Any] = {
            "node_rank": e.node_rank,
            "num_nodes": e.num_nodes,
            "group_size": self.layout.group_size,
            "parity": self.layout.parity,
            "placement": self.layout.placement,
            "peer_addresses": intro.addresses,
            "secret": intro.secret,
        }
        error, described = "", ""
        try:
            described = self.client.configure(**fields)
        except EcsnapError as exc:
            error = str(exc)
        failed = [f"rank {r}: {err}" for r, err in group.all_gather((e.rank, error)) if err]
        if failed:  # also the barrier: every SMP knows the job before anyone goes on
            raise SnapshotError("cannot introduce the job to its SMPs: " + "; ".join(failed))
        self._introduction, self.group = fields, group
        if e.rank == 0:
            logger.info("job %s: %s", self.job_id, described)

    def all_gather(self, obj: Any) -> list[Any]:
        if self.group is None:
            raise RuntimeError("join() first")  # internal ordering, not user input
        return self.group.all_gather(obj)

    # -- agreements -----------------------------------------------------------------------------

    def slot_free_everywhere(self, on_busy: str) -> bool:
        """Collective: may every SMP of the job take a new step? (all ranks get the same answer)

        A step that failed somewhere (a parity holder's memory limit, say) is raised here, on
        every rank, once: the previous save's failure reaches the training loop."""
        if self.group is None:
            raise RuntimeError("join() first")
        deadline = time.monotonic() + self.timeout
        while True:
            busy, error, failure = False, "", None
            try:
                ready = self.client.save_ready()
                busy = not ready.ready
                if ready.failure is not None and ready.pending not in self._reported:
                    failure = ready
            except EcsnapError as exc:
                error = str(exc)
            expired = on_busy == "skip" or time.monotonic() > deadline
            any_busy, any_expired, any_error, any_failed = self.group.max_flags(
                busy, expired, bool(error), failure is not None
            )
            if any_error:
                errors = self.group.all_gather((self.rank, error))
                raise SnapshotError(
                    "cannot save: " + "; ".join(f"rank {r}: {e}" for r, e in errors if e)
                )
            if any_failed:
                self._report_failure(failure)
            if not any_busy:
                return True
            if any_expired:
                if on_busy == "wait":
                    raise TimeoutError(
                        f"waited {self.timeout}s for the previous step to commit on every node"
                    )
                return False
            time.sleep(0.005)

    def _report_failure(self, mine: SaveReady | None) -> None:
        """Collective: a step that failed somewhere. A memory refusal is raised on every rank
        (it will not go away by itself); a peer that was briefly unreachable is logged."""
        assert self.group is not None
        what = (mine.pending, mine.failure) if mine is not None and mine.failure else (None, None)
        everyone = self.group.all_gather((self.rank, what[0], str(what[1] or ""), _kind(what[1])))
        failed = [(r, step, msg, kind) for r, step, msg, kind in everyone if msg]
        self._reported.update(step for _, step, _, _ in failed)
        step = failed[0][1]
        text = f"step {step} could not be protected: " + "; ".join(
            f"rank {r} heard: {msg}" for r, _, msg, _ in failed
        )
        if any(kind == "memory" for *_, kind in failed):
            raise MemoryLimitError(text, "MEMORY_LIMIT")
        if self.rank == 0:
            logger.warning("%s; the next steps are saved as usual", text)

    def wait_committed(self, step: int, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = 30.0 if deadline is None else deadline - time.monotonic()
            slice_ms = int(max(0.0, min(remaining, 30.0)) * 1000)
            resp = self.client.wait_committed(step, slice_ms, slice_ms / 1000 + self.timeout)
            if resp.committed:
                if resp.degraded and resp.degraded != self._degraded:
                    logger.warning("job %s: protection degraded: %s", self.job_id, resp.degraded)
                self._degraded = resp.degraded
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"step {step} was not committed within {timeout}s (committed "
                    f"step: {resp.step}); are all ranks saving step {step}?"
                )

    def rebuild_if_lost(self) -> RebuildInfo | None:
        """Collective: an SMP that lost the job's committed step (a replacement node) rebuilds it
        from its group's peers; one rank per node asks, every rank learns the outcome."""
        error, info = "", None
        if self.env.local_rank == 0:
            try:
                info = self.client.rebuild(self.timeout * 10)
            except EcsnapError as exc:
                error = str(exc)
        outcome = self.all_gather((self.env.node_rank, error))
        failed = [f"node {n}: {e}" for n, e in outcome if e]
        if failed:
            raise RestoreError("cannot restore: " + "; ".join(sorted(set(failed))))
        if info is not None:
            self.last_rebuild = info
        if info is not None and info.rebuilt:
            logger.warning(
                "node %d: rebuilt step %s from its group's peers in %.2fs (%d bytes fetched)",
                self.env.node_rank,
                info.step,
                info.seconds,
                info.bytes_fetched,
            )
        return info

    def retain(self) -> None:
        """Collective, after a restore: each node's SMP learns which ranks of the job run on it
        now; snapshots of ranks that moved away (or no longer exist) go at the next commit."""
        everyone = self.all_gather((self.rank, self.env.node_rank))
        error = ""
        if self.env.local_rank == 0:
            mine = sorted(r for r, n in everyone if n == self.env.node_rank)
            try:
                self.client.retain(mine)
            except EcsnapError as exc:
                error = str(exc)
        failed = [f"node {n}: {e}" for n, e in self.all_gather((self.env.node_rank, error)) if e]
        if failed:
            logger.warning("could not tell the SMPs which ranks they serve: %s", "; ".join(failed))

    def forget(self) -> int:
        """Collective: every node's SMP forgets the job (one rank per node asks); the bytes this
        node freed."""
        freed, error = 0, ""
        if self.env.local_rank == 0:
            try:
                freed = self.client.forget()
            except EcsnapError as exc:
                error = str(exc)
        failed = [f"node {n}: {e}" for n, e in self.all_gather((self.env.node_rank, error)) if e]
        if failed:
            raise SnapshotError("cannot forget the job: " + "; ".join(failed))
        self.info = None  # registrations went with it
        return freed

    def finish(self, last: SaveHandle | None, timeout: float) -> None:
        """close(finished=True): the last save committed, the job marked finished here."""
        if last is None:
            if self.client.list_steps(self.rank).finished is not None:
                return  # restored a finished job and trained nothing: it stays finished
            raise SnapshotError(
                f"job {self.job_id}: close(finished=True) but this Snapshotter saved nothing; "
                "save the final step (with on_busy='wait') before closing"
            )
        last.wait_protected(timeout)  # a skipped last step raises, saying how to avoid it
        self.client.finish(last.step)
        if self.rank == 0:
            logger.info("job %s: finished at step %d", self.job_id, last.step)

    def close(self) -> None:
        self.client.close()
        self.worker.close()
