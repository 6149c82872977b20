"""Restoring after the job's topology changed: its ranks run on other nodes now (torchrun's
rendezvous renumbered them), or it has another world size.

A snapshot is addressed by (job, rank, step), not by where it lives. Every node's SMP says which
snapshots it holds (`locate`); the ranks agree on the newest step the old job holds complete for
every one of its ranks, and each new rank reads what it needs, wherever it is: its own old rank's
snapshot (same world size), or the pieces of the old shards that overlap its new shards (another
world size). What another node holds is fetched into this node's SMP first, over the job's
authenticated peer service, checksums verified. DTensors are resharded as DCP reshards a
checkpoint (the bytes of every overlap copied as they are), so the result equals DCP's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ecsnap import dtensors
from ecsnap.control import Held
from ecsnap.errors import EcsnapError, RestoreError
from ecsnap.fences import owners
from ecsnap.loader import prepare
from ecsnap.saved import MappedSnapshot, Saved
from ecsnap.session import Session
from smp._proto import snapshot_pb2

logger = logging.getLogger(__name__)

Kind = snapshot_pb2.Placement


@dataclass
class Survey:
    """Who holds what, over all the job's nodes."""

    holders: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (rank, step) -> nodes
    worlds: dict[tuple[int, int], int] = field(default_factory=dict)  # (rank, step) -> world
    committed: int | None = None

    def choose(self, protected: bool) -> tuple[int, int] | None:
        """The newest (step, world size) the old job holds complete for every one of its
        ranks (and, across nodes, committed)."""
        best: tuple[int, int] | None = None
        for (rank, step), world in self.worlds.items():
            del rank
            if protected and (self.committed is None or step > self.committed):
                continue
            if best is not None and step <= best[0]:
                continue
            if world and all((r, step) in self.holders for r in range(world)):
                best = (step, world)
        return best

    def incomplete(self, step: int) -> str:
        """Why committed `step` cannot be restored from what the SMPs hold."""
        worlds = {w for (_, s), w in self.worlds.items() if s == step and w}
        world = max(worlds, default=0)
        missing = [r for r in range(world) if (r, step) not in self.holders]
        lacking = f"ranks {missing} of its {world}" if world else "every rank"
        return (
            f"step {step} was committed, but no SMP holds the snapshots of {lacking} any more: "
            "a node was lost while the job also moved to other nodes or changed size, and "
            "ecsnap rebuilds a lost node from parity only on the layout it was saved in (keep "
            "node ranks and world size: torchrun --rdzv-backend static --node-rank N). This "
            "state cannot come back from memory: load your last durable checkpoint, or "
            "`smp forget` the job on every node to start fresh"
        )


def survey(session: Session) -> Survey:
    """Collective: one rank per node lists what its SMP holds; every rank learns all of it."""
    held: list[Held] = []
    committed: int | None = None
    error = ""
    if session.env.local_rank == 0:
        try:
            held, committed = session.client.locate()
        except EcsnapError as exc:
            error = str(exc)
    everyone = session.all_gather((session.env.node_rank, held, committed, error))
    failed = [f"node {n}: {e}" for n, _, _, e in everyone if e]
    if failed:
        raise RestoreError("cannot find the job's snapshots: " + "; ".join(failed))
    out = Survey()
    for node, items, node_committed, _ in everyone:
        for h in items:
            out.holders.setdefault((h.rank, h.step), []).append(node)
            out.worlds[(h.rank, h.step)] = h.world_size
        if node_committed is not None and (out.committed is None or node_committed > out.committed):
            out.committed = node_committed
    return out


class Sources:
    """The old ranks' snapshots of one step, mapped here; one another node holds is fetched
    into this node's SMP first."""

    def __init__(self, session: Session, found: Survey, step: int, verify: bool) -> None:
        self._session, self._survey, self._step, self._verify = session, found, step, verify
        self._open: dict[int, MappedSnapshot] = {}
        self._paths: dict[int, dict[str, Saved]] = {}
        self.fetched = 0

    def snapshot(self, rank: int) -> MappedSnapshot:
        snap = self._open.get(rank)
        if snap is None:
            s = self._session
            nodes = self._survey.holders.get((rank, self._step), [])
            if s.env.node_rank not in nodes:
                if not nodes:
                    raise RestoreError(f"no SMP holds rank {rank}'s snapshot of step {self._step}")
                timeout = s.timeout * 10
                self.fetched += s.client.stage(rank, self._step, nodes[0], timeout)
            opened = s.client.open_snapshot(rank, self._step, self._verify)
            snap = self._open[rank] = MappedSnapshot(opened)
        return snap

    def by_path(self, rank: int) -> dict[str, Saved]:
        paths = self._paths.get(rank)
        if paths is None:
            tree = self.snapshot(rank).tree()
            paths = self._paths[rank] = dict(_saved_with_paths(tree))
        return paths

    def close(self) -> None:
        for snap in self._open.values():
            snap.close()
        self._open.clear()
        self._paths.clear()


