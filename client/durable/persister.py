"""Persisting committed snapshots in the background: one round per save, off the training path.

Every rank runs a thread of its own with a gloo group of its own (collectives of the training
thread never mix with these). `save()` hands each step to the thread and returns; the thread
handles the steps in order, so every rank runs the same rounds:

1. decide: is the step due (`PersistPolicy.due`)? Every N steps: every rank knows the same; T
   seconds: rank 0's clock decides for everyone (one small all-gather per save);
2. agree: wait for the step to commit, then agree on the newest committed step, as a restore does
   (checksums verified by the SMPs);
3. stage: pin it, copy it out of the SMP's arena into a buffer of this process, unpin: the SMP's
   slots are held for the copy only, so in-memory snapshots go on while the step is written (the
   buffer is kept for the next round: one copy of the rank's state, as DCP's async_save stages);
4. write: a DCP checkpoint of the staged snapshot into the store's staging place (`layout`,
   `store`), every file hashed and paced as it is written; rank 0 publishes it (marker last,
   rename) and applies retention;
5. report: one rank per node tells its SMP how the round went (`smp status`, metrics).

A failing round (disk full, permission denied, an unreachable URL) is logged and reported;
training and in-memory protection go on, and the next due step tries again. Every rank takes
part in every collective of a round whatever fails: errors are exchanged, never raised between
collectives.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from ecsnap.control import ControlClient, Opened, RebuildInfo
from ecsnap.durable import layout
from ecsnap.durable.failures import FAILURES, why
from ecsnap.durable.hashing import FileSum, watch
from ecsnap.durable.policy import PersistPolicy
from ecsnap.durable.store import PersistError, Store
from ecsnap.env import RankEnv
from ecsnap.errors import EcsnapError, RestoreError
from ecsnap.group import JobGroup
from ecsnap.handle import SaveHandle
from ecsnap.pins import Pins
from ecsnap.restorer import agreed_steps, open_agreed
from ecsnap.saved import BufferSnapshot, MappedSnapshot
from ecsnap.session import Session
from smp.layout import Layout
from smp.pacing import Pacer

logger = logging.getLogger(__name__)

_STOP = None
PIN_TRIES = 3  # agreements on the newest committed step per round (saves may move it on)
T = TypeVar("T")


@dataclass
class _Ranks:
    """The background thread's side of the job: its own SMP client and process group (the
    agreement helpers of `restorer` run on it)."""

    client: ControlClient
    env: RankEnv
    layout: Layout
    group: JobGroup

    @property
    def rank(self) -> int:
        return self.env.rank

    def all_gather(self, obj: Any) -> list[Any]:
        return self.group.all_gather(obj)

    def rebuild_if_lost(self) -> RebuildInfo | None:
        raise RestoreError("a damaged copy is rebuilt by the next restore, not by the durable tier")


@dataclass(frozen=True)
class Outcome:
    """One round's result, the same on every rank."""

    step: int | None  # the step written (None: nothing was due or new)
    nbytes: int = 0
    seconds: float = 0.0
    error: str = ""


def _agree(ranks: _Ranks, what: str, error: str) -> None:
    """Collective: raise PersistError on every rank if any rank failed `what`."""
    failed = [f"rank {r}: {e}" for r, e in ranks.all_gather((ranks.rank, error)) if e]
    if failed:
        raise PersistError(f"{what}: " + "; ".join(failed))


def _on_rank0(ranks: _Ranks, what: str, fn: Callable[[], T]) -> T:
    """Collective: `fn()` on rank 0, its result on every rank (PersistError on every rank if it
    failed)."""
    value: T | None = None
    error = ""
    if ranks.rank == 0:
        try:
            value = fn()
        except FAILURES as exc:
            error = why(exc)
    value, error = ranks.all_gather((value, error))[0]
    if error:
        raise PersistError(f"{what}: {error}")
    return value


def _attempt(fn: Callable[[], object]) -> str:
    """Run `fn`; its failure in words ("" when it succeeded)."""
    try:
        fn()
    except FAILURES as exc:
        return why(exc)
    return ""


