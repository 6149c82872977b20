"""DTensors in a snapshot: the metadata that places a local shard, and rebuilding DTensors from it.

A DTensor is saved as its local shard (bytes = local size) plus what DCP's chunk metadata needs to
place it: global shape and stride, the device mesh (shape, global ranks, dimension names) and this
rank's coordinate in it, the placements, and where the local shard starts in the global tensor.
Computing the offsets costs tens of microseconds per tensor, so they are cached per DTensor spec
(which is immutable and hashable).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any, TypeGuard

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Placement, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.distributed.tensor.placement_types import _StridedShard

from smp._proto import snapshot_pb2

Kind = snapshot_pb2.Placement


def is_dtensor(value: object) -> TypeGuard[DTensor]:
    return isinstance(value, DTensor)


def local_of(t: DTensor) -> torch.Tensor:
    """The local shard, sharing storage with the DTensor (no autograd edge)."""
    local: torch.Tensor = t._local_tensor
    return local


def _placement_proto(p: Placement) -> snapshot_pb2.Placement:
    if isinstance(p, _StridedShard):
        return snapshot_pb2.Placement(
            kind=Kind.STRIDED_SHARD, dim=p.dim, split_factor=int(p._split_factor_int())
        )
    if isinstance(p, Shard):
        return snapshot_pb2.Placement(kind=Kind.SHARD, dim=p.dim)
    if isinstance(p, Replicate):
        return snapshot_pb2.Placement(kind=Kind.REPLICATE)
    if isinstance(p, Partial):
        return snapshot_pb2.Placement(kind=Kind.PARTIAL, reduce_op=str(p.reduce_op))
    raise TypeError(
        f"a DTensor with placement {p!r} cannot be saved: ecsnap saves "
        "Shard, Replicate, Partial and FSDP2's strided shard placements; redistribute it first"
    )


def placement_of(msg: snapshot_pb2.Placement) -> Placement:
    if msg.kind == Kind.SHARD:
        return Shard(msg.dim)
    if msg.kind == Kind.STRIDED_SHARD:
        return _StridedShard(msg.dim, split_factor=msg.split_factor)
    if msg.kind == Kind.REPLICATE:
        return Replicate()
    if msg.kind == Kind.PARTIAL:
        return Partial(msg.reduce_op or "sum")
    raise ValueError(f"unknown placement kind {msg.kind} in snapshot")


@functools.lru_cache(maxsize=4096)
def meta_of_spec(spec: Any) -> snapshot_pb2.DTensorMeta:
    """The placing metadata of a DTensor spec (cached: specs are immutable; do not modify)."""
    mesh: DeviceMesh = spec.mesh
    shape = tuple(spec.shape)
    placements = tuple(spec.placements)
    _, offsets = compute_local_shape_and_global_offset(shape, mesh, placements)
    coordinate = mesh.get_coordinate()
    return snapshot_pb2.DTensorMeta(
        global_shape=list(shape),
        global_stride=list(spec.stride),
        device_type=mesh.device_type,
        mesh_shape=list(mesh.shape),
        mesh_ranks=[int(r) for r in mesh.mesh.flatten().tolist()],
        mesh_dim_names=list(mesh.mesh_dim_names or ()),
        coordinate=list(coordinate or ()),
        placements=[_placement_proto(p) for p in placements],
        offsets=list(offsets),
    )


def describe(t: DTensor) -> snapshot_pb2.DTensorMeta:
    """The placing metadata of `t` (cached per spec; the caller must not modify it).
    Raises TypeError for a placement that cannot be saved."""
    return meta_of_spec(t._spec)


def same_layout(meta: snapshot_pb2.DTensorMeta, live: DTensor) -> bool:
    """Would `live`'s local shard hold exactly the saved one (same global tensor, same place)?"""
    now = describe(live)
    return (
        list(meta.global_shape) == list(now.global_shape)
        and list(meta.placements) == list(now.placements)
        and list(meta.mesh_shape) == list(now.mesh_shape)
        and list(meta.mesh_ranks) == list(now.mesh_ranks)
        and list(meta.offsets) == list(now.offsets)
    )


def shape_problem(path: str, meta: snapshot_pb2.DTensorMeta, live: DTensor) -> str:
    """Why a saved DTensor cannot fill `live`, of another global shape ("" if the shapes agree)."""
    now = describe(live)
    if list(meta.global_shape) == list(now.global_shape):
        return ""
    return (
        f"{path}: saved with global shape {list(meta.global_shape)}, the live DTensor has "
        f"{list(now.global_shape)}: restore into the same model"
    )


def layout_text(meta: snapshot_pb2.DTensorMeta) -> str:
    placements = ", ".join(str(placement_of(p)) for p in meta.placements)
    return (
        f"global shape {list(meta.global_shape)}, placements ({placements}) on a mesh of shape "
        f"{list(meta.mesh_shape)} over ranks {list(meta.mesh_ranks)}"
    )


class Meshes:
    """The device meshes of the live app state, to rebuild saved DTensors that have no live
    counterpart (a fresh optimizer's state, a value restored into an empty dict)."""

    def __init__(self) -> None:
        self._meshes: dict[tuple[Any, ...], DeviceMesh] = {}

    @staticmethod
    def _key(
        device_type: str, shape: Sequence[int], ranks: Sequence[int], names: Sequence[str]
    ) -> tuple[Any, ...]:
        return (device_type, tuple(shape), tuple(ranks), tuple(names))

    def add_from(self, tensors: Iterable[object]) -> None:
        for t in tensors:
            if isinstance(t, DTensor):
                mesh = t.device_mesh
                key = self._key(
                    mesh.device_type,
                    mesh.shape,
                    [int(r) for r in mesh.mesh.flatten().tolist()],
                    mesh.mesh_dim_names or (),
                )
                self._meshes.setdefault(key, mesh)

    def find(self, meta: snapshot_pb2.DTensorMeta) -> DeviceMesh | None:
        key = self._key(meta.device_type, meta.mesh_shape, meta.mesh_ranks, meta.mesh_dim_names)
        return self._meshes.get(key)


def rebuild(local: torch.Tensor, meta: snapshot_pb2.DTensorMeta, mesh: DeviceMesh) -> DTensor:
    """A DTensor over `local` (used as is, no copy or communication) placed as `meta` says."""
    out: DTensor = DTensor.from_local(
        local,
        mesh,
        [placement_of(p) for p in meta.placements],
        run_check=False,
        shape=torch.Size(meta.global_shape),
        stride=tuple(meta.global_stride),
    )
    return out


def offline_mesh(
    meta: snapshot_pb2.DTensorMeta, device_type: str = "cpu", rank: int | None = None
) -> DeviceMesh:
    """A mesh with the saved shape and ranks but no process groups: enough for DCP to place the
    local shards of a snapshot read back from the arenas (export, the durable tier), never for
    communication. `rank`: whose shards they are (default: this process's rank)."""
    ranks = torch.tensor(list(meta.mesh_ranks), dtype=torch.int).view(*meta.mesh_shape)
    return DeviceMesh(
        device_type,
        ranks,
        mesh_dim_names=tuple(meta.mesh_dim_names) or None,
        _init_backend=False,
        _rank=rank,
    )
