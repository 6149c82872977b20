"""Restore from the durable tier: the newest complete persisted step, loaded like a snapshot.

Collective. The ranks agree on the step (rank 0 lists the store; every rank gets its list), check
every file of it against the marker's checksums first (the ranks share the files; a damaged or
missing file makes the step unusable, and the next older complete step is tried, loudly), then
each rank rebuilds the snapshot its rank persisted (`layout`: its manifest and the DCP key of
each tensor) in a buffer of its own, `dcp.load` filling every tensor, and hands it to the loader
that restores from memory: checked against the live state on every rank before any rank writes.

At another world size each rank takes its old rank's snapshot (a new rank: rank 0's, as DCP
takes what is not sharded to be replicated), and every DTensor is loaded straight into the live
layout: DCP reads the overlapping pieces of the persisted shards.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import MutableMapping
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from ecsnap import dtensors
from ecsnap.durable import layout
from ecsnap.durable.failures import FAILURES, why
from ecsnap.durable.store import PersistError, Store
from ecsnap.errors import EcsnapError, RestoreError
from ecsnap.loader import prepare
from ecsnap.saved import BufferSnapshot, Saved
from ecsnap.session import Session
from ecsnap.topology import init_optimizer_state
from smp._proto import snapshot_pb2

logger = logging.getLogger(__name__)


def complete_steps(session: Session, store: Store) -> list[int]:
    """Collective: the store's complete steps, newest first, as rank 0 lists them (a store that
    cannot be listed is a RestoreError on every rank)."""
    steps: list[int] = []
    error = ""
    if session.rank == 0:
        try:
            steps = store.complete()
        except PersistError as exc:
            error = str(exc)
    steps, error = session.all_gather((steps, error))[0]
    if error:
        raise RestoreError(f"cannot list the durable tier: {error}")
    return list(steps)


def _verified(session: Session, store: Store, step: int) -> tuple[dict[str, Any], str]:
    """Collective: the step's marker and "" if every file matches it, else what does not."""
    marker: dict[str, Any] = {}
    bad: list[str] = []
    try:
        marker = store.marker(step)
        names = sorted(marker["files"])
        world = session.env.world_size
        bad = store.verify(step, names[session.rank :: world], marker["files"])
    except (PersistError, KeyError, TypeError) as exc:
        bad = [f"marker: {exc}"]
    everyone = [b for per in session.all_gather(bad) for b in per]
    return marker, "; ".join(everyone)


class _Placeholders:
    """The loader's resharding hook: a live DTensor laid out differently from the persisted one
    gets a buffer shaped like its local shard, filled by DCP with the live layout's piece."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = keys
        self.targets: dict[str, Any] = {}
        self.claimed: set[int] = set()

    def fill(
        self, path: str, saved: Saved, live: Any
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
        problem = dtensors.shape_problem(path, saved.entry.dtensor, live)
        if problem:
            return [], problem
        now = dtensors.describe(live)
        local = dtensors.local_of(live)
        key = self._keys[saved.index]
        if key in self.targets:
            piece = dtensors.local_of(self.targets[key])
        else:
            piece = torch.empty(local.shape, dtype=local.dtype)
            self.targets[key] = dtensors.rebuild(piece, now, live.device_mesh)
        self.claimed.add(saved.index)
        return [(local, piece)], ""


def _load(store: Store, step: int, targets: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load.*")
        dcp_load(targets, storage_reader=store.reader(step), no_dist=True)


def _restore_step(
    session: Session,
    app_state: MutableMapping[str, Any],
    store: Store,
    step: int,
    marker: dict[str, Any],
) -> None:
    """Collective: load persisted `step` into `app_state` (RestoreError on every rank, with the
    live state untouched, if any rank cannot)."""
    rank, world = session.rank, session.env.world_size
    old_world = int(marker.get("world_size", 0))
    error, prepared = "", None
    try:
        if old_world < 1:
            raise RestoreError("the marker does not say the job's world size")
        base = rank if rank < old_world else 0
        manifest = snapshot_pb2.Manifest()
        manifest.ParseFromString(store.read(step, layout.manifest_name(base)))
        keys = layout.parse_keys(store.read(step, layout.keys_name(base)), manifest, base)
        snapshot = BufferSnapshot(manifest, torch.empty(manifest.nbytes, dtype=torch.uint8))
        _load(store, step, layout.load_targets(snapshot.saved, keys, base, set()))
        reshard = None
        if old_world != world:
            init_optimizer_state(app_state)
            reshard = _Placeholders(keys)
        prepared = prepare(app_state, snapshot.tree(), reshard)
        if reshard is not None and reshard.targets:
            _load(store, step, reshard.targets)
    except EcsnapError as exc:
        error = str(exc)
    except FAILURES as exc:  # every rank must hear it, not hang in the gather
        error = why(exc)
    failed = [f"rank {r}: {e}" for r, e in session.all_gather((rank, error)) if e]
    if failed or prepared is None:
        raise RestoreError(f"cannot restore persisted step {step}: " + "; ".join(failed))
    prepared.apply()


def restore(
    session: Session, app_state: MutableMapping[str, Any], store: Store, steps: list[int]
) -> int | None:
    """Collective: load the newest of `steps` (complete in `store`) whose files all match their
    checksums; None when none does (each refusal logged)."""
    for step in steps:
        marker, bad = _verified(session, store, step)
        if bad:
            if session.rank == 0:
                logger.error(
                    "job %s: persisted step %d in %s is damaged (%s); trying an older one",
                    session.job_id,
                    step,
                    store.target,
                    bad,
                )
            continue
        _restore_step(session, app_state, store, step, marker)
        return step
    return None
