"""Load a restored tree into the live app state, in place wherever shapes and dtypes match.

In-place matters: an optimizer holds references to its parameters, and user code may hold
references to state tensors. A restored tensor whose live counterpart has the same shape and dtype
is copied into it; anything else becomes a fresh tensor (never a view of the arena, which the
next saves overwrite).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch

from ecsnap.flatten import is_stateful


def _materialize(loaded: torch.Tensor, like: object) -> torch.Tensor:
    device = like.device if isinstance(like, torch.Tensor) else torch.device("cpu")
    return loaded.to(device=device, copy=True)


def merge(current: Any, loaded: Any) -> Any:
    """`loaded` with every tensor either copied into `current`'s matching tensor or detached."""
    if isinstance(loaded, torch.Tensor):
        if (
            isinstance(current, torch.Tensor)
            and current.shape == loaded.shape
            and current.dtype == loaded.dtype
            and not current.is_inference()
        ):
            with torch.no_grad():
                current.copy_(loaded, non_blocking=current.device.type == "cuda")
            return current
        return _materialize(loaded, current)
    if isinstance(loaded, dict):
        base = current if isinstance(current, dict) else {}
        for key in list(loaded):
            loaded[key] = merge(base.get(key), loaded[key])
        return loaded
    if isinstance(loaded, list):
        base_list = current if isinstance(current, list) and len(current) == len(loaded) else None
        for i, item in enumerate(loaded):
            loaded[i] = merge(base_list[i] if base_list is not None else None, item)
        return loaded
    if isinstance(loaded, tuple):
        base_t = current if isinstance(current, tuple) and len(current) == len(loaded) else None
        items = [merge(base_t[i] if base_t is not None else None, x) for i, x in enumerate(loaded)]
        return type(loaded)(*items) if hasattr(loaded, "_fields") else type(loaded)(items)
    return loaded


def load_into(app_state: MutableMapping[str, Any], tree: dict[str, tuple[str, Any]]) -> None:
    """Apply a restored tree to `app_state`: Stateful values via load_state_dict, others by key."""
    missing = [k for k, (kind, _) in tree.items() if kind == "stateful" and k not in app_state]
    if missing:
        raise KeyError(
            f"the snapshot has Stateful entries {missing} that app_state lacks: pass "
            "the same app_state keys as when saving"
        )
    for key, (kind, value) in tree.items():
        target: Any = app_state.get(key)
        if kind != "stateful":
            app_state[key] = merge(target, value)
        elif is_stateful(target):
            target.load_state_dict(merge(target.state_dict(), value))
        else:
            raise TypeError(
                f"app_state[{key!r}] was saved through state_dict() but is now "
                f"{type(target).__name__}, which has no load_state_dict()"
            )
    if any(_on_cuda(v) for _, v in tree.values()):
        torch.cuda.synchronize()  # non_blocking host-to-device copies above


def _on_cuda(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.device.type == "cuda"
    if isinstance(value, dict):
        return any(_on_cuda(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_on_cuda(v) for v in value)
    return False