def _saved_with_paths(tree: Mapping[str, tuple[str, Any]]) -> Iterator[tuple[str, Saved]]:
    """Paths as the loader names them ("model/0.weight", "optim/state/3/exp_avg")."""
    stack: list[tuple[str, Any]] = [(key, value) for key, (_, value) in tree.items()]
    while stack:
        path, value = stack.pop()
        if isinstance(value, Saved):
            yield path, value
        elif isinstance(value, Mapping):
            stack.extend((f"{path}/{k}", v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}/{i}", v) for i, v in enumerate(value))


Box = tuple[tuple[int, ...], tuple[int, ...]]  # (offsets, sizes) in the global tensor


def local_box(
    global_shape: list[int], mesh_shape: list[int], coordinate: list[int], placements: list[Any]
) -> Box:
    """Where a rank's local shard lies in the global tensor (DTensor's torch.chunk split)."""
    sizes, offsets = list(global_shape), [0] * len(global_shape)
    for i, p in enumerate(placements):
        if p.kind == Kind.SHARD:
            d, n = p.dim, mesh_shape[i]
            chunk = -(-sizes[d] // n)
            start = min(coordinate[i] * chunk, sizes[d])
            end = min(start + chunk, sizes[d])
            offsets[d] += start
            sizes[d] = end - start
    return tuple(offsets), tuple(sizes)


def _coordinate(meta: snapshot_pb2.DTensorMeta, rank: int) -> list[int] | None:
    ranks = list(meta.mesh_ranks)
    if rank not in ranks:
        return None
    flat, coord = ranks.index(rank), []
    for n in reversed(meta.mesh_shape):
        coord.append(flat % n)
        flat //= n
    return coord[::-1]


def _overlap(a: Box, b: Box) -> Box | None:
    lo = tuple(max(x, y) for x, y in zip(a[0], b[0], strict=True))
    hi = tuple(min(x + n, y + m) for x, n, y, m in zip(a[0], a[1], b[0], b[1], strict=True))
    if any(h <= lo_ for lo_, h in zip(lo, hi, strict=True)):
        return None
    return lo, tuple(h - lo_ for lo_, h in zip(lo, hi, strict=True))


def _narrow(t: torch.Tensor, box: Box, region: Box) -> torch.Tensor:
    for d, (lo, n) in enumerate(zip(region[0], region[1], strict=True)):
        t = t.narrow(d, lo - box[0][d], n)
    return t


class Resharder:
    """The loader's hook for a saved DTensor whose live counterpart is laid out differently:
    the live local shard is assembled from the overlapping pieces of the old shards."""

    def __init__(self, sources: Sources, old_world: int) -> None:
        self._sources = sources
        self._old_world = old_world

    def fill(
        self, path: str, saved: Saved, live: Any
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
        """(copies into the live local shard, "" ) or ([], the problem)."""
        meta, now = saved.entry.dtensor, dtensors.describe(live)
        problem = dtensors.shape_problem(path, meta, live)
        if problem:
            return [], problem
        kinds = {p.kind for p in (*meta.placements, *now.placements)}
        if not kinds <= {Kind.SHARD, Kind.REPLICATE}:
            return [], (
                f"{path}: resharding from memory handles Shard and Replicate placements only; "
                "export the snapshot to DCP and load that"
            )
        local = dtensors.local_of(live)
        target: Box = (tuple(now.offsets), tuple(local.shape))
        boxes: dict[Box, int] = {}  # each distinct old shard once (replicas: the lowest rank)
        for rank in range(self._old_world):
            coord = _coordinate(meta, rank)
            if coord is not None:
                box = local_box(
                    list(meta.global_shape), list(meta.mesh_shape), coord, list(meta.placements)
                )
                boxes.setdefault(box, rank)
        copies, covered = [], 0
        for box, rank in boxes.items():
            region = _overlap(box, target)
            if region is None:
                continue
            old = self._sources.by_path(rank).get(path)
            if old is None or tuple(old.view.shape) != box[1]:
                return [], f"{path}: rank {rank}'s snapshot lacks its shard of this tensor"
            copies.append((_narrow(local, target, region), _narrow(old.view, box, region)))
            covered += int(torch.Size(region[1]).numel())
        if covered != local.numel():
            return [], f"{path}: the old shards cover {covered} of {local.numel()} elements"
        return copies, ""


def init_optimizer_state(app_state: Mapping[str, Any]) -> None:
    """A fresh optimizer has no state to restore into: let it make its state (DCP's own helper:
    one step with zero gradients and lr 0, which changes no parameter) on the new layout."""
    from torch.distributed.checkpoint.state_dict import _init_optim_state

    _, optimizers = owners(app_state)
    for optim in optimizers:
        if not optim.state:
            _init_optim_state(optim)


def restore_moved(
    session: Session,
    app_state: MutableMapping[str, Any],
    found: Survey,
    step: int,
    old_world: int,
    verify: bool,
) -> int:
    """Collective: restore `step` of a job of `old_world` ranks into this job's ranks."""
    rank, world = session.rank, session.env.world_size
    sources = Sources(session, found, step, verify)
    error, prepared = "", None
    try:
        reshard = None
        if old_world != world:
            init_optimizer_state(app_state)
            reshard = Resharder(sources, old_world)
        base = rank if rank < old_world else 0
        prepared = prepare(app_state, sources.snapshot(base).tree(), reshard)
    except EcsnapError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - every rank must hear it, not hang in the gather
        error = f"{type(exc).__name__}: {exc}"
    try:
        failed = [f"rank {r}: {e}" for r, e in session.all_gather((rank, error)) if e]
        if failed or prepared is None:
            raise RestoreError(f"cannot restore step {step}: " + "; ".join(failed))
        prepared.apply()
    finally:
        sources.close()
    how = "resharded" if old_world != world else "found on other nodes"
    if world > old_world:
        # As DCP loads a checkpoint: what is not a DTensor is taken to be replicated.
        how += f"; ranks {old_world}-{world - 1} took rank 0's plain tensors and objects"
    if rank == 0:
        logger.warning(
            "job %s: restored step %d saved by %d ranks into %d ranks (%s; %d bytes fetched "
            "here from peers)",
            session.job_id,
            step,
            old_world,
            world,
            how,
            sources.fetched,
        )
    return step
