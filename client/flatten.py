"""App state -> (storage spans to copy into an arena, manifest, skeleton).

Saving turns the app state into a skeleton (a pickle of everything that is not a tensor) plus a
manifest entry per tensor. Tensors enter the pickle only as persistent ids, so their bytes never go
through pickle or a socket. Bytes are laid out per *storage*, not per tensor: tensors sharing
storage (views, tied weights, one tensor under two keys) share one span, stored once, and each
entry says how to view it (dtype, shape, stride, offset into the span). A DTensor contributes its
local shard and the metadata that places it (see `dtensors`).

The skeleton may name only the globals restore unpickles (`safepickle`): any other is a TypeError
at save(), not a refusal at restore after a crash.

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

from ecsnap import dtensors, safepickle
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


class SpanCopy:
    """One span to copy: `nbytes` of `storage` from byte `lo` -> slot bytes at `offset`."""

    __slots__ = ("background", "device", "lo", "nbytes", "offset", "storage")

    def __init__(
        self,
        storage: torch.UntypedStorage,
        device: torch.device,
        lo: int,
        nbytes: int,
        offset: int,
        background: bool,
    ) -> None:
        self.storage, self.device, self.lo, self.nbytes = storage, device, lo, nbytes
        self.offset, self.background = offset, background

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def source(self) -> torch.Tensor:
        """The span's bytes as a uint8 tensor on its device (a view: no copy)."""
        view = torch.empty(0, dtype=torch.uint8, device=self.device)
        return view.set_(self.storage, self.lo, (self.nbytes,), (1,))


class _Captured:
    """One tensor as save() saw it: where its bytes are and how to view them. Captured in the
    caller's thread; the manifest entry is built from it later, off the training path."""

    __slots__ = (
        "device",
        "dtype",
        "element_size",
        "end",
        "key",
        "parameter",
        "requires_grad",
        "shape",
        "spec",
        "start",
        "storage",
        "stride",
    )

    def __init__(self, obj: torch.Tensor) -> None:
        local = _check_savable(obj)
        self.spec = obj._spec if dtensors.is_dtensor(obj) else None
        self.dtype, self.shape, self.stride = local.dtype, tuple(local.shape), local.stride()
        self.device = local.device
        self.requires_grad, self.parameter = obj.requires_grad, isinstance(obj, nn.Parameter)
        self.element_size = es = local.element_size()
        self.start = int(local.storage_offset()) * es
        extent = 0
        if local.numel():
            extent = 1 + sum(
                (int(n) - 1) * int(s) for n, s in zip(self.shape, self.stride, strict=True)
            )
        self.end = self.start + extent * es
        self.storage = local.untyped_storage()
        self.key: StorageKey = (str(self.device), self.storage.data_ptr())


@dataclass
class FlatState:
    spans: list[SpanCopy]
    nbytes: int  # bytes of the slot used
    # Tensors copied in the background with their version counters at capture: a change before
    # their copy is done (an in-place op nobody fenced) would tear the snapshot.
    watched: list[tuple[torch.Tensor, int]]
    tree: dict[str, tuple[str, Any]] = field(repr=False)
    _captured: list[_Captured] = field(repr=False)
    _span_of: list[tuple[int, int]] = field(repr=False)  # per tensor: (span, offset in elements)
    _head: snapshot_pb2.Manifest = field(repr=False)  # skeleton and the small fields
    _manifest: snapshot_pb2.Manifest | None = field(default=None, repr=False)

    @property
    def manifest(self) -> snapshot_pb2.Manifest:
        """The full manifest (built once, on first use: by the copy thread, not by save())."""
        if self._manifest is None:
            m = snapshot_pb2.Manifest()
            m.CopyFrom(self._head)
            m.nbytes = self.nbytes
            for span in self.spans:
                m.spans.add(offset=span.offset, nbytes=span.nbytes, device=span.device.type)
            for c, (span_index, offset) in zip(self._captured, self._span_of, strict=True):
                entry = m.tensors.add(
                    dtype=str(c.dtype).removeprefix("torch."),
                    shape=c.shape,
                    stride=c.stride,
                    device=c.device.type,
                    requires_grad=c.requires_grad,
                    parameter=c.parameter,
                    span=span_index,
                    span_offset=offset,
                )
                if c.spec is not None:
                    entry.dtensor.CopyFrom(dtensors.meta_of_spec(c.spec))
            self._manifest = m
        return self._manifest

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


