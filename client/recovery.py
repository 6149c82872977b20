"""Where `restore()` takes the state from, in order: the SMPs' memory (after a parity rebuild
where a node was lost), then the durable tier's newest complete step.

Memory wins when it holds the newest step. The durable tier is used when memory holds nothing
(every node replaced, the job gone and back), when memory cannot bring back its committed step (more
nodes lost in a group than its parity covers), or when it holds an older step than the durable
tier. Every such choice is logged with its reason and reported in `Snapshotter.last_restore`;
nothing falls back in silence: a committed step that neither source can restore is a
RestoreError.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from ecsnap import restorer
from ecsnap.durable import reload
from ecsnap.durable.store import Store
from ecsnap.errors import RestoreError
from ecsnap.session import Session

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoreInfo:
    """What the last `restore()` did: the step (None: a fresh start), where it came from
    ("memory", "parity": memory after a rebuild of this job's lost node(s) from their peers,
    "durable", or "none"), how long it took, and why a fallback was taken."""

    step: int | None
    source: str
    seconds: float
    reason: str = ""


def recover(
    session: Session, app_state: MutableMapping[str, Any], verify: bool, store: Store | None
) -> RestoreInfo:
    """Collective: restore `app_state` from the best source."""
    started = time.perf_counter()
    persisted = reload.complete_steps(session, store) if store is not None else []
    if store is None:
        note: str | None = ""
    elif persisted:
        note = None  # the durable tier is tried next; say nothing yet
    else:
        note = f", and the durable tier at {store.target} holds no complete step"
    step, failure = None, None
    try:
        if session.layout.protected:
            session.rebuild_if_lost()
        step = restorer.restore(session, app_state, verify, announce=note)
    except RestoreError as exc:
        if not persisted:
            raise
        failure = exc
    rebuilt = session.last_rebuild is not None and session.last_rebuild.rebuilt
    source = "none" if step is None else ("parity" if rebuilt else "memory")
    if store is None or not persisted or (step is not None and step >= persisted[0]):
        return RestoreInfo(step, source, time.perf_counter() - started)
    if failure is not None:
        reason = f"memory cannot restore the committed step: {failure}"
    elif step is None:
        reason = "no SMP of the job holds a snapshot of it"
    else:
        reason = f"memory holds step {step}, older than the durable tier's {persisted[0]}"
    if session.rank == 0:
        where = store.target
        logger.warning(
            "job %s: %s; restoring from the durable tier at %s", session.job_id, reason, where
        )
    durable = reload.restore(session, app_state, store, persisted)
    if durable is None:
        if failure is not None:
            raise RestoreError(f"{failure}; no persisted step is intact either") from failure
        if step is None and session.rank == 0:
            logger.warning(
                "job %s: every persisted step in %s is damaged: starting fresh",
                session.job_id,
                store.target,
            )
        return RestoreInfo(step, source, time.perf_counter() - started, reason)
    if failure is not None:
        # The SMPs still hold the rest of a timeline they cannot restore: drop it, so the job's
        # next saves (older step numbers) commit and are protected again.
        session.forget()
    if session.rank == 0:
        logger.warning(
            "job %s: restored persisted step %d from %s", session.job_id, durable, store.target
        )
    return RestoreInfo(durable, "durable", time.perf_counter() - started, reason)
