"""Snapshotter: the public face of ecsnap inside a trainer rank.

A thin facade over three parts: the session (registration, joining the job's nodes, agreement
collectives), the copier (the save pipeline and its fences) and the restorer. Multi-node jobs
join collectively at restore() or the first save(): SMP addresses and the job's secret travel
through the process group. Before each save the ranks agree (one small all-reduce) that every
SMP has a free slot, so all ranks save or all skip the same step.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

from ecsnap import exporter
from ecsnap.arena import MappedArena
from ecsnap.control import Grant, RebuildInfo, SMPInfo
from ecsnap.copier import Copier
from ecsnap.durable.policy import PersistPolicy, PersistSettings
from ecsnap.durable.tier import DurableTier
from ecsnap.env import RankEnv, job_id_from, job_key_from, layout_from, socket_from
from ecsnap.errors import EcsnapError, SnapshotError
from ecsnap.fences import fenced_storages, owners
from ecsnap.flatten import flatten
from ecsnap.handle import SaveHandle
from ecsnap.pins import Pins
from ecsnap.recovery import RestoreInfo, recover
from ecsnap.session import Session, current_env
from smp.layout import Layout

logger = logging.getLogger(__name__)

ON_BUSY = ("skip", "wait")


def _check_on_busy(on_busy: str) -> str:
    if on_busy not in ON_BUSY:
        raise ValueError(f"on_busy={on_busy!r}: use 'skip' or 'wait'")
    return on_busy


class Snapshotter:
    """Saves and restores one rank's app state through its node's SMP.

    job_id: default $ECSNAP_JOB, else $TORCHELASTIC_RUN_ID, else "default".
    socket: default $ECSNAP_SOCKET, else /tmp/ecsnap-<uid>/smp.sock.
    process_group: used to agree on the step to restore; default: the default group if initialized.
    group_size, parity, placement: redundancy across nodes; default $ECSNAP_GROUP_SIZE (4, capped
      by the node count), $ECSNAP_PARITY (1), $ECSNAP_PLACEMENT ("consecutive" or "strided").
    on_busy: what save() does while the previous step is not yet committed on every node:
      "skip" (default: the step is not snapshotted; training goes on) or "wait".
    job_key: the job's key on its SMPs (at least 16 bytes; every rank and every relaunch of the
      job must give the same); default $ECSNAP_JOB_KEY, else the file $ECSNAP_JOB_KEY_FILE, else
      none. The first registration binds the job id to it: other jobs cannot read or change it.
    persist_to, persist_every, persist_seconds, persist_keep, persist_keep_every,
      persist_bandwidth: the durable tier (`ecsnap.durable.policy`): committed snapshots written
      as DCP checkpoints in the background, restored when memory cannot; default
      $ECSNAP_PERSIST_TO etc., else what the SMP offers (`smp serve --persist-to`), else off.
    """

    ON_BUSY = ON_BUSY

    def __init__(
        self,
        job_id: str | None = None,
        socket: str | None = None,
        process_group: Any = None,
        *,
        timeout: float = 60.0,
        verify: bool = True,
        group_size: int | None = None,
        parity: int | None = None,
        placement: str | None = None,
        on_busy: str = "skip",
        job_key: str | bytes | None = None,
        persist_to: str | os.PathLike[str] | None = None,
        persist_every: int | None = None,
        persist_seconds: float | None = None,
        persist_keep: int | None = None,
        persist_keep_every: int | None = None,
        persist_bandwidth: str | float | None = None,
    ) -> None:
        self.on_busy = _check_on_busy(on_busy)
        self.job_id = job_id_from(job_id)
        self.socket = socket_from(socket)
        self.timeout = timeout
        self.verify = verify
        env = current_env()
        self.layout: Layout = layout_from(env.num_nodes, group_size, parity, placement)
        key = job_key_from(job_key)
        self._session = Session(
            self.job_id, self.socket, timeout, process_group, env, self.layout, key
        )
        self._copier = Copier(self._session.worker, env.rank)
        self._pins = Pins(self._session)
        self._exports = exporter.Exports(self._session, self._pins)
        persist = PersistSettings(
            persist_to,
            persist_every,
            persist_seconds,
            persist_keep,
            persist_keep_every,
            persist_bandwidth,
        )
        self._durable = DurableTier(self._session, self._pins, persist)
        self.last_restore: RestoreInfo | None = None
        self._arenas: dict[int, MappedArena] = {}
        self._closed = False
        self.skipped = 0  # saves skipped because no slot was free (previous step not committed)
        self._last: SaveHandle | None = None  # the newest save() handle (for close(finished))
        self._skipped_in_a_row = 0

    # -- where we are ---------------------------------------------------------------------------

    @property
    def env(self) -> RankEnv:
        return self._session.env

    @property
    def rank(self) -> int:
        return self._session.rank

    @property
    def smp_info(self) -> SMPInfo | None:
        return self._session.info

    @property
    def last_rebuild(self) -> RebuildInfo | None:
        """What this node's SMP answered the last rebuild request of restore() (local rank 0
        asks): whether it rebuilt the job's committed step from its peers, and how fast."""
        return self._session.last_rebuild

    @property
    def persisted(self) -> int | None:
        """The newest step complete in the durable tier (None: none, or no durable tier)."""
        return self._durable.persisted

    @property
    def persist_policy(self) -> PersistPolicy | None:
        """The durable tier in use (known once restore() or save() met the SMPs)."""
        return self._durable.policy

    @property
    def fence_wait_s(self) -> float:
        """Total time the optimizer/module fences waited for background copies."""
        return self._copier.fence_wait_s

    # -- save -----------------------------------------------------------------------------------

    def save(
        self, step: int, app_state: Mapping[str, Any], *, on_busy: str | None = None
    ) -> SaveHandle:
        """Snapshot `app_state` as `step`; returns once the background copy is launched.

        Multi-node jobs: while the previous step is not committed on every node, the step is
        skipped on every rank (the handle says `skipped`) or, with on_busy="wait" (here or in the
        constructor), save waits for the commit. Every rank must pass the same on_busy."""
        self._check_open()
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        busy = _check_on_busy(on_busy) if on_busy is not None else self.on_busy
        start = time.perf_counter()
        self._copier.finish_inflight()
        self._copier.raise_pending()
        self._join()
        if self.layout.protected and not self._session.slot_free_everywhere(busy):
            return self._skip(step)
        modules, optimizers = owners(app_state)
        self._copier.fences.install(modules, optimizers)
        e = self.env
        flat = flatten(app_state, fenced_storages(modules, optimizers), e.rank, e.world_size)
        grant = self._begin(step, max(flat.nbytes, 1), busy)
        if grant is None:
            return self._skip(step)
        self._skipped_in_a_row = 0
        handle = SaveHandle(step, flat.nbytes, self._session.wait_committed)
        self._copier.start(handle, flat, self._map(grant), grant)
        self._durable.submit(handle)
        handle.blocked_s = time.perf_counter() - start
        self._last = handle
        return handle

    def _begin(self, step: int, nbytes: int, busy: str) -> Grant | None:
        """A slot for `step`; None when every slot must be kept (the committed step, a step an
        export or the durable tier is reading) and `busy` is "skip". With "wait", waits for one
        up to `timeout` (then TimeoutError)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self._session.client.begin_save(self.rank, step, nbytes)
            except SnapshotError as exc:
                if exc.code != "BUSY":
                    raise
                if busy == "skip":
                    logger.info("rank %d: step %d skipped: %s", self.rank, step, exc)
                    return None
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"waited {self.timeout}s for a free slot for step {step}: {exc}"
                    ) from exc
            time.sleep(0.005)

    def _skip(self, step: int) -> SaveHandle:
        self.skipped += 1
        self._skipped_in_a_row += 1
        n = self._skipped_in_a_row
        if self.rank == 0 and (n in (1, 10) or n % 100 == 0):
            logger.warning(
                "step %d not snapshotted (%d in a row): the previous step is not committed on "
                "every node yet; if this goes on, a peer SMP is slow or unreachable (its log and "
                "`smp status` say which)",
                step,
                n,
            )
        self._last = SaveHandle.skipped_step(step, self._session.wait_committed)
        self._durable.submit(self._last)
        return self._last

    def _map(self, grant: Grant) -> MappedArena:
        arena = self._arenas.get(grant.slot)
        if arena is None or not arena.still_valid(grant.path, grant.capacity):
            if arena is not None:
                arena.close()
            arena = self._arenas[grant.slot] = MappedArena(grant.path, grant.capacity)
        return arena

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the in-flight save (if any) to be copied and handed to the SMP."""
        handle = self._copier.inflight
        if handle is not None:
            handle.wait(timeout)
            if not handle._handed_over.wait(timeout):
                raise TimeoutError(f"the SMP did not accept step {handle.step} within {timeout}s")

    # -- restore and export ---------------------------------------------------------------------

    def restore(self, app_state: MutableMapping[str, Any]) -> int | None:
        """Load the newest step every rank can restore into `app_state`; None if there is none.
        From the SMPs' memory (rebuilding a lost node from its peers first), else from the
        durable tier; `last_restore` says which, and why."""
        self._check_open()
        self._copier.finish_inflight()
        self._join()
        info = recover(self._session, app_state, self.verify, self._durable.store)
        self.last_restore = info
        self._session.retain()
        return info.step

    def export_dcp(self, path: Any, step: int | None = None, *, wait: bool = True) -> int:
        """Collective: write the newest committed step (or `step`) from the SMPs' memory as a
        standard torch.distributed.checkpoint at `path` (any checkpoint_id DCP accepts); return
        the step written. It reads the arenas, not the live tensors. With wait=False it returns
        once the step is agreed and pinned, and the write runs in the background (see
        `wait_export`); training may go on meanwhile."""
        self._check_open()
        self._copier.finish_inflight()
        self._join()
        if self.layout.protected:
            self._session.rebuild_if_lost()
        return self._exports.start(path, step, self.verify, wait)

    def wait_export(self, timeout: float | None = None) -> None:
        """Wait for a background export_dcp(wait=False) to finish; raise if it failed."""
        self._exports.wait(timeout)

    def forget(self) -> int:
        """Collective: delete every snapshot of this job from the SMPs of all its nodes and free
        their memory (parity included); returns the bytes this node's SMP freed. Saves may go on
        afterwards: they start a new history."""
        self._check_open()
        self._copier.finish_inflight()
        self._join()
        return self._session.forget()

    # -- lifecycle ------------------------------------------------------------------------------

    def _join(self) -> None:
        """Collective, once: meet the job's SMPs, settle the durable tier."""
        self._session.join()
        self._durable.join()

    def _check_open(self) -> None:
        if self._closed:
            raise EcsnapError("this Snapshotter is closed")

    def close(self, timeout: float = 60.0, *, finished: bool = False) -> None:
        """Wait (up to `timeout`) for the in-flight save and export to finish; release
        everything. finished=True (every rank, at the end of training): wait until the last
        save is committed, then mark the job finished on the SMPs, so that running it again
        is refused by `smp launch` (unless --fresh) instead of restoring the last step and
        training nothing."""
        if self._closed:
            return
        if finished:
            self._session.finish(self._last, timeout)
        self._closed = True
        try:
            self._copier.close(timeout)
            self._exports.close(timeout)
            self._durable.close(timeout)
        finally:
            self._pins.close()
            self._session.close()
            for arena in self._arenas.values():
                arena.close()
            self._arenas.clear()

    def __enter__(self) -> Snapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
