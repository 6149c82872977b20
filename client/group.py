"""The job's nodes, seen from a rank: agreement through the job's own process group.

SMPs need no per-job configuration. When a job starts (restore() or the first save()), every rank
learns its SMP's gRPC address at registration; the ranks exchange those addresses and a fresh
per-job secret (drawn by rank 0) through their process group, and each rank hands the result to
its SMP. A replacement node's SMP is introduced the same way when the job is relaunched.

Agreement collectives run on a gloo group (the job's group when it is gloo, else a new one), so a
job training over NCCL pays no device synchronisation for them. Every collective here is called
by every rank the same number of times; errors are exchanged, never raised before a collective.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ecsnap.errors import SnapshotError

SECRET_BYTES = 32


class JobGroup:
    """Collectives among the job's ranks; a single process when torch.distributed is not up."""

    def __init__(self, gloo: Any, world: int, distributed: bool) -> None:
        self._gloo = gloo  # None: the default group
        self.world = world
        self.distributed = distributed

    @classmethod
    def create(cls, process_group: Any) -> JobGroup:
        """Collective: every rank of the job calls it once."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls(None, 1, distributed=False)
        world = dist.get_world_size(process_group)
        gloo = process_group
        if dist.get_backend(process_group) != "gloo":
            ranks = dist.get_process_group_ranks(process_group) if process_group else None
            gloo = dist.new_group(ranks=ranks, backend="gloo")
        return cls(gloo, world, distributed=True)

    @classmethod
    def dedicated(cls) -> JobGroup:
        """Collective: a gloo group of every rank for one background thread's collectives (the
        job's own group serves the training thread; two threads must never share a group)."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls(None, 1, distributed=False)
        return cls(dist.new_group(backend="gloo"), dist.get_world_size(), distributed=True)

    @property
    def gloo(self) -> Any:
        """The torch process group (None: the default group, or no torch.distributed)."""
        return self._gloo

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self._gloo)
        return out

    def max_flags(self, *flags: bool) -> list[bool]:
        """Element-wise OR of boolean flags over all ranks (one small all-reduce)."""
        if not self.distributed:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._gloo)
        return [bool(v) for v in t.tolist()]


@dataclass(frozen=True)
class Introduction:
    """What every rank of a node tells its SMP about the job's nodes."""

    addresses: list[str]  # gRPC address of each node's SMP, by node rank
    secret: bytes


def exchange_addresses(
    group: JobGroup, rank: int, node: int, num_nodes: int, address: str, error: str
) -> Introduction:
    """Collective: gather every node's SMP address and rank 0's secret; raise on every rank if any
    rank failed to register (`error`) or the ranks of one node reach different SMPs."""
    secret = secrets.token_bytes(SECRET_BYTES) if rank == 0 else b""
    everyone = group.all_gather((rank, node, address, secret, error))
    failed = [f"rank {r}: {e}" for r, _, _, _, e in everyone if e]
    if failed:
        raise SnapshotError("cannot join the job's SMPs: " + "; ".join(failed))
    by_node: dict[int, str] = {}
    for r, n, addr, _, _ in everyone:
        seen = by_node.setdefault(n, addr)
        if seen != addr:
            raise SnapshotError(
                f"rank {r} of node {n} reaches the SMP at {addr}, another rank of that node the "
                f"one at {seen}: every rank of a node must use the same ECSNAP_SOCKET"
            )
    missing = [n for n in range(num_nodes) if n not in by_node]
    if missing:
        raise SnapshotError(
            f"no rank reported from node(s) {missing} of {num_nodes}: check GROUP_RANK, "
            "WORLD_SIZE and LOCAL_WORLD_SIZE"
        )
    shared = next(s for r, _, _, s, _ in everyone if r == 0)
    return Introduction([by_node[n] for n in range(num_nodes)], shared)
