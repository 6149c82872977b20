"""App state -> (storage spans to copy into an arena, manifest, skeleton).

Saving turns the app state into a skeleton (a pickle of everything that is not a tensor) plus a
manifest entry per tensor. Tensors enter the pickle only as persistent ids, so their bytes never go
through pickle or a socket. Bytes are laid out per *storage*, not per tensor: tensors sharing
storage (views, tied weights, one tensor under two keys) share one span, stored once, and each
entry says how to view it (dtype, shape, stride, offset into the span). A DTensor contributes its
local shard and the metadata that places it (see `dtensors`).

Every span is marked `background` when its storage belongs to a fenced object (see `fences`): the
copy may then run after save() returns, because the fences hold back the operations that change
it. Any other span is copied before save() returns, so an unfenced tensor changed right after
save() can never tear the snapshot.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ecsnap import dtensors
from ecsnap.fqn import ParamNames, is_ddp
from smp._proto import snapshot_pb2
from smp.defaults import TENSOR_ALIGN

FORMAT_VERSION = 2
STATEFUL, PLAIN = "stateful", "plain"
# A span starts on a multiple of this many bytes of its storage (complex128 is the widest
# element), so every tensor's offset inside its span is a whole number of elements.
_SPAN_BASE = 16
StorageKey = tuple[str, int]  # (device, address of the storage's first byte)


def is_stateful(value: object) -> bool:
    return callable(getattr(value, "state_dict", None)) and callable(
        getattr(value, "load_state_dict", None)
    )


def storage_key(t: torch.Tensor) -> StorageKey:
    local = dtensors.local_of(t) if dtensors.is_dtensor(t) else t
    return str(local.device), local.untyped_storage().data_ptr()


@dataclass
class SpanCopy:
    """One span to copy: `source` (uint8, on the tensor's device) -> slot bytes at `offset`."""

    source: torch.Tensor
    offset: int
    background: bool


@dataclass
class FlatState:
    manifest: snapshot_pb2.Manifest
    spans: list[SpanCopy]
    # Tensors copied in the background with their version counters at capture: a change before
    # their copy is done (an in-place op nobody fenced) would tear the snapshot.
    watched: list[tuple[torch.Tensor, int]]
    tree: dict[str, tuple[str, Any]] = field(repr=False)

    @property
    def nbytes(self) -> int:
        return int(self.manifest.nbytes)

    def changed(self) -> list[tuple[torch.Tensor, int, int]]:
        """Watched tensors whose version moved since capture: (tensor, then, now)."""
        return [(t, v, t._version) for t, v in self.watched if t._version != v]

    def path_of(self, tensor: torch.Tensor) -> str:
        """Where `tensor` sits in the app state (for messages), e.g. "model/0.weight"."""
        return next((p for p, t in _tensors_with_paths(self.tree) if t is tensor), "?")


def _tensors_with_paths(tree: Mapping[str, tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    stack: list[tuple[str, Any]] = [(key, value) for key, (_, value) in tree.items()]
    while stack:
        path, value = stack.pop()
        if isinstance(value, torch.Tensor):
            yield path, value
        elif isinstance(value, Mapping):
            stack.extend((f"{path}/{k}", v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}/{i}", v) for i, v in enumerate(value))


@dataclass
class _Placed:
    key: StorageKey
    storage: torch.UntypedStorage
    device: torch.device
    start: int  # byte offset of the tensor's first element in its storage
    end: int
    element_size: int


class _Layout:
    """Collects tensors as the pickler meets them and lays their storages out as spans."""

    def __init__(self, manifest: snapshot_pb2.Manifest, fenced: Collection[StorageKey]) -> None:
        self.manifest = manifest
        self.fenced = fenced
        self.placed: list[_Placed] = []
        self.watched: list[tuple[torch.Tensor, int]] = []
        self._memo: dict[int, Any] = {}

    def add(self, obj: torch.Tensor) -> Any:
        pid = self._memo.get(id(obj))
        if pid is not None:
            return pid  # the same tensor again: one entry, restored as one object
        local = _check_savable(obj)
        entry = self.manifest.tensors.add(
            dtype=str(local.dtype).removeprefix("torch."),
            shape=list(local.shape),
            stride=list(local.stride()),
            device=local.device.type,
            requires_grad=obj.requires_grad,
            parameter=isinstance(obj, nn.Parameter),
        )
        if dtensors.is_dtensor(obj):
            entry.dtensor.CopyFrom(dtensors.describe(obj))
        es = local.element_size()
        start = int(local.storage_offset()) * es
        extent = 0
        if local.numel():
            extent = 1 + sum(
                (int(n) - 1) * int(s) for n, s in zip(local.shape, local.stride(), strict=True)
            )
        storage = local.untyped_storage()
        key = (str(local.device), storage.data_ptr())
        self.placed.append(_Placed(key, storage, local.device, start, start + extent * es, es))
        if key in self.fenced:
            self.watched.append((obj, obj._version))
        pid = (len(self.placed) - 1, entry.dtype)
        self._memo[id(obj)] = pid
        return pid

    def spans(self) -> list[SpanCopy]:
        bounds: dict[StorageKey, tuple[int, int]] = {}
        for p in self.placed:
            lo, hi = bounds.get(p.key, (p.start, p.end))
            bounds[p.key] = (min(lo, p.start), max(hi, p.end))
        # Floored so that every element size divides each tensor's offset inside its span.
        bounds = {k: (lo - lo % _SPAN_BASE, hi) for k, (lo, hi) in bounds.items()}
        index: dict[StorageKey, int] = {}
        copies: list[SpanCopy] = []
        offset = 0
        for p, entry in zip(self.placed, self.manifest.tensors, strict=True):
            lo, hi = bounds[p.key]
            if p.key not in index:
                index[p.key] = len(copies)
                source = torch.empty(0, dtype=torch.uint8, device=p.device)
                source.set_(p.storage, lo, (hi - lo,), (1,))
                self.manifest.spans.add(offset=offset, nbytes=hi - lo, device=p.device.type)
                copies.append(SpanCopy(source, offset, p.key in self.fenced))
                offset += -(-(hi - lo) // TENSOR_ALIGN) * TENSOR_ALIGN
            entry.span = index[p.key]
            entry.span_offset = (p.start - lo) // p.element_size
        self.manifest.nbytes = offset
        return copies


def _check_savable(obj: torch.Tensor) -> torch.Tensor:
    """The tensor whose storage holds `obj`'s bytes (a DTensor's local shard); clear errors for
    what cannot be saved. (Paths are not known here: the caller adds them to the message.)"""
    if dtensors.is_dtensor(obj):
        dtensors.describe(obj)  # placements it cannot save are an error here
        obj = dtensors.local_of(obj)
    elif type(obj).__torch_dispatch__ is not torch.Tensor.__torch_dispatch__:
        raise TypeError(
            f"ecsnap cannot save a {type(obj).__name__} (a tensor subclass): save plain "
            "tensors, DTensors, or the subclass's inner tensors"
        )
    if obj.is_sparse or obj.layout != torch.strided:
        raise TypeError(
            f"ecsnap saves dense tensors only; got a {obj.layout} tensor: "
            "convert it with .to_dense() before saving"
        )
    if obj.is_quantized:
        raise TypeError("ecsnap does not save quantized tensors yet: dequantize first")
    if obj.is_meta:
        raise TypeError("a meta tensor has no data to save: materialize it first")
    return obj


class _Pickler(pickle.Pickler):
    def __init__(self, buf: io.BytesIO, layout: _Layout) -> None:
        super().__init__(buf, protocol=pickle.HIGHEST_PROTOCOL)
        self._layout = layout

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, torch.Tensor):
            return None
        return self._layout.add(obj)


def _describe_owners(app_state: Mapping[str, Any], manifest: snapshot_pb2.Manifest) -> None:
    modules = [(k, v) for k, v in app_state.items() if isinstance(v, nn.Module)]
    for key, module in modules:
        manifest.modules.add(key=key, ddp=is_ddp(module))
    for key, value in app_state.items():
        if isinstance(value, torch.optim.Optimizer):
            fqns = _PARAM_NAMES.of(value, [m for _, m in modules])
            manifest.optimizers.add(key=key, param_fqns=fqns)


_PARAM_NAMES = ParamNames()


def flatten(
    app_state: Mapping[str, Any],
    fenced: Collection[StorageKey] = (),
    rank: int = 0,
    world_size: int = 1,
) -> FlatState:
    """Capture the app state now: Stateful values through state_dict(), the rest as they are.

    `fenced`: storages whose copy may run in the background (see the module docstring)."""
    if not isinstance(app_state, Mapping):
        raise TypeError(f"app_state must be a dict of name -> value, got {type(app_state)!r}")
    tree: dict[str, tuple[str, Any]] = {}
    for key, value in app_state.items():
        if not isinstance(key, str):
            raise TypeError(f"app_state keys must be strings, got {key!r}")
        tree[key] = (STATEFUL, value.state_dict()) if is_stateful(value) else (PLAIN, value)
    manifest = snapshot_pb2.Manifest(
        format_version=FORMAT_VERSION, rank=rank, world_size=world_size
    )
    layout = _Layout(manifest, fenced)
    buf = io.BytesIO()
    try:
        _Pickler(buf, layout).dump(tree)
    except (pickle.PicklingError, AttributeError) as exc:
        raise TypeError(
            f"part of app_state cannot be saved ({exc}): keep it to tensors, "
            "containers, numbers, strings and objects with state_dict()"
        ) from exc
    except TypeError as exc:
        where = _first_unsavable(tree)
        raise TypeError(f"app_state entry {where}: {exc}") from exc
    manifest.skeleton = buf.getvalue()
    _describe_owners(app_state, manifest)
    return FlatState(manifest, layout.spans(), layout.watched, tree)


def _first_unsavable(tree: Mapping[str, tuple[str, Any]]) -> str:
    for path, t in _tensors_with_paths(tree):
        try:
            _check_savable(t)
        except TypeError:
            return path
    return "?"
