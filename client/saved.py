"""A snapshot read back: its tensors as zero-copy views of the arena, and the saved tree.

Unpickling the skeleton yields the app-state tree with a `Saved` in place of every tensor; it may
name only the globals `safepickle` allows (a forged snapshot runs no code here). The loader
(`loader`) resolves each one: copied into the live tensor it replaces, or materialized as a fresh
tensor (a DTensor again where it was one). Every bound is checked against the arena before a
view is made, so a damaged manifest is an error, never a read outside the snapshot.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any

import torch

from ecsnap.arena import MappedArena
from ecsnap.control import Opened
from ecsnap.flatten import FORMAT_VERSION
from ecsnap.safepickle import SafeUnpickler
from smp._proto import snapshot_pb2


@dataclass(eq=False)
class Saved:
    """One saved tensor: its manifest entry, a typed, strided view of its bytes in the arena (a
    DTensor's local shard) and the bytes of its whole span (shared with the tensors that shared
    its storage)."""

    index: int
    entry: snapshot_pb2.TensorEntry
    view: torch.Tensor
    span_bytes: torch.Tensor

    def view_of(self, span_bytes: torch.Tensor) -> torch.Tensor:
        """This tensor's view over another copy of its span's bytes."""
        size = self.view.element_size()
        typed = span_bytes[: (span_bytes.numel() // size) * size].view(self.view.dtype)
        return typed.as_strided(
            self.view.shape, self.view.stride(), typed.storage_offset() + self.entry.span_offset
        )

    @property
    def span(self) -> int:
        return int(self.entry.span)

    @property
    def is_dtensor(self) -> bool:
        return self.entry.HasField("dtensor")

    def __repr__(self) -> str:
        return f"Saved({self.entry.dtype}{list(self.entry.shape)})"


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in snapshot")
    return dtype


def saved_tensors(manifest: snapshot_pb2.Manifest, arena: torch.Tensor) -> list[Saved]:
    """Zero-copy views of every tensor of `manifest` inside `arena` (a uint8 tensor)."""
    if manifest.format_version != FORMAT_VERSION:
        raise ValueError(
            f"snapshot format {manifest.format_version} is not supported by this "
            f"ecsnap (format {FORMAT_VERSION}): restore with the version that saved it"
        )
    if manifest.nbytes > arena.numel():
        raise ValueError(f"manifest needs {manifest.nbytes} bytes, arena has {arena.numel()}")
    for i, span in enumerate(manifest.spans):
        if span.offset + span.nbytes > manifest.nbytes:
            raise ValueError(f"span {i} of the snapshot lies outside its {manifest.nbytes} bytes")
    out = []
    for index, entry in enumerate(manifest.tensors):
        if entry.span >= len(manifest.spans):
            raise ValueError(f"tensor {index} of the snapshot names a span that does not exist")
        span = manifest.spans[entry.span]
        dtype = _dtype(entry.dtype)
        size = torch.empty((), dtype=dtype).element_size()
        if span.offset % size or len(entry.shape) != len(entry.stride):
            raise ValueError(f"tensor {index} of the snapshot has an invalid layout")
        count = span.nbytes // size
        extent = 0
        if all(n > 0 for n in entry.shape):
            extent = 1 + sum((n - 1) * s for n, s in zip(entry.shape, entry.stride, strict=True))
        if min(entry.stride, default=0) < 0 or entry.span_offset + extent > count:
            raise ValueError(f"tensor {index} of the snapshot reaches outside its span")
        span_bytes = arena[span.offset : span.offset + span.nbytes]
        typed = span_bytes[: count * size].view(dtype)
        view = typed.as_strided(
            tuple(entry.shape), tuple(entry.stride), typed.storage_offset() + entry.span_offset
        )
        out.append(Saved(index, entry, view, span_bytes))
    return out


class _Unpickler(SafeUnpickler):
    """The skeleton's unpickler: only allowed globals (`safepickle`), tensors by manifest index."""

    def __init__(self, data: bytes, saved: list[Saved]) -> None:
        super().__init__(data)
        self._saved = saved

    def persistent_load(self, pid: Any) -> Any:
        index = pid
        if not isinstance(index, int) or not 0 <= index < len(self._saved):
            raise pickle.UnpicklingError(f"the skeleton names tensor {index!r}, which is not saved")
        return self._saved[index]


class Snapshot:
    """A snapshot read back: its manifest, its tensors as views of a byte buffer that holds it,
    and the saved tree over them."""

    manifest: snapshot_pb2.Manifest
    saved: list[Saved]

    def tree(self) -> dict[str, tuple[str, Any]]:
        return unflatten(self.manifest, self.saved)


class MappedSnapshot(Snapshot):
    """An opened snapshot mapped into this process: its tensors are views of the SMP's arena."""

    def __init__(self, opened: Opened) -> None:
        self.manifest = snapshot_pb2.Manifest()
        self.manifest.ParseFromString(opened.manifest)
        # Read once, so mapped lazily; only the snapshot's own pages are ever touched.
        self._arena = MappedArena(opened.path, os.stat(opened.path).st_size, populate=False)
        self.saved = saved_tensors(self.manifest, self._arena.tensor)

    def copy_to(self, buffer: torch.Tensor) -> BufferSnapshot:
        """The snapshot copied into `buffer` (uint8, at least `manifest.nbytes` long): a copy
        that stays valid once the SMP reuses the slot."""
        n = self.manifest.nbytes
        buffer[:n].copy_(self._arena.tensor[:n])
        return BufferSnapshot(self.manifest, buffer)

    def close(self) -> None:
        self.saved = []
        # Nothing restored refers to the arena (the loader copies or clones), and nothing waits
        # for the unmap.
        self._arena.close(background=True)

    def __enter__(self) -> MappedSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BufferSnapshot(Snapshot):
    """A snapshot whose bytes lie in a buffer of this process (staged for the durable tier, or
    read back from it)."""

    def __init__(self, manifest: snapshot_pb2.Manifest, buffer: torch.Tensor) -> None:
        self.manifest = manifest
        self.saved = saved_tensors(manifest, buffer)


def unflatten(manifest: snapshot_pb2.Manifest, saved: list[Saved]) -> dict[str, tuple[str, Any]]:
    """The saved tree: key -> ("stateful" | "plain", value), tensors as `Saved` views.
    Raises `safepickle.UnsafeGlobalError` (an UnpicklingError) if the skeleton names a global
    that is not allowed; restore reports it as a RestoreError."""
    tree = _Unpickler(manifest.skeleton, saved).load()
    if not isinstance(tree, dict):
        raise ValueError("snapshot skeleton is not an app-state dict")
    return tree
