"""Restore: agree with every rank on one step, read it from the SMP, load it in place.

Agreement: every rank lists its complete steps; the ranks all-gather them over the process group
and take the newest common step (with several nodes: the newest *committed* one). If a rank's copy
of it fails verification, all ranks move to the next older common step together; no rank ever
loads a different step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from typing import Any

from ecsnap.arena import MappedArena
from ecsnap.control import Opened
from ecsnap.errors import EcsnapError, RestoreError
from ecsnap.loader import prepare
from ecsnap.saved import saved_tensors, unflatten
from ecsnap.session import Session
from smp._proto import snapshot_pb2

logger = logging.getLogger(__name__)


def agreed_steps(session: Session) -> list[int]:
    """Collective: the steps every rank holds complete (committed ones only, across nodes),
    newest first; raises RestoreError on every rank if any rank could not list its steps."""
    steps: list[int] = []
    committed: int | None = None
    worlds: list[int] = []
    error = ""
    try:
        listed = session.client.list_steps(session.rank)
        steps, committed, worlds = listed.complete, listed.committed, listed.world_sizes
    except EcsnapError as exc:
        error = str(exc)
    everyone = session.all_gather((session.rank, steps, committed, error, worlds))
    failed = [f"rank {r}: {e}" for r, _, _, e, _ in everyone if e]
    if failed:
        raise RestoreError("cannot restore: " + "; ".join(failed))
    _check_world(session, everyone)
    everyone = [(r, s, c, e) for r, s, c, e, _ in everyone]
    common = set.intersection(*(set(s) for _, s, _, _ in everyone))
    if session.layout.protected:
        # Only a committed step is protected on every node; one SMP may have seen the
        # commit of a newer step before another, and any of them proves it.
        newest = max((c for _, _, c, _ in everyone if c is not None), default=None)
        common = {s for s in common if newest is not None and s <= newest}
    if not common and session.rank == 0:
        if any(s for _, s, _, _ in everyone):
            logger.warning(
                "job %s: no committed step is held by every rank (%s); starting fresh",
                session.job_id,
                {r: s for r, s, _, _ in everyone},
            )
        else:
            logger.warning(
                "job %s: no rank's SMP holds a snapshot of this job (a new job, or its "
                "snapshots were forgotten or lost): starting fresh",
                session.job_id,
            )
    return sorted(common, reverse=True)


def _check_world(session: Session, everyone: list[Any]) -> None:
    """Snapshots of another world size are not restored as if they were this job's."""
    world = session.env.world_size
    other = {w for *_, worlds in everyone for w in worlds if w and w != world}
    if other:
        saved = ", ".join(str(w) for w in sorted(other))
        raise RestoreError(
            f"the snapshots of job {session.job_id!r} were saved by a job of {saved} ranks; this "
            f"one has {world}. Relaunch with {saved} ranks to restore them, or export them "
            f"(`ecsnap export` with {saved} processes) and load that with "
            "torch.distributed.checkpoint at any world size, or forget them (`smp forget "
            f"{session.job_id}`) to start fresh"
        )


def open_agreed(session: Session, steps: list[int], verify: bool) -> tuple[int, Opened] | None:
    """Collective: open the newest of `steps` that every rank can open (checksums verified).

    Across nodes, a copy that fails verification is dropped by its SMP, which then rebuilds it
    from its group's parity (one more try of the same step) before older steps are tried."""
    problems = []
    retried = False
    queue = list(steps)
    while queue:
        step = queue[0]
        opened, error, damaged = None, "", False
        try:
            opened = session.client.open_snapshot(session.rank, step, verify)
        except EcsnapError as exc:
            error, damaged = str(exc), getattr(exc, "code", "") == "CHECKSUM_MISMATCH"
        outcome = session.all_gather((session.rank, error, damaged))
        bad = [f"rank {r}: {e}" for r, e, _ in outcome if e]
        if not bad and opened is not None:
            return step, opened
        if session.layout.protected and not retried and any(d for *_, d in outcome):
            retried = True
            logger.warning("step %d is damaged on some node (%s): rebuilding it", step, bad)
            try:
                session.rebuild_if_lost()
                continue
            except RestoreError as exc:
                bad.append(f"rebuild: {exc}")
        queue.pop(0)
        problems.append(f"step {step}: " + "; ".join(bad))
        logger.warning("cannot restore step %d (%s); trying an older one", step, bad)
    if problems:
        raise RestoreError("no common step could be restored: " + " | ".join(problems))
    return None


class MappedSnapshot:
    """An opened snapshot mapped into this process: its manifest and tensors as arena views."""

    def __init__(self, opened: Opened) -> None:
        self.manifest = snapshot_pb2.Manifest()
        self.manifest.ParseFromString(opened.manifest)
        self._arena = MappedArena(opened.path, os.stat(opened.path).st_size)
        self.saved = saved_tensors(self.manifest, self._arena.tensor)

    def tree(self) -> dict[str, tuple[str, Any]]:
        return unflatten(self.manifest, self.saved)

    def close(self) -> None:
        self.saved = []
        self._arena.close()  # nothing restored refers to the arena: the loader copies or clones

    def __enter__(self) -> MappedSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def restore(session: Session, app_state: MutableMapping[str, Any], verify: bool) -> int | None:
    """Collective: load the newest step every rank can restore; None if there is none."""
    found = open_agreed(session, agreed_steps(session), verify)
    if found is None:
        return None
    step, opened = found
    with MappedSnapshot(opened) as snapshot:
        error, prepared = "", None
        try:
            prepared = prepare(app_state, snapshot.tree())
        except RestoreError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable skeleton; every rank hears
            error = f"the snapshot cannot be read ({type(exc).__name__}: {exc})"
        # Every rank checks before any rank writes: all restore the step, or none touches its
        # live state.
        failed = [f"rank {r}: {e}" for r, e in session.all_gather((session.rank, error)) if e]
        if failed or prepared is None:
            raise RestoreError(f"cannot restore step {step}: " + "; ".join(failed))
        prepared.apply()
    return step
