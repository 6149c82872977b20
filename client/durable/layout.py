"""How one rank's snapshot lies in a persisted step: DCP's entries, plus what restores the rank bit
for bit.

Every rank writes the DCP state dict of its snapshot (`exporter.dcp_state_dict`: module keys as
FQNs, optimizer state by parameter FQN), flattened as DCP flattens it, so
`torch.distributed.checkpoint` loads the step alone, at any world size. DCP keeps one copy of an
entry every rank writes under the same key: it takes such entries to be replicated. A plain
tensor whose bytes differ between ranks (an RNG state, a per-rank buffer) would lose all copies
but one, so it is kept for every rank: rank 0's under the DCP key (what DCP alone loads), rank
r's under `_ecsnap.rank<r>.<key>`. DTensors need nothing of the sort (DCP places their shards).

Beside the DCP files each rank writes its snapshot's manifest (skeleton, tensor entries:
`ecsnap-rank-<r>.manifest`) and the DCP key of each of its tensors (`ecsnap-rank-<r>.keys.json`),
so a restore rebuilds exactly the snapshot that was persisted and loads it with the loader that
restores from memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
import xxhash
from torch.distributed.checkpoint._nested_dict import flatten_state_dict

from ecsnap import dtensors
from ecsnap.exporter import dcp_state_dict
from ecsnap.saved import Saved, Snapshot
from smp._proto import snapshot_pb2

FORMAT = 1


def private_key(rank: int, key: str) -> str:
    return f"_ecsnap.rank{rank}.{key}"


def manifest_name(rank: int) -> str:
    return f"ecsnap-rank-{rank:05d}.manifest"


def keys_name(rank: int) -> str:
    return f"ecsnap-rank-{rank:05d}.keys.json"


def _digest(t: torch.Tensor) -> str:
    flat = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    h = xxhash.xxh3_128(f"{t.dtype}{list(t.shape)}".encode())
    h.update(flat.data)
    return str(h.hexdigest())


@dataclass
class RankEntries:
    """What one rank writes: its flat DCP state dict, the key of each of its tensor entries
    (by manifest index), and the digests of its plain tensors (key -> xxh3)."""

    state: dict[str, Any]
    keys: list[str]
    digests: dict[str, str]

    def privatize(self, everyone: list[dict[str, str]], rank: int) -> None:
        """Move the plain tensors whose bytes are not the same on every rank (`everyone`: each
        rank's digests) to this rank's private keys; rank 0's stay under the DCP key."""
        if rank == 0:
            return
        moved = {}
        for key, digest in self.digests.items():
            if any(d.get(key) != digest for d in everyone):
                moved[key] = private_key(rank, key)
                self.state[moved[key]] = self.state.pop(key)
        self.keys = [moved.get(k, k) for k in self.keys]

    def files(self, snapshot: Snapshot, rank: int) -> dict[str, bytes]:
        """The rank's own files beside DCP's: its manifest and its tensors' keys."""
        keys = {"format": FORMAT, "rank": rank, "keys": self.keys}
        return {
            manifest_name(rank): snapshot.manifest.SerializeToString(),
            keys_name(rank): json.dumps(keys).encode(),
        }


def entries(snapshot: Snapshot, rank: int) -> RankEntries:
    """The persisted form of `snapshot` (one rank's, staged in this process)."""
    origin: dict[int, Saved] = {}
    flat, _ = flatten_state_dict(dcp_state_dict(snapshot, origin))
    keys: list[str | None] = [None] * len(snapshot.saved)
    digests: dict[str, str] = {}
    for key, value in flat.items():
        saved = origin.get(id(value))
        if saved is None:
            continue
        if keys[saved.index] is None:
            keys[saved.index] = key
        if not saved.is_dtensor:
            digests[key] = _digest(saved.view)
    for saved in snapshot.saved:  # tensors DCP's form does not reach (a user object's fields)
        if keys[saved.index] is None:
            key = keys[saved.index] = private_key(rank, f"tensor{saved.index}")
            flat[key] = saved.view
    return RankEntries(flat, [k for k in keys if k is not None], digests)


def parse_keys(data: bytes, manifest: snapshot_pb2.Manifest, rank: int) -> list[str]:
    """The keys file of `rank`, checked against its manifest."""
    found = json.loads(data)
    keys = found.get("keys") if isinstance(found, dict) else None
    if (
        found.get("format") != FORMAT
        or found.get("rank") != rank
        or not isinstance(keys, list)
        or len(keys) != len(manifest.tensors)
        or not all(isinstance(k, str) for k in keys)
    ):
        raise ValueError(f"{keys_name(rank)} does not describe rank {rank}'s tensors")
    return keys


def load_targets(saved: list[Saved], keys: list[str], rank: int, skip: set[int]) -> dict[str, Any]:
    """What DCP loads into: every saved tensor of `rank` (but the entries in `skip`) under its
    key, a DTensor placed as that rank's shard was."""
    meshes: dict[tuple[Any, ...], Any] = {}
    out: dict[str, Any] = {}
    for s in saved:
        if s.index in skip:
            continue
        target: Any = s.view
        if s.is_dtensor:
            meta = s.entry.dtensor
            where = (tuple(meta.mesh_shape), tuple(meta.mesh_ranks), tuple(meta.mesh_dim_names))
            mesh = meshes.get(where)
            if mesh is None:
                mesh = meshes[where] = dtensors.offline_mesh(meta, rank=rank)
            target = dtensors.rebuild(s.view, meta, mesh)
        out[keys[s.index]] = target
    return out
