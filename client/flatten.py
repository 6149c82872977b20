"""App state <-> (tensors laid out in an arena, manifest, skeleton).

Saving turns the app state into a skeleton (a pickle of everything that is not a tensor) plus a
list of tensors, each given an aligned place in the arena. Tensors enter the pickle only as
persistent ids, so their bytes never go through pickle or a socket. Restoring unpickles the
skeleton with every tensor resolved to a zero-copy view of the arena.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from smp._proto import snapshot_pb2
from smp.defaults import TENSOR_ALIGN

FORMAT_VERSION = 1
_STATEFUL, _PLAIN = "stateful", "plain"


def is_stateful(value: object) -> bool:
    return callable(getattr(value, "state_dict", None)) and callable(
        getattr(value, "load_state_dict", None)
    )


@dataclass
class FlatState:
    tensors: list[torch.Tensor]
    manifest: snapshot_pb2.Manifest

    @property
    def nbytes(self) -> int:
        return int(self.manifest.nbytes)


class _Pickler(pickle.Pickler):
    def __init__(self, buf: io.BytesIO, out: FlatState) -> None:
        super().__init__(buf, protocol=pickle.HIGHEST_PROTOCOL)
        self._out = out
        self._offset = 0

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, torch.Tensor):
            return None
        if obj.is_sparse or obj.layout != torch.strided:
            raise TypeError(
                f"ecsnap saves dense tensors only; got a {obj.layout} tensor: "
                "convert it with .to_dense() before saving"
            )
        if obj.is_quantized:
            raise TypeError("ecsnap does not save quantized tensors yet: dequantize first")
        nbytes = obj.numel() * obj.element_size()
        entry = self._out.manifest.tensors.add(
            dtype=str(obj.dtype).removeprefix("torch."),
            shape=list(obj.shape),
            offset=self._offset,
            nbytes=nbytes,
            device=obj.device.type,
        )
        self._offset += -(-nbytes // TENSOR_ALIGN) * TENSOR_ALIGN
        self._out.manifest.nbytes = self._offset
        self._out.tensors.append(obj.detach())
        return len(self._out.tensors) - 1, entry.dtype


def flatten(app_state: Mapping[str, Any]) -> FlatState:
    """Capture the app state now: Stateful values through state_dict(), the rest as they are."""
    if not isinstance(app_state, Mapping):
        raise TypeError(f"app_state must be a dict of name -> value, got {type(app_state)!r}")
    tree: dict[str, tuple[str, Any]] = {}
    for key, value in app_state.items():
        if not isinstance(key, str):
            raise TypeError(f"app_state keys must be strings, got {key!r}")
        tree[key] = (_STATEFUL, value.state_dict()) if is_stateful(value) else (_PLAIN, value)
    out = FlatState([], snapshot_pb2.Manifest(format_version=FORMAT_VERSION))
    buf = io.BytesIO()
    try:
        _Pickler(buf, out).dump(tree)
    except (pickle.PicklingError, AttributeError) as exc:
        raise TypeError(
            f"part of app_state cannot be saved ({exc}): keep it to tensors, "
            "containers, numbers, strings and objects with state_dict()"
        ) from exc
    out.manifest.skeleton = buf.getvalue()
    return out


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, views: list[torch.Tensor]) -> None:
        super().__init__(io.BytesIO(data))
        self._views = views

    def persistent_load(self, pid: Any) -> Any:
        index, _dtype = pid
        return self._views[index]


def arena_views(manifest: snapshot_pb2.Manifest, arena: torch.Tensor) -> list[torch.Tensor]:
    """Zero-copy typed views of every tensor of `manifest` inside `arena` (a uint8 tensor)."""
    if manifest.format_version != FORMAT_VERSION:
        raise ValueError(
            f"snapshot format {manifest.format_version} is not supported by this "
            f"ecsnap (format {FORMAT_VERSION}): restore with the version that saved it"
        )
    if manifest.nbytes > arena.numel():
        raise ValueError(f"manifest needs {manifest.nbytes} bytes, arena has {arena.numel()}")
    views = []
    for entry in manifest.tensors:
        dtype = getattr(torch, entry.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {entry.dtype!r} in snapshot")
        raw = arena[entry.offset : entry.offset + entry.nbytes]
        views.append(raw.view(dtype).view(tuple(entry.shape)))
    return views


def unflatten(
    manifest: snapshot_pb2.Manifest, views: list[torch.Tensor]
) -> dict[str, tuple[str, Any]]:
    """The saved tree: key -> ("stateful" | "plain", value), tensors as arena views."""
    tree = _Unpickler(manifest.skeleton, views).load()
    if not isinstance(tree, dict):
        raise ValueError("snapshot skeleton is not an app-state dict")
    return tree