class Persister:
    def __init__(self, session: Session, pins: Pins, policy: PersistPolicy, job_id: str) -> None:
        self._session = session
        self._pins = pins
        self.policy = policy
        self.store = Store(policy.target)
        self._job_id = job_id
        self._pacer = Pacer(policy.bandwidth)
        self._queue: queue.Queue[SaveHandle | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._ranks: _Ranks | None = None
        self._buffer: torch.Tensor | None = None
        self._last_due: int | None = None  # the last step a round was for
        self._since = time.monotonic()
        self._failures = 0
        self._listed = False  # the store was listed (rank 0, at the first round)
        self.persisted: int | None = None  # newest step complete in the store (this job's)
        self.last: Outcome | None = None

    # -- the training thread's side -------------------------------------------------------------

    def start(self) -> None:
        """Collective (every rank, in the training thread, once): the thread's own group."""
        if self._thread is not None:
            return
        s = self._session
        self._ranks = _Ranks(s.side_client(), s.env, s.layout, JobGroup.dedicated())
        self._thread = threading.Thread(target=self._run, name="ecsnap-persist", daemon=True)
        self._thread.start()

    def submit(self, handle: SaveHandle) -> None:
        """A save (or a skipped one) of the training thread: a round for it, in order."""
        self._queue.put(handle)

    def close(self, timeout: float) -> None:
        """Finish the rounds queued (up to `timeout`), then stop the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning(
                "rank %d: the durable tier's rounds did not finish within %.0fs; the step being "
                "written is abandoned (its staging place is never taken for a complete step)",
                self._session.rank,
                timeout,
            )
        elif self._ranks is not None:
            self._ranks.client.close()
        self._thread = None

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while (handle := self._queue.get()) is not _STOP:
            try:
                outcome = self._round(handle)
            except FAILURES as exc:  # a bug must not kill persistence silently
                logger.exception("rank %d: a persistence round failed", self._session.rank)
                outcome = Outcome(handle.step, error=f"{type(exc).__name__}: {exc}")
            if outcome.step is not None:
                self.last = outcome
                self._report(outcome)

    def _round(self, handle: SaveHandle) -> Outcome:
        ranks = self._ranks
        assert ranks is not None
        due = self.policy.due(handle.step, self._last_due, time.monotonic() - self._since)
        if self.policy.seconds is not None:  # clocks differ: rank 0's decides for everyone
            due = ranks.all_gather(due)[0]
        if not due:  # (by steps alone, every rank decides the same: it saw the same steps)
            return Outcome(None)
        self._last_due, self._since = handle.step, time.monotonic()
        logger.debug("rank %d: step %d is due for the durable tier", ranks.rank, handle.step)
        if not handle.skipped:
            _attempt(lambda: handle.wait_protected(self._session.timeout * 10))
        started = time.monotonic()
        try:
            step, nbytes = self._persist(ranks, handle.step)
        except FAILURES as exc:  # reported; the next due step tries again
            return self._failed(handle.step, why(exc))
        if step is None:
            return Outcome(None)
        seconds = time.monotonic() - started
        if self._failures and ranks.rank == 0:
            logger.warning("job %s: persisting works again", self._job_id)
        self._failures = 0
        if ranks.rank == 0:
            logger.info(
                "job %s: persisted step %d to %s: %.1f MiB in %.2fs (%.0f MB/s)",
                self._job_id,
                step,
                self.store.target,
                nbytes / 2**20,
                seconds,
                nbytes / max(seconds, 1e-9) / 1e6,
            )
        return Outcome(step, nbytes, seconds)

    def _failed(self, step: int, error: str) -> Outcome:
        self._failures += 1
        n = self._failures
        if self._session.rank == 0 and (n in (1, 10) or n % 100 == 0):
            logger.error(
                "job %s: persisting step %d to %s failed (%d in a row; training and in-memory "
                "protection go on, the next due step tries again): %s",
                self._job_id,
                step,
                self.store.target,
                n,
                error,
            )
        return Outcome(step, error=error)

    def _persist(self, ranks: _Ranks, due: int) -> tuple[int | None, int]:
        """Collective: write step `due` if every rank still holds it committed, else the newest
        committed step, unless the store has it already; the step and its bytes (None: nothing
        new)."""
        known = _on_rank0(ranks, f"cannot list {self.store.target}", self._known)
        self.persisted = known
        refused = ""
        for attempt in range(PIN_TRIES):
            steps = agreed_steps(ranks)
            if not steps or (known is not None and steps[0] <= known):
                logger.debug("rank %d: nothing new to persist (%s; %s)", ranks.rank, steps, known)
                return None, 0
            step = due if attempt == 0 and due in steps and due > (known or -1) else steps[0]
            staged, refused = self._stage(ranks, step)
            if staged is not None:
                break
        else:
            raise PersistError(
                f"the newest committed step moved on before it could be pinned, {PIN_TRIES} "
                f"times (last: {refused})"
            )
        nonce = secrets.token_hex(4)
        where = f"step {step} cannot be written"
        path = _on_rank0(ranks, where, lambda: self.store.begin(step, nonce))
        try:
            nbytes = self._write(ranks, step, path, staged)
        except BaseException:
            if ranks.rank == 0:
                _attempt(lambda: self.store.abandon(path))
            raise
        self.persisted = step
        return step, nbytes

    def _known(self) -> int | None:
        """Rank 0: the newest complete step of the store (listed once; a crashed earlier
        attempt's staging places are cleared then)."""
        if not self._listed:
            self.store.clean_partials()
            complete = self.store.complete()
            self.persisted = complete[0] if complete else None
            self._listed = True
        return self.persisted

    def _stage(self, ranks: _Ranks, step: int) -> tuple[BufferSnapshot | None, str]:
        """Collective: pin `step` on every rank, open it (checksums verified), copy it out of the
        SMP into this process, unpin. (None, why) when some rank's SMP no longer holds it: a
        newer step committed meanwhile and a save took its slot."""
        refused = _attempt(lambda: self._pins.pin(step))
        everyone = [f"rank {r}: {e}" for r, e in ranks.all_gather((ranks.rank, refused)) if e]
        if everyone:
            if not refused:
                self._pins.unpin(step)
            return None, "; ".join(everyone)
        try:
            found = open_agreed(ranks, [step], verify=True)
            assert found is not None  # one step asked: opened everywhere, or RestoreError
            opened = found[1]
            staged: list[BufferSnapshot] = []
            _agree(
                ranks, f"step {step} cannot be staged", _attempt(lambda: self._copy(opened, staged))
            )
        finally:
            self._pins.unpin(step)
        return staged[0], ""

    def _copy(self, opened: Opened, out: list[BufferSnapshot]) -> None:
        """Copy the opened snapshot into the staging buffer (grown, and faulted in, first)."""
        if self._buffer is None or self._buffer.numel() < opened.nbytes:
            self._buffer = None  # release the old one first
            self._buffer = torch.zeros(opened.nbytes, dtype=torch.uint8)
        with MappedSnapshot(opened) as mapped:
            out.append(mapped.copy_to(self._buffer))

    def _write(self, ranks: _Ranks, step: int, path: str, staged: BufferSnapshot) -> int:
        """Collective: every rank writes its files, rank 0 publishes; the step's bytes."""
        started = time.monotonic()
        writer = self.store.writer(path)
        fs = watch(writer, self._pacer)
        mine: list[layout.RankEntries] = []
        error = _attempt(lambda: mine.append(layout.entries(staged, ranks.rank)))
        digests = ranks.all_gather(mine[0].digests if mine else {})
        _agree(ranks, f"step {step} cannot be laid out", error)
        entries = mine[0]
        entries.privatize(digests, ranks.rank)

        def write_own() -> None:
            for name, body in entries.files(staged, ranks.rank).items():
                with fs.create_stream(fs.concat_path(path, name), "wb") as f:
                    f.write(body)

        _agree(ranks, f"step {step}: the manifests cannot be written", _attempt(write_own))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to save.*")
            dcp_save(entries.state, storage_writer=writer, process_group=ranks.group.gloo)
        sums: list[list[FileSum]] = ranks.all_gather(fs.written())
        world = self._session.env.world_size

        def publish() -> int:
            files = [f for per in sums for f in per]
            seconds = time.monotonic() - started
            nbytes = self.store.publish(step, path, world, files, seconds, self._job_id)
            self.store.retire(self.policy.retired(self.store.complete()))
            return nbytes

        return _on_rank0(ranks, f"step {step} cannot be published", publish)

    def _report(self, outcome: Outcome) -> None:
        """One rank per node tells its SMP (`smp status`, metrics)."""
        if self._ranks is None or self._session.env.local_rank != 0:
            return
        try:
            self._ranks.client.persist_report(
                self.store.target,
                self.persisted,
                outcome.nbytes,
                outcome.seconds,
                outcome.error,
                outcome.step or 0,
            )
        except EcsnapError as exc:
            logger.warning("rank %d: cannot report to the SMP: %s", self._session.rank, exc)
