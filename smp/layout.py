"""Where parity lives: nodes split into groups, each group's snapshots striped with rotating parity.

A group of n nodes tolerating m losses has n stripes. In stripe s the parity holders are the
members at positions s, s+1, ..., s+m-1 (mod n); the other k = n - m members contribute data, each
with one chunk of its snapshot blob (a blob is cut into k chunks). So every node contributes to k
stripes and holds parity in m: parity memory per node is m/k of its data, and losing any m nodes
of a group leaves every stripe with at least k of its n cells.

Placement: "consecutive" groups nodes 0..g-1, g..2g-1, ...; "strided" puts node i in group
i mod G (G = number of groups), so a group spans racks when consecutive ids share one. Nodes left
over when the node count is not a multiple of g join the groups round-robin (groups of g or g+1).
This module is pure arithmetic: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

PLACEMENTS = ("consecutive", "strided")
CHUNK_ALIGN = 64
MAX_GROUP = 255  # nodes per group: a GF(2^8) Reed-Solomon code word has at most 255 symbols
MAX_NODES = 1 << 16  # nodes per job (a bound, so a request cannot make the layout unbounded)


class LayoutError(ValueError):
    """Invalid redundancy settings."""


@dataclass(frozen=True)
class Group:
    index: int
    members: tuple[int, ...]  # node ranks, ascending
    parity: int

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def k(self) -> int:
        return self.size - self.parity

    def position(self, node: int) -> int:
        return self.members.index(node)

    def holders(self, stripe: int) -> tuple[int, ...]:
        """Nodes holding parity rows 0..m-1 of `stripe`."""
        n = self.size
        return tuple(self.members[(stripe + t) % n] for t in range(self.parity))

    def contributors(self, stripe: int) -> tuple[int, ...]:
        """Nodes contributing data to `stripe`, in data-shard order."""
        held = set(self.holders(stripe))
        return tuple(node for node in self.members if node not in held)

    def data_stripes(self, node: int) -> tuple[int, ...]:
        """Stripe of each chunk of `node`'s blob: chunk i goes to data_stripes(node)[i]."""
        return tuple(s for s in range(self.size) if node in self.contributors(s))

    def parity_cells(self, node: int) -> tuple[tuple[int, int], ...]:
        """(stripe, row) of every parity cell `node` holds."""
        return tuple(
            (s, self.holders(s).index(node)) for s in range(self.size) if node in self.holders(s)
        )

    def cell_index(self, stripe: int, node: int) -> int:
        """Shard index of `node`'s cell in `stripe`: data 0..k-1, then parity k..k+m-1."""
        contributors = self.contributors(stripe)
        if node in contributors:
            return contributors.index(node)
        return self.k + self.holders(stripe).index(node)

    def cell_owner(self, stripe: int, index: int) -> int:
        """The node holding shard `index` of `stripe`."""
        if index < self.k:
            return self.contributors(stripe)[index]
        return self.holders(stripe)[index - self.k]


def check_redundancy(group_size: int, parity: int) -> None:
    """Settings as a user gives them, whatever the node count: raises LayoutError."""
    if not 2 <= group_size <= MAX_GROUP:
        raise LayoutError(
            f"group size {group_size} is out of range: a group has 2 to {MAX_GROUP} nodes "
            "(ECSNAP_GROUP_SIZE)"
        )
    if not 1 <= parity < group_size:
        raise LayoutError(
            f"parity {parity} must be at least 1 and below the group size {group_size} "
            "(ECSNAP_PARITY, ECSNAP_GROUP_SIZE)"
        )


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def chunk_size(blob_bytes: int, k: int) -> int:
    """Bytes per chunk when a blob is cut into k chunks (the last ones may be short or empty)."""
    return _ceil_div(_ceil_div(blob_bytes, k), CHUNK_ALIGN) * CHUNK_ALIGN


def chunk_range(blob_bytes: int, k: int, i: int) -> tuple[int, int]:
    """[start, end) of chunk i inside the blob."""
    size = chunk_size(blob_bytes, k)
    start = min(i * size, blob_bytes)
    return start, min(start + size, blob_bytes)


@dataclass(frozen=True)
class Layout:
    num_nodes: int
    group_size: int
    parity: int
    placement: str = "consecutive"

    def __post_init__(self) -> None:
        if not 1 <= self.num_nodes <= MAX_NODES:
            raise LayoutError(f"a job has 1 to {MAX_NODES} nodes, got {self.num_nodes}")
        if self.placement not in PLACEMENTS:
            raise LayoutError(
                f"placement {self.placement!r} is unknown: use {' or '.join(PLACEMENTS)}"
            )
        if self.num_nodes == 1:
            return  # no parity: nothing else to check
        check_redundancy(self.group_size, self.parity)
        if self.group_size > self.num_nodes:
            raise LayoutError(f"group size {self.group_size} exceeds the {self.num_nodes} nodes")
        count = self.num_nodes // self.group_size
        largest = self.group_size + _ceil_div(self.num_nodes - count * self.group_size, count)
        if largest > MAX_GROUP:
            raise LayoutError(
                f"{self.num_nodes} nodes in groups of {self.group_size}: the nodes left over "
                f"make a group of {largest}, above the {MAX_GROUP} a Reed-Solomon code allows; "
                "choose a group size that divides the node count (ECSNAP_GROUP_SIZE)"
            )

    @classmethod
    def for_job(
        cls, num_nodes: int, group_size: int, parity: int, placement: str = "consecutive"
    ) -> Layout:
        """Settings as a user gives them: the group size is capped by the node count."""
        if num_nodes > 1:
            check_redundancy(group_size, parity)
        return cls(num_nodes, min(group_size, num_nodes), parity, placement)

    @property
    def protected(self) -> bool:
        return self.num_nodes > 1

    @cached_property
    def groups(self) -> tuple[Group, ...]:
        if not self.protected:
            return (Group(0, (0,), 0),)
        count = self.num_nodes // self.group_size
        full = count * self.group_size
        members: list[list[int]] = [[] for _ in range(count)]
        for node in range(full):
            g = node // self.group_size if self.placement == "consecutive" else node % count
            members[g].append(node)
        for extra, node in enumerate(range(full, self.num_nodes)):
            members[extra % count].append(node)
        return tuple(Group(i, tuple(sorted(m)), self.parity) for i, m in enumerate(members))

    def group_of(self, node: int) -> Group:
        if not 0 <= node < self.num_nodes:
            raise LayoutError(f"node {node} is not within the job's {self.num_nodes} nodes")
        return next(g for g in self.groups if node in g.members)

    def describe(self) -> str:
        if not self.protected:
            return "1 node: no parity (the loss of the node is not covered)"
        sizes = sorted({g.size for g in self.groups})
        return (
            f"{len(self.groups)} group(s) of {'/'.join(map(str, sizes))} nodes, "
            f"{self.parity} parity each ({self.placement}); survives {self.parity} lost "
            "node(s) per group"
        )
