"""When a step is committed, and who waits for it: the one place that decides.

A job on one node (or not yet introduced across nodes) commits its newest step that is complete on
every local rank. A job protected across nodes commits its newest step that every node reported
protected (this node's own report included). Commits move forward only; a rewind (an older step
saved again: a new timeline) and a relaunched job's new incarnation reset them explicitly.

Plain functions on `Job`, called with the service lock held; they return the waiters to resolve,
which the caller resolves after releasing the lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future

from smp.errors import Aborted, SmpError, from_code
from smp.jobs import CommitState, Job

EventSink = Callable[[str, str, float], None]
Resolved = list[tuple[Future[CommitState], CommitState | SmpError]]
_STEPS_KEPT = 8  # per node: protected steps remembered
_FAILURES_KEPT = 16


def _newest_local(job: Job) -> int | None:
    expected = job.world_size if job.num_nodes <= 1 else job.local_world_size
    live = job.live_ranks()
    if not live or (expected and len(live) < expected):
        return None
    common: set[int] | None = None
    for state in live:
        steps = state.complete_steps()
        common = steps if common is None else common & steps
    return max(common) if common else None


def _newest_everywhere(job: Job) -> int | None:
    if len(job.protected_by) < job.num_nodes:
        return None
    common = set.intersection(*job.protected_by.values())
    return max(common) if common else None


def update(job: Job, events: EventSink) -> Resolved:
    """Commit the job's newest step that is complete everywhere it must be, if that is news."""
    newest = _newest_everywhere(job) if job.clustered else _newest_local(job)
    if newest is None or (job.committed is not None and newest <= job.committed):
        return []
    return commit(job, newest, events)


def commit(job: Job, step: int, events: EventSink) -> Resolved:
    """Record `step` as the job's committed step; return the waiters it satisfies."""
    job.committed, job.committed_at = step, time.time()
    started = job.started.get(step)
    job.started = {s: t for s, t in job.started.items() if s > step}
    if started is not None:
        events("snapshot_committed", job.job_id, time.monotonic() - started)
    state_now = CommitState(True, step, job.degraded)
    done: Resolved = [(f, state_now) for s, f in job.waiters if s <= step]
    job.waiters = [(s, f) for s, f in job.waiters if s > step]
    return done


def note_protected(job: Job, node: int, step: int) -> None:
    steps = job.protected_by.setdefault(node, set())
    steps.add(step)
    while len(steps) > _STEPS_KEPT:
        steps.discard(min(steps))


def fail(job: Job, step: int, error: SmpError) -> Resolved:
    """`step` cannot commit (a rank abandoned it, a holder refused it...): its waiters hear why."""
    message = str(error)
    job.last_error = message
    if isinstance(error, Aborted):
        job.aborted[step] = message
    else:
        job.failed[step] = (error.code, message)
    for record in (job.aborted, job.failed):
        while len(record) > _FAILURES_KEPT:
            del record[min(record)]
    done: Resolved = [(f, error) for s, f in job.waiters if s == step]
    job.waiters = [(s, f) for s, f in job.waiters if s != step]
    return done


def wait(job: Job, step: int) -> Future[CommitState]:
    """A future that resolves once `step` (or a newer one) is committed, or fails with why not."""
    fut: Future[CommitState] = Future()
    if job.committed is not None and job.committed >= step:
        fut.set_result(CommitState(True, job.committed, job.degraded))
    elif step in job.aborted:
        fut.set_exception(Aborted(job.aborted[step]))
    elif step in job.failed:
        fut.set_exception(from_code(*job.failed[step]))
    else:
        job.waiters.append((step, fut))
    return fut


def rewind(job: Job, step: int) -> None:
    """Steps from `step` on belong to an abandoned timeline (or incarnation): forget them."""
    if job.committed is not None and job.committed >= step:
        job.committed, job.committed_at = None, 0.0
    for steps in job.protected_by.values():
        steps.difference_update({s for s in steps if s >= step})
    job.started = {s: t for s, t in job.started.items() if s < step}
    job.failed = {s: f for s, f in job.failed.items() if s < step}
    job.aborted = {s: a for s, a in job.aborted.items() if s < step}


def resolve(done: Resolved) -> None:
    """Outside the lock: hand every resolved waiter its value or error."""
    for fut, value in done:
        if fut.done():
            continue
        if isinstance(value, SmpError):
            fut.set_exception(value)
        else:
            fut.set_result(value)
