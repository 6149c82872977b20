"""Restore: agree with every rank on one step, read it from the SMP, load it in place.

Agreement: every rank lists its complete steps; the ranks all-gather them over the process group
and take the newest common step (with several nodes: the newest *committed* one). If a rank's copy
of it fails verification, all ranks move to the next older common step together; no rank ever
loads a different step.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, Protocol

from ecsnap import topology
from ecsnap.control import ControlClient, Opened, RebuildInfo
from ecsnap.env import RankEnv, drawn_run_id
from ecsnap.errors import EcsnapError, RestoreError
from ecsnap.loader import prepare
from ecsnap.saved import MappedSnapshot
from ecsnap.session import Session
from smp.layout import Layout

logger = logging.getLogger(__name__)


class Ranks(Protocol):
    """What the agreement on a step needs: a `Session`, or a background reader's own client and
    process group (`durable.persister`)."""

    client: ControlClient
    env: RankEnv
    layout: Layout

    @property
    def rank(self) -> int: ...

    def all_gather(self, obj: Any) -> list[Any]: ...

    def rebuild_if_lost(self) -> RebuildInfo | None: ...


def agreed_steps(session: Ranks) -> list[int]:
    """Collective: the steps every rank holds complete, saved by a job of this world size
    (committed ones only, across nodes), newest first; raises RestoreError on every rank if any
    rank could not list its steps."""
    steps: list[int] = []
    committed: int | None = None
    error = ""
    try:
        listed = session.client.list_steps(session.rank)
        world = session.env.world_size
        # A step saved by a job of another size is not this job's to restore as it is (the
        # topology path reshards it).
        steps = [
            s for s, w in zip(listed.complete, listed.world_sizes, strict=False) if w in (0, world)
        ]
        committed = listed.committed
    except EcsnapError as exc:
        error = str(exc)
    everyone = session.all_gather((session.rank, steps, committed, error))
    failed = [f"rank {r}: {e}" for r, _, _, e in everyone if e]
    if failed:
        raise RestoreError("cannot restore: " + "; ".join(failed))
    common = set.intersection(*(set(s) for _, s, _, _ in everyone))
    if session.layout.protected:
        # Only a committed step is protected on every node; one SMP may have seen the
        # commit of a newer step before another, and any of them proves it.
        newest = max((c for _, _, c, _ in everyone if c is not None), default=None)
        common = {s for s in common if newest is not None and s <= newest}
    return sorted(common, reverse=True)


def open_agreed(session: Ranks, steps: list[int], verify: bool) -> tuple[int, Opened] | None:
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


def restore(
    session: Session,
    app_state: MutableMapping[str, Any],
    verify: bool,
    announce: str | None = "",
) -> int | None:
    """Collective: load the newest step every rank can restore; None if there is none, logged
    as a fresh start with `announce` appended (None: not logged: the caller has another source
    to try).

    The ranks first look on their own SMPs. When that finds nothing (the job's ranks moved to
    other nodes, or it has another world size), they look on every node's SMP (`topology`)."""
    _warn_if_finished(session)
    found = open_agreed(session, agreed_steps(session), verify)
    if found is None:
        elsewhere = topology.survey(session)
        choice = elsewhere.choose(session.layout.protected)
        if choice is None:
            if elsewhere.committed is not None:
                raise RestoreError(elsewhere.incomplete(elsewhere.committed))
            if announce is not None:
                _fresh_start(session, elsewhere, announce)
            return None
        step, old_world = choice
        return topology.restore_moved(session, app_state, elsewhere, step, old_world, verify)
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


def _warn_if_finished(session: Session) -> None:
    """Rank 0: a job its ranks closed with finished=True is being restored (trains nothing)."""
    if session.rank != 0:
        return
    try:
        finished = session.client.list_steps(session.rank).finished
    except EcsnapError:
        return  # the agreement that follows says what is wrong, on every rank
    if finished is not None:
        logger.warning(
            "job %s finished at step %d (its ranks closed with finished=True): restoring that "
            "step leaves nothing to train. To train it again from the start, forget it first "
            "(`smp forget %s` on every node, or `smp launch --fresh`)",
            session.job_id,
            finished,
            session.job_id,
        )


def _fresh_start(session: Session, found: topology.Survey, note: str) -> None:
    if session.rank != 0:
        return
    if found.holders:
        steps = sorted({step for _, step in found.holders})
        logger.warning(
            "job %s: the SMPs hold snapshots of steps %s, but none complete for every rank of "
            "a job (and committed, across nodes)%s: starting fresh",
            session.job_id,
            steps,
            note,
        )
    else:
        drawn = (
            " Its id is a run id torchrun drew at random (`torchrun --standalone` draws a new "
            "one at every launch, so a relaunch never finds the snapshots): pass --rdzv-id, set "
            "$ECSNAP_JOB, or start the job with `smp launch`."
            if drawn_run_id(session.job_id)
            else ""
        )
        logger.warning(
            "job %s: no SMP of the job holds a snapshot of it (a new job, or its snapshots were "
            "forgotten or lost)%s: starting fresh.%s",
            session.job_id,
            note,
            drawn,
        )
