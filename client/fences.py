"""Fences: the operations that change saved tensors wait for their background copy.

The modules and optimizers of the app state are found wherever they are: top-level values, inside
dicts, lists and tuples, and as attributes of Stateful wrappers (DCP's `AppState` holds the model
and the optimizer as attributes). Each optimizer gets a step pre-hook and each module with
buffers a forward pre-hook that waits for the copy in flight. The storages those operations
change are the *fenced* ones; only they are copied in the background (`flatten`). Parameters of a
module that no known optimizer steps are fenced only when they are frozen (requires_grad=False):
anything else could be changed by an optimizer ecsnap does not see, so it is copied before save()
returns.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ecsnap.flatten import StorageKey, is_stateful, storage_key

_DEPTH = 4  # how deep containers and wrapper attributes are searched
_WIDTH = 64  # containers longer than this hold data, not optimizers: not searched


def unwrapped(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer whose step() runs the step hooks. A framework's wrapper (accelerate's
    AcceleratedOptimizer, Lightning's LightningOptimizer) passes for an Optimizer without being
    set up as one (no hooks of its own) and steps the optimizer it holds as `.optimizer`."""
    for _ in range(_DEPTH):
        inner = getattr(optimizer, "optimizer", None)
        if hasattr(optimizer, "_optimizer_step_pre_hooks") or not isinstance(
            inner, torch.optim.Optimizer
        ):
            break
        optimizer = inner
    return optimizer


def owners(app_state: Mapping[str, Any]) -> tuple[list[nn.Module], list[torch.optim.Optimizer]]:
    """The modules and optimizers reachable from the app state (each once, in order found)."""
    modules: dict[int, nn.Module] = {}
    optimizers: dict[int, torch.optim.Optimizer] = {}

    def visit(value: Any, depth: int) -> None:
        if isinstance(value, nn.Module):
            modules.setdefault(id(value), value)
        elif isinstance(value, torch.optim.Optimizer):
            inner = unwrapped(value)
            optimizers.setdefault(id(inner), inner)
        elif depth >= _DEPTH or isinstance(value, (torch.Tensor, str, bytes, int, float)):
            return
        elif isinstance(value, Mapping):
            if len(value) <= _WIDTH:
                for v in value.values():
                    visit(v, depth + 1)
        elif isinstance(value, (list, tuple)):
            if len(value) <= _WIDTH:
                for v in value:
                    visit(v, depth + 1)
        elif is_stateful(value) and hasattr(value, "__dict__"):
            for v in vars(value).values():
                visit(v, depth + 1)

    for value in app_state.values():
        visit(value, 0)
    return list(modules.values()), list(optimizers.values())


def _has_buffers(module: nn.Module) -> bool:
    return any(True for _ in module.buffers())


def fenced_storages(
    modules: Iterable[nn.Module], optimizers: Iterable[torch.optim.Optimizer]
) -> set[StorageKey]:
    """Storages that change only through fenced operations (or not at all)."""
    keys: set[StorageKey] = set()
    for optim in optimizers:
        for group in optim.param_groups:
            keys.update(storage_key(p) for p in group["params"])
        for state in optim.state.values():
            keys.update(storage_key(v) for v in state.values() if isinstance(v, torch.Tensor))
    for module in modules:
        keys.update(storage_key(b) for b in module.buffers())
        keys.update(storage_key(p) for p in module.parameters() if not p.requires_grad)
    return keys


class Fences:
    """Installs (once per object) the hooks that call `wait` before a fenced operation."""

    def __init__(self, wait: Callable[[], None]) -> None:
        self._wait = wait
        self._hooks: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def _fence(self, *_: Any) -> None:
        self._wait()

    def install(
        self, modules: Iterable[nn.Module], optimizers: Iterable[torch.optim.Optimizer]
    ) -> None:
        for optim in optimizers:
            if optim not in self._hooks:
                self._hooks[optim] = optim.register_step_pre_hook(self._fence)
        for module in modules:
            # Buffers (e.g. BatchNorm statistics) change in forward, before any optimizer step.
            if module not in self._hooks and _has_buffers(module):
                self._hooks[module] = module.register_forward_pre_hook(self._fence)

    def remove(self) -> None:
        for hook in list(self._hooks.values()):
            hook.remove()
        self._hooks.clear()