class _Layout:
    """Collects tensors as the pickler meets them and lays their storages out as spans."""

    def __init__(self, fenced: Collection[StorageKey]) -> None:
        self.fenced = fenced
        self.captured: list[_Captured] = []
        self.watched: list[tuple[torch.Tensor, int]] = []
        self._memo: dict[int, int] = {}

    def add(self, obj: torch.Tensor) -> int:
        pid = self._memo.get(id(obj))
        if pid is not None:
            return pid  # the same tensor again: one entry, restored as one object
        c = _Captured(obj)
        self.captured.append(c)
        if c.key in self.fenced:
            self.watched.append((obj, obj._version))
        pid = self._memo[id(obj)] = len(self.captured) - 1
        return pid

    def spans(self) -> tuple[list[SpanCopy], list[tuple[int, int]], int]:
        """The spans (one per storage), each tensor's (span, offset) and the bytes used."""
        bounds: dict[StorageKey, tuple[int, int]] = {}
        for c in self.captured:
            lo, hi = bounds.get(c.key, (c.start, c.end))
            bounds[c.key] = (min(lo, c.start), max(hi, c.end))
        index: dict[StorageKey, int] = {}
        copies: list[SpanCopy] = []
        span_of: list[tuple[int, int]] = []
        offset = 0
        for c in self.captured:
            lo, hi = bounds[c.key]
            lo -= lo % _SPAN_BASE  # so every element size divides each tensor's offset in it
            i = index.get(c.key)
            if i is None:
                i = index[c.key] = len(copies)
                copies.append(
                    SpanCopy(c.storage, c.device, lo, hi - lo, offset, c.key in self.fenced)
                )
                offset += -(-(hi - lo) // TENSOR_ALIGN) * TENSOR_ALIGN
            span_of.append((i, (c.start - lo) // c.element_size))
        return copies, span_of, offset


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
        return self._layout.add(obj)  # the tensor's index in the manifest


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
    head = snapshot_pb2.Manifest(format_version=FORMAT_VERSION, rank=rank, world_size=world_size)
    layout = _Layout(fenced)
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
    head.skeleton = buf.getvalue()
    _check_restorable(head.skeleton, tree)
    _describe_owners(app_state, head)
    spans, span_of, nbytes = layout.spans()
    return FlatState(spans, nbytes, layout.watched, tree, layout.captured, span_of, head)


def _check_restorable(skeleton: bytes, tree: Mapping[str, tuple[str, Any]]) -> None:
    """TypeError now, at save(), for a global restore() would refuse to unpickle (`safepickle`)."""
    try:
        safepickle.check(skeleton)
    except safepickle.UnsafeGlobalError as exc:
        if not exc.registrable:
            raise TypeError(f"app_state cannot be saved: {exc}") from None
        name = exc.name
        where = _first_naming(tree, name)
        short = name.rsplit(".", 1)[-1]
        raise TypeError(
            f"app_state{f' entry {where}' if where else ''} holds {name}, which restore() would "
            "refuse to unpickle (a snapshot may name only containers, numbers, strings, torch "
            "and NumPy values, so a forged one runs no code): if it is safe to rebuild, allow it "
            f"with ecsnap.add_safe_globals({short}) or torch.serialization.add_safe_globals("
            f"[{short}]) where you save and restore, or save it as plain containers"
        ) from None


def _first_naming(tree: Mapping[str, tuple[str, Any]], name: str) -> str:
    """Where in the tree a value of type `name` (or `name` itself) sits, "" if not found."""
    stack: list[tuple[str, Any]] = [(key, value) for key, (_, value) in tree.items()]
    seen: set[int] = set()
    while stack:
        path, value = stack.pop()
        if id(value) in seen:
            continue  # a container met before (or a cycle)
        seen.add(id(value))
        if name in (safepickle.qualified_name(type(value)), safepickle.qualified_name(value)):
            return path
        if isinstance(value, Mapping):
            stack.extend((f"{path}/{k}", v) for k, v in value.items())
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend((f"{path}/{i}", v) for i, v in enumerate(value))
    return ""


def _first_unsavable(tree: Mapping[str, tuple[str, Any]]) -> str:
    for path, t in _tensors_with_paths(tree):
        try:
            _check_savable(t)
        except TypeError:
            return path
    return "?"
